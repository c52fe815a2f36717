//! Shard groups (`docs/SHARDING.md`): several raft clusters, each serving a range of
//! the 16,384 hash slots, linked with `RAFT.SHARDGROUP ADD`, behind Redis Cluster's slot
//! protocol. A cluster client routes keys of every group through any node; a node
//! redirects what it does not serve (`MOVED`), refuses keys of several slots
//! (`CROSSSLOT`) and unserved slots (`CLUSTERDOWN`); the map survives snapshots,
//! restarts and a join from a snapshot.
//!
//! Every wait has a deadline. Run by `make test` against redis-server.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use redis::Value;

/// Slot ranges of the three groups (as `raft.slot-config` spells them).
const THREE_WAY: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Slots Redis Cluster gives these keys (`CLUSTER KEYSLOT` on a Redis Cluster node).
const KNOWN_SLOTS: [(&str, u16); 3] = [("foo", 12182), ("bar", 5061), ("hello", 866)];

struct Group {
    cluster: Cluster,
    range: (u16, u16),
}

impl Group {
    fn leader_addr(&self) -> String {
        let ids = self.cluster.ids();
        self.cluster
            .addr(self.cluster.wait_leader(&ids, CONVERGE_TIMEOUT))
    }

    fn addrs(&self) -> Vec<String> {
        self.cluster.addrs(&self.cluster.ids())
    }

    fn owns(&self, slot: u16) -> bool {
        (self.range.0..=self.range.1).contains(&slot)
    }
}

fn cmd(addr: &str, args: &[&str]) -> Result<Value, String> {
    try_cmd(addr, args, Duration::from_secs(10)).map_err(|e| err_text(&e))
}

fn must(addr: &str, args: &[&str]) -> Value {
    cmd(addr, args).unwrap_or_else(|e| panic!("{args:?} on {addr}: {e}"))
}

fn start_group(nodes: u64, range: (u16, u16)) -> Group {
    start_group_with(nodes, range, &[])
}

/// A sharded group serving `range`, its nodes started with the `extra` raft configs.
fn start_group_with(nodes: u64, range: (u16, u16), extra: &[(&str, &str)]) -> Group {
    let slots = format!("{}:{}", range.0, range.1);
    let cluster = Cluster::start_with(nodes, ET_MS, |opts| {
        extra
            .iter()
            .fold(opts, |opts, (key, value)| opts.raft(key, value))
            .raft("sharding", "yes")
            .raft("slot-config", &slots)
    });
    let group = Group { cluster, range };
    // The group's slots are logged right after INIT: wait until its leader applied them.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let get = cmd(&group.leader_addr(), &["RAFT.SHARDGROUP", "GET"]);
        if let Ok(Value::Array(parts)) = &get {
            if matches!(&parts[1], Value::Array(ranges) if !ranges.is_empty()) {
                return group;
            }
        }
        assert!(
            Instant::now() < deadline,
            "group slots never applied: {get:?}"
        );
        std::thread::sleep(RETRY_BACKOFF);
    }
}

/// `RAFT.SHARDGROUP ADD` arguments describing the group whose `GET` reply this is.
fn add_args(get: &Value) -> Vec<String> {
    let Value::Array(parts) = get else {
        panic!("GET reply {get:?}")
    };
    let id = value_text(&parts[0]);
    let Value::Array(ranges) = &parts[1] else {
        panic!("ranges {:?}", parts[1])
    };
    let Value::Array(nodes) = &parts[2] else {
        panic!("nodes {:?}", parts[2])
    };
    let mut args = vec![
        "RAFT.SHARDGROUP".to_string(),
        "ADD".to_string(),
        id,
        ranges.len().to_string(),
        nodes.len().to_string(),
    ];
    for range in ranges {
        args.extend(strings(range.clone()));
    }
    for node in nodes {
        args.extend(strings(node.clone()));
    }
    args
}

/// Every group learns every other group (what `RAFT.SHARDGROUP LINK` automates).
fn link_all(groups: &[Group]) {
    let gets: Vec<Value> = groups
        .iter()
        .map(|g| must(&g.leader_addr(), &["RAFT.SHARDGROUP", "GET"]))
        .collect();
    for (i, group) in groups.iter().enumerate() {
        for (j, get) in gets.iter().enumerate() {
            if i == j {
                continue;
            }
            let args = add_args(get);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(value_text(&must(&group.leader_addr(), &args)), "OK");
        }
    }
}

fn keyslot(addr: &str, key: &str) -> u16 {
    match must(addr, &["CLUSTER", "KEYSLOT", key]) {
        Value::Int(slot) => slot as u16,
        other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
    }
}

fn owner_of<'a>(groups: &'a [Group], addr: &str, key: &str) -> &'a Group {
    let slot = keyslot(addr, key);
    groups
        .iter()
        .find(|g| g.owns(slot))
        .expect("every slot has a group")
}

/// `(start, end, first node's address)` of each `CLUSTER SLOTS` entry, sorted.
fn cluster_slots(addr: &str) -> Vec<(i64, i64, String)> {
    let Value::Array(entries) = must(addr, &["CLUSTER", "SLOTS"]) else {
        panic!("CLUSTER SLOTS is an array")
    };
    let mut slots: Vec<(i64, i64, String)> = entries
        .iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                panic!("entry {entry:?}")
            };
            let (Value::Int(start), Value::Int(end)) = (&parts[0], &parts[1]) else {
                panic!("entry {parts:?}")
            };
            let node = strings(parts[2].clone());
            (*start, *end, format!("{}:{}", node[0], node[1]))
        })
        .collect();
    slots.sort();
    slots
}

#[test]
fn a_cluster_client_routes_keys_of_three_groups_through_any_node() {
    let groups: Vec<Group> = THREE_WAY.iter().map(|&r| start_group(3, r)).collect();
    link_all(&groups);
    let leaders: Vec<String> = groups.iter().map(Group::leader_addr).collect();

    // Every node, leader or not, of every group describes the same three groups, each
    // with its leader first.
    let expected: Vec<(i64, i64, String)> = groups
        .iter()
        .zip(&leaders)
        .map(|(g, leader)| (i64::from(g.range.0), i64::from(g.range.1), leader.clone()))
        .collect();
    for group in &groups {
        for addr in group.addrs() {
            assert_eq!(cluster_slots(&addr), expected, "CLUSTER SLOTS of {addr}");
        }
    }
    let nodes = value_text(&must(&leaders[1], &["CLUSTER", "NODES"]));
    assert_eq!(nodes.lines().count(), 9, "{nodes}");
    assert_eq!(nodes.matches("myself").count(), 1, "{nodes}");
    assert_eq!(nodes.matches("master").count(), 3, "{nodes}");
    let Value::Array(shards) = must(&leaders[2], &["CLUSTER", "SHARDS"]) else {
        panic!("CLUSTER SHARDS is an array")
    };
    assert_eq!(shards.len(), 3);
    for (key, slot) in KNOWN_SLOTS {
        assert_eq!(keyslot(&leaders[0], key), slot, "slot of {key}");
    }

    // A cluster client that knows one follower of the first group.
    let seed = groups[0]
        .addrs()
        .into_iter()
        .find(|a| *a != leaders[0])
        .unwrap();
    let client = redis::cluster::ClusterClient::builder(vec![format!("redis://{seed}/")])
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(5))
        .retries(5)
        .build()
        .expect("cluster client");
    let mut con = client.get_connection().expect("cluster connection");
    let keys: Vec<String> = (0..300).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(format!("v-{key}"))
            .query(&mut con)
            .unwrap_or_else(|e| panic!("SET {key}: {}", err_text(&e)));
    }
    for key in &keys {
        let value: String = redis::cmd("GET")
            .arg(key)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("GET {key}: {}", err_text(&e)));
        assert_eq!(value, format!("v-{key}"));
    }
    // Each key is in exactly the group that owns its slot, on every node of it.
    let mut groups_used = BTreeSet::new();
    for key in &keys {
        let owner = owner_of(&groups, &leaders[0], key);
        for (i, group) in groups.iter().enumerate() {
            for addr in group.addrs() {
                let held = must(&addr, &["RAFT.DEBUG", "EXEC", "GET", key]);
                if std::ptr::eq(group, owner) {
                    groups_used.insert(i);
                    // Followers apply after the leader answered: wait for them.
                    let applied = wait_until(CONVERGE_TIMEOUT, || {
                        must(&addr, &["RAFT.DEBUG", "EXEC", "GET", key])
                            == Value::BulkString(format!("v-{key}").into_bytes())
                    });
                    assert!(applied, "{key} missing on {addr} of its group");
                } else {
                    assert_eq!(held, Value::Nil, "{key} also in group {i} ({addr})");
                }
            }
        }
    }
    assert_eq!(groups_used.len(), 3, "the keys spread over every group");

    // Direct connections: the slot's owner runs it, another group redirects to it.
    let foo_owner = owner_of(&groups, &leaders[0], "foo");
    let other = groups
        .iter()
        .find(|g| !std::ptr::eq(*g, foo_owner))
        .unwrap();
    let moved = cmd(&other.leader_addr(), &["SET", "foo", "1"]).unwrap_err();
    let expected_moved = format!("MOVED 12182 {}", foo_owner.leader_addr());
    assert!(
        moved.contains(&expected_moved),
        "{moved} vs {expected_moved}"
    );
    let read_moved = cmd(&other.leader_addr(), &["GET", "foo"]).unwrap_err();
    assert!(read_moved.contains(&expected_moved), "{read_moved}");

    // Keys of several slots are refused, whatever the command.
    let crossslot = cmd(&leaders[0], &["MSET", "foo", "1", "bar", "2"]).unwrap_err();
    assert!(crossslot.contains("CROSSSLOT"), "{crossslot}");
    let script = "return redis.call('SET', KEYS[1], ARGV[1])";
    let crossslot = cmd(&leaders[0], &["EVAL", script, "2", "foo", "bar", "1"]).unwrap_err();
    assert!(crossslot.contains("CROSSSLOT"), "{crossslot}");

    // MULTI and scripts on one slot (a hash tag) run on its owner.
    let tag_owner = owner_of(&groups, &leaders[0], "{user}").leader_addr();
    let mut con = try_connect(&tag_owner, Duration::from_secs(10)).unwrap();
    let _: () = exec(&mut con, &["MULTI"]).unwrap();
    let _: () = exec(&mut con, &["SET", "{user}:a", "1"]).unwrap();
    let _: () = exec(&mut con, &["INCR", "{user}:b"]).unwrap();
    let replies: Vec<Value> = exec(&mut con, &["EXEC"]).unwrap();
    assert_eq!(replies, vec![Value::Okay, Value::Int(1)]);
    let set: String = exec(&mut con, &["EVAL", script, "1", "{user}:c", "3"]).unwrap();
    assert_eq!(set, "OK");
    let _: () = exec(&mut con, &["MULTI"]).unwrap();
    let _: () = exec(&mut con, &["SET", "{user}:a", "2"]).unwrap();
    let _: () = exec(&mut con, &["SET", "foo", "2"]).unwrap();
    let exec_error = exec::<Value>(&mut con, &["EXEC"]).unwrap_err();
    assert!(
        err_text(&exec_error).contains("CROSSSLOT"),
        "{exec_error:?}"
    );
    assert_eq!(
        must(&tag_owner, &["GET", "{user}:a"]),
        Value::BulkString(b"1".to_vec()),
        "a refused transaction changed nothing"
    );
}

#[test]
fn the_map_is_validated_and_survives_snapshots_restarts_and_joins() {
    let mut group = start_group(3, (0, 8191));
    let remote_id = "b".repeat(32);
    let remote_node = format!("{remote_id}00000001");
    let add = |addr: &str, id: &str, start: &str, end: &str, node: &str, node_addr: &str| {
        cmd(
            addr,
            &[
                "RAFT.SHARDGROUP",
                "ADD",
                id,
                "1",
                "1",
                start,
                end,
                "1",
                "0",
                node,
                node_addr,
            ],
        )
    };
    let leader = group.leader_addr();
    assert_eq!(
        add(
            &leader,
            &remote_id,
            "8192",
            "16383",
            &remote_node,
            "127.0.0.1:1"
        ),
        Ok(Value::Okay)
    );
    // A stable slot has one owner: a second claim is refused, and so is nonsense.
    let third = "c".repeat(32);
    let overlap = add(
        &leader,
        &third,
        "8000",
        "8000",
        &format!("{third}00000001"),
        "h:2",
    );
    assert!(
        overlap
            .as_ref()
            .is_err_and(|e| e.contains("slot 8000 is already owned")),
        "{overlap:?}"
    );
    let short = add(&leader, "abc", "1", "1", "x", "h:2");
    assert!(short.is_err_and(|e| e.contains("invalid shard group")));
    let replace_conflict = cmd(
        &leader,
        &[
            "RAFT.SHARDGROUP",
            "REPLACE",
            "2",
            &third,
            "1",
            "0",
            "5",
            "5",
            "1",
            "0",
            &remote_id,
            "1",
            "0",
            "5",
            "5",
            "1",
            "0",
        ],
    );
    assert!(
        replace_conflict.is_err_and(|e| e.contains("slot 5 is already owned")),
        "REPLACE with two stable owners"
    );
    let follower = group.addrs().into_iter().find(|a| *a != leader).unwrap();
    let on_follower = cmd(&follower, &["RAFT.SHARDGROUP", "GET"]).unwrap_err();
    assert!(on_follower.starts_with("MOVED 0 "), "{on_follower}");

    let expect_map = |addr: &str| {
        let slots = cluster_slots(addr);
        assert_eq!(slots.len(), 2, "{addr}: {slots:?}");
        assert_eq!(
            (slots[1].0, slots[1].1, slots[1].2.as_str()),
            (8192, 16383, "127.0.0.1:1"),
            "{addr}"
        );
    };
    let wait_map = |addr: &str| {
        assert!(
            wait_until(CONVERGE_TIMEOUT, || {
                matches!(cmd(addr, &["CLUSTER", "SLOTS"]), Ok(Value::Array(e)) if e.len() == 2)
            }),
            "{addr} never learnt the map"
        );
        expect_map(addr);
    };
    for addr in group.addrs() {
        wait_map(&addr);
    }
    assert_eq!(must(&leader, &["SET", "bar", "1"]), Value::Okay);
    let moved = cmd(&leader, &["SET", "foo", "1"]).unwrap_err();
    assert_eq!(moved, "MOVED 12182 127.0.0.1:1");

    // Snapshots carry the map: every node compacts its log, then a node restarts from
    // its snapshot alone and a new node joins from one.
    let ids = group.cluster.ids();
    for &id in &ids {
        must(&group.cluster.addr(id), &["RAFT.DEBUG", "COMPACT"]);
    }
    let restarted = *ids
        .iter()
        .find(|&&id| group.cluster.addr(id) != leader)
        .unwrap();
    group.cluster.node_mut(restarted).restart();
    wait_map(&group.cluster.addr(restarted));
    group.cluster.join_with(4, |opts| {
        opts.raft("sharding", "yes").raft("slot-config", "0:8191")
    });
    wait_map(&group.cluster.addr(4));

    // The whole group restarts: the map comes back from snapshots and logs.
    for id in group.cluster.ids() {
        group.cluster.node_mut(id).restart();
    }
    let leader = group.leader_addr();
    wait_map(&leader);
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let moved = loop {
        match cmd(&leader, &["GET", "foo"]) {
            Err(e) if e.starts_with("MOVED 12182") => break e,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "GET foo after restart: {other:?}"
                );
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    };
    assert_eq!(moved, "MOVED 12182 127.0.0.1:1");
    assert_eq!(
        must(&group.leader_addr(), &["GET", "bar"]),
        Value::BulkString(b"1".to_vec())
    );
    let unserved = {
        let mut con = try_connect(&group.leader_addr(), Duration::from_secs(10)).unwrap();
        let replace: Value = exec(
            &mut con,
            &[
                "RAFT.SHARDGROUP",
                "REPLACE",
                "1",
                &remote_id,
                "1",
                "1",
                "8192",
                "16383",
                "1",
                "0",
                &remote_node,
                "127.0.0.1:1",
            ],
        )
        .unwrap();
        assert_eq!(replace, Value::Okay);
        cmd(&group.leader_addr(), &["SET", "bar", "2"]).unwrap_err()
    };
    assert_eq!(
        unserved, "CLUSTERDOWN Hash slot is not served",
        "the local group left out of REPLACE serves nothing"
    );
}

#[test]
fn without_sharding_the_commands_say_so_and_the_config_is_frozen() {
    let cluster = Cluster::start(1, ET_MS);
    let addr = cluster.addr(1);
    let refused = cmd(&addr, &["RAFT.SHARDGROUP", "GET"]).unwrap_err();
    assert_eq!(refused, "ERR RedisRaft sharding not enabled");
    let frozen = cmd(&addr, &["CONFIG", "SET", "raft.sharding", "yes"]).unwrap_err();
    assert!(frozen.contains("not allowed after init/join"), "{frozen}");
    // Unsharded, this node serves every slot and keys of any slots together.
    assert_eq!(must(&addr, &["MSET", "foo", "1", "bar", "2"]), Value::Okay);
    assert_eq!(
        cluster_slots(&addr),
        vec![(0, 16383, addr.clone())],
        "one group, every slot"
    );
}

#[test]
fn link_learns_a_group_through_any_node_and_the_leader_follows_its_leader_changes() {
    let extra = [
        ("shardgroup-update-interval", "200"),
        ("join-timeout", "2000"),
    ];
    let a = start_group_with(3, (0, 8191), &extra);
    let b = start_group_with(3, (8192, 16383), &extra);
    let (a_leader, b_leader) = (a.leader_addr(), b.leader_addr());
    let follower_of = |group: &Group, leader: &str| {
        group
            .addrs()
            .into_iter()
            .find(|addr| addr != leader)
            .unwrap()
    };
    // Through a follower: LINK follows its MOVED to the leader.
    let b_follower = follower_of(&b, &b_leader);
    assert_eq!(
        must(&a_leader, &["RAFT.SHARDGROUP", "LINK", &b_follower]),
        Value::Okay
    );
    let a_follower = follower_of(&a, &a_leader);
    assert_eq!(
        must(&b_leader, &["RAFT.SHARDGROUP", "LINK", &a_follower]),
        Value::Okay
    );
    let remote_first_node = |addr: &str, start: i64| {
        cluster_slots(addr)
            .into_iter()
            .find(|entry| entry.0 == start)
            .map(|entry| entry.2)
    };
    assert_eq!(remote_first_node(&a_leader, 8192), Some(b_leader.clone()));
    assert_eq!(remote_first_node(&b_leader, 0), Some(a_leader.clone()));
    assert_eq!(
        cmd(&a_leader, &["SET", "foo", "1"]).unwrap_err(),
        format!("MOVED 12182 {b_leader}")
    );

    // b's leadership moves: a's leader learns it within a few refresh intervals.
    let ids = b.cluster.ids();
    let old = b.cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    let new = *ids.iter().find(|&&id| id != old).unwrap();
    assert_eq!(
        must(&b_leader, &["RAFT.TRANSFER_LEADER", &new.to_string()]),
        Value::Okay
    );
    assert_eq!(b.cluster.wait_leader(&ids, CONVERGE_TIMEOUT), new);
    let new_leader = b.cluster.addr(new);
    assert!(
        wait_until(CONVERGE_TIMEOUT, || {
            remote_first_node(&a_leader, 8192).as_deref() == Some(new_leader.as_str())
        }),
        "a never learnt b's new leader: {:?}",
        cluster_slots(&a_leader)
    );
    assert_eq!(
        cmd(&a_leader, &["SET", "foo", "1"]).unwrap_err(),
        format!("MOVED 12182 {new_leader}")
    );
    // Every node of a has the refreshed list (it was logged).
    for addr in a.addrs() {
        assert!(
            wait_until(CONVERGE_TIMEOUT, || {
                remote_first_node(&addr, 8192).as_deref() == Some(new_leader.as_str())
            }),
            "{addr} of a"
        );
    }

    // Nobody at the address, or a group whose slots overlap: LINK fails.
    let nobody = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let failed = cmd(&a_leader, &["RAFT.SHARDGROUP", "LINK", &nobody]).unwrap_err();
    assert_eq!(failed, "ERR failed to connect to cluster for link");
    let c = start_group_with(1, (100, 200), &extra);
    let overlap = cmd(&a_leader, &["RAFT.SHARDGROUP", "LINK", &c.leader_addr()]).unwrap_err();
    assert_eq!(overlap, "ERR failed to connect to cluster for link");
}

/// One group of a `RAFT.SHARDGROUP REPLACE`: id, `(start, end, type, session)` ranges,
/// `(node id, address)` nodes.
type GroupSpec = (String, Vec<(u16, u16, u8, u64)>, Vec<(String, String)>);

fn group_spec(get: &Value, ranges: Vec<(u16, u16, u8, u64)>) -> GroupSpec {
    let Value::Array(parts) = get else {
        panic!("GET reply {get:?}")
    };
    let Value::Array(nodes) = &parts[2] else {
        panic!("nodes {:?}", parts[2])
    };
    let nodes = nodes
        .iter()
        .map(|node| {
            let node = strings(node.clone());
            (node[0].clone(), node[1].clone())
        })
        .collect();
    (value_text(&parts[0]), ranges, nodes)
}

fn replace(addr: &str, groups: &[GroupSpec]) {
    let mut args = vec![
        "RAFT.SHARDGROUP".to_string(),
        "REPLACE".to_string(),
        groups.len().to_string(),
    ];
    for (id, ranges, nodes) in groups {
        args.extend([
            id.clone(),
            ranges.len().to_string(),
            nodes.len().to_string(),
        ]);
        for (start, end, kind, session) in ranges {
            args.extend([start, end].map(|n| n.to_string()));
            args.extend([kind.to_string(), session.to_string()]);
        }
        for (id, addr) in nodes {
            args.extend([id.clone(), addr.clone()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(must(addr, &args), Value::Okay, "{args:?}");
}

/// Every key of `slot` on the leader at `addr`, through `RAFT.SCAN`.
fn scan_slot(addr: &str, slot: u16) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Value::Array(reply) = must(addr, &["RAFT.SCAN", &cursor, &slot.to_string()]) else {
            panic!("RAFT.SCAN reply")
        };
        cursor = value_text(&reply[0]);
        let Value::Array(found) = &reply[1] else {
            panic!("RAFT.SCAN keys")
        };
        for entry in found {
            let entry = strings(entry.clone());
            assert_eq!(entry[1], slot.to_string(), "RAFT.SCAN kept another slot");
            keys.push(entry[0].clone());
        }
        if cursor == "0" {
            return keys;
        }
    }
}

#[test]
fn a_slot_moves_between_groups_with_its_ttls_and_new_keys_go_where_redis_cluster_puts_them() {
    let mut groups = vec![start_group(3, (0, 8191)), start_group(3, (8192, 16383))];
    link_all(&groups);
    let (a, b) = (groups[0].leader_addr(), groups[1].leader_addr());
    // A hash tag whose slot the first group serves.
    let (tag, slot) = (0..)
        .map(|i| format!("{{m{i}}}"))
        .map(|tag| {
            let slot = keyslot(&a, &tag);
            (tag, slot)
        })
        .find(|&(_, slot)| slot < 8191 && slot > 0)
        .unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("{tag}:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let mut args = vec!["SET", key.as_str(), "v"];
        if i % 2 == 0 {
            args.extend(["PX", "600000"]);
        }
        assert_eq!(must(&a, &args), Value::Okay);
    }
    let (get_a, get_b) = (
        must(&a, &["RAFT.SHARDGROUP", "GET"]),
        must(&b, &["RAFT.SHARDGROUP", "GET"]),
    );
    let session = 77;
    let a_ranges = |moving: Option<u8>| {
        let mut ranges = vec![(0, slot - 1, 1, 0), (slot + 1, 8191, 1, 0)];
        if let Some(kind) = moving {
            ranges.push((slot, slot, kind, session));
        }
        ranges
    };
    let b_ranges = |own: u8| {
        vec![
            (8192, 16383, 1, 0),
            (slot, slot, own, if own == 1 { 0 } else { session }),
        ]
    };
    // A client blocked on a list of the slot (it does not exist yet).
    let queue = format!("{tag}:queue");
    let blocked = {
        let (a, queue) = (a.clone(), queue.clone());
        std::thread::spawn(move || {
            let mut con = try_connect(&a, Duration::from_secs(60)).unwrap();
            exec::<Value>(&mut con, &["BLPOP", &queue, "0"]).map_err(|e| err_text(&e))
        })
    };
    assert!(
        wait_until(CONVERGE_TIMEOUT, || {
            try_info(&a).is_some_and(|info| num(&info, "raft_blocked_clients") >= 1)
        }),
        "BLPOP never blocked"
    );
    // Declared on both groups: migrating here, importing there, one session key.
    let moving = [
        group_spec(&get_a, a_ranges(Some(3))),
        group_spec(&get_b, b_ranges(2)),
    ];
    replace(&a, &moving);
    replace(&b, &moving);

    // The blocked client is redirected where its list would now be created.
    assert_eq!(blocked.join().unwrap(), Err(format!("ASK {slot} {b}")));
    // While the slot moves: a key that does not exist yet is created on the importing
    // group, by ASK then ASKING, as Redis Cluster does.
    let new_key = format!("{tag}:new");
    let ask = cmd(&a, &["SET", &new_key, "n"]).unwrap_err();
    assert_eq!(ask, format!("ASK {slot} {b}"));
    let moved_back = cmd(&b, &["SET", &new_key, "n"]).unwrap_err();
    assert_eq!(moved_back, format!("MOVED {slot} {a}"), "without ASKING");
    let mut asking = try_connect(&b, Duration::from_secs(10)).unwrap();
    let _: () = exec(&mut asking, &["ASKING"]).unwrap();
    let _: () = exec(&mut asking, &["SET", &new_key, "n", "PX", "600000"]).unwrap();
    // Existing keys still run on the source.
    assert_eq!(must(&a, &["APPEND", &keys[1], "w"]), Value::Int(2));

    // The keys move in batches of what RAFT.SCAN finds.
    let found = scan_slot(&a, slot);
    assert_eq!(found.len(), keys.len(), "{found:?}");
    // A failed MIGRATE leaves its keys locked (TRYAGAIN for them) and can be retried:
    // each fault `migration-debug` injects in turn; the batches below then move them.
    let first = &found[..2];
    let migrate_first = || {
        let mut args = vec!["MIGRATE", "", "0", "", "0", "1000", "KEYS"];
        args.extend(first.iter().map(String::as_str));
        cmd(&a, &args)
    };
    for (node, fault) in [
        (&b, "fail-import"),
        (&a, "fail-connect"),
        (&a, "fail-unlock"),
    ] {
        must(node, &["CONFIG", "SET", "raft.migration-debug", fault]);
        let failed = migrate_first().unwrap_err();
        assert!(failed.starts_with("IOERR"), "{fault}: {failed}");
        let locked = cmd(&a, &["GET", &first[0]]).unwrap_err();
        assert!(locked.starts_with("TRYAGAIN"), "{fault}: {locked}");
        must(node, &["CONFIG", "SET", "raft.migration-debug", "none"]);
    }
    assert_eq!(
        must(&b, &["RAFT.DEBUG", "EXEC", "EXISTS", &first[0]]),
        Value::Int(1),
        "with fail-unlock the target took the keys"
    );
    for batch in found.chunks(7) {
        let mut args = vec!["MIGRATE", "", "0", "", "0", "5000", "KEYS"];
        args.extend(batch.iter().map(String::as_str));
        assert_eq!(must(&a, &args), Value::Okay, "MIGRATE {batch:?}");
    }
    assert!(scan_slot(&a, slot).is_empty(), "every key left the source");
    assert_eq!(
        cmd(&a, &["MIGRATE", "", "0", "", "0", "5000", "KEYS", &keys[0]]),
        Ok(Value::SimpleString("NOKEY".into()))
    );
    // The importing group fences off a sender of an older term or another session.
    let fenced = cmd(
        &b,
        &["RAFT.IMPORT", "0", &session.to_string(), &keys[0], "y"],
    )
    .unwrap_err();
    assert!(fenced.contains("deposed leader"), "{fenced}");
    let other_session = cmd(&b, &["RAFT.IMPORT", "99", "5", &keys[0], "y"]).unwrap_err();
    assert!(
        other_session.contains("another session key"),
        "{other_session}"
    );
    // The fencing state is replicated and kept: after every node of the importing group
    // compacted its log and restarted, an older term is still refused.
    let b_in_maps = b.clone();
    for id in groups[1].cluster.ids() {
        must(&groups[1].cluster.addr(id), &["RAFT.DEBUG", "COMPACT"]);
    }
    for id in groups[1].cluster.ids() {
        groups[1].cluster.node_mut(id).restart();
    }
    let b = groups[1].leader_addr();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let fenced = loop {
        match cmd(
            &b,
            &["RAFT.IMPORT", "0", &session.to_string(), &keys[0], "y"],
        ) {
            Err(e) if e.contains("deposed leader") => break e,
            other => {
                assert!(Instant::now() < deadline, "after restart: {other:?}");
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    };
    assert!(fenced.contains("already accepted term"), "{fenced}");

    // Finalised: the slot is the importing group's.
    let done = [
        group_spec(&get_a, a_ranges(None)),
        group_spec(&get_b, b_ranges(1)),
    ];
    replace(&b, &done);
    replace(&a, &done);
    for (i, key) in keys.iter().enumerate() {
        let value = if i == 1 { "vw" } else { "v" };
        assert_eq!(
            must(&b, &["GET", key]),
            Value::BulkString(value.as_bytes().to_vec()),
            "{key} on the importing group"
        );
        let Value::Int(ttl) = must(&b, &["PTTL", key]) else {
            panic!("PTTL")
        };
        if i % 2 == 0 {
            assert!((1..=600_000).contains(&ttl), "{key} kept its TTL: {ttl}");
        } else {
            assert_eq!(ttl, -1, "{key} has no TTL");
        }
        for addr in groups[0].addrs() {
            assert_eq!(
                must(&addr, &["RAFT.DEBUG", "EXEC", "EXISTS", key]),
                Value::Int(0),
                "{key} still on {addr} of the source"
            );
        }
        let moved = cmd(&a, &["GET", key]).unwrap_err();
        assert_eq!(moved, format!("MOVED {slot} {b_in_maps}"));
    }
    assert_eq!(
        must(&b, &["GET", &new_key]),
        Value::BulkString(b"n".to_vec())
    );
    // Every node of the importing group holds them (they came through its log).
    for addr in groups[1].addrs() {
        assert!(
            wait_until(CONVERGE_TIMEOUT, || {
                must(&addr, &["RAFT.DEBUG", "EXEC", "EXISTS", &keys[3]]) == Value::Int(1)
            }),
            "{addr}"
        );
    }
}

/// Runs `scripts/move-slots` with `args`; its output, which must say it succeeded.
fn move_slots(args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/move-slots");
    let output = std::process::Command::new("timeout")
        .arg("300")
        .arg(&script)
        .args(args)
        .output()
        .expect("run scripts/move-slots");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "move-slots {args:?} failed:\n{text}"
    );
    text
}

/// What one writer saw: values acknowledged, and values whose fate is unknown.
#[derive(Default)]
struct Appends {
    acked: Vec<(String, String)>,
    uncertain: Vec<(String, String)>,
}

/// Appends unique values to `keys` through a cluster client until `stop`.
fn append_until(
    seeds: Vec<String>,
    keys: Vec<String>,
    writer: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Appends {
    let client = redis::cluster::ClusterClient::builder(
        seeds
            .iter()
            .map(|a| format!("redis://{a}/"))
            .collect::<Vec<_>>(),
    )
    .connection_timeout(Duration::from_secs(1))
    .response_timeout(Duration::from_secs(5))
    .retries(10)
    .build()
    .expect("cluster client");
    let mut con = None;
    let mut seen = Appends::default();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if con.is_none() {
            con = client.get_connection().ok();
            if con.is_none() {
                std::thread::sleep(RETRY_BACKOFF);
                continue;
            }
        }
        let key = keys[n % keys.len()].clone();
        let value = format!("w{writer}-{n}");
        n += 1;
        let result: redis::RedisResult<i64> = redis::cmd("RPUSH")
            .arg(&key)
            .arg(&value)
            .query(con.as_mut().unwrap());
        match result {
            Ok(_) => seen.acked.push((key, value)),
            Err(e) => {
                seen.uncertain.push((key, value));
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    con = None;
                }
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    }
    seen
}

#[test]
fn the_tool_moves_slots_under_load_across_leader_kills_and_reruns() {
    let mut groups = vec![start_group(3, (0, 8191)), start_group(3, (8192, 16383))];
    link_all(&groups);
    let a = groups[0].leader_addr();
    // Three hash tags of the first group's slots: the slots to move.
    let tags: Vec<(String, u16)> = (0..)
        .map(|i| format!("{{t{i}}}"))
        .map(|tag| {
            let slot = keyslot(&a, &tag);
            (tag, slot)
        })
        .filter(|&(_, slot)| slot <= 8191)
        .take(3)
        .collect();
    let slots = tags
        .iter()
        .map(|(_, slot)| slot.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // Keys that exist before, half with a TTL, and lists the writers append to.
    let mut preloaded = Vec::new();
    for (tag, _) in &tags {
        for i in 0..10 {
            let key = format!("{tag}:k{i}");
            let mut args = vec!["SET", key.as_str(), "old"];
            if i % 2 == 0 {
                args.extend(["PX", "900000"]);
            }
            assert_eq!(must(&a, &args), Value::Okay);
            preloaded.push(key);
        }
    }
    let lists: Vec<String> = tags
        .iter()
        .flat_map(|(tag, _)| (0..4).map(move |i| format!("{tag}:list{i}")))
        .collect();
    let seeds: Vec<String> = groups.iter().flat_map(Group::addrs).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (seeds, lists, stop) = (seeds.clone(), lists.clone(), stop.clone());
            std::thread::spawn(move || append_until(seeds, lists, w, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let from = groups[0].addrs()[0].clone();
    let to = groups[1].addrs()[1].clone();
    let base = [
        "--from", &from, "--to", &to, "--slots", &slots, "--batch", "3",
    ];
    // Declared, then the source's leader is killed; the re-run moves the keys through
    // its successor while the target's leader is killed too; a last run finalises.
    move_slots(&[&base[..], &["--stop-after", "declare"]].concat());
    let source_ids = groups[0].cluster.ids();
    let source_leader = groups[0].cluster.wait_leader(&source_ids, CONVERGE_TIMEOUT);
    groups[0].cluster.node_mut(source_leader).kill9();
    let survivors: Vec<u64> = source_ids
        .into_iter()
        .filter(|&id| id != source_leader)
        .collect();
    groups[0].cluster.wait_leader(&survivors, CONVERGE_TIMEOUT);
    let target_ids = groups[1].cluster.ids();
    let target_leader = groups[1].cluster.wait_leader(&target_ids, CONVERGE_TIMEOUT);
    let seed_alive = groups[0].cluster.addr(survivors[0]);
    let base = [
        "--from",
        &seed_alive,
        "--to",
        &to,
        "--slots",
        &slots,
        "--batch",
        "3",
    ];
    let mover = {
        let args: Vec<String> = [&base[..], &["--stop-after", "move"]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            move_slots(&args)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let to_alive = if groups[1].cluster.addr(target_leader) == to {
        groups[1].addrs()[0].clone()
    } else {
        to.clone()
    };
    groups[1].cluster.node_mut(target_leader).kill9();
    let moved = mover.join().expect("mover");
    eprintln!("move-slots (move phase):\n{moved}");
    let base = ["--from", &seed_alive, "--to", &to_alive, "--slots", &slots];
    let finished = move_slots(&base);
    assert!(finished.contains("done:"), "{finished}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen: Vec<Appends> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let acked: usize = seen.iter().map(|s| s.acked.len()).sum();
    let uncertain: usize = seen.iter().map(|s| s.uncertain.len()).sum();
    eprintln!("writers: {acked} appends acknowledged, {uncertain} with an unknown outcome");
    assert!(
        acked > 20,
        "the writers got through the migration: {acked} appends"
    );

    // Every acknowledged append is in the target exactly once; nothing twice; nothing
    // left on the source.
    let target_alive: Vec<u64> = target_ids
        .into_iter()
        .filter(|&id| id != target_leader)
        .collect();
    let b = groups[1].cluster.addr(
        groups[1]
            .cluster
            .wait_leader(&target_alive, CONVERGE_TIMEOUT),
    );
    let mut contents = std::collections::HashMap::new();
    for list in &lists {
        let values = strings(must(&b, &["LRANGE", list, "0", "-1"]));
        let unique: BTreeSet<&String> = values.iter().collect();
        assert_eq!(
            unique.len(),
            values.len(),
            "{list} holds a value twice: {values:?}"
        );
        contents.insert(list.clone(), values);
    }
    for s in &seen {
        for (list, value) in &s.acked {
            assert!(
                contents[list].contains(value),
                "acknowledged {value} missing from {list}"
            );
        }
    }
    let survivors_a: Vec<String> = survivors
        .iter()
        .map(|&id| groups[0].cluster.addr(id))
        .collect();
    for key in lists.iter().chain(&preloaded) {
        for addr in &survivors_a {
            assert_eq!(
                must(addr, &["RAFT.DEBUG", "EXEC", "EXISTS", key]),
                Value::Int(0),
                "{key} left on the source ({addr})"
            );
        }
    }
    for (i, key) in preloaded.iter().enumerate() {
        assert_eq!(must(&b, &["GET", key]), Value::BulkString(b"old".to_vec()));
        let Value::Int(ttl) = must(&b, &["PTTL", key]) else {
            panic!("PTTL")
        };
        if i % 2 == 0 {
            assert!((1..=900_000).contains(&ttl), "{key} kept its TTL: {ttl}");
        } else {
            assert_eq!(ttl, -1, "{key}");
        }
    }
    // The map agrees on both sides: the slots are the target's.
    for (tag, slot) in &tags {
        let moved = cmd(&survivors_a[0], &["GET", &format!("{tag}:k1")]);
        let expected = format!("MOVED {slot} ");
        assert!(
            matches!(&moved, Err(e) if e.starts_with(&expected) || e.starts_with("MOVED 0 ")),
            "{moved:?}"
        );
    }
    // A second run has nothing to do.
    let again = move_slots(&["--from", &survivors_a[0], "--to", &b, "--slots", &slots]);
    assert!(again.contains("nothing to do"), "{again}");
}

#[test]
fn redis_py_cluster_client_routes_through_every_group() {
    let groups: Vec<Group> = THREE_WAY.iter().map(|&r| start_group(2, r)).collect();
    link_all(&groups);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let install = std::process::Command::new(root.join("scripts/install-redis-py"))
        .output()
        .expect("scripts/install-redis-py");
    assert!(
        install.status.success(),
        "redis-py install failed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let python_path = String::from_utf8_lossy(&install.stdout).trim().to_string();
    // Seeds: one follower of the first group only; the client finds the rest.
    let leader = groups[0].leader_addr();
    let seed = groups[0]
        .addrs()
        .into_iter()
        .find(|a| *a != leader)
        .unwrap();
    let output = std::process::Command::new("timeout")
        .args(["120", "python3"])
        .arg(root.join("tests/python/sharding_client.py"))
        .arg(&seed)
        .env("PYTHONPATH", &python_path)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "redis-py client failed:\n{text}");
    assert!(text.contains("ok 200"), "{text}");
    // Each group holds only keys of its own slots.
    for group in &groups {
        let leader = group.leader_addr();
        let Value::Array(reply) = must(&leader, &["RAFT.DEBUG", "EXEC", "KEYS", "py:*"]) else {
            panic!("KEYS")
        };
        assert!(
            !reply.is_empty(),
            "group {:?} got none of the keys",
            group.range
        );
        for key in strings(Value::Array(reply)) {
            assert!(
                group.owns(keyslot(&leader, &key)),
                "{key} in group {:?}",
                group.range
            );
        }
    }
}
