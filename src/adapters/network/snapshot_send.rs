//! Sending a snapshot file to a follower in chunks (the receiving side is
//! `redis::snapshot_receive`).
//!
//! Wire: `RAFT.SNAPSHOT.CHUNK <dbid> <from> <transfer id> <offset> <bytes>` for each
//! chunk (at most `snapshot-req-max-count` unanswered), then
//! `RAFT.SNAPSHOT.DONE <dbid> <from> <transfer id> <total bytes> <raft MsgSnapshot>`.
//! Memory is bounded by the chunk window, not the snapshot size.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;

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
    pub tls: Option<crate::adapters::network::tls::PeerTls>,
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
    stream: Box<dyn crate::adapters::network::transport::BlockingPeerIo>,
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
    let connection = crate::adapters::network::transport::connect_blocking(
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
