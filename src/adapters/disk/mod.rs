//! Files: the raft log (`logio`, format in `docs/LOG_FORMAT.md`) and the snapshot files
//! next to it (`snapshot_files`, format in `docs/SNAPSHOT_FORMAT.md`).
pub mod logio;
pub mod snapshot_files;
