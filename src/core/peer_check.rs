//! Who may talk to this node as a peer: the pure checks behind `RAFT.MSG`,
//! `RAFT.SNAPSHOT.CHUNK` and `RAFT.SNAPSHOT.DONE` (see `docs/SECURITY.md`), and the
//! rate limiter that keeps refusals from flooding the server log.
//!
//! Three gates, in order:
//! 1. the connection's ACL user must be the peer user (`peer_user`);
//! 2. the message must carry this cluster's dbid;
//! 3. the sender must be a member, with one exception: leader-to-follower traffic from an
//!    id this node has never seen (`SenderVerdict::AcceptUnknownLeader`), because a node
//!    that has not yet applied the change that added the current leader (a joining node,
//!    or one that was cut off during the change) can learn it only from that leader.

use std::collections::HashMap;
use std::hash::Hash;

use raft::eraftpb::MessageType;

use crate::core::membership::Membership;

/// Decodes a protobuf message (a raft `Message`, a `ConfChangeV2`, ...) from bytes a peer
/// sent, without trusting any length it declares. `parse_from_bytes` reads a plain slice:
/// for a `bytes` field (raft's entry data, contexts) it reserves the declared length, up to
/// 10 MB, before finding that the bytes are not there. Read from `Bytes` with a limit
/// instead, every length is checked against what really follows and fields are slices of
/// the input (one copy of the input, no other reservation).
pub fn parse_protobuf<M: protobuf::Message>(bytes: &[u8]) -> protobuf::ProtobufResult<M> {
    let owned = bytes::Bytes::copy_from_slice(bytes);
    let mut input = protobuf::CodedInputStream::from_carllerche_bytes(&owned);
    let outer = input.push_limit(bytes.len() as u64)?;
    let message = M::parse_from(&mut input)?;
    input.pop_limit(outer);
    Ok(message)
}

/// The ACL user peer connections are authenticated as. Without a password peers do not
/// send `AUTH`, so their connections are the `default` user; `AUTH <password>` (empty
/// cluster-user) is also the `default` user.
pub fn peer_user<'a>(cluster_user: &'a str, cluster_password: &str) -> &'a str {
    if cluster_password.is_empty() || cluster_user.is_empty() {
        "default"
    } else {
        cluster_user
    }
}

/// Whether `AUTH <args>` on the raft thread's own peer listener authenticates the cluster
/// user: `AUTH <password>` names the default user, `AUTH <user> <password>` a user, as in
/// Redis. The password is compared in time independent of where it differs.
pub fn peer_auth_matches(args: &[&[u8]], cluster_user: &str, cluster_password: &str) -> bool {
    let (user, password) = match args {
        [password] => (&b"default"[..], *password),
        [user, password] => (*user, *password),
        _ => return false,
    };
    let expected = cluster_password.as_bytes();
    let same_length = password.len() == expected.len();
    let differing = password
        .iter()
        .zip(expected.iter().cycle())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    let user_ok = user == peer_user(cluster_user, cluster_password).as_bytes();
    same_length && differing == 0 && user_ok && !expected.is_empty()
}

/// Redis' own wording for a command the caller's ACL user may not run.
pub fn noperm_error(command: &str) -> String {
    format!(
        "NOPERM this user has no permissions to run the '{}' command",
        command.to_ascii_lowercase()
    )
}

/// `Ok` when `current_user` (the connection's ACL user; `None` when the server has no
/// client context, which only happens for the module's own calls) may run internal peer
/// commands.
pub fn check_peer_user(
    current_user: Option<&str>,
    cluster_user: &str,
    cluster_password: &str,
    command: &str,
) -> Result<(), String> {
    match current_user {
        Some(user) if user != peer_user(cluster_user, cluster_password) => {
            Err(noperm_error(command))
        }
        _ => Ok(()),
    }
}

/// Why a peer message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The dbid is not ours: the sender belongs to another cluster.
    OtherCluster,
    /// The sender claims this node's own id (two nodes with one id, or a forgery).
    OwnId,
    /// The sender's removal is committed (ids are never reused).
    Removed,
    /// The sender is not a member, and the message is not leader traffic.
    NotMember,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderVerdict {
    Accept,
    /// Leader traffic from an id this node does not know yet: accepted (see module doc).
    AcceptUnknownLeader,
    Refuse(Refusal),
}

/// Messages only a leader sends to its followers and learners.
pub fn is_leader_traffic(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
    )
}

/// Decides whether messages of `kinds` from `sender`, labelled with `dbid`, may reach raft
/// on node `my_id` (dbid `my_dbid`) whose applied membership is `membership`.
pub fn check_sender(
    my_dbid: &str,
    dbid: &[u8],
    my_id: u64,
    sender: u64,
    membership: &Membership,
    kinds: impl IntoIterator<Item = MessageType>,
) -> SenderVerdict {
    if dbid != my_dbid.as_bytes() {
        return SenderVerdict::Refuse(Refusal::OtherCluster);
    }
    if sender == my_id {
        return SenderVerdict::Refuse(Refusal::OwnId);
    }
    if membership.get(sender).is_some() {
        return SenderVerdict::Accept;
    }
    if membership.is_used(sender) {
        return SenderVerdict::Refuse(Refusal::Removed);
    }
    if membership.get(my_id).is_none() {
        // Joining (or replaying a log that has not named us yet): we know nobody, so we
        // cannot tell members from strangers; the dbid and the password vouch for them.
        return SenderVerdict::Accept;
    }
    if kinds.into_iter().all(is_leader_traffic) {
        return SenderVerdict::AcceptUnknownLeader;
    }
    SenderVerdict::Refuse(Refusal::NotMember)
}

/// Refuses a peer message that is well formed but that raft-rs would answer with a panic
/// (it trusts its peers), given this node's current `term` and `last_index`:
/// - a heartbeat committing past our last entry (`commit_to` out of range);
/// - an append whose entries do not follow `index` one by one, or whose terms go down,
///   exceed the message's term or fall below `log_term` (the log and its store assert
///   contiguity; an entry overwriting a committed one is fatal);
/// - a snapshot whose configuration raft cannot restore (no voters, id 0, duplicates, an
///   id both voter and learner) or is joint (this cluster changes one node at a time);
/// - a forwarded proposal (nodes here never forward them; an empty one panics raft-rs).
///
/// A correct leader never sends any of these; refusing them only drops the message.
pub fn check_step(
    message: &raft::eraftpb::Message,
    term: u64,
    last_index: u64,
) -> Result<(), String> {
    // Messages from an older term are ignored by raft before it looks at anything else.
    let current = message.term == 0 || message.term >= term;
    match message.get_msg_type() {
        MessageType::MsgHeartbeat if current && message.commit > last_index => Err(format!(
            "heartbeat commits index {} beyond this node's last index {last_index}",
            message.commit
        )),
        MessageType::MsgAppend => {
            let mut previous_term = message.log_term;
            for (offset, entry) in message.entries.iter().enumerate() {
                let expected = message.index.saturating_add(1 + offset as u64);
                if entry.index != expected {
                    return Err(format!(
                        "append after index {} carries entry {} where {expected} belongs",
                        message.index, entry.index
                    ));
                }
                if entry.term < previous_term || entry.term > message.term {
                    return Err(format!(
                        "append entry {} has term {} (previous {previous_term}, message term {})",
                        entry.index, entry.term, message.term
                    ));
                }
                previous_term = entry.term;
            }
            Ok(())
        }
        // Nodes here only propose as leader (RaftNode::propose), so raft never forwards a
        // proposal; one from the network would append whatever it carries (and an empty
        // one is a raft-rs panic).
        MessageType::MsgPropose => Err("proposals are never forwarded between nodes".into()),
        MessageType::MsgSnapshot => {
            let conf = message.get_snapshot().get_metadata().get_conf_state();
            let mut seen = std::collections::BTreeSet::new();
            let ids = conf.voters.iter().chain(&conf.learners);
            let valid = !conf.voters.is_empty()
                && conf.voters_outgoing.is_empty()
                && conf.learners_next.is_empty()
                && !conf.auto_leave
                && ids.clone().all(|&id| id != 0 && seen.insert(id));
            if valid {
                Ok(())
            } else {
                Err(format!("snapshot with an unusable configuration {conf:?}"))
            }
        }
        _ => Ok(()),
    }
}

/// At most one line per key per `window_ms`, and at most `max_keys` keys remembered (a
/// flood of distinct keys cannot grow memory; lines for keys beyond that are dropped and
/// counted). Time is an input, so this stays pure.
pub struct RateLimiter<K> {
    window_ms: u64,
    max_keys: usize,
    /// key → (time of the last line, lines held back since).
    seen: HashMap<K, (u64, u64)>,
    /// Lines dropped because the table was full of keys logged within the window.
    pub dropped: u64,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(window_ms: u64, max_keys: usize) -> Self {
        RateLimiter {
            window_ms,
            max_keys: max_keys.max(1),
            seen: HashMap::new(),
            dropped: 0,
        }
    }

    /// `Some(held_back)` when a line for `key` may be written now (`held_back`: lines
    /// suppressed for it since the last one); `None` when it must be suppressed.
    pub fn admit(&mut self, key: &K, now_ms: u64) -> Option<u64> {
        if let Some((last_ms, held_back)) = self.seen.get_mut(key) {
            if now_ms.saturating_sub(*last_ms) < self.window_ms {
                *held_back += 1;
                return None;
            }
            let count = *held_back;
            *last_ms = now_ms;
            *held_back = 0;
            return Some(count);
        }
        if self.seen.len() >= self.max_keys {
            let window_ms = self.window_ms;
            self.seen
                .retain(|_, (last_ms, _)| now_ms.saturating_sub(*last_ms) < window_ms);
            if self.seen.len() >= self.max_keys {
                self.dropped += 1;
                return None;
            }
        }
        self.seen.insert(key.clone(), (now_ms, 0));
        Some(0)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_auth_accepts_only_the_cluster_user_and_its_password() {
        assert!(peer_auth_matches(&[b"raft", b"secret"], "raft", "secret"));
        assert!(!peer_auth_matches(&[b"raft", b"secreT"], "raft", "secret"));
        assert!(!peer_auth_matches(&[b"raft", b"secret!"], "raft", "secret"));
        assert!(!peer_auth_matches(&[b"raft", b""], "raft", "secret"));
        assert!(!peer_auth_matches(&[b"other", b"secret"], "raft", "secret"));
        assert!(!peer_auth_matches(&[b"secret"], "raft", "secret"));
        assert!(peer_auth_matches(&[b"secret"], "default", "secret"));
        assert!(peer_auth_matches(&[b"default", b"secret"], "", "secret"));
        assert!(!peer_auth_matches(&[], "raft", "secret"));
        // Without a password there is nothing to authenticate against.
        assert!(!peer_auth_matches(&[b""], "default", ""));
    }
    use crate::core::membership::{single_change, ChangeContext};
    use raft::eraftpb::ConfChangeType;

    const DBID: &str = "0123456789abcdef0123456789abcdef";

    fn members(ids: &[u64], removed: &[u64]) -> Membership {
        let mut m = Membership::default();
        let mut apply = |kind, id| {
            let context = ChangeContext {
                origin: None,
                node_id: id,
                addr: format!("127.0.0.1:{}", 5000 + id),
                held_as_learner: false,
            };
            m.apply(&single_change(kind, id), &context);
        };
        for &id in ids.iter().chain(removed) {
            apply(ConfChangeType::AddNode, id);
        }
        for &id in removed {
            apply(ConfChangeType::RemoveNode, id);
        }
        m
    }

    #[test]
    fn protobuf_lengths_are_checked_before_allocating() {
        use protobuf::Message as _;
        let mut message = raft::eraftpb::Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 2;
        message.context = b"ctx".to_vec().into();
        let bytes = message.write_to_bytes().unwrap();
        let parsed: raft::eraftpb::Message = parse_protobuf(&bytes).unwrap();
        assert_eq!(parsed, message);
        // Field 12 (context), length-delimited, declaring 2^31 bytes, then 1 MiB.
        for prefix in [
            &[0x62, 0x80, 0x80, 0x80, 0x80, 0x08][..],
            &[0x62, 0x80, 0x80, 0x40],
        ] {
            let mut lying = bytes.clone();
            lying.extend_from_slice(prefix);
            assert!(parse_protobuf::<raft::eraftpb::Message>(&lying).is_err());
        }
        assert!(parse_protobuf::<raft::eraftpb::Message>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn step_checks_refuse_what_raft_would_panic_on() {
        use raft::eraftpb::{ConfState, Entry, Message};
        let message = |kind: MessageType, term: u64| Message {
            msg_type: kind,
            from: 1,
            to: 2,
            term,
            ..Default::default()
        };
        let entry = |index, term| Entry {
            index,
            term,
            ..Default::default()
        };
        let mut heartbeat = message(MessageType::MsgHeartbeat, 2);
        heartbeat.commit = 5;
        assert!(check_step(&heartbeat, 2, 5).is_ok());
        heartbeat.commit = 6;
        assert!(check_step(&heartbeat, 2, 5).is_err());
        // From an old term raft ignores it anyway.
        assert!(check_step(&heartbeat, 3, 5).is_ok());

        let mut append = message(MessageType::MsgAppend, 3);
        append.index = 5;
        append.log_term = 2;
        append.entries = vec![entry(6, 2), entry(7, 3)].into();
        assert!(check_step(&append, 3, 5).is_ok());
        for bad in [
            vec![entry(5, 3)],
            vec![entry(6, 3), entry(8, 3)],
            vec![entry(6, 1)],
            vec![entry(6, 3), entry(7, 2)],
            vec![entry(6, 4)],
        ] {
            append.entries = bad.clone().into();
            assert!(check_step(&append, 3, 5).is_err(), "{bad:?}");
        }

        let mut snapshot = message(MessageType::MsgSnapshot, 3);
        let mut with_conf = |voters: Vec<u64>, learners: Vec<u64>| {
            let conf = ConfState::from((voters, learners));
            snapshot.mut_snapshot().mut_metadata().set_conf_state(conf);
            check_step(&snapshot, 3, 5)
        };
        assert!(with_conf(vec![1, 2, 3], vec![4]).is_ok());
        assert!(with_conf(vec![], vec![4]).is_err());
        assert!(with_conf(vec![1, 2], vec![2]).is_err());
        assert!(with_conf(vec![1, 1], vec![]).is_err());
        assert!(with_conf(vec![0, 1], vec![]).is_err());
        assert!(check_step(&message(MessageType::MsgPropose, 3), 3, 5).is_err());
    }

    #[test]
    fn peer_user_is_default_without_a_password() {
        assert_eq!(peer_user("raft", ""), "default");
        assert_eq!(peer_user("", "secret"), "default");
        assert_eq!(peer_user("raft", "secret"), "raft");
        assert_eq!(peer_user("default", "secret"), "default");
    }

    #[test]
    fn only_the_peer_user_may_run_internal_commands() {
        assert!(check_peer_user(Some("raft"), "raft", "pw", "RAFT.MSG").is_ok());
        assert_eq!(
            check_peer_user(Some("alice"), "raft", "pw", "RAFT.MSG"),
            Err("NOPERM this user has no permissions to run the 'raft.msg' command".into())
        );
        assert!(check_peer_user(Some("default"), "raft", "pw", "RAFT.MSG").is_err());
        assert!(check_peer_user(Some("default"), "raft", "", "RAFT.MSG").is_ok());
        assert!(check_peer_user(Some("alice"), "default", "", "RAFT.MSG").is_err());
        assert!(check_peer_user(None, "raft", "pw", "RAFT.MSG").is_ok());
    }

    #[test]
    fn sender_checks() {
        let m = members(&[1, 2, 3], &[4]);
        let vote = [MessageType::MsgRequestVote];
        let append = [MessageType::MsgAppend];
        let check = |dbid: &str, sender, kinds: &[MessageType]| {
            check_sender(DBID, dbid.as_bytes(), 1, sender, &m, kinds.iter().copied())
        };
        assert_eq!(check(DBID, 2, &vote), SenderVerdict::Accept);
        assert_eq!(
            check(DBID, 1, &append),
            SenderVerdict::Refuse(Refusal::OwnId)
        );
        assert_eq!(
            check("ffffffffffffffffffffffffffffffff", 2, &append),
            SenderVerdict::Refuse(Refusal::OtherCluster)
        );
        assert_eq!(
            check(DBID, 4, &append),
            SenderVerdict::Refuse(Refusal::Removed)
        );
        assert_eq!(
            check(DBID, 9, &vote),
            SenderVerdict::Refuse(Refusal::NotMember)
        );
        assert_eq!(
            check(
                DBID,
                9,
                &[MessageType::MsgAppend, MessageType::MsgTimeoutNow]
            ),
            SenderVerdict::Refuse(Refusal::NotMember)
        );
        assert_eq!(check(DBID, 9, &append), SenderVerdict::AcceptUnknownLeader);
        // A node that is not in its own membership yet (joining) accepts any member-to-be.
        let empty = Membership::default();
        assert_eq!(
            check_sender(DBID, DBID.as_bytes(), 7, 9, &empty, vote),
            SenderVerdict::Accept
        );
        assert_eq!(
            check_sender(DBID, b"other", 7, 9, &empty, vote),
            SenderVerdict::Refuse(Refusal::OtherCluster)
        );
    }

    #[test]
    fn rate_limiter_lets_one_line_per_key_per_window() {
        let mut limiter = RateLimiter::new(5_000, 2);
        assert_eq!(limiter.admit(&1u64, 0), Some(0));
        assert_eq!(limiter.admit(&1, 10), None);
        assert_eq!(limiter.admit(&1, 4_999), None);
        assert_eq!(limiter.admit(&2, 100), Some(0));
        // Table full of fresh keys: a third key is dropped, not remembered.
        assert_eq!(limiter.admit(&3, 200), None);
        assert_eq!(limiter.dropped, 1);
        assert_eq!(limiter.len(), 2);
        assert_eq!(limiter.admit(&1, 5_000), Some(2));
        // Once key 2's window has passed, it makes room for key 3.
        assert_eq!(limiter.admit(&3, 5_200), Some(0));
        assert_eq!(limiter.len(), 2);
    }
}
