//! The raft thread: the driver that owns the raft node, pumps its Ready cycles through
//! `core::ready`, writes the log (`disk`) and sends to peers (`network`).
pub mod driver;
