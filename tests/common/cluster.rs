//! A test cluster of real redis-server processes with the module: formation (INIT on
//! node 1, JOIN of the others), leader and catch-up waits, and a client that follows
//! MOVED and retries until a deadline. Shared by the multi-node test files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Value};

use super::*;

/// Tick of every test cluster; request-timeout (heartbeat) is two ticks.
pub const PERIODIC_MS: u64 = 50;
pub const REQUEST_TIMEOUT_MS: u64 = 100;
/// Election timeout of most test clusters. Small enough for quick failovers, large
/// enough that a loaded 2-core machine does not elect leaders all the time.
pub const ET_MS: u64 = 500;
/// How long cluster formation (start, init, joins, promotions) may take.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for "eventually" conditions on a loaded machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts of client retry loops (always bounded by a deadline).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------
// Connections that never hang: one connect attempt, short I/O timeouts.

pub fn try_connect(addr: &str, io_timeout: Duration) -> RedisResult<Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let con = client.get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(io_timeout))?;
    con.set_write_timeout(Some(io_timeout))?;
    Ok(con)
}

pub fn try_cmd(addr: &str, args: &[&str], io_timeout: Duration) -> RedisResult<Value> {
    exec(&mut try_connect(addr, io_timeout)?, args)
}

/// `INFO raft` of a running node, `None` if it does not answer within 3 s.
pub fn try_info(addr: &str) -> Option<HashMap<String, String>> {
    let text: String = exec(
        &mut try_connect(addr, Duration::from_secs(3)).ok()?,
        &["INFO", "raft"],
    )
    .ok()?;
    Some(parse_info(&text))
}

pub fn num(info: &HashMap<String, String>, field: &str) -> i64 {
    info.get(field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO raft has no numeric {field}: {info:?}"))
}

pub fn field<'a>(info: &'a HashMap<String, String>, name: &str) -> &'a str {
    info.get(name).map(String::as_str).unwrap_or("")
}

/// The per-node lines of INFO raft: id → (voting, addr:port).
pub fn info_nodes(info: &HashMap<String, String>) -> BTreeMap<u64, (bool, String)> {
    let mut nodes = BTreeMap::new();
    for (k, v) in info {
        if !k.starts_with("raft_node") || k == "raft_node_id" {
            continue;
        }
        let kv: HashMap<&str, &str> = v.split(',').filter_map(|p| p.split_once('=')).collect();
        let Some(id) = kv.get("id").and_then(|i| i.parse().ok()) else {
            continue;
        };
        let addr = format!(
            "{}:{}",
            kv.get("addr").unwrap_or(&""),
            kv.get("port").unwrap_or(&"")
        );
        nodes.insert(id, (kv.get("voting") == Some(&"yes"), addr));
    }
    nodes
}

pub fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Nil => "(nil)".into(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(value_text).collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// A retrying client: follows MOVED, retries CLUSTERDOWN / TIMEOUT / connection errors.

/// Result of one attempt.
pub enum Attempt {
    Done(Value),
    /// Not executed for sure (MOVED, CLUSTERDOWN, NOCLUSTER, LOADING, connect failure).
    Rejected(String),
    /// Fate unknown: the command may or may not have been applied (TIMEOUT, lost reply).
    Unknown(String),
    /// Any other error reply: the caller decides.
    Error(String),
}

pub struct Router {
    pub addrs: Vec<String>,
    pub next: usize,
    pub redirect: Option<String>,
    pub cur: Option<(String, Connection)>,
    pub io_timeout: Duration,
}

impl Router {
    pub fn new(addrs: Vec<String>) -> Router {
        Router {
            addrs,
            next: 0,
            redirect: None,
            cur: None,
            io_timeout: Duration::from_secs(5),
        }
    }

    pub fn attempt(&mut self, args: &[&str]) -> Attempt {
        if self.cur.is_none() {
            let addr = self.redirect.take().unwrap_or_else(|| {
                self.next += 1;
                self.addrs[(self.next - 1) % self.addrs.len()].clone()
            });
            match try_connect(&addr, self.io_timeout) {
                Ok(con) => self.cur = Some((addr, con)),
                Err(e) => return Attempt::Rejected(format!("connect {addr}: {e}")),
            }
        }
        let (addr, con) = self.cur.as_mut().unwrap();
        let addr = addr.clone();
        match exec::<Value>(con, args) {
            Ok(v) => Attempt::Done(v),
            Err(e) => {
                let text = err_text(&e);
                if let Some(rest) = text.strip_prefix("MOVED ") {
                    self.cur = None;
                    self.redirect = rest.split_whitespace().nth(1).map(str::to_string);
                    Attempt::Rejected(format!("{addr}: {text}"))
                } else if ["CLUSTERDOWN", "NOCLUSTER", "LOADING"]
                    .iter()
                    .any(|p| text.starts_with(p))
                {
                    self.cur = None;
                    Attempt::Rejected(format!("{addr}: {text}"))
                } else if text.starts_with("TIMEOUT")
                    || e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                {
                    self.cur = None;
                    Attempt::Unknown(format!("{addr}: {text}"))
                } else {
                    Attempt::Error(format!("{addr}: {text}"))
                }
            }
        }
    }

    /// Retries until done or `deadline`. Returns the reply and whether some attempt had an
    /// unknown outcome (so the command may have been applied more than once).
    pub fn call(&mut self, args: &[&str], deadline: Instant) -> Result<(Value, bool), String> {
        let mut unknown = false;
        let mut last;
        loop {
            match self.attempt(args) {
                Attempt::Done(v) => return Ok((v, unknown)),
                Attempt::Error(e) => return Err(format!("{args:?}: {e}")),
                Attempt::Unknown(e) => {
                    unknown = true;
                    last = e;
                }
                Attempt::Rejected(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{args:?}: no success before the deadline; last: {last}"
                ));
            }
            sleep(RETRY_BACKOFF);
        }
    }

    /// `call` that panics on failure; for idempotent commands.
    pub fn must(&mut self, args: &[&str], timeout: Duration) -> Value {
        self.call(args, Instant::now() + timeout)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }
}

// ---------------------------------------------------------------------------------------
// The cluster

pub struct Cluster {
    /// id → server. Node ids are chosen by the tests (1, 2, 3, ...).
    pub nodes: BTreeMap<u64, Server>,
    pub et_ms: u64,
}

pub fn node_opts(id: u64, port: u16, et_ms: u64) -> ServerOpts {
    ServerOpts::new()
        .port(port)
        .raft("id", &id.to_string())
        .raft("addr", &format!("127.0.0.1:{port}"))
        .raft("election-timeout", &et_ms.to_string())
        .raft("request-timeout", &REQUEST_TIMEOUT_MS.to_string())
        .raft("periodic-interval", &PERIODIC_MS.to_string())
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n), INIT on 1, JOIN the others, waits until all `n` vote
    /// and everybody knows the leader.
    pub fn start(n: u64, et_ms: u64) -> Cluster {
        Cluster::start_with(n, et_ms, |opts| opts)
    }

    /// `start` with every node's options changed by `adjust` (e.g. sharding configs).
    pub fn start_with(n: u64, et_ms: u64, adjust: impl Fn(ServerOpts) -> ServerOpts) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            et_ms,
        };
        let first = Server::start(adjust(node_opts(1, free_port("127.0.0.1"), et_ms)));
        let reply: String = first
            .cmd(&["RAFT.CLUSTER", "INIT"])
            .unwrap_or_else(|e| panic!("RAFT.CLUSTER INIT: {}", err_text(&e)));
        assert!(reply.starts_with("OK "), "INIT reply {reply:?}");
        first.expect_serving(FORM_TIMEOUT);
        cluster.nodes.insert(1, first);
        for id in 2..=n {
            cluster.join_with(id, &adjust);
        }
        let ids: Vec<u64> = (1..=n).collect();
        cluster.wait_voters(&ids, FORM_TIMEOUT);
        cluster
    }

    pub fn et(&self) -> Duration {
        Duration::from_millis(self.et_ms)
    }

    pub fn spawn(&self, id: u64) -> Server {
        let port = free_port("127.0.0.1");
        Server::start(node_opts(id, port, self.et_ms))
    }

    /// Starts node `id` and joins it through every current member; returns once JOIN
    /// answered `OK`.
    pub fn join_new(&mut self, id: u64) {
        self.join_with(id, |opts| opts);
    }

    /// `join_new` with the node's options changed by `adjust` (e.g. its environment).
    pub fn join_with(&mut self, id: u64, adjust: impl FnOnce(ServerOpts) -> ServerOpts) {
        let port = free_port("127.0.0.1");
        let server = Server::start(adjust(node_opts(id, port, self.et_ms)));
        let mut args = vec!["RAFT.CLUSTER".to_string(), "JOIN".to_string()];
        args.extend(self.nodes.values().map(|s| s.addr()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut con = server.client_with_timeout(Duration::from_secs(120));
        let reply: String =
            exec(&mut con, &args).unwrap_or_else(|e| panic!("JOIN of node {id}: {}", err_text(&e)));
        assert_eq!(reply, "OK", "JOIN of node {id}");
        self.nodes.insert(id, server);
    }

    pub fn node(&self, id: u64) -> &Server {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Server {
        self.nodes.get_mut(&id).unwrap()
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr()
    }

    pub fn addrs(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|&id| self.addr(id)).collect()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn info(&self, id: u64) -> Option<HashMap<String, String>> {
        try_info(&self.addr(id))
    }

    /// The leader as all of `ids` see it: a node of `ids` whose role is leader and that
    /// every node of `ids` names as leader.
    pub fn agreed_leader(&self, ids: &[u64]) -> Option<u64> {
        let infos: Vec<(u64, HashMap<String, String>)> = ids
            .iter()
            .map(|&id| Some((id, self.info(id)?)))
            .collect::<Option<_>>()?;
        let (leader, _) = infos
            .iter()
            .find(|(_, info)| field(info, "raft_role") == "leader")?;
        let leader_text = leader.to_string();
        infos
            .iter()
            .all(|(_, info)| {
                field(info, "raft_state") == "up" && field(info, "raft_leader_id") == leader_text
            })
            .then_some(*leader)
    }

    /// Waits until `ids` agree on a leader among them.
    pub fn wait_leader(&self, ids: &[u64], timeout: Duration) -> u64 {
        let mut leader = None;
        let ok = wait_until(timeout, || {
            leader = self.agreed_leader(ids);
            leader.is_some()
        });
        assert!(
            ok,
            "nodes {ids:?} agree on no leader after {timeout:?}; {}",
            self.describe(ids)
        );
        leader.unwrap()
    }

    /// Waits until exactly `ids` are the voting members (as the leader sees them) and all of
    /// `ids` agree on the leader. Returns the leader.
    pub fn wait_voters(&self, ids: &[u64], timeout: Duration) -> u64 {
        let want: BTreeSet<u64> = ids.iter().copied().collect();
        let mut leader = None;
        let ok = wait_until(timeout, || {
            let Some(l) = self.agreed_leader(ids) else {
                return false;
            };
            let Some(info) = self.info(l) else {
                return false;
            };
            let voters: BTreeSet<u64> = info_nodes(&info)
                .into_iter()
                .filter(|(_, (voting, _))| *voting)
                .map(|(id, _)| id)
                .collect();
            leader = Some(l);
            // Each node applies its promotion after the leader does: ask them too.
            voters == want
                && num(&info, "raft_num_voting_nodes") == ids.len() as i64
                && ids.iter().all(|&id| {
                    self.info(id)
                        .is_some_and(|i| field(&i, "raft_is_voting") == "yes")
                })
        });
        assert!(
            ok,
            "voters are not {ids:?} after {timeout:?}; {}",
            self.describe(ids)
        );
        leader.unwrap()
    }

    /// Waits until every node of `ids` has applied at least `index`.
    pub fn wait_applied(&self, ids: &[u64], index: i64, timeout: Duration) {
        let ok = wait_until(timeout, || {
            ids.iter().all(|&id| {
                self.info(id)
                    .is_some_and(|info| num(&info, "raft_last_applied_index") >= index)
            })
        });
        assert!(
            ok,
            "nodes {ids:?} have not applied {index} after {timeout:?}; {}",
            self.describe(ids)
        );
    }

    /// Waits until the leader of `ids` is known and every node of `ids` has applied its
    /// commit index. Returns the leader.
    pub fn wait_caught_up(&self, ids: &[u64], timeout: Duration) -> u64 {
        let leader = self.wait_leader(ids, timeout);
        let commit = num(
            &self.info(leader).expect("leader INFO"),
            "raft_commit_index",
        );
        self.wait_applied(ids, commit, timeout);
        leader
    }

    /// `RAFT.DEBUG EXEC <args>` on node `id`.
    pub fn local(&self, id: u64, args: &[&str]) -> Value {
        let mut full = vec!["RAFT.DEBUG", "EXEC"];
        full.extend_from_slice(args);
        try_cmd(&self.addr(id), &full, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("node {id}: {full:?}: {}", err_text(&e)))
    }

    /// Role / leader / term / indices of each node, for failure messages.
    pub fn describe(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|&id| match self.info(id) {
                Some(info) => format!(
                    "\n  node {id}: state={} role={} leader={} term={} commit={} applied={} voting_nodes={}",
                    field(&info, "raft_state"),
                    field(&info, "raft_role"),
                    field(&info, "raft_leader_id"),
                    field(&info, "raft_current_term"),
                    field(&info, "raft_commit_index"),
                    field(&info, "raft_last_applied_index"),
                    field(&info, "raft_num_voting_nodes"),
                ),
                None => format!("\n  node {id}: no answer"),
            })
            .collect()
    }

    pub fn router(&self, ids: &[u64]) -> Router {
        Router::new(self.addrs(ids))
    }
}

/// Every node of `ids` holds the same value for `args` (run locally with RAFT.DEBUG EXEC);
/// returns it.
pub fn same_everywhere(cluster: &Cluster, ids: &[u64], args: &[&str]) -> Value {
    let first = cluster.local(ids[0], args);
    for &id in &ids[1..] {
        let v = cluster.local(id, args);
        assert_eq!(
            v, first,
            "{args:?} differs between node {} and node {id}",
            ids[0]
        );
    }
    first
}
