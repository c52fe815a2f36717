//! Snapshots: taken in a forked child (every key as DUMP payload + absolute expiry, the
//! function libraries as FUNCTION DUMP, the script registry EVALSHA runs from),
//! published by rename, loaded with RESTORE, and streamed to followers in chunks.
//!
//! Files, next to the log (`<log>` = raft.log-filename):
//! - `<log>.snapshot`: the current snapshot; replaced only by a newer one, atomically.
//! - `<log>.snapshot.tmp`: being written by the fork child.
//! - `<log>.snapshot.incoming`: chunks arriving from the leader.
//! - `<log>.snapshot.received`: a complete, verified snapshot from the leader that raft
//!   has not installed yet.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
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
    pub received: PathBuf,
}

impl SnapshotFiles {
    pub fn for_log(log_path: &Path) -> SnapshotFiles {
        let base = log_path.as_os_str().to_string_lossy().to_string();
        SnapshotFiles {
            current: PathBuf::from(format!("{base}.snapshot")),
            temp: PathBuf::from(format!("{base}.snapshot.tmp")),
            incoming: PathBuf::from(format!("{base}.snapshot.incoming")),
            received: PathBuf::from(format!("{base}.snapshot.received")),
        }
    }

    /// Leftovers of an interrupted snapshot or transfer are useless after a restart.
    pub fn remove_leftovers(&self) {
        for path in [&self.temp, &self.incoming, &self.received] {
            if path.exists() {
                log::warn!("raft: removing leftover {}", path.display());
                let _ = std::fs::remove_file(path);
            }
        }
    }
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
    }
}

/// Reads the metadata record at the start of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
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
    mut on_record: impl FnMut(SnapshotRecord) -> Result<(), String>,
) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
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

/// Replaces the dataset with the snapshot's keys. Main thread only.
pub fn load_into_server(
    ctx: RawCtx,
    path: &Path,
    expected_dbid: &str,
) -> Result<SnapshotMeta, String> {
    let started = std::time::Instant::now();
    call_locally(ctx, &[b"FLUSHALL".to_vec(), b"SYNC".to_vec()], false)?;
    flush_functions(ctx)?;
    let mut scripts = ScriptRegistry::default();
    let mut meta = None;
    let mut keys = 0u64;
    for_each_record(path, |record| match record {
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

pub fn in_progress() -> bool {
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
}

/// Starts a snapshot of the current applied state in a forked child. Main thread only.
pub fn start(log_path: &Path) -> Result<(), String> {
    if in_progress() {
        return Err("a snapshot is already being taken".into());
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
        return Err("nothing new to snapshot".into());
    }
    let files = SnapshotFiles::for_log(log_path);
    let (index, term) = (meta.index, meta.term);
    match ffi::fork(on_fork_done)? {
        ffi::ForkSide::Child => {
            let code = match write_keyspace(ctx, &files.temp, meta) {
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
            Ok(())
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
    let input = input.unwrap_or(crate::adapters::driver::DriverInput::SnapshotFailed);
    if let Err(e) = with_state(|state| state.send_to_driver(input)) {
        log::warn!("raft: cannot tell the driver about the snapshot: {e}");
    }
}

pub struct CurrentSnapshotInfo {
    pub index: u64,
    pub term: u64,
    pub size_bytes: u64,
    pub age_secs: u64,
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
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs()),
    }
}

/// `RAFT.DEBUG COMPACT`: snapshot now; replies once the log is compacted (or the attempt
/// failed), polling from a helper thread.
pub fn compact_now(ctx: &redis_module::Context) -> redis_module::RedisResult {
    use redis_module::{RedisError, RedisValue};
    let before =
        crate::adapters::info::SNAPSHOTS_CREATED.load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = start(&crate::adapters::handlers::log_path()) {
        if e == "nothing new to snapshot" {
            return Ok(RedisValue::SimpleStringStatic("OK"));
        }
        return Err(RedisError::String(format!("ERR {e}")));
    }
    let client = ffi::block_client(ctx.ctx);
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let answer = loop {
            let created =
                crate::adapters::info::SNAPSHOTS_CREATED.load(std::sync::atomic::Ordering::Relaxed);
            if created > before {
                break ffi::Answer::Simple("OK".into());
            }
            if std::time::Instant::now() > deadline {
                break ffi::Answer::Error("ERR snapshot did not complete".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        crate::adapters::apply::run_on_main(Box::new(move || ffi::unblock(client, answer)));
    });
    Ok(RedisValue::NoReply)
}
