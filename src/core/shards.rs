//! Shard groups (`docs/SHARDING.md`): the replicated map of which Raft group serves which
//! of the 16,384 hash slots, its validation, and the routing decision a command gets
//! against it. Every node applies the same map changes in log order and routes a command
//! when it applies it, so they all decide alike. Pure: no I/O, no clock.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::config::MAX_SLOT;

/// Slots of Redis Cluster's keyspace.
pub const SLOT_COUNT: usize = MAX_SLOT as usize + 1;
/// A shard group's id is its cluster's dbid.
pub const GROUP_ID_LEN: usize = 32;
/// A node's id in cluster replies: the dbid, then the raft id as 8 lowercase hex digits.
pub const NODE_ID_LEN: usize = 40;
/// Bound on what one map holds, so a hostile `ADD` or entry cannot grow it without limit.
pub const MAX_GROUPS: usize = 1024;
pub const MAX_RANGES_PER_GROUP: usize = SLOT_COUNT;
pub const MAX_NODES_PER_GROUP: usize = 256;

pub const ERR_NOT_ENABLED: &str = "ERR RedisRaft sharding not enabled";
pub const ERR_CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
pub const ERR_CLUSTERDOWN: &str = "CLUSTERDOWN Hash slot is not served";
pub const ERR_TRYAGAIN: &str = "TRYAGAIN Multiple keys request during rehashing of slot";

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `key`, as Redis Cluster computes it: only the part between the first
/// `{` and the next `}` counts when that part is not empty (a hash tag).
pub fn key_hash_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(0) | None => key,
            Some(len) => &key[open + 1..open + 1 + len],
        },
        None => key,
    };
    crc16(hashed) & MAX_SLOT
}

/// The one slot every key falls in; `Ok(None)` for no keys.
pub fn common_slot<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<u16>, CrossSlot> {
    let mut slot = None;
    for key in keys {
        let this = key_hash_slot(key);
        match slot {
            None => slot = Some(this),
            Some(seen) if seen != this => return Err(CrossSlot),
            Some(_) => {}
        }
    }
    Ok(slot)
}

/// Keys of one request fall in different slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossSlot;

/// What a range of slots is to the group that lists it. The numbers are the wire's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeKind {
    Stable,
    Importing,
    Migrating,
}

impl RangeKind {
    pub fn from_number(number: i64) -> Option<RangeKind> {
        match number {
            1 => Some(RangeKind::Stable),
            2 => Some(RangeKind::Importing),
            3 => Some(RangeKind::Migrating),
            _ => None,
        }
    }

    pub fn number(self) -> i64 {
        match self {
            RangeKind::Stable => 1,
            RangeKind::Importing => 2,
            RangeKind::Migrating => 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub kind: RangeKind,
    /// Names the migration a non-stable range belongs to (0 when stable).
    pub session_key: u64,
}

impl SlotRange {
    pub fn stable(start: u16, end: u16) -> SlotRange {
        SlotRange {
            start,
            end,
            kind: RangeKind::Stable,
            session_key: 0,
        }
    }

    fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// A node of another group, as that group's `RAFT.SHARDGROUP GET` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardNode {
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    pub id: String,
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGroup {
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    pub id: String,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub ranges: Vec<SlotRange>,
    /// The group's nodes, the one to redirect to first (its leader when known). Empty for
    /// the local group, whose nodes are the raft membership.
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub nodes: Vec<ShardNode>,
}

/// A change of the map, as logged. Validated again when applied: two changes proposed
/// against the same map may conflict, and only the first applied wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardMapChange {
    /// Sets the local group's slots (`slot-config`, logged by the node that INITs).
    InitLocal {
        #[serde(deserialize_with = "crate::core::bounded_serde::string")]
        local_id: String,
        #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
        ranges: Vec<SlotRange>,
    },
    /// `RAFT.SHARDGROUP ADD` / `LINK`: adds another group, or updates the one of that id.
    Add(ShardGroup),
    /// `RAFT.SHARDGROUP REPLACE`: the whole map.
    Replace {
        #[serde(deserialize_with = "crate::core::bounded_serde::string")]
        local_id: String,
        #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
        groups: Vec<ShardGroup>,
    },
}

/// Why a map change was refused; the client that asked for it gets `ERR <this>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardMapError {
    BadGroupId(String),
    BadNodeId(String),
    BadRange { start: u16, end: u16 },
    TooMany(&'static str),
    BadSessionKey(u64),
    AddsLocalGroup,
    SlotConflict { slot: u16, why: &'static str },
}

impl fmt::Display for ShardMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardMapError::BadGroupId(id) => {
                write!(
                    f,
                    "invalid shard group id '{id}': it must be {GROUP_ID_LEN} characters"
                )
            }
            ShardMapError::BadNodeId(id) => {
                write!(
                    f,
                    "invalid node id '{id}': it must be {NODE_ID_LEN} characters"
                )
            }
            ShardMapError::BadRange { start, end } => {
                write!(f, "invalid slot range {start}-{end}")
            }
            ShardMapError::TooMany(what) => write!(f, "too many {what}"),
            ShardMapError::BadSessionKey(key) => {
                write!(f, "session key {key} is above 2^63-1")
            }
            ShardMapError::AddsLocalGroup => {
                write!(f, "the local shard group cannot be added to itself")
            }
            ShardMapError::SlotConflict { slot, why } => write!(f, "slot {slot} {why}"),
        }
    }
}

/// Where the map sends a command for `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Run,
    Moved { slot: u16, addr: String },
    Ask { slot: u16, addr: String },
    TryAgain,
    ClusterDown,
}

impl Route {
    /// The client's error for anything but `Run`.
    pub fn error(&self) -> Option<String> {
        match self {
            Route::Run => None,
            Route::Moved { slot, addr } => Some(format!("MOVED {slot} {addr}")),
            Route::Ask { slot, addr } => Some(format!("ASK {slot} {addr}")),
            Route::TryAgain => Some(ERR_TRYAGAIN.to_string()),
            Route::ClusterDown => Some(ERR_CLUSTERDOWN.to_string()),
        }
    }
}

/// Which of the keys a command names exist (asked only where the answer matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    All,
    Some,
    None,
}

/// What a request is, for the routing rules that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteAsk {
    pub slot: u16,
    /// The client sent `ASKING` before it.
    pub asking: bool,
    /// All of its keys are the same key (a new key may be created while importing).
    pub single_key: bool,
    /// A key it names is locked by a migration in flight.
    pub any_locked: bool,
}

/// One key a migration moves: its `DUMP` payload and absolute expiry (-1: none), so
/// the target restores it with the time it had left (the original drops TTLs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedKey {
    #[serde(with = "crate::core::bounded_serde::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::core::bounded_serde::bytes")]
    pub dump: Vec<u8>,
    pub expire_at_ms: i64,
}

/// A logged step of a slot migration (`SHARDING.md`, "Moving a slot between groups").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationStep {
    /// Source: these keys are being moved; commands on them get `TRYAGAIN` until `Moved`.
    Lock {
        #[serde(deserialize_with = "crate::core::bounded_serde::byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// Source: the target has them; they are deleted here and unlocked.
    Moved {
        #[serde(deserialize_with = "crate::core::bounded_serde::byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// Target: restore these keys (`RAFT.IMPORT`), if the slot imports with this session
    /// key and `term` is not older than one already accepted for it.
    Import {
        term: u64,
        session_key: u64,
        #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
        keys: Vec<MovedKey>,
    },
}

/// Why a target refuses keys of a migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportRefusal {
    NotImporting { slot: u16 },
    WrongSession { slot: u16, expected: u64 },
    StaleTerm { slot: u16, accepted: u64 },
}

impl fmt::Display for ImportRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportRefusal::NotImporting { slot } => {
                write!(f, "ERR slot {slot} is not importing here")
            }
            ImportRefusal::WrongSession { slot, expected } => write!(
                f,
                "ERR slot {slot} imports with another session key ({expected})"
            ),
            ImportRefusal::StaleTerm { slot, accepted } => write!(
                f,
                "ERR slot {slot} already accepted term {accepted}: the sender is a deposed leader"
            ),
        }
    }
}

/// The replicated map, as of the applied index. The local group is the one whose id is
/// `local_id`; it may be absent (it then serves no slot). It also holds the migration
/// state both sides must keep through snapshots and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    local_id: String,
    /// Sorted by id, ids unique.
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    groups: Vec<ShardGroup>,
    /// Source side: keys a migration in flight locked, sorted, unique.
    #[serde(deserialize_with = "crate::core::bounded_serde::byte_strings")]
    locked_keys: Vec<Vec<u8>>,
    /// Target side: the highest migration term accepted per slot, sorted by slot.
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    import_terms: Vec<(u16, u64)>,
}

/// Bound on an encoded map or change (1,024 groups of 256 nodes fit easily).
const MAX_ENCODED_BYTES: usize = 64 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED_BYTES>()
}

fn check_group(group: &ShardGroup) -> Result<(), ShardMapError> {
    if group.id.len() != GROUP_ID_LEN || !group.id.is_ascii() {
        return Err(ShardMapError::BadGroupId(group.id.clone()));
    }
    check_ranges(&group.ranges)?;
    if group.nodes.len() > MAX_NODES_PER_GROUP {
        return Err(ShardMapError::TooMany("nodes in a shard group"));
    }
    for node in &group.nodes {
        if node.id.len() != NODE_ID_LEN || !node.id.is_ascii() {
            return Err(ShardMapError::BadNodeId(node.id.clone()));
        }
    }
    Ok(())
}

fn check_ranges(ranges: &[SlotRange]) -> Result<(), ShardMapError> {
    if ranges.len() > MAX_RANGES_PER_GROUP {
        return Err(ShardMapError::TooMany("slot ranges in a shard group"));
    }
    for range in ranges {
        if range.start > range.end || range.end > MAX_SLOT {
            return Err(ShardMapError::BadRange {
                start: range.start,
                end: range.end,
            });
        }
        // Replies carry it as a signed integer: it must read back the same.
        if range.session_key > i64::MAX as u64 {
            return Err(ShardMapError::BadSessionKey(range.session_key));
        }
    }
    Ok(())
}

/// Per slot: at most one stable owner, a stable slot neither importing nor migrating, at
/// most one importing and one migrating group.
fn check_slots(groups: &[ShardGroup]) -> Result<(), ShardMapError> {
    let mut seen = vec![[false; 3]; SLOT_COUNT];
    for group in groups {
        for range in &group.ranges {
            let kind = range.kind.number() as usize - 1;
            for slot in range.start..=range.end {
                let marks = &mut seen[usize::from(slot)];
                if marks[kind] {
                    let why = match range.kind {
                        RangeKind::Stable => "is already owned",
                        RangeKind::Importing => "is already importing",
                        RangeKind::Migrating => "is already migrating",
                    };
                    return Err(ShardMapError::SlotConflict { slot, why });
                }
                marks[kind] = true;
                let stable = marks[0];
                if stable && (marks[1] || marks[2]) {
                    return Err(ShardMapError::SlotConflict {
                        slot,
                        why: "cannot be stable and importing or migrating",
                    });
                }
            }
        }
    }
    Ok(())
}

impl ShardMap {
    pub fn local_id(&self) -> &str {
        &self.local_id
    }

    pub fn groups(&self) -> &[ShardGroup] {
        &self.groups
    }

    pub fn group(&self, id: &str) -> Option<&ShardGroup> {
        self.groups.iter().find(|group| group.id == id)
    }

    /// Whether this cluster was created sharded (its group's slots were logged).
    pub fn is_sharded(&self) -> bool {
        !self.local_id.is_empty()
    }

    /// A route that does not depend on what the keys hold (a redirect, or no owner): it
    /// may be answered before the command is logged.
    pub fn early_refusal(&self, ask: RouteAsk) -> Option<Route> {
        self.route_without_keys(ask)
            .filter(|route| matches!(route, Route::Moved { .. } | Route::ClusterDown))
    }

    /// The route, if it does not depend on which keys exist (a stable slot, most often).
    pub fn route_without_keys(&self, ask: RouteAsk) -> Option<Route> {
        let if_all = self.route(ask, || Existing::All);
        let if_some = self.route(ask, || Existing::Some);
        let if_none = self.route(ask, || Existing::None);
        (if_all == if_some && if_all == if_none).then_some(if_all)
    }

    /// The local group's slot ranges.
    pub fn local_ranges(&self) -> &[SlotRange] {
        self.group(&self.local_id)
            .map_or(&[], |group| &group.ranges)
    }

    /// Checks `change` against this map; the map it would make.
    pub fn changed(&self, change: &ShardMapChange) -> Result<ShardMap, ShardMapError> {
        let mut next = self.clone();
        match change {
            ShardMapChange::InitLocal { local_id, ranges } => {
                check_ranges(ranges)?;
                next.local_id = local_id.clone();
                next.groups.retain(|group| group.id != *local_id);
                next.groups.push(ShardGroup {
                    id: local_id.clone(),
                    ranges: ranges.clone(),
                    nodes: Vec::new(),
                });
            }
            ShardMapChange::Add(group) => {
                check_group(group)?;
                if group.id == self.local_id {
                    return Err(ShardMapError::AddsLocalGroup);
                }
                next.groups.retain(|known| known.id != group.id);
                next.groups.push(group.clone());
            }
            ShardMapChange::Replace { local_id, groups } => {
                if groups.len() > MAX_GROUPS {
                    return Err(ShardMapError::TooMany("shard groups"));
                }
                for group in groups {
                    check_group(group)?;
                }
                next.local_id = local_id.clone();
                next.groups = groups.clone();
                for group in &mut next.groups {
                    if group.id == *local_id {
                        // The raft membership lists the local nodes.
                        group.nodes.clear();
                    }
                }
            }
        }
        next.groups.sort_by(|a, b| a.id.cmp(&b.id));
        if next.groups.windows(2).any(|pair| pair[0].id == pair[1].id) {
            let id = next
                .groups
                .windows(2)
                .find(|pair| pair[0].id == pair[1].id)
                .map(|pair| pair[0].id.clone())
                .unwrap_or_default();
            return Err(ShardMapError::BadGroupId(format!("{id} (listed twice)")));
        }
        if next.groups.len() > MAX_GROUPS {
            return Err(ShardMapError::TooMany("shard groups"));
        }
        check_slots(&next.groups)?;
        // Locks belong to a slot this group migrates; once it does not (the move was
        // finalised or undone), they would only hold keys that are gone or stay here.
        let migrating: Vec<(u16, u16)> = next
            .local_ranges()
            .iter()
            .filter(|r| r.kind == RangeKind::Migrating)
            .map(|r| (r.start, r.end))
            .collect();
        next.locked_keys.retain(|key| {
            let slot = key_hash_slot(key);
            migrating
                .iter()
                .any(|&(start, end)| (start..=end).contains(&slot))
        });
        Ok(next)
    }

    /// Applies `change` if it is valid; else the map stays as it was.
    pub fn apply(&mut self, change: &ShardMapChange) -> Result<(), ShardMapError> {
        *self = self.changed(change)?;
        Ok(())
    }

    /// The group with a range of `kind` covering `slot` (validation keeps it unique).
    pub fn holder(&self, slot: u16, kind: RangeKind) -> Option<&ShardGroup> {
        self.groups.iter().find(|group| {
            group
                .ranges
                .iter()
                .any(|range| range.kind == kind && range.contains(slot))
        })
    }

    /// Where a command on keys of `ask.slot` goes (`SHARDING.md`, "Routing a command");
    /// `existing` is asked only when the answer depends on it.
    pub fn route(&self, ask: RouteAsk, existing: impl FnOnce() -> Existing) -> Route {
        let slot = ask.slot;
        let is_local = |group: &ShardGroup| group.id == self.local_id;
        let stable = self.holder(slot, RangeKind::Stable);
        let migrating = self.holder(slot, RangeKind::Migrating);
        let importing = self.holder(slot, RangeKind::Importing);
        let remote = |group: &ShardGroup| match group.nodes.first() {
            Some(node) => Route::Moved {
                slot,
                addr: node.addr.clone(),
            },
            None => Route::ClusterDown,
        };
        if let Some(owner) = stable {
            return if is_local(owner) {
                Route::Run
            } else {
                remote(owner)
            };
        }
        if migrating.is_some_and(is_local) {
            return match existing() {
                Existing::All if !ask.any_locked => Route::Run,
                Existing::All | Existing::Some => Route::TryAgain,
                Existing::None if ask.any_locked => Route::TryAgain,
                Existing::None => match importing.and_then(|target| target.nodes.first()) {
                    Some(node) => Route::Ask {
                        slot,
                        addr: node.addr.clone(),
                    },
                    None => Route::TryAgain,
                },
            };
        }
        if ask.asking && importing.is_some_and(is_local) {
            // Better than the original: a new single key is created here, where Redis
            // Cluster creates it; several keys must all be here already.
            return match existing() {
                Existing::All => Route::Run,
                _ if ask.single_key => Route::Run,
                _ => Route::TryAgain,
            };
        }
        match migrating {
            Some(source) => remote(source),
            None => Route::ClusterDown,
        }
    }

    /// Slots served here: stable or migrating ranges of the local group.
    pub fn serves_locally(&self) -> usize {
        self.local_ranges()
            .iter()
            .filter(|range| range.kind != RangeKind::Importing)
            .map(|range| usize::from(range.end - range.start) + 1)
            .sum()
    }

    /// A migration in flight locked `key` (source side).
    pub fn is_locked(&self, key: &[u8]) -> bool {
        self.locked_keys
            .binary_search_by(|locked| locked.as_slice().cmp(key))
            .is_ok()
    }

    pub fn locked_count(&self) -> usize {
        self.locked_keys.len()
    }

    /// Applies a map-only migration step (`Lock`, or the unlocking half of `Moved`).
    pub fn lock(&mut self, keys: &[Vec<u8>]) {
        self.locked_keys.extend(keys.iter().cloned());
        self.locked_keys.sort();
        self.locked_keys.dedup();
    }

    pub fn unlock(&mut self, keys: &[Vec<u8>]) {
        self.locked_keys
            .retain(|locked| !keys.iter().any(|key| key == locked));
    }

    /// Where keys of `slot` migrate to from here: the session key and the importing
    /// group, if the local group migrates the slot.
    pub fn migration_target(&self, slot: u16) -> Option<(u64, &ShardGroup)> {
        let local = self.group(&self.local_id)?;
        let session_key = local
            .ranges
            .iter()
            .find(|r| r.kind == RangeKind::Migrating && r.contains(slot))?
            .session_key;
        let target = self.holder(slot, RangeKind::Importing)?;
        Some((session_key, target))
    }

    /// Target side: whether keys of `slots` from a source at `term` with `session_key`
    /// are taken; if so their slots remember `term` (a deposed leader, with an older term,
    /// is refused from then on).
    pub fn accept_import(
        &mut self,
        term: u64,
        session_key: u64,
        slots: &[u16],
    ) -> Result<(), ImportRefusal> {
        for &slot in slots {
            let local = self
                .group(&self.local_id)
                .and_then(|g| {
                    g.ranges
                        .iter()
                        .find(|r| r.kind == RangeKind::Importing && r.contains(slot))
                })
                .ok_or(ImportRefusal::NotImporting { slot })?;
            if local.session_key != session_key {
                return Err(ImportRefusal::WrongSession {
                    slot,
                    expected: local.session_key,
                });
            }
            if let Some(&(_, accepted)) = self.import_terms.iter().find(|(s, _)| *s == slot) {
                if term < accepted {
                    return Err(ImportRefusal::StaleTerm { slot, accepted });
                }
            }
        }
        for &slot in slots {
            match self.import_terms.binary_search_by_key(&slot, |(s, _)| *s) {
                Ok(at) => self.import_terms[at].1 = term,
                Err(at) => self.import_terms.insert(at, (slot, term)),
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode_config()).expect("a shard map encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<ShardMap, String> {
        let (map, used): (ShardMap, usize) =
            bincode::serde::decode_from_slice(bytes, bincode_config())
                .map_err(|e| format!("shard map does not decode: {e}"))?;
        if used != bytes.len() {
            return Err("shard map has trailing bytes".into());
        }
        // A decoded map must be one `apply` could have made.
        let mut checked = ShardMap::default()
            .changed(&ShardMapChange::Replace {
                local_id: map.local_id.clone(),
                groups: map.groups.clone(),
            })
            .map_err(|e| format!("shard map is invalid: {e}"))?;
        checked.locked_keys = map.locked_keys.clone();
        checked.locked_keys.sort();
        checked.locked_keys.dedup();
        checked.import_terms = map.import_terms.clone();
        checked.import_terms.sort();
        checked.import_terms.dedup_by_key(|(slot, _)| *slot);
        if checked != map || map.import_terms.iter().any(|&(slot, _)| slot > MAX_SLOT) {
            return Err("shard map is not in its canonical form".into());
        }
        Ok(map)
    }
}

/// A node's 40-character id in cluster replies.
pub fn node_id40(dbid: &str, raft_id: u64) -> String {
    format!("{dbid:0<32.32}{raft_id:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gid(c: char) -> String {
        std::iter::repeat_n(c, GROUP_ID_LEN).collect()
    }

    fn group(c: char, ranges: Vec<SlotRange>, addr: &str) -> ShardGroup {
        ShardGroup {
            id: gid(c),
            ranges,
            nodes: vec![ShardNode {
                id: node_id40(&gid(c), 1),
                addr: addr.into(),
            }],
        }
    }

    fn ask(slot: u16) -> RouteAsk {
        RouteAsk {
            slot,
            asking: false,
            single_key: true,
            any_locked: false,
        }
    }

    fn two_groups() -> ShardMap {
        let mut map = ShardMap::default();
        map.apply(&ShardMapChange::InitLocal {
            local_id: gid('a'),
            ranges: vec![SlotRange::stable(0, 8191)],
        })
        .unwrap();
        map.apply(&ShardMapChange::Add(group(
            'b',
            vec![SlotRange::stable(8192, MAX_SLOT)],
            "h:2",
        )))
        .unwrap();
        map
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values Redis Cluster gives (CLUSTER KEYSLOT).
        assert_eq!(key_hash_slot(b"foo"), 12182);
        assert_eq!(key_hash_slot(b"bar"), 5061);
        assert_eq!(key_hash_slot(b"123456789"), 0x31c3 & MAX_SLOT);
        assert_eq!(
            key_hash_slot(b"{user1000}.following"),
            key_hash_slot(b"user1000")
        );
        assert_eq!(key_hash_slot(b"foo{}{bar}"), key_hash_slot(b"foo{}{bar}"));
        assert_ne!(key_hash_slot(b"foo{}{bar}"), key_hash_slot(b"bar"));
        assert_eq!(key_hash_slot(b"foo{{bar}}zap"), key_hash_slot(b"{bar"));
        assert_eq!(key_hash_slot(b""), 0);
        assert_eq!(
            common_slot([b"a".as_slice(), b"{a}x"]),
            Ok(Some(key_hash_slot(b"a")))
        );
        assert_eq!(common_slot([b"a".as_slice(), b"b"]), Err(CrossSlot));
        assert_eq!(common_slot(std::iter::empty()), Ok(None));
    }

    #[test]
    fn stable_slots_run_here_or_move() {
        let map = two_groups();
        assert_eq!(map.route(ask(5), || unreachable!()), Route::Run);
        assert_eq!(
            map.route(ask(9000), || unreachable!()),
            Route::Moved {
                slot: 9000,
                addr: "h:2".into()
            }
        );
        assert_eq!(map.serves_locally(), 8192);
    }

    #[test]
    fn unserved_slots_are_clusterdown() {
        let mut map = ShardMap::default();
        map.apply(&ShardMapChange::InitLocal {
            local_id: gid('a'),
            ranges: vec![SlotRange::stable(0, 10)],
        })
        .unwrap();
        assert_eq!(map.route(ask(11), || unreachable!()), Route::ClusterDown);
        assert_eq!(
            Route::ClusterDown.error().unwrap(),
            "CLUSTERDOWN Hash slot is not served"
        );
    }

    #[test]
    fn add_refuses_an_owned_stable_slot_and_updates_a_known_group() {
        let mut map = two_groups();
        let before = map.clone();
        let overlap = ShardMapChange::Add(group('c', vec![SlotRange::stable(8191, 8191)], "h:3"));
        assert_eq!(
            map.apply(&overlap),
            Err(ShardMapError::SlotConflict {
                slot: 8191,
                why: "is already owned"
            })
        );
        assert_eq!(map, before, "a refused change leaves the map alone");
        // The same group again, with a new node list: an update.
        map.apply(&ShardMapChange::Add(group(
            'b',
            vec![SlotRange::stable(8192, MAX_SLOT)],
            "h:9",
        )))
        .unwrap();
        assert_eq!(map.groups().len(), 2);
        assert_eq!(map.group(&gid('b')).unwrap().nodes[0].addr, "h:9");
        assert_eq!(
            map.apply(&ShardMapChange::Add(group('a', vec![], "h:1"))),
            Err(ShardMapError::AddsLocalGroup)
        );
    }

    #[test]
    fn replace_validates_every_slot() {
        let map = ShardMap::default();
        let migrating = SlotRange {
            start: 100,
            end: 100,
            kind: RangeKind::Migrating,
            session_key: 7,
        };
        let importing = SlotRange {
            kind: RangeKind::Importing,
            ..migrating.clone()
        };
        let ok = ShardMapChange::Replace {
            local_id: gid('a'),
            groups: vec![
                group('a', vec![SlotRange::stable(0, 99), migrating.clone()], ""),
                group('b', vec![importing.clone()], "h:2"),
            ],
        };
        let replaced = map.changed(&ok).unwrap();
        assert!(replaced.group(&gid('a')).unwrap().nodes.is_empty());
        let stable_and_migrating = ShardMapChange::Replace {
            local_id: gid('a'),
            groups: vec![
                group('a', vec![migrating.clone()], ""),
                group('b', vec![SlotRange::stable(100, 100)], "h:2"),
            ],
        };
        assert!(matches!(
            map.changed(&stable_and_migrating),
            Err(ShardMapError::SlotConflict { slot: 100, .. })
        ));
        let two_importing = ShardMapChange::Replace {
            local_id: gid('a'),
            groups: vec![
                group('b', vec![importing.clone()], "h:2"),
                group('c', vec![importing], "h:3"),
            ],
        };
        assert!(map.changed(&two_importing).is_err());
        let twice = ShardMapChange::Replace {
            local_id: gid('a'),
            groups: vec![group('b', vec![], "h:2"), group('b', vec![], "h:2")],
        };
        assert!(map.changed(&twice).is_err());
        let bad_range = ShardMapChange::Replace {
            local_id: gid('a'),
            groups: vec![group('b', vec![SlotRange::stable(5, 4)], "h:2")],
        };
        assert_eq!(
            map.changed(&bad_range),
            Err(ShardMapError::BadRange { start: 5, end: 4 })
        );
        let huge_session = ShardMapChange::Add(group(
            'b',
            vec![SlotRange {
                session_key: 1 << 63,
                ..SlotRange::stable(0, 0)
            }],
            "h:2",
        ));
        assert_eq!(
            map.changed(&huge_session),
            Err(ShardMapError::BadSessionKey(1 << 63))
        );
        let short_id = ShardMapChange::Add(ShardGroup {
            id: "abc".into(),
            ranges: vec![],
            nodes: vec![],
        });
        assert!(matches!(
            map.changed(&short_id),
            Err(ShardMapError::BadGroupId(_))
        ));
    }

    fn migrating_map(local_is_source: bool) -> ShardMap {
        let migrating = SlotRange {
            start: 100,
            end: 100,
            kind: RangeKind::Migrating,
            session_key: 7,
        };
        let importing = SlotRange {
            kind: RangeKind::Importing,
            ..migrating.clone()
        };
        let (a, b) = if local_is_source {
            (migrating, importing)
        } else {
            (importing, migrating)
        };
        ShardMap::default()
            .changed(&ShardMapChange::Replace {
                local_id: gid('a'),
                groups: vec![group('a', vec![a], ""), group('b', vec![b], "h:2")],
            })
            .unwrap()
    }

    #[test]
    fn a_migrating_slot_runs_existing_keys_and_asks_for_missing_ones() {
        let map = migrating_map(true);
        assert_eq!(map.route(ask(100), || Existing::All), Route::Run);
        assert_eq!(map.route(ask(100), || Existing::Some), Route::TryAgain);
        assert_eq!(
            map.route(ask(100), || Existing::None),
            Route::Ask {
                slot: 100,
                addr: "h:2".into()
            }
        );
        let locked = RouteAsk {
            any_locked: true,
            ..ask(100)
        };
        assert_eq!(map.route(locked, || Existing::All), Route::TryAgain);
        assert_eq!(map.route(locked, || Existing::None), Route::TryAgain);
        assert_eq!(map.serves_locally(), 1);
    }

    #[test]
    fn an_importing_slot_runs_only_with_asking() {
        let map = migrating_map(false);
        assert_eq!(
            map.route(ask(100), || unreachable!()),
            Route::Moved {
                slot: 100,
                addr: "h:2".into()
            }
        );
        let asking = RouteAsk {
            asking: true,
            ..ask(100)
        };
        assert_eq!(map.route(asking, || Existing::None), Route::Run);
        let several = RouteAsk {
            single_key: false,
            ..asking
        };
        assert_eq!(map.route(several, || Existing::Some), Route::TryAgain);
        assert_eq!(map.route(several, || Existing::All), Route::Run);
        assert_eq!(map.serves_locally(), 0);
    }

    #[test]
    fn the_map_roundtrips_and_refuses_garbage() {
        let map = migrating_map(true);
        assert_eq!(ShardMap::decode(&map.encode()).unwrap(), map);
        assert!(ShardMap::decode(&[0xff; 12]).is_err());
        let mut bytes = map.encode();
        bytes.push(0);
        assert!(ShardMap::decode(&bytes).is_err());
    }

    #[test]
    fn locks_and_import_terms_travel_with_the_map() {
        let mut source = migrating_map(true);
        assert_eq!(
            source
                .migration_target(100)
                .map(|(key, g)| (key, g.id.clone())),
            Some((7, gid('b')))
        );
        assert_eq!(source.migration_target(101), None);
        // Two keys of the migrating slot.
        let mut of_slot_100 = (0..)
            .map(|i| format!("k{i}").into_bytes())
            .filter(|key| key_hash_slot(key) == 100);
        let (k, j) = (of_slot_100.next().unwrap(), of_slot_100.next().unwrap());
        source.lock(&[k.clone(), j.clone(), k.clone()]);
        assert!(source.is_locked(&k) && source.is_locked(&j) && !source.is_locked(b"x"));
        assert_eq!(source.locked_count(), 2);
        assert_eq!(ShardMap::decode(&source.encode()).unwrap(), source);
        source.unlock(std::slice::from_ref(&k));
        assert!(!source.is_locked(&k) && source.is_locked(&j));

        let mut target = migrating_map(false);
        assert_eq!(
            target.accept_import(3, 8, &[100]),
            Err(ImportRefusal::WrongSession {
                slot: 100,
                expected: 7
            })
        );
        assert_eq!(
            target.accept_import(3, 7, &[101]),
            Err(ImportRefusal::NotImporting { slot: 101 })
        );
        target.accept_import(3, 7, &[100]).unwrap();
        target.accept_import(3, 7, &[100]).unwrap();
        assert_eq!(
            target.accept_import(2, 7, &[100]),
            Err(ImportRefusal::StaleTerm {
                slot: 100,
                accepted: 3
            }),
            "a deposed leader's term is fenced off"
        );
        // Finalising the move drops the source's locks with the migrating range.
        let mut finalised = source.clone();
        finalised
            .apply(&ShardMapChange::Replace {
                local_id: gid('a'),
                groups: vec![group('b', vec![SlotRange::stable(100, 100)], "h:2")],
            })
            .unwrap();
        assert_eq!(finalised.locked_count(), 0);
        let mut kept = source.clone();
        kept.apply(&ShardMapChange::Add(group('c', vec![], "h:3")))
            .unwrap();
        assert_eq!(kept.locked_count(), 1, "other changes keep them");
        let restored = ShardMap::decode(&target.encode()).unwrap();
        assert_eq!(restored, target);
        let mut restored = restored;
        assert!(
            restored.accept_import(2, 7, &[100]).is_err(),
            "fencing survives"
        );
        target.accept_import(4, 7, &[100]).unwrap();
    }

    #[test]
    fn node_ids_are_the_dbid_and_eight_hex_digits() {
        let id = node_id40(&gid('a'), 3);
        assert_eq!(id.len(), NODE_ID_LEN);
        assert!(id.ends_with("00000003"));
    }
}
