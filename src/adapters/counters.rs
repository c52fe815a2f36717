//! Counters INFO reports that threads of every layer bump (the peer listener, the raft
//! thread, the Redis main thread). Only INFO reads them: none decides anything.

use std::sync::atomic::AtomicU64;

/// Peer traffic received, wherever it arrived (peer listener or Redis port).
#[derive(Default)]
pub struct PeerTrafficStats {
    pub appendreq_received: AtomicU64,
    pub appendreq_with_entry_received: AtomicU64,
    pub snapshotreq_received: AtomicU64,
}

pub static PEER_TRAFFIC: PeerTrafficStats = PeerTrafficStats {
    appendreq_received: AtomicU64::new(0),
    appendreq_with_entry_received: AtomicU64::new(0),
    snapshotreq_received: AtomicU64::new(0),
};

/// Snapshots this node wrote (INFO `raft_snapshots_created`).
pub static SNAPSHOTS_CREATED: AtomicU64 = AtomicU64::new(0);
/// Snapshots received complete from a leader (INFO `raft_snapshots_received`).
pub static SNAPSHOTS_RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Commands this follower proxied to the leader (INFO `proxy_*`); bumped by the main
/// thread and the proxy connections' threads.
pub static PROXY_REQS: AtomicU64 = AtomicU64::new(0);
pub static PROXY_FAILED_REQS: AtomicU64 = AtomicU64::new(0);
pub static PROXY_OUTSTANDING_REQS: AtomicU64 = AtomicU64::new(0);
