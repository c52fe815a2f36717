//! Hostile input, without servers: seeded mutation fuzzing of every decoder that reads
//! bytes this node did not write itself or may find damaged:
//! - peer messages: `RAFT.MSG` arguments as `decode_raft_msg` reads them (protobuf raft
//!   messages inside), the peer checks after it, and RESP replies as the transport parses
//!   them;
//! - log recovery: `core::logfile::recover`, and `LogFile::open` on a real file;
//! - snapshot loading: `SnapshotDecoder` fed in random pieces, and `validate_all`;
//! - entry payloads: `Payload::decode`, `ChangeContext::decode`, and the protobuf conf
//!   change of conf-change entries.
//!
//! Each target starts from valid encodings, applies 1-4 random mutations (bit flips,
//! boundary bytes, huge length prefixes, inserts, cuts, splices) and checks: no panic;
//! no allocation beyond what the input size justifies (`CountingAlloc` measures this
//! thread's peak); decoding is deterministic; and a refused file is left untouched.
//! Every run uses fixed seeds, so a failure prints the seed and iteration that reproduce
//! it. Why hand-rolled rather than a fuzzing crate: see docs/SECURITY.md.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use redisraft::adapters::disk::logio::LogFile;
use redisraft::adapters::ffi::alloc_probe::CountingAlloc;
use redisraft::adapters::network::transport::decode_raft_msg;
use redisraft::core::entry::{Origin, Payload};
use redisraft::core::logfile::{self, Record};
use redisraft::core::membership::{single_change, ChangeContext, Membership};
use redisraft::core::peer_check::{check_sender, parse_protobuf};
use redisraft::core::resp::{encode_command, encode_value, parse_value, RespLimits, RespValue};
use redisraft::core::snapshot::{validate_all, SnapshotDecoder, SnapshotEncoder, SnapshotMeta};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Mutated inputs per target (each target also stops after `TIME_BUDGET`).
const ITERATIONS: u64 = 100_000;
const TIME_BUDGET: Duration = Duration::from_secs(3);
/// What a decoder may have live at once, on top of a constant: a few times its input.
const ALLOC_FACTOR: u64 = 8;
const ALLOC_SLACK_BYTES: u64 = 1 << 20;

const DBID: &str = "0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------
// A seeded generator and the mutator.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// Byte patterns that make decoders misjudge sizes: maximal varints (protobuf), bincode
/// varint prefixes for u16/u32/u64/u128, all-ones and sign-boundary integers.
const HUGE_PATTERNS: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xfb, 0xff, 0xff],
    &[0xfc, 0xff, 0xff, 0xff, 0xff],
    &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x00, 0x00, 0x00, 0x80],
    &[0x00, 0x00, 0x00, 0x20],
    // Large but under every decoder's hard cap (256 MiB): must still not be reserved.
    &[0xfc, 0x00, 0x00, 0x00, 0x10],
    &[0x80, 0x80, 0x80, 0x80, 0x01],
    &[0x00, 0x00, 0x00, 0x10],
];
const INTERESTING_BYTES: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xfe, 0xff];

fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                bytes[at] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 => {
                let pattern = HUGE_PATTERNS[rng.below(HUGE_PATTERNS.len())];
                let at = rng.below(len + 1);
                if rng.chance(2) {
                    bytes.splice(at..at, pattern.iter().copied());
                } else {
                    let end = (at + pattern.len()).min(len);
                    bytes.splice(at..end, pattern.iter().copied());
                }
            }
            3 => {
                let at = rng.below(len + 1);
                let count = 1 + rng.below(16);
                let random: Vec<u8> = (0..count).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, random);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                bytes.drain(at..end);
            }
            5 => bytes.truncate(rng.below(len + 1)),
            6 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let chunk = bytes[at..end].to_vec();
                let to = rng.below(len + 1);
                bytes.splice(to..to, chunk);
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(128)).min(other.len());
                let at = rng.below(len + 1);
                bytes.splice(at..at, other[from..end].iter().copied());
            }
            _ if len >= 4 => {
                // A 32-bit little-endian length field made huge.
                let at = rng.below(len - 3);
                let value = [
                    u32::MAX,
                    i32::MAX as u32,
                    1 << 31,
                    512 << 20,
                    len as u32 * 4,
                ][rng.below(5)];
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => bytes.push(rng.next() as u8),
        }
    }
    bytes
}

/// Runs `check` on `ITERATIONS` mutants of the corpus (and the corpus itself), catching
/// panics and checking the allocation bound of each call.
fn fuzz(name: &str, seed: u64, corpus: &[Vec<u8>], mut check: impl FnMut(&[u8])) {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut worst = (0u64, 0usize);
    let mut ran = 0u64;
    for iteration in 0..ITERATIONS + corpus.len() as u64 {
        if started.elapsed() > TIME_BUDGET {
            break;
        }
        let input = if (iteration as usize) < corpus.len() {
            corpus[iteration as usize].clone()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            mutate(base, corpus, &mut rng)
        };
        CountingAlloc::reset();
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let stats = CountingAlloc::stats();
        if let Err(panic) = outcome {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{name}: seed {seed} iteration {iteration}: panicked on {} bytes {:02x?}: {text}",
                input.len(),
                &input[..input.len().min(256)]
            );
        }
        let bound = ALLOC_FACTOR * input.len() as u64 + ALLOC_SLACK_BYTES;
        assert!(
            stats.peak_bytes <= bound && stats.largest_bytes <= bound,
            "{name}: seed {seed} iteration {iteration}: {} input bytes made the decoder \
             allocate {stats:?} (bound {bound}); input {:02x?}",
            input.len(),
            &input[..input.len().min(256)]
        );
        if stats.peak_bytes > worst.0 {
            worst = (stats.peak_bytes, input.len());
        }
        ran += 1;
    }
    eprintln!(
        "{name}: {ran} inputs in {:?}; largest peak allocation {} bytes (for a {}-byte input)",
        started.elapsed(),
        worst.0,
        worst.1
    );
    assert!(
        ran >= 1_000,
        "{name}: only {ran} inputs ran within the time budget"
    );
}

// ---------------------------------------------------------------------------------------
// Valid encodings to start from.

fn payload_bytes(seed: u64) -> Vec<u8> {
    Payload::Commands {
        origin: Some(Origin {
            node_id: 2,
            incarnation: seed,
            request_id: 7,
        }),
        time_ms: 1_700_000_000_000,
        user: Some("alice".into()),
        flags: (seed % 4) as u8,
        commands: vec![
            vec![b"SET".to_vec(), b"key".to_vec(), vec![0u8, 255, 10]],
            vec![b"INCR".to_vec(), b"n".to_vec()],
        ],
    }
    .encode()
}

fn context_bytes(id: u64) -> Vec<u8> {
    ChangeContext {
        origin: None,
        node_id: id,
        addr: format!("127.0.0.1:{}", 5000 + id),
        held_as_learner: false,
    }
    .encode()
}

fn raft_entries() -> Vec<Entry> {
    let mut entries = Vec::new();
    for index in 1..=4u64 {
        let mut entry = Entry {
            index,
            term: 1 + index / 3,
            ..Default::default()
        };
        if index == 2 {
            entry.set_entry_type(EntryType::EntryConfChangeV2);
            entry.data = single_change(ConfChangeType::AddNode, 3)
                .write_to_bytes()
                .unwrap()
                .into();
            entry.context = context_bytes(3).into();
        } else {
            entry.data = payload_bytes(index).into();
        }
        entries.push(entry);
    }
    entries
}

fn peer_messages() -> Vec<Message> {
    let mut messages = Vec::new();
    let base = |kind: MessageType| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 2;
        m.to = 1;
        m.term = 3;
        m
    };
    let mut append = base(MessageType::MsgAppend);
    append.index = 4;
    append.log_term = 2;
    append.commit = 3;
    append.entries = raft_entries().into();
    messages.push(append);
    let mut heartbeat = base(MessageType::MsgHeartbeat);
    heartbeat.commit = 4;
    heartbeat.context = b"read-ctx".to_vec().into();
    messages.push(heartbeat);
    let mut vote = base(MessageType::MsgRequestVote);
    vote.index = 9;
    vote.log_term = 3;
    messages.push(vote);
    let mut response = base(MessageType::MsgAppendResponse);
    response.reject = true;
    response.reject_hint = 5;
    messages.push(response);
    let mut snapshot = base(MessageType::MsgSnapshot);
    let mut metadata = SnapshotMetadata {
        index: 40,
        term: 3,
        ..Default::default()
    };
    metadata.set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
    let mut snap = Snapshot::default();
    snap.set_metadata(metadata);
    snap.data = b"snapshot".to_vec().into();
    snapshot.set_snapshot(snap);
    messages.push(snapshot);
    messages
}

fn members() -> Membership {
    let mut membership = Membership::default();
    for id in [1, 2, 3] {
        let context = ChangeContext {
            origin: None,
            node_id: id,
            addr: format!("127.0.0.1:{}", 5000 + id),
            held_as_learner: false,
        };
        membership.apply(&single_change(ConfChangeType::AddNode, id), &context);
    }
    membership
}

/// RAFT.MSG argument lists, as one RESP frame each (so mutations can also change the
/// argument boundaries); the fuzz target splits them back with the RESP parser.
fn raft_msg_frames() -> Vec<Vec<u8>> {
    let encoded: Vec<Vec<u8>> = peer_messages()
        .iter()
        .map(|m| m.write_to_bytes().unwrap())
        .collect();
    let mut frames = Vec::new();
    for (i, message) in encoded.iter().enumerate() {
        let sender = if i % 2 == 0 { "2" } else { "2@127.0.0.1:5002" };
        let mut frame = Vec::new();
        encode_command(&[DBID.as_bytes(), sender.as_bytes(), message], &mut frame);
        frames.push(frame);
    }
    let mut batch = Vec::new();
    let mut args: Vec<&[u8]> = vec![DBID.as_bytes(), b"2"];
    args.extend(encoded.iter().map(Vec::as_slice));
    encode_command(&args, &mut batch);
    frames.push(batch);
    frames
}

// ---------------------------------------------------------------------------------------
// Targets.

#[test]
fn fuzz_peer_messages() {
    let membership = members();
    let limits = RespLimits {
        max_bulk_bytes: 64 << 20,
        max_array_len: 1 << 20,
        max_depth: 2,
        max_line_bytes: 64 * 1024,
    };
    let corpus = raft_msg_frames();
    fuzz("RAFT.MSG", 0x5eed_0001, &corpus, |frame| {
        let Ok(Some((RespValue::Array(Some(items)), _))) = parse_value(frame, &limits) else {
            return;
        };
        let args: Vec<Vec<u8>> = items
            .into_iter()
            .map(|item| match item {
                RespValue::Bulk(Some(bytes)) => bytes,
                other => format!("{other:?}").into_bytes(),
            })
            .collect();
        let first = decode_raft_msg(&args);
        assert_eq!(
            format!("{first:?}"),
            format!("{:?}", decode_raft_msg(&args)),
            "decoding is not deterministic"
        );
        if let Ok(decoded) = first {
            for message in &decoded.messages {
                assert_eq!(message.from, decoded.sender_id);
            }
            let _ = check_sender(
                DBID,
                decoded.dbid.as_bytes(),
                1,
                decoded.sender_id,
                &membership,
                decoded.messages.iter().map(Message::get_msg_type),
            );
        }
    });
    // Each protobuf message alone, as RAFT.SNAPSHOT.DONE and decode_raft_msg parse it.
    let corpus: Vec<Vec<u8>> = peer_messages()
        .iter()
        .map(|m| m.write_to_bytes().unwrap())
        .collect();
    fuzz("raft protobuf Message", 0x5eed_0002, &corpus, |bytes| {
        if let Ok(message) = parse_protobuf::<Message>(bytes) {
            // What parsed re-encodes to bytes that parse to the same known fields
            // (unknown fields are kept in a hash map: their order is not stable).
            let encoded = message.write_to_bytes().unwrap();
            let again = parse_protobuf::<Message>(&encoded).unwrap();
            assert_eq!(again.get_msg_type(), message.get_msg_type());
            assert_eq!(again.entries, message.entries);
            assert_eq!(again.get_snapshot().data, message.get_snapshot().data);
        }
    });
}

#[test]
fn fuzz_peer_replies() {
    // The transport's limits for replies from peers (transport::peer_reply_limits).
    let limits = RespLimits {
        max_bulk_bytes: 64 * 1024,
        max_array_len: 1_024,
        max_depth: 8,
        max_line_bytes: 64 * 1024,
    };
    let mut corpus = Vec::new();
    for value in [
        RespValue::Simple("OK".into()),
        RespValue::Error("REMOVED node 3 was removed from the cluster".into()),
        RespValue::Integer(-42),
        RespValue::Bulk(Some(b"bulk\r\nvalue".to_vec())),
        RespValue::Bulk(None),
        RespValue::Array(Some(vec![
            RespValue::Integer(5),
            RespValue::Simple(DBID.into()),
            RespValue::Array(Some(vec![RespValue::Bulk(Some(vec![0; 40]))])),
        ])),
    ] {
        let mut bytes = Vec::new();
        encode_value(&value, &mut bytes);
        corpus.push(bytes);
    }
    fuzz("peer RESP reply", 0x5eed_0003, &corpus, |bytes| {
        if let Ok(Some((value, used))) = parse_value(bytes, &limits) {
            assert!(used <= bytes.len());
            // (The encoder replaces CR/LF inside simple strings, so only check it parses.)
            let mut again = Vec::new();
            encode_value(&value, &mut again);
            assert!(matches!(parse_value(&again, &limits), Ok(Some(_))));
        }
        // A prefix of a valid value is incomplete or an error, never a different value.
        let _ = parse_value(&bytes[..bytes.len() / 2], &limits);
    });
}

/// A frame header (log and snapshot files share the frame format) whose length check is
/// right, declaring `len` payload bytes that never come: what a hostile peer, not random
/// damage, would send to make the reader reserve memory.
fn forged_frame_header(len: u32) -> Vec<u8> {
    let len_bytes = len.to_le_bytes();
    let check = crc32fast::hash(&len_bytes) ^ 0x5241_4654;
    let mut header = len_bytes.to_vec();
    header.extend_from_slice(&check.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(b"partial payload");
    header
}

const FORGED_LENGTHS: [u32; 3] = [10 << 20, 256 << 20, (512 << 20) - 1];

fn log_file_bytes(entries: &[Entry], compacted: bool) -> Vec<u8> {
    let mut bytes = logfile::encode_file_header();
    logfile::encode_record(
        &Record::Meta {
            dbid: DBID.into(),
            node_id: 1,
            bootstrap_voters: vec![1],
        },
        &mut bytes,
    )
    .unwrap();
    if compacted {
        logfile::encode_record(&Record::Compacted { index: 1, term: 1 }, &mut bytes).unwrap();
    }
    for entry in entries {
        if compacted && entry.index <= 1 {
            continue;
        }
        logfile::encode_entry(entry, &mut bytes).unwrap();
        logfile::encode_record(
            &Record::HardState {
                term: entry.term,
                vote: 1,
                commit: entry.index - 1,
            },
            &mut bytes,
        )
        .unwrap();
    }
    bytes
}

#[test]
fn fuzz_log_recovery() {
    let entries = raft_entries();
    let corpus = vec![
        log_file_bytes(&entries, false),
        log_file_bytes(&entries, true),
        log_file_bytes(&entries[..1], false),
        // Index 3 written again: raft overwrote a suffix.
        {
            let mut bytes = log_file_bytes(&entries, false);
            let mut again = entries[2].clone();
            again.term = 5;
            logfile::encode_entry(&again, &mut bytes).unwrap();
            bytes
        },
    ];
    let mut corpus = corpus;
    for len in FORGED_LENGTHS {
        let mut bytes = log_file_bytes(&entries, false);
        bytes.extend(forged_frame_header(len));
        corpus.push(bytes);
    }
    fuzz("log recovery", 0x5eed_0004, &corpus, |bytes| {
        let first = logfile::recover(bytes);
        assert_eq!(
            first,
            logfile::recover(bytes),
            "recovery is not deterministic"
        );
        if let Ok(recovered) = first {
            assert!(recovered.valid_len <= bytes.len());
            assert_eq!(recovered.valid_len + recovered.torn_tail_bytes, bytes.len());
            for pair in recovered.entries.windows(2) {
                assert_eq!(pair[1].index, pair[0].index + 1, "entries not contiguous");
            }
            if let Some(first) = recovered.entries.first() {
                assert_eq!(first.index, recovered.first_index());
            }
            // What was recovered is exactly what the good prefix holds.
            let prefix = logfile::recover(&bytes[..recovered.valid_len]).unwrap();
            assert_eq!(prefix.entries, recovered.entries);
            assert_eq!(prefix.torn_tail_bytes, 0);
        }
    });
}

/// `LogFile::open` on real files: a refused file is left exactly as it was; an accepted
/// one is at most cut to its good prefix.
#[test]
fn fuzz_log_file_open_changes_nothing_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let entries = raft_entries();
    let corpus = [
        log_file_bytes(&entries, false),
        log_file_bytes(&entries, true),
    ];
    let mut rng = Rng::new(0x5eed_0005);
    let (mut refused, mut accepted) = (0, 0);
    for iteration in 0..300 {
        let bytes = mutate(&corpus[iteration % 2], &corpus, &mut rng);
        let path = dir.path().join(format!("log-{iteration}.db"));
        std::fs::write(&path, &bytes).unwrap();
        let outcome = LogFile::open(&path, usize::MAX);
        let left = std::fs::read(&path).unwrap_or_default();
        match outcome {
            Err(_) => {
                refused += 1;
                assert_eq!(
                    left, bytes,
                    "iteration {iteration}: a refused log was modified"
                );
            }
            Ok(Some((_, recovered))) => {
                accepted += 1;
                assert_eq!(left, bytes[..recovered.valid_len], "iteration {iteration}");
            }
            // No identity record: set aside as `.incomplete`, byte for byte.
            Ok(None) => {
                let aside = std::fs::read(path.with_extension("incomplete")).unwrap();
                assert_eq!(aside, bytes, "iteration {iteration}");
            }
        }
    }
    eprintln!("LogFile::open: {refused} refused, {accepted} accepted of 300");
    assert!(refused > 0 && accepted > 0);
}

fn snapshot_bytes(keys: usize) -> Vec<u8> {
    snapshot_with(keys, true)
}

fn snapshot_with(keys: usize, finished: bool) -> Vec<u8> {
    let meta = SnapshotMeta {
        dbid: DBID.into(),
        index: 40,
        term: 3,
        voters: vec![1, 2, 3],
        learners: vec![4],
        members: Vec::new(),
        used_ids: vec![1, 2, 3, 4, 9],
        applied_time_ms: 1_700_000_000_000,
        held_learners: Vec::new(),
    };
    let mut out = Vec::new();
    let mut encoder = SnapshotEncoder::new(&meta, &mut out).unwrap();
    for i in 0..keys {
        let expiry = if i % 2 == 0 { -1 } else { 1_700_000_000_000 };
        encoder
            .add_key(
                format!("key:{i}").as_bytes(),
                &[i as u8; 24],
                expiry,
                &mut out,
            )
            .unwrap();
    }
    if finished {
        encoder.finish(&mut out);
    }
    out
}

#[test]
fn fuzz_snapshot_loading() {
    let mut corpus = vec![snapshot_bytes(0), snapshot_bytes(1), snapshot_bytes(5)];
    for len in FORGED_LENGTHS {
        let mut bytes = snapshot_with(1, false);
        bytes.extend(forged_frame_header(len));
        corpus.push(bytes);
    }
    let mut pieces = Rng::new(0x5eed_0006);
    fuzz("snapshot decoder", 0x5eed_0007, &corpus, |bytes| {
        let whole = validate_all(bytes);
        // Streamed in random pieces, as a snapshot file is read or received.
        let mut decoder = SnapshotDecoder::new();
        let mut at = 0;
        let mut failed = false;
        while at < bytes.len() && !failed {
            let end = (at + 1 + pieces.below(64)).min(bytes.len());
            decoder.feed(&bytes[at..end]);
            at = end;
            loop {
                match decoder.next_record() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        // Errors are sticky: nothing more comes out after one.
                        assert!(decoder.next_record().is_err());
                        break;
                    }
                }
            }
            assert!(decoder.buffered_len() <= bytes.len());
        }
        let streamed_ok = !failed && decoder.finish().is_ok();
        assert_eq!(
            whole.is_ok(),
            streamed_ok,
            "validate_all and the streaming decoder disagree"
        );
    });
}

#[test]
fn fuzz_entry_payloads() {
    let corpus: Vec<Vec<u8>> = (0..4)
        .map(payload_bytes)
        .chain([Payload::ExpireKeys {
            time_ms: 5,
            keys: vec![b"a".to_vec(), b"bb".to_vec()],
        }
        .encode()])
        .collect();
    fuzz("entry payload", 0x5eed_0008, &corpus, |bytes| {
        if let Ok(payload) = Payload::decode(bytes) {
            assert_eq!(Payload::decode(&payload.encode()), Ok(payload));
        }
    });
    let corpus: Vec<Vec<u8>> = (1..4).map(context_bytes).collect();
    fuzz("conf change context", 0x5eed_0009, &corpus, |bytes| {
        let _ = ChangeContext::decode(bytes);
    });
    let corpus: Vec<Vec<u8>> = [ConfChangeType::AddNode, ConfChangeType::RemoveNode]
        .into_iter()
        .map(|kind| single_change(kind, 7).write_to_bytes().unwrap())
        .collect();
    fuzz("conf change", 0x5eed_000a, &corpus, |bytes| {
        let _ = parse_protobuf::<raft::eraftpb::ConfChangeV2>(bytes);
    });
}

// ---------------------------------------------------------------------------------------
// Raft itself: well-formed messages with hostile content, from a member, stepped into a
// follower. raft-rs trusts its peers; the node must refuse what would make it panic
// (`RaftNode::step`).

fn follower() -> redisraft::core::node::RaftNode {
    use redisraft::core::node::{NodeParams, RaftNode};
    use redisraft::core::storage::LogStore;
    let mut store = LogStore::new();
    store.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    let entries: Vec<Entry> = (1..=5)
        .map(|index| Entry {
            index,
            term: if index <= 3 { 1 } else { 2 },
            data: payload_bytes(index).into(),
            ..Default::default()
        })
        .collect();
    store.append(&entries);
    store.set_hard_state(raft::eraftpb::HardState {
        term: 2,
        vote: 1,
        commit: 4,
        ..Default::default()
    });
    let params = NodeParams {
        id: 2,
        election_ticks: 10,
        heartbeat_ticks: 2,
        applied: 4,
        max_append_bytes: 1 << 20,
        max_inflight_appends: 4,
    };
    RaftNode::new(&params, store).unwrap()
}

fn hostile_raft_messages() -> Vec<Vec<u8>> {
    let base = |kind: MessageType, term: u64| Message {
        msg_type: kind,
        from: 1,
        to: 2,
        term,
        ..Default::default()
    };
    let mut messages = Vec::new();
    let mut heartbeat = base(MessageType::MsgHeartbeat, 2);
    heartbeat.commit = 1_000;
    messages.push(heartbeat);
    // Overwrites committed entries 3 and 4 with another term.
    let mut append = base(MessageType::MsgAppend, 3);
    append.index = 2;
    append.log_term = 1;
    append.commit = 4;
    append.entries = (3..=4)
        .map(|index| Entry {
            index,
            term: 3,
            ..Default::default()
        })
        .collect::<Vec<_>>()
        .into();
    messages.push(append.clone());
    // Entries that are not contiguous, or do not follow `index`.
    append.index = 5;
    append.log_term = 2;
    append.entries = [6u64, 9, 7]
        .iter()
        .map(|&index| Entry {
            index,
            term: 3,
            ..Default::default()
        })
        .collect::<Vec<_>>()
        .into();
    messages.push(append);
    let mut snapshot = base(MessageType::MsgSnapshot, 3);
    let mut metadata = SnapshotMetadata {
        index: 10,
        term: 3,
        ..Default::default()
    };
    // Invalid configuration: a voter that is also a learner.
    metadata.set_conf_state(ConfState::from((vec![1, 2], vec![2])));
    snapshot.mut_snapshot().set_metadata(metadata);
    messages.push(snapshot);
    let mut response = base(MessageType::MsgAppendResponse, 2);
    response.index = 1_000;
    messages.push(response);
    messages
        .iter()
        .map(|m| m.write_to_bytes().unwrap())
        .collect()
}

#[test]
fn fuzz_raft_step() {
    let corpus = hostile_raft_messages();
    let mut panics = Vec::new();
    for (i, bytes) in corpus.iter().enumerate() {
        let message = parse_protobuf::<Message>(bytes).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut node = follower();
            let _ = node.step(message.clone());
            while let Some(ready) = node.poll_ready() {
                node.on_persisted(ready.number);
            }
        }));
        if outcome.is_err() {
            panics.push((i, format!("{:?}", message.get_msg_type())));
        }
    }
    assert!(
        panics.is_empty(),
        "raft panicked on hand-made messages: {panics:?}"
    );
    fuzz("raft step", 0x5eed_000b, &corpus, |bytes| {
        let Ok(message) = parse_protobuf::<Message>(bytes) else {
            return;
        };
        if message.from != 1 || message.to != 2 {
            return;
        }
        let mut node = follower();
        let _ = node.step(message);
        while let Some(ready) = node.poll_ready() {
            node.on_persisted(ready.number);
        }
    });
}

/// A leader of {1, 2, 3} with entries up to index 6, all sent (node 1).
fn leader() -> redisraft::core::node::RaftNode {
    use redisraft::core::node::{NodeParams, RaftNode, Role};
    use redisraft::core::storage::LogStore;
    let mut store = LogStore::new();
    store.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    let entries: Vec<Entry> = (1..=3)
        .map(|index| Entry {
            index,
            term: 1,
            data: payload_bytes(index).into(),
            ..Default::default()
        })
        .collect();
    store.append(&entries);
    store.set_hard_state(raft::eraftpb::HardState {
        term: 1,
        vote: 1,
        commit: 2,
        ..Default::default()
    });
    let params = NodeParams {
        id: 1,
        election_ticks: 10,
        heartbeat_ticks: 2,
        applied: 2,
        max_append_bytes: 1 << 20,
        max_inflight_appends: 4,
    };
    let mut node = RaftNode::new(&params, store).unwrap();
    node.campaign().unwrap();
    while let Some(ready) = node.poll_ready() {
        node.on_persisted(ready.number);
    }
    for kind in [
        MessageType::MsgRequestPreVoteResponse,
        MessageType::MsgRequestVoteResponse,
    ] {
        for from in [2, 3] {
            let term =
                node.status().term + u64::from(kind == MessageType::MsgRequestPreVoteResponse);
            let _ = node.step(Message {
                msg_type: kind,
                from,
                to: 1,
                term,
                ..Default::default()
            });
            while let Some(ready) = node.poll_ready() {
                node.on_persisted(ready.number);
            }
        }
    }
    assert_eq!(node.status().role, Role::Leader, "{:?}", node.status());
    for _ in 0..3 {
        let _ = node.propose(payload_bytes(9));
    }
    while let Some(ready) = node.poll_ready() {
        node.on_persisted(ready.number);
    }
    node
}

#[test]
fn fuzz_raft_step_on_a_leader() {
    let term = leader().status().term;
    let base = |kind: MessageType, from: u64| Message {
        msg_type: kind,
        from,
        to: 1,
        term,
        ..Default::default()
    };
    let mut corpus = Vec::new();
    for (kind, index, reject) in [
        (MessageType::MsgAppendResponse, 7, false),
        (MessageType::MsgAppendResponse, 1_000_000, false),
        (MessageType::MsgAppendResponse, 3, true),
        (MessageType::MsgHeartbeatResponse, 0, false),
        (MessageType::MsgReadIndex, 0, false),
        (MessageType::MsgTransferLeader, 0, false),
        (MessageType::MsgSnapStatus, 0, false),
    ] {
        for from in [2, 3] {
            let mut m = base(kind, from);
            m.index = index;
            m.reject = reject;
            m.reject_hint = index.saturating_sub(1);
            m.log_term = 1;
            m.commit = index;
            corpus.push(m.write_to_bytes().unwrap());
        }
    }
    fuzz("raft step on a leader", 0x5eed_000c, &corpus, |bytes| {
        let Ok(message) = parse_protobuf::<Message>(bytes) else {
            return;
        };
        if !(2..=3).contains(&message.from) || message.to != 1 {
            return;
        }
        let mut node = leader();
        // Twice: the second copy finds the state the first left.
        let _ = node.step(message.clone());
        while let Some(ready) = node.poll_ready() {
            node.on_persisted(ready.number);
        }
        let _ = node.step(message);
        while let Some(ready) = node.poll_ready() {
            node.on_persisted(ready.number);
        }
        node.tick();
        while let Some(ready) = node.poll_ready() {
            node.on_persisted(ready.number);
        }
    });
}
