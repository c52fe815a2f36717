//! The `raft.*` config as the Redis main thread holds it: a value the main thread owns
//! (Redis calls the config callbacks, the commands and the event loop on it), changed
//! only by `configs::set_config`. The raft thread gets its own copy (`DriverSettings`)
//! through its inbox; helper threads get the values they need when they start.

use std::cell::RefCell;
use std::path::PathBuf;

use crate::core::config::RaftConfig;

struct Settings {
    config: RaftConfig,
    /// Set once the node has run INIT or JOIN (or restarted as a member): identity is fixed.
    identity_fixed: bool,
}

thread_local! {
    /// `None` on every thread but the main one, after `install`.
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

/// Makes this thread (the main thread, at load) the owner of the config.
pub fn install(config: RaftConfig) {
    SETTINGS.with(|settings| {
        *settings.borrow_mut() = Some(Settings {
            config,
            identity_fixed: false,
        })
    });
}

fn with_settings<R>(f: impl FnOnce(&mut Settings) -> R) -> R {
    SETTINGS.with(|settings| {
        let mut settings = settings.borrow_mut();
        // Another thread sees no config at all rather than a default that looks real.
        f(settings
            .as_mut()
            .expect("raft config read off the Redis main thread or before load"))
    })
}

/// Reads the config. `f` must not change it (nor call anything that does).
pub fn with_config<R>(f: impl FnOnce(&RaftConfig) -> R) -> R {
    with_settings(|settings| f(&settings.config))
}

/// A copy of the whole config (for starting a node or a helper thread).
pub fn config() -> RaftConfig {
    with_config(RaftConfig::clone)
}

pub fn replace_config(config: RaftConfig) {
    with_settings(|settings| settings.config = config);
}

pub fn identity_fixed() -> bool {
    with_settings(|settings| settings.identity_fixed)
}

pub fn fix_identity() {
    with_settings(|settings| settings.identity_fixed = true);
}

pub fn release_identity() {
    with_settings(|settings| settings.identity_fixed = false);
}

/// `raft.log-filename`: the log file; snapshots and metadata sit next to it.
pub fn log_path() -> PathBuf {
    PathBuf::from(with_config(|config| config.log_filename.clone()))
}

/// `raft.log-delay-apply`: a test knob, the microseconds the main thread sleeps before
/// it applies each entry (as the original does). Read once per batch of entries.
pub fn apply_delay() -> Option<std::time::Duration> {
    let micros = with_config(|config| config.log_delay_apply_us);
    (micros > 0).then(|| std::time::Duration::from_micros(micros))
}
