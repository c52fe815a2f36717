//! Integration tests of the single-node foundation: INIT, data commands through the log,
//! INFO raft, restart and crash recovery, log damage, configs.
//! Run by `make test` against redis-server and again against Valkey.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use redis::Value;

const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// `RAFT.CLUSTER INIT` on a fresh node; waits until it serves. Returns the dbid.
fn init(server: &Server) -> String {
    let reply: String = server
        .cmd(&["RAFT.CLUSTER", "INIT"])
        .unwrap_or_else(|e| panic!("RAFT.CLUSTER INIT: {}", err_text(&e)));
    let dbid = parse_init_reply(&reply);
    server.expect_serving(SERVE_TIMEOUT);
    dbid
}

/// `"OK <32 hex>"` → the dbid.
fn parse_init_reply(reply: &str) -> String {
    let dbid = reply
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("INIT reply {reply:?} is not `OK <dbid>`"));
    assert_eq!(dbid.len(), 32, "dbid {dbid:?} is not 32 characters");
    assert!(
        dbid.chars().all(|c| c.is_ascii_hexdigit()),
        "dbid {dbid:?} is not hex"
    );
    dbid.to_string()
}

fn started_cluster() -> (Server, String) {
    let server = Server::start_default();
    let dbid = init(&server);
    (server, dbid)
}

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    exec(con, &["GET", key]).unwrap_or_else(|e| panic!("GET {key}: {}", err_text(&e)))
}

fn ok(con: &mut redis::Connection, args: &[&str]) -> Value {
    exec(con, args).unwrap_or_else(|e| panic!("{args:?}: {}", err_text(&e)))
}

#[test]
fn before_init_data_commands_answer_nocluster() {
    let server = Server::start_default();
    let mut con = server.client();
    assert_eq!(
        expect_err(&mut con, &["SET", "k", "v"]),
        "NOCLUSTER No Raft Cluster"
    );
    assert_eq!(
        expect_err(&mut con, &["GET", "k"]),
        "NOCLUSTER No Raft Cluster"
    );
    assert_eq!(
        expect_err(&mut con, &["INCR", "n"]),
        "NOCLUSTER No Raft Cluster"
    );
    // Connection and admin commands are never intercepted.
    let pong: String = exec(&mut con, &["PING"]).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(
        server.info_field("raft", "raft_state").as_deref(),
        Some("uninitialized")
    );
}

#[test]
fn init_returns_dbid_and_second_init_is_refused() {
    let server = Server::start_default();
    let mut con = server.client();
    let reply: String = exec(&mut con, &["RAFT.CLUSTER", "INIT"]).unwrap();
    let dbid = parse_init_reply(&reply);
    assert_eq!(
        expect_err(&mut con, &["RAFT.CLUSTER", "INIT"]),
        "ERR Already cluster member"
    );
    assert_eq!(
        expect_err(&mut con, &["RAFT.CLUSTER", "FOO"]),
        "ERR RAFT.CLUSTER supports INIT / JOIN only"
    );
    server.expect_serving(SERVE_TIMEOUT);
    assert_eq!(server.info_field("raft", "raft_dbid"), Some(dbid));
}

#[test]
fn init_with_given_dbid_and_bad_dbid_length() {
    let server = Server::start_default();
    let mut con = server.client();
    for bad in ["abc", "0123456789abcdef0123456789abcdef0"] {
        assert_eq!(
            expect_err(&mut con, &["RAFT.CLUSTER", "INIT", bad]),
            "ERR cluster id must be 32 characters",
            "dbid {bad:?}"
        );
    }
    // A refused INIT leaves the node uninitialized.
    assert_eq!(
        expect_err(&mut con, &["SET", "k", "v"]),
        "NOCLUSTER No Raft Cluster"
    );

    let wanted = "0123456789abcdef0123456789abcdef";
    let reply: String = exec(&mut con, &["RAFT.CLUSTER", "INIT", wanted]).unwrap();
    assert_eq!(parse_init_reply(&reply), wanted);
    server.expect_serving(SERVE_TIMEOUT);
    assert_eq!(
        server.info_field("raft", "raft_dbid").as_deref(),
        Some(wanted)
    );
}

/// Commands whose reply is an unordered collection: compared after sorting.
const UNORDERED: &[&str] = &["SMEMBERS", "KEYS", "SINTER", "SUNION"];

fn normalize(args: &[&str], reply: redis::RedisResult<Value>) -> String {
    match reply {
        Err(e) => format!("error: {}", err_text(&e)),
        Ok(Value::Array(mut items)) if UNORDERED.contains(&args[0]) => {
            items.sort_by_key(|v| format!("{v:?}"));
            format!("{:?}", Value::Array(items))
        }
        Ok(v) => format!("{v:?}"),
    }
}

/// The same command script gives the same replies on a raft node as on a plain server
/// (the same binary without the module).
#[test]
fn data_commands_reply_like_a_plain_server() {
    let (raft, _) = started_cluster();
    let plain = Server::start(ServerOpts::new().without_module());
    let script: &[&[&str]] = &[
        // strings
        &["SET", "s", "hello"],
        &["GET", "s"],
        &["APPEND", "s", " world"],
        &["STRLEN", "s"],
        &["GETRANGE", "s", "0", "4"],
        &["SETRANGE", "s", "0", "J"],
        &["GET", "s"],
        &["MSET", "a", "1", "b", "2"],
        &["MGET", "a", "b", "missing"],
        &["SETNX", "a", "9"],
        &["GETSET", "b", "3"],
        &["GET", "missing"],
        // counters
        &["INCR", "n"],
        &["INCRBY", "n", "41"],
        &["DECR", "n"],
        &["DECRBY", "n", "2"],
        &["INCRBYFLOAT", "f", "1.5"],
        &["INCRBYFLOAT", "f", "2.25"],
        &["GET", "n"],
        &["INCR", "s"],
        // hashes
        &["HSET", "h", "f1", "v1", "f2", "v2"],
        &["HGET", "h", "f1"],
        &["HGETALL", "h"],
        &["HINCRBY", "h", "cnt", "3"],
        &["HDEL", "h", "f2"],
        &["HLEN", "h"],
        &["HEXISTS", "h", "f2"],
        &["HMGET", "h", "f1", "f2", "cnt"],
        // lists
        &["RPUSH", "l", "a", "b", "c"],
        &["LPUSH", "l", "z"],
        &["LRANGE", "l", "0", "-1"],
        &["LPOP", "l"],
        &["RPOP", "l"],
        &["LLEN", "l"],
        &["LINDEX", "l", "0"],
        &["LSET", "l", "0", "A"],
        &["LRANGE", "l", "0", "-1"],
        // sets
        &["SADD", "st", "x", "y", "z"],
        &["SADD", "st", "x"],
        &["SISMEMBER", "st", "y"],
        &["SCARD", "st"],
        &["SREM", "st", "y"],
        &["SMEMBERS", "st"],
        &["SADD", "st2", "z", "w"],
        &["SINTER", "st", "st2"],
        &["SUNION", "st", "st2"],
        // sorted sets
        &["ZADD", "z", "1", "a", "2", "b", "3", "c"],
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        &["ZINCRBY", "z", "5", "a"],
        &["ZSCORE", "z", "a"],
        &["ZRANK", "z", "a"],
        &["ZREM", "z", "b"],
        &["ZCARD", "z"],
        &["ZRANGEBYSCORE", "z", "0", "10", "WITHSCORES"],
        &["ZREVRANGE", "z", "0", "-1"],
        // type errors, keyspace
        &["LPUSH", "s", "x"],
        &["HGET", "l", "f"],
        &["TYPE", "h"],
        &["TYPE", "z"],
        &["TYPE", "missing"],
        &["EXISTS", "s", "a", "missing"],
        &["DEL", "s", "a", "missing"],
        &["EXISTS", "s", "a"],
        &["RENAME", "b", "b2"],
        &["GET", "b2"],
        &["KEYS", "*"],
        &["DBSIZE"],
    ];
    let (mut rc, mut pc) = (raft.client(), plain.client());
    for args in script {
        let r = normalize(args, exec::<Value>(&mut rc, args));
        let p = normalize(args, exec::<Value>(&mut pc, args));
        assert_eq!(r, p, "{args:?}: raft node vs plain server");
    }
}

#[test]
fn expire_and_ttl() {
    let (server, _) = started_cluster();
    let mut con = server.client();
    ok(&mut con, &["SET", "k", "v"]);
    let set: i64 = exec(&mut con, &["EXPIRE", "k", "100"]).unwrap();
    assert_eq!(set, 1);
    let ttl: i64 = exec(&mut con, &["TTL", "k"]).unwrap();
    assert!((98..=100).contains(&ttl), "TTL {ttl}");
    let persisted: i64 = exec(&mut con, &["PERSIST", "k"]).unwrap();
    assert_eq!(persisted, 1);
    assert_eq!(exec::<i64>(&mut con, &["TTL", "k"]).unwrap(), -1);
    assert_eq!(exec::<i64>(&mut con, &["TTL", "missing"]).unwrap(), -2);

    ok(&mut con, &["SET", "e", "v", "EX", "50"]);
    let ttl: i64 = exec(&mut con, &["TTL", "e"]).unwrap();
    assert!((48..=50).contains(&ttl), "TTL after SET EX: {ttl}");

    // A short TTL really expires the key.
    ok(&mut con, &["SET", "short", "v", "PX", "200"]);
    assert!(
        wait_until(Duration::from_secs(10), || get(&mut con, "short").is_none()),
        "key with PX 200 still there after 10 s"
    );
    assert_eq!(get(&mut con, "k").as_deref(), Some("v"));
}

#[test]
fn info_raft_fields() {
    let (server, dbid) = started_cluster();
    let mut con = server.client();
    for i in 0..10 {
        ok(&mut con, &["SET", &format!("k{i}"), "v"]);
    }
    let info = server.info("raft");
    for field in [
        "raft_dbid",
        "raft_node_id",
        "raft_state",
        "raft_role",
        "raft_is_voting",
        "raft_leader_id",
        "raft_current_term",
        "raft_num_nodes",
        "raft_num_voting_nodes",
        "raft_log_entries",
        "raft_current_index",
        "raft_commit_index",
        "raft_last_applied_index",
        "raft_file_size",
        "raft_cache_memory_size",
        "raft_cache_entries",
        "raft_fsync_count",
        "raft_snapshot_last_idx",
        "raft_snapshots_created",
        "raft_proxy_reqs",
        "raft_appendreq_received",
    ] {
        assert!(
            info.contains_key(field),
            "INFO raft lacks {field}: {info:?}"
        );
    }
    let num = |f: &str| -> i64 {
        info[f]
            .parse()
            .unwrap_or_else(|_| panic!("{f}={:?} is not a number", info[f]))
    };
    assert_eq!(info["raft_dbid"], dbid);
    assert_eq!(info["raft_state"], "up");
    assert_eq!(info["raft_role"], "leader");
    assert!(num("raft_node_id") > 0);
    assert_eq!(num("raft_leader_id"), num("raft_node_id"));
    assert!(num("raft_current_term") >= 1);
    assert_eq!(num("raft_num_nodes"), 1);
    // 10 acknowledged writes are committed and applied.
    assert!(num("raft_commit_index") >= 10, "{info:?}");
    assert!(num("raft_last_applied_index") >= 10, "{info:?}");
    assert!(num("raft_current_index") >= num("raft_commit_index"));
    assert!(num("raft_file_size") > 0);
    assert!(num("raft_fsync_count") > 0);
    // One line per node.
    assert!(
        info.keys()
            .any(|k| k.starts_with("raft_node") && info[k].contains("id=")),
        "no raft_nodeN line: {info:?}"
    );
}

/// 4 clients INCR one key 10,000 times in total; the server is killed with SIGKILL after
/// about half were acknowledged. After a restart on the same files, the counter holds every
/// acknowledged INCR, plus at most the ones that were in flight.
#[test]
fn concurrent_incr_survives_kill9() {
    const THREADS: u64 = 4;
    const TOTAL: u64 = 10_000;
    let (mut server, _) = started_cluster();
    let acked = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (url, acked, killed) = (server.url(), acked.clone(), killed.clone());
            thread::spawn(move || {
                let mut con = connect(&url, CLIENT_TIMEOUT).expect("connect");
                let (mut mine, mut in_flight, mut early_error) = (0u64, 0u64, None);
                for _ in 0..TOTAL / THREADS {
                    match exec::<i64>(&mut con, &["INCR", "counter"]) {
                        Ok(_) => {
                            mine += 1;
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            // Sent without a reply: it may or may not have been applied.
                            in_flight = 1;
                            if !killed.load(Ordering::SeqCst) {
                                early_error = Some(err_text(&e));
                            }
                            break;
                        }
                    }
                }
                (mine, in_flight, early_error)
            })
        })
        .collect();

    let half = wait_until_every(Duration::from_secs(120), Duration::from_millis(1), || {
        acked.load(Ordering::SeqCst) >= TOTAL / 2
    });
    killed.store(true, Ordering::SeqCst);
    server.kill9();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (_, _, early) in &results {
        assert!(
            early.is_none(),
            "a client failed before the kill: {early:?}"
        );
    }
    assert!(half, "fewer than {} INCRs acknowledged in 120 s", TOTAL / 2);
    let acked: u64 = results.iter().map(|r| r.0).sum();
    let in_flight: u64 = results.iter().map(|r| r.1).sum();

    server.restart();
    server.expect_serving(SERVE_TIMEOUT);
    let mut con = server.client();
    let value: u64 = get(&mut con, "counter")
        .expect("counter lost after restart")
        .parse()
        .unwrap();
    eprintln!("acknowledged {acked}, in flight {in_flight}, counter after restart {value}");
    assert!(
        acked <= value && value <= acked + in_flight,
        "counter {value}, acknowledged {acked}, in flight {in_flight}"
    );
}

#[test]
fn clean_restart_keeps_data_and_identity() {
    let (mut server, dbid) = started_cluster();
    let node_id = server.info_field("raft", "raft_node_id").unwrap();
    let mut con = server.client();
    ok(&mut con, &["SET", "a", "1"]);
    ok(&mut con, &["HSET", "h", "f", "v", "g", "w"]);
    ok(&mut con, &["RPUSH", "l", "1", "2", "3"]);
    ok(&mut con, &["SADD", "s", "m"]);
    for _ in 0..5 {
        ok(&mut con, &["INCR", "c"]);
    }
    ok(&mut con, &["DEL", "s"]);
    drop(con);

    server.restart();
    server.expect_serving(SERVE_TIMEOUT);
    let mut con = server.client();
    assert_eq!(exec::<i64>(&mut con, &["DBSIZE"]).unwrap(), 4);
    assert_eq!(get(&mut con, "a").as_deref(), Some("1"));
    assert_eq!(get(&mut con, "c").as_deref(), Some("5"));
    let h: Vec<String> = exec(&mut con, &["HGETALL", "h"]).unwrap();
    assert_eq!(h, ["f", "v", "g", "w"]);
    let l: Vec<String> = exec(&mut con, &["LRANGE", "l", "0", "-1"]).unwrap();
    assert_eq!(l, ["1", "2", "3"]);
    assert_eq!(exec::<i64>(&mut con, &["EXISTS", "s"]).unwrap(), 0);

    let info = server.info("raft");
    assert_eq!(info.get("raft_state").map(String::as_str), Some("up"));
    assert_eq!(info.get("raft_node_id"), Some(&node_id));
    assert_eq!(info.get("raft_dbid"), Some(&dbid));
    assert_eq!(
        expect_err(&mut con, &["RAFT.CLUSTER", "INIT"]),
        "ERR Already cluster member"
    );
    // Still writable after the restart.
    ok(&mut con, &["SET", "after", "restart"]);
    assert_eq!(get(&mut con, "after").as_deref(), Some("restart"));
}

/// A torn tail (last 3 bytes of the log gone) is repaired at start: every write but
/// possibly the last is served, and the repaired log takes new writes that survive.
#[test]
fn truncated_log_tail_is_repaired() {
    const N: usize = 100;
    let (mut server, _) = started_cluster();
    let mut con = server.client();
    for i in 0..N {
        ok(&mut con, &["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    drop(con);
    server.kill9();

    let log = server.raft_log_path();
    let len = fs::metadata(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .len();
    assert!(len > 3, "log is only {len} bytes");
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    server.restart();
    server.expect_serving(SERVE_TIMEOUT);
    let mut con = server.client();
    for i in 0..N - 1 {
        assert_eq!(
            get(&mut con, &format!("k{i}")),
            Some(format!("v{i}")),
            "k{i} after tail repair"
        );
    }
    let last = get(&mut con, &format!("k{}", N - 1));
    assert!(
        last.is_none() || last == Some(format!("v{}", N - 1)),
        "last key: {last:?}"
    );

    ok(&mut con, &["SET", "after", "repair"]);
    drop(con);
    server.restart();
    server.expect_serving(SERVE_TIMEOUT);
    let mut con = server.client();
    assert_eq!(get(&mut con, "after").as_deref(), Some("repair"));
    assert_eq!(get(&mut con, "k0").as_deref(), Some("v0"));
}

/// One flipped byte in the middle of the log (at about a third of a file of many records)
/// makes the server refuse to start, with a log line containing "corrupt". Each of 16
/// consecutive offsets is tried on its own, so record headers (lengths) are hit as well as
/// payloads. The intact file still starts.
#[test]
fn corrupted_log_middle_refuses_start() {
    const N: usize = 300;
    let (mut server, _) = started_cluster();
    let mut con = server.client();
    let value = "x".repeat(64);
    for i in 0..N {
        ok(&mut con, &["SET", &format!("key:{i}"), &value]);
    }
    drop(con);
    server.kill9();

    let log = server.raft_log_path();
    let original = fs::read(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        original.len() > N * 64,
        "log holds {} bytes",
        original.len()
    );
    let start = original.len() / 3;
    for offset in start..start + 16 {
        let mut bytes = original.clone();
        bytes[offset] ^= 0x5a;
        fs::write(&log, &bytes).unwrap();
        match server.try_restart() {
            Ok(()) => panic!(
                "server started with byte {offset} of {} flipped in {}",
                original.len(),
                log.display()
            ),
            Err(f) => {
                assert!(
                    f.exited_unsuccessfully(),
                    "byte {offset}: expected a non-zero exit, got {:?}; log:\n{}",
                    f.status,
                    f.log
                );
                assert!(
                    f.log.to_lowercase().contains("corrupt"),
                    "byte {offset}: no log line with \"corrupt\"; log:\n{}",
                    f.log
                );
            }
        }
    }

    fs::write(&log, &original).unwrap();
    server.restart();
    server.expect_serving(SERVE_TIMEOUT);
    assert_eq!(server.cmd::<i64>(&["DBSIZE"]).unwrap(), N as i64);
}

#[test]
fn bad_startup_configs_are_refused() {
    for (key, value) in [
        ("periodic-interval", "0"),
        ("loglevel", "nonsense"),
        ("addr", "nohostport"),
    ] {
        match Server::try_start(ServerOpts::new().raft(key, value)) {
            Ok(_) => panic!("server started with --raft.{key} {value}"),
            Err(f) => {
                assert!(
                    f.exited_unsuccessfully(),
                    "--raft.{key} {value}: status {:?}",
                    f.status
                );
                assert!(
                    f.log.contains(key),
                    "--raft.{key} {value}: log does not name the key:\n{}",
                    f.log
                );
            }
        }
    }
}

#[test]
fn config_set_validates_values() {
    let server = Server::start_default();
    let mut con = server.client();
    for (key, value) in [("election-timeout", "-5"), ("loglevel", "nonsense")] {
        let err = expect_err(&mut con, &["CONFIG", "SET", &format!("raft.{key}"), value]);
        assert!(err.contains(key), "CONFIG SET raft.{key} {value}: {err}");
    }
    ok(
        &mut con,
        &["CONFIG", "SET", "raft.election-timeout", "2000"],
    );
    let got: Vec<String> = exec(&mut con, &["CONFIG", "GET", "raft.election-timeout"]).unwrap();
    assert_eq!(got, ["raft.election-timeout", "2000"]);
}

#[test]
fn identity_configs_cannot_change_after_init() {
    let (server, _) = started_cluster();
    let mut con = server.client();
    let addr = server.addr();
    for (key, value) in [
        ("id", "7"),
        ("addr", addr.as_str()),
        ("log-filename", "other.db"),
    ] {
        let err = expect_err(&mut con, &["CONFIG", "SET", &format!("raft.{key}"), value]);
        assert!(
            err.contains("Configuration change is not allowed after init/join for this parameter"),
            "CONFIG SET raft.{key} {value}: {err}"
        );
    }
}

#[test]
fn redis_benchmark_smoke() {
    let (server, _) = started_cluster();
    let out = server.redis_benchmark(&["-t", "set,get,incr,lpush", "-n", "2000", "-q"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {text}");
    assert!(
        !text.contains("Error"),
        "redis-benchmark saw errors: {text}"
    );
    let dbsize: i64 = server.cmd(&["DBSIZE"]).unwrap();
    assert!(dbsize > 0, "DBSIZE {dbsize} after redis-benchmark");
}
