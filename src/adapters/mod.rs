//! The thin adapters between the pure core and the outside world, grouped by what they
//! touch. Imports go one way only, down this list (`tests/layering.rs` checks it):
//!
//! 1. `redis`: the Redis main thread (and the snapshot fork child): commands, the
//!    filter, applying committed entries, blocking, replies, configs, INFO.
//! 2. `raft_thread`: the driver, the task of the raft thread that owns the raft node and
//!    the log (the thread is the network group's runtime).
//! 3. `network`: peer connections both ways (transport, listener, snapshot sending, TLS).
//! 4. `disk`: the log file and the snapshot files.
//! 5. shared leaves any layer may use: `queue` (bounded channels), `counters` (what INFO
//!    counts) and `ffi` (the only `unsafe`, the Redis module API).
//!
//! Below all of them is `crate::core`, which imports no adapter.
pub mod counters;
pub mod disk;
pub mod ffi;
pub mod network;
pub mod queue;
pub mod raft_thread;
pub mod redis;
