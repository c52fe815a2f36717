//! Requests the driver has handed to raft and not yet seen resolved.
//!
//! Proposals are tracked by the (index, term) raft gave them: when an entry commits at the
//! same index with a different term, the proposal was overwritten and its client must hear
//! `TIMEOUT not committed yet`. Reads are grouped in batches that share one ReadIndex round.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// A request id chosen by the adapter; unique within one process incarnation.
pub type RequestId = u64;

/// A map keyed by request id. The ids are this node's own sequence numbers, never chosen
/// by a client, so a multiplicative hash does: SipHash's defence against chosen keys
/// bought nothing and cost a few percent of the leader's main thread per command.
pub type RequestIdMap<V> = HashMap<RequestId, V, BuildHasherDefault<RequestIdHasher>>;

/// Fibonacci hashing of one u64 (the top bits, which the table uses, mix every input bit).
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestIdHasher(u64);

const FIBONACCI_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for RequestIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(FIBONACCI_MULTIPLIER);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(FIBONACCI_MULTIPLIER);
    }
}

#[derive(Debug, Default)]
pub struct ProposalTable {
    by_index: BTreeMap<u64, (u64, RequestId)>,
}

impl ProposalTable {
    pub fn insert(&mut self, index: u64, term: u64, request_id: RequestId) {
        let previous = self.by_index.insert(index, (term, request_id));
        assert!(
            previous.is_none(),
            "two live proposals at index {index}: raft handed out an index twice"
        );
    }

    /// An entry committed at `index` with `term`. Returns the requests that can no longer
    /// commit: every proposal at or below `index` whose term differs. The proposal that
    /// matches is removed too: the apply of that entry answers it.
    pub fn on_committed(&mut self, index: u64, term: u64) -> Vec<RequestId> {
        let mut lost = Vec::new();
        while let Some(entry) = self.by_index.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (proposed_index, (proposed_term, request_id)) = entry.remove_entry();
            if proposed_index != index || proposed_term != term {
                lost.push(request_id);
            }
        }
        lost
    }

    /// Leadership was lost: no proposal's fate is known any more.
    pub fn drain_all(&mut self) -> Vec<RequestId> {
        std::mem::take(&mut self.by_index)
            .into_values()
            .map(|(_, id)| id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }
}

/// Reads waiting for a ReadIndex confirmation, one batch per raft round.
#[derive(Debug, Default)]
pub struct ReadBatches {
    next_batch_id: u64,
    waiting: BTreeMap<u64, (u64, Vec<RequestId>)>,
    /// Reads waiting for the round in flight to finish (see [`ReadBatches::next_round`]).
    queued: Vec<RequestId>,
}

impl ReadBatches {
    /// Reads to confirm in a later round.
    pub fn queue(&mut self, request_ids: impl IntoIterator<Item = RequestId>) {
        self.queued.extend(request_ids);
    }

    /// Many concurrent reads share one ReadIndex round, and only one round is in flight:
    /// reads queued meanwhile wait for the next one, so a read-heavy load costs one
    /// heartbeat round per batch instead of one per driver iteration. Returns the context
    /// of the round to start (all queued reads), or `None`.
    pub fn next_round(&mut self, now_tick: u64) -> Option<Vec<u8>> {
        if self.queued.is_empty() || !self.waiting.is_empty() {
            return None;
        }
        let request_ids = std::mem::take(&mut self.queued);
        Some(self.start(request_ids, now_tick))
    }

    /// The queued reads, taken out (a node that does not lead cannot start their round).
    pub fn take_queued(&mut self) -> Vec<RequestId> {
        std::mem::take(&mut self.queued)
    }

    /// Starts a batch; the returned bytes are the ReadIndex context raft echoes back.
    pub fn start(&mut self, request_ids: Vec<RequestId>, now_tick: u64) -> Vec<u8> {
        assert!(!request_ids.is_empty(), "an empty read batch is a bug");
        self.next_batch_id += 1;
        self.waiting
            .insert(self.next_batch_id, (now_tick, request_ids));
        self.next_batch_id.to_le_bytes().to_vec()
    }

    /// Raft confirmed the batch named by `context`; unknown contexts (e.g. expired) give None.
    pub fn confirm(&mut self, context: &[u8]) -> Option<Vec<RequestId>> {
        let batch_id = u64::from_le_bytes(context.try_into().ok()?);
        self.waiting.remove(&batch_id).map(|(_, ids)| ids)
    }

    /// Batches started more than `timeout_ticks` ago: their quorum did not answer in time.
    pub fn expire(&mut self, now_tick: u64, timeout_ticks: u64) -> Vec<RequestId> {
        let expired: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (started, _))| now_tick.saturating_sub(*started) > timeout_ticks)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .flat_map(|id| {
                self.waiting
                    .remove(&id)
                    .map(|(_, ids)| ids)
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every read, in a round or queued.
    pub fn drain_all(&mut self) -> Vec<RequestId> {
        let mut ids: Vec<RequestId> = std::mem::take(&mut self.waiting)
            .into_values()
            .flat_map(|(_, ids)| ids)
            .collect();
        ids.append(&mut self.queued);
        ids
    }

    pub fn len(&self) -> usize {
        self.waiting.values().map(|(_, ids)| ids.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn sequential_request_ids_spread_over_the_table() {
        let hasher = BuildHasherDefault::<RequestIdHasher>::default();
        let hashes: Vec<u64> = (1..=4096u64).map(|id| hasher.hash_one(id)).collect();
        let distinct: std::collections::BTreeSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), hashes.len());
        // hashbrown picks buckets from the low bits and tags from the top 7: both must vary.
        let low: fn(u64) -> u64 = |h| h & 15;
        let top: fn(u64) -> u64 = |h| h >> 60;
        for (name, bucket_of) in [("low", low), ("top", top)] {
            let mut counts = [0usize; 16];
            for hash in &hashes {
                counts[bucket_of(*hash) as usize] += 1;
            }
            assert!(
                counts.iter().all(|&n| (128..=512).contains(&n)),
                "{name} bits cluster: {counts:?}"
            );
        }
        let mut map = RequestIdMap::default();
        for id in 0..10_000u64 {
            map.insert(id, id * 2);
        }
        assert!((0..10_000u64).all(|id| map.remove(&id) == Some(id * 2)));
    }

    #[test]
    fn matching_commit_resolves_silently() {
        let mut table = ProposalTable::default();
        table.insert(5, 2, 100);
        table.insert(6, 2, 101);
        assert!(table.on_committed(5, 2).is_empty());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn overwritten_entries_are_reported() {
        let mut table = ProposalTable::default();
        table.insert(5, 2, 100);
        table.insert(6, 2, 101);
        table.insert(7, 2, 102);
        // A new leader's entries replaced ours from index 5 on.
        assert_eq!(table.on_committed(5, 3), vec![100]);
        assert_eq!(table.on_committed(7, 3), vec![101, 102]);
        assert!(table.is_empty());
    }

    #[test]
    fn leadership_loss_drains_everything() {
        let mut table = ProposalTable::default();
        table.insert(1, 1, 10);
        table.insert(2, 1, 11);
        assert_eq!(table.drain_all(), vec![10, 11]);
        assert!(table.is_empty());
    }

    #[test]
    #[should_panic(expected = "two live proposals")]
    fn duplicate_index_is_a_bug() {
        let mut table = ProposalTable::default();
        table.insert(1, 1, 10);
        table.insert(1, 1, 11);
    }

    #[test]
    fn read_batches_confirm_and_expire() {
        let mut reads = ReadBatches::default();
        let first = reads.start(vec![1, 2], 10);
        let second = reads.start(vec![3], 12);
        assert_eq!(reads.len(), 3);
        assert_eq!(reads.confirm(&first), Some(vec![1, 2]));
        assert_eq!(reads.confirm(&first), None);
        assert_eq!(reads.confirm(b"bad"), None);
        assert!(reads.expire(14, 5).is_empty());
        assert_eq!(reads.expire(18, 5), vec![3]);
        assert_eq!(reads.confirm(&second), None);
        assert!(reads.is_empty());
    }

    #[test]
    fn one_round_is_in_flight_and_the_queue_waits_for_the_next() {
        let mut reads = ReadBatches::default();
        assert_eq!(reads.next_round(1), None);
        reads.queue([1, 2]);
        let first = reads.next_round(1).expect("a round starts");
        reads.queue([3]);
        assert_eq!(reads.next_round(2), None, "one round in flight");
        assert_eq!(reads.confirm(&first), Some(vec![1, 2]));
        let second = reads.next_round(3).expect("the queue goes next");
        reads.queue([4]);
        assert_eq!(reads.drain_all(), vec![3, 4]);
        assert_eq!(reads.confirm(&second), None);
        reads.queue([5]);
        assert_eq!(reads.take_queued(), vec![5]);
        assert_eq!(reads.next_round(4), None);
    }
}
