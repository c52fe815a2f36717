//! Clients of a chaos run: each is a thread with its own connection that routes to the
//! leader by following `MOVED`, runs list-append (RPUSH / LRANGE) and register
//! (SET / GET / INCR) operations and records each one in the `History`.
//!
//! Outcome rules (see docs/CHAOS.md):
//! - a reply → `ok`;
//! - `MOVED` is followed (up to `MAX_HOPS` hops) inside the same operation: it is answered
//!   before anything is proposed, so the earlier hops had no effect;
//! - `CLUSTERDOWN`, `NOCLUSTER`, `LOADING`, `BUSY`, a connection that could not be opened →
//!   `fail` (the request never entered a log);
//! - `TIMEOUT ...`, a lost connection, a client-side timeout, any other error → `unknown`
//!   for writes. Reads have no effect, so every read error is a `fail`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::{self, sleep, JoinHandle};
use std::time::Duration;

use redis::{Connection, RedisError, Value};

use super::history::{
    Call, History, Op, Outcome, Reply, Rng, Via, INCR_SCRIPT, LIBRARY, RPUSH_SCRIPT, SCRIPT_SHAS,
    VALUE_STRIDE,
};

/// Redirect / reconnect hops one operation may take before it gives up (as `fail`).
const MAX_HOPS: usize = 4;
/// Connecting to a node must not take longer than this.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The addresses (`host:port`) of the nodes the clients may talk to; the nemesis updates it
/// when membership changes.
#[derive(Default)]
pub struct Topology {
    addrs: RwLock<Vec<String>>,
}

impl Topology {
    pub fn set(&self, addrs: Vec<String>) {
        *self.addrs.write().unwrap() = addrs;
    }
    pub fn get(&self) -> Vec<String> {
        self.addrs.read().unwrap().clone()
    }
}

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Client-side timeout of one request; expiry makes a write `unknown`.
    pub op_timeout: Duration,
    /// Upper bound of the random pause between two operations of one client.
    pub think_max: Duration,
    /// Register keys live for this many register operations (all clients together), then
    /// the workload moves to fresh keys: keeps each key's history small enough for the
    /// linearizability search.
    pub register_ops_per_generation: u64,
    /// Register keys used at the same time.
    pub register_keys: u64,
    /// Same for lists: appends per generation and keys at the same time.
    pub appends_per_generation: u64,
    pub list_keys: u64,
    /// Blocking consumers (BLPOP workers), besides the clients; and the queues they use.
    pub consumers: usize,
    pub queue_keys: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 6,
            op_timeout: Duration::from_millis(2000),
            think_max: Duration::from_millis(4),
            register_ops_per_generation: 240,
            register_keys: 3,
            appends_per_generation: 600,
            list_keys: 3,
            consumers: 2,
            queue_keys: 2,
        }
    }
}

/// State shared by the clients.
pub struct Shared {
    pub history: History,
    pub topology: Arc<Topology>,
    pub stop: AtomicBool,
    next_value: AtomicU64,
    register_ops: AtomicU64,
    appends: AtomicU64,
}

impl Shared {
    pub fn new(history: History, topology: Arc<Topology>) -> Arc<Shared> {
        Arc::new(Shared {
            history,
            topology,
            stop: AtomicBool::new(false),
            next_value: AtomicU64::new(1),
            register_ops: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        })
    }

    fn unique(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }
}

/// Starts `config.clients` client threads; they run until `shared.stop` is set.
pub fn spawn_clients(
    config: &WorkloadConfig,
    seed: u64,
    shared: &Arc<Shared>,
) -> Vec<JoinHandle<()>> {
    spawn_threads(
        "chaos-client",
        config.clients,
        config,
        seed,
        shared,
        run_client,
    )
}

/// Starts `count` threads running `body(n, seed, config, shared)`.
fn spawn_threads(
    name: &str,
    count: usize,
    config: &WorkloadConfig,
    seed: u64,
    shared: &Arc<Shared>,
    body: fn(u64, u64, &WorkloadConfig, &Shared),
) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|n| {
            let shared = Arc::clone(shared);
            let config = config.clone();
            thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || body(n as u64, seed, &config, &shared))
                .expect("spawn a workload thread")
        })
        .collect()
}

fn run_client(n: u64, seed: u64, config: &WorkloadConfig, shared: &Shared) {
    let mut rng = Rng::fork(seed, 1000 + n);
    let mut router = Router::new(Rng::fork(seed, 2000 + n), config.op_timeout);
    let mut process = n;
    while !shared.stop.load(Ordering::Relaxed) {
        let call = choose_call(&mut rng, config, shared);
        let next_process = process + config.clients as u64;
        run_one(shared, &mut process, next_process, &mut rng, call, |call| {
            router.run(call, &shared.topology)
        });
        let think = config.think_max.as_micros() as u64;
        if think > 0 {
            sleep(Duration::from_micros(rng.below(think + 1)));
        }
    }
}

/// Runs one operation with `run`, records it under `process`, and backs off after a
/// failure. After an unknown outcome the operation may still be in flight: this
/// "process" is crashed and the thread continues as `next_process` (Jepsen's convention).
fn run_one(
    shared: &Shared,
    process: &mut u64,
    next_process: u64,
    rng: &mut Rng,
    call: Call,
    run: impl FnOnce(&Call) -> CallResult,
) {
    let invoke_ns = shared.history.now_ns();
    let result = run(&call);
    let complete_ns = shared.history.now_ns();
    let outcome = result.outcome;
    shared.history.record(Op {
        id: 0,
        process: *process,
        call,
        outcome,
        reply: result.reply,
        error: result.error,
        node: result.node,
        invoke_ns,
        complete_ns,
    });
    match outcome {
        Outcome::Ok => {}
        Outcome::Unknown => {
            *process = next_process;
            sleep(Duration::from_millis(rng.range(10, 60)));
        }
        Outcome::Fail => sleep(Duration::from_millis(rng.range(10, 60))),
    }
}

/// A third of the writes that have a script or library form use it.
fn choose_via(rng: &mut Rng) -> Via {
    match rng.below(6) {
        0 => Via::EvalSha,
        1 => Via::Function,
        _ => Via::Command,
    }
}

fn choose_call(rng: &mut Rng, config: &WorkloadConfig, shared: &Shared) -> Call {
    if config.consumers > 0 && rng.chance(0.12) {
        // Queue workload: the consumers pop what this pushes.
        return Call::Enqueue {
            key: format!("queue-{}", rng.below(config.queue_keys)),
            value: shared.unique(),
        };
    }
    if rng.chance(0.5) {
        // List-append workload.
        let generation = shared.appends.load(Ordering::Relaxed) / config.appends_per_generation;
        let key = format!("list-{generation}-{}", rng.below(config.list_keys));
        if rng.chance(0.6) {
            shared.appends.fetch_add(1, Ordering::Relaxed);
            Call::Append {
                key,
                value: shared.unique(),
                via: choose_via(rng),
            }
        } else {
            Call::Read { key }
        }
    } else {
        // Register workload.
        let generation = shared.register_ops.fetch_add(1, Ordering::Relaxed)
            / config.register_ops_per_generation;
        let key = format!("reg-{generation}-{}", rng.below(config.register_keys));
        match rng.below(10) {
            0..=2 => Call::Set {
                key,
                value: shared.unique() as i64 * VALUE_STRIDE,
            },
            3..=6 => Call::Get { key },
            _ => Call::Incr {
                key,
                via: choose_via(rng),
            },
        }
    }
}

/// Loads the scripts and the library of the `EvalSha` / `Function` writes through the
/// leader (following `MOVED`), before the clients start.
pub fn load_scripts(topology: &Topology, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut router = Router::new(Rng::new(7), Duration::from_secs(5));
    let mut load = |args: &[&str]| -> Result<Value, String> {
        loop {
            let target = router.target(topology).ok_or("no node")?;
            let attempt = router.connection(&target).and_then(|con| {
                let mut cmd = redis::cmd(args[0]);
                for a in &args[1..] {
                    cmd.arg(*a);
                }
                cmd.query::<Value>(con).map_err(|e| {
                    if let Some((leader, _)) = e.redirect_node() {
                        return format!("MOVED {leader}");
                    }
                    error_text(&e)
                })
            });
            match attempt {
                Ok(value) => return Ok(value),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    router.con = None;
                    router.leader_guess = e.strip_prefix("MOVED ").map(str::to_string);
                    sleep(Duration::from_millis(50));
                }
            }
        }
    };
    let sha = |value: Value| match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(format!("SCRIPT LOAD answered {other:?}")),
    };
    let rpush_sha = sha(load(&["SCRIPT", "LOAD", RPUSH_SCRIPT])?)?;
    let incr_sha = sha(load(&["SCRIPT", "LOAD", INCR_SCRIPT])?)?;
    load(&["FUNCTION", "LOAD", "REPLACE", LIBRARY])?;
    let _ = SCRIPT_SHAS.set((rpush_sha, incr_sha));
    Ok(())
}

/// Starts `config.consumers` blocking consumers; they run until `shared.stop` is set.
pub fn spawn_consumers(
    config: &WorkloadConfig,
    seed: u64,
    shared: &Arc<Shared>,
) -> Vec<JoinHandle<()>> {
    spawn_threads(
        "chaos-consumer",
        config.consumers,
        config,
        seed,
        shared,
        run_consumer,
    )
}

/// A BLPOP worker on the shared queues. One attempt in five it is "killed" instead: it
/// sends `BLPOP trap-<n>-<i> 0` on an empty key of its own, waits a moment, disconnects
/// without reading, and then pushes one value to that key: nobody waits there any more,
/// so the value must stay (Redis drops the wait of a client that disconnects).
fn run_consumer(n: u64, seed: u64, config: &WorkloadConfig, shared: &Shared) {
    let mut rng = Rng::fork(seed, 3000 + n);
    let mut router = Router::new(Rng::fork(seed, 4000 + n), config.op_timeout);
    // Process numbers of their own, far from the clients'.
    let mut process = 1_000_000 + n;
    let mut traps = 0u64;
    let mut after_trap = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let call = match after_trap.take() {
            Some(key) => Call::Enqueue {
                key,
                value: shared.unique(),
            },
            None if rng.chance(0.2) => {
                traps += 1;
                Call::Dequeue {
                    key: format!("trap-{n}-{traps}"),
                    abandoned: true,
                }
            }
            None => Call::Dequeue {
                key: format!("queue-{}", rng.below(config.queue_keys)),
                abandoned: false,
            },
        };
        let hold = Duration::from_millis(rng.range(20, 300));
        if let Call::Dequeue {
            abandoned: true,
            key,
        } = &call
        {
            after_trap = Some(key.clone());
        }
        let next_process = process + config.consumers as u64;
        run_one(
            shared,
            &mut process,
            next_process,
            &mut rng,
            call,
            |call| match call {
                Call::Dequeue {
                    abandoned: true, ..
                } => router.abandon(call, &shared.topology, hold),
                _ => router.run(call, &shared.topology),
            },
        );
    }
}

// ---------------------------------------------------------------------------------------
// Routing

/// What one operation came to.
pub struct CallResult {
    pub outcome: Outcome,
    pub reply: Option<Reply>,
    pub error: Option<String>,
    pub node: Option<String>,
}

/// One client's connection and its guess of the leader.
pub struct Router {
    rng: Rng,
    op_timeout: Duration,
    leader_guess: Option<String>,
    con: Option<(String, Connection)>,
}

impl Router {
    pub fn new(rng: Rng, op_timeout: Duration) -> Router {
        Router {
            rng,
            op_timeout,
            leader_guess: None,
            con: None,
        }
    }

    fn target(&mut self, topology: &Topology) -> Option<String> {
        if let Some(addr) = &self.leader_guess {
            return Some(addr.clone());
        }
        let addrs = topology.get();
        if addrs.is_empty() {
            return None;
        }
        let addr = self.rng.pick(&addrs).clone();
        self.leader_guess = Some(addr.clone());
        Some(addr)
    }

    fn connection(&mut self, addr: &str) -> Result<&mut Connection, String> {
        if self.con.as_ref().is_some_and(|(a, _)| a != addr) {
            self.con = None;
        }
        if self.con.is_none() {
            let client =
                redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
            let con = client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .map_err(|e| format!("connect: {e}"))?;
            con.set_read_timeout(Some(self.op_timeout))
                .map_err(|e| e.to_string())?;
            con.set_write_timeout(Some(self.op_timeout))
                .map_err(|e| e.to_string())?;
            self.con = Some((addr.to_string(), con));
        }
        Ok(&mut self.con.as_mut().unwrap().1)
    }

    /// Runs one operation, following redirects; see the module doc for the outcome rules.
    pub fn run(&mut self, call: &Call, topology: &Topology) -> CallResult {
        let mut args = call.args();
        let local_reads = !call.is_write() && mutant() == Some("local-reads");
        if local_reads {
            // Self-test: read one random node's local state, bypassing Raft.
            args.splice(0..0, ["RAFT.DEBUG".to_string(), "EXEC".to_string()]);
            self.leader_guess = None;
        }
        let mut last_error = String::from("no node to talk to");
        let mut node = None;
        for _ in 0..MAX_HOPS {
            let Some(addr) = self.target(topology) else {
                break;
            };
            if local_reads {
                self.leader_guess = None;
            }
            node = Some(addr.clone());
            let con = match self.connection(&addr) {
                Ok(con) => con,
                Err(e) => {
                    // Never sent: try another node.
                    last_error = e;
                    self.leader_guess = None;
                    continue;
                }
            };
            let mut cmd = redis::cmd(&args[0]);
            for a in &args[1..] {
                cmd.arg(a);
            }
            match cmd.query::<Value>(con) {
                Ok(value) => {
                    return match parse_reply(call, value) {
                        Ok(reply) => CallResult {
                            outcome: Outcome::Ok,
                            reply: Some(reply),
                            error: None,
                            node,
                        },
                        Err(e) => self.indefinite(call, format!("unexpected reply: {e}"), node),
                    };
                }
                Err(e) => {
                    let text = error_text(&e);
                    if e.code().is_none() {
                        // I/O error or client-side timeout after the request was written:
                        // the connection's state is unknown, drop it.
                        self.con = None;
                        self.leader_guess = None;
                        return self.indefinite(call, text, node);
                    }
                    if let Some((leader, _)) = e.redirect_node() {
                        self.leader_guess = Some(leader.to_string());
                        last_error = text;
                        continue;
                    }
                    match e.code().unwrap_or("") {
                        "NOCLUSTER" | "LOADING" => {
                            // This node cannot serve; another may.
                            self.leader_guess = None;
                            last_error = text;
                            continue;
                        }
                        "CLUSTERDOWN" | "BUSY" => {
                            self.leader_guess = None;
                            return CallResult {
                                outcome: Outcome::Fail,
                                reply: None,
                                error: Some(text),
                                node,
                            };
                        }
                        _ => return self.indefinite(call, text, node),
                    }
                }
            }
        }
        CallResult {
            outcome: Outcome::Fail,
            reply: None,
            error: Some(last_error),
            node,
        }
    }

    /// A consumer that goes away while blocked: sends the command on a connection of its
    /// own, reads for `hold`, and closes it. A reply read in time counts as usual; none is
    /// `unknown` (an attempt may have been in the log already).
    pub fn abandon(&mut self, call: &Call, topology: &Topology, hold: Duration) -> CallResult {
        use std::io::{Read, Write};
        let Some(addr) = self.target(topology) else {
            return CallResult {
                outcome: Outcome::Fail,
                reply: None,
                error: Some("no node to talk to".into()),
                node: None,
            };
        };
        let fail = |error: String, node: Option<String>| CallResult {
            outcome: Outcome::Fail,
            reply: None,
            error: Some(error),
            node,
        };
        let node = Some(addr.clone());
        let stream = addr
            .parse()
            .map_err(|e| format!("connect: {e}"))
            .and_then(|socket| {
                std::net::TcpStream::connect_timeout(&socket, CONNECT_TIMEOUT)
                    .map_err(|e| format!("connect: {e}"))
            });
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                self.leader_guess = None;
                return fail(e, node);
            }
        };
        let args = call.args();
        let mut request = format!("*{}\r\n", args.len());
        for arg in &args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        if let Err(e) = stream.write_all(request.as_bytes()) {
            return self.indefinite(call, format!("connection lost: {e}"), node);
        }
        let _ = stream.set_read_timeout(Some(hold));
        let mut buffer = vec![0u8; 512];
        let read = stream.read(&mut buffer).unwrap_or(0);
        drop(stream);
        let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
        if read == 0 {
            return self.indefinite(
                call,
                "client-side timeout (abandoned while blocked)".into(),
                node,
            );
        }
        if let Some(error) = text.strip_prefix('-') {
            let error = error.trim_end().to_string();
            if let Some(leader) = error.strip_prefix("MOVED 0 ") {
                self.leader_guess = Some(leader.to_string());
                return fail(error, node);
            }
            self.leader_guess = None;
            return match error.split_whitespace().next().unwrap_or("") {
                "CLUSTERDOWN" | "BUSY" | "NOCLUSTER" | "LOADING" => fail(error, node),
                _ => self.indefinite(call, error, node),
            };
        }
        let popped = if text.starts_with("*-1") {
            Ok(None)
        } else {
            // *2 $len key $len value: the value is the last line.
            text.trim_end()
                .rsplit("\r\n")
                .next()
                .and_then(|last| last.parse::<u64>().ok())
                .map(Some)
                .ok_or_else(|| format!("unexpected reply: {text:?}"))
        };
        match popped {
            Ok(value) => CallResult {
                outcome: Outcome::Ok,
                reply: Some(Reply::Popped(value)),
                error: None,
                node,
            },
            Err(e) => self.indefinite(call, e, node),
        }
    }

    /// An error after the request may have reached a leader: `unknown` for writes, `fail`
    /// for reads (which have no effect either way).
    fn indefinite(&mut self, call: &Call, error: String, node: Option<String>) -> CallResult {
        CallResult {
            outcome: if call.is_write() && !mutant_unknown_is_fail() {
                Outcome::Unknown
            } else {
                Outcome::Fail
            },
            reply: None,
            error: Some(error),
            node,
        }
    }
}

/// Self-tests of the checker, `CHAOS_MUTANT=<name>`: the clients misbehave on purpose, so
/// the run must report violations (a run that does not proves the checker blind).
/// - `unknown-is-fail`: writes of unknown outcome are recorded as failed; some of them do
///   take effect → `failed write took effect`.
/// - `local-reads`: reads run with `RAFT.DEBUG EXEC` on a random node (no Raft, no
///   leader) → stale reads, non-linearizable registers.
pub fn mutant() -> Option<&'static str> {
    static MUTANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MUTANT
        .get_or_init(|| std::env::var("CHAOS_MUTANT").ok().filter(|m| !m.is_empty()))
        .as_deref()
}

fn mutant_unknown_is_fail() -> bool {
    mutant() == Some("unknown-is-fail")
}

/// The error as the server sent it (`TIMEOUT not committed yet`), or the client error.
pub fn error_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

fn parse_reply(call: &Call, value: Value) -> Result<Reply, String> {
    match (call, value) {
        (Call::Append { .. } | Call::Incr { .. } | Call::Enqueue { .. }, Value::Int(n)) => {
            Ok(Reply::Int(n))
        }
        (Call::Dequeue { .. }, Value::Nil) => Ok(Reply::Popped(None)),
        (Call::Dequeue { .. }, Value::Array(items)) => match items.as_slice() {
            [_, Value::BulkString(bytes)] => {
                let text = String::from_utf8_lossy(bytes);
                text.parse::<u64>()
                    .map(|v| Reply::Popped(Some(v)))
                    .map_err(|_| format!("BLPOP returned {text:?}"))
            }
            other => Err(format!("BLPOP returned {other:?}")),
        },
        (Call::Set { .. }, Value::Okay) => Ok(Reply::Done),
        (Call::Set { .. }, Value::SimpleString(s)) if s == "OK" => Ok(Reply::Done),
        (Call::Get { .. }, Value::Nil) => Ok(Reply::Value(None)),
        (Call::Get { .. }, Value::BulkString(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            text.parse::<i64>()
                .map(|v| Reply::Value(Some(v)))
                .map_err(|_| format!("GET returned {text:?}"))
        }
        (Call::Read { .. }, Value::Array(items)) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::BulkString(bytes) => {
                        let text = String::from_utf8_lossy(&bytes);
                        list.push(
                            text.parse::<u64>()
                                .map_err(|_| format!("LRANGE element {text:?}"))?,
                        );
                    }
                    other => return Err(format!("LRANGE element {other:?}")),
                }
            }
            Ok(Reply::List(list))
        }
        (_, other) => Err(format!("{other:?}")),
    }
}
