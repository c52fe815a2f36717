//! Main-thread side of the driver: applies committed entries in log order, answers the
//! blocked clients by request id, runs confirmed reads.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType};

use crate::adapters::ffi::{self, Answer};
use crate::adapters::raft_thread::driver::MainTask;
use crate::adapters::redis::state::{with_state, NodeState};
use crate::adapters::redis::{blocking, execute, migrate, sharding, watch};
use crate::core::entry::{Payload, FLAG_ASKING, FLAG_TRANSACTION};
use crate::core::membership::{Applied, ChangeContext};
use crate::core::pending::RequestId;

/// Bound on tasks handled per callback so clients are not starved during a long replay.
const MAX_TASKS_PER_WAKE: usize = 256;

/// Handles the raft thread's results (at most `MAX_TASKS_PER_WAKE`); true if more may
/// be queued. Registered with `main_jobs` at load.
pub fn run_driver_tasks() -> bool {
    for _ in 0..MAX_TASKS_PER_WAKE {
        let task = with_state(|state| state.from_driver.as_ref().and_then(|rx| rx.try_recv().ok()));
        let Some(task) = task else { return false };
        run_task(task);
    }
    true
}

fn run_task(task: MainTask) {
    match task {
        MainTask::Apply(entries) => {
            let delay = crate::adapters::redis::settings::apply_delay();
            for entry in entries {
                if let Some(delay) = delay {
                    std::thread::sleep(delay);
                }
                apply_entry(&entry);
                if with_state(|state| state.removed) {
                    leave_after_removal();
                    return;
                }
            }
            serve_confirmed_reads();
            finish_loading_if_caught_up();
            blocking::retry_touched();
            watch::progress();
        }
        MainTask::LeaveCluster => {
            if with_state(|state| state.node_state == crate::adapters::redis::state::NodeState::Up)
            {
                with_state(|state| state.removed = true);
                leave_after_removal();
            }
        }
        MainTask::TakeSnapshot => {
            if let Err(e) = crate::adapters::redis::snapshots::start(
                &crate::adapters::redis::settings::log_path(),
            ) {
                log::info!("raft: snapshot not started: {e}");
                let _ = with_state(|state| {
                    state.send_to_driver(
                        crate::adapters::raft_thread::driver::DriverInput::SnapshotFailed,
                    )
                });
            }
        }
        MainTask::InstallSnapshot { index, file } => install_snapshot(index, file),
        MainTask::Fail { request_ids, error } => {
            for request_id in request_ids {
                with_state(|state| state.writes_in_flight.remove(&request_id));
                answer(request_id, Answer::Error(error.to_string()));
            }
            watch::progress();
        }
        MainTask::ReadReady { request_ids, index } => {
            with_state(|state| {
                state
                    .confirmed_reads
                    .entry(index)
                    .or_default()
                    .extend(request_ids)
            });
            serve_confirmed_reads();
        }
    }
}

fn answer(request_id: RequestId, answer: Answer) {
    with_state(|state| state.answer_waiter(request_id, answer));
}

fn apply_entry(entry: &Entry) {
    let (apply_ctx, applied, me, incarnation) = with_state(|state| {
        let me = state.meta.as_ref().map_or(0, |meta| meta.node_id);
        (state.apply_ctx, state.applied_index, me, state.incarnation)
    });
    assert_eq!(
        entry.index,
        applied + 1,
        "raft: entries must be applied in order without gaps (applied {applied}, got {})",
        entry.index
    );
    if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
        let payload = Payload::decode(&entry.data).unwrap_or_else(|e| {
            // The entry passed its checksum, so this is a bug or a newer format: stop
            // rather than let this node's data silently differ from the others'.
            log::error!("raft: FATAL: entry {} cannot be decoded: {e}", entry.index);
            std::process::abort();
        });
        apply_payload(apply_ctx, payload, entry.term, me, incarnation);
    }
    if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
        apply_membership_change(entry, me, incarnation);
    }
    with_state(|state| {
        state.applied_index = entry.index;
        state.applied_term = entry.term;
    });
}

fn apply_payload(ctx: ffi::RawCtx, payload: Payload, term: u64, me: u64, incarnation: u64) {
    match payload {
        Payload::Commands {
            origin,
            time_ms,
            user,
            flags,
            commands,
        } => {
            let transaction = flags & FLAG_TRANSACTION != 0;
            let asking = flags & FLAG_ASKING != 0;
            let time_ms = note_entry_time(time_ms);
            let waiter_id = origin
                .filter(|o| o.node_id == me && o.incarnation == incarnation)
                .map(|o| o.request_id);
            let resp3 = waiter_id
                .and_then(|id| {
                    with_state(|state| {
                        state.writes_in_flight.remove(&id);
                        state.waiters.get(&id).map(|w| w.resp3)
                    })
                })
                .unwrap_or(false);
            let reply = match sharding::refuse_at_apply(ctx, &commands, time_ms, asking) {
                Some(refusal) => Answer::Error(refusal),
                None => {
                    let mut answers =
                        execute::apply_commands(ctx, time_ms, user.as_deref(), &commands, resp3);
                    if transaction {
                        Answer::Array(answers)
                    } else {
                        answers.pop().unwrap_or(Answer::Null)
                    }
                }
            };
            if let Some(id) = waiter_id {
                match with_state(|state| state.waiters.remove(&id)) {
                    Some(mut waiter) if blocking::should_park(&waiter, &reply) => {
                        let wait = waiter.blocking.take().expect("checked by should_park");
                        blocking::park(waiter, wait);
                    }
                    Some(waiter) => ffi::unblock(waiter.client, reply),
                    None => {}
                }
            }
        }
        Payload::ShardMap { origin, change } => {
            let reply = sharding::apply_change(&change);
            blocking::retry_all();
            let waiter = origin
                .filter(|o| o.node_id == me && o.incarnation == incarnation)
                .and_then(|o| with_state(|state| state.waiters.remove(&o.request_id)));
            if let Some(waiter) = waiter {
                ffi::unblock(waiter.client, reply);
            }
        }
        Payload::Migration {
            origin,
            time_ms,
            step,
        } => {
            note_entry_time(time_ms);
            migrate::apply_step(ctx, origin, step, term, (me, incarnation));
        }
        Payload::ExpireKeys { time_ms, keys } => {
            let time_ms = note_entry_time(time_ms);
            execute::apply_expired_keys(ctx, time_ms, &keys);
            with_state(|state| state.expire_in_flight_until_ms = 0);
        }
    }
}

/// The time the entry runs at (see `MainState::note_applied_time`).
fn note_entry_time(time_ms: i64) -> i64 {
    with_state(|state| state.note_applied_time(time_ms))
}

/// Loads the snapshot raft just installed, replacing the whole dataset.
fn install_snapshot(index: u64, file: std::fs::File) {
    let files = crate::adapters::disk::snapshot_files::SnapshotFiles::for_log(
        &crate::adapters::redis::settings::log_path(),
    );
    let (ctx, dbid) = with_state(|state| {
        (
            state.apply_ctx,
            state
                .meta
                .as_ref()
                .map(|m| m.dbid.clone())
                .unwrap_or_default(),
        )
    });
    watch::everything_modified();
    let snapshot =
        crate::adapters::redis::snapshots::load_into_server(ctx, file, &files.current, &dbid)
            .unwrap_or_else(|e| {
                log::error!("raft: FATAL: cannot load the installed snapshot: {e}");
                std::process::abort();
            });
    assert_eq!(
        snapshot.index, index,
        "the installed snapshot file changed under us"
    );
    with_state(|state| {
        state.applied_index = snapshot.index;
        state.applied_term = snapshot.term;
        state.note_snapshot_time(snapshot.applied_time_ms);
        state.membership = crate::adapters::disk::snapshot_files::members_of(&snapshot);
    });
    serve_confirmed_reads();
    finish_loading_if_caught_up();
}

fn apply_membership_change(entry: &Entry, me: u64, incarnation: u64) {
    let change = ConfChangeV2::parse_from_bytes(&entry.data).unwrap_or_else(|e| {
        log::error!(
            "raft: FATAL: conf change {} cannot be decoded: {e}",
            entry.index
        );
        std::process::abort();
    });
    let context = ChangeContext::decode(&entry.context).unwrap_or_else(|e| {
        log::error!(
            "raft: FATAL: conf change {} has a bad context: {e}",
            entry.index
        );
        std::process::abort();
    });
    let applied = with_state(|state| state.membership.apply(&change, &context));
    log::info!(
        "raft: membership change at index {}: {applied:?}",
        entry.index
    );
    if applied == (Applied::Removed { id: me }) {
        with_state(|state| {
            // A leader that removed itself leaves once it handed leadership over: the
            // driver sends LeaveCluster then.
            if !state.shared.handing_over.load(Ordering::SeqCst) {
                state.removed = true;
            }
        });
    }
    let waiter = context
        .origin
        .filter(|o| o.node_id == me && o.incarnation == incarnation)
        .and_then(|o| with_state(|state| state.waiters.remove(&o.request_id)));
    if let Some(waiter) = waiter {
        let reply = waiter.conf_reply.unwrap_or(Answer::Simple("OK".into()));
        ffi::unblock(waiter.client, reply);
    }
}

/// This node applied its own removal: it stops serving and keeps its log aside.
fn leave_after_removal() {
    let waiters = with_state(|state| state.leave_cluster("removed from the cluster"));
    for (waiter, answer) in waiters {
        ffi::unblock(waiter.client, answer);
    }
    let path = crate::adapters::redis::settings::log_path();
    let snapshot = crate::adapters::disk::snapshot_files::SnapshotFiles::for_log(&path).current;
    for file in [path, snapshot] {
        if !file.exists() {
            continue;
        }
        let aside = PathBuf::from(format!("{}.removed-{}", file.display(), std::process::id()));
        match std::fs::rename(&file, &aside) {
            Ok(()) => log::warn!(
                "raft: files of the removed node kept as {}",
                aside.display()
            ),
            Err(e) => log::warn!("raft: could not move {} aside: {e}", file.display()),
        }
    }
    crate::adapters::disk::snapshot_files::set_current_index(0);
}

/// Runs every confirmed read whose read index has been applied.
fn serve_confirmed_reads() {
    loop {
        let ready = with_state(|state| {
            let (&index, _) = state.confirmed_reads.first_key_value()?;
            if index > state.applied_index {
                return None;
            }
            let ids = state.confirmed_reads.remove(&index).unwrap_or_default();
            let reads: Vec<_> = ids
                .into_iter()
                .filter_map(|id| state.waiters.remove(&id))
                .collect();
            Some((state.apply_ctx, reads))
        });
        let Some((ctx, reads)) = ready else { return };
        for mut waiter in reads {
            let Some(argv) = waiter.read.take() else {
                ffi::unblock(
                    waiter.client,
                    Answer::Error("ERR internal: read without command".into()),
                );
                continue;
            };
            let now_ms = crate::adapters::redis::state::read_now_ms();
            let one = std::slice::from_ref(&argv);
            if let Some(refusal) = sharding::refuse_at_apply(ctx, one, now_ms, waiter.asking) {
                ffi::unblock(waiter.client, Answer::Error(refusal));
                continue;
            }
            if execute::reads_expired_key(ctx, &argv) {
                // Only the log may delete an expired key on every node alike.
                watch::propose(waiter, vec![argv], false);
                continue;
            }
            let answer = execute::run_read(ctx, &argv, waiter.user.as_deref(), waiter.resp3);
            ffi::unblock(waiter.client, answer);
        }
    }
}

fn finish_loading_if_caught_up() {
    with_state(|state| {
        if state.node_state == NodeState::Loading && state.applied_index >= state.loading_until {
            state.node_state = NodeState::Up;
            log::info!(
                "raft: loading done, {} entries applied",
                state.applied_index
            );
        }
    });
}
