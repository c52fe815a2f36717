//! The driver: owns the raft node and the log file, pumps the Ready loop, and hands
//! committed entries to the Redis main thread. It runs as a task on the raft thread (the
//! transport's runtime, beside the peer connections and the listener) and is the only
//! code that touches raft.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType};

use crate::adapters::disk::logio::{LogFile, LogSyncer};
use crate::adapters::disk::snapshot_files::SnapshotFiles;
use crate::adapters::network::peer_inbound::{PeerGate, PeerInput};
use crate::adapters::network::snapshot_send::SendJob;
use crate::adapters::network::transport::Transport;
use crate::adapters::queue::{BoundedReceiver, BoundedSender};
use crate::core::config::DriverSettings;
use crate::core::logfile::LogPosition;
use crate::core::membership::{single_change, ChangeContext, Membership};
use crate::core::node::{RaftNode, ReadRound, Role};
use crate::core::pending::{ProposalTable, ReadBatches, RequestId};
use crate::core::persist::PersistQueue;
use crate::core::ready::{finish_sync, run_cycle, CycleSteps};
use crate::core::snapshot_policy::{rewrite_can_wait, should_request_snapshot, LogFileState};

/// Inputs waiting for the driver; main-thread senders never block on it.
pub const INBOX_BOUND: usize = 65_536;
/// Batches of work waiting for the main thread; the driver waits when it is full.
pub const MAIN_QUEUE_BOUND: usize = 1_024;
/// Inputs handled per loop iteration, so one Ready cycle (and one fsync) covers many writes
/// without starving ticks.
const MAX_INPUTS_PER_CYCLE: usize = 4_096;

pub enum DriverInput {
    Propose {
        request_id: RequestId,
        data: Vec<u8>,
    },
    Read {
        request_id: RequestId,
    },
    ConfChange {
        request_id: Option<RequestId>,
        change: ConfChangeV2,
        context: Vec<u8>,
    },
    Campaign,
    /// Hand leadership to `target`, or to the most up-to-date follower.
    TransferLeader {
        target: Option<u64>,
    },
    Peer(Box<Message>),
    /// The fork child wrote a snapshot at `index`: the log up to it can go.
    SnapshotTaken {
        index: u64,
        term: u64,
        conf_state: raft::eraftpb::ConfState,
    },
    SnapshotFailed,
    /// A snapshot transfer to `to` ended.
    SnapshotSent {
        to: u64,
        delivered: bool,
    },
    /// Where a peer the membership does not know yet can be reached.
    PeerAddress {
        id: u64,
        addr: String,
    },
    /// CONFIG SET changed a setting the driver follows.
    Settings(DriverSettings),
    /// The sync thread made the log durable through Ready `number`.
    Synced {
        number: u64,
    },
}

impl From<PeerInput> for DriverInput {
    fn from(input: PeerInput) -> DriverInput {
        match input {
            PeerInput::Address { id, addr } => DriverInput::PeerAddress { id, addr },
            PeerInput::Message(message) => DriverInput::Peer(message),
        }
    }
}

pub enum MainTask {
    Apply(Vec<Entry>),
    /// A member told us our removal is committed: stop serving.
    LeaveCluster,
    /// The log outgrew log-max-file-size: take a snapshot of the applied state.
    TakeSnapshot,
    /// Raft installed the leader's snapshot at `index`: load `file`, which was published
    /// as `<log>.snapshot` (open, so that a later install renaming another file over that
    /// path before this one is loaded does not change what is loaded).
    InstallSnapshot {
        index: u64,
        file: std::fs::File,
    },
    Fail {
        request_ids: Vec<RequestId>,
        error: &'static str,
    },
    ReadReady {
        request_ids: Vec<RequestId>,
        index: u64,
    },
}

pub const ERR_NOT_COMMITTED: &str = "TIMEOUT not committed yet";
pub const ERR_NO_QUORUM_READ: &str = "TIMEOUT no quorum for read";
pub const ERR_NO_LEADER: &str = "CLUSTERDOWN No raft leader";
pub const ERR_ONE_CHANGE: &str = "ERR one voting change only";

/// What the main thread (INFO, the command path) reads about the node without locking.
#[derive(Default)]
pub struct SharedStatus {
    pub role: AtomicU8,
    pub leader_id: AtomicU64,
    pub term: AtomicU64,
    /// The node this one voted for in the current term (0: none).
    pub voted_for: AtomicU64,
    pub commit_index: AtomicU64,
    pub first_index: AtomicU64,
    pub last_index: AtomicU64,
    pub leader_ready: AtomicBool,
    pub log_entries: AtomicU64,
    pub cache_entries: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub file_size: AtomicU64,
    pub fsync_count: AtomicU64,
    pub fsync_total_us: AtomicU64,
    pub fsync_max_us: AtomicU64,
    /// This leader applied its own removal and is handing leadership over; it leaves
    /// the cluster once another node leads (or after two election timeouts).
    pub handing_over: AtomicBool,
}

impl DriverInput {
    /// The input's name, for the log line of a long iteration.
    fn kind(&self) -> &'static str {
        match self {
            DriverInput::Propose { .. } => "proposal",
            DriverInput::Read { .. } => "read",
            DriverInput::ConfChange { .. } => "conf change",
            DriverInput::Campaign => "campaign",
            DriverInput::TransferLeader { .. } => "transfer",
            DriverInput::Peer(message) => match message.get_msg_type() {
                MessageType::MsgAppend => "append",
                MessageType::MsgAppendResponse => "append response",
                MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse => "heartbeat",
                _ => "peer message",
            },
            DriverInput::SnapshotTaken { .. } => "snapshot taken",
            DriverInput::SnapshotFailed => "snapshot failed",
            DriverInput::SnapshotSent { .. } => "snapshot sent",
            DriverInput::PeerAddress { .. } => "peer address",
            DriverInput::Settings(_) => "settings",
            DriverInput::Synced { .. } => "synced",
        }
    }
}

pub fn role_code(role: Role) -> u8 {
    match role {
        Role::Follower => 1,
        Role::Candidate | Role::PreCandidate => 2,
        Role::Leader => 3,
    }
}

pub fn role_name(code: u8) -> &'static str {
    match code {
        1 => "follower",
        2 => "candidate",
        3 => "leader",
        _ => "-",
    }
}

pub struct DriverParams {
    pub tick: Duration,
    pub fsync: bool,
    pub read_timeout_ticks: u64,
    /// This node's `host:port`, for naming itself in the membership.
    pub my_addr: String,
    pub snapshot_files: SnapshotFiles,
    /// Template for snapshot transfers (address, file and message filled per transfer).
    pub transfer: SendJob,
    /// For transfer threads to report back.
    pub inbox_sender: BoundedSender<DriverInput>,
    /// What the peer listener checks senders against, when this node has one.
    pub peer_gate: Option<tokio::sync::watch::Sender<Arc<PeerGate>>>,
    /// As configured when the node started; `DriverInput::Settings` replaces it.
    pub settings: DriverSettings,
}

pub struct Driver {
    node: RaftNode,
    log: LogFile,
    transport: Transport,
    /// The driver's own copy of the membership, to tell the transport where peers are.
    membership: Membership,
    /// Addresses peers announced before the log told us about them (bounded by use:
    /// dropped once the membership knows the id).
    address_hints: std::collections::BTreeMap<u64, String>,
    inbox: BoundedReceiver<DriverInput>,
    outbox: BoundedSender<MainTask>,
    wake_main: fn(),
    shared: Arc<SharedStatus>,
    proposals: ProposalTable,
    reads: ReadBatches,
    params: DriverParams,
    ticks: u64,
    was_leader: bool,
    /// Tick of the last snapshot request; None when none is outstanding.
    snapshot_requested_at: Option<u64>,
    /// The log file still holds entries before raft's snapshot point (a deferred rewrite).
    file_compaction_deferred: bool,
    /// Peers a snapshot is being streamed to.
    sending_snapshot_to: std::collections::BTreeSet<u64>,
    /// The entry cache limit last given to the store.
    cache_limit_bytes: u64,
    /// Committed entries held back while `raft.log-disable-apply` is on (a test knob),
    /// in log order; handed over once it is off.
    held_entries: Vec<Entry>,
    /// Tick by which a leader that removed itself leaves even if no other node leads yet.
    handover_deadline: Option<u64>,
    /// Ready cycles written and not yet durable, and what waits for them.
    persist: PersistQueue,
    /// To the sync thread (when `log-fsync` is on): at most one sync is asked at a time.
    sync_requests: Option<std::sync::mpsc::SyncSender<u64>>,
    /// Where the current loop iteration spent its time (logged when it was long).
    busy: BusyTimes,
}

/// Time one driver loop iteration spent per step. A long iteration delays ticks and
/// heartbeats, so it is logged with its breakdown. Log writes include syncs made in
/// place; a compaction runs inside an input (`SnapshotTaken`) and counts in both.
#[derive(Default)]
struct BusyTimes {
    inputs: Duration,
    tick: Duration,
    log_writes: Duration,
    sends: Duration,
    compaction: Duration,
    slowest_input: (&'static str, Duration),
}

/// An iteration longer than this is logged (a tenth of the shortest election timeout
/// anyone runs with in the tests is 100 ms).
const LONG_ITERATION: Duration = Duration::from_millis(100);

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: RaftNode,
        log: LogFile,
        transport: Transport,
        membership: Membership,
        inbox: BoundedReceiver<DriverInput>,
        outbox: BoundedSender<MainTask>,
        wake_main: fn(),
        shared: Arc<SharedStatus>,
        params: DriverParams,
    ) -> Driver {
        // start_node gave the store this limit.
        let cache_limit_bytes = params.settings.log_max_cache_size_bytes;
        let persist = PersistQueue::new(params.fsync);
        Driver {
            node,
            log,
            transport,
            membership,
            address_hints: std::collections::BTreeMap::new(),
            inbox,
            outbox,
            wake_main,
            shared,
            proposals: ProposalTable::default(),
            reads: ReadBatches::default(),
            params,
            ticks: 0,
            was_leader: false,
            snapshot_requested_at: None,
            file_compaction_deferred: false,
            sending_snapshot_to: std::collections::BTreeSet::new(),
            cache_limit_bytes,
            held_entries: Vec::new(),
            handover_deadline: None,
            persist,
            sync_requests: None,
            busy: BusyTimes::default(),
        }
    }

    /// Starts the driver as a task on the transport's thread, which becomes the one raft
    /// thread: the node, the log and every peer connection. A commit then costs no
    /// wake-up between the driver and the peer tasks on either node.
    pub fn spawn(mut self) {
        if self.params.fsync {
            let (requests, queue) = std::sync::mpsc::sync_channel(1);
            let syncer = self.log.syncer();
            let done = self.params.inbox_sender.clone();
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || run_sync_thread(&queue, &syncer, &done))
                .expect("could not start the raft log sync thread");
            self.sync_requests = Some(requests);
        }
        let transport = self.transport.clone();
        transport.spawn(self.run());
    }

    async fn run(mut self) {
        let mut next_tick = Instant::now() + self.params.tick;
        // Peers known from a snapshot; the log replay below adds the rest.
        self.update_peers();
        // Replay what is already committed first: conf changes in it decide who votes.
        self.pump_ready();
        self.campaign_if_alone();
        loop {
            let mut new_reads = Vec::new();
            let first = self.inbox.recv_until(next_tick).await;
            let started = Instant::now();
            self.busy = BusyTimes::default();
            match first {
                Ok(input) => self.handle(input, &mut new_reads),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..MAX_INPUTS_PER_CYCLE {
                match self.inbox.try_recv() {
                    Ok(input) => self.handle(input, &mut new_reads),
                    Err(_) => break,
                }
            }
            self.reads.queue(new_reads);
            let _started = self.start_queued_reads();
            self.busy.inputs = started.elapsed();
            let tick_started = Instant::now();
            if tick_started >= next_tick {
                self.node.tick();
                self.ticks += 1;
                next_tick += self.params.tick;
                if next_tick < Instant::now() {
                    // We fell behind (e.g. a slow fsync); don't fire a burst of ticks.
                    next_tick = Instant::now() + self.params.tick;
                }
                let expired = self
                    .reads
                    .expire(self.ticks, self.params.read_timeout_ticks);
                self.fail(expired, ERR_NO_QUORUM_READ);
                for peer in self.transport.take_unreachable() {
                    self.node.report_unreachable(peer);
                }
                self.promote_caught_up_learner();
                self.maybe_request_snapshot();
                if self.transport.take_told_removed() {
                    self.push_main(MainTask::LeaveCluster);
                }
                if let Some(deadline) = self.handover_deadline {
                    let leader = self.node.status().leader_id;
                    if leader != 0 && leader != self.node.status().id {
                        log::info!("raft: node {leader} leads now; this removed node leaves");
                        self.finish_handover();
                    } else if self.ticks >= deadline {
                        log::warn!("raft: no other node took over leadership in time; leaving");
                        self.finish_handover();
                    }
                }
            }
            self.busy.tick = tick_started.elapsed();
            self.pump_ready();
            let total = started.elapsed();
            if total >= LONG_ITERATION {
                let ms = |d: Duration| d.as_millis();
                let busy = &self.busy;
                log::info!(
                    "raft: the raft thread was busy for {} ms in one iteration (inputs {} ms, \
                     slowest {} {} ms; tick {} ms, log writes {} ms, sends {} ms, log \
                     compaction {} ms)",
                    ms(total),
                    ms(busy.inputs),
                    busy.slowest_input.0,
                    ms(busy.slowest_input.1),
                    ms(busy.tick),
                    ms(busy.log_writes),
                    ms(busy.sends),
                    ms(busy.compaction)
                );
            }
            if !self.inbox.is_empty() {
                // Inputs keep coming: let the peer tasks send what this cycle queued
                // (and the listener read) before the next cycle. After the busy check,
                // which must not count time other tasks ran.
                tokio::task::yield_now().await;
            }
        }
    }

    fn handle(&mut self, input: DriverInput, new_reads: &mut Vec<RequestId>) {
        let kind = input.kind();
        let started = Instant::now();
        self.handle_input(input, new_reads);
        let took = started.elapsed();
        if took > self.busy.slowest_input.1 {
            self.busy.slowest_input = (kind, took);
        }
    }

    fn handle_input(&mut self, input: DriverInput, new_reads: &mut Vec<RequestId>) {
        match input {
            DriverInput::Propose { request_id, data } => match self.node.propose(data) {
                Ok((index, term)) => self.proposals.insert(index, term, request_id),
                Err(_) => self.fail(vec![request_id], ERR_NO_LEADER),
            },
            DriverInput::Read { request_id } => new_reads.push(request_id),
            DriverInput::ConfChange {
                request_id,
                change,
                context,
            } => {
                if self.node.has_pending_conf_change() {
                    self.fail(request_id.into_iter().collect(), ERR_ONE_CHANGE);
                    return;
                }
                match self.node.propose_conf_change(context, change) {
                    Ok((index, term)) => {
                        if let Some(request_id) = request_id {
                            self.proposals.insert(index, term, request_id);
                        }
                    }
                    Err(_) => self.fail(request_id.into_iter().collect(), ERR_NO_LEADER),
                }
            }
            DriverInput::TransferLeader { target } => {
                if let Some(target) = target.or_else(|| self.node.most_up_to_date_follower()) {
                    self.node.transfer_leader(target);
                }
            }
            DriverInput::Campaign => {
                if let Err(e) = self.node.force_election() {
                    log::warn!("raft: could not start an election: {e}");
                }
            }
            DriverInput::SnapshotTaken {
                index,
                term,
                conf_state,
            } => {
                self.snapshot_requested_at = None;
                self.compact_to(index, term, conf_state);
            }
            DriverInput::SnapshotFailed => {
                // Keep the request time: the next try waits SNAPSHOT_RETRY_TICKS.
            }
            DriverInput::SnapshotSent { to, delivered } => {
                self.sending_snapshot_to.remove(&to);
                self.node.report_snapshot_sent(to, delivered);
            }
            DriverInput::PeerAddress { id, addr } => {
                const MAX_HINTS: usize = 64;
                if self.membership.get(id).is_none() && self.address_hints.len() < MAX_HINTS {
                    self.address_hints.insert(id, addr);
                    self.update_peers();
                }
            }
            DriverInput::Settings(settings) => {
                self.params.settings = settings;
                self.follow_cache_limit();
                self.release_held_entries();
            }
            DriverInput::Peer(message) => {
                if let Err(e) = self.node.step(*message) {
                    log::debug!("raft: dropped a peer message: {e}");
                }
            }
            DriverInput::Synced { number } => {
                let mut persist = std::mem::take(&mut self.persist);
                let Ok(_) = finish_sync(number, &mut persist, &mut DriverCycle(self));
                self.persist = persist;
            }
        }
    }

    /// The only voter needs no election timeout to lead again after a restart or INIT.
    fn campaign_if_alone(&mut self) {
        if self.node.should_campaign_alone() {
            if let Err(e) = self.node.campaign() {
                log::warn!("raft: could not start an election: {e}");
            }
            self.pump_ready();
        }
    }

    /// Starts the next ReadIndex round of the queued reads (`ReadBatches::next_round`:
    /// one round in flight). True if a round was started (its heartbeats wait in the next
    /// Ready).
    fn start_queued_reads(&mut self) -> bool {
        match self.node.start_read_round(&mut self.reads, self.ticks) {
            ReadRound::Started => true,
            ReadRound::None => false,
            ReadRound::NotLeader(queued) => {
                self.fail(queued, ERR_NO_LEADER);
                false
            }
        }
    }

    /// The Ready loop, steps named as in raft-rs' documentation.
    fn pump_ready(&mut self) {
        loop {
            self.pump_ready_once();
            // A confirmed round lets the reads queued behind it start theirs now.
            if !self.start_queued_reads() {
                break;
            }
        }
        self.publish_status();
    }

    fn pump_ready_once(&mut self) {
        while let Some(ready) = self.node.poll_ready() {
            // The driver never stops a cycle midway (that is the simulation's crashes).
            let mut persist = std::mem::take(&mut self.persist);
            let Ok(_) = run_cycle(ready, &mut persist, &mut DriverCycle(self));
            self.persist = persist;
        }
    }

    fn apply_conf_changes(&mut self, committed: &[Entry]) {
        for entry in committed {
            if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                self.apply_conf_change(entry);
            }
        }
    }

    fn hand_to_main(&mut self, committed: Vec<Entry>) {
        if committed.is_empty() {
            return;
        }
        for entry in &committed {
            let lost = self.proposals.on_committed(entry.index, entry.term);
            self.fail(lost, ERR_NOT_COMMITTED);
        }
        // INFO must never show an applied index past the commit index: publish the
        // commit before the main thread can apply (publish_status runs after the cycle).
        if let Some(last) = committed.last() {
            self.shared
                .commit_index
                .fetch_max(last.index, Ordering::Relaxed);
        }
        if !self.held_entries.is_empty() || self.params.settings.log_disable_apply {
            self.held_entries.extend(committed);
            return;
        }
        self.push_main(MainTask::Apply(committed));
    }

    /// Hands over what `raft.log-disable-apply` held, once it is off again.
    fn release_held_entries(&mut self) {
        if self.held_entries.is_empty() || self.params.settings.log_disable_apply {
            return;
        }
        let held = std::mem::take(&mut self.held_entries);
        self.push_main(MainTask::Apply(held));
    }

    fn on_role_change(&mut self) {
        let is_leader = self.node.status().role == Role::Leader;
        if self.was_leader && !is_leader {
            let proposals = self.proposals.drain_all();
            self.fail(proposals, ERR_NOT_COMMITTED);
            let reads = self.reads.drain_all();
            self.fail(reads, ERR_NO_QUORUM_READ);
        }
        self.was_leader = is_leader;
    }

    /// This leader applied a change that removed it: it steps down (raft-rs cannot lead
    /// without being a member) and asks the most up-to-date voter to campaign at once.
    /// Until the others have learned that the change committed they may still need this
    /// node's vote (with two members left, the remaining one cannot win an election
    /// without it), so the node leaves only once another node leads, or after two
    /// election timeouts.
    fn start_handover(&mut self) {
        if self.handover_deadline.is_some() {
            return;
        }
        self.shared.handing_over.store(true, Ordering::SeqCst);
        self.handover_deadline = Some(self.ticks + 2 * self.params.read_timeout_ticks.max(1));
        if let Some(target) = self.node.most_up_to_date_follower() {
            log::info!("raft: this leader was removed; handing leadership to node {target}");
            self.node.transfer_leader(target);
        }
        self.node.step_down();
    }

    fn finish_handover(&mut self) {
        self.handover_deadline = None;
        self.push_main(MainTask::LeaveCluster);
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.start_snapshot_transfer(message);
                continue;
            }
            if self.transport.send(to, message).is_err() {
                self.node.report_unreachable(to);
            }
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry) {
        let change = ConfChangeV2::parse_from_bytes(&entry.data).unwrap_or_else(|e| {
            log::error!(
                "raft: FATAL: committed conf change {} is undecodable: {e}",
                entry.index
            );
            std::process::abort();
        });
        let conf_state = match self.node.apply_conf_change(&change) {
            Ok(conf_state) => conf_state,
            Err(e) => {
                // raft-rs refuses only invalid transitions, which the leader never proposes.
                log::error!("raft: FATAL: cannot apply conf change {}: {e}", entry.index);
                std::process::abort();
            }
        };
        let status = self.node.status();
        if status.role == Role::Leader
            && !conf_state.voters.contains(&status.id)
            && !conf_state.learners.contains(&status.id)
        {
            self.start_handover();
        }
        if let Ok(context) = ChangeContext::decode(&entry.context) {
            self.membership.apply(&change, &context);
        }
        self.update_peers();
    }

    /// Raft accepted the leader's snapshot: make the verified received file of this index
    /// and term our snapshot, restart the log file at it, and have the main thread load it.
    fn install_received_snapshot(&mut self, metadata: &raft::eraftpb::SnapshotMetadata) {
        // Held entries the snapshot covers are in it; the main thread applies from it on.
        self.held_entries
            .retain(|entry| entry.index > metadata.index);
        let files = &self.params.snapshot_files;
        let received = files.received(metadata.index, metadata.term);
        let (file, meta) =
            crate::adapters::disk::snapshot_files::install(files, &received, metadata.index)
                .unwrap_or_else(|e| {
                    log::error!("raft: FATAL: cannot install the received snapshot: {e}");
                    std::process::abort();
                });
        if meta.index != metadata.index || meta.term != metadata.term {
            log::error!(
                "raft: FATAL: the installed snapshot file is at index {} term {}, raft installed index {} term {}",
                meta.index,
                meta.term,
                metadata.index,
                metadata.term
            );
            std::process::abort();
        }
        files.remove_received_up_to(metadata.index);
        let point = LogPosition {
            index: metadata.index,
            term: metadata.term,
        };
        // The store's hard state already holds this cycle's commit index, which may cover
        // entries appended only below (step 3); the rewrite persists it only up to `point`.
        let hard_state = self.node.store().hard_state().clone();
        let frames = self.log.rewrite(point, &hard_state, &[]);
        self.node.replace_frames(&frames);
        self.membership = crate::adapters::disk::snapshot_files::members_of(&meta);
        self.update_peers();
        log::info!(
            "raft: installed snapshot at index {} from the leader",
            metadata.index
        );
        self.push_main(MainTask::InstallSnapshot {
            index: metadata.index,
            file,
        });
    }

    /// The main thread holds a durable snapshot at `index`: drop the log up to it.
    fn compact_to(&mut self, index: u64, term: u64, conf_state: raft::eraftpb::ConfState) {
        let store = self.node.store();
        let compacted_before = store.snapshot_point().index;
        if index > store.last_index()
            || index < compacted_before
            || (index == compacted_before && !self.file_compaction_deferred)
        {
            return;
        }
        let size_bytes = self.log.size_bytes();
        let tail_bytes = store.bytes_after(index, size_bytes);
        if index > compacted_before {
            self.node.compact_log(index, term, conf_state);
        }
        if rewrite_can_wait(tail_bytes, size_bytes, self.log_max_file_size()) {
            // Most of the file follows the snapshot (e.g. a large entry applied just after
            // it was taken): rewriting would copy it all on this thread and delay
            // heartbeats. Raft's log is compacted in memory (followers get this snapshot);
            // the file keeps its older prefix, which a restart skips, until a later
            // snapshot compacts it cheaply.
            log::info!(
                "raft: log file compaction to index {index} deferred: {tail_bytes} of {size_bytes} bytes would be copied"
            );
            self.file_compaction_deferred = true;
            self.snapshot_requested_at = Some(self.ticks);
            return;
        }
        self.file_compaction_deferred = false;
        let started = std::time::Instant::now();
        let store = self.node.store();
        let entries = if store.last_index() > index {
            raft::Storage::entries(
                store,
                index + 1,
                store.last_index() + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap_or_else(|e| {
                log::error!("raft: FATAL: cannot read the log after compaction: {e}");
                std::process::abort();
            })
        } else {
            Vec::new()
        };
        let hard_state = store.hard_state().clone();
        let frames = self
            .log
            .rewrite(LogPosition { index, term }, &hard_state, &entries);
        self.node.replace_frames(&frames);
        crate::adapters::counters::SNAPSHOTS_CREATED.fetch_add(1, Ordering::Relaxed);
        self.busy.compaction += started.elapsed();
        log::info!(
            "raft: log compacted up to index {index}; {} entries kept ({} bytes, {} ms)",
            entries.len(),
            self.log.size_bytes(),
            started.elapsed().as_millis()
        );
    }

    /// `log-max-file-size` as it is now: CONFIG SET may change it at run time.
    fn log_max_file_size(&self) -> u64 {
        self.params.settings.log_max_file_size_bytes
    }

    /// `log-max-cache-size` may change at run time (CONFIG SET).
    fn follow_cache_limit(&mut self) {
        let limit = self.params.settings.log_max_cache_size_bytes;
        if limit != self.cache_limit_bytes {
            self.cache_limit_bytes = limit;
            self.node
                .set_cache_limit(Some(usize::try_from(limit).unwrap_or(usize::MAX)));
        }
    }

    fn maybe_request_snapshot(&mut self) {
        let handed_out = self.node.handed_out_index();
        let store = self.node.store();
        let file_bytes = self.log.size_bytes();
        let state = LogFileState {
            wanted_by_raft: store.take_snapshot_wanted(),
            file_bytes,
            max_file_size_bytes: self.log_max_file_size(),
        };
        let since = self
            .snapshot_requested_at
            .map(|at| self.ticks.saturating_sub(at));
        let tail = || store.bytes_after(handed_out, file_bytes);
        if should_request_snapshot(&state, tail, since) {
            self.snapshot_requested_at = Some(self.ticks);
            self.push_main(MainTask::TakeSnapshot);
        }
    }

    /// Streams our snapshot file to a follower on its own thread; raft waits for the report.
    fn start_snapshot_transfer(&mut self, message: Message) {
        let to = message.to;
        if self.sending_snapshot_to.contains(&to) {
            return;
        }
        let addr = self
            .membership
            .addr_of(to)
            .map(str::to_string)
            .or_else(|| self.address_hints.get(&to).cloned());
        let Some(addr) = addr else {
            self.node.report_snapshot_sent(to, false);
            return;
        };
        let template = &self.params.transfer;
        let job = SendJob {
            addr,
            source_host: template.source_host.clone(),
            file: self.params.snapshot_files.current.clone(),
            message,
            dbid: template.dbid.clone(),
            my_id: template.my_id,
            chunk_bytes: template.chunk_bytes,
            window: template.window,
            connect_timeout: template.connect_timeout,
            response_timeout: template.response_timeout,
            cluster_user: template.cluster_user.clone(),
            cluster_password: template.cluster_password.clone(),
            tls: template.tls.clone(),
        };
        let reply_to = self.params.inbox_sender.clone();
        self.sending_snapshot_to.insert(to);
        log::info!("raft: sending snapshot to node {to} at {}", job.addr);
        let started = std::thread::Builder::new()
            .name("raft-snapshot-send".into())
            .spawn(move || {
                let delivered = crate::adapters::network::snapshot_send::send(&job);
                let _ = reply_to.send(DriverInput::SnapshotSent { to, delivered });
            });
        if started.is_err() {
            self.sending_snapshot_to.remove(&to);
            self.node.report_snapshot_sent(to, false);
        }
    }

    fn update_peers(&mut self) {
        if let Some(gate) = &self.params.peer_gate {
            let membership = &self.membership;
            gate.send_if_modified(|current| {
                if current.membership == *membership {
                    return false;
                }
                *current = Arc::new(PeerGate {
                    membership: membership.clone(),
                    ..PeerGate::clone(current)
                });
                true
            });
        }
        let membership = &self.membership;
        self.address_hints
            .retain(|id, _| membership.get(*id).is_none());
        let me = self.node.status().id;
        let mut peers = self.membership.peer_addresses(me);
        peers.extend(
            self.address_hints
                .iter()
                .map(|(id, addr)| (*id, addr.clone())),
        );
        self.transport.set_peers(&peers);
    }

    /// A learner that has caught up becomes a voter, one change at a time.
    fn promote_caught_up_learner(&mut self) {
        if self.node.has_pending_conf_change() {
            return;
        }
        let status = self.node.status();
        if status.leader_ready && !self.membership.is_used(status.id) {
            // INIT's AddNode(itself) was lost in a crash before it was durable: every
            // cluster's log must name its first member, or joiners miscount the voters.
            let context = ChangeContext {
                origin: None,
                node_id: status.id,
                addr: self.params.my_addr.clone(),
                held_as_learner: false,
            };
            let change = single_change(ConfChangeType::AddNode, status.id);
            if let Err(e) = self.node.propose_conf_change(context.encode(), change) {
                log::debug!("raft: could not name this node in the membership: {e:?}");
            }
            return;
        }
        let membership = &self.membership;
        let Some(learner) = self
            .node
            .learner_to_promote(|id| membership.is_held_learner(id))
        else {
            return;
        };
        let context = ChangeContext {
            origin: None,
            node_id: learner,
            addr: String::new(),
            held_as_learner: false,
        };
        let change = single_change(ConfChangeType::AddNode, learner);
        match self.node.propose_conf_change(context.encode(), change) {
            Ok(_) => log::info!("raft: promoting caught-up learner {learner} to voter"),
            Err(e) => log::debug!("raft: could not promote learner {learner}: {e:?}"),
        }
    }

    fn fail(&mut self, request_ids: Vec<RequestId>, error: &'static str) {
        if !request_ids.is_empty() {
            self.push_main(MainTask::Fail { request_ids, error });
        }
    }

    fn push_main(&mut self, task: MainTask) {
        let mut task = task;
        loop {
            match self.outbox.try_send(task) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    // Back-pressure: the main thread is behind; let it catch up.
                    (self.wake_main)();
                    std::thread::sleep(Duration::from_millis(1));
                    task = back;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        (self.wake_main)();
    }

    fn publish_status(&self) {
        let status = self.node.status();
        let shared = &self.shared;
        shared.role.store(role_code(status.role), Ordering::Relaxed);
        shared.leader_id.store(status.leader_id, Ordering::Relaxed);
        shared.term.store(status.term, Ordering::Relaxed);
        shared
            .voted_for
            .store(self.node.store().hard_state().vote, Ordering::Relaxed);
        shared
            .commit_index
            .store(status.commit_index, Ordering::Relaxed);
        shared
            .first_index
            .store(status.first_index, Ordering::Relaxed);
        shared
            .last_index
            .store(status.last_index, Ordering::Relaxed);
        shared
            .log_entries
            .store(self.node.store().entry_count() as u64, Ordering::Relaxed);
        shared.cache_entries.store(
            self.node.store().cached_entry_count() as u64,
            Ordering::Relaxed,
        );
        shared
            .cache_bytes
            .store(self.node.store().cached_bytes() as u64, Ordering::Relaxed);
        shared
            .leader_ready
            .store(status.leader_ready, Ordering::Release);
        shared
            .file_size
            .store(self.log.size_bytes(), Ordering::Relaxed);
        let fsyncs = self.log.fsync_figures();
        shared.fsync_count.store(fsyncs.count, Ordering::Relaxed);
        shared
            .fsync_total_us
            .store(fsyncs.total_us, Ordering::Relaxed);
        shared.fsync_max_us.store(fsyncs.max_us, Ordering::Relaxed);
    }
}

/// The driver's side of each step of `core::ready::run_cycle`: the real log file, the
/// transport and the main thread.
struct DriverCycle<'a>(&'a mut Driver);

impl CycleSteps for DriverCycle<'_> {
    type Error = std::convert::Infallible;

    fn send(&mut self, messages: Vec<Message>) -> Result<(), Self::Error> {
        let started = Instant::now();
        self.0.send(messages);
        self.0.busy.sends += started.elapsed();
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        metadata: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), Self::Error> {
        self.0.install_received_snapshot(metadata);
        Ok(())
    }

    fn apply_conf_changes(&mut self, committed: &[Entry]) -> Result<(), Self::Error> {
        self.0.apply_conf_changes(committed);
        Ok(())
    }

    fn apply(&mut self, committed: Vec<Entry>) -> Result<(), Self::Error> {
        self.0.hand_to_main(committed);
        Ok(())
    }

    fn confirm_reads(&mut self, reads: Vec<raft::ReadState>) -> Result<(), Self::Error> {
        let driver = &mut *self.0;
        for read in reads {
            if let Some(request_ids) = driver.reads.confirm(&read.request_ctx) {
                driver.push_main(MainTask::ReadReady {
                    request_ids,
                    index: read.index,
                });
            }
        }
        Ok(())
    }

    fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&raft::eraftpb::HardState>,
    ) -> Result<(), Self::Error> {
        let driver = &mut *self.0;
        let started = Instant::now();
        let frames = driver.log.append(entries, hard_state);
        if let Some(first) = entries.first() {
            driver.node.record_frames(first.index, &frames);
        }
        driver.busy.log_writes += started.elapsed();
        Ok(())
    }

    fn start_sync(&mut self, number: u64) -> Result<(), Self::Error> {
        let requests = self.0.sync_requests.as_ref();
        let requests = requests.expect("syncs are asked for only with log-fsync on");
        match requests.try_send(number) {
            Ok(()) => {}
            // The sync thread stops only with the process (a failed fsync exits).
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                panic!("a second sync was asked for while one is in flight")
            }
        }
        Ok(())
    }

    fn sync_now(&mut self) -> Result<(), Self::Error> {
        if self.0.sync_requests.is_some() {
            let started = Instant::now();
            self.0.log.sync();
            self.0.busy.log_writes += started.elapsed();
        }
        Ok(())
    }

    fn last_sync_us(&mut self) -> u64 {
        self.0.log.last_sync_us()
    }

    fn durable(&mut self, number: u64) -> Result<(), Self::Error> {
        self.0.node.on_persisted(number);
        Ok(())
    }

    fn role_changed(&mut self, _role: Role, _leader: u64) -> Result<(), Self::Error> {
        self.0.on_role_change();
        Ok(())
    }
}

/// The sync thread: one `fdatasync` per request, then tells the driver. The driver asks
/// again only after the answer, so the request queue holds at most one.
fn run_sync_thread(
    requests: &std::sync::mpsc::Receiver<u64>,
    syncer: &LogSyncer,
    done: &BoundedSender<DriverInput>,
) {
    while let Ok(number) = requests.recv() {
        syncer.sync();
        if done.send(DriverInput::Synced { number }).is_err() {
            return;
        }
    }
}
