//! `CLUSTER SLOTS / SHARDS / NODES / MYID / INFO` answered from the raft membership and,
//! when sharded, the shard map: cluster-aware clients find each slot's group and its
//! leader, and follow it on failover.
//! The filter rewrites `CLUSTER ...` into `RAFT._CLUSTER CLUSTER ...`.

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::redis::sharding::local_nodes;
use crate::adapters::redis::state::{with_state, MainState, NodeState};
use crate::core::config::MAX_SLOT;
use crate::core::shards::{key_hash_slot, RangeKind, ShardGroup};

fn split_addr(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

/// One node as cluster replies show it.
struct NodeView {
    id: String,
    addr: String,
    leader: bool,
    myself: bool,
}

/// One group: its nodes (leader first) and the slot ranges clients are sent to it for.
struct GroupView {
    nodes: Vec<NodeView>,
    /// (start, end) of its stable and migrating ranges.
    served: Vec<(u16, u16)>,
    /// Only for the local group: `[slot->-<id>]` / `[slot-<-<id>]` marks.
    moving_marks: Vec<String>,
}

struct View {
    /// Local group first.
    groups: Vec<GroupView>,
    has_leader: bool,
}

fn view_of(state: &MainState) -> View {
    let me = state.my_id();
    let leader = state.leader_id();
    let local_nodes = local_nodes(state)
        .into_iter()
        .map(|(raft_id, id, addr)| NodeView {
            id,
            addr,
            leader: raft_id == leader,
            myself: raft_id == me,
        })
        .collect();
    let map = &state.shard_map;
    if !map.is_sharded() {
        let served = if leader == 0 {
            vec![]
        } else {
            vec![(0, MAX_SLOT)]
        };
        return View {
            groups: vec![GroupView {
                nodes: local_nodes,
                served,
                moving_marks: Vec::new(),
            }],
            has_leader: leader != 0,
        };
    }
    let served_of = |group: &ShardGroup| -> Vec<(u16, u16)> {
        group
            .ranges
            .iter()
            .filter(|r| r.kind != RangeKind::Importing)
            .map(|r| (r.start, r.end))
            .collect()
    };
    let first_node_of = |kind: RangeKind, slot: u16| -> Option<String> {
        let holder = map.holder(slot, kind)?;
        holder.nodes.first().map(|node| node.id.clone())
    };
    let mut moving_marks = Vec::new();
    for range in map.local_ranges() {
        for slot in range.start..=range.end {
            match range.kind {
                RangeKind::Stable => {}
                RangeKind::Migrating => {
                    let to = first_node_of(RangeKind::Importing, slot).unwrap_or_default();
                    moving_marks.push(format!("[{slot}->-{to}]"));
                }
                RangeKind::Importing => {
                    let from = first_node_of(RangeKind::Migrating, slot).unwrap_or_default();
                    moving_marks.push(format!("[{slot}-<-{from}]"));
                }
            }
        }
    }
    let local_served = if leader == 0 {
        Vec::new()
    } else {
        map.group(map.local_id()).map(served_of).unwrap_or_default()
    };
    let mut groups = vec![GroupView {
        nodes: local_nodes,
        served: local_served,
        moving_marks,
    }];
    for group in map.groups().iter().filter(|g| g.id != map.local_id()) {
        groups.push(GroupView {
            nodes: group
                .nodes
                .iter()
                .enumerate()
                .map(|(i, node)| NodeView {
                    id: node.id.clone(),
                    addr: node.addr.clone(),
                    leader: i == 0,
                    myself: false,
                })
                .collect(),
            served: served_of(group),
            moving_marks: Vec::new(),
        });
    }
    View {
        groups,
        has_leader: leader != 0,
    }
}

pub fn cluster_command(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    // args: RAFT._CLUSTER CLUSTER <sub> ...
    let sub = args
        .get(2)
        .map(|a| a.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if sub == "keyslot" {
        // A pure function of the key, answered in any state as Redis Cluster does.
        let [_, _, _, key] = args.as_slice() else {
            return Err(RedisError::WrongArity);
        };
        return Ok(RedisValue::Integer(i64::from(key_hash_slot(
            key.as_slice(),
        ))));
    }
    let view = with_state(|state| (state.node_state == NodeState::Up).then(|| view_of(state)));
    let Some(view) = view else {
        return Err(RedisError::Str("NOCLUSTER No Raft Cluster"));
    };
    match sub.as_str() {
        "slots" => Ok(slots(&view)),
        "shards" => Ok(shards(&view)),
        "nodes" => Ok(RedisValue::BulkString(nodes(&view))),
        "myid" => Ok(RedisValue::BulkString(
            view.groups[0]
                .nodes
                .iter()
                .find(|n| n.myself)
                .map(|n| n.id.clone())
                .unwrap_or_default(),
        )),
        "info" => Ok(RedisValue::BulkString(info(&view))),
        _ => Err(RedisError::Str("ERR not supported by RedisRaft")),
    }
}

fn slots(view: &View) -> RedisValue {
    let mut entries = Vec::new();
    for group in &view.groups {
        for &(start, end) in &group.served {
            let mut entry = vec![
                RedisValue::Integer(i64::from(start)),
                RedisValue::Integer(i64::from(end)),
            ];
            for node in &group.nodes {
                let (host, port) = split_addr(&node.addr);
                entry.push(RedisValue::Array(vec![
                    RedisValue::BulkString(host),
                    RedisValue::Integer(port),
                    RedisValue::BulkString(node.id.clone()),
                ]));
            }
            entries.push(RedisValue::Array(entry));
        }
    }
    RedisValue::Array(entries)
}

fn shards(view: &View) -> RedisValue {
    let shards = view
        .groups
        .iter()
        .map(|group| {
            let nodes = group
                .nodes
                .iter()
                .map(|node| {
                    let (host, port) = split_addr(&node.addr);
                    let role = if node.leader { "master" } else { "replica" };
                    RedisValue::Array(vec![
                        RedisValue::BulkString("id".into()),
                        RedisValue::BulkString(node.id.clone()),
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
            let slot_ranges = group
                .served
                .iter()
                .flat_map(|&(start, end)| {
                    [
                        RedisValue::Integer(i64::from(start)),
                        RedisValue::Integer(i64::from(end)),
                    ]
                })
                .collect();
            RedisValue::Array(vec![
                RedisValue::BulkString("slots".into()),
                RedisValue::Array(slot_ranges),
                RedisValue::BulkString("nodes".into()),
                RedisValue::Array(nodes),
            ])
        })
        .collect();
    RedisValue::Array(shards)
}

fn slot_list(group: &GroupView) -> String {
    let mut text = String::new();
    for &(start, end) in &group.served {
        if start == end {
            text.push_str(&format!(" {start}"));
        } else {
            text.push_str(&format!(" {start}-{end}"));
        }
    }
    text
}

fn nodes(view: &View) -> String {
    let mut text = String::new();
    for group in &view.groups {
        let leader_id = group.nodes.iter().find(|n| n.leader).map(|n| n.id.clone());
        for node in &group.nodes {
            let (host, port) = split_addr(&node.addr);
            let mut flags = Vec::new();
            if node.myself {
                flags.push("myself");
            }
            flags.push(if node.leader { "master" } else { "slave" });
            let master = match (&leader_id, node.leader) {
                (Some(leader), false) => leader.clone(),
                _ => "-".to_string(),
            };
            let mut slots = if node.leader {
                slot_list(group)
            } else {
                String::new()
            };
            if node.myself {
                for mark in &group.moving_marks {
                    slots.push(' ');
                    slots.push_str(mark);
                }
            }
            text.push_str(&format!(
                "{} {host}:{port}@{port} {} {master} 0 0 0 connected{slots}\n",
                node.id,
                flags.join(",")
            ));
        }
    }
    text
}

fn info(view: &View) -> String {
    let state = if view.has_leader { "ok" } else { "fail" };
    let assigned: usize = view
        .groups
        .iter()
        .flat_map(|g| g.served.iter())
        .map(|&(start, end)| usize::from(end - start) + 1)
        .sum();
    let known_nodes: usize = view.groups.iter().map(|g| g.nodes.len()).sum();
    let size = view.groups.iter().filter(|g| !g.served.is_empty()).count();
    format!(
        "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{known_nodes}\r\ncluster_size:{size}\r\n\
         cluster_current_epoch:0\r\ncluster_my_epoch:0\r\n"
    )
}
