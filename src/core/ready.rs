//! The one order in which a Ready cycle's work is done. The driver and the simulation
//! both hand every [`ReadyOutput`] to [`run_cycle`], and every finished sync to
//! [`finish_sync`], with their own [`CycleSteps`] (real disk and network, or simulated
//! ones), so the simulation proves the order production runs, and stops a node at any
//! [`CrashPoint`] between the steps.
//!
//! Persistence is off the cycle: a cycle writes, and a sync (one at a time, on the
//! executor's own thread or schedule) makes the writes durable later; what waits for
//! durability is kept by [`PersistQueue`].

use raft::eraftpb::{Entry, HardState, Message, SnapshotMetadata};
use raft::ReadState;

use crate::core::node::{ReadyOutput, Role};
use crate::core::persist::{PersistQueue, PersistStep};

/// A sync that would start with nothing in flight runs in place, on the executor's own
/// thread, when the cycle wrote at most this much and the last sync was quick: handing it
/// to the sync thread and back costs two thread wake-ups, more than a quick fdatasync of a
/// small write (measured: SET -c 1 p50 0.50 ms in place, 0.68 ms handed over). A large
/// write or a slow disk goes to the sync thread, so ticks and heartbeats do not wait.
///
/// A cycle that sent messages before its write (a leader's appends) goes to the sync
/// thread too: the executor's peer tasks share its thread and send only once the cycle
/// ends, so a sync in place would hold the appends back until the leader's own fsync
/// is done, and the followers' fsyncs would follow it instead of overlapping it
/// (SET -c 1 p50 0.539 → 0.587 ms when the driver joined the transport's thread).
pub const SYNC_IN_PLACE_MAX_BYTES: usize = 64 * 1024;
/// See [`SYNC_IN_PLACE_MAX_BYTES`].
pub const SYNC_IN_PLACE_MAX_LAST_SYNC_US: u64 = 2_000;

/// Whether a sync of a cycle that wrote `written_bytes`, and first sent messages if
/// `sent_first`, runs in place (see [`SYNC_IN_PLACE_MAX_BYTES`]).
pub fn sync_in_place(written_bytes: usize, last_sync_us: u64, sent_first: bool) -> bool {
    !sent_first
        && written_bytes <= SYNC_IN_PLACE_MAX_BYTES
        && last_sync_us <= SYNC_IN_PLACE_MAX_LAST_SYNC_US
}

/// Where a cycle can be cut short (the simulation crashes the node there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The first messages are out and a received snapshot is installed; nothing written.
    AfterSend,
    /// Entries and hard state are written, not yet durable (only in a cycle that writes).
    AfterWrite,
    /// A sync finished; no ack it releases has left.
    AfterSync,
    /// The acks of durable cycles have left.
    AfterAcks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The executor stopped at a crash point: the rest of the cycle never happens.
    Stopped,
}

/// What an executor does for each step of [`run_cycle`] and [`finish_sync`].
pub trait CycleSteps {
    type Error;

    fn send(&mut self, messages: Vec<Message>) -> Result<(), Self::Error>;
    /// Makes the leader's snapshot this node's own (log rewritten at it, durably, and
    /// the state machine restored from it) before any entry after it is written.
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
    /// Starts making everything written so far durable; when it is, the executor calls
    /// [`finish_sync`] with `number`.
    fn start_sync(&mut self, number: u64) -> Result<(), Self::Error>;
    /// Makes everything written so far durable before returning (with `log-fsync` off,
    /// nothing), on the executor's own thread.
    fn sync_now(&mut self) -> Result<(), Self::Error>;
    /// How long the last sync took, in microseconds (0 before the first): with the bytes
    /// a cycle wrote, it decides where that cycle's sync runs ([`sync_in_place`]).
    fn last_sync_us(&mut self) -> u64;
    /// Ready cycles through `number` are durable: tell raft (`RaftNode::on_persisted`).
    fn durable(&mut self, number: u64) -> Result<(), Self::Error>;
    fn role_changed(&mut self, role: Role, leader: u64) -> Result<(), Self::Error>;
    /// Called at each crash point; `Flow::Stopped` ends the cycle there.
    fn reached(&mut self, _point: CrashPoint) -> Result<Flow, Self::Error> {
        Ok(Flow::Continue)
    }
}

/// Runs one cycle, in this order:
/// 1. send `send_now` (a leader's appends may leave before its own write), install a
///    received snapshot;
/// 2. conf changes then committed entries, and confirmed reads: raft hands out only
///    entries durable on this node and on a quorum, so they wait for no write;
/// 3. write entries and hard state;
/// 4. hand the cycle to `persist`: its acks and votes leave once it is durable (at once
///    if it needs no sync and nothing is ahead of it, else after a sync; a cycle that
///    installed a snapshot syncs in place and releases everything held, and so does a
///    small cycle that sent nothing in step 1 and whose sync would start now, see
///    [`sync_in_place`]);
/// 5. report a role change.
pub fn run_cycle<S: CycleSteps>(
    ready: ReadyOutput,
    persist: &mut PersistQueue,
    steps: &mut S,
) -> Result<Flow, S::Error> {
    let must_sync = ready.must_sync();
    let sent_first = !ready.send_now.is_empty();
    steps.send(ready.send_now)?;
    if let Some(metadata) = &ready.snapshot {
        steps.install_snapshot(metadata)?;
    }
    if steps.reached(CrashPoint::AfterSend)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    steps.apply_conf_changes(&ready.committed)?;
    steps.apply(ready.committed)?;
    steps.confirm_reads(ready.read_states)?;
    if !ready.entries.is_empty() || ready.hard_state.is_some() {
        steps.write(&ready.entries, ready.hard_state.as_ref())?;
        if steps.reached(CrashPoint::AfterWrite)? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
    }
    let mut step = if ready.snapshot.is_some() {
        // Raft counts the snapshot as applied only once this cycle is durable, and until
        // then must not campaign (it would read the compacted log): sync here, at once.
        steps.sync_now()?;
        if steps.reached(CrashPoint::AfterSync)? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
        persist.written_and_synced(ready.number, ready.send_after_persist)
    } else {
        let (early, step) = persist.written(ready.number, ready.send_after_persist, must_sync);
        steps.send(early)?;
        step
    };
    let written_bytes = || ready.entries.iter().map(|e| e.data.len()).sum();
    let in_place = step
        .start_sync
        .filter(|_| sync_in_place(written_bytes(), steps.last_sync_us(), sent_first));
    if in_place.is_some() {
        step.start_sync = None;
    }
    if follow(step, steps)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    if let Some(number) = in_place {
        steps.sync_now()?;
        if finish_sync(number, persist, steps)? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
    }
    if let Some((role, leader)) = ready.role_change {
        steps.role_changed(role, leader)?;
    }
    Ok(Flow::Continue)
}

/// The sync started for `number` finished: the cycles it covers are durable, their acks
/// leave, and the next sync starts if cycles were written meanwhile.
pub fn finish_sync<S: CycleSteps>(
    number: u64,
    persist: &mut PersistQueue,
    steps: &mut S,
) -> Result<Flow, S::Error> {
    let step = persist.synced(number);
    if steps.reached(CrashPoint::AfterSync)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    follow(step, steps)
}

fn follow<S: CycleSteps>(step: PersistStep, steps: &mut S) -> Result<Flow, S::Error> {
    if let Some((through, messages)) = step.durable {
        steps.durable(through)?;
        if !messages.is_empty() {
            steps.send(messages)?;
            if steps.reached(CrashPoint::AfterAcks)? == Flow::Stopped {
                return Ok(Flow::Stopped);
            }
        }
    }
    if let Some(number) = step.start_sync {
        steps.start_sync(number)?;
    }
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{EntryType, MessageType};

    use super::*;

    /// Records each step as a word, and stops at `stop_at`. Its disk is slow (syncs go
    /// to the sync thread) unless `quick_disk`.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<String>,
        stop_at: Option<CrashPoint>,
        quick_disk: bool,
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
        fn start_sync(&mut self, number: u64) -> Result<(), ()> {
            self.steps.push(format!("sync#{number}"));
            Ok(())
        }
        fn sync_now(&mut self) -> Result<(), ()> {
            self.steps.push("sync-now".to_string());
            Ok(())
        }
        fn last_sync_us(&mut self) -> u64 {
            if self.quick_disk {
                SYNC_IN_PLACE_MAX_LAST_SYNC_US
            } else {
                SYNC_IN_PLACE_MAX_LAST_SYNC_US + 1
            }
        }
        fn durable(&mut self, number: u64) -> Result<(), ()> {
            self.steps.push(format!("durable#{number}"));
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
            number: 9,
            send_now: vec![message(MessageType::MsgAppend)],
            entries: vec![entry(7, false), entry(8, false)],
            hard_state: Some(HardState::default()),
            term_or_vote_changed: false,
            send_after_persist: vec![
                message(MessageType::MsgAppendResponse),
                message(MessageType::MsgHeartbeatResponse),
            ],
            committed: vec![entry(4, true), entry(5, false)],
            read_states: vec![ReadState::default()],
            snapshot: None,
            role_change: Some((Role::Leader, 1)),
        }
    }

    #[test]
    fn a_cycle_that_installs_a_snapshot_is_durable_before_it_ends() {
        let mut recorder = Recorder::default();
        let mut persist = PersistQueue::new(true);
        // An earlier cycle's sync is still running.
        let earlier = ReadyOutput {
            number: 8,
            entries: vec![entry(2, false)],
            send_after_persist: vec![message(MessageType::MsgAppendResponse)],
            ..Default::default()
        };
        run_cycle(earlier, &mut persist, &mut Recorder::default()).unwrap();
        let with_snapshot = ReadyOutput {
            snapshot: Some(SnapshotMetadata {
                index: 3,
                ..Default::default()
            }),
            ..full_cycle()
        };
        run_cycle(with_snapshot, &mut persist, &mut recorder).unwrap();
        assert_eq!(
            recorder.steps,
            [
                "send[MsgAppend]",
                "install@3",
                "conf[1]",
                "apply[4,5]",
                "reads[1]",
                "write[2]+hs",
                "sync-now",
                "durable#9",
                "send[MsgAppendResponse,MsgAppendResponse,MsgHeartbeatResponse]",
                "role:leader/1",
            ]
        );
        recorder.steps.clear();
        finish_sync(8, &mut persist, &mut recorder).unwrap();
        assert!(recorder.steps.is_empty(), "{:?}", recorder.steps);
        assert!(persist.is_idle());
    }

    #[test]
    fn a_cycle_runs_its_steps_in_the_one_order_and_its_acks_wait_for_the_sync() {
        let mut recorder = Recorder::default();
        let mut persist = PersistQueue::new(true);
        assert_eq!(
            run_cycle(full_cycle(), &mut persist, &mut recorder),
            Ok(Flow::Continue)
        );
        assert_eq!(
            recorder.steps,
            [
                "send[MsgAppend]",
                "conf[1]",
                "apply[4,5]",
                "reads[1]",
                "write[2]+hs",
                "send[MsgHeartbeatResponse]",
                "sync#9",
                "role:leader/1",
            ]
        );
        recorder.steps.clear();
        assert_eq!(
            finish_sync(9, &mut persist, &mut recorder),
            Ok(Flow::Continue)
        );
        assert_eq!(recorder.steps, ["durable#9", "send[MsgAppendResponse]"]);
    }

    #[test]
    fn a_small_cycle_on_a_quick_disk_syncs_in_place_and_a_large_one_or_a_busy_sync_does_not() {
        let mut recorder = Recorder {
            quick_disk: true,
            ..Default::default()
        };
        let mut persist = PersistQueue::new(true);
        // A follower's cycle: nothing to send before the write.
        let mut follower_cycle = full_cycle();
        follower_cycle.send_now.clear();
        run_cycle(follower_cycle, &mut persist, &mut recorder).unwrap();
        assert_eq!(
            recorder.steps,
            [
                "send[]",
                "conf[1]",
                "apply[4,5]",
                "reads[1]",
                "write[2]+hs",
                "send[MsgHeartbeatResponse]",
                "sync-now",
                "durable#9",
                "send[MsgAppendResponse]",
                "role:leader/1",
            ]
        );
        assert!(persist.is_idle());

        // A leader's cycle, whose appends left first: its sync runs beside theirs.
        let mut leader_cycle = full_cycle();
        leader_cycle.number = 10;
        recorder.steps.clear();
        run_cycle(leader_cycle, &mut persist, &mut recorder).unwrap();
        assert!(recorder.steps.contains(&"sync#10".to_string()));
        assert!(!recorder.steps.contains(&"sync-now".to_string()));
        recorder.steps.clear();
        finish_sync(10, &mut persist, &mut recorder).unwrap();
        assert!(persist.is_idle());

        // Over the size limit: handed to the sync thread, and the acks wait.
        let mut large = full_cycle();
        large.send_now.clear();
        large.number = 11;
        large.entries[0].data = vec![0; SYNC_IN_PLACE_MAX_BYTES + 1].into();
        recorder.steps.clear();
        run_cycle(large, &mut persist, &mut recorder).unwrap();
        assert!(recorder.steps.contains(&"sync#11".to_string()));
        assert!(!recorder.steps.contains(&"sync-now".to_string()));
        assert!(!recorder
            .steps
            .contains(&"send[MsgAppendResponse]".to_string()));

        // With that sync in flight, a small cycle waits for the next one, not in place.
        let mut small = full_cycle();
        small.send_now.clear();
        small.number = 12;
        recorder.steps.clear();
        run_cycle(small, &mut persist, &mut recorder).unwrap();
        assert!(!recorder.steps.iter().any(|s| s.starts_with("sync")));
        recorder.steps.clear();
        finish_sync(11, &mut persist, &mut recorder).unwrap();
        assert_eq!(
            recorder.steps,
            ["durable#11", "send[MsgAppendResponse]", "sync#12"]
        );

        // A slow last sync sends even a small cycle to the sync thread.
        assert!(!sync_in_place(
            10,
            SYNC_IN_PLACE_MAX_LAST_SYNC_US + 1,
            false
        ));
        assert!(sync_in_place(SYNC_IN_PLACE_MAX_BYTES, 0, false));
        assert!(!sync_in_place(10, 0, true));
    }

    #[test]
    fn a_commit_index_alone_is_written_and_durable_without_a_sync() {
        let commit_only = ReadyOutput {
            number: 4,
            hard_state: Some(HardState::default()),
            send_after_persist: vec![message(MessageType::MsgAppendResponse)],
            ..Default::default()
        };
        let mut recorder = Recorder::default();
        let mut persist = PersistQueue::new(true);
        run_cycle(commit_only, &mut persist, &mut recorder).unwrap();
        assert!(recorder.steps.contains(&"write[0]+hs".to_string()));
        assert!(!recorder.steps.iter().any(|s| s.starts_with("sync")));
        assert!(recorder.steps.contains(&"durable#4".to_string()));
        let mut recorder = Recorder::default();
        run_cycle(ReadyOutput::default(), &mut persist, &mut recorder).unwrap();
        assert!(!recorder.steps.iter().any(|s| s.starts_with("write")));
    }

    #[test]
    fn a_stop_at_a_crash_point_leaves_the_rest_undone() {
        let cases = [
            (CrashPoint::AfterSend, "send[MsgAppend]"),
            (CrashPoint::AfterWrite, "write[2]+hs"),
        ];
        for (point, last_done) in cases {
            let mut recorder = Recorder {
                stop_at: Some(point),
                ..Default::default()
            };
            let mut persist = PersistQueue::new(true);
            assert_eq!(
                run_cycle(full_cycle(), &mut persist, &mut recorder),
                Ok(Flow::Stopped)
            );
            let stop = recorder.steps.pop().unwrap();
            assert_eq!(stop, format!("stop:{point:?}"));
            assert_eq!(recorder.steps.last().map(String::as_str), Some(last_done));
        }
        for (point, last_done) in [
            (CrashPoint::AfterSync, None),
            (CrashPoint::AfterAcks, Some("send[MsgAppendResponse]")),
        ] {
            let mut persist = PersistQueue::new(true);
            run_cycle(full_cycle(), &mut persist, &mut Recorder::default()).unwrap();
            let mut recorder = Recorder {
                stop_at: Some(point),
                ..Default::default()
            };
            assert_eq!(
                finish_sync(9, &mut persist, &mut recorder),
                Ok(Flow::Stopped)
            );
            recorder.steps.pop();
            assert_eq!(recorder.steps.last().map(String::as_str), last_done);
        }
    }
}
