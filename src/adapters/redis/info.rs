//! `INFO raft`: sections raft_general, raft_log, raft_snapshot, raft_clients, raft_stats
//! (Redis prefixes every field with `raft_`).

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::{InfoContext, RedisResult};

use crate::adapters::counters::{self, PEER_TRAFFIC, SNAPSHOTS_CREATED, SNAPSHOTS_RECEIVED};
use crate::adapters::raft_thread::driver::role_name;
use crate::adapters::redis::state::{with_state, NodeState};

pub fn raft_info(ctx: &InfoContext, _for_crash_report: bool) {
    if let Err(e) = build(ctx) {
        log::debug!("raft: INFO failed: {e}");
    }
}

struct NodeLine {
    id: u64,
    addr: String,
    voting: bool,
    connected: bool,
    last_conn_secs: u64,
    conn_errors: u64,
    conn_oks: u64,
}

fn build(ctx: &InfoContext) -> RedisResult<()> {
    let waiting_requests = with_state(|state| state.waiters.len());
    let (node_state, meta, applied, shared, lines, voting_nodes, is_voting) = with_state(|state| {
        let me = state.my_id();
        let stats = state
            .transport
            .as_ref()
            .map(|t| t.peer_stats())
            .unwrap_or_default();
        let lines: Vec<NodeLine> = state
            .membership
            .members()
            .map(|member| {
                let peer = stats.iter().find(|s| s.id == member.id);
                NodeLine {
                    id: member.id,
                    addr: member.addr.clone(),
                    voting: member.voting,
                    connected: member.id == me || peer.is_some_and(|p| p.connected),
                    last_conn_secs: peer.map_or(0, |p| p.last_conn_secs),
                    conn_errors: peer.map_or(0, |p| p.conn_errors),
                    conn_oks: peer.map_or(0, |p| p.conn_oks),
                }
            })
            .collect();
        let is_voting = state.membership.get(me).is_some_and(|m| m.voting);
        (
            state.node_state,
            state.meta.clone(),
            state.applied_index,
            state.shared.clone(),
            lines,
            state.membership.voting_count(),
            is_voting,
        )
    });
    let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
    let member = matches!(node_state, NodeState::Up | NodeState::Loading);
    let role = if member {
        role_name(shared.role.load(Ordering::Relaxed))
    } else {
        "-"
    };
    let leader_id = match load(&shared.leader_id) {
        0 => -1,
        id => id as i64,
    };
    let mut section = ctx
        .builder()
        .add_section("general")
        .field(
            "dbid",
            meta.as_ref().map(|m| m.dbid.clone()).unwrap_or_default(),
        )?
        .field("node_id", meta.as_ref().map_or(0, |m| m.node_id))?
        .field("state", node_state.as_str())?
        .field("role", role)?
        .field("is_voting", if is_voting { "yes" } else { "no" })?
        .field("leader_id", leader_id)?
        .field("current_term", load(&shared.term))?
        .field(
            "voted_for",
            match load(&shared.voted_for) {
                0 => -1,
                id => id as i64,
            },
        )?
        .field("num_nodes", lines.len() as u64)?
        .field("num_voting_nodes", voting_nodes as u64)?;
    for (position, line) in lines.iter().enumerate() {
        let (host, port) = line.addr.rsplit_once(':').unwrap_or((&line.addr, ""));
        section = section.field(
            &format!("node{position}"),
            format!(
                "id={},state={},voting={},addr={host},port={port},last_conn_secs={},conn_errors={},conn_oks={}",
                line.id,
                if line.connected { "connected" } else { "disconnected" },
                if line.voting { "yes" } else { "no" },
                line.last_conn_secs,
                line.conn_errors,
                line.conn_oks
            ),
        )?;
    }
    let snapshot = crate::adapters::redis::snapshots::current_info();
    let in_progress = crate::adapters::redis::snapshots::in_progress_position();
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
        .field("cache_entries", load(&shared.cache_entries))?
        .field("fsync_count", fsync_count)?
        .field("fsync_max_microseconds", load(&shared.fsync_max_us))?
        .field("fsync_avg_microseconds", fsync_avg_us)?
        .build_section()?
        .add_section("snapshot")
        .field("snapshot_last_idx", snapshot.index)?
        .field("snapshot_last_term", snapshot.term)?
        .field("snapshot_size", snapshot.size_bytes)?
        .field(
            "snapshot_time_secs",
            snapshot.age_secs.map_or(-1, |secs| secs as i64),
        )?
        .field("snapshots_created", load(&SNAPSHOTS_CREATED))?
        .field("snapshots_received", load(&SNAPSHOTS_RECEIVED))?
        .field(
            "snapshot_in_progress",
            if in_progress.is_some() { "yes" } else { "no" },
        )?
        .field(
            "snapshot_in_progress_last_idx",
            in_progress.map_or(-1, |(index, _)| index as i64),
        )?
        .field(
            "snapshot_in_progress_last_term",
            in_progress.map_or(-1, |(_, term)| term as i64),
        )?
        .build_section()?
        .add_section("clients")
        // The original's sessions are clients with WATCH state.
        .field(
            "num_sessions",
            crate::adapters::redis::watch::watching_count() as u64,
        )?
        .field("proxy_reqs", load(&counters::PROXY_REQS))?
        .field("proxy_failed_reqs", load(&counters::PROXY_FAILED_REQS))?
        .field(
            "proxy_outstanding_reqs",
            load(&counters::PROXY_OUTSTANDING_REQS),
        )?
        // Back-pressure: clients waiting on the log, and what holds them.
        .field("waiting_requests", waiting_requests as u64)?
        .field(
            "blocked_clients",
            crate::adapters::redis::blocking::parked_count() as u64,
        )?
        .field(
            "watching_clients",
            crate::adapters::redis::watch::watching_count() as u64,
        )?
        .field(
            "held_writes",
            crate::adapters::redis::watch::held_count() as u64,
        )?
        .field(
            "open_transactions",
            crate::adapters::redis::transactions::open_count() as u64,
        )?
        .build_section()?
        .add_section("stats")
        .field("appendreq_received", load(&PEER_TRAFFIC.appendreq_received))?
        .field(
            "appendreq_with_entry_received",
            load(&PEER_TRAFFIC.appendreq_with_entry_received),
        )?
        .field(
            "snapshotreq_received",
            load(&PEER_TRAFFIC.snapshotreq_received),
        )?
        .field(
            "peer_messages_refused",
            load(&crate::adapters::network::peer_guard::REFUSED),
        )?
        .build_section()?
        .build_info()?;
    Ok(())
}
