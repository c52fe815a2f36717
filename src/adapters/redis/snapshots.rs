//! Snapshots on the Redis side: taken in a forked child (every key as DUMP payload +
//! absolute expiry, the function libraries as FUNCTION DUMP, the script registry EVALSHA
//! runs from), published by rename, and loaded with RESTORE. The files themselves are
//! `disk::snapshot_files`; streaming them to followers is `network::snapshot_send`.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::adapters::disk::snapshot_files::{
    current_index, for_each_record_in, meta_for, publish, read_meta, SnapshotFiles,
};
use crate::adapters::ffi::{self, RawCtx};
use crate::adapters::redis::state::{call_locally, with_state};
use crate::core::scripts::ScriptRegistry;
use crate::core::shards::ShardMap;
use crate::core::snapshot::{encode_header, encode_record, SnapshotMeta, SnapshotRecord};

/// Keys asked per SCAN call in the fork child.
const SCAN_COUNT: &str = "1000";

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
    let mut shard_map = ShardMap::default();
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
        SnapshotRecord::ShardMap { encoded } => {
            shard_map = ShardMap::decode(&encoded)?;
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
    with_state(|state| {
        state.scripts = scripts;
        state.shard_map = shard_map;
    });
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
    let (disabled, fail, delay_secs) = crate::adapters::redis::settings::with_config(|config| {
        (
            config.snapshot_disable,
            config.snapshot_fail,
            config.snapshot_delay_secs,
        )
    });
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
    let encoded = with_state(|state| state.shard_map.encode());
    encode_record(&SnapshotRecord::ShardMap { encoded }, &mut buffer).map_err(|e| e.to_string())?;
    encode_record(&SnapshotRecord::End { key_count }, &mut buffer).map_err(|e| e.to_string())?;
    out.write_all(&buffer).map_err(|e| e.to_string())?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

extern "C" fn on_fork_done(exit_code: c_int, by_signal: c_int, _: *mut c_void) {
    let Some(done) = IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let files = SnapshotFiles::for_log(&crate::adapters::redis::settings::log_path());
    let input = if exit_code == 0 && by_signal == 0 {
        match publish(&files, &files.temp, done.index) {
            Ok(true) => {
                log::info!(
                    "raft: snapshot at index {} written in {} ms ({} bytes)",
                    done.index,
                    done.started.elapsed().as_millis(),
                    std::fs::metadata(&files.current).map_or(0, |m| m.len())
                );
                Some(
                    crate::adapters::raft_thread::driver::DriverInput::SnapshotTaken {
                        index: done.index,
                        term: done.term,
                        conf_state: done.conf_state,
                    },
                )
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
    let input = input.unwrap_or(crate::adapters::raft_thread::driver::DriverInput::SnapshotFailed);
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
    let files = SnapshotFiles::for_log(&crate::adapters::redis::settings::log_path());
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
        return match start(&crate::adapters::redis::settings::log_path()) {
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
            crate::adapters::redis::main_jobs::run_on_main(Box::new(move || {
                compact_when_idle(client)
            }));
        });
        return;
    }
    let index = match start(&crate::adapters::redis::settings::log_path()) {
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
        crate::adapters::redis::main_jobs::run_on_main(Box::new(move || {
            ffi::unblock(client, answer)
        }));
    });
}
