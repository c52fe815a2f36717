//! What happens to a `RAFT.MSG` once it is decoded, wherever it arrived: on the raft
//! thread's own peer listener (`peer_listener`) or, from a peer that does not use it, as a
//! command on the Redis port (`membership::raft_msg`). Both call [`admit`], so a message
//! is refused for the same reasons with the same reply on either path.

use std::sync::atomic::Ordering;

use raft::eraftpb::{Message, MessageType};

use crate::adapters::network::peer_guard;
use crate::adapters::network::transport::{RaftMsg, REMOVED_ERROR_PREFIX};
use crate::core::membership::Membership;
use crate::core::peer_check::{check_sender, Refusal, SenderVerdict};

/// What an admitted `RAFT.MSG` hands to the raft thread, in order.
#[derive(Debug)]
pub enum PeerInput {
    /// Where a sender the membership does not know yet can be reached.
    Address {
        id: u64,
        addr: String,
    },
    Message(Box<Message>),
}

/// What a receiver checks a sender against. The driver publishes a new value whenever
/// its membership changes; the listener reads the latest one per batch.
#[derive(Clone, Debug, Default)]
pub struct PeerGate {
    pub dbid: String,
    pub my_id: u64,
    pub membership: Membership,
}

/// Checks a decoded `RAFT.MSG` against `gate` and returns the inputs it becomes
/// (an address hint for a sender the membership does not know yet, then its messages),
/// or the error reply. Refusals are counted and logged (rate-limited).
pub fn admit(decoded: RaftMsg, gate: &PeerGate) -> Result<Vec<PeerInput>, String> {
    admit_against(decoded, &gate.dbid, gate.my_id, &gate.membership)
}

/// [`admit`] against the parts of a gate, for a caller that holds them elsewhere.
pub fn admit_against(
    decoded: RaftMsg,
    my_dbid: &str,
    me: u64,
    membership: &Membership,
) -> Result<Vec<PeerInput>, String> {
    let sender = decoded.sender_id;
    if let Some(message) = decoded.messages.iter().find(|m| m.to != me) {
        let to = message.to;
        peer_guard::refused(format!("peer:{sender}"), || {
            format!("refused a raft message from node {sender} for node {to}: this is node {me}")
        });
        return Err("ERR raft message for another node".into());
    }
    let verdict = check_sender(
        my_dbid,
        decoded.dbid.as_bytes(),
        me,
        sender,
        membership,
        decoded.messages.iter().map(Message::get_msg_type),
    );
    match verdict {
        SenderVerdict::Accept => {}
        SenderVerdict::AcceptUnknownLeader => {
            peer_guard::log_limited(format!("unknown-leader:{sender}"), log::Level::Info, || {
                format!(
                    "following node {sender}, which this node's membership does not know yet \
                     (this node has not applied the change that added it)"
                )
            });
        }
        SenderVerdict::Refuse(refusal) => {
            return Err(refusal_reply(refusal, sender, &decoded.dbid))
        }
    }
    let mut inputs = Vec::with_capacity(decoded.messages.len() + 1);
    if let Some(addr) = decoded
        .sender_addr
        .filter(|_| membership.get(sender).is_none())
    {
        // A node that just joined must answer the leader before the log told it where
        // the leader is.
        inputs.push(PeerInput::Address { id: sender, addr });
    }
    for message in decoded.messages {
        count_received(&message);
        inputs.push(PeerInput::Message(Box::new(message)));
    }
    Ok(inputs)
}

/// The error reply for a refused sender, after counting and logging the refusal.
pub fn refusal_reply(refusal: Refusal, sender: u64, dbid: &str) -> String {
    let dbid: String = dbid.chars().take(64).collect();
    let (line, reply) = match refusal {
        Refusal::OtherCluster => (
            format!("refused a message from node {sender} of another cluster (dbid {dbid:?})"),
            "ERR raft message for another cluster (dbid mismatch)".to_string(),
        ),
        Refusal::OwnId => (
            format!(
                "refused a message that claims to come from this node's own id {sender} \
                 (does another node use the same id?)"
            ),
            format!("ERR raft message from node {sender}, which is this node's own id"),
        ),
        // Ids are never reused: this node's removal is committed. Telling it lets it stop
        // instead of campaigning forever.
        Refusal::Removed => (
            format!("refused a message from node {sender}: it was removed from the cluster"),
            format!("{REMOVED_ERROR_PREFIX} node {sender} was removed from the cluster"),
        ),
        Refusal::NotMember => (
            format!("refused a message from node {sender}: it is not a member of this cluster"),
            format!("ERR raft message from node {sender}, which is not a member of this cluster"),
        ),
    };
    peer_guard::refused(format!("peer:{sender}"), || line);
    reply
}

fn count_received(message: &Message) {
    use crate::adapters::counters::PEER_TRAFFIC;
    match message.get_msg_type() {
        MessageType::MsgAppend => {
            PEER_TRAFFIC
                .appendreq_received
                .fetch_add(1, Ordering::Relaxed);
            if !message.entries.is_empty() {
                PEER_TRAFFIC
                    .appendreq_with_entry_received
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        MessageType::MsgSnapshot => {
            PEER_TRAFFIC
                .snapshotreq_received
                .fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}
