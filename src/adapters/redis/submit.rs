//! The path of a client's command into the log: who may run it (ACL, maxmemory, the
//! record limit), whether it is served here, proxied to the leader or redirected, and
//! the proposal or quorum read that blocks the client until it is applied.

use redis_module::{RedisError, RedisResult, RedisValue};

use crate::adapters::ffi::{self, Answer, RawCtx};
use crate::adapters::redis::proposals::{check_can_serve, wait_for_read};
use crate::adapters::redis::settings::with_config;
use crate::adapters::redis::state::{call_locally, with_table, Waiter};
use crate::adapters::redis::{execute, watch};
use crate::core::commands::{AclDenied, Class, ServerFlavor};
use crate::core::entry::{check_proposal_size, Argv};

pub const ERR_NOT_SUPPORTED: &str = "ERR not supported by RedisRaft";
/// Redis' own refusal of a `denyoom` command over `maxmemory`.
pub const ERR_OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

thread_local! {
    /// The running server, read once from `INFO server`.
    static FLAVOR: std::cell::Cell<Option<ServerFlavor>> = const { std::cell::Cell::new(None) };
}

thread_local! {
    /// Users found to have every permission (`+@all ~* &*`, no selectors): their commands
    /// need no check. Cleared whenever an ACL command passes the filter.
    static UNRESTRICTED_USERS: std::cell::RefCell<std::collections::HashMap<String, bool>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// An ACL command passed the filter: rules may change, so forget who was unrestricted.
pub fn forget_unrestricted_users() {
    UNRESTRICTED_USERS.with(|users| users.borrow_mut().clear());
}

/// Which server runs the module (Redis 7.0, 7.2+, Valkey), where their replies differ.
pub fn server_flavor(ctx: RawCtx) -> ServerFlavor {
    if let Some(flavor) = FLAVOR.with(std::cell::Cell::get) {
        return flavor;
    }
    let info = call_locally(ctx, &[b"INFO".to_vec(), b"server".to_vec()], false)
        .map(|reply| String::from_utf8_lossy(reply.bytes()).into_owned())
        .unwrap_or_default();
    let flavor = ServerFlavor::from_info(&info);
    FLAVOR.with(|cell| cell.set(Some(flavor)));
    flavor
}

/// Redis' refusal of a command queued inside MULTI over `maxmemory`: Redis refuses to
/// queue anything then, Valkey only what it would refuse outside MULTI.
pub fn check_oom_queued(ctx: RawCtx, argv: &Argv) -> Result<(), &'static str> {
    if server_flavor(ctx).refuses_any_queued_command_on_oom() {
        if over_maxmemory(ctx) {
            return Err(ERR_OOM);
        }
        return Ok(());
    }
    check_oom(ctx, std::slice::from_ref(argv))
}

/// Whether the server is over `maxmemory` (Redis' own judgement, as for its commands).
pub fn over_maxmemory(ctx: RawCtx) -> bool {
    ffi::context_flags(ctx) & redis_module::raw::REDISMODULE_CTX_FLAGS_OOM != 0
}

/// Redis' OOM refusal if any of `commands` is one Redis refuses over `maxmemory`
/// (`denyoom`; deletes and the like still go through) and the server is over it.
fn check_oom(ctx: RawCtx, commands: &[Argv]) -> Result<(), &'static str> {
    let denied = with_table(|table| {
        commands.iter().any(|argv| {
            let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
            table.denies_oom(&slices)
        })
    });
    if denied && over_maxmemory(ctx) {
        return Err(ERR_OOM);
    }
    Ok(())
}

fn is_unrestricted(ctx: RawCtx, name: &str) -> bool {
    if let Some(known) = UNRESTRICTED_USERS.with(|users| users.borrow().get(name).copied()) {
        return known;
    }
    let rules = call_locally(
        ctx,
        &[
            b"ACL".to_vec(),
            b"GETUSER".to_vec(),
            name.as_bytes().to_vec(),
        ],
        false,
    );
    let unrestricted = rules.is_ok_and(|reply| {
        let field = |wanted: &[u8]| {
            (0..reply.len()).step_by(2).find_map(|i| {
                let key = reply.element(i)?;
                (key.bytes() == wanted).then(|| reply.element(i + 1))?
            })
        };
        let text = |wanted: &[u8]| field(wanted).map(|value| value.bytes().to_vec());
        text(b"commands").as_deref() == Some(b"+@all".as_slice())
            && text(b"keys").as_deref() == Some(b"~*".as_slice())
            && text(b"channels").as_deref() == Some(b"&*".as_slice())
            && field(b"selectors").is_none_or(|selectors| selectors.is_empty())
    });
    UNRESTRICTED_USERS.with(|users| users.borrow_mut().insert(name.to_string(), unrestricted));
    unrestricted
}

/// Checks a command against the caller's ACL user before it can enter the log, with
/// Redis' own wording when it is refused.
/// Returns the caller's user name.
pub fn acl_check(ctx: RawCtx, argv: &[Vec<u8>]) -> Result<Option<String>, String> {
    let Some(name) = ffi::data::current_user_name(ctx) else {
        return Ok(None);
    };
    if is_unrestricted(ctx, &name) {
        return Ok(Some(name));
    }
    let Some(user) = ffi::data::ModuleUser::find(&name) else {
        return Err(format!("NOPERM user '{name}' does not exist"));
    };
    if user.may_run(&mut ffi::data::Args::new(argv)) {
        return Ok(Some(name));
    }
    // The server's own wording (Redis 7.0's, or 7.2's which Valkey keeps); ACL DRYRUN
    // tells which rule refused.
    let mut dry_run = vec![
        b"ACL".to_vec(),
        b"DRYRUN".to_vec(),
        name.clone().into_bytes(),
    ];
    dry_run.extend(argv.iter().cloned());
    let reason = call_locally(ctx, &dry_run, false)
        .map(|reply| String::from_utf8_lossy(reply.bytes()).into_owned())
        .unwrap_or_default();
    let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let command = with_table(|table| table.full_name(&slices));
    let denied = if reason.contains(" key") {
        AclDenied::Key
    } else if reason.contains(" channel") {
        AclDenied::Channel
    } else {
        AclDenied::Command(&command)
    };
    Err(server_flavor(ctx).acl_wording().noperm(denied, &name))
}

/// A script or function call by a user with restricted rights. The leader runs proxied
/// commands as the cluster user, so the calls inside such a script would escape the
/// caller's rights: it is not proxied (the client gets `MOVED`). Plain commands are
/// checked here, against the caller, before they are forwarded.
fn restricted_script(ctx: RawCtx, argv: &[Vec<u8>], user: Option<&str>) -> bool {
    let runs_code = argv.first().is_some_and(|name| {
        let name = name.to_ascii_lowercase();
        name.starts_with(b"eval") || name.starts_with(b"fcall")
    });
    runs_code && user.is_some_and(|name| !is_unrestricted(ctx, name))
}

/// Sends commands through raft for the client of `ctx` (a write, or one read), which stays
/// blocked until they are applied (or the read is confirmed). `transaction`: EXEC of a
/// MULTI block, answered with the array of replies.
pub fn submit(
    ctx: RawCtx,
    class: Class,
    commands: Vec<Argv>,
    transaction: bool,
    resp3: bool,
    user: Option<String>,
) -> RedisResult {
    let asking = crate::adapters::redis::sharding::take_asking(ffi::data::client_id(ctx));
    if let Err(message) = check_can_serve() {
        let ask = asking
            .then(|| crate::adapters::redis::sharding::ask_leader(ctx, &commands, &message))
            .flatten();
        if let Some(ask) = ask {
            return reply_error(&ask);
        }
        if let Some(leader) = message.strip_prefix("MOVED 0 ") {
            let restricted = commands
                .iter()
                .any(|argv| restricted_script(ctx, argv, user.as_deref()));
            if with_config(|config| config.follower_proxy) && !restricted {
                let leader = leader.to_string();
                let forwarded = if transaction {
                    crate::adapters::redis::proxy::forward_transaction(ctx, leader, commands)
                } else {
                    let argv = commands.into_iter().next().unwrap_or_default();
                    crate::adapters::redis::proxy::forward(ctx, leader, argv)
                };
                if forwarded {
                    return Ok(RedisValue::NoReply);
                }
            }
        }
        return reply_error(&message);
    }
    if let Err(refusal) = crate::adapters::redis::sharding::refuse_at_submit(ctx, &commands, asking)
    {
        return reply_error(&refusal);
    }
    let mut class = class;
    let local_read = class == Class::Read && !with_config(|config| config.quorum_reads);
    // Quorum reads check this when they run (see apply::serve_confirmed_reads).
    if local_read && execute::reads_expired_key(ctx, &commands[0]) {
        // Only the log may delete an expired key on every node alike.
        class = Class::Write;
    }
    if class == Class::Read && local_read {
        let argv = &commands[0];
        ffi::reply_answer(ctx, &execute::run_read(ctx, argv, user.as_deref(), resp3));
        return Ok(RedisValue::NoReply);
    }
    if class != Class::Read {
        // Refused before anything waits: over the record limit, the entry would stop
        // every leader that tried to append it.
        if let Err(too_large) = check_proposal_size(&commands, user.as_deref()) {
            return reply_error(&too_large.to_string());
        }
        // Refused before it is logged, as Redis refuses it before running it; the
        // module's own entries (expiry, membership) never pass here.
        if let Err(oom) = check_oom(ctx, &commands) {
            return reply_error(oom);
        }
    }
    let blocking = match (class, transaction) {
        (Class::Write, false) => crate::adapters::redis::blocking::describe(ctx, &commands[0]),
        _ => None,
    };
    let client = match blocking {
        // Redis ends these waits itself on disconnect or CLIENT UNBLOCK (blocking::cancel).
        Some(_) => ffi::block_client_cancellable(ctx),
        None => ffi::block_client(ctx),
    };
    let waiter = Waiter {
        client,
        resp3,
        read: None,
        conf_reply: None,
        user,
        blocking,
        asking,
    };
    if class == Class::Read {
        let argv = commands.into_iter().next().unwrap_or_default();
        wait_for_read(waiter, argv);
    } else {
        watch::propose(waiter, commands, transaction);
    }
    Ok(RedisValue::NoReply)
}

pub fn run_here(ctx: RawCtx, argv: &[Vec<u8>], resp3: bool) -> RedisResult {
    match call_locally(ctx, argv, resp3) {
        Ok(reply) => {
            ffi::reply_answer(ctx, &Answer::Reply(reply));
            Ok(RedisValue::NoReply)
        }
        Err(message) => Err(RedisError::String(message)),
    }
}

pub fn reply_error(message: &str) -> RedisResult {
    Err(RedisError::String(message.to_string()))
}
