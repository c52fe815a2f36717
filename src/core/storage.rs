//! The in-memory raft log that `raft::RawNode` reads through `raft::Storage`.
//!
//! It mirrors what the log file holds: the driver appends to both (the file
//! for durability, this store for raft), and at start it is rebuilt from
//! [`logfile::recover`]. Entry payloads are `bytes::Bytes`, so the clones
//! handed to raft share memory with the store.
//!
//! Layout: entries `snapshot_point.index + 1 ..= last_index` are held in order;
//! the term at `snapshot_point.index` is kept so raft can still match it.
//! Indexes at or below the snapshot point are compacted.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError, NO_LIMIT};

use super::logfile::{self, LogPosition};

/// The raft log, hard state and configuration held in memory.
/// The `data` of every raft Snapshot we hand out: the real bytes travel as a file.
pub const SNAPSHOT_DATA_MARKER: &[u8] = b"redisraft-snapshot-file";

#[derive(Default, Debug)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Last compacted entry; (0, 0) when nothing was ever compacted.
    snapshot_point: LogPosition,
    /// Membership as of `snapshot_point`, sent with snapshots.
    snapshot_conf_state: ConfState,
    /// Raft asked for a snapshot we cannot give (none yet, or one that predates the
    /// follower's membership): the caller should take a new one.
    snapshot_wanted: std::cell::Cell<bool>,
    /// `entries[i].index == snapshot_point.index + 1 + i`.
    entries: VecDeque<Entry>,
    /// Sum of data and context sizes over `entries`.
    cached_bytes: usize,
}

fn payload_bytes(entry: &Entry) -> usize {
    entry.data.len() + entry.context.len()
}

fn store_error(error: StorageError) -> raft::Error {
    raft::Error::Store(error)
}

impl LogStore {
    /// An empty log: first index 1, last index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store as the log file left it.
    ///
    /// The commit index is raised to the compaction point when the file says
    /// less: compacted entries were applied, so they were committed, and raft
    /// refuses a commit index below `first_index - 1`.
    pub fn from_recovered(recovered: logfile::Recovered, conf_state: ConfState) -> Self {
        let snapshot_point = recovered.compacted.unwrap_or_default();
        let mut hard_state = HardState::default();
        if let Some(saved) = recovered.hard_state {
            hard_state.term = saved.term;
            hard_state.vote = saved.vote;
            hard_state.commit = saved.commit;
        }
        hard_state.commit = hard_state.commit.max(snapshot_point.index);

        let mut store = LogStore {
            conf_state,
            snapshot_point,
            ..Self::default()
        };
        let entries: Vec<Entry> = recovered
            .entries
            .into_iter()
            .map(logfile::LogEntry::into_raft)
            .collect();
        store.append(&entries);
        store.set_hard_state(hard_state);
        store
    }

    /// Appends `new_entries`, first dropping any entries at or after the first
    /// new index (raft overwrote a conflicting suffix).
    ///
    /// # Panics
    /// On a gap after the last index, on an index inside the compacted prefix,
    /// or on non-contiguous `new_entries`: raft never produces these, so they
    /// are bugs in the caller.
    pub fn append(&mut self, new_entries: &[Entry]) {
        let Some(first_new) = new_entries.first() else {
            return;
        };
        let (first_index, last_index) = (self.first_index(), self.last_index());
        assert!(
            first_new.index >= first_index,
            "append at index {} would overwrite the compacted log (first index {first_index})",
            first_new.index
        );
        assert!(
            first_new.index <= last_index + 1,
            "append at index {} leaves a gap after the last index {last_index}",
            first_new.index
        );
        for pair in new_entries.windows(2) {
            assert_eq!(
                pair[0].index + 1,
                pair[1].index,
                "entries to append are not contiguous"
            );
        }

        let kept = (first_new.index - first_index) as usize;
        let dropped_bytes: usize = self.entries.drain(kept..).map(|e| payload_bytes(&e)).sum();
        self.cached_bytes -= dropped_bytes;
        for entry in new_entries {
            self.cached_bytes += payload_bytes(entry);
            self.entries.push_back(entry.clone());
        }
    }

    /// # Panics
    /// If the commit index is beyond the last index: append a batch's entries
    /// before the hard state that commits them.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.assert_committable(hard_state.commit);
        self.hard_state = hard_state;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// # Panics
    /// If `commit` is beyond the last index.
    pub fn set_commit(&mut self, commit: u64) {
        self.assert_committable(commit);
        self.hard_state.commit = commit;
    }

    fn assert_committable(&self, commit: u64) {
        assert!(
            commit <= self.last_index(),
            "commit index {commit} is beyond the last index {}",
            self.last_index()
        );
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Drops entries `<= compact_index` and remembers `(compact_index, term)`
    /// as the snapshot point. The caller only compacts applied entries.
    ///
    /// An index at or below the current snapshot point does nothing. An index
    /// past the last entry empties the log and moves the first index to
    /// `compact_index + 1` (a snapshot replaced the whole log), like a
    /// [`logfile::Record::Compacted`] record does in recovery.
    ///
    /// # Panics
    /// If `compact_index` is inside the log and `term` is not that entry's term.
    pub fn compact(&mut self, compact_index: u64, term: u64) {
        if compact_index <= self.snapshot_point.index {
            return;
        }
        if compact_index <= self.last_index() {
            let dropped_count = (compact_index - self.snapshot_point.index) as usize;
            let log_term = self.entries[dropped_count - 1].term;
            assert_eq!(
                log_term, term,
                "compacting at index {compact_index} with term {term}, but the entry there has term {log_term}"
            );
            let dropped_bytes: usize = self
                .entries
                .drain(..dropped_count)
                .map(|e| payload_bytes(&e))
                .sum();
            self.cached_bytes -= dropped_bytes;
        } else {
            self.entries.clear();
            self.cached_bytes = 0;
        }
        self.snapshot_point = LogPosition {
            index: compact_index,
            term,
        };
    }

    /// The last compacted position; (0, 0) if nothing was compacted.
    /// Compacts up to a snapshot that covers `index` and records the membership the
    /// snapshot holds, so raft can send it to followers that need compacted entries.
    pub fn compact_to_snapshot(&mut self, index: u64, term: u64, conf_state: ConfState) {
        self.compact(index, term);
        self.snapshot_conf_state = conf_state;
    }

    /// Installs a snapshot received from the leader: everything at or below its index is
    /// replaced by it; entries after it are kept only if they agree (raft decides that
    /// and only calls this when the log must be discarded).
    pub fn apply_snapshot(&mut self, metadata: &raft::eraftpb::SnapshotMetadata) {
        let index = metadata.index;
        self.entries.clear();
        self.cached_bytes = 0;
        self.snapshot_point = LogPosition {
            index,
            term: metadata.term,
        };
        self.conf_state = metadata.get_conf_state().clone();
        self.snapshot_conf_state = metadata.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(metadata.term);
    }

    /// Whether raft asked for a newer snapshot since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    pub fn snapshot_point(&self) -> LogPosition {
        self.snapshot_point
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot_point.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_point.index + self.entries.len() as u64
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Sum of data and context sizes of the entries held, in bytes.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    /// Entries in `[low, high)`, at least one if the range is not empty, then
    /// more while their total encoded size stays within `max_size` (the rule of
    /// `raft::util::limit_size`, applied before cloning).
    ///
    /// # Panics
    /// If `high > last_index + 1` or `low > high`, as raft's contract says.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().filter(|&limit| limit != NO_LIMIT);
        let first_index = self.first_index();
        if low < first_index {
            return Err(store_error(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index() + 1,
            "entries [{low}, {high}) requested but the last index is {}",
            self.last_index()
        );
        assert!(low <= high, "entries [{low}, {high}) is not a range");

        let range = (low - first_index) as usize..(high - first_index) as usize;
        let mut taken = Vec::with_capacity(range.len().min(1024));
        let mut total_size: u64 = 0;
        for entry in self.entries.range(range) {
            if let Some(limit) = max_size {
                total_size += u64::from(entry.compute_size());
                if !taken.is_empty() && total_size > limit {
                    break;
                }
            }
            taken.push(entry.clone());
        }
        Ok(taken)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_point.index {
            return Ok(self.snapshot_point.term);
        }
        if index < self.snapshot_point.index {
            return Err(store_error(StorageError::Compacted));
        }
        if index > self.last_index() {
            return Err(store_error(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(LogStore::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(LogStore::last_index(self))
    }

    /// The latest snapshot's metadata. Its data is only a marker: the snapshot file is
    /// streamed to the follower in chunks by the transport, never held in memory.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let conf = &self.snapshot_conf_state;
        let knows_follower = conf.voters.contains(&to) || conf.learners.contains(&to);
        if self.snapshot_point.index == 0
            || self.snapshot_point.index < request_index
            || !knows_follower
        {
            // A follower refuses a snapshot whose membership does not include it.
            self.snapshot_wanted.set(true);
            return Err(store_error(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = self.snapshot_point.index;
        metadata.term = self.snapshot_point.term;
        metadata.set_conf_state(self.snapshot_conf_state.clone());
        snapshot.data = SNAPSHOT_DATA_MARKER.to_vec().into();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use raft::eraftpb::EntryType;
    use raft::{Config, RawNode};

    use super::*;
    use crate::core::logfile::{encode_entry, encode_file_header, encode_record, recover, Record};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..ConfState::default()
        }
    }

    fn entry_with_data(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut entry = entry(index, term);
        entry.data = data.to_vec().into();
        entry
    }

    fn any_context() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    /// Entries 3, 4, 5 with terms 3, 4, 5 after a snapshot at (2, 2).
    fn store_with_3_to_5() -> LogStore {
        let mut store = LogStore::new();
        store.compact(2, 2);
        store.append(&[entry(3, 3), entry(4, 4), entry(5, 5)]);
        store
    }

    fn indexes(store: &LogStore) -> Vec<(u64, u64)> {
        store.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn a_new_store_is_empty() {
        let store = LogStore::new();
        assert_eq!((store.first_index(), store.last_index()), (1, 0));
        assert_eq!(store.term(0), Ok(0));
        assert_eq!(store.term(1), Err(store_error(StorageError::Unavailable)));
        assert_eq!(store.entries(1, 1, None, any_context()), Ok(vec![]));
        assert_eq!(store.entry_count(), 0);
        assert_eq!(store.cached_bytes(), 0);
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state, HardState::default());
        assert!(!state.initialized());
    }

    #[test]
    fn term_answers_for_the_snapshot_point_and_the_held_entries() {
        let store = store_with_3_to_5();
        assert_eq!(store.term(1), Err(store_error(StorageError::Compacted)));
        assert_eq!(store.term(2), Ok(2));
        assert_eq!(store.term(3), Ok(3));
        assert_eq!(store.term(4), Ok(4));
        assert_eq!(store.term(5), Ok(5));
        assert_eq!(store.term(6), Err(store_error(StorageError::Unavailable)));
    }

    #[test]
    fn entries_returns_the_range_limited_by_size() {
        let store = store_with_3_to_5();
        let mut store = store;
        store.append(&[entry(6, 6)]);
        let size = |index: u64| u64::from(entry(index, index).compute_size());
        let wanted = |range: std::ops::Range<u64>| -> raft::Result<Vec<Entry>> {
            Ok(range.map(|index| entry(index, index)).collect())
        };

        assert_eq!(
            store.entries(2, 6, None, any_context()),
            Err(store_error(StorageError::Compacted))
        );
        assert_eq!(store.entries(3, 4, None, any_context()), wanted(3..4));
        assert_eq!(store.entries(4, 5, None, any_context()), wanted(4..5));
        assert_eq!(store.entries(4, 6, None, any_context()), wanted(4..6));
        assert_eq!(store.entries(4, 7, NO_LIMIT, any_context()), wanted(4..7));
        assert_eq!(store.entries(5, 5, None, any_context()), wanted(5..5));
        // The first entry comes back even when it alone is over the limit.
        assert_eq!(store.entries(4, 7, 0, any_context()), wanted(4..5));
        let two = size(4) + size(5);
        assert_eq!(store.entries(4, 7, two, any_context()), wanted(4..6));
        assert_eq!(
            store.entries(4, 7, two + size(6) / 2, any_context()),
            wanted(4..6)
        );
        assert_eq!(
            store.entries(4, 7, two + size(6) - 1, any_context()),
            wanted(4..6)
        );
        assert_eq!(
            store.entries(4, 7, two + size(6), any_context()),
            wanted(4..7)
        );
    }

    #[test]
    fn the_size_limit_agrees_with_raft_limit_size() {
        let mut store = LogStore::new();
        let batch: Vec<Entry> = (1..=8)
            .map(|index| entry_with_data(index, 1, &vec![b'x'; (index * 13) as usize]))
            .collect();
        store.append(&batch);
        for max_size in (0..600).step_by(7).chain([NO_LIMIT]) {
            let mut expected = batch.clone();
            raft::util::limit_size(&mut expected, Some(max_size));
            let got = store.entries(1, 9, max_size, any_context()).unwrap();
            assert_eq!(got, expected, "max_size {max_size}");
        }
    }

    #[test]
    #[should_panic(expected = "requested but the last index is 5")]
    fn entries_past_the_end_is_a_caller_bug() {
        let _ = store_with_3_to_5().entries(3, 7, None, any_context());
    }

    #[test]
    fn first_and_last_index_follow_append_and_compact() {
        let mut store = store_with_3_to_5();
        assert_eq!((store.first_index(), store.last_index()), (3, 5));
        store.append(&[entry(6, 5)]);
        assert_eq!(store.last_index(), 6);
        store.compact(4, 4);
        assert_eq!((store.first_index(), store.last_index()), (5, 6));
        assert_eq!(Storage::first_index(&store), Ok(5));
        assert_eq!(Storage::last_index(&store), Ok(6));
    }

    #[test]
    fn compact_drops_up_to_and_including_the_index() {
        // (compact at, first index after, entries left)
        for (compact_index, first_index, left) in
            [(1, 3, 3), (2, 3, 3), (3, 4, 2), (4, 5, 1), (5, 6, 0)]
        {
            let mut store = store_with_3_to_5();
            store.compact(compact_index, compact_index);
            assert_eq!(store.first_index(), first_index, "compact {compact_index}");
            assert_eq!(store.entry_count(), left, "compact {compact_index}");
            assert_eq!(store.last_index(), 5);
            let point = store.snapshot_point();
            assert_eq!(store.term(point.index), Ok(point.term));
            assert_eq!(
                store.term(point.index.saturating_sub(1)).is_err(),
                point.index > 0
            );
        }
    }

    #[test]
    fn compact_past_the_end_empties_the_log() {
        let mut store = store_with_3_to_5();
        store.compact(9, 7);
        assert_eq!((store.first_index(), store.last_index()), (10, 9));
        assert_eq!(store.term(9), Ok(7));
        assert_eq!(store.cached_bytes(), 0);
        store.append(&[entry(10, 7)]);
        assert_eq!(indexes(&store), vec![(10, 7)]);
    }

    #[test]
    #[should_panic(expected = "compacting at index 4 with term 3, but the entry there has term 4")]
    fn compact_with_the_wrong_term_is_a_caller_bug() {
        store_with_3_to_5().compact(4, 3);
    }

    #[test]
    fn append_overwrites_conflicts_and_refuses_gaps() {
        type Expected = Option<Vec<(u64, u64)>>;
        let cases: Vec<(Vec<Entry>, Expected)> = vec![
            // the same entries again
            (
                vec![entry(3, 3), entry(4, 4), entry(5, 5)],
                Some(vec![(3, 3), (4, 4), (5, 5)]),
            ),
            // a conflicting suffix replaces ours
            (
                vec![entry(3, 3), entry(4, 6), entry(5, 6)],
                Some(vec![(3, 3), (4, 6), (5, 6)]),
            ),
            // overlap then extend
            (
                vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)],
                Some(vec![(3, 3), (4, 4), (5, 5), (6, 5)]),
            ),
            // a shorter conflicting write truncates what follows it
            (vec![entry(4, 5)], Some(vec![(3, 3), (4, 5)])),
            // plain append
            (
                vec![entry(6, 6)],
                Some(vec![(3, 3), (4, 4), (5, 5), (6, 6)]),
            ),
            // nothing to do
            (vec![], Some(vec![(3, 3), (4, 4), (5, 5)])),
            // reaching into the compacted prefix
            (vec![entry(2, 3), entry(3, 3), entry(4, 5)], None),
            // a gap after the last index
            (vec![entry(7, 5)], None),
            // a gap inside the batch
            (vec![entry(6, 5), entry(8, 5)], None),
        ];
        for (new_entries, expected) in cases {
            let mut store = store_with_3_to_5();
            let result = catch_unwind(AssertUnwindSafe(|| store.append(&new_entries)));
            match expected {
                Some(expected) => {
                    result.unwrap();
                    assert_eq!(indexes(&store), expected, "appending {new_entries:?}");
                }
                None => assert!(result.is_err(), "appending {new_entries:?} should panic"),
            }
        }
    }

    #[test]
    fn cached_bytes_track_data_and_context() {
        let mut store = LogStore::new();
        let mut with_context = entry_with_data(2, 1, b"12345");
        with_context.context = b"abc".to_vec().into();
        store.append(&[entry_with_data(1, 1, b"1234567890"), with_context]);
        assert_eq!(store.cached_bytes(), 18);
        store.append(&[entry_with_data(2, 2, b"xy"), entry_with_data(3, 2, b"z")]);
        assert_eq!(store.cached_bytes(), 13);
        store.compact(1, 1);
        assert_eq!(store.cached_bytes(), 3);
        store.compact(3, 2);
        assert_eq!(store.cached_bytes(), 0);
    }

    #[test]
    fn hard_and_conf_state_are_kept() {
        let mut store = store_with_3_to_5();
        let mut hard_state = HardState {
            term: 5,
            vote: 2,
            commit: 4,
            ..HardState::default()
        };
        store.set_hard_state(hard_state.clone());
        store.set_commit(5);
        hard_state.commit = 5;
        let conf_state = voters(&[1, 2, 3]);
        store.set_conf_state(conf_state.clone());

        assert_eq!(store.hard_state(), &hard_state);
        assert_eq!(store.conf_state(), &conf_state);
        let state = store.initial_state().unwrap();
        assert_eq!(
            (state.hard_state, state.conf_state),
            (hard_state, conf_state)
        );
    }

    #[test]
    #[should_panic(expected = "commit index 6 is beyond the last index 5")]
    fn committing_past_the_log_is_a_caller_bug() {
        store_with_3_to_5().set_commit(6);
    }

    #[test]
    fn snapshots_are_not_available_yet() {
        assert_eq!(
            store_with_3_to_5().snapshot(0, 2),
            Err(store_error(StorageError::SnapshotTemporarilyUnavailable))
        );
    }

    #[test]
    fn from_recovered_restores_the_file_contents() {
        let mut file = encode_file_header();
        let records = [
            Record::Meta {
                dbid: "db".into(),
                node_id: 1,
                bootstrap_voters: vec![1],
            },
            Record::Entry(logfile::LogEntry::from(&entry_with_data(1, 1, b"a"))),
            Record::Entry(logfile::LogEntry::from(&entry_with_data(2, 1, b"bb"))),
            Record::Entry(logfile::LogEntry::from(&entry_with_data(3, 2, b"ccc"))),
            Record::HardState {
                term: 2,
                vote: 1,
                commit: 1,
            },
            Record::Compacted { index: 2, term: 1 },
        ];
        for record in &records {
            encode_record(record, &mut file).unwrap();
        }
        let recovered = recover(&file).unwrap();
        let conf_state = voters(&[1]);
        let store = LogStore::from_recovered(recovered, conf_state.clone());

        assert_eq!(store.snapshot_point(), LogPosition { index: 2, term: 1 });
        assert_eq!(indexes(&store), vec![(3, 2)]);
        assert_eq!(store.cached_bytes(), 3);
        assert_eq!(store.conf_state(), &conf_state);
        // The file's commit (1) is below the compaction point, so it is raised.
        assert_eq!(
            (
                store.hard_state().term,
                store.hard_state().vote,
                store.hard_state().commit
            ),
            (2, 1, 2)
        );
    }

    /// What a driver does with one `Ready`, writing the log file as it goes.
    fn handle_ready(node: &mut RawNode<LogStore>, file: &mut Vec<u8>, applied: &mut Vec<Entry>) {
        if !node.has_ready() {
            return;
        }
        let mut ready = node.ready();
        for entry in ready.entries() {
            encode_entry(entry, file).unwrap();
        }
        node.mut_store().append(ready.entries());
        if let Some(hard_state) = ready.hs() {
            let record = Record::HardState {
                term: hard_state.term,
                vote: hard_state.vote,
                commit: hard_state.commit,
            };
            encode_record(&record, file).unwrap();
            node.mut_store().set_hard_state(hard_state.clone());
        }
        applied.extend(ready.take_committed_entries());
        let mut light_ready = node.advance(ready);
        if let Some(commit) = light_ready.commit_index() {
            let mut hard_state = node.store().hard_state().clone();
            hard_state.commit = commit;
            let record = Record::HardState {
                term: hard_state.term,
                vote: hard_state.vote,
                commit,
            };
            encode_record(&record, file).unwrap();
            node.mut_store().set_commit(commit);
        }
        applied.extend(light_ready.take_committed_entries());
        node.advance_apply();
    }

    fn single_voter_node(store: LogStore) -> RawNode<LogStore> {
        let config = Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, store, &logger).unwrap()
    }

    #[test]
    fn a_raft_node_runs_on_the_store_and_restarts_from_its_file() {
        let conf_state = voters(&[1]);
        let mut store = LogStore::new();
        store.set_conf_state(conf_state.clone());

        let mut file = encode_file_header();
        let meta = Record::Meta {
            dbid: "db".into(),
            node_id: 1,
            bootstrap_voters: vec![1],
        };
        encode_record(&meta, &mut file).unwrap();

        let mut node = single_voter_node(store);
        let mut applied = Vec::new();
        node.campaign().unwrap();
        handle_ready(&mut node, &mut file, &mut applied);
        for command in [&b"SET a 1"[..], b"SET b 2"] {
            node.propose(b"request".to_vec(), command.to_vec()).unwrap();
            handle_ready(&mut node, &mut file, &mut applied);
        }
        let applied_commands: Vec<&[u8]> = applied
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
            .map(|e| &e.data[..])
            .collect();
        assert_eq!(applied_commands, vec![&b"SET a 1"[..], b"SET b 2"]);
        assert_eq!(node.store().last_index(), 3);
        assert_eq!(node.store().hard_state().commit, 3);

        // Restart from the bytes written so far.
        let recovered = recover(&file).unwrap();
        assert_eq!(recovered.torn_tail_bytes, 0);
        let restored = LogStore::from_recovered(recovered, conf_state);
        assert_eq!(restored.hard_state(), node.store().hard_state());
        assert_eq!(
            restored.entries(1, 4, None, any_context()),
            node.store().entries(1, 4, None, any_context())
        );

        let mut node = single_voter_node(restored);
        assert_eq!(node.raft.raft_log.committed, 3);
        let mut applied = Vec::new();
        node.campaign().unwrap();
        handle_ready(&mut node, &mut file, &mut applied);
        node.propose(vec![], b"SET c 3".to_vec()).unwrap();
        handle_ready(&mut node, &mut file, &mut applied);
        assert_eq!(node.store().last_index(), 5);
        assert_eq!(node.store().hard_state().commit, 5);
        assert_eq!(
            applied.last().map(|e| e.data.to_vec()),
            Some(b"SET c 3".to_vec())
        );
    }
}
