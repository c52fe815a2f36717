//! When a node asks for a snapshot of its state machine, and when rewriting its log file
//! at a snapshot may wait. The driver decides on every tick with these functions, and the
//! simulation takes its snapshots by the same decision.

/// A log file this many times `log-max-file-size` is rewritten however much it copies.
pub const MAX_FILE_SIZE_FACTOR_BEFORE_FORCED_REWRITE: u64 = 4;
/// Below this, the copy a log rewrite makes is cheap enough to do at once.
pub const MIN_DEFERRED_TAIL_BYTES: u64 = 8 * 1024 * 1024;
/// After a snapshot was asked for (and failed, or is still being taken), wait this many
/// ticks before asking again.
pub const SNAPSHOT_RETRY_TICKS: u64 = 20;

/// What the decision looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogFileState {
    /// raft-rs asked for a snapshot (a follower needs one the log cannot give it).
    pub wanted_by_raft: bool,
    pub file_bytes: u64,
    pub max_file_size_bytes: u64,
}

/// Whether rewriting the log file, which would copy `tail_bytes` on the raft thread,
/// had better wait for a later snapshot: the copy is large, and the file is not yet far
/// past its limit (the hard ceiling keeps the disk bounded under constant load).
pub fn rewrite_can_wait(tail_bytes: u64, file_bytes: u64, max_file_size_bytes: u64) -> bool {
    let ceiling = max_file_size_bytes.saturating_mul(MAX_FILE_SIZE_FACTOR_BEFORE_FORCED_REWRITE);
    tail_bytes > MIN_DEFERRED_TAIL_BYTES && file_bytes <= ceiling
}

/// Whether to ask for a snapshot now. `unapplied_tail_bytes` gives the bytes of the file
/// after the last entry handed to the state machine (what a rewrite at a snapshot of the
/// applied state would copy); it walks the log, so it is asked only past the limit.
/// `ticks_since_last_request` is `None` when no request is outstanding.
pub fn should_request_snapshot(
    state: &LogFileState,
    unapplied_tail_bytes: impl FnOnce() -> u64,
    ticks_since_last_request: Option<u64>,
) -> bool {
    if !state.wanted_by_raft {
        if state.file_bytes <= state.max_file_size_bytes {
            return false;
        }
        // While most of the file is not applied yet (e.g. one 100 MB entry in flight) a
        // snapshot would be followed by a rewrite copying nearly all of it: wait until
        // that tail is applied.
        if rewrite_can_wait(
            unapplied_tail_bytes(),
            state.file_bytes,
            state.max_file_size_bytes,
        ) {
            return false;
        }
    }
    ticks_since_last_request.is_none_or(|ticks| ticks >= SNAPSHOT_RETRY_TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A log file's state and its unapplied tail.
    fn state(wanted_by_raft: bool, file_bytes: u64, tail_bytes: u64) -> (LogFileState, u64) {
        let state = LogFileState {
            wanted_by_raft,
            file_bytes,
            max_file_size_bytes: 100 * MIB,
        };
        (state, tail_bytes)
    }

    fn ask((state, tail_bytes): (LogFileState, u64), since: Option<u64>) -> bool {
        should_request_snapshot(&state, || tail_bytes, since)
    }

    #[test]
    fn the_tail_is_measured_only_past_the_limit() {
        let (below, _) = state(false, MIB, 0);
        let measured = std::cell::Cell::new(false);
        let tail = || {
            measured.set(true);
            0
        };
        assert!(!should_request_snapshot(&below, tail, None));
        assert!(!measured.get());
    }

    #[test]
    fn a_snapshot_is_asked_for_past_the_limit_or_when_raft_needs_one() {
        assert!(!ask(state(false, 100 * MIB, 0), None));
        assert!(ask(state(false, 100 * MIB + 1, 0), None));
        assert!(ask(state(true, 1, 0), None));
    }

    #[test]
    fn a_large_unapplied_tail_defers_the_snapshot_until_the_ceiling() {
        let tail = MIN_DEFERRED_TAIL_BYTES + 1;
        assert!(!ask(state(false, 150 * MIB, tail), None));
        assert!(ask(state(false, 150 * MIB, MIN_DEFERRED_TAIL_BYTES), None));
        assert!(ask(state(false, 400 * MIB + 1, tail), None));
        // raft's need is not deferred.
        assert!(ask(state(true, 150 * MIB, tail), None));
    }

    #[test]
    fn an_outstanding_request_is_repeated_only_after_the_retry_interval() {
        let past_limit = state(false, 200 * MIB, 0);
        assert!(!ask(past_limit, Some(0)));
        assert!(!ask(past_limit, Some(SNAPSHOT_RETRY_TICKS - 1)));
        assert!(ask(past_limit, Some(SNAPSHOT_RETRY_TICKS)));
    }
}
