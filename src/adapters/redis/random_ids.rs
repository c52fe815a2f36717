//! Random ids: node ids, dbids, the incarnation of this process.

use crate::adapters::redis::settings::with_config;

fn random_bytes(count: usize) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = vec![0u8; count];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("cannot read /dev/urandom");
    bytes
}

pub fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `raft.id` when set, else a random id.
pub fn pick_node_id() -> u64 {
    match with_config(|config| config.id) {
        0 => random_node_id(),
        configured => configured,
    }
}

/// Random id in 1..=i32::MAX, like RedisRaft (C) picks.
pub fn random_node_id() -> u64 {
    let bytes = random_bytes(4);
    let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff;
    u64::from(value.max(1))
}

pub fn random_u64() -> u64 {
    let bytes = random_bytes(8);
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}
