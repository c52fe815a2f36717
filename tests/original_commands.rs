//! Issue #15: the original RedisRaft's commands and replies that its users' tooling relies
//! on: `RAFT.DEBUG COMMANDSPEC`, `RAFT.DEBUG COMPACT [n]`, `RAFT.NODESHUTDOWN`, the
//! wording of `RAFT.TRANSFER_LEADER` errors, ACL refusals as the server words them,
//! `maxmemory` refusals before the log, `RAFT.DEBUG NODECFG`, MULTI through `follower-proxy`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use redis::Value;

const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

fn initialized(opts: ServerOpts) -> Server {
    let server = Server::start(opts);
    let reply: String = server
        .cmd(&["RAFT.CLUSTER", "INIT"])
        .unwrap_or_else(|e| panic!("RAFT.CLUSTER INIT: {}", err_text(&e)));
    assert!(reply.starts_with("OK "), "{reply}");
    server.expect_serving(SERVE_TIMEOUT);
    server
}

/// The flags follow the original's bits (1<<1 read, 1<<2 write, 1<<3 refused, 1<<4 not
/// intercepted, 1<<5 sorted in scripts, 1<<6 refused in scripts), and `ignored-commands`.
#[test]
fn commandspec_answers_the_interception_flags() {
    let server = initialized(ServerOpts::new().raft("ignored-commands", "lrange,object|help"));
    let mut con = server.client();
    let spec = |con: &mut redis::Connection, words: &[&str]| -> i64 {
        let mut args = vec!["RAFT.DEBUG", "COMMANDSPEC"];
        args.extend_from_slice(words);
        exec(con, &args).unwrap_or_else(|e| panic!("{words:?}: {}", err_text(&e)))
    };
    assert_eq!(spec(&mut con, &["set"]), 1 << 2);
    assert_eq!(spec(&mut con, &["GET"]), 1 << 1);
    assert_eq!(spec(&mut con, &["smembers"]), (1 << 1) | (1 << 5));
    assert_eq!(spec(&mut con, &["spop"]), (1 << 2) | (1 << 6));
    assert_eq!(spec(&mut con, &["ping"]), 1 << 4);
    assert_eq!(spec(&mut con, &["lrange"]), 1 << 4, "ignored");
    assert_eq!(
        spec(&mut con, &["object|help"]),
        1 << 4,
        "ignored subcommand"
    );
    assert_eq!(spec(&mut con, &["script", "debug"]), 1 << 3);
    assert_eq!(spec(&mut con, &["bgsave"]), 1 << 3);
    let error = expect_err(&mut con, &["RAFT.DEBUG", "COMMANDSPEC", "nosuchcommand"]);
    assert!(error.contains("unknown command"), "{error}");
}

/// `COMPACT 1` answers at once and the snapshot happens in the background; a plain
/// `COMPACT` while a snapshot is being taken waits for it and takes the next one.
#[test]
fn compact_async_and_compact_while_a_snapshot_runs() {
    let server = initialized(ServerOpts::new());
    let mut con = server.client();
    for i in 0..200 {
        let _: () = exec(&mut con, &["SET", &format!("k{i}"), "v"]).unwrap();
    }
    let created = |server: &Server| -> i64 {
        server
            .info_field("raft", "raft_snapshots_created")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let reply: String = exec(&mut con, &["RAFT.DEBUG", "COMPACT", "1"]).unwrap();
    assert_eq!(reply, "OK");
    assert!(
        wait_until(SERVE_TIMEOUT, || created(&server) == 1),
        "the background snapshot was not taken"
    );

    // A slow snapshot (raft.snapshot-delay would do it too; a big value is enough here).
    let big = "x".repeat(4 * 1024 * 1024);
    for i in 0..40 {
        let _: () = exec(&mut con, &["SET", &format!("big{i}"), &big]).unwrap();
    }
    let reply: String = exec(&mut con, &["RAFT.DEBUG", "COMPACT", "1"]).unwrap();
    assert_eq!(reply, "OK");
    let _: () = exec(&mut con, &["SET", "after", "1"]).unwrap();
    let applied: i64 = server.info("raft")["raft_last_applied_index"]
        .parse()
        .unwrap();
    let started = Instant::now();
    let reply: String = exec(
        &mut server.client_with_timeout(Duration::from_secs(120)),
        &["RAFT.DEBUG", "COMPACT"],
    )
    .unwrap_or_else(|e| panic!("COMPACT while one runs: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    eprintln!("COMPACT waited {:?}", started.elapsed());
    let info = server.info("raft");
    let snapshot: i64 = info["raft_snapshot_last_idx"].parse().unwrap();
    assert!(
        snapshot >= applied,
        "COMPACT answered with the log compacted to {snapshot}, before {applied}: {info:?}"
    );
    // The running snapshot and the next one were both taken (the counter of INFO counts
    // log rewrites, which the driver may defer or merge).
    let taken = server.log().matches("taking a snapshot at index").count();
    assert!(taken >= 3, "{taken} snapshots started");
}

/// `RAFT.NODESHUTDOWN <id>` shuts the node down when the id is its own; another id is
/// `ERR invalid node id`.
#[test]
fn nodeshutdown_stops_the_named_node_only() {
    let mut server = initialized(ServerOpts::new().raft("id", "7"));
    let mut con = server.client();
    assert_eq!(
        expect_err(&mut con, &["RAFT.NODESHUTDOWN", "8"]),
        "ERR invalid node id"
    );
    assert_eq!(
        expect_err(&mut con, &["RAFT.NODESHUTDOWN", "x"]),
        "ERR invalid node id"
    );
    let reply: String = exec(&mut con, &["RAFT.NODESHUTDOWN", "7"]).unwrap();
    assert_eq!(reply, "OK");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "the node is still running");
}

/// `RAFT.TRANSFER_LEADER` on a follower is `ERR not leader`; an unknown or own id is
/// `ERR invalid node id` (the original's wording).
#[test]
fn transfer_leader_errors_are_worded_as_the_original() {
    let cluster = Cluster::start(3, ET_MS);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let mut con = cluster.node(follower).client();
    assert_eq!(
        expect_err(&mut con, &["RAFT.TRANSFER_LEADER", &leader.to_string()]),
        "ERR not leader"
    );
    let mut con = cluster.node(leader).client();
    for bad in ["99", &leader.to_string(), "abc"] {
        assert_eq!(
            expect_err(&mut con, &["RAFT.TRANSFER_LEADER", bad]),
            "ERR invalid node id",
            "{bad}"
        );
    }
    let reply: Value = exec(&mut con, &["RAFT.TRANSFER_LEADER", &follower.to_string()]).unwrap();
    assert_eq!(value_text(&reply), "OK");
}

/// `follower-proxy yes`: a follower forwards a whole `MULTI ... EXEC` to the leader as one
/// transaction (one reply array, applied at once), and a queueing error still aborts it
/// on the follower without anything reaching the leader.
#[test]
fn follower_proxy_forwards_multi_exec_as_one_transaction() {
    let cluster = Cluster::start(3, 500);
    for id in cluster.ids() {
        let reply: String = cluster
            .node(id)
            .cmd(&["CONFIG", "SET", "raft.follower-proxy", "yes"])
            .unwrap();
        assert_eq!(reply, "OK");
    }
    let leader = cluster.wait_leader(&cluster.ids(), SERVE_TIMEOUT);
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let mut con = cluster.node(follower).client();
    let mut transaction = redis::pipe();
    transaction
        .atomic()
        .cmd("SET")
        .arg("tx:a")
        .arg("1")
        .cmd("INCR")
        .arg("tx:a")
        .cmd("RPUSH")
        .arg("tx:list")
        .arg("x")
        .arg("y")
        .cmd("GET")
        .arg("tx:a");
    let replies: Vec<Value> = transaction
        .query(&mut con)
        .unwrap_or_else(|e| panic!("proxied MULTI/EXEC: {}", err_text(&e)));
    assert_eq!(
        replies,
        vec![
            Value::Okay,
            Value::Int(2),
            Value::Int(2),
            Value::BulkString(b"2".to_vec())
        ]
    );
    assert_eq!(value_text(&cluster.local(leader, &["GET", "tx:a"])), "2");
    let index = num(&cluster.info(leader).unwrap(), "raft_commit_index");
    cluster.wait_applied(&cluster.ids(), index, SERVE_TIMEOUT);
    assert_eq!(
        value_text(&cluster.local(follower, &["LLEN", "tx:list"])),
        "2"
    );

    // An unknown command inside MULTI aborts on the follower; nothing is forwarded.
    let reply: String = exec(&mut con, &["MULTI"]).unwrap();
    assert_eq!(reply, "OK");
    let queued: String = exec(&mut con, &["SET", "tx:b", "1"]).unwrap();
    assert_eq!(queued, "QUEUED");
    let error = expect_err(&mut con, &["NOSUCHCOMMAND"]);
    assert!(error.contains("unknown command"), "{error}");
    let error = expect_err(&mut con, &["EXEC"]);
    assert!(error.starts_with("EXECABORT"), "{error}");
    assert_eq!(value_text(&cluster.local(leader, &["EXISTS", "tx:b"])), "0");

    // Without the proxy the follower redirects the EXEC instead.
    let reply: String = cluster
        .node(follower)
        .cmd(&["CONFIG", "SET", "raft.follower-proxy", "no"])
        .unwrap();
    assert_eq!(reply, "OK");
    let _: String = exec(&mut con, &["MULTI"]).unwrap();
    let _: String = exec(&mut con, &["SET", "tx:c", "1"]).unwrap();
    let error = expect_err(&mut con, &["EXEC"]);
    assert!(error.starts_with("MOVED"), "{error}");
}

/// Whether node `id` is a voter, as the leader `leader` reports it in INFO raft.
fn voting_on(cluster: &Cluster, leader: u64, id: u64) -> bool {
    let info = cluster.info(leader).expect("INFO raft of the leader");
    info_nodes(&info)
        .get(&id)
        .unwrap_or_else(|| panic!("node {id} is missing from INFO raft of {leader}"))
        .0
}

fn nodecfg(cluster: &Cluster, on: u64, id: u64, flags: &str) -> Result<String, String> {
    cluster
        .node(on)
        .cmd::<String>(&["RAFT.DEBUG", "NODECFG", &id.to_string(), flags])
        .map_err(|e| err_text(&e))
}

/// Waits until the leader reports node `id` with the wanted role.
fn wait_voting(cluster: &Cluster, leader: u64, id: u64, voting: bool) {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    while voting_on(cluster, leader, id) != voting {
        assert!(
            Instant::now() < deadline,
            "node {id} never became voting={voting}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `RAFT.DEBUG NODECFG <id> -voting` demotes a voter to a learner that stays one once it
/// has caught up (across a leader change, a compacted log and a restart) until
/// `+voting`; bad ids and options are refused.
#[test]
fn nodecfg_demotes_and_promotes_a_node() {
    let et_ms = 500;
    let mut cluster = Cluster::start(3, et_ms);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, SERVE_TIMEOUT);
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
    let (demoted, other) = (others[0], others[1]);

    assert_eq!(
        nodecfg(&cluster, leader, 999, "-voting").unwrap_err(),
        "ERR node id does not exist"
    );
    let error = nodecfg(&cluster, leader, demoted, "+voting -bogus").unwrap_err();
    assert!(error.contains("invalid nodecfg option"), "{error}");
    let error = nodecfg(&cluster, leader, demoted, "-active").unwrap_err();
    assert!(error.contains("-active is not supported"), "{error}");
    let error = nodecfg(&cluster, leader, leader, "-voting").unwrap_err();
    assert!(error.contains("cannot be demoted"), "{error}");
    let error = nodecfg(&cluster, demoted, other, "-voting").unwrap_err();
    assert!(
        error.starts_with("MOVED") || error.contains("not leader"),
        "{error}"
    );
    assert_eq!(
        nodecfg(&cluster, leader, demoted, "+active +voting").unwrap(),
        "OK"
    );
    assert!(voting_on(&cluster, leader, demoted));

    assert_eq!(nodecfg(&cluster, leader, demoted, "-voting").unwrap(), "OK");
    assert!(
        !voting_on(&cluster, leader, demoted),
        "the reply follows the change"
    );
    // Caught up and given time to be promoted, it stays a learner.
    let mut router = cluster.router(&ids);
    for i in 0..20 {
        router.must(&["SET", &format!("k{i}"), "v"], SERVE_TIMEOUT);
    }
    cluster.wait_caught_up(&ids, SERVE_TIMEOUT);
    std::thread::sleep(Duration::from_millis(4 * et_ms));
    assert!(
        !voting_on(&cluster, leader, demoted),
        "a held learner was promoted"
    );

    // A new leader that knows the hold from its compacted log's snapshot, after a restart.
    let reply: String = cluster
        .node(leader)
        .cmd(&["RAFT.TRANSFER_LEADER", &other.to_string()])
        .unwrap();
    assert_eq!(reply, "OK");
    assert_eq!(cluster.wait_leader(&ids, SERVE_TIMEOUT), other);
    let reply: String = cluster.node(other).cmd(&["RAFT.DEBUG", "COMPACT"]).unwrap();
    assert_eq!(reply, "OK");
    let snapshot_index = num(&cluster.info(other).unwrap(), "raft_snapshot_last_idx");
    assert!(
        snapshot_index > 20,
        "the log was compacted (snapshot at {snapshot_index})"
    );
    cluster.node_mut(other).restart();
    let voters = [leader, other];
    let mut leading = cluster.wait_leader(&ids, SERVE_TIMEOUT);
    if leading != other {
        let reply: String = cluster
            .node(leading)
            .cmd(&["RAFT.TRANSFER_LEADER", &other.to_string()])
            .unwrap();
        assert_eq!(reply, "OK");
        leading = cluster.wait_leader(&voters, SERVE_TIMEOUT);
    }
    assert_eq!(leading, other);
    cluster.wait_caught_up(&ids, SERVE_TIMEOUT);
    std::thread::sleep(Duration::from_millis(4 * et_ms));
    assert!(
        !voting_on(&cluster, other, demoted),
        "the hold did not survive the snapshot and restart"
    );

    assert_eq!(nodecfg(&cluster, other, demoted, "+voting").unwrap(), "OK");
    wait_voting(&cluster, other, demoted, true);
}

/// The probe module `cargo test` builds from `examples/probe_module.rs`.
fn probe_module() -> std::path::PathBuf {
    let path = match std::env::var("REDISRAFT_PROBE_MODULE") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => {
            let target = std::env::var("CARGO_TARGET_DIR")
                .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
            std::path::Path::new(&target).join("release/examples/libprobe_module.so")
        }
    };
    assert!(
        path.exists(),
        "probe module not found at {}: `cargo test --release` builds it \
         (or `cargo build --release --example probe_module`)",
        path.display()
    );
    path
}

/// The interception table follows `MODULE LOAD` / `MODULE UNLOAD`: a loaded module's
/// write command is a write (and is replicated), its read a read; once unloaded, both are
/// unknown again.
#[test]
fn commandspec_follows_module_load_and_unload() {
    let server = initialized(ServerOpts::new().args(&["--enable-module-command", "yes"]));
    let mut con = server.client();
    let error = expect_err(&mut con, &["RAFT.DEBUG", "COMMANDSPEC", "probe.set"]);
    assert!(error.contains("unknown command"), "{error}");
    let module = probe_module();
    let reply: String = exec(&mut con, &["MODULE", "LOAD", module.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("MODULE LOAD: {}", err_text(&e)));
    assert_eq!(reply, "OK");
    let set: i64 = exec(&mut con, &["RAFT.DEBUG", "COMMANDSPEC", "probe.set"]).unwrap();
    assert_eq!(set, 1 << 2, "a module's write command is a write");
    let get: i64 = exec(&mut con, &["RAFT.DEBUG", "COMMANDSPEC", "probe.get"]).unwrap();
    assert_eq!(get, 1 << 1, "a module's read command is a read");
    let before = num(&server.info("raft"), "raft_commit_index");
    let reply: String = exec(&mut con, &["PROBE.SET", "probed", "1"]).unwrap();
    assert_eq!(reply, "OK");
    assert!(
        num(&server.info("raft"), "raft_commit_index") > before,
        "the module's write went through the log"
    );
    let reply: String = exec(&mut con, &["MODULE", "UNLOAD", "probe"]).unwrap();
    assert_eq!(reply, "OK");
    let error = expect_err(&mut con, &["RAFT.DEBUG", "COMMANDSPEC", "probe.set"]);
    assert!(error.contains("unknown command"), "{error}");
}
