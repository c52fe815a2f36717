//! What the checker knows: mirrors of logs (in memory and durable), the committed log as
//! the cluster agreed on it, and the configuration that log implies.

use std::collections::BTreeSet;

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};
use redisraft::core::logfile::{LogEntry, Recovered, SavedHardState};

use super::rng::fnv64;

/// Identity of an entry's content (type, data, context).
pub fn entry_hash(entry_type: i32, data: &[u8], context: &[u8]) -> u64 {
    fnv64(&[&entry_type.to_le_bytes(), data, context])
}

pub fn raft_entry_hash(entry: &Entry) -> u64 {
    entry_hash(entry.get_entry_type() as i32, &entry.data, &entry.context)
}

pub fn log_entry_hash(entry: &LogEntry) -> u64 {
    entry_hash(entry.entry_type, &entry.data, &entry.context)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorEntry {
    pub term: u64,
    pub hash: u64,
    /// Hash of the whole log up to and including this entry: equal prefixes <=> equal.
    pub prefix: u64,
}

/// A log as (term, content hash) per index, with prefix hashes for O(1) log matching.
#[derive(Clone, Debug, Default)]
pub struct LogMirror {
    entries: Vec<MirrorEntry>,
}

impl LogMirror {
    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn get(&self, index: u64) -> Option<MirrorEntry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1).copied()
    }

    pub fn has(&self, index: u64, term: u64, hash: u64) -> bool {
        self.get(index)
            .is_some_and(|e| e.term == term && e.hash == hash)
    }

    /// Appends `(index, term, hash)` items, dropping any suffix they replace (raft's
    /// overwrite rule, the same one `logfile::recover` applies). Returns the first index
    /// that held an entry before and was replaced or dropped.
    pub fn append(
        &mut self,
        items: impl IntoIterator<Item = (u64, u64, u64)>,
    ) -> Result<Option<u64>, String> {
        let mut replaced_from = None;
        for (index, term, hash) in items {
            let len = self.entries.len() as u64;
            if index == 0 || index > len + 1 {
                return Err(format!(
                    "entry {index} appended after last index {len} (gap)"
                ));
            }
            if index <= len {
                replaced_from.get_or_insert(index);
                self.entries.truncate(index as usize - 1);
            }
            let previous = self.entries.last().map_or(0, |e| e.prefix);
            let mut state = previous ^ term.rotate_left(17) ^ hash.rotate_left(41);
            let prefix = super::rng::splitmix64(&mut state);
            self.entries.push(MirrorEntry { term, hash, prefix });
        }
        Ok(replaced_from)
    }

    pub fn append_raft(&mut self, entries: &[Entry]) -> Result<Option<u64>, String> {
        self.append(
            entries
                .iter()
                .map(|e| (e.index, e.term, raft_entry_hash(e))),
        )
    }

    /// The log a recovered file holds. Entries up to its compaction point are covered by
    /// the node's snapshot, which holds only committed entries: they are taken from
    /// `committed`, the cluster's committed log.
    pub fn from_recovered(
        recovered: &Recovered,
        committed: &LogMirror,
    ) -> Result<LogMirror, String> {
        let compacted = recovered.compacted.map_or(0, |point| point.index);
        if compacted > committed.last_index() {
            return Err(format!(
                "the log is compacted up to {compacted}, beyond the committed prefix ({})",
                committed.last_index()
            ));
        }
        let mut mirror = committed.truncated(compacted);
        mirror.append(
            recovered
                .entries
                .iter()
                .map(|e| (e.index, e.term, log_entry_hash(e))),
        )?;
        Ok(mirror)
    }

    /// The first `last` entries.
    pub fn truncated(&self, last: u64) -> LogMirror {
        let len = (last as usize).min(self.entries.len());
        LogMirror {
            entries: self.entries[..len].to_vec(),
        }
    }

    /// First index where the two logs differ, if any (including one being longer).
    pub fn first_difference(&self, other: &LogMirror) -> Option<u64> {
        let common = self.entries.len().min(other.entries.len());
        let same_common_prefix =
            common == 0 || self.entries[common - 1].prefix == other.entries[common - 1].prefix;
        if !same_common_prefix {
            // Prefix hashes: once two logs differ they differ at every later index.
            let mut low = 0;
            let mut high = common - 1;
            while low < high {
                let mid = (low + high) / 2;
                if self.entries[mid].prefix == other.entries[mid].prefix {
                    low = mid + 1;
                } else {
                    high = mid;
                }
            }
            return Some(low as u64 + 1);
        }
        if self.entries.len() != other.entries.len() {
            return Some(common as u64 + 1);
        }
        None
    }
}

/// The durable state of one node: what `recover` would return from its synced bytes.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub log: LogMirror,
    pub hard_state: SavedHardState,
}

/// One committed index as the cluster agreed on it.
#[derive(Clone, Debug)]
pub struct Committed {
    pub term: u64,
    pub hash: u64,
    /// Client data as text, or the conf change.
    pub what: String,
    /// The leader that was first seen committing it, and its term.
    pub leader: u64,
    pub leader_term: u64,
    /// The configuration whose quorum committed it (`None`: only learned on a restart).
    pub quorum: Option<(Vec<u64>, Vec<u64>)>,
}

pub fn describe_entry(entry: &Entry) -> (String, Option<ConfChangeV2>) {
    match entry.get_entry_type() {
        EntryType::EntryNormal if entry.data.is_empty() => ("no-op".to_string(), None),
        EntryType::EntryNormal => (String::from_utf8_lossy(&entry.data).into_owned(), None),
        EntryType::EntryConfChangeV2 => match ConfChangeV2::parse_from_bytes(&entry.data) {
            Ok(change) => (describe_change(&change), Some(change)),
            Err(e) => (format!("undecodable conf change: {e}"), None),
        },
        EntryType::EntryConfChange => ("v1 conf change".to_string(), None),
    }
}

pub fn describe_change(change: &ConfChangeV2) -> String {
    if change.get_changes().is_empty() {
        return "conf change (leave joint)".to_string();
    }
    let steps: Vec<String> = change
        .get_changes()
        .iter()
        .map(|step| format!("{:?}({})", step.get_change_type(), step.node_id))
        .collect();
    format!("conf change {}", steps.join("+"))
}

/// Voters and learners, the way the committed log says they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conf {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
}

impl Conf {
    pub fn of(voters: &[u64]) -> Conf {
        Conf {
            voters: voters.iter().copied().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn from_raft(state: &ConfState) -> Conf {
        Conf {
            voters: state.voters.iter().copied().collect(),
            learners: state.learners.iter().copied().collect(),
        }
    }

    pub fn members(&self) -> Vec<u64> {
        self.voters.union(&self.learners).copied().collect()
    }

    /// Applies a single-step change as raft does; a change raft refuses (leaving no
    /// voter) leaves the configuration unchanged.
    pub fn apply(&self, change: &ConfChangeV2) -> Conf {
        let mut next = self.clone();
        for step in change.get_changes() {
            let id = step.node_id;
            match step.get_change_type() {
                ConfChangeType::AddNode => {
                    next.learners.remove(&id);
                    next.voters.insert(id);
                }
                ConfChangeType::AddLearnerNode => {
                    next.voters.remove(&id);
                    next.learners.insert(id);
                }
                ConfChangeType::RemoveNode => {
                    next.voters.remove(&id);
                    next.learners.remove(&id);
                }
            }
        }
        if next.voters.is_empty() {
            return self.clone();
        }
        next
    }
}

impl std::fmt::Display for Conf {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "voters {:?} learners {:?}", self.voters, self.learners)
    }
}
