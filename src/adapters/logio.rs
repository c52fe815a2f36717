//! The log file on disk: recovery at start, appends and syncs from the driver thread.
//! Encoding and recovery rules are the pure `core::logfile`; this is only the I/O.
//!
//! A failed write or sync stops the process: after a failed fsync the kernel may have
//! dropped the dirty pages, so retrying and carrying on could acknowledge lost writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use raft::eraftpb::{Entry, HardState};

use crate::adapters::driver::SharedStatus;
use crate::core::logfile::{self, NodeMeta, Record, Recovered};

pub struct LogFile {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    buffer: Vec<u8>,
    fsync_count: u64,
    fsync_total_us: u64,
    fsync_max_us: u64,
}

fn fatal(path: &Path, action: &str, error: std::io::Error) -> ! {
    log::error!(
        "raft: FATAL: {action} of log file {} failed: {error}; stopping so that no write is \
         acknowledged without being durable",
        path.display()
    );
    std::process::abort();
}

impl LogFile {
    /// Opens an existing log, validates it and cuts a torn tail. `Ok(None)`: no log yet.
    pub fn open(path: &Path) -> Result<Option<(LogFile, Recovered)>, String> {
        let mut file = match OpenOptions::new().read(true).append(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open log file {}: {e}", path.display())),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read log file {}: {e}", path.display()))?;
        let recovered = logfile::recover(&bytes).map_err(|e| {
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
        if recovered.torn_tail_bytes > 0 {
            log::warn!(
                "raft: log file {}: truncating a torn tail of {} bytes at offset {}",
                path.display(),
                recovered.torn_tail_bytes,
                recovered.valid_len
            );
            file.set_len(recovered.valid_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
        }
        let log = LogFile::from_file(file, path, recovered.valid_len as u64);
        Ok(Some((log, recovered)))
    }

    /// Creates a new log holding only the node's identity, durably (file and directory).
    pub fn create(path: &Path, meta: &NodeMeta) -> Result<LogFile, String> {
        let mut bytes = logfile::encode_file_header();
        let record = Record::Meta {
            dbid: meta.dbid.clone(),
            node_id: meta.node_id,
            bootstrap_voters: meta.bootstrap_voters.clone(),
        };
        logfile::encode_record(&record, &mut bytes).map_err(|e| e.to_string())?;
        let temp_path = path.with_extension("creating");
        let write = || -> std::io::Result<File> {
            let mut file = File::create(&temp_path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp_path, path)?;
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            } else {
                File::open(".")?.sync_all()?;
            }
            OpenOptions::new().append(true).open(path)
        };
        let file =
            write().map_err(|e| format!("cannot create log file {}: {e}", path.display()))?;
        Ok(LogFile::from_file(file, path, bytes.len() as u64))
    }

    fn from_file(file: File, path: &Path, size_bytes: u64) -> LogFile {
        LogFile {
            file,
            path: path.to_path_buf(),
            size_bytes,
            buffer: Vec::with_capacity(64 * 1024),
            fsync_count: 0,
            fsync_total_us: 0,
            fsync_max_us: 0,
        }
    }

    /// Writes one Ready cycle's entries, then its hard state, in a single write.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        self.buffer.clear();
        let mut encoded = entries
            .iter()
            .try_for_each(|entry| logfile::encode_entry(entry, &mut self.buffer));
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
        if let Err(e) = self.file.write_all(&self.buffer) {
            fatal(&self.path, "write", e);
        }
        self.size_bytes += self.buffer.len() as u64;
    }

    pub fn sync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.file.sync_data() {
            fatal(&self.path, "fsync", e);
        }
        let elapsed_us = started.elapsed().as_micros() as u64;
        self.fsync_count += 1;
        self.fsync_total_us += elapsed_us;
        self.fsync_max_us = self.fsync_max_us.max(elapsed_us);
    }

    pub fn publish_stats(&self, shared: &SharedStatus) {
        shared.file_size.store(self.size_bytes, Ordering::Relaxed);
        shared
            .fsync_count
            .store(self.fsync_count, Ordering::Relaxed);
        shared
            .fsync_total_us
            .store(self.fsync_total_us, Ordering::Relaxed);
        shared
            .fsync_max_us
            .store(self.fsync_max_us, Ordering::Relaxed);
    }
}
