//! The thin adapters between the pure core and the outside world: Redis, threads, disk.
pub mod apply;
pub mod configs;
pub mod driver;
pub mod ffi;
pub mod handlers;
pub mod info;
pub mod logio;
pub mod membership;
pub mod module;
pub mod proxy;
pub mod snapshot_transfer;
pub mod snapshots;
pub mod state;
pub mod topology;
pub mod transport;
