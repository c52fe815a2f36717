//! Moving keys of a migrating slot to the group importing it (`SHARDING.md`, "Moving a
//! slot between groups"): the intercepted `MIGRATE` on the source leader (lock the keys
//! in the log, `DUMP` them with their expiry, `RAFT.IMPORT` them on the target's leader,
//! then delete and unlock them in the log), `RAFT.IMPORT` on the target (logged, fenced
//! by session key and term), and `RAFT.SCAN`, which lists a slot's keys to move.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::ffi::{self, data, Answer, BlockedClient, RawCtx};
use crate::adapters::redis::main_jobs::run_on_main;
use crate::adapters::redis::proposals::{check_can_serve, propose_for_client};
use crate::adapters::redis::settings::with_config;
use crate::adapters::redis::shard_links::{ask_following_moved, request_timeout};
use crate::adapters::redis::state::{call_locally, read_now_ms, with_state};
use crate::core::config::MigrationDebug;
use crate::core::entry::{Origin, Payload};
use crate::core::expiry;
use crate::core::pending::RequestId;
use crate::core::resp::RespValue;
use crate::core::shards::{common_slot, key_hash_slot, MigrationStep, MovedKey, ERR_CROSSSLOT};

/// Marks our form of `RAFT.IMPORT` that carries each key's expiry (see `parse_import`).
const EXPIRES_WORD: &[u8] = b"EXPIRES";
/// Keys one `MIGRATE` may move: its entries and the `RAFT.IMPORT` stay bounded.
const MAX_KEYS_PER_MIGRATE: usize = 10_000;

/// A `MIGRATE` between its lock being applied and the target's answer.
struct Export {
    keys: Vec<Vec<u8>>,
    target_addrs: Vec<String>,
    session_key: u64,
    timeout: Duration,
}

thread_local! {
    /// `MIGRATE`s whose lock is proposed, by the lock's request id.
    static EXPORTS: RefCell<HashMap<RequestId, Export>> = RefCell::new(HashMap::new());
}

fn words(args: &[RedisString]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_slice().to_vec()).collect()
}

fn is_word(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 user pw] [KEYS
/// key...]` while sharded (the filter rewrites it to `RAFT.MIGRATE MIGRATE ...`). The
/// address, db and credentials are ignored: the keys go to the group the map names.
pub fn migrate_command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = words(&args[1..]);
    if argv.len() < 6 {
        return Err(RedisError::WrongArity);
    }
    let timeout_ms: u64 = std::str::from_utf8(&argv[5])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(RedisError::Str(
            "ERR timeout is not an integer or out of range",
        ))?;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    if !argv[3].is_empty() {
        keys.push(argv[3].clone());
    }
    let mut at = 6;
    while at < argv.len() {
        let arg = &argv[at];
        if is_word(arg, "keys") {
            if !argv[3].is_empty() {
                return Err(RedisError::Str(
                    "ERR When using MIGRATE KEYS option, the key argument must be set to the empty string",
                ));
            }
            keys.extend(argv[at + 1..].iter().cloned());
            break;
        }
        at += match () {
            _ if is_word(arg, "copy") || is_word(arg, "replace") => 1,
            _ if is_word(arg, "auth") => 2,
            _ if is_word(arg, "auth2") => 3,
            _ => return Err(RedisError::Str("ERR syntax error")),
        };
    }
    if keys.len() > MAX_KEYS_PER_MIGRATE {
        return Err(RedisError::String(format!(
            "ERR MIGRATE moves at most {MAX_KEYS_PER_MIGRATE} keys at once"
        )));
    }
    check_can_serve().map_err(RedisError::String)?;
    let slot =
        common_slot(keys.iter().map(Vec::as_slice)).map_err(|_| RedisError::Str(ERR_CROSSSLOT))?;
    let Some(slot) = slot else {
        return Ok(RedisValue::SimpleStringStatic("NOKEY"));
    };
    let target = with_state(|state| {
        let (session_key, group) = state.shard_map.migration_target(slot)?;
        let addrs: Vec<String> = group.nodes.iter().map(|n| n.addr.clone()).collect();
        Some((session_key, addrs))
    });
    let Some((session_key, target_addrs)) = target else {
        return Err(RedisError::String(format!(
            "ERR slot {slot} is not migrating to another group"
        )));
    };
    let now_ms = read_now_ms();
    keys.sort();
    keys.dedup();
    keys.retain(|key| {
        data::key_expiry(ctx.ctx, key).is_some_and(|native| !expiry::is_expired(native, now_ms))
    });
    if keys.is_empty() {
        return Ok(RedisValue::SimpleStringStatic("NOKEY"));
    }
    let export = Export {
        keys: keys.clone(),
        target_addrs,
        session_key,
        timeout: Duration::from_millis(timeout_ms.max(1000)),
    };
    let client = ffi::block_client(ctx.ctx);
    let request_id = propose_step(client, MigrationStep::Lock { keys });
    if let Some(request_id) = request_id {
        EXPORTS.with(|exports| {
            let mut exports = exports.borrow_mut();
            // Locks that never applied (leadership lost) leave their export behind.
            exports.retain(|id, _| with_state(|state| state.waiters.contains_key(id)));
            exports.insert(request_id, export);
        });
    }
    Ok(RedisValue::NoReply)
}

/// Logs `step` with `client` waiting for it; its request id, unless it failed at once.
fn propose_step(client: BlockedClient, step: MigrationStep) -> Option<RequestId> {
    propose_for_client(client, |origin, time_ms| Payload::Migration {
        origin,
        time_ms,
        step,
    })
}

/// The slots `keys` fall in, each once.
fn slots_of(keys: &[MovedKey]) -> Vec<u16> {
    let slots: BTreeSet<u16> = keys.iter().map(|k| key_hash_slot(&k.key)).collect();
    slots.into_iter().collect()
}

/// Applies a logged migration step (of raft term `term`); the proposing node's client
/// gets its answer (or, for a lock of its `MIGRATE`, the export starts).
pub fn apply_step(
    ctx: RawCtx,
    origin: Option<Origin>,
    step: MigrationStep,
    term: u64,
    (me, inc): (u64, u64),
) {
    let answer = match &step {
        MigrationStep::Lock { keys } => {
            with_state(|state| state.shard_map.lock(keys));
            Answer::Simple("OK".into())
        }
        MigrationStep::Moved { keys } => {
            for key in keys {
                if let Err(e) = call_locally(ctx, &[b"DEL".to_vec(), key.clone()], false) {
                    log::warn!("raft: could not delete a migrated key: {e}");
                }
            }
            with_state(|state| state.shard_map.unlock(keys));
            Answer::Simple("OK".into())
        }
        MigrationStep::Import {
            term,
            session_key,
            keys,
        } => import_keys(ctx, *term, *session_key, keys),
    };
    let Some(origin) = origin.filter(|o| o.node_id == me && o.incarnation == inc) else {
        return;
    };
    let Some(waiter) = with_state(|state| state.waiters.remove(&origin.request_id)) else {
        return;
    };
    let export = EXPORTS.with(|exports| exports.borrow_mut().remove(&origin.request_id));
    match (export, matches!(step, MigrationStep::Lock { .. })) {
        (Some(export), true) => start_export(ctx, waiter.client, export, term),
        _ => ffi::unblock(waiter.client, answer),
    }
}

/// Target side: restores the keys if the map takes them (`ShardMap::accept_import`).
fn import_keys(ctx: RawCtx, term: u64, session_key: u64, keys: &[MovedKey]) -> Answer {
    let slots = slots_of(keys);
    let accepted = with_state(|state| state.shard_map.accept_import(term, session_key, &slots));
    if let Err(refusal) = accepted {
        return Answer::Error(refusal.to_string());
    }
    for moved in keys {
        // The stored (shifted) expiry, as a snapshot restores it: the same on every node.
        let mut argv = vec![
            b"RESTORE".to_vec(),
            moved.key.clone(),
            b"0".to_vec(),
            moved.dump.clone(),
            b"REPLACE".to_vec(),
        ];
        if moved.expire_at_ms >= 0 {
            argv[2] = moved.expire_at_ms.to_string().into_bytes();
            argv.push(b"ABSTTL".to_vec());
        }
        match call_locally(ctx, &argv, false) {
            Ok(reply) if reply.is_error() => {
                return Answer::Error(String::from_utf8_lossy(reply.bytes()).into_owned())
            }
            Ok(_) => {}
            Err(e) => return Answer::Error(e),
        }
    }
    Answer::Simple("OK".into())
}

/// Source side, once the keys are locked here (by an entry of `term`): their dumps go to
/// the target's leader on a helper thread, stamped with that term (the target fences off
/// older ones); its answer decides whether they are deleted here.
fn start_export(ctx: RawCtx, client: BlockedClient, export: Export, term: u64) {
    let fault = with_config(|config| config.migration_debug);
    if fault == MigrationDebug::FailConnect {
        finish_export(
            client,
            export.keys,
            Err("migration-debug fail-connect".into()),
            fault,
        );
        return;
    }
    let mut moved = Vec::with_capacity(export.keys.len());
    for key in &export.keys {
        let dump = call_locally(ctx, &[b"DUMP".to_vec(), key.clone()], false);
        let expiry = call_locally(ctx, &[b"PEXPIRETIME".to_vec(), key.clone()], false);
        match (dump, expiry) {
            (Ok(dump), Ok(expiry)) if !dump.is_error() && !dump.bytes().is_empty() => {
                moved.push(MovedKey {
                    key: key.clone(),
                    dump: dump.bytes().to_vec(),
                    expire_at_ms: expiry.integer().max(-1),
                });
            }
            // Deleted by an entry applied between the check and the lock: nothing to move.
            _ => {}
        }
    }
    let transport = with_state(|state| state.transport.clone());
    let Some(transport) = transport else {
        ffi::unblock(
            client,
            Answer::Error("IOERR no transport to the target".into()),
        );
        return;
    };
    let mut argv = vec![
        b"RAFT.IMPORT".to_vec(),
        term.to_string().into_bytes(),
        export.session_key.to_string().into_bytes(),
        EXPIRES_WORD.to_vec(),
        moved.len().to_string().into_bytes(),
    ];
    for key in &moved {
        argv.push(key.key.clone());
        argv.push(key.dump.clone());
        argv.push(key.expire_at_ms.to_string().into_bytes());
    }
    let timeout = with_config(|c| request_timeout(c.connection_timeout_ms, c.response_timeout_ms))
        .max(export.timeout);
    let deadline = Instant::now() + export.timeout;
    let keys = export.keys;
    let addrs = export.target_addrs;
    let spawned = std::thread::Builder::new()
        .name("raft-migrate".into())
        .spawn(move || {
            let outcome =
                ask_following_moved(&transport, &addrs, &argv, deadline, timeout, |r| match r {
                    RespValue::Simple(ok) if ok == "OK" => Ok(()),
                    other => Err(format!("unexpected reply {other:?}")),
                });
            run_on_main(Box::new(move || {
                finish_export(client, keys, outcome, fault)
            }));
        });
    if let Err(e) = spawned {
        log::warn!("raft: cannot start a migration: {e}");
    }
}

/// `fault`: the `migration-debug` mode the export started with.
fn finish_export(
    client: BlockedClient,
    keys: Vec<Vec<u8>>,
    outcome: Result<(), String>,
    fault: MigrationDebug,
) {
    let outcome = match outcome {
        // The target has the keys, but they stay locked here (a retry unlocks them).
        Ok(()) if fault == MigrationDebug::FailUnlock => {
            Err("migration-debug fail-unlock".to_string())
        }
        outcome => outcome,
    };
    match outcome {
        Ok(()) => {
            propose_step(client, MigrationStep::Moved { keys });
        }
        Err(why) => {
            // The keys stay locked: a retried MIGRATE moves them (RESTORE REPLACE).
            log::warn!("raft: MIGRATE to the importing group failed: {why}");
            ffi::unblock(
                client,
                Answer::Error(format!("IOERR error or timeout moving keys: {why}")),
            );
        }
    }
}

fn parse_u64(word: &[u8], what: &str) -> Result<u64, RedisError> {
    std::str::from_utf8(word)
        .ok()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| RedisError::String(format!("ERR invalid {what}")))
}

/// `RAFT.IMPORT <term> <session_key> <key> <dump> [<key> <dump> ...]` (the original's,
/// keys restored without expiry), or ours: `RAFT.IMPORT <term> <session_key> EXPIRES <n>
/// (<key> <dump> <stored expiry ms, -1: none>)×n`.
fn parse_import(argv: &[Vec<u8>]) -> Result<(u64, u64, Vec<MovedKey>), RedisError> {
    if argv.len() < 4 {
        return Err(RedisError::WrongArity);
    }
    let term = parse_u64(&argv[1], "term")?;
    let session_key = parse_u64(&argv[2], "session key")?;
    let rest = &argv[3..];
    let with_expiry = rest.len() >= 2
        && rest[0].eq_ignore_ascii_case(EXPIRES_WORD)
        && parse_u64(&rest[1], "key count")
            .is_ok_and(|n| usize::try_from(n).is_ok_and(|n| rest.len() == 2 + 3 * n));
    let keys = if with_expiry {
        rest[2..]
            .chunks(3)
            .map(|chunk| {
                let expire_at_ms = std::str::from_utf8(&chunk[2])
                    .ok()
                    .and_then(|w| w.parse::<i64>().ok())
                    .filter(|&ms| ms >= -1)
                    .ok_or(RedisError::Str("ERR invalid expiry"))?;
                Ok(MovedKey {
                    key: chunk[0].clone(),
                    dump: chunk[1].clone(),
                    expire_at_ms,
                })
            })
            .collect::<Result<Vec<_>, RedisError>>()?
    } else {
        if !rest.len().is_multiple_of(2) {
            return Err(RedisError::WrongArity);
        }
        rest.chunks(2)
            .map(|pair| MovedKey {
                key: pair[0].clone(),
                dump: pair[1].clone(),
                expire_at_ms: -1,
            })
            .collect()
    };
    Ok((term, session_key, keys))
}

/// `RAFT.IMPORT`: the importing side of a migration, on its leader (logged).
pub fn import_command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = words(&args);
    let (term, session_key, keys) = parse_import(&argv)?;
    check_can_serve().map_err(RedisError::String)?;
    if with_config(|config| config.migration_debug) == MigrationDebug::FailImport {
        return Err(RedisError::Str("ERR migration-debug fail-import"));
    }
    let slots = slots_of(&keys);
    let precheck = with_state(|state| {
        let mut map = state.shard_map.clone();
        map.accept_import(term, session_key, &slots)
    });
    if let Err(refusal) = precheck {
        return Err(RedisError::String(refusal.to_string()));
    }
    propose_step(
        ffi::block_client(ctx.ctx),
        MigrationStep::Import {
            term,
            session_key,
            keys,
        },
    );
    Ok(RedisValue::NoReply)
}

/// Slots as `RAFT.SCAN` takes them: `"0-100,200"`.
fn parse_slots(text: &str) -> Result<BTreeSet<u16>, RedisError> {
    let bad = || RedisError::String(format!("ERR invalid slot list '{text}'"));
    let slot = |part: &str| {
        part.trim()
            .parse::<u16>()
            .ok()
            .filter(|&s| s <= crate::core::config::MAX_SLOT)
    };
    let mut slots = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (start, end) = match part.split_once('-') {
            Some((start, end)) => (slot(start).ok_or_else(bad)?, slot(end).ok_or_else(bad)?),
            None => {
                let one = slot(part).ok_or_else(bad)?;
                (one, one)
            }
        };
        if start > end {
            return Err(bad());
        }
        slots.extend(start..=end);
    }
    Ok(slots)
}

/// `RAFT.SCAN <cursor> <slots>`: one `SCAN cursor COUNT scan-size` step, keeping the
/// keys of `slots`: `[cursor, [[key, slot]...]]`.
pub fn scan_command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 3 {
        return Err(RedisError::WrongArity);
    }
    check_can_serve().map_err(RedisError::String)?;
    let slots = parse_slots(&args[2].to_string_lossy())?;
    let count = with_config(|config| config.scan_size).to_string();
    let argv = vec![
        b"SCAN".to_vec(),
        args[1].as_slice().to_vec(),
        b"COUNT".to_vec(),
        count.into_bytes(),
    ];
    let reply = call_locally(ctx.ctx, &argv, false).map_err(RedisError::String)?;
    if reply.is_error() {
        return Err(RedisError::String(
            String::from_utf8_lossy(reply.bytes()).into_owned(),
        ));
    }
    let cursor = reply
        .element(0)
        .map(|c| String::from_utf8_lossy(c.bytes()).into_owned())
        .unwrap_or_else(|| "0".into());
    let mut found = Vec::new();
    if let Some(keys) = reply.element(1) {
        for i in 0..keys.len() {
            let Some(key) = keys.element(i) else { continue };
            let slot = key_hash_slot(key.bytes());
            if slots.contains(&slot) {
                found.push(RedisValue::Array(vec![
                    RedisValue::StringBuffer(key.bytes().to_vec()),
                    RedisValue::Integer(i64::from(slot)),
                ]));
            }
        }
    }
    Ok(RedisValue::Array(vec![
        RedisValue::BulkString(cursor),
        RedisValue::Array(found),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn both_import_forms_parse() {
        let (term, session, keys) =
            parse_import(&argv(&["RAFT.IMPORT", "3", "9", "k", "d", "j", "e"])).unwrap();
        assert_eq!((term, session, keys.len()), (3, 9, 2));
        assert!(keys.iter().all(|k| k.expire_at_ms == -1));
        let (_, _, keys) = parse_import(&argv(&[
            "RAFT.IMPORT",
            "3",
            "9",
            "EXPIRES",
            "2",
            "k",
            "d",
            "-1",
            "j",
            "e",
            "77",
        ]))
        .unwrap();
        assert_eq!(keys[1].expire_at_ms, 77);
        assert_eq!(keys[1].key, b"j");
        // A key named EXPIRES in the original's form still reads as a pair.
        let (_, _, keys) = parse_import(&argv(&["RAFT.IMPORT", "3", "9", "EXPIRES", "d"])).unwrap();
        assert_eq!(keys[0].key, b"EXPIRES");
        assert!(parse_import(&argv(&["RAFT.IMPORT", "3", "9", "k"])).is_err());
        assert!(parse_import(&argv(&["RAFT.IMPORT", "x", "9", "k", "d"])).is_err());
    }

    #[test]
    fn slot_lists_parse() {
        assert_eq!(parse_slots("0-2,7").unwrap(), BTreeSet::from([0, 1, 2, 7]));
        assert!(parse_slots("5-4").is_err());
        assert!(parse_slots("16384").is_err());
    }
}
