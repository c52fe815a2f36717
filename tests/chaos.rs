//! Black-box fault tests ("Jepsen style") against real redis-server processes running the
//! module: concurrent clients run list-append and register workloads and record every
//! operation, a seeded nemesis kills, pauses, partitions, replaces and re-leads nodes, and
//! at the end, faults healed and all nodes converged, a checker verifies the history.
//! See docs/CHAOS.md.
//!
//! `make test` runs the short tests below (3 nodes, then 5 nodes, ~40 s of faults each).
//! `scripts/chaos --time S --nemesis kill,pause,... --nodes N [--seed X]` runs `chaos_long`
//! with the `CHAOS_*` environment variables (read in `RunConfig::from_env`).
//!
//! The harness is included by path (not `mod common;`) so the Makefile's Valkey pass, which
//! re-runs every `mod common;` file, does not run the chaos tests twice; run them against
//! Valkey with `REDISRAFT_SERVER=<valkey-server> scripts/chaos ...`.

#[path = "common/mod.rs"]
mod common;

#[path = "chaos/checker.rs"]
mod checker;
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "chaos/history.rs"]
mod history;
#[path = "chaos/nemesis.rs"]
mod nemesis;
#[path = "chaos/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::Findings;
use cluster::{compare_dumps, Cluster, Data};
use history::{fresh_seed, History, Outcome, Rng};
use nemesis::{firewall_unavailable, Fault, Firewall, Nemesis, NemesisConfig};
use workload::{Shared, Topology, WorkloadConfig};

/// The chaos tests of one process run one at a time: each already loads both cores.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Debug)]
struct RunConfig {
    name: String,
    nodes: usize,
    duration: Duration,
    faults: Vec<Fault>,
    seed: u64,
    workload: WorkloadConfig,
    quiet_ms: (u64, u64),
    hold_ms: (u64, u64),
    /// `raft.*` configs of every node (`CHAOS_RAFT="k=v,k=v"` adds to / overrides them).
    raft: Vec<(String, String)>,
    /// Write history.jsonl also when the run is valid (long runs; short runs only with
    /// `CHAOS_KEEP_HISTORY=1`, so `make test` does not pile up files).
    always_keep_history: bool,
    out_dir: PathBuf,
}

/// Node configs of chaos runs: a small log so that snapshots and compaction happen during
/// the run (followers that restart or join then catch up from a snapshot), then whatever
/// `CHAOS_RAFT` says.
fn raft_configs() -> Vec<(String, String)> {
    let mut configs = vec![("log-max-file-size".to_string(), "1000000".to_string())];
    if let Ok(extra) = std::env::var("CHAOS_RAFT") {
        for item in extra.split(',').filter(|i| !i.trim().is_empty()) {
            let (k, v) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("CHAOS_RAFT item {item:?} is not key=value"));
            configs.retain(|(key, _)| key != k.trim());
            configs.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    configs
}

impl RunConfig {
    fn short(name: &str, nodes: usize, seconds: u64) -> RunConfig {
        let seed = env_u64("CHAOS_SEED").unwrap_or_else(fresh_seed);
        RunConfig {
            name: name.to_string(),
            nodes,
            duration: Duration::from_secs(env_u64("CHAOS_SHORT_TIME").unwrap_or(seconds)),
            faults: Fault::parse_list("all").unwrap(),
            seed,
            workload: WorkloadConfig {
                clients: nodes + 3,
                ..WorkloadConfig::default()
            },
            quiet_ms: (500, 2000),
            hold_ms: (1000, 4000),
            raft: raft_configs(),
            always_keep_history: std::env::var_os("CHAOS_KEEP_HISTORY").is_some(),
            out_dir: default_out_dir(name, seed),
        }
    }

    /// `CHAOS_TIME` (s), `CHAOS_NEMESIS` (comma list or `all`), `CHAOS_NODES`,
    /// `CHAOS_SEED`, `CHAOS_CLIENTS`, `CHAOS_OUT` (directory for history and summary).
    fn from_env() -> RunConfig {
        let nodes = env_u64("CHAOS_NODES").unwrap_or(5) as usize;
        let seed = env_u64("CHAOS_SEED").unwrap_or_else(fresh_seed);
        let faults = Fault::parse_list(
            &std::env::var("CHAOS_NEMESIS").unwrap_or_else(|_| "all".to_string()),
        )
        .unwrap_or_else(|e| panic!("CHAOS_NEMESIS: {e}"));
        let name = format!("long-{nodes}");
        RunConfig {
            name: name.clone(),
            nodes,
            duration: Duration::from_secs(env_u64("CHAOS_TIME").unwrap_or(60)),
            faults,
            seed,
            workload: WorkloadConfig {
                clients: env_u64("CHAOS_CLIENTS").map_or(nodes + 3, |c| c as usize),
                ..WorkloadConfig::default()
            },
            quiet_ms: (1000, 4000),
            hold_ms: (1000, 6000),
            raft: raft_configs(),
            always_keep_history: true,
            out_dir: std::env::var_os("CHAOS_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| default_out_dir(&name, seed)),
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

fn default_out_dir(name: &str, seed: u64) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/chaos")
        .join(format!("{name}-seed{seed}-pid{}", std::process::id()))
}

struct RunResult {
    violations: Vec<String>,
    summary: String,
}

/// Stops the clients when dropped (also when the run panics).
struct StopClients(Arc<Shared>);
impl Drop for StopClients {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

fn run(mut config: RunConfig) -> RunResult {
    let started = Instant::now();
    eprintln!(
        "chaos: {} — {} nodes, {:?}, nemesis {:?}, seed {} (replay: CHAOS_SEED={} ; long runs: \
         scripts/chaos --seed {})",
        config.name,
        config.nodes,
        config.duration,
        config
            .faults
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>(),
        config.seed,
        config.seed,
        config.seed
    );
    let mut notes = Vec::new();
    let firewall = if config.faults.contains(&Fault::Partition) {
        let fw = match firewall_unavailable() {
            Some(why) => Err(why),
            None => Firewall::new(),
        };
        match fw {
            Ok(fw) => Some(fw),
            Err(why) => {
                let note = format!("partition nemesis skipped: iptables not usable ({why})");
                eprintln!("chaos: NOTICE: {note}");
                notes.push(note);
                config.faults.retain(|f| *f != Fault::Partition);
                None
            }
        }
    } else {
        None
    };

    let history = History::new();
    let topology = Arc::new(Topology::default());
    let mut cluster = Cluster::start(
        config.nodes,
        config.raft.clone(),
        history.clone(),
        Arc::clone(&topology),
    );
    eprintln!(
        "chaos: cluster of {} up:{}",
        config.nodes,
        cluster.describe()
    );
    if let Err(e) = workload::load_scripts(&topology, Duration::from_secs(60)) {
        panic!("chaos: cannot load the scripts and the library: {e}");
    }
    let shared = Shared::new(history.clone(), Arc::clone(&topology));
    let stop = StopClients(Arc::clone(&shared));
    let mut clients = workload::spawn_clients(&config.workload, config.seed, &shared);
    clients.extend(workload::spawn_consumers(
        &config.workload,
        config.seed,
        &shared,
    ));

    let workload_start = history.now_ns();
    let deadline = Instant::now() + config.duration;
    let mut nemesis = Nemesis {
        cluster: &mut cluster,
        firewall: firewall.as_ref(),
        rng: Rng::fork(config.seed, 1),
        config: NemesisConfig {
            faults: config.faults.clone(),
            quiet_ms: config.quiet_ms,
            hold_ms: config.hold_ms,
        },
        stats: Default::default(),
    };
    nemesis.run(deadline);
    nemesis.heal_all();
    let stats = nemesis.stats.clone();
    // Let the clients see the healed cluster for a moment, then stop them.
    std::thread::sleep(Duration::from_secs(2));
    drop(stop);
    for c in clients {
        c.join().expect("client thread panicked");
    }
    let end_ns = history.now_ns();
    drop(firewall);

    let mut violations: Vec<String> = cluster
        .problems
        .iter()
        .map(|p| format!("cluster: {p}"))
        .collect();
    // Converge: a leader with all our nodes as members, all applied to its commit index.
    let converged = cluster.wait_converged(Duration::from_secs(60));
    if let Err(e) = &converged {
        violations.push(format!("cluster did not converge after healing: {e}"));
    }
    let dumps = match cluster.dump_all() {
        Ok(d) => d,
        Err(e) => {
            violations.push(format!("cannot read the final state: {e}"));
            Vec::new()
        }
    };
    violations.extend(compare_dumps(&dumps));

    // Snapshot activity, for the summary.
    let mut snapshot_stats = Vec::new();
    for node in &cluster.nodes {
        if let Ok(v) = cluster::admin_cmd(&node.addr(), cluster::ADMIN_TIMEOUT, &["INFO", "raft"]) {
            let info = common::parse_info(&cluster::value_text(&v));
            let get = |k: &str| info.get(k).cloned().unwrap_or_else(|| "?".into());
            snapshot_stats.push(format!(
                "node {}: snapshots created {}, received {}, last index {}, log entries {}",
                node.id,
                get("raft_snapshots_created"),
                get("raft_snapshots_received"),
                get("raft_snapshot_last_idx"),
                get("raft_log_entries")
            ));
        }
    }

    // The final state: the leader's dump (all nodes are compared above).
    let leader_id = cluster.leader().map(|s| cluster.nodes[s].id);
    let final_dump: BTreeMap<String, Data> = dumps
        .iter()
        .find(|(id, _)| Some(*id) == leader_id)
        .or(dumps.first())
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let mut lists = BTreeMap::new();
    let mut queues = BTreeMap::new();
    let mut registers = BTreeMap::new();
    for (key, data) in &final_dump {
        match data {
            // What EVALSHA and FCALL run from (compared between nodes above).
            Data::Other(listing) if key.starts_with(cluster::CODE_PREFIX) => {
                let wanted: Vec<&str> = match key.as_str() {
                    cluster::SCRIPTS_KEY => {
                        let shas = history::SCRIPT_SHAS.get().expect("scripts loaded");
                        vec![shas.0.as_str(), shas.1.as_str()]
                    }
                    _ => vec!["chaos_rpush", "chaos_incr"],
                };
                for name in wanted {
                    if !listing.contains(name) {
                        violations.push(format!("{key} lacks {name}: {listing}"));
                    }
                }
            }
            Data::List(items) if key.starts_with("queue-") || key.starts_with("trap-") => {
                let parsed: Vec<u64> = items.iter().filter_map(|s| s.parse().ok()).collect();
                if parsed.len() != items.len() {
                    violations.push(format!("queue {key} holds non-numeric elements: {items:?}"));
                }
                queues.insert(key.clone(), parsed);
            }
            Data::List(items) if key.starts_with("list-") => {
                let parsed: Vec<u64> = items.iter().filter_map(|s| s.parse().ok()).collect();
                if parsed.len() != items.len() {
                    violations.push(format!("list {key} holds non-numeric elements: {items:?}"));
                }
                lists.insert(key.clone(), parsed);
            }
            Data::Str(s) if key.starts_with("reg-") => match s.parse::<i64>() {
                Ok(v) => {
                    registers.insert(key.clone(), Some(v));
                }
                Err(_) => violations.push(format!("register {key} holds {s:?}")),
            },
            other => violations.push(format!(
                "unexpected key {key} in the final state: {other:?}"
            )),
        }
    }

    let ops = history.ops();
    let mut findings = Findings::default();
    if !dumps.is_empty() {
        checker::check_lists(&ops, &lists, &mut findings);
        checker::check_queues(&ops, &queues, &mut findings);
        checker::check_registers(&ops, &registers, end_ns + 1, &mut findings);
    }
    violations.extend(findings.violations.iter().cloned());
    notes.extend(findings.notes.iter().cloned());

    // Unexpected error replies (not one of the documented ones) are worth a look.
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for op in &ops {
        if let Some(e) = &op.error {
            *errors.entry(error_class(e)).or_default() += 1;
        }
    }
    for (class, count) in &errors {
        if class.starts_with("UNEXPECTED") {
            violations.push(format!(
                "{count} replies with an undocumented error: {class}"
            ));
        }
    }
    let ok_writes = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.call.is_write())
        .count();
    if ok_writes == 0 {
        violations.push("no write succeeded: the run checked nothing".into());
    }
    // The cluster must be available again once healed: a last write through the clients'
    // router.
    if converged.is_ok() {
        let mut router = workload::Router::new(Rng::new(config.seed), Duration::from_secs(5));
        let call = history::Call::Set {
            key: "chaos-final-probe".into(),
            value: 1,
        };
        let r = router.run(&call, &topology);
        if r.outcome != Outcome::Ok {
            violations.push(format!(
                "healed cluster does not take a write: {:?} {:?}",
                r.outcome, r.error
            ));
        }
    }

    // Outputs.
    let mut summary = String::new();
    let w = &mut summary;
    writeln!(w, "chaos run {}", config.name).unwrap();
    writeln!(w, "seed: {}", config.seed).unwrap();
    writeln!(w, "server: {}", common::server_binary()).unwrap();
    writeln!(w, "raft configs: {:?}", config.raft).unwrap();
    writeln!(
        w,
        "nodes: {}, clients: {}, workload: {:.1}s, total: {:.1}s",
        config.nodes,
        config.workload.clients,
        (end_ns - workload_start) as f64 / 1e9,
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    writeln!(
        w,
        "nemesis: {:?}",
        config
            .faults
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
    )
    .unwrap();
    writeln!(w, "faults: {stats:?}").unwrap();
    for line in &snapshot_stats {
        writeln!(w, "{line}").unwrap();
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for op in &ops {
        *outcomes
            .entry(format!("{} {}", op.call.name(), op.outcome.name()))
            .or_default() += 1;
    }
    writeln!(w, "operations: {} in all", ops.len()).unwrap();
    for (k, n) in &outcomes {
        writeln!(w, "  {k}: {n}").unwrap();
    }
    writeln!(w, "checker:").unwrap();
    for (k, n) in &findings.stats {
        writeln!(w, "  {k}: {n}").unwrap();
    }
    writeln!(w, "errors seen by clients:").unwrap();
    for (k, n) in &errors {
        writeln!(w, "  {k}: {n}").unwrap();
    }
    writeln!(w, "nemesis events:").unwrap();
    for e in history.nemesis_events() {
        writeln!(
            w,
            "  [{:>8.3}s] {} {}",
            e.time_ns as f64 / 1e9,
            e.action,
            e.detail
        )
        .unwrap();
    }
    for n in &notes {
        writeln!(w, "note: {n}").unwrap();
    }
    for a in &cluster.anomalies {
        writeln!(w, "ANOMALY: {a}").unwrap();
    }
    if violations.is_empty() {
        writeln!(w, "RESULT: valid ({} operations checked)", ops.len()).unwrap();
    } else {
        writeln!(w, "RESULT: {} VIOLATIONS", violations.len()).unwrap();
        for v in &violations {
            writeln!(w, "VIOLATION: {v}").unwrap();
        }
        for d in cluster.keep_dirs() {
            writeln!(w, "kept {d}").unwrap();
        }
    }
    let _ = fs::create_dir_all(&config.out_dir);
    let history_path = config.out_dir.join("history.jsonl");
    if config.always_keep_history || !violations.is_empty() {
        if let Err(e) = history.write_jsonl(&history_path) {
            writeln!(w, "cannot write {}: {e}", history_path.display()).unwrap();
        }
    } else {
        writeln!(
            w,
            "history not written (valid short run; CHAOS_KEEP_HISTORY=1 keeps it)"
        )
        .unwrap();
    }
    let summary_path = config.out_dir.join("summary.txt");
    let _ = fs::write(&summary_path, &summary);
    eprintln!("{summary}");
    if history_path.exists() {
        eprintln!("chaos: history {}", history_path.display());
    }
    eprintln!("chaos: summary {}", summary_path.display());
    RunResult {
        violations,
        summary,
    }
}

/// Groups client errors for the summary; documented errors by their text, connection
/// problems together, anything else as `UNEXPECTED ...`.
fn error_class(e: &str) -> String {
    if e.contains("abandoned while blocked") {
        return "consumer left while blocked".into();
    }
    const KNOWN: [&str; 9] = [
        "TIMEOUT not committed yet",
        "TIMEOUT proxy to leader failed",
        "TIMEOUT no quorum for read",
        "CLUSTERDOWN No raft leader",
        "CLUSTERDOWN raft driver stopped",
        "NOCLUSTER No Raft Cluster",
        "LOADING",
        "BUSY",
        "MOVED",
    ];
    if let Some(k) = KNOWN.iter().find(|k| e.starts_with(*k)) {
        return k.to_string();
    }
    if e.starts_with("connect") {
        return "connection refused / connect timeout".into();
    }
    let lower = e.to_ascii_lowercase();
    if lower.contains("timed out")
        || lower.contains("would block")
        || lower.contains("temporarily unavailable")
    {
        return "client-side timeout".into();
    }
    if lower.contains("broken pipe")
        || lower.contains("connection reset")
        || lower.contains("unexpected end")
        || lower.contains("connection refused")
        || lower.contains("eof")
        // A signal to the test process (e.g. a server child exiting) interrupted the
        // client's read: the workload drops the connection and records the outcome unknown.
        || lower.contains("interrupted system call")
    {
        return "connection lost".into();
    }
    format!("UNEXPECTED {e}")
}

fn check(config: RunConfig) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = config.seed;
    let result = run(config);
    assert!(
        result.violations.is_empty(),
        "chaos run with seed {seed} found {} violations (replay with CHAOS_SEED={seed}):\n{}",
        result.violations.len(),
        result.summary
    );
}

#[test]
fn chaos_short_3_nodes() {
    check(RunConfig::short("short-3", 3, 40));
}

#[test]
fn chaos_short_5_nodes() {
    check(RunConfig::short("short-5", 5, 40));
}

/// The long run of `scripts/chaos`; configured by `CHAOS_*` environment variables.
#[test]
#[ignore]
fn chaos_long() {
    check(RunConfig::from_env());
}
