//! MULTI / EXEC / DISCARD kept by the module: commands are queued per client and EXEC
//! proposes them as one log entry, so every node applies the whole transaction at once.
//! WATCH is kept by `watch` on the leader.

use std::cell::RefCell;
use std::collections::HashMap;

use redis_module::{RedisError, RedisResult, RedisValue};

use crate::adapters::ffi::RawCtx;
use crate::adapters::redis::submit::{self, ERR_NOT_SUPPORTED};
use crate::adapters::redis::watch;
use crate::core::commands::{arity_error, unknown_command_error, Class};
use crate::core::entry::Argv;

/// Bound on one transaction, so a client cannot grow the module's memory without limit
/// (the whole transaction also becomes one log entry).
pub const MAX_QUEUED_COMMANDS: usize = 100_000;
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
struct Queued {
    commands: Vec<Argv>,
    bytes: usize,
    /// A command was refused while queueing: EXEC will answer EXECABORT.
    failed: bool,
}

thread_local! {
    /// Clients between MULTI and EXEC/DISCARD, by client id.
    static OPEN: RefCell<HashMap<u64, Queued>> = RefCell::new(HashMap::new());
}

pub fn in_multi(client: u64) -> bool {
    OPEN.with(|open| open.borrow().contains_key(&client))
}

/// Whether any client has a transaction open: the command filter then routes unknown
/// commands to the module too, so a typo inside MULTI aborts the transaction as in Redis.
pub fn any_open() -> bool {
    OPEN.with(|open| !open.borrow().is_empty())
}

/// Clients between MULTI and EXEC (INFO).
pub fn open_count() -> usize {
    OPEN.with(|open| open.borrow().len())
}

/// A client disconnected: its transaction and watches are gone.
pub fn forget(client: u64) {
    OPEN.with(|open| open.borrow_mut().remove(&client));
    watch::unwatch(client);
}

fn error(message: &str) -> RedisResult {
    Err(RedisError::String(message.to_string()))
}

/// MULTI, EXEC, DISCARD, WATCH, UNWATCH.
pub fn command(ctx: RawCtx, client: u64, argv: Argv, resp3: bool) -> RedisResult {
    let name = argv[0].to_ascii_lowercase();
    match name.as_slice() {
        b"multi" => {
            let opened = OPEN.with(|open| {
                let mut open = open.borrow_mut();
                if open.contains_key(&client) {
                    return false;
                }
                open.insert(client, Queued::default());
                true
            });
            if opened {
                Ok(RedisValue::SimpleStringStatic("OK"))
            } else {
                error("ERR MULTI calls can not be nested")
            }
        }
        b"discard" => match OPEN.with(|open| open.borrow_mut().remove(&client)) {
            Some(_) => {
                watch::unwatch(client);
                Ok(RedisValue::SimpleStringStatic("OK"))
            }
            None => error("ERR DISCARD without MULTI"),
        },
        b"exec" => {
            let Some(queued) = OPEN.with(|open| open.borrow_mut().remove(&client)) else {
                return error("ERR EXEC without MULTI");
            };
            if queued.failed {
                watch::unwatch(client);
                return error("EXECABORT Transaction discarded because of previous errors.");
            }
            let user = crate::adapters::ffi::data::current_user_name(ctx);
            if watch::is_watching(client) {
                return watch::exec(ctx, client, queued.commands, resp3, user);
            }
            if queued.commands.is_empty() {
                return Ok(RedisValue::Array(Vec::new()));
            }
            submit::submit(ctx, Class::Write, queued.commands, true, resp3, user)
        }
        b"watch" if in_multi(client) => error("ERR WATCH inside MULTI is not allowed"),
        b"watch" if argv.len() < 2 => error("ERR wrong number of arguments for 'watch' command"),
        b"watch" => match watch::watch(client, &argv[1..]) {
            Ok(()) => Ok(RedisValue::SimpleStringStatic("OK")),
            Err(message) => error(&message),
        },
        b"unwatch" => {
            watch::unwatch(client);
            Ok(RedisValue::SimpleStringStatic("OK"))
        }
        _ => error(ERR_NOT_SUPPORTED),
    }
}

/// A command from a client inside MULTI: queued, or refused (which aborts the EXEC).
pub fn queue(ctx: RawCtx, client: u64, argv: Argv, class: Class) -> RedisResult {
    let refusal = match class {
        Class::Refused => Some(ERR_NOT_SUPPORTED.to_string()),
        Class::PassThrough => {
            let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
            let known = crate::adapters::redis::state::with_table(|table| table.knows(&slices));
            if known {
                // Connection and admin commands act at once, as they do outside MULTI.
                return submit::run_here(ctx, &argv, false);
            }
            let exists = crate::adapters::redis::state::with_table(|table| table.has(&argv[0]));
            Some(if exists {
                arity_error(&argv[0])
            } else {
                unknown_command_error(&slices)
            })
        }
        Class::Read | Class::Write | Class::Transaction => {
            match submit::check_oom_queued(ctx, &argv) {
                Err(oom) => Some(oom.to_string()),
                Ok(()) => submit::acl_check(ctx, &argv).err(),
            }
        }
    };
    let bytes: usize = argv.iter().map(Vec::len).sum();
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let Some(queued) = open.get_mut(&client) else {
            return error("ERR EXEC without MULTI");
        };
        if let Some(message) = refusal {
            queued.failed = true;
            return error(&message);
        }
        if queued.commands.len() >= MAX_QUEUED_COMMANDS || queued.bytes + bytes > MAX_QUEUED_BYTES {
            queued.failed = true;
            return error("ERR transaction too large for RedisRaft");
        }
        queued.bytes += bytes;
        queued.commands.push(argv);
        Ok(RedisValue::SimpleStringStatic("QUEUED"))
    })
}
