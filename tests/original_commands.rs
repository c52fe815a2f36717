//! Issue #15: the original RedisRaft's commands and replies that its users' tooling relies
//! on: `RAFT.DEBUG COMMANDSPEC`, `RAFT.DEBUG COMPACT [n]`, `RAFT.NODESHUTDOWN`, the
//! wording of `RAFT.TRANSFER_LEADER` errors, ACL refusals as the server words them,
//! `maxmemory` refusals before the log.

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
