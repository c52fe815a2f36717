//! Which Ready cycles are durable, and when their held messages may leave.
//!
//! Raft's writes are made durable off the tick path: a cycle writes its entries and hard
//! state, and one sync at a time makes everything written so far durable while the node
//! goes on ticking, sending and writing. Ready cycles become durable in their order; the
//! messages a cycle holds (votes, append acks: they promise durability) leave only when
//! it is. Cycles written while a sync runs are covered together by the next one (group
//! commit), so at most one sync is in flight and one group waits behind it.

use raft::eraftpb::{Message, MessageType};

/// Ready cycles written but not durable yet, in their order.
#[derive(Debug, Default)]
pub struct PersistQueue {
    /// Syncs are made at all (`log-fsync`); when not, a cycle is durable once written.
    sync_enabled: bool,
    /// The cycles the sync in flight covers.
    syncing: Option<Group>,
    /// Cycles written after that sync started: the next sync covers them.
    waiting: Option<Group>,
    /// Cycles through this number are durable (raft has been told).
    durable_through: u64,
}

#[derive(Debug)]
struct Group {
    /// The last Ready number of the group (all before it are in it or durable).
    through: u64,
    messages: Vec<Message>,
    needs_sync: bool,
}

/// What the executor does after telling the queue something.
#[derive(Debug, Default, PartialEq)]
pub struct PersistStep {
    /// Ready cycles through this number are durable: raft learns it and these messages
    /// leave, in order.
    pub durable: Option<(u64, Vec<Message>)>,
    /// Start a sync of everything written so far, covering cycles through this number.
    pub start_sync: Option<u64>,
}

/// A heartbeat response claims nothing about this node's log (the leader learns only
/// that the node still follows it in its term), so it need not wait behind a sync: a
/// node busy syncing a large entry keeps answering heartbeats, and its leader keeps its
/// quorum (`check_quorum`).
fn may_leave_before_sync(message: &Message) -> bool {
    message.get_msg_type() == MessageType::MsgHeartbeatResponse
}

impl PersistQueue {
    pub fn new(sync_enabled: bool) -> PersistQueue {
        PersistQueue {
            sync_enabled,
            ..PersistQueue::default()
        }
    }

    /// Nothing is written and not yet durable.
    pub fn is_idle(&self) -> bool {
        self.syncing.is_none()
    }

    /// Ready `number` was written (or wrote nothing); `must_sync` is
    /// `ReadyOutput::must_sync`. Returns the messages that may leave now (heartbeat
    /// responses) and what to do next; the rest of `messages` is held until the cycle is
    /// durable.
    pub fn written(
        &mut self,
        number: u64,
        messages: Vec<Message>,
        must_sync: bool,
    ) -> (Vec<Message>, PersistStep) {
        let (early, held): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(may_leave_before_sync);
        let needs_sync = must_sync && self.sync_enabled;
        if self.syncing.is_none() {
            debug_assert!(self.waiting.is_none(), "a group waits only behind a sync");
            if !needs_sync {
                self.durable_through = number;
                let step = PersistStep {
                    durable: Some((number, held)),
                    start_sync: None,
                };
                return (early, step);
            }
            self.syncing = Some(Group {
                through: number,
                messages: held,
                needs_sync: true,
            });
            let step = PersistStep {
                durable: None,
                start_sync: Some(number),
            };
            return (early, step);
        }
        match &mut self.waiting {
            Some(group) => {
                assert!(number > group.through, "Ready cycles are written in order");
                group.through = number;
                group.messages.extend(held);
                group.needs_sync |= needs_sync;
            }
            None => {
                self.waiting = Some(Group {
                    through: number,
                    messages: held,
                    needs_sync,
                })
            }
        }
        (early, PersistStep::default())
    }

    /// Ready `number` was written and everything written so far was then synced on the
    /// executor's own thread (a cycle that installs a snapshot: raft counts the snapshot
    /// as applied only once it is durable, and must not be stepped before). Every held
    /// message leaves; a sync still in flight covers nothing more when it finishes.
    pub fn written_and_synced(&mut self, number: u64, messages: Vec<Message>) -> PersistStep {
        let mut held = Vec::new();
        if let Some(syncing) = &mut self.syncing {
            held.append(&mut syncing.messages);
        }
        if let Some(waiting) = self.waiting.take() {
            assert!(
                number > waiting.through,
                "Ready cycles are written in order"
            );
            held.extend(waiting.messages);
        }
        held.extend(messages);
        self.durable_through = number;
        PersistStep {
            durable: Some((number, held)),
            start_sync: None,
        }
    }

    /// The sync started for `number` finished: everything written before it started is
    /// durable.
    pub fn synced(&mut self, number: u64) -> PersistStep {
        let Some(done) = self.syncing.take() else {
            panic!("sync {number} finished but none was started");
        };
        assert_eq!(done.through, number, "syncs finish in the order they start");
        // A sync on the executor's thread may have overtaken this one
        // (`written_and_synced`): then it made nothing more durable.
        let overtaken = number <= self.durable_through;
        debug_assert!(!overtaken || done.messages.is_empty());
        let mut durable = (!overtaken).then_some((done.through, done.messages));
        let mut start_sync = None;
        if let Some(next) = self.waiting.take() {
            if next.needs_sync {
                start_sync = Some(next.through);
                self.syncing = Some(next);
            } else {
                // Wrote nothing that needs a sync: durable with the group ahead of it.
                let (through, messages) = durable.get_or_insert((next.through, Vec::new()));
                *through = next.through;
                messages.extend(next.messages);
            }
        }
        if let Some((through, _)) = &durable {
            self.durable_through = *through;
        }
        PersistStep {
            durable,
            start_sync,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, index: u64) -> Message {
        let mut message = Message {
            index,
            ..Default::default()
        };
        message.set_msg_type(kind);
        message
    }

    fn ack(index: u64) -> Message {
        message(MessageType::MsgAppendResponse, index)
    }

    fn indexes(messages: &[Message]) -> Vec<u64> {
        messages.iter().map(|m| m.index).collect()
    }

    #[test]
    fn a_cycle_that_needs_no_sync_is_durable_at_once_when_nothing_is_ahead() {
        let mut queue = PersistQueue::new(true);
        let (early, step) = queue.written(1, vec![ack(5)], false);
        assert!(early.is_empty());
        assert_eq!(step.durable, Some((1, vec![ack(5)])));
        assert_eq!(step.start_sync, None);
        assert!(queue.is_idle());
    }

    #[test]
    fn acks_wait_for_their_sync_and_later_cycles_share_the_next_one() {
        let mut queue = PersistQueue::new(true);
        let (_, step) = queue.written(1, vec![ack(1)], true);
        assert_eq!(
            step,
            PersistStep {
                durable: None,
                start_sync: Some(1)
            }
        );
        // Written while sync 1 runs: nothing leaves, no second sync starts.
        assert_eq!(
            queue.written(2, vec![ack(2)], true).1,
            PersistStep::default()
        );
        assert_eq!(
            queue.written(3, vec![ack(3)], false).1,
            PersistStep::default()
        );
        assert_eq!(
            queue.written(4, vec![ack(4)], true).1,
            PersistStep::default()
        );
        let step = queue.synced(1);
        let (through, messages) = step.durable.unwrap();
        assert_eq!((through, indexes(&messages)), (1, vec![1]));
        assert_eq!(step.start_sync, Some(4), "one sync covers cycles 2 to 4");
        let step = queue.synced(4);
        let (through, messages) = step.durable.unwrap();
        assert_eq!((through, indexes(&messages)), (4, vec![2, 3, 4]));
        assert_eq!(step.start_sync, None);
        assert!(queue.is_idle());
    }

    #[test]
    fn cycles_behind_a_sync_that_need_none_are_durable_with_it() {
        let mut queue = PersistQueue::new(true);
        queue.written(1, vec![ack(1)], true);
        queue.written(2, vec![ack(2)], false);
        let step = queue.synced(1);
        let (through, messages) = step.durable.unwrap();
        assert_eq!((through, indexes(&messages)), (2, vec![1, 2]));
        assert_eq!(step.start_sync, None);
        assert!(queue.is_idle());
    }

    #[test]
    fn heartbeat_responses_do_not_wait_behind_a_sync() {
        let mut queue = PersistQueue::new(true);
        queue.written(1, vec![ack(1)], true);
        let heartbeat = message(MessageType::MsgHeartbeatResponse, 0);
        let vote = message(MessageType::MsgRequestVoteResponse, 0);
        let (early, step) = queue.written(2, vec![heartbeat.clone(), vote.clone()], true);
        assert_eq!(early, vec![heartbeat]);
        assert_eq!(step, PersistStep::default());
        assert_eq!(queue.synced(1).start_sync, Some(2));
        assert_eq!(queue.synced(2).durable, Some((2, vec![vote])));
    }

    #[test]
    fn without_fsync_every_cycle_is_durable_once_written() {
        let mut queue = PersistQueue::new(false);
        for number in 1..=3 {
            let (_, step) = queue.written(number, vec![ack(number)], true);
            assert_eq!(step.durable, Some((number, vec![ack(number)])));
            assert_eq!(step.start_sync, None);
        }
    }

    #[test]
    fn a_cycle_synced_in_place_releases_everything_and_overtakes_the_sync_in_flight() {
        let mut queue = PersistQueue::new(true);
        queue.written(1, vec![ack(1)], true);
        queue.written(2, vec![ack(2)], true);
        let step = queue.written_and_synced(3, vec![ack(3)]);
        let (through, messages) = step.durable.unwrap();
        assert_eq!((through, indexes(&messages)), (3, vec![1, 2, 3]));
        assert_eq!(step.start_sync, None);
        assert!(!queue.is_idle(), "sync 1 is still running");
        // Written while sync 1 still runs: waits for the next sync, not for nothing.
        queue.written(4, vec![ack(4)], true);
        let step = queue.synced(1);
        assert_eq!(step.durable, None, "sync 1 covers nothing more");
        assert_eq!(step.start_sync, Some(4));
        let (through, messages) = queue.synced(4).durable.unwrap();
        assert_eq!((through, indexes(&messages)), (4, vec![4]));
        assert!(queue.is_idle());
    }

    #[test]
    fn an_overtaken_sync_still_releases_cycles_behind_it_that_need_none() {
        let mut queue = PersistQueue::new(true);
        queue.written(1, vec![ack(1)], true);
        queue.written_and_synced(2, vec![]);
        queue.written(3, vec![ack(3)], false);
        let step = queue.synced(1);
        let (through, messages) = step.durable.unwrap();
        assert_eq!((through, indexes(&messages)), (3, vec![3]));
        assert!(queue.is_idle());
    }

    #[test]
    #[should_panic(expected = "none was started")]
    fn a_sync_nobody_started_is_a_bug() {
        PersistQueue::new(true).synced(1);
    }
}
