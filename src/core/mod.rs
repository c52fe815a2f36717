//! The pure, deterministic core: no Redis, no threads, no clock, no I/O.
pub mod bounded_serde;
pub mod commands;
pub mod config;
pub mod entry;
pub mod expiry;
pub mod logfile;
pub mod membership;
pub mod node;
pub mod peer_check;
pub mod pending;
pub mod random_pick;
pub mod ready;
pub mod resp;
pub mod scripts;
pub mod snapshot;
pub mod snapshot_policy;
pub mod storage;
