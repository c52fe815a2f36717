//! The snapshot file format, as pure encode/decode over bytes.
//!
//! A snapshot is a node's whole keyspace at an applied raft index, plus the
//! raft state that index corresponds to. A forked child writes it (every key
//! as its `DUMP` payload and absolute expiry), it is fsync'd and renamed into
//! place, streamed to other nodes in chunks, and loaded with `RESTORE`. Files
//! reach gigabytes, so both sides stream: the writer appends one record at a
//! time to a buffer it flushes, the reader ([`SnapshotDecoder`]) is fed pieces
//! of any size and never holds more than one incomplete record plus the piece
//! just fed. This module does no I/O. `docs/SNAPSHOT_FORMAT.md` is the
//! long-form description.
//!
//! # Layout
//!
//! ```text
//! file   = header Meta (Key | Functions | Script | ShardMap)* End
//! header = "RRAFTSNP" (8 bytes) | format version, u32 LE (= 5; 1 to 4 are still read)
//! frame  = payload_len u32 LE | header_check u32 LE | payload_crc u32 LE | payload
//! ```
//!
//! Frames are exactly the log file's (`src/core/logfile.rs`, which encodes
//! them): `header_check` is `crc32(payload_len bytes) ^ 0x52414654`,
//! `payload_crc` the crc32 of the payload, and the payload one
//! [`SnapshotRecord`] in bincode 2 (serde, `bincode::config::standard()`), at
//! most [`MAX_SNAPSHOT_RECORD_BYTES`] long.
//!
//! # Rules
//!
//! * [`SnapshotRecord::Meta`] is the first record, and appears once.
//! * [`SnapshotRecord::Key`] records follow, in any order, with at most one
//!   [`SnapshotRecord::Functions`] and any number of [`SnapshotRecord::Script`]
//!   records among them (version 3; older files have none), and at most one
//!   [`SnapshotRecord::ShardMap`] (version 5).
//! * [`SnapshotRecord::End`] is the last record; its `key_count` equals the
//!   number of `Key` records. Not one byte may follow it.
//!
//! # No torn tails
//!
//! Unlike the log, a snapshot is only ever read after it was completely
//! written, fsync'd and renamed (or completely received). Any damage is
//! therefore an error: a failed checksum, a record that does not decode or
//! breaks a rule, an oversized frame, a wrong magic or version, a stream that
//! ends before `End` (reported by [`SnapshotDecoder::finish`]), or bytes after
//! it. Every [`SnapshotError`] carries the byte offset of the problem.

use std::collections::BTreeSet;
use std::fmt;

use raft::eraftpb::ConfState;
use serde::{Deserialize, Serialize};

use crate::core::bounded_serde::varint_len;
use crate::core::logfile::{self, FRAME_HEADER_LEN, MAX_LOG_INDEX};
use crate::core::membership::Member;

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RRAFTSNP";
/// Version of the format described in this module. Version 1 files (a Meta
/// record without `applied_time_ms`) are still read, with that time unknown (0);
/// version 2 files carry no function libraries and no script registry; versions 1 to 3
/// have no held learners in their Meta; versions 1 to 4 carry no shard map.
pub const SNAPSHOT_VERSION: u32 = 5;
/// The oldest version still read.
const OLDEST_READ_VERSION: u32 = 1;
/// Magic plus version.
pub const SNAPSHOT_HEADER_LEN: usize = SNAPSHOT_MAGIC.len() + 4;
/// Largest payload accepted, when encoding and when decoding. It is also the
/// bound on the decoder's buffer: a key whose record exceeds it (a `DUMP`
/// payload of about 512 MiB) cannot be snapshotted.
pub const MAX_SNAPSHOT_RECORD_BYTES: usize = 512 * 1024 * 1024;
/// `expire_at_ms` of a key without expiry.
pub const NO_EXPIRY: i64 = -1;

/// Variant index of [`SnapshotRecord::Key`] in the bincode encoding; the
/// borrowed fast path in [`encode_key`] must write the same tag.
const KEY_VARIANT_INDEX: u32 = 1;

/// The raft state a snapshot corresponds to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The cluster this snapshot belongs to.
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    pub dbid: String,
    /// Last raft index applied to the keyspace in this snapshot (>= 1).
    pub index: u64,
    /// Term of the entry at `index` (>= 1).
    pub term: u64,
    /// Raft's `ConfState` at `index`: voters (at least one) and learners.
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub voters: Vec<u64>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub learners: Vec<u64>,
    /// The replicated membership (addresses) at `index`.
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub members: Vec<SnapshotMember>,
    /// Every node id ever used in the cluster (ids are never reused).
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub used_ids: Vec<u64>,
    /// The leader's clock (unix ms) carried by the last applied entry with a time, at or
    /// before `index`: the logical "now" of the keyspace, so a node that installs the
    /// snapshot judges expiry as the nodes that applied the entries. 0 when unknown
    /// (version 1 files, or no timed entry yet). Since version 2.
    pub applied_time_ms: i64,
    /// Learners the leader must not promote (`RAFT.DEBUG NODECFG <id> -voting`). Since
    /// version 4.
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    pub held_learners: Vec<u64>,
}

/// [`SnapshotMeta`] as versions 2 and 3 wrote it (no `held_learners`).
#[derive(Deserialize)]
struct SnapshotMetaV3 {
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    dbid: String,
    index: u64,
    term: u64,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    voters: Vec<u64>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    learners: Vec<u64>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    members: Vec<SnapshotMember>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    used_ids: Vec<u64>,
    applied_time_ms: i64,
}

/// The first record of a version 2 or 3 file (same tag as [`SnapshotRecord::Meta`]).
#[derive(Deserialize)]
enum SnapshotRecordV3 {
    Meta(SnapshotMetaV3),
}

impl From<SnapshotMetaV3> for SnapshotMeta {
    fn from(old: SnapshotMetaV3) -> Self {
        SnapshotMeta {
            dbid: old.dbid,
            index: old.index,
            term: old.term,
            voters: old.voters,
            learners: old.learners,
            members: old.members,
            used_ids: old.used_ids,
            applied_time_ms: old.applied_time_ms,
            held_learners: Vec::new(),
        }
    }
}

/// [`SnapshotMeta`] as version 1 wrote it (no `applied_time_ms`).
#[derive(Deserialize)]
struct SnapshotMetaV1 {
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    dbid: String,
    index: u64,
    term: u64,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    voters: Vec<u64>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    learners: Vec<u64>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    members: Vec<SnapshotMember>,
    #[serde(deserialize_with = "crate::core::bounded_serde::vec")]
    used_ids: Vec<u64>,
}

/// The first record of a version 1 file (same tag as [`SnapshotRecord::Meta`]).
#[derive(Deserialize)]
enum SnapshotRecordV1 {
    Meta(SnapshotMetaV1),
}

impl From<SnapshotMetaV1> for SnapshotMeta {
    fn from(old: SnapshotMetaV1) -> Self {
        SnapshotMeta {
            dbid: old.dbid,
            index: old.index,
            term: old.term,
            voters: old.voters,
            learners: old.learners,
            members: old.members,
            used_ids: old.used_ids,
            applied_time_ms: 0,
            held_learners: Vec::new(),
        }
    }
}

impl SnapshotMeta {
    /// Raft's configuration at the snapshot index.
    pub fn conf_state(&self) -> ConfState {
        ConfState::from((self.voters.clone(), self.learners.clone()))
    }
}

/// One member of the replicated membership, as [`Member`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMember {
    pub id: u64,
    #[serde(deserialize_with = "crate::core::bounded_serde::string")]
    pub addr: String,
    pub voting: bool,
}

impl From<&Member> for SnapshotMember {
    fn from(member: &Member) -> Self {
        SnapshotMember {
            id: member.id,
            addr: member.addr.clone(),
            voting: member.voting,
        }
    }
}

impl From<&SnapshotMember> for Member {
    fn from(member: &SnapshotMember) -> Self {
        Member {
            id: member.id,
            addr: member.addr.clone(),
            voting: member.voting,
        }
    }
}

/// One unit of the snapshot file. Never reorder or remove variants or fields:
/// that changes the bytes (bump [`SNAPSHOT_VERSION`] instead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRecord {
    /// Always first, exactly once.
    Meta(SnapshotMeta),
    /// One key: its `DUMP` payload and absolute expiry in unix ms
    /// ([`NO_EXPIRY`] = none; any other value is >= 0).
    Key {
        #[serde(with = "crate::core::bounded_serde::bytes")]
        key: Vec<u8>,
        #[serde(with = "crate::core::bounded_serde::bytes")]
        dump: Vec<u8>,
        expire_at_ms: i64,
    },
    /// Always last: the number of `Key` records before it.
    End { key_count: u64 },
    /// The server's function libraries, as `FUNCTION DUMP` serializes them (loaded
    /// with `FUNCTION RESTORE ... FLUSH`). At most once. Since version 3.
    Functions {
        #[serde(with = "crate::core::bounded_serde::bytes")]
        dump: Vec<u8>,
    },
    /// One body of the replicated script registry (`core::scripts`), which `EVALSHA`
    /// runs from. Since version 3.
    Script {
        #[serde(with = "crate::core::bounded_serde::bytes")]
        body: Vec<u8>,
    },
    /// The replicated shard map (`core::shards::ShardMap::encode`). At most once. Since
    /// version 5; older files have none (the map is empty).
    ShardMap {
        #[serde(with = "crate::core::bounded_serde::bytes")]
        encoded: Vec<u8>,
    },
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Why a record was not encoded; nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotEncodeError {
    /// The payload exceeds [`MAX_SNAPSHOT_RECORD_BYTES`].
    RecordTooLarge { payload_len: usize },
    /// A Meta record the decoder would refuse.
    InvalidMeta { reason: String },
    /// A Key record the decoder would refuse.
    InvalidKey { reason: String },
}

impl fmt::Display for SnapshotEncodeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SnapshotEncodeError::RecordTooLarge { payload_len } => write!(
                f,
                "snapshot record of {payload_len} bytes exceeds the limit of \
                 {MAX_SNAPSHOT_RECORD_BYTES} bytes"
            ),
            SnapshotEncodeError::InvalidMeta { reason } => {
                write!(f, "invalid snapshot Meta record: {reason}")
            }
            SnapshotEncodeError::InvalidKey { reason } => {
                write!(f, "invalid snapshot Key record: {reason}")
            }
        }
    }
}

impl std::error::Error for SnapshotEncodeError {}

/// Appends the 12 bytes every snapshot starts with.
pub fn encode_header(out: &mut Vec<u8>) {
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
}

/// Appends one frame holding `record` to `out`. Records the decoder would
/// refuse on their own (an invalid Meta, an expiry below -1, too large) are
/// refused here; the record order is the caller's job (see [`SnapshotEncoder`]).
///
/// On error `out` is left as it was.
pub fn encode_record(
    record: &SnapshotRecord,
    out: &mut Vec<u8>,
) -> Result<(), SnapshotEncodeError> {
    let payload_hint = match record {
        SnapshotRecord::Meta(meta) => {
            check_meta(meta).map_err(|reason| SnapshotEncodeError::InvalidMeta { reason })?;
            meta_payload_hint(meta)
        }
        SnapshotRecord::Key {
            key,
            dump,
            expire_at_ms,
        } => check_key(key, dump, *expire_at_ms)?,
        SnapshotRecord::End { .. } => 16,
        SnapshotRecord::Functions { dump } => dump.len() + 16,
        SnapshotRecord::Script { body } => body.len() + 16,
        SnapshotRecord::ShardMap { encoded } => encoded.len() + 16,
    };
    encode_frame(out, payload_hint, |writer| {
        bincode::serde::encode_into_writer(record, writer, bincode_config())
    })
}

/// Appends one frame holding a `Key` record, without copying key and payload
/// into a [`SnapshotRecord`] first. Byte-for-byte the same as `encode_record`
/// of the owned record.
///
/// On error `out` is left as it was.
pub fn encode_key(
    key: &[u8],
    dump: &[u8],
    expire_at_ms: i64,
    out: &mut Vec<u8>,
) -> Result<(), SnapshotEncodeError> {
    let payload_len = check_key(key, dump, expire_at_ms)?;
    encode_frame(out, payload_len, |writer| {
        bincode::serde::encode_into_writer(
            KeyRecordRef {
                key,
                dump,
                expire_at_ms,
            },
            writer,
            bincode_config(),
        )
    })
}

/// Checks a key record and returns its exact payload length, before anything
/// is written (a huge `DUMP` payload is refused without being copied).
fn check_key(key: &[u8], dump: &[u8], expire_at_ms: i64) -> Result<usize, SnapshotEncodeError> {
    if expire_at_ms < NO_EXPIRY {
        return Err(SnapshotEncodeError::InvalidKey {
            reason: expiry_problem(expire_at_ms),
        });
    }
    let payload_len = key_payload_len(key.len(), dump.len(), expire_at_ms);
    if payload_len > MAX_SNAPSHOT_RECORD_BYTES {
        return Err(SnapshotEncodeError::RecordTooLarge { payload_len });
    }
    Ok(payload_len)
}

fn expiry_problem(expire_at_ms: i64) -> String {
    format!("expiry {expire_at_ms} is neither -1 (no expiry) nor an absolute time in ms")
}

/// Exact payload length of a Key record.
fn key_payload_len(key_len: usize, dump_len: usize, expire_at_ms: i64) -> usize {
    let zigzag = ((expire_at_ms << 1) ^ (expire_at_ms >> 63)) as u64;
    varint_len(KEY_VARIANT_INDEX.into())
        + varint_len(key_len as u64)
        + key_len
        + varint_len(dump_len as u64)
        + dump_len
        + varint_len(zigzag)
}

fn meta_payload_hint(meta: &SnapshotMeta) -> usize {
    let ids = meta.voters.len() + meta.learners.len() + meta.used_ids.len();
    let members: usize = meta.members.iter().map(|m| m.addr.len() + 16).sum();
    meta.dbid.len() + ids * 9 + members + 64
}

fn encode_frame(
    out: &mut Vec<u8>,
    payload_hint: usize,
    write_payload: impl FnOnce(logfile::VecWriter<'_>) -> Result<(), bincode::error::EncodeError>,
) -> Result<(), SnapshotEncodeError> {
    logfile::encode_frame(out, payload_hint, MAX_SNAPSHOT_RECORD_BYTES, write_payload).map_err(
        |too_large| SnapshotEncodeError::RecordTooLarge {
            payload_len: too_large.payload_len,
        },
    )
}

/// Serializes borrowed key data exactly as `SnapshotRecord::Key`.
struct KeyRecordRef<'a> {
    key: &'a [u8],
    dump: &'a [u8],
    expire_at_ms: i64,
}

impl Serialize for KeyRecordRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let mut fields =
            serializer.serialize_struct_variant("SnapshotRecord", KEY_VARIANT_INDEX, "Key", 3)?;
        fields.serialize_field("key", &AsByteString(self.key))?;
        fields.serialize_field("dump", &AsByteString(self.dump))?;
        fields.serialize_field("expire_at_ms", &self.expire_at_ms)?;
        fields.end()
    }
}

struct AsByteString<'a>(&'a [u8]);

impl Serialize for AsByteString<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Writes a whole snapshot in order: header and Meta at [`SnapshotEncoder::new`],
/// keys with [`SnapshotEncoder::add_key`], End with the right count at
/// [`SnapshotEncoder::finish`]. Every call appends to `out`, which the caller
/// flushes to the file whenever it likes (e.g. past 64 KiB) and clears.
#[derive(Debug)]
pub struct SnapshotEncoder {
    key_count: u64,
}

impl SnapshotEncoder {
    /// Appends the file header and the Meta record.
    pub fn new(meta: &SnapshotMeta, out: &mut Vec<u8>) -> Result<Self, SnapshotEncodeError> {
        let start = out.len();
        encode_header(out);
        if let Err(error) = encode_record(&SnapshotRecord::Meta(meta.clone()), out) {
            out.truncate(start);
            return Err(error);
        }
        Ok(SnapshotEncoder { key_count: 0 })
    }

    /// Appends one Key record. On error nothing was appended and the key is
    /// not counted; the snapshot as a whole should then be abandoned.
    pub fn add_key(
        &mut self,
        key: &[u8],
        dump: &[u8],
        expire_at_ms: i64,
        out: &mut Vec<u8>,
    ) -> Result<(), SnapshotEncodeError> {
        encode_key(key, dump, expire_at_ms, out)?;
        self.key_count += 1;
        Ok(())
    }

    /// Keys added so far.
    pub fn key_count(&self) -> u64 {
        self.key_count
    }

    /// Appends the End record; returns the number of keys written.
    pub fn finish(self, out: &mut Vec<u8>) -> u64 {
        let end = SnapshotRecord::End {
            key_count: self.key_count,
        };
        encode_record(&end, out).expect("an End record is a few bytes");
        self.key_count
    }
}

/// Why a snapshot was refused. Every variant carries the byte offset of the
/// problem in the stream: the file header, the start of the bad frame, or
/// where data is missing or unexpected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    BadMagic {
        offset: u64,
    },
    UnsupportedVersion {
        offset: u64,
        version: u32,
    },
    FrameHeaderChecksum {
        offset: u64,
    },
    FrameTooLarge {
        offset: u64,
        payload_len: usize,
    },
    PayloadChecksum {
        offset: u64,
    },
    UndecodableRecord {
        offset: u64,
        reason: String,
    },
    MissingMeta {
        offset: u64,
    },
    DuplicateMeta {
        offset: u64,
    },
    /// A second Functions record.
    DuplicateFunctions {
        offset: u64,
    },
    /// A second ShardMap record.
    DuplicateShardMap {
        offset: u64,
    },
    InvalidMeta {
        offset: u64,
        reason: String,
    },
    InvalidKey {
        offset: u64,
        reason: String,
    },
    KeyCountMismatch {
        offset: u64,
        declared: u64,
        decoded: u64,
    },
    /// Bytes after the End record.
    TrailingBytes {
        offset: u64,
    },
    /// The stream ended before the End record: `partial_bytes` of an
    /// incomplete header or frame start at `offset`.
    Truncated {
        offset: u64,
        partial_bytes: u64,
    },
}

impl SnapshotError {
    /// Byte offset in the stream where the problem was found.
    pub fn offset(&self) -> u64 {
        use SnapshotError::*;
        match *self {
            BadMagic { offset }
            | UnsupportedVersion { offset, .. }
            | FrameHeaderChecksum { offset }
            | FrameTooLarge { offset, .. }
            | PayloadChecksum { offset }
            | UndecodableRecord { offset, .. }
            | MissingMeta { offset }
            | DuplicateMeta { offset }
            | DuplicateFunctions { offset }
            | DuplicateShardMap { offset }
            | InvalidMeta { offset, .. }
            | InvalidKey { offset, .. }
            | KeyCountMismatch { offset, .. }
            | TrailingBytes { offset }
            | Truncated { offset, .. } => offset,
        }
    }

    fn problem(&self) -> String {
        use SnapshotError::*;
        match self {
            BadMagic { .. } => "bad magic, this is not a redisraft snapshot file".into(),
            UnsupportedVersion { version, .. } => format!(
                "format version {version} is not supported (this build reads version \
                 {SNAPSHOT_VERSION})"
            ),
            FrameHeaderChecksum { .. } => "frame header checksum mismatch".into(),
            FrameTooLarge { payload_len, .. } => format!(
                "frame claims a payload of {payload_len} bytes, above the limit of \
                 {MAX_SNAPSHOT_RECORD_BYTES}"
            ),
            PayloadChecksum { .. } => "record checksum mismatch".into(),
            UndecodableRecord { reason, .. } => format!("record does not decode: {reason}"),
            MissingMeta { .. } => "first record is not the Meta record".into(),
            DuplicateMeta { .. } => "second Meta record".into(),
            DuplicateFunctions { .. } => "second Functions record".into(),
            DuplicateShardMap { .. } => "second ShardMap record".into(),
            InvalidMeta { reason, .. } => format!("invalid Meta record: {reason}"),
            InvalidKey { reason, .. } => format!("invalid Key record: {reason}"),
            KeyCountMismatch {
                declared, decoded, ..
            } => format!("End record counts {declared} keys but the file holds {decoded}"),
            TrailingBytes { .. } => "data after the End record".into(),
            Truncated {
                offset,
                partial_bytes: 0,
            } if *offset < SNAPSHOT_HEADER_LEN as u64 => "the file is empty".into(),
            Truncated {
                offset,
                partial_bytes,
            } if *offset < SNAPSHOT_HEADER_LEN as u64 => format!(
                "truncated: the file ends after {partial_bytes} of the \
                 {SNAPSHOT_HEADER_LEN} header bytes"
            ),
            Truncated {
                partial_bytes: 0, ..
            } => "truncated: the file ends before the End record".into(),
            Truncated {
                offset,
                partial_bytes,
            } => format!(
                "truncated: the file ends at byte {} inside an incomplete record, before the \
                 End record",
                offset + partial_bytes
            ),
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "snapshot file corrupt at byte {}: {}",
            self.offset(),
            self.problem()
        )
    }
}

impl std::error::Error for SnapshotError {}

/// The checks a Meta record must pass, on both sides.
fn check_meta(meta: &SnapshotMeta) -> Result<(), String> {
    if meta.index == 0 {
        return Err("index 0 (a snapshot covers at least one applied entry)".into());
    }
    if meta.index > MAX_LOG_INDEX {
        return Err(format!(
            "index {} is above the limit of {MAX_LOG_INDEX}",
            meta.index
        ));
    }
    if meta.term == 0 {
        return Err(format!("term 0 at index {}", meta.index));
    }
    if meta.voters.is_empty() {
        return Err("no voters".into());
    }
    let voters = distinct_ids("voters", meta.voters.iter().copied())?;
    let learners = distinct_ids("learners", meta.learners.iter().copied())?;
    if let Some(id) = voters.intersection(&learners).next() {
        return Err(format!("node {id} is both a voter and a learner"));
    }
    distinct_ids("members", meta.members.iter().map(|member| member.id))?;
    distinct_ids("used_ids", meta.used_ids.iter().copied())?;
    if meta.applied_time_ms < 0 {
        return Err(format!("negative applied time {}", meta.applied_time_ms));
    }
    let held = distinct_ids("held_learners", meta.held_learners.iter().copied())?;
    if let Some(id) = held.difference(&learners).next() {
        return Err(format!("held learner {id} is not a learner"));
    }
    Ok(())
}

fn distinct_ids(list: &str, ids: impl Iterator<Item = u64>) -> Result<BTreeSet<u64>, String> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if id == 0 {
            return Err(format!("node id 0 in {list}"));
        }
        if !seen.insert(id) {
            return Err(format!("node {id} listed twice in {list}"));
        }
    }
    Ok(seen)
}

/// Above this capacity the decoder gives memory back after a large record.
const SHRINK_ABOVE_BYTES: usize = 4 * 1024 * 1024;
/// Most the decoder grows its buffer beyond what it needs.
const GROWTH_SLACK_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Meta,
    Keys,
    Ended,
}

/// Streaming reader: feed it bytes in pieces of any size (file reads, network
/// chunks), and after each [`feed`](Self::feed) call
/// [`next_record`](Self::next_record) until it returns `Ok(None)`. When the
/// input is exhausted, [`finish`](Self::finish) says whether the snapshot was
/// complete. Used that way, the buffer holds at most one incomplete record
/// plus the last piece fed.
///
/// The first error is sticky: every later call returns it again. Records
/// returned before an error must be discarded along with the snapshot.
#[derive(Debug)]
pub struct SnapshotDecoder {
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already decoded; dropped on the next feed.
    consumed: usize,
    /// Stream offset of `buffer[0]`.
    buffer_offset: u64,
    /// Length of the frame at `buffer[consumed..]`, once its header was read
    /// and the payload is still incomplete; 0 otherwise.
    pending_frame_len: usize,
    stage: Stage,
    /// Format version from the header (0 until it was read).
    version: u32,
    keys_decoded: u64,
    /// A Functions record was decoded (one is allowed).
    functions_seen: bool,
    /// A ShardMap record was decoded (one is allowed).
    shard_map_seen: bool,
    error: Option<SnapshotError>,
}

impl Default for SnapshotDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotDecoder {
    pub fn new() -> Self {
        SnapshotDecoder {
            buffer: Vec::new(),
            consumed: 0,
            buffer_offset: 0,
            pending_frame_len: 0,
            stage: Stage::Header,
            version: 0,
            keys_decoded: 0,
            functions_seen: false,
            shard_map_seen: false,
            error: None,
        }
    }

    /// Appends the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.buffer_offset += self.consumed as u64;
            self.consumed = 0;
        }
        let needed = self.buffer.len() + bytes.len();
        // Room for the frame being assembled, so a large record is not copied
        // over and over as it grows; but never more than twice what really
        // arrived, so a forged length cannot reserve memory (growth stays
        // geometric, copying linear).
        let wanted = needed.max(self.pending_frame_len.min(needed.saturating_mul(2)));
        let capacity = self.buffer.capacity();
        if wanted > capacity {
            // Geometric growth, but never more than a little past the need.
            let target = wanted.max(capacity.saturating_mul(2).min(wanted + GROWTH_SLACK_BYTES));
            self.buffer.reserve_exact(target - self.buffer.len());
        } else if capacity > SHRINK_ABOVE_BYTES && wanted < capacity / 4 {
            // A large record is gone: give its memory back.
            self.buffer.shrink_to(wanted * 2);
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next record, `Ok(None)` when more bytes are needed (or the End
    /// record was returned and nothing follows it).
    pub fn next_record(&mut self) -> Result<Option<SnapshotRecord>, SnapshotError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match self.decode_next() {
            Ok(record) => Ok(record),
            Err(error) => {
                self.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// `Ok` only if the End record was decoded with the right count and no
    /// byte follows it. Call after the last feed, once `next_record` returned
    /// `Ok(None)`.
    pub fn finish(&self) -> Result<(), SnapshotError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let offset = self.position();
        let left = self.buffered_len();
        if self.stage == Stage::Ended {
            if left > 0 {
                return Err(SnapshotError::TrailingBytes { offset });
            }
            return Ok(());
        }
        Err(SnapshotError::Truncated {
            offset,
            partial_bytes: left as u64,
        })
    }

    /// Bytes fed but not decoded yet (an incomplete record, or unread records).
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    /// Stream offset up to which everything has been decoded.
    pub fn position(&self) -> u64 {
        self.buffer_offset + self.consumed as u64
    }

    /// Key records decoded so far.
    pub fn keys_decoded(&self) -> u64 {
        self.keys_decoded
    }

    /// Whether the End record was decoded.
    pub fn is_ended(&self) -> bool {
        self.stage == Stage::Ended
    }

    fn decode_next(&mut self) -> Result<Option<SnapshotRecord>, SnapshotError> {
        if self.stage == Stage::Header && !self.decode_header()? {
            return Ok(None);
        }
        let offset = self.position();
        let rest = &self.buffer[self.consumed..];
        if self.stage == Stage::Ended {
            if rest.is_empty() {
                return Ok(None);
            }
            return Err(SnapshotError::TrailingBytes { offset });
        }
        if rest.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        if read_u32_le(rest, 4) != logfile::header_check(len_bytes) {
            return Err(SnapshotError::FrameHeaderChecksum { offset });
        }
        let payload_len = u32::from_le_bytes(len_bytes) as usize;
        if payload_len > MAX_SNAPSHOT_RECORD_BYTES {
            return Err(SnapshotError::FrameTooLarge {
                offset,
                payload_len,
            });
        }
        let frame_len = FRAME_HEADER_LEN + payload_len;
        if rest.len() < frame_len {
            self.pending_frame_len = frame_len;
            return Ok(None);
        }
        let payload = &rest[FRAME_HEADER_LEN..frame_len];
        if crc32fast::hash(payload) != read_u32_le(rest, 8) {
            return Err(SnapshotError::PayloadChecksum { offset });
        }
        let legacy_meta = (self.stage == Stage::Meta).then_some(self.version);
        let record = decode_payload(payload, legacy_meta)
            .map_err(|reason| SnapshotError::UndecodableRecord { offset, reason })?;
        self.check_order(&record, offset)?;
        self.consumed += frame_len;
        self.pending_frame_len = 0;
        Ok(Some(record))
    }

    /// Reads the file header; `false` if it is not complete yet.
    fn decode_header(&mut self) -> Result<bool, SnapshotError> {
        let rest = &self.buffer[self.consumed..];
        let magic_len = rest.len().min(SNAPSHOT_MAGIC.len());
        // A stream that is not a snapshot fails at its first bytes.
        if rest[..magic_len] != SNAPSHOT_MAGIC[..magic_len] {
            return Err(SnapshotError::BadMagic { offset: 0 });
        }
        if rest.len() < SNAPSHOT_HEADER_LEN {
            return Ok(false);
        }
        let version = read_u32_le(rest, SNAPSHOT_MAGIC.len());
        if !(OLDEST_READ_VERSION..=SNAPSHOT_VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion {
                offset: SNAPSHOT_MAGIC.len() as u64,
                version,
            });
        }
        self.consumed += SNAPSHOT_HEADER_LEN;
        self.version = version;
        self.stage = Stage::Meta;
        Ok(true)
    }

    fn check_order(&mut self, record: &SnapshotRecord, offset: u64) -> Result<(), SnapshotError> {
        match (record, self.stage) {
            (SnapshotRecord::Meta(meta), Stage::Meta) => {
                check_meta(meta).map_err(|reason| SnapshotError::InvalidMeta { offset, reason })?;
                self.stage = Stage::Keys;
            }
            (SnapshotRecord::Meta(_), _) => return Err(SnapshotError::DuplicateMeta { offset }),
            (_, Stage::Meta) => return Err(SnapshotError::MissingMeta { offset }),
            (SnapshotRecord::Key { expire_at_ms, .. }, _) => {
                if *expire_at_ms < NO_EXPIRY {
                    return Err(SnapshotError::InvalidKey {
                        offset,
                        reason: expiry_problem(*expire_at_ms),
                    });
                }
                self.keys_decoded += 1;
            }
            (SnapshotRecord::Functions { .. }, _) => {
                if self.functions_seen {
                    return Err(SnapshotError::DuplicateFunctions { offset });
                }
                self.functions_seen = true;
            }
            (SnapshotRecord::Script { .. }, _) => {}
            (SnapshotRecord::ShardMap { .. }, _) => {
                if self.shard_map_seen {
                    return Err(SnapshotError::DuplicateShardMap { offset });
                }
                self.shard_map_seen = true;
            }
            (SnapshotRecord::End { key_count }, _) => {
                if *key_count != self.keys_decoded {
                    return Err(SnapshotError::KeyCountMismatch {
                        offset,
                        declared: *key_count,
                        decoded: self.keys_decoded,
                    });
                }
                self.stage = Stage::Ended;
            }
        }
        Ok(())
    }
}

/// `first_record_version`: the file's version when this is its first record, read as
/// that version's Meta when it is one (anything else decodes as usual, so misplaced
/// records get their own error).
fn decode_payload(
    payload: &[u8],
    first_record_version: Option<u32>,
) -> Result<SnapshotRecord, String> {
    match first_record_version {
        Some(1) => {
            if let Ok((SnapshotRecordV1::Meta(old), used_len)) =
                bincode::serde::decode_from_slice::<SnapshotRecordV1, _>(payload, bincode_config())
            {
                if used_len == payload.len() {
                    return Ok(SnapshotRecord::Meta(old.into()));
                }
            }
        }
        Some(2 | 3) => {
            if let Ok((SnapshotRecordV3::Meta(old), used_len)) =
                bincode::serde::decode_from_slice::<SnapshotRecordV3, _>(payload, bincode_config())
            {
                if used_len == payload.len() {
                    return Ok(SnapshotRecord::Meta(old.into()));
                }
            }
        }
        _ => {}
    }
    let (record, used_len) =
        bincode::serde::decode_from_slice::<SnapshotRecord, _>(payload, bincode_config())
            .map_err(|error| error.to_string())?;
    if used_len != payload.len() {
        return Err(format!(
            "{} unexpected bytes after the record",
            payload.len() - used_len
        ));
    }
    Ok(record)
}

fn read_u32_le(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks a whole snapshot held in memory (tests, small files) through the
/// streaming decoder, and returns its Meta.
pub fn validate_all(bytes: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
    const PIECE_BYTES: usize = 64 * 1024;
    let mut decoder = SnapshotDecoder::new();
    let mut meta = None;
    // An empty input still goes through finish, which reports it.
    for piece in bytes.chunks(PIECE_BYTES) {
        decoder.feed(piece);
        while let Some(record) = decoder.next_record()? {
            if let SnapshotRecord::Meta(record_meta) = record {
                meta = Some(record_meta);
            }
        }
    }
    decoder.finish()?;
    Ok(meta.expect("a finished snapshot has a Meta record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            dbid: "0123456789abcdef0123456789abcdef".into(),
            index: 1234,
            term: 7,
            voters: vec![1, 2, 3],
            learners: vec![5],
            members: vec![
                SnapshotMember {
                    id: 1,
                    addr: "127.0.0.11:5001".into(),
                    voting: true,
                },
                SnapshotMember {
                    id: 2,
                    addr: "127.0.0.12:5001".into(),
                    voting: true,
                },
                SnapshotMember {
                    id: 3,
                    addr: "127.0.0.13:5001".into(),
                    voting: true,
                },
                SnapshotMember {
                    id: 5,
                    addr: "127.0.0.15:5001".into(),
                    voting: false,
                },
            ],
            used_ids: vec![1, 2, 3, 4, 5],
            applied_time_ms: 1_790_000_000_123,
            held_learners: vec![5],
        }
    }

    /// xorshift64*: deterministic pseudo-random numbers for the tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Key {
        key: Vec<u8>,
        dump: Vec<u8>,
        expire_at_ms: i64,
    }

    impl Key {
        fn record(&self) -> SnapshotRecord {
            SnapshotRecord::Key {
                key: self.key.clone(),
                dump: self.dump.clone(),
                expire_at_ms: self.expire_at_ms,
            }
        }
    }

    fn keys(count: usize, seed: u64) -> Vec<Key> {
        let mut rng = Rng(seed);
        (0..count)
            .map(|i| {
                let dump_len = match rng.below(100) {
                    0 => 70_000 + rng.below(200_000) as usize, // spans several 64 KiB reads
                    1..=10 => 250 + rng.below(100) as usize,   // around the varint steps
                    _ => rng.below(200) as usize,
                };
                let dump = (0..dump_len).map(|_| rng.next() as u8).collect();
                let expire_at_ms = match rng.below(3) {
                    0 => NO_EXPIRY,
                    1 => 0,
                    _ => 1_700_000_000_000 + rng.below(1 << 40) as i64,
                };
                Key {
                    key: format!("key:{i}").into_bytes(),
                    dump,
                    expire_at_ms,
                }
            })
            .collect()
    }

    struct File {
        bytes: Vec<u8>,
        /// Stream offset at which each frame (Meta, keys..., End) ends.
        frame_ends: Vec<usize>,
    }

    fn file_of(meta: &SnapshotMeta, keys: &[Key]) -> File {
        let mut bytes = Vec::new();
        let mut encoder = SnapshotEncoder::new(meta, &mut bytes).unwrap();
        let mut frame_ends = vec![bytes.len()];
        for key in keys {
            encoder
                .add_key(&key.key, &key.dump, key.expire_at_ms, &mut bytes)
                .unwrap();
            frame_ends.push(bytes.len());
        }
        assert_eq!(encoder.finish(&mut bytes), keys.len() as u64);
        frame_ends.push(bytes.len());
        File { bytes, frame_ends }
    }

    /// A file from raw records, in the given order, without the encoder's checks.
    fn file_of_records(records: &[SnapshotRecord]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_header(&mut bytes);
        for record in records {
            let start = bytes.len();
            bytes.extend_from_slice(&[0; FRAME_HEADER_LEN]);
            bincode::serde::encode_into_std_write(record, &mut bytes, bincode_config()).unwrap();
            let payload = bytes[start + FRAME_HEADER_LEN..].to_vec();
            bytes.truncate(start);
            bytes.extend_from_slice(&frame_header(
                payload.len() as u32,
                crc32fast::hash(&payload),
            ));
            bytes.extend_from_slice(&payload);
        }
        bytes
    }

    fn frame_header(payload_len: u32, payload_crc: u32) -> Vec<u8> {
        let len_bytes = payload_len.to_le_bytes();
        let mut header = len_bytes.to_vec();
        header.extend_from_slice(&logfile::header_check(len_bytes).to_le_bytes());
        header.extend_from_slice(&payload_crc.to_le_bytes());
        header
    }

    struct Decoded {
        records: Vec<SnapshotRecord>,
        result: Result<(), SnapshotError>,
        /// Largest `buffered_len` right after a feed, and after draining.
        max_buffered_after_feed: usize,
        max_buffered_after_drain: usize,
        max_capacity: usize,
    }

    /// Feeds `bytes` in pieces whose sizes come from `piece_len`, draining
    /// records after each feed, then calls finish.
    fn decode(bytes: &[u8], mut piece_len: impl FnMut() -> usize) -> Decoded {
        let mut decoder = SnapshotDecoder::new();
        let mut decoded = Decoded {
            records: Vec::new(),
            result: Ok(()),
            max_buffered_after_feed: 0,
            max_buffered_after_drain: 0,
            max_capacity: 0,
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(piece_len().clamp(1, rest.len()));
            rest = after;
            decoder.feed(piece);
            decoded.max_buffered_after_feed =
                decoded.max_buffered_after_feed.max(decoder.buffered_len());
            decoded.max_capacity = decoded.max_capacity.max(decoder.buffer.capacity());
            loop {
                match decoder.next_record() {
                    Ok(Some(record)) => decoded.records.push(record),
                    Ok(None) => break,
                    Err(error) => {
                        // Sticky, for next_record and finish.
                        assert_eq!(decoder.next_record(), Err(error.clone()));
                        assert_eq!(decoder.finish(), Err(error.clone()));
                        decoded.result = Err(error);
                        return decoded;
                    }
                }
            }
            decoded.max_buffered_after_drain =
                decoded.max_buffered_after_drain.max(decoder.buffered_len());
        }
        decoded.result = decoder.finish();
        decoded
    }

    fn expected_records(meta: &SnapshotMeta, keys: &[Key]) -> Vec<SnapshotRecord> {
        let mut records = vec![SnapshotRecord::Meta(meta.clone())];
        records.extend(keys.iter().map(Key::record));
        records.push(SnapshotRecord::End {
            key_count: keys.len() as u64,
        });
        records
    }

    fn largest_frame(file: &File) -> usize {
        let mut start = SNAPSHOT_HEADER_LEN;
        let mut largest = 0;
        for &end in &file.frame_ends {
            largest = largest.max(end - start);
            start = end;
        }
        largest
    }

    #[test]
    fn many_keys_roundtrip_in_pieces_of_any_size() {
        let meta = meta();
        let keys = keys(600, 1);
        let file = file_of(&meta, &keys);
        let expected = expected_records(&meta, &keys);
        let largest = largest_frame(&file);
        assert!(largest > 64 * 1024, "some record spans several reads");

        let mut rng = Rng(7);
        type PieceLen = Box<dyn FnMut() -> usize>;
        let strategies: Vec<(&str, usize, PieceLen)> = vec![
            ("1 byte", 1, Box::new(|| 1)),
            ("7 bytes", 7, Box::new(|| 7)),
            ("64 KiB", 64 * 1024, Box::new(|| 64 * 1024)),
            (
                "random",
                100_000,
                Box::new(move || 1 + rng.below(100_000) as usize),
            ),
            ("whole file", file.bytes.len(), Box::new(|| usize::MAX)),
        ];
        for (name, max_piece, piece_len) in strategies {
            let decoded = decode(&file.bytes, piece_len);
            assert_eq!(decoded.result, Ok(()), "{name}");
            assert!(decoded.records == expected, "{name}: records differ");
            // Bounded memory: one incomplete record plus one piece.
            assert!(
                decoded.max_buffered_after_feed <= largest - 1 + max_piece,
                "{name}: {} buffered",
                decoded.max_buffered_after_feed
            );
            assert!(decoded.max_buffered_after_drain < largest, "{name}");
            assert!(
                decoded.max_capacity <= largest + max_piece + GROWTH_SLACK_BYTES,
                "{name}: capacity {}",
                decoded.max_capacity
            );
        }
        assert_eq!(validate_all(&file.bytes), Ok(meta));
    }

    #[test]
    fn an_empty_keyspace_roundtrips() {
        let meta = meta();
        let file = file_of(&meta, &[]);
        let decoded = decode(&file.bytes, || 3);
        assert_eq!(decoded.result, Ok(()));
        assert_eq!(decoded.records, expected_records(&meta, &[]));
        assert_eq!(validate_all(&file.bytes), Ok(meta));
    }

    #[test]
    fn the_buffer_shrinks_after_a_large_record() {
        let meta = meta();
        let mut keys = keys(5, 3);
        keys[1].dump = vec![0xAB; 6 * 1024 * 1024];
        let file = file_of(&meta, &keys);
        let mut decoder = SnapshotDecoder::new();
        let mut records = 0;
        let mut capacity_at_end = 0;
        for piece in file.bytes.chunks(64 * 1024) {
            decoder.feed(piece);
            capacity_at_end = decoder.buffer.capacity();
            assert!(capacity_at_end <= 6 * 1024 * 1024 + 64 * 1024 + GROWTH_SLACK_BYTES + 4096);
            while decoder.next_record().unwrap().is_some() {
                records += 1;
            }
        }
        decoder.feed(&[]);
        decoder.finish().unwrap();
        assert_eq!(records, 7);
        assert!(decoder.buffer.capacity() < 1024 * 1024, "{capacity_at_end}");
    }

    #[test]
    fn every_truncation_fails_at_finish() {
        let meta = meta();
        let keys = keys(12, 2);
        let file = file_of(&meta, &keys);
        let expected = expected_records(&meta, &keys);
        for len in 0..file.bytes.len() {
            let decoded = decode(&file.bytes[..len], || 5);
            let error = decoded.result.expect_err("a truncated snapshot is refused");
            let complete_frames = file.frame_ends.iter().filter(|&&end| end <= len).count();
            assert_eq!(decoded.records, expected[..complete_frames], "len {len}");
            let missing_from = match complete_frames {
                0 if len < SNAPSHOT_HEADER_LEN => 0,
                0 => SNAPSHOT_HEADER_LEN,
                n => file.frame_ends[n - 1],
            };
            assert_eq!(
                error,
                SnapshotError::Truncated {
                    offset: missing_from as u64,
                    partial_bytes: (len - missing_from) as u64
                },
                "len {len}"
            );
        }
        assert_eq!(
            validate_all(&[]).unwrap_err().to_string(),
            "snapshot file corrupt at byte 0: the file is empty"
        );
    }

    #[test]
    fn flipping_any_byte_is_an_error() {
        let meta = meta();
        let keys = keys(4, 5);
        let file = file_of(&meta, &keys);
        let expected = expected_records(&meta, &keys);
        for mask in [0xFF, 0x01, 0x80] {
            for position in 0..file.bytes.len() {
                let mut bytes = file.bytes.clone();
                bytes[position] ^= mask;
                let decoded = decode(&bytes, || 64 * 1024);
                let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
                if (8..12).contains(&position)
                    && (OLDEST_READ_VERSION + 1..=SNAPSHOT_VERSION).contains(&version)
                {
                    // The header has no checksum: a flip to another readable version
                    // (3 -> 2) reads the same records, which versions 2 and 3 share.
                    assert_eq!(decoded.records, expected, "flip at {position}");
                    continue;
                }
                let error = decoded
                    .result
                    .expect_err("a flipped byte is always detected");
                // Only the records in front of the damaged frame came out.
                assert!(expected.starts_with(&decoded.records), "flip at {position}");
                let frame_of_position = file
                    .frame_ends
                    .iter()
                    .filter(|&&end| end <= position)
                    .count();
                assert_eq!(
                    decoded.records.len(),
                    frame_of_position,
                    "flip at {position}"
                );
                assert!(
                    error.offset() <= position as u64,
                    "flip at {position}: {error}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_key_count_is_refused() {
        let meta = meta();
        let keys = keys(3, 4);
        let mut records = expected_records(&meta, &keys);
        let end_at = file_of_records(&records[..4]).len() as u64;
        for declared in [0, 2, 4, u64::MAX] {
            records[4] = SnapshotRecord::End {
                key_count: declared,
            };
            let bytes = file_of_records(&records);
            assert_eq!(
                validate_all(&bytes),
                Err(SnapshotError::KeyCountMismatch {
                    offset: end_at,
                    declared,
                    decoded: 3
                })
            );
        }
    }

    #[test]
    fn nothing_may_follow_the_end_record() {
        let meta = meta();
        let file = file_of(&meta, &keys(3, 6));
        let end = file.bytes.len() as u64;
        let mut extra_key = Vec::new();
        encode_key(b"late", b"dump", NO_EXPIRY, &mut extra_key).unwrap();
        for trailer in [vec![0u8], vec![0; 4096], b"garbage".to_vec(), extra_key] {
            let mut bytes = file.bytes.clone();
            bytes.extend_from_slice(&trailer);
            assert_eq!(
                validate_all(&bytes),
                Err(SnapshotError::TrailingBytes { offset: end })
            );
            // Also when the trailer arrives after End was already returned.
            let mut decoder = SnapshotDecoder::new();
            decoder.feed(&file.bytes);
            while decoder.next_record().unwrap().is_some() {}
            assert!(decoder.is_ended());
            decoder.feed(&trailer);
            assert_eq!(
                decoder.finish(),
                Err(SnapshotError::TrailingBytes { offset: end })
            );
            assert_eq!(
                decoder.next_record(),
                Err(SnapshotError::TrailingBytes { offset: end })
            );
        }
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let meta = SnapshotRecord::Meta(meta());
        let key = keys(1, 8)[0].record();
        let end = |key_count| SnapshotRecord::End { key_count };
        let frame_start = |records: &[SnapshotRecord]| file_of_records(records).len() as u64;
        let cases = vec![
            (
                vec![key.clone(), end(1)],
                SnapshotError::MissingMeta { offset: 12 },
            ),
            (vec![end(0)], SnapshotError::MissingMeta { offset: 12 }),
            (
                vec![meta.clone(), meta.clone(), end(0)],
                SnapshotError::DuplicateMeta {
                    offset: frame_start(std::slice::from_ref(&meta)),
                },
            ),
            (
                vec![meta.clone(), key.clone(), meta.clone(), end(1)],
                SnapshotError::DuplicateMeta {
                    offset: frame_start(&[meta.clone(), key.clone()]),
                },
            ),
        ];
        for (records, expected) in cases {
            assert_eq!(
                validate_all(&file_of_records(&records)),
                Err(expected),
                "{records:?}"
            );
        }
    }

    #[test]
    fn invalid_meta_and_keys_are_refused_on_both_sides() {
        type Breaker = fn(&mut SnapshotMeta);
        let cases: Vec<(&str, Breaker)> = vec![
            ("index 0", |m| m.index = 0),
            ("above the limit", |m| m.index = MAX_LOG_INDEX + 1),
            ("term 0", |m| m.term = 0),
            ("no voters", |m| m.voters.clear()),
            ("node id 0 in voters", |m| m.voters.push(0)),
            ("listed twice in voters", |m| m.voters.push(2)),
            ("listed twice in learners", |m| m.learners.push(5)),
            ("both a voter and a learner", |m| m.learners.push(1)),
            ("listed twice in members", |m| {
                let first = m.members[0].clone();
                m.members.push(first)
            }),
            ("node id 0 in used_ids", |m| m.used_ids.push(0)),
        ];
        for (problem, break_it) in cases {
            let mut bad = meta();
            break_it(&mut bad);
            let mut out = b"kept".to_vec();
            let error = SnapshotEncoder::new(&bad, &mut out).unwrap_err();
            assert!(error.to_string().contains(problem), "{error}");
            assert_eq!(out, b"kept");

            let bytes = file_of_records(&[
                SnapshotRecord::Meta(bad),
                SnapshotRecord::End { key_count: 0 },
            ]);
            let error = validate_all(&bytes).unwrap_err();
            assert!(
                matches!(&error, SnapshotError::InvalidMeta { offset: 12, reason } if reason.contains(problem)),
                "{error}"
            );
        }

        let mut out = Vec::new();
        let error = encode_key(b"k", b"d", -2, &mut out).unwrap_err();
        assert!(matches!(error, SnapshotEncodeError::InvalidKey { .. }));
        assert!(out.is_empty());
        let bad_key = SnapshotRecord::Key {
            key: b"k".to_vec(),
            dump: b"d".to_vec(),
            expire_at_ms: i64::MIN,
        };
        assert!(encode_record(&bad_key, &mut out).is_err());
        let bytes = file_of_records(&[
            SnapshotRecord::Meta(meta()),
            bad_key,
            SnapshotRecord::End { key_count: 1 },
        ]);
        assert!(matches!(
            validate_all(&bytes),
            Err(SnapshotError::InvalidKey { .. })
        ));
    }

    /// Version 3: function libraries and script bodies travel among the keys; the key
    /// count ignores them; a second Functions record is refused.
    #[test]
    fn functions_and_scripts_ride_among_the_keys() {
        let keys = keys(3, 4);
        let mut records = vec![SnapshotRecord::Meta(meta())];
        records.push(keys[0].record());
        records.push(SnapshotRecord::Functions {
            dump: b"\xf5\xc3library".to_vec(),
        });
        records.push(SnapshotRecord::Script {
            body: b"return 1".to_vec(),
        });
        records.extend(keys[1..].iter().map(Key::record));
        records.push(SnapshotRecord::End {
            key_count: keys.len() as u64,
        });
        let bytes = file_of_records(&records);
        assert_eq!(&bytes[8..12], &SNAPSHOT_VERSION.to_le_bytes());
        let mut decoder = SnapshotDecoder::new();
        decoder.feed(&bytes);
        let mut decoded = Vec::new();
        while let Some(record) = decoder.next_record().unwrap() {
            decoded.push(record);
        }
        decoder.finish().unwrap();
        assert_eq!(decoded, records);

        let twice = file_of_records(&[
            SnapshotRecord::Meta(meta()),
            SnapshotRecord::Functions { dump: vec![1] },
            SnapshotRecord::Functions { dump: vec![2] },
            SnapshotRecord::End { key_count: 0 },
        ]);
        assert!(matches!(
            validate_all(&twice),
            Err(SnapshotError::DuplicateFunctions { .. })
        ));
    }

    /// Version 5: the shard map rides among the keys, once.
    #[test]
    fn the_shard_map_rides_among_the_keys_once() {
        let keys = keys(2, 4);
        let map = SnapshotRecord::ShardMap {
            encoded: vec![3, 1, 4],
        };
        let records = vec![
            SnapshotRecord::Meta(meta()),
            keys[0].record(),
            map.clone(),
            keys[1].record(),
            SnapshotRecord::End { key_count: 2 },
        ];
        let bytes = file_of_records(&records);
        let mut decoder = SnapshotDecoder::new();
        decoder.feed(&bytes);
        let mut decoded = Vec::new();
        while let Some(record) = decoder.next_record().unwrap() {
            decoded.push(record);
        }
        decoder.finish().unwrap();
        assert_eq!(decoded, records);
        let twice = file_of_records(&[
            SnapshotRecord::Meta(meta()),
            map.clone(),
            map,
            SnapshotRecord::End { key_count: 0 },
        ]);
        assert!(matches!(
            validate_all(&twice),
            Err(SnapshotError::DuplicateShardMap { .. })
        ));
    }

    /// A version 1 file (Meta without `applied_time_ms`) is still read, with the time 0.
    #[test]
    fn version_1_files_are_read_with_an_unknown_time() {
        let mut old_meta = meta();
        old_meta.applied_time_ms = 0;
        old_meta.held_learners.clear();
        let keys = keys(20, 5);
        let mut records = vec![SnapshotRecord::Meta(old_meta.clone())];
        records.extend(keys.iter().map(Key::record));
        records.push(SnapshotRecord::End {
            key_count: keys.len() as u64,
        });
        let current = file_of_records(&records);
        // Version 1 bytes: the same Meta payload without its last two fields (a zero i64
        // and an empty vector are one byte each in bincode's varint encoding), and
        // version 1 in the header.
        let meta_start = SNAPSHOT_HEADER_LEN;
        let meta_len = u32::from_le_bytes(current[meta_start..meta_start + 4].try_into().unwrap());
        let meta_end = meta_start + FRAME_HEADER_LEN + meta_len as usize;
        assert_eq!(
            current[meta_end - 2..meta_end],
            [0, 0],
            "applied_time_ms 0 and no held learners are the last bytes"
        );
        let old_payload = &current[meta_start + FRAME_HEADER_LEN..meta_end - 2];
        let mut old = Vec::new();
        old.extend_from_slice(&SNAPSHOT_MAGIC);
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&frame_header(
            old_payload.len() as u32,
            crc32fast::hash(old_payload),
        ));
        old.extend_from_slice(old_payload);
        old.extend_from_slice(&current[meta_end..]);
        assert_eq!(validate_all(&old), Ok(old_meta.clone()));

        // A version 2 file must carry the field: the shortened Meta is refused there.
        let mut truncated_meta = old.clone();
        truncated_meta[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        assert!(matches!(
            validate_all(&truncated_meta),
            Err(SnapshotError::UndecodableRecord { offset, .. }) if offset == meta_start as u64
        ));
        // And a version 1 file whose first record is not a Meta still says so.
        let mut no_meta = Vec::new();
        no_meta.extend_from_slice(&SNAPSHOT_MAGIC);
        no_meta.extend_from_slice(&1u32.to_le_bytes());
        no_meta.extend_from_slice(&current[meta_end..]);
        assert!(matches!(
            validate_all(&no_meta),
            Err(SnapshotError::MissingMeta { .. })
        ));
    }

    /// Versions 2 and 3 (Meta without `held_learners`) are still read, with none held.
    #[test]
    fn version_3_files_are_read_without_held_learners() {
        let mut old_meta = meta();
        old_meta.held_learners.clear();
        let current = file_of_records(&[
            SnapshotRecord::Meta(old_meta.clone()),
            SnapshotRecord::End { key_count: 0 },
        ]);
        let meta_start = SNAPSHOT_HEADER_LEN;
        let meta_len = u32::from_le_bytes(current[meta_start..meta_start + 4].try_into().unwrap());
        let meta_end = meta_start + FRAME_HEADER_LEN + meta_len as usize;
        assert_eq!(current[meta_end - 1], 0, "an empty vector is the last byte");
        let old_payload = &current[meta_start + FRAME_HEADER_LEN..meta_end - 1];
        for version in [2u32, 3] {
            let mut old = Vec::new();
            old.extend_from_slice(&SNAPSHOT_MAGIC);
            old.extend_from_slice(&version.to_le_bytes());
            old.extend_from_slice(&frame_header(
                old_payload.len() as u32,
                crc32fast::hash(old_payload),
            ));
            old.extend_from_slice(old_payload);
            old.extend_from_slice(&current[meta_end..]);
            assert_eq!(
                validate_all(&old),
                Ok(old_meta.clone()),
                "version {version}"
            );
        }
    }

    #[test]
    fn negative_applied_time_is_refused() {
        let mut bad = meta();
        bad.applied_time_ms = -5;
        assert!(matches!(
            encode_record(&SnapshotRecord::Meta(bad), &mut Vec::new()),
            Err(SnapshotEncodeError::InvalidMeta { .. })
        ));
    }

    #[test]
    fn bad_file_headers() {
        let file = file_of(&meta(), &[]);
        let mut bytes = file.bytes.clone();
        bytes[0] = b'X';
        assert_eq!(
            validate_all(&bytes),
            Err(SnapshotError::BadMagic { offset: 0 })
        );

        let mut bytes = file.bytes.clone();
        bytes[8] = 6;
        assert_eq!(
            validate_all(&bytes),
            Err(SnapshotError::UnsupportedVersion {
                offset: 8,
                version: 6
            })
        );

        // A log file is not a snapshot.
        assert_eq!(
            validate_all(&logfile::encode_file_header()),
            Err(SnapshotError::BadMagic { offset: 0 })
        );

        // Something else entirely fails at its first wrong byte, without
        // waiting for a whole header.
        let mut decoder = SnapshotDecoder::new();
        decoder.feed(b"RRAFTS");
        assert_eq!(decoder.next_record(), Ok(None));
        decoder.feed(b"X");
        assert_eq!(
            decoder.next_record(),
            Err(SnapshotError::BadMagic { offset: 0 })
        );
        let mut decoder = SnapshotDecoder::new();
        decoder.feed(b"-");
        assert_eq!(
            decoder.next_record(),
            Err(SnapshotError::BadMagic { offset: 0 })
        );
    }

    #[test]
    fn oversized_lengths_never_drive_an_allocation() {
        let valid = file_of_records(&[SnapshotRecord::Meta(meta())]);

        // A checksummed frame length above the limit: refused at once.
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&frame_header(u32::MAX, 0));
        let mut decoder = SnapshotDecoder::new();
        decoder.feed(&bytes);
        assert!(matches!(
            decoder.next_record(),
            Ok(Some(SnapshotRecord::Meta(_)))
        ));
        assert_eq!(
            decoder.next_record(),
            Err(SnapshotError::FrameTooLarge {
                offset: valid.len() as u64,
                payload_len: u32::MAX as usize
            })
        );
        assert!(decoder.buffer.capacity() < 4096);

        // A legal length whose data never comes: truncated, at finish.
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&frame_header(MAX_SNAPSHOT_RECORD_BYTES as u32, 0));
        bytes.extend_from_slice(&[1; 64]);
        assert_eq!(
            validate_all(&bytes),
            Err(SnapshotError::Truncated {
                offset: valid.len() as u64,
                partial_bytes: FRAME_HEADER_LEN as u64 + 64
            })
        );

        // Checksummed payloads whose inner lengths claim 2^60: the byte
        // strings of a key, the dbid string, the voter list.
        let huge = |prefix: &[u8]| {
            let mut payload = prefix.to_vec();
            bincode::encode_into_std_write(1u64 << 60, &mut payload, bincode_config()).unwrap();
            payload.extend_from_slice(&[1, 2, 3]);
            payload
        };
        let key_prefix = [1u8]; // Key tag, then the key length
        let mut meta_prefix = vec![0u8]; // Meta tag, then the dbid length
        let dbid_prefix = meta_prefix.clone();
        bincode::serde::encode_into_std_write("db", &mut meta_prefix, bincode_config()).unwrap();
        meta_prefix.extend_from_slice(&[5, 1]); // index, term; then the voter count
        for (payload, after_meta) in [
            (huge(&key_prefix), true),
            (huge(&dbid_prefix), false),
            (huge(&meta_prefix), false),
        ] {
            let mut bytes = if after_meta {
                valid.clone()
            } else {
                file_of_records(&[])
            };
            bytes.extend_from_slice(&frame_header(
                payload.len() as u32,
                crc32fast::hash(&payload),
            ));
            bytes.extend_from_slice(&payload);
            assert!(
                matches!(
                    validate_all(&bytes),
                    Err(SnapshotError::UndecodableRecord { .. })
                ),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_inside_a_payload_are_refused() {
        let mut payload = Vec::new();
        bincode::serde::encode_into_std_write(
            SnapshotRecord::Meta(meta()),
            &mut payload,
            bincode_config(),
        )
        .unwrap();
        payload.push(0);
        let mut bytes = file_of_records(&[]);
        bytes.extend_from_slice(&frame_header(
            payload.len() as u32,
            crc32fast::hash(&payload),
        ));
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            validate_all(&bytes),
            Err(SnapshotError::UndecodableRecord { offset: 12, .. })
        ));
    }

    #[test]
    fn encode_key_is_encode_record_byte_for_byte() {
        for (key_len, dump_len) in [
            (0, 0),
            (1, 250),
            (250, 251),
            (3, 65_535),
            (3, 65_536),
            (70_000, 5),
        ] {
            for expire_at_ms in [NO_EXPIRY, 0, 125, 126, i64::MAX] {
                let key = vec![b'k'; key_len];
                let dump = vec![7u8; dump_len];
                let mut borrowed = Vec::new();
                encode_key(&key, &dump, expire_at_ms, &mut borrowed).unwrap();
                let mut owned = Vec::new();
                let record = SnapshotRecord::Key {
                    key: key.clone(),
                    dump: dump.clone(),
                    expire_at_ms,
                };
                encode_record(&record, &mut owned).unwrap();
                assert!(borrowed == owned, "{key_len} {dump_len} {expire_at_ms}");
                assert_eq!(
                    borrowed.len(),
                    FRAME_HEADER_LEN + key_payload_len(key_len, dump_len, expire_at_ms)
                );
            }
        }
    }

    #[test]
    fn a_too_large_key_is_refused_without_copying_it() {
        // Only the length matters: the check runs before the payload is read.
        let dump = vec![0u8; MAX_SNAPSHOT_RECORD_BYTES - 8];
        let mut out = b"kept".to_vec();
        let error = encode_key(b"a longer key name", &dump, NO_EXPIRY, &mut out).unwrap_err();
        assert_eq!(
            error,
            SnapshotEncodeError::RecordTooLarge {
                payload_len: 1 + 1 + 17 + 5 + dump.len() + 1
            }
        );
        assert_eq!(out, b"kept");
        assert!(out.capacity() < 1024);
    }

    #[test]
    fn meta_converts_to_raft_and_membership_types() {
        let meta = meta();
        let conf_state = meta.conf_state();
        assert_eq!(conf_state.voters, vec![1, 2, 3]);
        assert_eq!(conf_state.learners, vec![5]);
        let member = Member::from(&meta.members[3]);
        assert_eq!(SnapshotMember::from(&member), meta.members[3]);
    }

    #[test]
    fn error_messages_speak_to_an_operator() {
        assert_eq!(
            SnapshotError::PayloadChecksum { offset: 4096 }.to_string(),
            "snapshot file corrupt at byte 4096: record checksum mismatch"
        );
        assert_eq!(
            SnapshotError::KeyCountMismatch {
                offset: 99,
                declared: 10,
                decoded: 9
            }
            .to_string(),
            "snapshot file corrupt at byte 99: End record counts 10 keys but the file holds 9"
        );
        assert_eq!(
            SnapshotError::Truncated {
                offset: 500,
                partial_bytes: 20
            }
            .to_string(),
            "snapshot file corrupt at byte 500: truncated: the file ends at byte 520 inside an \
             incomplete record, before the End record"
        );
        assert_eq!(
            SnapshotError::Truncated {
                offset: 0,
                partial_bytes: 5
            }
            .to_string(),
            "snapshot file corrupt at byte 0: truncated: the file ends after 5 of the 12 header \
             bytes"
        );
    }
}
