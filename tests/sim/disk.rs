//! A simulated log file: a byte buffer with a synced length.
//!
//! Writes go through the real encoder (`logfile::encode_entry` / `encode_record`), and a
//! restart reads the bytes back through the real `logfile::recover`, exactly as
//! `adapters::logio::LogFile` does. Two kinds of crash:
//!
//! * power loss: what was synced survives; of the unsynced bytes (the last write, if the
//!   crash hit between write and fsync) a random prefix survives, possibly followed by a
//!   zero-filled extension or with the last frame's payload half written. What survives
//!   was read back from the device, so all of it counts as synced afterwards.
//! * process kill: the page cache survives, so every written byte is still there, but
//!   unsynced bytes stay unsynced: a later power loss can still take them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{Entry, HardState};
use redisraft::core::logfile::{
    self, FrameLocation, LogPosition, NodeMeta, Record, FRAME_HEADER_LEN,
};
use redisraft::core::storage::LogReader;

use super::rng::Rng;

pub struct Disk {
    /// The node's identity, the first record of every rewrite.
    meta: NodeMeta,
    pub bytes: Vec<u8>,
    pub synced_len: usize,
    /// Rewrites so far: a sync started before one has nothing left to do.
    pub generation: u64,
    /// End offsets of the frames written after `synced_len`.
    unsynced_frame_ends: Vec<usize>,
    /// What the running process reads back through [`DiskReader`] (the page cache): a copy
    /// of `bytes` made at start and extended by every append. `None` while no process runs.
    page_cache: Option<Arc<Mutex<Vec<u8>>>>,
}

/// The running process's view of its log file, for the `LogStore`'s entry cache; counts
/// its reads.
pub struct DiskReader(Arc<Mutex<Vec<u8>>>, Arc<AtomicU64>);

impl LogReader for DiskReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.1.fetch_add(1, Ordering::Relaxed);
        let bytes = self.0.lock().map_err(|e| e.to_string())?;
        let start = usize::try_from(offset).map_err(|e| e.to_string())?;
        let slice = bytes
            .get(start..start + buf.len())
            .ok_or_else(|| format!("read of {} bytes at {offset} past the end", buf.len()))?;
        buf.copy_from_slice(slice);
        Ok(())
    }

    fn fatal(&self, message: &str) -> ! {
        panic!("simulated node stops: {message}")
    }
}

/// How a crash left the file, for the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashDamage {
    /// Nothing was unsynced.
    Clean,
    /// Process killed: the page cache kept every written byte.
    Kill,
    /// Power loss, every unsynced byte lost.
    LostUnsynced,
    /// Power loss, the first `kept` unsynced bytes survived (may end inside a frame).
    KeptPrefix { kept: usize },
    /// Like `KeptPrefix`, and the file system extended the file with `zeros` zero bytes.
    KeptPrefixThenZeros { kept: usize, zeros: usize },
    /// Power loss, whole frames survived and the next one has its full length but
    /// `garbled` of its payload bytes never reached the disk (zeros or stale bytes).
    HalfWrittenFrame { kept: usize, garbled: usize },
}

impl Disk {
    /// A new log holding only the node's identity, synced (`LogFile::create` writes a
    /// temp file, syncs it and renames it into place).
    pub fn create(node_id: u64, bootstrap_voters: Vec<u64>) -> Disk {
        let mut bytes = logfile::encode_file_header();
        let meta = NodeMeta {
            dbid: "5133a7edc0ffee00000000000000sim0".to_string(),
            node_id,
            bootstrap_voters,
        };
        let record = Record::Meta {
            dbid: meta.dbid.clone(),
            node_id,
            bootstrap_voters: meta.bootstrap_voters.clone(),
        };
        logfile::encode_record(&record, &mut bytes).expect("meta record encodes");
        let synced_len = bytes.len();
        Disk {
            meta,
            bytes,
            synced_len,
            generation: 0,
            unsynced_frame_ends: Vec::new(),
            page_cache: None,
        }
    }

    /// The file's length, as `LogFile::size_bytes` reports it (written bytes, synced or not).
    pub fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A process starts on this file: its reader sees the bytes as they are now and every
    /// later append.
    pub fn reader(&mut self, reads: Arc<AtomicU64>) -> DiskReader {
        let cache = Arc::new(Mutex::new(self.bytes.clone()));
        self.page_cache = Some(cache.clone());
        DiskReader(cache, reads)
    }

    /// One Ready cycle's write: the entries, then the hard state (`LogFile::append`).
    /// Returns where each entry went.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Vec<FrameLocation> {
        let written_from = self.bytes.len();
        let mut frames = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = self.bytes.len();
            logfile::encode_entry(entry, &mut self.bytes).expect("entry encodes");
            self.unsynced_frame_ends.push(self.bytes.len());
            frames.push(FrameLocation {
                offset: offset as u64,
                len: (self.bytes.len() - offset) as u32,
            });
        }
        if let Some(hs) = hard_state {
            let record = Record::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            };
            logfile::encode_record(&record, &mut self.bytes).expect("hard state encodes");
            self.unsynced_frame_ends.push(self.bytes.len());
        }
        if let Some(cache) = &self.page_cache {
            cache
                .lock()
                .expect("page cache lock")
                .extend_from_slice(&self.bytes[written_from..]);
        }
        frames
    }

    /// `LogFile::rewrite`: the file replaced, atomically and durably, by one that starts at
    /// a snapshot (`logfile::encode_compacted_log`, as the adapter encodes it). The
    /// process's reader follows the new file. Returns where each entry went.
    pub fn rewrite(
        &mut self,
        compacted: LogPosition,
        hard_state: &HardState,
        entries: &[Entry],
    ) -> Vec<FrameLocation> {
        let (bytes, frames) =
            logfile::encode_compacted_log(&self.meta, compacted, hard_state, entries)
                .expect("the rewritten log encodes");
        self.bytes = bytes;
        self.synced_len = self.bytes.len();
        self.generation += 1;
        self.unsynced_frame_ends.clear();
        if let Some(cache) = &self.page_cache {
            *cache.lock().expect("page cache lock") = self.bytes.clone();
        }
        frames
    }

    /// A sync that started when the file (of rewrite `generation`) was `len` bytes long:
    /// what was written later may still be lost.
    pub fn sync_through(&mut self, generation: u64, len: usize) {
        if generation != self.generation {
            return;
        }
        self.synced_len = self.synced_len.max(len);
        self.unsynced_frame_ends.retain(|&end| end > len);
    }

    pub fn has_unsynced(&self) -> bool {
        self.bytes.len() > self.synced_len
    }

    /// The process dies; the page cache keeps everything.
    pub fn kill(&mut self) -> CrashDamage {
        if self.has_unsynced() {
            CrashDamage::Kill
        } else {
            CrashDamage::Clean
        }
    }

    /// The machine loses power: unsynced bytes are lost or torn. Without
    /// `partial_header_then_zeros`, a zero-filled extension never follows a partial frame
    /// header (docs/SIMULATION.md, bug 2: `recover` refuses that tail).
    pub fn power_loss(&mut self, rng: &mut Rng, partial_header_then_zeros: bool) -> CrashDamage {
        let unsynced = self.bytes.len() - self.synced_len;
        let damage = if unsynced == 0 {
            CrashDamage::Clean
        } else {
            match rng.below(5) {
                0 => {
                    self.bytes.truncate(self.synced_len);
                    CrashDamage::LostUnsynced
                }
                1 | 2 => {
                    let kept = rng.range(0, unsynced as u64) as usize;
                    self.bytes.truncate(self.synced_len + kept);
                    CrashDamage::KeptPrefix { kept }
                }
                3 => {
                    let mut kept = rng.range(0, unsynced as u64) as usize;
                    if !partial_header_then_zeros {
                        kept = self.outside_frame_headers(kept);
                    }
                    self.bytes.truncate(self.synced_len + kept);
                    let zeros = rng.range(1, 4096) as usize;
                    self.bytes.resize(self.bytes.len() + zeros, 0);
                    CrashDamage::KeptPrefixThenZeros { kept, zeros }
                }
                _ => self.half_written_frame(rng),
            }
        };
        // What is on the device now was read back from it: durable.
        self.synced_len = self.bytes.len();
        self.unsynced_frame_ends.clear();
        damage
    }

    /// `kept` moved back to the start of its frame if it falls inside the frame header.
    fn outside_frame_headers(&self, kept: usize) -> usize {
        let cut = self.synced_len + kept;
        let mut start = self.synced_len;
        for &end in &self.unsynced_frame_ends {
            if cut > start && cut < start + FRAME_HEADER_LEN {
                return start - self.synced_len;
            }
            start = end;
        }
        kept
    }

    fn half_written_frame(&mut self, rng: &mut Rng) -> CrashDamage {
        // Keep frames [0, j) of the unsynced ones, then frame j with a damaged payload.
        let frames = self.unsynced_frame_ends.len();
        let j = rng.below(frames as u64) as usize;
        let start = if j == 0 {
            self.synced_len
        } else {
            self.unsynced_frame_ends[j - 1]
        };
        let end = self.unsynced_frame_ends[j];
        let payload_start = start + FRAME_HEADER_LEN;
        self.bytes.truncate(end);
        let payload_len = end - payload_start;
        let garbled = rng.range(1, payload_len as u64) as usize;
        let first = payload_start + rng.below((payload_len - garbled) as u64 + 1) as usize;
        let zeros = rng.chance(0.5);
        for byte in &mut self.bytes[first..first + garbled] {
            *byte = if zeros { 0 } else { rng.below(256) as u8 };
        }
        CrashDamage::HalfWrittenFrame {
            kept: start - self.synced_len,
            garbled,
        }
    }

    /// What `LogFile::open` does with a torn tail: cut the file there and sync it.
    pub fn truncate_and_sync(&mut self, valid_len: usize) {
        self.bytes.truncate(valid_len);
        self.synced_len = valid_len;
        self.generation += 1;
        self.unsynced_frame_ends.clear();
    }
}
