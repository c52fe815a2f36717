//! The raft node wrapper: inputs in (tick, propose, step, read index, conf change),
//! one `ReadyOutput` out per Ready cycle, saying exactly what the caller must do and in
//! which order. No I/O happens here; the in-memory `LogStore` is updated as raft-rs
//! requires, and the caller must make `persist` durable before acting on anything after it.

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, HardState, Message};
use raft::{RawNode, ReadState, StateRole};
use slog::Drain;

use crate::core::pending::{ReadBatches, RequestId};
use crate::core::storage::LogStore;

/// Timing and flow-control knobs, in ticks and bytes (the adapter converts from ms).
#[derive(Clone, Debug)]
pub struct NodeParams {
    pub id: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Highest index already reflected in the state machine when the node starts.
    pub applied: u64,
    pub max_append_bytes: u64,
    pub max_inflight_appends: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate | Role::PreCandidate => "candidate",
            Role::Leader => "leader",
        }
    }

    fn from_raft(role: StateRole) -> Role {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// What one Ready cycle asks of the caller (`core::ready::run_cycle` is the order):
/// send `send_now` (a leader may send appends before its own disk write), install
/// `snapshot`, apply `committed` and answer `read_states` (raft hands out only entries
/// durable here and on a quorum), write `entries` then `hard_state`, and send
/// `send_after_persist` (votes, append acks: they promise durability) only once this
/// cycle is durable, then report it with [`RaftNode::on_persisted`]. Persistence is
/// asynchronous: later cycles may run before this one is durable.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// raft-rs' number of this Ready: cycles are durable in this order.
    pub number: u64,
    pub send_now: Vec<Message>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// The hard state's term or vote changed (not only its commit index).
    pub term_or_vote_changed: bool,
    pub send_after_persist: Vec<Message>,
    /// Committed, and raft hands out only entries durable on this node: a quorum has
    /// them on disk whatever happens to this cycle's write.
    pub committed: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// A snapshot from the leader that replaces the log up to its index: before the
    /// entries, the caller makes it the node's snapshot and restores the state machine.
    pub snapshot: Option<raft::eraftpb::SnapshotMetadata>,
    /// Set when role or leader changed during this cycle.
    pub role_change: Option<(Role, u64)>,
}

impl ReadyOutput {
    /// A commit index alone need not be synced: a lost one is learned again from the
    /// leader (or recomputed by a lone leader), and recovery accepts any earlier value.
    pub fn must_sync(&self) -> bool {
        !self.entries.is_empty() || self.snapshot.is_some() || self.term_or_vote_changed
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    /// Leader that has committed an entry of its own term: only then may it serve.
    pub leader_ready: bool,
}

/// What [`RaftNode::start_read_round`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRound {
    /// A round started; its heartbeats leave in the next Ready.
    Started,
    /// Nothing to start (no read queued, or a round is in flight).
    None,
    /// This node does not lead: these queued reads cannot be confirmed here.
    NotLeader(Vec<RequestId>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ProposeError {
    NotLeader,
    /// raft-rs refused it (e.g. a leader transfer is in progress, or a conf change is pending).
    Dropped,
}

pub struct RaftNode {
    raw: RawNode<LogStore>,
    /// Peer messages refused by `peer_check::check_step` so far.
    refused_steps: u64,
    /// A received snapshot's Ready number and index: raft counts it as applied once
    /// that Ready is durable.
    snapshot_awaiting_persist: Option<(u64, u64)>,
}

/// raft-rs logs through slog; bridge it to the `log` facade the adapters configure.
fn bridge_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

impl RaftNode {
    pub fn new(params: &NodeParams, store: LogStore) -> Result<RaftNode, raft::Error> {
        let config = raft::Config {
            id: params.id,
            election_tick: params.election_ticks,
            heartbeat_tick: params.heartbeat_ticks,
            applied: params.applied,
            max_size_per_msg: params.max_append_bytes,
            max_inflight_msgs: params.max_inflight_appends,
            // An isolated or restarted node must not depose a healthy leader.
            pre_vote: true,
            check_quorum: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        config.validate()?;
        let mut store = store;
        store.set_applied(params.applied);
        let raw = RawNode::new(&config, store, &bridge_logger())?;
        Ok(RaftNode {
            raw,
            refused_steps: 0,
            snapshot_awaiting_persist: None,
        })
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Starts an election. Refused on a node that is not a voter: raft-rs 0.7 does not
    /// check, and a learner (or a node with an empty configuration) would win.
    pub fn campaign(&mut self) -> Result<(), raft::Error> {
        if !self.raw.raft.promotable() {
            return Err(raft::Error::ConfigInvalid(
                "this node is not a voter".into(),
            ));
        }
        self.raw.campaign()
    }

    /// RAFT.TIMEOUT_NOW: an election that skips pre-vote and the leader lease, as a
    /// leadership transfer does. A follower steps itself a TimeoutNow (term 0 = local).
    pub fn force_election(&mut self) -> Result<(), raft::Error> {
        if self.raw.raft.state == StateRole::Leader {
            return Ok(());
        }
        let mut message = Message::default();
        message.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
        message.to = self.raw.raft.id;
        message.from = self.raw.raft.id;
        message.term = 0;
        self.raw.step(message)
    }

    /// Appends `data` on the leader; returns the (index, term) it was given.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(u64, u64), ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose(Vec::new(), data)
            .map_err(|_| ProposeError::Dropped)?;
        let index = self.raw.raft.raft_log.last_index();
        assert_eq!(
            index,
            before + 1,
            "a proposal must append exactly one entry"
        );
        Ok((index, self.raw.raft.term))
    }

    pub fn propose_conf_change(
        &mut self,
        context: Vec<u8>,
        change: ConfChangeV2,
    ) -> Result<(u64, u64), ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose_conf_change(context, change)
            .map_err(|_| ProposeError::Dropped)?;
        let index = self.raw.raft.raft_log.last_index();
        if index == before {
            return Err(ProposeError::Dropped);
        }
        Ok((index, self.raw.raft.term))
    }

    /// Applies a committed conf change to raft's view of the membership.
    pub fn apply_conf_change(&mut self, change: &ConfChangeV2) -> Result<ConfState, raft::Error> {
        let conf_state = self.raw.apply_conf_change(change)?;
        self.raw.mut_store().set_conf_state(conf_state.clone());
        Ok(conf_state)
    }

    /// Steps a peer message. Messages raft-rs would panic on (see
    /// `peer_check::check_step`) are refused with an error instead.
    pub fn step(&mut self, message: Message) -> Result<(), raft::Error> {
        let (term, last_index) = (self.raw.raft.term, self.raw.raft.raft_log.last_index());
        if let Err(reason) = crate::core::peer_check::check_step(&message, term, last_index) {
            let text = format!("refused a message from node {}: {reason}", message.from);
            self.refused_steps += 1;
            // Logged the 1st, 2nd, 4th, 8th... time: visible, but never a flood.
            if self.refused_steps.is_power_of_two() {
                log::warn!(
                    "raft: {text} ({} such messages refused so far)",
                    self.refused_steps
                );
            }
            // raft::Error has no variant for a refused message; InvalidData says it.
            return Err(raft::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                text,
            )));
        }
        self.raw.step(message)
    }

    /// A leader that applied its own removal stops leading (same term, leader unknown):
    /// raft-rs would keep it leading without a progress of its own, and its next commit
    /// would panic. Messages already queued (a MsgTimeoutNow) are still sent.
    pub fn step_down(&mut self) {
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, raft::INVALID_ID);
    }

    pub fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context);
    }

    pub fn transfer_leader(&mut self, target: u64) {
        self.raw.transfer_leader(target);
    }

    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
        // A lost snapshot transfer must not leave the leader waiting for it forever.
        self.raw
            .report_snapshot(peer, raft::SnapshotStatus::Failure);
    }

    pub fn report_snapshot_sent(&mut self, peer: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(peer, status);
    }

    /// The state machine holds a durable snapshot at `index`: drop the log up to it.
    pub fn compact_log(&mut self, index: u64, term: u64, conf_state: ConfState) {
        self.raw
            .mut_store()
            .compact_to_snapshot(index, term, conf_state);
    }

    /// The last entry handed to the caller for applying.
    pub fn handed_out_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        NodeStatus {
            id: raft.id,
            role: Role::from_raft(raft.state),
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            leader_ready: raft.state == StateRole::Leader && raft.commit_to_current_term(),
        }
    }

    /// A conf change was proposed and not yet applied: raft would turn another one into a
    /// no-op, so callers must refuse instead.
    pub fn has_pending_conf_change(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Learners whose log has caught up with the commit index: ready to become voters.
    pub fn caught_up_learners(&self) -> Vec<u64> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        let commit = raft.raft_log.committed;
        let learners = self.conf_state().learners;
        raft.prs()
            .iter()
            .filter(|(id, progress)| learners.contains(id) && progress.matched >= commit)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The learner the leader promotes next, if any: one change at a time, a learner that
    /// has caught up with the commit index, not one held back on purpose (`is_held`:
    /// `Membership::is_held_learner`). The driver and the simulation both decide with it.
    pub fn learner_to_promote(&self, is_held: impl Fn(u64) -> bool) -> Option<u64> {
        if self.has_pending_conf_change() {
            return None;
        }
        let mut caught_up = self.caught_up_learners();
        caught_up.sort_unstable();
        caught_up.into_iter().find(|&id| !is_held(id))
    }

    /// The only voter needs no election timeout to lead again after a restart or INIT.
    pub fn should_campaign_alone(&self) -> bool {
        let status = self.status();
        self.conf_state().voters == [status.id] && status.role != Role::Leader
    }

    /// The voter other than us with the longest log, a good leadership transfer target.
    pub fn most_up_to_date_follower(&self) -> Option<u64> {
        let raft = &self.raw.raft;
        let voters = self.conf_state().voters;
        raft.prs()
            .iter()
            .filter(|(id, _)| **id != raft.id && voters.contains(id))
            .max_by_key(|(id, progress)| (progress.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Starts the next ReadIndex round of `reads` (one round in flight, see
    /// `ReadBatches::next_round`). A node that does not lead cannot: the queued reads are
    /// returned, for the caller to fail.
    pub fn start_read_round(&mut self, reads: &mut ReadBatches, now_tick: u64) -> ReadRound {
        if self.status().role != Role::Leader {
            return ReadRound::NotLeader(reads.take_queued());
        }
        match reads.next_round(now_tick) {
            Some(context) => {
                self.read_index(context);
                ReadRound::Started
            }
            None => ReadRound::None,
        }
    }

    pub fn store(&self) -> &LogStore {
        self.raw.store()
    }

    /// Entries from `first` on were written to the log file at `frames`.
    pub fn record_frames(&mut self, first: u64, frames: &[crate::core::logfile::FrameLocation]) {
        self.raw.mut_store().record_frames(first, frames);
    }

    /// The log file was rewritten after a compaction: the entries' new locations.
    pub fn replace_frames(&mut self, frames: &[crate::core::logfile::FrameLocation]) {
        self.raw.mut_store().replace_frames(frames);
    }

    /// `log-max-cache-size`, applied at once.
    pub fn set_cache_limit(&mut self, limit_bytes: Option<usize>) {
        self.raw.mut_store().set_cache_limit(limit_bytes);
    }

    /// Ready cycles through `number` are durable (`core::persist`): the leader counts
    /// its own entries for commitment from now on.
    pub fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        if let Some((ready_number, index)) = self.snapshot_awaiting_persist {
            if number >= ready_number {
                self.snapshot_awaiting_persist = None;
                if index > self.raw.raft.raft_log.applied() {
                    self.advance_apply_to(index);
                }
            }
        }
    }

    /// Raft and the store learn together that entries up to `index` are applied (the
    /// store may then drop them from its cache).
    fn advance_apply_to(&mut self, index: u64) {
        self.raw.advance_apply_to(index);
        self.raw.mut_store().set_applied(index);
    }

    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Runs one Ready cycle on the in-memory side; `None` when raft has nothing to do.
    pub fn poll_ready(&mut self) -> Option<ReadyOutput> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut ready = self.raw.ready();
        let mut out = ReadyOutput {
            number: ready.number(),
            ..ReadyOutput::default()
        };
        if let Some(soft) = ready.ss() {
            out.role_change = Some((Role::from_raft(soft.raft_state), soft.leader_id));
        }
        // Messages that need no durability (leader appends, heartbeats).
        out.send_now = ready.take_messages();
        if ready.snapshot().get_metadata().index != 0 {
            let metadata = ready.snapshot().get_metadata().clone();
            self.raw.mut_store().apply_snapshot(&metadata);
            self.snapshot_awaiting_persist = Some((out.number, metadata.index));
            out.snapshot = Some(metadata);
        }
        out.committed = ready.take_committed_entries();
        // New entries and hard state go to the in-memory store now (raft reads them back
        // to build messages) and to disk by the caller.
        if !ready.entries().is_empty() {
            out.entries = ready.take_entries();
            self.raw.mut_store().append(&out.entries);
        }
        if let Some(hard_state) = ready.hs() {
            let before = self.raw.store().hard_state();
            out.term_or_vote_changed =
                before.term != hard_state.term || before.vote != hard_state.vote;
            self.raw.mut_store().set_hard_state(hard_state.clone());
            out.hard_state = Some(hard_state.clone());
        }
        out.read_states = ready.take_read_states();
        // Messages that promise durability: they leave once this cycle is durable.
        out.send_after_persist = ready.take_persisted_messages();
        self.raw.advance_append_async(ready);
        if let Some(last) = out.committed.last() {
            // The caller applies strictly in order; conf changes are applied to raft by
            // the caller through `apply_conf_change` before the next cycle.
            self.advance_apply_to(last.index);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hard_state(term: u64, vote: u64, commit: u64) -> Option<HardState> {
        Some(HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        })
    }

    #[test]
    fn a_commit_index_alone_is_written_but_not_synced() {
        let commit_only = ReadyOutput {
            hard_state: hard_state(2, 1, 7),
            ..ReadyOutput::default()
        };
        assert!(!commit_only.must_sync());
        let new_term = ReadyOutput {
            hard_state: hard_state(3, 0, 7),
            term_or_vote_changed: true,
            ..ReadyOutput::default()
        };
        assert!(new_term.must_sync());
        let with_entries = ReadyOutput {
            entries: vec![Entry::default()],
            ..ReadyOutput::default()
        };
        assert!(with_entries.must_sync());
    }

    #[test]
    fn a_new_term_and_vote_are_synced() {
        let params = NodeParams {
            id: 1,
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 8,
        };
        let mut store = LogStore::new();
        store.set_conf_state(ConfState::from((vec![1], vec![])));
        let mut node = RaftNode::new(&params, store).expect("a valid node");
        node.campaign().expect("a voter may campaign");
        // The only voter elects itself: term 1, vote for itself.
        let ready = node.poll_ready().expect("the campaign produces a Ready");
        assert!(ready.term_or_vote_changed, "{:?}", ready.hard_state);
        assert!(ready.must_sync());
    }
}
