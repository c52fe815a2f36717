//! Registers `raft.*` module configs with Redis; values and validation live in
//! `core::config::RaftConfig`, this file only moves strings across the border.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use redis_module::configuration::{
    register_string_configuration, ConfigurationContext, ConfigurationFlags, ConfigurationValue,
};
use redis_module::{Context, RedisError, RedisString};

use crate::core::config::{RaftConfig, ALL_KEYS, IMMUTABLE_AFTER_INIT};

/// Every config key, in registration order (the interface table's).
pub const CONFIG_KEYS: &[&str] = ALL_KEYS;

static CONFIG: LazyLock<Mutex<RaftConfig>> = LazyLock::new(|| Mutex::new(RaftConfig::default()));
/// Set once the node has run INIT or JOIN (or restarted as a member): identity is fixed.
static IDENTITY_FIXED: AtomicBool = AtomicBool::new(false);
/// Cross-field checks run only once every value from the command line has been applied,
/// so their order does not matter.
static LOADING_DONE: AtomicBool = AtomicBool::new(false);

pub fn config() -> MutexGuard<'static, RaftConfig> {
    CONFIG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn fix_identity() {
    IDENTITY_FIXED.store(true, Ordering::SeqCst);
}

pub fn release_identity() {
    IDENTITY_FIXED.store(false, Ordering::SeqCst);
}

/// Applies `key value` to a copy first, so a rejected value leaves the live config intact.
pub fn set_config(key: &str, value: &str) -> Result<(), String> {
    if IDENTITY_FIXED.load(Ordering::SeqCst) && IMMUTABLE_AFTER_INIT.contains(&key) {
        let current = config().get(key).unwrap_or_default();
        if current != value {
            return Err(
                "Configuration change is not allowed after init/join for this parameter".into(),
            );
        }
        return Ok(());
    }
    let mut candidate = config().clone();
    candidate.set(key, value).map_err(|e| e.to_string())?;
    if LOADING_DONE.load(Ordering::SeqCst) {
        candidate.validate().map_err(|e| e.to_string())?;
    }
    if key == "loglevel" {
        log::set_max_level(candidate.loglevel.to_log_filter());
    }
    *config() = candidate;
    Ok(())
}

struct ConfigKey(&'static str);

impl ConfigurationValue<RedisString> for ConfigKey {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create(None, config().get(self.0).unwrap_or_default().as_str())
    }

    fn set(&self, _ctx: &ConfigurationContext, value: RedisString) -> Result<(), RedisError> {
        let value = value.try_as_str()?;
        set_config(self.0, value).map_err(RedisError::String)
    }
}

/// Registers every key; returns false (after logging) if a value given at load is invalid.
pub fn register(ctx: &Context, module_args: &[RedisString]) -> Result<(), String> {
    let defaults = RaftConfig::default();
    for key in CONFIG_KEYS {
        let flags = if *key == "cluster-password" {
            ConfigurationFlags::SENSITIVE
        } else {
            ConfigurationFlags::DEFAULT
        };
        let default = defaults.get(key).unwrap_or_default();
        let variable: &'static ConfigKey = Box::leak(Box::new(ConfigKey(key)));
        register_string_configuration(ctx, key, variable, &default, flags, None);
    }
    if !super::ffi::load_configs(ctx.ctx) {
        return Err("a raft.* config value was refused (see the line above)".into());
    }
    // RedisRaft (C) compatibility: `--loadmodule redisraft.so key value ...`.
    let args: Vec<String> = module_args
        .iter()
        .map(|arg| arg.try_as_str().map(str::to_string))
        .collect::<Result<_, _>>()
        .map_err(|_| "module arguments must be UTF-8".to_string())?;
    if !args.len().is_multiple_of(2) {
        return Err("module arguments must be key value pairs".into());
    }
    for pair in args.chunks(2) {
        let key = pair[0].trim_start_matches("raft.").to_string();
        if !CONFIG_KEYS.contains(&key.as_str()) {
            return Err(format!("unknown config raft.{key}"));
        }
        set_config(&key, &pair[1])?;
    }
    LOADING_DONE.store(true, Ordering::SeqCst);
    let config = config();
    config.validate().map_err(|e| e.to_string())?;
    log::set_max_level(config.loglevel.to_log_filter());
    Ok(())
}
