//! Runs replicated commands so that every node computes the same result: the entry's
//! time instead of each node's clock (expiry, stream ids), seeded random picks (SPOP),
//! the caller's ACL user for scripts, and no nondeterministic command inside a script.
//! See `core::expiry` for the expiry design.

use std::cell::Cell;

use crate::adapters::ffi::data::{self, Args, ModuleUser};
use crate::adapters::ffi::{self, Answer, FilterCtx, RawCtx};
use crate::adapters::redis::clock::wall_clock_ms;
use crate::adapters::redis::state::{
    call_locally, call_locally_prepared, read_now_ms, with_state, with_table,
};
use crate::core::commands::{Class, CommandTable, InScript};
use crate::core::entry::Argv;
use crate::core::expiry::{self, Rewrite, TtlQuery};
use crate::core::random_pick;
use crate::core::scripts::{concerns_registry, Resolved, NOSCRIPT_ERROR};

thread_local! {
    /// "Now" for commands the module runs: the entry's time while applying, the local
    /// clock while serving a read. `None` for raw internal calls (snapshots).
    static LOGICAL_NOW: Cell<Option<i64>> = const { Cell::new(None) };
    /// A script is running: its commands must be deterministic.
    static IN_SCRIPT: Cell<bool> = const { Cell::new(false) };
}

/// The time expiry is judged at right now (see `LOGICAL_NOW`).
pub fn logical_now() -> i64 {
    LOGICAL_NOW.with(Cell::get).unwrap_or_else(wall_clock_ms)
}

fn with_logical_time<R>(now_ms: i64, f: impl FnOnce() -> R) -> R {
    let previous = LOGICAL_NOW.with(|cell| cell.replace(Some(now_ms)));
    let result = f();
    LOGICAL_NOW.with(|cell| cell.set(previous));
    result
}

const SCRIPT_COMMANDS: &[&[u8]] = &[
    b"eval",
    b"evalsha",
    b"eval_ro",
    b"evalsha_ro",
    b"fcall",
    b"fcall_ro",
];

fn is_script(argv: &[Vec<u8>]) -> bool {
    argv.first()
        .is_some_and(|name| SCRIPT_COMMANDS.iter().any(|s| name.eq_ignore_ascii_case(s)))
}

/// Command filter for the commands the module itself runs (apply, reads, scripts they
/// start): makes their time-dependent arguments absolute, answers TTL queries from the
/// logical time, and refuses nondeterministic commands inside scripts.
pub fn filter_own_command(fctx: FilterCtx, argv: &[&[u8]]) {
    let Some(now_ms) = LOGICAL_NOW.with(Cell::get) else {
        return;
    };
    if argv.len() == 2 && TtlQuery::parse(argv[0]).is_some() {
        data::filter_insert(fctx, 0, b"RAFT._TTL");
        return;
    }
    if IN_SCRIPT.with(Cell::get) && CommandTable::counts_subscribers(argv) {
        data::filter_insert(fctx, 0, b"RAFT._PUBLISH");
        return;
    }
    if IN_SCRIPT.with(Cell::get) {
        let (in_script, class) = with_table(|table| (table.in_script(argv), table.classify(argv)));
        if in_script == InScript::Refused || class == Class::Refused {
            data::filter_insert(fctx, 0, b"RAFT._REFUSED");
            return;
        }
        if let InScript::Sorted { .. } = in_script {
            // Hash order differs between nodes: the script gets the reply sorted.
            data::filter_insert(fctx, 0, b"RAFT._SORT_REPLY");
            return;
        }
    }
    for change in expiry::rewrite(argv, now_ms) {
        match change {
            Rewrite::Replace { position, value } => data::filter_replace(fctx, position, &value),
            Rewrite::Append(value) => data::filter_insert(fctx, argv.len(), &value),
        }
    }
    if let Some((position, id)) = expiry::stream_id_rewrite(argv, now_ms) {
        data::filter_replace(fctx, position, &id);
    }
}

/// `RAFT._TTL <TTL|PTTL|EXPIRETIME|PEXPIRETIME> <key>`: what the query would answer if
/// expiry times were not shifted, at the logical time.
pub fn ttl_command(
    ctx: &redis_module::Context,
    args: Vec<redis_module::RedisString>,
) -> redis_module::RedisResult {
    if args.len() != 3 {
        return Err(redis_module::RedisError::WrongArity);
    }
    let query = TtlQuery::parse(args[1].as_slice())
        .ok_or(redis_module::RedisError::Str("ERR unknown TTL query"))?;
    let found = data::key_expiry(ctx.ctx, args[2].as_slice());
    let reply = expiry::ttl_reply(query, found.is_some(), found.flatten(), logical_now());
    Ok(redis_module::RedisValue::Integer(reply))
}

/// `RAFT._REFUSED <command...>`: what a script gets for a command whose result would
/// differ between nodes.
pub fn refused_command(
    _ctx: &redis_module::Context,
    args: Vec<redis_module::RedisString>,
) -> redis_module::RedisResult {
    let name = args
        .get(1)
        .map(|a| a.to_string_lossy().to_ascii_uppercase())
        .unwrap_or_default();
    Err(redis_module::RedisError::String(format!(
        "ERR not supported by RedisRaft: {name} inside a script (its result would differ between nodes)"
    )))
}

/// Runs a command a script's call was rewritten into, without the script restrictions
/// (which would rewrite it again).
pub fn call_outside_script(ctx: RawCtx, argv: &[Vec<u8>]) -> Result<ffi::CallReply, String> {
    let was_in_script = IN_SCRIPT.with(|flag| flag.replace(false));
    let reply = call_locally(ctx, argv, false);
    IN_SCRIPT.with(|flag| flag.set(was_in_script));
    reply
}

/// `RAFT._PUBLISH <PUBLISH|SPUBLISH> <channel> <message>`, what a script's PUBLISH runs:
/// the message is published to this node's subscribers (as on every node), but the script
/// sees 0 receivers everywhere, so it cannot branch on this node's subscriber count.
pub fn publish_in_script_command(
    ctx: &redis_module::Context,
    args: Vec<redis_module::RedisString>,
) -> redis_module::RedisResult {
    let argv: Vec<Vec<u8>> = args[1..].iter().map(|a| a.as_slice().to_vec()).collect();
    let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    if !CommandTable::counts_subscribers(&slices) {
        return Err(redis_module::RedisError::Str(
            "ERR RAFT._PUBLISH publishes only",
        ));
    }
    let reply = call_outside_script(ctx.ctx, &argv);
    match reply {
        Ok(reply) if reply.is_error() => Err(redis_module::RedisError::String(
            String::from_utf8_lossy(reply.bytes()).into_owned(),
        )),
        Ok(_) => Ok(redis_module::RedisValue::Integer(0)),
        Err(message) => Err(redis_module::RedisError::String(message)),
    }
}

/// `RAFT._NOKILL ...`: what `SCRIPT KILL` and `FUNCTION KILL` become. It runs while a
/// script keeps the server busy (the command is `allow-busy`), so the caller learns why.
pub fn kill_refused_command(
    _ctx: &redis_module::Context,
    args: Vec<redis_module::RedisString>,
) -> redis_module::RedisResult {
    let name: Vec<String> = args[1..]
        .iter()
        .take(2)
        .map(|a| a.to_string_lossy().to_ascii_uppercase())
        .collect();
    Err(redis_module::RedisError::String(format!(
        "ERR not supported by RedisRaft: {} would stop the script on this node only, \
         while every other node runs it to the end",
        name.join(" ")
    )))
}

/// Whether a key this command names is logically expired now; such a read must go
/// through the log, which deletes the key on every node first.
pub fn reads_expired_key(ctx: RawCtx, argv: &[Vec<u8>]) -> bool {
    if argv
        .first()
        .is_some_and(|name| TtlQuery::parse(name).is_some())
    {
        return false;
    }
    let now_ms = read_now_ms();
    let mut args = Args::new(argv);
    data::command_keys(ctx, &mut args)
        .into_iter()
        .any(|position| {
            expiry::is_expired(data::key_expiry_at(ctx, &args, position).flatten(), now_ms)
        })
}

/// Serves a read at the local clock, or the applied entry time if that is later
/// (`read_now_ms`; read-only scripts as the caller's user).
pub fn run_read(ctx: RawCtx, argv: &[Vec<u8>], user: Option<&str>, resp3: bool) -> Answer {
    with_logical_time(read_now_ms(), || match resolve_script(argv) {
        Resolved::Unchanged if is_script(argv) => run_script(ctx, argv, user, resp3),
        Resolved::Unchanged => to_answer(call_locally(ctx, argv, resp3)),
        resolved => answer_resolved(ctx, resolved, user, resp3),
    })
}

/// `RAFT.DEBUG EXEC`: at the time of the last applied entry, so nodes at the same applied
/// index answer alike (TTLs included), with no script restriction (diagnosis may use KEYS
/// in a script; nothing it does is replicated).
pub fn run_debug(ctx: RawCtx, argv: &[Vec<u8>], resp3: bool) -> Answer {
    let applied_time_ms = crate::adapters::redis::state::with_state(|state| state.applied_time_ms);
    let now_ms = if applied_time_ms > 0 {
        applied_time_ms
    } else {
        wall_clock_ms()
    };
    with_logical_time(now_ms, || to_answer(call_locally(ctx, argv, resp3)))
}

fn to_answer(reply: Result<ffi::CallReply, String>) -> Answer {
    match reply {
        Ok(reply) => Answer::Reply(reply),
        Err(message) => Answer::Error(message),
    }
}

/// Applies the commands of one entry at the entry's time; one answer per command.
pub fn apply_commands(
    ctx: RawCtx,
    time_ms: i64,
    user: Option<&str>,
    commands: &[Argv],
    resp3: bool,
) -> Vec<Answer> {
    with_logical_time(time_ms, || {
        commands
            .iter()
            .map(|argv| {
                let mut args = Args::new(argv);
                delete_expired_keys_of(ctx, argv, &mut args, time_ms);
                if let Some(answer) = deterministic_spop(ctx, argv, time_ms) {
                    return answer;
                }
                let answer = match resolve_script(argv) {
                    Resolved::Unchanged if is_script(argv) => run_script(ctx, argv, user, resp3),
                    Resolved::Unchanged => {
                        to_answer(call_locally_prepared(ctx, argv, &mut args, resp3))
                    }
                    resolved => answer_resolved(ctx, resolved, user, resp3),
                };
                if concerns_registry(argv) {
                    let error = error_text(&answer);
                    with_state(|state| state.scripts.note_applied(argv, error));
                }
                answer
            })
            .collect()
    })
}

/// What the replicated script registry makes of `argv` (`EVALSHA`, `SCRIPT EXISTS`).
fn resolve_script(argv: &[Vec<u8>]) -> Resolved {
    if !concerns_registry(argv) {
        return Resolved::Unchanged;
    }
    with_state(|state| state.scripts.resolve(argv))
}

/// Runs or answers a command the registry resolved (never the server's script cache).
fn answer_resolved(ctx: RawCtx, resolved: Resolved, user: Option<&str>, resp3: bool) -> Answer {
    match resolved {
        Resolved::Run(argv) => run_script(ctx, &argv, user, resp3),
        Resolved::NoScript => Answer::Error(NOSCRIPT_ERROR.to_string()),
        Resolved::Exists(flags) => Answer::Array(
            flags
                .into_iter()
                .map(|known| Answer::Integer(i64::from(known)))
                .collect(),
        ),
        Resolved::Unchanged => Answer::Error("ERR internal: unresolved script".into()),
    }
}

fn error_text(answer: &Answer) -> Option<&[u8]> {
    match answer {
        Answer::Error(message) => Some(message.as_bytes()),
        Answer::Reply(reply) if reply.is_error() => Some(reply.bytes()),
        _ => None,
    }
}

/// Scripts run as the caller's user, so a script cannot do what its caller may not.
fn run_script(ctx: RawCtx, argv: &[Vec<u8>], user: Option<&str>, resp3: bool) -> Answer {
    let user = match user.map(|name| (name, ModuleUser::find(name))) {
        None => None,
        Some((_, Some(user))) => Some(user),
        Some((name, None)) => {
            return Answer::Error(format!(
                "NOPERM user '{name}' does not exist on this node (ACL rules must be the same on every node)"
            ))
        }
    };
    if let Some(user) = &user {
        user.attach(ctx);
    }
    IN_SCRIPT.with(|flag| flag.set(true));
    let reply = crate::adapters::redis::state::call_locally_as_user(ctx, argv, resp3);
    IN_SCRIPT.with(|flag| flag.set(false));
    if user.is_some() {
        ModuleUser::detach(ctx);
    }
    to_answer(reply)
}

/// Deletes the keys a command names that are expired at the entry's time, so the command
/// sees them missing on every node.
fn delete_expired_keys_of(ctx: RawCtx, argv: &[Vec<u8>], args: &mut Args, time_ms: i64) {
    for position in data::command_keys(ctx, args) {
        let expired =
            expiry::is_expired(data::key_expiry_at(ctx, args, position).flatten(), time_ms);
        if let (true, Some(key)) = (expired, argv.get(position)) {
            delete_if_expired(ctx, key, time_ms);
        }
    }
}

/// Deletes `key` if it is expired at `time_ms`; true if it was.
pub fn delete_if_expired(ctx: RawCtx, key: &[u8], time_ms: i64) -> bool {
    if !expiry::is_expired(data::key_expiry(ctx, key).flatten(), time_ms) {
        return false;
    }
    if let Err(e) = call_locally(ctx, &[b"DEL".to_vec(), key.to_vec()], false) {
        log::warn!("raft: could not delete an expired key: {e}");
    }
    true
}

/// `SPOP key [count]` picks members with the server's random generator, different on
/// every node. Here the pick is seeded by the entry: sort the members, pick, SREM.
/// `None` leaves the command to Redis (errors, empty sets, count 0: no randomness).
fn deterministic_spop(ctx: RawCtx, argv: &[Vec<u8>], time_ms: i64) -> Option<Answer> {
    if !(2..=3).contains(&argv.len()) || !argv.first()?.eq_ignore_ascii_case(b"spop") {
        return None;
    }
    let count = match argv.get(2) {
        None => None,
        Some(arg) => match std::str::from_utf8(arg).ok()?.parse::<u64>() {
            Ok(count) if count > 0 => Some(count as usize),
            _ => return None,
        },
    };
    let key = &argv[1];
    let reply = call_locally(ctx, &[b"SMEMBERS".to_vec(), key.clone()], false).ok()?;
    if reply.is_error() || reply.is_empty() {
        return None;
    }
    let mut members: Vec<Vec<u8>> = (0..reply.len())
        .filter_map(|i| reply.element(i).map(|m| m.bytes().to_vec()))
        .collect();
    drop(reply);
    members.sort();
    let picked = random_pick::pick(members, count.unwrap_or(1), random_pick::seed(time_ms, key));
    let mut srem = vec![b"SREM".to_vec(), key.clone()];
    srem.extend(picked.iter().cloned());
    if let Err(e) = call_locally(ctx, &srem, false) {
        return Some(Answer::Error(e));
    }
    Some(match count {
        None => Answer::Bulk(picked.into_iter().next().unwrap_or_default()),
        Some(_) => Answer::Array(picked.into_iter().map(Answer::Bulk).collect()),
    })
}

/// Applies a leader's list of expired keys: each node deletes those still expired at the
/// entry's time (a key may have been rewritten since the leader looked).
pub fn apply_expired_keys(ctx: RawCtx, time_ms: i64, keys: &[Vec<u8>]) {
    with_logical_time(time_ms, || {
        for key in keys {
            delete_if_expired(ctx, key, time_ms);
        }
    });
}
