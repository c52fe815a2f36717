//! Shard groups on the Redis side (`docs/SHARDING.md`): `RAFT.SHARDGROUP`, and a
//! client's command routed by hash slot against the replicated map (`core::shards`):
//! refused early where the map already says it is not served here, decided for good
//! when it is applied, so every node decides alike.

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::ffi::data::{self, Args};
use crate::adapters::ffi::{self, Answer, RawCtx};
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::proposals::{check_can_serve, propose_for_client};
use crate::adapters::redis::settings::with_config;
use crate::adapters::redis::state::{with_state, MainState};
use crate::core::entry::{Argv, Payload};
use crate::core::expiry;
use crate::core::shards::{
    common_slot, node_id40, Existing, RangeKind, RouteAsk, ShardGroup, ShardMapChange, ShardNode,
    SlotRange, ERR_CROSSSLOT, ERR_NOT_ENABLED,
};

/// The keys `commands` name (every command of a transaction), as Redis' key specs find
/// them.
fn keys_of(ctx: RawCtx, commands: &[Argv]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    for argv in commands {
        let mut args = Args::new(argv);
        for position in data::command_keys(ctx, &mut args) {
            if let Some(key) = argv.get(position) {
                keys.push(key.clone());
            }
        }
    }
    keys
}

fn route_ask(keys: &[Vec<u8>], asking: bool) -> Result<Option<RouteAsk>, String> {
    let slot =
        common_slot(keys.iter().map(Vec::as_slice)).map_err(|_| ERR_CROSSSLOT.to_string())?;
    let any_locked = with_state(|state| {
        state.shard_map.locked_count() > 0 && keys.iter().any(|k| state.shard_map.is_locked(k))
    });
    Ok(slot.map(|slot| RouteAsk {
        slot,
        asking,
        single_key: keys.windows(2).all(|pair| pair[0] == pair[1]),
        any_locked,
    }))
}

thread_local! {
    /// Clients whose next command (or MULTI block) sent `ASKING` first.
    static ASKING: std::cell::RefCell<std::collections::HashSet<u64>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// `ASKING` (the filter rewrites it to `RAFT.ASKING ASKING`): the client's next command,
/// or its next MULTI block, may use a slot this group imports.
pub fn asking_command(ctx: &Context, _args: Vec<RedisString>) -> RedisResult {
    let client = data::client_id(ctx.ctx);
    ASKING.with(|asking| asking.borrow_mut().insert(client));
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// Whether `client` sent `ASKING` before this command; it counts once.
pub fn take_asking(client: u64) -> bool {
    ASKING.with(|asking| {
        let mut asking = asking.borrow_mut();
        !asking.is_empty() && asking.remove(&client)
    })
}

/// A client that disconnected asks nothing any more.
pub fn forget_client(client: u64) {
    ASKING.with(|asking| asking.borrow_mut().remove(&client));
}

/// A follower's answer to a command sent with `ASKING`: `ASK <slot> <leader>` instead of
/// `MOVED 0 <leader>`, so the client keeps asking.
pub fn ask_leader(ctx: RawCtx, commands: &[Argv], not_leader: &str) -> Option<String> {
    let leader = not_leader.strip_prefix("MOVED 0 ")?;
    let keys = keys_of(ctx, commands);
    let slot = common_slot(keys.iter().map(Vec::as_slice)).ok()??;
    Some(format!("ASK {slot} {leader}"))
}

/// Before a command is proposed or read: `CROSSSLOT`, or a redirect the map already
/// decides whatever the keys hold. The decision that counts is taken when it is applied.
pub fn refuse_at_submit(ctx: RawCtx, commands: &[Argv], asking: bool) -> Result<(), String> {
    if !with_state(|state| state.shard_map.is_sharded()) {
        return Ok(());
    }
    let Some(ask) = route_ask(&keys_of(ctx, commands), asking)? else {
        return Ok(());
    };
    match with_state(|state| state.shard_map.early_refusal(ask)) {
        Some(route) => Err(route.error().unwrap_or_default()),
        None => Ok(()),
    }
}

/// When `commands` are applied (or a read runs) at `now_ms`: the error the client gets
/// instead of running them, if the map does not let them run here.
pub fn refuse_at_apply(
    ctx: RawCtx,
    commands: &[Argv],
    now_ms: i64,
    asking: bool,
) -> Option<String> {
    if !with_state(|state| state.shard_map.is_sharded()) {
        return None;
    }
    let keys = keys_of(ctx, commands);
    let ask = match route_ask(&keys, asking) {
        Ok(Some(ask)) => ask,
        Ok(None) => return None,
        Err(crossslot) => return Some(crossslot),
    };
    let existing = || {
        let present = keys
            .iter()
            .filter(|key| {
                data::key_expiry(ctx, key)
                    .is_some_and(|expiry_ms| !expiry::is_expired(expiry_ms, now_ms))
            })
            .count();
        match present {
            0 => Existing::None,
            n if n == keys.len() => Existing::All,
            _ => Existing::Some,
        }
    };
    // Keys are looked up outside the state: opening one may expire it, and the keyspace
    // event re-enters the module.
    if let Some(route) = with_state(|state| state.shard_map.route_without_keys(ask)) {
        return route.error();
    }
    let existing = existing();
    with_state(|state| state.shard_map.route(ask, || existing)).error()
}

/// Whether `RAFT.SHARDGROUP <sub>` may run here: sharding on, a known subcommand, this
/// node the leader of a sharded group.
pub fn check_shardgroup_command(sub: &str) -> Result<(), RedisError> {
    let sharded = with_state(|state| state.shard_map.is_sharded());
    if !sharded && !with_config(|config| config.sharding) {
        return Err(RedisError::Str(ERR_NOT_ENABLED));
    }
    if !matches!(sub, "get" | "add" | "replace" | "link") {
        return Err(RedisError::Str(
            "ERR RAFT.SHARDGROUP supports GET / ADD / REPLACE / LINK",
        ));
    }
    check_can_serve().map_err(RedisError::String)?;
    if !sharded {
        // This cluster was created without sharding; the config alone changes nothing.
        return Err(RedisError::Str(ERR_NOT_ENABLED));
    }
    Ok(())
}

/// `RAFT.SHARDGROUP GET | ADD | REPLACE` (`shard_links` handles `LINK` and calls this for
/// the others, once `check_shardgroup_command` passed).
pub fn shardgroup_command(ctx: &Context, sub: &str, args: &[RedisString]) -> RedisResult {
    let words: Vec<String> = args.iter().map(|a| a.to_string_lossy()).collect();
    match sub {
        "get" if words.is_empty() => Ok(with_state(local_group_reply)),
        "get" => Err(RedisError::WrongArity),
        "add" => {
            let mut at = 0;
            let group = parse_group(&words, &mut at).map_err(invalid)?;
            if at != words.len() {
                return Err(RedisError::WrongArity);
            }
            propose_change(ctx.ctx, ShardMapChange::Add(group))
        }
        _ => {
            let mut at = 0;
            let count = parse_number(&words, &mut at, "group count").map_err(invalid)?;
            let mut groups = Vec::new();
            for _ in 0..count {
                groups.push(parse_group(&words, &mut at).map_err(invalid)?);
            }
            if at != words.len() {
                return Err(RedisError::WrongArity);
            }
            let local_id = with_state(|state| state.shard_map.local_id().to_string());
            propose_change(ctx.ctx, ShardMapChange::Replace { local_id, groups })
        }
    }
}

fn invalid(why: String) -> RedisError {
    RedisError::String(format!("ERR invalid shard group: {why}"))
}

fn parse_number(words: &[String], at: &mut usize, what: &str) -> Result<u64, String> {
    let word = words.get(*at).ok_or_else(|| format!("{what} missing"))?;
    *at += 1;
    word.parse()
        .map_err(|_| format!("{what} '{word}' is not a number"))
}

fn parse_word(words: &[String], at: &mut usize, what: &str) -> Result<String, String> {
    let word = words.get(*at).ok_or_else(|| format!("{what} missing"))?;
    *at += 1;
    Ok(word.clone())
}

/// `<sg-id32> <n_ranges> <n_nodes> (<start> <end> <type> <session_key>)×n_ranges
/// (<node_id40> <host:port>)×n_nodes`
fn parse_group(words: &[String], at: &mut usize) -> Result<ShardGroup, String> {
    let id = parse_word(words, at, "shard group id")?;
    let range_count = parse_number(words, at, "range count")?;
    let node_count = parse_number(words, at, "node count")?;
    // Bounded by what the command holds: four words per range, two per node.
    if range_count.saturating_mul(4) + node_count.saturating_mul(2) > words.len() as u64 {
        return Err("fewer arguments than the counts announce".into());
    }
    let mut ranges = Vec::new();
    for _ in 0..range_count {
        let slot = |n: u64| u16::try_from(n).map_err(|_| format!("slot {n} out of range"));
        let start = slot(parse_number(words, at, "range start")?)?;
        let end = slot(parse_number(words, at, "range end")?)?;
        let kind_number = parse_number(words, at, "range type")?;
        let kind = RangeKind::from_number(kind_number as i64)
            .ok_or_else(|| format!("range type {kind_number} is not 1, 2 or 3"))?;
        let session_key = parse_number(words, at, "session key")?;
        ranges.push(SlotRange {
            start,
            end,
            kind,
            session_key,
        });
    }
    let mut nodes = Vec::new();
    for _ in 0..node_count {
        let id = parse_word(words, at, "node id")?;
        let addr = parse_word(words, at, "node address")?;
        nodes.push(ShardNode { id, addr });
    }
    Ok(ShardGroup { id, ranges, nodes })
}

/// Checks `change` against the applied map and logs it; the client is answered once it
/// is applied (where it is checked again: another change may have come first).
fn propose_change(ctx: RawCtx, change: ShardMapChange) -> RedisResult {
    if let Err(e) = with_state(|state| state.shard_map.changed(&change)) {
        return Err(invalid(e.to_string()));
    }
    propose_for(ffi::block_client(ctx), change);
    Ok(RedisValue::NoReply)
}

/// Logs `change`; `client` (blocked) gets `OK` or the refusal once it is applied.
pub fn propose_for(client: ffi::BlockedClient, change: ShardMapChange) {
    propose_for_client(client, |origin, _| Payload::ShardMap { origin, change });
}

/// Logs `change` with nobody waiting (the leader's refresh of a linked group).
pub fn propose_unanswered(change: ShardMapChange) {
    let sent = with_state(|state| send_unanswered(state, change));
    if let Err(e) = sent {
        log::warn!("raft: shard map change not proposed: {e}");
    }
}

fn send_unanswered(state: &mut MainState, change: ShardMapChange) -> Result<(), &'static str> {
    let request_id = state.new_request_id();
    let data = Payload::ShardMap {
        origin: None,
        change,
    }
    .encode();
    state.send_to_driver(DriverInput::Propose { request_id, data })
}

/// At INIT with `sharding yes`: the new cluster's group serves the `slot-config` slots.
pub fn propose_local_slots(state: &mut MainState, dbid: &str) -> Result<(), &'static str> {
    let ranges = with_config(|config| config.slot_config.0.clone())
        .into_iter()
        .map(|(start, end)| SlotRange::stable(start, end))
        .collect();
    let change = ShardMapChange::InitLocal {
        local_id: dbid.to_string(),
        ranges,
    };
    send_unanswered(state, change)
}

/// Applies a logged map change; the proposing client learns whether it took effect.
pub fn apply_change(change: &ShardMapChange) -> Answer {
    match with_state(|state| state.shard_map.apply(change)) {
        Ok(()) => Answer::Simple("OK".into()),
        Err(e) => {
            log::warn!("raft: shard map change refused when applied: {e}");
            Answer::Error(format!("ERR invalid shard group: {e}"))
        }
    }
}

/// The cluster's members with an address, leader first: (raft id, 40-character id,
/// address). What `GET` and the `CLUSTER` replies list for this group.
pub fn local_nodes(state: &MainState) -> Vec<(u64, String, String)> {
    let dbid = state.meta.as_ref().map_or("", |meta| meta.dbid.as_str());
    let leader = state.leader_id();
    let mut members: Vec<_> = state
        .membership
        .members()
        .filter(|member| !member.addr.is_empty())
        .map(|member| (member.id, member.addr.clone()))
        .collect();
    members.sort_by_key(|(id, _)| (*id != leader, *id));
    members
        .into_iter()
        .map(|(id, addr)| (id, node_id40(dbid, id), addr))
        .collect()
}

fn ranges_reply(ranges: &[SlotRange]) -> RedisValue {
    RedisValue::Array(
        ranges
            .iter()
            .map(|range| {
                RedisValue::Array(vec![
                    RedisValue::Integer(i64::from(range.start)),
                    RedisValue::Integer(i64::from(range.end)),
                    RedisValue::Integer(range.kind.number()),
                    RedisValue::Integer(range.session_key as i64),
                ])
            })
            .collect(),
    )
}

/// `[dbid, [[start, end, type, session_key]...], [[node_id40, "host:port"]...]]`
fn local_group_reply(state: &mut MainState) -> RedisValue {
    let nodes = local_nodes(state)
        .into_iter()
        .map(|(_, id, addr)| {
            RedisValue::Array(vec![
                RedisValue::BulkString(id),
                RedisValue::BulkString(addr),
            ])
        })
        .collect();
    RedisValue::Array(vec![
        RedisValue::BulkString(state.shard_map.local_id().to_string()),
        ranges_reply(state.shard_map.local_ranges()),
        RedisValue::Array(nodes),
    ])
}
