//! The simulated cluster: nodes driven exactly like `adapters::driver` drives the core,
//! a seeded network, simulated disks, faults, and the safety checks after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, MessageType, SnapshotMetadata,
};
use raft::{GetEntriesContext, Storage};
use redisraft::core::logfile::{self, LogPosition};
use redisraft::core::node::{NodeParams, RaftNode, ReadRound, Role};
use redisraft::core::pending::ReadBatches;
use redisraft::core::persist::PersistQueue;
use redisraft::core::ready::{finish_sync, run_cycle, CrashPoint, CycleSteps, Flow};
use redisraft::core::snapshot_policy::{should_request_snapshot, LogFileState};
use redisraft::core::storage::LogStore;

use super::disk::{CrashDamage, Disk};
use super::model::{
    describe_change, describe_entry, raft_entry_hash, Committed, Conf, Durable, LogMirror,
};
use super::rng::Rng;

pub type SimResult<T> = Result<T, String>;

/// How the cluster is formed. See docs/SIMULATION.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// What the adapters do: INIT starts node 1 with voters [1] from its Meta record and
    /// proposes AddNode(1) once; joining nodes start with an empty configuration and
    /// learn it from the conf changes in the log.
    InitAddsSelfOnce,
    /// As above, but node 1 proposes AddNode(1) again, as leader, until it is committed
    /// (the proposed fix for bug 3b).
    InitAddsSelf,
    /// The adapters before they proposed AddNode(1): node 1 is never named in the log
    /// (bug 3).
    EmptyJoiners,
}

/// Deliberately broken drivers, to show the checks catch them (tests/simulation.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Sends votes and append acks before the fsync.
    AckBeforeFsync,
    /// Never syncs the log.
    NoFsync,
    /// Writes hard states without the vote.
    ForgetVote,
    /// The driver as it is.
    None,
}

#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    /// Time units of the fault phase.
    pub steps: u64,
    /// Most members (voters + learners) at once.
    pub nodes: u64,
    /// Time units allowed for the liveness phase.
    pub liveness_steps: u64,
    pub bootstrap: Bootstrap,
    /// Crashes are also process kills that keep the page cache (see disk.rs).
    pub kills: bool,
    /// RAFT.TIMEOUT_NOW calls `RaftNode::campaign` (as the driver did before it used
    /// `force_election`) on any node, voter or not (docs/SIMULATION.md, bug 1).
    pub campaign_non_voters: bool,
    /// Power loss may leave part of a frame header followed by a zero-filled extension
    /// (docs/SIMULATION.md, bug 2).
    pub partial_header_then_zeros: bool,
    /// `LogFile::open` syncs the file before the node uses what it read (the proposed fix
    /// for docs/SIMULATION.md bug 4). Off: it syncs only after cutting a torn tail.
    pub open_syncs: bool,
    /// Check that every node's raft configuration is the one the committed log describes.
    /// Off: see what a disagreement leads to (docs/SIMULATION.md, bug 3).
    pub check_conf: bool,
    pub mutation: Mutation,
    /// `log-max-cache-size` of every node's `LogStore`: entries beyond it are read back
    /// from the simulated file. `None`: keep every entry (no reader). From the seed (no
    /// random draw, so runs stay what they were): 0 bytes, 2 KB or unbounded in turn.
    pub cache_limit: Option<usize>,
    /// Nodes take snapshots and compact their logs; leaders send snapshots to followers
    /// that need compacted entries; nodes restart from a snapshot and the log after it.
    pub snapshots: bool,
    /// Received snapshot files share one name, as before the fix of issue #14 item 7:
    /// a second transfer ending before raft installed the first replaces its file.
    pub received_one_name: bool,
    /// A node's sync may run in place (`core::ready::sync_in_place`): each cycle draws
    /// whether its disk was quick. Off, every sync goes the asynchronous way, as when the
    /// older seeds below were found.
    pub syncs_in_place: bool,
    /// Print every traced event as it happens.
    pub trace: bool,
}

impl Params {
    pub fn new(seed: u64, steps: u64, nodes: u64) -> Params {
        Params {
            seed,
            steps,
            nodes,
            liveness_steps: 3_000,
            bootstrap: Bootstrap::InitAddsSelf,
            kills: true,
            campaign_non_voters: false,
            partial_header_then_zeros: false,
            open_syncs: true,
            check_conf: true,
            mutation: Mutation::None,
            cache_limit: [Some(0), Some(2_048), None][(seed % 3) as usize],
            snapshots: true,
            received_one_name: false,
            syncs_in_place: true,
            trace: false,
        }
    }
}

/// Fault rates, drawn from the seed so that different seeds stress different things.
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop_p: f64,
    pub dup_p: f64,
    pub max_delay: u64,
    pub long_delay_p: f64,
    pub crash_p: f64,
    pub midcycle_crash_p: f64,
    pub partition_p: f64,
    pub write_p: f64,
    pub read_p: f64,
    pub member_p: f64,
    pub transfer_p: f64,
    pub campaign_p: f64,
    pub pause_p: f64,
    pub unreachable_p: f64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Faults {
        Faults {
            drop_p: *rng.pick(&[0.0, 0.01, 0.05, 0.15]),
            dup_p: *rng.pick(&[0.0, 0.01, 0.05]),
            max_delay: *rng.pick(&[1, 3, 6, 15]),
            long_delay_p: *rng.pick(&[0.0, 0.005, 0.02]),
            crash_p: *rng.pick(&[0.001, 0.003, 0.006]),
            midcycle_crash_p: *rng.pick(&[0.001, 0.003, 0.008]),
            partition_p: *rng.pick(&[0.002, 0.005, 0.01]),
            write_p: *rng.pick(&[0.1, 0.3, 0.6]),
            read_p: *rng.pick(&[0.02, 0.1]),
            member_p: *rng.pick(&[0.01, 0.02, 0.04]),
            transfer_p: 0.002,
            campaign_p: 0.002,
            pause_p: 0.003,
            unreachable_p: 0.3,
        }
    }

    /// The liveness phase: a healthy network, clients still writing.
    fn calm() -> Faults {
        Faults {
            drop_p: 0.0,
            dup_p: 0.0,
            max_delay: 2,
            long_delay_p: 0.0,
            crash_p: 0.0,
            midcycle_crash_p: 0.0,
            partition_p: 0.0,
            write_p: 0.2,
            read_p: 0.05,
            member_p: 0.0,
            transfer_p: 0.0,
            campaign_p: 0.0,
            pause_p: 0.0,
            unreachable_p: 0.3,
        }
    }
}

/// Counters, to show what a run exercised.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub elections: u64,
    pub reads: u64,
    pub reads_confirmed: u64,
    /// Reads whose round timed out, or that were queued on a node that stopped leading.
    pub reads_expired: u64,
    pub max_term: u64,
    pub committed: u64,
    pub applied: u64,
    pub proposals: u64,
    pub crashes: u64,
    pub midcycle_crashes: u64,
    pub power_losses_with_unsynced: u64,
    pub kills_with_unsynced: u64,
    pub torn_tails: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub conf_changes_committed: u64,
    pub removed: u64,
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub liveness_time: u64,
    /// Positioned reads of entries no longer cached (`Params::cache_limit`).
    pub file_reads: u64,
    pub snapshots_taken: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub restarts_from_snapshot: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.elections += other.elections;
        self.reads += other.reads;
        self.reads_confirmed += other.reads_confirmed;
        self.reads_expired += other.reads_expired;
        self.max_term = self.max_term.max(other.max_term);
        self.committed += other.committed;
        self.applied += other.applied;
        self.proposals += other.proposals;
        self.crashes += other.crashes;
        self.midcycle_crashes += other.midcycle_crashes;
        self.power_losses_with_unsynced += other.power_losses_with_unsynced;
        self.kills_with_unsynced += other.kills_with_unsynced;
        self.torn_tails += other.torn_tails;
        self.restarts += other.restarts;
        self.partitions += other.partitions;
        self.conf_changes_committed += other.conf_changes_committed;
        self.removed += other.removed;
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.liveness_time = self.liveness_time.max(other.liveness_time);
        self.file_reads += other.file_reads;
        self.snapshots_taken += other.snapshots_taken;
        self.snapshots_sent += other.snapshots_sent;
        self.snapshots_installed += other.snapshots_installed;
        self.restarts_from_snapshot += other.restarts_from_snapshot;
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "elections {} (max term {}), committed {}, applied {}, proposals {}, \
             reads {} ({} confirmed, {} expired), \
             crashes {} ({} mid-cycle, {} power losses and {} kills with unsynced bytes, \
             {} torn tails cut), restarts {}, partitions {}, conf changes committed {}, \
             nodes removed {}, messages sent {} delivered {} dropped {} duplicated {}, \
             longest liveness phase {} time units, entry reads from the log file {}, \
             snapshots taken {} sent {} installed {}, restarts from a snapshot {}",
            self.elections,
            self.max_term,
            self.committed,
            self.applied,
            self.proposals,
            self.reads,
            self.reads_confirmed,
            self.reads_expired,
            self.crashes,
            self.midcycle_crashes,
            self.power_losses_with_unsynced,
            self.kills_with_unsynced,
            self.torn_tails,
            self.restarts,
            self.partitions,
            self.conf_changes_committed,
            self.removed,
            self.sent,
            self.delivered,
            self.dropped,
            self.duplicated,
            self.liveness_time,
            self.file_reads,
            self.snapshots_taken,
            self.snapshots_sent,
            self.snapshots_installed,
            self.restarts_from_snapshot
        )
    }
}

const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
const TRACE_KEPT: usize = 400;

/// A running process: the core plus what the driver and the state machine hold.
struct Proc {
    raft: RaftNode,
    /// The state machine's applied index (rebuilt from 0 on every start).
    applied: u64,
    /// Mirror of the raft log in memory (the `LogStore`).
    log: LogMirror,
    /// Highest commit index seen on this process.
    commit_seen: u64,
    /// Term in which leader completeness was last checked for this process.
    leader_checked_term: u64,
    /// A peer answered REMOVED: the driver leaves the cluster at its next tick.
    told_removed: bool,
    /// Reads queued and in their ReadIndex round, batched as the driver batches them.
    reads: ReadBatches,
    /// Ticks since this process started (read rounds expire in ticks).
    ticks: u64,
    /// Ready cycles written and not yet durable (the driver's own queue).
    persist: PersistQueue,
    /// The sync thread's one sync in flight; it dies with the process.
    sync_in_flight: Option<SimSync>,
}

/// A sync started by `CycleSteps::start_sync`: it makes durable what was written before
/// it started, and finishes at step `done_at`.
struct SimSync {
    number: u64,
    disk_generation: u64,
    disk_len: usize,
    done_at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Running,
    Crashed {
        restart_at: u64,
    },
    /// Applied its own removal and left the cluster for good.
    Removed,
}

struct SimNode {
    id: u64,
    /// From its Meta record: [1] for the node that ran INIT, [] for joiners.
    bootstrap_voters: Vec<u64>,
    disk: Disk,
    durable: Durable,
    /// Batches written but not yet synced, oldest first, by Ready number: a sync makes
    /// those written before it started durable. Only a process kill carries them across
    /// a restart.
    unsynced: Vec<(u64, Vec<Entry>, Option<HardState>)>,
    proc: Option<Proc>,
    life: Life,
    /// Highest index applied by any incarnation.
    max_applied: u64,
    starts: u64,
    tick_period: u64,
    next_tick_at: u64,
    last_damage: CrashDamage,
    /// `<log>.snapshot`: written, synced and renamed into place, so always durable.
    snapshot: Option<SimSnapshot>,
    /// Verified received files raft has not installed yet, by (index, term) (by (0, 0)
    /// with `Params::received_one_name`). Deleted at start (`remove_leftovers`).
    received: BTreeMap<(u64, u64), SimSnapshot>,
    /// `log-max-file-size` of this node: past it, the driver's own decision
    /// (`core::snapshot_policy`) asks for a snapshot.
    log_max_file_size_bytes: u64,
}

/// A snapshot file: the state machine at `index` (its digest is the prefix hash of the
/// log it applied) and the configuration there.
#[derive(Clone, Debug)]
struct SimSnapshot {
    index: u64,
    term: u64,
    conf: ConfState,
    digest: u64,
}

struct Flight {
    at: u64,
    from: u64,
    to: u64,
    msg: Message,
    /// A MsgSnapshot's transfer: the sender's snapshot file travels with it.
    snapshot: Option<SimSnapshot>,
    /// Already received (RAFT.SNAPSHOT.DONE): waits in the receiver's driver inbox.
    inbox: bool,
}

#[derive(PartialEq, Eq)]
enum PumpEnd {
    Alive,
    Crashed,
    Removed,
}

pub struct World {
    p: Params,
    f: Faults,
    rng: Rng,
    now: u64,
    nodes: BTreeMap<u64, SimNode>,
    next_id: u64,
    max_ids: u64,
    flights: Vec<Flight>,
    /// Directed links that drop everything.
    cut: BTreeSet<(u64, u64)>,
    heal_at: Option<u64>,
    node_params: (u64, usize),
    /// Index i is at [i - 1]. Filled in order by leaders' commit advances.
    committed: Vec<Committed>,
    /// The committed log as a mirror: what a snapshot at an index must hold.
    committed_mirror: LogMirror,
    /// Ends of snapshot transfers to report to the sender: (from, to, delivered).
    snapshot_reports: Vec<(u64, u64, bool)>,
    /// (index, configuration after that index) at each committed conf change.
    confs: Vec<(u64, Conf)>,
    /// Every id that was ever in the committed configuration.
    ever_member: BTreeSet<u64>,
    /// Id -> first committed index that added it (`Membership::is_used` from then on).
    added_at: BTreeMap<u64, u64>,
    leaders: BTreeMap<u64, u64>,
    writes: u64,
    /// ReadIndex requests in flight: context -> (node, committed prefix when it started).
    /// Read request id -> (node it started on, committed entries when it started).
    reads: BTreeMap<u64, (u64, u64)>,
    /// Index of the committed AddNode(1) (InitAddsSelf).
    self_added_at: Option<u64>,
    pub stats: Stats,
    trace: VecDeque<String>,
    chaos: bool,
    /// Reads of entries that left a node's cache (`Params::cache_limit`).
    file_reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

pub struct Outcome {
    pub stats: Stats,
    /// Digest of the final state, equal for equal seeds.
    pub fingerprint: u64,
}

impl World {
    pub fn new(p: Params) -> World {
        let mut rng = Rng::new(p.seed);
        let f = Faults::draw(&mut rng);
        let max_append_bytes = *rng.pick(&[300u64, 4096, 2 * 1024 * 1024]);
        let inflight = *rng.pick(&[1usize, 2, 4]);
        let max_ids = p.nodes * 3;
        World {
            p,
            f,
            rng,
            now: 0,
            nodes: BTreeMap::new(),
            next_id: 1,
            max_ids,
            flights: Vec::new(),
            cut: BTreeSet::new(),
            heal_at: None,
            node_params: (max_append_bytes, inflight),
            committed: Vec::new(),
            committed_mirror: LogMirror::default(),
            snapshot_reports: Vec::new(),
            confs: vec![(0, Conf::of(&[1]))],
            ever_member: [1].into_iter().collect(),
            added_at: BTreeMap::new(),
            leaders: BTreeMap::new(),
            writes: 0,
            reads: BTreeMap::new(),
            self_added_at: None,
            stats: Stats::default(),
            trace: VecDeque::new(),
            chaos: true,
            file_reads: Default::default(),
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn describe_faults(&self) -> String {
        format!(
            "{:?}, max_append_bytes {}, max_inflight {}",
            self.f, self.node_params.0, self.node_params.1
        )
    }

    /// The last traced events, oldest first.
    pub fn recent_events(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    fn event(&mut self, text: String) {
        let line = format!("t={} {text}", self.now);
        if self.p.trace {
            eprintln!("{line}");
        }
        if self.trace.len() == TRACE_KEPT {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    // ---------------------------------------------------------------- the run

    pub fn run(&mut self) -> SimResult<Outcome> {
        self.bootstrap()?;
        while self.now < self.p.steps {
            self.step_time()?;
        }
        self.liveness()?;
        self.check_mirrors()?;
        self.stats.committed = self.committed.len() as u64;
        self.stats.file_reads = self.file_reads.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Outcome {
            stats: self.stats.clone(),
            fingerprint: self.fingerprint(),
        })
    }

    /// RAFT.CLUSTER INIT on node 1: a new log with Meta{bootstrap_voters: [1]}, the node
    /// started on it, then AddNode(1) proposed as the first change.
    fn bootstrap(&mut self) -> SimResult<()> {
        self.event(format!("faults: {}", self.describe_faults()));
        let id = self.create_node(vec![1]);
        self.start(id)?;
        if self.p.bootstrap != Bootstrap::EmptyJoiners {
            self.propose_change(1, ConfChangeType::AddNode, 1)?;
        }
        Ok(())
    }

    fn create_node(&mut self, bootstrap_voters: Vec<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let disk = Disk::create(id, bootstrap_voters.clone());
        let tick_period = self.rng.range(3, 5);
        // Not drawn from the run's stream: with SIM_SNAPSHOTS=0 a seed runs exactly as it
        // did before the simulation had snapshots.
        let mut state = self.p.seed ^ id.rotate_left(32);
        let log_max_file_size_bytes =
            [500u64, 1_200, 3_000][(super::rng::splitmix64(&mut state) % 3) as usize];
        self.nodes.insert(
            id,
            SimNode {
                id,
                bootstrap_voters,
                disk,
                durable: Durable::default(),
                unsynced: Vec::new(),
                proc: None,
                life: Life::Crashed { restart_at: 0 },
                max_applied: 0,
                starts: 0,
                tick_period,
                next_tick_at: 0,
                last_damage: CrashDamage::Clean,
                snapshot: None,
                received: BTreeMap::new(),
                log_max_file_size_bytes,
            },
        );
        self.event(format!("node {id} created (tick every {tick_period})"));
        id
    }

    /// One time unit: scheduled restarts and heals, due messages in random order, clock
    /// ticks, at most one random event, then the global checks.
    fn step_time(&mut self) -> SimResult<()> {
        self.now += 1;
        let now = self.now;
        let due_restarts: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| matches!(n.life, Life::Crashed { restart_at } if restart_at <= now))
            .map(|n| n.id)
            .collect();
        for id in due_restarts {
            self.start(id)?;
        }
        if self.heal_at.is_some_and(|at| at <= now) {
            self.heal();
        }

        let mut due = Vec::new();
        let mut index = 0;
        while index < self.flights.len() {
            if self.flights[index].at <= now {
                due.push(self.flights.swap_remove(index));
            } else {
                index += 1;
            }
        }
        self.report_snapshot_transfers()?;
        // swap_remove order depends only on the seed; shuffle for reordering anyway.
        self.rng.shuffle(&mut due);
        for flight in due {
            self.deliver(flight)?;
        }
        self.finish_due_syncs()?;
        // End of the inbox batch: every node runs its Ready loop.
        for id in self.running_ids() {
            if let Some(proc) = self.nodes.get_mut(&id).and_then(|n| n.proc.take()) {
                self.pump_and_keep(id, proc)?;
            }
        }

        let ticking: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.life == Life::Running && n.next_tick_at <= now)
            .map(|n| n.id)
            .collect();
        for id in ticking {
            let node = self.nodes.get_mut(&id).expect("node exists");
            node.next_tick_at = now + node.tick_period;
            if node.proc.as_ref().is_some_and(|p| p.told_removed) {
                // MainTask::LeaveCluster: stop and move the log aside.
                node.proc = None;
                node.life = Life::Removed;
                self.drop_flights_to(id);
                self.stats.removed += 1;
                self.event(format!(
                    "node {id} was told it is removed and left the cluster"
                ));
                continue;
            }
            self.tick(id)?;
            self.promote_caught_up_learner(id)?;
            self.maybe_take_snapshot(id)?;
        }

        self.random_event()?;
        self.check_log_matching()?;
        if now.is_multiple_of(97) {
            self.check_mirrors()?;
        }
        Ok(())
    }

    fn random_event(&mut self) -> SimResult<()> {
        let f = self.f.clone();
        let roll = self.rng.next_u64() as f64 / u64::MAX as f64;
        let mut at = 0.0;
        let mut next = |p: f64| {
            at += p;
            roll < at
        };
        if next(f.write_p) {
            self.client_write()
        } else if next(f.read_p) {
            self.client_read()
        } else if next(f.crash_p) {
            if let Some(id) = self.random_running() {
                self.crash(id, "crash");
            }
            Ok(())
        } else if next(f.partition_p) {
            self.partition();
            Ok(())
        } else if next(f.member_p) {
            self.membership_change()
        } else if next(f.transfer_p) {
            self.transfer_leader()
        } else if next(f.campaign_p) {
            // RAFT.TIMEOUT_NOW, on any node.
            let Some(id) = self.random_running() else {
                return Ok(());
            };
            self.event(format!("node {id}: RAFT.TIMEOUT_NOW"));
            if self.p.campaign_non_voters {
                self.input(id, |raft| {
                    let _ = raft.campaign();
                })
            } else {
                self.input(id, |raft| {
                    let _ = raft.force_election();
                })
            }
            .map(|_| ())
        } else if next(f.pause_p) {
            if let Some(id) = self.random_running() {
                let pause = self.rng.range(5, 60);
                self.nodes.get_mut(&id).expect("exists").next_tick_at += pause;
                self.event(format!("node {id}: clock paused for {pause}"));
            }
            Ok(())
        } else {
            Ok(())
        }
    }

    fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.life == Life::Running)
            .map(|n| n.id)
            .collect()
    }

    fn random_running(&mut self) -> Option<u64> {
        let running = self.running_ids();
        if running.is_empty() {
            None
        } else {
            Some(*self.rng.pick(&running))
        }
    }

    fn leader_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter_map(|n| n.proc.as_ref().map(|p| (n.id, p)))
            .filter(|(_, p)| p.raft.status().role == Role::Leader)
            .map(|(id, _)| id)
            .collect()
    }

    // ---------------------------------------------------------------- inputs

    /// Hands one input to a running node, then pumps its Ready loop, like the driver does
    /// after each batch of inputs.
    /// `Driver::run` on a tick: raft ticks, read rounds older than an election timeout
    /// fail.
    fn tick(&mut self, id: u64) -> SimResult<()> {
        if let Some(proc) = self.nodes.get_mut(&id).and_then(|n| n.proc.as_mut()) {
            proc.ticks += 1;
            let expired = proc.reads.expire(proc.ticks, ELECTION_TICKS as u64);
            self.stats.reads_expired += expired.len() as u64;
        }
        self.input(id, |raft| raft.tick()).map(|_| ())
    }

    /// `Driver::start_queued_reads`. True if a round started.
    fn start_read_round(&mut self, proc: &mut Proc) -> bool {
        match proc.raft.start_read_round(&mut proc.reads, proc.ticks) {
            ReadRound::Started => true,
            ReadRound::None => false,
            ReadRound::NotLeader(queued) => {
                self.stats.reads_expired += queued.len() as u64;
                false
            }
        }
    }

    fn input<R>(&mut self, id: u64, f: impl FnOnce(&mut RaftNode) -> R) -> SimResult<Option<R>> {
        let Some(mut proc) = self.nodes.get_mut(&id).and_then(|n| n.proc.take()) else {
            return Ok(None);
        };
        let result = f(&mut proc.raft);
        self.observe_commit(id, &mut proc)?;
        self.pump_and_keep(id, proc)?;
        Ok(Some(result))
    }

    fn pump_and_keep(&mut self, id: u64, mut proc: Proc) -> SimResult<()> {
        // `Driver::pump_ready`: a confirmed round lets the reads queued behind it start.
        let mut end = self.pump(id, &mut proc)?;
        while end == PumpEnd::Alive && self.start_read_round(&mut proc) {
            end = self.pump(id, &mut proc)?;
        }
        match end {
            PumpEnd::Alive => {
                self.nodes.get_mut(&id).expect("exists").proc = Some(proc);
            }
            PumpEnd::Crashed => {}
            PumpEnd::Removed => {
                let node = self.nodes.get_mut(&id).expect("exists");
                node.life = Life::Removed;
                self.drop_flights_to(id);
                self.stats.removed += 1;
                self.event(format!(
                    "node {id} applied its own removal and left the cluster"
                ));
            }
        }
        Ok(())
    }

    /// Steps a message into its target. Like the driver, which drains its inbox before
    /// one Ready cycle, the target may take more messages before it pumps.
    fn deliver(&mut self, mut flight: Flight) -> SimResult<()> {
        let target_up = self
            .nodes
            .get(&flight.to)
            .is_some_and(|n| n.life == Life::Running);
        let cut = self.cut.contains(&(flight.from, flight.to)) && !flight.inbox;
        if flight.snapshot.is_some() && (cut || !target_up) {
            // The stream broke: the sender's transfer fails.
            self.stats.dropped += 1;
            self.snapshot_reports.push((flight.from, flight.to, false));
            return Ok(());
        }
        if cut || !target_up {
            self.stats.dropped += 1;
            // The transport notices a dead connection and tells raft.
            if self.rng.chance(self.f.unreachable_p) {
                let to = flight.to;
                self.input(flight.from, |raft| raft.report_unreachable(to))?;
            }
            return Ok(());
        }
        self.stats.delivered += 1;
        let id = flight.to;
        let receiver = self.nodes[&id].proc.as_ref().expect("runs");
        if !flight.inbox && self.refuses_as_removed(receiver, flight.from) {
            if flight.snapshot.is_some() {
                self.snapshot_reports.push((flight.from, flight.to, false));
            }
            // RAFT.MSG answers REMOVED; the sender's transport tells its driver.
            if let Some(sender) = self
                .nodes
                .get_mut(&flight.from)
                .and_then(|n| n.proc.as_mut())
            {
                if !sender.told_removed {
                    sender.told_removed = true;
                    self.event(format!("node {id} refuses node {}: REMOVED", flight.from));
                }
            }
            return Ok(());
        }
        if let Some(file) = flight.snapshot.take() {
            self.receive_snapshot(flight, file);
            return Ok(());
        }
        let mut proc = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.proc.take())
            .expect("runs");
        // The driver logs and drops messages raft refuses.
        let _ = proc.raft.step(flight.msg);
        self.observe_commit(id, &mut proc)?;
        if self.rng.chance(0.5) {
            self.pump_and_keep(id, proc)
        } else {
            self.nodes.get_mut(&id).expect("exists").proc = Some(proc);
            Ok(())
        }
    }

    fn send(&mut self, from: u64, messages: Vec<Message>) {
        for msg in messages {
            self.stats.sent += 1;
            let to = msg.to;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(from, msg);
                continue;
            }
            if !self.nodes.contains_key(&to) || self.rng.chance(self.f.drop_p) {
                self.stats.dropped += 1;
                continue;
            }
            let copies = if self.rng.chance(self.f.dup_p) { 2 } else { 1 };
            self.stats.duplicated += copies - 1;
            for _ in 0..copies {
                let delay = if self.rng.chance(self.f.long_delay_p) {
                    self.rng.range(1, 150)
                } else {
                    self.rng.range(1, self.f.max_delay)
                };
                self.flights.push(Flight {
                    at: self.now + delay,
                    from,
                    to,
                    msg: msg.clone(),
                    snapshot: None,
                    inbox: false,
                });
            }
        }
    }

    // ---------------------------------------------------------------- snapshots

    /// `Driver::start_snapshot_transfer`: the sender streams its `<log>.snapshot`; the
    /// receiver refuses a file that does not match the MsgSnapshot. One stream, never
    /// duplicated; it takes longer than a message.
    fn send_snapshot(&mut self, from: u64, msg: Message) {
        let to = msg.to;
        let wanted = msg.get_snapshot().get_metadata();
        let file = self
            .nodes
            .get(&from)
            .and_then(|n| n.snapshot.clone())
            .filter(|file| (file.index, file.term) == (wanted.index, wanted.term));
        let Some(file) = file else {
            self.event(format!(
                "node {from}: snapshot for node {to} at {} does not match its file: not sent",
                wanted.index
            ));
            self.snapshot_reports.push((from, to, false));
            return;
        };
        if !self.nodes.contains_key(&to) || self.rng.chance(self.f.drop_p) {
            self.stats.dropped += 1;
            self.snapshot_reports.push((from, to, false));
            return;
        }
        self.stats.snapshots_sent += 1;
        let delay = self.rng.range(2, 30);
        self.flights.push(Flight {
            at: self.now + delay,
            from,
            to,
            msg,
            snapshot: Some(file),
            inbox: false,
        });
    }

    /// RAFT.SNAPSHOT.DONE: the verified file is kept under its name, the sender hears
    /// that it was delivered, and the MsgSnapshot waits in the receiver's driver inbox
    /// (other inputs, another transfer's end among them, may arrive first).
    fn receive_snapshot(&mut self, flight: Flight, file: SimSnapshot) {
        let key = if self.p.received_one_name {
            (0, 0)
        } else {
            (file.index, file.term)
        };
        let node = self.nodes.get_mut(&flight.to).expect("exists");
        node.received.insert(key, file);
        self.snapshot_reports.push((flight.from, flight.to, true));
        let wait = self.rng.range(0, 4);
        self.flights.push(Flight {
            at: self.now + wait,
            snapshot: None,
            inbox: true,
            ..flight
        });
    }

    /// A snapshot holds the state machine at its index: the committed log up to there.
    fn check_snapshot_state(&self, id: u64, file: &SimSnapshot, what: &str) -> SimResult<()> {
        let agreed = self.committed_mirror.get(file.index);
        if agreed.is_none_or(|agreed| (agreed.term, agreed.prefix) != (file.term, file.digest)) {
            return Err(format!(
                "state machine safety: node {id} {what} a snapshot at index {} term {} whose \
                 state is not the committed log's up to there (committed prefix {}, term \
                 there {:?})",
                file.index,
                file.term,
                self.committed_mirror.last_index(),
                agreed.map(|a| a.term)
            ));
        }
        Ok(())
    }

    /// `Driver::install_received_snapshot`: publish the received file of exactly this
    /// index and term, rewrite the log at it, and load it into the state machine.
    fn install_snapshot(
        &mut self,
        id: u64,
        proc: &mut Proc,
        metadata: &SnapshotMetadata,
    ) -> SimResult<()> {
        let (index, term) = (metadata.index, metadata.term);
        let key = if self.p.received_one_name {
            (0, 0)
        } else {
            (index, term)
        };
        let node = self.nodes.get_mut(&id).expect("exists");
        let file = node.received.get(&key).cloned().ok_or_else(|| {
            format!("node {id}: raft installs a snapshot at {index} that was never received")
        })?;
        if (file.index, file.term) != (index, term) {
            return Err(format!(
                "node {id}: raft installs the snapshot at index {index} term {term} but the \
                 received file holds index {} term {} (apply.rs: the installed snapshot file \
                 changed under us)",
                file.index, file.term
            ));
        }
        if let Some(current) = node.snapshot.as_ref().filter(|s| s.index >= index) {
            return Err(format!(
                "node {id}: raft installs the snapshot at {index} but {} is published already",
                current.index
            ));
        }
        if proc.applied >= index {
            return Err(format!(
                "node {id}: raft installs a snapshot at {index}, not after its applied {}",
                proc.applied
            ));
        }
        node.snapshot = Some(file.clone());
        node.received.retain(|&(at, _), _| at > index);
        let mut hard_state = proc.raft.store().hard_state().clone();
        if self.p.mutation == Mutation::ForgetVote {
            hard_state.vote = 0;
        }
        let frames = node
            .disk
            .rewrite(LogPosition { index, term }, &hard_state, &[]);
        proc.raft.replace_frames(&frames);
        node.unsynced.clear();
        node.max_applied = node.max_applied.max(index);
        proc.applied = index;
        proc.log = self.committed_mirror.truncated(index);
        self.check_snapshot_state(id, &file, "installs")?;
        self.after_rewrite(id, proc.log.clone())?;
        self.stats.snapshots_installed += 1;
        self.event(format!(
            "node {id} installed the snapshot at {index} (term {term})"
        ));
        self.check_conf(id, proc)?;
        self.check_durable_quorums(index + 1)
    }

    /// A rewritten log file is what a crash at this instant leaves: recovery must accept
    /// it, and the durable state must not go back.
    fn after_rewrite(&mut self, id: u64, durable_log: LogMirror) -> SimResult<()> {
        let node = self.nodes.get_mut(&id).expect("exists");
        let recovered = logfile::recover(&node.disk.bytes).map_err(|e| {
            format!(
                "node {id}: recovery refuses the log file rewritten at a snapshot, so a crash \
                 now would keep the node from restarting: {e}"
            )
        })?;
        let hard_state = recovered.hard_state.unwrap_or_default();
        let old = node.durable.hard_state;
        if hard_state.term < old.term || hard_state.commit < old.commit {
            return Err(format!(
                "node {id}: the log rewrite took the durable hard state back: {old:?} -> \
                 {hard_state:?}"
            ));
        }
        node.durable = Durable {
            log: durable_log,
            hard_state,
        };
        Ok(())
    }

    /// The log outgrew its limit, or raft wants a snapshot it does not have (decided by
    /// `core::snapshot_policy::should_request_snapshot`, as the driver decides): the fork child writes the applied state, the parent
    /// publishes it, and the driver compacts the log (`Driver::compact_to`). A crash may
    /// fall between publishing and compacting.
    fn maybe_take_snapshot(&mut self, id: u64) -> SimResult<()> {
        if !self.p.snapshots {
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("exists");
        let Some(proc) = node.proc.as_ref() else {
            return Ok(());
        };
        let current = node.snapshot.as_ref().map_or(0, |s| s.index);
        let store = proc.raft.store();
        let file_bytes = node.disk.len_bytes();
        let log = LogFileState {
            wanted_by_raft: store.take_snapshot_wanted(),
            file_bytes,
            max_file_size_bytes: node.log_max_file_size_bytes,
        };
        let index = proc.applied;
        let tail = || store.bytes_after(index, file_bytes);
        // Taking a snapshot here is immediate and never fails: no request is outstanding.
        if index <= current || !should_request_snapshot(&log, tail, None) {
            return Ok(());
        }
        let entry = proc
            .log
            .get(index)
            .ok_or_else(|| format!("node {id}: applied index {index} is not in its log"))?;
        let file = SimSnapshot {
            index,
            term: entry.term,
            conf: proc.raft.conf_state(),
            digest: entry.prefix,
        };
        self.check_snapshot_state(id, &file, "takes")?;
        let node = self.nodes.get_mut(&id).expect("exists");
        node.snapshot = Some(file.clone());
        self.stats.snapshots_taken += 1;
        self.event(format!("node {id} took a snapshot at {index}"));
        if self.chaos && self.rng.chance(0.05) {
            self.crash(id, "after publishing a snapshot, before compacting the log");
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("exists");
        let mut proc = node.proc.take().expect("runs");
        proc.raft.compact_log(index, file.term, file.conf.clone());
        let store = proc.raft.store();
        let last = store.last_index();
        let entries = if last > index {
            store
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))
                .map_err(|e| format!("node {id}: cannot read the log after compaction: {e}"))?
        } else {
            Vec::new()
        };
        let mut hard_state = store.hard_state().clone();
        if self.p.mutation == Mutation::ForgetVote {
            hard_state.vote = 0;
        }
        let frames = node.disk.rewrite(
            LogPosition {
                index,
                term: file.term,
            },
            &hard_state,
            &entries,
        );
        proc.raft.replace_frames(&frames);
        node.unsynced.clear();
        let durable_log = proc.log.truncated(last);
        node.proc = Some(proc);
        self.after_rewrite(id, durable_log)
    }

    /// Connections to a process that is gone lose what was queued on them; a snapshot
    /// stream to it breaks, and its sender hears so.
    fn drop_flights_to(&mut self, id: u64) {
        for flight in &self.flights {
            if flight.to == id && flight.snapshot.is_some() {
                self.snapshot_reports.push((flight.from, id, false));
            }
        }
        self.flights.retain(|f| f.to != id);
    }

    /// The sender's transport reports the end of each transfer to its driver.
    fn report_snapshot_transfers(&mut self) -> SimResult<()> {
        for (from, to, delivered) in std::mem::take(&mut self.snapshot_reports) {
            self.input(from, |raft| raft.report_snapshot_sent(to, delivered))?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- the Ready loop

    /// The sync thread's answers that are due: what each sync covered becomes durable,
    /// then `core::ready::finish_sync` releases the acks waiting for it, as the driver
    /// does on `DriverInput::Synced`.
    fn finish_due_syncs(&mut self) -> SimResult<()> {
        let now = self.now;
        for id in self.running_ids() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let due = node.proc.as_ref().and_then(|p| p.sync_in_flight.as_ref());
            if due.is_none_or(|sync| sync.done_at > now) {
                continue;
            }
            let mut proc = node.proc.take().expect("a running node has a process");
            let sync = proc.sync_in_flight.take().expect("checked above");
            if self.p.mutation != Mutation::NoFsync {
                self.make_durable(id, &sync)?;
            }
            let crash_at = if self.chaos && self.rng.chance(self.f.midcycle_crash_p) {
                Some(
                    *self
                        .rng
                        .pick(&[CrashPoint::AfterSync, CrashPoint::AfterAcks]),
                )
            } else {
                None
            };
            let mut persist = std::mem::take(&mut proc.persist);
            let mut cycle = SimCycle {
                world: self,
                id,
                number: 0,
                proc: &mut proc,
                crash_at,
                removed: false,
            };
            let flow = finish_sync(sync.number, &mut persist, &mut cycle)?;
            proc.persist = persist;
            if flow == Flow::Stopped {
                continue;
            }
            self.pump_and_keep(id, proc)?;
        }
        Ok(())
    }

    /// `LogSyncer::sync`: the bytes written before the sync started are durable (all of
    /// them if the log was rewritten since, which syncs the new file).
    fn make_durable(&mut self, id: u64, sync: &SimSync) -> SimResult<()> {
        let node = self.nodes.get_mut(&id).expect("exists");
        node.disk.sync_through(sync.disk_generation, sync.disk_len);
        let mut replaced = None;
        let covered = node
            .unsynced
            .iter()
            .take_while(|(number, _, _)| *number <= sync.number)
            .count();
        for (_, entries, hard_state) in node.unsynced.drain(..covered) {
            let from = node
                .durable
                .log
                .append_raft(&entries)
                .map_err(|e| format!("node {id}: {e}"))?;
            if let Some(from) = from {
                replaced = Some(replaced.map_or(from, |r: u64| r.min(from)));
            }
            if let Some(hs) = hard_state {
                node.durable.hard_state = logfile::SavedHardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit,
                };
            }
        }
        if let Some(from) = replaced {
            self.check_durable_quorums(from)?;
        }
        Ok(())
    }

    /// `Driver::pump_ready`, step for step, with a chance of crashing between steps.
    /// Runs each Ready through `core::ready::run_cycle`, the driver's own order, with
    /// the simulated disk and network, and sometimes a crash at one of its crash points.
    fn pump(&mut self, id: u64, proc: &mut Proc) -> SimResult<PumpEnd> {
        let mut removed = false;
        while let Some(mut out) = proc.raft.poll_ready() {
            // Half the mid-cycle crashes come after the write, before its sync: the window
            // where unsynced bytes exist.
            let crash_at = if self.chaos && self.rng.chance(self.f.midcycle_crash_p) {
                Some(*self.rng.pick(&[
                    CrashPoint::AfterSend,
                    CrashPoint::AfterWrite,
                    CrashPoint::AfterWrite,
                    CrashPoint::AfterWrite,
                    CrashPoint::AfterSync,
                    CrashPoint::AfterAcks,
                ]))
            } else {
                None
            };
            if let Some((role, leader)) = out.role_change {
                if self.p.trace {
                    let term = proc.raft.status().term;
                    self.event(format!(
                        "node {id}: {} in term {term}, leader {leader}",
                        role.as_str()
                    ));
                }
            }
            // Mutations (checks of the checker) bend the cycle before it runs.
            if self.p.mutation == Mutation::AckBeforeFsync {
                self.send(id, std::mem::take(&mut out.send_after_persist));
            }
            if self.p.mutation == Mutation::ForgetVote {
                if let Some(hs) = &mut out.hard_state {
                    hs.vote = 0;
                }
            }
            let mut persist = std::mem::take(&mut proc.persist);
            let mut cycle = SimCycle {
                world: self,
                id,
                number: out.number,
                proc,
                crash_at,
                removed: false,
            };
            let flow = run_cycle(out, &mut persist, &mut cycle);
            removed |= cycle.removed;
            proc.persist = persist;
            let flow = flow?;
            if flow == Flow::Stopped {
                return Ok(PumpEnd::Crashed);
            }
            self.observe_leadership(id, proc)?;
        }
        Ok(if removed {
            PumpEnd::Removed
        } else {
            PumpEnd::Alive
        })
    }

    /// Committed conf changes take effect in raft (before acks or applying).
    fn apply_conf_changes(
        &mut self,
        id: u64,
        proc: &mut Proc,
        committed: &[Entry],
    ) -> SimResult<()> {
        for entry in committed {
            if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                let (what, change) = describe_entry(entry);
                let change = change.ok_or_else(|| {
                    format!("node {id}: committed entry {} is {what}", entry.index)
                })?;
                if let Err(e) = proc.raft.apply_conf_change(&change) {
                    self.event(format!(
                        "node {id}: raft refused {what} at index {}: {e}",
                        entry.index
                    ));
                }
                self.observe_commit(id, proc)?;
            }
        }
        Ok(())
    }

    /// Applies committed entries in log order. Returns whether one removed the node itself.
    fn apply_committed(
        &mut self,
        id: u64,
        proc: &mut Proc,
        committed: &[Entry],
    ) -> SimResult<bool> {
        let mut removed = false;
        for entry in committed {
            removed |= self.apply(id, proc, entry)?;
        }
        if !committed.is_empty() {
            self.check_conf(id, proc)?;
        }
        Ok(removed)
    }

    /// The state machine. Returns whether this entry removed the node itself.
    fn apply(&mut self, id: u64, proc: &mut Proc, entry: &Entry) -> SimResult<bool> {
        if entry.index != proc.applied + 1 {
            return Err(format!(
                "node {id} applied index {} right after index {}: the applied index must \
                 advance one by one and never go back",
                entry.index, proc.applied
            ));
        }
        let hash = raft_entry_hash(entry);
        let (what, change) = describe_entry(entry);
        let Some(agreed) = self.committed.get(entry.index as usize - 1) else {
            return Err(format!(
                "node {id} applied index {} (term {}, {what}) but no leader was seen \
                 committing it (committed prefix is {})",
                entry.index,
                entry.term,
                self.committed.len()
            ));
        };
        if (agreed.term, agreed.hash) != (entry.term, hash) {
            return Err(format!(
                "state machine safety: node {id} applied index {} as term {} '{what}', but \
                 it was committed as term {} '{}' (by leader {} in term {})",
                entry.index,
                entry.term,
                agreed.term,
                agreed.what,
                agreed.leader,
                agreed.leader_term
            ));
        }
        proc.applied = entry.index;
        self.stats.applied += 1;
        let node = self.nodes.get_mut(&id).expect("exists");
        node.max_applied = node.max_applied.max(entry.index);
        let removes_me = change.is_some_and(|change| {
            change.get_changes().iter().any(|step| {
                step.get_change_type() == ConfChangeType::RemoveNode && step.node_id == id
            })
        });
        Ok(removes_me)
    }

    // ---------------------------------------------------------------- observation

    /// Records entries a leader newly committed, with the configuration that committed
    /// them, and checks that they are durable on a quorum of it.
    fn observe_commit(&mut self, id: u64, proc: &mut Proc) -> SimResult<()> {
        let status = proc.raft.status();
        if status.role == Role::Leader && status.commit_index > proc.commit_seen {
            let conf = proc.raft.conf_state();
            for index in proc.commit_seen + 1..=status.commit_index {
                self.record_commit(id, proc, index, status.term, &conf)?;
            }
        }
        proc.commit_seen = proc.commit_seen.max(status.commit_index);
        Ok(())
    }

    fn record_commit(
        &mut self,
        id: u64,
        proc: &Proc,
        index: u64,
        leader_term: u64,
        conf: &ConfState,
    ) -> SimResult<()> {
        let Some(mine) = proc.log.get(index) else {
            return Err(format!(
                "leader {id} (term {leader_term}) commits index {index} beyond its log ({})",
                proc.log.last_index()
            ));
        };
        if let Some(agreed) = self.committed.get(index as usize - 1) {
            if (agreed.term, agreed.hash) != (mine.term, mine.hash) {
                return Err(format!(
                    "committed entry changed: index {index} was committed as term {} '{}' \
                     by leader {} in term {}, now leader {id} in term {leader_term} commits \
                     an entry of term {} there",
                    agreed.term, agreed.what, agreed.leader, agreed.leader_term, mine.term
                ));
            }
            return Ok(());
        }
        if index != self.committed.len() as u64 + 1 {
            return Err(format!(
                "leader {id} commits index {index} but the committed prefix ends at {}",
                self.committed.len()
            ));
        }
        let entry = proc
            .raft
            .store()
            .entries(index, index + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| format!("leader {id}: cannot read entry {index}: {e}"))?
            .remove(0);
        let (what, change) = describe_entry(&entry);
        let mut voters = conf.voters.clone();
        voters.sort_unstable();
        let mut outgoing = conf.voters_outgoing.clone();
        outgoing.sort_unstable();
        self.committed_mirror
            .append([(index, mine.term, mine.hash)])
            .map_err(|e| format!("simulator: committed mirror: {e}"))?;
        self.committed.push(Committed {
            term: mine.term,
            hash: mine.hash,
            what: what.clone(),
            leader: id,
            leader_term,
            quorum: Some((voters, outgoing)),
        });
        if let Some(change) = change {
            self.stats.conf_changes_committed += 1;
            self.note_added(index, &change);
            let next = self.conf_at(index).apply(&change);
            self.ever_member.extend(next.members());
            if change
                .get_changes()
                .iter()
                .any(|s| s.get_change_type() == ConfChangeType::AddNode && s.node_id == 1)
            {
                self.self_added_at.get_or_insert(index);
            }
            self.event(format!(
                "index {index} committed by leader {id} (term {leader_term}): {what} -> {next}"
            ));
            self.confs.push((index, next));
        }
        self.check_durable_quorum(index)
    }

    fn note_added(&mut self, index: u64, change: &ConfChangeV2) {
        for step in change.get_changes() {
            if step.get_change_type() != ConfChangeType::RemoveNode {
                self.added_at.entry(step.node_id).or_insert(index);
            }
        }
    }

    /// `RAFT.MSG` on `receiver`: a sender that was added and then removed, as of what the
    /// receiver applied, is refused with REMOVED.
    fn refuses_as_removed(&self, receiver: &Proc, sender: u64) -> bool {
        self.added_at
            .get(&sender)
            .is_some_and(|&at| at <= receiver.applied)
            && !self.conf_at(receiver.applied).members().contains(&sender)
    }

    fn conf_at(&self, index: u64) -> &Conf {
        let position = self.confs.partition_point(|(at, _)| *at <= index);
        &self.confs[position - 1].1
    }

    fn observe_leadership(&mut self, id: u64, proc: &mut Proc) -> SimResult<()> {
        let status = proc.raft.status();
        if status.role != Role::Leader {
            return Ok(());
        }
        match self.leaders.get(&status.term) {
            Some(&other) if other != id => {
                return Err(format!(
                    "election safety: nodes {other} and {id} are both leader in term {}",
                    status.term
                ));
            }
            Some(_) => {}
            None => {
                // Elected: it must have been a voter (a leader may later apply its own
                // removal and lead on until it steps down, as raft-rs allows).
                let state = proc.raft.conf_state();
                if !state.voters.contains(&id) && !state.voters_outgoing.contains(&id) {
                    return Err(format!(
                        "node {id} became leader in term {} but is not a voter in its own \
                         configuration ({})",
                        status.term,
                        Conf::from_raft(&state)
                    ));
                }
                self.leaders.insert(status.term, id);
                self.stats.elections += 1;
                self.stats.max_term = self.stats.max_term.max(status.term);
                let conf = Conf::from_raft(&proc.raft.conf_state());
                self.event(format!(
                    "node {id} is leader in term {} (last index {}, commit {}, {conf})",
                    status.term, status.last_index, status.commit_index
                ));
            }
        }
        if proc.leader_checked_term != status.term {
            proc.leader_checked_term = status.term;
            for (position, agreed) in self.committed.iter().enumerate() {
                let index = position as u64 + 1;
                if agreed.leader_term < status.term
                    && !proc.log.has(index, agreed.term, agreed.hash)
                {
                    return Err(format!(
                        "leader completeness: node {id} leads term {} without committed index \
                         {index} (term {} '{}', committed by leader {} in term {}); its log \
                         has {:?} there",
                        status.term,
                        agreed.term,
                        agreed.what,
                        agreed.leader,
                        agreed.leader_term,
                        proc.log.get(index).map(|e| e.term)
                    ));
                }
            }
        }
        Ok(())
    }

    /// A committed entry stays on a quorum of the configuration that committed it.
    fn check_durable_quorum(&self, index: u64) -> SimResult<()> {
        let agreed = &self.committed[index as usize - 1];
        let Some((voters, outgoing)) = &agreed.quorum else {
            return Ok(());
        };
        for group in [voters, outgoing] {
            if group.is_empty() {
                continue;
            }
            let holders: Vec<u64> = group
                .iter()
                .copied()
                .filter(|id| {
                    self.nodes
                        .get(id)
                        .is_some_and(|n| n.durable.log.has(index, agreed.term, agreed.hash))
                })
                .collect();
            if holders.len() <= group.len() / 2 {
                return Err(format!(
                    "durability: committed index {index} (term {} '{}', committed by leader {} \
                     in term {} with voters {group:?}) is durable only on {holders:?}",
                    agreed.term, agreed.what, agreed.leader, agreed.leader_term
                ));
            }
        }
        Ok(())
    }

    /// After a node's durable log lost or replaced entries from `from` on.
    fn check_durable_quorums(&self, from: u64) -> SimResult<()> {
        for index in from..=self.committed.len() as u64 {
            self.check_durable_quorum(index)?;
        }
        Ok(())
    }

    /// After applying a batch: the node's raft configuration is the one the committed log
    /// describes at its applied index.
    fn check_conf(&self, id: u64, proc: &Proc) -> SimResult<()> {
        if !self.p.check_conf {
            return Ok(());
        }
        // A joiner learns the configuration from the log; before the log names the first
        // node (AddNode(1)) its configuration is empty, which is harmless as it is
        // nobody's voter yet. If the log never names node 1, joiners disagree (bug 3).
        let joiner = self.nodes[&id].bootstrap_voters.is_empty();
        if joiner && self.self_added_at.is_some_and(|at| proc.applied < at) {
            return Ok(());
        }
        let state = proc.raft.conf_state();
        let actual = Conf::from_raft(&state);
        let expected = self.conf_at(proc.applied);
        if &actual != expected || !state.voters_outgoing.is_empty() {
            return Err(format!(
                "configuration disagreement: node {id} has applied the log up to index {} \
                 and raft has {actual} (outgoing {:?}), but the committed log up to there \
                 says {expected}",
                proc.applied, state.voters_outgoing
            ));
        }
        Ok(())
    }

    /// Log matching: two logs with the same term at an index are identical up to it.
    fn check_log_matching(&self) -> SimResult<()> {
        let logs: Vec<(u64, &LogMirror)> = self
            .nodes
            .values()
            .filter_map(|n| n.proc.as_ref().map(|p| (n.id, &p.log)))
            .collect();
        for (a, (id_a, log_a)) in logs.iter().enumerate() {
            for (id_b, log_b) in &logs[a + 1..] {
                let mut index = log_a.last_index().min(log_b.last_index());
                while index > 0 {
                    let (ea, eb) = (log_a.get(index).unwrap(), log_b.get(index).unwrap());
                    if ea.term == eb.term {
                        if ea.prefix != eb.prefix {
                            let first = log_a.first_difference(log_b).unwrap_or(0);
                            return Err(format!(
                                "log matching: nodes {id_a} and {id_b} both have term {} at \
                                 index {index} but their logs differ from index {first} \
                                 (terms {:?} vs {:?} there)",
                                ea.term,
                                log_a.get(first).map(|e| e.term),
                                log_b.get(first).map(|e| e.term)
                            ));
                        }
                        break;
                    }
                    index -= 1;
                }
            }
        }
        Ok(())
    }

    /// The mirrors follow the real `LogStore`s.
    fn check_mirrors(&self) -> SimResult<()> {
        for node in self.nodes.values() {
            let Some(proc) = &node.proc else { continue };
            let store = proc.raft.store();
            if store.last_index() != proc.log.last_index() {
                return Err(format!(
                    "simulator: node {} store last index {} but mirror {}",
                    node.id,
                    store.last_index(),
                    proc.log.last_index()
                ));
            }
            for index in store.first_index() - 1..=store.last_index() {
                if index == 0 {
                    continue;
                }
                let term = Storage::term(store, index).map_err(|e| e.to_string())?;
                if Some(term) != proc.log.get(index).map(|e| e.term) {
                    return Err(format!(
                        "simulator: node {} store and mirror disagree at index {index}",
                        node.id
                    ));
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- faults

    fn crash(&mut self, id: u64, why: &str) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.life != Life::Running {
            return;
        }
        node.proc = None;
        self.crash_mid_cycle(id, why);
    }

    /// The process is gone (its `Proc` dropped by the caller); the disk decides what stays.
    fn crash_mid_cycle(&mut self, id: u64, why: &str) {
        let kill = self.p.kills && self.rng.chance(0.4);
        // Quick restarts (a supervisor) land inside elections; long ones let others move on.
        let downtime = if self.rng.chance(0.3) {
            self.rng.range(1, 8)
        } else {
            self.rng.range(5, 150)
        };
        let node = self.nodes.get_mut(&id).expect("exists");
        let had_unsynced = node.disk.has_unsynced();
        let damage = if kill {
            node.disk.kill()
        } else {
            node.disk
                .power_loss(&mut self.rng, self.p.partial_header_then_zeros)
        };
        node.last_damage = damage;
        node.proc = None;
        node.life = Life::Crashed {
            restart_at: self.now + downtime,
        };
        self.stats.crashes += 1;
        if why != "crash" {
            self.stats.midcycle_crashes += 1;
        }
        if had_unsynced {
            if kill {
                self.stats.kills_with_unsynced += 1;
            } else {
                self.stats.power_losses_with_unsynced += 1;
            }
        }
        // Connections to the dead process are gone with what was queued on them.
        self.drop_flights_to(id);
        self.event(format!(
            "node {id} crashed ({why}; {}; disk {damage:?}); restarts in {downtime}",
            if kill { "process killed" } else { "power lost" }
        ));
    }

    fn partition(&mut self) {
        if self.heal_at.is_some() {
            return;
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        if ids.len() < 2 {
            return;
        }
        let kind = self.rng.below(3);
        let mut description = String::new();
        match kind {
            0 => {
                // Two sides.
                let side: BTreeSet<u64> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(0.5))
                    .collect();
                for &a in &ids {
                    for &b in &ids {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut.insert((a, b));
                        }
                    }
                }
                let _ = write!(description, "split {side:?} | rest");
            }
            1 => {
                let alone = *self.rng.pick(&ids);
                for &other in &ids {
                    if other != alone {
                        self.cut.insert((alone, other));
                        self.cut.insert((other, alone));
                    }
                }
                let _ = write!(description, "isolate {alone}");
            }
            _ => {
                // Some one-way links.
                for &a in &ids {
                    for &b in &ids {
                        if a != b && self.rng.chance(0.3) {
                            self.cut.insert((a, b));
                        }
                    }
                }
                let _ = write!(description, "one-way cuts {:?}", self.cut);
            }
        }
        let duration = self.rng.range(20, 400);
        self.heal_at = Some(self.now + duration);
        self.stats.partitions += 1;
        self.event(format!("partition: {description} for {duration}"));
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.heal_at = None;
        self.event("network healed".to_string());
    }

    // ---------------------------------------------------------------- starting nodes

    /// Process start: the log file bytes -> `logfile::recover` -> torn tail cut ->
    /// `LogStore::from_recovered(recovered, ConfState{voters: bootstrap_voters})` ->
    /// `RaftNode::new(applied: 0)` -> replay the committed entries -> campaign if alone.
    fn start(&mut self, id: u64) -> SimResult<()> {
        let (max_append_bytes, inflight) = self.node_params;
        let node = self.nodes.get_mut(&id).expect("exists");
        let damage = node.last_damage;
        let recovered = logfile::recover(&node.disk.bytes).map_err(|e| {
            format!(
                "node {id}: recovery refused the log after a crash that left {damage:?}: {e} \
                 (a crash can only tear the tail, so this is a logfile.rs bug)"
            )
        })?;
        let meta = recovered
            .meta
            .clone()
            .ok_or_else(|| format!("node {id}: the log lost its Meta record"))?;
        if meta.node_id != id {
            return Err(format!("node {id}: Meta says node {}", meta.node_id));
        }
        // `LogFile::open`: a torn tail is cut and the file synced; otherwise the file is
        // left as it is, so bytes a killed process wrote stay unsynced (bug 4). With
        // `open_syncs` (the proposed fix) the file is always synced.
        let torn = recovered.torn_tail_bytes > 0;
        if torn || self.p.open_syncs {
            node.disk.truncate_and_sync(recovered.valid_len);
            node.unsynced.clear();
        }
        let durable_now = logfile::recover(&node.disk.bytes[..node.disk.synced_len])
            .map_err(|e| format!("node {id}: recovery refused the synced prefix: {e}"))?;
        // What the synced bytes recover to is the new durable state (a power loss may have
        // added or replaced uncommitted entries); the durable committed prefix must not
        // have changed.
        // `remove_leftovers`: raft forgot the messages of received files.
        node.received.clear();
        let snapshot = node.snapshot.clone();
        let mut durable_log = LogMirror::from_recovered(&durable_now, &self.committed_mirror)?;
        if let Some(file) = &snapshot {
            // The snapshot holds the committed log up to its index, durably.
            if durable_log.get(file.index).map(|e| e.term) != Some(file.term) {
                durable_log = self.committed_mirror.truncated(file.index);
            }
        }
        let durable_hs = durable_now.hard_state.unwrap_or_default();
        let old = std::mem::take(&mut node.durable);
        let changed_from = old.log.first_difference(&durable_log);
        if let Some(from) = changed_from {
            if from <= old.log.last_index() && from <= old.hard_state.commit {
                return Err(format!(
                    "node {id}: durable log changed at index {from}, at or below its durable \
                     commit {}, across a crash ({damage:?})",
                    old.hard_state.commit
                ));
            }
        }
        if durable_hs.term < old.hard_state.term || durable_hs.commit < old.hard_state.commit {
            return Err(format!(
                "node {id}: durable hard state went back across a crash: {:?} -> {durable_hs:?}",
                old.hard_state
            ));
        }
        node.durable = Durable {
            log: durable_log,
            hard_state: durable_hs,
        };
        let mut log = LogMirror::from_recovered(&recovered, &self.committed_mirror)?;
        // `module.rs` and `node_start::start_node`: the snapshot and the log must agree.
        let compacted = recovered.compacted.map_or(0, |point| point.index);
        match &snapshot {
            None if compacted > 0 => {
                return Err(format!(
                    "node {id}: the log is compacted up to {compacted} but there is no \
                     snapshot: refusing to start"
                ))
            }
            Some(file) if compacted > file.index => {
                return Err(format!(
                    "node {id}: the log is compacted up to {compacted} but the snapshot only \
                     reaches {}: refusing to start",
                    file.index
                ))
            }
            _ => {}
        }
        let conf_state = match &snapshot {
            Some(file) => file.conf.clone(),
            None => ConfState::from((meta.bootstrap_voters.clone(), Vec::<u64>::new())),
        };
        let mut applied = compacted;
        let commit_on_disk = recovered.hard_state.map_or(0, |hs| hs.commit);
        let mut store = LogStore::from_recovered(recovered, conf_state.clone());
        if let Some(file) = &snapshot {
            let log_agrees = Storage::term(&store, file.index).is_ok_and(|t| t == file.term);
            if log_agrees || store.last_index() < file.index {
                store.compact_to_snapshot(file.index, file.term, conf_state.clone());
            } else {
                let mut metadata = SnapshotMetadata {
                    index: file.index,
                    term: file.term,
                    ..Default::default()
                };
                metadata.set_conf_state(conf_state.clone());
                store.apply_snapshot(&metadata);
            }
            if store.hard_state().commit < file.index {
                store.set_commit(file.index);
            }
            if !log_agrees {
                log = self.committed_mirror.truncated(file.index);
            }
            applied = file.index;
            self.check_snapshot_state(id, file, "restarts from")?;
        }
        let last_index_on_disk = log.last_index();
        let node = self.nodes.get_mut(&id).expect("exists");
        if let Some(limit) = self.p.cache_limit {
            store.set_reader(Box::new(node.disk.reader(self.file_reads.clone())));
            store.set_cache_limit(Some(limit));
        }
        let params = NodeParams {
            id,
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            applied,
            max_append_bytes,
            max_inflight_appends: inflight,
        };
        let raft = RaftNode::new(&params, store)
            .map_err(|e| format!("node {id}: raft refused to start: {e}"))?;
        let max_applied_before = node.max_applied;
        let restart = node.starts > 0;
        node.starts += 1;
        node.life = Life::Running;
        node.next_tick_at = self.now + node.tick_period;
        self.stats.torn_tails += u64::from(torn);
        self.stats.restarts += u64::from(restart);
        if let Some(from) = changed_from {
            self.check_durable_quorums(from)?;
        }
        self.record_commits_from_page_cache(id, &log, commit_on_disk, &raft)?;
        if restart {
            self.event(format!(
                "node {id} restarted: last index {}, durable commit {}, commit {commit_on_disk}, \
                 term {}, applied before crash {max_applied_before}",
                log.last_index(),
                durable_hs.commit,
                raft.status().term
            ));
        }
        self.stats.restarts_from_snapshot += u64::from(restart && snapshot.is_some());
        let proc = Proc {
            raft,
            applied,
            log,
            commit_seen: 0,
            leader_checked_term: 0,
            told_removed: false,
            reads: ReadBatches::default(),
            ticks: 0,
            persist: PersistQueue::new(true),
            sync_in_flight: None,
        };
        // Replay what is already committed first: conf changes in it decide who votes.
        self.pump_and_keep(id, proc)?;
        let Some(proc) = self.nodes.get(&id).and_then(|n| n.proc.as_ref()) else {
            return Ok(());
        };
        // The commit index is written but not synced on its own, and entries committed
        // earlier are applied before a cycle's sync: after a crash the replay may stop
        // short of what was applied, but never before the file's commit, and every
        // applied entry must still be in the node's own log (raft hands out only durable
        // entries), so the leader's commit index brings it back.
        if proc.applied < commit_on_disk {
            return Err(format!(
                "node {id}: replaying its log after restart reaches only {}, below the commit \
                 index in the log ({commit_on_disk})",
                proc.applied
            ));
        }
        if last_index_on_disk < max_applied_before {
            return Err(format!(
                "node {id} had applied up to {max_applied_before} before the crash, but its \
                 log after restart ends at {last_index_on_disk}: an applied entry was not durable"
            ));
        }
        self.campaign_if_alone(id)
    }

    /// After a process kill, the page cache may hold a hard state whose commit index the
    /// leader computed before its fsync. Those entries were never seen committed.
    fn record_commits_from_page_cache(
        &mut self,
        id: u64,
        log: &LogMirror,
        commit: u64,
        raft: &RaftNode,
    ) -> SimResult<()> {
        for index in self.committed.len() as u64 + 1..=commit {
            let mine = log
                .get(index)
                .expect("recovery checks commit <= last index");
            let entry = raft
                .store()
                .entries(index, index + 1, None, GetEntriesContext::empty(false))
                .map_err(|e| e.to_string())?
                .remove(0);
            let (what, change) = describe_entry(&entry);
            self.event(format!(
                "node {id}: index {index} ({what}) is committed only in its page cache"
            ));
            if let Some(change) = &change {
                self.note_added(index, change);
                let next = self.conf_at(index).apply(change);
                self.ever_member.extend(next.members());
                self.confs.push((index, next));
                self.stats.conf_changes_committed += 1;
            }
            self.committed_mirror
                .append([(index, mine.term, mine.hash)])
                .map_err(|e| format!("simulator: committed mirror: {e}"))?;
            self.committed.push(Committed {
                term: mine.term,
                hash: mine.hash,
                what,
                leader: id,
                leader_term: raft.status().term,
                quorum: None,
            });
        }
        Ok(())
    }

    /// `Driver::campaign_if_alone`: the only voter needs no election timeout.
    fn campaign_if_alone(&mut self, id: u64) -> SimResult<()> {
        let alone = self
            .nodes
            .get(&id)
            .and_then(|n| n.proc.as_ref())
            .is_some_and(|p| p.raft.should_campaign_alone());
        if alone {
            self.input(id, |raft| {
                let _ = raft.campaign();
            })?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- clients and operators

    fn client_write(&mut self) -> SimResult<()> {
        let Some(id) = self.random_running() else {
            return Ok(());
        };
        let count = self.rng.range(1, 3);
        let mut data = Vec::new();
        for _ in 0..count {
            self.writes += 1;
            data.push(format!("n{id}-w{}", self.writes).into_bytes());
        }
        let accepted = self
            .input(id, |raft| {
                data.into_iter()
                    .filter(|d| raft.propose(d.clone()).is_ok())
                    .count() as u64
            })?
            .unwrap_or(0);
        self.stats.proposals += accepted;
        Ok(())
    }

    /// A linearizable read: the driver starts a ReadIndex round on a node that believes
    /// it leads; the read is served once the node has applied the returned index.
    fn client_read(&mut self) -> SimResult<()> {
        let leaders = self.leader_ids();
        if leaders.is_empty() {
            return Ok(());
        }
        let id = *self.rng.pick(&leaders);
        self.writes += 1;
        let request_id = self.writes;
        let Some(proc) = self.nodes.get_mut(&id).and_then(|n| n.proc.as_mut()) else {
            return Ok(());
        };
        // The driver queues the read; its round starts once none is in flight.
        proc.reads.queue([request_id]);
        self.reads
            .insert(request_id, (id, self.committed.len() as u64));
        self.stats.reads += 1;
        self.input(id, |_| ()).map(|_| ())
    }

    /// Reads confirmed in a Ready: the index must cover everything committed before the
    /// read started, or the read could miss an acknowledged write.
    fn check_reads(
        &mut self,
        id: u64,
        proc: &mut Proc,
        read_states: &[raft::ReadState],
    ) -> SimResult<()> {
        for read in read_states {
            // `DriverCycle::confirm_reads`: the round's context names its reads.
            let Some(request_ids) = proc.reads.confirm(&read.request_ctx) else {
                continue;
            };
            for request_id in request_ids {
                let Some((node, committed_before)) = self.reads.remove(&request_id) else {
                    return Err(format!(
                        "node {id} confirmed read {request_id}, never started"
                    ));
                };
                if node != id {
                    return Err(format!(
                        "read {request_id} started on node {node} was confirmed on node {id}"
                    ));
                }
                self.stats.reads_confirmed += 1;
                if read.index < committed_before {
                    return Err(format!(
                        "linearizability: node {id} confirmed read {request_id} at index {}, \
                         but index {committed_before} was already committed when the read \
                         started",
                        read.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// `Driver::promote_caught_up_learner`, run on every tick.
    fn promote_caught_up_learner(&mut self, id: u64) -> SimResult<()> {
        // The simulation never holds a learner back (no RAFT.DEBUG NODECFG).
        let learner = self.nodes[&id]
            .proc
            .as_ref()
            .and_then(|p| p.raft.learner_to_promote(|_| false));
        match learner {
            Some(learner) => self.propose_change(id, ConfChangeType::AddNode, learner),
            None => Ok(()),
        }
    }

    fn propose_change(&mut self, leader: u64, kind: ConfChangeType, target: u64) -> SimResult<()> {
        let pending = self.nodes[&leader]
            .proc
            .as_ref()
            .is_none_or(|p| p.raft.has_pending_conf_change());
        if pending {
            // ERR_ONE_CHANGE: one membership change at a time.
            return Ok(());
        }
        let mut step = ConfChangeSingle::default();
        step.set_change_type(kind);
        step.node_id = target;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![step].into());
        let what = describe_change(&change);
        let result = self.input(leader, |raft| raft.propose_conf_change(Vec::new(), change))?;
        self.event(format!("leader {leader} proposes {what}: {result:?}"));
        Ok(())
    }

    /// RAFT.NODE ADD / REMOVE and learner promotion, proposed on a leader.
    fn membership_change(&mut self) -> SimResult<()> {
        let leaders = self.leader_ids();
        if leaders.is_empty() {
            return Ok(());
        }
        let leader = *self.rng.pick(&leaders);
        if self.p.bootstrap == Bootstrap::InitAddsSelf && self.self_added_at.is_none() {
            // The proposed fix: node 1 re-proposes AddNode(1) until it is committed.
            if leader == 1 {
                self.propose_change(1, ConfChangeType::AddNode, 1)?;
            }
            return Ok(());
        }
        let conf = {
            let proc = self.nodes[&leader].proc.as_ref().expect("leader runs");
            Conf::from_raft(&proc.raft.conf_state())
        };
        let members = conf.members();
        // RAFT.NODE ADD (a learner, promoted by the leader once caught up) towards
        // `nodes` members, and sometimes RAFT.NODE REMOVE.
        let mut options: Vec<(ConfChangeType, u64)> = Vec::new();
        if (members.len() as u64) < self.p.nodes {
            // A node that asked to join and was never added, or a brand-new one.
            let orphan = self
                .nodes
                .values()
                .find(|n| !self.ever_member.contains(&n.id) && n.life != Life::Removed)
                .map(|n| n.id);
            let add = match orphan {
                Some(id) => Some(id),
                None if self.next_id <= self.max_ids => Some(0),
                None => None,
            };
            if let Some(id) = add {
                for _ in 0..3 {
                    options.push((ConfChangeType::AddLearnerNode, id));
                }
            }
        }
        for &member in &members {
            let removable =
                member != leader && (conf.learners.contains(&member) || conf.voters.len() >= 3);
            if removable {
                options.push((ConfChangeType::RemoveNode, member));
            }
        }
        if options.is_empty() {
            return Ok(());
        }
        let (kind, mut target) = *self.rng.pick(&options);
        if target == 0 {
            // RAFT.CLUSTER JOIN on a new node: it starts with an empty log and config.
            let bootstrap_voters = Vec::new();
            target = self.create_node(bootstrap_voters);
            self.start(target)?;
        }
        self.propose_change(leader, kind, target)
    }

    fn transfer_leader(&mut self) -> SimResult<()> {
        let leaders = self.leader_ids();
        if leaders.is_empty() {
            return Ok(());
        }
        let leader = *self.rng.pick(&leaders);
        let voters: Vec<u64> = {
            let proc = self.nodes[&leader].proc.as_ref().expect("leader runs");
            proc.raft
                .conf_state()
                .voters
                .into_iter()
                .filter(|&v| v != leader)
                .collect()
        };
        if voters.is_empty() {
            return Ok(());
        }
        let target = *self.rng.pick(&voters);
        self.event(format!("leader {leader}: transfer leadership to {target}"));
        self.input(leader, |raft| raft.transfer_leader(target))?;
        Ok(())
    }

    // ---------------------------------------------------------------- liveness

    /// Faults stop; every crashed node restarts. A leader must be elected and a new entry
    /// committed and applied by every member of the committed configuration.
    fn liveness(&mut self) -> SimResult<()> {
        self.chaos = false;
        self.f = Faults::calm();
        self.heal();
        let crashed: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| matches!(n.life, Life::Crashed { .. }))
            .map(|n| n.id)
            .collect();
        for id in crashed {
            self.start(id)?;
        }
        let started = self.now;
        let deadline = self.now + self.p.liveness_steps;
        let mut sentinel: Option<(u64, u64, u64)> = None; // (index, term, proposed at)
        while self.now < deadline {
            self.step_time()?;
            if let Some((index, term, at)) = sentinel {
                let committed = self
                    .committed
                    .get(index as usize - 1)
                    .map(|c| c.term == term && c.what.starts_with("liveness"));
                match committed {
                    Some(true) => {
                        let conf = self.conf_at(self.committed.len() as u64).clone();
                        let behind: Vec<u64> = conf
                            .members()
                            .into_iter()
                            .filter(|id| {
                                self.nodes
                                    .get(id)
                                    .and_then(|n| n.proc.as_ref())
                                    .is_none_or(|p| p.applied < index)
                            })
                            .collect();
                        if behind.is_empty() {
                            self.stats.liveness_time = self.now - started;
                            self.event(format!(
                                "liveness: index {index} committed and applied by {conf}"
                            ));
                            return Ok(());
                        }
                        continue;
                    }
                    Some(false) => sentinel = None,
                    None if self.now - at > 200 => sentinel = None,
                    None => continue,
                }
            }
            let ready_leader = self.leader_ids().into_iter().find(|id| {
                self.nodes[id]
                    .proc
                    .as_ref()
                    .is_some_and(|p| p.raft.status().leader_ready)
            });
            if let Some(leader) = ready_leader {
                let data = format!("liveness-{}", self.now).into_bytes();
                if let Some(Ok((index, term))) = self.input(leader, |raft| raft.propose(data))? {
                    sentinel = Some((index, term, self.now));
                }
            }
        }
        Err(format!(
            "liveness: {} time units after the faults stopped, no entry was committed and \
             applied by every member\n{}",
            self.p.liveness_steps,
            self.describe_nodes()
        ))
    }

    pub fn describe_nodes(&self) -> String {
        let mut text = String::new();
        let committed_conf = self.conf_at(self.committed.len() as u64);
        let _ = writeln!(
            text,
            "  committed prefix {}, committed configuration {committed_conf}",
            self.committed.len()
        );
        for node in self.nodes.values() {
            let _ = write!(text, "  node {}: {:?}", node.id, node.life);
            if let Some(proc) = &node.proc {
                let status = proc.raft.status();
                let conf = Conf::from_raft(&proc.raft.conf_state());
                let _ = write!(
                    text,
                    ", {} term {} leader {}, commit {}, applied {}, last index {}, {conf}",
                    status.role.as_str(),
                    status.term,
                    status.leader_id,
                    status.commit_index,
                    proc.applied,
                    status.last_index
                );
            }
            let _ = writeln!(
                text,
                ", durable last index {} {:?}",
                node.durable.log.last_index(),
                node.durable.hard_state
            );
        }
        text
    }

    fn fingerprint(&self) -> u64 {
        let mut state = self.now;
        let mut mix = |value: u64| {
            state ^= value;
            super::rng::splitmix64(&mut state);
        };
        mix(self.committed.len() as u64);
        if let Some(last) = self.committed.last() {
            mix(last.hash);
            mix(last.term);
        }
        for node in self.nodes.values() {
            mix(node.id);
            mix(node.durable.log.last_index());
            mix(node.durable.hard_state.term);
            mix(node.durable.hard_state.commit);
            mix(node.disk.bytes.len() as u64);
            if let Some(proc) = &node.proc {
                mix(proc.applied);
                mix(proc.raft.status().term);
            }
        }
        mix(self.stats.sent);
        mix(self.stats.elections);
        state
    }
}

/// The simulation's side of each step of `core::ready::run_cycle`.
struct SimCycle<'a> {
    world: &'a mut World,
    id: u64,
    /// The Ready number of the cycle run (0 when finishing a sync).
    number: u64,
    proc: &'a mut Proc,
    crash_at: Option<CrashPoint>,
    /// An applied entry removed this node.
    removed: bool,
}

impl CycleSteps for SimCycle<'_> {
    type Error = String;

    fn send(&mut self, messages: Vec<Message>) -> SimResult<()> {
        self.world.send(self.id, messages);
        Ok(())
    }

    fn install_snapshot(&mut self, metadata: &SnapshotMetadata) -> SimResult<()> {
        self.world.install_snapshot(self.id, self.proc, metadata)
    }

    fn apply_conf_changes(&mut self, committed: &[Entry]) -> SimResult<()> {
        self.world.apply_conf_changes(self.id, self.proc, committed)
    }

    fn apply(&mut self, committed: Vec<Entry>) -> SimResult<()> {
        self.removed |= self.world.apply_committed(self.id, self.proc, &committed)?;
        Ok(())
    }

    fn confirm_reads(&mut self, reads: Vec<raft::ReadState>) -> SimResult<()> {
        self.world.check_reads(self.id, self.proc, &reads)
    }

    fn write(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> SimResult<()> {
        let id = self.id;
        let node = self.world.nodes.get_mut(&id).expect("exists");
        let frames = node.disk.append(entries, hard_state);
        if let Some(first) = entries.first() {
            self.proc.raft.record_frames(first.index, &frames);
        }
        let number = self.number;
        node.unsynced
            .push((number, entries.to_vec(), hard_state.cloned()));
        self.proc
            .log
            .append_raft(entries)
            .map_err(|e| format!("node {id}: raft handed out a bad batch: {e}"))?;
        Ok(())
    }

    fn start_sync(&mut self, number: u64) -> SimResult<()> {
        assert!(
            self.proc.sync_in_flight.is_none(),
            "node {}: a second sync started while one is in flight",
            self.id
        );
        let rng = &mut self.world.rng;
        // Mostly quick; sometimes a slow disk holds a sync across several heartbeats.
        let delay = if rng.chance(0.05) {
            rng.range(10, 40)
        } else {
            rng.range(1, 4)
        };
        let disk = &self.world.nodes[&self.id].disk;
        self.proc.sync_in_flight = Some(SimSync {
            number,
            disk_generation: disk.generation,
            disk_len: disk.bytes.len(),
            done_at: self.world.now + delay,
        });
        Ok(())
    }

    fn sync_now(&mut self) -> SimResult<()> {
        let disk = &self.world.nodes[&self.id].disk;
        let sync = SimSync {
            number: self.number,
            disk_generation: disk.generation,
            disk_len: disk.bytes.len(),
            done_at: self.world.now,
        };
        if self.world.p.mutation != Mutation::NoFsync {
            self.world.make_durable(self.id, &sync)?;
        }
        Ok(())
    }

    fn last_sync_us(&mut self) -> u64 {
        // Either way, at random: both places a sync runs are exercised.
        if self.world.p.syncs_in_place && self.world.rng.chance(0.5) {
            0
        } else {
            u64::MAX
        }
    }

    fn durable(&mut self, number: u64) -> SimResult<()> {
        self.proc.raft.on_persisted(number);
        // A leader counts its own entries from now on: it may commit.
        self.world.observe_commit(self.id, self.proc)
    }

    fn role_changed(&mut self, _role: Role, _leader: u64) -> SimResult<()> {
        Ok(())
    }

    fn reached(&mut self, point: CrashPoint) -> SimResult<Flow> {
        if self.crash_at != Some(point) {
            return Ok(Flow::Continue);
        }
        let why = match point {
            CrashPoint::AfterSend => "after sending (and installing a snapshot), before writing",
            CrashPoint::AfterWrite => "after writing, before fsync",
            CrashPoint::AfterSync => "after fsync, before the acks",
            CrashPoint::AfterAcks => "after the acks of durable cycles",
        };
        self.world.crash_mid_cycle(self.id, why);
        Ok(Flow::Stopped)
    }
}
