//! Peer traffic: outgoing connections (`transport`), the peer listener and the checks on
//! what arrives (`peer_listener`, `peer_inbound`, `peer_guard`), snapshot sending and TLS.
//! Nothing here knows the raft thread's types: what arrives is handed over as
//! `peer_inbound::PeerInput`.
pub mod peer_guard;
pub mod peer_inbound;
pub mod peer_listener;
pub mod snapshot_send;
pub mod tls;
pub mod transport;
