//! A counting wrapper around the system allocator, for tests that must prove a decoder
//! never allocates more than its input justifies (a hostile length prefix must be refused
//! before anything is reserved). Never the module's allocator: test binaries install it
//! with `#[global_allocator]`; counters are per thread, so parallel tests do not mix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct CountingAlloc;

thread_local! {
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<i64> = const { Cell::new(0) };
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn record_alloc(size: usize) {
    // try_with: nothing to record while the thread's locals are being torn down.
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + size as i64;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = LARGEST_BYTES.try_with(|largest| largest.set(largest.get().max(size)));
}

fn record_free(size: usize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get() - size as i64));
}

/// What this thread allocated since the last `reset`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocStats {
    /// Highest number of bytes live at once, counted from the reset (memory allocated
    /// before it and freed after can make the live count negative; it never lowers this).
    pub peak_bytes: u64,
    /// Largest single allocation or reallocation.
    pub largest_bytes: u64,
}

impl CountingAlloc {
    /// Starts a new measurement on this thread.
    pub fn reset() {
        LIVE_BYTES.with(|live| live.set(0));
        PEAK_BYTES.with(|peak| peak.set(0));
        LARGEST_BYTES.with(|largest| largest.set(0));
    }

    pub fn stats() -> AllocStats {
        AllocStats {
            peak_bytes: PEAK_BYTES.with(Cell::get).max(0) as u64,
            largest_bytes: LARGEST_BYTES.with(Cell::get) as u64,
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the bookkeeping only touches const-initialised thread-locals
// (no allocation, no destructor) and never the returned memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_alloc(layout.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_alloc(layout.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record_free(layout.size());
        // SAFETY: ptr was allocated by System with this layout (all our allocations are).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_free(layout.size());
        record_alloc(new_size);
        // SAFETY: ptr/layout come from this allocator (System underneath); caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
