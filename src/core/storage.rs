//! The raft log that `raft::RawNode` reads through `raft::Storage`.
//!
//! It mirrors what the log file holds: the driver appends to both (the file
//! for durability, this store for raft), and at start it is rebuilt from
//! [`logfile::recover`]. Entry payloads are `bytes::Bytes`, so the clones
//! handed to raft share memory with the store.
//!
//! Layout: entries `snapshot_point.index + 1 ..= last_index` make up the log;
//! the term at `snapshot_point.index` is kept so raft can still match it.
//! Indexes at or below the snapshot point are compacted.
//!
//! # The entry cache
//!
//! Only the newest entries are held in memory (the *cache*, bounded by
//! `log-max-cache-size` through [`LogStore::set_cache_limit`]). For every entry
//! of the log the store keeps its term (as runs of equal terms) and, once the
//! caller has written it, where its frame sits in the log file
//! ([`LogStore::record_frames`]): 12 bytes per entry. An entry leaves the cache
//! only once its frame location is known, so entries raft has not yet seen
//! written are always served from memory. Older entries (a lagging follower's
//! catch-up) are read back through a [`LogReader`] and verified like recovery
//! verifies them: frame header check, payload checksum, decoding, and the
//! index and term the store expects. A frame that fails is fatal
//! ([`LogReader::fatal`]): the log on disk can no longer be trusted.
//!
//! Without a reader (the default, and the simulation) nothing is evicted.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError, NO_LIMIT};

use super::logfile::{self, FrameLocation, LogPosition};

/// The `data` of every raft Snapshot we hand out: the real bytes travel as a file.
pub const SNAPSHOT_DATA_MARKER: &[u8] = b"redisraft-snapshot-file";

/// Memory a cached entry takes besides its data and context: the `Entry` itself in the
/// cache's ring buffer plus the shared-buffer header of its two `Bytes`.
pub const CACHED_ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Entry>() + 32;

/// Largest single read when entries are read back from the file.
const READ_SPAN_BYTES: u64 = 1024 * 1024;
/// Bytes of other frames (hard states, overwritten entries) a read may skip over before
/// it is split in two.
const READ_GAP_BYTES: u64 = 64 * 1024;

/// Reads the log file back, for entries no longer in the cache. Implemented by the
/// adapter over the real file (positioned reads) and by tests over a byte buffer.
pub trait LogReader: Send {
    /// Fills `buf` with the bytes of the current log file starting at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;

    /// An entry could not be read back or failed its checks: stop the node. The message
    /// names the offset, the index and the problem.
    fn fatal(&self, message: &str) -> !;
}

struct Reader(Box<dyn LogReader>);

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReader")
    }
}

/// The raft log, hard state and configuration.
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
    /// Index of the last entry; `snapshot_point.index` when the log is empty.
    last_index: u64,
    /// `(first index, term)` of each run of entries with one term, in index order. The
    /// first run may start before the first index (its head was compacted). Empty when
    /// the log is empty.
    term_runs: VecDeque<(u64, u64)>,
    /// The newest entries: `cache[i].index == last_index + 1 - cache.len() + i`.
    cache: VecDeque<Entry>,
    /// Sum over `cache` of what each entry occupies: packed data at its size, other
    /// allocations at their size class, plus [`CACHED_ENTRY_OVERHEAD_BYTES`].
    cached_bytes: usize,
    /// Frame offsets of entries `first_index ..` (a prefix of the log: entries the caller
    /// has written and reported).
    frame_offsets: VecDeque<u64>,
    /// Frame lengths, parallel to `frame_offsets`.
    frame_lens: VecDeque<u32>,
    /// Bound on `cached_bytes`; `None` = keep everything.
    cache_limit_bytes: Option<usize>,
    /// Raft's applied index. Entries after it stay cached past the limit (up to
    /// [`UNAPPLIED_CACHE_FACTOR`] times it): raft reads them once more, to hand them over
    /// for applying, and reading a 100 MB entry back from the file took the raft
    /// thread 300-500 ms, enough to miss heartbeats.
    applied_index: u64,
    /// The entries the last read-back from the file gave, by the first index asked for:
    /// raft asks for the same entries again for a follower it probes (on each heartbeat
    /// answer), and each time a huge entry was read and decoded anew.
    last_read_back: std::cell::RefCell<Option<(u64, Vec<Entry>)>>,
    /// The free end of the newest cache segment (see [`CACHE_SEGMENT_BYTES`]).
    cache_segment: BytesMut,
    /// Size the newest cache segment was allocated with.
    cache_segment_bytes: usize,
    reader: Option<Reader>,
}

/// Unapplied entries stay cached up to this many times the cache limit; beyond it they
/// are evicted like applied ones (a leader cut off from its followers commits nothing,
/// and its proposals must not fill memory).
const UNAPPLIED_CACHE_FACTOR: usize = 4;

/// Cached entries' data up to [`PACKED_ENTRY_MAX_BYTES`] is copied into shared segments
/// of at most this size, in log order. The cache evicts its oldest entries first, so a segment is
/// freed whole once its last entry leaves. One allocation per entry instead left the
/// holes of evicted entries between the dataset's allocations: 36-40 MB of jemalloc
/// fragmentation (allocator active minus allocated) on a node after 4 KB SETs.
const CACHE_SEGMENT_BYTES: usize = 1024 * 1024;
/// Segments start at this size and double up to [`CACHE_SEGMENT_BYTES`]: a small log, or
/// a single stray entry, does not hold a whole MiB.
const CACHE_SEGMENT_MIN_BYTES: usize = 64 * 1024;
/// Larger entries keep their own allocation: they would waste much of a segment.
const PACKED_ENTRY_MAX_BYTES: usize = 64 * 1024;

/// The size of the segment after one of `previous_bytes` (0: none yet), for data of
/// `needed_bytes` that did not fit.
fn next_segment_bytes(previous_bytes: usize, needed_bytes: usize) -> usize {
    (previous_bytes * 2)
        .clamp(CACHE_SEGMENT_MIN_BYTES, CACHE_SEGMENT_BYTES)
        .max(needed_bytes)
}

/// Whether the cache copies data of `len` bytes into a segment.
fn is_packed(len: usize) -> bool {
    (1..=PACKED_ENTRY_MAX_BYTES).contains(&len)
}

fn cached_size(entry: &Entry) -> usize {
    let data_bytes = if is_packed(entry.data.len()) {
        entry.data.len()
    } else {
        allocation_size_class(entry.data.len())
    };
    data_bytes + allocation_size_class(entry.context.len()) + CACHED_ENTRY_OVERHEAD_BYTES
}

/// What an allocation of `bytes` really takes in jemalloc, Redis' allocator, which the
/// module allocates through: sizes are rounded up to classes spaced 16 bytes apart up to
/// 128, then four per doubling. A 4 KB SET's entry (4,293 bytes) takes 5,120: counting
/// the requested size let a 64 MB cache hold about 75 MB. Servers built with the C
/// library's allocator (the Valkey of the tests) round less: this then overcounts,
/// which keeps `log-max-cache-size` a true bound.
pub fn allocation_size_class(bytes: usize) -> usize {
    match bytes {
        0 => 0,
        1..=8 => 8,
        9..=128 => bytes.div_ceil(16) * 16,
        _ => {
            // The largest power of two below `bytes` starts its group of four classes.
            let group_base = 1usize << (usize::BITS - 1 - (bytes - 1).leading_zeros());
            let spacing = group_base / 4;
            bytes.div_ceil(spacing) * spacing
        }
    }
}

/// Gives back a deque's buffer once it is mostly empty (after an eviction or compaction
/// dropped many entries; a `VecDeque<Entry>` holds ~100 bytes per slot inline), keeping
/// room to grow so steady state never reallocates.
fn shrink_if_sparse<T>(deque: &mut VecDeque<T>) {
    const MIN_CAPACITY: usize = 1024;
    if deque.capacity() > MIN_CAPACITY && deque.capacity() > 4 * deque.len() {
        deque.shrink_to((2 * deque.len()).max(MIN_CAPACITY));
    }
}

fn store_error(error: StorageError) -> raft::Error {
    raft::Error::Store(error)
}

/// Adds `entry` to `taken` unless the size limit says stop (the rule of
/// `raft::util::limit_size`: the first entry always, then more while the total encoded
/// size stays within the limit). Returns false when the limit was reached.
fn take_within(
    taken: &mut Vec<Entry>,
    total_size: &mut u64,
    entry: Entry,
    max_size: Option<u64>,
) -> bool {
    if let Some(limit) = max_size {
        *total_size += u64::from(entry.compute_size());
        if !taken.is_empty() && *total_size > limit {
            return false;
        }
    }
    taken.push(entry);
    true
}

impl LogStore {
    /// An empty log: first index 1, last index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store as the log file left it, with the frame location of every entry.
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
            last_index: snapshot_point.index,
            ..Self::default()
        };
        let first_index = store.first_index();
        let frames = recovered.entry_frames;
        let mut entries = recovered.entries;
        assert_eq!(frames.len(), entries.len(), "one frame location per entry");
        let with_data = entries.split_off(recovered.entries_without_data);
        // Entries recovered without their data are known by term and location only: they
        // are read back from the file when raft asks (after `set_reader`).
        for entry in &entries {
            if store.term_runs.back().map(|&(_, term)| term) != Some(entry.term) {
                store.term_runs.push_back((entry.index, entry.term));
            }
            store.last_index = entry.index;
        }
        let with_data: Vec<Entry> = with_data
            .into_iter()
            .map(logfile::LogEntry::into_raft)
            .collect();
        store.append(&with_data);
        store.record_frames(first_index, &frames);
        store.set_hard_state(hard_state);
        store
    }

    /// Lets the store drop entries from memory and read them back from the log file.
    pub fn set_reader(&mut self, reader: Box<dyn LogReader>) {
        self.reader = Some(Reader(reader));
        self.evict();
    }

    /// Raft applied up to `index`: entries up to it may leave the cache.
    pub fn set_applied(&mut self, index: u64) {
        self.applied_index = index;
        self.evict();
    }

    /// Bounds the memory of the entry cache (`log-max-cache-size`); `None` keeps every
    /// entry. Entries not yet written (no frame location) stay regardless, and entries
    /// not yet applied within a multiple of the limit.
    pub fn set_cache_limit(&mut self, limit_bytes: Option<usize>) {
        self.cache_limit_bytes = limit_bytes;
        self.evict();
    }

    /// Appends `new_entries`, first dropping any entries at or after the first
    /// new index (raft overwrote a conflicting suffix). New entries are cached until
    /// [`LogStore::record_frames`] says where they were written.
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

        self.truncate_from(first_new.index);
        for entry in new_entries {
            if self.term_runs.back().map(|&(_, term)| term) != Some(entry.term) {
                self.term_runs.push_back((entry.index, entry.term));
            }
            self.cached_bytes += cached_size(entry);
            let mut cached = entry.clone();
            if is_packed(cached.data.len()) {
                cached.data = self.pack(&entry.data);
            }
            self.cache.push_back(cached);
        }
        self.last_index = new_entries[new_entries.len() - 1].index;
    }

    /// Drops entries `>= index` (`first_index <= index <= last_index + 1`).
    fn truncate_from(&mut self, index: u64) {
        if index <= self.last_index {
            self.last_read_back.replace(None);
        }
        let kept = (index - self.first_index()) as usize;
        self.frame_offsets.truncate(kept);
        self.frame_lens.truncate(kept);
        while self
            .term_runs
            .back()
            .is_some_and(|&(start, _)| start >= index)
        {
            self.term_runs.pop_back();
        }
        let cache_first = self.cache_first();
        if index <= cache_first {
            self.cache.clear();
            self.cached_bytes = 0;
        } else {
            let dropped: usize = self
                .cache
                .drain((index - cache_first) as usize..)
                .map(|e| cached_size(&e))
                .sum();
            self.cached_bytes -= dropped;
        }
        self.last_index = index - 1;
    }

    /// The caller wrote entries `first ..` to the log file at `frames`: they may now
    /// leave the cache. `first` must directly follow the entries already located.
    ///
    /// # Panics
    /// If `first` does not follow the located entries, or `frames` runs past the log.
    pub fn record_frames(&mut self, first: u64, frames: &[FrameLocation]) {
        if frames.is_empty() {
            return;
        }
        let located_end = self.located_end();
        assert_eq!(
            first, located_end,
            "frames recorded from index {first}, but entries are located up to {located_end}"
        );
        assert!(
            first + frames.len() as u64 - 1 <= self.last_index(),
            "frames recorded up to index {} beyond the last index {}",
            first + frames.len() as u64 - 1,
            self.last_index()
        );
        for frame in frames {
            self.frame_offsets.push_back(frame.offset);
            self.frame_lens.push_back(frame.len);
        }
        self.evict();
    }

    /// The log file was rewritten: `frames` are the new locations of entries
    /// `first_index ..`, replacing every location known before.
    pub fn replace_frames(&mut self, frames: &[FrameLocation]) {
        self.frame_offsets.clear();
        self.frame_lens.clear();
        let first = self.first_index();
        self.record_frames(first, frames);
    }

    /// Where entry `index`'s frame starts in the log file, if it is located.
    pub fn frame_offset(&self, index: u64) -> Option<u64> {
        let position = index.checked_sub(self.first_index())?;
        self.frame_offsets
            .get(usize::try_from(position).ok()?)
            .copied()
    }

    /// About how many bytes rewriting the log after `index` would write: the located
    /// part from the file (`file_bytes` long), plus the entries not written yet (always
    /// cached).
    pub fn bytes_after(&self, index: u64, file_bytes: u64) -> u64 {
        let first_after = index.saturating_add(1).max(self.first_index());
        let located_end = self.located_end();
        let located = self
            .frame_offset(first_after)
            .map_or(0, |offset| file_bytes.saturating_sub(offset));
        // Only the unwritten tail is visited: this runs on the raft thread.
        let skip = located_end
            .max(first_after)
            .saturating_sub(self.cache_first());
        let unlocated: usize = self
            .cache
            .range(
                usize::try_from(skip)
                    .unwrap_or(usize::MAX)
                    .min(self.cache.len())..,
            )
            .map(cached_size)
            .sum();
        located + unlocated as u64
    }

    /// One past the last entry whose frame location is known.
    fn located_end(&self) -> u64 {
        self.first_index() + self.frame_offsets.len() as u64
    }

    /// Index of the first cached entry (`last_index + 1` when the cache is empty).
    fn cache_first(&self) -> u64 {
        self.last_index + 1 - self.cache.len() as u64
    }

    /// Drops the oldest cached entries while the cache is over its limit, as long as
    /// they can be read back.
    fn evict(&mut self) {
        let Some(limit) = self.cache_limit_bytes else {
            return;
        };
        if self.reader.is_none() {
            return;
        }
        let located_end = self.located_end();
        let hard_limit = limit.saturating_mul(UNAPPLIED_CACHE_FACTOR);
        while self.cached_bytes > limit
            && self.cache_first() < located_end
            && (self.cache_first() <= self.applied_index || self.cached_bytes > hard_limit)
        {
            let entry = self.cache.pop_front().expect("cache_first <= last_index");
            self.cached_bytes -= cached_size(&entry);
        }
        shrink_if_sparse(&mut self.cache);
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
        self.last_read_back.replace(None);
        if compact_index <= self.last_index() {
            let log_term = self.term_of_held(compact_index);
            assert_eq!(
                log_term, term,
                "compacting at index {compact_index} with term {term}, but the entry there has term {log_term}"
            );
            let dropped_count = (compact_index - self.snapshot_point.index) as usize;
            let located = dropped_count.min(self.frame_offsets.len());
            self.frame_offsets.drain(..located);
            self.frame_lens.drain(..located);
            shrink_if_sparse(&mut self.frame_offsets);
            shrink_if_sparse(&mut self.frame_lens);
            let cache_first = self.cache_first();
            if compact_index >= cache_first {
                let dropped = ((compact_index + 1 - cache_first) as usize).min(self.cache.len());
                let dropped_bytes: usize =
                    self.cache.drain(..dropped).map(|e| cached_size(&e)).sum();
                self.cached_bytes -= dropped_bytes;
            }
            while self.term_runs.len() >= 2 && self.term_runs[1].0 <= compact_index + 1 {
                self.term_runs.pop_front();
            }
        } else {
            self.clear_log(compact_index);
        }
        self.snapshot_point = LogPosition {
            index: compact_index,
            term,
        };
    }

    fn clear_log(&mut self, last_index: u64) {
        self.last_read_back.replace(None);
        self.cache.clear();
        self.cached_bytes = 0;
        self.frame_offsets.clear();
        self.frame_lens.clear();
        self.term_runs.clear();
        self.last_index = last_index;
    }

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
        self.clear_log(index);
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

    /// The last compacted position; (0, 0) if nothing was compacted.
    pub fn snapshot_point(&self) -> LogPosition {
        self.snapshot_point
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot_point.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Entries in the log (cached or not).
    pub fn entry_count(&self) -> usize {
        (self.last_index - self.snapshot_point.index) as usize
    }

    /// Entries held in memory.
    pub fn cached_entry_count(&self) -> usize {
        self.cache.len()
    }

    /// Memory of the cached entries, in bytes: packed data at its size, other allocations
    /// at their size class, and [`CACHED_ENTRY_OVERHEAD_BYTES`] each.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// A copy of `data` in the newest cache segment (a new one when it is full).
    fn pack(&mut self, data: &[u8]) -> Bytes {
        if self.cache_segment.capacity() - self.cache_segment.len() < data.len() {
            self.cache_segment_bytes = next_segment_bytes(self.cache_segment_bytes, data.len());
            self.cache_segment = BytesMut::with_capacity(self.cache_segment_bytes);
        }
        self.cache_segment.extend_from_slice(data);
        self.cache_segment.split().freeze()
    }

    /// Term of an entry of the log (`first_index <= index <= last_index`).
    fn term_of_held(&self, index: u64) -> u64 {
        let run = self.term_runs.partition_point(|&(start, _)| start <= index);
        assert!(run > 0, "no term known for index {index}");
        self.term_runs[run - 1].1
    }

    /// Reads entries `[low, high)` (all older than the cache, all located) back from the
    /// log file into `taken`, within the size limit, starting with what the last
    /// read-back from `low` gave. Returns false when the limit was reached.
    fn read_back(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        taken: &mut Vec<Entry>,
        total_size: &mut u64,
    ) -> bool {
        let first_taken = taken.len();
        let mut index = low;
        let mut within = true;
        if let Some((memo_low, memo)) = &*self.last_read_back.borrow() {
            if *memo_low == low {
                for entry in memo.iter().take_while(|entry| entry.index < high) {
                    within = take_within(taken, total_size, entry.clone(), max_size);
                    if !within {
                        break;
                    }
                    index = entry.index + 1;
                }
            }
        }
        if within && index < high {
            within = self.read_back_from_file(index, high, max_size, taken, total_size);
            // Served wholly from the memo, it stays as it was (a smaller ask must not
            // shrink it); after a file read it holds everything this call took.
            self.last_read_back
                .replace(Some((low, taken[first_taken..].to_vec())));
        }
        within
    }

    /// `read_back` without the memo: reads and verifies the frames.
    fn read_back_from_file(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        taken: &mut Vec<Entry>,
        total_size: &mut u64,
    ) -> bool {
        let reader = match &self.reader {
            Some(reader) => &reader.0,
            None => panic!("entry {low} is not cached and there is no log reader"),
        };
        let first_index = self.first_index();
        let location = |index: u64| {
            let at = (index - first_index) as usize;
            (self.frame_offsets[at], u64::from(self.frame_lens[at]))
        };
        let mut index = low;
        while index < high {
            // One positioned read covers consecutive frames, unless they are far apart or
            // the read would get large.
            let (span_start, first_len) = location(index);
            let mut span_end = span_start + first_len;
            let mut end = index + 1;
            let wanted = max_size.map_or(u64::MAX, |limit| limit.saturating_sub(*total_size));
            while end < high {
                let (offset, len) = location(end);
                let fits = offset >= span_end
                    && offset - span_end <= READ_GAP_BYTES
                    && offset + len - span_start <= READ_SPAN_BYTES
                    && span_end - span_start < wanted;
                if !fits {
                    break;
                }
                span_end = offset + len;
                end += 1;
            }
            let mut buffer = vec![0u8; (span_end - span_start) as usize];
            if let Err(e) = reader.read_at(span_start, &mut buffer) {
                reader.fatal(&format!(
                    "cannot read log entries {index}..{end} back from the log file at byte \
                     {span_start}: {e}"
                ));
            }
            for at in index..end {
                let (offset, len) = location(at);
                let start = (offset - span_start) as usize;
                let frame = &buffer[start..start + len as usize];
                let entry = match logfile::decode_entry_frame(frame) {
                    Ok(entry) => entry,
                    Err(e) => reader.fatal(&format!(
                        "corrupt at byte {offset}: entry {at} read back from disk: {e}"
                    )),
                };
                let expected_term = self.term_of_held(at);
                if entry.index != at || entry.term != expected_term {
                    reader.fatal(&format!(
                        "corrupt at byte {offset}: expected entry {at} of term \
                         {expected_term}, found entry {} of term {}",
                        entry.index, entry.term
                    ));
                }
                if !take_within(taken, total_size, entry.into_raft(), max_size) {
                    return false;
                }
            }
            index = end;
        }
        true
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
    /// `raft::util::limit_size`, applied before cloning). Entries older than the cache
    /// are read back from the log file.
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
        if low < self.first_index() {
            return Err(store_error(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index() + 1,
            "entries [{low}, {high}) requested but the last index is {}",
            self.last_index()
        );
        assert!(low <= high, "entries [{low}, {high}) is not a range");

        let mut taken = Vec::with_capacity(((high - low) as usize).min(1024));
        let mut total_size: u64 = 0;
        let cache_first = self.cache_first();
        if low < cache_first {
            let file_high = high.min(cache_first);
            if !self.read_back(low, file_high, max_size, &mut taken, &mut total_size) {
                return Ok(taken);
            }
        }
        if high > cache_first {
            let from = (low.max(cache_first) - cache_first) as usize;
            let to = (high - cache_first) as usize;
            for entry in self.cache.range(from..to) {
                if !take_within(&mut taken, &mut total_size, entry.clone(), max_size) {
                    break;
                }
            }
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
        Ok(self.term_of_held(index))
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
        let (first, last) = (store.first_index(), store.last_index());
        store
            .entries(first, last + 1, None, any_context())
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
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
    fn allocations_are_counted_at_jemalloc_size_classes() {
        let classes: Vec<(usize, usize)> = [
            0, 1, 8, 9, 16, 17, 128, 129, 160, 161, 256, 257, 1000, 4096, 4097, 4293, 5121,
        ]
        .iter()
        .map(|&n| (n, allocation_size_class(n)))
        .collect();
        assert_eq!(
            classes,
            vec![
                (0, 0),
                (1, 8),
                (8, 8),
                (9, 16),
                (16, 16),
                (17, 32),
                (128, 128),
                (129, 160),
                (160, 160),
                (161, 192),
                (256, 256),
                (257, 320),
                (1000, 1024),
                (4096, 4096),
                (4097, 5120),
                (4293, 5120),
                (5121, 6144),
            ]
        );
        assert_eq!(allocation_size_class(100 << 20), 112 << 20);
        for n in 1..100_000 {
            let class = allocation_size_class(n);
            assert!(class >= n && class < n + n / 4 + 16, "{n} -> {class}");
        }
    }

    #[test]
    fn cached_bytes_track_data_and_context() {
        const O: usize = CACHED_ENTRY_OVERHEAD_BYTES;
        let mut store = LogStore::new();
        let mut with_context = entry_with_data(2, 1, b"12345");
        with_context.context = b"abc".to_vec().into();
        store.append(&[entry_with_data(1, 1, b"1234567890"), with_context]);
        // Data is packed into segments (exact size); the context takes its 8-byte class.
        assert_eq!(store.cached_bytes(), 10 + 5 + 8 + 2 * O);
        store.append(&[entry_with_data(2, 2, b"xy"), entry_with_data(3, 2, b"z")]);
        assert_eq!(store.cached_bytes(), 10 + 2 + 1 + 3 * O);
        store.compact(1, 1);
        assert_eq!(store.cached_bytes(), 2 + 1 + 2 * O);
        store.compact(3, 2);
        assert_eq!(store.cached_bytes(), 0);
        // An entry too large to pack counts at its allocation's size class.
        let large = vec![7u8; PACKED_ENTRY_MAX_BYTES + 1];
        store.append(&[entry_with_data(4, 2, &large)]);
        assert_eq!(
            store.cached_bytes(),
            allocation_size_class(PACKED_ENTRY_MAX_BYTES + 1) + O
        );
    }

    #[test]
    fn cached_entries_are_packed_in_log_order_into_shared_segments() {
        let mut store = LogStore::new();
        let value = [42u8; 4293];
        let entries: Vec<Entry> = (1..=400).map(|i| entry_with_data(i, 1, &value)).collect();
        let originals: Vec<*const u8> = entries.iter().map(|e| e.data.as_ptr()).collect();
        store.append(&entries);
        let cached: Vec<&Entry> = store.cache.iter().collect();
        assert!(cached.iter().all(|e| e.data[..] == value[..]));
        assert!(cached
            .iter()
            .zip(&originals)
            .all(|(e, &o)| e.data.as_ptr() != o));
        // Consecutive entries sit back to back except where a new segment starts.
        let segment_starts = cached
            .windows(2)
            .filter(|pair| {
                pair[1].data.as_ptr() != pair[0].data.as_ptr().wrapping_add(pair[0].data.len())
            })
            .count();
        // Segments of 64 KiB, 128 KiB, ... 1 MiB, 1 MiB, ...: count how many 400 need.
        let (mut segments, mut room, mut size) = (0, 0, 0);
        for _ in 0..400 {
            if room < value.len() {
                size = next_segment_bytes(size, value.len());
                room = size;
                segments += 1;
            }
            room -= value.len();
        }
        assert_eq!(segment_starts, segments - 1);
        assert!(segments >= 5, "the 1.7 MB of entries span growing segments");
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
        assert_eq!(store.cached_bytes(), 3 + CACHED_ENTRY_OVERHEAD_BYTES);
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

    // ------------------------------------------------------------ the bounded cache

    /// A log file in memory that the store reads back through [`LogReader`].
    #[derive(Clone, Default)]
    struct SharedFile(
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        /// Reads made through it.
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    );

    impl LogReader for SharedFile {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let bytes = self.0.lock().unwrap();
            let start = offset as usize;
            let slice = bytes
                .get(start..start + buf.len())
                .ok_or_else(|| format!("short read at {offset}"))?;
            buf.copy_from_slice(slice);
            Ok(())
        }

        fn fatal(&self, message: &str) -> ! {
            panic!("FATAL: {message}")
        }
    }

    impl SharedFile {
        fn new() -> SharedFile {
            let file = SharedFile::default();
            let mut bytes = encode_file_header();
            let meta = Record::Meta {
                dbid: "db".into(),
                node_id: 1,
                bootstrap_voters: vec![1],
            };
            encode_record(&meta, &mut bytes).unwrap();
            *file.0.lock().unwrap() = bytes;
            file
        }

        /// Writes entries (and a hard state after them, as the driver does) and returns
        /// where each entry went.
        fn write(&self, entries: &[Entry]) -> Vec<FrameLocation> {
            let mut bytes = self.0.lock().unwrap();
            let mut frames = Vec::new();
            for entry in entries {
                let offset = bytes.len();
                encode_entry(entry, &mut bytes).unwrap();
                frames.push(FrameLocation {
                    offset: offset as u64,
                    len: (bytes.len() - offset) as u32,
                });
            }
            let hard_state = Record::HardState {
                term: 1,
                vote: 1,
                commit: 0,
            };
            encode_record(&hard_state, &mut bytes).unwrap();
            frames
        }

        /// A new file holding only `entries` (a rewrite after compaction).
        fn rewrite(&self, entries: &[Entry]) -> Vec<FrameLocation> {
            *self.0.lock().unwrap() = SharedFile::new().0.lock().unwrap().clone();
            self.write(entries)
        }
    }

    fn data_entry(index: u64, term: u64) -> Entry {
        let len = (index * 37 % 200) as usize;
        let data: Vec<u8> = (0..len).map(|i| (index as usize + i) as u8).collect();
        entry_with_data(index, term, &data)
    }

    fn cost(entries: &[Entry]) -> usize {
        entries.iter().map(cached_size).sum()
    }

    /// A store with a reader over `file` and a cache limit, plus an unbounded twin.
    fn bounded_pair(limit: usize) -> (LogStore, LogStore, SharedFile) {
        let file = SharedFile::new();
        let mut store = LogStore::new();
        store.set_reader(Box::new(file.clone()));
        store.set_cache_limit(Some(limit));
        // Everything counts as applied: only the limit decides (see the unapplied tests).
        store.set_applied(u64::MAX);
        (store, LogStore::new(), file)
    }

    fn append_written(
        store: &mut LogStore,
        twin: &mut LogStore,
        file: &SharedFile,
        batch: &[Entry],
    ) {
        store.append(batch);
        twin.append(batch);
        let frames = file.write(batch);
        store.record_frames(batch[0].index, &frames);
    }

    /// Every range and several size limits give the same entries as the unbounded twin.
    fn assert_same_reads(store: &LogStore, twin: &LogStore) {
        let (first, last) = (store.first_index(), store.last_index());
        assert_eq!((first, last), (twin.first_index(), twin.last_index()));
        for low in first..=last + 1 {
            for high in low..=last + 1 {
                for max_size in [None, Some(0), Some(150), Some(700), Some(5000)] {
                    assert_eq!(
                        store.entries(low, high, max_size, any_context()),
                        twin.entries(low, high, max_size, any_context()),
                        "entries [{low}, {high}) max {max_size:?}"
                    );
                }
            }
        }
        for index in first.saturating_sub(1)..=last + 1 {
            assert_eq!(store.term(index), twin.term(index), "term {index}");
        }
    }

    #[test]
    fn the_cache_keeps_the_newest_entries_within_its_limit() {
        let batch: Vec<Entry> = (1..=40).map(|index| data_entry(index, 1)).collect();
        let limit = cost(&batch[30..]); // room for the last 10 exactly
        let (mut store, mut twin, file) = bounded_pair(limit);
        for chunk in batch.chunks(7) {
            append_written(&mut store, &mut twin, &file, chunk);
            assert!(
                store.cached_bytes() <= limit,
                "{} > {limit}",
                store.cached_bytes()
            );
        }
        assert_eq!(store.cached_entry_count(), 10);
        assert_eq!(store.cached_bytes(), limit);
        assert_eq!(store.entry_count(), 40);
        assert_eq!(store.cache_first(), 31);
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn unapplied_entries_stay_cached_past_the_limit_up_to_a_multiple_of_it() {
        let batch: Vec<Entry> = (1..=40).map(|index| data_entry(index, 1)).collect();
        let limit = cost(&batch[30..]);
        let (mut store, mut twin, file) = bounded_pair(limit);
        store.set_applied(0);
        append_written(&mut store, &mut twin, &file, &batch[..20]);
        // Nothing applied: all 20 stay (their cost is under four times the limit).
        assert!(cost(&batch[..20]) <= UNAPPLIED_CACHE_FACTOR * limit);
        assert_eq!(store.cached_entry_count(), 20);
        assert_same_reads(&store, &twin);
        store.set_applied(15);
        // Applied ones leave down to the limit; unapplied 16..=20 stay.
        assert!(store.cache_first() <= 16);
        assert!(store.cached_bytes() <= limit.max(cost(&batch[15..20])));
        store.set_applied(20);
        assert!(store.cached_bytes() <= limit);
        // Never more than four times the limit, applied or not.
        let (mut store, mut twin, file) = bounded_pair(cost(&batch[..2]));
        store.set_applied(0);
        append_written(&mut store, &mut twin, &file, &batch);
        assert!(store.cached_bytes() <= UNAPPLIED_CACHE_FACTOR * cost(&batch[..2]));
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn asking_again_for_entries_read_back_does_not_read_the_file_again() {
        let batch: Vec<Entry> = (1..=10).map(|index| data_entry(index, 1)).collect();
        let (mut store, mut twin, file) = bounded_pair(0);
        append_written(&mut store, &mut twin, &file, &batch);
        assert_eq!(store.cached_entry_count(), 0);
        let reads = || file.1.load(std::sync::atomic::Ordering::Relaxed);
        let first = store.entries(3, 8, None, any_context()).unwrap();
        let after_first = reads();
        assert!(after_first > 0);
        // What a probed follower's heartbeat answers ask, again and again.
        for _ in 0..5 {
            assert_eq!(store.entries(3, 8, None, any_context()).unwrap(), first);
        }
        assert_eq!(reads(), after_first);
        // A shorter or a longer range from the same index is served from it too (the
        // longer one reads only what follows), and a shorter one or a smaller size limit
        // does not shrink it.
        assert_eq!(
            store.entries(3, 5, None, any_context()).unwrap(),
            twin.entries(3, 5, None, any_context()).unwrap()
        );
        assert_eq!(
            store.entries(3, 8, Some(0), any_context()).unwrap(),
            twin.entries(3, 8, Some(0), any_context()).unwrap()
        );
        assert_eq!(store.entries(3, 8, None, any_context()).unwrap(), first);
        assert_eq!(reads(), after_first);
        assert_eq!(
            store.entries(3, 11, None, any_context()).unwrap(),
            twin.entries(3, 11, None, any_context()).unwrap()
        );
        // Overwritten entries are never served from it.
        let replacement: Vec<Entry> = (5..=6).map(|index| data_entry(index, 2)).collect();
        append_written(&mut store, &mut twin, &file, &replacement);
        assert_eq!(
            store.entries(3, 7, None, any_context()).unwrap(),
            twin.entries(3, 7, None, any_context()).unwrap()
        );
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn entries_not_yet_written_are_never_evicted() {
        let (mut store, mut twin, file) = bounded_pair(0);
        let batch: Vec<Entry> = (1..=5).map(|index| data_entry(index, 1)).collect();
        store.append(&batch);
        twin.append(&batch);
        // Nothing is written yet: all of it stays, whatever the limit.
        assert_eq!(store.cached_entry_count(), 5);
        assert_same_reads(&store, &twin);
        let frames = file.write(&batch[..3]);
        store.record_frames(1, &frames);
        assert_eq!(store.cached_entry_count(), 2);
        assert_eq!(store.cache_first(), 4);
        assert_same_reads(&store, &twin);
        let frames = file.write(&batch[3..]);
        store.record_frames(4, &frames);
        assert_eq!(store.cached_entry_count(), 0);
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn an_emptied_cache_gives_its_buffer_back() {
        let (mut store, _, file) = bounded_pair(usize::MAX);
        let batch: Vec<Entry> = (1..=20_000).map(|index| data_entry(index, 1)).collect();
        store.append(&batch);
        let frames = file.write(&batch);
        store.record_frames(1, &frames);
        assert!(store.cache.capacity() >= 20_000);
        store.set_cache_limit(Some(0));
        assert_eq!(store.cached_entry_count(), 0);
        assert!(store.cache.capacity() <= 2048, "{}", store.cache.capacity());
        store.compact(19_000, 1);
        assert!(store.frame_offsets.capacity() <= 4096);
        assert_eq!(store.frame_offset(19_001), Some(frames[19_000].offset));
    }

    #[test]
    fn frame_offsets_are_known_for_written_entries_only() {
        let (mut store, _, file) = bounded_pair(0);
        let batch: Vec<Entry> = (1..=5).map(|index| data_entry(index, 1)).collect();
        store.append(&batch);
        let frames = file.write(&batch[..3]);
        store.record_frames(1, &frames);
        assert_eq!(store.frame_offset(1), Some(frames[0].offset));
        assert_eq!(store.frame_offset(3), Some(frames[2].offset));
        assert!(frames[0].offset < frames[2].offset);
        assert_eq!(store.frame_offset(4), None, "not written yet");
        assert_eq!(store.frame_offset(0), None, "before the log");
        let file_bytes = frames[2].offset + u64::from(frames[2].len);
        let unwritten = cost(&batch[3..]) as u64;
        assert_eq!(
            store.bytes_after(1, file_bytes),
            file_bytes - frames[1].offset + unwritten
        );
        assert_eq!(store.bytes_after(3, file_bytes), unwritten);
        assert_eq!(store.bytes_after(4, file_bytes), cost(&batch[4..]) as u64);
        assert_eq!(store.bytes_after(5, file_bytes), 0);
        store.compact(2, 1);
        assert_eq!(store.frame_offset(2), None, "compacted");
        assert_eq!(store.frame_offset(3), Some(frames[2].offset));
        assert_eq!(
            store.bytes_after(0, file_bytes),
            file_bytes - frames[2].offset + unwritten
        );
    }

    #[test]
    #[should_panic(expected = "frames recorded from index 3, but entries are located up to 1")]
    fn frames_must_be_recorded_in_order() {
        let (mut store, _, file) = bounded_pair(0);
        let batch: Vec<Entry> = (1..=5).map(|index| data_entry(index, 1)).collect();
        store.append(&batch);
        let frames = file.write(&batch[2..]);
        store.record_frames(3, &frames);
    }

    #[test]
    fn overwriting_evicted_entries_reads_the_new_ones() {
        let (mut store, mut twin, file) = bounded_pair(cost(&[data_entry(1, 1)]) * 2);
        let batch: Vec<Entry> = (1..=20).map(|index| data_entry(index, 1)).collect();
        append_written(&mut store, &mut twin, &file, &batch);
        assert!(store.cache_first() > 10);
        // A new leader replaces 8.. with its own entries; the old frames stay in the file.
        let newer: Vec<Entry> = (8..=12)
            .map(|index| data_entry(index + 100, 2))
            .map(|mut e| {
                e.index -= 100;
                e
            })
            .collect();
        append_written(&mut store, &mut twin, &file, &newer);
        assert_eq!(store.last_index(), 12);
        assert_same_reads(&store, &twin);
        assert_eq!(store.term(7), Ok(1));
        assert_eq!(store.term(8), Ok(2));
    }

    #[test]
    fn compaction_and_a_rewritten_file_keep_reads_right() {
        let (mut store, mut twin, file) = bounded_pair(cost(&[data_entry(1, 1)]) * 3);
        let batch: Vec<Entry> = (1..=30)
            .map(|index| data_entry(index, 1 + index / 10))
            .collect();
        append_written(&mut store, &mut twin, &file, &batch);
        store.compact(12, 2);
        twin.compact(12, 2);
        assert_same_reads(&store, &twin);
        // The driver rewrites the file to start at the snapshot, then relocates.
        let kept = store.entries(13, 31, None, any_context()).unwrap();
        let frames = file.rewrite(&kept);
        store.replace_frames(&frames);
        assert_same_reads(&store, &twin);
        store.compact(25, 3);
        twin.compact(25, 3);
        assert_same_reads(&store, &twin);
        store.compact(40, 9);
        twin.compact(40, 9);
        assert_eq!(store.cached_entry_count(), 0);
        assert_same_reads(&store, &twin);
        let next = [data_entry(41, 9)];
        append_written(&mut store, &mut twin, &file, &next);
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn changing_the_limit_evicts_at_once() {
        let (mut store, mut twin, file) = bounded_pair(usize::MAX);
        let batch: Vec<Entry> = (1..=12).map(|index| data_entry(index, 1)).collect();
        append_written(&mut store, &mut twin, &file, &batch);
        assert_eq!(store.cached_entry_count(), 12);
        store.set_cache_limit(Some(cost(&batch[8..])));
        assert_eq!(store.cached_entry_count(), 4);
        assert_same_reads(&store, &twin);
        store.set_cache_limit(None);
        // Raising the limit does not read anything back; new entries are kept again.
        append_written(&mut store, &mut twin, &file, &[data_entry(13, 1)]);
        assert_eq!(store.cached_entry_count(), 5);
    }

    #[test]
    fn recovery_gives_the_store_the_frame_locations() {
        let file = SharedFile::new();
        let batch: Vec<Entry> = (1..=10).map(|index| data_entry(index, 1)).collect();
        file.write(&batch);
        let recovered = recover(&file.0.lock().unwrap()).unwrap();
        let mut store = LogStore::from_recovered(recovered, voters(&[1]));
        store.set_reader(Box::new(file.clone()));
        store.set_cache_limit(Some(0));
        assert_eq!(store.cached_entry_count(), 0);
        let mut twin = LogStore::new();
        twin.append(&batch);
        twin.set_hard_state(store.hard_state().clone());
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn entries_recovered_without_data_are_read_back() {
        let file = SharedFile::new();
        let batch: Vec<Entry> = (1..=12)
            .map(|index| data_entry(index, 1 + index / 5))
            .collect();
        file.write(&batch[..5]);
        file.write(&batch[5..]);
        let keep = batch[9..].iter().map(|e| e.data.len()).sum();
        let recovered =
            crate::core::logfile::recover_keeping(&file.0.lock().unwrap(), keep).unwrap();
        assert_eq!(recovered.entries_without_data, 9);
        let mut store = LogStore::from_recovered(recovered, voters(&[1]));
        assert_eq!(store.cached_entry_count(), 3);
        store.set_reader(Box::new(file.clone()));
        store.set_cache_limit(Some(usize::MAX));
        let mut twin = LogStore::new();
        twin.append(&batch);
        twin.set_hard_state(store.hard_state().clone());
        assert_same_reads(&store, &twin);
        append_written(&mut store, &mut twin, &file, &[data_entry(13, 3)]);
        assert_same_reads(&store, &twin);
    }

    #[test]
    fn a_corrupt_frame_read_back_stops_the_node() {
        let (mut store, mut twin, file) = bounded_pair(0);
        let batch: Vec<Entry> = (1..=6).map(|index| data_entry(index, 1)).collect();
        append_written(&mut store, &mut twin, &file, &batch);
        let offset = {
            let frames = file.write(&[]); // hard state only; find entry 4's frame
            drop(frames);
            store.frame_offsets[3]
        };
        file.0.lock().unwrap()[offset as usize + 20] ^= 0x40;
        let panic = catch_unwind(AssertUnwindSafe(|| {
            store.entries(4, 5, None, any_context())
        }))
        .unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains(&format!("corrupt at byte {offset}: entry 4")),
            "{message}"
        );
        assert!(message.contains("checksum"), "{message}");
        // A frame of another entry where entry 2 should be is caught too.
        store.frame_offsets[1] = store.frame_offsets[0];
        store.frame_lens[1] = store.frame_lens[0];
        let panic = catch_unwind(AssertUnwindSafe(|| {
            store.entries(2, 3, None, any_context())
        }))
        .unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("expected entry 2 of term 1, found entry 1"),
            "{message}"
        );
    }

    /// Random appends, overwrites, writes, compactions with rewrites and limit changes,
    /// checked against an unbounded store after every step.
    #[test]
    fn random_histories_read_like_an_unbounded_store() {
        for seed in 0..40u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let limit = cost(&[data_entry(1, 1)]) * next(6) as usize;
            let (mut store, mut twin, file) = bounded_pair(limit);
            let mut term = 1;
            let mut unwritten: Vec<Entry> = Vec::new();
            for _ in 0..60 {
                match next(10) {
                    0..=4 => {
                        // raft appends (maybe overwriting an unapplied suffix)
                        let (first, last) = (store.first_index(), store.last_index());
                        let start = if next(4) == 0 && last >= first {
                            term += 1;
                            first + next(last - first + 1)
                        } else {
                            last + 1
                        };
                        let batch: Vec<Entry> = (start..start + 1 + next(5))
                            .map(|index| data_entry(index, term))
                            .collect();
                        store.append(&batch);
                        twin.append(&batch);
                        // Not yet written: drop what was overwritten, keep the rest.
                        unwritten.retain(|e| e.index < start);
                        unwritten.extend(batch);
                    }
                    5..=7 if !unwritten.is_empty() => {
                        let batch = std::mem::take(&mut unwritten);
                        let frames = file.write(&batch);
                        store.record_frames(batch[0].index, &frames);
                    }
                    8 if unwritten.is_empty() && store.last_index() >= store.first_index() => {
                        let (first, last) = (store.first_index(), store.last_index());
                        let at = first + next(last - first + 1);
                        let at_term = twin.term(at).unwrap();
                        store.compact(at, at_term);
                        twin.compact(at, at_term);
                        let kept = store
                            .entries(at + 1, last + 1, None, any_context())
                            .unwrap();
                        let frames = file.rewrite(&kept);
                        store.replace_frames(&frames);
                    }
                    _ => store.set_cache_limit(Some(cost(&[data_entry(1, 1)]) * next(8) as usize)),
                }
                let located = store.frame_offsets.len() as u64;
                assert!(store.cache_first() <= store.first_index() + located);
                let (first, last) = (store.first_index(), store.last_index());
                for low in first..=last + 1 {
                    assert_eq!(
                        store.entries(low, last + 1, None, any_context()),
                        twin.entries(low, last + 1, None, any_context()),
                        "seed {seed}: entries from {low}"
                    );
                    assert_eq!(
                        store.entries(low, last + 1, 300, any_context()),
                        twin.entries(low, last + 1, 300, any_context()),
                        "seed {seed}: entries from {low}, limited"
                    );
                }
                assert_eq!(store.term(last), twin.term(last), "seed {seed}");
            }
        }
    }
}
