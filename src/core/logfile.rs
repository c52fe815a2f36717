//! The on-disk log format, as pure encode/decode over bytes, and recovery.
//!
//! A node keeps its raft log in one append-only file. This module never
//! touches the file system: the writer hands it records and gets bytes to
//! append; at start the reader hands it the whole file and gets back the
//! recovered state plus how many bytes of the file are good. `docs/LOG_FORMAT.md`
//! is the long-form description of everything below.
//!
//! # Layout
//!
//! ```text
//! file   = header frame*
//! header = "RRAFTLOG" (8 bytes) | format version, u32 LE (= 1)
//! frame  = payload_len u32 LE | header_check u32 LE | payload_crc u32 LE | payload
//! ```
//!
//! * `header_check` is `crc32(payload_len bytes) ^ 0x52414654`. It lets a
//!   reader trust `payload_len` before reading the payload, and the salt makes
//!   an all-zero frame header invalid.
//! * `payload_crc` is the crc32 of the payload.
//! * `payload` is one [`Record`], encoded with bincode 2 (serde,
//!   `bincode::config::standard()`), at most [`MAX_RECORD_BYTES`] long.
//!
//! # Record semantics
//!
//! * [`Record::Meta`] is the first record of every file, and appears once.
//! * No index (entry or compaction point) is above [`MAX_LOG_INDEX`].
//! * [`Record::Entry`] with index `i` drops every entry `>= i` and appends
//!   (raft overwrote a suffix). It must satisfy
//!   `first_index <= i <= last_index + 1`, its term must not be lower than the
//!   term of entry `i - 1`, and it may not replace an entry at or below the
//!   latest commit index with a different term.
//! * [`Record::HardState`]: the last one wins. Its term and commit never go
//!   down, and the vote does not change within a term.
//! * [`Record::Compacted`] at `index`: entries `<= index` are dropped and the
//!   first index becomes `index + 1`. If `index` lies inside the log, its term
//!   must match the entry's. An index past the end of the log clears the log
//!   (a snapshot was installed). The compaction point never moves backwards.
//! * At the end, the commit index may not exceed the last index (entries that
//!   were compacted away count: `last_index` is at least the compaction index).
//!   Writers must therefore write a batch's entries before its hard state.
//!
//! # Torn tail or corruption?
//!
//! A crash during an append can leave a partial last write. That tail is
//! *torn*: recovery stops before it, reports [`Recovered::valid_len`], and the
//! caller truncates the file there. Anything else that fails a check is
//! *corruption*: recovery returns a [`RecoveryError`] and the node refuses to
//! start, because the damage sits before data that was acknowledged.
//!
//! Reading a frame at offset `p` (the "bad position" when a check fails):
//!
//! 1. Fewer bytes left than a frame header: torn.
//! 2. `header_check` fails: torn if every byte from `p` to the end is zero
//!    (file systems can leave zero-filled tails after a crash), otherwise
//!    corruption.
//! 3. `payload_len` above [`MAX_RECORD_BYTES`]: corruption (no writer produces
//!    it; nothing is allocated from it).
//! 4. The payload extends past the end of the file: torn.
//! 5. `payload_crc` mismatch: torn if the frame ends exactly at the end of the
//!    file or only zero bytes follow it (the last write was half done),
//!    otherwise corruption.
//! 6. The payload does not decode, or the record breaks a rule above:
//!    corruption, whatever its position. A checksummed record that is wrong
//!    was written wrong, and truncating it would hide a bug.
//!
//! The file header is treated the same way: an empty file is a brand-new file
//! (nothing recovered); a file shorter than the header whose bytes are a prefix
//! of the expected header (or all zero) is torn at 0; a wrong magic or version
//! is an error.

use std::fmt;

use protobuf::ProtobufEnum;
use raft::eraftpb::{Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};

/// First bytes of every log file.
pub const FILE_MAGIC: [u8; 8] = *b"RRAFTLOG";
/// Version of the format described in this module.
pub const FORMAT_VERSION: u32 = 1;
/// Magic plus version.
pub const FILE_HEADER_LEN: usize = FILE_MAGIC.len() + 4;
/// `payload_len`, `header_check` and `payload_crc`.
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest payload accepted, when encoding and when decoding.
pub const MAX_RECORD_BYTES: usize = 512 * 1024 * 1024;

/// Highest log index a record may carry. Far beyond any real log; it keeps
/// `index + 1` arithmetic from overflowing on a forged record.
pub const MAX_LOG_INDEX: u64 = u64::MAX / 2;

/// Mixed into `header_check` so that an all-zero frame header does not
/// validate (the crc32 of four zero bytes is 0x2144DF1C, not this).
const HEADER_CHECK_SALT: u32 = 0x5241_4654; // "RAFT"

/// Variant index of [`Record::Entry`] in the bincode encoding; the borrowed
/// fast path in [`encode_entry`] must write the same tag.
const ENTRY_VARIANT_INDEX: u32 = 1;

/// One unit of the log file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// First record of every file: who this node is and how it was bootstrapped.
    Meta {
        #[serde(deserialize_with = "crate::core::bounded_serde::string")]
        dbid: String,
        node_id: u64,
        bootstrap_voters: Vec<u64>,
    },
    /// A raft entry. Writing index i again means: drop every entry >= i, then
    /// append (raft overwrote a suffix).
    Entry(LogEntry),
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    /// The log prefix up to and including `index` was compacted into a
    /// snapshot: entries <= index are dropped, the first index becomes index+1.
    Compacted {
        index: u64,
        term: u64,
    },
}

/// A raft entry as stored in the log file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    /// `raft::eraftpb::EntryType` as its protobuf value.
    pub entry_type: i32,
    #[serde(with = "crate::core::bounded_serde::bytes")]
    pub data: Vec<u8>,
    #[serde(with = "crate::core::bounded_serde::bytes")]
    pub context: Vec<u8>,
}

impl From<&Entry> for LogEntry {
    fn from(entry: &Entry) -> Self {
        LogEntry {
            index: entry.index,
            term: entry.term,
            entry_type: entry.get_entry_type().value(),
            data: entry.data.to_vec(),
            context: entry.context.to_vec(),
        }
    }
}

impl LogEntry {
    /// The raft entry, copying data and context.
    ///
    /// # Panics
    /// If `entry_type` is not a known `EntryType`. [`recover`] rejects such
    /// entries, so this only fires on a hand-built `LogEntry`.
    pub fn to_raft(&self) -> Entry {
        self.clone().into_raft()
    }

    /// The raft entry, moving data and context (no copy).
    ///
    /// # Panics
    /// Same as [`LogEntry::to_raft`].
    pub fn into_raft(self) -> Entry {
        let entry_type = EntryType::from_i32(self.entry_type).unwrap_or_else(|| {
            panic!(
                "log entry {} has unknown entry type {}",
                self.index, self.entry_type
            )
        });
        let mut entry = Entry::default();
        entry.set_entry_type(entry_type);
        entry.index = self.index;
        entry.term = self.term;
        entry.data = self.data.into();
        entry.context = self.context.into();
        entry
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The 12 bytes every log file starts with.
pub fn encode_file_header() -> Vec<u8> {
    let mut header = Vec::with_capacity(FILE_HEADER_LEN);
    header.extend_from_slice(&FILE_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// A record whose payload exceeds [`MAX_RECORD_BYTES`]; nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordTooLarge {
    pub payload_len: usize,
}

impl fmt::Display for RecordTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "log record of {} bytes exceeds the limit of {} bytes",
            self.payload_len, MAX_RECORD_BYTES
        )
    }
}

impl std::error::Error for RecordTooLarge {}

/// Appends one frame holding `record` to `out`.
///
/// On error `out` is left as it was.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), RecordTooLarge> {
    let payload_hint = match record {
        Record::Entry(entry) => entry.data.len() + entry.context.len() + 32,
        Record::Meta {
            dbid,
            bootstrap_voters,
            ..
        } => dbid.len() + bootstrap_voters.len() * 9 + 32,
        Record::HardState { .. } | Record::Compacted { .. } => 32,
    };
    encode_frame(out, payload_hint, MAX_RECORD_BYTES, |writer| {
        bincode::serde::encode_into_writer(record, writer, bincode_config())
    })
}

/// Appends one frame holding `Record::Entry` built from `entry`, without
/// copying the entry into a [`LogEntry`] first. Byte-for-byte the same as
/// `encode_record(&Record::Entry(LogEntry::from(entry)), out)`.
///
/// On error `out` is left as it was.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> Result<(), RecordTooLarge> {
    let payload_hint = entry.data.len() + entry.context.len() + 32;
    encode_frame(out, payload_hint, MAX_RECORD_BYTES, |writer| {
        bincode::serde::encode_into_writer(EntryRecordRef(entry), writer, bincode_config())
    })
}

/// A whole log file that starts at a snapshot (a compaction or an installed snapshot):
/// header, identity, compaction point, hard state, then `entries` (which must follow
/// `compacted` without a gap). Returns the bytes and where each entry's frame sits.
///
/// The hard state's commit index is written as at most the last index the file holds
/// (`compacted.index` plus the entries): raft may hand the caller a commit index for
/// entries of the same Ready cycle that are appended only after this file is in place,
/// and a crash in between must leave a file that [`recover`] accepts (it refuses a
/// commit beyond the log, [`RecoveryError::CommitBeyondLog`]). A lower commit index is
/// always safe to persist: it is learned again from the leader.
pub fn encode_compacted_log(
    meta: &NodeMeta,
    compacted: LogPosition,
    hard_state: &HardState,
    entries: &[Entry],
) -> Result<(Vec<u8>, Vec<FrameLocation>), RecordTooLarge> {
    let last_index = entries.last().map_or(compacted.index, |entry| entry.index);
    let mut bytes = encode_file_header();
    encode_record(
        &Record::Meta {
            dbid: meta.dbid.clone(),
            node_id: meta.node_id,
            bootstrap_voters: meta.bootstrap_voters.clone(),
        },
        &mut bytes,
    )?;
    encode_record(
        &Record::Compacted {
            index: compacted.index,
            term: compacted.term,
        },
        &mut bytes,
    )?;
    encode_record(
        &Record::HardState {
            term: hard_state.term,
            vote: hard_state.vote,
            commit: hard_state.commit.min(last_index),
        },
        &mut bytes,
    )?;
    let mut frames = Vec::with_capacity(entries.len());
    for entry in entries {
        let offset = bytes.len();
        encode_entry(entry, &mut bytes)?;
        frames.push(FrameLocation {
            offset: offset as u64,
            len: u32::try_from(bytes.len() - offset).expect("a frame is below 4 GiB"),
        });
    }
    Ok((bytes, frames))
}

/// Serializes a borrowed raft entry exactly as `Record::Entry(LogEntry)`.
struct EntryRecordRef<'a>(&'a Entry);

impl Serialize for EntryRecordRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant(
            "Record",
            ENTRY_VARIANT_INDEX,
            "Entry",
            &LogEntryRef(self.0),
        )
    }
}

struct LogEntryRef<'a>(&'a Entry);

impl Serialize for LogEntryRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let entry = self.0;
        let mut fields = serializer.serialize_struct("LogEntry", 5)?;
        fields.serialize_field("index", &entry.index)?;
        fields.serialize_field("term", &entry.term)?;
        fields.serialize_field("entry_type", &entry.get_entry_type().value())?;
        fields.serialize_field("data", &AsByteString(&entry.data))?;
        fields.serialize_field("context", &AsByteString(&entry.context))?;
        fields.end()
    }
}

struct AsByteString<'a>(&'a [u8]);

impl Serialize for AsByteString<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Lets bincode write straight into the output buffer.
pub(crate) struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

pub(crate) fn header_check(len_bytes: [u8; 4]) -> u32 {
    crc32fast::hash(&len_bytes) ^ HEADER_CHECK_SALT
}

/// Reserves room for the frame header, lets `write_payload` append the
/// payload in place, then fills the header in.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    payload_hint: usize,
    max_payload_len: usize,
    write_payload: impl FnOnce(VecWriter<'_>) -> Result<(), bincode::error::EncodeError>,
) -> Result<(), RecordTooLarge> {
    let frame_start = out.len();
    out.reserve(FRAME_HEADER_LEN + payload_hint);
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    // Serializing these types into memory has no failure mode.
    write_payload(VecWriter(out)).expect("encoding a log record into memory cannot fail");

    let payload_start = frame_start + FRAME_HEADER_LEN;
    let payload_len = out.len() - payload_start;
    if payload_len > max_payload_len {
        out.truncate(frame_start);
        return Err(RecordTooLarge { payload_len });
    }
    let len_bytes = u32::try_from(payload_len)
        .expect("MAX_RECORD_BYTES fits in u32")
        .to_le_bytes();
    let payload_crc = crc32fast::hash(&out[payload_start..]);
    out[frame_start..frame_start + 4].copy_from_slice(&len_bytes);
    out[frame_start + 4..frame_start + 8].copy_from_slice(&header_check(len_bytes).to_le_bytes());
    out[frame_start + 8..payload_start].copy_from_slice(&payload_crc.to_le_bytes());
    Ok(())
}

/// Who this node is, from the [`Record::Meta`] record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    pub dbid: String,
    pub node_id: u64,
    pub bootstrap_voters: Vec<u64>,
}

/// The last [`Record::HardState`] of the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedHardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// A position in the raft log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

/// What a log file holds, after replaying every good record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// `None` only for a file with no records yet.
    pub meta: Option<NodeMeta>,
    pub hard_state: Option<SavedHardState>,
    /// The latest compaction point, if the log was ever compacted.
    pub compacted: Option<LogPosition>,
    /// Contiguous; the first is at [`Recovered::first_index`].
    pub entries: Vec<LogEntry>,
    /// Where each of `entries` sits in the file (same length and order), so the entry
    /// cache can drop entries and read them back later.
    pub entry_frames: Vec<FrameLocation>,
    /// `entries[..entries_without_data]` carry no data and no context (see
    /// [`recover_keeping`]); 0 from [`recover`].
    pub entries_without_data: usize,
    /// Bytes of the file that are good; the caller truncates the file to this.
    pub valid_len: usize,
    /// Bytes after `valid_len` that were dropped as a torn tail.
    pub torn_tail_bytes: usize,
    /// Records replayed.
    pub records: usize,
}

impl Recovered {
    /// Index of the first entry the log can hold: one past the compaction point.
    pub fn first_index(&self) -> u64 {
        self.compacted.map_or(1, |point| point.index + 1)
    }

    /// Index of the last entry, or the compaction point if there is none.
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.first_index() - 1, |entry| entry.index)
    }
}

fn data_bytes(entry: &LogEntry) -> usize {
    entry.data.len() + entry.context.len()
}

/// Where one frame sits in the log file: its first byte and its length, header included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameLocation {
    pub offset: u64,
    pub len: u32,
}

/// Checks and decodes one entry frame read back from the log file (`frame` is exactly
/// the frame: header and payload). The checks are those of recovery: header check,
/// payload length, payload checksum, a record that decodes completely, and it must be an
/// entry of a known type.
pub fn decode_entry_frame(frame: &[u8]) -> Result<LogEntry, String> {
    if frame.len() < FRAME_HEADER_LEN {
        return Err(format!(
            "frame of {} bytes is shorter than its header",
            frame.len()
        ));
    }
    let len_bytes: [u8; 4] = frame[..4].try_into().expect("4 bytes");
    if read_u32_le(frame, 4) != header_check(len_bytes) {
        return Err("frame header checksum mismatch".into());
    }
    let payload_len = u32::from_le_bytes(len_bytes) as usize;
    if payload_len != frame.len() - FRAME_HEADER_LEN {
        return Err(format!(
            "frame header says {payload_len} payload bytes, expected {}",
            frame.len() - FRAME_HEADER_LEN
        ));
    }
    let payload = &frame[FRAME_HEADER_LEN..];
    if crc32fast::hash(payload) != read_u32_le(frame, 8) {
        return Err("record checksum mismatch".into());
    }
    match decode_payload(payload)? {
        Record::Entry(entry) => {
            if EntryType::from_i32(entry.entry_type).is_none() {
                return Err(format!(
                    "entry {} has unknown entry type {}",
                    entry.index, entry.entry_type
                ));
            }
            Ok(entry)
        }
        other => Err(format!("expected an entry record, found {other:?}")),
    }
}

/// Why a log file was refused. Every variant carries the byte offset of the
/// problem: the start of the file header, or the start of the bad frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryError {
    BadMagic {
        offset: usize,
    },
    UnsupportedVersion {
        offset: usize,
        version: u32,
    },
    FrameHeaderChecksum {
        offset: usize,
    },
    FrameTooLarge {
        offset: usize,
        payload_len: usize,
    },
    PayloadChecksum {
        offset: usize,
    },
    UndecodableRecord {
        offset: usize,
        reason: String,
    },
    UnknownEntryType {
        offset: usize,
        index: u64,
        entry_type: i32,
    },
    MissingMeta {
        offset: usize,
    },
    MetaNotFirst {
        offset: usize,
    },
    DuplicateMeta {
        offset: usize,
    },
    IndexTooLarge {
        offset: usize,
        index: u64,
    },
    EntryIndexOutOfRange {
        offset: usize,
        index: u64,
        first_index: u64,
        last_index: u64,
    },
    EntryTermDecreased {
        offset: usize,
        index: u64,
        term: u64,
        previous_term: u64,
    },
    CommittedEntryOverwritten {
        offset: usize,
        index: u64,
        commit: u64,
    },
    HardStateTermDecreased {
        offset: usize,
        term: u64,
        previous_term: u64,
    },
    CommitDecreased {
        offset: usize,
        commit: u64,
        previous_commit: u64,
    },
    VoteChangedWithinTerm {
        offset: usize,
        term: u64,
        vote: u64,
        previous_vote: u64,
    },
    CompactionMovedBackwards {
        offset: usize,
        index: u64,
        previous_index: u64,
    },
    CompactionTermMismatch {
        offset: usize,
        index: u64,
        term: u64,
        log_term: u64,
    },
    CommitBeyondLog {
        offset: usize,
        commit: u64,
        last_index: u64,
    },
}

impl RecoveryError {
    /// Byte offset in the file where the problem was found.
    pub fn offset(&self) -> usize {
        use RecoveryError::*;
        match *self {
            BadMagic { offset }
            | UnsupportedVersion { offset, .. }
            | FrameHeaderChecksum { offset }
            | FrameTooLarge { offset, .. }
            | PayloadChecksum { offset }
            | UndecodableRecord { offset, .. }
            | UnknownEntryType { offset, .. }
            | MissingMeta { offset }
            | MetaNotFirst { offset }
            | DuplicateMeta { offset }
            | IndexTooLarge { offset, .. }
            | EntryIndexOutOfRange { offset, .. }
            | EntryTermDecreased { offset, .. }
            | CommittedEntryOverwritten { offset, .. }
            | HardStateTermDecreased { offset, .. }
            | CommitDecreased { offset, .. }
            | VoteChangedWithinTerm { offset, .. }
            | CompactionMovedBackwards { offset, .. }
            | CompactionTermMismatch { offset, .. }
            | CommitBeyondLog { offset, .. } => offset,
        }
    }

    fn problem(&self) -> String {
        use RecoveryError::*;
        match self {
            BadMagic { .. } => "bad magic, this is not a redisraft log file".into(),
            UnsupportedVersion { version, .. } => format!(
                "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            ),
            FrameHeaderChecksum { .. } => "frame header checksum mismatch".into(),
            FrameTooLarge { payload_len, .. } => format!(
                "frame claims a payload of {payload_len} bytes, above the limit of {MAX_RECORD_BYTES}"
            ),
            PayloadChecksum { .. } => {
                "record checksum mismatch, and more data follows the record".into()
            }
            UndecodableRecord { reason, .. } => format!("record does not decode: {reason}"),
            UnknownEntryType { index, entry_type, .. } => {
                format!("entry {index} has unknown entry type {entry_type}")
            }
            MissingMeta { .. } => "first record is not the Meta record".into(),
            MetaNotFirst { .. } => "Meta record after other records".into(),
            DuplicateMeta { .. } => "second Meta record".into(),
            IndexTooLarge { index, .. } => {
                format!("index {index} is above the limit of {MAX_LOG_INDEX}")
            }
            EntryIndexOutOfRange { index, first_index, last_index, .. } => format!(
                "entry index {index} outside the allowed range {first_index}..={} (last index {last_index})",
                last_index + 1
            ),
            EntryTermDecreased { index, term, previous_term, .. } => format!(
                "entry {index} has term {term}, lower than the previous entry's term {previous_term}"
            ),
            CommittedEntryOverwritten { index, commit, .. } => format!(
                "entry {index} replaces a committed entry with a different term (commit index {commit})"
            ),
            HardStateTermDecreased { term, previous_term, .. } => {
                format!("hard state term went down from {previous_term} to {term}")
            }
            CommitDecreased { commit, previous_commit, .. } => {
                format!("hard state commit went down from {previous_commit} to {commit}")
            }
            VoteChangedWithinTerm { term, vote, previous_vote, .. } => format!(
                "vote changed from {previous_vote} to {vote} within term {term}"
            ),
            CompactionMovedBackwards { index, previous_index, .. } => format!(
                "compaction point moved backwards from {previous_index} to {index}"
            ),
            CompactionTermMismatch { index, term, log_term, .. } => format!(
                "compaction point {index} has term {term} but the entry there has term {log_term}"
            ),
            CommitBeyondLog { commit, last_index, .. } => format!(
                "hard state commit index {commit} is beyond the last log index {last_index}"
            ),
        }
    }
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "log file corrupt at byte {}: {}; refusing to start",
            self.offset(),
            self.problem()
        )
    }
}

impl std::error::Error for RecoveryError {}

/// Replays a whole log file. See the module documentation for the rules.
pub fn recover(bytes: &[u8]) -> Result<Recovered, RecoveryError> {
    recover_keeping(bytes, usize::MAX)
}

/// [`recover`], keeping the data and context of only the newest entries whose sizes add
/// up to at most `keep_data_bytes`: the older ones come back with empty data and context
/// ([`Recovered::entries_without_data`] of them, at the front), to be read from the file
/// when needed. Bounds the memory of a restart by the entry cache, not the log size.
pub fn recover_keeping(bytes: &[u8], keep_data_bytes: usize) -> Result<Recovered, RecoveryError> {
    if bytes.len() < FILE_HEADER_LEN {
        let expected = encode_file_header();
        let is_partial_header = expected.starts_with(bytes) || is_all_zero(bytes);
        if !is_partial_header {
            return Err(RecoveryError::BadMagic { offset: 0 });
        }
        return Ok(Recovered {
            torn_tail_bytes: bytes.len(),
            ..Recovered::default()
        });
    }
    if bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
        return Err(RecoveryError::BadMagic { offset: 0 });
    }
    let version = read_u32_le(bytes, FILE_MAGIC.len());
    if version != FORMAT_VERSION {
        return Err(RecoveryError::UnsupportedVersion {
            offset: FILE_MAGIC.len(),
            version,
        });
    }

    let mut replay = Replay {
        keep_data_bytes,
        ..Replay::default()
    };
    let mut position = FILE_HEADER_LEN;
    while let FrameRead::Record { payload, frame_len } = read_frame(bytes, position)? {
        let record =
            decode_payload(payload).map_err(|reason| RecoveryError::UndecodableRecord {
                offset: position,
                reason,
            })?;
        let location = FrameLocation {
            offset: position as u64,
            len: u32::try_from(frame_len).expect("frames are below 4 GiB"),
        };
        replay.apply(record, location)?;
        position += frame_len;
    }
    replay.finish(position, bytes.len())
}

enum FrameRead<'a> {
    Record {
        payload: &'a [u8],
        frame_len: usize,
    },
    /// Clean end of file, or a torn tail starting at the frame's position.
    Stop,
}

fn read_frame(bytes: &[u8], position: usize) -> Result<FrameRead<'_>, RecoveryError> {
    let rest = &bytes[position..];
    if rest.len() < FRAME_HEADER_LEN {
        return Ok(FrameRead::Stop);
    }
    let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
    if read_u32_le(rest, 4) != header_check(len_bytes) {
        // A torn tail may end in a few bytes of a header and then zeros (the file grew
        // but the data never reached the disk).
        if is_all_zero(&rest[FRAME_HEADER_LEN..]) {
            return Ok(FrameRead::Stop);
        }
        return Err(RecoveryError::FrameHeaderChecksum { offset: position });
    }
    let payload_len = u32::from_le_bytes(len_bytes) as usize;
    if payload_len > MAX_RECORD_BYTES {
        return Err(RecoveryError::FrameTooLarge {
            offset: position,
            payload_len,
        });
    }
    let frame_len = FRAME_HEADER_LEN + payload_len;
    if frame_len > rest.len() {
        return Ok(FrameRead::Stop);
    }
    let payload = &rest[FRAME_HEADER_LEN..frame_len];
    if crc32fast::hash(payload) != read_u32_le(rest, 8) {
        if is_all_zero(&rest[frame_len..]) {
            return Ok(FrameRead::Stop);
        }
        return Err(RecoveryError::PayloadChecksum { offset: position });
    }
    Ok(FrameRead::Record { payload, frame_len })
}

fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let (record, used_len) =
        bincode::serde::decode_from_slice::<Record, _>(payload, bincode_config())
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

fn is_all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

/// The state built while replaying records, with the semantic checks.
#[derive(Default)]
struct Replay {
    meta: Option<NodeMeta>,
    hard_state: Option<SavedHardState>,
    hard_state_offset: usize,
    compacted: Option<LogPosition>,
    entries: Vec<LogEntry>,
    /// Parallel to `entries`.
    entry_frames: Vec<FrameLocation>,
    records: usize,
    /// See [`recover_keeping`].
    keep_data_bytes: usize,
    /// `entries[..stripped]` had their data and context dropped.
    stripped: usize,
    /// Data and context bytes of `entries[stripped..]`.
    kept_data_bytes: usize,
}

impl Replay {
    fn first_index(&self) -> u64 {
        self.compacted.map_or(1, |point| point.index + 1)
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.first_index() - 1, |entry| entry.index)
    }

    /// Term at `index`, for `first_index - 1 <= index <= last_index`.
    fn term_at(&self, index: u64) -> u64 {
        let first_index = self.first_index();
        if index + 1 == first_index {
            self.compacted.map_or(0, |point| point.term)
        } else {
            self.entries[(index - first_index) as usize].term
        }
    }

    fn apply(&mut self, record: Record, location: FrameLocation) -> Result<(), RecoveryError> {
        let offset = location.offset as usize;
        let index = match &record {
            Record::Entry(entry) => entry.index,
            Record::Compacted { index, .. } => *index,
            Record::Meta { .. } | Record::HardState { .. } => 0,
        };
        if index > MAX_LOG_INDEX {
            return Err(RecoveryError::IndexTooLarge { offset, index });
        }
        match record {
            Record::Meta {
                dbid,
                node_id,
                bootstrap_voters,
            } => {
                if self.meta.is_some() {
                    return Err(RecoveryError::DuplicateMeta { offset });
                }
                if self.records > 0 {
                    return Err(RecoveryError::MetaNotFirst { offset });
                }
                self.meta = Some(NodeMeta {
                    dbid,
                    node_id,
                    bootstrap_voters,
                });
            }
            _ if self.meta.is_none() => return Err(RecoveryError::MissingMeta { offset }),
            Record::Entry(entry) => self.apply_entry(entry, location)?,
            Record::HardState { term, vote, commit } => {
                self.apply_hard_state(SavedHardState { term, vote, commit }, offset)?
            }
            Record::Compacted { index, term } => {
                self.apply_compaction(LogPosition { index, term }, offset)?
            }
        }
        self.records += 1;
        Ok(())
    }

    fn apply_entry(
        &mut self,
        entry: LogEntry,
        location: FrameLocation,
    ) -> Result<(), RecoveryError> {
        let offset = location.offset as usize;
        if EntryType::from_i32(entry.entry_type).is_none() {
            return Err(RecoveryError::UnknownEntryType {
                offset,
                index: entry.index,
                entry_type: entry.entry_type,
            });
        }
        let (first_index, last_index) = (self.first_index(), self.last_index());
        if entry.index < first_index || entry.index > last_index + 1 {
            return Err(RecoveryError::EntryIndexOutOfRange {
                offset,
                index: entry.index,
                first_index,
                last_index,
            });
        }
        if entry.index <= last_index {
            let commit = self.hard_state.map_or(0, |state| state.commit);
            if entry.index <= commit && self.term_at(entry.index) != entry.term {
                return Err(RecoveryError::CommittedEntryOverwritten {
                    offset,
                    index: entry.index,
                    commit,
                });
            }
            self.drop_entries_from((entry.index - first_index) as usize);
        }
        let previous_term = self.term_at(entry.index - 1);
        if entry.term < previous_term {
            return Err(RecoveryError::EntryTermDecreased {
                offset,
                index: entry.index,
                term: entry.term,
                previous_term,
            });
        }
        self.kept_data_bytes += data_bytes(&entry);
        self.entries.push(entry);
        self.entry_frames.push(location);
        while self.kept_data_bytes > self.keep_data_bytes && self.stripped < self.entries.len() {
            let oldest = &mut self.entries[self.stripped];
            self.kept_data_bytes -= data_bytes(oldest);
            oldest.data = Vec::new();
            oldest.context = Vec::new();
            self.stripped += 1;
        }
        Ok(())
    }

    /// Drops `entries[kept..]`.
    fn drop_entries_from(&mut self, kept: usize) {
        let dropped_data: usize = self.entries[self.stripped.max(kept)..]
            .iter()
            .map(data_bytes)
            .sum();
        self.kept_data_bytes -= dropped_data;
        self.stripped = self.stripped.min(kept);
        self.entries.truncate(kept);
        self.entry_frames.truncate(kept);
    }

    fn apply_hard_state(
        &mut self,
        state: SavedHardState,
        offset: usize,
    ) -> Result<(), RecoveryError> {
        if let Some(previous) = self.hard_state {
            if state.term < previous.term {
                return Err(RecoveryError::HardStateTermDecreased {
                    offset,
                    term: state.term,
                    previous_term: previous.term,
                });
            }
            if state.commit < previous.commit {
                return Err(RecoveryError::CommitDecreased {
                    offset,
                    commit: state.commit,
                    previous_commit: previous.commit,
                });
            }
            let vote_replaced = previous.vote != 0 && state.vote != previous.vote;
            if state.term == previous.term && vote_replaced {
                return Err(RecoveryError::VoteChangedWithinTerm {
                    offset,
                    term: state.term,
                    vote: state.vote,
                    previous_vote: previous.vote,
                });
            }
        }
        self.hard_state = Some(state);
        self.hard_state_offset = offset;
        Ok(())
    }

    fn apply_compaction(&mut self, point: LogPosition, offset: usize) -> Result<(), RecoveryError> {
        let (first_index, last_index) = (self.first_index(), self.last_index());
        if point.index + 1 < first_index {
            return Err(RecoveryError::CompactionMovedBackwards {
                offset,
                index: point.index,
                previous_index: first_index - 1,
            });
        }
        if point.index <= last_index {
            let log_term = self.term_at(point.index);
            if log_term != point.term {
                return Err(RecoveryError::CompactionTermMismatch {
                    offset,
                    index: point.index,
                    term: point.term,
                    log_term,
                });
            }
            let dropped = (point.index + 1 - first_index) as usize;
            let dropped_data: usize = self.entries[self.stripped.min(dropped)..dropped]
                .iter()
                .map(data_bytes)
                .sum();
            self.kept_data_bytes -= dropped_data;
            self.stripped = self.stripped.saturating_sub(dropped);
            self.entries.drain(..dropped);
            self.entry_frames.drain(..dropped);
        } else {
            // A snapshot past our log replaced all of it.
            self.drop_entries_from(0);
        }
        self.compacted = Some(point);
        Ok(())
    }

    fn finish(self, valid_len: usize, file_len: usize) -> Result<Recovered, RecoveryError> {
        let last_index = self.last_index();
        if let Some(state) = self.hard_state {
            if state.commit > last_index {
                return Err(RecoveryError::CommitBeyondLog {
                    offset: self.hard_state_offset,
                    commit: state.commit,
                    last_index,
                });
            }
        }
        Ok(Recovered {
            meta: self.meta,
            hard_state: self.hard_state,
            compacted: self.compacted,
            entries: self.entries,
            entry_frames: self.entry_frames,
            entries_without_data: self.stripped,
            valid_len,
            torn_tail_bytes: file_len - valid_len,
            records: self.records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> LogEntry {
        LogEntry {
            index,
            term,
            entry_type: EntryType::EntryNormal.value(),
            data: data.to_vec(),
            context: Vec::new(),
        }
    }

    fn meta_record() -> Record {
        Record::Meta {
            dbid: "0123456789abcdef0123456789abcdef".into(),
            node_id: 7,
            bootstrap_voters: vec![7, 8, 9],
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> Record {
        Record::HardState { term, vote, commit }
    }

    /// A file and the offset where each frame ends.
    struct File {
        bytes: Vec<u8>,
        frame_ends: Vec<usize>,
    }

    fn file_of(records: &[Record]) -> File {
        let mut bytes = encode_file_header();
        let mut frame_ends = Vec::new();
        for record in records {
            encode_record(record, &mut bytes).unwrap();
            frame_ends.push(bytes.len());
        }
        File { bytes, frame_ends }
    }

    fn recover_records(records: &[Record]) -> Result<Recovered, RecoveryError> {
        recover(&file_of(records).bytes)
    }

    /// Deterministic bytes of varied length and content (no rand dependency).
    fn varied_data(seed: u64) -> Vec<u8> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (seed * 37 % 300) as usize;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 56) as u8
            })
            .collect()
    }

    /// Header + Meta + 12 entries with varied data and entry types + 3 hard states.
    fn sample_records() -> (Vec<Record>, Vec<LogEntry>, Vec<SavedHardState>) {
        let mut records = vec![meta_record()];
        let mut entries = Vec::new();
        let mut hard_states = Vec::new();
        for index in 1..=12u64 {
            let term = 1 + index / 5;
            let entry = LogEntry {
                index,
                term,
                entry_type: (index % 3) as i32,
                data: varied_data(index),
                context: if index % 4 == 0 {
                    vec![index as u8; 5]
                } else {
                    Vec::new()
                },
            };
            entries.push(entry.clone());
            records.push(Record::Entry(entry));
            if index % 5 == 0 || index == 12 {
                let state = SavedHardState {
                    term,
                    vote: 1,
                    commit: index - 1,
                };
                hard_states.push(state);
                records.push(hard_state(state.term, state.vote, state.commit));
            }
        }
        (records, entries, hard_states)
    }

    #[test]
    fn file_header_is_magic_and_version() {
        let header = encode_file_header();
        assert_eq!(header.len(), FILE_HEADER_LEN);
        assert_eq!(&header[..8], b"RRAFTLOG");
        assert_eq!(&header[8..], &1u32.to_le_bytes());
    }

    #[test]
    fn every_record_kind_round_trips() {
        let records = vec![
            meta_record(),
            Record::Entry(entry(1, 1, b"")),
            Record::Entry(LogEntry {
                index: 2,
                term: 2,
                entry_type: EntryType::EntryConfChangeV2.value(),
                data: vec![0, 1, 2, 255],
                context: b"ctx".to_vec(),
            }),
            hard_state(2, 7, 2),
            Record::Compacted { index: 1, term: 1 },
        ];
        for record in &records {
            let mut frame = Vec::new();
            encode_record(record, &mut frame).unwrap();
            assert_eq!(&decode_payload(&frame[FRAME_HEADER_LEN..]).unwrap(), record);
        }

        let recovered = recover_records(&records).unwrap();
        assert_eq!(
            recovered.meta,
            Some(NodeMeta {
                dbid: "0123456789abcdef0123456789abcdef".into(),
                node_id: 7,
                bootstrap_voters: vec![7, 8, 9],
            })
        );
        assert_eq!(
            recovered.hard_state,
            Some(SavedHardState {
                term: 2,
                vote: 7,
                commit: 2
            })
        );
        assert_eq!(recovered.compacted, Some(LogPosition { index: 1, term: 1 }));
        let Record::Entry(second) = &records[2] else {
            unreachable!()
        };
        assert_eq!(recovered.entries, vec![second.clone()]);
        assert_eq!(recovered.records, records.len());
        assert_eq!(recovered.valid_len, file_of(&records).bytes.len());
        assert_eq!(recovered.torn_tail_bytes, 0);
        assert_eq!((recovered.first_index(), recovered.last_index()), (2, 2));
    }

    #[test]
    fn raft_entry_conversion_round_trips_every_entry_type() {
        for entry_type in EntryType::values() {
            let mut raft_entry = Entry::default();
            raft_entry.set_entry_type(*entry_type);
            raft_entry.index = 42;
            raft_entry.term = 3;
            raft_entry.data = b"SET k v".to_vec().into();
            raft_entry.context = b"req-17".to_vec().into();

            let log_entry = LogEntry::from(&raft_entry);
            assert_eq!(log_entry.entry_type, entry_type.value());
            assert_eq!(log_entry.to_raft(), raft_entry);
            assert_eq!(log_entry.into_raft(), raft_entry);
        }
    }

    #[test]
    #[should_panic(expected = "unknown entry type 9")]
    fn to_raft_refuses_an_unknown_entry_type() {
        let mut log_entry = entry(1, 1, b"x");
        log_entry.entry_type = 9;
        log_entry.to_raft();
    }

    #[test]
    fn encode_entry_matches_encode_record() {
        for (_, log_entry) in (0..6).zip(sample_records().1) {
            let raft_entry = log_entry.to_raft();
            let mut fast = vec![0xAA]; // appends after existing bytes
            encode_entry(&raft_entry, &mut fast).unwrap();
            let mut reference = vec![0xAA];
            encode_record(&Record::Entry(LogEntry::from(&raft_entry)), &mut reference).unwrap();
            assert_eq!(fast, reference);
        }
    }

    #[test]
    fn encoding_refuses_a_payload_above_the_limit_and_leaves_output_untouched() {
        let mut out = b"existing".to_vec();
        let record = Record::Entry(entry(1, 1, &[7; 100]));
        let result = encode_frame(&mut out, 0, 64, |writer| {
            bincode::serde::encode_into_writer(&record, writer, bincode_config())
        });
        assert!(matches!(result, Err(RecordTooLarge { payload_len }) if payload_len > 100));
        assert_eq!(out, b"existing");
    }

    #[test]
    fn rewriting_an_index_drops_the_suffix() {
        let recovered = recover_records(&[
            meta_record(),
            Record::Entry(entry(1, 1, b"a")),
            Record::Entry(entry(2, 1, b"b")),
            Record::Entry(entry(3, 1, b"c")),
            Record::Entry(entry(4, 1, b"d")),
            Record::Entry(entry(3, 2, b"C")),
        ])
        .unwrap();
        assert_eq!(
            recovered.entries,
            vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"C")]
        );

        // Rewriting the very first entry empties the log before appending.
        let recovered = recover_records(&[
            meta_record(),
            Record::Entry(entry(1, 1, b"a")),
            Record::Entry(entry(2, 1, b"b")),
            Record::Entry(entry(1, 3, b"z")),
        ])
        .unwrap();
        assert_eq!(recovered.entries, vec![entry(1, 3, b"z")]);
    }

    #[test]
    fn compaction_drops_the_prefix() {
        let mut records = vec![meta_record()];
        records.extend((1..=10).map(|index| Record::Entry(entry(index, index, b"x"))));
        records.push(hard_state(10, 1, 6));
        records.push(Record::Compacted { index: 4, term: 4 });
        let recovered = recover_records(&records).unwrap();
        assert_eq!(recovered.compacted, Some(LogPosition { index: 4, term: 4 }));
        assert_eq!(recovered.first_index(), 5);
        assert_eq!(recovered.last_index(), 10);
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (5..=10).collect::<Vec<_>>());

        // The same point again is harmless; the whole log can be compacted.
        records.push(Record::Compacted { index: 4, term: 4 });
        records.push(Record::Compacted {
            index: 10,
            term: 10,
        });
        let recovered = recover_records(&records).unwrap();
        assert!(recovered.entries.is_empty());
        assert_eq!((recovered.first_index(), recovered.last_index()), (11, 10));
    }

    #[test]
    fn compaction_past_the_end_clears_the_log_and_moves_first_index() {
        let mut records = vec![
            meta_record(),
            Record::Entry(entry(1, 1, b"a")),
            Record::Entry(entry(2, 1, b"b")),
            Record::Compacted { index: 20, term: 5 },
            hard_state(5, 0, 20),
            Record::Entry(entry(21, 5, b"c")),
        ];
        let recovered = recover_records(&records).unwrap();
        assert_eq!(recovered.entries, vec![entry(21, 5, b"c")]);
        assert_eq!((recovered.first_index(), recovered.last_index()), (21, 21));

        // Entries at or below the compaction point are refused.
        records.push(Record::Entry(entry(20, 5, b"old")));
        assert!(matches!(
            recover_records(&records),
            Err(RecoveryError::EntryIndexOutOfRange {
                index: 20,
                first_index: 21,
                last_index: 21,
                ..
            })
        ));
    }

    #[test]
    fn commit_may_point_into_the_compacted_prefix() {
        let recovered = recover_records(&[
            meta_record(),
            Record::Compacted { index: 50, term: 3 },
            hard_state(3, 1, 50),
        ])
        .unwrap();
        assert_eq!(recovered.last_index(), 50);
        assert!(recovered.entries.is_empty());
    }

    #[test]
    fn semantic_errors_name_the_problem_and_the_frame() {
        type Case = (Vec<Record>, fn(&RecoveryError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![Record::Entry(entry(1, 1, b""))], |e| {
                matches!(e, RecoveryError::MissingMeta { .. })
            }),
            (vec![meta_record(), meta_record()], |e| {
                matches!(e, RecoveryError::DuplicateMeta { .. })
            }),
            (vec![meta_record(), Record::Entry(entry(2, 1, b""))], |e| {
                matches!(e, RecoveryError::EntryIndexOutOfRange { index: 2, .. })
            }),
            (
                vec![meta_record(), Record::Entry(entry(u64::MAX, 1, b""))],
                |e| {
                    matches!(
                        e,
                        RecoveryError::IndexTooLarge {
                            index: u64::MAX,
                            ..
                        }
                    )
                },
            ),
            (
                vec![
                    meta_record(),
                    Record::Compacted {
                        index: u64::MAX,
                        term: 1,
                    },
                ],
                |e| matches!(e, RecoveryError::IndexTooLarge { .. }),
            ),
            (vec![meta_record(), Record::Entry(entry(0, 1, b""))], |e| {
                matches!(e, RecoveryError::EntryIndexOutOfRange { index: 0, .. })
            }),
            (
                vec![
                    meta_record(),
                    Record::Entry(entry(1, 3, b"")),
                    Record::Entry(entry(2, 2, b"")),
                ],
                |e| {
                    matches!(
                        e,
                        RecoveryError::EntryTermDecreased {
                            index: 2,
                            term: 2,
                            previous_term: 3,
                            ..
                        }
                    )
                },
            ),
            (
                vec![
                    meta_record(),
                    Record::Compacted { index: 5, term: 4 },
                    Record::Entry(entry(6, 3, b"")),
                ],
                |e| {
                    matches!(
                        e,
                        RecoveryError::EntryTermDecreased {
                            previous_term: 4,
                            ..
                        }
                    )
                },
            ),
            (
                vec![
                    meta_record(),
                    Record::Entry(LogEntry {
                        entry_type: 3,
                        ..entry(1, 1, b"")
                    }),
                ],
                |e| matches!(e, RecoveryError::UnknownEntryType { entry_type: 3, .. }),
            ),
            (
                vec![
                    meta_record(),
                    Record::Entry(entry(1, 1, b"")),
                    Record::Entry(entry(2, 1, b"")),
                    hard_state(1, 1, 2),
                    Record::Entry(entry(2, 2, b"")),
                ],
                |e| {
                    matches!(
                        e,
                        RecoveryError::CommittedEntryOverwritten {
                            index: 2,
                            commit: 2,
                            ..
                        }
                    )
                },
            ),
            (vec![meta_record(), hard_state(1, 0, 1)], |e| {
                matches!(
                    e,
                    RecoveryError::CommitBeyondLog {
                        commit: 1,
                        last_index: 0,
                        ..
                    }
                )
            }),
            (
                vec![meta_record(), hard_state(3, 0, 0), hard_state(2, 0, 0)],
                |e| matches!(e, RecoveryError::HardStateTermDecreased { .. }),
            ),
            (
                vec![
                    meta_record(),
                    Record::Entry(entry(1, 1, b"")),
                    hard_state(1, 0, 1),
                    hard_state(1, 0, 0),
                ],
                |e| matches!(e, RecoveryError::CommitDecreased { .. }),
            ),
            (
                vec![meta_record(), hard_state(2, 1, 0), hard_state(2, 3, 0)],
                |e| {
                    matches!(
                        e,
                        RecoveryError::VoteChangedWithinTerm {
                            previous_vote: 1,
                            vote: 3,
                            ..
                        }
                    )
                },
            ),
            (
                vec![
                    meta_record(),
                    Record::Compacted { index: 5, term: 1 },
                    Record::Compacted { index: 4, term: 1 },
                ],
                |e| {
                    matches!(
                        e,
                        RecoveryError::CompactionMovedBackwards {
                            index: 4,
                            previous_index: 5,
                            ..
                        }
                    )
                },
            ),
            (
                vec![
                    meta_record(),
                    Record::Entry(entry(1, 1, b"")),
                    Record::Entry(entry(2, 2, b"")),
                    Record::Compacted { index: 2, term: 1 },
                ],
                |e| matches!(e, RecoveryError::CompactionTermMismatch { log_term: 2, .. }),
            ),
        ];
        for (records, is_expected) in cases {
            let file = file_of(&records);
            let error = recover(&file.bytes).unwrap_err();
            assert!(is_expected(&error), "{records:?} gave {error:?}");
            // Every semantic problem except the end-of-log check is reported
            // at the start of the last frame; CommitBeyondLog at its hard state.
            let last_frame_start = match file.frame_ends.len() {
                1 => FILE_HEADER_LEN,
                n => file.frame_ends[n - 2],
            };
            assert_eq!(error.offset(), last_frame_start, "{error}");
        }
    }

    #[test]
    fn these_hard_state_changes_are_legal() {
        let recovered = recover_records(&[
            meta_record(),
            hard_state(1, 0, 0),
            hard_state(1, 2, 0), // first vote in the term
            hard_state(1, 2, 0),
            hard_state(2, 0, 0), // new term, no vote yet
            hard_state(2, 3, 0),
        ])
        .unwrap();
        assert_eq!(
            recovered.hard_state,
            Some(SavedHardState {
                term: 2,
                vote: 3,
                commit: 0
            })
        );
    }

    #[test]
    fn overwriting_a_committed_index_with_the_same_term_is_allowed() {
        let recovered = recover_records(&[
            meta_record(),
            Record::Entry(entry(1, 1, b"a")),
            Record::Entry(entry(2, 1, b"b")),
            hard_state(1, 1, 1),
            Record::Entry(entry(1, 1, b"a")),
            // A lower term than the entry it replaces is legal above commit
            // (raft paper, figure 8).
            Record::Entry(entry(2, 1, b"b")),
            Record::Entry(entry(3, 3, b"c")),
            Record::Entry(entry(3, 2, b"c'")),
        ])
        .unwrap();
        assert_eq!(
            recovered.entries,
            vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c'")]
        );
    }

    #[test]
    fn empty_input_is_a_new_file() {
        assert_eq!(recover(&[]).unwrap(), Recovered::default());
        let header_only = recover(&encode_file_header()).unwrap();
        assert_eq!(header_only.valid_len, FILE_HEADER_LEN);
        assert_eq!(header_only.records, 0);
        assert_eq!(header_only.meta, None);
    }

    #[test]
    fn bad_file_headers() {
        let mut bytes = file_of(&[meta_record()]).bytes;
        bytes[0] = b'X';
        assert_eq!(recover(&bytes), Err(RecoveryError::BadMagic { offset: 0 }));

        let mut bytes = file_of(&[meta_record()]).bytes;
        bytes[8] = 2;
        assert_eq!(
            recover(&bytes),
            Err(RecoveryError::UnsupportedVersion {
                offset: 8,
                version: 2
            })
        );

        // A short file is a torn header only if it could be one.
        assert_eq!(recover(b"RRAF").unwrap().torn_tail_bytes, 4);
        assert_eq!(recover(&[0; 5]).unwrap().valid_len, 0);
        assert_eq!(
            recover(b"hello"),
            Err(RecoveryError::BadMagic { offset: 0 })
        );
    }

    #[test]
    fn truncation_at_every_length_recovers_the_complete_frames() {
        let (records, entries, hard_states) = sample_records();
        let file = file_of(&records);
        for len in 0..=file.bytes.len() {
            let recovered = recover(&file.bytes[..len])
                .unwrap_or_else(|error| panic!("truncated to {len}: {error}"));
            let complete_frames = file.frame_ends.iter().filter(|&&end| end <= len).count();
            let expected_valid_len = match complete_frames {
                0 if len < FILE_HEADER_LEN => 0,
                0 => FILE_HEADER_LEN,
                n => file.frame_ends[n - 1],
            };
            assert_eq!(recovered.valid_len, expected_valid_len, "len {len}");
            assert_eq!(recovered.torn_tail_bytes, len - expected_valid_len);
            assert_eq!(recovered.records, complete_frames);
            assert!(entries.starts_with(&recovered.entries), "len {len}");
            let surviving_entries = records[..complete_frames]
                .iter()
                .filter(|record| matches!(record, Record::Entry(_)))
                .count();
            assert_eq!(recovered.entries.len(), surviving_entries);
            if let Some(state) = recovered.hard_state {
                assert!(hard_states.contains(&state));
            }
        }
    }

    #[test]
    fn flipping_any_byte_is_detected_or_truncated_to_an_earlier_prefix() {
        let (records, entries, hard_states) = sample_records();
        let file = file_of(&records);
        let (mut refused, mut truncated) = (0, 0);
        for mask in [0xFF, 0x01] {
            for position in 0..file.bytes.len() {
                let mut bytes = file.bytes.clone();
                bytes[position] ^= mask;
                match recover(&bytes) {
                    Err(_) => refused += 1,
                    Ok(recovered) => {
                        truncated += 1;
                        assert!(
                            recovered.valid_len <= position,
                            "flip at {position} kept {} bytes",
                            recovered.valid_len
                        );
                        assert!(
                            entries.starts_with(&recovered.entries),
                            "flip at {position}"
                        );
                        if let Some(state) = recovered.hard_state {
                            assert!(hard_states.contains(&state), "flip at {position}");
                        }
                        assert_eq!(recovered.meta.is_some(), recovered.records > 0);
                    }
                }
            }
        }
        // Only flips inside the last frame may be taken for a torn write.
        let last_frame_len = file.bytes.len() - file.frame_ends[file.frame_ends.len() - 2];
        assert!(truncated <= 2 * last_frame_len, "{truncated} truncated");
        assert!(refused > 0);
    }

    #[test]
    fn zero_filled_tails_are_torn() {
        let (records, entries, _) = sample_records();
        let file = file_of(&records);
        for zeros in [1, 11, 12, 13, 4096] {
            let mut bytes = file.bytes.clone();
            bytes.resize(bytes.len() + zeros, 0);
            let recovered = recover(&bytes).unwrap();
            assert_eq!(recovered.valid_len, file.bytes.len());
            assert_eq!(recovered.torn_tail_bytes, zeros);
            assert_eq!(recovered.entries, entries);
        }
    }

    #[test]
    fn a_half_written_frame_followed_by_zeros_is_torn() {
        let (records, entries, _) = sample_records();
        let file = file_of(&records);
        let mut bytes = file.bytes.clone();
        let frame_start = bytes.len();
        encode_record(&Record::Entry(entry(13, 4, &[9; 100])), &mut bytes).unwrap();
        // The second half of the payload never reached the disk, and the
        // file system extended the file with zeros beyond it.
        bytes.truncate(frame_start + FRAME_HEADER_LEN + 50);
        bytes.resize(frame_start + 8192, 0);
        let recovered = recover(&bytes).unwrap();
        assert_eq!(recovered.valid_len, frame_start);
        assert_eq!(recovered.entries, entries);
    }

    #[test]
    fn a_bad_frame_followed_by_good_data_is_corruption() {
        let (records, _, _) = sample_records();
        let file = file_of(&records);
        let mut bytes = file.bytes.clone();
        let bad_frame_start = bytes.len();
        encode_record(&Record::Entry(entry(13, 4, b"damaged")), &mut bytes).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        encode_record(&Record::Entry(entry(14, 4, b"fine")), &mut bytes).unwrap();
        let error = recover(&bytes).unwrap_err();
        assert_eq!(
            error,
            RecoveryError::PayloadChecksum {
                offset: bad_frame_start
            }
        );

        // Non-zero garbage appended after a valid file.
        let mut bytes = file.bytes.clone();
        bytes.extend_from_slice(b"this is not a frame header at all");
        assert_eq!(
            recover(&bytes),
            Err(RecoveryError::FrameHeaderChecksum {
                offset: file.bytes.len()
            })
        );
    }

    #[test]
    fn an_all_zero_frame_header_does_not_validate() {
        assert_ne!(header_check([0; 4]), 0);
        let mut bytes = encode_file_header();
        bytes.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        bytes.push(1);
        assert_eq!(
            recover(&bytes),
            Err(RecoveryError::FrameHeaderChecksum {
                offset: FILE_HEADER_LEN
            })
        );
    }

    fn frame_header(payload_len: u32, payload_crc: u32) -> Vec<u8> {
        let len_bytes = payload_len.to_le_bytes();
        let mut header = len_bytes.to_vec();
        header.extend_from_slice(&header_check(len_bytes).to_le_bytes());
        header.extend_from_slice(&payload_crc.to_le_bytes());
        header
    }

    #[test]
    fn oversized_lengths_never_drive_an_allocation() {
        let valid = file_of(&[meta_record()]).bytes;

        // A checksummed length above the limit: corruption, nothing read.
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&frame_header(u32::MAX, 0));
        bytes.extend_from_slice(&[1; 64]);
        assert_eq!(
            recover(&bytes),
            Err(RecoveryError::FrameTooLarge {
                offset: valid.len(),
                payload_len: u32::MAX as usize
            })
        );

        // A legal length that runs past the end of the file: a torn tail.
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&frame_header(MAX_RECORD_BYTES as u32, 0));
        bytes.extend_from_slice(&[1; 64]);
        let recovered = recover(&bytes).unwrap();
        assert_eq!(recovered.valid_len, valid.len());

        // A checksummed payload whose byte string claims 2^60 bytes.
        let mut payload = Vec::new();
        bincode::serde::encode_into_std_write(
            Record::Entry(entry(1, 1, b"")),
            &mut payload,
            bincode_config(),
        )
        .unwrap();
        let data_len_at = payload.len() - 2; // data and context are both empty
        payload.truncate(data_len_at);
        bincode::encode_into_std_write(1u64 << 60, &mut payload, bincode_config()).unwrap();
        payload.push(0);
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&frame_header(
            payload.len() as u32,
            crc32fast::hash(&payload),
        ));
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            recover(&bytes),
            Err(RecoveryError::UndecodableRecord { .. })
        ));

        // Same for the dbid string of a Meta record.
        let mut payload = Vec::new();
        bincode::encode_into_std_write(0u32, &mut payload, bincode_config()).unwrap(); // Meta
        bincode::encode_into_std_write(1u64 << 60, &mut payload, bincode_config()).unwrap();
        let mut bytes = encode_file_header();
        bytes.extend_from_slice(&frame_header(
            payload.len() as u32,
            crc32fast::hash(&payload),
        ));
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            recover(&bytes),
            Err(RecoveryError::UndecodableRecord { .. })
        ));
    }

    #[test]
    fn trailing_bytes_inside_a_payload_are_refused() {
        let mut payload = Vec::new();
        bincode::serde::encode_into_std_write(meta_record(), &mut payload, bincode_config())
            .unwrap();
        payload.push(0);
        let mut bytes = encode_file_header();
        bytes.extend_from_slice(&frame_header(
            payload.len() as u32,
            crc32fast::hash(&payload),
        ));
        bytes.extend_from_slice(&payload);
        let error = recover(&bytes).unwrap_err();
        assert!(matches!(
            error,
            RecoveryError::UndecodableRecord {
                offset: FILE_HEADER_LEN,
                ..
            }
        ));
    }

    #[test]
    fn error_messages_speak_to_an_operator() {
        assert_eq!(
            RecoveryError::FrameHeaderChecksum { offset: 1234 }.to_string(),
            "log file corrupt at byte 1234: frame header checksum mismatch; refusing to start"
        );
        assert_eq!(
            RecoveryError::CommitBeyondLog {
                offset: 99,
                commit: 12,
                last_index: 10
            }
            .to_string(),
            "log file corrupt at byte 99: hard state commit index 12 is beyond the last log \
             index 10; refusing to start"
        );
    }

    #[test]
    fn recovery_reports_where_every_kept_entry_sits() {
        // 1..=4, then 3 overwritten (drops 3 and 4), then compaction at 1.
        let records = vec![
            meta_record(),
            Record::Entry(entry(1, 1, b"a")),
            Record::Entry(entry(2, 1, b"bb")),
            hard_state(1, 0, 1),
            Record::Entry(entry(3, 1, b"ccc")),
            Record::Entry(entry(4, 1, b"dddd")),
            Record::Entry(entry(3, 2, b"new")),
            Record::Compacted { index: 1, term: 1 },
            Record::Entry(entry(4, 2, b"four")),
        ];
        let file = file_of(&records);
        let recovered = recover(&file.bytes).unwrap();
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![2, 3, 4]);
        assert_eq!(recovered.entry_frames.len(), recovered.entries.len());
        for (entry, location) in recovered.entries.iter().zip(&recovered.entry_frames) {
            let start = location.offset as usize;
            let frame = &file.bytes[start..start + location.len as usize];
            assert_eq!(&decode_entry_frame(frame).unwrap(), entry);
        }
        // Frame i of `records` ends at frame_ends[i]; entry 2 is records[2].
        assert_eq!(
            recovered.entry_frames[0].offset as usize,
            file.frame_ends[1]
        );
        assert_eq!(
            recovered.entry_frames[2].offset as usize + recovered.entry_frames[2].len as usize,
            file.frame_ends[8]
        );
    }

    #[test]
    fn decode_entry_frame_checks_every_byte() {
        let mut frame = Vec::new();
        encode_record(&Record::Entry(entry(9, 3, b"payload")), &mut frame).unwrap();
        assert_eq!(decode_entry_frame(&frame).unwrap(), entry(9, 3, b"payload"));
        for at in 0..frame.len() {
            for flip in [0x01u8, 0xFF] {
                let mut bad = frame.clone();
                bad[at] ^= flip;
                assert!(
                    decode_entry_frame(&bad).is_err(),
                    "flip {flip:#x} at byte {at}"
                );
            }
        }
        assert!(decode_entry_frame(&frame[..frame.len() - 1]).is_err());
        assert!(decode_entry_frame(&frame[..5]).is_err());
        let mut longer = frame.clone();
        longer.push(0);
        assert!(decode_entry_frame(&longer).is_err());
        let mut not_an_entry = Vec::new();
        encode_record(&hard_state(1, 1, 1), &mut not_an_entry).unwrap();
        let error = decode_entry_frame(&not_an_entry).unwrap_err();
        assert!(error.contains("expected an entry record"), "{error}");
    }

    #[test]
    fn recover_keeping_drops_the_data_of_old_entries_only() {
        // Entries with varied data, an overwritten suffix and a compaction in between.
        let mut records = vec![meta_record()];
        for index in 1..=30u64 {
            records.push(Record::Entry(entry(index, 1, &varied_data(index))));
            if index % 7 == 0 {
                records.push(hard_state(1, 1, index - 3));
            }
        }
        for index in 27..=40u64 {
            records.push(Record::Entry(entry(index, 2, &varied_data(index + 100))));
        }
        records.push(Record::Compacted { index: 10, term: 1 });
        records.push(Record::Entry(entry(41, 2, b"last")));
        let bytes = file_of(&records).bytes;
        let full = recover(&bytes).unwrap();
        assert_eq!(full.entries_without_data, 0);
        for keep in [0usize, 1, 100, 500, 2_000, usize::MAX] {
            let kept = recover_keeping(&bytes, keep).unwrap();
            let stripped = kept.entries_without_data;
            assert_eq!(kept.entries.len(), full.entries.len(), "keep {keep}");
            assert_eq!(kept.entry_frames, full.entry_frames, "keep {keep}");
            assert_eq!(
                (kept.hard_state, kept.compacted, kept.valid_len),
                (full.hard_state, full.compacted, full.valid_len)
            );
            let data: usize = kept.entries[stripped..].iter().map(data_bytes).sum();
            assert!(data <= keep, "keep {keep}: {data} bytes kept");
            if stripped > 0 {
                // Keeping one more entry would have gone over the budget.
                assert!(data + data_bytes(&full.entries[stripped - 1]) > keep);
            }
            for (i, (got, want)) in kept.entries.iter().zip(&full.entries).enumerate() {
                assert_eq!((got.index, got.term), (want.index, want.term));
                if i < stripped {
                    assert!(got.data.is_empty() && got.context.is_empty());
                } else {
                    assert_eq!(got, want, "keep {keep}, entry {}", got.index);
                }
            }
        }
    }

    /// Issue #14 item 5: a log started at a snapshot never holds a commit index beyond
    /// its last index, whatever commit the caller's hard state has, so recovery accepts
    /// it; a commit inside the file is kept, and the frames point at the entries.
    #[test]
    fn a_compacted_log_never_commits_beyond_its_last_index() {
        let meta = NodeMeta {
            dbid: "0123456789abcdef0123456789abcdef".into(),
            node_id: 7,
            bootstrap_voters: vec![7],
        };
        let point = LogPosition { index: 50, term: 3 };
        let raft_entry = |index: u64| Entry {
            index,
            term: 3,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        };
        let hard_state = |commit: u64| HardState {
            term: 4,
            vote: 7,
            commit,
            ..Default::default()
        };
        let cases: [(&[u64], u64, u64); 5] = [
            (&[], 60, 50),
            (&[], 50, 50),
            (&[], 20, 20),
            (&[51, 52, 53], 99, 53),
            (&[51, 52, 53], 52, 52),
        ];
        for (indexes, commit, expected) in cases {
            let entries: Vec<Entry> = indexes.iter().map(|&i| raft_entry(i)).collect();
            let (bytes, frames) =
                encode_compacted_log(&meta, point, &hard_state(commit), &entries).unwrap();
            let recovered = recover(&bytes).unwrap_or_else(|e| {
                panic!("commit {commit} with entries {indexes:?}: recovery refuses: {e}")
            });
            assert_eq!(recovered.compacted, Some(point));
            let saved = recovered.hard_state.unwrap();
            assert_eq!((saved.term, saved.vote, saved.commit), (4, 7, expected));
            assert_eq!(recovered.entry_frames, frames);
            assert_eq!(recovered.valid_len, bytes.len());
            for (frame, entry) in frames.iter().zip(&entries) {
                let start = frame.offset as usize;
                let decoded = decode_entry_frame(&bytes[start..start + frame.len as usize]);
                assert_eq!(decoded.unwrap().index, entry.index);
            }
        }
    }
}
