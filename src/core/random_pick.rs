//! Random choices every node makes identically: the seed comes from the log entry.

/// splitmix64: tiny, well-mixed, and the same everywhere.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed from an entry's time and a key, so two SPOPs in one entry on different keys
/// differ while every node agrees.
pub fn seed(time_ms: i64, key: &[u8]) -> u64 {
    // FNV-1a over the key, mixed with the time.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in key {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash ^ (time_ms as u64).rotate_left(17)
}

/// Picks `count` distinct members (all of them when `count` is larger) from `members`,
/// which the caller sorted so every node starts from the same order.
pub fn pick(mut members: Vec<Vec<u8>>, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let count = count.min(members.len());
    // Partial Fisher-Yates: the first `count` slots end up a uniform random sample.
    for slot in 0..count {
        let remaining = (members.len() - slot) as u64;
        let chosen = slot + (next(&mut state) % remaining) as usize;
        members.swap(slot, chosen);
    }
    members.truncate(count);
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("m{i:03}").into_bytes()).collect()
    }

    #[test]
    fn same_seed_same_pick() {
        let seed = seed(1_700_000_000_000, b"key");
        assert_eq!(pick(members(50), 5, seed), pick(members(50), 5, seed));
        assert_ne!(pick(members(50), 5, seed), pick(members(50), 5, seed + 1));
    }

    #[test]
    fn picks_are_distinct_members_and_bounded() {
        let picked = pick(members(10), 4, 7);
        assert_eq!(picked.len(), 4);
        let mut unique = picked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert!(picked.iter().all(|m| members(10).contains(m)));
        assert_eq!(pick(members(3), 10, 7).len(), 3);
        assert!(pick(Vec::new(), 1, 7).is_empty());
    }

    #[test]
    fn every_member_can_be_picked() {
        let mut seen = std::collections::HashSet::new();
        for s in 0..500 {
            seen.extend(pick(members(8), 1, seed(s, b"k")));
        }
        assert_eq!(seen.len(), 8);
    }
}
