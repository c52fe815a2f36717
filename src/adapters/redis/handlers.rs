//! Client-facing commands: the command filter that routes every command through `RAFT`,
//! and the `RAFT`, `RAFT.CLUSTER` and `RAFT.DEBUG` handlers.

use std::path::PathBuf;

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::disk::logio::LogFile;
use crate::adapters::ffi::{self, Answer, FilterCtx, RawCtx};
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::configs::config;
use crate::adapters::redis::state::{
    self, call_locally, with_state, with_table, NodeState, Waiter,
};
use crate::adapters::redis::{execute, transactions};
use crate::core::commands::{
    arity_error, unknown_command_error, AclDenied, Class, CommandInfo, CommandTable, ServerFlavor,
};
use crate::core::entry::{check_proposal_size, Argv, Origin, Payload};
use crate::core::logfile::NodeMeta;
use crate::core::membership::{single_change, ChangeContext};
use crate::core::pending::RequestId;
use raft::eraftpb::ConfChangeType;

pub const ERR_NOT_SUPPORTED: &str = "ERR not supported by RedisRaft";
const ERR_NO_CLUSTER: &str = "NOCLUSTER No Raft Cluster";
const ERR_JOINING: &str = "NOCLUSTER No Raft Cluster (joining now)";
pub const ERR_REMOVED: &str = "NOCLUSTER No Raft Cluster (this node was removed from the cluster)";
const ERR_LOADING: &str = "LOADING Raft module is loading data";
/// Redis' own refusal of a `denyoom` command over `maxmemory`.
pub const ERR_OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

thread_local! {
    /// The running server, read once from `INFO server`.
    static FLAVOR: std::cell::Cell<Option<ServerFlavor>> = const { std::cell::Cell::new(None) };
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

/// Every client command passes here first. Commands raft must see are rewritten to
/// `RAFT <command...>` so that our handler, which can block the client, receives them.
pub extern "C" fn command_filter(fctx: FilterCtx) {
    let count = ffi::filter_arg_count(fctx);
    if count == 0 {
        return;
    }
    let argv: Vec<&[u8]> = (0..count).map(|i| ffi::filter_arg(fctx, i)).collect();
    if CommandTable::is_kill(&argv) {
        // Before anything else: it arrives while a script the module applies keeps the
        // server busy (so from inside that apply, as far as `is_applying` can tell).
        ffi::filter_prepend(fctx, b"RAFT._NOKILL");
        return;
    }
    if state::is_applying() {
        crate::adapters::redis::execute::filter_own_command(fctx, &argv);
        return;
    }
    if with_table(|table| table.is_ignored(&argv)) {
        // Never intercepted: the server runs it (or answers `unknown command`) as it would
        // without the module, also before INIT.
        return;
    }
    if argv[0].eq_ignore_ascii_case(b"info") {
        // Cluster-mode clients look for cluster_enabled:1 in INFO.
        ffi::filter_prepend(fctx, b"RAFT._INFO");
        return;
    }
    if argv[0].eq_ignore_ascii_case(b"acl") {
        // ACL rules may change: forget which users were unrestricted.
        UNRESTRICTED_USERS.with(|users| users.borrow_mut().clear());
    }
    if argv[0].eq_ignore_ascii_case(b"cluster") {
        // Cluster-aware clients ask CLUSTER SLOTS & co: answered from the raft membership.
        ffi::filter_prepend(fctx, b"RAFT._CLUSTER");
        return;
    }
    let intercept = with_table(|table| {
        table.classify(&argv) != Class::PassThrough
            // Inside MULTI an unknown command must abort the transaction, so the module
            // has to see it; only while some transaction is open, to keep this cheap.
            || (transactions::any_open() && !table.knows(&argv))
    });
    if intercept {
        ffi::filter_prepend(fctx, b"RAFT");
    }
}

fn reply_error(message: &str) -> RedisResult {
    Err(RedisError::String(message.to_string()))
}

fn args_to_argv(args: &[RedisString]) -> Argv {
    args.iter().map(|arg| arg.as_slice().to_vec()).collect()
}

/// `RAFT <command> [args...]`: runs one command through the log (or as a read).
pub fn raft_command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() < 2 {
        return Err(RedisError::WrongArity);
    }
    let argv = args_to_argv(&args[1..]);
    let flags = ffi::context_flags(ctx.ctx);
    let resp3 = flags & redis_module::raw::REDISMODULE_CTX_FLAGS_RESP3 != 0;
    let cannot_block = redis_module::raw::REDISMODULE_CTX_FLAGS_MULTI
        | redis_module::raw::REDISMODULE_CTX_FLAGS_LUA
        | redis_module::raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING;
    if flags & cannot_block != 0 {
        return reply_error(ERR_NOT_SUPPORTED);
    }
    let class = {
        let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
        with_table(|table| table.classify(&slices))
    };
    let client = ffi::data::client_id(ctx.ctx);
    if class == Class::Transaction {
        return transactions::command(ctx.ctx, client, argv, resp3);
    }
    if transactions::in_multi(client) {
        return transactions::queue(ctx.ctx, client, argv, class);
    }
    match class {
        Class::Refused => return reply_error(ERR_NOT_SUPPORTED),
        Class::PassThrough => {
            let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
            return match with_table(|table| (table.knows(&slices), table.has(&argv[0]))) {
                (true, _) => run_here(ctx.ctx, &argv, resp3),
                (false, true) => reply_error(&arity_error(&argv[0])),
                (false, false) => reply_error(&unknown_command_error(&slices)),
            };
        }
        Class::Read | Class::Write | Class::Transaction => {}
    }
    let user = match acl_check(ctx.ctx, &argv) {
        Ok(user) => user,
        Err(message) => return reply_error(&message),
    };
    submit(ctx.ctx, class, vec![argv], false, resp3, user)
}

thread_local! {
    /// Users found to have every permission (`+@all ~* &*`, no selectors): their commands
    /// need no check. Cleared whenever an ACL command passes the filter.
    static UNRESTRICTED_USERS: std::cell::RefCell<std::collections::HashMap<String, bool>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
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
    if let Err(message) = check_can_serve() {
        if let Some(leader) = message.strip_prefix("MOVED 0 ") {
            let restricted = commands
                .iter()
                .any(|argv| restricted_script(ctx, argv, user.as_deref()));
            if config().follower_proxy && !restricted {
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
    let mut class = class;
    let local_read = class == Class::Read && !config().quorum_reads;
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
    };
    if class == Class::Read {
        let argv = commands.into_iter().next().unwrap_or_default();
        wait_for_read(waiter, argv);
    } else {
        propose_commands(waiter, commands, transaction);
    }
    Ok(RedisValue::NoReply)
}

/// Proposes commands as one entry; the waiter is answered when it is applied. Held back
/// while an EXEC with WATCH waits for its quiet point (see `watch`).
pub fn propose_commands(waiter: Waiter, commands: Vec<Argv>, transaction: bool) {
    if let Some((waiter, commands, transaction)) =
        crate::adapters::redis::watch::hold_if_barrier(waiter, commands, transaction)
    {
        send_proposal(waiter, commands, transaction);
    }
}

/// Sends a proposal to the driver now.
pub fn send_proposal(waiter: Waiter, commands: Vec<Argv>, transaction: bool) {
    send_proposal_at(waiter, commands, transaction, None);
}

/// Sends a proposal to the driver now, carrying `time_ms` if given (taken from
/// `MainState::next_entry_time_ms` by the caller), else the next entry time.
pub fn send_proposal_at(
    waiter: Waiter,
    commands: Vec<Argv>,
    transaction: bool,
    time_ms: Option<i64>,
) {
    if let Err(too_large) = check_proposal_size(&commands, waiter.user.as_deref()) {
        // `submit` refuses these before blocking; this covers the module's own proposals
        // (a read of an expired key turned into a write).
        ffi::unblock(waiter.client, Answer::Error(too_large.to_string()));
        return;
    }
    let sent = with_state(|state| {
        let request_id = state.new_request_id();
        let origin = state.meta.as_ref().map(|meta| Origin {
            node_id: meta.node_id,
            incarnation: state.incarnation,
            request_id,
        });
        let payload = Payload::Commands {
            origin,
            time_ms: time_ms.unwrap_or_else(|| state.next_entry_time_ms()),
            user: waiter.user.clone(),
            transaction,
            commands,
        };
        state.waiters.insert(request_id, waiter);
        crate::adapters::redis::watch::proposed(request_id);
        state
            .send_to_driver(DriverInput::Propose {
                request_id,
                data: payload.encode(),
            })
            .map_err(|error| (request_id, error))
    });
    if let Err((request_id, _)) = &sent {
        crate::adapters::redis::watch::settled(*request_id);
    }
    fail_unsent(sent);
}

/// Registers a read that runs once a quorum confirmed leadership and the read index is
/// applied.
fn wait_for_read(mut waiter: Waiter, argv: Argv) {
    waiter.read = Some(argv);
    let sent = with_state(|state| {
        let request_id = state.new_request_id();
        state.waiters.insert(request_id, waiter);
        state
            .send_to_driver(DriverInput::Read { request_id })
            .map_err(|error| (request_id, error))
    });
    fail_unsent(sent);
}

fn fail_unsent(sent: Result<(), (RequestId, &'static str)>) {
    if let Err((request_id, error)) = sent {
        with_state(|state| state.answer_waiter(request_id, Answer::Error(error.to_string())));
    }
}

/// Whether this node may take reads and writes now, or the error a client gets:
/// followers redirect to the leader they know, like a Redis Cluster replica would.
pub fn check_can_serve() -> Result<(), String> {
    with_state(|state| match state.node_state {
        NodeState::Uninitialized if state.removed => Err(ERR_REMOVED.to_string()),
        NodeState::Uninitialized => Err(ERR_NO_CLUSTER.to_string()),
        NodeState::Joining => Err(ERR_JOINING.to_string()),
        NodeState::Loading => Err(ERR_LOADING.to_string()),
        NodeState::Up if state.is_leader_ready() => Ok(()),
        NodeState::Up => Err(state.not_leader_error()),
    })
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

/// `RAFT.CLUSTER INIT [dbid]` (JOIN arrives with multi-node clusters).
pub fn raft_cluster(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let sub = args
        .get(1)
        .map(|a| a.to_string_lossy().to_ascii_lowercase());
    match sub.as_deref() {
        Some("init") => cluster_init(ctx, &args[2..]),
        Some("join") => crate::adapters::redis::membership::cluster_join(ctx, &args[2..]),
        _ => reply_error("ERR RAFT.CLUSTER supports INIT / JOIN only"),
    }
}

fn cluster_init(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if args.len() > 1 {
        return Err(RedisError::WrongArity);
    }
    if with_state(|state| state.node_state != NodeState::Uninitialized) {
        return reply_error("ERR Already cluster member");
    }
    let dbid = match args.first() {
        Some(given) => {
            let given = given.to_string_lossy();
            if given.len() != 32 {
                return reply_error("ERR cluster id must be 32 characters");
            }
            given
        }
        None => random_hex(16),
    };
    let keys_present = call_locally(ctx.ctx, &[b"DBSIZE".to_vec()], false)
        .map(|reply| reply.integer())
        .unwrap_or(0);
    if keys_present > 0 {
        return reply_error(
            "ERR the database is not empty: RAFT.CLUSTER INIT needs an empty dataset",
        );
    }
    // Before the log exists: a node that cannot talk to peers must not become a member.
    if let Err(message) = crate::adapters::redis::configs::peer_tls_from_server(ctx.ctx) {
        return reply_error(&format!("ERR {message}"));
    }
    let node_id = pick_node_id();
    let my_addr = state::my_addr(ctx.ctx);
    let meta = NodeMeta {
        dbid: dbid.clone(),
        node_id,
        bootstrap_voters: vec![node_id],
    };
    let log = LogFile::create(&log_path(), &meta).map_err(RedisError::String)?;
    with_state(|state| {
        state.removed = false;
        state::start_node(state, log, None, meta, None)?;
        // The first entry of every cluster names its first member and its address, so
        // nodes that replay the log later know where everyone is.
        let context = ChangeContext {
            origin: None,
            node_id,
            addr: my_addr,
            held_as_learner: false,
        };
        let change = single_change(ConfChangeType::AddNode, node_id);
        state
            .send_to_driver(DriverInput::ConfChange {
                request_id: None,
                change,
                context: context.encode(),
            })
            .map_err(str::to_string)
    })
    .map_err(RedisError::String)?;
    log::info!("raft: cluster {dbid} initialized, this node is {node_id}");
    Ok(RedisValue::SimpleString(format!("OK {dbid}")))
}

pub fn log_path() -> PathBuf {
    PathBuf::from(config().log_filename.clone())
}

/// `RAFT.DEBUG EXEC <cmd> [args]` runs a command on this node only, bypassing raft.
pub fn raft_debug(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let sub = args
        .get(1)
        .map(|a| a.to_string_lossy().to_ascii_lowercase());
    match sub.as_deref() {
        Some("exec") if args.len() >= 3 => {
            let flags = ffi::context_flags(ctx.ctx);
            let resp3 = flags & redis_module::raw::REDISMODULE_CTX_FLAGS_RESP3 != 0;
            // At the local clock, so TTLs read as anywhere else (not the shifted values).
            let answer = execute::run_debug(ctx.ctx, &args_to_argv(&args[2..]), resp3);
            ffi::reply_answer(ctx.ctx, &answer);
            Ok(RedisValue::NoReply)
        }
        Some("exec") => Err(RedisError::WrongArity),
        Some("used_node_ids") => Ok(RedisValue::Array(with_state(|state| {
            state
                .membership
                .used_ids()
                .map(|id| RedisValue::Integer(id as i64))
                .collect()
        }))),
        Some("compact") => {
            // `COMPACT <n>` with n != 0: answer at once, snapshot in the background.
            let background = match args.get(2) {
                None => false,
                Some(arg) => arg.parse_integer().map_err(|_| {
                    RedisError::Str("ERR RAFT.DEBUG COMPACT takes an integer (0: wait)")
                })? != 0,
            };
            crate::adapters::redis::snapshots::compact_now(ctx, background)
        }
        Some("commandspec") if args.len() >= 3 => {
            let words: Vec<Vec<u8>> = args[2..]
                .iter()
                .flat_map(|arg| {
                    arg.as_slice()
                        .split(|&b| b == b'|')
                        .map(<[u8]>::to_vec)
                        .collect::<Vec<_>>()
                })
                .collect();
            let slices: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            match with_table(|table| table.spec_flags(&slices)) {
                Some(flags) => Ok(RedisValue::Integer(i64::from(flags))),
                None => reply_error("ERR unknown command"),
            }
        }
        Some("commandspec") => Err(RedisError::WrongArity),
        Some("nodecfg") => crate::adapters::redis::membership::node_cfg(ctx, &args),
        // The replicated script registry EVALSHA runs from (tests compare it per node).
        Some("scripts") => Ok(RedisValue::Array(with_state(|state| {
            state
                .scripts
                .digests()
                .map(|sha| RedisValue::BulkString(sha.to_string()))
                .collect()
        }))),
        Some("commands") => Ok(RedisValue::Array(with_table(|table| {
            table
                .entries()
                .map(|(name, class)| {
                    RedisValue::Array(vec![
                        RedisValue::BulkString(name.to_string()),
                        RedisValue::SimpleStringStatic(class.as_str()),
                    ])
                })
                .collect()
        }))),
        _ => reply_error(
            "ERR RAFT.DEBUG supports EXEC / USED_NODE_IDS / COMPACT / COMMANDS / COMMANDSPEC / NODECFG / SCRIPTS",
        ),
    }
}

fn random_bytes(count: usize) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = vec![0u8; count];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("cannot read /dev/urandom");
    bytes
}

fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `raft.id` when set, else a random id.
pub fn pick_node_id() -> u64 {
    match config().id {
        0 => random_node_id(),
        configured => configured,
    }
}

/// Random id in 1..=i32::MAX, like RedisRaft (C) picks.
pub fn random_node_id() -> u64 {
    let bytes = random_bytes(4);
    let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff;
    u64::from(value.max(1))
}

pub fn random_u64() -> u64 {
    let bytes = random_bytes(8);
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Reads the server's `COMMAND` output into the command table.
pub fn build_command_table(ctx: RawCtx) -> Result<CommandTable, String> {
    let reply = call_locally(ctx, &[b"COMMAND".to_vec()], false)?;
    let mut infos = Vec::with_capacity(reply.len());
    for i in 0..reply.len() {
        if let Some(element) = reply.element(i) {
            infos.push(command_info(element));
        }
    }
    let ignored = config().ignored_commands.clone();
    Ok(CommandTable::new(infos, &ignored))
}

fn command_info(element: ffi::ReplyRef<'_>) -> CommandInfo {
    let text = |r: Option<ffi::ReplyRef<'_>>| {
        r.map(|r| String::from_utf8_lossy(r.bytes()).to_ascii_lowercase())
            .unwrap_or_default()
    };
    let name = text(element.element(0));
    let arity = element.element(1).map_or(0, |r| r.integer());
    let words = |index: usize| -> Vec<String> {
        element
            .element(index)
            .map(|list| (0..list.len()).map(|i| text(list.element(i))).collect())
            .unwrap_or_default()
    };
    let flags = words(2);
    // Redis 7 adds tips at 7 (older servers stop at 6).
    let tips = words(7);
    let subcommands = element
        .element(9)
        .map(|list| {
            (0..list.len())
                .filter_map(|i| list.element(i))
                .map(command_info)
                .collect()
        })
        .unwrap_or_default();
    CommandInfo {
        name,
        arity,
        flags,
        tips,
        subcommands,
    }
}

/// `INFO [sections]` as the server answers it, with `cluster_enabled:1` while this node is
/// a cluster member, so cluster-aware clients treat the raft cluster as a Redis Cluster.
pub fn info_command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = args_to_argv(&args[1..]);
    let reply = call_locally(ctx.ctx, &argv, false).map_err(RedisError::String)?;
    if reply.is_error() {
        ffi::reply_answer(ctx.ctx, &Answer::Reply(reply));
        return Ok(RedisValue::NoReply);
    }
    let mut text = String::from_utf8_lossy(reply.bytes()).into_owned();
    if with_state(|state| matches!(state.node_state, NodeState::Up | NodeState::Loading)) {
        text = text.replace("cluster_enabled:0", "cluster_enabled:1");
    }
    let resp3 = ffi::context_flags(ctx.ctx) & redis_module::raw::REDISMODULE_CTX_FLAGS_RESP3 != 0;
    if resp3 {
        // RESP3 clients get INFO as a verbatim string, as from the server itself.
        ffi::reply_answer(ctx.ctx, &Answer::Verbatim(text));
        return Ok(RedisValue::NoReply);
    }
    Ok(RedisValue::BulkString(text))
}
