//! Registers `raft.*` module configs with Redis; values and validation live in
//! `core::config::RaftConfig`, this file only moves strings across the border.

use std::cell::Cell;

use redis_module::configuration::{
    register_enum_configuration, register_string_configuration, ConfigurationContext,
    ConfigurationFlags, ConfigurationValue,
};
use redis_module::{Context, EnumConfigurationValue, RedisError, RedisString};

use crate::adapters::ffi::{self, RawCtx};
use crate::adapters::network::tls::{peer_configs, ClientAuth, PeerTlsConfigs, TlsFiles};
use crate::adapters::redis::settings::{self, config, identity_fixed, with_config};
use crate::adapters::redis::state::server_config;
use crate::core::config::{
    parse_bool, RaftConfig, TraceFlags, ALL_KEYS, AT_NODE_START_KEYS, DRIVER_LIVE_KEYS,
    HIDDEN_KEYS, IMMUTABLE_AFTER_INIT,
};

/// Every config key, in registration order (the interface table's).
pub const CONFIG_KEYS: &[&str] = ALL_KEYS;

// Facts of the registration, on the main thread like the config.
thread_local! {
    /// Cross-field checks run only once every value from the command line has been
    /// applied, so their order does not matter.
    static LOADING_DONE: Cell<bool> = const { Cell::new(false) };
    /// Whether the server has TLS (a `tls-port` config); learnt at load, before any value.
    static SERVER_HAS_TLS: Cell<bool> = const { Cell::new(true) };
}

/// What `raft.tls-enabled yes` answers on a server built without TLS.
pub const ERR_NO_TLS: &str =
    "Build RedisRaft with TLS (and run it on a server built with TLS) to enable TLS";

/// Applies `key value` to a copy first, so a rejected value leaves the live config intact.
pub fn set_config(key: &str, value: &str) -> Result<(), String> {
    if identity_fixed() && IMMUTABLE_AFTER_INIT.contains(&key) {
        let current = with_config(|config| config.get(key).unwrap_or_default());
        if current != value {
            return Err(
                "Configuration change is not allowed after init/join for this parameter".into(),
            );
        }
        return Ok(());
    }
    if key == "tls-enabled" && !SERVER_HAS_TLS.get() && parse_bool(key, value).unwrap_or(false) {
        return Err(ERR_NO_TLS.into());
    }
    let mut candidate = config();
    candidate.set(key, value).map_err(|e| e.to_string())?;
    candidate.validate().map_err(|e| e.to_string())?;
    if LOADING_DONE.get() {
        log_warnings(&candidate);
    }
    if key == "loglevel" {
        log::set_max_level(candidate.loglevel.to_log_filter());
    }
    if key == "ignored-commands" {
        // The command filter reads them from the table, not from this config.
        let ignored = candidate.ignored_commands.clone();
        crate::adapters::redis::state::update_table(|table| table.with_ignored(&ignored));
    }
    let driver_settings = candidate.driver_settings();
    settings::replace_config(candidate);
    if DRIVER_LIVE_KEYS.contains(&key) {
        crate::adapters::redis::state::driver_settings_changed(driver_settings);
    } else if identity_fixed() && AT_NODE_START_KEYS.contains(&key) {
        log::info!(
            "raft: raft.{key} changed; this running node keeps the value it started with \
             until it next starts (INIT, JOIN or restart)"
        );
    }
    Ok(())
}

/// Cross-key combinations raft resolves rather than refuses (see `RaftConfig::warnings`).
fn log_warnings(config: &RaftConfig) {
    for warning in config.warnings() {
        log::warn!("raft: {warning}");
    }
}

struct ConfigKey(&'static str);

/// `raft.trace` as Redis sees it: a bit-flag enum config (`CONFIG SET raft.trace "node conn"`).
#[derive(Clone, Copy)]
struct TraceValue(i32);

impl TryFrom<i32> for TraceValue {
    type Error = RedisError;

    fn try_from(bits: i32) -> Result<Self, Self::Error> {
        if bits < 0 || bits as u32 & !TraceFlags::ALL.0 != 0 {
            return Err(RedisError::String(format!("invalid trace flags {bits}")));
        }
        Ok(TraceValue(bits))
    }
}

impl From<TraceValue> for i32 {
    fn from(value: TraceValue) -> i32 {
        value.0
    }
}

impl EnumConfigurationValue for TraceValue {
    fn get_options(&self) -> (Vec<String>, Vec<i32>) {
        TraceFlags::names_and_values()
            .into_iter()
            .map(|(name, bits)| (name.to_string(), bits as i32))
            .unzip()
    }
}

struct TraceKey;

impl ConfigurationValue<TraceValue> for TraceKey {
    fn get(&self, _ctx: &ConfigurationContext) -> TraceValue {
        TraceValue(with_config(|config| config.trace.0 as i32))
    }

    fn set(&self, _ctx: &ConfigurationContext, value: TraceValue) -> Result<(), RedisError> {
        set_config("trace", &TraceFlags(value.0 as u32).to_string()).map_err(RedisError::String)
    }
}

impl ConfigurationValue<RedisString> for ConfigKey {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        let value = with_config(|config| config.get(self.0).unwrap_or_default());
        RedisString::create(None, value.as_str())
    }

    fn set(&self, _ctx: &ConfigurationContext, value: RedisString) -> Result<(), RedisError> {
        let value = value.try_as_str()?;
        set_config(self.0, value).map_err(RedisError::String)
    }
}

/// Registers every key; returns false (after logging) if a value given at load is invalid.
pub fn register(ctx: &Context, module_args: &[RedisString]) -> Result<(), String> {
    // A server without TLS: no tls-port config, or (Valkey 9, which keeps the configs)
    // no OpenSSL in the process.
    let has_tls = !server_config(ctx.ctx, "tls-port").is_empty() && ffi::server_has_tls();
    SERVER_HAS_TLS.set(has_tls);
    let defaults = RaftConfig::default();
    settings::install(defaults.clone());
    for key in CONFIG_KEYS {
        let mut flags = if *key == "cluster-password" {
            ConfigurationFlags::SENSITIVE
        } else {
            ConfigurationFlags::DEFAULT
        };
        if HIDDEN_KEYS.contains(key) {
            flags |= ConfigurationFlags::HIDDEN;
        }
        if *key == "trace" {
            let default = TraceValue(defaults.trace.0 as i32);
            flags |= ConfigurationFlags::BITFLAGS;
            register_enum_configuration(ctx, key, &TraceKey, default, flags, None);
            continue;
        }
        let default = defaults.get(key).unwrap_or_default();
        let variable: &'static ConfigKey = Box::leak(Box::new(ConfigKey(key)));
        register_string_configuration(ctx, key, variable, &default, flags, None);
    }
    if !ffi::load_configs(ctx.ctx) {
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
    LOADING_DONE.set(true);
    let config = config();
    config.validate().map_err(|e| e.to_string())?;
    log::set_max_level(config.loglevel.to_log_filter());
    log_warnings(&config);
    Ok(())
}

/// The peer TLS configurations when `raft.tls-enabled` is on, from the server's `tls-*`
/// settings (the same files the server's own TLS port uses).
pub fn peer_tls_from_server(ctx: RawCtx) -> Result<Option<PeerTlsConfigs>, String> {
    if !with_config(|config| config.tls_enabled) {
        return Ok(None);
    }
    let setting = |name: &str| server_config(ctx, name);
    let files = TlsFiles {
        ca_cert_file: setting("tls-ca-cert-file"),
        ca_cert_dir: setting("tls-ca-cert-dir"),
        cert_file: setting("tls-cert-file"),
        key_file: setting("tls-key-file"),
        client_cert_file: setting("tls-client-cert-file"),
        client_key_file: setting("tls-client-key-file"),
    };
    let client_auth = ClientAuth::from_setting(&setting("tls-auth-clients"));
    peer_configs(&files, client_auth)
        .map(Some)
        .map_err(|e| format!("raft.tls-enabled: {e}"))
}
