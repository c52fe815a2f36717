//! `CLUSTER SLOTS / SHARDS / NODES / MYID / INFO` answered from the raft membership, so
//! cluster-aware clients find the leader (owner of every slot) and follow it on failover.
//! The filter rewrites `CLUSTER ...` into `RAFT._CLUSTER CLUSTER ...`.

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::redis::state::{with_state, NodeState};
use crate::core::membership::Member;

const SLOT_COUNT_LAST: i64 = 16383;

/// A stable 40-character node name, as Redis Cluster uses: dbid prefix + node id in hex.
fn node_name(dbid: &str, id: u64) -> String {
    let prefix: String = dbid.chars().take(24).collect();
    format!("{prefix:0<24}{id:016x}")
}

fn split_addr(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

struct View {
    dbid: String,
    me: u64,
    leader: u64,
    members: Vec<Member>,
}

pub fn cluster_command(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    // args: RAFT._CLUSTER CLUSTER <sub> ...
    let sub = args
        .get(2)
        .map(|a| a.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let view = with_state(|state| {
        (state.node_state == NodeState::Up).then(|| View {
            dbid: state
                .meta
                .as_ref()
                .map(|m| m.dbid.clone())
                .unwrap_or_default(),
            me: state.my_id(),
            leader: state.leader_id(),
            members: state.membership.members().cloned().collect(),
        })
    });
    let Some(view) = view else {
        return Err(RedisError::Str("NOCLUSTER No Raft Cluster"));
    };
    match sub.as_str() {
        "slots" => Ok(slots(&view)),
        "shards" => Ok(shards(&view)),
        "nodes" => Ok(RedisValue::BulkString(nodes(&view))),
        "myid" => Ok(RedisValue::BulkString(node_name(&view.dbid, view.me))),
        "info" => Ok(RedisValue::BulkString(info(&view))),
        _ => Err(RedisError::Str("ERR not supported by RedisRaft")),
    }
}

fn leader_first(view: &View) -> Vec<&Member> {
    let mut members: Vec<&Member> = view.members.iter().filter(|m| !m.addr.is_empty()).collect();
    members.sort_by_key(|m| (m.id != view.leader, m.id));
    members
}

fn slots(view: &View) -> RedisValue {
    if view.leader == 0 {
        return RedisValue::Array(Vec::new());
    }
    let mut entry = vec![RedisValue::Integer(0), RedisValue::Integer(SLOT_COUNT_LAST)];
    for member in leader_first(view) {
        let (host, port) = split_addr(&member.addr);
        entry.push(RedisValue::Array(vec![
            RedisValue::BulkString(host),
            RedisValue::Integer(port),
            RedisValue::BulkString(node_name(&view.dbid, member.id)),
        ]));
    }
    RedisValue::Array(vec![RedisValue::Array(entry)])
}

fn shards(view: &View) -> RedisValue {
    let nodes = leader_first(view)
        .into_iter()
        .map(|member| {
            let (host, port) = split_addr(&member.addr);
            let role = if member.id == view.leader {
                "master"
            } else {
                "replica"
            };
            RedisValue::Array(vec![
                RedisValue::BulkString("id".into()),
                RedisValue::BulkString(node_name(&view.dbid, member.id)),
                RedisValue::BulkString("port".into()),
                RedisValue::Integer(port),
                RedisValue::BulkString("ip".into()),
                RedisValue::BulkString(host.clone()),
                RedisValue::BulkString("endpoint".into()),
                RedisValue::BulkString(host),
                RedisValue::BulkString("role".into()),
                RedisValue::BulkString(role.into()),
                RedisValue::BulkString("replication-offset".into()),
                RedisValue::Integer(0),
                RedisValue::BulkString("health".into()),
                RedisValue::BulkString("online".into()),
            ])
        })
        .collect();
    let slot_ranges = if view.leader == 0 {
        Vec::new()
    } else {
        vec![RedisValue::Integer(0), RedisValue::Integer(SLOT_COUNT_LAST)]
    };
    RedisValue::Array(vec![RedisValue::Array(vec![
        RedisValue::BulkString("slots".into()),
        RedisValue::Array(slot_ranges),
        RedisValue::BulkString("nodes".into()),
        RedisValue::Array(nodes),
    ])])
}

fn nodes(view: &View) -> String {
    let leader_name = node_name(&view.dbid, view.leader);
    let mut text = String::new();
    for member in leader_first(view) {
        let (host, port) = split_addr(&member.addr);
        let mut flags = Vec::new();
        if member.id == view.me {
            flags.push("myself");
        }
        let is_leader = member.id == view.leader;
        flags.push(if is_leader { "master" } else { "slave" });
        let master = if is_leader || view.leader == 0 {
            "-".to_string()
        } else {
            leader_name.clone()
        };
        let slots = if is_leader { " 0-16383" } else { "" };
        text.push_str(&format!(
            "{} {host}:{port}@0 {} {master} 0 0 0 connected{slots}\n",
            node_name(&view.dbid, member.id),
            flags.join(",")
        ));
    }
    text
}

fn info(view: &View) -> String {
    let state = if view.leader != 0 { "ok" } else { "fail" };
    let assigned = if view.leader != 0 { 16384 } else { 0 };
    format!(
        "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:1\r\n\
         cluster_current_epoch:0\r\ncluster_my_epoch:0\r\n",
        view.members.len()
    )
}
