//! The cluster under test: one redis-server per slot, each on its own loopback address
//! (`127.0.0.11`, `127.0.0.12`, ...), formed with `RAFT.CLUSTER INIT` / `JOIN`. Slots keep
//! their address across membership changes; a slot whose node was removed gets a fresh
//! node (new id, new port, empty directory) that joins again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use super::common::{err_text, free_port, parse_info, tail, Server, ServerOpts};
use super::history::History;
use super::workload::Topology;

/// Timeout of admin requests (INFO, RAFT.DEBUG EXEC) to one node: a paused node must not
/// stall the nemesis.
pub const ADMIN_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    Running,
    /// SIGSTOPped.
    Paused,
    /// SIGKILLed, not restarted yet.
    Killed,
}

pub struct Node {
    pub slot: usize,
    pub id: u64,
    pub server: Server,
    pub run: Run,
}

impl Node {
    pub fn addr(&self) -> String {
        self.server.addr()
    }
}

/// What one node says about itself in `INFO raft`.
#[derive(Clone, Debug, Default)]
pub struct RaftInfo {
    pub node_id: u64,
    pub state: String,
    pub role: String,
    pub leader_id: i64,
    pub term: u64,
    pub commit_index: u64,
    pub last_applied: u64,
    pub num_voting: u64,
    /// (id, addr, voting) of every member this node knows.
    pub members: Vec<(u64, String, bool)>,
}

pub fn parse_raft_info(text: &str) -> RaftInfo {
    let fields = parse_info(text);
    let num = |k: &str| {
        fields
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut members = Vec::new();
    let mut keys: Vec<&String> = fields
        .keys()
        .filter(|k| {
            k.starts_with("raft_node") && k[9..].chars().all(|c| c.is_ascii_digit()) && k.len() > 9
        })
        .collect();
    keys.sort();
    for k in keys {
        let mut id = 0;
        let mut host = String::new();
        let mut port = String::new();
        let mut voting = false;
        for part in fields[k].split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = v.parse().unwrap_or(0),
                Some(("addr", v)) => host = v.to_string(),
                Some(("port", v)) => port = v.to_string(),
                Some(("voting", v)) => voting = v == "yes",
                _ => {}
            }
        }
        members.push((id, format!("{host}:{port}"), voting));
    }
    RaftInfo {
        node_id: num("raft_node_id"),
        state: fields.get("raft_state").cloned().unwrap_or_default(),
        role: fields.get("raft_role").cloned().unwrap_or_default(),
        leader_id: fields
            .get("raft_leader_id")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1),
        term: num("raft_current_term"),
        commit_index: num("raft_commit_index"),
        last_applied: num("raft_last_applied_index"),
        num_voting: num("raft_num_voting_nodes"),
        members,
    }
}

/// One connection attempt with short timeouts (no retry loop: the node may be down).
pub fn admin(addr: &str, timeout: Duration) -> Result<Connection, String> {
    let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
    let con = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    con.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    con.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(con)
}

/// Runs one command on `addr` with a fresh connection.
pub fn admin_cmd(addr: &str, timeout: Duration, args: &[&str]) -> Result<Value, String> {
    let mut con = admin(addr, timeout)?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<Value>(&mut con).map_err(|e| err_text(&e))
}

pub fn value_text(v: &Value) -> String {
    match v {
        Value::Okay => "OK".into(),
        Value::SimpleString(s) => s.clone(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(n) => n.to_string(),
        Value::Nil => "(nil)".into(),
        other => format!("{other:?}"),
    }
}

/// Every key of one node.
pub type Dump = BTreeMap<String, Data>;

/// A key's content as read with `RAFT.DEBUG EXEC` on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    List(Vec<String>),
    Str(String),
    Other(String),
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub history: History,
    pub topology: Arc<Topology>,
    /// Extra `raft.*` configs of every node.
    raft: Vec<(String, String)>,
    /// Ids whose `RAFT.NODE REMOVE` was acknowledged with OK.
    removed_ok: Vec<u64>,
    next_id: u64,
    /// Problems seen while managing the cluster (a node that did not restart, a join that
    /// failed): reported as anomalies.
    pub problems: Vec<String>,
    /// Contract breaches that are not consistency violations (e.g. a node left out of a
    /// cluster that counts it as a member). Reported in the summary; do not fail a run.
    pub anomalies: Vec<String>,
    /// Ids already reported as members stuck `uninitialized`.
    limbo_reported: Vec<u64>,
    /// Removed nodes left running (`member` fault): they must leave by themselves.
    pub zombies: Vec<Node>,
}

pub fn slot_host(slot: usize) -> String {
    format!("127.0.0.{}", 11 + slot)
}

fn start_server(slot: usize, id: u64, raft: &[(String, String)]) -> Result<Server, String> {
    let host = slot_host(slot);
    let port = free_port(&host);
    let mut opts = ServerOpts::new()
        .host(&host)
        .port(port)
        .raft("id", &id.to_string())
        .raft("addr", &format!("{host}:{port}"));
    for (k, v) in raft {
        opts = opts.raft(k, v);
    }
    Server::try_start(opts).map_err(|f| {
        format!(
            "node {id} on {host}:{port} did not start (status {:?}): {}",
            f.status,
            tail(&f.log, 20)
        )
    })
}

impl Cluster {
    /// Starts `n` nodes and forms a cluster of `n` voters.
    pub fn start(
        n: usize,
        raft: Vec<(String, String)>,
        history: History,
        topology: Arc<Topology>,
    ) -> Cluster {
        let mut nodes = Vec::new();
        for slot in 0..n {
            let server =
                start_server(slot, slot as u64 + 1, &raft).unwrap_or_else(|e| panic!("{e}"));
            nodes.push(Node {
                slot,
                id: slot as u64 + 1,
                server,
                run: Run::Running,
            });
        }
        let first = nodes[0].addr();
        let reply = admin_cmd(&first, Duration::from_secs(10), &["RAFT.CLUSTER", "INIT"])
            .unwrap_or_else(|e| panic!("RAFT.CLUSTER INIT on {first}: {e}"));
        assert!(
            value_text(&reply).starts_with("OK"),
            "INIT replied {reply:?}"
        );
        for node in &nodes[1..] {
            let reply = admin_cmd(
                &node.addr(),
                Duration::from_secs(60),
                &["RAFT.CLUSTER", "JOIN", &first],
            )
            .unwrap_or_else(|e| panic!("RAFT.CLUSTER JOIN on {}: {e}", node.addr()));
            assert_eq!(value_text(&reply), "OK", "JOIN on {}", node.addr());
        }
        let cluster = Cluster {
            nodes,
            history,
            topology,
            raft,
            removed_ok: Vec::new(),
            next_id: n as u64 + 1,
            problems: Vec::new(),
            anomalies: Vec::new(),
            limbo_reported: Vec::new(),
            zombies: Vec::new(),
        };
        cluster.publish_topology();
        let ok = cluster.wait_voters(n, Duration::from_secs(60));
        assert!(ok, "cluster of {n} did not form: {}", cluster.describe());
        let leader = cluster.leader().expect("a leader");
        cluster.nodes[leader]
            .server
            .expect_serving(Duration::from_secs(30));
        cluster
    }

    pub fn publish_topology(&self) {
        self.topology
            .set(self.nodes.iter().map(|n| n.addr()).collect());
    }

    pub fn slot_of_id(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn info(&self, slot: usize) -> Result<RaftInfo, String> {
        let node = &self.nodes[slot];
        if node.run != Run::Running {
            return Err(format!("node {} is {:?}", node.id, node.run));
        }
        let v = admin_cmd(&node.addr(), ADMIN_TIMEOUT, &["INFO", "raft"])?;
        Ok(parse_raft_info(&value_text(&v)))
    }

    /// The slot of the node that says it leads with the highest term, among running nodes.
    pub fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for slot in 0..self.nodes.len() {
            if let Ok(info) = self.info(slot) {
                if info.role == "leader" && best.is_none_or(|(term, _)| info.term > term) {
                    best = Some((info.term, slot));
                }
            }
        }
        best.map(|(_, slot)| slot)
    }

    /// Waits until a leader reports `n` voting members, all of them nodes of ours.
    pub fn wait_voters(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(slot) = self.leader() {
                if let Ok(info) = self.info(slot) {
                    let ours = info
                        .members
                        .iter()
                        .filter(|(id, _, voting)| *voting && self.slot_of_id(*id).is_some())
                        .count();
                    if info.num_voting as usize == n && ours == n && info.members.len() == n {
                        return true;
                    }
                }
            }
            sleep(Duration::from_millis(100));
        }
        false
    }

    /// One line per node: id, address, run state, and what INFO says.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (slot, node) in self.nodes.iter().enumerate() {
            let info = match self.info(slot) {
                Ok(i) => format!(
                    "state={} role={} term={} leader={} commit={} applied={} voters={} members={:?}",
                    i.state, i.role, i.term, i.leader_id, i.commit_index, i.last_applied, i.num_voting, i.members
                ),
                Err(e) => e,
            };
            out.push_str(&format!(
                "\n  slot {slot} id {} {} {:?} dir {}: {info}",
                node.id,
                node.addr(),
                node.run,
                node.server.dir.display()
            ));
        }
        out
    }

    // ---- faults ------------------------------------------------------------------------

    pub fn kill(&mut self, slot: usize) {
        let node = &mut self.nodes[slot];
        node.server.kill9();
        node.run = Run::Killed;
    }

    pub fn restart(&mut self, slot: usize) {
        let node = &mut self.nodes[slot];
        if node.run == Run::Paused {
            node.server.sigcont();
        }
        match node.server.try_restart() {
            Ok(()) => node.run = Run::Running,
            Err(f) => {
                let problem = format!(
                    "node {} ({}) did not restart after kill -9 (status {:?}); log tail:\n{}",
                    node.id,
                    node.addr(),
                    f.status,
                    tail(&f.log, 30)
                );
                eprintln!("chaos: {problem}");
                self.problems.push(problem);
                node.run = Run::Killed;
            }
        }
    }

    pub fn pause(&mut self, slot: usize) {
        let node = &mut self.nodes[slot];
        if node.run == Run::Running {
            node.server.sigstop();
            node.run = Run::Paused;
        }
    }

    pub fn resume(&mut self, slot: usize) {
        let node = &mut self.nodes[slot];
        if node.run == Run::Paused {
            node.server.sigcont();
            node.run = Run::Running;
        }
    }

    /// Removes the node in `slot` from the cluster (through the leader), stops it, and puts
    /// a fresh node with a new id in its place that joins. Returns a description of what
    /// happened.
    pub fn replace(
        &mut self,
        slot: usize,
        join_timeout: Duration,
        keep_old: bool,
    ) -> Result<String, String> {
        let id = self.nodes[slot].id;
        let leader = self.leader().ok_or("no leader")?;
        if leader == slot {
            return Err("target is the leader".into());
        }
        let leader_addr = self.nodes[leader].addr();
        let reply = admin_cmd(
            &leader_addr,
            Duration::from_secs(10),
            &["RAFT.NODE", "REMOVE", &id.to_string()],
        );
        self.history.nemesis(
            "remove",
            format!(
                "RAFT.NODE REMOVE {id} on {leader_addr}: {:?}",
                reply.as_ref().map(value_text)
            ),
        );
        // Whatever the reply, believe only the membership a leader reports.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut removed = false;
        while Instant::now() < deadline {
            if let Some(l) = self.leader() {
                if let Ok(info) = self.info(l) {
                    if info.members.iter().all(|(m, _, _)| *m != id) {
                        removed = true;
                        break;
                    }
                }
            }
            sleep(Duration::from_millis(100));
        }
        if !removed {
            return Err(format!(
                "node {id} still a member 10 s after REMOVE ({reply:?})"
            ));
        }
        if matches!(&reply, Ok(v) if value_text(v) == "OK") {
            self.removed_ok.push(id);
        }
        let old = match self.install_fresh(slot) {
            Ok(old) => old,
            Err(e) => {
                // No replacement: the slot keeps the removed node, stopped; the final
                // reconcile replaces it.
                self.nodes[slot].server.kill9();
                self.nodes[slot].run = Run::Killed;
                return Err(e);
            }
        };
        if keep_old {
            // Leave the removed node running (or frozen) next to its replacement: it must
            // learn that it was removed and leave without disturbing the cluster.
            self.history.nemesis(
                "zombie",
                format!("removed node {id} at {} stays, {:?}", old.addr(), old.run),
            );
            self.zombies.push(old);
        } else {
            drop(old);
        }
        self.join_slot(slot, join_timeout)
    }

    /// Starts a fresh node with a new id in `slot` and joins it to the cluster; waits
    /// `timeout` for the JOIN reply (the node may still join after that).
    pub fn join_fresh(&mut self, slot: usize, timeout: Duration) -> Result<String, String> {
        let old = self.install_fresh(slot)?;
        drop(old);
        self.join_slot(slot, timeout)
    }

    /// Starts a fresh node with a new id and puts it in `slot`; returns the node it replaced.
    fn install_fresh(&mut self, slot: usize) -> Result<Node, String> {
        let id = self.next_id;
        self.next_id += 1;
        let server = start_server(slot, id, &self.raft)?;
        let old = std::mem::replace(
            &mut self.nodes[slot],
            Node {
                slot,
                id,
                server,
                run: Run::Running,
            },
        );
        self.publish_topology();
        Ok(old)
    }

    /// `RAFT.CLUSTER JOIN` of the node in `slot`, seeded with every other running node.
    fn join_slot(&mut self, slot: usize, timeout: Duration) -> Result<String, String> {
        let id = self.nodes[slot].id;
        let addr = self.nodes[slot].addr();
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.slot != slot && n.run == Run::Running)
            .map(|n| n.addr())
            .collect();
        let mut args = vec!["RAFT.CLUSTER", "JOIN"];
        args.extend(seeds.iter().map(|s| s.as_str()));
        let reply = admin_cmd(&addr, timeout, &args);
        self.history.nemesis(
            "join",
            format!("node {id} at {addr}: {:?}", reply.as_ref().map(value_text)),
        );
        match reply {
            Ok(v) if value_text(&v) == "OK" => Ok(format!("node {id} joined at {addr}")),
            other => Err(format!("JOIN of node {id} at {addr}: {other:?}")),
        }
    }

    /// Undoes every fault: resumes paused nodes, restarts killed ones.
    pub fn heal_nodes(&mut self) {
        for slot in 0..self.nodes.len() {
            match self.nodes[slot].run {
                Run::Paused => self.resume(slot),
                Run::Killed => self.restart(slot),
                Run::Running => {}
            }
        }
        for zombie in &mut self.zombies {
            if zombie.run == Run::Paused {
                zombie.server.sigcont();
                zombie.run = Run::Running;
            }
        }
    }

    /// Removed nodes left running must have left the cluster (state not `up`) by now;
    /// returns an anomaly for each that still acts as a member. Stops them.
    pub fn check_zombies(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for zombie in &mut self.zombies {
            if zombie.run != Run::Running {
                continue;
            }
            let addr = zombie.addr();
            let mut last = String::new();
            let left = loop {
                match admin_cmd(&addr, ADMIN_TIMEOUT, &["INFO", "raft"]) {
                    Ok(v) => {
                        let info = parse_raft_info(&value_text(&v));
                        if info.state != "up" && info.state != "loading" {
                            break true;
                        }
                        last = format!(
                            "state={} role={} term={} members={:?}",
                            info.state, info.role, info.term, info.members
                        );
                    }
                    Err(e) => last = e,
                }
                if Instant::now() >= deadline {
                    break false;
                }
                sleep(Duration::from_millis(200));
            };
            if !left {
                let anomaly = format!(
                    "removed node {} ({addr}) still acts as a member after healing: {last}",
                    zombie.id
                );
                eprintln!("chaos: ANOMALY: {anomaly}");
                self.anomalies.push(anomaly);
            }
            zombie.server.kill9();
            zombie.run = Run::Killed;
        }
    }

    /// After healing: makes the committed membership equal to our nodes again. A REMOVE or
    /// JOIN that was cut short by another fault may have completed later, or never. Our
    /// nodes that are not members are replaced by fresh nodes that join; members that are
    /// not ours (a join we gave up on) are removed. A node whose REMOVE was acknowledged
    /// and that is a member again is a violation.
    pub fn reconcile_membership(&mut self) {
        for round in 0..4 {
            // Let the healed cluster settle: a leader, everything committed applied.
            let _ = self.wait_applied(Duration::from_secs(30));
            let Some(leader) = self.leader() else {
                continue;
            };
            let Ok(info) = self.info(leader) else {
                continue;
            };
            let members: Vec<u64> = info.members.iter().map(|m| m.0).collect();
            let ours: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
            let strangers: Vec<u64> = members
                .iter()
                .copied()
                .filter(|m| !ours.contains(m))
                .collect();
            let outcasts: Vec<usize> = (0..self.nodes.len())
                .filter(|&s| !members.contains(&self.nodes[s].id))
                .collect();
            if strangers.is_empty() && outcasts.is_empty() {
                return;
            }
            if round == 3 {
                self.problems.push(format!(
                    "membership does not match our nodes after healing: members {members:?}, \
                     ours {ours:?}"
                ));
                return;
            }
            for id in strangers {
                if self.removed_ok.contains(&id) {
                    self.problems.push(format!(
                        "node {id} is a member again after RAFT.NODE REMOVE {id} was \
                         acknowledged with OK"
                    ));
                }
                let addr = self.nodes[leader].addr();
                let reply = admin_cmd(
                    &addr,
                    Duration::from_secs(10),
                    &["RAFT.NODE", "REMOVE", &id.to_string()],
                );
                self.history.nemesis(
                    "reconcile",
                    format!(
                        "member {id} is none of ours: RAFT.NODE REMOVE {id}: {:?}",
                        reply.as_ref().map(value_text)
                    ),
                );
            }
            // Nodes the cluster counts as members but that are not initialized (their
            // JOIN failed after the cluster had added them): report, remove, replace.
            for slot in 0..self.nodes.len() {
                if self.check_limbo(slot) {
                    let id = self.nodes[slot].id;
                    let addr = self.nodes[leader].addr();
                    let reply = admin_cmd(
                        &addr,
                        Duration::from_secs(10),
                        &["RAFT.NODE", "REMOVE", &id.to_string()],
                    );
                    self.history.nemesis(
                        "reconcile",
                        format!(
                            "member {id} is uninitialized: RAFT.NODE REMOVE {id}: {:?}",
                            reply.as_ref().map(value_text)
                        ),
                    );
                }
            }
            for slot in outcasts {
                let id = self.nodes[slot].id;
                self.nodes[slot].server.kill9();
                let result = self.join_fresh(slot, Duration::from_secs(60));
                self.history.nemesis(
                    "reconcile",
                    format!("node {id} is not a member: replaced: {result:?}"),
                );
            }
        }
    }

    /// True (and recorded as an anomaly, once per id) when the node in `slot` is a member
    /// in the leader's view but says it is `uninitialized`: a JOIN that reported failure
    /// after the cluster had added the node.
    pub fn check_limbo(&mut self, slot: usize) -> bool {
        let id = self.nodes[slot].id;
        let Some(leader) = self.leader() else {
            return false;
        };
        let Ok(linfo) = self.info(leader) else {
            return false;
        };
        let Some(member) = linfo.members.iter().find(|m| m.0 == id).cloned() else {
            return false;
        };
        let Ok(info) = self.info(slot) else {
            return false;
        };
        if info.state != "uninitialized" {
            return false;
        }
        if !self.limbo_reported.contains(&id) {
            self.limbo_reported.push(id);
            let anomaly = format!(
                "node {id} ({}) is a member of the cluster (voting={}) but uninitialized: its \
                 RAFT.CLUSTER JOIN failed after the cluster had added it (a retried RAFT.NODE \
                 ADD of an id that was already added is refused); node log:\n{}",
                member.1,
                member.2,
                tail(
                    &self.nodes[slot]
                        .server
                        .log()
                        .lines()
                        .filter(|l| l.contains("join"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    6
                )
            );
            eprintln!("chaos: ANOMALY: {anomaly}");
            self.history.nemesis("anomaly", anomaly.clone());
            self.anomalies.push(anomaly);
        }
        true
    }

    /// Waits until a leader exists and every running node has applied the leader's commit
    /// index (membership not considered).
    fn wait_applied(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = (|| {
                let leader = self.leader().ok_or("no leader")?;
                let commit = self.info(leader)?.commit_index;
                for slot in 0..self.nodes.len() {
                    let info = self.info(slot)?;
                    if info.last_applied < commit && info.state == "up" {
                        return Err(format!(
                            "node {} applied {}",
                            info.node_id, info.last_applied
                        ));
                    }
                }
                Ok::<(), String>(())
            })();
            match state {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Waits until there is a leader whose membership is exactly our nodes, every node is up
    /// and has applied exactly the leader's commit index (twice in a row).
    pub fn wait_converged(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut stable = 0;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.converged_once() {
                Ok(()) => {
                    stable += 1;
                    if stable >= 2 {
                        return Ok(());
                    }
                }
                Err(e) => {
                    stable = 0;
                    last = e;
                }
            }
            sleep(Duration::from_millis(200));
        }
        Err(format!(
            "not converged after {timeout:?}: {last}; nodes:{}",
            self.describe()
        ))
    }

    fn converged_once(&self) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader")?;
        let linfo = self.info(leader)?;
        let mut ids: Vec<u64> = linfo.members.iter().map(|m| m.0).collect();
        ids.sort();
        let mut ours: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ours.sort();
        if ids != ours {
            return Err(format!("leader's members {ids:?}, ours {ours:?}"));
        }
        for slot in 0..self.nodes.len() {
            let info = self.info(slot)?;
            if info.state != "up" {
                return Err(format!("node {} state {}", info.node_id, info.state));
            }
            if info.last_applied != linfo.commit_index || info.commit_index != linfo.commit_index {
                return Err(format!(
                    "node {} commit {} applied {}, leader commit {}",
                    info.node_id, info.commit_index, info.last_applied, linfo.commit_index
                ));
            }
        }
        Ok(())
    }

    /// Every key of one node, read locally (`RAFT.DEBUG EXEC`), bypassing Raft, plus what
    /// scripts run from: the function libraries (`CODE_PREFIX` + `functions`) and the
    /// replicated script registry (`SCRIPTS_KEY`).
    pub fn dump(&self, slot: usize) -> Result<BTreeMap<String, Data>, String> {
        let addr = self.nodes[slot].addr();
        let mut con = admin(&addr, Duration::from_secs(10))?;
        let mut run = |args: &[&str]| -> Result<Value, String> {
            let mut cmd = redis::cmd("RAFT.DEBUG");
            cmd.arg("EXEC");
            for a in args {
                cmd.arg(*a);
            }
            cmd.query::<Value>(&mut con)
                .map_err(|e| format!("{addr}: {args:?}: {}", err_text(&e)))
        };
        let keys = match run(&["KEYS", "*"])? {
            Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>(),
            other => return Err(format!("{addr}: KEYS returned {other:?}")),
        };
        let mut out = BTreeMap::new();
        for key in keys {
            let ty = value_text(&run(&["TYPE", &key])?);
            let data = match ty.as_str() {
                "list" => match run(&["LRANGE", &key, "0", "-1"])? {
                    Value::Array(items) => Data::List(items.iter().map(value_text).collect()),
                    other => Data::Other(format!("LRANGE: {other:?}")),
                },
                "string" => Data::Str(value_text(&run(&["GET", &key])?)),
                // Any other type, byte for byte.
                other => Data::Other(format!("{other} {:?}", run(&["DUMP", &key])?)),
            };
            out.insert(key, data);
        }
        let functions = run(&["FUNCTION", "LIST", "WITHCODE"])?;
        out.insert(
            FUNCTIONS_KEY.into(),
            Data::Other(libraries_text(&functions)),
        );
        let scripts = cmd_text(&mut con, &["RAFT.DEBUG", "SCRIPTS"])
            .map_err(|e| format!("{addr}: RAFT.DEBUG SCRIPTS: {e}"))?;
        out.insert(SCRIPTS_KEY.into(), Data::Other(scripts));
        Ok(out)
    }

    /// Dumps of every node, by node id.
    pub fn dump_all(&self) -> Result<Vec<(u64, Dump)>, String> {
        (0..self.nodes.len())
            .map(|slot| Ok((self.nodes[slot].id, self.dump(slot)?)))
            .collect()
    }

    /// Keeps every node's directory (called when a check failed).
    pub fn keep_dirs(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .map(|n| {
                format!(
                    "node {} ({}): {}",
                    n.id,
                    n.addr(),
                    n.server.keep_dir().display()
                )
            })
            .collect()
    }
}

/// Dump entries that are not keys start with this (no workload key does).
pub const CODE_PREFIX: &str = "\u{0}code:";
pub const FUNCTIONS_KEY: &str = "\u{0}code:functions";
pub const SCRIPTS_KEY: &str = "\u{0}code:scripts";

/// Every string of a reply, nested arrays included, space-separated.
fn flat_text(value: &Value) -> String {
    match value {
        Value::Array(items) | Value::Set(items) => {
            items.iter().map(flat_text).collect::<Vec<_>>().join(" ")
        }
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{} {}", flat_text(k), flat_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => value_text(other),
    }
}

/// `FUNCTION LIST WITHCODE` as text that does not depend on the server's hash order (the
/// functions of a library come in dict order): libraries and functions sorted by name.
fn libraries_text(value: &Value) -> String {
    let Value::Array(libraries) = value else {
        return flat_text(value);
    };
    let mut described: Vec<String> = libraries
        .iter()
        .map(|library| {
            let fields: Vec<&Value> = match library {
                Value::Array(fields) => fields.iter().collect(),
                _ => return flat_text(library),
            };
            let mut text = Vec::new();
            for pair in fields.chunks(2) {
                let [name, field] = pair else { continue };
                let name = value_text(name);
                let shown = match (name.as_str(), field) {
                    ("functions", Value::Array(functions)) => {
                        let mut names: Vec<String> = functions.iter().map(flat_text).collect();
                        names.sort();
                        names.join(" | ")
                    }
                    _ => flat_text(field),
                };
                text.push(format!("{name}={shown}"));
            }
            text.join(" ")
        })
        .collect();
    described.sort();
    described.join("\n")
}

fn cmd_text(con: &mut Connection, args: &[&str]) -> Result<String, String> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<Value>(con)
        .map(|v| flat_text(&v))
        .map_err(|e| err_text(&e))
}

/// Differences between node dumps; empty when all are identical.
pub fn compare_dumps(dumps: &[(u64, Dump)]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((first_id, first)) = dumps.first() else {
        return out;
    };
    for (id, dump) in &dumps[1..] {
        let mut keys: Vec<&String> = first.keys().chain(dump.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut diffs = 0;
        for key in keys {
            let (a, b) = (first.get(key), dump.get(key));
            if a != b {
                diffs += 1;
                if diffs <= 5 {
                    out.push(format!(
                        "nodes differ: key {key}: node {first_id} has {}, node {id} has {}",
                        short(a),
                        short(b)
                    ));
                }
            }
        }
        if diffs > 5 {
            out.push(format!(
                "nodes differ: node {first_id} vs node {id}: {diffs} keys in all"
            ));
        }
    }
    out
}

fn short(d: Option<&Data>) -> String {
    match d {
        None => "no key".into(),
        Some(Data::Str(s)) => format!("{s:?}"),
        Some(Data::Other(s)) => format!("<{s}>"),
        Some(Data::List(l)) if l.len() <= 6 => format!("{l:?}"),
        Some(Data::List(l)) => {
            format!(
                "list of {} [{} .. {}]",
                l.len(),
                l[..3].join(","),
                l[l.len() - 3..].join(",")
            )
        }
    }
}
