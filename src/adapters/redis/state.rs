//! State owned by the Redis main thread: node lifecycle, blocked clients by request id,
//! the command table, and the channels to the driver. Only the main thread touches it,
//! so it lives in thread-locals; borrows are kept short because applying a command can
//! re-enter the module (filter, handlers).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;

use crate::adapters::disk::logio::LogFile;
use crate::adapters::ffi::{self, Answer, BlockedClient, RawCtx};
use crate::adapters::network::transport::Transport;
use crate::adapters::queue::{BoundedReceiver, HoldingSender};
use crate::adapters::raft_thread::driver::{DriverInput, MainTask, SharedStatus};
use crate::core::commands::CommandTable;
use crate::core::config::RaftConfig;
use crate::core::entry::Argv;
use crate::core::logfile::{NodeMeta, Recovered};
use crate::core::membership::Membership;
use crate::core::pending::{RequestId, RequestIdMap};
use crate::core::scripts::ScriptRegistry;
use crate::core::shards::ShardMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Uninitialized,
    /// RAFT.CLUSTER JOIN is asking the cluster to add this node.
    Joining,
    Loading,
    Up,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Uninitialized => "uninitialized",
            NodeState::Joining => "joining",
            NodeState::Loading => "loading",
            NodeState::Up => "up",
        }
    }
}

/// What a waiting client needs besides its `Waiter`.
pub struct Blocking {
    pub argv: Argv,
    pub keys: Vec<Vec<u8>>,
    /// Wall-clock ms after which the client gets the null reply; `None`: no timeout.
    pub deadline_ms: Option<i64>,
}

pub struct Waiter {
    pub client: BlockedClient,
    pub resp3: bool,
    /// For reads: the command to run once the read index is applied.
    pub read: Option<Argv>,
    /// For membership changes: the reply once the change is applied.
    pub conf_reply: Option<Answer>,
    /// ACL user of the client: scripts run with its rights.
    pub user: Option<String>,
    /// A blocking command (BLPOP & co): waits instead of taking a null reply.
    pub blocking: Option<Blocking>,
    /// The client sent `ASKING` before this command (sharding: an importing slot may
    /// serve it).
    pub asking: bool,
}

impl Waiter {
    /// A waiter for a plain answer (OK or an error), RESP2, no user.
    pub fn for_client(client: BlockedClient) -> Waiter {
        Waiter {
            client,
            resp3: false,
            read: None,
            conf_reply: None,
            user: None,
            blocking: None,
            asking: false,
        }
    }
}

pub struct MainState {
    pub node_state: NodeState,
    pub meta: Option<NodeMeta>,
    pub incarnation: u64,
    next_request_id: RequestId,
    pub waiters: RequestIdMap<Waiter>,
    /// Reads confirmed by a quorum, waiting for `applied_index` to reach their index.
    pub confirmed_reads: BTreeMap<u64, Vec<RequestId>>,
    pub applied_index: u64,
    /// Term of the entry at `applied_index` (a snapshot records both).
    pub applied_term: u64,
    /// While loading: the commit index found on disk; `Up` once applied reaches it.
    pub loading_until: u64,
    /// Held until the event loop is about to sleep (see `flush_to_driver`).
    pub to_driver: Option<HoldingSender<DriverInput>>,
    pub from_driver: Option<BoundedReceiver<MainTask>>,
    pub shared: Arc<SharedStatus>,
    /// Context used to apply entries outside any client command.
    pub apply_ctx: RawCtx,
    /// A node found on disk at load, started once the server finished loading its data.
    pub boot: Option<(LogFile, Recovered)>,
    /// Replicated membership, as of `applied_index`.
    pub membership: Membership,
    pub transport: Option<Transport>,
    /// The port of this node's raft peer listener, 0 when it has none (RAFT._PEER_PORT).
    pub peer_port: u16,
    /// The election timeout raft runs with (whole ticks, as the node started): waits that
    /// span an election follow it, not a `CONFIG SET` the node has not restarted with.
    pub node_election_timeout_ms: u64,
    /// Set when this node applied its own removal: clients are told why it stopped.
    pub removed: bool,
    /// Latest entry time proposed or applied (see `next_entry_time_ms`).
    pub last_entry_time_ms: i64,
    /// Time of the last applied entry that carried one, or of the snapshot loaded since
    /// (`RAFT.DEBUG EXEC` judges expiry at it, so nodes at one index answer alike).
    pub applied_time_ms: i64,
    /// The leader's expired-keys entry in flight, by wall-clock deadline (ms): no new
    /// scan is proposed until it is applied or this passes.
    pub expire_in_flight_until_ms: i64,
    /// The bodies `EVALSHA` runs, as of `applied_index` (replicated; see `core::scripts`).
    pub scripts: ScriptRegistry,
    /// Which group serves which hash slots, as of `applied_index` (replicated; see
    /// `core::shards`). Empty unless sharding is on.
    pub shard_map: ShardMap,
    /// The id this node had before it left the cluster (`RAFT.NODESHUTDOWN` names it).
    pub former_id: Option<u64>,
    /// Key-modifying proposals of this node not yet applied or failed (an EXEC with
    /// WATCH waits until there are none, see `watch`).
    pub writes_in_flight: HashSet<RequestId>,
}

pub const ERR_REMOVED: &str = "NOCLUSTER No Raft Cluster (this node was removed from the cluster)";
const ERR_DRIVER_STOPPED: &str = "CLUSTERDOWN raft driver stopped";
/// Inputs held for the driver before they are handed over even mid-iteration.
const MAX_HELD_DRIVER_INPUTS: usize = 1024;
const LARGE_INPUT_BYTES: usize = 64 * 1024;

/// Hold driver inputs until the event loop sleeps; set once the server confirmed it will
/// tell us (its before-sleep event).
pub fn hold_driver_inputs(hold: bool) {
    HOLD_DRIVER_INPUTS.set(hold);
}

thread_local! {
    static HOLD_DRIVER_INPUTS: Cell<bool> = const { Cell::new(false) };
    static STATE: RefCell<Option<MainState>> = const { RefCell::new(None) };
    static TABLE: RefCell<CommandTable> = RefCell::new(CommandTable::new(Vec::new(), &[]));
    /// True while the module itself runs commands (apply, local exec): the filter must let
    /// them through untouched.
    static APPLYING: Cell<bool> = const { Cell::new(false) };
}

pub fn init_state(apply_ctx: RawCtx, incarnation: u64) {
    STATE.with(|state| {
        *state.borrow_mut() = Some(MainState {
            node_state: NodeState::Uninitialized,
            meta: None,
            incarnation,
            next_request_id: 0,
            waiters: RequestIdMap::default(),
            confirmed_reads: BTreeMap::new(),
            applied_index: 0,
            applied_term: 0,
            loading_until: 0,
            to_driver: None,
            from_driver: None,
            shared: Arc::new(SharedStatus::default()),
            apply_ctx,
            boot: None,
            membership: Membership::default(),
            transport: None,
            removed: false,
            last_entry_time_ms: 0,
            applied_time_ms: 0,
            expire_in_flight_until_ms: 0,
            scripts: ScriptRegistry::default(),
            shard_map: ShardMap::default(),
            former_id: None,
            writes_in_flight: HashSet::new(),
            peer_port: 0,
            node_election_timeout_ms: RaftConfig::default().election_timeout_ms,
        })
    });
}

/// Runs `f` with the main-thread state. Never call a Redis command inside `f`.
pub fn with_state<R>(f: impl FnOnce(&mut MainState) -> R) -> R {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        f(state.as_mut().expect("raft module state used before load"))
    })
}

pub fn with_table<R>(f: impl FnOnce(&CommandTable) -> R) -> R {
    TABLE.with(|table| f(&table.borrow()))
}

pub fn set_table(table: CommandTable) {
    TABLE.with(|current| *current.borrow_mut() = table);
}

/// Replaces the command table with one made from the current one (main thread).
pub fn update_table(change: impl FnOnce(&CommandTable) -> CommandTable) {
    TABLE.with(|current| {
        let changed = change(&current.borrow());
        *current.borrow_mut() = changed;
    });
}

pub fn is_applying() -> bool {
    APPLYING.with(Cell::get)
}

/// Runs a command on this node only, bypassing the filter.
pub fn call_locally(ctx: RawCtx, argv: &[Vec<u8>], resp3: bool) -> Result<ffi::CallReply, String> {
    let was = APPLYING.with(|flag| flag.replace(true));
    let reply = ffi::call(ctx, argv, resp3);
    APPLYING.with(|flag| flag.set(was));
    reply
}

/// `call_locally` with the command's Redis strings already made.
pub fn call_locally_prepared(
    ctx: RawCtx,
    argv: &[Vec<u8>],
    args: &mut ffi::data::Args,
    resp3: bool,
) -> Result<ffi::CallReply, String> {
    let was = APPLYING.with(|flag| flag.replace(true));
    let reply = ffi::call_prepared(ctx, argv, args, resp3, false);
    APPLYING.with(|flag| flag.set(was));
    reply
}

/// Runs a command on this node as the ACL user attached to `ctx` (scripts at apply).
pub fn call_locally_as_user(
    ctx: RawCtx,
    argv: &[Vec<u8>],
    resp3: bool,
) -> Result<ffi::CallReply, String> {
    let was = APPLYING.with(|flag| flag.replace(true));
    let reply = ffi::call_checked(ctx, argv, resp3);
    APPLYING.with(|flag| flag.set(was));
    reply
}

/// "Now" for serving a read (or checking a WATCH) on this node: its clock, but never
/// before the time of the last entry it applied. After a failover to a node whose clock
/// is behind, a key the log already treated as expired (deleted by a write at a later
/// entry time on the others, or judged expired there) must not reappear here.
pub fn read_now_ms() -> i64 {
    let applied_time_ms = with_state(|state| state.applied_time_ms);
    crate::core::expiry::read_time(
        crate::adapters::redis::clock::wall_clock_ms(),
        applied_time_ms,
    )
}

impl MainState {
    /// The time a new entry carries: the local clock, but never before an earlier
    /// entry's, so time only moves forward along the log even across leaders.
    pub fn next_entry_time_ms(&mut self) -> i64 {
        let now = crate::adapters::redis::clock::wall_clock_ms().max(self.last_entry_time_ms);
        self.last_entry_time_ms = now;
        now
    }

    pub fn new_request_id(&mut self) -> RequestId {
        self.next_request_id += 1;
        self.next_request_id
    }

    /// Hands a request to the driver; on a full queue the caller answers the client.
    /// The driver gets it when the event loop is about to sleep, together with everything
    /// else this iteration produced (one wake-up of the driver per iteration).
    pub fn send_to_driver(&mut self, input: DriverInput) -> Result<(), &'static str> {
        let Some(sender) = &mut self.to_driver else {
            return Err("CLUSTERDOWN No raft leader");
        };
        let large = match &input {
            DriverInput::Propose { data, .. } => data.len() >= LARGE_INPUT_BYTES,
            _ => false,
        };
        match sender.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err("BUSY raft request queue is full, retry later")
            }
            Err(TrySendError::Disconnected(_)) => return Err(ERR_DRIVER_STOPPED),
        }
        if large || !HOLD_DRIVER_INPUTS.get() || sender.held() >= MAX_HELD_DRIVER_INPUTS {
            self.flush_to_driver();
        }
        Ok(())
    }

    /// Hands the held inputs to the driver; requests the driver can no longer take are
    /// answered with an error.
    pub fn flush_to_driver(&mut self) {
        let Some(sender) = &mut self.to_driver else {
            return;
        };
        let Err(lost) = sender.flush() else {
            return;
        };
        for input in lost {
            let request_id = match input {
                DriverInput::Propose { request_id, .. } => {
                    // As for a proposal refused when offered (`proposals::send_proposal`):
                    // an EXEC with WATCH must not wait for it.
                    self.writes_in_flight.remove(&request_id);
                    Some(request_id)
                }
                DriverInput::Read { request_id } => Some(request_id),
                DriverInput::ConfChange { request_id, .. } => request_id,
                _ => None,
            };
            if let Some(request_id) = request_id {
                self.answer_waiter(request_id, Answer::Error(ERR_DRIVER_STOPPED.to_string()));
            }
        }
    }

    /// An entry carrying `time_ms` is applied: returns the time it runs at, never before
    /// the previous entry's (`core::expiry::applied_entry_time`), so time only moves
    /// forward along the log even when a new leader proposed before applying the old
    /// one's entries. New entries are proposed at or after it (`next_entry_time_ms`).
    pub fn note_applied_time(&mut self, time_ms: i64) -> i64 {
        let now = crate::core::expiry::applied_entry_time(self.applied_time_ms, time_ms);
        self.last_entry_time_ms = self.last_entry_time_ms.max(now);
        self.applied_time_ms = now;
        now
    }

    /// The dataset was replaced by a snapshot taken at logical time `time_ms`.
    pub fn note_snapshot_time(&mut self, time_ms: i64) {
        self.last_entry_time_ms = self.last_entry_time_ms.max(time_ms);
        self.applied_time_ms = time_ms;
    }

    /// Unblocks the client waiting for `request_id`, if it still waits, with `answer`.
    /// The reply is sent later from the event loop, so calling this inside `with_state`
    /// is fine.
    pub fn answer_waiter(&mut self, request_id: RequestId, answer: Answer) {
        if let Some(waiter) = self.waiters.remove(&request_id) {
            ffi::unblock(waiter.client, answer);
        }
    }

    pub fn is_leader_ready(&self) -> bool {
        self.shared.leader_ready.load(Ordering::Acquire)
    }

    /// The error for a node that is up but cannot serve: `MOVED` to the leader it knows
    /// (like a Redis Cluster replica), else `CLUSTERDOWN`.
    pub fn not_leader_error(&self) -> String {
        let leader = self.leader_id();
        match self.membership.addr_of(leader) {
            Some(addr) if leader != self.my_id() => format!("MOVED 0 {addr}"),
            _ => "CLUSTERDOWN No raft leader".to_string(),
        }
    }

    pub fn my_id(&self) -> u64 {
        self.meta.as_ref().map_or(0, |meta| meta.node_id)
    }

    pub fn leader_id(&self) -> u64 {
        self.shared.leader_id.load(Ordering::Relaxed)
    }

    /// Forgets the cluster after this node was removed: stops the driver and transport,
    /// keeps the log aside for diagnosis. Returns everyone still waiting with their
    /// answer: a request that may be in the log (a proposal raft may have taken: this
    /// node may have led, and its entries may still commit on the others) gets
    /// `TIMEOUT not committed yet`; only requests known not to be in the log (reads,
    /// inputs still held for the driver) get the definite `NOCLUSTER ... removed`.
    pub fn leave_cluster(&mut self, reason: &str) -> Vec<(Waiter, Answer)> {
        let never_sent: std::collections::HashSet<RequestId> = self
            .to_driver
            .as_mut()
            .map(HoldingSender::take_held)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|input| match input {
                DriverInput::Propose { request_id, .. } | DriverInput::Read { request_id } => {
                    Some(request_id)
                }
                DriverInput::ConfChange { request_id, .. } => request_id,
                _ => None,
            })
            .collect();
        self.to_driver = None;
        self.from_driver = None;
        if let Some(transport) = self.transport.take() {
            transport.shutdown();
        }
        self.node_state = NodeState::Uninitialized;
        self.former_id = self.meta.as_ref().map(|meta| meta.node_id);
        self.meta = None;
        self.membership = Membership::default();
        self.shard_map = ShardMap::default();
        self.applied_index = 0;
        self.applied_time_ms = 0;
        self.confirmed_reads.clear();
        self.writes_in_flight.clear();
        self.shared = Arc::new(SharedStatus::default());
        crate::adapters::redis::settings::release_identity();
        log::warn!("raft: this node left the cluster: {reason}");
        self.waiters
            .drain()
            .map(|(request_id, waiter)| {
                let error = if waiter.read.is_some() || never_sent.contains(&request_id) {
                    ERR_REMOVED
                } else {
                    crate::adapters::raft_thread::driver::ERR_NOT_COMMITTED
                };
                (waiter, Answer::Error(error.to_string()))
            })
            .collect()
    }
}

/// `CONFIG SET` changed a setting the running driver follows: it gets the new value with
/// the next hand-over. Before the node runs there is no driver; `start_node` reads them.
pub fn driver_settings_changed(settings: crate::core::config::DriverSettings) {
    STATE.with(|state| {
        let Ok(mut state) = state.try_borrow_mut() else {
            // Never seen: CONFIG SET runs as a command, outside any state borrow.
            log::warn!("raft: a setting changed while the module state was busy; the driver keeps the old value until the next change");
            return;
        };
        if let Some(state) = state.as_mut() {
            if state.to_driver.is_some() {
                if let Err(e) = state.send_to_driver(DriverInput::Settings(settings)) {
                    log::warn!("raft: the driver did not get the new settings: {e}");
                }
            }
        }
    });
}

/// One server setting by `CONFIG GET` (empty when unknown).
pub fn server_config(ctx: RawCtx, name: &str) -> String {
    call_locally(
        ctx,
        &[
            b"CONFIG".to_vec(),
            b"GET".to_vec(),
            name.as_bytes().to_vec(),
        ],
        false,
    )
    .ok()
    .and_then(|reply| {
        reply
            .element(1)
            .map(|r| String::from_utf8_lossy(r.bytes()).to_string())
    })
    .unwrap_or_default()
}
