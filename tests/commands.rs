//! Issue #5: every Redis data command, consistently, on 3-node clusters. Transactions
//! (errors, one entry, atomic across a leader kill, WATCH without lost updates), scripts and functions (replicated,
//! after a failover, nondeterministic commands refused), SPOP and XADD `*` agreeing on
//! every node, expiry decided by the log (1,000 short-TTL keys under INCR traffic, then a
//! byte-for-byte comparison), blocking commands waiting for the log, pub/sub, ACL
//! checked before the log, RESP3, SELECT and argument errors, and docs/COMMANDS.md.
//!
//! Each test ends by checking that every node holds the same data (`DEBUG DIGEST` at the
//! same applied index).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::cluster::*;
use common::*;
use redis::{Connection, ConnectionLike, Value};

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Int(i) => i.to_string(),
        Value::Nil => "nil".into(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => format!("{other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// The server's wording of an ACL refusal of a key and of a command (Redis 7.2 reworded
/// them; Valkey keeps 7.2's).
fn noperm_words(server: &Server, user: &str, command: &str) -> (String, String) {
    let info: String = server.cmd(&["INFO", "server"]).unwrap();
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .unwrap_or("0.0");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let new = info.contains("valkey_version:")
        || (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (7, 2);
    if new {
        (
            "NOPERM No permissions to access a key".into(),
            format!("NOPERM User {user} has no permissions to run the '{command}' command"),
        )
    } else {
        (
            "NOPERM this user has no permissions to access one of the keys used as arguments"
                .into(),
            format!("NOPERM this user has no permissions to run the '{command}' command"),
        )
    }
}

fn leader_client(cluster: &Cluster) -> (u64, Connection) {
    let leader = cluster.wait_leader(&cluster.ids(), CONVERGE_TIMEOUT);
    (leader, cluster.node(leader).client())
}

fn current_index(cluster: &Cluster, id: u64) -> i64 {
    num(&cluster.info(id).expect("INFO"), "raft_current_index")
}

/// (applied index, dataset digest) of a node, read so that no entry was applied between.
fn dataset(cluster: &Cluster, id: u64) -> Option<(i64, String)> {
    let before = num(&cluster.info(id)?, "raft_last_applied_index");
    let digest = text(&cluster.local(id, &["DEBUG", "DIGEST"]));
    let after = num(&cluster.info(id)?, "raft_last_applied_index");
    (before == after).then_some((before, digest))
}

/// Every node of the cluster reaches the same applied index with the same data. Panics
/// at once if two nodes at the same index differ: that is divergence.
fn assert_identical(cluster: &Cluster) {
    let ids = cluster.ids();
    let mut last = Vec::new();
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        let Some(states) = ids
            .iter()
            .map(|&id| dataset(cluster, id))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        for pair in states.windows(2) {
            if pair[0].0 == pair[1].0 {
                assert_eq!(
                    pair[0].1, pair[1].1,
                    "two nodes at applied index {} hold different data: {states:?}",
                    pair[0].0
                );
            }
        }
        let same = states.iter().all(|s| s == &states[0]);
        last = states;
        same
    });
    assert!(ok, "nodes did not converge: {last:?}");
}

fn transfer_leadership(cluster: &Cluster, from: u64) -> u64 {
    let target = *cluster.ids().iter().find(|&&id| id != from).unwrap();
    let reply: String = cluster
        .node(from)
        .cmd(&["RAFT.TRANSFER_LEADER", &target.to_string()])
        .unwrap_or_else(|e| panic!("transfer to {target}: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    assert_eq!(
        cluster.wait_leader(&cluster.ids(), CONVERGE_TIMEOUT),
        target
    );
    // Leading is not serving yet: the new leader first commits an entry of its term.
    let serving = wait_until(CONVERGE_TIMEOUT, || {
        cluster
            .node(target)
            .cmd::<String>(&["SET", "probe", "1"])
            .is_ok()
    });
    assert!(serving, "node {target} leads but does not serve");
    target
}

#[test]
fn transactions_are_one_entry_with_redis_errors() {
    let cluster = Cluster::start(3, ET_MS);
    let (leader, mut con) = leader_client(&cluster);

    let before = current_index(&cluster, leader);
    assert_eq!(exec::<String>(&mut con, &["MULTI"]).unwrap(), "OK");
    for args in [&["SET", "a", "1"][..], &["INCR", "a"], &["GET", "a"]] {
        assert_eq!(exec::<String>(&mut con, args).unwrap(), "QUEUED");
    }
    let reply: Value = exec(&mut con, &["EXEC"]).unwrap();
    let Value::Array(items) = reply else {
        panic!("EXEC reply {reply:?}")
    };
    assert_eq!(items.iter().map(text).collect::<Vec<_>>(), ["OK", "2", "2"]);
    assert_eq!(
        current_index(&cluster, leader),
        before + 1,
        "a transaction is exactly one log entry"
    );

    // Redis' own errors, and nothing logged for them.
    let before = current_index(&cluster, leader);
    assert_eq!(expect_err(&mut con, &["EXEC"]), "ERR EXEC without MULTI");
    assert_eq!(
        expect_err(&mut con, &["DISCARD"]),
        "ERR DISCARD without MULTI"
    );
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    assert_eq!(
        expect_err(&mut con, &["MULTI"]),
        "ERR MULTI calls can not be nested"
    );
    assert_eq!(
        expect_err(&mut con, &["WATCH", "a"]),
        "ERR WATCH inside MULTI is not allowed"
    );
    exec::<String>(&mut con, &["SET", "a", "lost"]).unwrap();
    assert_eq!(
        expect_err(&mut con, &["NOSUCHCMD", "x"]),
        "ERR unknown command 'NOSUCHCMD', with args beginning with: 'x' "
    );
    assert_eq!(
        expect_err(&mut con, &["EXEC"]),
        "EXECABORT Transaction discarded because of previous errors."
    );
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["SET", "a", "lost"]).unwrap();
    assert_eq!(
        expect_err(&mut con, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert!(expect_err(&mut con, &["EXEC"]).starts_with("EXECABORT"));
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["SET", "a", "lost"]).unwrap();
    assert_eq!(exec::<String>(&mut con, &["DISCARD"]).unwrap(), "OK");
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    let empty: Value = exec(&mut con, &["EXEC"]).unwrap();
    assert_eq!(empty, Value::Array(vec![]));
    assert_eq!(exec::<String>(&mut con, &["GET", "a"]).unwrap(), "2");
    assert_eq!(exec::<String>(&mut con, &["WATCH", "a"]).unwrap(), "OK");
    assert_eq!(exec::<String>(&mut con, &["UNWATCH"]).unwrap(), "OK");
    assert_eq!(
        current_index(&cluster, leader),
        before,
        "refused work was logged"
    );

    // A command failing inside EXEC fails alone, the others apply (Redis semantics),
    // identically on every node.
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["SET", "s", "x"]).unwrap();
    exec::<String>(&mut con, &["LPUSH", "s", "y"]).unwrap();
    exec::<String>(&mut con, &["SET", "t", "z"]).unwrap();
    // Raw reply: the crate's typed query would turn the inner error into an Err.
    let reply = con
        .req_packed_command(&redis::cmd("EXEC").get_packed_command())
        .unwrap();
    let Value::Array(items) = reply else {
        panic!("EXEC: {reply:?}")
    };
    assert_eq!(text(&items[0]), "OK");
    assert!(
        matches!(&items[1], Value::ServerError(e) if e.code() == "WRONGTYPE"),
        "{:?}",
        items[1]
    );
    assert_eq!(text(&items[2]), "OK");

    // The redis crate's atomic pipeline (MULTI ... EXEC on the wire).
    let (p, q): (String, i64) = redis::pipe()
        .atomic()
        .set("p", 1)
        .incr("p", 5)
        .query(&mut con)
        .unwrap();
    assert_eq!((p.as_str(), q), ("OK", 6));
    assert_identical(&cluster);
}

/// One optimistic increment: WATCH, GET, MULTI, SET, EXEC; true if EXEC applied it.
fn watched_increment(con: &mut Connection, key: &str) -> bool {
    exec::<String>(con, &["WATCH", key]).unwrap();
    let value: Option<String> = exec(con, &["GET", key]).unwrap();
    let next = value.map_or(0, |v| v.parse::<i64>().unwrap()) + 1;
    exec::<String>(con, &["MULTI"]).unwrap();
    exec::<String>(con, &["SET", key, &next.to_string()]).unwrap();
    let reply = con
        .req_packed_command(&redis::cmd("EXEC").get_packed_command())
        .unwrap();
    match reply {
        Value::Nil => false,
        Value::Array(items) if items.len() == 1 => true,
        other => panic!("EXEC answered {other:?}"),
    }
}

#[test]
fn watch_gives_optimistic_locking_without_lost_updates() {
    let cluster = Cluster::start(3, ET_MS);
    let (leader, mut con) = leader_client(&cluster);
    let addr = cluster.addr(leader);

    // A write by another client after WATCH aborts EXEC, even with the same value.
    exec::<String>(&mut con, &["SET", "w", "same"]).unwrap();
    exec::<String>(&mut con, &["WATCH", "w"]).unwrap();
    let mut other = cluster.node(leader).client();
    exec::<String>(&mut other, &["SET", "w", "same"]).unwrap();
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["SET", "w", "mine"]).unwrap();
    assert_eq!(exec::<Value>(&mut con, &["EXEC"]).unwrap(), Value::Nil);
    assert_eq!(exec::<String>(&mut con, &["GET", "w"]).unwrap(), "same");

    // Concurrent read-modify-write loops lose no update, while other writes flow.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (addr, stop) = (addr.clone(), stop.clone());
        thread::spawn(move || {
            let mut con = try_connect(&addr, Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                exec::<i64>(&mut con, &["INCR", "noise"]).unwrap();
                n += 1;
            }
            n
        })
    };
    let aborted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, aborted) = (addr.clone(), aborted.clone());
            thread::spawn(move || {
                let mut con = try_connect(&addr, Duration::from_secs(10)).unwrap();
                for _ in 0..25 {
                    while !watched_increment(&mut con, "counter") {
                        aborted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let noise = background.join().unwrap();
    assert!(noise > 0);
    assert!(
        aborted.load(Ordering::Relaxed) > 0,
        "four clients racing never conflicted: the test proves nothing"
    );
    // Followers may still be applying the last increments.
    cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    for id in cluster.ids() {
        assert_eq!(
            text(&cluster.local(id, &["GET", "counter"])),
            "100",
            "node {id}"
        );
    }

    // Watches live on the leader: after a failover EXEC is redirected, nothing applied.
    exec::<String>(&mut con, &["WATCH", "w"]).unwrap();
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["SET", "w", "after-failover"]).unwrap();
    let new_leader = transfer_leadership(&cluster, leader);
    assert_eq!(
        expect_err(&mut con, &["EXEC"]),
        format!("MOVED 0 {}", cluster.addr(new_leader))
    );
    assert_eq!(text(&cluster.local(new_leader, &["GET", "w"])), "same");
    let mut con = cluster.node(new_leader).client();
    assert!(watched_increment(&mut con, "counter"));
    assert_identical(&cluster);
}

/// Issue #14 (item 8d): an EXEC with watches waits for the leader's quiet point (every
/// entry applied, no write in flight) and then runs at its entry's time. A watched key
/// that expires meanwhile was modified before the EXEC (Redis 7 fails an EXEC whose
/// watched key has expired): the EXEC must answer null. Before, only the time of EXEC's
/// arrival was checked, and the transaction ran.
#[test]
fn a_watched_key_expiring_while_exec_waits_aborts_the_exec() {
    // Followers are stopped for about 2 s below: a long election timeout keeps the leader.
    let cluster = Cluster::start(3, 10_000);
    let (leader, mut con) = leader_client(&cluster);
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let ttl = Duration::from_millis(1500);
    exec::<String>(
        &mut con,
        &["SET", "w", "old", "PX", &ttl.as_millis().to_string()],
    )
    .unwrap();
    let set_at = std::time::Instant::now();
    exec::<String>(&mut con, &["WATCH", "w"]).unwrap();
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["SET", "w", "mine"]).unwrap();
    for &id in &followers {
        cluster.node(id).sigstop();
    }
    // A write in flight: nothing commits until the followers resume, so the EXEC waits.
    let addr = cluster.addr(leader);
    let in_flight = thread::spawn(move || {
        let mut con = try_connect(&addr, Duration::from_secs(30)).unwrap();
        exec::<String>(&mut con, &["SET", "other", "1"]).map_err(|e| err_text(&e))
    });
    assert!(
        wait_until(Duration::from_secs(5), || {
            num(&cluster.info(leader).unwrap(), "raft_waiting_requests") >= 1
        }),
        "the write never waited"
    );
    let exec_thread =
        thread::spawn(move || exec::<Value>(&mut con, &["EXEC"]).map_err(|e| err_text(&e)));
    assert!(
        set_at.elapsed() < ttl - Duration::from_millis(500),
        "EXEC arrived too late ({:?} after SET): the machine is too slow for this test",
        set_at.elapsed()
    );
    thread::sleep(ttl + Duration::from_millis(500) - set_at.elapsed().min(ttl));
    for &id in &followers {
        cluster.node(id).sigcont();
    }
    assert_eq!(in_flight.join().unwrap(), Ok("OK".to_string()));
    assert_eq!(
        exec_thread.join().unwrap(),
        Ok(Value::Nil),
        "EXEC ran although its watched key expired before it"
    );
    let mut con = cluster.node(leader).client();
    assert_eq!(exec::<Value>(&mut con, &["GET", "w"]).unwrap(), Value::Nil);
    assert_identical(&cluster);
}

/// Runs `MULTI; INCR a; INCR b; EXEC` on one connection to whichever node leads.
/// Ok(true) acknowledged, Ok(false) refused before anything was sent to the log
/// (MOVED, CLUSTERDOWN), Err(()) unknown outcome.
fn incr_pair(addrs: &[String], next: &mut usize, last_error: &Mutex<String>) -> Result<bool, ()> {
    *next += 1;
    let addr = &addrs[*next % addrs.len()];
    let Ok(mut con) = try_connect(addr, Duration::from_secs(5)) else {
        return Ok(false);
    };
    for args in [&["MULTI"][..], &["INCR", "a"], &["INCR", "b"]] {
        if let Err(e) = exec::<String>(&mut con, args) {
            *last_error.lock().unwrap() = format!("{addr} {args:?}: {}", err_text(&e));
            return Ok(false);
        }
    }
    match exec::<Value>(&mut con, &["EXEC"]) {
        Ok(Value::Array(items)) if items.len() == 2 => Ok(true),
        Ok(other) => panic!("EXEC answered {other:?}"),
        Err(e) => {
            let message = err_text(&e);
            *last_error.lock().unwrap() = format!("{addr} EXEC: {message}");
            if message.starts_with("MOVED") || message.starts_with("CLUSTERDOWN") {
                Ok(false)
            } else {
                Err(())
            }
        }
    }
}

#[test]
fn transactions_stay_atomic_across_failover() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let (leader, mut con) = leader_client(&cluster);

    // A transaction queued on a leader that stops leading is refused at EXEC, not half run.
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["INCR", "a"]).unwrap();
    let new_leader = transfer_leadership(&cluster, leader);
    assert_eq!(
        expect_err(&mut con, &["EXEC"]),
        format!("MOVED 0 {}", cluster.addr(new_leader))
    );

    // Writers run transactions while the leader is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let attempted = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(Mutex::new(String::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let addrs = cluster.addrs(&ids);
            let (stop, acked, attempted) = (stop.clone(), acked.clone(), attempted.clone());
            let last_error = last_error.clone();
            thread::spawn(move || {
                let mut next = w;
                while !stop.load(Ordering::Relaxed) {
                    match incr_pair(&addrs, &mut next, &last_error) {
                        Ok(true) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            attempted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => thread::sleep(RETRY_BACKOFF),
                        Err(()) => {
                            attempted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(CONVERGE_TIMEOUT, || acked
        .load(Ordering::Relaxed)
        >= 50));
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    cluster.node_mut(leader).kill9();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
    cluster.wait_leader(&others, CONVERGE_TIMEOUT);
    let after_kill = acked.load(Ordering::Relaxed);
    assert!(
        wait_until(CONVERGE_TIMEOUT, || acked.load(Ordering::Relaxed)
            >= after_kill + 50),
        "no progress after the leader was killed; last error: {}",
        last_error.lock().unwrap()
    );
    cluster.node_mut(leader).restart();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    assert_identical(&cluster);
    let counter = |key: &str| match cluster.local(ids[0], &["GET", key]) {
        Value::Nil => 0,
        other => text(&other).parse::<i64>().unwrap(),
    };
    let (a, b) = (counter("a"), counter("b"));
    assert_eq!(a, b, "a transaction was applied in part");
    // a starts at 0 (the transaction refused above never ran).
    let (acked, attempted) = (
        acked.load(Ordering::Relaxed),
        attempted.load(Ordering::Relaxed),
    );
    assert!(
        (acked as i64..=attempted as i64).contains(&a),
        "{a} transactions applied, {acked} acknowledged, {attempted} attempted"
    );
}

#[test]
fn scripts_replicate_and_survive_failover() {
    let cluster = Cluster::start(3, ET_MS);
    let (leader, mut con) = leader_client(&cluster);
    let reply: i64 = exec(
        &mut con,
        &[
            "EVAL",
            "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
            "2",
            "k1",
            "k2",
            "v",
        ],
    )
    .unwrap();
    assert_eq!(reply, 1);
    let sha: String = exec(
        &mut con,
        &[
            "SCRIPT",
            "LOAD",
            "return redis.call('INCRBY', KEYS[1], ARGV[1])",
        ],
    )
    .unwrap();
    assert_eq!(
        exec::<i64>(&mut con, &["EVALSHA", &sha, "1", "c", "5"]).unwrap(),
        5
    );
    let library = "#!lua name=lib\nredis.register_function('myincr', function(keys, args) return redis.call('INCR', keys[1]) end)";
    assert_eq!(
        exec::<String>(&mut con, &["FUNCTION", "LOAD", library]).unwrap(),
        "lib"
    );
    assert_eq!(
        exec::<i64>(&mut con, &["FCALL", "myincr", "1", "f"]).unwrap(),
        1
    );

    // Read-only scripts are reads: no log entry.
    let before = current_index(&cluster, leader);
    let got: String = exec(
        &mut con,
        &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k1"],
    )
    .unwrap();
    assert_eq!(got, "v");
    // A function that writes is refused by FCALL_RO, by Redis itself.
    let refused = expect_err(&mut con, &["FCALL_RO", "myincr", "1", "f"]);
    assert!(refused.contains("write"), "{refused}");
    assert_eq!(current_index(&cluster, leader), before);

    // Nondeterministic commands are refused inside scripts; the script's writes before
    // the refusal are applied the same everywhere. Commands whose output is only unordered
    // (SMEMBERS, HGETALL, KEYS, ...) give scripts their reply sorted, as in the original.
    exec::<i64>(&mut con, &["SADD", "set", "c", "a", "b"]).unwrap();
    let members: Vec<String> = exec(
        &mut con,
        &["EVAL", "return redis.call('SMEMBERS', 'set')", "0"],
    )
    .unwrap();
    assert_eq!(members, ["a", "b", "c"]);
    for call in [
        "redis.call('SPOP', 'set')",
        "redis.call('SRANDMEMBER', 'set')",
        "redis.call('TIME')",
        "redis.call('RANDOMKEY')",
    ] {
        let error = expect_err(&mut con, &["EVAL", call, "0"]);
        assert!(
            error.contains("not supported by RedisRaft"),
            "{call}: {error}"
        );
    }
    // TTL inside a script answers from the entry's time, not the shifted stored value.
    exec::<String>(&mut con, &["SET", "t", "x", "EX", "100"]).unwrap();
    let ttl: i64 = exec(&mut con, &["EVAL", "return redis.call('TTL', 't')", "0"]).unwrap();
    assert!((99..=100).contains(&ttl), "TTL in a script: {ttl}");

    // After a failover the new leader knows the script and the function.
    let new_leader = transfer_leadership(&cluster, leader);
    let mut con = cluster.node(new_leader).client();
    assert_eq!(
        exec::<i64>(&mut con, &["EVALSHA", &sha, "1", "c", "5"]).unwrap(),
        10
    );
    assert_eq!(
        exec::<i64>(&mut con, &["FCALL", "myincr", "1", "f"]).unwrap(),
        2
    );
    assert_identical(&cluster);
}

#[test]
fn random_and_stream_commands_agree_on_every_node() {
    let cluster = Cluster::start(3, ET_MS);
    let (_, mut con) = leader_client(&cluster);
    let members: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let mut sadd = vec!["SADD", "s"];
    sadd.extend(members.iter().map(String::as_str));
    exec::<i64>(&mut con, &sadd).unwrap();
    let popped: Vec<String> = exec(&mut con, &["SPOP", "s", "5"]).unwrap();
    assert_eq!(popped.len(), 5);
    let one: String = exec(&mut con, &["SPOP", "s"]).unwrap();
    assert!(!popped.contains(&one));
    assert_eq!(
        exec::<Value>(&mut con, &["SPOP", "missing"]).unwrap(),
        Value::Nil
    );
    let random: String = exec(&mut con, &["SRANDMEMBER", "s"]).unwrap();
    assert!(members.contains(&random));
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(exec::<String>(&mut con, &["XADD", "st", "*", "f", "v"]).unwrap());
    }
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(ids, sorted, "stream ids must increase");
    assert_identical(&cluster);
    for id in cluster.ids() {
        let Value::Array(left) = cluster.local(id, &["SMEMBERS", "s"]) else {
            panic!("SMEMBERS")
        };
        let left: BTreeSet<String> = left.iter().map(text).collect();
        assert_eq!(left.len(), 194, "node {id}");
        assert!(popped.iter().all(|m| !left.contains(m)), "node {id}");
        let range = cluster.local(id, &["XRANGE", "st", "-", "+"]);
        let Value::Array(entries) = range else {
            panic!("XRANGE")
        };
        let got: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Value::Array(parts) => text(&parts[0]),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ids, "node {id} stream ids");
    }
}

/// DUMP and logical expiry time of every key, sorted, in one atomic script run.
const DUMP_ALL: &str = "local keys = redis.call('KEYS', '*') table.sort(keys) local out = {} \
    for _, k in ipairs(keys) do table.insert(out, k) table.insert(out, redis.call('DUMP', k)) \
    table.insert(out, redis.call('PEXPIRETIME', k)) end return out";

#[test]
fn expiry_is_decided_by_the_log() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let (leader, mut con) = leader_client(&cluster);

    // TTL commands answer as Redis does.
    exec::<String>(&mut con, &["SET", "x", "v", "EX", "100"]).unwrap();
    let ttl: i64 = exec(&mut con, &["TTL", "x"]).unwrap();
    assert!((99..=100).contains(&ttl));
    let pttl: i64 = exec(&mut con, &["PTTL", "x"]).unwrap();
    assert!((98_000..=100_000).contains(&pttl));
    let at: i64 = exec(&mut con, &["EXPIRETIME", "x"]).unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now_s + 98..=now_s + 101).contains(&at), "EXPIRETIME {at}");
    assert_eq!(exec::<i64>(&mut con, &["PERSIST", "x"]).unwrap(), 1);
    assert_eq!(exec::<i64>(&mut con, &["TTL", "x"]).unwrap(), -1);
    assert_eq!(
        exec::<i64>(&mut con, &["EXPIRE", "x", "50", "GT"]).unwrap(),
        0
    );
    assert_eq!(exec::<i64>(&mut con, &["EXPIRE", "x", "50"]).unwrap(), 1);
    assert_eq!(
        exec::<i64>(&mut con, &["EXPIRE", "x", "60", "GT"]).unwrap(),
        1
    );
    assert_eq!(exec::<i64>(&mut con, &["EXPIRE", "x", "-1"]).unwrap(), 1);
    assert_eq!(exec::<Value>(&mut con, &["GET", "x"]).unwrap(), Value::Nil);
    assert_eq!(exec::<i64>(&mut con, &["TTL", "x"]).unwrap(), -2);
    assert_eq!(exec::<i64>(&mut con, &["TTL", "missing"]).unwrap(), -2);
    exec::<String>(&mut con, &["SETEX", "y", "100", "v"]).unwrap();
    assert!((99..=100).contains(&exec::<i64>(&mut con, &["TTL", "y"]).unwrap()));
    let got: String = exec(&mut con, &["GETEX", "y", "PX", "1"]).unwrap();
    assert_eq!(got, "v");
    assert!(wait_until(Duration::from_secs(5), || {
        exec::<Value>(&mut con, &["GET", "y"]).unwrap() == Value::Nil
    }));

    // 1,000 keys with short TTLs while writers INCR them and give them new TTLs.
    let keys = 1000;
    let mut pipe = redis::pipe();
    for i in 0..keys {
        pipe.cmd("SET")
            .arg(format!("e{i}"))
            .arg(0)
            .arg("PX")
            .arg(50 + (i * 7) % 400)
            .ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let addr = cluster.addr(leader);
            let stop = stop.clone();
            thread::spawn(move || {
                let mut con =
                    connect(&format!("redis://{addr}/"), Duration::from_secs(10)).unwrap();
                let mut n = w * 7919;
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = format!("e{}", (n >> 33) % keys);
                    if n % 10 == 0 {
                        exec::<Value>(&mut con, &["PEXPIRE", &key, &(20 + n % 300).to_string()])
                            .unwrap();
                    } else {
                        exec::<i64>(&mut con, &["INCR", &key]).unwrap();
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }

    // Byte for byte: every key, its DUMP and its expiry, at the same applied index.
    let dump = |id: u64| -> Option<(i64, Value)> {
        let before = num(&cluster.info(id)?, "raft_last_applied_index");
        let value = cluster.local(id, &["EVAL", DUMP_ALL, "0"]);
        let after = num(&cluster.info(id)?, "raft_last_applied_index");
        (before == after).then_some((before, value))
    };
    let mut compared = false;
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        let Some(dumps) = ids.iter().map(|&id| dump(id)).collect::<Option<Vec<_>>>() else {
            return false;
        };
        if dumps.iter().all(|d| d.0 == dumps[0].0) {
            for (id, d) in ids.iter().zip(&dumps) {
                if d.1 != dumps[0].1 {
                    let (Value::Array(mine), Value::Array(first)) = (&d.1, &dumps[0].1) else {
                        panic!("dump script replies: {:?}", d.1)
                    };
                    let at = mine.iter().zip(first).position(|(a, b)| a != b);
                    let show = |v: &Vec<Value>| {
                        at.map(|i| format!("{:?}", &v[i.saturating_sub(2)..(i + 1).min(v.len())]))
                    };
                    panic!(
                        "node {id} differs from node {} at applied index {}: {} vs {} items; first difference: {:?} vs {:?}",
                        ids[0], d.0, mine.len(), first.len(), show(mine), show(first)
                    );
                }
            }
            compared = true;
        }
        compared
    });
    assert!(ok, "nodes never reached the same applied index");

    // Every key given a TTL goes away on its own (the leader's scans delete it on every
    // node); keys an INCR re-created after they expired have no TTL and stay.
    let with_ttl = "local n = 0 for _, k in ipairs(redis.call('KEYS', 'e*')) do \
        if redis.call('PEXPIRETIME', k) ~= -1 then n = n + 1 end end return n";
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        ids.iter()
            .all(|&id| int(&cluster.local(id, &["EVAL", with_ttl, "0"])) == 0)
    });
    assert!(ok, "expired keys were not deleted everywhere");
    assert_identical(&cluster);
}

/// Issue #14 (item 8a): absurd TTLs get Redis' replies, and no node keeps the key with a
/// stored expiry its own clock can reach. Before, `EXPIRE k -70368744172` (about -2^46 ms)
/// answered 1 but stored an expiry 5 s ahead of the real clock (the shift is 2^46 ms): the
/// key stayed on every node until each server expired it on its own.
#[test]
fn absurd_ttls_answer_as_redis_and_never_reach_a_server_clock() {
    let cluster = Cluster::start(3, ET_MS);
    let (_, mut con) = leader_client(&cluster);
    let plain = Server::start(ServerOpts::new().without_module());
    let mut plain_con = plain.client();
    let reply = |con: &mut Connection, args: &[&str]| -> String {
        match exec::<Value>(con, args) {
            Ok(v) => text(&v),
            Err(e) => err_text(&e),
        }
    };
    let cases: &[&[&str]] = &[
        &["SET", "k", "v"],
        &["EXPIRE", "k", "-70368744172"],
        &["EXISTS", "k"],
        &["SET", "k", "v"],
        &["PEXPIRE", "k", "-70368744177664"],
        &["EXISTS", "k"],
        &["SET", "k", "v"],
        &["EXPIREAT", "k", "-70366744172"],
        &["EXISTS", "k"],
        &["SET", "k", "v"],
        &["EXPIRE", "k", "0"],
        &["EXISTS", "k"],
        &["SET", "k", "v"],
        &["EXPIRE", "k", "9223372036854775"],
        &["PEXPIRE", "k", "9223372036854775000"],
        &["EXPIRE", "k", "-9223372036854775808"],
        &["SET", "k", "v", "EX", "9223372036854775"],
        &["SET", "k", "v", "PX", "9223372036854775000"],
        &["SETEX", "k", "9223372036854775", "v"],
        &["GETEX", "k", "PX", "9223372036854775000"],
        &["TTL", "k"],
        &["SET", "j", "v", "PXAT", "5"],
        &["EXISTS", "j"],
    ];
    for args in cases {
        assert_eq!(
            reply(&mut con, args),
            reply(&mut plain_con, args),
            "{args:?}: cluster vs plain Redis"
        );
    }
    cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    for id in cluster.ids() {
        // Bypassing the module's reads (which would delete a logically expired key
        // through the log): what the node itself stores.
        assert_eq!(
            cluster.local(id, &["EXISTS", "j"]),
            Value::Int(0),
            "node {id} stores j"
        );
        assert_eq!(
            int(&cluster.local(id, &["PEXPIRETIME", "k"])),
            -1,
            "node {id}: k got an expiry"
        );
    }
    exec::<String>(&mut con, &["SET", "gone", "v"]).unwrap();
    assert_eq!(
        exec::<i64>(&mut con, &["EXPIRE", "gone", "-70368744172"]).unwrap(),
        1
    );
    cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    for id in cluster.ids() {
        assert_eq!(
            cluster.local(id, &["EXISTS", "gone"]),
            Value::Int(0),
            "node {id} still stores a key EXPIRE -70368744172 deleted"
        );
    }
    assert_identical(&cluster);
}

/// Runs a blocking command on its own connection in a thread.
fn blocked(
    addr: String,
    args: &'static [&'static str],
) -> thread::JoinHandle<Result<Value, String>> {
    thread::spawn(move || {
        let mut con = try_connect(&addr, Duration::from_secs(30)).map_err(|e| err_text(&e))?;
        exec::<Value>(&mut con, args).map_err(|e| err_text(&e))
    })
}

#[test]
fn blocking_commands_wait_for_the_log() {
    let cluster = Cluster::start(3, ET_MS);
    let (leader, mut con) = leader_client(&cluster);
    let addr = cluster.addr(leader);

    // Nothing to pop: Redis' null reply once the timeout passes.
    let started = std::time::Instant::now();
    assert_eq!(
        exec::<Value>(&mut con, &["BLPOP", "empty", "0.3"]).unwrap(),
        Value::Nil
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
        "BLPOP with a 0.3 s timeout answered after {waited:?}"
    );

    // Clients waiting on a key are served, one element each, by later pushes.
    let first = blocked(addr.clone(), &["BLPOP", "q", "0"]);
    let second = blocked(addr.clone(), &["BRPOP", "q", "0"]);
    let mover = blocked(
        addr.clone(),
        &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "10"],
    );
    let zset = blocked(addr.clone(), &["BZPOPMIN", "z", "0"]);
    exec::<i64>(&mut con, &["RPUSH", "q", "a"]).unwrap();
    exec::<i64>(&mut con, &["RPUSH", "q", "b"]).unwrap();
    exec::<i64>(&mut con, &["RPUSH", "src", "moved"]).unwrap();
    exec::<i64>(&mut con, &["ZADD", "z", "1", "m"]).unwrap();
    let mut popped = BTreeSet::new();
    for handle in [first, second] {
        let Value::Array(pair) = handle.join().unwrap().unwrap() else {
            panic!("blocking pop did not return a pair")
        };
        assert_eq!(text(&pair[0]), "q");
        popped.insert(text(&pair[1]));
    }
    assert_eq!(popped, BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(text(&mover.join().unwrap().unwrap()), "moved");
    let Value::Array(z) = zset.join().unwrap().unwrap() else {
        panic!("BZPOPMIN")
    };
    assert_eq!(text(&z[1]), "m");

    // Inside MULTI a blocking command does not wait (as in Redis).
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["BLPOP", "empty", "0"]).unwrap();
    let reply = con
        .req_packed_command(&redis::cmd("EXEC").get_packed_command())
        .unwrap();
    assert_eq!(reply, Value::Array(vec![Value::Nil]));

    // A client waiting on a node that stops leading is redirected, not left hanging.
    let waiting = blocked(addr.clone(), &["BLPOP", "never", "0"]);
    thread::sleep(Duration::from_millis(200));
    let new_leader = transfer_leadership(&cluster, leader);
    let redirected = waiting.join().unwrap();
    assert_eq!(
        redirected,
        Err(format!("MOVED 0 {}", cluster.addr(new_leader))),
        "blocked client after the leader changed"
    );

    // XREAD BLOCK stays refused; without BLOCK it is a read.
    let mut con = cluster.node(new_leader).client();
    let before = current_index(&cluster, new_leader);
    assert_eq!(
        expect_err(&mut con, &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
        "ERR not supported by RedisRaft"
    );
    assert_eq!(current_index(&cluster, new_leader), before);
    exec::<String>(&mut con, &["XADD", "s", "1-1", "f", "v"]).unwrap();
    let read: Value = exec(&mut con, &["XREAD", "STREAMS", "s", "0"]).unwrap();
    assert!(
        matches!(read, Value::Array(ref a) if a.len() == 1),
        "{read:?}"
    );
    for id in cluster.ids() {
        assert_eq!(int(&cluster.local(id, &["LLEN", "q"])), 0, "node {id}");
        assert_eq!(
            text(&cluster.local(id, &["LINDEX", "dst", "0"])),
            "moved",
            "node {id}"
        );
    }
    assert_identical(&cluster);
}

#[test]
fn pubsub_delivers_on_every_node_across_leader_changes() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let (leader, mut con) = leader_client(&cluster);
    let mut subscribers: Vec<Connection> = ids
        .iter()
        .map(|&id| {
            let mut sub = cluster
                .node(id)
                .client_with_timeout(Duration::from_secs(10));
            sub.send_packed_command(&redis::cmd("SUBSCRIBE").arg("news").get_packed_command())
                .unwrap();
            let confirm = sub.recv_response().unwrap();
            assert!(format!("{confirm:?}").contains("subscribe"), "{confirm:?}");
            sub
        })
        .collect();
    let receive = |subs: &mut Vec<Connection>, want: &str| {
        for sub in subs.iter_mut() {
            let message = sub.recv_response().unwrap();
            let Value::Array(parts) = message else {
                panic!("{message:?}")
            };
            assert_eq!(text(&parts[0]), "message");
            assert_eq!(text(&parts[2]), want);
        }
    };
    // PUBLISH is a log entry: every node delivers it to its own subscribers.
    let local_receivers: i64 = exec(&mut con, &["PUBLISH", "news", "first"]).unwrap();
    assert_eq!(local_receivers, 1, "the leader counts its own subscribers");
    receive(&mut subscribers, "first");
    let new_leader = transfer_leadership(&cluster, leader);
    let mut con = cluster.node(new_leader).client();
    exec::<i64>(&mut con, &["PUBLISH", "news", "second"]).unwrap();
    receive(&mut subscribers, "second");
}

#[test]
fn follower_proxy_forwards_checked_commands_but_not_restricted_scripts() {
    let cluster = Cluster::start(3, ET_MS);
    for id in cluster.ids() {
        let node = cluster.node(id);
        let reply: String = node
            .cmd(&["ACL", "SETUSER", "carol", "on", ">pw", "+@all", "~allowed*"])
            .unwrap();
        assert_eq!(reply, "OK");
        let reply: String = node
            .cmd(&["CONFIG", "SET", "raft.follower-proxy", "yes"])
            .unwrap();
        assert_eq!(reply, "OK");
    }
    let (leader, _) = leader_client(&cluster);
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let follower_addr = cluster.addr(follower);
    let mut carol = connect(
        &format!("redis://carol:pw@{follower_addr}/"),
        Duration::from_secs(10),
    )
    .unwrap();
    // A plain command is checked against carol on the follower, then forwarded.
    assert_eq!(
        exec::<String>(&mut carol, &["SET", "allowed:1", "v"]).unwrap(),
        "OK"
    );
    assert_eq!(
        text(&cluster.local(leader, &["GET", "allowed:1"])),
        "v",
        "the proxied write reached the leader"
    );
    assert_eq!(
        expect_err(&mut carol, &["SET", "secret", "v"]),
        noperm_words(cluster.node(follower), "carol", "set").0
    );
    // Her script would run on the leader as the cluster user: not proxied.
    let script = "return redis.call('SET', KEYS[1], 'from-script')";
    let error = expect_err(&mut carol, &["EVAL", script, "1", "allowed:2"]);
    assert_eq!(error, format!("MOVED 0 {}", cluster.addr(leader)));
    let mut admin = cluster.node(follower).client();
    assert_eq!(
        exec::<Value>(&mut admin, &["EVAL", script, "1", "secret"]).unwrap(),
        Value::Okay,
        "an unrestricted user's script is proxied"
    );
    assert_eq!(
        text(&cluster.local(leader, &["GET", "secret"])),
        "from-script"
    );
    assert_eq!(text(&cluster.local(leader, &["EXISTS", "allowed:2"])), "0");
}

#[test]
fn acl_is_checked_before_the_log_and_scripts_run_as_the_caller() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    // ACL rules are per server: the same on every node.
    for &id in &ids {
        let reply: String = cluster
            .node(id)
            .cmd(&[
                "ACL", "SETUSER", "alice", "on", ">pw", "+@all", "-set", "~*", "&*",
            ])
            .unwrap();
        assert_eq!(reply, "OK");
        let reply: String = cluster
            .node(id)
            .cmd(&[
                "ACL",
                "SETUSER",
                "bob",
                "on",
                ">pw",
                "+raft",
                "+get",
                "+set",
                "~allowed*",
            ])
            .unwrap();
        assert_eq!(reply, "OK");
    }
    let (leader, mut admin) = leader_client(&cluster);
    exec::<String>(&mut admin, &["SET", "k", "original"]).unwrap();
    let addr = cluster.addr(leader);
    let mut alice = connect(&format!("redis://alice:pw@{addr}/"), Duration::from_secs(5)).unwrap();
    let before = current_index(&cluster, leader);
    assert_eq!(
        expect_err(&mut alice, &["SET", "k", "alice"]),
        noperm_words(cluster.node(leader), "alice", "set").1
    );
    let error = expect_err(
        &mut alice,
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 'alice')",
            "1",
            "k",
        ],
    );
    assert!(
        error.contains("can't run this command")
            || error.contains("no permissions")
            || error.contains("No permissions"),
        "{error}"
    );
    assert_eq!(
        exec::<String>(&mut alice, &["GET", "k"]).unwrap(),
        "original"
    );
    assert_eq!(exec::<i64>(&mut alice, &["INCR", "counter"]).unwrap(), 1);

    let mut bob = connect(&format!("redis://bob:pw@{addr}/"), Duration::from_secs(5)).unwrap();
    assert_eq!(
        expect_err(&mut bob, &["SET", "k", "bob"]),
        noperm_words(cluster.node(leader), "bob", "set").0
    );
    assert_eq!(
        exec::<String>(&mut bob, &["SET", "allowed1", "bob"]).unwrap(),
        "OK"
    );
    // Only the EVAL entry and alice's INCR and bob's SET were logged.
    assert_eq!(current_index(&cluster, leader), before + 3);
    // HELLO with AUTH switches user on a connection.
    let mut con = cluster.node(leader).client();
    let hello: Value = exec(&mut con, &["HELLO", "2", "AUTH", "bob", "pw"]).unwrap();
    assert!(matches!(hello, Value::Array(_)), "{hello:?}");
    assert!(expect_err(&mut con, &["GET", "k"]).starts_with("NOPERM"));
    for &id in &ids {
        assert_eq!(
            text(&cluster.local(id, &["GET", "k"])),
            "original",
            "node {id}"
        );
    }
    assert_identical(&cluster);
}

#[test]
fn resp3_replies_select_and_argument_errors() {
    let cluster = Cluster::start(3, ET_MS);
    let (leader, _) = leader_client(&cluster);
    let addr = cluster.addr(leader);
    let mut con = connect(
        &format!("redis://{addr}/?protocol=resp3"),
        Duration::from_secs(5),
    )
    .unwrap();
    exec::<i64>(&mut con, &["HSET", "h", "f", "v"]).unwrap();
    let map: Value = exec(&mut con, &["HGETALL", "h"]).unwrap();
    assert!(matches!(map, Value::Map(ref m) if m.len() == 1), "{map:?}");
    exec::<i64>(&mut con, &["ZADD", "z", "1.5", "m"]).unwrap();
    let score: Value = exec(&mut con, &["ZSCORE", "z", "m"]).unwrap();
    assert_eq!(score, Value::Double(1.5));
    exec::<String>(&mut con, &["MULTI"]).unwrap();
    exec::<String>(&mut con, &["HGETALL", "h"]).unwrap();
    let Value::Array(items) = exec::<Value>(&mut con, &["EXEC"]).unwrap() else {
        panic!("EXEC")
    };
    assert!(matches!(items[0], Value::Map(_)), "{items:?}");
    let info: Value = exec(&mut con, &["INFO", "raft"]).unwrap();
    assert!(
        matches!(&info, Value::VerbatimString { text, .. } if text.contains("raft_role:leader")),
        "{info:?}"
    );

    let before = current_index(&cluster, leader);
    assert_eq!(
        expect_err(&mut con, &["SELECT", "1"]),
        "ERR not supported by RedisRaft"
    );
    assert_eq!(exec::<String>(&mut con, &["SELECT", "0"]).unwrap(), "OK");
    assert_eq!(
        expect_err(&mut con, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert!(expect_err(&mut con, &["NOSUCH"]).starts_with("ERR unknown command 'NOSUCH'"));
    assert_eq!(
        current_index(&cluster, leader),
        before,
        "errors were logged"
    );
    // Errors only known when applied: the same on every node.
    exec::<String>(&mut con, &["SET", "str", "x"]).unwrap();
    assert!(expect_err(&mut con, &["LPUSH", "str", "y"]).starts_with("WRONGTYPE"));
    assert!(expect_err(&mut con, &["INCR", "str"]).starts_with("ERR value is not an integer"));
    assert_identical(&cluster);
}

/// docs/COMMANDS.md is generated from the command table of Redis 7.0 (the default
/// server); `UPDATE_COMMANDS_DOC=1` rewrites it.
#[test]
fn commands_doc_matches_the_command_table() {
    let server = Server::start_default();
    let version = server
        .info_field("server", "redis_version")
        .unwrap_or_default();
    let Value::Array(rows) = server.cmd::<Value>(&["RAFT.DEBUG", "COMMANDS"]).unwrap() else {
        panic!("RAFT.DEBUG COMMANDS")
    };
    let rows: Vec<(String, String)> = rows
        .iter()
        .map(|row| match row {
            Value::Array(pair) => (text(&pair[0]), text(&pair[1])),
            other => panic!("{other:?}"),
        })
        .collect();
    for (name, class) in [
        ("get", "read"),
        ("set", "write"),
        ("multi", "transaction"),
        ("blpop", "write"),
        ("xread (with BLOCK)", "refused"),
        ("ping", "passed through"),
    ] {
        assert!(
            rows.contains(&(name.to_string(), class.to_string())),
            "{name}: {rows:?}"
        );
    }
    let generated = commands_doc(&rows, &version);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/COMMANDS.md");
    if std::env::var("UPDATE_COMMANDS_DOC").is_ok() {
        std::fs::write(&path, &generated).unwrap();
    }
    if !version.starts_with("7.0.") {
        // Other servers have other commands; the document describes the default one.
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/COMMANDS.md is out of date: run UPDATE_COMMANDS_DOC=1 cargo test --release --test commands commands_doc"
    );
}

fn commands_doc(rows: &[(String, String)], version: &str) -> String {
    let mut doc = String::from(include_str!("commands_doc_header.md"));
    doc.push_str(&format!(
        "\n## The table ({} commands and subcommands of Redis {version})\n\n| command | handling |\n|---|---|\n",
        rows.len()
    ));
    for (name, class) in rows {
        doc.push_str(&format!("| `{name}` | {class} |\n"));
    }
    doc
}

/// Issue #15: over `maxmemory`, the leader refuses what Redis refuses (`denyoom`) with
/// Redis' own words, before anything is logged; deletes and the module's own entries
/// (expiry, snapshots) still go through; raising the limit makes writes work again. On
/// one node and on the leader of three.
#[test]
fn maxmemory_refuses_denyoom_writes_before_the_log() {
    let plain = Server::start(ServerOpts::new().without_module());
    let mut con = plain.client();
    let _: String = exec(&mut con, &["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    let oom = expect_err(&mut con, &["SET", "k", "v"]);
    assert!(oom.starts_with("OOM "), "plain server: {oom}");
    // Inside MULTI Redis 7.0 refuses to queue anything, Valkey only `denyoom` commands.
    let reply_text = |reply: redis::RedisResult<Value>| match reply {
        Ok(v) => text(&v),
        Err(e) => err_text(&e),
    };
    let _: String = exec(&mut con, &["MULTI"]).unwrap();
    let queued_del = reply_text(exec(&mut con, &["DEL", "k"]));
    assert_eq!(expect_err(&mut con, &["SET", "k", "v"]), oom);
    let execabort = expect_err(&mut con, &["EXEC"]);

    for size in [1, 3] {
        let cluster = Cluster::start(size, ET_MS);
        let (leader, mut con) = leader_client(&cluster);
        let _: String = exec(&mut con, &["SET", "a", "1"]).unwrap();
        let _: String = exec(&mut con, &["SET", "t", "x", "PX", "300"]).unwrap();
        let _: String = exec(&mut con, &["CONFIG", "SET", "maxmemory", "1"]).unwrap();
        cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
        let index = current_index(&cluster, leader);
        assert_eq!(
            expect_err(&mut con, &["SET", "k", "v"]),
            oom,
            "{size} nodes"
        );
        assert_eq!(expect_err(&mut con, &["INCR", "n"]), oom, "{size} nodes");
        assert_eq!(expect_err(&mut con, &["RAFT", "LPUSH", "l", "x"]), oom);
        let _: String = exec(&mut con, &["MULTI"]).unwrap();
        assert_eq!(reply_text(exec(&mut con, &["DEL", "k"])), queued_del);
        assert_eq!(expect_err(&mut con, &["SET", "k", "v"]), oom);
        assert_eq!(expect_err(&mut con, &["EXEC"]), execabort);
        assert_eq!(
            current_index(&cluster, leader),
            index,
            "{size} nodes: a refused write was logged"
        );
        // Deletes and the module's own entries are not refused.
        assert_eq!(exec::<i64>(&mut con, &["DEL", "a"]).unwrap(), 1);
        let ids = cluster.ids();
        assert!(
            wait_until(CONVERGE_TIMEOUT, || ids
                .iter()
                .all(|&id| int(&cluster.local(id, &["EXISTS", "t"])) == 0)),
            "{size} nodes: the expired key was not deleted over maxmemory"
        );
        let _: String = exec(&mut con, &["RAFT.DEBUG", "COMPACT"]).unwrap();
        // Raising the limit lets writes in again.
        let _: String = exec(&mut con, &["CONFIG", "SET", "maxmemory", "0"]).unwrap();
        let _: String = exec(&mut con, &["SET", "k", "after"]).unwrap();
        cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
        for &id in &ids {
            assert_eq!(
                text(&cluster.local(id, &["GET", "k"])),
                "after",
                "node {id}"
            );
            assert_eq!(int(&cluster.local(id, &["EXISTS", "a"])), 0, "node {id}");
        }
        assert_identical(&cluster);
    }
}

/// Issue #15: ACL refusals are worded as the running server words them (Redis 7.0:
/// `NOPERM this user has no permissions to access one of the keys used as arguments`;
/// Redis 7.2+ and Valkey: `NOPERM No permissions to access a key`, ...), for commands,
/// subcommands, keys, channels, scripts and commands queued in MULTI: compared with a
/// plain server of the same binary.
#[test]
fn acl_refusals_are_worded_as_the_server_words_them() {
    let plain = Server::start(ServerOpts::new().without_module());
    let cluster = Cluster::start(1, ET_MS);
    let node = cluster.node(1);
    let users: [&[&str]; 2] = [
        &[
            "ACL",
            "SETUSER",
            "u",
            "on",
            ">pw",
            "+@all",
            "-set",
            "~allowed*",
            "&allowed*",
        ],
        &[
            "ACL",
            "SETUSER",
            "v",
            "on",
            ">pw",
            "+@all",
            "-object|encoding",
            "~*",
            "&*",
        ],
    ];
    for server in [&plain, node] {
        for user in users {
            let reply: String = server.cmd(user).unwrap();
            assert_eq!(reply, "OK");
        }
        let reply: String = server.cmd(&["SET", "allowed1", "x"]).unwrap();
        assert_eq!(reply, "OK");
    }
    let script = "return redis.call('GET', 'secret')";
    let cases: [(&str, &[&str]); 7] = [
        ("u", &["SET", "allowed1", "v"]),
        ("u", &["GET", "secret"]),
        ("u", &["INCR", "secret"]),
        ("u", &["PUBLISH", "secretchan", "m"]),
        ("u", &["EVAL", "return 1", "1", "secret"]),
        ("u", &["EVAL", script, "1", "allowed1"]),
        ("v", &["OBJECT", "ENCODING", "allowed1"]),
    ];
    let connect_as = |server: &Server, user: &str| {
        connect(
            &format!("redis://{user}:pw@{}/", server.addr()),
            Duration::from_secs(5),
        )
        .unwrap()
    };
    for (user, args) in cases {
        let want = expect_err(&mut connect_as(&plain, user), args);
        assert!(
            want.starts_with("NOPERM") || want.contains("can't") || want.contains("ACL"),
            "plain server: {want}"
        );
        let got = expect_err(&mut connect_as(node, user), args);
        assert_eq!(got, want, "{user}: {args:?}");
    }
    // Queued inside MULTI: refused with the same words, and EXEC aborts.
    let mut replies = Vec::new();
    for server in [&plain, node] {
        let mut con = connect_as(server, "u");
        let _: String = exec(&mut con, &["MULTI"]).unwrap();
        let refused = expect_err(&mut con, &["GET", "secret"]);
        replies.push((refused, expect_err(&mut con, &["EXEC"])));
    }
    assert_eq!(replies[1], replies[0]);
    assert_eq!(text(&cluster.local(1, &["GET", "allowed1"])), "x");
}
