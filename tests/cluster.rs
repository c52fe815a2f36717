//! Multi-node integration tests: 3- and 5-node clusters of real redis-server processes.
//! Replication, leader `kill -9` with concurrent writers, follower restart and catch-up,
//! SIGSTOP of the leader (no stale read), membership changes under load, leader
//! transfer, join errors, the `redis` crate's cluster client across a failover, and
//! quorum reads on a minority leader.
//!
//! Every wait has a deadline; nothing sleeps and hopes (the only sleeps are the short
//! back-offs of client retry loops, which are themselves bounded by deadlines).
//! Run by `make test` against redis-server and again against Valkey.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use redis::{RedisResult, Value};

use common::cluster::*;

// ---------------------------------------------------------------------------------------
// Concurrent writers: RPUSH of unique values, recording what was acknowledged.

#[derive(Default)]
struct WriterLog {
    writer: usize,
    /// Acknowledged values, in acknowledgement order.
    acked: Vec<String>,
    /// Values of which some attempt had an unknown outcome: they may appear twice.
    uncertain: HashSet<String>,
    /// Every value ever sent.
    attempted: HashSet<String>,
    /// Unexpected error replies (must stay empty).
    errors: Vec<String>,
}

struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handles: Vec<JoinHandle<WriterLog>>,
}

impl Writers {
    /// `n` threads doing `RPUSH key w<t>-<k>` through `addrs`, each value retried until
    /// acknowledged (or the writers are stopped).
    fn start(addrs: Vec<String>, key: &str, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let handles = (0..n)
            .map(|t| {
                let (stop, acked, key) = (stop.clone(), acked.clone(), key.to_string());
                let mut router = Router::new(addrs.clone());
                router.next = t; // spread the writers' first contacts
                thread::spawn(move || {
                    let mut log = WriterLog {
                        writer: t,
                        ..Default::default()
                    };
                    let mut k = 0u64;
                    'values: while !stop.load(Ordering::Relaxed) {
                        let value = format!("w{t}-{k}");
                        k += 1;
                        log.attempted.insert(value.clone());
                        let give_up = Instant::now() + Duration::from_secs(60);
                        loop {
                            match router.attempt(&["RPUSH", &key, &value]) {
                                Attempt::Done(_) => {
                                    log.acked.push(value);
                                    acked.fetch_add(1, Ordering::Relaxed);
                                    continue 'values;
                                }
                                Attempt::Unknown(_) => {
                                    log.uncertain.insert(value.clone());
                                }
                                Attempt::Rejected(_) => {}
                                Attempt::Error(e) => {
                                    log.errors.push(format!("RPUSH {value}: {e}"));
                                    log.uncertain.insert(value.clone());
                                }
                            }
                            if stop.load(Ordering::Relaxed) {
                                break 'values;
                            }
                            if Instant::now() >= give_up {
                                log.errors
                                    .push(format!("RPUSH {value}: not acknowledged in 60 s"));
                                break 'values;
                            }
                            sleep(RETRY_BACKOFF);
                        }
                    }
                    log
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            handles,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `count` more values than now have been acknowledged.
    fn wait_progress(&self, count: u64, timeout: Duration, what: &str) {
        let target = self.acked() + count;
        assert!(
            wait_until(timeout, || self.acked() >= target),
            "{what}: writers acknowledged {} of {target} values within {timeout:?}",
            self.acked()
        );
    }

    fn finish(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("writer thread panicked"))
            .collect()
    }
}

/// Checks the final list against what the writers saw: every acknowledged value present,
/// exactly once unless some attempt of it had an unknown outcome; nothing that was never
/// sent; each writer's acknowledged values in acknowledgement order.
fn check_list(list: &[String], logs: &[WriterLog]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut first_pos: HashMap<&str, usize> = HashMap::new();
    for (i, v) in list.iter().enumerate() {
        *counts.entry(v).or_default() += 1;
        first_pos.entry(v).or_insert(i);
    }
    let mut uncertain = HashSet::new();
    let mut attempted = HashSet::new();
    for log in logs {
        assert!(
            log.errors.is_empty(),
            "writer {}: {:?}",
            log.writer,
            log.errors
        );
        uncertain.extend(log.uncertain.iter().map(String::as_str));
        attempted.extend(log.attempted.iter().map(String::as_str));
    }
    for (v, &n) in &counts {
        assert!(
            attempted.contains(v),
            "value {v} is in the list but was never sent"
        );
        assert!(
            n == 1 || uncertain.contains(v),
            "value {v} appears {n} times but every attempt had a definite outcome"
        );
    }
    for log in logs {
        let mut last = None;
        for v in &log.acked {
            let pos = *first_pos
                .get(v.as_str())
                .unwrap_or_else(|| panic!("acknowledged value {v} is lost"));
            if let Some((prev_v, prev)) = last {
                assert!(
                    pos > prev,
                    "acknowledged {v} (position {pos}) sits before {prev_v} (position {prev}), \
                     which was acknowledged earlier by the same writer"
                );
            }
            last = Some((v, pos));
        }
    }
}

/// Replies counted by text, for compact diagnostics.
fn count_texts(texts: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for t in texts {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------
// Raw RESP over TCP: lets a request sit in a SIGSTOPped server's socket.

fn raw_send(stream: &mut TcpStream, args: &[&str]) {
    let mut buf = format!("*{}\r\n", args.len());
    for a in args {
        buf.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(buf.as_bytes()).expect("raw send");
}

/// Reads one simple reply (status, error, integer, or bulk string) as text:
/// `+OK`, `-MOVED ...`, `$old` (bulk), `$nil`.
fn raw_read(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("connection closed"));
    }
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.parse().map_err(std::io::Error::other)?;
        if len < 0 {
            return Ok("$nil".into());
        }
        let mut data = vec![0; len as usize + 2];
        reader.read_exact(&mut data)?;
        data.truncate(len as usize);
        return Ok(format!("${}", String::from_utf8_lossy(&data)));
    }
    Ok(line)
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn three_node_replication() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let info = cluster.info(leader).unwrap();
    assert_eq!(num(&info, "raft_num_voting_nodes"), 3);
    assert_eq!(num(&info, "raft_num_nodes"), 3);
    assert_eq!(
        info_nodes(&info).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{info:?}"
    );
    for &id in &ids {
        let info = cluster.info(id).unwrap();
        assert_eq!(field(&info, "raft_is_voting"), "yes", "node {id}");
        assert_eq!(num(&info, "raft_node_id"), id as i64);
        let want = if id == leader { "leader" } else { "follower" };
        assert_eq!(field(&info, "raft_role"), want, "node {id}");
    }

    // Writes on the leader.
    let mut con = cluster.node(leader).client();
    for i in 0..50 {
        let k = format!("key:{i}");
        let v = format!("value:{i}");
        let _: () =
            exec(&mut con, &["SET", &k, &v]).unwrap_or_else(|e| panic!("SET: {}", err_text(&e)));
    }
    let n: i64 = exec(&mut con, &["INCRBY", "counter", "7"]).unwrap();
    assert_eq!(n, 7);
    let len: i64 = exec(&mut con, &["RPUSH", "list", "a", "b", "c"]).unwrap();
    assert_eq!(len, 3);

    // ... appear on every node.
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    for &id in &ids {
        for i in [0, 17, 49] {
            assert_eq!(
                value_text(&cluster.local(id, &["GET", &format!("key:{i}")])),
                format!("value:{i}"),
                "node {id}"
            );
        }
        assert_eq!(value_text(&cluster.local(id, &["GET", "counter"])), "7");
        assert_eq!(
            strings(cluster.local(id, &["LRANGE", "list", "0", "-1"])),
            ["a", "b", "c"]
        );
        assert_eq!(cluster.local(id, &["DBSIZE"]), Value::Int(52), "node {id}");
    }

    // Followers redirect reads and writes to the leader.
    let leader_addr = cluster.addr(leader);
    for &id in ids.iter().filter(|&&id| id != leader) {
        let mut con = cluster.node(id).client();
        for args in [&["GET", "key:1"][..], &["SET", "key:1", "other"][..]] {
            assert_eq!(
                expect_err(&mut con, args),
                format!("MOVED 0 {leader_addr}"),
                "node {id}: {args:?}"
            );
        }
    }
    // The follower did not write anything.
    assert_eq!(
        value_text(
            &cluster
                .node(leader)
                .cmd::<Value>(&["GET", "key:1"])
                .unwrap()
        ),
        "value:1"
    );

    // CLUSTER SLOTS on a follower names the leader first.
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let slots: Value = cluster.node(follower).cmd(&["CLUSTER", "SLOTS"]).unwrap();
    let Value::Array(ranges) = slots else {
        panic!("CLUSTER SLOTS: {slots:?}")
    };
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let Value::Array(range) = &ranges[0] else {
        panic!("{ranges:?}")
    };
    assert_eq!(range[0], Value::Int(0));
    assert_eq!(range[1], Value::Int(16383));
    assert_eq!(range.len(), 2 + 3, "{range:?}");
    let Value::Array(master) = &range[2] else {
        panic!("{range:?}")
    };
    assert_eq!(
        format!("{}:{}", value_text(&master[0]), value_text(&master[1])),
        leader_addr
    );
}

#[test]
fn five_node_leader_kill9_with_concurrent_writers() {
    // The default election timeout: raft-rs randomizes it in [1, 2) timeouts, and with 5
    // servers and 4 writers on 2 cores a pre-vote + vote round needs some slack too.
    let et_ms = 1000;
    let mut cluster = Cluster::start(5, et_ms);
    let ids = cluster.ids();
    let old_leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let old_term = num(&cluster.info(old_leader).unwrap(), "raft_current_term");

    let writers = Writers::start(cluster.addrs(&ids), "list", 4);
    writers.wait_progress(150, CONVERGE_TIMEOUT, "before the kill");

    cluster.node_mut(old_leader).kill9();
    let killed_at = Instant::now();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != old_leader).collect();

    // A new leader (among the survivors, in a later term) within 3 election timeouts.
    let mut new_leader = None;
    let found = wait_until(Duration::from_millis(10 * et_ms), || {
        new_leader = survivors.iter().copied().find(|&id| {
            cluster.info(id).is_some_and(|info| {
                field(&info, "raft_role") == "leader" && num(&info, "raft_current_term") > old_term
            })
        });
        new_leader.is_some()
    });
    let elapsed = killed_at.elapsed();
    assert!(
        found,
        "no new leader after {elapsed:?}; {}",
        cluster.describe(&survivors)
    );
    assert!(
        elapsed <= Duration::from_millis(3 * et_ms),
        "new leader {new_leader:?} took {elapsed:?} (> 3 election timeouts of {et_ms} ms)"
    );

    // The writers continue through the new leader.
    writers.wait_progress(150, CONVERGE_TIMEOUT, "after the kill");
    let logs = writers.finish();

    // The old leader comes back and catches up; then every node holds the same list.
    cluster.node_mut(old_leader).restart();
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let list = strings(same_everywhere(
        &cluster,
        &ids,
        &["LRANGE", "list", "0", "-1"],
    ));
    check_list(&list, &logs);
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    assert!(acked >= 300, "only {acked} values acknowledged");
    eprintln!(
        "kill9: new leader {} after {elapsed:?}; {acked} acknowledged, list length {}, {} uncertain",
        new_leader.unwrap(),
        list.len(),
        logs.iter().map(|l| l.uncertain.len()).sum::<usize>()
    );
}

#[test]
fn follower_restart_catches_up() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    cluster.node_mut(follower).stop();

    // 1000 keys while the follower is down (the other two are a majority).
    let mut con = cluster.node(leader).client();
    for batch in 0..10 {
        let mut pipe = redis::pipe();
        for i in batch * 100..(batch + 1) * 100 {
            pipe.cmd("SET")
                .arg(format!("k{i}"))
                .arg(format!("v{i}"))
                .ignore();
        }
        let _: () = pipe
            .query(&mut con)
            .unwrap_or_else(|e| panic!("batch {batch}: {}", err_text(&e)));
    }
    let commit = num(&cluster.info(leader).unwrap(), "raft_commit_index");
    assert!(commit >= 1000, "commit index {commit} after 1000 writes");

    cluster.node_mut(follower).restart();
    cluster.wait_applied(&[follower], commit, CONVERGE_TIMEOUT);
    let info = cluster.info(follower).unwrap();
    assert_eq!(field(&info, "raft_state"), "up");
    assert_eq!(field(&info, "raft_role"), "follower");

    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    let values = strings(same_everywhere(&cluster, &ids, &mget));
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v, &format!("v{i}"), "key k{i}");
    }
    assert_eq!(cluster.local(follower, &["DBSIZE"]), Value::Int(1000));
}

#[test]
fn leader_sigstop_steps_down_no_stale_read() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let old = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != old).collect();
    let mut router = cluster.router(&ids);
    router.must(&["SET", "k", "old"], CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);

    // Connections to the old leader opened before the freeze.
    let mut raw: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(cluster.addr(old)).expect("connect"))
        .collect();
    let mut raw_write = TcpStream::connect(cluster.addr(old)).expect("connect");
    cluster.node(old).sigstop();
    let stopped_at = Instant::now();

    let new = cluster.wait_leader(&others, Duration::from_millis(20 * cluster.et_ms));
    assert_ne!(new, old);
    let mut router = cluster.router(&others);
    router.must(&["SET", "k", "new"], CONVERGE_TIMEOUT);
    // The followers' election timers started at the last heartbeat they got, up to one
    // heartbeat interval (and a tick) before the stop.
    let earliest = cluster.et() - Duration::from_millis(REQUEST_TIMEOUT_MS + PERIODIC_MS);
    assert!(
        stopped_at.elapsed() > earliest,
        "new leader after {:?}",
        stopped_at.elapsed()
    );

    // Reads queued on the frozen leader's sockets: it sees them first thing on SIGCONT.
    for s in &mut raw {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        raw_send(s, &["GET", "k"]);
        raw_send(s, &["GET", "k"]);
    }
    // And a write: the old leader must not acknowledge it (its term is over), unless it
    // really commits.
    raw_write
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    raw_send(&mut raw_write, &["SET", "k2", "stale"]);
    cluster.node(old).sigcont();
    let allowed = |reply: &str| {
        reply == "$new"
            || reply.starts_with("-MOVED ")
            || reply.starts_with("-CLUSTERDOWN")
            || reply.starts_with("-TIMEOUT")
    };
    let mut seen = Vec::new();
    for s in raw {
        let mut reader = BufReader::new(s);
        for _ in 0..2 {
            let reply = raw_read(&mut reader).expect("reply from the resumed old leader");
            assert!(
                allowed(&reply),
                "old leader answered a read with {reply:?} after SIGCONT"
            );
            seen.push(reply);
        }
    }
    let write_reply =
        raw_read(&mut BufReader::new(raw_write)).expect("write reply from the old leader");
    assert!(
        write_reply == "+OK" || allowed(&write_reply),
        "old leader answered a write with {write_reply:?}"
    );

    // Until it is a follower of the new leader, every read on the old leader is refused
    // or redirected, never the old value.
    let new_addr = cluster.addr(new);
    let mut became_follower = false;
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    while Instant::now() < deadline {
        match try_cmd(&cluster.addr(old), &["GET", "k"], Duration::from_secs(10)) {
            Ok(v) => panic!("old leader served a read: {v:?}"),
            Err(e) => {
                let text = err_text(&e);
                assert!(allowed(&format!("-{text}")), "old leader: {text}");
                if text == format!("MOVED 0 {new_addr}") {
                    let info = cluster.info(old).unwrap();
                    if field(&info, "raft_role") == "follower"
                        && field(&info, "raft_leader_id") == new.to_string()
                    {
                        became_follower = true;
                        break;
                    }
                }
                seen.push(text);
            }
        }
        sleep(RETRY_BACKOFF);
    }
    assert!(
        became_follower,
        "old leader did not become a follower; {}",
        cluster.describe(&ids)
    );
    eprintln!(
        "sigstop: replies of the old leader after SIGCONT: {:?}",
        count_texts(&seen)
    );

    // The whole cluster agrees on the new value.
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    assert_eq!(
        value_text(&same_everywhere(&cluster, &ids, &["GET", "k"])),
        "new"
    );
    // The write sent to the deposed leader was never replicated: it cannot have committed.
    let k2 = value_text(&same_everywhere(&cluster, &ids, &["GET", "k2"]));
    if write_reply == "+OK" {
        assert_eq!(k2, "stale", "an acknowledged write is lost");
    } else {
        assert_eq!(k2, "(nil)", "write answered {write_reply:?} was applied");
    }
    eprintln!("sigstop: the old leader answered the write with {write_reply:?}");
    let mut router = cluster.router(&[old]);
    assert_eq!(
        value_text(&router.must(&["GET", "k"], CONVERGE_TIMEOUT)),
        "new"
    );
}

#[test]
fn add_and_remove_nodes_under_load() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let writers = Writers::start(cluster.addrs(&ids), "list", 2);
    writers.wait_progress(50, CONVERGE_TIMEOUT, "before the join");

    // A 4th node joins and becomes a voter.
    cluster.join_new(4);
    cluster.wait_voters(&[1, 2, 3, 4], FORM_TIMEOUT);
    writers.wait_progress(50, CONVERGE_TIMEOUT, "after the join");

    // Remove an old follower.
    let leader = cluster.wait_leader(&[1, 2, 3, 4], CONVERGE_TIMEOUT);
    let victim = *[1, 2, 3].iter().find(|&&id| id != leader).unwrap();
    let mut router = cluster.router(&[leader]);
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        match router.attempt(&["RAFT.NODE", "REMOVE", &victim.to_string()]) {
            Attempt::Done(v) => {
                assert_eq!(v, Value::Okay);
                break;
            }
            // A retry after an unknown outcome may find it gone already.
            Attempt::Error(e) if e.ends_with("ERR node id does not exist") => break,
            // Promotion of node 4 may still be in flight.
            Attempt::Error(e) if e.ends_with("ERR one voting change only") => {}
            Attempt::Error(e) => panic!("RAFT.NODE REMOVE {victim}: {e}"),
            Attempt::Rejected(_) | Attempt::Unknown(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "RAFT.NODE REMOVE {victim} did not succeed"
        );
        sleep(RETRY_BACKOFF);
    }
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != victim)
        .collect();
    cluster.wait_voters(&remaining, CONVERGE_TIMEOUT);

    // The removed node never serves data again, and soon answers NOCLUSTER (a member
    // answers its messages with REMOVED, after which it leaves the cluster).
    let victim_addr = cluster.addr(victim);
    wait_nocluster(&victim_addr, victim);

    // Writes keep succeeding.
    writers.wait_progress(50, CONVERGE_TIMEOUT, "after the removal");
    let logs = writers.finish();

    let leader = cluster.wait_caught_up(&remaining, CONVERGE_TIMEOUT);
    let list = strings(same_everywhere(
        &cluster,
        &remaining,
        &["LRANGE", "list", "0", "-1"],
    ));
    check_list(&list, &logs);

    // Every id ever used is remembered, and the removed id cannot come back.
    let used: Value = cluster
        .node(leader)
        .cmd(&["RAFT.DEBUG", "USED_NODE_IDS"])
        .unwrap();
    let used: BTreeSet<String> = strings(used).into_iter().collect();
    for id in 1..=4 {
        assert!(
            used.contains(&id.to_string()),
            "USED_NODE_IDS {used:?} lacks {id}"
        );
    }
    let mut con = cluster.node(leader).client();
    assert_eq!(
        expect_err(
            &mut con,
            &["RAFT.NODE", "ADD", &victim.to_string(), &victim_addr]
        ),
        "ERR node id has already been used in this cluster"
    );
    assert_eq!(
        expect_err(&mut con, &["RAFT.NODE", "REMOVE", &victim.to_string()]),
        "ERR node id does not exist"
    );
}

/// A removed node never serves data again, and soon answers NOCLUSTER.
fn wait_nocluster(addr: &str, id: u64) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        match try_cmd(addr, &["GET", "x"], Duration::from_secs(5)) {
            Ok(v) => panic!("removed node {id} served a read: {v:?}"),
            Err(e) => {
                let text = err_text(&e);
                if text.starts_with("NOCLUSTER") {
                    return;
                }
                assert!(
                    ["CLUSTERDOWN", "MOVED"].iter().any(|p| text.starts_with(p)),
                    "removed node {id} answers {text:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "removed node {id} still answers {text:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// As in the original, `RAFT.NODE REMOVE <the leader's own id>` works: the leader hands
/// leadership over and leaves. Removing the current leader again and again leaves one
/// node, which keeps serving writes; writes run throughout; each removed node answers
/// NOCLUSTER; the last voter cannot remove itself.
#[test]
fn remove_the_leader_until_one_node_is_left() {
    let cluster = Cluster::start(3, ET_MS);
    let all = cluster.ids();
    let mut remaining = all.clone();
    let writers = Writers::start(cluster.addrs(&all), "list", 2);
    writers.wait_progress(20, CONVERGE_TIMEOUT, "before the removals");
    let mut removed = Vec::new();
    while remaining.len() > 1 {
        let leader = cluster.wait_leader(&remaining, CONVERGE_TIMEOUT);
        let mut con = cluster.node(leader).client();
        let reply: String = exec(&mut con, &["RAFT.NODE", "REMOVE", &leader.to_string()])
            .unwrap_or_else(|e| panic!("RAFT.NODE REMOVE {leader} on itself: {}", err_text(&e)));
        assert_eq!(reply, "OK", "RAFT.NODE REMOVE {leader} on itself");
        remaining.retain(|&id| id != leader);
        removed.push(leader);
        for &gone in &removed {
            wait_nocluster(&cluster.addr(gone), gone);
        }
        cluster.wait_voters(&remaining, CONVERGE_TIMEOUT);
        writers.wait_progress(20, CONVERGE_TIMEOUT, &format!("after removing {leader}"));
        let leader = cluster.wait_caught_up(&remaining, CONVERGE_TIMEOUT);
        let info = cluster.info(leader).expect("leader INFO");
        assert_eq!(
            info_nodes(&info).into_keys().collect::<Vec<_>>(),
            remaining,
            "members after removing {removed:?}"
        );
    }
    let logs = writers.finish();
    let last = remaining[0];
    cluster.wait_caught_up(&remaining, CONVERGE_TIMEOUT);
    let list = strings(cluster.local(last, &["LRANGE", "list", "0", "-1"]));
    check_list(&list, &logs);
    let mut con = cluster.node(last).client();
    assert_eq!(
        expect_err(&mut con, &["RAFT.NODE", "REMOVE", &last.to_string()]),
        "ERR cannot remove the last voting node of the cluster"
    );
    // And it still serves.
    let reply: String = exec(&mut con, &["SET", "after", "1"]).unwrap();
    assert_eq!(reply, "OK");
}

#[test]
fn leader_transfer() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let mut router = cluster.router(&ids);
    router.must(&["SET", "before", "1"], CONVERGE_TIMEOUT);
    let target = *ids.iter().find(|&&id| id != leader).unwrap();

    let mut con = cluster.node(leader).client();
    let reply: String = exec(&mut con, &["RAFT.TRANSFER_LEADER", &target.to_string()])
        .unwrap_or_else(|e| panic!("RAFT.TRANSFER_LEADER {target}: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    let mut role = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            role = cluster
                .info(target)
                .map(|i| field(&i, "raft_role").to_string())
                .unwrap_or_default();
            role == "leader"
        }),
        "node {target} is {role:?} after the transfer to it"
    );
    assert_eq!(cluster.wait_leader(&ids, CONVERGE_TIMEOUT), target);

    // Errors, worded as the original's: unknown id, self, not a number; a follower says
    // it is not the leader.
    let mut con = cluster.node(target).client();
    for bad in ["99", &target.to_string(), "abc"] {
        assert_eq!(
            expect_err(&mut con, &["RAFT.TRANSFER_LEADER", bad]),
            "ERR invalid node id",
            "target {bad}"
        );
    }
    let mut con = cluster.node(leader).client();
    assert_eq!(
        expect_err(&mut con, &["RAFT.TRANSFER_LEADER", "1"]),
        "ERR not leader"
    );

    // Without a target: leadership moves to some other node.
    let mut con = cluster.node(target).client();
    let reply: String = exec(&mut con, &["RAFT.TRANSFER_LEADER"])
        .unwrap_or_else(|e| panic!("RAFT.TRANSFER_LEADER: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    let third = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    assert_ne!(third, target);

    // Data written before and after is everywhere.
    router.must(&["SET", "after", "2"], CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    assert_eq!(
        strings(same_everywhere(
            &cluster,
            &ids,
            &["MGET", "before", "after"]
        )),
        ["1", "2"]
    );
}

#[test]
fn join_errors() {
    // Wrong addresses: nothing listens there, or a Redis without the module. JOIN keeps
    // trying for join-timeout, then gives up and the node is uninitialized again.
    let plain = Server::start(ServerOpts::new().without_module());
    let targets = [
        format!("127.0.0.1:{}", free_port("127.0.0.1")),
        plain.addr(),
    ];
    let joiners: Vec<Server> = targets
        .iter()
        .map(|_| Server::start(ServerOpts::new().raft("join-timeout", "3000")))
        .collect();
    let joins: Vec<JoinHandle<(String, Duration)>> = joiners
        .iter()
        .zip(targets.clone())
        .map(|(server, target)| {
            let addr = server.addr();
            thread::spawn(move || {
                let mut con = try_connect(&addr, Duration::from_secs(60)).expect("connect");
                let started = Instant::now();
                let err = expect_err(&mut con, &["RAFT.CLUSTER", "JOIN", &target]);
                (err, started.elapsed())
            })
        })
        .collect();
    // While JOIN runs the node is joining.
    for server in &joiners {
        let mut state = String::new();
        assert!(
            wait_until(Duration::from_secs(2), || {
                state = try_info(&server.addr())
                    .map(|i| field(&i, "raft_state").to_string())
                    .unwrap_or_default();
                state == "joining"
            }),
            "raft_state {state:?} during JOIN"
        );
        assert_eq!(
            expect_err(&mut server.client(), &["GET", "k"]),
            "NOCLUSTER No Raft Cluster (joining now)"
        );
    }
    for ((join, target), server) in joins.into_iter().zip(&targets).zip(&joiners) {
        let (err, took) = join.join().expect("JOIN thread");
        assert_eq!(
            err, "ERR failed to connect to cluster for join, please check logs",
            "JOIN {target}"
        );
        assert!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(15),
            "JOIN {target} with join-timeout 3000 gave up after {took:?}"
        );
        assert_eq!(
            server.info_field("raft", "raft_state").as_deref(),
            Some("uninitialized"),
            "after JOIN {target}"
        );
        assert_eq!(
            expect_err(&mut server.client(), &["GET", "k"]),
            "NOCLUSTER No Raft Cluster"
        );
    }
    let lonely = &joiners[0];
    let mut con = lonely.client();

    // A real cluster; the node that failed to join can join it now.
    let cluster = Cluster::start(2, ET_MS);
    let reply: String = exec(&mut con, &["RAFT.CLUSTER", "JOIN", &cluster.addr(2)])
        .unwrap_or_else(|e| panic!("JOIN after a failed JOIN: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    // (A follower answers reads with MOVED, so "up, voting, knows the leader" it is.)
    let mut seen = HashMap::new();
    assert!(
        wait_until(CONVERGE_TIMEOUT, || {
            seen = try_info(&lonely.addr()).unwrap_or_default();
            field(&seen, "raft_state") == "up"
                && field(&seen, "raft_is_voting") == "yes"
                && field(&seen, "raft_leader_id") == "1"
        }),
        "the node that joined after a failed JOIN: {seen:?}"
    );
    let mut router = Router::new(vec![lonely.addr()]);
    router.must(&["SET", "joined", "yes"], CONVERGE_TIMEOUT);

    // Members refuse JOIN and INIT.
    for server in [cluster.node(1), cluster.node(2), lonely] {
        let mut con = server.client();
        assert_eq!(
            expect_err(&mut con, &["RAFT.CLUSTER", "JOIN", &cluster.addr(1)]),
            "ERR Already cluster member",
            "JOIN on {}",
            server.addr()
        );
        assert_eq!(
            expect_err(&mut con, &["RAFT.CLUSTER", "INIT"]),
            "ERR Already cluster member",
            "INIT on {}",
            server.addr()
        );
    }
}

/// Retries `SET key value` through a cluster connection until it succeeds or `timeout`
/// passes; `reconnect` is called with the connection after every I/O error and may
/// replace it. Returns the errors seen, counted by text.
fn cluster_set(
    con: &mut redis::cluster::ClusterConnection,
    key: &str,
    value: &str,
    timeout: Duration,
    mut reconnect: impl FnMut(&mut redis::cluster::ClusterConnection),
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + timeout;
    let mut errors = BTreeMap::new();
    loop {
        let r: RedisResult<()> = redis::cmd("SET").arg(key).arg(value).query(con);
        match r {
            Ok(()) => return errors,
            Err(e) => {
                *errors.entry(err_text(&e)).or_default() += 1;
                if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
                    reconnect(con);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "cluster client: SET {key} did not succeed within {timeout:?}; errors: {errors:?}"
        );
        sleep(RETRY_BACKOFF);
    }
}

#[test]
fn cluster_client_follows_failover() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    // The client only knows a follower; it finds the leader through CLUSTER SLOTS / MOVED.
    let seed = *ids.iter().find(|&&id| id != leader).unwrap();
    let third = *ids.iter().find(|&&id| id != leader && id != seed).unwrap();

    let client = redis::cluster::ClusterClient::builder(vec![cluster.node(seed).url()])
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(5))
        .retries(3)
        .build()
        .expect("cluster client");
    let mut con = client.get_connection().expect("cluster connection");
    let _: () = redis::cmd("SET")
        .arg("a")
        .arg("1")
        .query(&mut con)
        .expect("SET through the cluster client");
    let a: String = redis::cmd("GET").arg("a").query(&mut con).expect("GET");
    assert_eq!(a, "1");

    // Leadership moves while every node stays up: the old leader answers MOVED and the
    // same connection follows it.
    let mut admin = cluster.node(leader).client();
    let reply: String = exec(&mut admin, &["RAFT.TRANSFER_LEADER", &third.to_string()])
        .unwrap_or_else(|e| panic!("RAFT.TRANSFER_LEADER {third}: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    assert_eq!(cluster.wait_leader(&ids, CONVERGE_TIMEOUT), third);
    let errors = cluster_set(&mut con, "b", "2", CONVERGE_TIMEOUT, |_| {
        panic!("connection error while every node is up")
    });
    let b: String = redis::cmd("GET")
        .arg("b")
        .query(&mut con)
        .expect("GET after transfer");
    assert_eq!(b, "2");
    eprintln!("cluster client: errors across the transfer: {errors:?}");

    // The leader dies (kill -9). redis-rs 0.32's sync ClusterConnection refreshes its slot
    // map only on MOVED (or when it holds no connection at all), so after the slot owner
    // died it keeps retrying the dead address: a connection that keeps failing with
    // connection errors is replaced by a new one from the same ClusterClient, which asks
    // the live seed for CLUSTER SLOTS.
    cluster.node_mut(third).kill9();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != third).collect();
    let new_leader = cluster.wait_leader(&survivors, CONVERGE_TIMEOUT);
    let mut io_errors = 0;
    let mut fresh_connections = 0;
    let errors = cluster_set(&mut con, "c", "3", CONVERGE_TIMEOUT, |con| {
        io_errors += 1;
        if io_errors % 3 == 0 {
            if let Ok(new) = client.get_connection() {
                *con = new;
                fresh_connections += 1;
            }
        }
    });
    let values: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|k| {
            redis::cmd("GET")
                .arg(*k)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("GET {k} after the failover: {}", err_text(&e)))
        })
        .collect();
    assert_eq!(values, ["1", "2", "3"]);
    eprintln!(
        "cluster client: new leader {new_leader}; errors across the kill: {errors:?}; \
         fresh connections: {fresh_connections}"
    );
}

/// A private iptables chain dropping TCP between node addresses on their ports only
/// (clients connect from 127.0.0.1 and are never cut); deleted on drop.
struct Firewall {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Firewall {
    fn new() -> Firewall {
        // Chains left by a test process that was killed before its guard ran.
        let listed = std::process::Command::new("iptables")
            .args(["-w", "-S"])
            .output();
        for line in listed
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let Some(pid) = line.strip_prefix("-N RRCLUSTER-") else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = delete_chain(&format!("RRCLUSTER-{pid}"));
            }
        }
        let chain = format!("RRCLUSTER-{}", std::process::id());
        let _ = delete_chain(&chain);
        let fw = Firewall { chain };
        iptables(&["-N", &fw.chain]).expect("this test needs root and iptables");
        iptables(&["-I", "INPUT", "1", "-j", &fw.chain]).unwrap();
        iptables(&["-I", "OUTPUT", "1", "-j", &fw.chain]).unwrap();
        fw
    }

    /// Drops all TCP between nodes `a` and `b` (their Redis and raft peer ports), both
    /// directions.
    fn cut(&self, a: &Server, b: &Server) {
        let (a, b) = ((&a.host, a.node_ports()), (&b.host, b.node_ports()));
        for ((src, sports), (dst, dports)) in [(&a, &b), (&b, &a)] {
            let rules = dports
                .iter()
                .map(|port| ("--dport", port.to_string()))
                .chain(sports.iter().map(|port| ("--sport", port.to_string())));
            for (flag, port) in rules {
                let port = port.as_str();
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
                ])
                .unwrap();
            }
        }
    }

    fn heal(&self) {
        iptables(&["-F", &self.chain]).unwrap();
    }
}

fn delete_chain(chain: &str) -> Result<(), String> {
    for parent in ["INPUT", "OUTPUT"] {
        while iptables(&["-D", parent, "-j", chain]).is_ok() {}
    }
    iptables(&["-F", chain])?;
    iptables(&["-X", chain])
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = delete_chain(&self.chain) {
            eprintln!("could not delete iptables chain {}: {e}", self.chain);
        }
    }
}

/// Issue #14 (item 4): a leader that learns of its own removal while writes wait for it
/// (it was cut off while the others removed it, and still leads in its own eyes) must
/// answer them `TIMEOUT not committed yet`: raft took them, and this node cannot know
/// that they will not commit. Only requests known not to be in the log may get the
/// definite `NOCLUSTER ... removed`. Nodes on their own loopback addresses so that
/// iptables can cut the leader off; the leader's election timeout is long, so it keeps
/// leading (check-quorum) while the others elect a new leader and remove it.
#[test]
fn a_removed_leader_answers_its_waiting_writes_not_committed_yet() {
    let spec = |id: u64, et_ms: u64| {
        let host = format!("127.0.0.{}", 70 + id);
        let port = free_port(&host);
        node_opts(id, port, et_ms)
            .host(&host)
            .raft("addr", &format!("{host}:{port}"))
    };
    let first = Server::start(spec(1, 10_000));
    let reply: String = first.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(reply.starts_with("OK "), "INIT reply {reply:?}");
    first.expect_serving(CONVERGE_TIMEOUT);
    let mut cluster = Cluster {
        nodes: BTreeMap::from([(1, first)]),
        et_ms: ET_MS,
    };
    for id in [2, 3] {
        let server = Server::start(spec(id, ET_MS));
        let reply: String = server
            .cmd(&["RAFT.CLUSTER", "JOIN", &cluster.addr(1)])
            .unwrap_or_else(|e| panic!("JOIN of node {id}: {}", err_text(&e)));
        assert_eq!(reply, "OK");
        cluster.nodes.insert(id, server);
    }
    let ids = cluster.ids();
    cluster.wait_voters(&ids, CONVERGE_TIMEOUT);
    assert_eq!(cluster.wait_leader(&ids, CONVERGE_TIMEOUT), 1);
    let firewall = Firewall::new();
    firewall.cut(&cluster.nodes[&1], &cluster.nodes[&2]);
    firewall.cut(&cluster.nodes[&1], &cluster.nodes[&3]);
    let new = cluster.wait_leader(&[2, 3], CONVERGE_TIMEOUT);
    let mut removal = String::new();
    assert!(
        wait_until(CONVERGE_TIMEOUT, || {
            removal = match cluster
                .node(new)
                .cmd::<Value>(&["RAFT.NODE", "REMOVE", "1"])
            {
                Ok(v) => format!("{v:?}"),
                Err(e) => err_text(&e),
            };
            // A retry after a reply lost to a leader change finds it already removed.
            removal == "Okay" || removal == "ERR node id does not exist"
        }),
        "RAFT.NODE REMOVE 1 on node {new}: {removal}"
    );
    // Node 1 still leads in its own eyes: writes wait there for a quorum.
    let streams: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut stream = TcpStream::connect(cluster.addr(1)).expect("connect to node 1");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            raw_send(&mut stream, &["SET", &format!("w{i}"), "1"]);
            stream
        })
        .collect();
    let waiting = || {
        cluster
            .info(1)
            .map_or(0, |info| num(&info, "raft_waiting_requests"))
    };
    assert!(
        wait_until(Duration::from_secs(5), || waiting() >= 8),
        "the writes did not wait at node 1 ({} waiting): {}",
        waiting(),
        cluster.describe(&ids)
    );
    // Reconnected, node 1 hears from the members that it was removed.
    firewall.heal();
    let replies: Vec<String> = streams
        .into_iter()
        .map(|stream| {
            raw_read(&mut BufReader::new(stream)).unwrap_or_else(|e| format!("no reply: {e}"))
        })
        .collect();
    assert!(
        wait_until(CONVERGE_TIMEOUT, || {
            cluster
                .info(1)
                .is_some_and(|i| field(&i, "raft_state") == "uninitialized")
        }),
        "node 1 did not leave: {}",
        cluster.describe(&[1])
    );
    assert!(
        replies.iter().all(|r| r == "-TIMEOUT not committed yet"),
        "writes the removed leader had proposed must get TIMEOUT not committed yet: {replies:?}"
    );
}

/// Minimal reproduction: a follower removed with RAFT.NODE REMOVE must stop serving and
/// answer `NOCLUSTER ...` (INTERFACE: "A removed node stops serving (shuts down or goes
/// uninitialized)"; ARCHITECTURE: it answers `NOCLUSTER ... (this node was removed ...)`).
#[test]
fn removed_follower_answers_nocluster() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let victim = *ids.iter().find(|&&id| id != leader).unwrap();
    // The victim is down while it is removed (the usual reason to remove a node), so no
    // message about the removal reaches it before the leader applies the removal and stops
    // talking to it; then it comes back with its files intact. It never learns that it was
    // removed: it stays `up`, campaigns (pre-vote) forever, answers CLUSTERDOWN, and the
    // members keep processing its RAFT.MSG although it is no longer a member. The same
    // happens to a *running* victim when the leader applies the removal while the commit
    // notice is still queued in its transport (the peer task is aborted):
    // `add_and_remove_nodes_under_load` ends that way in about 1 run of 6.
    cluster.node_mut(victim).kill9();
    let reply: Value = cluster
        .node(leader)
        .cmd(&["RAFT.NODE", "REMOVE", &victim.to_string()])
        .unwrap_or_else(|e| panic!("RAFT.NODE REMOVE {victim}: {}", err_text(&e)));
    assert_eq!(reply, Value::Okay);
    cluster.node_mut(victim).restart();
    let addr = cluster.addr(victim);
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = match try_cmd(&addr, &["GET", "x"], Duration::from_secs(5)) {
                Ok(v) => format!("{v:?}"),
                Err(e) => err_text(&e),
            };
            last.starts_with("NOCLUSTER")
        }),
        "removed node {victim} still answers {last:?}; {}",
        cluster.describe(&[victim])
    );
    assert_eq!(
        cluster
            .info(victim)
            .map(|i| field(&i, "raft_state").to_string())
            .as_deref(),
        Some("uninitialized")
    );
}

#[test]
fn quorum_read_on_minority_times_out() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let followers: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
    let mut con = cluster.node(leader).client();
    let _: () = exec(&mut con, &["SET", "k", "v"]).unwrap();
    let v: String = exec(&mut con, &["GET", "k"]).unwrap();
    assert_eq!(v, "v");

    for &f in &followers {
        cluster.node(f).sigstop();
    }
    let stopped_at = Instant::now();
    let addr = cluster.addr(leader);
    // A write on the minority leader cannot commit: its outcome is unknown (TIMEOUT), or it
    // is refused outright once the leader stepped down (CLUSTERDOWN), within a few election
    // timeouts.
    let write = {
        let addr = addr.clone();
        thread::spawn(move || {
            let asked = Instant::now();
            let reply = try_cmd(&addr, &["SET", "m", "x"], Duration::from_secs(30));
            (reply.map_err(|e| err_text(&e)), asked.elapsed())
        })
    };
    let mut replies = Vec::new();
    // Reads for a few election timeouts: each must be refused, the first one promptly.
    while stopped_at.elapsed() < 3 * cluster.et() || replies.is_empty() {
        let asked = Instant::now();
        match try_cmd(&addr, &["GET", "k"], Duration::from_secs(20)) {
            Ok(v) => panic!("a minority leader served a read: {v:?} (replies so far {replies:?})"),
            Err(e) => {
                let text = err_text(&e);
                assert!(
                    text == "TIMEOUT no quorum for read" || text == "CLUSTERDOWN No raft leader",
                    "read on the minority leader: {text}"
                );
                assert!(
                    asked.elapsed() <= 4 * cluster.et(),
                    "read refusal {text:?} took {:?}",
                    asked.elapsed()
                );
                replies.push(text);
            }
        }
    }
    let (write_reply, took) = write.join().expect("write thread");
    let write_err = match write_reply {
        Ok(v) => panic!("a minority leader acknowledged a write: {v:?}"),
        Err(text) => text,
    };
    assert!(
        write_err == "TIMEOUT not committed yet" || write_err == "CLUSTERDOWN No raft leader",
        "write on the minority leader: {write_err}"
    );
    assert!(
        took <= 4 * cluster.et(),
        "write refusal {write_err:?} took {took:?}"
    );
    eprintln!(
        "minority: write {write_err:?} after {took:?}; read replies: {:?}",
        count_texts(&replies)
    );

    for &f in &followers {
        cluster.node(f).sigcont();
    }
    cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let mut router = cluster.router(&ids);
    assert_eq!(
        value_text(&router.must(&["GET", "k"], CONVERGE_TIMEOUT)),
        "v"
    );
    router.must(&["SET", "k", "w"], CONVERGE_TIMEOUT);
    assert_eq!(
        value_text(&router.must(&["GET", "k"], CONVERGE_TIMEOUT)),
        "w"
    );
    // A refused write never happened; one of unknown outcome may have committed.
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let m = value_text(&same_everywhere(&cluster, &ids, &["GET", "m"]));
    if write_err.starts_with("CLUSTERDOWN") {
        assert_eq!(m, "(nil)", "a write refused with CLUSTERDOWN was applied");
    } else {
        assert!(m == "(nil)" || m == "x", "m = {m:?}");
    }
}

/// `cmdstat_raft.msg` calls of a node: peer messages its Redis main thread handled.
fn raft_msg_calls(server: &Server) -> u64 {
    let text: String = server.cmd(&["INFO", "commandstats"]).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("cmdstat_raft.msg:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// Issue #16 (one raft thread owns the peers): raft messages go to each node's own peer
/// listener, never through a Redis main thread, and a node that cannot listen (its peer
/// port is taken) still takes part, reached on its Redis port as RAFT.MSG commands.
#[test]
fn peer_traffic_bypasses_the_redis_main_thread_with_a_fallback_when_it_cannot() {
    let taken_port = free_port("127.0.0.1");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", taken_port)).unwrap();
    let mut cluster = Cluster::start(2, ET_MS);
    cluster.join_with(3, |opts| opts.raft("peer-port", &taken_port.to_string()));
    let ids = cluster.ids();
    cluster.wait_voters(&ids, FORM_TIMEOUT);
    assert!(cluster
        .node(3)
        .log_contains(&format!("cannot listen on 127.0.0.1:{taken_port}")));
    let mut router = cluster.router(&ids);
    for i in 0..200 {
        router.must(&["SET", &format!("k{i}"), &i.to_string()], CONVERGE_TIMEOUT);
    }
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let index = num(&cluster.info(leader).unwrap(), "raft_commit_index");
    cluster.wait_applied(&ids, index, CONVERGE_TIMEOUT);
    assert_eq!(
        value_text(&same_everywhere(&cluster, &ids, &["GET", "k199"])),
        "199"
    );
    for id in [1, 2] {
        assert!(
            cluster
                .node(id)
                .log_contains("raft: peers connect to 127.0.0.1:"),
            "node {id} has a peer listener"
        );
        assert_eq!(
            raft_msg_calls(cluster.node(id)),
            0,
            "node {id}: peer messages reached its main thread"
        );
    }
    assert!(
        raft_msg_calls(cluster.node(3)) > 0,
        "node 3 has no listener: its peers must send RAFT.MSG to its Redis port"
    );
}
