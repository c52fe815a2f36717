//! Work handed to the Redis main thread from other threads: the raft thread's results
//! (drained by the task runner `apply` registers at load) and jobs of helper threads
//! (join, transfer waits, proxy replies). Every hand-over coalesces into one event-loop
//! callback.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::adapters::ffi;

/// Set from the moment a callback is scheduled until it starts: a wake before that joins it.
static WAKE_PENDING: AtomicBool = AtomicBool::new(false);

type Job = Box<dyn FnOnce() + Send>;
static JOBS: Mutex<VecDeque<Job>> = Mutex::new(VecDeque::new());
/// Jobs are tiny and rare; a full queue means something is stuck, so refuse more.
const MAX_JOBS: usize = 65_536;

/// Handles a bounded share of the raft thread's results; true if some may be left.
type TaskRunner = fn() -> bool;
static TASK_RUNNER: OnceLock<TaskRunner> = OnceLock::new();

/// At load: what a wake runs after the jobs (`apply::run_driver_tasks`).
pub fn set_task_runner(runner: TaskRunner) {
    if TASK_RUNNER.set(runner).is_err() {
        log::warn!("raft: the main thread's task runner was already set");
    }
}

/// Runs `job` on the Redis main thread soon. Callable from any thread.
pub fn run_on_main(job: Job) -> bool {
    {
        let mut jobs = JOBS.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.len() >= MAX_JOBS {
            return false;
        }
        jobs.push_back(job);
    }
    wake_main_thread();
    true
}

/// Called by the raft thread after queueing work; coalesces into one event-loop callback.
pub fn wake_main_thread() {
    if !WAKE_PENDING.swap(true, Ordering::SeqCst) && !ffi::run_on_main_thread(on_wake) {
        WAKE_PENDING.store(false, Ordering::SeqCst);
        log::warn!("raft: could not schedule work on the main thread");
    }
}

extern "C" fn on_wake(_: *mut c_void) {
    WAKE_PENDING.store(false, Ordering::SeqCst);
    let jobs: Vec<Job> = JOBS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    for job in jobs {
        job();
    }
    if TASK_RUNNER.get().is_some_and(|run| run()) {
        // More work is queued: come back on the next event-loop iteration.
        wake_main_thread();
    }
}
