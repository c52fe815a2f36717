//! The leader's background expiry: it scans the keyspace a little at a time and proposes
//! the deletion of keys whose (logical) expiry has passed. Servers never expire keys on
//! their own here (see `core::expiry`), so this is what reclaims memory of keys nobody
//! touches again.

use std::cell::RefCell;
use std::ffi::c_void;

use crate::adapters::ffi::data::{self, ScanCursor};
use crate::adapters::ffi::RawCtx;
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::clock::wall_clock_ms;
use crate::adapters::redis::state::{call_locally, with_state, NodeState};
use crate::core::entry::Payload;
use crate::core::expiry;

const PERIOD_MS: i64 = 100;
/// Keys looked at per period: bounds the main-thread time a cycle takes.
const KEYS_VISITED_PER_CYCLE: usize = 2_000;
/// Keys deleted per entry: bounds the entry size.
const KEYS_PER_ENTRY: usize = 500;
/// A proposal that never came back (lost leadership) is retried after this.
const IN_FLIGHT_TIMEOUT_MS: i64 = 5_000;

thread_local! {
    static CURSOR: RefCell<Option<ScanCursor>> = const { RefCell::new(None) };
}

pub fn start(ctx: RawCtx) {
    data::create_timer(ctx, PERIOD_MS, on_timer);
}

unsafe extern "C" fn on_timer(ctx: RawCtx, _data: *mut c_void) {
    run_cycle(ctx);
    data::create_timer(ctx, PERIOD_MS, on_timer);
}

/// Redis counts keys with an expiry (`INFO keyspace`: `db0:keys=..,expires=N`); with
/// none there is nothing to scan for.
fn any_key_has_a_ttl(ctx: RawCtx) -> bool {
    let Ok(reply) = call_locally(ctx, &[b"INFO".to_vec(), b"keyspace".to_vec()], false) else {
        return true;
    };
    let text = String::from_utf8_lossy(reply.bytes());
    let expires = text
        .lines()
        .find(|line| line.starts_with("db0:"))
        .and_then(|line| {
            line.split(',')
                .find_map(|part| part.strip_prefix("expires="))
        })
        .and_then(|count| count.trim().parse::<u64>().ok());
    expires.unwrap_or(0) > 0
}

fn run_cycle(ctx: RawCtx) {
    let now_ms = wall_clock_ms();
    let due = with_state(|state| {
        state.node_state == NodeState::Up
            && state.is_leader_ready()
            && state.expire_in_flight_until_ms < now_ms
    });
    if !due || crate::adapters::redis::watch::barrier_up() || !any_key_has_a_ttl(ctx) {
        return;
    }
    // Expired as reads judge it (the applied entry time if the clock is behind it), so
    // the scan deletes what reads already treat as gone.
    let expired_at = crate::adapters::redis::state::read_now_ms();
    let expired = CURSOR.with(|cursor| {
        let mut cursor = cursor.borrow_mut();
        let scan = cursor.get_or_insert_with(ScanCursor::new);
        let mut visited = 0;
        let mut expired = Vec::new();
        loop {
            let more = data::scan_step(ctx, scan, |key, stored_expiry| {
                visited += 1;
                if expired.len() < KEYS_PER_ENTRY && expiry::is_expired(stored_expiry, expired_at) {
                    expired.push(key.to_vec());
                }
            });
            if !more {
                // The next cycle starts a new pass over the keyspace.
                *cursor = None;
                break;
            }
            if visited >= KEYS_VISITED_PER_CYCLE || expired.len() >= KEYS_PER_ENTRY {
                break;
            }
        }
        expired
    });
    if expired.is_empty() {
        return;
    }
    with_state(|state| {
        let payload = Payload::ExpireKeys {
            time_ms: state.next_entry_time_ms(),
            keys: expired,
        };
        let request_id = state.new_request_id();
        let sent = state.send_to_driver(DriverInput::Propose {
            request_id,
            data: payload.encode(),
        });
        if sent.is_ok() {
            state.expire_in_flight_until_ms = now_ms + IN_FLIGHT_TIMEOUT_MS;
        }
    });
}
