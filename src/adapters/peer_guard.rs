//! The gates in front of the internal peer commands (`RAFT.MSG`, `RAFT.SNAPSHOT.CHUNK`,
//! `RAFT.SNAPSHOT.DONE`): only the cluster user may call them, only this cluster's members
//! may send through them, and every refusal is counted and logged, at most one line per
//! peer per `LOG_WINDOW_MS`. Decisions are the pure `core::peer_check`; see
//! `docs/SECURITY.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use redis_module::RedisError;

use crate::adapters::configs::config;
use crate::adapters::ffi::{self, RawCtx};
use crate::core::peer_check::{check_peer_user, RateLimiter};

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

/// Internal peer commands are for the cluster user only (`raft.cluster-user` when
/// `raft.cluster-password` is set, else `default`): anyone else gets Redis' NOPERM.
pub fn check_caller(ctx: RawCtx, command: &str) -> Result<(), RedisError> {
    let user = ffi::data::current_user_name(ctx);
    let verdict = {
        let config = config();
        check_peer_user(
            user.as_deref(),
            &config.cluster_user,
            &config.cluster_password,
            command,
        )
    };
    verdict.map_err(|message| {
        let user = user.unwrap_or_default();
        let client = ffi::data::client_id(ctx);
        refused(format!("user:{user}"), || {
            format!("refused {command} from client {client} authenticated as user '{user}': only the cluster user may send peer messages")
        });
        RedisError::String(message)
    })
}
