//! Snapshot integration tests: log compaction by snapshot on 3-node clusters under many
//! writes of mixed types with TTLs (checked against a client-side reference model), a new
//! node catching up by snapshot (with records larger than a transfer chunk), a follower
//! catching up by snapshot after a SIGSTOP and after a `kill -9`, a follower catching up
//! from the leader's log file with a tiny entry cache (and the leader stopping when the
//! entries it reads back are damaged), the snapshot stream leaving from the node's own
//! address, a restart of every node
//! from snapshot + log, a restart with a snapshot newer than the whole log (crash between
//! publishing a received snapshot and rewriting the log), `kill -9` while a snapshot is
//! being written, `kill -9` of a joining node while the snapshot is streamed to it, and a
//! transfer interrupted on the sender's side.
//!
//! Every wait has a deadline; nothing sleeps and hopes (the only sleeps are back-offs of
//! bounded retry loops and polls).
//!
//! Sizes: the writes go through raft one entry per command, and a client connection is
//! blocked until its command commits, so throughput comes from many connections
//! (`WRITER_THREADS`), about 2-4k commands/s on a loaded 2-core machine. The follower
//! of `lagging_follower_catches_up_by_snapshot` is stopped during 50,000 writes. The
//! issue asks for 100,000 keys of mixed types in `snapshots_bound_the_log_and_keep_all_data`:
//! that is 240,000 commands plus 100,000 updates, 142-171 s on this loaded machine, run
//! by `make test`; `REDISRAFT_SNAPSHOT_KEYS=20000` runs a quicker 20,000-key version
//! (about 25 s) while developing (see docs/TESTING.md).
//! Run by `make test` against redis-server and again against Valkey.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use common::cluster::{field, num, try_connect, try_info};
use common::*;
use redis::{Connection, Value};

/// `raft.log-max-file-size` of most test clusters: small, so writes trigger snapshots.
const LOG_MAX: u64 = 200_000;
/// TTL of keys that have one: long enough that nothing expires during a test.
const TTL_MS: i64 = 1_000_000;
/// Cluster formation (start, init, joins, promotions).
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// "Eventually" conditions on a loaded machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one pipeline of writes may keep failing (leader changes) before the test fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent writer connections.
const WRITER_THREADS: usize = 24;
/// Commands per pipeline (whole key sequences, so a pipeline may be a little longer).
const PIPELINE_CMDS: usize = 60;

// ---------------------------------------------------------------------------------------
// Connections and INFO

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Nil => "(nil)".into(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().map(text).collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [text(k), text(v)]).collect(),
        other => vec![format!("not an array: {other:?}")],
    }
}

// ---------------------------------------------------------------------------------------
// The cluster

struct Cluster {
    /// id → server; ids are chosen by the tests (1, 2, 3, ...).
    nodes: BTreeMap<u64, Server>,
    /// `raft.*` configs of every node, on top of id and addr.
    configs: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with `configs`, INIT on 1, JOIN the others, waits until
    /// all `n` vote and agree on the leader.
    fn start(n: u64, configs: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let first = cluster.spawn(1);
        let reply: String = first
            .cmd(&["RAFT.CLUSTER", "INIT"])
            .unwrap_or_else(|e| panic!("RAFT.CLUSTER INIT: {}", err_text(&e)));
        assert!(reply.starts_with("OK "), "INIT reply {reply:?}");
        first.expect_serving(FORM_TIMEOUT);
        cluster.nodes.insert(1, first);
        for id in 2..=n {
            cluster.join_new(id);
        }
        cluster.wait_voters(&cluster.ids(), FORM_TIMEOUT);
        cluster
    }

    fn spawn(&self, id: u64) -> Server {
        let port = free_port("127.0.0.1");
        let mut opts = ServerOpts::new()
            .port(port)
            .raft("id", &id.to_string())
            .raft("addr", &format!("127.0.0.1:{port}"));
        for (k, v) in &self.configs {
            opts = opts.raft(k, v);
        }
        Server::start(opts)
    }

    /// Starts node `id` and joins it through every current member; returns once JOIN
    /// answered `OK` (the node is a member, not necessarily caught up).
    fn join_new(&mut self, id: u64) {
        let server = self.spawn(id);
        let mut args = vec!["RAFT.CLUSTER".to_string(), "JOIN".to_string()];
        args.extend(self.nodes.values().map(|s| s.addr()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut con = server.client_with_timeout(Duration::from_secs(120));
        let reply: String =
            exec(&mut con, &args).unwrap_or_else(|e| panic!("JOIN of node {id}: {}", err_text(&e)));
        assert_eq!(reply, "OK", "JOIN of node {id}");
        self.nodes.insert(id, server);
    }

    fn node(&self, id: u64) -> &Server {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: u64) -> &mut Server {
        self.nodes.get_mut(&id).unwrap()
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn addrs(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|id| self.node(*id).addr()).collect()
    }

    fn info(&self, id: u64) -> Option<HashMap<String, String>> {
        try_info(&self.node(id).addr())
    }

    fn must_info(&self, id: u64) -> HashMap<String, String> {
        self.info(id)
            .unwrap_or_else(|| panic!("node {id} does not answer INFO"))
    }

    /// A node of `ids` that leads and that every node of `ids` names as leader.
    fn agreed_leader(&self, ids: &[u64]) -> Option<u64> {
        let infos: Vec<HashMap<String, String>> =
            ids.iter().map(|&id| self.info(id)).collect::<Option<_>>()?;
        let leader = ids
            .iter()
            .zip(&infos)
            .find(|(_, info)| field(info, "raft_role") == "leader")?
            .0;
        let leader_text = leader.to_string();
        infos
            .iter()
            .all(|info| {
                field(info, "raft_state") == "up" && field(info, "raft_leader_id") == leader_text
            })
            .then_some(*leader)
    }

    fn wait_leader(&self, ids: &[u64], timeout: Duration) -> u64 {
        let mut leader = None;
        let ok = wait_until(timeout, || {
            leader = self.agreed_leader(ids);
            leader.is_some()
        });
        assert!(
            ok,
            "nodes {ids:?} agree on no leader after {timeout:?};{}",
            self.describe(ids)
        );
        leader.unwrap()
    }

    /// Waits until exactly `ids` vote (as the leader sees it) and agree on the leader.
    fn wait_voters(&self, ids: &[u64], timeout: Duration) -> u64 {
        let mut leader = None;
        let ok = wait_until(timeout, || {
            let Some(l) = self.agreed_leader(ids) else {
                return false;
            };
            let Some(info) = self.info(l) else {
                return false;
            };
            leader = Some(l);
            num(&info, "raft_num_voting_nodes") == ids.len() as i64
                && ids.iter().all(|&id| {
                    self.info(id)
                        .is_some_and(|i| field(&i, "raft_is_voting") == "yes")
                })
        });
        assert!(
            ok,
            "voters are not {ids:?} after {timeout:?};{}",
            self.describe(ids)
        );
        leader.unwrap()
    }

    /// Waits until `ids` agree on a leader and each has applied the leader's commit index.
    fn wait_caught_up(&self, ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let leader = self.wait_leader(ids, timeout);
        let commit = num(&self.must_info(leader), "raft_commit_index");
        let ok = wait_until(deadline.saturating_duration_since(Instant::now()), || {
            ids.iter().all(|&id| {
                self.info(id)
                    .is_some_and(|i| num(&i, "raft_last_applied_index") >= commit)
            })
        });
        assert!(
            ok,
            "nodes {ids:?} have not applied {commit} after {timeout:?};{}",
            self.describe(ids)
        );
        leader
    }

    /// Raft and snapshot state of each node, for failure messages.
    fn describe(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|&id| match self.info(id) {
                Some(i) => format!(
                    "\n  node {id}: state={} role={} leader={} voting={} term={} commit={} \
                     applied={} log_entries={} file_size={} snapshot_idx={} created={} \
                     received={} in_progress={}",
                    field(&i, "raft_state"),
                    field(&i, "raft_role"),
                    field(&i, "raft_leader_id"),
                    field(&i, "raft_is_voting"),
                    field(&i, "raft_current_term"),
                    field(&i, "raft_commit_index"),
                    field(&i, "raft_last_applied_index"),
                    field(&i, "raft_log_entries"),
                    field(&i, "raft_file_size"),
                    field(&i, "raft_snapshot_last_idx"),
                    field(&i, "raft_snapshots_created"),
                    field(&i, "raft_snapshots_received"),
                    field(&i, "raft_snapshot_in_progress"),
                ),
                None => format!("\n  node {id}: no answer"),
            })
            .collect()
    }

    /// Checks every node of `ids` against the model (see `check_node`).
    fn check_data(&self, ids: &[u64], work: &Workload) {
        for &id in ids {
            let problems = check_node(&self.node(id).addr(), &work.model);
            assert!(
                problems.is_empty(),
                "node {id} differs from the reference ({} keys):\n  {}",
                work.model.len(),
                problems.join("\n  ")
            );
        }
    }

    /// `RAFT.DEBUG COMPACT` on node `id`; panics unless `+OK`.
    fn compact(&self, id: u64) {
        let mut con = self.node(id).client_with_timeout(Duration::from_secs(120));
        let reply: String = exec(&mut con, &["RAFT.DEBUG", "COMPACT"])
            .unwrap_or_else(|e| panic!("node {id}: RAFT.DEBUG COMPACT: {}", err_text(&e)));
        assert_eq!(reply, "OK", "node {id}: RAFT.DEBUG COMPACT");
    }
}

fn snapshot_path(server: &Server) -> PathBuf {
    PathBuf::from(format!("{}.snapshot", server.raft_log_path().display()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Received snapshot files next to `snapshot` (`<log>.snapshot.received-<index>-<term>`,
/// or the unnumbered name of older builds).
fn received_files(snapshot: &Path) -> Vec<PathBuf> {
    let prefix = format!(
        "{}.received",
        snapshot.file_name().unwrap().to_string_lossy()
    );
    let mut found: Vec<PathBuf> = std::fs::read_dir(snapshot.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

// ---------------------------------------------------------------------------------------
// The reference model and the workload

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    Hash(BTreeMap<String, String>),
    List(Vec<String>),
    Set(BTreeSet<String>),
    /// member → score (integer scores only).
    ZSet(BTreeMap<String, i64>),
}

#[derive(Clone, Debug)]
struct Item {
    val: Val,
    ttl: bool,
}

type Cmd = Vec<String>;
/// The commands of one key. Each sequence can be replayed from the start after a partial
/// application (it starts with DEL or uses only idempotent commands), so a failed
/// pipeline is simply sent again.
type Seq = Vec<Cmd>;

fn cmd(words: &[&str]) -> Cmd {
    words.iter().map(|w| w.to_string()).collect()
}

/// Generates writes of mixed types and keeps the expected final state of every key.
struct Workload {
    model: BTreeMap<String, Item>,
    next: u64,
    /// Length of generated values.
    vsize: usize,
    rounds: u64,
}

impl Workload {
    fn new(vsize: usize) -> Workload {
        Workload {
            model: BTreeMap::new(),
            next: 0,
            vsize,
            rounds: 0,
        }
    }

    /// `<key>-<tag>-` padded to `vsize` with pseudo-random letters (DUMP compresses
    /// repetitive values, and the snapshots should have some size).
    fn value(&self, key: &str, tag: &str) -> String {
        let mut v = format!("{key}-{tag}-");
        let mut x = v.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        while v.len() < self.vsize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push((b'a' + (x % 26) as u8) as char);
        }
        v
    }

    /// `n` new keys: strings, hashes, lists, sets, zsets in turn; one in four with a TTL.
    fn create(&mut self, n: u64) -> Vec<Seq> {
        let mut seqs = Vec::new();
        for i in self.next..self.next + n {
            let k = format!("k{i}");
            let ttl = i % 4 == 1;
            let ttl_ms = TTL_MS.to_string();
            let mut seq = Vec::new();
            let val = match i % 5 {
                0 => {
                    let v = self.value(&k, "s");
                    let mut c = cmd(&["SET", &k, &v]);
                    if ttl {
                        c.extend(["PX".to_string(), ttl_ms.clone()]);
                    }
                    seq.push(c);
                    Val::Str(v)
                }
                1 => {
                    let fields: Vec<(String, String)> = (0..3)
                        .map(|f| (format!("f{f}"), self.value(&k, &format!("h{f}"))))
                        .collect();
                    seq.push(cmd(&["DEL", &k]));
                    let mut c = cmd(&["HSET", &k]);
                    for (f, v) in &fields {
                        c.extend([f.clone(), v.clone()]);
                    }
                    seq.push(c);
                    Val::Hash(fields.into_iter().collect())
                }
                2 => {
                    let items: Vec<String> =
                        (0..3).map(|e| self.value(&k, &format!("l{e}"))).collect();
                    let head = self.value(&k, "head");
                    seq.push(cmd(&["DEL", &k]));
                    let mut c = cmd(&["RPUSH", &k]);
                    c.extend(items.iter().cloned());
                    seq.push(c);
                    seq.push(cmd(&["LPUSH", &k, &head]));
                    let mut list = vec![head];
                    list.extend(items);
                    Val::List(list)
                }
                3 => {
                    let members: Vec<String> =
                        (0..4).map(|m| self.value(&k, &format!("m{m}"))).collect();
                    seq.push(cmd(&["DEL", &k]));
                    let mut c = cmd(&["SADD", &k]);
                    c.extend(members.iter().cloned());
                    seq.push(c);
                    Val::Set(members.into_iter().collect())
                }
                _ => {
                    let members: Vec<String> =
                        (0..3).map(|m| self.value(&k, &format!("z{m}"))).collect();
                    seq.push(cmd(&["DEL", &k]));
                    seq.push(cmd(&[
                        "ZADD",
                        &k,
                        "1",
                        &members[0],
                        "2",
                        &members[1],
                        "3",
                        &members[2],
                    ]));
                    seq.push(cmd(&["ZINCRBY", &k, "10", &members[0]]));
                    Val::ZSet(
                        [
                            (members[0].clone(), 11),
                            (members[1].clone(), 2),
                            (members[2].clone(), 3),
                        ]
                        .into_iter()
                        .collect(),
                    )
                }
            };
            if ttl && !matches!(val, Val::Str(_)) {
                seq.push(cmd(&["PEXPIRE", &k, &ttl_ms]));
            }
            self.model.insert(k, Item { val, ttl });
            seqs.push(seq);
        }
        self.next += n;
        seqs
    }

    /// `n` big keys of about `bytes` bytes each: strings and hashes in turn (snapshot
    /// records larger than a transfer chunk and than the loader's read buffer).
    fn create_big(&mut self, n: u64, bytes: usize) -> Vec<Seq> {
        let mut seqs = Vec::new();
        for i in self.next..self.next + n {
            let k = format!("big{i}");
            let val = if i % 2 == 0 {
                let v = Workload {
                    vsize: bytes,
                    ..Workload::new(0)
                }
                .value(&k, "big");
                seqs.push(vec![cmd(&["SET", &k, &v])]);
                Val::Str(v)
            } else {
                let fields: BTreeMap<String, String> = (0..bytes / 100)
                    .map(|f| (format!("f{f}"), self.value(&k, &format!("h{f}"))))
                    .collect();
                let mut c = cmd(&["HSET", &k]);
                for (f, v) in &fields {
                    c.extend([f.clone(), v.clone()]);
                }
                seqs.push(vec![cmd(&["DEL", &k]), c]);
                Val::Hash(fields)
            };
            self.model.insert(k, Item { val, ttl: false });
        }
        self.next += n;
        seqs
    }

    /// Updates one in `every` existing keys with idempotent commands: new values, removed
    /// elements, TTLs set and removed, some keys deleted.
    fn update(&mut self, every: usize) -> Vec<Seq> {
        self.rounds += 1;
        let round = self.rounds;
        let tag = format!("u{round}");
        let keys: Vec<String> = self
            .model
            .keys()
            .enumerate()
            .filter(|(pos, _)| (pos + round as usize).is_multiple_of(every))
            .map(|(_, k)| k.clone())
            .collect();
        let ttl_ms = TTL_MS.to_string();
        let mut seqs = Vec::new();
        for (n, k) in keys.into_iter().enumerate() {
            if n % 7 == 3 {
                self.model.remove(&k);
                seqs.push(vec![cmd(&["DEL", &k])]);
                continue;
            }
            let v = self.value(&k, &tag);
            let mut item = self.model[&k].clone();
            let mut seq = Vec::new();
            match &mut item.val {
                Val::Str(s) => {
                    seq.push(cmd(&["SET", &k, &v, "KEEPTTL"]));
                    *s = v;
                }
                Val::Hash(h) => {
                    seq.push(cmd(&["HSET", &k, "f9", &v]));
                    seq.push(cmd(&["HDEL", &k, "f0"]));
                    h.insert("f9".into(), v);
                    h.remove("f0");
                }
                Val::List(l) => {
                    seq.push(cmd(&["LSET", &k, "0", &v]));
                    seq.push(cmd(&["LTRIM", &k, "0", "2"]));
                    l[0] = v;
                    l.truncate(3);
                }
                Val::Set(s) => {
                    let first = s.iter().next().unwrap().clone();
                    seq.push(cmd(&["SADD", &k, &v]));
                    seq.push(cmd(&["SREM", &k, &first]));
                    s.insert(v);
                    s.remove(&first);
                }
                Val::ZSet(z) => {
                    let first = z.keys().next().unwrap().clone();
                    seq.push(cmd(&["ZADD", &k, "50", &v]));
                    seq.push(cmd(&["ZREM", &k, &first]));
                    z.insert(v, 50);
                    z.remove(&first);
                }
            }
            if n % 3 == 0 {
                if item.ttl {
                    seq.push(cmd(&["PERSIST", &k]));
                } else {
                    seq.push(cmd(&["PEXPIRE", &k, &ttl_ms]));
                }
                item.ttl = !item.ttl;
            }
            self.model.insert(k, item);
            seqs.push(seq);
        }
        seqs
    }
}

fn count_cmds(seqs: &[Seq]) -> usize {
    seqs.iter().map(Vec::len).sum()
}

// ---------------------------------------------------------------------------------------
// Writing: many connections to the leader, each sending pipelines of whole key sequences

/// A connection to whoever leads now.
struct LeaderConnection {
    addrs: Vec<String>,
    cur: Option<Connection>,
}

impl LeaderConnection {
    fn new(addrs: Vec<String>) -> LeaderConnection {
        LeaderConnection { addrs, cur: None }
    }

    fn get(&mut self, deadline: Instant) -> Result<&mut Connection, String> {
        while self.cur.is_none() {
            for addr in &self.addrs {
                let Some(info) = try_info(addr) else { continue };
                if field(&info, "raft_role") == "leader" && field(&info, "raft_state") == "up" {
                    if let Ok(con) = try_connect(addr, Duration::from_secs(30)) {
                        self.cur = Some(con);
                        break;
                    }
                }
            }
            if self.cur.is_none() {
                if Instant::now() >= deadline {
                    return Err(format!("no leader among {:?}", self.addrs));
                }
                sleep(Duration::from_millis(50));
            }
        }
        Ok(self.cur.as_mut().unwrap())
    }

    /// Sends `cmds` as one pipeline until every reply is a success. MOVED, CLUSTERDOWN,
    /// TIMEOUT, LOADING and connection errors are retried (the pipeline is replayable);
    /// any other error fails.
    fn run(&mut self, cmds: &[&Cmd], retries: &AtomicU64) -> Result<(), String> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut pipe = redis::pipe();
        for c in cmds {
            pipe.cmd(&c[0]).arg(&c[1..]);
        }
        loop {
            let con = self.get(deadline)?;
            let e = match pipe.query::<Vec<Value>>(con) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let t = err_text(&e);
            let transient = ["MOVED", "CLUSTERDOWN", "TIMEOUT", "LOADING", "NOCLUSTER"]
                .iter()
                .any(|p| t.starts_with(p))
                || e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal();
            if !transient {
                return Err(format!("pipeline of {} commands: {t}", cmds.len()));
            }
            self.cur = None;
            retries.fetch_add(1, Ordering::Relaxed);
            if Instant::now() >= deadline {
                return Err(format!(
                    "pipeline not accepted within {WRITE_TIMEOUT:?}: {t}"
                ));
            }
            sleep(Duration::from_millis(25));
        }
    }
}

#[derive(Default)]
struct Progress {
    /// Commands acknowledged.
    done: AtomicU64,
    /// Pipelines sent again after a transient error.
    retries: AtomicU64,
}

/// Writes every sequence (each key's commands stay in order on one connection) through
/// `WRITER_THREADS` connections to the leader. Sequences run concurrently, so they must
/// touch disjoint keys. Panics on failure.
fn write_seqs(addrs: &[String], seqs: &[Seq], progress: &Progress) {
    let errors: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = (0..WRITER_THREADS)
            .map(|t| {
                let mut con = LeaderConnection::new(addrs.to_vec());
                s.spawn(move || -> Result<(), String> {
                    let mut batch: Vec<&Cmd> = Vec::new();
                    let mine = seqs.iter().skip(t).step_by(WRITER_THREADS);
                    for seq in mine {
                        batch.extend(seq.iter());
                        if batch.len() >= PIPELINE_CMDS {
                            con.run(&batch, &progress.retries)?;
                            progress
                                .done
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                            batch.clear();
                        }
                    }
                    if !batch.is_empty() {
                        con.run(&batch, &progress.retries)?;
                        progress
                            .done
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("writer thread panicked").err())
            .collect()
    });
    assert!(errors.is_empty(), "writes failed: {errors:?}");
}

/// `write_seqs` on a background thread.
fn write_in_background(
    addrs: Vec<String>,
    seqs: Vec<Seq>,
) -> (Arc<Progress>, thread::JoinHandle<()>) {
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let handle = thread::spawn(move || write_seqs(&addrs, &seqs, &p));
    (progress, handle)
}

fn write_now(cluster: &Cluster, seqs: &[Seq]) {
    let started = Instant::now();
    let progress = Progress::default();
    write_seqs(&cluster.addrs(&cluster.ids()), seqs, &progress);
    eprintln!(
        "wrote {} commands ({} keys) in {:?}, {} pipelines retried",
        count_cmds(seqs),
        seqs.len(),
        started.elapsed(),
        progress.retries.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------
// Checking a node's data against the model (locally, with RAFT.DEBUG EXEC)

fn type_name(val: &Val) -> &'static str {
    match val {
        Val::Str(_) => "string",
        Val::Hash(_) => "hash",
        Val::List(_) => "list",
        Val::Set(_) => "set",
        Val::ZSet(_) => "zset",
    }
}

fn read_cmd(val: &Val) -> &'static [&'static str] {
    match val {
        Val::Str(_) => &["GET"],
        Val::Hash(_) => &["HGETALL"],
        Val::List(_) => &["LRANGE", "$", "0", "-1"],
        Val::Set(_) => &["SMEMBERS"],
        Val::ZSet(_) => &["ZRANGE", "$", "0", "-1", "WITHSCORES"],
    }
}

/// The value as the type-aware read shows it, normalized (unordered collections sorted).
fn expected(val: &Val) -> Vec<String> {
    match val {
        Val::Str(s) => vec![s.clone()],
        Val::Hash(h) => {
            let mut pairs: Vec<String> = h.iter().map(|(f, v)| format!("{f}={v}")).collect();
            pairs.sort();
            pairs
        }
        Val::List(l) => l.clone(),
        Val::Set(s) => s.iter().cloned().collect(),
        Val::ZSet(z) => {
            let mut by_score: Vec<(i64, &String)> = z.iter().map(|(m, s)| (*s, m)).collect();
            by_score.sort();
            by_score
                .into_iter()
                .map(|(s, m)| format!("{m}:{s}"))
                .collect()
        }
    }
}

fn observed(val: &Val, reply: &Value) -> Vec<String> {
    match val {
        Val::Str(_) => vec![text(reply)],
        Val::List(_) => texts(reply),
        Val::Set(_) => {
            let mut t = texts(reply);
            t.sort();
            t
        }
        Val::Hash(_) => {
            let t = texts(reply);
            let mut pairs: Vec<String> = t.chunks(2).map(|p| p.join("=")).collect();
            pairs.sort();
            pairs
        }
        Val::ZSet(_) => texts(reply).chunks(2).map(|p| p.join(":")).collect(),
    }
}

/// A short description of how `got` differs from `want` (values can be megabytes).
fn describe_diff(got: &[String], want: &[String]) -> String {
    fn short(v: &[String]) -> String {
        let mut t = format!("{v:?}");
        if t.len() > 300 {
            let mut end = 300;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
            t.push_str("...");
        }
        t
    }
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    let missing: Vec<String> = want_set
        .difference(&got_set)
        .map(|s| s.to_string())
        .collect();
    let extra: Vec<String> = got_set
        .difference(&want_set)
        .map(|s| s.to_string())
        .collect();
    format!(
        "{} elements, expected {}; missing {}: {}; unexpected {}: {}; first got {}",
        got.len(),
        want.len(),
        missing.len(),
        short(&missing[..missing.len().min(3)]),
        extra.len(),
        short(&extra[..extra.len().min(3)]),
        short(&got[..got.len().min(3)]),
    )
}

/// A node's applied index before, `PTTL` answers, applied index after.
type FramedPttls = (i64, Vec<i64>, i64);

/// `RAFT.DEBUG EXEC PTTL` of up to 200 keys with a TTL, on node `addr`, framed by its
/// applied index before and after (equal when no entry was applied meanwhile).
fn debug_pttls(addr: &str, keys: &[&String]) -> Result<FramedPttls, String> {
    let mut con = try_connect(addr, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let applied = |con: &mut redis::Connection| -> Result<i64, String> {
        let info: String = redis::cmd("INFO")
            .arg("raft")
            .query(con)
            .map_err(|e| err_text(&e))?;
        info.lines()
            .find_map(|l| l.strip_prefix("raft_last_applied_index:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no raft_last_applied_index".to_string())
    };
    let before = applied(&mut con)?;
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("RAFT.DEBUG")
            .arg("EXEC")
            .arg("PTTL")
            .arg(k.as_str());
    }
    let pttls: Vec<i64> = pipe.query(&mut con).map_err(|e| err_text(&e))?;
    let after = applied(&mut con)?;
    Ok((before, pttls, after))
}

impl Cluster {
    /// Nodes at the same applied index judge expiry at the same logical time, including a
    /// node that got there by installing a snapshot: `RAFT.DEBUG EXEC PTTL` of keys with
    /// a TTL is identical on every node of `ids` (retried while entries are applied).
    fn check_same_ttls(&self, ids: &[u64], work: &Workload) {
        let keys: Vec<&String> = work
            .model
            .iter()
            .filter(|(_, item)| item.ttl)
            .map(|(k, _)| k)
            .take(200)
            .collect();
        assert!(!keys.is_empty(), "the workload has no key with a TTL");
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let answers: Vec<(u64, Result<FramedPttls, String>)> = ids
                .iter()
                .map(|&id| (id, debug_pttls(&self.node(id).addr(), &keys)))
                .collect();
            let settled: Option<Vec<(u64, i64, &Vec<i64>)>> = answers
                .iter()
                .map(|(id, answer)| match answer {
                    Ok((before, pttls, after)) if before == after => Some((*id, *before, pttls)),
                    _ => None,
                })
                .collect();
            if let Some(settled) = settled {
                let (first_id, first_index, first_pttls) = settled[0];
                if settled.iter().all(|(_, index, _)| *index == first_index) {
                    for (id, _, pttls) in &settled[1..] {
                        let differing: Vec<String> = keys
                            .iter()
                            .zip(first_pttls.iter().zip(pttls.iter()))
                            .filter(|(_, (a, b))| a != b)
                            .take(5)
                            .map(|(k, (a, b))| format!("{k}: {a} on node {first_id}, {b}"))
                            .collect();
                        assert!(
                            differing.is_empty(),
                            "node {id} judges expiry at another time than node {first_id} \
                             at applied index {first_index}:\n  {}",
                            differing.join("\n  ")
                        );
                    }
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nodes {ids:?} never answered at one applied index: {answers:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Compares a node's keyspace with the model: DBSIZE, and for every key its type, value
/// and TTL (present and at most `TTL_MS` for keys that have one, absent otherwise).
/// Returns the differences (at most 20).
fn check_node(addr: &str, model: &BTreeMap<String, Item>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut con = match try_connect(addr, Duration::from_secs(60)) {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot connect: {e}")],
    };
    match exec::<i64>(&mut con, &["RAFT.DEBUG", "EXEC", "DBSIZE"]) {
        Ok(n) if n == model.len() as i64 => {}
        Ok(n) => problems.push(format!("DBSIZE {n}, expected {}", model.len())),
        Err(e) => return vec![format!("DBSIZE: {}", err_text(&e))],
    }
    let items: Vec<(&String, &Item)> = model.iter().collect();
    for chunk in items.chunks(500) {
        let mut pipe = redis::pipe();
        for (k, item) in chunk {
            pipe.cmd("RAFT.DEBUG")
                .arg("EXEC")
                .arg("TYPE")
                .arg(k.as_str());
            let read = read_cmd(&item.val);
            let mut c = redis::cmd("RAFT.DEBUG");
            c.arg("EXEC").arg(read[0]).arg(k.as_str());
            for a in &read[1..] {
                if *a != "$" {
                    c.arg(*a);
                }
            }
            pipe.add_command(c);
            pipe.cmd("RAFT.DEBUG")
                .arg("EXEC")
                .arg("PTTL")
                .arg(k.as_str());
        }
        let replies: Vec<Value> = match pipe.query(&mut con) {
            Ok(r) => r,
            Err(e) => return vec![format!("reading keys: {}", err_text(&e))],
        };
        for ((k, item), r) in chunk.iter().zip(replies.chunks(3)) {
            let ty = text(&r[0]);
            if ty != type_name(&item.val) {
                problems.push(format!("{k}: type {ty}, expected {}", type_name(&item.val)));
            } else {
                let got = observed(&item.val, &r[1]);
                let want = expected(&item.val);
                if got != want {
                    problems.push(format!("{k}: {}", describe_diff(&got, &want)));
                }
            }
            let pttl = match &r[2] {
                Value::Int(i) => *i,
                other => {
                    problems.push(format!("{k}: PTTL {other:?}"));
                    continue;
                }
            };
            let ttl_ok = if item.ttl {
                pttl > 0 && pttl <= TTL_MS
            } else {
                pttl == -1
            };
            if !ttl_ok {
                problems.push(format!("{k}: PTTL {pttl}, expected TTL: {}", item.ttl));
            }
            if problems.len() >= 20 {
                return problems;
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// Helpers for the tests

/// Keys written by `snapshots_bound_the_log_and_keep_all_data`:
/// `REDISRAFT_SNAPSHOT_KEYS`, default 100,000 (the size).
fn keys_for_bound_test() -> u64 {
    std::env::var("REDISRAFT_SNAPSHOT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn log_max_configs() -> Vec<(&'static str, &'static str)> {
    vec![("log-max-file-size", "200000")]
}

/// Waits until every node of `ids` has created a snapshot.
fn wait_snapshots_created(cluster: &Cluster, ids: &[u64], timeout: Duration) {
    let ok = wait_until(timeout, || {
        ids.iter().all(|&id| {
            cluster
                .info(id)
                .is_some_and(|i| num(&i, "raft_snapshots_created") > 0)
        })
    });
    assert!(
        ok,
        "not every node created a snapshot within {timeout:?};{}",
        cluster.describe(ids)
    );
}

/// Samples `raft_file_size` of every node until stopped; returns the largest seen per node.
struct FileSizeMonitor {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<BTreeMap<String, i64>>,
}

impl FileSizeMonitor {
    fn start(addrs: Vec<String>) -> FileSizeMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut max: BTreeMap<String, i64> = BTreeMap::new();
            while !s.load(Ordering::Relaxed) {
                for addr in &addrs {
                    if let Some(info) = try_info(addr) {
                        let size = num(&info, "raft_file_size");
                        let m = max.entry(addr.clone()).or_default();
                        *m = (*m).max(size);
                    }
                }
                sleep(Duration::from_millis(50));
            }
            max
        });
        FileSizeMonitor { stop, handle }
    }

    fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("monitor panicked")
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// 1. Many writes of mixed types with TTLs on three nodes with a small log-max-file-size:
///    every node snapshots, the log file stays bounded, and every node's data equals the
///    reference model.
#[test]
fn snapshots_bound_the_log_and_keep_all_data() {
    let started = Instant::now();
    let cluster = Cluster::start(3, &log_max_configs());
    let ids = cluster.ids();
    let mut work = Workload::new(24);
    let monitor = FileSizeMonitor::start(cluster.addrs(&ids));

    let created = work.create(keys_for_bound_test());
    write_now(&cluster, &created);
    let updates = work.update(2);
    write_now(&cluster, &updates);
    let written = (count_cmds(&created) + count_cmds(&updates)) as i64;

    let max_sizes = monitor.finish();
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    wait_snapshots_created(&cluster, &ids, CONVERGE_TIMEOUT);
    eprintln!("largest raft_file_size seen: {max_sizes:?} (log-max-file-size {LOG_MAX})");
    // The log grows while a snapshot is written, and a snapshot takes longer the more keys
    // there are: the bound scales with the data set (5 x at the default 20,000 keys).
    let factor = 5 * (keys_for_bound_test() / 20_000).max(1) as i64;
    for (addr, max) in &max_sizes {
        assert!(
            *max <= factor * LOG_MAX as i64,
            "{addr}: raft_file_size reached {max}, more than {factor} x log-max-file-size \
             ({LOG_MAX})"
        );
    }
    // Once the writes stop, every log ends up below the limit.
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        ids.iter().all(|&id| {
            cluster
                .info(id)
                .is_some_and(|i| num(&i, "raft_file_size") <= LOG_MAX as i64)
        })
    });
    assert!(
        ok,
        "logs stay above {LOG_MAX} bytes;{}",
        cluster.describe(&ids)
    );

    for &id in &ids {
        let info = cluster.must_info(id);
        let commit = num(&info, "raft_commit_index");
        assert!(
            commit >= written,
            "node {id}: commit {commit} < {written} writes"
        );
        assert!(
            num(&info, "raft_snapshots_created") > 0,
            "node {id};{}",
            cluster.describe(&ids)
        );
        let snap_idx = num(&info, "raft_snapshot_last_idx");
        assert!(
            snap_idx > 0 && snap_idx <= commit,
            "node {id}: snapshot index {snap_idx}, commit {commit}"
        );
        assert!(
            num(&info, "raft_snapshot_last_term") > 0,
            "node {id}: {info:?}"
        );
        assert!(num(&info, "raft_snapshot_size") > 0, "node {id}: {info:?}");
        assert_eq!(field(&info, "raft_snapshot_in_progress"), "no", "node {id}");
        // The log holds only what follows the snapshot.
        let entries = num(&info, "raft_log_entries");
        assert!(
            entries < written / 4,
            "node {id}: {entries} log entries after {written} writes: not compacted"
        );
        let path = snapshot_path(cluster.node(id));
        assert!(
            file_len(&path).is_some_and(|l| l > 0),
            "node {id}: no snapshot file {}",
            path.display()
        );
        assert!(
            !with_suffix(&path, ".tmp").exists(),
            "node {id}: leftover .tmp"
        );
    }
    eprintln!("{}", cluster.describe(&ids));
    cluster.check_data(&ids, &work);
    eprintln!(
        "snapshots_bound_the_log_and_keep_all_data: {} keys, {written} commands, {:?}",
        work.model.len(),
        started.elapsed()
    );
}

/// 2. A node that joins after the log was compacted receives the snapshot, ends with the
///    same data, becomes a voter and follows later writes. A few keys of 1.5 MB make
///    snapshot records larger than a transfer chunk.
#[test]
fn new_node_catches_up_by_snapshot() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &log_max_configs());
    let mut work = Workload::new(24);
    let mut seqs = work.create(8_000);
    seqs.extend(work.create_big(4, 1_500_000));
    write_now(&cluster, &seqs);
    let seqs = work.update(3);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    wait_snapshots_created(&cluster, &[leader], CONVERGE_TIMEOUT);
    let leader_info = cluster.must_info(leader);
    assert!(
        num(&leader_info, "raft_snapshot_last_idx") > 1,
        "the leader's log is not compacted: {leader_info:?}"
    );

    cluster.join_new(4);
    let ids = cluster.ids();
    cluster.wait_voters(&ids, CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let info = cluster.must_info(4);
    assert!(
        num(&info, "raft_snapshots_received") >= 1,
        "node 4 did not receive a snapshot;{}",
        cluster.describe(&ids)
    );
    assert!(num(&info, "raft_snapshot_last_idx") > 0, "{info:?}");
    assert_eq!(field(&info, "raft_is_voting"), "yes");
    cluster.check_data(&ids, &work);
    cluster.check_same_ttls(&ids, &work);

    // Replication continues after the snapshot.
    let seqs = work.create(1_000);
    write_now(&cluster, &seqs);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    cluster.check_data(&ids, &work);
    eprintln!("new_node_catches_up_by_snapshot: {:?}", started.elapsed());
}

/// 3. A follower frozen (SIGSTOP) while many writes go on, long enough for the others to
///    compact past its log, gets a snapshot when it resumes and ends with the same data.
///    Then the same with the follower killed (-9) and restarted.
#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &log_max_configs());
    let ids = cluster.ids();
    let mut work = Workload::new(24);
    let seqs = work.create(3_000);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();
    let received_before = num(&cluster.must_info(follower), "raft_snapshots_received");

    // Freeze the follower in the middle of 50,000 writes.
    // Updates of the keys written so far, and new keys (disjoint: any order is fine).
    let mut seqs = work.update(3);
    seqs.extend(work.create(20_100));
    let total = count_cmds(&seqs) as u64;
    assert!(total >= 50_000, "only {total} writes");
    let (progress, writer) = write_in_background(cluster.addrs(&others), seqs);
    assert!(
        wait_until(WRITE_TIMEOUT, || progress.done.load(Ordering::Relaxed)
            >= total / 5),
        "writes make no progress;{}",
        cluster.describe(&ids)
    );
    cluster.node(follower).sigstop();
    // The follower's log cannot go beyond what the others hold now.
    let frozen_at = others
        .iter()
        .map(|&id| num(&cluster.must_info(id), "raft_current_index"))
        .max()
        .unwrap();
    writer.join().expect("writer failed");

    // The others compact past the follower's log.
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        others.iter().all(|&id| {
            cluster
                .info(id)
                .is_some_and(|i| num(&i, "raft_snapshot_last_idx") > frozen_at)
        })
    });
    assert!(
        ok,
        "the others did not compact past index {frozen_at};{}",
        cluster.describe(&others)
    );

    cluster.node(follower).sigcont();
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let info = cluster.must_info(follower);
    assert!(
        num(&info, "raft_snapshots_received") > received_before,
        "follower {follower} caught up without a snapshot (frozen at {frozen_at});{}",
        cluster.describe(&ids)
    );
    assert!(num(&info, "raft_snapshot_last_idx") > frozen_at, "{info:?}");
    assert_eq!(field(&info, "raft_role"), "follower");
    cluster.check_data(&ids, &work);

    // Now the same follower killed (-9) and kept down while the others compact past it:
    // the restarted process loads its own files (holding the snapshot it received), then
    // receives the leader's newer snapshot.
    cluster.node_mut(follower).kill9();
    let down_at = others
        .iter()
        .map(|&id| num(&cluster.must_info(id), "raft_current_index"))
        .max()
        .unwrap();
    let mut seqs = work.update(4);
    seqs.extend(work.create(4_000));
    write_seqs(&cluster.addrs(&others), &seqs, &Progress::default());
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        others.iter().all(|&id| {
            cluster
                .info(id)
                .is_some_and(|i| num(&i, "raft_snapshot_last_idx") > down_at)
        })
    });
    assert!(
        ok,
        "the others did not compact past index {down_at};{}",
        cluster.describe(&others)
    );
    cluster.node_mut(follower).restart();
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let info = cluster.must_info(follower);
    assert!(
        num(&info, "raft_snapshots_received") >= 1,
        "restarted follower {follower} caught up without a snapshot (down at {down_at});{}",
        cluster.describe(&ids)
    );
    assert!(num(&info, "raft_snapshot_last_idx") > down_at, "{info:?}");
    cluster.check_data(&ids, &work);
    cluster.check_same_ttls(&ids, &work);
    eprintln!(
        "lagging_follower_catches_up_by_snapshot: frozen at {frozen_at}, down at {down_at}, {:?}",
        started.elapsed()
    );
}

/// 3b. With a tiny `log-max-cache-size` and no snapshots (large log-max-file-size), a
///     follower frozen during many writes catches up from the leader's log: the entries
///     it misses left the leader's memory long ago, so they are read back from the log
///     file. The cache stays within its bound the whole time (entries not applied yet
///     may stay up to 4x the limit, applied ones not past it), no snapshot is taken or
///     sent, and every node ends with the same data.
#[test]
fn lagging_follower_catches_up_from_the_log_with_a_small_cache() {
    const CACHE_MAX: i64 = 64_000;
    let started = Instant::now();
    let cache_max = CACHE_MAX.to_string();
    let cluster = Cluster::start(
        3,
        &[
            ("log-max-cache-size", &cache_max),
            ("log-max-file-size", "1000000000"),
        ],
    );
    let ids = cluster.ids();
    let mut work = Workload::new(24);
    let seqs = work.create(2_000);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();

    // Sample the cache of every running node while the writes go on.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let addrs = cluster.addrs(&ids);
        thread::spawn(move || {
            let mut max_cache = 0i64;
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for addr in &addrs {
                    if let Some(info) = try_info(addr) {
                        max_cache = max_cache.max(num(&info, "raft_cache_memory_size"));
                        samples += 1;
                    }
                }
                sleep(Duration::from_millis(20));
            }
            (max_cache, samples)
        })
    };

    let mut seqs = work.update(2);
    seqs.extend(work.create(6_000));
    let total = count_cmds(&seqs) as u64;
    let (progress, writer) = write_in_background(cluster.addrs(&others), seqs);
    assert!(
        wait_until(WRITE_TIMEOUT, || progress.done.load(Ordering::Relaxed)
            >= total / 10),
        "writes make no progress;{}",
        cluster.describe(&ids)
    );
    cluster.node(follower).sigstop();
    let frozen_at = others
        .iter()
        .map(|&id| num(&cluster.must_info(id), "raft_current_index"))
        .max()
        .unwrap();
    writer.join().expect("writer failed");
    let leader_info = cluster.must_info(leader);
    let behind = num(&leader_info, "raft_current_index") - frozen_at;
    let cache_entries = num(&leader_info, "raft_cache_entries");
    assert!(
        cache_entries < behind / 4,
        "the leader caches {cache_entries} entries; the follower misses {behind}: \
         the catch-up would not need the log file"
    );
    assert!(
        num(&leader_info, "raft_log_entries") > behind,
        "{leader_info:?}"
    );

    cluster.node(follower).sigcont();
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let (max_cache, samples) = sampler.join().expect("sampler panicked");
    assert!(samples > 0);
    // Unapplied entries may stay past the limit, up to 4x it (core::storage).
    assert!(
        max_cache <= 4 * CACHE_MAX,
        "raft_cache_memory_size reached {max_cache}, above 4x log-max-cache-size {CACHE_MAX}"
    );
    for &id in &ids {
        let info = cluster.must_info(id);
        // Everything is applied now: the limit itself holds.
        let cached = num(&info, "raft_cache_memory_size");
        assert!(
            cached <= CACHE_MAX,
            "node {id} caches {cached} bytes of applied entries, above {CACHE_MAX}"
        );
        assert_eq!(
            num(&info, "raft_snapshots_received"),
            0,
            "node {id}: {info:?}"
        );
        assert_eq!(
            num(&info, "raft_snapshots_created"),
            0,
            "node {id}: {info:?}"
        );
        assert!(
            num(&info, "raft_cache_memory_size") <= CACHE_MAX,
            "node {id}: {info:?}"
        );
    }
    cluster.check_data(&ids, &work);
    eprintln!(
        "lagging_follower_catches_up_from_the_log_with_a_small_cache: frozen at {frozen_at}, \
         {behind} entries behind, leader cache {cache_entries} entries, largest cache seen \
         {max_cache} bytes, {:?}",
        started.elapsed()
    );
}

/// 3b'. The leader's log file is damaged (bytes flipped) where the entries a frozen
///      follower misses were written. Those entries left the tiny cache, so the catch-up
///      reads them back from the file: the checksum catches the damage and the leader
///      stops with a clear message instead of sending wrong entries.
#[test]
fn a_corrupt_entry_read_back_stops_the_leader() {
    let mut cluster = Cluster::start(
        3,
        &[
            ("log-max-cache-size", "1000"),
            ("log-max-file-size", "1000000000"),
        ],
    );
    let ids = cluster.ids();
    let mut work = Workload::new(24);
    let seqs = work.create(200);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();
    let path = cluster.node(leader).raft_log_path();
    // The log's own end (INFO), not the file's length: the file is extended ahead of the
    // writes with zeros.
    let log_end = |id: u64| num(&cluster.must_info(id), "raft_file_size") as u64;
    let size_at_freeze = log_end(leader);
    cluster.node(follower).sigstop();
    let seqs = work.create(2_000);
    write_seqs(&cluster.addrs(&others), &seqs, &Progress::default());
    // Flip one byte every 512 bytes of what was written while the follower was frozen
    // (the last 4 KiB stay intact, so the leader's own tail recovery is not involved).
    let size = log_end(leader);
    assert!(size <= file_len(&path).unwrap());
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut at = size_at_freeze + 600;
        while at + 4096 < size {
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, at).unwrap();
            file.write_all_at(&[byte[0] ^ 0x20], at).unwrap();
            at += 512;
        }
    }
    cluster.node(follower).sigcont();
    let status = cluster.node_mut(leader).wait_exit(CONVERGE_TIMEOUT);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the leader did not stop: {status:?};{}",
        cluster.describe(&ids)
    );
    let log = cluster.node(leader).log();
    assert!(
        log.contains("raft: FATAL: log file") && log.contains("corrupt at byte"),
        "no clear message in the leader's log:\n{log}"
    );
    assert!(log.contains("read back from disk"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("FATAL"))
        .unwrap_or_default();
    eprintln!("the leader stopped with: {line}");
}

/// 3c. The snapshot stream leaves from the sender's own address (`raft.addr`'s host), like
///     raft traffic, so firewall rules between node addresses cut it too. Nodes on
///     127.0.0.21 and 127.0.0.22: the leader's log names the local address it sent from.
#[test]
fn snapshot_transfer_leaves_from_the_node_address() {
    let start = |id: u64, host: &str| {
        let port = free_port(host);
        Server::start(
            ServerOpts::new()
                .host(host)
                .port(port)
                .raft("id", &id.to_string())
                .raft("addr", &format!("{host}:{port}")),
        )
    };
    let leader = start(1, "127.0.0.21");
    let reply: String = leader.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(reply.starts_with("OK "), "{reply}");
    leader.expect_serving(FORM_TIMEOUT);
    let mut con = leader.client();
    for i in 0..100 {
        let _: () = exec(&mut con, &["SET", &format!("k{i}"), "v"]).unwrap();
    }
    let reply: String = exec(&mut con, &["RAFT.DEBUG", "COMPACT"]).unwrap();
    assert_eq!(reply, "OK");

    let joiner = start(2, "127.0.0.22");
    let mut con = joiner.client_with_timeout(Duration::from_secs(120));
    let reply: String = exec(&mut con, &["RAFT.CLUSTER", "JOIN", &leader.addr()])
        .unwrap_or_else(|e| panic!("JOIN: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    let needle = format!("snapshot sent to {} from 127.0.0.21:", joiner.addr());
    assert!(
        leader.wait_for_log(&needle, CONVERGE_TIMEOUT),
        "no '{needle}' in the leader's log:\n{}",
        leader.log()
    );
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        joiner
            .cmd::<i64>(&["RAFT.DEBUG", "EXEC", "DBSIZE"])
            .is_ok_and(|n| n == 100)
    });
    assert!(ok, "the joiner did not load the snapshot");
}

/// 4. Every node killed (-9) and restarted on its directory comes back from its snapshot
///    plus the log after it, with all data; a leader is elected and writes work.
#[test]
fn all_nodes_restart_from_snapshot_and_log() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &log_max_configs());
    let ids = cluster.ids();
    let mut work = Workload::new(24);
    let seqs = work.create(8_000);
    write_now(&cluster, &seqs);
    let seqs = work.update(3);
    write_now(&cluster, &seqs);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    wait_snapshots_created(&cluster, &ids, CONVERGE_TIMEOUT);
    // Entries after the snapshots, so a restart needs both the snapshot and the log.
    let seqs = work.create(300);
    write_now(&cluster, &seqs);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);

    let mut before = BTreeMap::new();
    for &id in &ids {
        let info = cluster.must_info(id);
        let snap = num(&info, "raft_snapshot_last_idx");
        let applied = num(&info, "raft_last_applied_index");
        assert!(
            snap > 0 && applied > snap && num(&info, "raft_log_entries") > 0,
            "node {id} has no snapshot + log tail;{}",
            cluster.describe(&ids)
        );
        before.insert(id, (snap, applied));
    }
    for &id in &ids {
        cluster.node_mut(id).kill9();
    }
    for &id in &ids {
        cluster.node_mut(id).restart();
    }
    let leader = cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    for &id in &ids {
        let info = cluster.must_info(id);
        let (snap, applied) = before[&id];
        assert!(
            num(&info, "raft_snapshot_last_idx") >= snap,
            "node {id}: snapshot index {} after restart, {snap} before",
            num(&info, "raft_snapshot_last_idx")
        );
        assert!(
            num(&info, "raft_last_applied_index") >= applied,
            "node {id}: applied {} after restart, {applied} before",
            num(&info, "raft_last_applied_index")
        );
    }
    cluster.check_data(&ids, &work);

    // The cluster accepts writes.
    let seqs = work.create(500);
    write_now(&cluster, &seqs);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    cluster.check_data(&ids, &work);
    eprintln!(
        "all_nodes_restart_from_snapshot_and_log: leader {leader} after restart, {:?}",
        started.elapsed()
    );
}

/// 5a. A follower killed (-9) while its snapshot child writes `.snapshot.tmp` restarts from
///     its previous snapshot + log: the partial file is discarded, nothing is lost, and the
///     cluster stays healthy. Snapshots only on demand here (large log-max-file-size), so
///     the snapshot index after the restart is exactly the one before the kill.
#[test]
fn kill9_while_snapshot_is_written() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &[("log-max-file-size", "100000000")]);
    let ids = cluster.ids();
    let mut work = Workload::new(100);
    let seqs = work.create(12_000);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();
    cluster.compact(follower);
    let info = cluster.must_info(follower);
    let snap_before = num(&info, "raft_snapshot_last_idx");
    assert!(snap_before > 0, "COMPACT made no snapshot: {info:?}");
    let snapshot = snapshot_path(cluster.node(follower));
    let tmp = with_suffix(&snapshot, ".tmp");

    // Kill the follower while the child writes the next snapshot. Retried if the snapshot
    // completes before the test sees its temporary file.
    let mut killed = false;
    for attempt in 0..5 {
        let seqs = work.create(200);
        write_now(&cluster, &seqs);
        cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
        let addr = cluster.node(follower).addr();
        let compact = thread::spawn(move || {
            let mut con = try_connect(&addr, Duration::from_secs(120)).expect("connect");
            exec::<String>(&mut con, &["RAFT.DEBUG", "COMPACT"]).map_err(|e| err_text(&e))
        });
        let seen = wait_until_every(Duration::from_secs(30), Duration::from_millis(1), || {
            tmp.exists() || compact.is_finished()
        });
        if seen && tmp.exists() {
            cluster.node_mut(follower).kill9();
            killed = true;
            let reply = compact.join().unwrap();
            assert!(
                reply.is_err(),
                "COMPACT answered {reply:?} from a killed node"
            );
            eprintln!(
                "killed node {follower} during snapshot (attempt {attempt}), .tmp {:?} bytes",
                file_len(&tmp)
            );
            break;
        }
        let reply = compact.join().unwrap();
        assert_eq!(reply, Ok("OK".to_string()), "COMPACT");
    }
    assert!(killed, "never saw the snapshot being written in 5 attempts");
    assert!(
        snapshot.exists(),
        "the previous snapshot must still be in place"
    );

    // The others go on without it.
    let seqs = work.create(1_000);
    {
        let progress = Progress::default();
        write_seqs(&cluster.addrs(&others), &seqs, &progress);
    }

    cluster.node_mut(follower).restart();
    cluster.wait_voters(&ids, CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    assert!(
        !tmp.exists(),
        "{} still exists after the restart",
        tmp.display()
    );
    let info = cluster.must_info(follower);
    assert_eq!(
        num(&info, "raft_snapshot_last_idx"),
        snap_before,
        "after the restart the node must use its last complete snapshot;{}",
        cluster.describe(&ids)
    );
    assert_eq!(field(&info, "raft_snapshot_in_progress"), "no");
    cluster.check_data(&ids, &work);

    // A new snapshot works after the restart.
    cluster.compact(follower);
    let info = cluster.must_info(follower);
    assert!(
        num(&info, "raft_snapshot_last_idx") > snap_before,
        "{info:?}"
    );
    assert_eq!(num(&info, "raft_snapshots_created"), 1, "{info:?}");
    assert!(!tmp.exists());
    eprintln!("kill9_while_snapshot_is_written: {:?}", started.elapsed());
}

/// 5b. A joining node killed (-9) while the leader streams the snapshot to it in 4 KiB
///     chunks is restarted on its directory: the partial transfer is discarded and it
///     catches up (snapshot received again), becomes a voter, holds the same data.
#[test]
fn kill9_joining_node_during_snapshot_transfer() {
    let started = Instant::now();
    let mut configs = log_max_configs();
    configs.push(("snapshot-req-max-size", "4096"));
    configs.push(("snapshot-req-max-count", "2"));
    let mut cluster = Cluster::start(3, &configs);
    let mut work = Workload::new(100);
    let seqs = work.create(10_000);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    wait_snapshots_created(&cluster, &[leader], CONVERGE_TIMEOUT);
    let snap_size = num(&cluster.must_info(leader), "raft_snapshot_size");
    assert!(
        snap_size > 400 * 4096,
        "snapshot of {snap_size} bytes is too small"
    );

    cluster.join_new(4);
    let snapshot = snapshot_path(cluster.node(4));
    let incoming = with_suffix(&snapshot, ".incoming");
    // Kill it part-way: a sizeable part of the file arrived, not all of it.
    let transferring = wait_until_every(CONVERGE_TIMEOUT, Duration::from_millis(1), || {
        file_len(&incoming).is_some_and(|l| l >= 256 * 1024)
    });
    assert!(
        transferring,
        "no snapshot transfer to node 4 seen;{}",
        cluster.describe(&cluster.ids())
    );
    cluster.node_mut(4).kill9();
    let partial = file_len(&incoming);
    assert!(
        !snapshot.exists() && received_files(&snapshot).is_empty(),
        "the transfer completed before the kill (partial {partial:?} of {snap_size} bytes)"
    );
    eprintln!("killed node 4 with {partial:?} of {snap_size} snapshot bytes received");
    // Received files whose MsgSnapshot died with the process (one of an older build's
    // name): a restart removes them, and none is ever published.
    for name in [".received-999999-99", ".received"] {
        std::fs::write(with_suffix(&snapshot, name), b"not a snapshot").unwrap();
    }

    cluster.node_mut(4).restart();
    let ids = cluster.ids();
    cluster.wait_voters(&ids, CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let info = cluster.must_info(4);
    assert!(
        num(&info, "raft_snapshots_received") >= 1,
        "{}",
        cluster.describe(&ids)
    );
    assert!(!incoming.exists(), "partial transfer left in place");
    assert!(snapshot.exists());
    assert_eq!(
        received_files(&snapshot),
        Vec::<PathBuf>::new(),
        "received files left in place after the install"
    );
    cluster.check_data(&[4], &work);

    let seqs = work.create(500);
    write_now(&cluster, &seqs);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    cluster.check_data(&ids, &work);
    eprintln!(
        "kill9_joining_node_during_snapshot_transfer: {:?}",
        started.elapsed()
    );
}

/// 5c. The snapshot transfer to a joining node is interrupted on the leader's side (the
///     node is frozen longer than the leader waits for a chunk reply) while the node stays
///     alive: once it resumes, the leader sends the snapshot again and the node catches up,
///     also when the cluster is idle (no new snapshot that would change the transfer).
#[test]
fn interrupted_snapshot_transfer_is_retried() {
    let started = Instant::now();
    let mut configs = log_max_configs();
    configs.push(("snapshot-req-max-size", "4096"));
    configs.push(("snapshot-req-max-count", "2"));
    // The leader waits 10 x response-timeout for a chunk reply.
    configs.push(("response-timeout", "200"));
    let mut cluster = Cluster::start(3, &configs);
    let mut work = Workload::new(100);
    let seqs = work.create(10_000);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    wait_snapshots_created(&cluster, &[leader], CONVERGE_TIMEOUT);

    cluster.join_new(4);
    let snapshot = snapshot_path(cluster.node(4));
    let incoming = with_suffix(&snapshot, ".incoming");
    let transferring = wait_until_every(CONVERGE_TIMEOUT, Duration::from_millis(1), || {
        file_len(&incoming).is_some_and(|l| l >= 256 * 1024)
    });
    assert!(transferring, "no snapshot transfer to node 4 seen");
    cluster.node(4).sigstop();
    let failed = cluster
        .node(leader)
        .wait_for_log("snapshot transfer to", CONVERGE_TIMEOUT);
    cluster.node(4).sigcont();
    assert!(
        failed,
        "the leader never gave up the transfer to the frozen node"
    );
    eprintln!(
        "node 4 frozen with {:?} bytes received",
        file_len(&incoming)
    );

    let ids = cluster.ids();
    cluster.wait_voters(&ids, CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    assert!(num(&cluster.must_info(4), "raft_snapshots_received") >= 1);
    cluster.check_data(&[4], &work);
    eprintln!(
        "interrupted_snapshot_transfer_is_retried: {:?}",
        started.elapsed()
    );
}

/// 4b. A crash between publishing a snapshot received from the leader and rewriting the
///     log leaves a snapshot newer than the whole log. Simulated by copying the leader's
///     snapshot into a stopped follower's directory: the follower starts from that
///     snapshot, discards the older log, catches up and holds the same data.
#[test]
fn restart_with_snapshot_newer_than_the_log() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &log_max_configs());
    let ids = cluster.ids();
    let mut work = Workload::new(24);
    let seqs = work.create(3_000);
    write_now(&cluster, &seqs);
    let leader = cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();
    let last = num(&cluster.must_info(follower), "raft_current_index");
    cluster.node_mut(follower).kill9();

    let seqs = work.create(4_000);
    write_seqs(&cluster.addrs(&others), &seqs, &Progress::default());
    let leader = cluster.wait_caught_up(&others, CONVERGE_TIMEOUT);
    assert!(
        wait_until(CONVERGE_TIMEOUT, || cluster
            .info(leader)
            .is_some_and(|i| num(&i, "raft_snapshot_last_idx") > last)),
        "the leader did not compact past {last}"
    );
    let source = snapshot_path(cluster.node(leader));
    let target = snapshot_path(cluster.node(follower));
    // Copy then rename, as the module publishes a received snapshot.
    let staged = with_suffix(&target, ".staged");
    std::fs::copy(&source, &staged).expect("copy the leader's snapshot");
    std::fs::rename(&staged, &target).expect("rename");

    cluster.node_mut(follower).restart();
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let info = cluster.must_info(follower);
    assert!(num(&info, "raft_snapshot_last_idx") > last, "{info:?}");
    cluster.check_data(&ids, &work);
    let seqs = work.create(500);
    write_now(&cluster, &seqs);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    cluster.check_data(&ids, &work);
    eprintln!(
        "restart_with_snapshot_newer_than_the_log: {:?}",
        started.elapsed()
    );
}
