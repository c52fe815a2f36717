//! Linking shard groups: `RAFT.SHARDGROUP LINK host:port` asks that node's group for its
//! description (`RAFT.SHARDGROUP GET`, following `MOVED` to its leader) and logs it as an
//! `ADD`; and, unless `external-sharding`, the leader asks every linked group again each
//! `shardgroup-update-interval` and logs a changed node list (a new leader comes first).
//! The asking runs on a helper thread through the node's transport (cluster user, TLS);
//! what it learns is logged from the main thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::time::{Duration, Instant};

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::ffi::{self, data, Answer, BlockedClient, RawCtx};
use crate::adapters::network::transport::Transport;
use crate::adapters::redis::main_jobs::run_on_main;
use crate::adapters::redis::settings::with_config;
use crate::adapters::redis::sharding::{
    check_shardgroup_command, propose_for, propose_unanswered, shardgroup_command,
};
use crate::adapters::redis::state::with_state;
use crate::core::config::parse_addr;
use crate::core::resp::RespValue;
use crate::core::shards::{RangeKind, ShardGroup, ShardMapChange, ShardNode, SlotRange};

pub const ERR_LINK_FAILED: &str = "ERR failed to connect to cluster for link";
/// Pause between rounds over a group's nodes while none answers.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// `MOVED` hops followed within one round (a leader change mid-round needs a few).
const MAX_MOVES: usize = 16;

thread_local! {
    /// A refresh of the linked groups is running (one at a time).
    static REFRESHING: Cell<bool> = const { Cell::new(false) };
}

/// `RAFT.SHARDGROUP <GET | ADD | REPLACE | LINK> ...`: `LINK` here, the others in
/// `sharding`.
pub fn raft_shardgroup(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let sub = args
        .get(1)
        .map(|a| a.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    check_shardgroup_command(&sub)?;
    match (sub.as_str(), args.len()) {
        ("link", 3) => link(ctx.ctx, &args[2].to_string_lossy()),
        ("link", _) => Err(RedisError::WrongArity),
        _ => shardgroup_command(ctx, &sub, &args[2..]),
    }
}

/// `RAFT.SHARDGROUP LINK <host:port>`.
fn link(ctx: RawCtx, addr: &str) -> RedisResult {
    parse_addr("link", addr)
        .map_err(|e| RedisError::String(format!("ERR invalid address: {e}")))?;
    let Some(transport) = with_state(|state| state.transport.clone()) else {
        return Err(RedisError::Str(ERR_LINK_FAILED));
    };
    let (join_timeout_ms, request_timeout) = with_config(|config| {
        (
            config.join_timeout_ms,
            request_timeout(config.connection_timeout_ms, config.response_timeout_ms),
        )
    });
    let client = ffi::block_client(ctx);
    let seeds = vec![addr.to_string()];
    let deadline = Instant::now() + Duration::from_millis(join_timeout_ms);
    let spawned = std::thread::Builder::new()
        .name("raft-link".into())
        .spawn(move || {
            let outcome = fetch_group(&transport, &seeds, deadline, request_timeout);
            run_on_main(Box::new(move || finish_link(client, outcome)));
        });
    if let Err(e) = spawned {
        log::warn!("raft: cannot start LINK: {e}");
    }
    Ok(RedisValue::NoReply)
}

pub fn request_timeout(connection_timeout_ms: u64, response_timeout_ms: u64) -> Duration {
    Duration::from_millis(connection_timeout_ms + response_timeout_ms)
}

fn finish_link(client: BlockedClient, outcome: Result<ShardGroup, String>) {
    let change = outcome.and_then(|group| {
        let change = ShardMapChange::Add(group);
        with_state(|state| state.shard_map.changed(&change))
            .map(|_| change)
            .map_err(|e| e.to_string())
    });
    match change {
        Ok(change) => propose_for(client, change),
        Err(why) => {
            log::warn!("raft: RAFT.SHARDGROUP LINK failed: {why}");
            ffi::unblock(client, Answer::Error(ERR_LINK_FAILED.into()));
        }
    }
}

/// Asks `seeds` in turn for `RAFT.SHARDGROUP GET`, following `MOVED`, until one answers
/// or `deadline` passes.
fn fetch_group(
    transport: &Transport,
    seeds: &[String],
    deadline: Instant,
    request_timeout: Duration,
) -> Result<ShardGroup, String> {
    let argv = vec![b"RAFT.SHARDGROUP".to_vec(), b"GET".to_vec()];
    ask_following_moved(
        transport,
        seeds,
        &argv,
        deadline,
        request_timeout,
        parse_get_reply,
    )
}

/// Sends `argv` to `seeds` in turn (another group's nodes), following `MOVED 0` to their
/// leader, until `accept` takes a reply or `deadline` passes. Error replies other than
/// `MOVED` count as failed attempts; the last reason is returned.
pub fn ask_following_moved<T>(
    transport: &Transport,
    seeds: &[String],
    argv: &[Vec<u8>],
    deadline: Instant,
    request_timeout: Duration,
    accept: impl Fn(&RespValue) -> Result<T, String>,
) -> Result<T, String> {
    let mut targets: VecDeque<String> = seeds.iter().cloned().collect();
    let mut moves = 0;
    let mut last_error = String::from("no node answered");
    while Instant::now() < deadline {
        let Some(target) = targets.pop_front() else {
            std::thread::sleep(RETRY_INTERVAL);
            targets.extend(seeds.iter().cloned());
            moves = 0;
            continue;
        };
        match transport.request_blocking(target.clone(), argv.to_vec(), request_timeout) {
            Ok(RespValue::Error(message)) => match message.strip_prefix("MOVED 0 ") {
                Some(leader) if moves < MAX_MOVES => {
                    moves += 1;
                    targets.push_front(leader.trim().to_string());
                }
                _ => last_error = format!("{target}: {message}"),
            },
            Ok(reply) => match accept(&reply) {
                Ok(accepted) => return Ok(accepted),
                Err(why) => last_error = format!("{target}: {why}"),
            },
            Err(e) => last_error = format!("{target}: {e}"),
        }
    }
    Err(last_error)
}

fn text(value: &RespValue) -> Option<String> {
    match value {
        RespValue::Bulk(Some(bytes)) => String::from_utf8(bytes.clone()).ok(),
        RespValue::Simple(text) => Some(text.clone()),
        _ => None,
    }
}

fn items(value: &RespValue) -> Option<&[RespValue]> {
    match value {
        RespValue::Array(Some(items)) => Some(items),
        _ => None,
    }
}

fn integer(value: &RespValue) -> Option<i64> {
    match value {
        RespValue::Integer(n) => Some(*n),
        _ => None,
    }
}

/// `[dbid, [[start, end, type, session_key]...], [[node_id40, "host:port"]...]]`; the
/// map checks the values when the change is proposed and applied.
fn parse_get_reply(reply: &RespValue) -> Result<ShardGroup, String> {
    let bad = || format!("unexpected RAFT.SHARDGROUP GET reply {reply:?}");
    let parts = items(reply)
        .filter(|parts| parts.len() == 3)
        .ok_or_else(bad)?;
    let id = text(&parts[0]).ok_or_else(bad)?;
    let mut ranges = Vec::new();
    for range in items(&parts[1]).ok_or_else(bad)? {
        let numbers: Vec<i64> = items(range)
            .ok_or_else(bad)?
            .iter()
            .map(integer)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let [start, end, kind, session_key] = numbers[..] else {
            return Err(bad());
        };
        let slot = |n: i64| u16::try_from(n).map_err(|_| bad());
        ranges.push(SlotRange {
            start: slot(start)?,
            end: slot(end)?,
            kind: RangeKind::from_number(kind).ok_or_else(bad)?,
            session_key: session_key as u64,
        });
    }
    let mut nodes = Vec::new();
    for node in items(&parts[2]).ok_or_else(bad)? {
        let node = items(node).filter(|n| n.len() == 2).ok_or_else(bad)?;
        nodes.push(ShardNode {
            id: text(&node[0]).ok_or_else(bad)?,
            addr: text(&node[1]).ok_or_else(bad)?,
        });
    }
    Ok(ShardGroup { id, ranges, nodes })
}

/// At load: the refresh timer (it acts only on the leader of a sharded group).
pub fn start(ctx: RawCtx) {
    data::create_timer(ctx, refresh_interval_ms(), on_refresh_timer);
}

fn refresh_interval_ms() -> i64 {
    with_config(|config| config.shardgroup_update_interval_ms) as i64
}

unsafe extern "C" fn on_refresh_timer(ctx: RawCtx, _data: *mut c_void) {
    refresh_linked_groups();
    data::create_timer(ctx, refresh_interval_ms(), on_refresh_timer);
}

/// Asks each linked group for its nodes; a changed list is logged (as `ADD` of the group
/// with the slots this map gives it: only `REPLACE` moves slots).
fn refresh_linked_groups() {
    if REFRESHING.get() || with_config(|config| config.external_sharding) {
        return;
    }
    let plan = with_state(|state| {
        if !state.shard_map.is_sharded() || !state.is_leader_ready() {
            return None;
        }
        let transport = state.transport.clone()?;
        let local_id = state.shard_map.local_id().to_string();
        let groups: Vec<(String, Vec<String>)> = state
            .shard_map
            .groups()
            .iter()
            .filter(|group| group.id != local_id && !group.nodes.is_empty())
            .map(|group| {
                let addrs = group.nodes.iter().map(|node| node.addr.clone()).collect();
                (group.id.clone(), addrs)
            })
            .collect();
        (!groups.is_empty()).then_some((transport, groups))
    });
    let Some((transport, groups)) = plan else {
        return;
    };
    let (interval_ms, request_timeout) = with_config(|config| {
        (
            config.shardgroup_update_interval_ms,
            request_timeout(config.connection_timeout_ms, config.response_timeout_ms),
        )
    });
    REFRESHING.set(true);
    let spawned = std::thread::Builder::new()
        .name("raft-shard-refresh".into())
        .spawn(move || {
            let deadline = Instant::now() + Duration::from_millis(interval_ms.max(1000));
            let fetched: Vec<(String, Result<ShardGroup, String>)> = groups
                .into_iter()
                .map(|(id, addrs)| {
                    (
                        id,
                        fetch_group(&transport, &addrs, deadline, request_timeout),
                    )
                })
                .collect();
            run_on_main(Box::new(move || log_changed_nodes(fetched)));
        });
    if let Err(e) = spawned {
        REFRESHING.set(false);
        log::warn!("raft: cannot refresh the linked shard groups: {e}");
    }
}

fn log_changed_nodes(fetched: Vec<(String, Result<ShardGroup, String>)>) {
    REFRESHING.set(false);
    for (id, outcome) in fetched {
        let fresh = match outcome {
            Ok(fresh) if fresh.id == id => fresh,
            Ok(other) => {
                log::warn!(
                    "raft: shard group {id} answered as {}; not refreshed",
                    other.id
                );
                continue;
            }
            Err(why) => {
                log::info!("raft: shard group {id} not refreshed: {why}");
                continue;
            }
        };
        let change = with_state(|state| {
            let known = state.shard_map.group(&id)?;
            (known.nodes != fresh.nodes && !fresh.nodes.is_empty()).then(|| {
                ShardMapChange::Add(ShardGroup {
                    id: id.clone(),
                    ranges: known.ranges.clone(),
                    nodes: fresh.nodes.clone(),
                })
            })
        });
        if let Some(change) = change {
            log::info!("raft: shard group {id} has new nodes; logging them");
            propose_unanswered(change);
        }
    }
}
