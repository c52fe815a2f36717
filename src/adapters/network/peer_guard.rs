//! Refusals of peer traffic (on the peer listener or the internal commands on the Redis
//! port) are counted and logged, at most one line per peer per `LOG_WINDOW_MS`. The
//! decisions are the pure `core::peer_check`; the caller check of the internal commands is
//! `redis::membership::check_peer_caller`. See `docs/SECURITY.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use crate::core::peer_check::RateLimiter;

/// One log line per peer (and reason) per window.
pub const LOG_WINDOW_MS: u64 = 5_000;
/// Peers (or users) remembered by the limiter; refusals beyond that are not logged.
const LOG_MAX_KEYS: usize = 256;

/// Peer messages and internal commands refused (INFO `raft_peer_messages_refused`).
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);
static LIMITER: LazyLock<Mutex<RateLimiter<String>>> =
    LazyLock::new(|| Mutex::new(RateLimiter::new(LOG_WINDOW_MS, LOG_MAX_KEYS)));

/// Counts a refusal and logs `line()` unless a line for `key` was written less than
/// `LOG_WINDOW_MS` ago. `line` must never contain a secret.
pub fn refused(key: String, line: impl FnOnce() -> String) {
    REFUSED.fetch_add(1, Ordering::Relaxed);
    log_limited(key, log::Level::Warn, line);
}

/// Logs `line()` at `level`, rate-limited per `key` like refusals.
pub fn log_limited(key: String, level: log::Level, line: impl FnOnce() -> String) {
    let now_ms = STARTED.elapsed().as_millis() as u64;
    let admitted = LIMITER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(&key, now_ms);
    if let Some(held_back) = admitted {
        let line = line();
        if held_back > 0 {
            log::log!(
                level,
                "raft: {line} ({held_back} similar lines held back in the last {}s)",
                LOG_WINDOW_MS / 1000
            );
        } else {
            log::log!(level, "raft: {line}");
        }
    }
}
