//! Module configuration: values, defaults, parsing and validation.
//!
//! Keys are the contract names without the `raft.` prefix (`election-timeout`).
//! Each key is validated on its own (format and range): CONFIG SET changes one
//! key at a time, in any order, so a value in range is always accepted. Relations
//! between keys are warnings ([`RaftConfig::warnings`]) and are resolved where the
//! values are used ([`RaftConfig::heartbeat_ticks`], [`RaftConfig::election_ticks`]).

use std::fmt;
use std::str::FromStr;

/// Every configuration key, in the order of the interface table.
pub const ALL_KEYS: &[&str] = &[
    "id",
    "addr",
    "log-filename",
    "log-fsync",
    "periodic-interval",
    "request-timeout",
    "election-timeout",
    "connection-timeout",
    "response-timeout",
    "reconnect-interval",
    "join-timeout",
    "proxy-response-timeout",
    "follower-proxy",
    "quorum-reads",
    "log-max-file-size",
    "log-max-cache-size",
    "append-req-max-count",
    "append-req-max-size",
    "snapshot-req-max-count",
    "snapshot-req-max-size",
    "ignored-commands",
    "cluster-user",
    "cluster-password",
    "tls-enabled",
    "peer-port",
    "loglevel",
    "trace",
    "scan-size",
    "sharding",
    "external-sharding",
    "slot-config",
    "shardgroup-update-interval",
    "log-delay-apply",
    "log-disable-apply",
    "snapshot-delay",
    "snapshot-fail",
    "snapshot-disable",
    "snapshot-disable-load",
    "migration-debug",
];

/// The original's test knobs: registered hidden (`CONFIG GET *` does not list them,
/// `CONFIG GET raft.<name>` does), as RedisRaft (C) does.
pub const HIDDEN_KEYS: &[&str] = &[
    "log-delay-apply",
    "log-disable-apply",
    "snapshot-delay",
    "snapshot-fail",
    "snapshot-disable",
    "snapshot-disable-load",
    "migration-debug",
];

/// `peer-port 0` listens on the node's port plus this, as Redis Cluster's bus does.
pub const PEER_PORT_OFFSET: u16 = 10_000;

/// Highest hash slot (Redis Cluster has 16384).
pub const MAX_SLOT: u16 = 16383;

/// Keys that cannot change after `RAFT.CLUSTER INIT` / `JOIN`: they name this
/// node and its files, which the cluster and the disk already know.
/// `tls-enabled` is here because the transport is built once, when the node starts.
/// `peer-port` too: the listener is bound once, when the node starts.
pub const IMMUTABLE_AFTER_INIT: &[&str] = &[
    "id",
    "addr",
    "log-filename",
    "tls-enabled",
    "peer-port",
    // The log decides whether the cluster is sharded and which slots it started with.
    "sharding",
    "external-sharding",
    "slot-config",
];

/// Keys whose value must never appear in logs, INFO or [`RaftConfig::get`].
pub const SENSITIVE_KEYS: &[&str] = &["cluster-password"];

/// What [`RaftConfig::get`] returns instead of a non-empty sensitive value.
pub const HIDDEN_VALUE: &str = "(hidden)";

/// Largest node id: the C module and its users' scripts treat ids as 32-bit signed integers.
pub const MAX_NODE_ID: u64 = i32::MAX as u64;

/// Redis registers numeric module configs as `long long`, so no limit can exceed this.
const MAX_REDIS_NUMERIC: u64 = i64::MAX as u64;

const MIB: u64 = 1024 * 1024;

/// Longest `log-filename`: leaves room for suffixes the log adds within NAME_MAX (255).
pub const MAX_LOG_FILENAME_BYTES: usize = 200;

/// Inclusive `(key, min, max)` for every numeric key. Durations are milliseconds.
pub const LIMITS: &[(&str, u64, u64)] = &[
    // 0 asks for a random unused id at init/join.
    ("id", 0, MAX_NODE_ID),
    // The tick: at least 1 ms, and a tick of over a minute would make every timeout coarse.
    ("periodic-interval", 1, 60_000),
    // Heartbeat / retransmit; at least one tick (checked in validate), at most 10 minutes.
    ("request-timeout", 1, 600_000),
    // Must be > 0 so a leader can ever be elected; 10 minutes is already an outage.
    ("election-timeout", 1, 600_000),
    // Time to establish a peer connection.
    ("connection-timeout", 1, 600_000),
    // Time a peer has to answer one inter-node request.
    ("response-timeout", 1, 600_000),
    // Wait between reconnect attempts to a peer.
    ("reconnect-interval", 1, 600_000),
    // JOIN may legitimately wait for a slow cluster; a day bounds a forgotten JOIN.
    ("join-timeout", 1, 86_400_000),
    // Time a follower waits for the leader's reply to a proxied command.
    ("proxy-response-timeout", 1, 3_600_000),
    // Bytes of log that trigger a snapshot; tiny values are allowed (tests compact often).
    ("log-max-file-size", 1, MAX_REDIS_NUMERIC),
    // Bytes of entries kept in memory; any positive bound works, tiny ones only cost reads.
    ("log-max-cache-size", 1, MAX_REDIS_NUMERIC),
    // Append requests in flight per peer: 0 would never replicate.
    ("append-req-max-count", 1, 1024),
    // Bytes per append request; one entry is always sent even if larger. Redis' bulk limit is 512 MiB.
    ("append-req-max-size", 1, 512 * MIB),
    // Snapshot chunks in flight per peer: 0 would never transfer.
    ("snapshot-req-max-count", 1, 1024),
    // Bytes per snapshot chunk: 0 would never progress.
    ("snapshot-req-max-size", 1, 512 * MIB),
    // Keys per SCAN step of a (sharding) migration; the original's default is 1000.
    ("scan-size", 1, i32::MAX as u64),
    // How often a sharding node refreshes its shard groups.
    ("shardgroup-update-interval", 1, 86_400_000),
    // The raft thread's peer listener; 0 is the node's port + PEER_PORT_OFFSET.
    ("peer-port", 0, 65_535),
    // Test knob: microseconds slept before applying each entry (at most a minute).
    ("log-delay-apply", 0, 60_000_000),
    // Test knob: seconds the snapshot child waits before writing (at most an hour).
    ("snapshot-delay", 0, 3600),
];

/// Numeric keys that hold byte sizes and so also accept Redis memory units (`64mb`).
const BYTE_SIZE_KEYS: &[&str] = &[
    "log-max-file-size",
    "log-max-cache-size",
    "append-req-max-size",
    "snapshot-req-max-size",
];

/// A rejected configuration value. Its message never contains a sensitive value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key without the `raft.` prefix, e.g. `election-timeout`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft.{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The address other nodes use to reach a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// Host name or IP literal; IPv6 literals are stored without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    /// `host:port`, with IPv6 literals bracketed (`[::1]:6379`) so the text parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Redis log levels, as the `loglevel` key spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogLevel {
    Debug,
    Verbose,
    #[default]
    Notice,
    Warning,
}

impl LogLevel {
    /// Maps to the `log` crate one step down, so that Redis' default `notice`
    /// shows `info!` lines and `debug` shows everything, including raft-rs'
    /// `trace!` chatter: debug → Trace, verbose → Debug, notice → Info, warning → Warn.
    pub fn to_log_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Debug => log::LevelFilter::Trace,
            LogLevel::Verbose => log::LevelFilter::Debug,
            LogLevel::Notice => log::LevelFilter::Info,
            LogLevel::Warning => log::LevelFilter::Warn,
        }
    }

    /// The Redis level to write a `log` record at (the inverse of [`Self::to_log_filter`];
    /// errors are logged as warnings, Redis' most severe level).
    pub fn from_log_level(level: log::Level) -> LogLevel {
        match level {
            log::Level::Error | log::Level::Warn => LogLevel::Warning,
            log::Level::Info => LogLevel::Notice,
            log::Level::Debug => LogLevel::Verbose,
            log::Level::Trace => LogLevel::Debug,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Verbose => "verbose",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = ConfigError;

    /// Accepts the four Redis level names in any case.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            LogLevel::Debug,
            LogLevel::Verbose,
            LogLevel::Notice,
            LogLevel::Warning,
        ]
        .into_iter()
        .find(|level| value.eq_ignore_ascii_case(level.as_str()))
        .ok_or_else(|| {
            ConfigError::new(
                "loglevel",
                format!("invalid value '{value}': expected debug, verbose, notice or warning"),
            )
        })
    }
}

/// `trace`: the original's debug trace categories, a set of bit flags. `off` is the
/// empty set and `all` every category; Redis registers it as a bit-flag enum config, so
/// `CONFIG SET raft.trace "node conn"` sets two at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(pub u32);

impl TraceFlags {
    /// Each category's name and bit, the original's values (`off` 0 and `all` the union
    /// are not categories).
    pub const CATEGORIES: &'static [(&'static str, u32)] = &[
        ("node", 1),
        ("conn", 1 << 1),
        ("raftlib", 1 << 2),
        ("raftlog", 1 << 3),
        ("generic", 1 << 4),
        ("migration", 1 << 5),
    ];
    pub const OFF: TraceFlags = TraceFlags(0);
    pub const ALL: TraceFlags = TraceFlags((1 << 6) - 1);

    /// Every name Redis accepts, with its value, for the enum registration.
    pub fn names_and_values() -> Vec<(&'static str, u32)> {
        let mut all = vec![("off", 0)];
        all.extend_from_slice(Self::CATEGORIES);
        all.push(("all", Self::ALL.0));
        all
    }

    pub fn contains(self, name: &str) -> bool {
        Self::CATEGORIES
            .iter()
            .any(|&(known, bit)| known == name && self.0 & bit != 0)
    }
}

impl fmt::Display for TraceFlags {
    /// `off`, `all`, or the set categories separated by spaces (`node conn`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::OFF {
            return f.write_str("off");
        }
        if *self == Self::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = Self::CATEGORIES
            .iter()
            .filter(|&&(_, bit)| self.0 & bit != 0)
            .map(|&(name, _)| name)
            .collect();
        f.write_str(&names.join(" "))
    }
}

impl FromStr for TraceFlags {
    type Err = ConfigError;

    /// One or more names separated by spaces or commas, any case; the union of them.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut bits = 0;
        let mut any = false;
        for word in value.split(|c: char| c == ',' || c.is_whitespace()) {
            if word.is_empty() {
                continue;
            }
            let (_, bit) = Self::names_and_values()
                .into_iter()
                .find(|(name, _)| word.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    ConfigError::new(
                        "trace",
                        format!(
                            "invalid value '{word}': expected off, node, conn, raftlib, raftlog, \
                             generic, migration or all"
                        ),
                    )
                })?;
            bits |= bit;
            any = true;
        }
        if !any {
            return Err(ConfigError::new(
                "trace",
                "empty value: expected off, all or categories",
            ));
        }
        Ok(TraceFlags(bits))
    }
}

/// `migration-debug`: a fault injected into slot migrations, as the original offers (test
/// knob): the source's export fails before sending (`fail-connect`), the target refuses
/// `RAFT.IMPORT` (`fail-import`), or the source keeps the imported keys locked
/// (`fail-unlock`). Each leaves the keys locked and the `MIGRATE` retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MigrationDebug {
    #[default]
    None,
    FailConnect,
    FailImport,
    FailUnlock,
}

impl MigrationDebug {
    pub const ALL: [MigrationDebug; 4] = [
        MigrationDebug::None,
        MigrationDebug::FailConnect,
        MigrationDebug::FailImport,
        MigrationDebug::FailUnlock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MigrationDebug::None => "none",
            MigrationDebug::FailConnect => "fail-connect",
            MigrationDebug::FailImport => "fail-import",
            MigrationDebug::FailUnlock => "fail-unlock",
        }
    }
}

impl FromStr for MigrationDebug {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| value.eq_ignore_ascii_case(mode.as_str()))
            .ok_or_else(|| {
                ConfigError::new(
                    "migration-debug",
                    format!(
                        "invalid value '{value}': expected none, fail-connect, fail-import or \
                         fail-unlock"
                    ),
                )
            })
    }
}

/// A set of hash slots as `slot-config` spells it: ranges `start:end` and single slots,
/// separated by commas or spaces (`0:16383`, `0:99,200`); empty means no slots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotRanges(pub Vec<(u16, u16)>);

impl fmt::Display for SlotRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(start, end)| format!("{start}:{end}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for SlotRanges {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |why: String| {
            ConfigError::new(
                "slot-config",
                format!("invalid slot ranges '{value}': {why}"),
            )
        };
        let slot = |text: &str| -> Result<u16, ConfigError> {
            match text.parse::<u16>() {
                Ok(slot) if slot <= MAX_SLOT && text.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(slot)
                }
                _ => Err(invalid(format!(
                    "'{text}' is not a slot between 0 and {MAX_SLOT}"
                ))),
            }
        };
        let mut ranges = Vec::new();
        for part in value.split(|c: char| c == ',' || c.is_whitespace()) {
            if part.is_empty() {
                continue;
            }
            let (start, end) = match part.split_once(':') {
                Some((start, end)) => (slot(start)?, slot(end)?),
                None => (slot(part)?, slot(part)?),
            };
            if start > end {
                return Err(invalid(format!("range {part} ends before it starts")));
            }
            ranges.push((start, end));
        }
        Ok(SlotRanges(ranges))
    }
}

/// What the raft driver follows while it runs. It gets a new value (not a lock on the
/// config) whenever `CONFIG SET` changes one of [`DRIVER_LIVE_KEYS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverSettings {
    pub log_max_file_size_bytes: u64,
    pub log_max_cache_size_bytes: u64,
    pub log_disable_apply: bool,
}

/// Keys a running driver follows at once (see [`DriverSettings`]).
pub const DRIVER_LIVE_KEYS: &[&str] = &[
    "log-max-file-size",
    "log-max-cache-size",
    "log-disable-apply",
];

/// Keys the raft node and its transport are built with: a change on a running node takes
/// effect when the node next starts (INIT, JOIN or restart).
pub const AT_NODE_START_KEYS: &[&str] = &[
    "periodic-interval",
    "request-timeout",
    "election-timeout",
    "connection-timeout",
    "response-timeout",
    "reconnect-interval",
    "append-req-max-count",
    "append-req-max-size",
    "snapshot-req-max-count",
    "snapshot-req-max-size",
    "log-fsync",
    "cluster-user",
    "cluster-password",
];

/// All module configuration, with the contract's defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// 0 = pick a random unused id at init/join.
    pub id: u64,
    /// None = Redis' bind address and port (filled in by the adapter).
    pub addr: Option<NodeAddr>,
    pub log_filename: String,
    pub log_fsync: bool,
    pub periodic_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub election_timeout_ms: u64,
    pub connection_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub reconnect_interval_ms: u64,
    pub join_timeout_ms: u64,
    pub proxy_response_timeout_ms: u64,
    pub follower_proxy: bool,
    pub quorum_reads: bool,
    pub log_max_file_size: u64,
    pub log_max_cache_size: u64,
    pub append_req_max_count: u64,
    pub append_req_max_size: u64,
    pub snapshot_req_max_count: u64,
    pub snapshot_req_max_size: u64,
    /// Lowercase names (or `container|sub`) never intercepted.
    pub ignored_commands: Vec<String>,
    pub cluster_user: String,
    /// Sensitive: never printed by `Debug`, `get`, or errors.
    pub cluster_password: String,
    pub tls_enabled: bool,
    /// The raft thread's own listener for peers; 0 = the node's port + [`PEER_PORT_OFFSET`].
    pub peer_port: u64,
    pub loglevel: LogLevel,
    pub trace: TraceFlags,
    /// Sharding (accepted and stored; no effect until sharding exists).
    pub scan_size: u64,
    pub sharding: bool,
    pub external_sharding: bool,
    pub slot_config: SlotRanges,
    pub shardgroup_update_interval_ms: u64,
    /// Test knobs the original has, which test rigs use to stage faults.
    pub log_delay_apply_us: u64,
    pub log_disable_apply: bool,
    pub snapshot_delay_secs: u64,
    pub snapshot_fail: bool,
    pub snapshot_disable: bool,
    pub snapshot_disable_load: bool,
    pub migration_debug: MigrationDebug,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 0,
            addr: None,
            log_filename: "redisraft.db".to_string(),
            log_fsync: true,
            periodic_interval_ms: 100,
            request_timeout_ms: 200,
            election_timeout_ms: 1000,
            connection_timeout_ms: 3000,
            response_timeout_ms: 1000,
            reconnect_interval_ms: 100,
            join_timeout_ms: 120_000,
            proxy_response_timeout_ms: 10_000,
            follower_proxy: false,
            quorum_reads: true,
            log_max_file_size: 128_000_000,
            log_max_cache_size: 64_000_000,
            append_req_max_count: 2,
            append_req_max_size: 2 * MIB,
            snapshot_req_max_count: 32,
            snapshot_req_max_size: 64 * 1024,
            ignored_commands: Vec::new(),
            cluster_user: "default".to_string(),
            cluster_password: String::new(),
            tls_enabled: false,
            peer_port: 0,
            loglevel: LogLevel::Notice,
            trace: TraceFlags::OFF,
            scan_size: 1000,
            sharding: false,
            external_sharding: false,
            slot_config: SlotRanges(vec![(0, MAX_SLOT)]),
            shardgroup_update_interval_ms: 5000,
            log_delay_apply_us: 0,
            log_disable_apply: false,
            snapshot_delay_secs: 0,
            snapshot_fail: false,
            snapshot_disable: false,
            snapshot_disable_load: false,
            migration_debug: MigrationDebug::None,
        }
    }
}

impl fmt::Debug for RaftConfig {
    /// Lists every key as `get` shows it, so the password stays hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for key in ALL_KEYS {
            map.entry(key, &self.get(key).unwrap_or_default());
        }
        map.finish()
    }
}

/// Maps each numeric key to its field once, for `get`, `set` and `validate`.
macro_rules! numeric_fields {
    ($($key:literal => $field:ident),* $(,)?) => {
        fn numeric_field(&self, key: &str) -> Option<u64> {
            match key {
                $($key => Some(self.$field),)*
                _ => None,
            }
        }

        fn numeric_field_mut(&mut self, key: &str) -> Option<&mut u64> {
            match key {
                $($key => Some(&mut self.$field),)*
                _ => None,
            }
        }
    };
}

/// Maps each yes/no key to its field once.
macro_rules! bool_fields {
    ($($key:literal => $field:ident),* $(,)?) => {
        fn bool_field(&self, key: &str) -> Option<bool> {
            match key {
                $($key => Some(self.$field),)*
                _ => None,
            }
        }

        fn bool_field_mut(&mut self, key: &str) -> Option<&mut bool> {
            match key {
                $($key => Some(&mut self.$field),)*
                _ => None,
            }
        }
    };
}

impl RaftConfig {
    numeric_fields! {
        "id" => id,
        "periodic-interval" => periodic_interval_ms,
        "request-timeout" => request_timeout_ms,
        "election-timeout" => election_timeout_ms,
        "connection-timeout" => connection_timeout_ms,
        "response-timeout" => response_timeout_ms,
        "reconnect-interval" => reconnect_interval_ms,
        "join-timeout" => join_timeout_ms,
        "proxy-response-timeout" => proxy_response_timeout_ms,
        "log-max-file-size" => log_max_file_size,
        "log-max-cache-size" => log_max_cache_size,
        "append-req-max-count" => append_req_max_count,
        "append-req-max-size" => append_req_max_size,
        "snapshot-req-max-count" => snapshot_req_max_count,
        "snapshot-req-max-size" => snapshot_req_max_size,
        "peer-port" => peer_port,
        "scan-size" => scan_size,
        "shardgroup-update-interval" => shardgroup_update_interval_ms,
        "log-delay-apply" => log_delay_apply_us,
        "snapshot-delay" => snapshot_delay_secs,
    }

    bool_fields! {
        "log-fsync" => log_fsync,
        "follower-proxy" => follower_proxy,
        "quorum-reads" => quorum_reads,
        "tls-enabled" => tls_enabled,
        "sharding" => sharding,
        "external-sharding" => external_sharding,
        "log-disable-apply" => log_disable_apply,
        "snapshot-fail" => snapshot_fail,
        "snapshot-disable" => snapshot_disable,
        "snapshot-disable-load" => snapshot_disable_load,
    }

    /// Sets one key from its string form (CONFIG SET, MODULE LOADEX args, tests).
    /// `key` may carry the `raft.` prefix and any letter case. Checks the value's
    /// own format and range only; call [`Self::validate`] once all keys are set.
    /// An empty `addr` means "use Redis' bind address and port".
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = canonical_key(key)?;
        if let Some(field) = self.bool_field_mut(key) {
            *field = parse_bool(key, value)?;
            return Ok(());
        }
        if let Some(field) = self.numeric_field_mut(key) {
            *field = parse_number(key, value)?;
            return Ok(());
        }
        match key {
            "addr" => {
                self.addr = if value.is_empty() {
                    None
                } else {
                    Some(parse_addr(key, value)?)
                }
            }
            "log-filename" => self.log_filename = parse_log_filename(value)?,
            "ignored-commands" => self.ignored_commands = parse_ignored_commands(value),
            "cluster-user" => self.cluster_user = parse_cluster_user(value)?,
            // What CONFIG GET shows (and so CONFIG REWRITE writes) is a placeholder, not
            // a password: refuse it rather than start authenticating with it.
            "cluster-password" if value == HIDDEN_VALUE => {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{HIDDEN_VALUE} is the placeholder CONFIG GET shows (CONFIG REWRITE \
                         writes it too); set the real password"
                    ),
                ))
            }
            "cluster-password" => self.cluster_password = value.to_string(),
            "loglevel" => self.loglevel = value.parse()?,
            "trace" => self.trace = value.parse()?,
            "slot-config" => self.slot_config = value.parse()?,
            "migration-debug" => self.migration_debug = value.parse()?,
            _ => unreachable!("canonical_key returned a key set() does not handle: {key}"),
        }
        Ok(())
    }

    /// The value of one key as a string (`raft.` prefix and any case accepted);
    /// None for an unknown key. Booleans read `yes`/`no`, `addr` is empty while
    /// unset, `ignored-commands` is comma-joined.
    ///
    /// `cluster-password` reads [`HIDDEN_VALUE`] when set (empty when not), so
    /// this is safe for INFO, logs and docs. A Redis config getter that feeds
    /// CONFIG REWRITE must read the field itself, or the rewritten file would
    /// store the placeholder.
    pub fn get(&self, key: &str) -> Option<String> {
        let key = canonical_key(key).ok()?;
        if let Some(value) = self.bool_field(key) {
            return Some(if value { "yes" } else { "no" }.to_string());
        }
        if let Some(value) = self.numeric_field(key) {
            return Some(value.to_string());
        }
        let value = match key {
            "addr" => self
                .addr
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            "log-filename" => self.log_filename.clone(),
            "ignored-commands" => self.ignored_commands.join(","),
            "cluster-user" => self.cluster_user.clone(),
            "cluster-password" if self.cluster_password.is_empty() => String::new(),
            "cluster-password" => HIDDEN_VALUE.to_string(),
            "loglevel" => self.loglevel.to_string(),
            "trace" => self.trace.to_string(),
            "slot-config" => self.slot_config.to_string(),
            "migration-debug" => self.migration_debug.as_str().to_string(),
            _ => return None,
        };
        Some(value)
    }

    /// Checks every field on its own (they are public, so they may not have gone
    /// through `set`). Relations between keys are never an error: CONFIG SET changes
    /// one key at a time, in any order, so each value in range is accepted; see
    /// [`Self::warnings`] and the tick counts, which resolve them where they are used.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for &(key, min, max) in LIMITS {
            let value = self
                .numeric_field(key)
                .expect("every LIMITS key is a numeric field");
            check_range(key, value, min, max)?;
        }
        if let Some(addr) = &self.addr {
            let text = addr.to_string();
            parse_addr("addr", &text)?;
        }
        parse_log_filename(&self.log_filename)?;
        parse_cluster_user(&self.cluster_user)?;
        if self.trace.0 & !TraceFlags::ALL.0 != 0 {
            return Err(ConfigError::new(
                "trace",
                format!("unknown trace bits {:#x}", self.trace.0),
            ));
        }
        for &(start, end) in &self.slot_config.0 {
            if start > end || end > MAX_SLOT {
                return Err(ConfigError::new(
                    "slot-config",
                    format!("invalid slot range {start}:{end}"),
                ));
            }
        }
        Ok(())
    }

    /// Combinations of keys that raft cannot use as given, each with how it is
    /// resolved (see [`Self::heartbeat_ticks`], [`Self::election_ticks`]). Logged as
    /// warnings; the values stay as set.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let periodic_ms = self.periodic_interval_ms;
        if self.request_timeout_ms < periodic_ms {
            warnings.push(format!(
                "raft.request-timeout ({} ms) is shorter than raft.periodic-interval \
                 ({periodic_ms} ms): heartbeats go every tick",
                self.request_timeout_ms
            ));
        }
        let given_election_ticks = self.election_timeout_ms / periodic_ms.max(1);
        if given_election_ticks < 2 || given_election_ticks <= self.heartbeat_ticks() as u64 {
            warnings.push(format!(
                "raft.election-timeout ({} ms) must span at least two raft.periodic-interval \
                 ticks ({periodic_ms} ms) and more than raft.request-timeout ({} ms): \
                 elections time out after {} ticks",
                self.election_timeout_ms,
                self.request_timeout_ms,
                self.election_ticks()
            ));
        }
        warnings
    }

    /// `request-timeout` in whole ticks: raft-rs' `heartbeat_tick`, at least 1.
    pub fn heartbeat_ticks(&self) -> usize {
        (self.request_timeout_ms / self.periodic_interval_ms.max(1)).max(1) as usize
    }

    pub fn driver_settings(&self) -> DriverSettings {
        DriverSettings {
            log_max_file_size_bytes: self.log_max_file_size,
            log_max_cache_size_bytes: self.log_max_cache_size,
            log_disable_apply: self.log_disable_apply,
        }
    }

    /// The port of the raft thread's peer listener for a node whose Redis port (the one
    /// in its address) is `node_port`: `peer-port`, or `node_port` + [`PEER_PORT_OFFSET`]
    /// when that is 0; `None` when that sum is not a port.
    pub fn peer_listener_port(&self, node_port: u16) -> Option<u16> {
        match self.peer_port {
            0 => node_port.checked_add(PEER_PORT_OFFSET),
            port => u16::try_from(port).ok(),
        }
    }

    /// `election-timeout` in whole ticks: raft-rs' `election_tick`, at least 2 and more
    /// than [`Self::heartbeat_ticks`] (raft-rs refuses `election_tick <= heartbeat_tick`).
    pub fn election_ticks(&self) -> usize {
        let given = (self.election_timeout_ms / self.periodic_interval_ms.max(1)) as usize;
        given.max(2).max(self.heartbeat_ticks() + 1)
    }
}

/// Strips an optional `raft.` prefix, lowercases, and returns the known key.
fn canonical_key(key: &str) -> Result<&'static str, ConfigError> {
    let lower = key.to_ascii_lowercase();
    let bare = lower.strip_prefix("raft.").unwrap_or(&lower);
    ALL_KEYS
        .iter()
        .copied()
        .find(|known| *known == bare)
        .ok_or_else(|| ConfigError::new(bare, "unknown configuration key"))
}

/// Parses `host:port`, `[ipv6]:port`, or (as the C module does, splitting at the
/// last colon) an unbracketed IPv6 literal like `::1:6379`. Port must be 1..=65535.
pub fn parse_addr(key: &str, value: &str) -> Result<NodeAddr, ConfigError> {
    let invalid = |why: &str| {
        ConfigError::new(
            key,
            format!("invalid address '{value}': {why}; expected host:port"),
        )
    };
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| invalid("missing ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| invalid("missing ':' before the port"))?;
        (host, port)
    } else {
        value
            .rsplit_once(':')
            .ok_or_else(|| invalid("missing ':' before the port"))?
    };
    if host.is_empty() {
        return Err(invalid("empty host"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '/'))
    {
        return Err(invalid(
            "host contains a space, control character, bracket or '/'",
        ));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("port is not a number"));
    }
    let port: u16 = match port.parse() {
        Ok(port) if port > 0 => port,
        _ => return Err(invalid("port must be between 1 and 65535")),
    };
    Ok(NodeAddr {
        host: host.to_string(),
        port,
    })
}

/// Splits on commas and whitespace, lowercases, drops empties and repeats.
pub fn parse_ignored_commands(value: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in value.split(|c: char| c == ',' || c.is_whitespace()) {
        let name = name.to_ascii_lowercase();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A base file name inside Redis' `dir`: non-empty, no '/', no NUL, not `.` or
/// `..`, at most [`MAX_LOG_FILENAME_BYTES`].
pub fn parse_log_filename(value: &str) -> Result<String, ConfigError> {
    let invalid = |why: &str| {
        ConfigError::new(
            "log-filename",
            format!("invalid file name '{value}': {why}"),
        )
    };
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    if value.contains('/') || value.contains('\0') {
        return Err(invalid(
            "must be a plain file name inside Redis' dir, without '/' or NUL",
        ));
    }
    if value == "." || value == ".." {
        return Err(invalid("'.' and '..' are directories"));
    }
    if value.len() > MAX_LOG_FILENAME_BYTES {
        return Err(invalid(&format!(
            "longer than {MAX_LOG_FILENAME_BYTES} bytes"
        )));
    }
    Ok(value.to_string())
}

/// `yes`/`no` as Redis configs spell them; `true`/`false` too. Any case.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    if value.eq_ignore_ascii_case("yes") || value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("no") || value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ConfigError::new(
            key,
            format!("invalid value '{value}': expected yes or no"),
        ))
    }
}

/// Parses a numeric key within its [`LIMITS`]. Byte-size keys also accept
/// Redis memory units, case-insensitive: `b`, `k` (1000), `kb` (1024), `m`,
/// `mb`, `g`, `gb`.
pub fn parse_number(key: &str, value: &str) -> Result<u64, ConfigError> {
    let &(_, min, max) = LIMITS
        .iter()
        .find(|(known, _, _)| *known == key)
        .ok_or_else(|| ConfigError::new(key, "not a numeric configuration key"))?;
    let accepts_units = BYTE_SIZE_KEYS.contains(&key);
    let number = parse_unsigned(value, accepts_units).ok_or_else(|| {
        let expected = if accepts_units {
            "a non-negative integer, optionally with a unit (kb, mb, gb)"
        } else {
            "a non-negative integer"
        };
        ConfigError::new(key, format!("invalid value '{value}': expected {expected}"))
    })?;
    check_range(key, number, min, max)?;
    Ok(number)
}

/// `cluster-user` is an ACL user name: Redis forbids empty names, spaces and NUL.
fn parse_cluster_user(value: &str) -> Result<String, ConfigError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(ConfigError::new(
            "cluster-user",
            format!("invalid user name '{value}': must be non-empty, without spaces or NUL"),
        ));
    }
    Ok(value.to_string())
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is out of range: must be between {min} and {max}"),
        ))
    }
}

/// Digits only (no sign), then an optional memory unit; None on overflow.
fn parse_unsigned(value: &str, accepts_units: bool) -> Option<u64> {
    let digits_end = value
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        _ if !accepts_units => return None,
        "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_key<T: fmt::Debug>(result: Result<T, ConfigError>) -> String {
        let error = result.expect_err("expected a ConfigError");
        assert!(
            error
                .to_string()
                .starts_with(&format!("raft.{}: ", error.key)),
            "{error}"
        );
        error.key
    }

    #[test]
    fn defaults_match_the_interface_table() {
        let config = RaftConfig::default();
        let expected = [
            ("id", "0"),
            ("addr", ""),
            ("log-filename", "redisraft.db"),
            ("log-fsync", "yes"),
            ("periodic-interval", "100"),
            ("request-timeout", "200"),
            ("election-timeout", "1000"),
            ("connection-timeout", "3000"),
            ("response-timeout", "1000"),
            ("reconnect-interval", "100"),
            ("join-timeout", "120000"),
            ("proxy-response-timeout", "10000"),
            ("follower-proxy", "no"),
            ("quorum-reads", "yes"),
            ("log-max-file-size", "128000000"),
            ("log-max-cache-size", "64000000"),
            ("append-req-max-count", "2"),
            ("append-req-max-size", "2097152"),
            ("snapshot-req-max-count", "32"),
            ("snapshot-req-max-size", "65536"),
            ("ignored-commands", ""),
            ("cluster-user", "default"),
            ("cluster-password", ""),
            ("tls-enabled", "no"),
            ("peer-port", "0"),
            ("loglevel", "notice"),
            ("trace", "off"),
            ("scan-size", "1000"),
            ("sharding", "no"),
            ("external-sharding", "no"),
            ("slot-config", "0:16383"),
            ("shardgroup-update-interval", "5000"),
            ("log-delay-apply", "0"),
            ("log-disable-apply", "no"),
            ("snapshot-delay", "0"),
            ("snapshot-fail", "no"),
            ("snapshot-disable", "no"),
            ("snapshot-disable-load", "no"),
            ("migration-debug", "none"),
        ];
        assert_eq!(expected.len(), ALL_KEYS.len());
        for (key, value) in expected {
            assert_eq!(config.get(key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(config.addr, None);
        assert_eq!(config.loglevel, LogLevel::Notice);
    }

    #[test]
    fn defaults_are_valid() {
        RaftConfig::default().validate().unwrap();
    }

    #[test]
    fn every_key_round_trips_through_get_and_set() {
        let mut config = RaftConfig::default();
        config.set("addr", "10.0.0.1:5001").unwrap();
        config.set("ignored-commands", "get,set").unwrap();
        let original = config.clone();
        for key in ALL_KEYS.iter().filter(|key| !SENSITIVE_KEYS.contains(key)) {
            let value = config.get(key).unwrap();
            config.set(key, &value).unwrap();
        }
        assert_eq!(config, original);
    }

    #[test]
    fn keys_accept_the_raft_prefix_and_any_case() {
        let mut config = RaftConfig::default();
        config.set("raft.election-timeout", "2000").unwrap();
        config.set("Election-Timeout", "3000").unwrap();
        assert_eq!(config.election_timeout_ms, 3000);
        assert_eq!(config.get("RAFT.election-timeout").as_deref(), Some("3000"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let mut config = RaftConfig::default();
        let error = config.set("raft.no-such-key", "1").unwrap_err();
        assert_eq!(error.key, "no-such-key");
        assert_eq!(
            error.to_string(),
            "raft.no-such-key: unknown configuration key"
        );
        assert_eq!(config.get("no-such-key"), None);
    }

    #[test]
    fn parse_addr_accepts_host_port_and_ipv6() {
        let addr = |host: &str, port| NodeAddr {
            host: host.to_string(),
            port,
        };
        assert_eq!(
            parse_addr("addr", "127.0.0.1:6379").unwrap(),
            addr("127.0.0.1", 6379)
        );
        assert_eq!(
            parse_addr("addr", "node-1.example:1").unwrap(),
            addr("node-1.example", 1)
        );
        assert_eq!(
            parse_addr("addr", "[::1]:65535").unwrap(),
            addr("::1", 65535)
        );
        assert_eq!(parse_addr("addr", "::1:6379").unwrap(), addr("::1", 6379));
    }

    #[test]
    fn parse_addr_rejects_bad_input_naming_the_key() {
        for bad in [
            "",
            "localhost",
            "localhost:",
            ":6379",
            "host:0",
            "host:65536",
            "host:-1",
            "host:+5",
            "host:63x",
            "[::1]6379",
            "[::1:6379",
            "[]:6379",
            "a b:6379",
        ] {
            assert_eq!(error_key(parse_addr("addr", bad)), "addr", "{bad}");
        }
        assert_eq!(error_key(parse_addr("join", "nope")), "join");
    }

    #[test]
    fn node_addr_displays_as_host_port_and_parses_back() {
        for text in ["127.0.0.1:6379", "[::1]:6379", "redis.local:7000"] {
            let addr = parse_addr("addr", text).unwrap();
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(
            parse_addr("addr", "::1:6379").unwrap().to_string(),
            "[::1]:6379"
        );
    }

    #[test]
    fn parse_bool_accepts_yes_no_true_false() {
        for (text, value) in [
            ("yes", true),
            ("YES", true),
            ("true", true),
            ("no", false),
            ("False", false),
        ] {
            assert_eq!(parse_bool("log-fsync", text).unwrap(), value, "{text}");
        }
        for bad in ["", "y", "1", "on", "yess"] {
            assert_eq!(
                error_key(parse_bool("log-fsync", bad)),
                "log-fsync",
                "{bad}"
            );
        }
        let mut config = RaftConfig::default();
        assert_eq!(
            error_key(config.set("quorum-reads", "maybe")),
            "quorum-reads"
        );
        config.set("quorum-reads", "no").unwrap();
        assert!(!config.quorum_reads);
    }

    #[test]
    fn numbers_must_be_plain_digits_within_limits() {
        let mut config = RaftConfig::default();
        config.set("periodic-interval", "50").unwrap();
        assert_eq!(config.periodic_interval_ms, 50);
        for (key, bad) in [
            ("periodic-interval", "0"),
            ("periodic-interval", "60001"),
            ("election-timeout", "0"),
            ("election-timeout", "-5"),
            ("request-timeout", "+5"),
            ("request-timeout", "5ms"),
            ("request-timeout", ""),
            ("join-timeout", "99999999999999999999999"),
            ("id", "2147483648"),
            ("append-req-max-count", "0"),
            ("snapshot-req-max-size", "0"),
        ] {
            assert_eq!(error_key(config.set(key, bad)), key, "{key} {bad}");
        }
        assert_eq!(
            config.periodic_interval_ms, 50,
            "a rejected value changes nothing"
        );
        config.set("id", "2147483647").unwrap();
    }

    #[test]
    fn byte_sizes_accept_redis_memory_units() {
        let mut config = RaftConfig::default();
        config.set("log-max-file-size", "64mb").unwrap();
        assert_eq!(config.log_max_file_size, 64 * MIB);
        config.set("log-max-cache-size", "2G").unwrap();
        assert_eq!(config.log_max_cache_size, 2_000_000_000);
        config.set("append-req-max-size", "512kb").unwrap();
        assert_eq!(config.append_req_max_size, 512 * 1024);
        config.set("snapshot-req-max-size", "1000b").unwrap();
        assert_eq!(config.snapshot_req_max_size, 1000);
        assert_eq!(
            error_key(config.set("log-max-file-size", "5tb")),
            "log-max-file-size"
        );
        assert_eq!(
            error_key(config.set("append-req-max-size", "1gb")),
            "append-req-max-size"
        );
        assert_eq!(
            error_key(config.set("log-max-file-size", "mb")),
            "log-max-file-size"
        );
        assert_eq!(
            error_key(config.set("log-max-file-size", "99999999999gb")),
            "log-max-file-size"
        );
        assert_eq!(error_key(config.set("join-timeout", "1k")), "join-timeout");
    }

    #[test]
    fn parse_log_filename_accepts_plain_names_only() {
        assert_eq!(parse_log_filename("redisraft.db").unwrap(), "redisraft.db");
        assert_eq!(parse_log_filename("node-1.log").unwrap(), "node-1.log");
        assert_eq!(parse_log_filename("..db").unwrap(), "..db");
        let too_long = "x".repeat(MAX_LOG_FILENAME_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            "dir/file",
            "/abs",
            "nul\0byte",
            too_long.as_str(),
        ] {
            assert_eq!(
                error_key(parse_log_filename(bad)),
                "log-filename",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parse_ignored_commands_splits_lowercases_and_drops_empties() {
        assert_eq!(parse_ignored_commands(""), Vec::<String>::new());
        assert_eq!(parse_ignored_commands(" , ,"), Vec::<String>::new());
        assert_eq!(
            parse_ignored_commands("GET, set  Object|Encoding,,get\tkeys"),
            vec!["get", "set", "object|encoding", "keys"]
        );
    }

    #[test]
    fn loglevel_parses_displays_and_maps_to_log_filters() {
        for (text, level, filter) in [
            ("debug", LogLevel::Debug, log::LevelFilter::Trace),
            ("verbose", LogLevel::Verbose, log::LevelFilter::Debug),
            ("NOTICE", LogLevel::Notice, log::LevelFilter::Info),
            ("warning", LogLevel::Warning, log::LevelFilter::Warn),
        ] {
            let parsed: LogLevel = text.parse().unwrap();
            assert_eq!(parsed, level);
            assert_eq!(parsed.to_string(), text.to_ascii_lowercase());
            assert_eq!(parsed.to_log_filter(), filter);
            assert_eq!(LogLevel::from_log_level(filter.to_level().unwrap()), level);
        }
        assert_eq!(
            LogLevel::from_log_level(log::Level::Error),
            LogLevel::Warning
        );
        assert_eq!(error_key("warn".parse::<LogLevel>()), "loglevel");
        assert_eq!(
            error_key(RaftConfig::default().set("loglevel", "loud")),
            "loglevel"
        );
    }

    #[test]
    fn cluster_user_must_be_a_valid_acl_name() {
        let mut config = RaftConfig::default();
        config.set("cluster-user", "raft-peer").unwrap();
        assert_eq!(config.cluster_user, "raft-peer");
        for bad in ["", "two words", "nul\0"] {
            assert_eq!(error_key(config.set("cluster-user", bad)), "cluster-user");
        }
    }

    #[test]
    fn empty_addr_means_redis_bind_address() {
        let mut config = RaftConfig::default();
        config.set("addr", "10.0.0.1:5001").unwrap();
        config.set("addr", "").unwrap();
        assert_eq!(config.addr, None);
        assert_eq!(error_key(config.set("addr", "nope")), "addr");
    }

    #[test]
    fn validate_checks_fields_set_directly() {
        let mut config = RaftConfig {
            periodic_interval_ms: 0,
            ..RaftConfig::default()
        };
        assert_eq!(error_key(config.validate()), "periodic-interval");
        config = RaftConfig {
            log_filename: "a/b".to_string(),
            ..RaftConfig::default()
        };
        assert_eq!(error_key(config.validate()), "log-filename");
        config = RaftConfig {
            addr: Some(NodeAddr {
                host: String::new(),
                port: 1,
            }),
            ..RaftConfig::default()
        };
        assert_eq!(error_key(config.validate()), "addr");
        config = RaftConfig {
            cluster_user: String::new(),
            ..RaftConfig::default()
        };
        assert_eq!(error_key(config.validate()), "cluster-user");
    }

    #[test]
    fn a_short_request_timeout_is_a_warning_and_heartbeats_go_every_tick() {
        let config = RaftConfig {
            periodic_interval_ms: 100,
            request_timeout_ms: 99,
            ..RaftConfig::default()
        };
        config.validate().unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("raft.request-timeout"), "{warnings:?}");
        assert_eq!(config.heartbeat_ticks(), 1);
        assert_eq!(config.election_ticks(), 10);
    }

    #[test]
    fn a_short_election_timeout_is_a_warning_and_spans_two_ticks() {
        let config = RaftConfig {
            periodic_interval_ms: 100,
            request_timeout_ms: 100,
            election_timeout_ms: 199,
            ..RaftConfig::default()
        };
        config.validate().unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("raft.election-timeout"),
            "{warnings:?}"
        );
        assert_eq!((config.heartbeat_ticks(), config.election_ticks()), (1, 2));
        let fine = RaftConfig {
            election_timeout_ms: 200,
            ..config
        };
        assert!(fine.warnings().is_empty());
        assert_eq!((fine.heartbeat_ticks(), fine.election_ticks()), (1, 2));
    }

    #[test]
    fn an_election_timeout_not_beyond_request_timeout_is_resolved_to_one_tick_more() {
        let config = RaftConfig {
            request_timeout_ms: 1000,
            election_timeout_ms: 1000,
            ..RaftConfig::default()
        };
        config.validate().unwrap();
        assert_eq!(config.warnings().len(), 1);
        assert_eq!(
            (config.heartbeat_ticks(), config.election_ticks()),
            (10, 11)
        );
        // 250 ms and 290 ms are both 2 ticks of 100 ms: raft-rs would refuse them.
        let same_ticks = RaftConfig {
            request_timeout_ms: 250,
            election_timeout_ms: 290,
            ..RaftConfig::default()
        };
        same_ticks.validate().unwrap();
        assert_eq!(same_ticks.warnings().len(), 1);
        assert_eq!(
            (same_ticks.heartbeat_ticks(), same_ticks.election_ticks()),
            (2, 3)
        );
    }

    #[test]
    fn any_order_of_in_range_sets_validates() {
        // The original's test rigs set a slow tick before the timeouts that fit it.
        let mut config = RaftConfig::default();
        config.set("periodic-interval", "999").unwrap();
        config.validate().unwrap();
        assert_eq!(config.warnings().len(), 2, "{:?}", config.warnings());
        config.set("request-timeout", "2000").unwrap();
        config.set("election-timeout", "10000").unwrap();
        config.validate().unwrap();
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        assert_eq!((config.heartbeat_ticks(), config.election_ticks()), (2, 10));
        // The reverse order passes through a different odd state, also accepted.
        let mut config = RaftConfig::default();
        config.set("election-timeout", "10").unwrap();
        config.validate().unwrap();
        config.set("request-timeout", "5").unwrap();
        config.set("periodic-interval", "1").unwrap();
        config.validate().unwrap();
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }

    #[test]
    fn trace_takes_several_flags_at_once() {
        let mut config = RaftConfig::default();
        config.set("trace", "node conn").unwrap();
        assert_eq!(config.trace, TraceFlags(0b11));
        assert!(config.trace.contains("conn") && !config.trace.contains("raftlib"));
        assert_eq!(config.get("trace").as_deref(), Some("node conn"));
        config
            .set("trace", "RAFTLIB,raftlog generic migration")
            .unwrap();
        assert_eq!(
            config.trace.to_string(),
            "raftlib raftlog generic migration"
        );
        config
            .set("trace", "node conn raftlib raftlog generic migration")
            .unwrap();
        assert_eq!(config.get("trace").as_deref(), Some("all"));
        config.set("trace", "all").unwrap();
        assert_eq!(config.trace, TraceFlags::ALL);
        config.set("trace", "off").unwrap();
        assert_eq!(config.trace, TraceFlags::OFF);
        assert_eq!(config.get("trace").as_deref(), Some("off"));
        for bad in ["", "  ", "node loud", "on"] {
            assert_eq!(error_key(config.set("trace", bad)), "trace", "{bad:?}");
        }
        let values: Vec<u32> = TraceFlags::names_and_values()
            .iter()
            .map(|&(_, v)| v)
            .collect();
        assert_eq!(values, [0, 1, 2, 4, 8, 16, 32, 63]);
    }

    #[test]
    fn sharding_keys_are_accepted_and_stored() {
        let mut config = RaftConfig::default();
        config.set("sharding", "yes").unwrap();
        config.set("external-sharding", "yes").unwrap();
        assert_eq!(config.peer_listener_port(6379), Some(16379));
        assert_eq!(config.peer_listener_port(60000), None);
        config.set("peer-port", "7000").unwrap();
        assert_eq!(config.peer_listener_port(6379), Some(7000));
        assert!(config.set("peer-port", "65536").is_err());
        config.set("scan-size", "50").unwrap();
        config.set("shardgroup-update-interval", "1000").unwrap();
        config.set("slot-config", "0:99, 200 300:16383").unwrap();
        assert!(config.sharding && config.external_sharding);
        assert_eq!(config.scan_size, 50);
        assert_eq!(config.shardgroup_update_interval_ms, 1000);
        assert_eq!(
            config.slot_config,
            SlotRanges(vec![(0, 99), (200, 200), (300, 16383)])
        );
        assert_eq!(
            config.get("slot-config").as_deref(),
            Some("0:99,200:200,300:16383")
        );
        config.set("slot-config", "").unwrap();
        assert_eq!(config.slot_config, SlotRanges(Vec::new()));
        for bad in ["0:16384", "5:1", "a:b", "-1", "1:2:3", "+1"] {
            assert_eq!(
                error_key(config.set("slot-config", bad)),
                "slot-config",
                "{bad}"
            );
        }
        for (key, bad) in [("scan-size", "0"), ("shardgroup-update-interval", "0")] {
            assert_eq!(error_key(config.set(key, bad)), key);
        }
        config.validate().unwrap();
    }

    #[test]
    fn test_knobs_parse_within_their_ranges() {
        let mut config = RaftConfig::default();
        config.set("log-delay-apply", "250000").unwrap();
        config.set("log-disable-apply", "yes").unwrap();
        config.set("snapshot-delay", "3").unwrap();
        config.set("snapshot-fail", "yes").unwrap();
        config.set("snapshot-disable", "yes").unwrap();
        config.set("snapshot-disable-load", "yes").unwrap();
        config.set("migration-debug", "FAIL-IMPORT").unwrap();
        assert_eq!(config.log_delay_apply_us, 250_000);
        assert_eq!(config.snapshot_delay_secs, 3);
        assert!(config.log_disable_apply && config.snapshot_fail);
        assert!(config.snapshot_disable && config.snapshot_disable_load);
        assert_eq!(config.migration_debug, MigrationDebug::FailImport);
        assert_eq!(
            config.get("migration-debug").as_deref(),
            Some("fail-import")
        );
        for mode in MigrationDebug::ALL {
            config.set("migration-debug", mode.as_str()).unwrap();
            assert_eq!(config.migration_debug, mode);
        }
        for (key, bad) in [
            ("log-delay-apply", "60000001"),
            ("log-delay-apply", "-1"),
            ("snapshot-delay", "3601"),
            ("snapshot-fail", "maybe"),
            ("migration-debug", "fail"),
        ] {
            assert_eq!(error_key(config.set(key, bad)), key, "{key} {bad}");
        }
        for key in HIDDEN_KEYS {
            assert!(ALL_KEYS.contains(key), "{key}");
        }
        config.validate().unwrap();
    }

    #[test]
    fn tick_counts_follow_the_periodic_interval() {
        let config = RaftConfig::default();
        assert_eq!(config.heartbeat_ticks(), 2);
        assert_eq!(config.election_ticks(), 10);
    }

    #[test]
    fn tls_can_be_enabled() {
        let mut config = RaftConfig::default();
        config.set("raft.tls-enabled", "yes").unwrap();
        assert!(config.tls_enabled);
        assert_eq!(config.get("tls-enabled").as_deref(), Some("yes"));
    }

    #[test]
    fn cluster_password_is_never_shown() {
        let secret = "s3cret-Pa55";
        let mut config = RaftConfig::default();
        assert_eq!(config.get("cluster-password").as_deref(), Some(""));
        config.set("raft.cluster-password", secret).unwrap();
        assert_eq!(config.cluster_password, secret);
        assert_eq!(
            config.get("cluster-password").as_deref(),
            Some(HIDDEN_VALUE)
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains(secret), "{debug}");
        // The placeholder is refused, and the password stays as it was.
        assert!(config.set("cluster-password", HIDDEN_VALUE).is_err());
        assert_eq!(config.cluster_password, secret);
        assert!(debug.contains("cluster-password"));
        for key in ALL_KEYS {
            assert!(!config.get(key).unwrap().contains(secret), "{key}");
        }
    }

    #[test]
    fn key_lists_are_consistent() {
        for key in IMMUTABLE_AFTER_INIT
            .iter()
            .chain(SENSITIVE_KEYS)
            .chain(BYTE_SIZE_KEYS)
            .chain(HIDDEN_KEYS)
        {
            assert!(ALL_KEYS.contains(key), "{key}");
        }
        for key in DRIVER_LIVE_KEYS.iter().chain(AT_NODE_START_KEYS) {
            assert!(ALL_KEYS.contains(key), "{key}");
            assert!(!IMMUTABLE_AFTER_INIT.contains(key), "{key}");
        }
        assert!(DRIVER_LIVE_KEYS
            .iter()
            .all(|key| !AT_NODE_START_KEYS.contains(key)));
        let mut config = RaftConfig::default();
        for (key, value) in [
            ("log-max-file-size", "1000"),
            ("log-max-cache-size", "2000"),
            ("log-disable-apply", "yes"),
        ] {
            let before = config.driver_settings();
            config.set(key, value).unwrap();
            assert_ne!(config.driver_settings(), before, "{key} reaches the driver");
        }
        let config = RaftConfig::default();
        for &(key, min, max) in LIMITS {
            assert!(ALL_KEYS.contains(&key), "{key}");
            assert!(config.numeric_field(key).is_some(), "{key}");
            assert!(min <= max && max <= MAX_REDIS_NUMERIC, "{key}");
        }
        assert_eq!(
            IMMUTABLE_AFTER_INIT,
            [
                "id",
                "addr",
                "log-filename",
                "tls-enabled",
                "peer-port",
                "sharding",
                "external-sharding",
                "slot-config"
            ]
        );
    }

    #[test]
    fn config_error_display_names_the_key() {
        let error = ConfigError::new("election-timeout", "too short");
        assert_eq!(error.to_string(), "raft.election-timeout: too short");
    }
}
