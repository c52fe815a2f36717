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
//! SIM_SEED=17 SIM_STEPS=2000 SIM_NODES=5 cargo test --test simulation replay -- --nocapture
//! scripts/simulate --seeds 500                               # the same, with flags
//! ```

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sim::{Bootstrap, Params, Stats};

/// The fixed sweep `make test` runs: seeds 1..=SWEEP_SEEDS, SWEEP_STEPS time units each.
const SWEEP_SEEDS: u64 = 40;
const SWEEP_STEPS: u64 = 2_000;
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
    match std::env::var("SIM_BOOTSTRAP").as_deref() {
        Ok("as-driver") => params.bootstrap = Bootstrap::AsDriver,
        Ok("init-adds-self") | Err(_) => {}
        Ok(other) => panic!("SIM_BOOTSTRAP={other}: use as-driver or init-adds-self"),
    }
    params.kills = env_u64("SIM_KILLS").unwrap_or(0) != 0;
    params.campaign_non_voters = env_u64("SIM_CAMPAIGN_ANY").unwrap_or(0) != 0;
    params.partial_header_then_zeros = env_u64("SIM_TORN_HEADERS").unwrap_or(0) != 0;
    params
}

/// Runs seeds `first..first + count` on all cores; returns the failures' reports.
fn sweep(first: u64, count: u64, make: impl Fn(u64) -> Params + Sync) -> (Stats, Vec<String>) {
    let next = AtomicU64::new(first);
    let total = Mutex::new(Stats::default());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let make = Arc::new(&make);
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
        if example.kills { ", process kills" } else { "" },
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
        assert!(stats.partitions > count, "too few partitions: {stats}");
        assert!(
            stats.duplicated > 0 && stats.dropped > 0,
            "no message faults: {stats}"
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
