//! The snapshot files next to the log (`<log>` = raft.log-filename), and reading them:
//! - `<log>.snapshot`: the current snapshot; replaced only by a newer one, atomically.
//! - `<log>.snapshot.tmp`: being written by the fork child.
//! - `<log>.snapshot.incoming`: chunks arriving from the leader.
//! - `<log>.snapshot.received-<index>-<term>`: a complete, verified snapshot from the
//!   leader at that index and term that raft has not installed yet. Transfers that end
//!   back to back each keep their own file, and an install publishes only the file of
//!   the snapshot raft installs.
//!
//! Format: `docs/SNAPSHOT_FORMAT.md`. Writing a snapshot and loading one into the server
//! is `redis::snapshots` (main thread and fork child).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::adapters::disk::logio::sync_directory_of;
use crate::core::membership::{Member, Membership};
use crate::core::snapshot::{SnapshotDecoder, SnapshotMember, SnapshotMeta, SnapshotRecord};

/// Bytes read from a snapshot file at a time while loading or verifying it.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::snapshot::{encode_header, encode_record};

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
                | SnapshotRecord::Script { .. }
                | SnapshotRecord::ShardMap { .. } => {}
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
