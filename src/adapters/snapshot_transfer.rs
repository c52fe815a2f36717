//! Sending a snapshot file to a follower in chunks, and receiving one.
//!
//! Wire: `RAFT.SNAPSHOT.CHUNK <dbid> <from> <transfer id> <offset> <bytes>` for each
//! chunk (at most `snapshot-req-max-count` unanswered), then
//! `RAFT.SNAPSHOT.DONE <dbid> <from> <transfer id> <total bytes> <raft MsgSnapshot>`.
//! The receiver writes chunks to `<log>.snapshot.incoming`, verifies the whole file on
//! DONE, renames it to `.received-<index>-<term>` and only then hands the MsgSnapshot to raft. Memory on
//! both sides is bounded by the chunk window, not the snapshot size.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::driver::DriverInput;
use crate::adapters::handlers::log_path;
use crate::adapters::peer_guard;
use crate::adapters::snapshots::{verify, SnapshotFiles};
use crate::adapters::state::{with_state, NodeState};
use crate::core::peer_check::{check_sender, Refusal, SenderVerdict};
use crate::core::resp::{encode_command, parse_value, RespLimits, RespValue};

pub struct SendJob {
    pub addr: String,
    /// This node's host (from `raft.addr`): the connection is made from it.
    pub source_host: Option<String>,
    pub file: PathBuf,
    pub message: Message,
    pub dbid: String,
    pub my_id: u64,
    pub chunk_bytes: usize,
    pub window: usize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub cluster_user: String,
    pub cluster_password: String,
    pub tls: Option<crate::adapters::tls::PeerTls>,
}

/// Sends the whole file; true when the follower accepted the final message.
pub fn send(job: &SendJob) -> bool {
    let started = std::time::Instant::now();
    match try_send(job) {
        Ok((bytes, local)) => {
            log::info!(
                "raft: snapshot sent to {} from {local}: {bytes} bytes in {} ms",
                job.addr,
                started.elapsed().as_millis()
            );
            true
        }
        Err(e) => {
            log::warn!("raft: snapshot transfer to {} failed: {e}", job.addr);
            false
        }
    }
}

struct Link {
    stream: Box<dyn crate::adapters::transport::BlockingPeerIo>,
    buffer: Vec<u8>,
    limits: RespLimits,
}

impl Link {
    fn send(&mut self, argv: &[&[u8]]) -> Result<(), String> {
        let mut frame = Vec::new();
        encode_command(argv, &mut frame);
        self.stream.write_all(&frame).map_err(|e| e.to_string())
    }

    fn reply(&mut self) -> Result<RespValue, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((value, used)) =
                parse_value(&self.buffer, &self.limits).map_err(|e| e.to_string())?
            {
                self.buffer.drain(..used);
                return Ok(value);
            }
            let read = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("connection closed".into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    fn expect_ok(&mut self) -> Result<(), String> {
        match self.reply()? {
            RespValue::Error(e) => Err(e),
            _ => Ok(()),
        }
    }
}

/// Returns the bytes sent and the local address they left from.
fn try_send(job: &SendJob) -> Result<(u64, String), String> {
    // From this node's own address, like raft traffic, so that firewall rules between node
    // addresses cut snapshot transfers too.
    // A chunk may wait behind a busy main thread; allow generously more than for raft traffic.
    let connection = crate::adapters::transport::connect_blocking(
        &job.addr,
        job.source_host.as_deref(),
        job.tls.as_ref(),
        job.connect_timeout,
        job.response_timeout * 10,
    )
    .map_err(|e| e.to_string())?;
    let local = connection.local_addr;
    let stream = connection.stream;
    let mut link = Link {
        stream,
        buffer: Vec::new(),
        limits: RespLimits::default(),
    };
    if !job.cluster_password.is_empty() {
        link.send(&[
            b"AUTH",
            job.cluster_user.as_bytes(),
            job.cluster_password.as_bytes(),
        ])?;
        link.expect_ok()?;
    }
    // Unique per attempt, so a receiver never mixes chunks of two attempts.
    static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let transfer_id = format!(
        "{}-{}-{}-{attempt}",
        job.my_id,
        job.message.get_snapshot().get_metadata().index,
        std::process::id()
    );
    let my_id = job.my_id.to_string();
    let mut file = BufReader::new(File::open(&job.file).map_err(|e| e.to_string())?);
    let mut chunk = vec![0u8; job.chunk_bytes.max(1)];
    let mut offset: u64 = 0;
    let mut unanswered = 0usize;
    loop {
        let read = read_full(&mut file, &mut chunk)?;
        if read == 0 {
            break;
        }
        let offset_text = offset.to_string();
        link.send(&[
            b"RAFT.SNAPSHOT.CHUNK",
            job.dbid.as_bytes(),
            my_id.as_bytes(),
            transfer_id.as_bytes(),
            offset_text.as_bytes(),
            &chunk[..read],
        ])?;
        offset += read as u64;
        unanswered += 1;
        while unanswered >= job.window.max(1) {
            link.expect_ok()?;
            unanswered -= 1;
        }
    }
    while unanswered > 0 {
        link.expect_ok()?;
        unanswered -= 1;
    }
    let message = job.message.write_to_bytes().map_err(|e| e.to_string())?;
    let total = offset.to_string();
    link.send(&[
        b"RAFT.SNAPSHOT.DONE",
        job.dbid.as_bytes(),
        my_id.as_bytes(),
        transfer_id.as_bytes(),
        total.as_bytes(),
        &message,
    ])?;
    link.expect_ok()?;
    Ok((offset, local))
}

fn read_full(file: &mut impl Read, buffer: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = file
            .read(&mut buffer[filled..])
            .map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

/// The transfer being received: one at a time.
struct Incoming {
    transfer_id: Vec<u8>,
    file: File,
    written: u64,
}

static INCOMING: Mutex<Option<Incoming>> = Mutex::new(None);

/// The gates of `RAFT.MSG` (caller, dbid, sender) for a snapshot transfer from the node
/// in `args[2]`; nothing is written unless they pass.
fn check_peer(ctx: &Context, command: &str, args: &[RedisString]) -> Result<u64, RedisError> {
    peer_guard::check_caller(ctx.ctx, command)?;
    let sender = args[2]
        .parse_unsigned_integer()
        .map_err(|_| RedisError::Str("ERR invalid sender id"))?;
    with_state(|state| {
        if !matches!(state.node_state, NodeState::Up | NodeState::Loading) {
            return Err(RedisError::Str("NOCLUSTER No Raft Cluster"));
        }
        let dbid = state
            .meta
            .as_ref()
            .map(|m| m.dbid.clone())
            .unwrap_or_default();
        let verdict = check_sender(
            &dbid,
            args[1].as_slice(),
            state.my_id(),
            sender,
            &state.membership,
            [MessageType::MsgSnapshot],
        );
        match verdict {
            SenderVerdict::Accept | SenderVerdict::AcceptUnknownLeader => Ok(sender),
            SenderVerdict::Refuse(Refusal::OtherCluster) => {
                crate::adapters::membership::refuse_sender(
                    Refusal::OtherCluster,
                    sender,
                    &args[1].to_string_lossy(),
                );
                Err(RedisError::Str(
                    "ERR snapshot for another cluster (dbid mismatch)",
                ))
            }
            SenderVerdict::Refuse(refusal) => Err(crate::adapters::membership::refuse_sender(
                refusal, sender, &dbid,
            )),
        }
    })
}

/// `RAFT.SNAPSHOT.CHUNK <dbid> <from> <transfer id> <offset> <bytes>`
pub fn receive_chunk(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 6 {
        return Err(RedisError::WrongArity);
    }
    check_peer(ctx, "RAFT.SNAPSHOT.CHUNK", &args)?;
    let offset = args[4]
        .parse_unsigned_integer()
        .map_err(|_| RedisError::Str("ERR invalid offset"))?;
    let transfer_id = args[3].as_slice().to_vec();
    let files = SnapshotFiles::for_log(&log_path());
    let mut incoming = INCOMING.lock().unwrap_or_else(|p| p.into_inner());
    let restart = incoming
        .as_ref()
        .is_none_or(|i| i.transfer_id != transfer_id);
    if restart {
        if offset != 0 {
            return Err(RedisError::Str("ERR snapshot chunk of an unknown transfer"));
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&files.incoming)
            .map_err(|e| RedisError::String(format!("ERR cannot store snapshot: {e}")))?;
        *incoming = Some(Incoming {
            transfer_id,
            file,
            written: 0,
        });
    }
    let current = incoming.as_mut().expect("set above");
    if offset != current.written {
        return Err(RedisError::Str("ERR snapshot chunk out of order"));
    }
    current
        .file
        .write_all(args[5].as_slice())
        .map_err(|e| RedisError::String(format!("ERR cannot store snapshot: {e}")))?;
    current.written += args[5].as_slice().len() as u64;
    // Accepted: the original counts every snapshot request (one per chunk) in raft_snapshotreq_received.
    crate::adapters::info::PEER_TRAFFIC
        .snapshotreq_received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `RAFT.SNAPSHOT.DONE <dbid> <from> <transfer id> <total bytes> <MsgSnapshot>`
pub fn receive_done(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 6 {
        return Err(RedisError::WrongArity);
    }
    let sender = check_peer(ctx, "RAFT.SNAPSHOT.DONE", &args)?;
    if crate::adapters::configs::config().snapshot_disable_load {
        // Test knob: the snapshot is not loaded; the sender retries later.
        INCOMING.lock().unwrap_or_else(|p| p.into_inner()).take();
        return Err(RedisError::Str(
            "ERR snapshot loading is disabled on this node (raft.snapshot-disable-load)",
        ));
    }
    let total = args[4]
        .parse_unsigned_integer()
        .map_err(|_| RedisError::Str("ERR invalid size"))?;
    let message = crate::core::peer_check::parse_protobuf::<Message>(args[5].as_slice())
        .map_err(|_| RedisError::Str("ERR malformed raft message"))?;
    let me = with_state(|state| state.my_id());
    if message.get_msg_type() != MessageType::MsgSnapshot
        || message.from != sender
        || message.to != me
    {
        return Err(RedisError::Str(
            "ERR snapshot transfer ends with a message that is not a MsgSnapshot from its sender to this node",
        ));
    }
    let Some(done) = INCOMING.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return Err(RedisError::Str("ERR no snapshot transfer in progress"));
    };
    if done.transfer_id != args[3].as_slice() || done.written != total {
        return Err(RedisError::Str("ERR snapshot transfer incomplete"));
    }
    done.file
        .sync_all()
        .map_err(|e| RedisError::String(format!("ERR cannot sync snapshot: {e}")))?;
    drop(done);
    let files = SnapshotFiles::for_log(&log_path());
    let meta = verify(&files.incoming)
        .map_err(|e| RedisError::String(format!("ERR received snapshot is invalid: {e}")))?;
    let expected = message.get_snapshot().get_metadata();
    if meta.index != expected.index || meta.term != expected.term {
        return Err(RedisError::Str(
            "ERR received snapshot does not match its message",
        ));
    }
    // Named by index and term: a transfer ending right after this one (its MsgSnapshot
    // still queued for raft) keeps its own file, and raft's install finds this one.
    files
        .keep_received(&meta)
        .map_err(|e| RedisError::String(format!("ERR cannot keep snapshot: {e}")))?;
    crate::adapters::info::SNAPSHOTS_RECEIVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    with_state(|state| state.send_to_driver(DriverInput::Peer(Box::new(message))))
        .map_err(|e| RedisError::String(e.to_string()))?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}
