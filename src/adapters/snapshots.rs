//! Snapshots: taken in a forked child (every key as DUMP payload + absolute expiry, the
//! function libraries as FUNCTION DUMP, the script registry EVALSHA runs from),
//! published by rename, loaded with RESTORE, and streamed to followers in chunks.
//!
//! Files, next to the log (`<log>` = raft.log-filename):
//! - `<log>.snapshot`: the current snapshot; replaced only by a newer one, atomically.
//! - `<log>.snapshot.tmp`: being written by the fork child.
//! - `<log>.snapshot.incoming`: chunks arriving from the leader.
//! - `<log>.snapshot.received-<index>-<term>`: a complete, verified snapshot from the
//!   leader at that index and term that raft has not installed yet. Transfers that end
//!   back to back each keep their own file, and an install publishes only the file of
//!   the snapshot raft installs.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::adapters::ffi::{self, RawCtx};
use crate::adapters::logio::sync_directory_of;
use crate::adapters::state::{call_locally, with_state};
use crate::core::membership::{Member, Membership};
use crate::core::scripts::ScriptRegistry;
use crate::core::snapshot::{
    encode_header, encode_record, SnapshotDecoder, SnapshotMember, SnapshotMeta, SnapshotRecord,
};

/// Bytes read from a snapshot file at a time while loading or verifying it.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Keys asked per SCAN call in the fork child.
const SCAN_COUNT: &str = "1000";

pub struct SnapshotFiles {
    pub current: PathBuf,
    pub temp: PathBuf,
    pub incoming: PathBuf,
    /// `<log>.snapshot.received`: received files are this plus `-<index>-<term>`.
    received_prefix: PathBuf,
}

impl SnapshotFiles {
    pub fn for_log(log_path: &Path) -> SnapshotFiles {
        let base = log_path.as_os_str().to_string_lossy().to_string();
        SnapshotFiles {
            current: PathBuf::from(format!("{base}.snapshot")),
            temp: PathBuf::from(format!("{base}.snapshot.tmp")),
            incoming: PathBuf::from(format!("{base}.snapshot.incoming")),
            received_prefix: PathBuf::from(format!("{base}.snapshot.received")),
        }
    }

    /// Where a verified snapshot received from the leader at `index` and `term` waits for
    /// raft to install it.
    pub fn received(&self, index: u64, term: u64) -> PathBuf {
        let mut name = self.received_prefix.clone().into_os_string();
        name.push(format!("-{index}-{term}"));
        PathBuf::from(name)
    }

    /// Every received file next to the log, with the index and term its name gives, and
    /// the file name of an older build (`<log>.snapshot.received`, no index) as `None`.
    fn received_files(&self) -> Vec<(Option<(u64, u64)>, PathBuf)> {
        let Some(prefix) = self.received_prefix.file_name().and_then(|n| n.to_str()) else {
            return Vec::new();
        };
        let dir = match self.received_prefix.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Ok(listing) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut found: Vec<_> = listing
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let position = if name == prefix {
                    None
                } else {
                    Some(received_position(name.strip_prefix(prefix)?)?)
                };
                Some((position, dir.join(name)))
            })
            .collect();
        found.sort();
        found
    }

    /// A transfer ended: its verified file in `incoming` holds the snapshot `meta`; keep it
    /// under its own name until raft installs it (or a later snapshot supersedes it).
    pub fn keep_received(&self, meta: &SnapshotMeta) -> std::io::Result<PathBuf> {
        let path = self.received(meta.index, meta.term);
        std::fs::rename(&self.incoming, &path)?;
        Ok(path)
    }

    /// After installing the snapshot at `index`: received files of snapshots at or below
    /// it can never be installed (raft only installs a snapshot newer than its commit).
    pub fn remove_received_up_to(&self, index: u64) {
        for (position, path) in self.received_files() {
            if position.is_none_or(|(at, _)| at <= index) {
                log::info!("raft: removing superseded {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Leftovers of an interrupted snapshot or transfer are useless after a restart:
    /// raft forgot the messages that came with received files.
    pub fn remove_leftovers(&self) {
        let received = self.received_files().into_iter().map(|(_, path)| path);
        for path in [self.temp.clone(), self.incoming.clone()]
            .into_iter()
            .chain(received)
        {
            if path.exists() {
                log::warn!("raft: removing leftover {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// `-<index>-<term>` of a received file's name (what follows the prefix), exactly as
/// [`SnapshotFiles::received`] writes it.
fn received_position(suffix: &str) -> Option<(u64, u64)> {
    let (index, term) = suffix.strip_prefix('-')?.split_once('-')?;
    let number = |text: &str| {
        let value: u64 = text.parse().ok()?;
        (value.to_string() == text).then_some(value)
    };
    Some((number(index)?, number(term)?))
}

/// Index of the snapshot in `<log>.snapshot`. Publishing a snapshot (fork done, or one
/// received from the leader) takes this lock and only ever moves it forward, so an older
/// local snapshot finishing late cannot replace a newer one from the leader.
static CURRENT_INDEX: Mutex<u64> = Mutex::new(0);

pub fn set_current_index(index: u64) {
    *CURRENT_INDEX.lock().unwrap_or_else(|p| p.into_inner()) = index;
}

pub fn current_index() -> u64 {
    *CURRENT_INDEX.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renames `from` over the current snapshot if it is newer. Returns whether it did.
pub fn publish(files: &SnapshotFiles, from: &Path, index: u64) -> std::io::Result<bool> {
    let mut current = CURRENT_INDEX.lock().unwrap_or_else(|p| p.into_inner());
    if index <= *current && files.current.exists() {
        let _ = std::fs::remove_file(from);
        return Ok(false);
    }
    std::fs::rename(from, &files.current)?;
    sync_directory_of(&files.current)?;
    *current = index;
    Ok(true)
}

/// Publishes the verified received snapshot `from`, at `index`, which raft installs, and
/// returns the published file, open at its start, with its metadata: the caller loads
/// exactly this file even if a later snapshot replaces `<log>.snapshot` meanwhile.
pub fn install(
    files: &SnapshotFiles,
    from: &Path,
    index: u64,
) -> Result<(File, SnapshotMeta), String> {
    let mut file = {
        let mut current = CURRENT_INDEX.lock().unwrap_or_else(|p| p.into_inner());
        if index <= *current && files.current.exists() {
            return Err(format!(
                "{} already holds the snapshot at index {}, not older than {index}",
                files.current.display(),
                *current
            ));
        }
        std::fs::rename(from, &files.current)
            .and_then(|()| sync_directory_of(&files.current))
            .map_err(|e| format!("cannot rename {} into place: {e}", from.display()))?;
        *current = index;
        open(&files.current)?
    };
    let meta = read_meta_in(&mut file, &files.current)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot seek in {}: {e}", files.current.display()))?;
    Ok((file, meta))
}

pub fn members_of(meta: &SnapshotMeta) -> Membership {
    let members = meta
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            addr: m.addr.clone(),
            voting: m.voting,
        })
        .collect();
    Membership::restore(members, meta.used_ids.iter().copied())
        .with_held_learners(meta.held_learners.iter().copied())
}

pub fn meta_for(
    dbid: &str,
    index: u64,
    term: u64,
    applied_time_ms: i64,
    membership: &Membership,
) -> SnapshotMeta {
    let conf = membership.conf_state();
    SnapshotMeta {
        dbid: dbid.to_string(),
        index,
        term,
        voters: conf.voters.clone(),
        learners: conf.learners.clone(),
        members: membership
            .members()
            .map(|m| SnapshotMember {
                id: m.id,
                addr: m.addr.clone(),
                voting: m.voting,
            })
            .collect(),
        used_ids: membership.used_ids().collect(),
        applied_time_ms: applied_time_ms.max(0),
        held_learners: membership.held_learners().collect(),
    }
}

/// Reads the metadata record at the start of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, String> {
    read_meta_in(&mut open(path)?, path)
}

fn read_meta_in(file: &mut File, path: &Path) -> Result<SnapshotMeta, String> {
    let mut decoder = SnapshotDecoder::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(record) = decoder
            .next_record()
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            return match record {
                SnapshotRecord::Meta(meta) => Ok(meta),
                _ => Err(format!(
                    "{}: snapshot does not start with its metadata",
                    path.display()
                )),
            };
        }
        let read = file
            .read(&mut chunk)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if read == 0 {
            return Err(format!(
                "{}: snapshot ends before its metadata",
                path.display()
            ));
        }
        decoder.feed(&chunk[..read]);
    }
}

/// Streams every record of a snapshot file to `on_record`, checking it end to end.
pub fn for_each_record(
    path: &Path,
    on_record: impl FnMut(SnapshotRecord) -> Result<(), String>,
) -> Result<(), String> {
    for_each_record_in(open(path)?, path, on_record)
}

pub fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Like [`for_each_record`], from a file already open (`path` names it in errors): a
/// rename over its path meanwhile does not change what is read.
pub fn for_each_record_in(
    mut file: File,
    path: &Path,
    mut on_record: impl FnMut(SnapshotRecord) -> Result<(), String>,
) -> Result<(), String> {
    let mut decoder = SnapshotDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        while let Some(record) = decoder
            .next_record()
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            on_record(record)?;
        }
        let read = file
            .read(&mut chunk)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if read == 0 {
            return decoder
                .finish()
                .map_err(|e| format!("{}: {e}", path.display()));
        }
        decoder.feed(&chunk[..read]);
    }
}

/// Checks a whole file without loading it (e.g. a snapshot received from the leader).
pub fn verify(path: &Path) -> Result<SnapshotMeta, String> {
    let mut meta = None;
    for_each_record(path, |record| {
        if let SnapshotRecord::Meta(m) = record {
            meta = Some(m);
        }
        Ok(())
    })?;
    meta.ok_or_else(|| format!("{}: no metadata", path.display()))
}

/// Replaces the dataset with the keys of the snapshot `file` (opened from `path`). Main
/// thread only.
pub fn load_into_server(
    ctx: RawCtx,
    file: File,
    path: &Path,
    expected_dbid: &str,
) -> Result<SnapshotMeta, String> {
    let started = std::time::Instant::now();
    call_locally(ctx, &[b"FLUSHALL".to_vec(), b"SYNC".to_vec()], false)?;
    flush_functions(ctx)?;
    let mut scripts = ScriptRegistry::default();
    let mut meta = None;
    let mut keys = 0u64;
    for_each_record_in(file, path, |record| match record {
        SnapshotRecord::Meta(m) => {
            if m.dbid != expected_dbid {
                return Err(format!(
                    "snapshot {} belongs to cluster {}, not {expected_dbid}",
                    path.display(),
                    m.dbid
                ));
            }
            meta = Some(m);
            Ok(())
        }
        SnapshotRecord::Key {
            key,
            dump,
            expire_at_ms,
        } => {
            let mut argv = vec![
                b"RESTORE".to_vec(),
                key,
                b"0".to_vec(),
                dump,
                b"REPLACE".to_vec(),
            ];
            if expire_at_ms >= 0 {
                argv[2] = expire_at_ms.to_string().into_bytes();
                argv.push(b"ABSTTL".to_vec());
            }
            let reply = call_locally(ctx, &argv, false)?;
            if reply.is_error() {
                return Err(format!(
                    "RESTORE failed: {}",
                    String::from_utf8_lossy(reply.bytes())
                ));
            }
            keys += 1;
            Ok(())
        }
        SnapshotRecord::Functions { dump } => {
            let argv = [
                b"FUNCTION".to_vec(),
                b"RESTORE".to_vec(),
                dump,
                b"FLUSH".to_vec(),
            ];
            let reply = call_locally(ctx, &argv, false)?;
            if reply.is_error() {
                return Err(format!(
                    "FUNCTION RESTORE failed: {}",
                    String::from_utf8_lossy(reply.bytes())
                ));
            }
            Ok(())
        }
        SnapshotRecord::Script { body } => {
            scripts.insert(body);
            Ok(())
        }
        SnapshotRecord::End { .. } => Ok(()),
    })?;
    log::info!(
        "raft: loaded {keys} keys and {} scripts from snapshot {} in {} ms",
        scripts.len(),
        path.display(),
        started.elapsed().as_millis()
    );
    with_state(|state| state.scripts = scripts);
    meta.ok_or_else(|| format!("{}: no metadata", path.display()))
}

/// Removes every function library: a snapshot or the log decides which exist.
pub fn flush_functions(ctx: RawCtx) -> Result<(), String> {
    let reply = call_locally(
        ctx,
        &[b"FUNCTION".to_vec(), b"FLUSH".to_vec(), b"SYNC".to_vec()],
        false,
    )?;
    if reply.is_error() {
        return Err(format!(
            "FUNCTION FLUSH failed: {}",
            String::from_utf8_lossy(reply.bytes())
        ));
    }
    Ok(())
}

/// What the parent remembers about the running fork child.
struct InProgress {
    index: u64,
    term: u64,
    conf_state: raft::eraftpb::ConfState,
    started: std::time::Instant,
}

static IN_PROGRESS: Mutex<Option<InProgress>> = Mutex::new(None);

/// Snapshots whose child failed or whose file could not be published.
pub static SNAPSHOTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// What a snapshot answers while `raft.snapshot-disable` is on.
pub const ERR_SNAPSHOT_DISABLED: &str = "snapshots are disabled (raft.snapshot-disable)";

pub fn in_progress() -> bool {
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
}

/// Index and term of the snapshot being taken, if one is.
pub fn in_progress_position() -> Option<(u64, u64)> {
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|p| (p.index, p.term))
}

/// Starts a snapshot of the current applied state in a forked child; returns its index.
/// Main thread only.
pub fn start(log_path: &Path) -> Result<u64, String> {
    if in_progress() {
        return Err(ALREADY_RUNNING.into());
    }
    let (ctx, meta, conf_state) = with_state(|state| {
        let dbid = state
            .meta
            .as_ref()
            .map(|m| m.dbid.clone())
            .unwrap_or_default();
        let meta = meta_for(
            &dbid,
            state.applied_index,
            state.applied_term,
            state.applied_time_ms,
            &state.membership,
        );
        (state.apply_ctx, meta, state.membership.conf_state())
    });
    if meta.index == 0 || meta.index <= current_index() {
        return Err(NOTHING_NEW.into());
    }
    // Test knobs of the original, read before the fork (the child must not take locks).
    let (disabled, fail, delay_secs) = {
        let config = crate::adapters::configs::config();
        (
            config.snapshot_disable,
            config.snapshot_fail,
            config.snapshot_delay_secs,
        )
    };
    if disabled {
        return Err(ERR_SNAPSHOT_DISABLED.into());
    }
    let files = SnapshotFiles::for_log(log_path);
    let (index, term) = (meta.index, meta.term);
    match ffi::fork(on_fork_done)? {
        ffi::ForkSide::Child => {
            if delay_secs > 0 {
                std::thread::sleep(std::time::Duration::from_secs(delay_secs));
            }
            let written = if fail {
                Err("raft.snapshot-fail is set".to_string())
            } else {
                write_keyspace(ctx, &files.temp, meta)
            };
            let code = match written {
                Ok(()) => 0,
                Err(e) => {
                    log::warn!("raft: snapshot child failed: {e}");
                    1
                }
            };
            ffi::exit_from_child(code);
        }
        ffi::ForkSide::Parent { child_pid } => {
            log::info!("raft: taking a snapshot at index {index} in child {child_pid}");
            *IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = Some(InProgress {
                index,
                term,
                conf_state,
                started: std::time::Instant::now(),
            });
            Ok(index)
        }
    }
}

/// In the fork child: every key as DUMP payload plus absolute expiry, then sync.
fn write_keyspace(ctx: RawCtx, path: &Path, meta: SnapshotMeta) -> Result<(), String> {
    let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    let mut buffer = Vec::with_capacity(64 * 1024);
    encode_header(&mut buffer);
    encode_record(&SnapshotRecord::Meta(meta), &mut buffer).map_err(|e| e.to_string())?;
    let mut cursor = b"0".to_vec();
    let mut key_count = 0u64;
    loop {
        let scan = call_locally(
            ctx,
            &[
                b"SCAN".to_vec(),
                cursor.clone(),
                b"COUNT".to_vec(),
                SCAN_COUNT.into(),
            ],
            false,
        )?;
        cursor = scan
            .element(0)
            .map(|c| c.bytes().to_vec())
            .unwrap_or_else(|| b"0".to_vec());
        let keys: Vec<Vec<u8>> = scan
            .element(1)
            .map(|list| {
                (0..list.len())
                    .filter_map(|i| list.element(i))
                    .map(|k| k.bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        for key in keys {
            let dump = call_locally(ctx, &[b"DUMP".to_vec(), key.clone()], false)?;
            if dump.bytes().is_empty() {
                continue;
            }
            let expire_at_ms =
                call_locally(ctx, &[b"PEXPIRETIME".to_vec(), key.clone()], false)?.integer();
            let record = SnapshotRecord::Key {
                key,
                dump: dump.bytes().to_vec(),
                expire_at_ms: expire_at_ms.max(-1),
            };
            encode_record(&record, &mut buffer).map_err(|e| e.to_string())?;
            key_count += 1;
            if buffer.len() >= 1024 * 1024 {
                out.write_all(&buffer).map_err(|e| e.to_string())?;
                buffer.clear();
            }
        }
        if cursor == b"0" {
            break;
        }
    }
    // Everything EVALSHA and FCALL run from: without it a node that installs this
    // snapshot would answer them differently from the others.
    let functions = call_locally(ctx, &[b"FUNCTION".to_vec(), b"DUMP".to_vec()], false)?;
    if functions.is_error() {
        return Err(format!(
            "FUNCTION DUMP failed: {}",
            String::from_utf8_lossy(functions.bytes())
        ));
    }
    let dump = functions.bytes().to_vec();
    encode_record(&SnapshotRecord::Functions { dump }, &mut buffer).map_err(|e| e.to_string())?;
    let bodies: Vec<Vec<u8>> =
        with_state(|state| state.scripts.bodies().map(<[u8]>::to_vec).collect());
    for body in bodies {
        encode_record(&SnapshotRecord::Script { body }, &mut buffer).map_err(|e| e.to_string())?;
        if buffer.len() >= 1024 * 1024 {
            out.write_all(&buffer).map_err(|e| e.to_string())?;
            buffer.clear();
        }
    }
    encode_record(&SnapshotRecord::End { key_count }, &mut buffer).map_err(|e| e.to_string())?;
    out.write_all(&buffer).map_err(|e| e.to_string())?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

extern "C" fn on_fork_done(exit_code: c_int, by_signal: c_int, _: *mut c_void) {
    let Some(done) = IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let files = SnapshotFiles::for_log(&crate::adapters::handlers::log_path());
    let input = if exit_code == 0 && by_signal == 0 {
        match publish(&files, &files.temp, done.index) {
            Ok(true) => {
                log::info!(
                    "raft: snapshot at index {} written in {} ms ({} bytes)",
                    done.index,
                    done.started.elapsed().as_millis(),
                    std::fs::metadata(&files.current).map_or(0, |m| m.len())
                );
                Some(crate::adapters::driver::DriverInput::SnapshotTaken {
                    index: done.index,
                    term: done.term,
                    conf_state: done.conf_state,
                })
            }
            Ok(false) => None,
            Err(e) => {
                log::warn!("raft: cannot publish snapshot: {e}");
                None
            }
        }
    } else {
        log::warn!("raft: snapshot child failed (exit {exit_code}, signal {by_signal})");
        let _ = std::fs::remove_file(&files.temp);
        None
    };
    if input.is_none() {
        SNAPSHOTS_FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let input = input.unwrap_or(crate::adapters::driver::DriverInput::SnapshotFailed);
    if let Err(e) = with_state(|state| state.send_to_driver(input)) {
        log::warn!("raft: cannot tell the driver about the snapshot: {e}");
    }
}

pub struct CurrentSnapshotInfo {
    pub index: u64,
    pub term: u64,
    pub size_bytes: u64,
    /// Seconds since the snapshot file was written; None while there is none.
    pub age_secs: Option<u64>,
}

/// For INFO: the snapshot file as it is on disk now.
pub fn current_info() -> CurrentSnapshotInfo {
    let files = SnapshotFiles::for_log(&crate::adapters::handlers::log_path());
    let metadata = std::fs::metadata(&files.current).ok();
    let meta = metadata
        .as_ref()
        .and_then(|_| read_meta(&files.current).ok());
    CurrentSnapshotInfo {
        index: meta.as_ref().map_or(0, |m| m.index),
        term: meta.as_ref().map_or(0, |m| m.term),
        size_bytes: metadata.as_ref().map_or(0, |m| m.len()),
        age_secs: metadata
            .and_then(|m| m.modified().ok())
            .map(|t| t.elapsed().map_or(0, |d| d.as_secs())),
    }
}

/// `RAFT.DEBUG COMPACT [n]`: snapshot now. With `background`, answers `OK` at once (a
/// snapshot already being taken counts). Otherwise replies once the log is compacted (or
/// the attempt failed); a snapshot already being taken is waited for, then the next one
/// is taken, polling from a helper thread.
pub fn compact_now(ctx: &redis_module::Context, background: bool) -> redis_module::RedisResult {
    use redis_module::{RedisError, RedisValue};
    if background {
        return match start(&crate::adapters::handlers::log_path()) {
            Ok(_) => Ok(RedisValue::SimpleStringStatic("OK")),
            Err(e) if e == NOTHING_NEW || e == ALREADY_RUNNING => {
                Ok(RedisValue::SimpleStringStatic("OK"))
            }
            Err(e) => Err(RedisError::String(format!("ERR {e}"))),
        };
    }
    compact_when_idle(ffi::block_client(ctx.ctx));
    Ok(RedisValue::NoReply)
}

const NOTHING_NEW: &str = "nothing new to snapshot";
const ALREADY_RUNNING: &str = "a snapshot is already being taken";

/// Main thread: starts a snapshot for the blocked `client` once none is running, and
/// answers it when that snapshot compacted the log.
fn compact_when_idle(client: ffi::BlockedClient) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    const POLL: Duration = Duration::from_millis(10);
    const GIVE_UP: Duration = Duration::from_secs(600);
    if in_progress() {
        log::info!("raft: RAFT.DEBUG COMPACT waits for the snapshot being taken");
        std::thread::spawn(move || {
            let deadline = Instant::now() + GIVE_UP;
            while in_progress() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            crate::adapters::apply::run_on_main(Box::new(move || compact_when_idle(client)));
        });
        return;
    }
    let index = match start(&crate::adapters::handlers::log_path()) {
        Ok(index) => index,
        Err(e) if e == NOTHING_NEW => {
            return ffi::unblock(client, ffi::Answer::Simple("OK".into()))
        }
        Err(e) => return ffi::unblock(client, ffi::Answer::Error(format!("ERR {e}"))),
    };
    log::info!("raft: RAFT.DEBUG COMPACT waits for the log to be compacted past {index}");
    let shared = with_state(|state| state.shared.clone());
    std::thread::spawn(move || {
        // Done once the driver compacted the log past the snapshot; failed once the child
        // is gone and no snapshot that new was published (after a moment: the parent
        // publishes right after it learns the child ended).
        let deadline = Instant::now() + GIVE_UP;
        let mut gone_since = None;
        let answer = loop {
            if shared.first_index.load(Ordering::Relaxed) > index {
                break ffi::Answer::Simple("OK".into());
            }
            let now = Instant::now();
            let failed = !in_progress() && current_index() < index;
            gone_since = if failed {
                gone_since.or(Some(now))
            } else {
                None
            };
            if gone_since.is_some_and(|since| now - since > Duration::from_secs(2)) {
                break ffi::Answer::Error("ERR snapshot failed (see the server log)".into());
            }
            if now > deadline {
                break ffi::Answer::Error("ERR snapshot did not complete".into());
            }
            std::thread::sleep(POLL);
        };
        crate::adapters::apply::run_on_main(Box::new(move || ffi::unblock(client, answer)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_at(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            dbid: "0123456789abcdef0123456789abcdef".into(),
            index,
            term,
            voters: vec![1],
            learners: vec![],
            members: vec![],
            used_ids: vec![1],
            applied_time_ms: 0,
            held_learners: vec![],
        }
    }

    /// A snapshot file with `keys` keys, as a transfer leaves it in `incoming`.
    fn write_incoming(files: &SnapshotFiles, meta: SnapshotMeta, keys: u64) {
        let mut bytes = Vec::new();
        encode_header(&mut bytes);
        encode_record(&SnapshotRecord::Meta(meta), &mut bytes).unwrap();
        for key in 0..keys {
            let record = SnapshotRecord::Key {
                key: format!("k{key}").into_bytes(),
                dump: vec![1, 2, 3],
                expire_at_ms: -1,
            };
            encode_record(&record, &mut bytes).unwrap();
        }
        encode_record(&SnapshotRecord::End { key_count: keys }, &mut bytes).unwrap();
        std::fs::write(&files.incoming, bytes).unwrap();
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn key_count(file: File, path: &Path) -> (u64, u64) {
        let (mut index, mut keys) = (0, 0);
        for_each_record_in(file, path, |record| {
            match record {
                SnapshotRecord::Meta(meta) => index = meta.index,
                SnapshotRecord::Key { .. } => keys += 1,
                SnapshotRecord::End { .. }
                | SnapshotRecord::Functions { .. }
                | SnapshotRecord::Script { .. } => {}
            }
            Ok(())
        })
        .unwrap();
        (index, keys)
    }

    #[test]
    fn received_file_names_carry_index_and_term_exactly() {
        let files = SnapshotFiles::for_log(Path::new("/data/redisraft.db"));
        assert_eq!(
            files.received(120, 7),
            PathBuf::from("/data/redisraft.db.snapshot.received-120-7")
        );
        assert_eq!(received_position("-120-7"), Some((120, 7)));
        for other in [
            "",
            "-120",
            "-120-",
            "-0120-7",
            "-120-7.tmp",
            "-a-7",
            "120-7",
            "--1-7",
        ] {
            assert_eq!(received_position(other), None, "{other:?}");
        }
    }

    /// Issue #14 item 7: two transfers that end back to back (the second before raft
    /// installed the first) each keep their file; installing the first publishes the
    /// first, and the file handed to the loader stays the first after the second is
    /// installed over `<log>.snapshot`. Superseded and leftover files go.
    #[test]
    fn back_to_back_transfers_install_the_snapshot_raft_installs() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::for_log(&dir.path().join("redisraft.db"));
        set_current_index(0);
        // An older one nobody installed, and the name older builds used.
        write_incoming(&files, meta_at(90, 2), 1);
        files.keep_received(&meta_at(90, 2)).unwrap();
        std::fs::write(dir.path().join("redisraft.db.snapshot.received"), b"old").unwrap();

        write_incoming(&files, meta_at(100, 3), 2);
        let first = files.keep_received(&meta_at(100, 3)).unwrap();
        write_incoming(&files, meta_at(120, 3), 5);
        let second = files.keep_received(&meta_at(120, 3)).unwrap();
        assert!(first.exists() && second.exists());

        // Raft installs the first MsgSnapshot.
        let (file, meta) = install(&files, &files.received(100, 3), 100).unwrap();
        assert_eq!((meta.index, meta.term), (100, 3));
        assert_eq!(read_meta(&files.current).unwrap().index, 100);
        files.remove_received_up_to(100);
        assert_eq!(
            names_in(dir.path()),
            [
                "redisraft.db.snapshot",
                "redisraft.db.snapshot.received-120-3"
            ]
        );

        // Then the second, before the main thread loaded the first.
        let (later, meta) = install(&files, &second, 120).unwrap();
        assert_eq!(meta.index, 120);
        assert_eq!(key_count(file, &files.current), (100, 2));
        assert_eq!(key_count(later, &files.current), (120, 5));
        // An older install than what is published is refused, not silently swapped.
        write_incoming(&files, meta_at(110, 3), 1);
        let stale = files.keep_received(&meta_at(110, 3)).unwrap();
        assert!(install(&files, &stale, 110).is_err());
        assert_eq!(read_meta(&files.current).unwrap().index, 120);

        // A restart finds received files whose messages raft forgot.
        write_incoming(&files, meta_at(130, 3), 1);
        std::fs::write(&files.temp, b"partial").unwrap();
        files.remove_leftovers();
        assert_eq!(names_in(dir.path()), ["redisraft.db.snapshot"]);
        set_current_index(0);
    }
}
