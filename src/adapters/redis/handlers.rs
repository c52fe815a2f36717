//! Client-facing commands: the command filter that routes every command through `RAFT`,
//! and the `RAFT`, `RAFT.CLUSTER` and `RAFT.DEBUG` handlers.

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::disk::logio::LogFile;
use crate::adapters::ffi::{self, Answer, FilterCtx, RawCtx};
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::random_ids::{pick_node_id, random_hex};
use crate::adapters::redis::settings::{log_path, with_config};
use crate::adapters::redis::state::{self, call_locally, with_state, with_table, NodeState};
use crate::adapters::redis::submit::{
    self, acl_check, reply_error, run_here, submit, ERR_NOT_SUPPORTED,
};
use crate::adapters::redis::{execute, node_start, transactions};
use crate::core::commands::{
    arity_error, unknown_command_error, Class, CommandInfo, CommandTable, InScript,
};
use crate::core::entry::Argv;
use crate::core::logfile::NodeMeta;
use crate::core::membership::{single_change, ChangeContext};
use raft::eraftpb::ConfChangeType;

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
        submit::forget_unrestricted_users();
    }
    if argv[0].eq_ignore_ascii_case(b"migrate") && with_state(|s| s.shard_map.is_sharded()) {
        // Moves keys to the group importing their slot (`migrate`), not to the address.
        ffi::filter_prepend(fctx, b"RAFT.MIGRATE");
        return;
    }
    if argv[0].eq_ignore_ascii_case(b"asking") {
        // Redis refuses it outside cluster mode; a shard group takes it.
        ffi::filter_prepend(fctx, b"RAFT.ASKING");
        return;
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
    let my_addr = node_start::my_addr(ctx.ctx);
    let meta = NodeMeta {
        dbid: dbid.clone(),
        node_id,
        bootstrap_voters: vec![node_id],
    };
    let log = LogFile::create(&log_path(), &meta).map_err(RedisError::String)?;
    with_state(|state| {
        state.removed = false;
        node_start::start_node(state, log, None, meta, None)?;
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
            .map_err(str::to_string)?;
        if with_config(|config| config.sharding) {
            crate::adapters::redis::sharding::propose_local_slots(state, &dbid)
                .map_err(str::to_string)?;
        }
        Ok::<(), String>(())
    })
    .map_err(RedisError::String)?;
    log::info!("raft: cluster {dbid} initialized, this node is {node_id}");
    Ok(RedisValue::SimpleString(format!("OK {dbid}")))
}

/// `RAFT._SORT_REPLY <command> [args]`: the command's reply with its elements sorted (by
/// field/value pair for HGETALL), so its hash order cannot differ between nodes. What a
/// script's `SMEMBERS`, `KEYS`, `HGETALL` & co become; a client may send it too (the
/// original offers it), then it is a read like the command it wraps.
pub fn sort_reply_command(
    ctx: &redis_module::Context,
    args: Vec<redis_module::RedisString>,
) -> redis_module::RedisResult {
    if args.len() < 2 {
        return Err(redis_module::RedisError::WrongArity);
    }
    let argv: Vec<Vec<u8>> = args[1..].iter().map(|a| a.as_slice().to_vec()).collect();
    let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let (in_script, class, known) = with_table(|table| {
        (
            table.in_script(&slices),
            table.classify(&slices),
            table.knows(&slices),
        )
    });
    if !known {
        return Err(redis_module::RedisError::String(
            crate::core::commands::unknown_command_error(&slices),
        ));
    }
    if class != Class::Read {
        return Err(redis_module::RedisError::Str(
            "ERR RAFT._SORT_REPLY sorts the reply of a read command only",
        ));
    }
    if !crate::adapters::redis::state::is_applying() {
        // From a client: a read through raft like any other, which runs this again.
        let full: Vec<Vec<u8>> = args.iter().map(|a| a.as_slice().to_vec()).collect();
        let resp3 =
            ffi::context_flags(ctx.ctx) & redis_module::raw::REDISMODULE_CTX_FLAGS_RESP3 != 0;
        let user = submit::acl_check(ctx.ctx, &argv).map_err(redis_module::RedisError::String)?;
        return submit::submit(ctx.ctx, Class::Read, vec![full], false, resp3, user);
    }
    let pairs = matches!(in_script, InScript::Sorted { pairs: true });
    let reply = execute::call_outside_script(ctx.ctx, &argv);
    let reply = reply.map_err(redis_module::RedisError::String)?;
    if reply.is_error() {
        return Err(redis_module::RedisError::String(
            String::from_utf8_lossy(reply.bytes()).into_owned(),
        ));
    }
    let mut elements: Vec<Vec<u8>> = (0..reply.len())
        .filter_map(|i| reply.element(i).map(|e| e.bytes().to_vec()))
        .collect();
    if pairs {
        let mut by_pair: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(elements.len() / 2);
        let mut items = elements.into_iter();
        while let (Some(field), Some(value)) = (items.next(), items.next()) {
            by_pair.push((field, value));
        }
        by_pair.sort();
        elements = by_pair.into_iter().flat_map(|(f, v)| [f, v]).collect();
    } else {
        elements.sort();
    }
    let answer = Answer::Array(elements.into_iter().map(Answer::Bulk).collect());
    ffi::reply_answer(ctx.ctx, &answer);
    Ok(redis_module::RedisValue::NoReply)
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

/// Reads the server's `COMMAND` output into the command table.
pub fn build_command_table(ctx: RawCtx) -> Result<CommandTable, String> {
    let reply = call_locally(ctx, &[b"COMMAND".to_vec()], false)?;
    let mut infos = Vec::with_capacity(reply.len());
    for i in 0..reply.len() {
        if let Some(element) = reply.element(i) {
            infos.push(command_info(element));
        }
    }
    let ignored = with_config(|config| config.ignored_commands.clone());
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
