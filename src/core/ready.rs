//! The one order in which a Ready cycle's work is done. The driver and the simulation
//! both hand every [`ReadyOutput`] to [`run_cycle`] with their own [`CycleSteps`] (real
//! disk and network, or simulated ones), so the simulation proves the order production
//! runs, and stops a node at any [`CrashPoint`] between the steps.

use raft::eraftpb::{Entry, HardState, Message, SnapshotMetadata};
use raft::ReadState;

use crate::core::node::{ReadyOutput, Role};

/// Where a cycle can be cut short (the simulation crashes the node there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The first messages are out and a received snapshot is installed; nothing written.
    AfterSend,
    /// Entries and hard state are written, not yet durable (only in a cycle that writes).
    AfterWrite,
    /// What was written is durable (when it had to be); no ack has left.
    AfterSync,
    /// Votes and acks have left; this cycle's commits are not applied.
    AfterAcks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The executor stopped at a crash point: the rest of the cycle never happens.
    Stopped,
}

/// What an executor does for each step of [`run_cycle`].
pub trait CycleSteps {
    type Error;

    fn send(&mut self, messages: Vec<Message>) -> Result<(), Self::Error>;
    /// Makes the leader's snapshot this node's own (log rewritten at it, state machine
    /// restored from it) before any entry after it is written.
    fn install_snapshot(&mut self, metadata: &SnapshotMetadata) -> Result<(), Self::Error>;
    /// Conf changes among `committed` take effect in raft.
    fn apply_conf_changes(&mut self, committed: &[Entry]) -> Result<(), Self::Error>;
    /// Hands committed entries to the state machine, in log order.
    fn apply(&mut self, committed: Vec<Entry>) -> Result<(), Self::Error>;
    fn confirm_reads(&mut self, reads: Vec<ReadState>) -> Result<(), Self::Error>;
    /// Writes the entries, then the hard state; not yet durable.
    fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), Self::Error>;
    /// Makes everything written so far durable (one sync per cycle at most).
    fn sync(&mut self) -> Result<(), Self::Error>;
    fn role_changed(&mut self, role: Role, leader: u64) -> Result<(), Self::Error>;
    /// Called at each crash point; `Flow::Stopped` ends the cycle there.
    fn reached(&mut self, _point: CrashPoint) -> Result<Flow, Self::Error> {
        Ok(Flow::Continue)
    }
}

/// Runs one cycle, in this order:
/// 1. send `send_now` (a leader's appends may leave before its own write), install a
///    received snapshot;
/// 2. conf changes then entries committed in earlier cycles, and confirmed reads: raft
///    hands out only entries durable on this node and on a quorum, so they do not wait
///    for this cycle's sync;
/// 3. write entries and hard state, sync them if [`ReadyOutput::must_sync`];
/// 4. conf changes this cycle committed take effect (so the transport knows new peers),
///    then the messages that promise durability (votes, append acks);
/// 5. apply what this cycle committed; report a role change.
pub fn run_cycle<S: CycleSteps>(ready: ReadyOutput, steps: &mut S) -> Result<Flow, S::Error> {
    let must_persist = ready.must_persist();
    let must_sync = ready.must_sync();
    steps.send(ready.send_now)?;
    if let Some(metadata) = &ready.snapshot {
        steps.install_snapshot(metadata)?;
    }
    if steps.reached(CrashPoint::AfterSend)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    steps.apply_conf_changes(&ready.committed_before_persist)?;
    steps.apply(ready.committed_before_persist)?;
    steps.confirm_reads(ready.read_states)?;
    if must_persist {
        steps.write(&ready.entries, ready.hard_state.as_ref())?;
        if steps.reached(CrashPoint::AfterWrite)? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
        if must_sync {
            steps.sync()?;
        }
    }
    if steps.reached(CrashPoint::AfterSync)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    steps.apply_conf_changes(&ready.committed)?;
    steps.send(ready.send_after_persist)?;
    if steps.reached(CrashPoint::AfterAcks)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    steps.apply(ready.committed)?;
    if let Some((role, leader)) = ready.role_change {
        steps.role_changed(role, leader)?;
    }
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{EntryType, MessageType};

    use super::*;

    /// Records each step as a word, and stops at `stop_at`.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<String>,
        stop_at: Option<CrashPoint>,
    }

    impl CycleSteps for Recorder {
        type Error = ();

        fn send(&mut self, messages: Vec<Message>) -> Result<(), ()> {
            let kinds: Vec<String> = messages
                .iter()
                .map(|m| format!("{:?}", m.get_msg_type()))
                .collect();
            self.steps.push(format!("send[{}]", kinds.join(",")));
            Ok(())
        }
        fn install_snapshot(&mut self, metadata: &SnapshotMetadata) -> Result<(), ()> {
            self.steps.push(format!("install@{}", metadata.index));
            Ok(())
        }
        fn apply_conf_changes(&mut self, committed: &[Entry]) -> Result<(), ()> {
            let changes = committed
                .iter()
                .filter(|e| e.get_entry_type() == EntryType::EntryConfChangeV2)
                .count();
            self.steps.push(format!("conf[{changes}]"));
            Ok(())
        }
        fn apply(&mut self, committed: Vec<Entry>) -> Result<(), ()> {
            let indexes: Vec<String> = committed.iter().map(|e| e.index.to_string()).collect();
            self.steps.push(format!("apply[{}]", indexes.join(",")));
            Ok(())
        }
        fn confirm_reads(&mut self, reads: Vec<ReadState>) -> Result<(), ()> {
            self.steps.push(format!("reads[{}]", reads.len()));
            Ok(())
        }
        fn write(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), ()> {
            self.steps.push(format!(
                "write[{}]{}",
                entries.len(),
                if hard_state.is_some() { "+hs" } else { "" }
            ));
            Ok(())
        }
        fn sync(&mut self) -> Result<(), ()> {
            self.steps.push("sync".into());
            Ok(())
        }
        fn role_changed(&mut self, role: Role, leader: u64) -> Result<(), ()> {
            self.steps.push(format!("role:{}/{leader}", role.as_str()));
            Ok(())
        }
        fn reached(&mut self, point: CrashPoint) -> Result<Flow, ()> {
            if self.stop_at == Some(point) {
                self.steps.push(format!("stop:{point:?}"));
                return Ok(Flow::Stopped);
            }
            Ok(Flow::Continue)
        }
    }

    fn entry(index: u64, conf_change: bool) -> Entry {
        let mut entry = Entry {
            index,
            term: 1,
            ..Default::default()
        };
        if conf_change {
            entry.set_entry_type(EntryType::EntryConfChangeV2);
        }
        entry
    }

    fn message(kind: MessageType) -> Message {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message
    }

    fn full_cycle() -> ReadyOutput {
        ReadyOutput {
            send_now: vec![message(MessageType::MsgAppend)],
            entries: vec![entry(7, false), entry(8, false)],
            hard_state: Some(HardState::default()),
            term_or_vote_changed: false,
            send_after_persist: vec![message(MessageType::MsgAppendResponse)],
            committed_before_persist: vec![entry(4, true), entry(5, false)],
            committed: vec![entry(6, false)],
            read_states: vec![ReadState::default()],
            snapshot: Some(SnapshotMetadata {
                index: 3,
                ..Default::default()
            }),
            role_change: Some((Role::Leader, 1)),
        }
    }

    #[test]
    fn a_cycle_runs_its_steps_in_the_one_order() {
        let mut recorder = Recorder::default();
        assert_eq!(run_cycle(full_cycle(), &mut recorder), Ok(Flow::Continue));
        assert_eq!(
            recorder.steps,
            [
                "send[MsgAppend]",
                "install@3",
                "conf[1]",
                "apply[4,5]",
                "reads[1]",
                "write[2]+hs",
                "sync",
                "conf[0]",
                "send[MsgAppendResponse]",
                "apply[6]",
                "role:leader/1",
            ]
        );
    }

    #[test]
    fn a_commit_index_alone_is_written_but_not_synced_and_nothing_written_skips_both() {
        let commit_only = ReadyOutput {
            hard_state: Some(HardState::default()),
            ..Default::default()
        };
        let mut recorder = Recorder::default();
        run_cycle(commit_only, &mut recorder).unwrap();
        assert!(recorder.steps.contains(&"write[0]+hs".to_string()));
        assert!(!recorder.steps.contains(&"sync".to_string()));
        let mut recorder = Recorder::default();
        run_cycle(ReadyOutput::default(), &mut recorder).unwrap();
        assert!(!recorder.steps.iter().any(|s| s.starts_with("write")));
    }

    #[test]
    fn a_stop_at_a_crash_point_leaves_the_rest_of_the_cycle_undone() {
        let cases = [
            (CrashPoint::AfterSend, "install@3"),
            (CrashPoint::AfterWrite, "write[2]+hs"),
            (CrashPoint::AfterSync, "sync"),
            (CrashPoint::AfterAcks, "send[MsgAppendResponse]"),
        ];
        for (point, last_done) in cases {
            let mut recorder = Recorder {
                stop_at: Some(point),
                ..Default::default()
            };
            assert_eq!(run_cycle(full_cycle(), &mut recorder), Ok(Flow::Stopped));
            let stop = recorder.steps.pop().unwrap();
            assert_eq!(stop, format!("stop:{point:?}"));
            assert_eq!(recorder.steps.last().map(String::as_str), Some(last_done));
        }
    }
}
