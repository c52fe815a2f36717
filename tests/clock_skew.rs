//! Issue #14, item 8b: a node whose clock is behind takes over while the old leader writes. The node runs with a small
//! `LD_PRELOAD` shim (compiled here with gcc) that shifts `CLOCK_REALTIME` by
//! `REDISRAFT_TEST_CLOCK_OFFSET_MS`; it uses raw syscalls, so it allocates nothing and
//! does not disturb the server's allocator. Monotonic clocks (raft's timers) are left
//! alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::*;
use common::*;
use redis::Value;

const SHIM_SOURCE: &str = r#"
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <unistd.h>

static long long offset_ms(void) {
    static long long cached;
    static int ready;
    if (!ready) {
        const char *value = getenv("REDISRAFT_TEST_CLOCK_OFFSET_MS");
        cached = value ? atoll(value) : 0;
        ready = 1;
    }
    return cached;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int result = (int)syscall(SYS_clock_gettime, clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec
            + offset_ms() * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    (void)tz;
    if (result == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"#;

/// Builds the shim into `dir`; returns the library's path.
fn build_shim(dir: &Path) -> PathBuf {
    let source = dir.join("clock_shift.c");
    let library = dir.join("clock_shift.so");
    std::fs::write(&source, SHIM_SOURCE).expect("write the shim source");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("gcc (the clock shim needs a C compiler)");
    assert!(status.success(), "gcc failed to build the clock shim");
    library
}

/// A new leader whose clock is 20 s behind the old one's: its entries must not go back in
/// time. `XADD *` takes its id from the entry time, so an entry time earlier than the
/// stream's last id made `XADD *` fail ("equal or smaller") after such a failover.
#[test]
fn entry_times_never_go_back_after_a_failover_to_a_slower_clock() {
    let shim_dir = tempfile::tempdir().expect("temp dir");
    let shim = build_shim(shim_dir.path());
    let mut cluster = Cluster::start(2, ET_MS);
    cluster.join_with(3, |opts| {
        opts.env("LD_PRELOAD", shim.to_str().expect("utf-8 path"))
            .env("REDISRAFT_TEST_CLOCK_OFFSET_MS", "-20000")
    });
    let ids = cluster.ids();
    cluster.wait_voters(&ids, FORM_TIMEOUT);
    // The shim works: node 3's TIME is about 20 s behind.
    let time_of = |id: u64| -> i64 {
        let Value::Array(parts) = cluster.local(id, &["TIME"]) else {
            panic!("TIME")
        };
        value_text(&parts[0]).parse().expect("seconds")
    };
    let behind = time_of(1) - time_of(3);
    assert!((18..=22).contains(&behind), "node 3 is {behind} s behind");

    let mut leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    if leader == 3 {
        let _: Value = exec(
            &mut cluster.node(3).client(),
            &["RAFT.TRANSFER_LEADER", "1"],
        )
        .expect("transfer away from node 3");
        leader = cluster.wait_leader(&ids, CONVERGE_TIMEOUT);
    }
    // Writes right up to the transfer, so node 3 takes over with entries of the old
    // leader's (later) times not yet applied; then XADD * on node 3 at once.
    let writer = {
        let addr = cluster.addr(leader);
        std::thread::spawn(move || {
            let mut last = String::new();
            let Ok(mut con) = try_connect(&addr, std::time::Duration::from_secs(5)) else {
                return last;
            };
            while let Ok(id) = exec::<String>(&mut con, &["XADD", "s", "*", "f", "old"]) {
                last = id;
            }
            last
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _: Value = exec(
        &mut cluster.node(leader).client(),
        &["RAFT.TRANSFER_LEADER", "3"],
    )
    .expect("transfer to node 3");
    let mut con = cluster.node(3).client();
    let mut errors = Vec::new();
    let mut added = 0;
    let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
    while added < 200 && std::time::Instant::now() < deadline {
        match exec::<String>(&mut con, &["XADD", "s", "*", "f", "new"]) {
            Ok(_) => added += 1,
            Err(e) => {
                let text = err_text(&e);
                if !(text.starts_with("MOVED") || text.starts_with("CLUSTERDOWN")) {
                    errors.push(text);
                }
            }
        }
    }
    let last_old = writer.join().expect("writer");
    assert!(!last_old.is_empty(), "the old leader took no write");
    assert!(
        errors.is_empty(),
        "XADD * on the new leader failed: {errors:?}"
    );
    assert_eq!(added, 200, "node 3 never took the writes");
    cluster.wait_caught_up(&ids, CONVERGE_TIMEOUT);
    same_everywhere(&cluster, &ids, &["XRANGE", "s", "-", "+"]);
}
