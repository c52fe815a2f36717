//! Issue #15: a drop-in for existing RedisRaft (C) deployments — the original's config
//! names and test knobs, and the INFO fields its dashboards read.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::Value;

const SERVE_TIMEOUT: Duration = Duration::from_secs(20);

fn init(server: &Server) {
    let reply: String = server.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(reply.starts_with("OK"), "{reply}");
    server.expect_serving(SERVE_TIMEOUT);
}

fn config_get(con: &mut redis::Connection, key: &str) -> String {
    let got: Vec<String> = exec(con, &["CONFIG", "GET", key]).unwrap();
    assert_eq!(got.len(), 2, "CONFIG GET {key}: {got:?}");
    got[1].clone()
}

fn config_set(con: &mut redis::Connection, key: &str, value: &str) {
    let _: Value = exec(con, &["CONFIG", "SET", key, value])
        .unwrap_or_else(|e| panic!("CONFIG SET {key} {value}: {}", err_text(&e)));
}

fn info_num(server: &Server, field: &str) -> i64 {
    let value = server
        .info_field("raft", field)
        .unwrap_or_else(|| panic!("INFO raft has no {field}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{field}:{value} is not a number"))
}

/// The arguments the original's test rig (`tests/sandbox.py`) and typical deployments give.
const ORIGINAL_ARGS: &[(&str, &str)] = &[
    ("trace", "off"),
    ("loglevel", "debug"),
    ("log-delay-apply", "0"),
    ("log-disable-apply", "no"),
    ("snapshot-delay", "0"),
    ("snapshot-fail", "no"),
    ("snapshot-disable", "no"),
    ("snapshot-disable-load", "no"),
    ("migration-debug", "none"),
    ("scan-size", "1000"),
    ("sharding", "no"),
    ("external-sharding", "no"),
    ("slot-config", "0:16383"),
    ("shardgroup-update-interval", "5000"),
];

#[test]
fn a_server_starts_with_the_originals_test_arguments() {
    let mut opts = ServerOpts::new();
    for (key, value) in ORIGINAL_ARGS {
        opts = opts.raft(key, value);
    }
    let server = Server::start(opts);
    init(&server);
    let mut con = server.client();
    for (key, value) in ORIGINAL_ARGS {
        assert_eq!(
            config_get(&mut con, &format!("raft.{key}")),
            *value,
            "raft.{key}"
        );
    }
    let _: () = exec(&mut con, &["SET", "k", "v"]).unwrap();
    let got: String = exec(&mut con, &["GET", "k"]).unwrap();
    assert_eq!(got, "v");
}

#[test]
fn trace_takes_several_flags_at_once() {
    let server = Server::start(ServerOpts::new().raft("trace", "node"));
    let mut con = server.client();
    assert_eq!(config_get(&mut con, "raft.trace"), "node");
    config_set(&mut con, "raft.trace", "node conn");
    assert_eq!(config_get(&mut con, "raft.trace"), "node conn");
    config_set(&mut con, "raft.trace", "all");
    assert_eq!(config_get(&mut con, "raft.trace"), "all");
    config_set(&mut con, "raft.trace", "off");
    assert_eq!(config_get(&mut con, "raft.trace"), "off");
    let err = expect_err(&mut con, &["CONFIG", "SET", "raft.trace", "loud"]);
    assert!(err.contains("raft.trace"), "{err}");
}

#[test]
fn hidden_test_knobs_answer_by_name_only() {
    let server = Server::start_default();
    let mut con = server.client();
    let all: Vec<String> = exec(&mut con, &["CONFIG", "GET", "raft.*"]).unwrap();
    assert!(all.iter().any(|k| k == "raft.trace"), "{all:?}");
    assert!(all.iter().any(|k| k == "raft.scan-size"), "{all:?}");
    assert!(!all.iter().any(|k| k == "raft.snapshot-fail"), "{all:?}");
    assert_eq!(config_get(&mut con, "raft.snapshot-fail"), "no");
    config_set(&mut con, "raft.migration-debug", "fail-unlock");
    assert_eq!(config_get(&mut con, "raft.migration-debug"), "fail-unlock");
}

#[test]
fn config_sets_in_any_order_succeed_with_a_warning() {
    let server = Server::start_default();
    init(&server);
    let mut con = server.client();
    // Longer than the current request-timeout (200) and election-timeout (1000) / 2.
    config_set(&mut con, "raft.periodic-interval", "999");
    config_set(&mut con, "raft.request-timeout", "5000");
    config_set(&mut con, "raft.election-timeout", "100");
    config_set(&mut con, "raft.election-timeout", "20000");
    config_set(&mut con, "raft.periodic-interval", "100");
    assert_eq!(config_get(&mut con, "raft.periodic-interval"), "100");
    assert_eq!(config_get(&mut con, "raft.request-timeout"), "5000");
    assert!(
        server.wait_for_log("raft.request-timeout", Duration::from_secs(5)),
        "no warning about the combination in the log"
    );
    let _: () = exec(&mut con, &["SET", "k", "v"]).unwrap();
}

#[test]
fn odd_timeout_combinations_at_startup_are_resolved_not_refused() {
    let server = Server::start(
        ServerOpts::new()
            .raft("periodic-interval", "100")
            .raft("request-timeout", "500")
            .raft("election-timeout", "300"),
    );
    init(&server);
    assert!(server.log().contains("raft.election-timeout"));
}

#[test]
fn tls_enabled_needs_a_server_with_tls() {
    let probe = Server::start_default();
    let mut con = probe.client();
    // Debian's redis-server links libssl; the Valkey 9 used in tests is built without
    // TLS (yet keeps the tls-* configs).
    let server: String = exec(&mut con, &["INFO", "server"]).unwrap();
    let executable = parse_info(&server)
        .get("executable")
        .cloned()
        .unwrap_or_else(server_binary);
    let has_tls = std::fs::read(&executable)
        .map(|bytes| bytes.windows(11).any(|w| w == b"SSL_CTX_new"))
        .unwrap_or(true)
        || std::process::Command::new("ldd")
            .arg(&executable)
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("libssl"));
    if has_tls {
        // This server has TLS: enabling it before INIT is accepted (tests/tls.rs uses it).
        config_set(&mut con, "raft.tls-enabled", "yes");
        config_set(&mut con, "raft.tls-enabled", "no");
        return;
    }
    let err = expect_err(&mut con, &["CONFIG", "SET", "raft.tls-enabled", "yes"]);
    assert!(err.contains("Build RedisRaft with TLS"), "{err}");
    assert_eq!(config_get(&mut con, "raft.tls-enabled"), "no");
    config_set(&mut con, "raft.tls-enabled", "no");
    match Server::try_start(ServerOpts::new().raft("tls-enabled", "yes")) {
        Ok(_) => panic!("a server without TLS started with --raft.tls-enabled yes"),
        Err(failure) => assert!(
            failure.log.contains("Build RedisRaft with TLS"),
            "{}",
            failure.log
        ),
    }
}

#[test]
fn ignored_unknown_commands_get_the_servers_own_error() {
    let plain = Server::start(ServerOpts::new().without_module());
    let expected = expect_err(&mut plain.client(), &["NOSUCHCMD", "a"]);
    assert!(expected.contains("unknown command"), "{expected}");
    let server = Server::start(ServerOpts::new().raft("ignored-commands", "nosuchcmd,other"));
    let mut con = server.client();
    // Before INIT: not NOCLUSTER, the server's own reply.
    assert_eq!(expect_err(&mut con, &["NOSUCHCMD", "a"]), expected);
    // A command not ignored still meets the module.
    assert!(expect_err(&mut con, &["SET", "k", "v"]).starts_with("NOCLUSTER"));
    init(&server);
    let mut con = server.client();
    assert_eq!(expect_err(&mut con, &["NOSUCHCMD", "a"]), expected);
    // A command ignored at run time is not intercepted either.
    config_set(&mut con, "raft.ignored-commands", "nosuchcmd,third");
    let third = expect_err(&mut con, &["THIRD"]);
    assert!(third.contains("unknown command"), "{third}");
    // Also a known one: before INIT it runs locally instead of answering NOCLUSTER.
    let fresh = Server::start_default();
    let mut con = fresh.client();
    assert!(expect_err(&mut con, &["INCR", "n"]).starts_with("NOCLUSTER"));
    config_set(&mut con, "raft.ignored-commands", "incr");
    let n: i64 = exec(&mut con, &["INCR", "n"]).unwrap();
    assert_eq!(n, 1);
}

/// Waits for `cond`, failing with what `state` says.
fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    assert!(wait_until(timeout, &mut cond), "{what}: {}", state());
}

#[test]
fn log_disable_apply_holds_entries_until_turned_off() {
    let server = Server::start_default();
    init(&server);
    let mut admin = server.client();
    config_set(&mut admin, "raft.log-disable-apply", "yes");
    let applied_before = info_num(&server, "raft_last_applied_index");
    let writer = {
        let url = server.url();
        std::thread::spawn(move || {
            let mut con = connect(&url, CLIENT_TIMEOUT).unwrap();
            let started = Instant::now();
            let _: () = exec(&mut con, &["SET", "held", "1"]).unwrap();
            started.elapsed()
        })
    };
    wait(
        "the write commits",
        SERVE_TIMEOUT,
        || info_num(&server, "raft_commit_index") > applied_before,
        || format!("{:?}", server.info("raft")),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(info_num(&server, "raft_last_applied_index"), applied_before);
    let got: Option<String> = exec(&mut admin, &["RAFT.DEBUG", "EXEC", "GET", "held"]).unwrap();
    assert_eq!(got, None, "applied while log-disable-apply yes");
    config_set(&mut admin, "raft.log-disable-apply", "no");
    let waited = writer.join().unwrap();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    let got: String = exec(&mut admin, &["GET", "held"]).unwrap();
    assert_eq!(got, "1");
}

#[test]
fn log_delay_apply_sleeps_before_each_entry() {
    let server = Server::start(ServerOpts::new().raft("log-delay-apply", "200000"));
    init(&server);
    let mut con = server.client();
    let started = Instant::now();
    for i in 0..5 {
        let _: () = exec(&mut con, &["SET", &format!("k{i}"), "v"]).unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "5 writes took {took:?}"
    );
    config_set(&mut con, "raft.log-delay-apply", "0");
    let started = Instant::now();
    for i in 0..5 {
        let _: () = exec(&mut con, &["SET", &format!("k{i}"), "w"]).unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "5 writes took {took:?}");
}

#[test]
fn snapshot_knobs_fail_delay_and_disable_snapshots() {
    let server = Server::start_default();
    init(&server);
    let mut con = server.client();
    let _: () = exec(&mut con, &["SET", "k", "1"]).unwrap();
    assert_eq!(info_num(&server, "raft_snapshot_time_secs"), -1);
    assert_eq!(info_num(&server, "raft_snapshot_in_progress_last_idx"), -1);
    assert_eq!(info_num(&server, "raft_snapshot_in_progress_last_term"), -1);

    config_set(&mut con, "raft.snapshot-disable", "yes");
    let err = expect_err(&mut con, &["RAFT.DEBUG", "COMPACT"]);
    assert!(err.contains("snapshot"), "{err}");
    config_set(&mut con, "raft.snapshot-disable", "no");

    config_set(&mut con, "raft.snapshot-fail", "yes");
    let err = expect_err(&mut con, &["RAFT.DEBUG", "COMPACT"]);
    assert!(err.contains("snapshot failed"), "{err}");
    assert_eq!(info_num(&server, "raft_snapshots_created"), 0);
    config_set(&mut con, "raft.snapshot-fail", "no");

    config_set(&mut con, "raft.snapshot-delay", "2");
    let url = server.url();
    let started = Instant::now();
    let compact = std::thread::spawn(move || {
        let mut con = connect(&url, CLIENT_TIMEOUT).unwrap();
        exec::<String>(&mut con, &["RAFT.DEBUG", "COMPACT"]).map_err(|e| err_text(&e))
    });
    wait(
        "the snapshot is in progress",
        Duration::from_secs(5),
        || {
            server
                .info_field("raft", "raft_snapshot_in_progress")
                .as_deref()
                == Some("yes")
        },
        || format!("{:?}", server.info("raft")),
    );
    let applied = info_num(&server, "raft_last_applied_index");
    assert_eq!(
        info_num(&server, "raft_snapshot_in_progress_last_idx"),
        applied
    );
    assert_eq!(
        info_num(&server, "raft_snapshot_in_progress_last_term"),
        info_num(&server, "raft_current_term")
    );
    assert_eq!(compact.join().unwrap().as_deref(), Ok("OK"));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "the snapshot took {took:?}");
    assert_eq!(info_num(&server, "raft_snapshots_created"), 1);
    assert!(info_num(&server, "raft_snapshot_time_secs") >= 0);
    assert_eq!(info_num(&server, "raft_snapshot_in_progress_last_idx"), -1);
}

#[test]
fn info_has_the_originals_general_and_session_fields() {
    let server = Server::start_default();
    init(&server);
    let node_id = info_num(&server, "raft_node_id");
    // A single node voted for itself when it became leader.
    assert_eq!(info_num(&server, "raft_voted_for"), node_id);
    assert_eq!(info_num(&server, "raft_num_sessions"), 0);
    let mut watcher = server.client();
    let _: () = exec(&mut watcher, &["WATCH", "w"]).unwrap();
    wait(
        "the WATCH counts as a session",
        Duration::from_secs(5),
        || info_num(&server, "raft_num_sessions") == 1,
        || format!("{:?}", server.info("raft")),
    );
    let _: () = exec(&mut watcher, &["UNWATCH"]).unwrap();
    wait(
        "UNWATCH ends the session",
        Duration::from_secs(5),
        || info_num(&server, "raft_num_sessions") == 0,
        || format!("{:?}", server.info("raft")),
    );
}

#[test]
fn a_small_log_max_file_size_triggers_a_snapshot() {
    let server = Server::start_default();
    init(&server);
    let mut con = server.client();
    config_set(&mut con, "raft.log-max-file-size", "1kb");
    for i in 0..10 {
        let _: () = exec(&mut con, &["SET", &format!("key{i}"), &"x".repeat(100)]).unwrap();
    }
    wait(
        "a snapshot is taken",
        Duration::from_secs(10),
        || info_num(&server, "raft_snapshots_created") >= 1,
        || format!("{:?}", server.info("raft")),
    );
    assert!(info_num(&server, "raft_snapshot_last_idx") >= 10);
}

/// Node `id` of a test cluster with extra `raft.*` settings.
fn cluster_node(id: u64, extra: &[(&str, &str)]) -> Server {
    let port = free_port("127.0.0.1");
    let mut opts = common::cluster::node_opts(id, port, 500);
    for (key, value) in extra {
        opts = opts.raft(key, value);
    }
    Server::start(opts)
}

fn join(joiner: &Server, leader: &Server) {
    let reply: String = joiner
        .cmd(&["RAFT.CLUSTER", "JOIN", &leader.addr()])
        .unwrap_or_else(|e| panic!("JOIN: {}", err_text(&e)));
    assert!(reply.starts_with("OK"), "{reply}");
}

fn local_dbsize(server: &Server) -> i64 {
    server.cmd(&["RAFT.DEBUG", "EXEC", "DBSIZE"]).unwrap_or(-1)
}

#[test]
fn a_snapshot_transfer_counts_its_chunks_and_can_be_refused_by_the_joiner() {
    let leader = cluster_node(1, &[("snapshot-req-max-size", "128")]);
    init(&leader);
    let mut con = leader.client();
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.set(format!("key:{i}"), format!("value-{i}")).ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    let _: String = exec(&mut con, &["RAFT.DEBUG", "COMPACT"]).unwrap();
    let joiner = cluster_node(2, &[("snapshot-disable-load", "yes")]);
    join(&joiner, &leader);
    // Refused while snapshot-disable-load is on: the data does not arrive.
    wait(
        "the leader tries to send the snapshot",
        Duration::from_secs(20),
        || info_num(&joiner, "raft_snapshotreq_received") > 0,
        || format!("{:?}", joiner.info("raft")),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(info_num(&joiner, "raft_snapshots_received"), 0);
    assert_eq!(local_dbsize(&joiner), 0);
    config_set(&mut joiner.client(), "raft.snapshot-disable-load", "no");
    wait(
        "the joiner loads the snapshot",
        Duration::from_secs(30),
        || local_dbsize(&joiner) == 2000,
        || format!("{:?}", joiner.info("raft")),
    );
    // Every chunk counts, those of refused attempts too; the transfer that was loaded
    // alone carried the whole file (the leader may be retrying meanwhile, so only a
    // lower bound is certain).
    let chunks = info_num(&joiner, "raft_snapshotreq_received");
    let size = info_num(&joiner, "raft_snapshot_size");
    assert!(
        chunks >= size / 128,
        "{chunks} chunks counted for a {size}-byte snapshot in 128-byte chunks"
    );
    assert!(chunks >= 200, "{chunks} chunks");
}

#[test]
fn a_joiner_catching_up_counts_appends_with_entries() {
    let leader = cluster_node(1, &[("append-req-max-size", "1kb")]);
    init(&leader);
    let mut con = leader.client();
    for batch in 0..10 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.set(format!("key:{batch}:{i}"), "v").ignore();
        }
        let _: () = pipe.query(&mut con).unwrap();
    }
    let joiner = cluster_node(2, &[]);
    join(&joiner, &leader);
    wait(
        "the joiner catches up",
        Duration::from_secs(60),
        || local_dbsize(&joiner) == 10_000,
        || format!("{:?}", joiner.info("raft")),
    );
    let with_entries = info_num(&joiner, "raft_appendreq_with_entry_received");
    assert!(with_entries >= 100, "{with_entries} appends with entries");
    assert!(info_num(&joiner, "raft_appendreq_received") >= with_entries);
    assert_eq!(
        info_num(&joiner, "raft_voted_for"),
        -1,
        "the joiner never voted"
    );
}
