//! Hands requests to the raft thread: a client's write as a proposal, a quorum read,
//! each with its blocked client kept as a waiter by request id until the result is
//! applied (or fails). Also whether this node may serve at all.

use crate::adapters::ffi::{self, Answer, BlockedClient};
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::state::{with_state, MainState, NodeState, Waiter, ERR_REMOVED};
use crate::core::entry::{
    check_proposal_size, Argv, Origin, Payload, FLAG_ASKING, FLAG_TRANSACTION,
};
use crate::core::pending::RequestId;

const ERR_NO_CLUSTER: &str = "NOCLUSTER No Raft Cluster";
const ERR_JOINING: &str = "NOCLUSTER No Raft Cluster (joining now)";
const ERR_LOADING: &str = "LOADING Raft module is loading data";

/// A new request id and the origin an entry proposed for it carries: the node that
/// applies it with this origin answers its waiter.
fn new_origin(state: &mut MainState) -> (RequestId, Option<Origin>) {
    let request_id = state.new_request_id();
    let origin = state.meta.as_ref().map(|meta| Origin {
        node_id: meta.node_id,
        incarnation: state.incarnation,
        request_id,
    });
    (request_id, origin)
}

/// Sends a proposal to the driver now.
pub fn send_proposal(waiter: Waiter, commands: Vec<Argv>, transaction: bool) {
    send_proposal_at(waiter, commands, transaction, None);
}

/// Sends a proposal to the driver now, carrying `time_ms` if given (taken from
/// `MainState::next_entry_time_ms` by the caller), else the next entry time.
pub fn send_proposal_at(
    waiter: Waiter,
    commands: Vec<Argv>,
    transaction: bool,
    time_ms: Option<i64>,
) {
    if let Err(too_large) = check_proposal_size(&commands, waiter.user.as_deref()) {
        // `submit` refuses these before blocking; this covers the module's own proposals
        // (a read of an expired key turned into a write).
        ffi::unblock(waiter.client, Answer::Error(too_large.to_string()));
        return;
    }
    let sent = with_state(|state| {
        let (request_id, origin) = new_origin(state);
        let flags = if transaction { FLAG_TRANSACTION } else { 0 }
            | if waiter.asking { FLAG_ASKING } else { 0 };
        let payload = Payload::Commands {
            origin,
            time_ms: time_ms.unwrap_or_else(|| state.next_entry_time_ms()),
            user: waiter.user.clone(),
            flags,
            commands,
        };
        state.waiters.insert(request_id, waiter);
        state.writes_in_flight.insert(request_id);
        state
            .send_to_driver(DriverInput::Propose {
                request_id,
                data: payload.encode(),
            })
            .map_err(|error| {
                state.writes_in_flight.remove(&request_id);
                (request_id, error)
            })
    });
    fail_unsent(sent);
}

/// Logs the payload `build` makes from this node's origin and the next entry time, with
/// `client` waiting for whoever applies it to answer (`Waiter::for_client`); the request
/// id, unless the hand-over failed (then the client has its error already).
pub fn propose_for_client(
    client: BlockedClient,
    build: impl FnOnce(Option<Origin>, i64) -> Payload,
) -> Option<RequestId> {
    let sent = with_state(|state| {
        let (request_id, origin) = new_origin(state);
        let data = build(origin, state.next_entry_time_ms()).encode();
        state.waiters.insert(request_id, Waiter::for_client(client));
        state
            .send_to_driver(DriverInput::Propose { request_id, data })
            .map(|()| request_id)
            .map_err(|error| (request_id, error))
    });
    match sent {
        Ok(request_id) => Some(request_id),
        Err(unsent) => {
            fail_unsent(Err(unsent));
            None
        }
    }
}

/// Registers a read that runs once a quorum confirmed leadership and the read index is
/// applied.
pub fn wait_for_read(mut waiter: Waiter, argv: Argv) {
    waiter.read = Some(argv);
    let sent = with_state(|state| {
        let request_id = state.new_request_id();
        state.waiters.insert(request_id, waiter);
        state
            .send_to_driver(DriverInput::Read { request_id })
            .map_err(|error| (request_id, error))
    });
    fail_unsent(sent);
}

fn fail_unsent(sent: Result<(), (RequestId, &'static str)>) {
    if let Err((request_id, error)) = sent {
        with_state(|state| state.answer_waiter(request_id, Answer::Error(error.to_string())));
    }
}

/// Whether this node may take reads and writes now, or the error a client gets:
/// followers redirect to the leader they know, like a Redis Cluster replica would.
pub fn check_can_serve() -> Result<(), String> {
    with_state(|state| match state.node_state {
        NodeState::Uninitialized if state.removed => Err(ERR_REMOVED.to_string()),
        NodeState::Uninitialized => Err(ERR_NO_CLUSTER.to_string()),
        NodeState::Joining => Err(ERR_JOINING.to_string()),
        NodeState::Loading => Err(ERR_LOADING.to_string()),
        NodeState::Up if state.is_leader_ready() => Ok(()),
        NodeState::Up => Err(state.not_leader_error()),
    })
}
