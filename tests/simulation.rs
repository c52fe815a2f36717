//! Seeded simulation of the pure core under faults: N `RaftNode`s on an in-memory
//! network that drops, duplicates, delays, reorders and partitions messages, on
//! simulated disks that lose unsynced writes and tear the last record when they crash,
//! with nodes crashing, restarting, joining and leaving. After every step the Raft
//! safety properties are checked; then faults stop and the cluster must make progress.
//! See docs/SIMULATION.md.
//!
//! ```sh
//! cargo test --test simulation                               # the fixed sweep
//! SIM_SEEDS=500 cargo test --release --test simulation seed_sweep -- --nocapture
//! SIM_SEED=17 SIM_STEPS=3000 SIM_NODES=5 cargo test --test simulation replay -- --nocapture
//! scripts/simulate --seeds 500                               # the same, with flags
//! ```

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sim::{Bootstrap, Mutation, Params, Stats};

/// The fixed sweep `make test` runs: seeds 1..=SWEEP_SEEDS, SWEEP_STEPS time units each.
const SWEEP_SEEDS: u64 = 100;
const SWEEP_STEPS: u64 = 3_000;
const SWEEP_NODES: u64 = 5;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

fn params_from_env(seed: u64) -> Params {
    let mut params = Params::new(
        seed,
        env_u64("SIM_STEPS").unwrap_or(SWEEP_STEPS),
        env_u64("SIM_NODES").unwrap_or(SWEEP_NODES),
    );
    params.bootstrap = match std::env::var("SIM_BOOTSTRAP").as_deref() {
        Err(_) | Ok("init-adds-self") => Bootstrap::InitAddsSelf,
        Ok("init-adds-self-once") => Bootstrap::InitAddsSelfOnce,
        Ok("empty-joiners") => Bootstrap::EmptyJoiners,
        Ok(other) => panic!(
            "SIM_BOOTSTRAP={other}: init-adds-self (default), init-adds-self-once or empty-joiners"
        ),
    };
    params.kills = env_u64("SIM_KILLS").unwrap_or(1) != 0;
    params.open_syncs = env_u64("SIM_OPEN_SYNCS").unwrap_or(1) != 0;
    params.campaign_non_voters = env_u64("SIM_CAMPAIGN_ANY").unwrap_or(0) != 0;
    params.partial_header_then_zeros = env_u64("SIM_TORN_HEADERS").unwrap_or(0) != 0;
    params.check_conf = env_u64("SIM_NO_CONF_CHECK").unwrap_or(0) == 0;
    params.snapshots = env_u64("SIM_SNAPSHOTS").unwrap_or(1) != 0;
    params.received_one_name = env_u64("SIM_RECEIVED_ONE_NAME").unwrap_or(0) != 0;
    params.syncs_in_place = env_u64("SIM_SYNCS_IN_PLACE").unwrap_or(1) != 0;
    params.mutation = match std::env::var("SIM_MUTATION").as_deref() {
        Err(_) => Mutation::None,
        Ok("ack-before-fsync") => Mutation::AckBeforeFsync,
        Ok("no-fsync") => Mutation::NoFsync,
        Ok("forget-vote") => Mutation::ForgetVote,
        Ok(other) => panic!("SIM_MUTATION={other}: ack-before-fsync, no-fsync or forget-vote"),
    };
    params
}

/// Runs seeds `first..first + count` on all cores; returns the failures' reports.
fn sweep(first: u64, count: u64, make: impl Fn(u64) -> Params + Sync) -> (Stats, Vec<String>) {
    let next = AtomicU64::new(first);
    let total = Mutex::new(Stats::default());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let make = &make;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= first + count {
                    return;
                }
                match sim::run(make(seed)) {
                    Ok(outcome) => total.lock().unwrap().add(&outcome.stats),
                    Err(failure) => {
                        eprintln!("\n{failure}\n");
                        failures.lock().unwrap().push(failure.repro());
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    (total.into_inner().unwrap(), failures)
}

/// The fixed sweep; `SIM_SEEDS`, `SIM_FIRST_SEED`, `SIM_STEPS`, `SIM_NODES` widen it.
#[test]
fn seed_sweep() {
    let count = env_u64("SIM_SEEDS").unwrap_or(SWEEP_SEEDS);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(1);
    let started = Instant::now();
    let (stats, failures) = sweep(first, count, params_from_env);
    let example = params_from_env(first);
    println!(
        "simulation: seeds {first}..{} x {} time units, {} nodes max, {:?} bootstrap{}, \
         in {:.1?}: {stats}",
        first + count - 1,
        example.steps,
        example.nodes,
        example.bootstrap,
        match (example.kills, example.open_syncs) {
            (false, _) => ", power losses only",
            (true, true) => ", power losses and process kills",
            (true, false) => ", power losses and process kills, LogFile::open as it is",
        },
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed; reproduce with:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    if count >= 20 {
        // Guard against a simulation that silently stopped exercising the faults.
        assert!(stats.elections > count, "too few elections: {stats}");
        assert!(
            stats.crashes > count && stats.restarts > 0,
            "too few crashes: {stats}"
        );
        assert!(stats.torn_tails > 0, "no torn tail was ever cut: {stats}");
        assert!(
            stats.conf_changes_committed > count,
            "too few conf changes: {stats}"
        );
        assert!(stats.removed > 0, "no node was ever removed: {stats}");
        if example.snapshots {
            assert!(
                stats.snapshots_installed > 0 && stats.restarts_from_snapshot > 0,
                "no snapshot was ever installed, or no node restarted from one: {stats}"
            );
        }
        assert!(stats.partitions > count, "too few partitions: {stats}");
        assert!(
            stats.duplicated > 0 && stats.dropped > 0,
            "no message faults: {stats}"
        );
        assert!(
            stats.file_reads > 0,
            "no entry was ever read back from a log file: {stats}"
        );
    }
}

/// Replays one seed: `SIM_SEED=<seed>` (plus the other variables of the failure report).
/// `SIM_TRACE=1` prints every event as it happens. Does nothing without `SIM_SEED`.
#[test]
fn replay() {
    let Some(seed) = env_u64("SIM_SEED") else {
        return;
    };
    let mut params = params_from_env(seed);
    params.trace = env_u64("SIM_TRACE").unwrap_or(0) != 0;
    match sim::run(params) {
        Ok(outcome) => println!("seed {seed} passed: {}", outcome.stats),
        Err(failure) => panic!("{failure}"),
    }
}

/// A seed replays exactly (guards the deterministic entropy of sim/entropy.rs).
#[test]
fn same_seed_same_run() {
    let params = Params::new(7, 800, 5);
    let first = sim::run(params.clone()).unwrap_or_else(|f| panic!("{f}"));
    let second = sim::run(params).unwrap_or_else(|f| panic!("{f}"));
    if sim::entropy::DETERMINISTIC {
        assert_eq!(
            first.fingerprint, second.fingerprint,
            "seed 7 ran differently twice: the simulation is not deterministic"
        );
    }
}

/// Runs one seed for `steps` time units with `setup` applied to the default parameters.
#[allow(clippy::result_large_err)] // the failure is the whole reproduction report
fn run_seed(
    seed: u64,
    steps: u64,
    setup: impl FnOnce(&mut Params),
) -> Result<sim::Outcome, sim::Failure> {
    let mut params = Params::new(seed, steps, SWEEP_NODES);
    setup(&mut params);
    sim::run(params)
}

/// Asserts that a run fails, with a message containing one of `expected`.
fn assert_fails(seed: u64, steps: u64, setup: impl FnOnce(&mut Params), expected: &[&str]) {
    match run_seed(seed, steps, setup) {
        Ok(outcome) => panic!("seed {seed} passed but should fail: {}", outcome.stats),
        Err(failure) => assert!(
            expected.iter().any(|text| failure.message.contains(text)),
            "seed {seed} failed differently than expected ({expected:?}):\n{failure}"
        ),
    }
}

fn assert_passes(seed: u64, steps: u64, setup: impl FnOnce(&mut Params)) {
    if let Err(failure) = run_seed(seed, steps, setup) {
        panic!("{failure}");
    }
}

// ------------------------------------------------------------------ the checks have teeth
//
// Drivers broken on purpose must be caught, with the property they break.

#[test]
fn checker_catches_acks_sent_before_the_fsync() {
    let mutate = |p: &mut Params| {
        p.mutation = Mutation::AckBeforeFsync;
        p.snapshots = false; // the seeds were found before the simulation had snapshots
        p.syncs_in_place = false; // and before syncs could run in place
    };
    assert_fails(11, 60, mutate, &["durability"]);
    // A follower that acked entries it then lost gets heartbeats committing past its log.
    // raft-rs would panic on them; `RaftNode::step` refuses them (docs/SECURITY.md), so the
    // follower stays behind until the next append, and the checker reports no progress.
    assert_fails(
        2255,
        60,
        mutate,
        &["panic inside raft-rs", "out of range", "liveness"],
    );
}

/// The same with syncs that may run in place (`core::ready::sync_in_place`) and
/// snapshots: most seeds find it.
#[test]
fn checker_catches_acks_sent_before_an_fsync_in_place() {
    let mutate = |p: &mut Params| p.mutation = Mutation::AckBeforeFsync;
    assert_fails(5, 100, mutate, &["durability"]);
    assert_passes(5, 100, |_| {});
}

/// The same with snapshots, compaction and installs in the run.
#[test]
fn checker_catches_acks_sent_before_the_fsync_with_snapshots() {
    assert_fails(
        537,
        60,
        |p| {
            p.mutation = Mutation::AckBeforeFsync;
            p.syncs_in_place = false; // found before syncs could run in place
        },
        &["durability"],
    );
}

#[test]
fn checker_catches_a_missing_fsync() {
    assert_fails(1, 50, |p| p.mutation = Mutation::NoFsync, &["durability"]);
}

#[test]
fn checker_catches_a_forgotten_vote() {
    assert_fails(
        FORGET_VOTE_SEED.0,
        FORGET_VOTE_SEED.1,
        |p| {
            p.mutation = Mutation::ForgetVote;
            p.snapshots = false; // found before the simulation had snapshots
            p.syncs_in_place = false; // and before syncs could run in place
        },
        &["election safety"],
    );
}

/// (seed, steps): a forgotten vote elects two leaders in one term. Rare: 1 of seeds
/// 1..20000 finds it (it needs a voter to restart in the middle of an election).
const FORGET_VOTE_SEED: (u64, u64) = (4915, 500);

// ------------------------------------------------------------------ regressions
//
// Seeds that found bugs, with the switch that exposes each bug. Open bugs are ignored:
// `cargo test --test simulation -- --ignored` shows them failing. When a bug is fixed,
// drop its `ignore` and make its switch's exposing value the default (docs/SIMULATION.md,
// "Bugs found"). Seeds mean something only for the simulator version that found them:
// if you change the order of its random draws, find them again with the SIM_* variables
// named here (`scripts/simulate --seeds 3000` with the switch set).

/// Bug 1 (core, node.rs): `RaftNode::campaign` on a node that is not a voter. raft-rs
/// 0.7's `hup` lacks etcd's promotable check: with an empty configuration (a node that
/// just joined) the election is won with no votes and `become_leader` panics
/// (raft.rs:1225); a learner is elected with the voters' votes and leads. The driver now
/// calls `force_election` for RAFT.TIMEOUT_NOW (raft checks promotability there) and
/// `campaign` only when it is the only voter, so this is latent in the core API.
#[test]
fn regression_campaign_on_a_non_voter() {
    let campaign_anywhere = |p: &mut Params| p.campaign_non_voters = true;
    assert_passes(864, 20, campaign_anywhere); // a joining node: panic
    assert_passes(1229, 200, campaign_anywhere); // a learner becomes leader
}

/// Bug 2 (core, logfile.rs): `recover` refuses a torn tail made of the first 1..=7 bytes
/// of a frame header followed by zeros (the file system extended the file, the data never
/// reached the disk): "frame header checksum mismatch; refusing to start".
#[test]
fn regression_partial_frame_header_then_zeros() {
    assert_passes(1105, 40, |p| p.partial_header_then_zeros = true);
    assert_passes(724, 200, |p| p.partial_header_then_zeros = true);
}

/// Bug 3 (adapters, fixed by INIT proposing AddNode(itself)): joining nodes start with
/// an empty configuration, so if the log never names node 1 a joiner's raft never counts
/// it, believes itself the only voter, elects itself and commits alone.
#[test]
fn regression_joiners_learn_the_whole_configuration() {
    assert_passes(1187, 100, |_| {});
    assert_passes(462, 300, |_| {});
}

/// Bug 3b (adapters, handlers.rs): INIT proposes AddNode(itself) once and replies OK
/// before it is committed. If node 1 crashes before that entry is durable nobody proposes
/// it again: bug 3 comes back. With the configuration check off, seed 462 ends with two
/// different entries committed at index 53.
#[test]
fn regression_init_adds_itself_until_committed() {
    // Fixed: the leader re-proposes AddNode(itself) until applied (the simulated default).
    assert_passes(1767, 40, |_| {});
    assert_passes(462, 300, |p| p.check_conf = false);
}

/// Bug 4 (adapters, logio.rs): after a process kill, `LogFile::open` recovers bytes that
/// are still only in the page cache and does not sync them (it syncs only after cutting
/// a torn tail). The node acts on them (acks appends, applies entries); a later power loss
/// takes them back: a committed entry is left on less than a quorum, the applied index
/// goes back.
#[test]
fn regression_open_syncs_what_it_recovered() {
    // Fixed: LogFile::open syncs what it recovered (the simulated default).
    assert_passes(2265, 150, |_| {}); // was: committed entry durable on 1 of 2 voters
    assert_passes(2213, 500, |_| {}); // was: applied index goes back
}

/// Issue #14 item 5: the Ready cycle that installs a leader's snapshot also carries the
/// entries after it and a commit index covering them; the log rewritten at the snapshot
/// held that commit index before the entries were appended, and recovery refuses such a
/// file (`CommitBeyondLog`). With the commit index of a rewrite clamped to the file's last
/// index (`logfile::encode_compacted_log`) they pass; without it 8 of seeds 1..100 fail.
#[test]
fn regression_snapshot_install_persists_no_commit_beyond_the_log() {
    assert_passes(80, 500, |_| {}); // was: commit 68 beyond the last index 61
    assert_passes(60, 800, |_| {}); // was: commit 85 beyond the last index 80
}

/// Issue #14 item 7: with one received-file name, a transfer that ends before raft
/// installed the previous one replaces its file, and the install publishes the wrong
/// snapshot (or finds none). Received files named by index and term pass.
#[test]
fn regression_received_snapshots_are_named_by_index() {
    // Found before syncs could run in place.
    let one_name = |p: &mut Params| {
        p.received_one_name = true;
        p.syncs_in_place = false;
    };
    assert_fails(2144, 100, one_name, &["changed under us", "never received"]);
    assert_fails(635, 400, one_name, &["changed under us", "never received"]);
    let fixed = |p: &mut Params| p.syncs_in_place = false;
    assert_passes(2144, 100, fixed);
    assert_passes(635, 400, fixed);
}
