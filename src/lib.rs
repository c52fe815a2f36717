//! redisraft: a Redis module that replicates commands through Raft.
pub mod adapters;
pub mod core;
