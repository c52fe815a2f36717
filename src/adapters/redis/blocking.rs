//! Blocking list and sorted-set commands (BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP,
//! BZPOPMIN, BZPOPMAX, BZMPOP).
//!
//! The log decides every pop: each attempt is an ordinary entry, and applied through the
//! module API a blocking command never blocks (it answers null when there is nothing to
//! pop), so every node applies the same thing. Only the client's *wait* lives on the node
//! it talks to (the leader): when an attempt found nothing, the client stays blocked
//! there; when an applied entry touches one of its keys the attempt is proposed again,
//! and when its timeout passes the client gets Redis' null reply. If the node stops
//! leading, waiting clients get the redirect (`MOVED`/`CLUSTERDOWN`) and retry there.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int};

use redis_module::raw;

use crate::adapters::ffi::data::{self, Args};
use crate::adapters::ffi::{self, Answer, RawCtx};
use crate::adapters::redis::clock::wall_clock_ms;
use crate::adapters::redis::state::{Blocking, Waiter};

struct Parked {
    waiter: Waiter,
    blocking: Blocking,
}

/// Bound on parked clients: more are answered with an error instead of waiting.
const MAX_PARKED: usize = 100_000;

thread_local! {
    /// Parked clients, oldest first (Redis serves the longest-waiting client first).
    static PARKED: RefCell<Vec<Parked>> = const { RefCell::new(Vec::new()) };
    /// Keys written since the last retry, only collected while someone is parked.
    static TOUCHED: RefCell<HashSet<Vec<u8>>> = RefCell::new(HashSet::new());
}

fn lower(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

/// For a blocking command: its keys and deadline. `None` for other commands.
pub fn describe(ctx: RawCtx, argv: &[Vec<u8>]) -> Option<Blocking> {
    let first = argv.first()?;
    // Runs for every write: every blocking command starts with B.
    if !first.first()?.eq_ignore_ascii_case(&b'b') {
        return None;
    }
    let name = lower(first);
    let timeout_position = match name.as_slice() {
        b"blpop" | b"brpop" | b"bzpopmin" | b"bzpopmax" | b"brpoplpush" | b"blmove" => {
            argv.len().checked_sub(1)?
        }
        b"blmpop" | b"bzmpop" => 1,
        _ => return None,
    };
    // Redis rejects a bad timeout when the command is applied; then nobody waits.
    let timeout_s = std::str::from_utf8(argv.get(timeout_position)?)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .unwrap_or(0.0);
    // Past the deadline means after it (as Redis does): `now` is whole milliseconds, so
    // "at it" could answer up to 1 ms before the timeout the client asked for.
    let deadline_ms = if timeout_s == 0.0 {
        None
    } else {
        Some(wall_clock_ms().saturating_add((timeout_s * 1000.0) as i64))
    };
    let mut args = Args::new(argv);
    let keys = data::command_keys(ctx, &mut args)
        .into_iter()
        .filter_map(|position| argv.get(position).cloned())
        .collect();
    Some(Blocking {
        argv: argv.to_vec(),
        keys,
        deadline_ms,
    })
}

/// How long a follower waits for the leader's answer to a proxied command: a blocking
/// command may take its own timeout (forever for 0) before the leader answers.
pub fn proxy_timeout_ms(ctx: RawCtx, argv: &[Vec<u8>], response_timeout_ms: u64) -> u64 {
    /// "Forever", kept small enough for any timer to add to now.
    const FOREVER_MS: u64 = 30 * 24 * 3600 * 1000;
    match describe(ctx, argv) {
        None => response_timeout_ms,
        Some(Blocking {
            deadline_ms: None, ..
        }) => FOREVER_MS,
        Some(Blocking {
            deadline_ms: Some(deadline_ms),
            ..
        }) => {
            let wait_ms = u64::try_from(deadline_ms.saturating_sub(wall_clock_ms())).unwrap_or(0);
            wait_ms.saturating_add(response_timeout_ms).min(FOREVER_MS)
        }
    }
}

/// Redis' reply when the timeout passes.
fn null_reply(argv: &[Vec<u8>]) -> Answer {
    match lower(&argv[0]).as_slice() {
        b"brpoplpush" | b"blmove" => Answer::Null,
        _ => Answer::NullArray,
    }
}

/// An attempt found nothing: the client waits for its keys to change (unless its time
/// is already up).
pub fn park(waiter: Waiter, blocking: Blocking) {
    if waiter.client.is_gone() {
        // Disconnected or unblocked meanwhile: nobody waits any more (its handle is freed).
        ffi::unblock(waiter.client, null_reply(&blocking.argv));
        return;
    }
    if blocking
        .deadline_ms
        .is_some_and(|deadline| deadline < wall_clock_ms())
    {
        ffi::unblock(waiter.client, null_reply(&blocking.argv));
        return;
    }
    let full = PARKED.with(|parked| parked.borrow().len() >= MAX_PARKED);
    if full {
        ffi::unblock(
            waiter.client,
            Answer::Error("BUSY too many blocked clients, retry later".into()),
        );
        return;
    }
    PARKED.with(|parked| parked.borrow_mut().push(Parked { waiter, blocking }));
}

/// Redis ended a wait itself (`ffi::Cancel`): the client leaves the queue at once, so no
/// later entry pops an element for it, and a `CLIENT UNBLOCK` caller gets Redis' null
/// reply. A client whose attempt is in the log already cannot be recalled: that attempt is
/// applied everywhere, but the client is not parked again when it finds nothing.
pub fn cancel(key: ffi::ClientKey, _why: ffi::Cancel) -> Option<Answer> {
    let parked = PARKED.with(|parked| {
        let mut parked = parked.borrow_mut();
        let position = parked.iter().position(|p| p.waiter.client.key() == key)?;
        Some(parked.remove(position))
    });
    if let Some(Parked { waiter, blocking }) = parked {
        ffi::unblock(waiter.client, null_reply(&blocking.argv));
        return Some(null_reply(&blocking.argv));
    }
    // An attempt in the log: answered (and freed) when it is applied.
    crate::adapters::redis::state::with_state(|state| {
        let waiter = state.waiters.values().find(|w| w.client.key() == key)?;
        Some(
            waiter
                .blocking
                .as_ref()
                .map_or(Answer::NullArray, |blocking| null_reply(&blocking.argv)),
        )
    })
}

/// Keyspace events: remember which keys changed while clients are parked.
///
/// # Safety
/// Called by Redis on the main thread with a valid key string.
pub unsafe extern "C" fn on_keyspace_event(
    _ctx: RawCtx,
    _type: c_int,
    _event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    crate::adapters::redis::watch::key_modified(data::event_key(key));
    if PARKED.with(|parked| !parked.borrow().is_empty()) {
        let key = data::event_key(key).to_vec();
        TOUCHED.with(|touched| touched.borrow_mut().insert(key));
    }
    0
}

/// After applying entries: for each touched key, the longest-waiting client on it tries
/// again (through the log). A failed try parks it again at the back.
pub fn retry_touched() {
    let touched: HashSet<Vec<u8>> =
        TOUCHED.with(|touched| std::mem::take(&mut *touched.borrow_mut()));
    if touched.is_empty() {
        return;
    }
    let mut served_keys = HashSet::new();
    let ready: Vec<Parked> = PARKED.with(|parked| {
        let mut parked = parked.borrow_mut();
        let mut ready = Vec::new();
        let mut index = 0;
        while index < parked.len() {
            let wanted = parked[index]
                .blocking
                .keys
                .iter()
                .find(|key| touched.contains(*key) && !served_keys.contains(*key))
                .cloned();
            match wanted {
                Some(key) => {
                    served_keys.insert(key);
                    ready.push(parked.remove(index));
                }
                None => index += 1,
            }
        }
        ready
    });
    retry(ready);
}

/// The shard map changed: every wait is tried again, so one whose slot is no longer
/// served here as it was gets its redirect (`MOVED` / `ASK`) when the retry is applied,
/// as Redis Cluster redirects blocked clients when a slot moves.
pub fn retry_all() {
    let all: Vec<Parked> = PARKED.with(|parked| parked.borrow_mut().drain(..).collect());
    retry(all);
}

fn retry(ready: Vec<Parked>) {
    for Parked {
        mut waiter,
        blocking,
    } in ready
    {
        match crate::adapters::redis::proposals::check_can_serve() {
            Ok(()) => {
                let argv = blocking.argv.clone();
                waiter.blocking = Some(blocking);
                crate::adapters::redis::watch::propose(waiter, vec![argv], false);
            }
            // No leader known yet: keep waiting; `expire_waits` redirects or times out.
            Err(message) if message.starts_with("CLUSTERDOWN") => PARKED.with(|parked| {
                parked.borrow_mut().push(Parked { waiter, blocking });
            }),
            Err(message) => ffi::unblock(waiter.client, Answer::Error(message)),
        }
    }
}

/// Periodic: answers clients whose timeout passed, and redirects every waiting client
/// once this node cannot serve (it stopped leading).
pub fn expire_waits() {
    let now_ms = wall_clock_ms();
    let serving = redirect_now(crate::adapters::redis::proposals::check_can_serve(), now_ms);
    let done: Vec<(Parked, Answer)> = PARKED.with(|parked| {
        let mut parked = parked.borrow_mut();
        let mut done = Vec::new();
        let mut index = 0;
        while index < parked.len() {
            let answer = match &serving {
                Err(message) => Some(Answer::Error(message.clone())),
                Ok(())
                    if parked[index]
                        .blocking
                        .deadline_ms
                        .is_some_and(|deadline| deadline < now_ms) =>
                {
                    Some(null_reply(&parked[index].blocking.argv))
                }
                Ok(()) => None,
            };
            match answer {
                Some(answer) => done.push((parked.remove(index), answer)),
                None => index += 1,
            }
        }
        done
    });
    for (parked, answer) in done {
        ffi::unblock(parked.waiter.client, answer);
    }
}

thread_local! {
    /// Since when this node has known no leader to send waiting clients to.
    static LEADERLESS_SINCE_MS: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// Whether waiting clients should be redirected now. Right after a node stops leading
/// (a transfer, an election) it usually does not know the new leader yet: `CLUSTERDOWN`
/// then would send clients away with nowhere to go, so they keep waiting for up to two
/// election timeouts for a `MOVED` to a known leader.
fn redirect_now(serving: Result<(), String>, now_ms: i64) -> Result<(), String> {
    let leaderless = matches!(&serving, Err(message) if message.starts_with("CLUSTERDOWN"));
    let since_ms = LEADERLESS_SINCE_MS.with(|since| {
        let value = if leaderless {
            Some(since.get().unwrap_or(now_ms))
        } else {
            None
        };
        since.set(value);
        value
    });
    match since_ms {
        Some(since_ms) => {
            let election_timeout_ms =
                crate::adapters::redis::state::with_state(|state| state.node_election_timeout_ms);
            let grace_ms = (election_timeout_ms * 2) as i64;
            if now_ms - since_ms < grace_ms {
                Ok(())
            } else {
                serving
            }
        }
        None => serving,
    }
}

/// Starts the periodic timeout check.
pub fn start(ctx: RawCtx) {
    ffi::set_cancel_handler(cancel);
    data::create_timer(ctx, CHECK_PERIOD_MS, on_timer);
}

/// How often waits are checked for their timeout: Redis' own granularity is similar.
const CHECK_PERIOD_MS: i64 = 20;

unsafe extern "C" fn on_timer(ctx: RawCtx, _data: *mut std::ffi::c_void) {
    expire_waits();
    crate::adapters::redis::watch::progress();
    data::create_timer(ctx, CHECK_PERIOD_MS, on_timer);
}

/// How many clients wait (INFO and tests).
pub fn parked_count() -> usize {
    PARKED.with(|parked| parked.borrow().len())
}

/// Whether `waiter` should wait rather than get this applied reply.
pub fn should_park(waiter: &Waiter, reply: &Answer) -> bool {
    waiter.blocking.is_some()
        && !waiter.client.is_gone()
        && matches!(reply, Answer::Reply(r) if r.is_null())
}
