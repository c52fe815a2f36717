//! Deterministic key expiry.
//!
//! Redis expires a key when *its own* clock passes the key's expiry time, lazily on access
//! or in its background cycle. Nodes apply the same entry at different moments, so a key
//! close to its expiry could be alive on the leader and gone on a follower when an `INCR`
//! is applied: the nodes would diverge. So Redis never expires anything itself here:
//!
//! - Every expiry time is stored shifted by [`NATIVE_OFFSET_MS`] (thousands of years), so
//!   no server clock ever reaches it. Relative TTLs become absolute ones computed from the
//!   entry's `time_ms`, the leader's clock when it proposed the entry ([`rewrite`]).
//! - "Now" is the entry's `time_ms` while applying, the local clock while serving a read.
//!   A key is logically expired when now is past its logical expiry ([`is_expired`]).
//! - Before a write runs, each node deletes the logically expired keys it names; the
//!   leader also proposes deletions of expired keys it finds while scanning. Reads that
//!   touch a logically expired key go through the log, which deletes it first.
//! - `TTL`, `PTTL`, `EXPIRETIME` and `PEXPIRETIME` are answered from the logical time
//!   ([`ttl_reply`]).

/// Shift between the logical expiry time (ms since the epoch) and what Redis stores:
/// 2^46 ms is about 2230 years.
pub const NATIVE_OFFSET_MS: i64 = 1 << 46;

/// The native (stored) expiry for a logical one, clamped so a far-future TTL stays
/// far in the future instead of overflowing.
pub fn to_native(logical_ms: i64) -> i64 {
    logical_ms.saturating_add(NATIVE_OFFSET_MS)
}

pub fn to_logical(native_ms: i64) -> i64 {
    native_ms - NATIVE_OFFSET_MS
}

/// The time an applied entry runs at: the time it carries, but never before the previous
/// entry's (`previous_ms`). A new leader can propose before it has applied the entries of
/// the old one; if its clock is behind, its entry carries an earlier time than an entry
/// just before it in the log (then `XADD *` would fail: its id would be below the
/// stream's top). Every node applies the same log, so every node takes the same running
/// maximum; a snapshot records it.
pub fn applied_entry_time(previous_ms: i64, entry_ms: i64) -> i64 {
    previous_ms.max(entry_ms)
}

/// The time a read on this node judges expiry at: the node's clock, but never before the
/// time of the last entry it applied. After a failover to a node whose clock is behind,
/// a key the log already had past its expiry must not come back.
pub fn read_time(wall_clock_ms: i64, applied_ms: i64) -> i64 {
    wall_clock_ms.max(applied_ms)
}

/// Whether a key whose stored expiry is `native_ms` (`None`: no expiry) is expired at
/// `now_ms`, with Redis' rule: expired once now is past the expiry time.
pub fn is_expired(native_ms: Option<i64>, now_ms: i64) -> bool {
    native_ms.is_some_and(|native| now_ms > to_logical(native))
}

/// Arguments to replace in a command so its expiry is absolute and shifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Replace the argument at `position`.
    Replace { position: usize, value: Vec<u8> },
    /// Append an argument (RESTORE's ABSTTL).
    Append(Vec<u8>),
}

fn eq(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Redis' strict integer syntax (no spaces, no `+`, no leading zeros).
fn parse_i64(arg: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(arg).ok()?;
    let valid_shape = matches!(
        text.as_bytes(),
        [b'0'] | [b'-', b'1'..=b'9', ..] | [b'1'..=b'9', ..]
    );
    if !valid_shape {
        return None;
    }
    text.parse().ok()
}

/// What Redis is given for an expiry that has passed at the entry's time: 1 ms after the
/// epoch, in the past of every server's clock, so every node deletes the key at once (as
/// Redis does for a time in the past) and none keeps it with a stored expiry that its own
/// clock could reach. Shifting a past time instead could land it near the real clock:
/// `EXPIRE k -70368744172` (about -2^46 ms) stored an expiry 5 s ahead, which each server
/// then expired on its own. Positive, as `SET ... PXAT` requires.
pub const PAST_NATIVE_MS: i64 = 1;

/// The stored expiry for a logical one at the entry's time `now_ms`: the shifted time
/// (clamped, so a far-future TTL stays far in the future instead of overflowing), or
/// [`PAST_NATIVE_MS`] once it has passed (Redis: expired once now is at or past it).
fn native_arg(logical_ms: i64, now_ms: i64) -> Vec<u8> {
    let native = if logical_ms <= now_ms {
        PAST_NATIVE_MS
    } else {
        to_native(logical_ms)
    };
    native.to_string().into_bytes()
}

/// A TTL argument whose absolute time overflows: Redis replies `ERR invalid expire time`.
/// Left as it is, Redis would decide with its own clock (`value + now` overflows on one
/// node and not on another whose clock is behind), so it is replaced by a value that
/// overflows whatever the clock.
const OVERFLOWING_ARG: &[u8] = b"9223372036854775807";

/// Logical absolute expiry from a TTL argument, or `None` when it overflows.
fn absolute(value: i64, unit_ms: i64, relative: bool, now_ms: i64) -> Option<i64> {
    let ms = value.checked_mul(unit_ms)?;
    if relative {
        ms.checked_add(now_ms)
    } else {
        Some(ms)
    }
}

/// The changes that make `argv` store an absolute shifted expiry, for every command that
/// sets one. `now_ms` is the entry's time. Commands without expiry arguments, and
/// arguments Redis will reject anyway, give no changes.
pub fn rewrite(argv: &[&[u8]], now_ms: i64) -> Vec<Rewrite> {
    let Some(name) = argv.first() else {
        return Vec::new();
    };
    // Runs for every command the module applies: compare without allocating.
    let mut buffer = [0u8; 16];
    let Some(lower) = buffer.get_mut(..name.len()) else {
        return Vec::new();
    };
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    let lower: &[u8] = lower;
    match lower {
        b"expire" | b"pexpire" | b"expireat" | b"pexpireat" => {
            let (unit_ms, relative) = match lower {
                b"expire" => (1000, true),
                b"pexpire" => (1, true),
                b"expireat" => (1000, false),
                _ => (1, false),
            };
            let Some(value) = argv.get(2).and_then(|arg| parse_i64(arg)) else {
                return Vec::new();
            };
            let Some(logical) = absolute(value, unit_ms, relative, now_ms) else {
                return vec![Rewrite::Replace {
                    position: 2,
                    value: OVERFLOWING_ARG.to_vec(),
                }];
            };
            vec![
                Rewrite::Replace {
                    position: 0,
                    value: b"PEXPIREAT".to_vec(),
                },
                Rewrite::Replace {
                    position: 2,
                    value: native_arg(logical, now_ms),
                },
            ]
        }
        b"set" => option_rewrite(argv, 3, now_ms),
        b"getex" => option_rewrite(argv, 2, now_ms),
        b"setex" | b"psetex" => {
            // SETEX key seconds value → SET key value PXAT <native>
            let unit_ms = if lower == b"setex" { 1000 } else { 1 };
            if argv.len() != 4 {
                return Vec::new();
            }
            let Some(value) = parse_i64(argv[2]).filter(|value| *value > 0) else {
                return Vec::new();
            };
            let Some(logical) = absolute(value, unit_ms, true, now_ms) else {
                return vec![Rewrite::Replace {
                    position: 2,
                    value: OVERFLOWING_ARG.to_vec(),
                }];
            };
            vec![
                Rewrite::Replace {
                    position: 0,
                    value: b"SET".to_vec(),
                },
                Rewrite::Replace {
                    position: 2,
                    value: argv[3].to_vec(),
                },
                Rewrite::Replace {
                    position: 3,
                    value: b"PXAT".to_vec(),
                },
                Rewrite::Append(native_arg(logical, now_ms)),
            ]
        }
        b"restore" | b"restore-asking" => {
            let Some(ttl) = argv.get(2).and_then(|arg| parse_i64(arg)) else {
                return Vec::new();
            };
            if ttl <= 0 || argv.len() < 4 {
                return Vec::new();
            }
            let absolute_given = argv[4..].iter().any(|arg| eq(arg, "absttl"));
            let Some(logical) = absolute(ttl, 1, !absolute_given, now_ms) else {
                // RESTORE takes any positive TTL: only `ttl + now` can overflow. Redis
                // would wrap it into the past; at the latest possible time instead.
                return vec![
                    Rewrite::Replace {
                        position: 2,
                        value: i64::MAX.to_string().into_bytes(),
                    },
                    Rewrite::Append(b"ABSTTL".to_vec()),
                ];
            };
            let mut changes = vec![Rewrite::Replace {
                position: 2,
                value: native_arg(logical, now_ms),
            }];
            if !absolute_given {
                changes.push(Rewrite::Append(b"ABSTTL".to_vec()));
            }
            changes
        }
        _ => Vec::new(),
    }
}

/// `SET`/`GETEX`: the first `EX|PX|EXAT|PXAT <n>` pair from `first_option` on becomes
/// `PXAT <native>`. Redis rejects a non-positive value, so those stay untouched.
fn option_rewrite(argv: &[&[u8]], first_option: usize, now_ms: i64) -> Vec<Rewrite> {
    for position in first_option..argv.len() {
        let option = argv[position];
        let (unit_ms, relative) = if eq(option, "ex") {
            (1000, true)
        } else if eq(option, "px") {
            (1, true)
        } else if eq(option, "exat") {
            (1000, false)
        } else if eq(option, "pxat") {
            (1, false)
        } else {
            continue;
        };
        let Some(value) = argv
            .get(position + 1)
            .and_then(|arg| parse_i64(arg))
            .filter(|value| *value > 0)
        else {
            return Vec::new();
        };
        let Some(logical) = absolute(value, unit_ms, relative, now_ms) else {
            return vec![Rewrite::Replace {
                position: position + 1,
                value: OVERFLOWING_ARG.to_vec(),
            }];
        };
        return vec![
            Rewrite::Replace {
                position,
                value: b"PXAT".to_vec(),
            },
            Rewrite::Replace {
                position: position + 1,
                value: native_arg(logical, now_ms),
            },
        ];
    }
    Vec::new()
}

/// Applies `rewrite`'s changes to an owned argv.
pub fn rewritten(argv: &[Vec<u8>], now_ms: i64) -> Option<Vec<Vec<u8>>> {
    let slices: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let changes = rewrite(&slices, now_ms);
    if changes.is_empty() {
        return None;
    }
    let mut result = argv.to_vec();
    for change in changes {
        match change {
            Rewrite::Replace { position, value } => result[position] = value,
            Rewrite::Append(value) => result.push(value),
        }
    }
    Some(result)
}

/// `XADD ... * ...` → `XADD ... <time_ms>-* ...`: the id's time part comes from the entry,
/// not from each node's clock (Redis picks the sequence). Returns the position and value.
pub fn stream_id_rewrite(argv: &[&[u8]], now_ms: i64) -> Option<(usize, Vec<u8>)> {
    if !argv.first()?.eq_ignore_ascii_case(b"xadd") {
        return None;
    }
    // XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] id field value ...
    let mut position = 2;
    loop {
        let arg = argv.get(position)?;
        if eq(arg, "nomkstream") {
            position += 1;
        } else if eq(arg, "maxlen") || eq(arg, "minid") {
            position += 1;
            if argv.get(position).is_some_and(|a| *a == b"=" || *a == b"~") {
                position += 1;
            }
            position += 1;
            if argv.get(position).is_some_and(|a| eq(a, "limit")) {
                position += 2;
            }
        } else {
            break;
        }
    }
    (*argv.get(position)? == b"*").then(|| (position, format!("{}-*", now_ms.max(0)).into_bytes()))
}

/// The four commands that report a key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlQuery {
    Ttl,
    Pttl,
    ExpireTime,
    PexpireTime,
}

impl TtlQuery {
    pub fn parse(name: &[u8]) -> Option<TtlQuery> {
        [
            (TtlQuery::Ttl, "ttl"),
            (TtlQuery::Pttl, "pttl"),
            (TtlQuery::ExpireTime, "expiretime"),
            (TtlQuery::PexpireTime, "pexpiretime"),
        ]
        .into_iter()
        .find(|(_, word)| name.eq_ignore_ascii_case(word.as_bytes()))
        .map(|(query, _)| query)
    }

    pub fn name(self) -> &'static str {
        match self {
            TtlQuery::Ttl => "TTL",
            TtlQuery::Pttl => "PTTL",
            TtlQuery::ExpireTime => "EXPIRETIME",
            TtlQuery::PexpireTime => "PEXPIRETIME",
        }
    }
}

/// What Redis would answer for a key that `exists` with stored expiry `native_ms`, at
/// logical time `now_ms` (same rounding as Redis' `ttlGenericCommand`).
pub fn ttl_reply(query: TtlQuery, exists: bool, native_ms: Option<i64>, now_ms: i64) -> i64 {
    if !exists || is_expired(native_ms, now_ms) {
        return -2;
    }
    let Some(native) = native_ms else {
        return -1;
    };
    let logical = to_logical(native);
    let value = match query {
        TtlQuery::Ttl | TtlQuery::Pttl => (logical - now_ms).max(0),
        TtlQuery::ExpireTime | TtlQuery::PexpireTime => logical.max(0),
    };
    match query {
        TtlQuery::Pttl | TtlQuery::PexpireTime => value,
        TtlQuery::Ttl | TtlQuery::ExpireTime => (value + 500) / 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn text(argv: &[Vec<u8>]) -> Vec<String> {
        argv.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn native(logical: i64) -> String {
        (logical + NATIVE_OFFSET_MS).to_string()
    }

    #[test]
    fn xadd_star_takes_the_entry_time() {
        let id = |words: &[&str]| {
            let argv: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
            stream_id_rewrite(&argv, 42)
        };
        assert_eq!(
            id(&["XADD", "s", "*", "f", "v"]),
            Some((2, b"42-*".to_vec()))
        );
        assert_eq!(
            id(&[
                "xadd",
                "s",
                "NOMKSTREAM",
                "MAXLEN",
                "~",
                "10",
                "LIMIT",
                "5",
                "*",
                "f",
                "v"
            ]),
            Some((8, b"42-*".to_vec()))
        );
        assert_eq!(
            id(&["XADD", "s", "MINID", "0", "*", "f", "v"]),
            Some((4, b"42-*".to_vec()))
        );
        assert_eq!(id(&["XADD", "s", "1-1", "f", "v"]), None);
        assert_eq!(id(&["XADD", "s"]), None);
        assert_eq!(id(&["SET", "s", "*"]), None);
    }

    #[test]
    fn expire_family_becomes_shifted_pexpireat() {
        let cases = [
            (vec!["EXPIRE", "k", "10"], NOW + 10_000),
            (vec!["pexpire", "k", "10"], NOW + 10),
            (vec!["EXPIREAT", "k", "1800000000"], 1_800_000_000_000),
            (vec!["PEXPIREAT", "k", "1700000000005"], NOW + 5),
        ];
        for (argv, logical) in cases {
            let result = rewritten(&args(&argv), NOW).unwrap();
            assert_eq!(text(&result), ["PEXPIREAT", "k", &native(logical)]);
        }
        // Passed at the entry's time (Redis: at or before now): deleted at once.
        for argv in [
            vec!["expire", "k", "-5"],
            vec!["EXPIRE", "k", "0"],
            vec!["PEXPIRE", "k", "0"],
            vec!["EXPIREAT", "k", "1700000000"],
            vec!["PEXPIREAT", "k", "5"],
        ] {
            let result = rewritten(&args(&argv), NOW).unwrap();
            assert_eq!(text(&result), ["PEXPIREAT", "k", "1"], "{argv:?}");
        }
        let with_flag = rewritten(&args(&["EXPIRE", "k", "10", "GT"]), NOW).unwrap();
        assert_eq!(text(&with_flag)[3], "GT");
    }

    #[test]
    fn invalid_numbers_are_left_for_redis_to_reject() {
        for argv in [
            vec!["EXPIRE", "k", "abc"],
            vec!["EXPIRE", "k", "+5"],
            vec!["EXPIRE", "k", "05"],
            vec!["EXPIRE", "k", " 5"],
            vec!["SET", "k", "v", "EX", "0"],
            vec!["SET", "k", "v", "PX", "-1"],
            vec!["SETEX", "k", "0", "v"],
            vec!["RESTORE", "k", "-1", "payload"],
            vec!["GETEX", "k", "EX", "x"],
        ] {
            assert_eq!(rewritten(&args(&argv), NOW), None, "{argv:?}");
        }
    }

    #[test]
    fn set_and_getex_options() {
        let set = rewritten(&args(&["set", "k", "v", "NX", "ex", "2", "GET"]), NOW).unwrap();
        assert_eq!(
            text(&set),
            ["set", "k", "v", "NX", "PXAT", &native(NOW + 2000), "GET"]
        );
        let exat = rewritten(&args(&["SET", "k", "v", "EXAT", "1800000000"]), NOW).unwrap();
        assert_eq!(
            text(&exat)[3..],
            ["PXAT".to_string(), native(1_800_000_000_000)]
        );
        let past = rewritten(&args(&["SET", "k", "v", "EXAT", "100"]), NOW).unwrap();
        assert_eq!(text(&past)[3..], ["PXAT", "1"]);
        assert_eq!(rewritten(&args(&["SET", "k", "v", "KEEPTTL"]), NOW), None);
        assert_eq!(rewritten(&args(&["SET", "k", "ex"]), NOW), None);
        let getex = rewritten(&args(&["GETEX", "k", "PX", "7"]), NOW).unwrap();
        assert_eq!(text(&getex), ["GETEX", "k", "PXAT", &native(NOW + 7)]);
        assert_eq!(rewritten(&args(&["GETEX", "k", "PERSIST"]), NOW), None);
    }

    #[test]
    fn setex_becomes_set_pxat() {
        let result = rewritten(&args(&["SETEX", "k", "3", "v"]), NOW).unwrap();
        assert_eq!(
            text(&result),
            ["SET", "k", "v", "PXAT", &native(NOW + 3000)]
        );
        let result = rewritten(&args(&["psetex", "k", "3", "v"]), NOW).unwrap();
        assert_eq!(text(&result), ["SET", "k", "v", "PXAT", &native(NOW + 3)]);
    }

    #[test]
    fn restore_gets_an_absolute_ttl() {
        let result = rewritten(&args(&["RESTORE", "k", "100", "p", "REPLACE"]), NOW).unwrap();
        assert_eq!(
            text(&result),
            ["RESTORE", "k", &native(NOW + 100), "p", "REPLACE", "ABSTTL"]
        );
        let at = (NOW + 100).to_string();
        let result = rewritten(&args(&["RESTORE", "k", &at, "p", "absttl"]), NOW).unwrap();
        assert_eq!(
            text(&result),
            ["RESTORE", "k", &native(NOW + 100), "p", "absttl"]
        );
        assert_eq!(rewritten(&args(&["RESTORE", "k", "0", "p"]), NOW), None);
    }

    /// Issue #14: whatever the TTL, the stored expiry is never one a server's clock could
    /// reach while the key lives (before, `EXPIRE k -70368744172` stored an expiry 5 s
    /// ahead, and each server expired the key on its own): either in everybody's past
    /// (deleted at once) or at least 2^45 ms (about 1,100 years) ahead of the entry time.
    #[test]
    fn no_ttl_stores_an_expiry_a_server_clock_can_reach() {
        let minus_2_46_s = (-NATIVE_OFFSET_MS / 1000).to_string();
        let minus_2_46_ms = (-NATIVE_OFFSET_MS).to_string();
        let near = [
            "-70368744172",
            "-70368744177",
            minus_2_46_s.as_str(),
            minus_2_46_ms.as_str(),
            "-70368744177664",
            "-1",
            "0",
            "1",
            "-9223372036854775",
            "-9223372036854775807",
            "-9223372036854775808",
            "9223372036854775",
            "9223372036854775807",
        ];
        for command in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
            for value in near {
                let argv = args(&[command, "k", value]);
                let Some(result) = rewritten(&argv, NOW) else {
                    panic!("{command} k {value} left to the server's clock");
                };
                if result[0] != b"PEXPIREAT" {
                    // An overflow: the server answers ERR whatever its clock.
                    assert_eq!(text(&result), [command, "k", "9223372036854775807"]);
                    continue;
                }
                let stored: i64 = text(&result)[2].parse().unwrap();
                assert!(
                    stored == PAST_NATIVE_MS || stored >= NOW + NATIVE_OFFSET_MS / 2,
                    "{command} k {value} stores {stored}, near the clock ({NOW})"
                );
            }
        }
        for (option, value) in [("EX", "9223372036854775"), ("PX", "9223372036854775000")] {
            let set = rewritten(&args(&["SET", "k", "v", option, value]), NOW).unwrap();
            assert_eq!(text(&set), ["SET", "k", "v", option, "9223372036854775807"]);
        }
        let set = rewritten(&args(&["SET", "k", "v", "PXAT", "5"]), NOW).unwrap();
        assert_eq!(text(&set), ["SET", "k", "v", "PXAT", "1"]);
        let setex = rewritten(&args(&["SETEX", "k", "9223372036854775", "v"]), NOW).unwrap();
        assert_eq!(text(&setex), ["SETEX", "k", "9223372036854775807", "v"]);
        let restore = rewritten(&args(&["RESTORE", "k", "9223372036854775000", "p"]), NOW);
        assert_eq!(
            text(&restore.unwrap()),
            ["RESTORE", "k", "9223372036854775807", "p", "ABSTTL"]
        );
        let restore = rewritten(&args(&["RESTORE", "k", "5", "p", "ABSTTL"]), NOW);
        assert_eq!(
            text(&restore.unwrap()),
            ["RESTORE", "k", "1", "p", "ABSTTL"]
        );
    }

    /// Issue #14 (item 8b): leader A proposes at 1,000 and 2,000; leader B, whose clock
    /// says 1,500, proposes before applying A's last entry. Along the log the times run
    /// at 1,000, 2,000, 2,000: B's `XADD *` gets an id above A's instead of failing.
    #[test]
    fn applied_entry_times_never_decrease_across_leaders() {
        let carried = [1_000, 2_000, 1_500, 2_500, 0];
        let mut previous = 0;
        let mut ids = Vec::new();
        for entry_ms in carried {
            let now = applied_entry_time(previous, entry_ms);
            assert!(now >= previous && now >= entry_ms);
            previous = now;
            let xadd: Vec<&[u8]> = vec![b"XADD", b"s", b"*", b"f", b"v"];
            let (_, id) = stream_id_rewrite(&xadd, now).unwrap();
            ids.push(String::from_utf8(id).unwrap());
        }
        assert_eq!(ids, ["1000-*", "2000-*", "2000-*", "2500-*", "2500-*"]);
    }

    /// Issue #14 (item 8c): a key expiring at 1,800 was past its expiry at the last
    /// applied entry (2,000); a new leader whose clock says 1,500 must not serve it.
    #[test]
    fn reads_judge_expiry_at_least_at_the_applied_time() {
        let stored = Some(to_native(1_800));
        assert!(is_expired(stored, read_time(1_500, 2_000)));
        assert!(!is_expired(stored, read_time(1_500, 1_700)));
        assert!(is_expired(stored, read_time(1_900, 0)));
        assert_eq!(
            ttl_reply(TtlQuery::Pttl, true, stored, read_time(1_500, 2_000)),
            -2
        );
    }

    #[test]
    fn far_future_expiry_is_clamped_not_overflowed() {
        let result = rewritten(&args(&["PEXPIREAT", "k", "9223372036854775000"]), NOW).unwrap();
        assert_eq!(text(&result)[2], i64::MAX.to_string());
        assert!(!is_expired(Some(i64::MAX), NOW));
    }

    #[test]
    fn expiry_follows_redis_rule() {
        let at = to_native(NOW);
        assert!(!is_expired(Some(at), NOW));
        assert!(is_expired(Some(at), NOW + 1));
        assert!(!is_expired(None, i64::MAX));
    }

    #[test]
    fn ttl_replies() {
        let native = Some(to_native(NOW + 1499));
        assert_eq!(ttl_reply(TtlQuery::Ttl, true, native, NOW), 1);
        assert_eq!(ttl_reply(TtlQuery::Pttl, true, native, NOW), 1499);
        assert_eq!(
            ttl_reply(TtlQuery::Ttl, true, Some(to_native(NOW + 1500)), NOW),
            2
        );
        assert_eq!(
            ttl_reply(TtlQuery::PexpireTime, true, native, NOW),
            NOW + 1499
        );
        assert_eq!(
            ttl_reply(TtlQuery::ExpireTime, true, native, NOW),
            (NOW + 1499 + 500) / 1000
        );
        assert_eq!(ttl_reply(TtlQuery::Ttl, true, None, NOW), -1);
        assert_eq!(ttl_reply(TtlQuery::Ttl, false, None, NOW), -2);
        assert_eq!(ttl_reply(TtlQuery::Pttl, true, native, NOW + 1500), -2);
        assert_eq!(ttl_reply(TtlQuery::Pttl, true, native, NOW + 1499), 0);
        assert_eq!(TtlQuery::parse(b"pTTl"), Some(TtlQuery::Pttl));
        assert_eq!(TtlQuery::parse(b"get"), None);
    }
}
