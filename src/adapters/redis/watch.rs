//! WATCH: optimistic locking with Redis' semantics (EXEC fails if a watched key was
//! modified after WATCH), decided by the leader.
//!
//! The leader serves WATCH and learns of every modification through keyspace events as
//! it applies entries, so a watched key touched by any entry applied after WATCH marks
//! the client dirty. An entry still in the leader's log but not yet applied would be
//! applied before an EXEC proposed now, unnoticed: so an EXEC with watches waits for a
//! quiet point — every entry in the log applied, no write of this node in flight — and
//! new writes are held back meanwhile (the barrier), so the quiet point comes within a
//! commit round trip. At that point a clean watch means no entry before the EXEC's touched
//! the keys; the EXEC entry then goes to the log like any transaction. If the leader
//! loses leadership, that entry either commits right after what it checked (log
//! matching) or is lost (the client gets TIMEOUT, as for any write). Clients that were
//! watching on a node that stops leading get MOVED at EXEC and retry on the new leader.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;

use crate::adapters::ffi::{self, Answer, BlockedClient};
use crate::adapters::redis::proposals;
use crate::adapters::redis::state::{with_state, Waiter};
use crate::core::entry::Argv;

#[derive(Default)]
struct Watching {
    keys: HashSet<Vec<u8>>,
    /// A watched key was modified (or the dataset replaced) since WATCH.
    dirty: bool,
}

struct PendingExec {
    client: u64,
    blocked: BlockedClient,
    commands: Vec<Argv>,
    resp3: bool,
    user: Option<String>,
}

/// Writes held back while an EXEC waits for its quiet point.
struct HeldWrite {
    waiter: Waiter,
    commands: Vec<Argv>,
    transaction: bool,
}

/// Bound on writes held behind the barrier; beyond it clients are told to retry.
const MAX_HELD_WRITES: usize = 100_000;

#[derive(Default)]
struct WatchState {
    clients: HashMap<u64, Watching>,
    /// Watched key → clients watching it.
    watchers: HashMap<Vec<u8>, HashSet<u64>>,
    pending: VecDeque<PendingExec>,
    held: VecDeque<HeldWrite>,
}

thread_local! {
    static STATE: RefCell<WatchState> = RefCell::new(WatchState::default());
}

/// `WATCH key [key ...]` outside MULTI.
pub fn watch(client: u64, keys: &[Vec<u8>]) -> Result<(), String> {
    proposals::check_can_serve()?;
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let watching = state.clients.entry(client).or_default();
        let new: Vec<Vec<u8>> = keys
            .iter()
            .filter(|key| watching.keys.insert((*key).clone()))
            .cloned()
            .collect();
        for key in new {
            state.watchers.entry(key).or_default().insert(client);
        }
    });
    Ok(())
}

/// UNWATCH, DISCARD, EXEC and disconnection forget the client's watches.
pub fn unwatch(client: u64) {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let Some(watching) = state.clients.remove(&client) else {
            return;
        };
        for key in watching.keys {
            if let Some(clients) = state.watchers.get_mut(&key) {
                clients.remove(&client);
                if clients.is_empty() {
                    state.watchers.remove(&key);
                }
            }
        }
    });
}

pub fn is_watching(client: u64) -> bool {
    STATE.with(|state| state.borrow().clients.contains_key(&client))
}

/// A key was modified on this node (keyspace event).
pub fn key_modified(key: &[u8]) {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        if state.watchers.is_empty() {
            return;
        }
        let Some(clients) = state.watchers.get(key).cloned() else {
            return;
        };
        for client in clients {
            if let Some(watching) = state.clients.get_mut(&client) {
                watching.dirty = true;
            }
        }
    });
}

/// The whole dataset changed (FLUSHALL, snapshot installed): every watch is dirty.
pub fn everything_modified() {
    STATE.with(|state| {
        for watching in state.borrow_mut().clients.values_mut() {
            watching.dirty = true;
        }
    });
}

/// EXEC of a client with watches: answered null if dirty, else queued for the quiet point.
pub fn exec(
    ctx: ffi::RawCtx,
    client: u64,
    commands: Vec<Argv>,
    resp3: bool,
    user: Option<String>,
) -> redis_module::RedisResult {
    let dirty = STATE.with(|state| state.borrow().clients.get(&client).is_some_and(|w| w.dirty));
    if dirty || watched_key_expired(ctx, client, crate::adapters::redis::state::read_now_ms()) {
        unwatch(client);
        ffi::reply_answer(ctx, &Answer::NullArray);
        return Ok(redis_module::RedisValue::NoReply);
    }
    if let Err(message) = proposals::check_can_serve() {
        unwatch(client);
        return Err(redis_module::RedisError::String(message));
    }
    if commands.is_empty() {
        unwatch(client);
        return Ok(redis_module::RedisValue::Array(Vec::new()));
    }
    let blocked = ffi::block_client(ctx);
    STATE.with(|state| {
        state.borrow_mut().pending.push_back(PendingExec {
            client,
            blocked,
            commands,
            resp3,
            user,
        })
    });
    progress();
    Ok(redis_module::RedisValue::NoReply)
}

/// A watched key whose time passed by `now_ms` counts as modified (Redis 7 does the same).
fn watched_key_expired(ctx: ffi::RawCtx, client: u64, now_ms: i64) -> bool {
    let keys: Vec<Vec<u8>> = STATE.with(|state| {
        state
            .borrow()
            .clients
            .get(&client)
            .map(|w| w.keys.iter().cloned().collect())
            .unwrap_or_default()
    });
    keys.iter().any(|key| {
        crate::core::expiry::is_expired(ffi::data::key_expiry(ctx, key).flatten(), now_ms)
    })
}

/// A new write while an EXEC waits for its quiet point is kept and sent later (`None`);
/// otherwise it is given back to be sent now.
fn hold_if_barrier(
    waiter: Waiter,
    commands: Vec<Argv>,
    transaction: bool,
) -> Option<(Waiter, Vec<Argv>, bool)> {
    let barrier = STATE.with(|state| !state.borrow().pending.is_empty());
    if !barrier {
        return Some((waiter, commands, transaction));
    }
    let full = STATE.with(|state| state.borrow().held.len() >= MAX_HELD_WRITES);
    if full {
        ffi::unblock(
            waiter.client,
            Answer::Error("BUSY raft request queue is full, retry later".into()),
        );
        return None;
    }
    STATE.with(|state| {
        state.borrow_mut().held.push_back(HeldWrite {
            waiter,
            commands,
            transaction,
        })
    });
    None
}

/// Proposes commands as one entry; the waiter is answered when it is applied. Held back
/// while an EXEC with WATCH waits for its quiet point (see `watch`).
pub fn propose(waiter: Waiter, commands: Vec<Argv>, transaction: bool) {
    if let Some((waiter, commands, transaction)) = hold_if_barrier(waiter, commands, transaction) {
        proposals::send_proposal(waiter, commands, transaction);
    }
}

/// Whether the active expiry may propose now (not while an EXEC waits).
pub fn barrier_up() -> bool {
    STATE.with(|state| !state.borrow().pending.is_empty())
}

/// Called after applies, failures and periodically: proposes the next waiting EXEC once
/// the node is quiet, then releases held writes when no EXEC waits.
pub fn progress() {
    loop {
        let has_pending = STATE.with(|state| !state.borrow().pending.is_empty());
        if !has_pending {
            break;
        }
        if let Err(message) = proposals::check_can_serve() {
            let pending: Vec<PendingExec> =
                STATE.with(|state| state.borrow_mut().pending.drain(..).collect());
            for exec in pending {
                unwatch(exec.client);
                ffi::unblock(exec.blocked, Answer::Error(message.clone()));
            }
            break;
        }
        if !is_quiet() {
            return;
        }
        let Some(exec) = STATE.with(|state| state.borrow_mut().pending.pop_front()) else {
            break;
        };
        let dirty = STATE.with(|state| {
            state
                .borrow()
                .clients
                .get(&exec.client)
                .is_some_and(|w| w.dirty)
        });
        // The EXEC runs at its entry's time, which can be well after it arrived (it
        // waited for the quiet point): a watched key expired by then was modified before
        // the EXEC, as Redis would see it at EXEC, so it is judged at that very time.
        let (ctx, time_ms) = with_state(|state| (state.apply_ctx, state.next_entry_time_ms()));
        let expired = !dirty && watched_key_expired(ctx, exec.client, time_ms);
        unwatch(exec.client);
        if dirty || expired {
            ffi::unblock(exec.blocked, Answer::NullArray);
            continue;
        }
        let waiter = Waiter {
            client: exec.blocked,
            resp3: exec.resp3,
            read: None,
            conf_reply: None,
            user: exec.user,
            blocking: None,
            asking: false,
        };
        // The next EXEC must see this one applied first: the loop waits for quiet again.
        proposals::send_proposal_at(waiter, exec.commands, true, Some(time_ms));
    }
    let held: Vec<HeldWrite> = STATE.with(|state| state.borrow_mut().held.drain(..).collect());
    for write in held {
        proposals::send_proposal(write.waiter, write.commands, write.transaction);
    }
}

/// Every entry in the log applied and no write of this node in flight.
fn is_quiet() -> bool {
    with_state(|state| {
        let no_writes = state.writes_in_flight.is_empty();
        let ready = state.is_leader_ready();
        let commit = state.shared.commit_index.load(Ordering::Acquire);
        let last = state.shared.last_index.load(Ordering::Acquire);
        no_writes
            && ready
            && state.applied_index >= commit.max(last)
            && state.expire_in_flight_until_ms < crate::adapters::redis::clock::wall_clock_ms()
    })
}

/// Clients with watches (INFO).
pub fn watching_count() -> usize {
    STATE.with(|state| state.borrow().clients.len())
}

/// Writes held behind a waiting EXEC (INFO).
pub fn held_count() -> usize {
    STATE.with(|state| state.borrow().held.len())
}
