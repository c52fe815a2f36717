//! The command table: how every client command is handled, kept as data.
//!
//! The adapter runs the server's own `COMMAND` at load (and again when modules
//! change) and hands the result here as [`CommandInfo`] values, so the table
//! follows whatever server and modules are actually running. The command filter
//! then asks [`CommandTable::classify`] once per command: the lookup lowercases
//! into a stack buffer and does one or two hash lookups, without allocating.
//!
//! Precedence, highest first: never intercepted (contract lists, `raft` /
//! `raft.*`, the user's `ignored-commands`) → refused lists → `SELECT` → the
//! subcommand entry of a container command → the `readonly` flag (Read) or
//! anything else (Write). Unknown names and wrong arity always pass through, so
//! Redis replies its own exact error and nothing enters the log.

use std::collections::{HashMap, HashSet};

/// One element of the server's `COMMAND` reply, as the adapter converts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// Lowercase name, e.g. `set`; subcommands as `config|get` (a bare `get` is
    /// accepted too and prefixed with the parent's name).
    pub name: String,
    /// Redis arity: positive = exact argument count (name included), negative =
    /// at least `|arity|`.
    pub arity: i64,
    /// Lowercase flags, e.g. `write`, `readonly`, `admin`, `noscript`.
    pub flags: Vec<String>,
    /// Lowercase command tips (Redis 7+), e.g. `nondeterministic_output`.
    pub tips: Vec<String>,
    pub subcommands: Vec<CommandInfo>,
}

/// What the command filter does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Never intercepted: Redis handles it directly on this node.
    PassThrough,
    /// Replied with `ERR not supported by RedisRaft`.
    Refused,
    /// Served from local state after a ReadIndex round (never logged).
    Read,
    /// Becomes a log entry; the client gets the reply of the applied command.
    Write,
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: the module keeps the transaction.
    Transaction,
}

impl Class {
    /// How docs/COMMANDS.md names the class.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::PassThrough => "passed through",
            Class::Refused => "refused",
            Class::Read => "read",
            Class::Write => "write",
            Class::Transaction => "transaction",
        }
    }
}

/// Connection and admin commands the interface contract says are never intercepted.
pub const CONTRACT_PASS_THROUGH: &[&str] = &[
    "auth", "hello", "ping", "client", "config", "command", "info", "module", "monitor",
    "shutdown", "quit", "slowlog", "acl", "time",
];

/// Commands that affect or answer only the calling connection.
pub const CONNECTION_LOCAL: &[&str] = &["echo", "reset", "readonly", "readwrite", "asking"];

/// Commands that describe this node (its process, memory, persistence), not the dataset.
pub const NODE_INTROSPECTION: &[&str] = &["latency", "memory", "lolwut", "role", "lastsave"];

/// Subscriptions live on one connection; PUBLISH itself is a write, so every
/// node delivers the message to its own subscribers.
pub const SUBSCRIPTIONS: &[&str] = &[
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
    "pubsub",
];

/// Redis answers CLUSTER itself until a later issue answers it from Raft membership.
pub const CLUSTER_TOPOLOGY: &[&str] = &["cluster"];

/// Raft is the replication and persistence: Redis' own would fight it or diverge nodes.
pub const REPLICATION_AND_PERSISTENCE: &[&str] = &[
    "sync",
    "psync",
    "replconf",
    "replicaof",
    "slaveof",
    "save",
    "bgsave",
    "bgrewriteaof",
    "debug",
    "failover",
];

/// Only db 0 is replicated, so commands that reach other dbs are refused (see also SELECT).
pub const OTHER_DATABASES: &[&str] = &["swapdb", "move"];

/// They wait on Redis replication or talk to other servers: the effect differs per node.
pub const OUTSIDE_THE_LOG: &[&str] = &["wait", "waitaof", "migrate"];

/// The module queues transactions itself and logs MULTI ... EXEC as one entry.
pub const TRANSACTIONS: &[&str] = &["multi", "exec", "discard", "watch", "unwatch"];

/// XREAD/XREADGROUP are only blocking with the BLOCK option, which is refused (list and
/// sorted-set blocking commands are writes whose waits the module keeps).
pub const BLOCK_OPTION: &[&str] = &["xread", "xreadgroup"];

/// Claims of idle stream entries: the idle time comes from each node's own clock.
/// Refused unless min-idle-time is 0 (argument 4).
pub const MIN_IDLE_TIME: &[&str] = &["xclaim", "xautoclaim"];

/// Hash-field expiry (Redis 7.4+, Valkey 9): the server expires fields on its own clock.
pub const FIELD_EXPIRY: &[&str] = &[
    "hexpire",
    "hpexpire",
    "hexpireat",
    "hpexpireat",
    "hsetex",
    "hgetex",
];

/// Command tip marking output that differs between nodes (random picks, clocks).
const NONDETERMINISTIC_TIP: &str = "nondeterministic_output";
/// Command tip marking output whose order differs between nodes (hash order): inside a
/// script the reply is sorted instead (`RAFT._SORT_REPLY`), as in the original.
const UNORDERED_TIP: &str = "nondeterministic_output_order";

/// Replies of sorted commands that are field/value pairs in RESP2: sorted by pair.
const PAIR_REPLIES: &[&str] = &["hgetall"];

/// Nondeterministic by tip, yet safe in scripts: XADD's `*` id is fixed from the entry time.
const DETERMINISTIC_HERE: &[&str] = &["xadd"];

/// Replies that describe this node's copy (memory, encodings, access times, this node's
/// subscribers), not the replicated data: refused inside scripts, where a script could
/// branch on them and write differently on each node. Outside scripts they stay as
/// classified (reads or passed through).
const NODE_LOCAL_REPLIES: &[&str] = &["memory", "object", "pubsub"];

/// Their reply counts this node's subscribers. Inside a script the message is still
/// published, but the script sees 0 on every node (see `counts_subscribers`).
const SUBSCRIBER_COUNTS: &[&str] = &["publish", "spublish"];

/// Readonly by their flags, yet they write: PFCOUNT stores the cardinality it computed in
/// the HLL's header, so served by one node it would make that node's bytes differ.
const WRITES_DESPITE_READONLY: &[&str] = &["pfcount"];

/// It must reach a server busy running a script, which could never apply a log entry
/// until the script ends; it describes that running script.
pub const PASS_THROUGH_SUBCOMMANDS: &[&str] = &["function|stats"];

/// Stopping a script on one node: every other node runs it to the end.
pub const KILL_SUBCOMMANDS: &[&str] = &["script|kill", "function|kill"];

/// A per-connection Lua debugging session, which cannot be replicated; and the kills.
pub const REFUSED_SUBCOMMANDS: &[&str] = &["script|debug", "script|kill", "function|kill"];

/// `<container> HELP` only prints usage text: no reason to log it.
const HELP_SUBCOMMAND: &str = "help";

/// Command names up to this length are lowercased on the stack; longer ones
/// (only possible with unusual module commands) take one allocation.
const STACK_NAME_BYTES: usize = 64;

/// The classification of every command the server knows, built once per `COMMAND` scan.
#[derive(Debug, Clone)]
pub struct CommandTable {
    /// Keyed by lowercase name bytes, so argv needs no UTF-8 check.
    commands: HashMap<Box<[u8]>, Entry>,
    /// Names longer than this are not in the table: skip lowercasing them.
    longest_name_bytes: usize,
    /// Every command and subcommand with its class, sorted by name (for docs).
    listing: Vec<(String, Class)>,
    /// What the table was built from, so `with_ignored` rebuilds it without the server.
    source: Vec<CommandInfo>,
    /// `ignored-commands`, lowercase (`name` or `container|sub`), known or not.
    ignored: HashSet<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    arity: i64,
    rule: Rule,
    /// Output differs between nodes (refused inside scripts).
    nondeterministic: bool,
    /// Only the order of the output differs between nodes (sorted inside scripts).
    unordered: bool,
    /// Redis' `denyoom` flag: refused while the server is over `maxmemory`.
    denyoom: bool,
}

/// The bits `RAFT.DEBUG COMMANDSPEC` answers, numbered as the original's command specs.
pub mod spec_flags {
    /// Served as a read.
    pub const READONLY: u32 = 1 << 1;
    /// Goes through the log.
    pub const WRITE: u32 = 1 << 2;
    /// Refused (`ERR not supported by RedisRaft`).
    pub const UNSUPPORTED: u32 = 1 << 3;
    /// Not intercepted: the server handles it on this node.
    pub const DONT_INTERCEPT: u32 = 1 << 4;
    /// Its reply is sorted inside scripts.
    pub const SORT_REPLY: u32 = 1 << 5;
    /// Its output differs between nodes: refused inside scripts.
    pub const RANDOM: u32 = 1 << 6;
}

/// Which server the module runs in, where replies differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerFlavor {
    /// `redis_version` (Valkey reports the Redis version it is compatible with, 7.2).
    pub redis_version: (u32, u32),
    pub valkey: bool,
}

impl ServerFlavor {
    /// From `INFO server` text (`redis_version:7.0.15`, `valkey_version:9.1.2`).
    pub fn from_info(info: &str) -> ServerFlavor {
        let mut flavor = ServerFlavor::default();
        for line in info.lines() {
            let line = line.trim_end();
            if let Some(version) = line.strip_prefix("redis_version:") {
                let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                flavor.redis_version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            } else if line.starts_with("valkey_version:") {
                flavor.valkey = true;
            }
        }
        flavor
    }

    /// Redis 7.2 reworded ACL refusals (`NOPERM No permissions to access a key`).
    pub fn acl_wording(self) -> AclWording {
        if self.valkey || self.redis_version >= (7, 2) {
            AclWording::Redis72
        } else {
            AclWording::Redis70
        }
    }

    /// Over maxmemory inside MULTI, Redis refuses to queue any command; Valkey (8+)
    /// refuses only `denyoom` ones.
    pub fn refuses_any_queued_command_on_oom(self) -> bool {
        !self.valkey
    }
}

/// How the server words an ACL refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclWording {
    Redis70,
    Redis72,
}

/// What ACL refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDenied<'a> {
    Command(&'a str),
    Key,
    Channel,
}

impl AclWording {
    /// The server's own `NOPERM` reply. `command`: lowercase name (`set`, `config|set`).
    pub fn noperm(self, denied: AclDenied<'_>, user: &str) -> String {
        match (self, denied) {
            (AclWording::Redis70, AclDenied::Key) => {
                "NOPERM this user has no permissions to access one of the keys used as arguments"
                    .into()
            }
            (AclWording::Redis70, AclDenied::Channel) => {
                "NOPERM this user has no permissions to access one of the channels used as arguments"
                    .into()
            }
            (AclWording::Redis70, AclDenied::Command(command)) => {
                format!("NOPERM this user has no permissions to run the '{command}' command")
            }
            (AclWording::Redis72, AclDenied::Key) => "NOPERM No permissions to access a key".into(),
            (AclWording::Redis72, AclDenied::Channel) => {
                "NOPERM No permissions to access a channel".into()
            }
            (AclWording::Redis72, AclDenied::Command(command)) => {
                format!("NOPERM User {user} has no permissions to run the '{command}' command")
            }
        }
    }
}

/// What a script gets from a command whose output could differ between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InScript {
    /// Runs as it is.
    Deterministic,
    /// Refused: its output differs between nodes.
    Refused,
    /// Its reply is sorted (`pairs`: sorted by field/value pair, e.g. HGETALL).
    Sorted { pairs: bool },
}

#[derive(Debug, Clone)]
enum Rule {
    Fixed(Class),
    /// Refused when any argument is `BLOCK`, else the class.
    RefuseBlockOption(Class),
    /// Refused unless argument 4 (min-idle-time) is `0`, else the class.
    RefuseMinIdle(Class),
    /// `SELECT 0` passes through; any other db is refused.
    SelectDb,
    /// Keyed by the lowercase subcommand name alone (`encoding`, not `object|encoding`).
    Subcommands {
        by_name: HashMap<Box<[u8]>, Subcommand>,
        longest_name_bytes: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Subcommand {
    arity: i64,
    class: Class,
    /// Output differs between nodes (refused inside scripts).
    nondeterministic: bool,
    /// Only the order of the output differs (sorted inside scripts).
    unordered: bool,
    /// Named in `ignored-commands`: left alone everywhere, scripts included.
    ignored: bool,
    /// Redis' `denyoom` flag.
    denyoom: bool,
}

impl CommandTable {
    /// Builds the table from the server's `COMMAND` output and the user's
    /// `ignored-commands` (names in any case; `container|sub` ignores one subcommand).
    pub fn new(infos: Vec<CommandInfo>, ignored: &[String]) -> Self {
        let ignored: HashSet<String> = ignored
            .iter()
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        let mut commands = HashMap::with_capacity(infos.len());
        let mut listing = Vec::with_capacity(infos.len());
        let source = infos.clone();
        for info in infos {
            let name = info.name.to_ascii_lowercase();
            let entry = build_entry(&name, &info, &ignored, &mut listing);
            commands.insert(name.into_bytes().into_boxed_slice(), entry);
        }
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        listing.dedup_by(|a, b| a.0 == b.0);
        let longest_name_bytes = commands.keys().map(|name| name.len()).max().unwrap_or(0);
        CommandTable {
            commands,
            longest_name_bytes,
            listing,
            source,
            ignored,
        }
    }

    /// The same commands with another `ignored-commands` (CONFIG SET at run time).
    pub fn with_ignored(&self, ignored: &[String]) -> CommandTable {
        CommandTable::new(self.source.clone(), ignored)
    }

    /// Whether `ignored-commands` names this command (`name`, or `container|sub`), known
    /// to the server or not: such a command is never intercepted.
    pub fn is_ignored(&self, argv: &[&[u8]]) -> bool {
        let Some(name) = argv.first() else {
            return false;
        };
        if self.ignored.is_empty() {
            return false;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if self.ignored.contains(&name) {
            return true;
        }
        argv.get(1).is_some_and(|sub| {
            let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
            self.ignored.contains(&format!("{name}|{sub}"))
        })
    }

    /// Classifies one client command; `argv[0]` is the command name in any case.
    pub fn classify(&self, argv: &[&[u8]]) -> Class {
        let Some(name) = argv.first() else {
            return Class::PassThrough;
        };
        if name.len() > self.longest_name_bytes {
            return Class::PassThrough;
        }
        let Some(entry) = with_lowercase(name, |lower| self.commands.get(lower)) else {
            return Class::PassThrough;
        };
        if !arity_accepts(entry.arity, argv.len()) {
            return Class::PassThrough;
        }
        match &entry.rule {
            Rule::Fixed(class) => *class,
            Rule::RefuseBlockOption(class) => {
                if argv[1..]
                    .iter()
                    .any(|arg| arg.eq_ignore_ascii_case(b"block"))
                {
                    Class::Refused
                } else {
                    *class
                }
            }
            Rule::RefuseMinIdle(class) => match argv.get(4) {
                Some(idle) if *idle != b"0" => Class::Refused,
                _ => *class,
            },
            Rule::SelectDb => match argv.get(1) {
                Some(db) if *db == b"0" => Class::PassThrough,
                Some(_) => Class::Refused,
                None => Class::PassThrough,
            },
            Rule::Subcommands {
                by_name,
                longest_name_bytes,
            } => {
                let Some(sub_name) = argv.get(1) else {
                    return Class::PassThrough;
                };
                if sub_name.len() > *longest_name_bytes {
                    return Class::PassThrough;
                }
                match with_lowercase(sub_name, |lower| by_name.get(lower).copied()) {
                    Some(sub) if arity_accepts(sub.arity, argv.len()) => sub.class,
                    _ => Class::PassThrough,
                }
            }
        }
    }

    /// Whether the server has a command of this name.
    pub fn has(&self, name: &[u8]) -> bool {
        name.len() <= self.longest_name_bytes
            && with_lowercase(name, |lower| self.commands.contains_key(lower))
    }

    /// Whether the server knows this command and its argument count fits.
    pub fn knows(&self, argv: &[&[u8]]) -> bool {
        let Some(name) = argv.first() else {
            return false;
        };
        name.len() <= self.longest_name_bytes
            && with_lowercase(name, |lower| self.commands.get(lower))
                .is_some_and(|entry| arity_accepts(entry.arity, argv.len()))
    }

    /// Whether a script calling this command could make nodes diverge because its output
    /// is random or node-local (refused), as opposed to only unordered (sorted; see
    /// [`CommandTable::in_script`]). Unknown commands are not (Redis rejects them).
    pub fn is_nondeterministic(&self, argv: &[&[u8]]) -> bool {
        self.in_script(argv) == InScript::Refused
    }

    /// How a script gets this command's output so that every node computes the same.
    pub fn in_script(&self, argv: &[&[u8]]) -> InScript {
        let Some(name) = argv.first() else {
            return InScript::Deterministic;
        };
        if name.len() > self.longest_name_bytes {
            return InScript::Deterministic;
        }
        let Some(entry) = with_lowercase(name, |lower| self.commands.get(lower)) else {
            return InScript::Deterministic;
        };
        let sub = match (&entry.rule, argv.get(1)) {
            (
                Rule::Subcommands {
                    by_name,
                    longest_name_bytes,
                },
                Some(sub_name),
            ) if sub_name.len() <= *longest_name_bytes => {
                with_lowercase(sub_name, |lower| by_name.get(lower).copied())
            }
            _ => None,
        };
        let (nondeterministic, unordered) = match sub {
            Some(sub) if sub.ignored => return InScript::Deterministic,
            _ if entry.nondeterministic => (true, false),
            Some(sub) => (sub.nondeterministic, sub.unordered),
            None => (false, entry.unordered),
        };
        if nondeterministic {
            InScript::Refused
        } else if unordered {
            let pairs = PAIR_REPLIES
                .iter()
                .any(|pair| name.eq_ignore_ascii_case(pair.as_bytes()));
            InScript::Sorted { pairs }
        } else {
            InScript::Deterministic
        }
    }

    /// `RAFT.DEBUG COMMANDSPEC`: how the module handles a command, as the original's bit
    /// flags ([`spec_flags`]); `None` for a command the server does not know.
    pub fn spec_flags(&self, argv: &[&[u8]]) -> Option<u32> {
        let name = argv.first()?;
        if !self.has(name) {
            return None;
        }
        // The class of a container is that of the subcommand named (its arity is not
        // checked here: only the names matter).
        let entry = with_lowercase(name, |lower| self.commands.get(lower))?;
        let class = match (&entry.rule, argv.get(1)) {
            (Rule::Subcommands { by_name, .. }, Some(sub)) => {
                with_lowercase(sub, |lower| by_name.get(lower).map(|s| s.class))?
            }
            (Rule::Subcommands { .. }, None) => Class::PassThrough,
            (Rule::Fixed(class), _) => *class,
            _ => {
                let mut probe: Vec<&[u8]> = argv.to_vec();
                while !arity_accepts(entry.arity, probe.len()) && probe.len() < 64 {
                    probe.push(b"0");
                }
                self.classify(&probe)
            }
        };
        let mut flags = match class {
            Class::Read => spec_flags::READONLY,
            Class::Write | Class::Transaction => spec_flags::WRITE,
            Class::Refused => spec_flags::UNSUPPORTED,
            Class::PassThrough => spec_flags::DONT_INTERCEPT,
        };
        match self.in_script(argv) {
            InScript::Sorted { .. } => flags |= spec_flags::SORT_REPLY,
            InScript::Refused => flags |= spec_flags::RANDOM,
            InScript::Deterministic => {}
        }
        Some(flags)
    }

    /// The lowercase name Redis gives the command in errors: `set`, `config|set`.
    pub fn full_name(&self, argv: &[&[u8]]) -> String {
        let Some(name) = argv.first() else {
            return String::new();
        };
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        let container = name.len() <= self.longest_name_bytes
            && with_lowercase(name, |l| self.commands.get(l))
                .is_some_and(|entry| matches!(entry.rule, Rule::Subcommands { .. }));
        match argv.get(1) {
            Some(sub) if container => {
                format!(
                    "{lower}|{}",
                    String::from_utf8_lossy(sub).to_ascii_lowercase()
                )
            }
            _ => lower,
        }
    }

    /// Whether Redis refuses this command while used memory is over `maxmemory` (its
    /// `denyoom` flag; for a container, the subcommand's). Unknown commands are not.
    pub fn denies_oom(&self, argv: &[&[u8]]) -> bool {
        let Some(name) = argv.first() else {
            return false;
        };
        if name.len() > self.longest_name_bytes {
            return false;
        }
        let Some(entry) = with_lowercase(name, |lower| self.commands.get(lower)) else {
            return false;
        };
        match (&entry.rule, argv.get(1)) {
            (
                Rule::Subcommands {
                    by_name,
                    longest_name_bytes,
                },
                Some(sub_name),
            ) if sub_name.len() <= *longest_name_bytes => {
                with_lowercase(sub_name, |lower| by_name.get(lower).map(|sub| sub.denyoom))
                    .unwrap_or(false)
            }
            (Rule::Subcommands { .. }, _) => false,
            _ => entry.denyoom,
        }
    }

    /// Whether the command's reply counts this node's subscribers (PUBLISH, SPUBLISH).
    pub fn counts_subscribers(argv: &[&[u8]]) -> bool {
        argv.first().is_some_and(|name| {
            SUBSCRIBER_COUNTS
                .iter()
                .any(|wanted| name.eq_ignore_ascii_case(wanted.as_bytes()))
        })
    }

    /// `SCRIPT KILL` / `FUNCTION KILL` (refused; see [`KILL_SUBCOMMANDS`]).
    pub fn is_kill(argv: &[&[u8]]) -> bool {
        let (Some(name), Some(sub)) = (argv.first(), argv.get(1)) else {
            return false;
        };
        KILL_SUBCOMMANDS.iter().any(|full| {
            full.split_once('|').is_some_and(|(parent, child)| {
                name.eq_ignore_ascii_case(parent.as_bytes())
                    && sub.eq_ignore_ascii_case(child.as_bytes())
            })
        })
    }

    /// Number of top-level commands (containers count once).
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Every command with its class, sorted by name, for generated docs.
    /// Containers are listed by their subcommands (`object|encoding`), and
    /// `select` as Refused (only `SELECT 0` passes through).
    pub fn entries(&self) -> impl Iterator<Item = (&str, Class)> {
        self.listing
            .iter()
            .map(|(name, class)| (name.as_str(), *class))
    }
}

fn build_entry(
    name: &str,
    info: &CommandInfo,
    ignored: &HashSet<String>,
    listing: &mut Vec<(String, Class)>,
) -> Entry {
    let fixed = |class: Class, listing: &mut Vec<(String, Class)>| {
        listing.push((name.to_string(), class));
        Rule::Fixed(class)
    };
    let rule = if ignored.contains(name) || is_never_intercepted(name) {
        fixed(Class::PassThrough, listing)
    } else if TRANSACTIONS.contains(&name) {
        fixed(Class::Transaction, listing)
    } else if is_refused(name) {
        fixed(Class::Refused, listing)
    } else if BLOCK_OPTION.contains(&name) {
        let class = class_from_flags(&info.flags);
        listing.push((name.to_string(), class));
        listing.push((format!("{name} (with BLOCK)"), Class::Refused));
        Rule::RefuseBlockOption(class)
    } else if MIN_IDLE_TIME.contains(&name) {
        let class = class_from_flags(&info.flags);
        listing.push((format!("{name} (min-idle-time 0)"), class));
        listing.push((format!("{name} (min-idle-time > 0)"), Class::Refused));
        Rule::RefuseMinIdle(class)
    } else if name == "select" {
        listing.push((name.to_string(), Class::Refused));
        Rule::SelectDb
    } else if !info.subcommands.is_empty() {
        build_subcommands(name, &info.subcommands, ignored, listing)
    } else if WRITES_DESPITE_READONLY.contains(&name) {
        fixed(Class::Write, listing)
    } else {
        fixed(class_from_flags(&info.flags), listing)
    };
    let nondeterministic = NODE_LOCAL_REPLIES.contains(&name)
        || (!DETERMINISTIC_HERE.contains(&name) && has_tip(info, NONDETERMINISTIC_TIP));
    Entry {
        arity: info.arity,
        rule,
        nondeterministic,
        unordered: has_tip(info, UNORDERED_TIP),
        denyoom: has_flag(info, DENYOOM_FLAG),
    }
}

fn build_subcommands(
    parent: &str,
    infos: &[CommandInfo],
    ignored: &HashSet<String>,
    listing: &mut Vec<(String, Class)>,
) -> Rule {
    let mut by_name = HashMap::with_capacity(infos.len());
    for info in infos {
        let lower = info.name.to_ascii_lowercase();
        // Redis reports `object|encoding`; tolerate a bare `encoding` too.
        let sub_name = lower.rsplit('|').next().unwrap_or_default().to_string();
        let full_name = format!("{parent}|{sub_name}");
        let class = if ignored.contains(&full_name)
            || sub_name == HELP_SUBCOMMAND
            || PASS_THROUGH_SUBCOMMANDS.contains(&full_name.as_str())
        {
            Class::PassThrough
        } else if REFUSED_SUBCOMMANDS.contains(&full_name.as_str()) {
            Class::Refused
        } else {
            class_from_flags(&info.flags)
        };
        let subcommand = Subcommand {
            arity: info.arity,
            class,
            nondeterministic: has_tip(info, NONDETERMINISTIC_TIP),
            unordered: has_tip(info, UNORDERED_TIP),
            ignored: ignored.contains(&full_name),
            denyoom: has_flag(info, DENYOOM_FLAG),
        };
        listing.push((full_name, class));
        by_name.insert(sub_name.into_bytes().into_boxed_slice(), subcommand);
    }
    let longest_name_bytes = by_name.keys().map(|name| name.len()).max().unwrap_or(0);
    Rule::Subcommands {
        by_name,
        longest_name_bytes,
    }
}

/// The `COMMAND` flag of commands Redis refuses while used memory is over `maxmemory`.
const DENYOOM_FLAG: &str = "denyoom";

fn has_flag(info: &CommandInfo, flag: &str) -> bool {
    info.flags.iter().any(|f| f == flag)
}

fn has_tip(info: &CommandInfo, tip: &str) -> bool {
    info.tips.iter().any(|t| t == tip)
}

fn is_never_intercepted(name: &str) -> bool {
    name == "raft"
        || name.starts_with("raft.")
        || [
            CONTRACT_PASS_THROUGH,
            CONNECTION_LOCAL,
            NODE_INTROSPECTION,
            SUBSCRIPTIONS,
            CLUSTER_TOPOLOGY,
        ]
        .iter()
        .any(|list| list.contains(&name))
}

fn is_refused(name: &str) -> bool {
    [
        REPLICATION_AND_PERSISTENCE,
        OTHER_DATABASES,
        OUTSIDE_THE_LOG,
        FIELD_EXPIRY,
    ]
    .iter()
    .any(|list| list.contains(&name))
}

/// `readonly` → Read; `write`, no flag, or flags we do not know (PUBLISH, EVAL)
/// → Write, because logging a read is only slow while not logging a write diverges nodes.
fn class_from_flags(flags: &[String]) -> Class {
    if flags
        .iter()
        .any(|flag| flag.eq_ignore_ascii_case("readonly"))
    {
        Class::Read
    } else {
        Class::Write
    }
}

/// Redis arity semantics: positive = exactly that many arguments, negative = at least `|arity|`.
fn arity_accepts(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

/// Redis' reply to a command name it does not know (newlines become spaces).
pub fn unknown_command_error(argv: &[&[u8]]) -> String {
    let mut args = String::new();
    for arg in argv.iter().skip(1) {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        let text = String::from_utf8_lossy(arg);
        let shown: String = text.chars().take(room).collect();
        args.push_str(&format!("'{shown}' "));
    }
    let name: String = argv
        .first()
        .map(|name| String::from_utf8_lossy(name).chars().take(128).collect())
        .unwrap_or_default();
    format!("ERR unknown command '{name}', with args beginning with: {args}")
        .replace(['\r', '\n'], " ")
}

/// Redis' reply to a known command with the wrong number of arguments.
pub fn arity_error(name: &[u8]) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(name).to_ascii_lowercase()
    )
}

/// Calls `f` with an ASCII-lowercased copy of `bytes`, on the stack when it fits.
fn with_lowercase<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if bytes.len() <= STACK_NAME_BYTES {
        let mut buffer = [0u8; STACK_NAME_BYTES];
        let lower = &mut buffer[..bytes.len()];
        lower.copy_from_slice(bytes);
        lower.make_ascii_lowercase();
        f(lower)
    } else {
        f(&bytes.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, arity: i64, flags: &[&str], subcommands: Vec<CommandInfo>) -> CommandInfo {
        CommandInfo {
            name: name.to_string(),
            arity,
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
            tips: Vec::new(),
            subcommands,
        }
    }

    /// Mirrors Redis 7.0.15 `COMMAND` output (names, arities, flags) for a representative set.
    fn redis_7_0_commands() -> Vec<CommandInfo> {
        vec![
            info("set", -3, &["write", "denyoom"], vec![]),
            info("get", 2, &["readonly", "fast"], vec![]),
            info("incr", 2, &["write", "denyoom", "fast"], vec![]),
            info("del", -2, &["write"], vec![]),
            info("expire", -3, &["write", "fast"], vec![]),
            info("hset", -4, &["write", "denyoom", "fast"], vec![]),
            info("lpush", -3, &["write", "denyoom", "fast"], vec![]),
            info("lrange", 4, &["readonly"], vec![]),
            info("zadd", -4, &["write", "denyoom", "fast"], vec![]),
            info(
                "eval",
                -3,
                &[
                    "noscript",
                    "stale",
                    "skip_monitor",
                    "no_mandatory_keys",
                    "movablekeys",
                ],
                vec![],
            ),
            info(
                "eval_ro",
                -3,
                &[
                    "readonly",
                    "noscript",
                    "stale",
                    "skip_monitor",
                    "no_mandatory_keys",
                    "movablekeys",
                ],
                vec![],
            ),
            info(
                "publish",
                3,
                &["pubsub", "loading", "stale", "fast"],
                vec![],
            ),
            info(
                "object",
                -2,
                &[],
                vec![
                    info("object|help", 2, &["loading", "stale"], vec![]),
                    info("object|encoding", 3, &["readonly"], vec![]),
                    info("object|freq", 3, &["readonly"], vec![]),
                ],
            ),
            info(
                "xgroup",
                -2,
                &[],
                vec![
                    info("xgroup|create", -5, &["write", "denyoom"], vec![]),
                    info("xgroup|destroy", 4, &["write"], vec![]),
                    info("xgroup|help", 2, &["loading", "stale"], vec![]),
                ],
            ),
            info(
                "script",
                -2,
                &[],
                vec![
                    info("script|load", 3, &["noscript", "stale"], vec![]),
                    info("script|flush", -2, &["noscript"], vec![]),
                    info("script|kill", 2, &["noscript", "allow_busy"], vec![]),
                    info("script|debug", 3, &["noscript"], vec![]),
                    info("script|help", 2, &["loading", "stale"], vec![]),
                ],
            ),
            info("select", 2, &["loading", "stale", "fast"], vec![]),
            info(
                "multi",
                1,
                &["noscript", "loading", "stale", "fast", "allow_busy"],
                vec![],
            ),
            info(
                "exec",
                1,
                &["noscript", "loading", "stale", "skip_slowlog"],
                vec![],
            ),
            info(
                "watch",
                -2,
                &["noscript", "loading", "stale", "fast", "allow_busy"],
                vec![],
            ),
            info(
                "config",
                -2,
                &[],
                vec![
                    info(
                        "config|get",
                        -3,
                        &["admin", "noscript", "loading", "stale"],
                        vec![],
                    ),
                    info(
                        "config|set",
                        -4,
                        &["admin", "noscript", "loading", "stale"],
                        vec![],
                    ),
                ],
            ),
            info("ping", -1, &["fast"], vec![]),
            info("keys", 2, &["readonly"], vec![]),
            info("echo", 2, &["loading", "stale", "fast"], vec![]),
            info(
                "subscribe",
                -2,
                &["pubsub", "noscript", "loading", "stale"],
                vec![],
            ),
            info(
                "cluster",
                -2,
                &[],
                vec![info("cluster|info", 2, &["stale"], vec![])],
            ),
            info(
                "sync",
                1,
                &["admin", "noscript", "no_async_loading", "no_multi"],
                vec![],
            ),
            info(
                "save",
                1,
                &["admin", "noscript", "no_async_loading", "no_multi"],
                vec![],
            ),
            info(
                "debug",
                -2,
                &["admin", "noscript", "loading", "stale"],
                vec![],
            ),
            info("swapdb", 3, &["write", "fast"], vec![]),
            info("move", 3, &["write", "fast"], vec![]),
            info("wait", 3, &["noscript"], vec![]),
            // Module commands as the C module registers them.
            info("raft", -2, &["write"], vec![]),
            info("raft.cluster", -2, &["admin"], vec![]),
            info("raft.debug", -2, &["admin"], vec![]),
        ]
    }

    fn table() -> CommandTable {
        CommandTable::new(redis_7_0_commands(), &[])
    }

    fn classify(table: &CommandTable, line: &str) -> Class {
        let argv: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        table.classify(&argv)
    }

    #[test]
    fn readonly_flag_is_read_and_everything_else_is_write() {
        let table = table();
        for line in ["get k", "lrange k 0 -1", "keys *", "eval_ro return 0"] {
            assert_eq!(classify(&table, line), Class::Read, "{line}");
        }
        for line in [
            "set k v",
            "incr k",
            "del a b",
            "expire k 10",
            "hset h f v",
            "lpush l a b",
            "zadd z 1 m",
            "eval return 0",
            "publish channel message",
        ] {
            assert_eq!(classify(&table, line), Class::Write, "{line}");
        }
    }

    #[test]
    fn denyoom_follows_the_command_flag_and_the_subcommand() {
        let table = table();
        let denies = |line: &str| {
            let argv: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            table.denies_oom(&argv)
        };
        for line in [
            "set k v",
            "SET k v",
            "incr k",
            "lpush l a",
            "xgroup create s g $",
        ] {
            assert!(denies(line), "{line}");
        }
        for line in [
            "del a",
            "expire k 10",
            "get k",
            "eval return 0",
            "xgroup",
            "nosuch",
        ] {
            assert!(!denies(line), "{line}");
        }
    }

    #[test]
    fn server_flavor_from_info() {
        let redis = ServerFlavor::from_info(
            "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n",
        );
        assert_eq!(
            redis,
            ServerFlavor {
                redis_version: (7, 0),
                valkey: false
            }
        );
        assert_eq!(redis.acl_wording(), AclWording::Redis70);
        assert!(redis.refuses_any_queued_command_on_oom());
        let valkey =
            ServerFlavor::from_info("# Server\r\nredis_version:7.2.4\r\nvalkey_version:9.1.2\r\n");
        assert!(valkey.valkey);
        assert_eq!(valkey.acl_wording(), AclWording::Redis72);
        assert!(!valkey.refuses_any_queued_command_on_oom());
        let redis74 = ServerFlavor::from_info("redis_version:7.4.1\n");
        assert_eq!(redis74.acl_wording(), AclWording::Redis72);
        assert_eq!(
            AclWording::Redis72.noperm(AclDenied::Command("set"), "bob"),
            "NOPERM User bob has no permissions to run the 'set' command"
        );
    }

    #[test]
    fn command_names_match_in_any_case() {
        let table = table();
        assert_eq!(classify(&table, "SET k v"), Class::Write);
        assert_eq!(classify(&table, "gEt k"), Class::Read);
        assert_eq!(classify(&table, "MULTI"), Class::Transaction);
        assert_eq!(classify(&table, "OBJECT ENCODING k"), Class::Read);
        assert_eq!(classify(&table, "Raft.Cluster INIT"), Class::PassThrough);
    }

    #[test]
    fn unknown_commands_pass_through() {
        let table = table();
        assert_eq!(classify(&table, "nosuchcommand a b"), Class::PassThrough);
        let long_name = "x".repeat(200);
        assert_eq!(classify(&table, &long_name), Class::PassThrough);
        assert_eq!(
            table.classify(&[b"s\xffet", b"k", b"v"]),
            Class::PassThrough
        );
        assert_eq!(table.classify(&[]), Class::PassThrough);
    }

    #[test]
    fn positive_arity_requires_exact_argument_count() {
        let table = table();
        assert_eq!(classify(&table, "get k"), Class::Read);
        assert_eq!(classify(&table, "get"), Class::PassThrough);
        assert_eq!(classify(&table, "get a b"), Class::PassThrough);
        assert_eq!(classify(&table, "multi extra"), Class::PassThrough);
    }

    #[test]
    fn negative_arity_requires_a_minimum_argument_count() {
        let table = table();
        assert_eq!(classify(&table, "set k"), Class::PassThrough);
        assert_eq!(classify(&table, "set k v"), Class::Write);
        assert_eq!(classify(&table, "set k v ex 10 nx"), Class::Write);
        assert_eq!(classify(&table, "del"), Class::PassThrough);
        assert_eq!(classify(&table, "hset h f"), Class::PassThrough);
    }

    #[test]
    fn contract_and_connection_local_commands_pass_through() {
        let table = table();
        for line in [
            "ping",
            "ping hello",
            "config get maxmemory",
            "config set maxmemory 1",
            "echo hi",
            "subscribe channel",
            "cluster info",
            "raft set k v",
            "raft.cluster init",
            "raft.debug exec set k v",
            "raft.unknown anything",
        ] {
            assert_eq!(classify(&table, line), Class::PassThrough, "{line}");
        }
    }

    #[test]
    fn replication_persistence_and_multi_db_commands_are_refused() {
        let table = table();
        for line in [
            "sync",
            "save",
            "debug sleep 0",
            "swapdb 0 1",
            "move k 1",
            "wait 1 0",
        ] {
            assert_eq!(classify(&table, line), Class::Refused, "{line}");
        }
    }

    #[test]
    fn transactions_are_kept_by_the_module() {
        let table = table();
        assert_eq!(classify(&table, "multi"), Class::Transaction);
        assert_eq!(classify(&table, "exec"), Class::Transaction);
        assert_eq!(classify(&table, "watch k"), Class::Transaction);
    }

    #[test]
    fn stream_block_option_is_refused() {
        let mut infos = redis_7_0_commands();
        infos.push(info("blpop", -3, &["write", "blocking"], vec![]));
        infos.push(info("xread", -4, &["readonly", "blocking"], vec![]));
        infos.push(info("xautoclaim", -6, &["write"], vec![]));
        let table = CommandTable::new(infos, &[]);
        assert_eq!(classify(&table, "blpop k 0"), Class::Write);
        assert_eq!(classify(&table, "xread STREAMS s 0"), Class::Read);
        assert_eq!(
            classify(&table, "xread block 10 STREAMS s 0"),
            Class::Refused
        );
        assert_eq!(classify(&table, "xautoclaim s g c 0 0"), Class::Write);
        assert_eq!(classify(&table, "xautoclaim s g c 100 0"), Class::Refused);
    }

    #[test]
    fn errors_for_unknown_commands_and_arity_match_redis() {
        assert_eq!(
            unknown_command_error(&[b"foo", b"a", b"b"]),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            unknown_command_error(&[b"foo"]),
            "ERR unknown command 'foo', with args beginning with: "
        );
        assert_eq!(
            arity_error(b"GET"),
            "ERR wrong number of arguments for 'get' command"
        );
        let table = table();
        assert!(table.knows(&[b"GET", b"k"]));
        assert!(!table.knows(&[b"GET"]));
        assert!(!table.knows(&[b"nosuch"]));
    }

    #[test]
    fn nondeterministic_tips_mark_commands_except_xadd() {
        let mut spop = info("spop", -2, &["write"], vec![]);
        spop.tips = vec!["nondeterministic_output".into()];
        let mut smembers = info("smembers", 2, &["readonly"], vec![]);
        smembers.tips = vec!["nondeterministic_output_order".into()];
        let mut xadd = info("xadd", -5, &["write"], vec![]);
        xadd.tips = vec!["nondeterministic_output".into()];
        let mut hgetall = info("hgetall", 2, &["readonly"], vec![]);
        hgetall.tips = vec!["nondeterministic_output_order".into()];
        let mut infos = redis_7_0_commands();
        infos.extend([spop, smembers, xadd, hgetall]);
        let table = CommandTable::new(infos, &[]);
        assert!(table.is_nondeterministic(&[b"SPOP", b"k"]));
        // Only unordered: sorted inside scripts, not refused.
        assert!(!table.is_nondeterministic(&[b"smembers", b"k"]));
        assert_eq!(
            table.in_script(&[b"smembers", b"k"]),
            InScript::Sorted { pairs: false }
        );
        assert_eq!(table.in_script(&[b"SPOP", b"k"]), InScript::Refused);
        assert_eq!(table.in_script(&[b"get", b"k"]), InScript::Deterministic);
        assert_eq!(
            table.in_script(&[b"HGETALL", b"h"]),
            InScript::Sorted { pairs: true }
        );
        assert!(!table.is_nondeterministic(&[b"xadd", b"s", b"*", b"f", b"v"]));
        assert!(!table.is_nondeterministic(&[b"get", b"k"]));
        assert!(!table.is_nondeterministic(&[b"nosuch"]));
    }

    /// Tips on subcommands count (OBJECT IDLETIME/FREQ), and replies about this node's
    /// copy are node-local inside scripts whatever their tips.
    #[test]
    fn node_local_replies_and_subcommand_tips_are_nondeterministic() {
        let mut idletime = info("object|idletime", 3, &["readonly"], vec![]);
        idletime.tips = vec!["nondeterministic_output".into()];
        let encoding = info("object|encoding", 3, &["readonly"], vec![]);
        let object = info("object", -2, &[], vec![idletime, encoding]);
        let pfcount = info("pfcount", -2, &["readonly", "may_replicate"], vec![]);
        let memory = info(
            "memory",
            -2,
            &[],
            vec![info("memory|usage", -3, &["readonly"], vec![])],
        );
        let pubsub = info(
            "pubsub",
            -2,
            &[],
            vec![info("pubsub|numsub", -2, &[], vec![])],
        );
        let mut infos = redis_7_0_commands();
        infos.retain(|i| !["object", "pfcount", "memory", "pubsub"].contains(&i.name.as_str()));
        infos.extend([object, pfcount, memory, pubsub]);
        let table = CommandTable::new(infos, &[]);
        assert!(table.is_nondeterministic(&[b"OBJECT", b"IDLETIME", b"k"]));
        assert!(table.is_nondeterministic(&[b"object", b"encoding", b"k"]));
        assert!(table.is_nondeterministic(&[b"memory", b"usage", b"k"]));
        assert!(table.is_nondeterministic(&[b"PUBSUB", b"NUMSUB", b"ch"]));
        assert!(!table.is_nondeterministic(&[b"get", b"k"]));
        assert!(CommandTable::counts_subscribers(&[b"PUBLISH", b"ch", b"m"]));
        assert!(CommandTable::counts_subscribers(&[
            b"spublish",
            b"ch",
            b"m"
        ]));
        assert!(!CommandTable::counts_subscribers(&[b"pubsub", b"numsub"]));
        // PFCOUNT writes its cached cardinality: it goes through the log.
        assert_eq!(classify(&table, "pfcount h"), Class::Write);
        assert_eq!(classify(&table, "object encoding k"), Class::Read);
    }

    #[test]
    fn command_specs_are_the_originals_bits() {
        let mut infos = redis_7_0_commands();
        let mut smembers = info("smembers", 2, &["readonly"], vec![]);
        smembers.tips = vec!["nondeterministic_output_order".into()];
        infos.push(smembers);
        let table = CommandTable::new(infos, &["get".to_string()]);
        let spec = |words: &[&[u8]]| table.spec_flags(words);
        assert_eq!(spec(&[b"SET"]), Some(spec_flags::WRITE));
        assert_eq!(spec(&[b"lrange"]), Some(spec_flags::READONLY));
        assert_eq!(
            spec(&[b"smembers"]),
            Some(spec_flags::READONLY | spec_flags::SORT_REPLY)
        );
        // Ignored: not intercepted, bit 4.
        assert_eq!(spec(&[b"get"]), Some(1 << 4));
        assert_eq!(spec(&[b"ping"]), Some(spec_flags::DONT_INTERCEPT));
        assert_eq!(spec(&[b"script", b"debug"]), Some(spec_flags::UNSUPPORTED));
        assert_eq!(spec(&[b"nosuch"]), None);
    }

    #[test]
    fn only_select_of_db_zero_passes_through() {
        let table = table();
        assert_eq!(classify(&table, "select 0"), Class::PassThrough);
        assert_eq!(classify(&table, "SELECT 0"), Class::PassThrough);
        assert_eq!(classify(&table, "select 1"), Class::Refused);
        assert_eq!(classify(&table, "select 00"), Class::Refused);
        assert_eq!(classify(&table, "select abc"), Class::Refused);
        assert_eq!(classify(&table, "select"), Class::PassThrough);
        assert_eq!(classify(&table, "select 0 1"), Class::PassThrough);
    }

    #[test]
    fn containers_are_classified_by_their_subcommand() {
        let table = table();
        assert_eq!(classify(&table, "object encoding k"), Class::Read);
        assert_eq!(classify(&table, "Object Freq k"), Class::Read);
        assert_eq!(classify(&table, "xgroup create s g $"), Class::Write);
        assert_eq!(classify(&table, "XGROUP DESTROY s g"), Class::Write);
        assert_eq!(classify(&table, "script load return"), Class::Write);
        assert_eq!(classify(&table, "script flush"), Class::Write);
    }

    #[test]
    fn missing_unknown_or_wrong_arity_subcommands_pass_through() {
        let table = table();
        assert_eq!(classify(&table, "object"), Class::PassThrough);
        assert_eq!(classify(&table, "object nosuchsub k"), Class::PassThrough);
        assert_eq!(classify(&table, "object encoding"), Class::PassThrough);
        assert_eq!(classify(&table, "object encoding a b"), Class::PassThrough);
        assert_eq!(classify(&table, "xgroup create s g"), Class::PassThrough);
        let long_sub = format!("object {} k", "e".repeat(100));
        assert_eq!(classify(&table, &long_sub), Class::PassThrough);
    }

    #[test]
    fn help_kill_and_debug_subcommands_have_fixed_classes() {
        let table = table();
        assert_eq!(classify(&table, "object help"), Class::PassThrough);
        assert_eq!(classify(&table, "xgroup HELP"), Class::PassThrough);
        assert_eq!(classify(&table, "script kill"), Class::Refused);
        assert!(CommandTable::is_kill(&[b"SCRIPT", b"Kill"]));
        assert!(CommandTable::is_kill(&[b"function", b"KILL"]));
        assert!(!CommandTable::is_kill(&[b"script", b"load", b"x"]));
        assert_eq!(classify(&table, "script debug yes"), Class::Refused);
    }

    #[test]
    fn ignored_commands_are_known_to_the_table_and_follow_changes() {
        let table = CommandTable::new(
            redis_7_0_commands(),
            &["Nosuch".into(), "object|help".into()],
        );
        assert!(table.is_ignored(&[b"NOSUCH", b"x"]));
        assert!(table.is_ignored(&[b"object", b"HELP"]));
        assert!(!table.is_ignored(&[b"object", b"encoding", b"k"]));
        assert!(!table.is_ignored(&[b"set", b"k", b"v"]));
        let changed = table.with_ignored(&["set".into()]);
        assert!(changed.is_ignored(&[b"SET", b"k", b"v"]));
        assert_eq!(classify(&changed, "set k v"), Class::PassThrough);
        assert!(!changed.is_ignored(&[b"nosuch"]));
    }

    #[test]
    fn ignored_commands_pass_through() {
        let ignored = vec![
            " SET ".to_string(),
            "object|encoding".to_string(),
            "multi".to_string(),
        ];
        let table = CommandTable::new(redis_7_0_commands(), &ignored);
        assert_eq!(classify(&table, "set k v"), Class::PassThrough);
        assert_eq!(classify(&table, "object encoding k"), Class::PassThrough);
        assert_eq!(classify(&table, "object freq k"), Class::Read);
        assert_eq!(classify(&table, "multi"), Class::PassThrough);
        assert_eq!(classify(&table, "get k"), Class::Read);
    }

    #[test]
    fn subcommand_names_may_omit_the_parent_prefix() {
        let infos = vec![info(
            "XINFO",
            -2,
            &[],
            vec![info("STREAM", -3, &["readonly"], vec![])],
        )];
        let table = CommandTable::new(infos, &[]);
        assert_eq!(classify(&table, "xinfo stream s"), Class::Read);
        assert_eq!(
            table.entries().collect::<Vec<_>>(),
            vec![("xinfo|stream", Class::Read)]
        );
    }

    #[test]
    fn entries_list_commands_and_subcommands_sorted() {
        let table = table();
        let entries: Vec<(&str, Class)> = table.entries().collect();
        let names: Vec<&str> = entries.iter().map(|(name, _)| *name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(entries.contains(&("set", Class::Write)));
        assert!(entries.contains(&("get", Class::Read)));
        assert!(entries.contains(&("select", Class::Refused)));
        assert!(entries.contains(&("object|encoding", Class::Read)));
        assert!(entries.contains(&("config", Class::PassThrough)));
        assert!(!names.contains(&"object"));
    }

    #[test]
    fn len_counts_top_level_commands() {
        let table = table();
        assert_eq!(table.len(), redis_7_0_commands().len());
        assert!(!table.is_empty());
        assert!(CommandTable::new(Vec::new(), &[]).is_empty());
    }

    #[test]
    fn redis_arity_semantics() {
        assert!(arity_accepts(2, 2));
        assert!(!arity_accepts(2, 3));
        assert!(arity_accepts(-2, 2));
        assert!(arity_accepts(-2, 5));
        assert!(!arity_accepts(-2, 1));
    }
}
