//! Receiving a snapshot a leader sends in chunks (the sending side is
//! `network::snapshot_send`). The receiver writes chunks to `<log>.snapshot.incoming`,
//! verifies the whole file on DONE, renames it to `.received-<index>-<term>` and only then
//! hands the MsgSnapshot to raft.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

use raft::eraftpb::{Message, MessageType};
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::disk::snapshot_files::{verify, SnapshotFiles};
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::settings::log_path;
use crate::adapters::redis::state::{with_state, NodeState};
use crate::core::peer_check::{check_sender, Refusal, SenderVerdict};

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
    crate::adapters::redis::membership::check_peer_caller(ctx.ctx, command)?;
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
                crate::adapters::redis::membership::refuse_sender(
                    Refusal::OtherCluster,
                    sender,
                    &args[1].to_string_lossy(),
                );
                Err(RedisError::Str(
                    "ERR snapshot for another cluster (dbid mismatch)",
                ))
            }
            SenderVerdict::Refuse(refusal) => Err(
                crate::adapters::redis::membership::refuse_sender(refusal, sender, &dbid),
            ),
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
    crate::adapters::counters::PEER_TRAFFIC
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
    if crate::adapters::redis::settings::with_config(|config| config.snapshot_disable_load) {
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
    crate::adapters::counters::SNAPSHOTS_RECEIVED
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    with_state(|state| state.send_to_driver(DriverInput::Peer(Box::new(message))))
        .map_err(|e| RedisError::String(e.to_string()))?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}
