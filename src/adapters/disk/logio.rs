//! The log file on disk: recovery at start, appends from the raft thread, syncs from
//! the sync thread (and from the driver for a cycle that installs a snapshot).
//! Encoding and recovery rules are the pure `core::logfile`; this is only the I/O.
//!
//! A failed write or sync stops the process (exit status 1, one `FATAL` log line naming
//! the file, the operation and the OS error), like Redis itself when an `appendfsync
//! always` AOF write fails. It never retries: after a failed fsync the kernel may have
//! dropped the dirty pages and cleared the error, so a retry that "succeeds" would
//! acknowledge writes that are not on disk. Exiting is safe because the driver sends an
//! acknowledgement only after the sync covering it returned: whichever thread fails
//! stops the whole process before that, entries not synced were never acknowledged, and
//! on restart recovery cuts whatever tail the failed write left. See docs/SECURITY.md
//! (disk faults).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raft::eraftpb::{Entry, HardState};

use crate::core::logfile::{self, FrameLocation, LogPosition, NodeMeta, Record, Recovered};
use crate::core::storage::LogReader;

/// The log file currently in use, shared with the [`FileReader`] (a rewrite replaces it).
type CurrentFile = Arc<Mutex<Arc<File>>>;

/// Capacity the write buffer keeps between appends.
const RETAINED_BUFFER_BYTES: usize = 256 * 1024;

/// The file is extended ahead of the writes in steps of this size (a sparse extension;
/// the unwritten part reads as zeros, which recovery takes for the free end of the log).
/// An append inside the file's length does not change the file's size, and on ext4 its
/// `fdatasync` then costs 125-140 µs instead of 170-210 µs (one writer), 250-300 instead
/// of 300-320 µs (three writers on one disk) on this machine: see docs/PERFORMANCE.md.
const PREALLOCATE_BYTES: u64 = 4 * 1024 * 1024;

pub struct LogFile {
    file: Arc<File>,
    /// What the reader reads: always the same file as `file`.
    current: CurrentFile,
    path: PathBuf,
    /// Written first in every rewrite of the file.
    meta: NodeMeta,
    /// Where the log ends: the next append goes here (the file position stays here).
    size_bytes: u64,
    /// The file's length: `size_bytes` plus the preallocated zeros after it.
    allocated_bytes: u64,
    /// Cleared when the file cannot be extended ahead (not a regular file, or a file
    /// system that refuses): appends then just grow the file.
    preallocate: bool,
    buffer: Vec<u8>,
    fsync_stats: Arc<FsyncStats>,
}

/// Counted by whichever thread syncs the log; published with the log's other figures.
#[derive(Default)]
struct FsyncStats {
    count: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
    last_us: AtomicU64,
}

impl FsyncStats {
    fn record(&self, started: Instant) {
        let elapsed_us = started.elapsed().as_micros() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(elapsed_us, Ordering::Relaxed);
        self.max_us.fetch_max(elapsed_us, Ordering::Relaxed);
        self.last_us.store(elapsed_us, Ordering::Relaxed);
    }
}

/// Makes the log durable from the sync thread while the driver goes on appending: an
/// `fdatasync` of the file in use when it runs covers every append made before it
/// started. A rewrite in between is no gap: the new file was written durably with
/// everything the old one held.
pub struct LogSyncer {
    current: CurrentFile,
    path: PathBuf,
    fsync_stats: Arc<FsyncStats>,
}

impl LogSyncer {
    pub fn sync(&self) {
        let file = Arc::clone(
            &self
                .current
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let started = Instant::now();
        if let Err(e) = file.sync_data() {
            fatal(&self.path, "fsync", &e);
        }
        self.fsync_stats.record(started);
    }
}

/// Stops the process after a failed write or sync of the log (see the module doc).
pub fn fatal(path: &Path, action: &str, error: &dyn std::fmt::Display) -> ! {
    log::error!(
        "raft: FATAL: {action} of log file {} failed: {error}; exiting so that no write is \
         acknowledged without being durable (free space or fix the disk, then restart: \
         the node recovers its log and rejoins)",
        path.display()
    );
    std::process::exit(1);
}

impl LogFile {
    /// Opens an existing log, validates it and cuts a torn tail. `Ok(None)`: no log yet.
    /// Only the newest `keep_data_bytes` of entry data are kept in memory (the entry cache
    /// reads the rest back from the file).
    pub fn open(
        path: &Path,
        keep_data_bytes: usize,
    ) -> Result<Option<(LogFile, Recovered)>, String> {
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open log file {}: {e}", path.display())),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read log file {}: {e}", path.display()))?;
        let recovered = logfile::recover_keeping(&bytes, keep_data_bytes).map_err(|e| {
            format!(
                "log file {} is corrupt: {e}; refusing to start",
                path.display()
            )
        })?;
        if recovered.meta.is_none() {
            // A crash during INIT/JOIN before the first record was durable: not a member.
            log::warn!(
                "raft: log file {} holds no node identity (interrupted init?); ignoring it",
                path.display()
            );
            std::fs::rename(path, path.with_extension("incomplete"))
                .map_err(|e| format!("cannot move aside {}: {e}", path.display()))?;
            return Ok(None);
        }
        // What we recovered may still be only in the page cache (after a process kill):
        // make it durable before acting on it (acking, applying).
        file.sync_all()
            .map_err(|e| format!("cannot sync log file {}: {e}", path.display()))?;
        if recovered.torn_tail_bytes > 0 {
            // Zeros after the end are the preallocated room (or a tail the file system
            // left zero-filled); anything else is a write a crash cut short. Both go: a
            // remnant left in place would follow the next appends and read as corruption.
            let tail = &bytes[recovered.valid_len..];
            if tail.iter().any(|&byte| byte != 0) {
                log::warn!(
                    "raft: log file {}: truncating a torn tail of {} bytes at offset {}",
                    path.display(),
                    recovered.torn_tail_bytes,
                    recovered.valid_len
                );
            }
            file.set_len(recovered.valid_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
        }
        drop(bytes);
        file.seek(SeekFrom::Start(recovered.valid_len as u64))
            .map_err(|e| format!("cannot seek in {}: {e}", path.display()))?;
        let meta = recovered.meta.clone().expect("checked above");
        let log = LogFile::from_file(file, path, meta, recovered.valid_len as u64);
        Ok(Some((log, recovered)))
    }

    /// Creates a new log holding only the node's identity, durably (file and directory).
    pub fn create(path: &Path, meta: &NodeMeta) -> Result<LogFile, String> {
        let bytes = encode_identity(meta)?;
        let file = write_durably(path, &bytes)
            .map_err(|e| format!("cannot create log file {}: {e}", path.display()))?;
        Ok(LogFile::from_file(
            file,
            path,
            meta.clone(),
            bytes.len() as u64,
        ))
    }

    /// Replaces the file with one that starts at a snapshot: identity, compaction point,
    /// hard state, then the entries after the snapshot. Atomic: a crash leaves either the
    /// old file or the new one. The hard state's commit is written as at most the file's
    /// last index (`logfile::encode_compacted_log`): entries of the Ready cycle that
    /// installs a snapshot are appended only after this. Returns where each entry sits in
    /// the new file.
    pub fn rewrite(
        &mut self,
        compacted: LogPosition,
        hard_state: &HardState,
        entries: &[Entry],
    ) -> Vec<FrameLocation> {
        let result = logfile::encode_compacted_log(&self.meta, compacted, hard_state, entries)
            .map_err(|e| e.to_string())
            .and_then(|(bytes, frames)| {
                let file = write_durably(&self.path, &bytes).map_err(|e| e.to_string())?;
                Ok((file, bytes.len() as u64, frames))
            });
        match result {
            Ok((file, size_bytes, frames)) => {
                self.set_file(file);
                self.size_bytes = size_bytes;
                self.allocated_bytes = size_bytes;
                frames
            }
            Err(e) => fatal(&self.path, "rewrite", &e),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn set_file(&mut self, file: File) {
        self.file = Arc::new(file);
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&self.file);
    }

    /// A reader of this log file for the entry cache; it follows rewrites.
    pub fn reader(&self) -> FileReader {
        FileReader {
            current: Arc::clone(&self.current),
            path: self.path.clone(),
        }
    }
}

fn frame_at(offset: u64, len: usize) -> FrameLocation {
    FrameLocation {
        offset,
        len: u32::try_from(len).expect("a frame is below 4 GiB"),
    }
}

/// Positioned reads of the current log file, for entries that left the cache.
pub struct FileReader {
    current: CurrentFile,
    path: PathBuf,
}

impl LogReader for FileReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let file = Arc::clone(
            &self
                .current
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        file.read_exact_at(buf, offset).map_err(|e| e.to_string())
    }

    fn fatal(&self, message: &str) -> ! {
        log::error!(
            "raft: FATAL: log file {}: {message}; stopping: the log on disk can no longer be \
             trusted",
            self.path.display()
        );
        std::process::abort();
    }
}

/// A new log file: the header and the node's identity.
fn encode_identity(meta: &NodeMeta) -> Result<Vec<u8>, String> {
    let mut bytes = logfile::encode_file_header();
    let identity = Record::Meta {
        dbid: meta.dbid.clone(),
        node_id: meta.node_id,
        bootstrap_voters: meta.bootstrap_voters.clone(),
    };
    logfile::encode_record(&identity, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Writes `bytes` to a temp file, syncs it, renames it over `path`, syncs the directory,
/// and returns the new file opened for writing, positioned at its end.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    {
        let temp_path = path.with_extension("rewriting");
        let mut file = File::create(&temp_path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp_path, path)?;
    }
    sync_directory_of(path)?;
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    file.seek(SeekFrom::End(0))?;
    Ok(file)
}

pub fn sync_directory_of(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

impl LogFile {
    fn from_file(file: File, path: &Path, meta: NodeMeta, size_bytes: u64) -> LogFile {
        let file = Arc::new(file);
        LogFile {
            current: Arc::new(Mutex::new(Arc::clone(&file))),
            file,
            path: path.to_path_buf(),
            meta,
            size_bytes,
            allocated_bytes: size_bytes,
            preallocate: true,
            buffer: Vec::with_capacity(64 * 1024),
            fsync_stats: Arc::default(),
        }
    }

    /// A syncer of this log for the sync thread; it follows rewrites.
    pub fn syncer(&self) -> LogSyncer {
        LogSyncer {
            current: Arc::clone(&self.current),
            path: self.path.clone(),
            fsync_stats: Arc::clone(&self.fsync_stats),
        }
    }

    /// Writes one Ready cycle's entries, then its hard state, in a single write. Returns
    /// where each entry went.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Vec<FrameLocation> {
        self.buffer.clear();
        let mut frames = Vec::with_capacity(entries.len());
        let base = self.size_bytes;
        let mut encoded = entries.iter().try_for_each(|entry| {
            let offset = self.buffer.len();
            logfile::encode_entry(entry, &mut self.buffer)?;
            frames.push(frame_at(base + offset as u64, self.buffer.len() - offset));
            Ok(())
        });
        if let (Ok(()), Some(hs)) = (&encoded, hard_state) {
            let record = Record::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            };
            encoded = logfile::encode_record(&record, &mut self.buffer);
        }
        if let Err(e) = encoded {
            // raft only hands us entries it accepted; an oversized one is a bug upstream.
            panic!("raft: cannot encode a log record: {e}");
        }
        self.preallocate_for(self.buffer.len() as u64);
        if let Err(e) = (&*self.file).write_all(&self.buffer) {
            fatal(&self.path, "write", &e);
        }
        self.size_bytes += self.buffer.len() as u64;
        // One large batch (a 100 MB value, a follower catching up) must not keep its
        // buffer for the node's life.
        self.buffer.clear();
        self.buffer.shrink_to(RETAINED_BUFFER_BYTES);
        frames
    }

    /// Extends the file ahead of an append of `len` bytes, so that most appends do not
    /// change its size. The extension is sparse; it becomes durable with the next sync,
    /// and until the appends fill it recovery reads it as the (zero) free end of the log.
    fn preallocate_for(&mut self, len: u64) {
        let end = self.size_bytes + len;
        if !self.preallocate || end <= self.allocated_bytes {
            return;
        }
        let target = end.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
        match self.file.set_len(target) {
            Ok(()) => self.allocated_bytes = target,
            Err(e) => {
                log::warn!(
                    "raft: log file {}: cannot extend it ahead of writes ({e}); appending \
                     without preallocation",
                    self.path.display()
                );
                self.preallocate = false;
            }
        }
    }

    /// Makes every append so far durable on the calling thread (the driver uses a
    /// [`LogSyncer`] on the sync thread instead).
    pub fn sync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.file.sync_data() {
            fatal(&self.path, "fsync", &e);
        }
        self.fsync_stats.record(started);
    }

    /// How long the latest sync took (0 before the first), whichever thread ran it.
    pub fn last_sync_us(&self) -> u64 {
        self.fsync_stats.last_us.load(Ordering::Relaxed)
    }

    /// Syncs so far: how many, their total and their longest duration.
    pub fn fsync_figures(&self) -> FsyncFigures {
        let stats = &self.fsync_stats;
        FsyncFigures {
            count: stats.count.load(Ordering::Relaxed),
            total_us: stats.total_us.load(Ordering::Relaxed),
            max_us: stats.max_us.load(Ordering::Relaxed),
        }
    }
}

/// A reading of the log's fsync counters (INFO `raft_fsync_*`).
pub struct FsyncFigures {
    pub count: u64,
    pub total_us: u64,
    pub max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process that `fault_child` runs in.
    const CHILD_ENV: &str = "REDISRAFT_LOGIO_FAULT_CHILD";

    fn meta() -> NodeMeta {
        NodeMeta {
            dbid: "0123456789abcdef0123456789abcdef".into(),
            node_id: 1,
            bootstrap_voters: vec![1],
        }
    }

    /// Not a test on its own: the body of the child process `disk_faults_exit_...` starts.
    /// A log whose file fails the way a full or broken disk does; the process must exit.
    #[test]
    fn fault_child() {
        let Ok(fault) = std::env::var(CHILD_ENV) else {
            return;
        };
        let _ = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Info)
            .target(env_logger::Target::Stderr)
            .try_init();
        let path = Path::new("/fault/redisraft.db");
        let entry = Entry {
            index: 1,
            term: 1,
            data: b"payload".to_vec().into(),
            ..Default::default()
        };
        match fault.as_str() {
            // fsync of a pipe fails with EINVAL: a sync error, whatever its cause.
            "fsync" => {
                let (_reader, writer) = std::io::pipe().unwrap();
                let file = File::from(std::os::fd::OwnedFd::from(writer));
                let mut log = LogFile::from_file(file, path, meta(), 0);
                log.append(&[entry], None);
                log.sync();
            }
            // Every write to /dev/full fails with ENOSPC.
            "write" => {
                let file = OpenOptions::new().write(true).open("/dev/full").unwrap();
                let mut log = LogFile::from_file(file, path, meta(), 0);
                log.append(&[entry], None);
            }
            other => panic!("unknown fault {other}"),
        }
        println!("SURVIVED {fault}");
    }

    fn run_child(fault: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "adapters::disk::logio::tests::fault_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, fault)
            .output()
            .unwrap()
    }

    fn entries(from: u64, count: u64, data_len: usize) -> Vec<Entry> {
        (from..from + count)
            .map(|index| Entry {
                index,
                term: 1,
                data: vec![index as u8; data_len].into(),
                ..Default::default()
            })
            .collect()
    }

    fn hard_state(commit: u64) -> HardState {
        HardState {
            term: 1,
            vote: 1,
            commit,
            ..Default::default()
        }
    }

    /// A new log in a temp dir holding entries 1..=count (committed) of `data_len` bytes.
    fn log_with(count: u64, data_len: usize) -> (tempfile::TempDir, PathBuf, LogFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redisraft.db");
        let mut log = LogFile::create(&path, &meta()).unwrap();
        log.append(&entries(1, count, data_len), Some(&hard_state(count)));
        log.sync();
        (dir, path, log)
    }

    /// The file is extended ahead of the appends; a restart finds every entry, drops the
    /// zeros after them without calling them torn, and appends continue where the log
    /// ended (not after the zeros).
    #[test]
    fn preallocated_room_is_recovered_as_the_end_of_the_log() {
        let (_dir, path, log) = log_with(100, 1000);
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(file_len, PREALLOCATE_BYTES, "extended ahead in one step");
        assert!(log.size_bytes() < file_len);
        let written = log.size_bytes();
        drop(log);

        let (mut log, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.last_index(), 100);
        assert_eq!(recovered.valid_len as u64, written);
        assert_eq!(recovered.torn_tail_bytes as u64, file_len - written);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), written);
        // Past one preallocation step: the file grows by whole steps.
        log.append(&entries(101, 5000, 1000), Some(&hard_state(5100)));
        log.sync();
        let written = log.size_bytes();
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(file_len % PREALLOCATE_BYTES, 0);
        assert!(written > PREALLOCATE_BYTES && written <= file_len);
        drop(log);

        let (_, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.valid_len as u64, written);
        assert_eq!(recovered.last_index(), 5100);
        assert_eq!(recovered.hard_state.unwrap().commit, 5100);
        for (position, entry) in recovered.entries.iter().enumerate() {
            let index = position as u64 + 1;
            assert_eq!(entry.index, index);
        }
    }

    /// Issue #14 item 5. The Ready cycle that installs a snapshot at 100 also carries
    /// entries 101..=110 and a commit index of 110; the driver rewrites the log at the
    /// snapshot before it appends them. A crash between the two must leave a log that
    /// recovery accepts: the rewrite persists the commit only up to what the file holds.
    #[test]
    fn a_log_rewritten_at_a_snapshot_never_holds_a_commit_beyond_it() {
        let (_dir, path, mut log) = log_with(10, 100);
        let point = LogPosition {
            index: 100,
            term: 1,
        };
        let frames = log.rewrite(point, &hard_state(110), &[]);
        assert!(frames.is_empty());
        drop(log); // the crash: entries 101..=110 were never appended

        let (mut log, recovered) = LogFile::open(&path, usize::MAX)
            .expect("a crash right after installing a snapshot must not prevent a restart")
            .unwrap();
        assert_eq!(recovered.compacted, Some(point));
        assert_eq!(recovered.last_index(), 100);
        assert_eq!(recovered.hard_state.unwrap().commit, 100);

        // Without the crash the same cycle appends its entries and hard state next.
        log.append(&entries(101, 10, 100), Some(&hard_state(110)));
        log.sync();
        drop(log);
        let (mut log, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.hard_state.unwrap().commit, 110);

        // A compaction that keeps entries clamps to the last one it writes, and keeps a
        // commit index inside them as it is.
        log.rewrite(point, &hard_state(120), &entries(101, 5, 100));
        drop(log);
        let (mut log, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.last_index(), 105);
        assert_eq!(recovered.hard_state.unwrap().commit, 105);
        log.rewrite(point, &hard_state(103), &entries(101, 5, 100));
        drop(log);
        let (_, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.hard_state.unwrap().commit, 103);
    }

    /// A torn write that is not zeros is cut away, so the next appends are not followed
    /// by its remnant (which would read as corruption at the next start).
    #[test]
    fn a_torn_remnant_is_cut_before_appending_again() {
        let (_dir, path, log) = log_with(10, 100);
        let end = log.size_bytes();
        // A frame whose payload was only half written, in the preallocated room.
        let mut frame = Vec::new();
        logfile::encode_entry(&entries(11, 1, 5000)[0], &mut frame).unwrap();
        frame.truncate(frame.len() / 2);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&frame, end)
            .unwrap();
        drop(log);

        let (mut log, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.last_index(), 10);
        log.append(&entries(11, 1, 10), Some(&hard_state(11)));
        log.sync();
        drop(log);
        let (_, recovered) = LogFile::open(&path, usize::MAX).unwrap().unwrap();
        assert_eq!(recovered.last_index(), 11);
        assert_eq!(recovered.hard_state.unwrap().commit, 11);
    }

    #[test]
    fn disk_faults_exit_the_process_with_a_clear_line_and_never_carry_on() {
        for (fault, os_error) in [
            ("fsync", "Invalid argument"),
            ("write", "No space left on device"),
        ] {
            let output = run_child(fault);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{fault}: stdout {stdout}\nstderr {stderr}"
            );
            assert!(!stdout.contains("SURVIVED"), "{fault}: carried on");
            let line = format!("raft: FATAL: {fault} of log file /fault/redisraft.db failed");
            assert!(stderr.contains(&line), "{fault}: {stderr}");
            assert!(stderr.contains(os_error), "{fault}: {stderr}");
        }
    }
}
