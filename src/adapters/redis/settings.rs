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

// Another thread sees no config at all rather than a default that looks real.
const OFF_THE_MAIN_THREAD: &str = "raft config used off the Redis main thread or before load";

fn with_settings<R>(f: impl FnOnce(&mut Settings) -> R) -> R {
    SETTINGS.with(|settings| f(settings.borrow_mut().as_mut().expect(OFF_THE_MAIN_THREAD)))
}

/// Reads the config (reads may nest). `f` must not change it.
pub fn with_config<R>(f: impl FnOnce(&RaftConfig) -> R) -> R {
    SETTINGS.with(|settings| {
        f(&settings
            .borrow()
            .as_ref()
            .expect(OFF_THE_MAIN_THREAD)
            .config)
    })
}

/// A copy of the whole config (for starting a node or a helper thread).
pub fn config() -> RaftConfig {
    with_config(RaftConfig::clone)
}

pub fn replace_config(config: RaftConfig) {
    with_settings(|settings| settings.config = config);
}

pub fn identity_fixed() -> bool {
    SETTINGS.with(|settings| {
        settings
            .borrow()
            .as_ref()
            .expect(OFF_THE_MAIN_THREAD)
            .identity_fixed
    })
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
