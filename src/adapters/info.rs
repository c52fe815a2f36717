//! `INFO raft`: the raft_general and raft_log sections (fields get Redis' `raft_` prefix).

use std::sync::atomic::Ordering;

use redis_module::{InfoContext, RedisResult};

use crate::adapters::configs::config;
use crate::adapters::driver::role_name;
use crate::adapters::state::{with_state, NodeState};

pub fn raft_info(ctx: &InfoContext, _for_crash_report: bool) {
    if let Err(e) = build(ctx) {
        log::debug!("raft: INFO failed: {e}");
    }
}

fn build(ctx: &InfoContext) -> RedisResult<()> {
    let (node_state, meta, applied, shared) = with_state(|state| {
        (
            state.node_state,
            state.meta.clone(),
            state.applied_index,
            state.shared.clone(),
        )
    });
    let load = |value: &std::sync::atomic::AtomicU64| value.load(Ordering::Relaxed);
    let member = node_state != NodeState::Uninitialized;
    let role = if member {
        role_name(shared.role.load(Ordering::Relaxed))
    } else {
        "-"
    };
    let leader_id = match load(&shared.leader_id) {
        0 => -1,
        id => id as i64,
    };
    let addr = config()
        .addr
        .clone()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (host, port) = addr.rsplit_once(':').unwrap_or(("", ""));
    let node_id = meta.as_ref().map_or(0, |m| m.node_id);
    let num_nodes: u64 = if member { 1 } else { 0 };
    let mut section = ctx
        .builder()
        .add_section("general")
        .field(
            "dbid",
            meta.as_ref().map(|m| m.dbid.clone()).unwrap_or_default(),
        )?
        .field("node_id", node_id)?
        .field("state", node_state.as_str())?
        .field("role", role)?
        .field("is_voting", if member { "yes" } else { "no" })?
        .field("leader_id", leader_id)?
        .field("current_term", load(&shared.term))?
        .field("num_nodes", num_nodes)?
        .field("num_voting_nodes", num_nodes)?;
    if member {
        section = section.field(
            "node0",
            format!(
                "id={node_id},state=connected,voting=yes,addr={host},port={port},last_conn_secs=0,conn_errors=0,conn_oks=0"
            ),
        )?;
    }
    let fsync_count = load(&shared.fsync_count);
    let fsync_avg_us = load(&shared.fsync_total_us)
        .checked_div(fsync_count)
        .unwrap_or(0);
    section
        .build_section()?
        .add_section("log")
        .field("log_entries", load(&shared.log_entries))?
        .field("current_index", load(&shared.last_index))?
        .field("commit_index", load(&shared.commit_index))?
        .field("last_applied_index", applied)?
        .field("file_size", load(&shared.file_size))?
        .field("cache_memory_size", load(&shared.cache_bytes))?
        .field("cache_entries", load(&shared.log_entries))?
        .field("fsync_count", fsync_count)?
        .field("fsync_max_microseconds", load(&shared.fsync_max_us))?
        .field("fsync_avg_microseconds", fsync_avg_us)?
        .build_section()?
        .build_info()?;
    Ok(())
}
