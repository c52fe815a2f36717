//! Integration-test harness: starts `redis-server` (or Valkey) with the redisraft module
//! in a private directory on a private port, and guarantees the process is gone when the
//! guard is dropped, even when the test panics.
//!
//! Environment:
//! - `REDISRAFT_SERVER`: server binary (default `redis-server`), e.g. a `valkey-server` path.
//! - `REDISRAFT_MODULE`: module to load (default `<crate>/target/release/libredisraft.so`;
//!   `make test` passes `./redisraft.so`, the `redis-alloc` release build).
//! - `REDISRAFT_CLI`, `REDISRAFT_BENCHMARK`: `redis-cli` / `redis-benchmark` binaries.
//!
//! Rules (see docs/TESTING.md): wait for conditions with a deadline (`wait_until`),
//! never sleep-and-hope; every process is owned by a `Server` guard.
#![allow(dead_code)]

pub mod cluster;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::{Connection, FromRedisValue, RedisError, RedisResult, Value};
use tempfile::TempDir;

/// How long a server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped server may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default read/write timeout of `client()` connections: a reply that takes longer fails
/// the test instead of hanging it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of `wait_until`.
pub const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// Environment

pub fn server_binary() -> String {
    std::env::var("REDISRAFT_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

/// Path of the module to load; panics with a hint when it has not been built.
pub fn module_path() -> PathBuf {
    let path = match std::env::var("REDISRAFT_MODULE") {
        Ok(p) => PathBuf::from(p),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libredisraft.so"),
    };
    assert!(
        path.is_file(),
        "module not found at {}: run `make build` first (or set REDISRAFT_MODULE)",
        path.display()
    );
    path
}

pub fn cli_binary() -> String {
    std::env::var("REDISRAFT_CLI").unwrap_or_else(|_| "redis-cli".to_string())
}

pub fn benchmark_binary() -> String {
    std::env::var("REDISRAFT_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".to_string())
}

// ---------------------------------------------------------------------------------------
// Waiting

/// Polls `cond` every `POLL` until it returns true (→ true) or `timeout` passes (→ false).
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(timeout, POLL, cond)
}

/// `wait_until` with an explicit poll interval.
pub fn wait_until_every(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(poll);
    }
}

// ---------------------------------------------------------------------------------------
// Ports

/// Picks a port that is free on `host`.
///
/// Ports come from below the kernel's ephemeral range: a port taken from port 0 lies in
/// that range, where the kernel also picks the local ports of outgoing connections
/// (test clients, node-to-node links), so it could be taken by one of them before the
/// server binds it or while a server is restarted on it. Each test process starts at
/// its own pid-derived offset and walks with a process-wide counter, and every
/// candidate is checked by binding it.
pub fn free_port(host: &str) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RANGE: OnceLock<(u32, u32, u32)> = OnceLock::new();
    let &(lo, span, start) = RANGE.get_or_init(|| {
        let ephemeral_lo = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let lo = 10_000;
        let hi = if ephemeral_lo > lo + 2_000 {
            ephemeral_lo
        } else {
            30_000
        };
        let span = hi - lo;
        (lo, span, std::process::id().wrapping_mul(7919) % span)
    });
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + (start + n) % span) as u16;
        if TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {host}");
}

// ---------------------------------------------------------------------------------------
// Options

/// How to start a server. Build with `ServerOpts::new().raft("id", "1")...`.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// Address the server binds (and clients connect to). Any 127.x.y.z works without set-up.
    pub host: String,
    /// Port; `None` picks a free one.
    pub port: Option<u16>,
    /// Load the redisraft module (default true). `false` gives a plain server to compare with.
    pub module: bool,
    /// Module configs, passed as `--raft.<key> <value>`.
    pub raft: Vec<(String, String)>,
    /// Extra server arguments, appended last.
    pub args: Vec<String>,
    /// Redis `dir` (where the raft log lives) when it must not be the server's temp dir,
    /// e.g. a small tmpfs for disk-full tests. The server log stays in the temp dir.
    pub data_dir: Option<PathBuf>,
    /// Extra environment variables of the server process (e.g. `LD_PRELOAD`).
    pub env: Vec<(String, String)>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            host: "127.0.0.1".to_string(),
            port: None,
            module: true,
            raft: Vec::new(),
            args: Vec::new(),
            data_dir: None,
            env: Vec::new(),
        }
    }
}

impl ServerOpts {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Adds `--raft.<key> <value>`.
    pub fn raft(mut self, key: &str, value: &str) -> Self {
        self.raft.push((key.to_string(), value.to_string()));
        self
    }
    /// Adds raw server arguments, e.g. `.args(&["--maxmemory", "10mb"])`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
    /// Redis `dir` outside the temp dir (see `data_dir`).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }
    /// Sets an environment variable of the server process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// A plain server without the module.
    pub fn without_module(mut self) -> Self {
        self.module = false;
        self
    }
}

// ---------------------------------------------------------------------------------------
// Server guard

/// Why a server did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status when the process exited; `None` when it was still running at the deadline
    /// (it has then been killed).
    pub status: Option<ExitStatus>,
    /// Server log + stdout/stderr written since this start.
    pub log: String,
    /// The server's directory (deleted by now unless kept).
    pub dir: PathBuf,
}

impl StartFailure {
    /// True when the process exited with a non-zero status or was killed by a signal.
    pub fn exited_unsuccessfully(&self) -> bool {
        matches!(self.status, Some(s) if !s.success())
    }
}

/// A running (or stopped) server. Dropping it kills the process (SIGKILL) and reaps it.
/// Its directory is deleted on drop, except when the thread is panicking: then it is kept
/// and its path and log tail are printed.
pub struct Server {
    pub host: String,
    pub port: u16,
    pub opts: ServerOpts,
    /// The server's temp dir: its logs, and Redis `dir` unless `opts.data_dir` is set.
    pub dir: PathBuf,
    /// Redis `logfile` (module log lines go here too).
    pub logfile: PathBuf,
    /// stdout + stderr of the process (early startup errors, panics).
    pub stdio_log: PathBuf,
    tempdir: Option<TempDir>,
    child: Option<Child>,
    /// Lengths of `logfile` and `stdio_log` when the current process was spawned.
    log_offsets: (u64, u64),
}

impl Server {
    /// Starts a server and waits until it answers; panics (with its log) if it does not.
    /// The directory of a server that failed to start is kept.
    pub fn start(opts: ServerOpts) -> Server {
        match Server::start_inner(opts, true) {
            Ok(s) => s,
            Err(f) => panic!(
                "server failed to start (status {:?}, dir {} kept); log:\n{}",
                f.status,
                f.dir.display(),
                f.log
            ),
        }
    }

    /// Starts a server with the module and default options.
    pub fn start_default() -> Server {
        Server::start(ServerOpts::new())
    }

    /// Starts a server; on failure returns why (exit status and log). Its directory is then
    /// deleted, unless `REDISRAFT_KEEP_DIRS` is set.
    pub fn try_start(opts: ServerOpts) -> Result<Server, StartFailure> {
        Server::start_inner(opts, std::env::var_os("REDISRAFT_KEEP_DIRS").is_some())
    }

    fn start_inner(
        mut opts: ServerOpts,
        keep_dir_on_failure: bool,
    ) -> Result<Server, StartFailure> {
        // The raft peer listener's port is picked like the server's, so that it can never
        // be a port another test server is given (its default, port + 10000, could be).
        if opts.module && !opts.raft.iter().any(|(k, _)| k == "peer-port") {
            let peer_port = free_port(&opts.host);
            opts.raft.push(("peer-port".into(), peer_port.to_string()));
        }
        let tempdir = tempfile::Builder::new()
            .prefix("redisraft-test-")
            .tempdir()
            .expect("create temp dir");
        let dir = tempdir.path().to_path_buf();
        let port = opts.port.unwrap_or_else(|| free_port(&opts.host));
        let mut server = Server {
            host: opts.host.clone(),
            port,
            logfile: dir.join("server.log"),
            stdio_log: dir.join("stdio.log"),
            dir,
            opts,
            tempdir: Some(tempdir),
            child: None,
            log_offsets: (0, 0),
        };
        match server.spawn_and_wait() {
            Ok(()) => Ok(server),
            Err(failure) => {
                if keep_dir_on_failure {
                    if let Some(t) = server.tempdir.take() {
                        let _ = t.keep();
                    }
                }
                Err(failure)
            }
        }
    }

    /// The last value given for module config `key` (the server uses the last one).
    fn raft_option(&self, key: &str) -> Option<&str> {
        self.opts
            .raft
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The ports other nodes reach this one on: its Redis port and, when it loads the
    /// module, its raft peer port (partitions must cut both).
    pub fn node_ports(&self) -> Vec<u16> {
        let peer_port = self
            .raft_option("peer-port")
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|port| *port != 0);
        std::iter::once(self.port).chain(peer_port).collect()
    }

    /// `host:port`, the address clients and other nodes use.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.host, self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Keeps the server's directory when the guard is dropped (for diagnosis after a failed
    /// check); returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(t) = self.tempdir.take() {
            let _ = t.keep();
        }
        self.dir.clone()
    }

    /// Path of the module's raft log file (`<dir>/<log-filename>`, default `redisraft.db`).
    pub fn raft_log_path(&self) -> PathBuf {
        let name = self.raft_option("log-filename").unwrap_or("redisraft.db");
        self.data_dir().join(name)
    }

    /// Redis `dir`: where the module's log and snapshot files live.
    pub fn data_dir(&self) -> PathBuf {
        self.opts
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.clone())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg(&self.host)
            .arg("--dir")
            .arg(self.data_dir())
            .arg("--logfile")
            .arg(&self.logfile)
            .args(["--daemonize", "no", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"]);
        if self.opts.module {
            cmd.arg("--loadmodule").arg(module_path());
            for (k, v) in &self.opts.raft {
                cmd.arg(format!("--raft.{k}")).arg(v);
            }
        }
        cmd.args(&self.opts.args);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "server on {} is already running",
            self.addr()
        );
        let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        self.log_offsets = (len(&self.logfile), len(&self.stdio_log));
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdio_log)
            .expect("open stdio log");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(stdio.try_clone().expect("dup stdio log"))
            .stderr(stdio);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", server_binary()));
        self.child = Some(child);
    }

    /// Spawns the process and waits until it answers PING (any reply, LOADING included),
    /// or exits, or `START_TIMEOUT` passes (then it is killed).
    fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        self.spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                return Err(StartFailure {
                    status: Some(status),
                    log: self.log_since_start(),
                    dir: self.dir.clone(),
                });
            }
            if self.answers() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(StartFailure {
                    status: None,
                    log: self.log_since_start(),
                    dir: self.dir.clone(),
                });
            }
            sleep(POLL);
        }
    }

    /// True if a connection can be made and PING gets any reply (an error reply counts).
    fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
        match redis::cmd("PING").query::<Value>(&mut con) {
            Ok(_) => true,
            Err(e) => !e.is_io_error(),
        }
    }

    /// Stops the process if it runs (SIGTERM, then SIGKILL after `STOP_TIMEOUT`), then starts
    /// it again with the same options, directory and port. Panics if it does not come up.
    pub fn restart(&mut self) {
        if let Err(f) = self.try_restart() {
            panic!(
                "server {} failed to restart (status {:?}, dir {}); log:\n{}",
                self.addr(),
                f.status,
                self.dir.display(),
                f.log
            );
        }
    }

    /// Like `restart`, but returns why the server did not come up.
    pub fn try_restart(&mut self) -> Result<(), StartFailure> {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn_and_wait()
    }

    /// Graceful stop: SIGTERM (a SIGSTOPped process is continued first), wait for the exit;
    /// SIGKILL if it is still running after `STOP_TIMEOUT`. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            sleep(POLL);
        }
    }

    /// SIGKILL and reap. No-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP).
    /// Freezes the process (SIGSTOP) and returns once every thread is stopped: `kill`
    /// returns before the signal is taken, and a thread still running could answer one
    /// more message (a heartbeat) after the test believes the node frozen.
    pub fn sigstop(&self) {
        self.signal("-STOP");
        let pid = self.pid().expect("server is not running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "pid {pid} did not stop within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("server is not running").to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill {sig} {pid} failed");
    }

    /// Waits for the process to exit by itself; returns its status, or `None` at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        let child = self.child.as_mut()?;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    // ---- clients -----------------------------------------------------------------------

    /// A connection with `CLIENT_TIMEOUT` read/write timeouts; retries until connectable
    /// within `START_TIMEOUT`.
    pub fn client(&self) -> Connection {
        self.client_with_timeout(CLIENT_TIMEOUT)
    }

    pub fn client_with_timeout(&self, io_timeout: Duration) -> Connection {
        connect(&self.url(), io_timeout).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {} (dir {}): {e}",
                self.addr(),
                self.dir.display()
            )
        })
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> RedisResult<T> {
        exec(&mut self.client(), args)
    }

    /// `INFO <section>` parsed into `field -> value`.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = self
            .cmd(&["INFO", section])
            .unwrap_or_else(|e| panic!("INFO {section} on {}: {e}", self.addr()));
        parse_info(&text)
    }

    /// One INFO field, e.g. `info_field("raft", "raft_role")`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        self.info(section).remove(field)
    }

    /// Waits until the node serves data commands (no NOCLUSTER / CLUSTERDOWN / LOADING):
    /// probes with a read of a key that tests do not use, so nothing is written. A shard
    /// group's leader that serves but not the probe's slot (it redirects it to another
    /// group, or no group serves it yet) counts as serving too.
    pub fn wait_serving(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let Ok(mut con) = connect(&self.url(), Duration::from_secs(5)) else {
                return false;
            };
            match exec::<Value>(&mut con, &["EXISTS", "__harness_probe__"]) {
                Ok(_) => true,
                Err(e) => {
                    let text = err_text(&e);
                    (text.starts_with("MOVED ") && !text.starts_with("MOVED 0 "))
                        || text == "CLUSTERDOWN Hash slot is not served"
                }
            }
        })
    }

    /// `wait_serving` that panics with the log on timeout.
    pub fn expect_serving(&self, timeout: Duration) {
        assert!(
            self.wait_serving(timeout),
            "server {} not serving after {timeout:?} (dir {}); log tail:\n{}",
            self.addr(),
            self.dir.display(),
            tail(&self.log(), 40)
        );
    }

    /// Runs `redis-cli -h host -p port args...`.
    pub fn redis_cli(&self, args: &[&str]) -> Output {
        Command::new(cli_binary())
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli_binary()))
    }

    /// Runs `redis-benchmark -h host -p port args...`.
    pub fn redis_benchmark(&self, args: &[&str]) -> Output {
        Command::new(benchmark_binary())
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", benchmark_binary()))
    }

    // ---- logs --------------------------------------------------------------------------

    /// Everything the server logged (all starts): logfile, then stdout/stderr.
    pub fn log(&self) -> String {
        read_from(&self.logfile, 0) + &read_from(&self.stdio_log, 0)
    }

    /// What the current (or last) process logged since it was spawned.
    pub fn log_since_start(&self) -> String {
        read_from(&self.logfile, self.log_offsets.0)
            + &read_from(&self.stdio_log, self.log_offsets.1)
    }

    /// True if the log (all starts) contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_contains(needle))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            if let Some(t) = self.tempdir.take() {
                let dir = t.keep();
                eprintln!(
                    "--- server {} (kept dir {}) log tail:\n{}",
                    self.addr(),
                    dir.display(),
                    tail(&self.log(), 30)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Connects to `url`, retrying until connectable within `START_TIMEOUT`; sets read/write
/// timeouts to `io_timeout`.
pub fn connect(url: &str, io_timeout: Duration) -> RedisResult<Connection> {
    let client = redis::Client::open(url)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match client.get_connection_with_timeout(Duration::from_secs(1)) {
            Ok(con) => {
                con.set_read_timeout(Some(io_timeout))?;
                con.set_write_timeout(Some(io_timeout))?;
                return Ok(con);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => sleep(POLL),
        }
    }
}

/// Runs one command given as words.
pub fn exec<T: FromRedisValue>(con: &mut Connection, args: &[&str]) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
}

/// The error as the server sent it, e.g. `"NOCLUSTER No Raft Cluster"`,
/// `"ERR Already cluster member"`; for non-server errors, its Display.
pub fn err_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// Runs a command that must fail; returns the error text (see `err_text`).
pub fn expect_err(con: &mut Connection, args: &[&str]) -> String {
    match exec::<Value>(con, args) {
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
        Err(e) => err_text(&e),
    }
}

pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Every thread of `pid` is in the stopped state (`T` in /proc/<pid>/task/*/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true; // the process is gone: nothing runs
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t")
        })
    })
}
