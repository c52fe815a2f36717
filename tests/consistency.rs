//! Issue #14: every replica agrees. Scripts and function libraries survive a snapshot
//! install and a restart from a snapshot; `EVALSHA` never depends on one server's script
//! cache; a blocked pop of a client that went away (or was `CLIENT UNBLOCK`ed) pops
//! nothing; a proxied blocking command waits as long as the command itself.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use redis::Value;

const INCR_SCRIPT: &str = "return redis.call('incr', KEYS[1])";
const LIBRARY: &str = "#!lua name=counters\n\
     redis.register_function('myincr', function(keys, args) return redis.call('incr', keys[1]) end)";

/// Every string inside a reply, nested arrays and maps included.
fn all_strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().flat_map(all_strings).collect(),
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| all_strings(k).into_iter().chain(all_strings(v)))
            .collect(),
        other => vec![value_text(other)],
    }
}

fn router_text(router: &mut Router, args: &[&str]) -> String {
    value_text(&router.must(args, CONVERGE_TIMEOUT))
}

/// Every node of `ids` answers `args` alike (after catching up); returns the answer.
fn agreed(cluster: &Cluster, ids: &[u64], args: &[&str]) -> String {
    cluster.wait_caught_up(ids, CONVERGE_TIMEOUT);
    value_text(&same_everywhere(cluster, ids, args))
}

fn load_script_and_library(router: &mut Router) -> String {
    let sha = router_text(router, &["SCRIPT", "LOAD", INCR_SCRIPT]);
    assert_eq!(sha.len(), 40, "SCRIPT LOAD answered {sha:?}");
    assert_eq!(
        router_text(router, &["FUNCTION", "LOAD", LIBRARY]),
        "counters"
    );
    sha
}

/// The script `sha` and the library's `myincr` run once through the cluster and leave the
/// same counters on every node of `ids`, which all list the library.
fn script_and_function_run_alike(cluster: &Cluster, ids: &[u64], sha: &str) {
    let mut router = cluster.router(ids);
    assert_eq!(router_text(&mut router, &["EVALSHA", sha, "1", "cnt"]), "1");
    assert_eq!(
        router_text(&mut router, &["FCALL", "myincr", "1", "fcnt"]),
        "1"
    );
    assert_eq!(agreed(cluster, ids, &["GET", "cnt"]), "1");
    assert_eq!(agreed(cluster, ids, &["GET", "fcnt"]), "1");
    let libraries = same_everywhere(cluster, ids, &["FUNCTION", "LIST"]);
    assert!(
        all_strings(&libraries).iter().any(|s| s == "counters"),
        "{libraries:?}"
    );
}

/// Item 1: a node that joins after the log was compacted receives a snapshot; it must
/// know the scripts and libraries the others know.
#[test]
fn scripts_and_functions_survive_a_snapshot_install() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let mut router = cluster.router(&[leader]);
    let sha = load_script_and_library(&mut router);
    router.must(&["SET", "before", "1"], CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    for &id in &ids {
        let reply = try_cmd(
            &cluster.addr(id),
            &["RAFT.DEBUG", "COMPACT"],
            CONVERGE_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("COMPACT on node {id}: {}", err_text(&e)));
        assert_eq!(value_text(&reply), "OK");
    }

    cluster.join_new(4);
    let ids = cluster.ids();
    cluster.wait_voters(&ids, FORM_TIMEOUT);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    let info = cluster.info(4).expect("node 4 INFO");
    assert!(
        num(&info, "raft_snapshots_received") >= 1,
        "node 4 did not install a snapshot: {info:?}"
    );

    assert_eq!(agreed(&cluster, &ids, &["GET", "before"]), "1");
    script_and_function_run_alike(&cluster, &ids, &sha);
}

/// Item 1, restart: with `save ""` a node restarts from its snapshot and log only; the
/// scripts and libraries loaded before the snapshot must be back.
#[test]
fn scripts_and_functions_survive_a_restart_from_a_snapshot() {
    let mut cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let mut router = cluster.router(&[leader]);
    let sha = load_script_and_library(&mut router);
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    for &id in &ids {
        try_cmd(
            &cluster.addr(id),
            &["RAFT.DEBUG", "COMPACT"],
            CONVERGE_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("COMPACT on node {id}: {}", err_text(&e)));
        let info = cluster.info(id).expect("INFO");
        assert_eq!(
            num(&info, "raft_log_entries"),
            0,
            "node {id} still has entries after COMPACT: {info:?}"
        );
    }
    for &id in &ids {
        cluster.node_mut(id).kill9();
    }
    for &id in &ids {
        cluster.node_mut(id).restart();
    }
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    // Each node's own script cache was emptied by the restart; the registry answers.
    script_and_function_run_alike(&cluster, &ids, &sha);
}

/// Item 1, EVAL_RO: served as a read on one node, it caches its body there only. An
/// EVALSHA of that body must be answered alike on every node (NOSCRIPT: it was never
/// loaded through the log), not run by one node and refused by the others.
#[test]
fn eval_ro_does_not_make_evalsha_differ_between_nodes() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let body = "if ARGV[1] == 'w' then return redis.call('incr', KEYS[1]) end \
                return redis.call('get', KEYS[1])";
    let mut con = cluster.node(leader).client();
    let read: Value = exec(&mut con, &["EVAL_RO", body, "1", "k", "r"]).expect("EVAL_RO");
    assert_eq!(read, Value::Nil);
    // The digest of `body`; loading it into the leader's own cache (outside the log) must
    // not matter either.
    let body_sha: String =
        exec(&mut con, &["RAFT.DEBUG", "EXEC", "SCRIPT", "LOAD", body]).expect("digest");
    let error = expect_err(&mut con, &["EVALSHA", &body_sha, "1", "k", "w"]);
    assert!(error.starts_with("NOSCRIPT"), "EVALSHA answered {error:?}");
    assert_eq!(agreed(&cluster, &ids, &["EXISTS", "k"]), "0");
    let exists: Vec<i64> = exec(&mut con, &["SCRIPT", "EXISTS", &body_sha]).expect("EXISTS");
    assert_eq!(
        exists,
        vec![0],
        "SCRIPT EXISTS answers from the replicated registry"
    );
    // Loaded through the log, it runs everywhere.
    let mut router = cluster.router(&[leader]);
    router.must(&["SCRIPT", "LOAD", body], CONVERGE_TIMEOUT);
    assert_eq!(
        router_text(&mut router, &["EVALSHA", &body_sha, "1", "k", "w"]),
        "1"
    );
    assert_eq!(agreed(&cluster, &ids, &["GET", "k"]), "1");
}

/// A connection that sends one command and is then dropped (or read later).
fn send_raw(addr: &str, args: &[&str]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

/// Ids of the clients blocked in a module command on `addr`.
fn blocked_client_ids(addr: &str) -> Vec<String> {
    let list = value_text(&try_cmd(addr, &["CLIENT", "LIST"], CONVERGE_TIMEOUT).expect("LIST"));
    list.lines()
        .filter(|line| line.contains(" flags=b ") && line.contains("cmd=raft"))
        .filter_map(|line| line.strip_prefix("id="))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
        .collect()
}

fn wait_blocked(addr: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        ids = blocked_client_ids(addr);
        ids.len() == count
    });
    assert!(
        ok,
        "expected {count} blocked clients on {addr}, have {ids:?}"
    );
    ids
}

/// Item 2: in Redis a client that disconnects while blocked leaves the wait and nothing
/// is popped for it.
#[test]
fn a_blocked_pop_of_a_departed_client_pops_nothing() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let addr = cluster.addr(leader);
    for command in [
        vec!["BLPOP", "q", "0"],
        vec!["BLMOVE", "q", "dst", "LEFT", "RIGHT", "0"],
        vec!["BZPOPMIN", "z", "0"],
    ] {
        let stream = send_raw(&addr, &command);
        wait_blocked(&addr, 1);
        drop(stream);
        wait_blocked(&addr, 0);
        // The wait must be gone before the push is applied.
        sleep(Duration::from_millis(100));
        let mut con = cluster.node(leader).client();
        if command[0] == "BZPOPMIN" {
            let _: i64 = exec(&mut con, &["ZADD", "z", "1", "a"]).expect("ZADD");
            cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
            assert_eq!(agreed(&cluster, &ids, &["ZCARD", "z"]), "1", "{command:?}");
        } else {
            let _: i64 = exec(&mut con, &["LPUSH", "q", "a"]).expect("LPUSH");
            assert_eq!(agreed(&cluster, &ids, &["LLEN", "q"]), "1", "{command:?}");
            let _: Value = exec(&mut con, &["DEL", "q"]).expect("DEL");
        }
    }
}

/// Item 2: `CLIENT UNBLOCK <id>` ends a BLPOP with its timeout reply, `... ERROR` with
/// Redis' UNBLOCKED error, and neither pops what is pushed afterwards.
#[test]
fn client_unblock_ends_a_blocking_pop_as_in_redis() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let addr = cluster.addr(leader);
    for (flavour, expected) in [("TIMEOUT", "*-1\r\n"), ("ERROR", "-UNBLOCKED")] {
        let mut stream = send_raw(&addr, &["BLPOP", "q", "0"]);
        let blocked = wait_blocked(&addr, 1);
        let unblocked: i64 = exec(
            &mut cluster.node(leader).client(),
            &["CLIENT", "UNBLOCK", &blocked[0], flavour],
        )
        .expect("CLIENT UNBLOCK");
        assert_eq!(unblocked, 1, "CLIENT UNBLOCK {flavour}");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reply = vec![0u8; 256];
        let read = stream
            .read(&mut reply)
            .expect("the unblocked client gets a reply");
        let reply = String::from_utf8_lossy(&reply[..read]).to_string();
        assert!(reply.starts_with(expected), "{flavour}: reply {reply:?}");
        wait_blocked(&addr, 0);
        let _: i64 = exec(&mut cluster.node(leader).client(), &["LPUSH", "q", "a"]).expect("LPUSH");
        assert_eq!(agreed(&cluster, &ids, &["LLEN", "q"]), "1", "{flavour}");
        let _: Value = exec(&mut cluster.node(leader).client(), &["DEL", "q"]).expect("DEL");
    }
}

/// Item 2: a blocking command proxied by a follower (`follower-proxy yes`) waits as long
/// as the command says, not `proxy-response-timeout`.
#[test]
fn a_proxied_blocking_pop_waits_for_its_own_timeout() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).expect("a follower");
    for &id in &ids {
        for (key, value) in [("follower-proxy", "yes"), ("proxy-response-timeout", "300")] {
            let _: Value = exec(
                &mut cluster.node(id).client(),
                &["CONFIG", "SET", &format!("raft.{key}"), value],
            )
            .expect("CONFIG SET");
        }
    }
    let mut con = cluster
        .node(follower)
        .client_with_timeout(Duration::from_secs(30));
    let started = Instant::now();
    let reply: Value = exec(&mut con, &["BLPOP", "q", "1.5"]).expect("BLPOP with a timeout");
    let waited = started.elapsed();
    assert_eq!(reply, Value::Nil, "after {waited:?}");
    assert!(
        waited >= Duration::from_millis(1400),
        "answered after {waited:?}"
    );

    let pusher = {
        let addr = cluster.addr(leader);
        std::thread::spawn(move || {
            sleep(Duration::from_millis(1000));
            try_cmd(&addr, &["LPUSH", "q", "x"], CONVERGE_TIMEOUT).expect("LPUSH")
        })
    };
    let reply: Vec<String> = exec(&mut con, &["BLPOP", "q", "0"]).expect("BLPOP forever");
    assert_eq!(reply, vec!["q".to_string(), "x".to_string()]);
    pusher.join().expect("pusher");
    assert_eq!(agreed(&cluster, &ids, &["LLEN", "q"]), "0");
}

/// Item 3: inside a script, replies that describe one node's copy are refused (OBJECT's
/// subcommands, MEMORY, PUBSUB) and PUBLISH counts 0 receivers on every node, so a script
/// cannot write differently on each node. The message is still delivered.
#[test]
fn scripts_cannot_branch_on_node_local_replies() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let addr = cluster.addr(leader);
    let mut subscriber = send_raw(&addr, &["SUBSCRIBE", "ch"]);
    subscriber
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buffer = vec![0u8; 4096];
    let read = subscriber.read(&mut buffer).expect("subscribed");
    assert!(String::from_utf8_lossy(&buffer[..read]).contains("subscribe"));

    let mut router = cluster.router(&[leader]);
    let script = "local n = redis.call('publish', 'ch', 'hello') \
                  if n > 0 then redis.call('set', KEYS[1], 'seen') end return n";
    assert_eq!(router_text(&mut router, &["EVAL", script, "1", "k"]), "0");
    let read = subscriber.read(&mut buffer).expect("the message arrives");
    assert!(
        String::from_utf8_lossy(&buffer[..read]).contains("hello"),
        "subscriber got {:?}",
        String::from_utf8_lossy(&buffer[..read])
    );
    assert_eq!(agreed(&cluster, &ids, &["EXISTS", "k"]), "0");

    router.must(&["SET", "v", "1"], CONVERGE_TIMEOUT);
    let mut con = cluster.node(leader).client();
    for call in [
        "return redis.call('object', 'encoding', KEYS[1])",
        "return redis.call('OBJECT', 'IDLETIME', KEYS[1])",
        "return redis.call('memory', 'usage', KEYS[1])",
        "return redis.call('pubsub', 'numsub', 'ch')",
    ] {
        let error = expect_err(&mut con, &["EVAL", call, "1", "v"]);
        assert!(
            error.contains("not supported by RedisRaft"),
            "{call}: {error:?}"
        );
    }
    for kill in [["SCRIPT", "KILL"], ["FUNCTION", "KILL"]] {
        let error = expect_err(&mut con, &kill);
        assert!(
            error.contains("not supported by RedisRaft"),
            "{kill:?}: {error:?}"
        );
    }
}

/// Item 3: SCRIPT KILL reaches a server busy running a script and is refused there too
/// (killing it on one node would leave the others to finish it); every node ends alike.
#[test]
fn script_kill_is_refused_while_a_script_runs() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let addr = cluster.addr(leader);
    let _: Value = exec(
        &mut cluster.node(leader).client(),
        &["CONFIG", "SET", "busy-reply-threshold", "20"],
    )
    .expect("CONFIG SET");
    let script = "local n = 0 for i = 1, 150000000 do n = n + 1 end \
                  redis.call('set', KEYS[1], n) return n";
    let runner = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            try_cmd(
                &addr,
                &["EVAL", script, "1", "loop"],
                Duration::from_secs(120),
            )
        })
    };
    let mut probe_error = String::new();
    let busy = wait_until(CONVERGE_TIMEOUT, || {
        match try_cmd(&addr, &["PING"], Duration::from_secs(5)) {
            Err(e) => {
                probe_error = err_text(&e);
                probe_error.starts_with("BUSY")
            }
            Ok(_) => false,
        }
    });
    assert!(busy, "the leader never got busy: {probe_error}");
    let kill = try_cmd(&addr, &["SCRIPT", "KILL"], Duration::from_secs(5));
    let error = err_text(&kill.expect_err("SCRIPT KILL must be refused"));
    assert!(error.contains("not supported by RedisRaft"), "{error:?}");
    let reply = runner
        .join()
        .expect("runner")
        .expect("the script ran to the end");
    assert_eq!(value_text(&reply), "150000000");
    assert_eq!(agreed(&cluster, &ids, &["GET", "loop"]), "150000000");
}

/// Item 9: PFCOUNT stores the cardinality it computed in the HLL: served by one node,
/// that node's bytes would differ. Through the log, every node holds the same bytes.
#[test]
fn pfcount_leaves_the_same_bytes_on_every_node() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let mut router = cluster.router(&[leader]);
    router.must(&["PFADD", "h", "a", "b", "c"], CONVERGE_TIMEOUT);
    assert_eq!(router_text(&mut router, &["PFCOUNT", "h"]), "3");
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    same_everywhere(&cluster, &ids, &["DUMP", "h"]);
}

/// Issue #15: inside scripts, commands whose output is only unordered (KEYS, SMEMBERS,
/// SINTER, HKEYS, HGETALL, ...) answer sorted (HGETALL by field/value pair), the same on
/// every node, so a script may depend on their order; `RAFT._SORT_REPLY <command>` gives
/// clients the same, as a read.
#[test]
fn scripts_get_unordered_replies_sorted() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let mut router = cluster.router(&[leader]);
    let members: Vec<String> = (0..40).map(|i| format!("m{:02}", (i * 17) % 40)).collect();
    let mut sadd = vec!["SADD", "s"];
    sadd.extend(members.iter().map(String::as_str));
    router.must(&sadd, CONVERGE_TIMEOUT);
    router.must(
        &["HSET", "h", "b", "2", "c", "3", "a", "1"],
        CONVERGE_TIMEOUT,
    );
    let mut sorted = members.clone();
    sorted.sort();

    let mut con = cluster.node(leader).client();
    let got: Vec<String> = exec(
        &mut con,
        &["EVAL", "return redis.call('smembers', KEYS[1])", "1", "s"],
    )
    .unwrap();
    assert_eq!(got, sorted);
    let got: Vec<String> = exec(
        &mut con,
        &["EVAL", "return redis.call('HGETALL', KEYS[1])", "1", "h"],
    )
    .unwrap();
    assert_eq!(got, ["a", "1", "b", "2", "c", "3"]);
    let got: Vec<String> =
        exec(&mut con, &["EVAL", "return redis.call('keys', '*')", "0"]).unwrap();
    assert_eq!(got, ["h", "s"]);
    // A script that writes what it found first: the same on every node.
    let first = "local m = redis.call('smembers', KEYS[1]) redis.call('set', KEYS[2], m[1]) \
                 return m[1]";
    let got: String = exec(&mut con, &["EVAL", first, "2", "s", "first"]).unwrap();
    assert_eq!(got, "m00");
    assert_eq!(agreed(&cluster, &ids, &["GET", "first"]), "m00");

    let got: Vec<String> = exec(&mut con, &["RAFT._SORT_REPLY", "SMEMBERS", "s"]).unwrap();
    assert_eq!(got, sorted);
    let error = expect_err(&mut con, &["RAFT._SORT_REPLY", "SET", "x", "y"]);
    assert!(error.contains("read command only"), "{error}");
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let error = expect_err(
        &mut cluster.node(follower).client(),
        &["RAFT._SORT_REPLY", "SMEMBERS", "s"],
    );
    assert!(error.starts_with("MOVED"), "{error}");
}
