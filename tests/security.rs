//! Security (docs/SECURITY.md) against real servers: internal peer commands are for the
//! cluster user only; messages from another cluster or from non-members are refused,
//! logged (rate-limited) and change nothing; malformed RAFT.* commands get an error and
//! change nothing; the cluster password never shows in logs, INFO or CONFIG GET.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use redis::Value;

const PEER_USER: &str = "raftpeer";
/// Distinctive, so a leak is found by a plain substring search.
const PASSWORD: &str = "Pw-4c1d9e-s3cret-peer";
const WRONG_PASSWORD: &str = "Wr0ng-8a7b6c-pw";
const ALICE_PASSWORD: &str = "alice-pw-55";

// ---------------------------------------------------------------------------------------
// Raw RESP over a socket: what a hostile or broken client can send.

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One line reply (`+..`, `-..`, `:..`) or the first line of a longer one.
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => panic!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&line)
            ),
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&line)),
        }
    }
    line.truncate(line.len() - 2);
    String::from_utf8_lossy(&line).into_owned()
}

fn raw_connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends one command on a fresh raw connection; returns the first reply line.
fn raw_call(addr: &str, auth: Option<(&str, &str)>, args: &[&[u8]]) -> String {
    let mut stream = raw_connect(addr);
    if let Some((user, password)) = auth {
        stream
            .write_all(&resp_command(&[
                b"AUTH",
                user.as_bytes(),
                password.as_bytes(),
            ]))
            .unwrap();
        assert_eq!(read_line(&mut stream), "+OK", "AUTH {user}");
    }
    stream.write_all(&resp_command(args)).unwrap();
    read_line(&mut stream)
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

fn encode(m: &Message) -> Vec<u8> {
    m.write_to_bytes().unwrap()
}

fn raft_msg(dbid: &str, sender: &str, messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut args = vec![
        b"RAFT.MSG".to_vec(),
        dbid.as_bytes().to_vec(),
        sender.as_bytes().to_vec(),
    ];
    args.extend(messages.iter().cloned());
    args
}

fn call_raw(addr: &str, auth: Option<(&str, &str)>, args: &[Vec<u8>]) -> String {
    let slices: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    raw_call(addr, auth, &slices)
}

// ---------------------------------------------------------------------------------------
// State that refused input must not change.

const STATE_FIELDS: &[&str] = &[
    "raft_state",
    "raft_role",
    "raft_leader_id",
    "raft_current_term",
    "raft_num_nodes",
    "raft_num_voting_nodes",
    "raft_current_index",
    "raft_commit_index",
    "raft_last_applied_index",
    "raft_snapshot_last_idx",
    "raft_snapshots_received",
    "raft_appendreq_received",
    "raft_snapshotreq_received",
];

fn state_of(addr: &str) -> BTreeMap<String, String> {
    let info = try_info(addr).unwrap_or_else(|| panic!("{addr} does not answer INFO"));
    let mut state: BTreeMap<String, String> = STATE_FIELDS
        .iter()
        .map(|f| (f.to_string(), field(&info, f).to_string()))
        .collect();
    let dbsize = try_cmd(
        addr,
        &["RAFT.DEBUG", "EXEC", "DBSIZE"],
        Duration::from_secs(5),
    )
    .expect("DBSIZE");
    state.insert("dbsize".into(), value_text(&dbsize));
    state
}

fn refused_count(addr: &str) -> i64 {
    num(&try_info(addr).expect("INFO"), "raft_peer_messages_refused")
}

fn dbid_of(addr: &str) -> String {
    field(&try_info(addr).expect("INFO"), "raft_dbid").to_string()
}

fn is_error(reply: &str) -> bool {
    reply.starts_with('-')
}

// ---------------------------------------------------------------------------------------
// Clusters whose nodes authenticate with a dedicated ACL user.

fn secure_opts(id: u64, port: u16, password: &str) -> ServerOpts {
    node_opts(id, port, 1000)
        .raft("cluster-user", PEER_USER)
        .raft("cluster-password", password)
        .raft("join-timeout", "4000")
}

/// Creates (or resets) an ACL user allowed everything.
fn add_full_user(server: &Server, user: &str, password: &str) {
    let password = format!(">{password}");
    let reply: String = server
        .cmd(&["ACL", "SETUSER", user, "on", &password, "~*", "&*", "+@all"])
        .expect("ACL SETUSER");
    assert_eq!(reply, "OK");
}

/// Starts a node and creates the ACL users every node has: the peer user (with the real
/// password) and `alice`, an ordinary user allowed everything Redis' ACLs can allow.
fn spawn_secure(id: u64, password: &str) -> Server {
    let server = Server::start(secure_opts(id, free_port("127.0.0.1"), password));
    add_full_user(&server, PEER_USER, PASSWORD);
    add_full_user(&server, "alice", ALICE_PASSWORD);
    server
}

fn join(server: &Server, targets: &[String]) -> Result<String, String> {
    let mut args = vec!["RAFT.CLUSTER".to_string(), "JOIN".to_string()];
    args.extend(targets.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut con = server.client_with_timeout(Duration::from_secs(60));
    exec::<String>(&mut con, &args).map_err(|e| err_text(&e))
}

fn assert_no_password(what: &str, text: &str) {
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(
            !text.contains(secret),
            "{what} shows a cluster password:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn cluster_user_authenticates_peers_and_nobody_else_sends_peer_messages() {
    let mut cluster = Cluster {
        nodes: BTreeMap::new(),
        et_ms: 1000,
    };
    let first = spawn_secure(1, PASSWORD);
    let reply: String = first.cmd(&["RAFT.CLUSTER", "INIT"]).expect("INIT");
    assert!(reply.starts_with("OK "), "{reply}");
    first.expect_serving(FORM_TIMEOUT);
    cluster.nodes.insert(1, first);
    for id in [2, 3] {
        let server = spawn_secure(id, PASSWORD);
        let targets = cluster.addrs(&cluster.ids());
        assert_eq!(join(&server, &targets).as_deref(), Ok("OK"), "JOIN of {id}");
        cluster.nodes.insert(id, server);
    }
    let leader = cluster.wait_voters(&[1, 2, 3], FORM_TIMEOUT);
    // The cluster works: a write is replicated to every node.
    let mut router = cluster.router(&[1, 2, 3]);
    router.must(&["SET", "k", "v"], CONVERGE_TIMEOUT);
    cluster.wait_caught_up(&[1, 2, 3], CONVERGE_TIMEOUT);
    same_everywhere(&cluster, &[1, 2, 3], &["GET", "k"]);

    let addr = cluster.addr(leader);
    let dbid = dbid_of(&addr);
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let heartbeat = encode(&message(MessageType::MsgHeartbeat, follower, leader, 1));
    let msg = raft_msg(
        &dbid,
        &follower.to_string(),
        std::slice::from_ref(&heartbeat),
    );
    let before = state_of(&addr);
    let refused_before = refused_count(&addr);
    let noperm = |command: &str| {
        format!("-NOPERM this user has no permissions to run the '{command}' command")
    };
    // An ordinary user, even one Redis' ACLs allow everything, and the default user.
    for auth in [Some(("alice", ALICE_PASSWORD)), None] {
        assert_eq!(call_raw(&addr, auth, &msg), noperm("raft.msg"), "{auth:?}");
        let chunk: Vec<Vec<u8>> = [
            "RAFT.SNAPSHOT.CHUNK",
            &dbid,
            &follower.to_string(),
            "t1",
            "0",
            "bytes",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        assert_eq!(call_raw(&addr, auth, &chunk), noperm("raft.snapshot.chunk"));
        let mut done = chunk.clone();
        done[0] = b"RAFT.SNAPSHOT.DONE".to_vec();
        done[5] = heartbeat.clone();
        assert_eq!(call_raw(&addr, auth, &done), noperm("raft.snapshot.done"));
    }
    // The peer user passes the user gate (and then meets the next one).
    let other_cluster = raft_msg(&"f".repeat(32), &follower.to_string(), &[heartbeat]);
    assert_eq!(
        call_raw(&addr, Some((PEER_USER, PASSWORD)), &other_cluster),
        "-ERR raft message for another cluster (dbid mismatch)"
    );
    assert_eq!(
        state_of(&addr),
        before,
        "refused peer commands changed the state"
    );
    assert!(refused_count(&addr) >= refused_before + 7);
    assert!(cluster.node(leader).wait_for_log(
        "authenticated as user 'alice': only the cluster user may send peer messages",
        Duration::from_secs(5)
    ));

    // A node with the wrong password cannot join, and says why without the password.
    let intruder = spawn_secure(4, WRONG_PASSWORD);
    let started = Instant::now();
    let joined = join(&intruder, &cluster.addrs(&[1, 2, 3]));
    assert_eq!(
        joined,
        Err("ERR failed to connect to cluster for join, please check logs".to_string())
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        field(&try_info(&intruder.addr()).unwrap(), "raft_state"),
        "uninitialized"
    );
    assert!(
        intruder.log().contains("WRONGPASS"),
        "the joiner's log does not say AUTH failed:\n{}",
        tail(&intruder.log(), 20)
    );
    assert_eq!(
        num(&cluster.info(leader).unwrap(), "raft_num_nodes"),
        3,
        "the intruder was added"
    );

    // A member restarted with a wrong password is cut off: its AUTH to the others fails,
    // so its acks never arrive and it never learns that the new entry committed (had a
    // message gone out behind the refused AUTH, it would have met NOPERM, as above).
    let member = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    {
        let server = cluster.node_mut(member);
        for (key, value) in server.opts.raft.iter_mut() {
            if key == "cluster-password" {
                *value = WRONG_PASSWORD.to_string();
            }
        }
        server.restart();
        // ACL users live in memory: give it back the right ones, so that only its own
        // password is wrong (the leader can still authenticate to it).
        add_full_user(server, PEER_USER, PASSWORD);
    }
    router.must(&["SET", "after-wrong-password", "1"], CONVERGE_TIMEOUT);
    // Whether the member learns of a commit is up to the leader's broadcasts (it still
    // receives them); what cannot happen is its acks counting: with the third node
    // stopped, the leader and the cut-off member are no quorum, so no write commits.
    let third = *cluster
        .ids()
        .iter()
        .find(|&&id| id != leader && id != member)
        .unwrap();
    cluster.node(third).sigstop();
    let reply = try_cmd(
        &cluster.addr(leader),
        &["SET", "needs-the-cut-off-member", "1"],
        Duration::from_secs(3),
    );
    cluster.node(third).sigcont();
    assert!(
        reply.is_err(),
        "a write committed with only the member whose password is wrong: {reply:?}"
    );
    // Its refused AUTHs count as connection errors (the transport logs at most one line
    // per peer per 10 s, so INFO is the prompt witness).
    let conn_errors_to_leader = || {
        let info = cluster.info(member).unwrap();
        info.values()
            .filter(|line| line.starts_with(&format!("id={leader},")))
            .filter_map(|line| {
                line.split(',')
                    .find_map(|kv| kv.strip_prefix("conn_errors="))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .next()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || conn_errors_to_leader() > 0),
        "the member's connections to the leader do not fail"
    );

    // The password shows nowhere: logs, INFO, CONFIG GET raft.*.
    for (id, server) in cluster.nodes.iter().chain([(&4, &intruder)]) {
        let mut con = server.client();
        let info: String = exec(&mut con, &["INFO", "everything"]).unwrap();
        assert_no_password(&format!("INFO of node {id}"), &info);
        let configs: Vec<String> = exec(&mut con, &["CONFIG", "GET", "raft.*"]).unwrap();
        assert!(
            configs.contains(&"raft.cluster-user".to_string()),
            "{configs:?}"
        );
        assert_no_password(
            &format!("CONFIG GET raft.* of node {id}"),
            &configs.join("\n"),
        );
        let exact: Vec<String> =
            exec(&mut con, &["CONFIG", "GET", "raft.cluster-password"]).unwrap();
        assert_eq!(exact, ["raft.cluster-password", "(hidden)"]);
        let all: Vec<String> = exec(&mut con, &["CONFIG", "GET", "*"]).unwrap();
        assert_no_password(&format!("CONFIG GET * of node {id}"), &all.join("\n"));
        assert_no_password(&format!("log of node {id}"), &server.log());
    }
}

// ---------------------------------------------------------------------------------------
// Other clusters and non-members.

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn messages_from_another_cluster_or_non_members_are_refused_and_change_nothing() {
    let cluster = Cluster::start(3, 1000);
    let leader = cluster.wait_caught_up(&[1, 2, 3], CONVERGE_TIMEOUT);
    let target = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let addr = cluster.addr(target);
    let dbid = dbid_of(&addr);

    // An id that was a member and was removed (a learner that never ran).
    let mut con = cluster.node(leader).client();
    let added: Value = exec(&mut con, &["RAFT.NODE", "ADD", "77", "127.0.0.1:1"]).unwrap();
    assert!(matches!(added, Value::Array(_)), "{added:?}");
    let removed: String = exec(&mut con, &["RAFT.NODE", "REMOVE", "77"]).unwrap();
    assert_eq!(removed, "OK");
    let leader = cluster.wait_caught_up(&[1, 2, 3], CONVERGE_TIMEOUT);
    let before = state_of(&addr);
    let refused_before = refused_count(&addr);

    let t = target;
    let cases: Vec<(&str, Vec<Vec<u8>>, String)> = vec![
        (
            "vote request from an id that is not a member",
            raft_msg(
                &dbid,
                "999",
                &[encode(&message(MessageType::MsgRequestVote, 999, t, 1000))],
            ),
            "-ERR raft message from node 999, which is not a member of this cluster".into(),
        ),
        (
            "pre-vote from a non-member announcing an address",
            raft_msg(
                &dbid,
                "999@127.0.0.1:9",
                &[encode(&message(
                    MessageType::MsgRequestPreVote,
                    999,
                    t,
                    1000,
                ))],
            ),
            "-ERR raft message from node 999, which is not a member of this cluster".into(),
        ),
        (
            "leader traffic from a removed node",
            raft_msg(
                &dbid,
                "77",
                &[encode(&message(MessageType::MsgHeartbeat, 77, t, 1000))],
            ),
            "-REMOVED node 77 was removed from the cluster".into(),
        ),
        (
            "a member's message with another cluster's dbid",
            raft_msg(
                &"a".repeat(32),
                &leader.to_string(),
                &[encode(&message(MessageType::MsgHeartbeat, leader, t, 1000))],
            ),
            "-ERR raft message for another cluster (dbid mismatch)".into(),
        ),
        (
            "a batch whose second message is for another node",
            raft_msg(
                &dbid,
                &leader.to_string(),
                &[
                    encode(&message(MessageType::MsgHeartbeat, leader, t, 1000)),
                    encode(&message(MessageType::MsgHeartbeat, leader, t + 100, 1000)),
                ],
            ),
            "-ERR raft message for another node".into(),
        ),
        (
            "a message whose from is not the sender",
            raft_msg(
                &dbid,
                &leader.to_string(),
                &[encode(&message(MessageType::MsgHeartbeat, 999, t, 1000))],
            ),
            format!("-ERR raft message from node 999 sent by node {leader}"),
        ),
    ];
    for (what, args, expected) in &cases {
        assert_eq!(&call_raw(&addr, None, args), expected, "{what}");
    }
    assert_eq!(
        state_of(&addr),
        before,
        "refused messages changed the state"
    );
    assert!(refused_count(&addr) >= refused_before + cases.len() as i64);
    let log = cluster.node(target).log();
    for needle in [
        "refused a message from node 999: it is not a member of this cluster",
        "refused a message from node 77: it was removed from the cluster",
        &format!("refused a message from node {leader} of another cluster"),
    ] {
        assert!(
            log.contains(needle),
            "no log line {needle:?}:\n{}",
            tail(&log, 30)
        );
    }

    // A real node of a second cluster, told that `target` is its member, sends to it
    // over and over: every message is refused, and logged at most once per 5 s.
    let other = Server::start(node_opts(500, free_port("127.0.0.1"), 1000));
    let reply: String = other.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(reply.starts_with("OK "));
    other.expect_serving(FORM_TIMEOUT);
    let refused_before = refused_count(&addr);
    let lines_before = count_lines(&cluster.node(target).log(), "of another cluster");
    let started = Instant::now();
    let added: Value = other
        .cmd(&["RAFT.NODE", "ADD", &target.to_string(), &addr])
        .unwrap();
    assert!(matches!(added, Value::Array(_)), "{added:?}");
    let many = wait_until(Duration::from_secs(20), || {
        refused_count(&addr) >= refused_before + 20
    });
    assert!(
        many,
        "the other cluster's messages were not refused 20 times"
    );
    let elapsed = started.elapsed();
    let lines = count_lines(&cluster.node(target).log(), "of another cluster") - lines_before;
    let allowed = 1 + elapsed.as_secs() as usize / 5 + 1;
    assert!(
        (1..=allowed).contains(&lines),
        "{lines} log lines for {} refusals in {elapsed:?} (at most {allowed} allowed)",
        refused_count(&addr) - refused_before
    );
    let mut after = state_of(&addr);
    let mut before = before;
    // appendreq_received does not move either: refused messages never reach raft.
    for state in [&mut after, &mut before] {
        state.remove("raft_commit_index");
        state.remove("raft_last_applied_index");
        state.remove("raft_current_index");
    }
    assert_eq!(
        after, before,
        "the other cluster's messages changed the state"
    );
    // The cluster still works, with the same leader and term.
    let mut router = cluster.router(&[1, 2, 3]);
    router.must(&["SET", "after", "1"], CONVERGE_TIMEOUT);
    assert_eq!(cluster.wait_caught_up(&[1, 2, 3], CONVERGE_TIMEOUT), leader);
    let info: HashMap<String, String> = try_info(&other.addr()).unwrap();
    assert_eq!(field(&info, "raft_role"), "leader");
}

// ---------------------------------------------------------------------------------------
// Malformed internal commands.

#[test]
fn malformed_raft_commands_get_errors_and_change_nothing() {
    let server = Server::start(node_opts(1, free_port("127.0.0.1"), 1000));
    let reply: String = server.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(reply.starts_with("OK "));
    server.expect_serving(FORM_TIMEOUT);
    let _: () = server.cmd(&["SET", "k", "v"]).unwrap();
    let addr = server.addr();
    let dbid = dbid_of(&addr);
    let before = state_of(&addr);

    let mut append = message(MessageType::MsgAppend, 1, 1, 1);
    append.index = 1;
    append.log_term = 1;
    let entry = Entry {
        index: 2,
        term: 1,
        data: vec![7u8; 100].into(),
        ..Default::default()
    };
    append.entries = vec![entry].into();
    let valid = encode(&append);
    let truncated = valid[..valid.len() / 2].to_vec();
    let mut huge_length = valid.clone();
    // A field that declares far more bytes than follow.
    huge_length.extend_from_slice(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let words =
        |items: &[&str]| -> Vec<Vec<u8>> { items.iter().map(|s| s.as_bytes().to_vec()).collect() };
    let mut cases: Vec<Vec<Vec<u8>>> = vec![
        words(&["RAFT.MSG"]),
        words(&["RAFT.MSG", &dbid]),
        words(&["RAFT.MSG", &dbid, "1"]),
        words(&["RAFT.MSG", &dbid, "not-a-number", "x"]),
        words(&["RAFT.MSG", &dbid, "99999999999999999999999", "x"]),
        words(&["RAFT.MSG", &dbid, "-1", "x"]),
        words(&["RAFT.MSG", &dbid, "1", "garbage"]),
        raft_msg(&dbid, "1", &[truncated]),
        raft_msg(&dbid, "1", &[huge_length]),
        raft_msg(&dbid, "1", &[vec![0xff; 64]]),
        raft_msg(&dbid, "1", &[valid.clone(), vec![0x08, 0x80]]),
        raft_msg(&dbid, "2@", std::slice::from_ref(&valid)),
        vec![
            b"RAFT.MSG".to_vec(),
            vec![0xff, 0xfe],
            b"1".to_vec(),
            valid.clone(),
        ],
        words(&["RAFT.SNAPSHOT.CHUNK"]),
        words(&["RAFT.SNAPSHOT.CHUNK", &dbid, "1", "t", "0"]),
        words(&["RAFT.SNAPSHOT.CHUNK", &dbid, "x", "t", "0", "b"]),
        words(&["RAFT.SNAPSHOT.CHUNK", &dbid, "1", "t", "-5", "b"]),
        words(&["RAFT.SNAPSHOT.CHUNK", &dbid, "1", "t", "12345", "b"]),
        words(&["RAFT.SNAPSHOT.CHUNK", &"0".repeat(32), "1", "t", "0", "b"]),
        words(&["RAFT.SNAPSHOT.DONE", &dbid, "1", "t", "5"]),
        words(&["RAFT.SNAPSHOT.DONE", &dbid, "1", "t", "5", "garbage"]),
        words(&["RAFT.SNAPSHOT.DONE", &dbid, "1", "t", "x", "m"]),
        vec![
            b"RAFT.SNAPSHOT.DONE".to_vec(),
            dbid.as_bytes().to_vec(),
            b"1".to_vec(),
            b"t".to_vec(),
            b"0".to_vec(),
            valid.clone(),
        ],
        words(&["RAFT.NODE"]),
        words(&["RAFT.NODE", "ADD"]),
        words(&["RAFT.NODE", "ADD", "x", "127.0.0.1:1"]),
        words(&["RAFT.NODE", "ADD", "5", "no-port"]),
        words(&["RAFT.NODE", "ADD", "5", "127.0.0.1:99999"]),
        words(&["RAFT.NODE", "REMOVE"]),
        words(&["RAFT.NODE", "REMOVE", "abc"]),
        words(&["RAFT.NODE", "REMOVE", "12345"]),
        words(&["RAFT.NODE", "FROB", "1"]),
        words(&["RAFT.CLUSTER"]),
        words(&["RAFT.CLUSTER", "INIT"]),
        words(&["RAFT.CLUSTER", "INIT", "short"]),
        words(&["RAFT.CLUSTER", "JOIN"]),
        words(&["RAFT.CLUSTER", "JOIN", "nowhere"]),
        words(&["RAFT.CLUSTER", "FROB"]),
        words(&["RAFT.TRANSFER_LEADER", "abc"]),
        words(&["RAFT.TRANSFER_LEADER", "999"]),
        words(&["RAFT.DEBUG"]),
        words(&["RAFT.DEBUG", "FROB"]),
        words(&["RAFT.DEBUG", "EXEC"]),
        words(&["RAFT"]),
    ];
    cases.push(vec![
        b"RAFT.MSG".to_vec(),
        vec![b'x'; 1 << 20],
        b"1".to_vec(),
        valid,
    ]);
    for args in &cases {
        let reply = call_raw(&addr, None, args);
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned())
            .collect();
        assert!(is_error(&reply), "{shown:?} got {reply:?}, not an error");
    }
    // Frames cut short, then the connection closed; and a frame that declares a huge
    // argument and stops.
    for frame in [
        &b"*4\r\n$8\r\nRAFT.MSG\r\n$32\r\nabc"[..],
        b"*3\r\n$8\r\nRAFT.MSG\r\n$400000000\r\nxyz",
        b"*99999999\r\n$8\r\nRAFT.MSG\r\n",
    ] {
        let mut stream = raw_connect(&addr);
        stream.write_all(frame).unwrap();
        drop(stream);
    }
    assert_eq!(
        state_of(&addr),
        before,
        "malformed commands changed the state"
    );
    let value: String = server.cmd(&["GET", "k"]).unwrap();
    assert_eq!(value, "v");
    let _: () = server.cmd(&["SET", "k2", "v2"]).unwrap();
    assert!(server.log_contains("refused a malformed RAFT.MSG"));
}

/// What CONFIG GET shows for the password, and so what CONFIG REWRITE writes, is refused as
/// a password: a node started from such a file says so instead of using it.
#[test]
fn the_password_placeholder_is_refused_at_start() {
    let failure = match Server::try_start(ServerOpts::new().raft("cluster-password", "(hidden)")) {
        Ok(_) => panic!("a server started with the placeholder as its cluster password"),
        Err(failure) => failure,
    };
    assert!(failure.exited_unsuccessfully(), "{failure:?}");
    assert!(
        failure.log.contains("placeholder") && failure.log.contains("cluster-password"),
        "{}",
        failure.log
    );
}
