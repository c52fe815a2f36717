//! The Redis main thread's side: everything that calls the module API on a client's or
//! the server's behalf. Hands work to the raft thread and takes its results back.
pub mod active_expiry;
pub mod apply;
pub mod blocking;
pub mod clock;
pub mod configs;
pub mod execute;
pub mod handlers;
pub mod info;
pub mod main_jobs;
pub mod membership;
pub mod migrate;
pub mod module;
pub mod node_start;
pub mod proposals;
pub mod proxy;
pub mod random_ids;
pub mod settings;
pub mod shard_links;
pub mod sharding;
pub mod snapshot_receive;
pub mod snapshots;
pub mod state;
pub mod submit;
pub mod topology;
pub mod transactions;
pub mod watch;
