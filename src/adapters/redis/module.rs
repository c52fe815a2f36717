//! Module registration: name, commands, the filter, configs, server events, and boot.

use std::ffi::c_void;

use redis_module::{Context, InfoContext, RedisString, Status};

use crate::adapters::disk::{logio::LogFile, snapshot_files};
use crate::adapters::ffi;
use crate::adapters::redis::state::{self, call_locally, with_state, NodeState};
use crate::adapters::redis::{
    active_expiry, apply, blocking, configs, execute, handlers, info, main_jobs, membership,
    migrate, node_start, random_ids, settings, shard_links, sharding, snapshot_receive, snapshots,
    topology, transactions,
};

#[cfg(feature = "redis-alloc")]
#[global_allocator]
static MODULE_ALLOCATOR: redis_module::alloc::RedisAlloc = redis_module::alloc::RedisAlloc;
// Test binaries link this crate too and use the system allocator: Redis' aborts outside
// redis-server.

/// Commands the module registers: name, handler, Redis command flags.
pub const COMMANDS: &[ffi::CommandSpec] = &[
    ("raft", handlers::raft_command, ""),
    ("raft.cluster", handlers::raft_cluster, "admin"),
    ("raft.debug", handlers::raft_debug, "admin"),
    ("raft.node", membership::raft_node, "admin"),
    ("raft.transfer_leader", membership::transfer_leader, "admin"),
    ("raft.timeout_now", membership::timeout_now, "admin"),
    ("raft.nodeshutdown", membership::node_shutdown, "admin"),
    ("raft.msg", membership::raft_msg, "admin"),
    ("raft._peer_port", membership::peer_port, "admin fast"),
    ("raft._cluster", topology::cluster_command, ""),
    ("raft.shardgroup", shard_links::raft_shardgroup, "admin"),
    ("raft.asking", sharding::asking_command, "fast"),
    ("raft.migrate", migrate::migrate_command, "write"),
    ("raft.import", migrate::import_command, "write"),
    ("raft.scan", migrate::scan_command, "readonly"),
    ("raft._info", handlers::info_command, ""),
    ("raft._ttl", execute::ttl_command, "readonly fast"),
    ("raft._refused", execute::refused_command, "readonly fast"),
    (
        "raft._publish",
        execute::publish_in_script_command,
        "pubsub fast",
    ),
    (
        "raft._nokill",
        execute::kill_refused_command,
        "allow-busy fast",
    ),
    ("raft._sort_reply", handlers::sort_reply_command, "readonly"),
    (
        "raft.snapshot.chunk",
        snapshot_receive::receive_chunk,
        "admin",
    ),
    (
        "raft.snapshot.done",
        snapshot_receive::receive_done,
        "admin",
    ),
];

/// Called by `ffi::RedisModule_OnLoad` once the API is initialised and commands exist.
pub fn init(ctx: &Context, args: &[RedisString]) -> Status {
    match try_init(ctx, args) {
        Ok(()) => Status::Ok,
        Err(message) => {
            ctx.log_warning(&format!("raft: cannot load the module: {message}"));
            Status::Err
        }
    }
}

fn try_init(ctx: &Context, args: &[RedisString]) -> Result<(), String> {
    if redis_module::logging::setup().is_err() {
        ctx.log_warning("raft: could not install the logger; raft messages will be missing");
    }
    configs::register(ctx, args)?;
    state::init_state(ffi::detached_context(ctx.ctx), random_ids::random_u64());
    main_jobs::set_task_runner(apply::run_driver_tasks);
    state::set_table(handlers::build_command_table(ctx.ctx)?);
    if !ffi::register_command_filter(ctx.ctx, handlers::command_filter) {
        return Err("cannot register the command filter".into());
    }
    if !ffi::subscribe_server_event(
        ctx.ctx,
        redis_module::raw::REDISMODULE_EVENT_MODULE_CHANGE,
        on_module_change,
    ) {
        log::warn!(
            "raft: cannot watch module loads; commands of modules loaded later are not classified"
        );
    }
    if !ffi::subscribe_server_event(
        ctx.ctx,
        redis_module::raw::REDISMODULE_EVENT_CLIENT_CHANGE,
        on_client_change,
    ) {
        return Err("cannot watch client disconnections".into());
    }
    if !ffi::subscribe_server_event(
        ctx.ctx,
        redis_module::raw::REDISMODULE_EVENT_FLUSHDB,
        on_flush,
    ) {
        return Err("cannot watch FLUSHALL/FLUSHDB (needed by WATCH)".into());
    }
    // Driver inputs of one event-loop iteration travel together; without the event each
    // goes at once.
    state::hold_driver_inputs(ffi::subscribe_server_event(
        ctx.ctx,
        redis_module::raw::REDISMODULE_EVENT_EVENTLOOP,
        on_event_loop,
    ));
    active_expiry::start(ctx.ctx);
    shard_links::start(ctx.ctx);
    blocking::start(ctx.ctx);
    if !ffi::data::subscribe_keyspace_events(
        ctx.ctx,
        redis_module::raw::REDISMODULE_NOTIFY_ALL,
        blocking::on_keyspace_event,
    ) {
        return Err("cannot watch keyspace events (needed by blocking commands)".into());
    }
    let files = snapshot_files::SnapshotFiles::for_log(&settings::log_path());
    files.remove_leftovers();
    let cache_bytes = settings::with_config(|config| config.log_max_cache_size);
    let cache_bytes = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
    if let Some((log, recovered)) = LogFile::open(&settings::log_path(), cache_bytes)? {
        if files.current.exists() {
            // Check the snapshot belongs with this log before the server starts serving.
            let snapshot = snapshot_files::read_meta(&files.current)?;
            let dbid = recovered
                .meta
                .as_ref()
                .map(|m| m.dbid.clone())
                .unwrap_or_default();
            if snapshot.dbid != dbid {
                return Err(format!(
                    "snapshot {} belongs to cluster {} but the log to {dbid}: refusing to start",
                    files.current.display(),
                    snapshot.dbid
                ));
            }
            if let Some(point) = recovered.compacted.filter(|p| p.index > snapshot.index) {
                return Err(format!(
                    "the log is compacted up to index {} but snapshot {} only reaches {}: refusing to start",
                    point.index,
                    files.current.display(),
                    snapshot.index
                ));
            }
            snapshot_files::set_current_index(snapshot.index);
        } else if let Some(point) = recovered.compacted {
            return Err(format!(
                "the log is compacted up to index {} but its snapshot {} is missing: refusing to start",
                point.index,
                files.current.display()
            ));
        }
        with_state(|state| {
            state.node_state = NodeState::Loading;
            state.boot = Some((log, recovered));
        });
        // The server loads its RDB/AOF after modules: start once that is over.
        if !ffi::run_on_main_thread(boot_after_server_load) {
            return Err("cannot schedule the node start".into());
        }
    }
    Ok(())
}

/// Rebuilds the node from its log. Whatever the server loaded from RDB/AOF is discarded:
/// the raft log is this node's source of truth.
extern "C" fn boot_after_server_load(_: *mut c_void) {
    let ctx = with_state(|state| state.apply_ctx);
    let stale_keys = call_locally(ctx, &[b"DBSIZE".to_vec()], false).map_or(0, |r| r.integer());
    if stale_keys > 0 {
        log::warn!(
            "raft: discarding {stale_keys} keys loaded by the server; rebuilding from the raft log"
        );
        if let Err(e) = call_locally(ctx, &[b"FLUSHALL".to_vec(), b"SYNC".to_vec()], false) {
            log::error!("raft: FATAL: cannot flush the stale dataset: {e}");
            std::process::abort();
        }
    }
    let files = snapshot_files::SnapshotFiles::for_log(&settings::log_path());
    let started = with_state(|state| state.boot.take()).and_then(|(log, recovered)| {
        let meta = recovered.meta.clone()?;
        // Libraries the server loaded from its RDB are as stale as its keys: the
        // snapshot and the log bring back exactly the ones the cluster has.
        if let Err(e) = snapshots::flush_functions(ctx) {
            return Some(Err(e));
        }
        let snapshot = if files.current.exists() {
            match snapshot_files::open(&files.current)
                .and_then(|file| snapshots::load_into_server(ctx, file, &files.current, &meta.dbid))
            {
                Ok(snapshot) => Some(snapshot),
                Err(e) => return Some(Err(e)),
            }
        } else {
            None
        };
        Some(with_state(|state| {
            if let Some(snapshot) = &snapshot {
                state.membership = snapshot_files::members_of(snapshot);
            }
            node_start::start_node(state, log, Some(recovered), meta, snapshot.as_ref())
        }))
    });
    match started {
        Some(Ok(())) => log::info!("raft: node restarted from its log"),
        Some(Err(e)) => {
            log::error!("raft: FATAL: cannot restart the node: {e}");
            std::process::abort();
        }
        None => {}
    }
}

extern "C" fn on_module_change(
    ctx: ffi::RawCtx,
    _event: redis_module::raw::RedisModuleEvent,
    _subevent: u64,
    _data: *mut c_void,
) {
    match handlers::build_command_table(ctx) {
        Ok(table) => state::set_table(table),
        Err(e) => log::warn!("raft: cannot rebuild the command table: {e}"),
    }
}

extern "C" fn on_flush(
    _ctx: ffi::RawCtx,
    _event: redis_module::raw::RedisModuleEvent,
    _subevent: u64,
    _data: *mut c_void,
) {
    crate::adapters::redis::watch::everything_modified();
}

extern "C" fn on_event_loop(
    _ctx: ffi::RawCtx,
    _event: redis_module::raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    if subevent == redis_module::raw::REDISMODULE_SUBEVENT_EVENTLOOP_BEFORE_SLEEP {
        state::with_state(|state| state.flush_to_driver());
    }
}

extern "C" fn on_client_change(
    _ctx: ffi::RawCtx,
    _event: redis_module::raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    if subevent == redis_module::raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED {
        let client = ffi::data::client_change_id(data);
        transactions::forget(client);
        sharding::forget_client(client);
    }
}

pub fn info_handler(ctx: &InfoContext, for_crash_report: bool) {
    info::raft_info(ctx, for_crash_report);
}
