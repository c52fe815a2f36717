//! Deterministic entropy for raft-rs inside a simulation thread.
//!
//! raft-rs 0.7 draws every randomized election timeout from `rand::thread_rng()`, which
//! is seeded from the OS (`getrandom` 0.2, which calls `libc::syscall(SYS_getrandom)`).
//! `RaftNode` does not let us choose the timeout, so without help a seed would not replay:
//! elections would fire at different ticks on every run.
//!
//! This test binary therefore defines its own `syscall` symbol, which the static linker
//! prefers over glibc's for every call made from this executable. It answers
//! `SYS_getrandom` from a splitmix64 stream when the calling thread was marked with
//! [`make_thread_deterministic`] and forwards every other call (and `getrandom` on other
//! threads) to the kernel unchanged. Each simulated run executes on a fresh thread, so
//! its `thread_rng` is created inside the run and seeded from the run's seed.
//!
//! The `same_seed_same_run` test proves that this works: it runs one seed twice and
//! compares fingerprints. Only Linux x86_64 and aarch64 get the interposer; elsewhere
//! the simulation still checks safety but a seed may not replay exactly.
//!
//! If `RaftNode` ever exposes the election timeout range (raft's `min_election_tick` /
//! `max_election_tick`), this module can go.

use std::cell::Cell;

thread_local! {
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// From now on, `getrandom` on this thread returns a stream derived from `seed`.
pub fn make_thread_deterministic(seed: u64) {
    let mut state = seed ^ 0xE7E7_0F0F_1234_5678;
    let start = super::rng::splitmix64(&mut state);
    STREAM.with(|stream| stream.set(Some(start)));
}

/// Whether this platform has the interposer (otherwise seeds may not replay).
pub const DETERMINISTIC: bool = cfg!(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
));

/// Fills `len` bytes at `buf` if this thread is deterministic.
///
/// # Safety
/// `buf` must be valid for `len` bytes of writes.
#[allow(dead_code)]
unsafe fn deterministic_fill(buf: *mut u8, len: usize) -> bool {
    let Some(mut state) = STREAM.with(Cell::get) else {
        return false;
    };
    let mut written = 0;
    while written < len {
        let word = super::rng::splitmix64(&mut state).to_le_bytes();
        let take = (len - written).min(8);
        std::ptr::copy_nonoverlapping(word.as_ptr(), buf.add(written), take);
        written += take;
    }
    STREAM.with(|stream| stream.set(Some(state)));
    true
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod interpose {
    use std::os::raw::{c_int, c_long};

    extern "C" {
        fn __errno_location() -> *mut c_int;
    }

    #[cfg(target_arch = "x86_64")]
    const SYS_GETRANDOM: c_long = 318;
    #[cfg(target_arch = "aarch64")]
    const SYS_GETRANDOM: c_long = 278;

    /// Replaces glibc's variadic `syscall(number, ...)`. On these ABIs variadic integer
    /// arguments travel in the same registers (and stack slots) as fixed ones, so reading
    /// six arguments is what glibc itself does; unused ones are ignored by the kernel.
    #[no_mangle]
    pub unsafe extern "C" fn syscall(
        number: c_long,
        a1: c_long,
        a2: c_long,
        a3: c_long,
        a4: c_long,
        a5: c_long,
        a6: c_long,
    ) -> c_long {
        if number == SYS_GETRANDOM && super::deterministic_fill(a1 as *mut u8, a2 as usize) {
            return a2;
        }
        let ret = raw_syscall(number, a1, a2, a3, a4, a5, a6);
        if (-4095..0).contains(&ret) {
            *__errno_location() = (-ret) as c_int;
            return -1;
        }
        ret
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn raw_syscall(
        n: c_long,
        a1: c_long,
        a2: c_long,
        a3: c_long,
        a4: c_long,
        a5: c_long,
        a6: c_long,
    ) -> c_long {
        let ret: c_long;
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            in("r8") a5,
            in("r9") a6,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn raw_syscall(
        n: c_long,
        a1: c_long,
        a2: c_long,
        a3: c_long,
        a4: c_long,
        a5: c_long,
        a6: c_long,
    ) -> c_long {
        let ret: c_long;
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a1 => ret,
            in("x1") a2,
            in("x2") a3,
            in("x3") a4,
            in("x4") a5,
            in("x5") a6,
            options(nostack),
        );
        ret
    }
}
