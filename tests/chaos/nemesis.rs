//! The nemesis: a seeded schedule of faults against the cluster, one fault at a time,
//! each healed before the next quiet period.
//!
//! - `kill`: SIGKILL one node (often the leader), a minority, or now and then every node;
//!   restart them after a while.
//! - `pause`: SIGSTOP the leader, a random node or a minority; SIGCONT after a while.
//! - `partition`: iptables DROP rules between node addresses (their Raft ports): isolate the
//!   leader, split majority / minority at random, or a "bridge" (two halves that cannot
//!   talk, one node that talks to both).
//! - `member`: remove a follower (`RAFT.NODE REMOVE` on the leader), stop it, start a fresh
//!   node with a new id in its place and `RAFT.CLUSTER JOIN` it.
//! - `transfer`: `RAFT.TRANSFER_LEADER <id>` to a random follower.
//! - `compact`: `RAFT.DEBUG COMPACT` (snapshot + log compaction) on some nodes, so restarted
//!   and new nodes catch up from snapshots.

use std::fmt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::cluster::{admin_cmd, value_text, Cluster, Run};
use super::history::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    Kill,
    Pause,
    Partition,
    Member,
    Transfer,
    /// `RAFT.DEBUG COMPACT` (snapshot + log compaction) on random nodes.
    Compact,
}

impl Fault {
    pub fn parse(name: &str) -> Result<Fault, String> {
        match name.trim() {
            "kill" => Ok(Fault::Kill),
            "pause" => Ok(Fault::Pause),
            "partition" => Ok(Fault::Partition),
            "member" => Ok(Fault::Member),
            "transfer" => Ok(Fault::Transfer),
            "compact" => Ok(Fault::Compact),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, pause, partition, member, transfer, compact)"
            )),
        }
    }

    pub fn parse_list(list: &str) -> Result<Vec<Fault>, String> {
        if list.trim() == "all" {
            return Ok(vec![
                Fault::Kill,
                Fault::Pause,
                Fault::Partition,
                Fault::Member,
                Fault::Transfer,
                Fault::Compact,
            ]);
        }
        if list.trim() == "none" {
            return Ok(Vec::new());
        }
        list.split(',').map(Fault::parse).collect()
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Member => "member",
            Fault::Transfer => "transfer",
            Fault::Compact => "compact",
        };
        f.write_str(name)
    }
}

// ---------------------------------------------------------------------------------------
// iptables

const CHAIN_PREFIX: &str = "RAFTCHAOS-";

/// A private iptables chain, jumped to from INPUT and OUTPUT. Rules DROP TCP traffic between
/// two nodes' addresses *on their Raft ports only*, so nothing else on the machine is
/// touched (clients connect from 127.0.0.1 and are never cut). The chain is flushed and
/// deleted on drop, also when the test panics; chains left by dead processes are removed
/// when a new one is created.
pub struct Firewall {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why iptables cannot be used here, if it cannot.
pub fn firewall_unavailable() -> Option<String> {
    // SAFETY-free check of the effective uid through `id -u`.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not running as root".into());
    }
    iptables(&["-S", "OUTPUT"]).err()
}

impl Firewall {
    pub fn new() -> Result<Firewall, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        remove_stale_chains();
        let chain = format!(
            "{CHAIN_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = delete_chain(&chain);
        iptables(&["-N", &chain])?;
        let fw = Firewall { chain };
        iptables(&["-I", "INPUT", "1", "-j", &fw.chain])?;
        iptables(&["-I", "OUTPUT", "1", "-j", &fw.chain])?;
        Ok(fw)
    }

    /// Drops all TCP between node `a` and node `b` (each `(host, ports)`: its Redis and
    /// raft peer ports), both directions, connections opened by either side.
    pub fn cut(&self, a: (&str, &[u16]), b: (&str, &[u16])) -> Result<(), String> {
        for ((src, sports), (dst, dports)) in [(a, b), (b, a)] {
            // src → dst's ports (src's connections) and src's ports → dst (replies on
            // dst's connections to src).
            let rules = dports
                .iter()
                .map(|port| ("--dport", port.to_string()))
                .chain(sports.iter().map(|port| ("--sport", port.to_string())));
            for (flag, port) in rules {
                let port = &port;
                iptables(&[
                    "-A",
                    &self.chain,
                    "-p",
                    "tcp",
                    "-s",
                    src,
                    "-d",
                    dst,
                    flag,
                    port,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain]).map(|_| ())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = delete_chain(&self.chain) {
            eprintln!("chaos: could not delete iptables chain {}: {e}", self.chain);
        }
    }
}

fn delete_chain(chain: &str) -> Result<(), String> {
    for parent in ["INPUT", "OUTPUT"] {
        // Remove every jump (a crash between inserts could leave several).
        for _ in 0..16 {
            if iptables(&["-D", parent, "-j", chain]).is_err() {
                break;
            }
        }
    }
    iptables(&["-F", chain])?;
    iptables(&["-X", chain]).map(|_| ())
}

/// Deletes chains `RAFTCHAOS-<pid>-<n>` whose process is gone (a run that was killed).
fn remove_stale_chains() {
    let Ok(rules) = iptables(&["-S"]) else {
        return;
    };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(rest) = chain.strip_prefix(CHAIN_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        let alive = !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            eprintln!("chaos: removing leftover iptables chain {chain}");
            let _ = delete_chain(chain);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Schedule

#[derive(Clone, Debug)]
pub struct NemesisConfig {
    pub faults: Vec<Fault>,
    /// Quiet time between two faults (ms, uniform).
    pub quiet_ms: (u64, u64),
    /// How long a fault lasts before it is healed (ms, uniform).
    pub hold_ms: (u64, u64),
}

/// Counts of what the nemesis did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct NemesisStats {
    pub kills: u64,
    pub whole_cluster_kills: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub replacements: u64,
    pub failed_replacements: u64,
    pub transfers: u64,
    pub compactions: u64,
}

/// A lasting fault in effect, and what healing it takes.
pub enum Active {
    Nothing,
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Partitioned,
}

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub firewall: Option<&'a Firewall>,
    pub rng: Rng,
    pub config: NemesisConfig,
    pub stats: NemesisStats,
}

impl Nemesis<'_> {
    /// Runs faults until `deadline`; every fault is healed before this returns.
    pub fn run(&mut self, deadline: Instant) {
        if self.config.faults.is_empty() {
            sleep(deadline.saturating_duration_since(Instant::now()));
            return;
        }
        let lasting: Vec<Fault> = self
            .config
            .faults
            .iter()
            .copied()
            .filter(|f| matches!(f, Fault::Kill | Fault::Pause | Fault::Partition))
            .collect();
        loop {
            let quiet = Duration::from_millis(
                self.rng
                    .range(self.config.quiet_ms.0, self.config.quiet_ms.1),
            );
            let hold =
                Duration::from_millis(self.rng.range(self.config.hold_ms.0, self.config.hold_ms.1));
            if Instant::now() + quiet + hold >= deadline {
                sleep(deadline.saturating_duration_since(Instant::now()));
                return;
            }
            sleep(quiet);
            let fault = *self.rng.pick(&self.config.faults);
            match fault {
                Fault::Member => self.member(),
                Fault::Transfer => self.transfer(),
                Fault::Compact => self.compact(),
                _ => {
                    let first = self.start(fault);
                    // Now and then a second fault overlaps the first one (a pause during a
                    // partition, a crash of a node while another is frozen, ...).
                    if !lasting.is_empty() && self.rng.chance(0.25) {
                        // The second one may also be a membership change, a leader transfer
                        // or a compaction while the first fault is in effect.
                        let second_fault = *self.rng.pick(&self.config.faults);
                        let split = hold.mul_f64(self.rng.range(20, 60) as f64 / 100.0);
                        sleep(split);
                        let second = match second_fault {
                            Fault::Member => {
                                self.member();
                                Active::Nothing
                            }
                            Fault::Transfer => {
                                self.transfer();
                                Active::Nothing
                            }
                            Fault::Compact => {
                                self.compact();
                                Active::Nothing
                            }
                            lasting => self.start(lasting),
                        };
                        sleep(hold - split);
                        if self.rng.chance(0.5) {
                            self.heal(second);
                            sleep(Duration::from_millis(self.rng.range(0, 1000)));
                            self.heal(first);
                        } else {
                            self.heal(first);
                            sleep(Duration::from_millis(self.rng.range(0, 1000)));
                            self.heal(second);
                        }
                    } else {
                        sleep(hold);
                        self.heal(first);
                    }
                }
            }
        }
    }

    /// Undo whatever is still in effect.
    pub fn heal_all(&mut self) {
        if let Some(fw) = self.firewall {
            if let Err(e) = fw.heal() {
                self.cluster
                    .problems
                    .push(format!("cannot heal the network: {e}"));
            }
        }
        self.cluster.heal_nodes();
        self.cluster
            .history
            .nemesis("heal", "final: network whole, every node running");
        self.cluster.reconcile_membership();
        self.cluster.check_zombies(Duration::from_secs(15));
    }

    fn n(&self) -> usize {
        self.cluster.nodes.len()
    }

    fn ids(&self, slots: &[usize]) -> String {
        let ids: Vec<String> = slots
            .iter()
            .map(|&s| {
                format!(
                    "{}@{}",
                    self.cluster.nodes[s].id,
                    self.cluster.nodes[s].addr()
                )
            })
            .collect();
        ids.join(",")
    }

    /// Targets: the leader (40%), one random node (30%), or a random minority (30%).
    fn pick_targets(&mut self) -> Vec<usize> {
        let n = self.n();
        let roll = self.rng.below(10);
        if roll < 4 {
            if let Some(leader) = self.cluster.leader() {
                return vec![leader];
            }
        }
        let mut slots: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut slots);
        let count = if roll >= 7 { ((n - 1) / 2).max(1) } else { 1 };
        slots.truncate(count);
        slots.sort();
        slots
    }

    /// Starts a lasting fault; `heal` ends it.
    fn start(&mut self, fault: Fault) -> Active {
        match fault {
            Fault::Kill => self.kill(),
            Fault::Pause => self.pause(),
            Fault::Partition => self.partition(),
            _ => Active::Nothing,
        }
    }

    fn heal(&mut self, active: Active) {
        match active {
            Active::Nothing => {}
            Active::Killed(slots) => {
                let slots: Vec<usize> = slots
                    .into_iter()
                    .filter(|&s| self.cluster.nodes[s].run == Run::Killed)
                    .collect();
                let who = self.ids(&slots);
                for &slot in &slots {
                    self.cluster.restart(slot);
                }
                self.cluster.history.nemesis("restart", who);
            }
            Active::Paused(slots) => {
                let slots: Vec<usize> = slots
                    .into_iter()
                    .filter(|&s| self.cluster.nodes[s].run == Run::Paused)
                    .collect();
                let who = self.ids(&slots);
                for &slot in &slots {
                    self.cluster.resume(slot);
                }
                self.cluster
                    .history
                    .nemesis("resume", format!("SIGCONT {who}"));
            }
            Active::Partitioned => {
                if let Some(fw) = self.firewall {
                    if let Err(e) = fw.heal() {
                        self.cluster
                            .problems
                            .push(format!("cannot heal the network: {e}"));
                    }
                }
                self.cluster.history.nemesis("heal", "network whole");
            }
        }
    }

    fn kill(&mut self) -> Active {
        let targets: Vec<usize> = if self.rng.chance(0.12) {
            self.stats.whole_cluster_kills += 1;
            (0..self.n()).collect()
        } else {
            self.pick_targets()
        };
        let targets: Vec<usize> = targets
            .into_iter()
            .filter(|&s| self.cluster.nodes[s].run != Run::Killed)
            .collect();
        let who = self.ids(&targets);
        self.cluster
            .history
            .nemesis("kill", format!("kill -9 {who}"));
        for &slot in &targets {
            self.cluster.kill(slot);
        }
        self.stats.kills += targets.len() as u64;
        Active::Killed(targets)
    }

    fn pause(&mut self) -> Active {
        let targets: Vec<usize> = self
            .pick_targets()
            .into_iter()
            .filter(|&s| self.cluster.nodes[s].run == Run::Running)
            .collect();
        let who = self.ids(&targets);
        self.cluster
            .history
            .nemesis("pause", format!("SIGSTOP {who}"));
        for &slot in &targets {
            self.cluster.pause(slot);
        }
        self.stats.pauses += targets.len() as u64;
        Active::Paused(targets)
    }

    fn partition(&mut self) -> Active {
        let Some(fw) = self.firewall else {
            return Active::Nothing;
        };
        let n = self.n();
        let mut slots: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut slots);
        let roll = self.rng.below(10);
        // Pairs (i, j) of slots that cannot talk.
        let (kind, cut): (&str, Vec<(usize, usize)>) = if roll < 4 {
            let alone = self.cluster.leader().unwrap_or(slots[0]);
            let others = (0..n).filter(|&s| s != alone).map(|s| (alone, s)).collect();
            ("isolate", others)
        } else if roll < 8 || n < 5 {
            let k = self.rng.range(1, ((n - 1) / 2) as u64) as usize;
            let (a, b) = slots.split_at(k);
            let pairs = a
                .iter()
                .flat_map(|&x| b.iter().map(move |&y| (x, y)))
                .collect();
            ("split", pairs)
        } else {
            // Bridge: slots[0..2] and slots[3..] cannot talk, slots[2] talks to both.
            let pairs = slots[..2]
                .iter()
                .flat_map(|&x| slots[3..].iter().map(move |&y| (x, y)))
                .collect();
            ("bridge", pairs)
        };
        let desc: Vec<String> = cut
            .iter()
            .map(|&(a, b)| format!("{}-{}", self.cluster.nodes[a].id, self.cluster.nodes[b].id))
            .collect();
        self.cluster
            .history
            .nemesis("partition", format!("{kind}: cut {}", desc.join(" ")));
        for &(a, b) in &cut {
            let (na, nb) = (&self.cluster.nodes[a].server, &self.cluster.nodes[b].server);
            let (ports_a, ports_b) = (na.node_ports(), nb.node_ports());
            if let Err(e) = fw.cut((&na.host, &ports_a), (&nb.host, &ports_b)) {
                self.cluster.problems.push(format!("iptables failed: {e}"));
            }
        }
        self.stats.partitions += 1;
        Active::Partitioned
    }

    fn member(&mut self) {
        let Some(leader) = self.cluster.leader() else {
            self.cluster.history.nemesis("member", "skipped: no leader");
            return;
        };
        // A frozen follower may be removed too (it learns of it when it wakes up).
        let candidates: Vec<usize> = (0..self.n())
            .filter(|&s| s != leader && self.cluster.nodes[s].run != Run::Killed)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let mut slot = *self.rng.pick(&candidates);
        let keep_old = self.rng.chance(0.4);
        if self.rng.chance(0.3) && self.cluster.nodes[slot].run == Run::Running {
            // Replace the leader: move leadership away first (the leader refuses to remove
            // itself).
            let target = self.cluster.nodes[slot].id.to_string();
            let addr = self.cluster.nodes[leader].addr();
            let reply = admin_cmd(
                &addr,
                Duration::from_secs(5),
                &["RAFT.TRANSFER_LEADER", &target],
            );
            self.cluster.history.nemesis(
                "transfer",
                format!(
                    "to {target} via {addr} (to replace the leader): {:?}",
                    reply.as_ref().map(value_text)
                ),
            );
            if reply.is_ok() {
                slot = leader;
            }
        }
        let n = self.n();
        match self
            .cluster
            .replace(slot, Duration::from_secs(20), keep_old)
        {
            Ok(what) => {
                self.stats.replacements += 1;
                if !self.cluster.wait_voters(n, Duration::from_secs(30)) {
                    self.cluster.history.nemesis(
                        "member",
                        format!(
                            "{what}, but not {n} voters after 30 s:{}",
                            self.cluster.describe()
                        ),
                    );
                } else {
                    self.cluster
                        .history
                        .nemesis("member", format!("{what}, {n} voters"));
                }
            }
            Err(e) => {
                // Not a violation by itself (another fault may be in the way); the final
                // heal makes the membership whole again and checks it.
                self.stats.failed_replacements += 1;
                self.cluster
                    .history
                    .nemesis("member", format!("failed: {e}"));
                if e.starts_with("JOIN") {
                    // The node may still be joining; give it a moment, then look for a
                    // member that is stuck uninitialized.
                    sleep(Duration::from_secs(1));
                    self.cluster.check_limbo(slot);
                }
            }
        }
    }

    fn compact(&mut self) {
        let running: Vec<usize> = (0..self.n())
            .filter(|&s| self.cluster.nodes[s].run == Run::Running)
            .collect();
        if running.is_empty() {
            return;
        }
        let mut targets = running.clone();
        self.rng.shuffle(&mut targets);
        targets.truncate(self.rng.range(1, running.len() as u64) as usize);
        for slot in targets {
            let addr = self.cluster.nodes[slot].addr();
            let reply = admin_cmd(&addr, Duration::from_secs(10), &["RAFT.DEBUG", "COMPACT"]);
            self.stats.compactions += 1;
            self.cluster.history.nemesis(
                "compact",
                format!(
                    "RAFT.DEBUG COMPACT on {}@{addr}: {:?}",
                    self.cluster.nodes[slot].id,
                    reply.as_ref().map(value_text)
                ),
            );
        }
    }

    fn transfer(&mut self) {
        let Some(leader) = self.cluster.leader() else {
            return;
        };
        let others: Vec<usize> = (0..self.n())
            .filter(|&s| s != leader && self.cluster.nodes[s].run == Run::Running)
            .collect();
        if others.is_empty() {
            return;
        }
        let target = *self.rng.pick(&others);
        let id = self.cluster.nodes[target].id.to_string();
        let addr = self.cluster.nodes[leader].addr();
        let reply = admin_cmd(
            &addr,
            Duration::from_secs(5),
            &["RAFT.TRANSFER_LEADER", &id],
        );
        self.stats.transfers += 1;
        self.cluster.history.nemesis(
            "transfer",
            format!("to {id} via {addr}: {:?}", reply.as_ref().map(value_text)),
        );
    }
}
