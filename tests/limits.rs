//! Resource limits (issue #8): a flood of 500 client connections, values of 100 MB and a
//! stopped follower do not make a leader's memory grow without bound, everything written
//! is on every node afterwards, and the back-pressure fields of `INFO raft` return to zero.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;

/// RSS of a process in MiB, from /proc.
fn rss_mib(server: &Server) -> f64 {
    let pid = server.pid().expect("server pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

fn waiting_requests(server: &Server) -> Option<u64> {
    server
        .info_field("raft", "raft_waiting_requests")
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_flood_of_clients_keeps_the_leader_bounded() {
    let cluster = Cluster::start(3, ET_MS);
    let leader = cluster.wait_leader(&cluster.ids(), CONVERGE_TIMEOUT);
    let server = cluster.node(leader);
    let before = rss_mib(server);
    // 500 connections, 200,000 SETs of 100 bytes over 10,000 keys.
    let output = server.redis_benchmark(&[
        "-c", "500", "-n", "200000", "-t", "set", "-d", "100", "-r", "10000", "-q",
    ]);
    assert!(
        output.status.success(),
        "redis-benchmark failed: {output:?}"
    );
    let after = rss_mib(server);
    // Data: ~10,000 keys of 100 B (a few MiB); the rest is client buffers and the
    // entry cache, both bounded. Growth beyond this would mean an unbounded queue.
    assert!(
        after - before < 150.0,
        "leader RSS grew from {before:.1} to {after:.1} MiB under 500 clients"
    );
    assert!(
        wait_until(CONVERGE_TIMEOUT, || waiting_requests(server) == Some(0)),
        "requests still waiting after the flood: {:?}",
        waiting_requests(server)
    );
    cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    let sizes: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&id| format!("{:?}", cluster.local(id, &["DBSIZE"])))
        .collect();
    assert!(
        sizes.iter().all(|s| s == &sizes[0]),
        "DBSIZE per node: {sizes:?}"
    );
}

#[test]
fn huge_values_replicate_without_memory_growth() {
    // A long election timeout: heartbeats no longer wait behind a 100 MB append (their own
    // connection), but a loaded 2-core machine can still pause a follower's raft thread
    // for seconds around such an entry (docs/SECURITY.md, "Large values"). Leadership may
    // still move; SET is idempotent, so each round is retried on whichever node leads
    // until it is acknowledged.
    // REDISRAFT_HUGE_ET_MS=1000 reproduces the measurement in docs/SECURITY.md.
    let election_timeout_ms =
        std::env::var("REDISRAFT_HUGE_ET_MS").map_or(5000, |v| v.parse().expect("a number"));
    let cluster = Cluster::start(3, election_timeout_ms);
    let term_now = || {
        let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(120));
        num(
            &try_info(&cluster.addr(leader)).unwrap(),
            "raft_current_term",
        )
    };
    let first_term = term_now();
    let value = "v".repeat(100 * 1024 * 1024);
    let mut peaks = Vec::new();
    for round in 0..4 {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        loop {
            let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(120));
            let mut con = cluster
                .node(leader)
                .client_with_timeout(Duration::from_secs(120));
            let reply: Result<String, _> =
                redis::cmd("SET").arg("huge").arg(&value).query(&mut con);
            match reply {
                Ok(ok) => {
                    assert_eq!(ok, "OK");
                    break;
                }
                Err(e) => {
                    let text = err_text(&e);
                    let retry = ["MOVED", "TIMEOUT", "CLUSTERDOWN"]
                        .iter()
                        .any(|p| text.starts_with(p))
                        || e.is_io_error();
                    assert!(retry, "SET of 100 MB, round {round}: {text}");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "round {round}: {text}"
                    );
                }
            }
        }
        let rss: Vec<f64> = cluster
            .ids()
            .iter()
            .map(|&id| rss_mib(cluster.node(id)))
            .collect();
        eprintln!("round {round}: RSS per node {rss:.0?} MiB");
        peaks.push(rss.into_iter().fold(0.0, f64::max));
    }
    // A node holds the value, the request being applied and a few messages carrying the
    // entry; before the per-peer byte bound, a slow follower made the leader queue a copy
    // per heartbeat and RSS reached 7.4 GB after four writes.
    assert!(
        peaks.iter().all(|&peak| peak < 1200.0),
        "a node's RSS passed 1,200 MiB with 100 MB values: peaks {peaks:.0?} MiB"
    );
    // A measurement (docs/SECURITY.md), not a check: elections depend on the machine's load.
    eprintln!(
        "election timeout {election_timeout_ms} ms: term {first_term} -> {} over four 100 MB writes",
        term_now()
    );
    cluster.wait_caught_up(&cluster.ids(), Duration::from_secs(120));
    for id in cluster.ids() {
        let length = cluster.local(id, &["STRLEN", "huge"]);
        assert_eq!(
            length,
            redis::Value::Int(value.len() as i64),
            "node {id} lacks the 100 MB value"
        );
        assert_eq!(waiting_requests(cluster.node(id)), Some(0), "node {id}");
    }
}

#[test]
fn a_stopped_follower_does_not_grow_the_leaders_memory() {
    let cluster = Cluster::start(3, ET_MS);
    let leader = cluster.wait_leader(&cluster.ids(), CONVERGE_TIMEOUT);
    const CACHE_MIB: f64 = 16.0;
    for id in cluster.ids() {
        let reply: String = cluster
            .node(id)
            .cmd(&["CONFIG", "SET", "raft.log-max-cache-size", "16mb"])
            .unwrap();
        assert_eq!(reply, "OK");
    }
    let stopped = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    cluster.node(stopped).sigstop();
    // The same data in a plain server, for the baseline.
    let plain = Server::start(ServerOpts::new().without_module());
    let mut plain_client = plain.client();
    let mut con = cluster
        .node(leader)
        .client_with_timeout(Duration::from_secs(30));
    let value = "x".repeat(100 * 1024);
    let keys = 1500;
    let mut peak_mib: f64 = 0.0;
    for i in 0..keys {
        let key = format!("key:{i}");
        let reply: String = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("SET {key} with a follower stopped: {}", err_text(&e)));
        assert_eq!(reply, "OK");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query(&mut plain_client)
            .unwrap();
        if i % 100 == 99 {
            peak_mib = peak_mib.max(rss_mib(cluster.node(leader)));
        }
    }
    let plain_mib = rss_mib(&plain);
    cluster.node(stopped).sigcont();
    // What a leader may hold beyond the data: the entry cache, one peer queue's bytes
    // (64 MiB) and slack for buffers; a queue growing with the stopped follower's backlog
    // (150 MB here) would pass it.
    let bound_mib = plain_mib + CACHE_MIB + 64.0 + 64.0;
    eprintln!(
        "leader peak RSS {peak_mib:.0} MiB, plain Redis {plain_mib:.0} MiB, bound {bound_mib:.0} MiB"
    );
    assert!(
        peak_mib < bound_mib,
        "leader RSS peaked at {peak_mib:.0} MiB with a follower stopped (plain Redis: {plain_mib:.0} MiB)"
    );
    cluster.wait_caught_up(&cluster.ids(), Duration::from_secs(120));
    for id in cluster.ids() {
        assert_eq!(
            cluster.local(id, &["DBSIZE"]),
            redis::Value::Int(keys),
            "node {id} after the stopped follower resumed"
        );
    }
}

/// Issue #14: a request whose entry would be over the log's record limit (512 MiB, less
/// room for framing: `MAX_PROPOSAL_BYTES` in `src/core/entry.rs`) used to be accepted,
/// then abort the leader on append (and the client's retry the next leader). It is
/// refused with `ERR` before it is proposed: nothing is logged, the leader keeps leading
/// in the same term and serves the next write. The exact boundary is unit-tested in the
/// core (`proposals_up_to_the_limit_are_accepted_and_one_byte_more_refused`).
#[test]
fn a_request_over_the_log_record_limit_is_refused_and_the_leader_keeps_running() {
    // Receiving 600 MB keeps the leader's main thread (which also takes its peers'
    // replies) busy for a while on a loaded machine: a long election timeout keeps the
    // term check about the refusal, not about the machine's load.
    let cluster = Cluster::start(3, 5000);
    let leader = cluster.wait_leader(&cluster.ids(), CONVERGE_TIMEOUT);
    let server = cluster.node(leader);
    for id in cluster.ids() {
        // The values below must reach the module: a bulk string may be up to 1 GB here
        // (default 512 MB), and a client's query buffer up to 2 GB (default 1 GB).
        for (name, value) in [
            ("proto-max-bulk-len", "1073741824"),
            ("client-query-buffer-limit", "2147483648"),
        ] {
            let reply: String = cluster
                .node(id)
                .cmd(&["CONFIG", "SET", name, value])
                .unwrap_or_else(|e| panic!("CONFIG SET {name} on node {id}: {}", err_text(&e)));
            assert_eq!(reply, "OK");
        }
    }
    let info = || try_info(&cluster.addr(leader)).expect("INFO of the leader");
    let before = info();
    let mut con = server.client_with_timeout(Duration::from_secs(120));
    let mib = 1024 * 1024;
    // The issue's example, and one value alone a little over the limit (its bulk string
    // is above the server's default proto-max-bulk-len).
    let half = vec![b'v'; 300 * mib];
    let mset: redis::RedisResult<String> = redis::cmd("MSET")
        .arg("a")
        .arg(&half)
        .arg("b")
        .arg(&half)
        .query(&mut con);
    drop(half);
    let single = vec![b'w'; 512 * mib + 1];
    let set: redis::RedisResult<String> = redis::cmd("SET").arg("k").arg(&single).query(&mut con);
    drop(single);
    for (what, reply) in [
        ("MSET a <300 MB> b <300 MB>", mset),
        ("SET k <512 MiB + 1>", set),
    ] {
        let text = match reply {
            Ok(ok) => panic!("{what} was accepted: {ok:?}"),
            Err(e) => err_text(&e),
        };
        assert!(
            text.starts_with("ERR request too large for the raft log: its entry would take "),
            "{what}: {text}"
        );
    }
    let after = info();
    assert_eq!(field(&after, "raft_role"), "leader", "{after:?}");
    assert_eq!(
        num(&after, "raft_current_term"),
        num(&before, "raft_current_term"),
        "the leader's term moved"
    );
    assert_eq!(
        num(&after, "raft_current_index"),
        num(&before, "raft_current_index"),
        "something was appended to the log"
    );
    let ok: String = redis::cmd("SET")
        .arg("small")
        .arg("1")
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    let again = info();
    assert_eq!(field(&again, "raft_role"), "leader");
    assert_eq!(
        num(&again, "raft_current_term"),
        num(&before, "raft_current_term")
    );
    cluster.wait_caught_up(&cluster.ids(), CONVERGE_TIMEOUT);
    for id in cluster.ids() {
        assert_eq!(
            cluster.local(id, &["EXISTS", "a", "b", "k"]),
            redis::Value::Int(0)
        );
        assert_eq!(
            cluster.local(id, &["GET", "small"]),
            redis::Value::BulkString(b"1".to_vec()),
            "node {id}"
        );
    }
}
