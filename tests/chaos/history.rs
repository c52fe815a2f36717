//! The history of a chaos run: every client operation (invoke → ok / fail / unknown) and
//! every nemesis action, with timestamps from one monotonic clock, plus the seeded RNG that
//! drives the workload and the nemesis.
//!
//! Outcomes follow Jepsen's vocabulary:
//! - `ok`: the server acknowledged the operation (its reply is recorded);
//! - `fail`: the operation definitely did not take effect (`MOVED`, `CLUSTERDOWN`, ... are
//!   answered before anything is proposed; a connection that could not be opened never
//!   carried the request);
//! - `unknown` (Jepsen's `info`): it may or may not take effect, at any time after its
//!   invocation (`TIMEOUT not committed yet`, a lost connection, a client-side timeout).

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// Randomness

/// splitmix64: the only source of randomness of a run, so a seed replays its choices.
#[derive(Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut rng = Rng {
            state: seed ^ 0x5EED_C4A0_5EED_C4A0,
        };
        rng.next_u64();
        rng
    }

    /// An independent stream for one participant (client `n`, the nemesis, ...).
    pub fn fork(seed: u64, stream: u64) -> Rng {
        Rng::new(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        )
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A seed from the clock, for runs that were not given one.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut rng = Rng::new(nanos ^ u64::from(std::process::id()) << 32);
    rng.next_u64() % 1_000_000_000
}

// ---------------------------------------------------------------------------------------
// Operations

/// How a write reaches the server: the command itself, or a script (`EVALSHA`) or a
/// library function (`FCALL`) that runs it. Their replies are the command's, so the same
/// checkers judge them; a node that lost the script or the library answers an error no
/// documented rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Command,
    EvalSha,
    Function,
}

/// The scripts and the library the `EvalSha` / `Function` writes run, loaded once at the
/// start of a run (`workload::load_scripts`).
pub const RPUSH_SCRIPT: &str = "return redis.call('rpush', KEYS[1], ARGV[1])";
pub const INCR_SCRIPT: &str = "return redis.call('incr', KEYS[1])";
pub const LIBRARY: &str = "#!lua name=chaos\n\
    redis.register_function('chaos_rpush', function(keys, args) return redis.call('rpush', keys[1], args[1]) end)\n\
    redis.register_function('chaos_incr', function(keys, args) return redis.call('incr', keys[1]) end)";

/// Digests of `RPUSH_SCRIPT` and `INCR_SCRIPT`, set by `workload::load_scripts`.
pub static SCRIPT_SHAS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

fn via_args(via: Via, command: &str, script: usize, function: &str, key: &str) -> Vec<String> {
    match via {
        Via::Command => vec![command.into(), key.to_string()],
        Via::EvalSha => {
            let shas = SCRIPT_SHAS
                .get()
                .expect("scripts loaded before the clients start");
            let sha = if script == 0 { &shas.0 } else { &shas.1 };
            vec!["EVALSHA".into(), sha.clone(), "1".into(), key.to_string()]
        }
        Via::Function => vec!["FCALL".into(), function.into(), "1".into(), key.to_string()],
    }
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `RPUSH key value` (list-append workload; values are unique per run).
    Append { key: String, value: u64, via: Via },
    /// `LRANGE key 0 -1`.
    Read { key: String },
    /// `SET key value` (register workload; values are unique multiples of `VALUE_STRIDE`).
    Set { key: String, value: i64 },
    /// `GET key`.
    Get { key: String },
    /// `INCR key`.
    Incr { key: String, via: Via },
    /// `LPUSH key value` (queue workload; values are unique per run).
    Enqueue { key: String, value: u64 },
    /// `BLPOP key 1` by a consumer (`abandoned`: the consumer went away before the reply,
    /// as a killed worker does; then nothing may be popped for it unless its attempt was
    /// already in the log).
    Dequeue { key: String, abandoned: bool },
}

/// Register values written by SET are distinct multiples of this, so any value read can be
/// traced back to the SET it grew from (INCRs add 1 each, far fewer than this per SET).
pub const VALUE_STRIDE: i64 = 1000;

impl Call {
    pub fn key(&self) -> &str {
        match self {
            Call::Append { key, .. }
            | Call::Read { key }
            | Call::Set { key, .. }
            | Call::Get { key }
            | Call::Incr { key, .. }
            | Call::Enqueue { key, .. }
            | Call::Dequeue { key, .. } => key,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Call::Append {
                via: Via::Command, ..
            } => "append",
            Call::Append {
                via: Via::EvalSha, ..
            } => "append-evalsha",
            Call::Append {
                via: Via::Function, ..
            } => "append-fcall",
            Call::Read { .. } => "read",
            Call::Set { .. } => "set",
            Call::Get { .. } => "get",
            Call::Incr {
                via: Via::Command, ..
            } => "incr",
            Call::Incr {
                via: Via::EvalSha, ..
            } => "incr-evalsha",
            Call::Incr {
                via: Via::Function, ..
            } => "incr-fcall",
            Call::Enqueue { .. } => "enqueue",
            Call::Dequeue {
                abandoned: false, ..
            } => "dequeue",
            Call::Dequeue {
                abandoned: true, ..
            } => "dequeue-abandoned",
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Call::Read { .. } | Call::Get { .. })
    }

    /// The Redis command.
    pub fn args(&self) -> Vec<String> {
        match self {
            Call::Append { key, value, via } => {
                let mut args = via_args(*via, "RPUSH", 0, "chaos_rpush", key);
                args.push(value.to_string());
                args
            }
            Call::Read { key } => vec!["LRANGE".into(), key.clone(), "0".into(), "-1".into()],
            Call::Set { key, value } => vec!["SET".into(), key.clone(), value.to_string()],
            Call::Get { key } => vec!["GET".into(), key.clone()],
            Call::Incr { key, via } => via_args(*via, "INCR", 1, "chaos_incr", key),
            Call::Enqueue { key, value } => {
                vec!["LPUSH".into(), key.clone(), value.to_string()]
            }
            Call::Dequeue { key, abandoned } => {
                let timeout = if *abandoned { "0" } else { "1" };
                vec!["BLPOP".into(), key.clone(), timeout.into()]
            }
        }
    }
}

/// What came back, for `ok` operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// RPUSH / INCR: an integer.
    Int(i64),
    /// LRANGE: the list (elements are the unique append values).
    List(Vec<u64>),
    /// GET: the value, `None` for a missing key.
    Value(Option<i64>),
    /// SET: `OK`.
    Done,
    /// BLPOP: the value popped, `None` at its timeout.
    Popped(Option<u64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One completed operation: both ends of it.
#[derive(Clone, Debug)]
pub struct Op {
    /// Position in the history (assigned when recorded).
    pub id: usize,
    /// Jepsen process: a client thread gets a new process number after an unknown outcome,
    /// because its earlier operation may still be in flight.
    pub process: u64,
    pub call: Call,
    pub outcome: Outcome,
    /// `ok` only.
    pub reply: Option<Reply>,
    /// Error text for `fail` / `unknown`, as the server sent it or the client error.
    pub error: Option<String>,
    /// The node (`host:port`) that answered last.
    pub node: Option<String>,
    /// Nanoseconds since the run's epoch.
    pub invoke_ns: u64,
    pub complete_ns: u64,
}

impl Op {
    /// One-line description for reports.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "#{} p{} {} {}",
            self.id,
            self.process,
            self.call.name(),
            self.call.key()
        );
        match &self.call {
            Call::Append { value, .. } | Call::Enqueue { value, .. } => {
                write!(s, " {value}").unwrap()
            }
            Call::Set { value, .. } => write!(s, " {value}").unwrap(),
            _ => {}
        }
        write!(
            s,
            " [{:.3}s..{:.3}s] {}",
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.outcome.name()
        )
        .unwrap();
        match &self.reply {
            Some(Reply::Int(n)) => write!(s, " -> {n}").unwrap(),
            Some(Reply::Value(v)) => write!(s, " -> {v:?}").unwrap(),
            Some(Reply::List(l)) => {
                if l.len() <= 8 {
                    write!(s, " -> {l:?}").unwrap()
                } else {
                    write!(
                        s,
                        " -> [{} elems: {:?} .. {:?}]",
                        l.len(),
                        &l[..3],
                        &l[l.len() - 3..]
                    )
                    .unwrap()
                }
            }
            Some(Reply::Done) => s.push_str(" -> OK"),
            Some(Reply::Popped(v)) => write!(s, " -> {v:?}").unwrap(),
            None => {}
        }
        if let Some(e) = &self.error {
            write!(s, " ({e})").unwrap();
        }
        if let Some(n) = &self.node {
            write!(s, " @{n}").unwrap();
        }
        s
    }
}

/// A nemesis action, for the history file and the summary.
#[derive(Clone, Debug)]
pub struct NemesisEvent {
    pub time_ns: u64,
    /// e.g. `kill`, `restart`, `pause`, `resume`, `partition`, `heal`, `remove`, `join`,
    /// `transfer`.
    pub action: String,
    pub detail: String,
}

// ---------------------------------------------------------------------------------------
// Recorder

/// Shared, thread-safe recorder. Cheap to clone.
#[derive(Clone)]
pub struct History {
    epoch: Instant,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    ops: Vec<Op>,
    nemesis: Vec<NemesisEvent>,
}

impl History {
    pub fn new() -> History {
        History {
            epoch: Instant::now(),
            inner: Arc::default(),
        }
    }

    /// Nanoseconds since the run's epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn record(&self, mut op: Op) {
        let mut inner = self.inner.lock().unwrap();
        op.id = inner.ops.len();
        inner.ops.push(op);
    }

    pub fn nemesis(&self, action: &str, detail: impl Into<String>) {
        let event = NemesisEvent {
            time_ns: self.now_ns(),
            action: action.to_string(),
            detail: detail.into(),
        };
        eprintln!(
            "chaos: [{:>7.3}s] nemesis {} {}",
            event.time_ns as f64 / 1e9,
            event.action,
            event.detail
        );
        self.inner.lock().unwrap().nemesis.push(event);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap().ops.clone()
    }

    pub fn nemesis_events(&self) -> Vec<NemesisEvent> {
        self.inner.lock().unwrap().nemesis.clone()
    }

    /// Writes the history as JSON lines, in time order: one `invoke` line and one
    /// completion line (`ok` / `fail` / `unknown`) per operation, and one line per nemesis
    /// action.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let inner = self.inner.lock().unwrap();
        // (time, order, line)
        let mut lines: Vec<(u64, u8, usize, String)> = Vec::with_capacity(inner.ops.len() * 2);
        for op in &inner.ops {
            lines.push((op.invoke_ns, 1, op.id, op_line(op, true)));
            lines.push((op.complete_ns, 2, op.id, op_line(op, false)));
        }
        for (i, event) in inner.nemesis.iter().enumerate() {
            let line = format!(
                "{{\"time\":{},\"process\":\"nemesis\",\"type\":\"nemesis\",\"action\":{},\"detail\":{}}}",
                event.time_ns,
                json_str(&event.action),
                json_str(&event.detail)
            );
            lines.push((event.time_ns, 0, i, line));
        }
        lines.sort_by_key(|a| (a.0, a.1, a.2));
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut out = BufWriter::new(fs::File::create(path)?);
        for (_, _, _, line) in lines {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

fn op_line(op: &Op, invoke: bool) -> String {
    let mut s = String::with_capacity(128);
    let kind = if invoke { "invoke" } else { op.outcome.name() };
    let time = if invoke { op.invoke_ns } else { op.complete_ns };
    write!(
        s,
        "{{\"time\":{time},\"process\":{},\"op\":{},\"type\":\"{kind}\",\"f\":\"{}\",\"key\":{}",
        op.process,
        op.id,
        op.call.name(),
        json_str(op.call.key())
    )
    .unwrap();
    match &op.call {
        Call::Append { value, .. } | Call::Enqueue { value, .. } => {
            write!(s, ",\"value\":{value}").unwrap()
        }
        Call::Set { value, .. } => write!(s, ",\"value\":{value}").unwrap(),
        _ => {}
    }
    if !invoke {
        match &op.reply {
            Some(Reply::Int(n)) => write!(s, ",\"result\":{n}").unwrap(),
            Some(Reply::Value(Some(v))) => write!(s, ",\"result\":{v}").unwrap(),
            Some(Reply::Value(None)) => s.push_str(",\"result\":null"),
            Some(Reply::List(l)) => {
                s.push_str(",\"result\":[");
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    write!(s, "{v}").unwrap();
                }
                s.push(']');
            }
            Some(Reply::Done) => s.push_str(",\"result\":\"OK\""),
            Some(Reply::Popped(Some(v))) => write!(s, ",\"result\":{v}").unwrap(),
            Some(Reply::Popped(None)) => s.push_str(",\"result\":null"),
            None => {}
        }
        if let Some(e) = &op.error {
            write!(s, ",\"error\":{}", json_str(e)).unwrap();
        }
        if let Some(n) = &op.node {
            write!(s, ",\"node\":{}", json_str(n)).unwrap();
        }
    }
    s.push('}');
    s
}

/// A JSON string literal.
pub fn json_str(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => write!(s, "\\u{:04x}", c as u32).unwrap(),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
