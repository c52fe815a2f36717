//! The scripts `EVALSHA` may run, kept as replicated state.
//!
//! Redis keeps a script cache per server: `SCRIPT LOAD` and `EVAL` add to it, and so does
//! an `EVAL_RO` served by one node as a read. A snapshot carries keys, not that cache, and
//! newer servers may evict `EVAL` scripts on their own. So `EVALSHA` never runs against
//! the server's cache: every node keeps this registry, changed only by applied entries
//! (and replaced by a loaded snapshot, which carries it), and runs `EVALSHA sha ...` as
//! `EVAL <body> ...` with the body registered here, or answers `NOSCRIPT` on every node
//! alike when there is none.

use std::collections::BTreeMap;

/// Redis' reply to an `EVALSHA` of an unknown digest.
pub const NOSCRIPT_ERROR: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// Script bodies by their SHA1 digest (lowercase hex, as Redis prints it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptRegistry {
    bodies: BTreeMap<String, Vec<u8>>,
}

/// The digest Redis names a script by.
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// What a command means for the registry.
#[derive(Debug, PartialEq, Eq)]
enum ScriptCommand<'a> {
    /// `SCRIPT LOAD <body>`.
    Load(&'a [u8]),
    /// `EVAL <body> ...`.
    Eval(&'a [u8]),
    /// `EVALSHA <sha> ...` (`read_only`: `EVALSHA_RO`).
    EvalSha {
        sha: &'a [u8],
        read_only: bool,
    },
    /// `SCRIPT FLUSH [ASYNC|SYNC]`.
    Flush,
    /// `SCRIPT EXISTS <sha>...`.
    Exists(&'a [Vec<u8>]),
    Other,
}

/// Whether the registry has anything to do with this command (`EVAL*`, `SCRIPT`): a
/// cheap test on the name before the registry is looked at, on every applied command.
pub fn concerns_registry(argv: &[Vec<u8>]) -> bool {
    argv.first().is_some_and(|name| {
        (name.len() >= 4 && name[..4].eq_ignore_ascii_case(b"eval"))
            || name.eq_ignore_ascii_case(b"script")
    })
}

fn classify(argv: &[Vec<u8>]) -> ScriptCommand<'_> {
    let (Some(name), Some(first)) = (argv.first(), argv.get(1)) else {
        return ScriptCommand::Other;
    };
    let is = |word: &[u8], wanted: &str| word.eq_ignore_ascii_case(wanted.as_bytes());
    if is(name, "eval") {
        ScriptCommand::Eval(first)
    } else if is(name, "evalsha") || is(name, "evalsha_ro") {
        ScriptCommand::EvalSha {
            sha: first,
            read_only: is(name, "evalsha_ro"),
        }
    } else if is(name, "script") && is(first, "load") && argv.len() == 3 {
        ScriptCommand::Load(&argv[2])
    } else if is(name, "script") && is(first, "flush") && argv.len() <= 3 {
        ScriptCommand::Flush
    } else if is(name, "script") && is(first, "exists") && argv.len() >= 3 {
        ScriptCommand::Exists(&argv[2..])
    } else {
        ScriptCommand::Other
    }
}

/// How the module runs a command that names a script by digest.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Not a command the registry changes the meaning of: run it as it is.
    Unchanged,
    /// Run this instead (`EVALSHA` as `EVAL` with the registered body).
    Run(Vec<Vec<u8>>),
    /// Answer this without running anything.
    NoScript,
    /// `SCRIPT EXISTS`: one flag per digest asked.
    Exists(Vec<bool>),
}

impl ScriptRegistry {
    pub fn from_bodies(bodies: impl IntoIterator<Item = Vec<u8>>) -> ScriptRegistry {
        let mut registry = ScriptRegistry::default();
        for body in bodies {
            registry.insert(body);
        }
        registry
    }

    /// Registers a body; returns its digest.
    pub fn insert(&mut self, body: Vec<u8>) -> String {
        let sha = sha1_hex(&body);
        self.bodies.insert(sha.clone(), body);
        sha
    }

    /// The body of a digest (any letter case, as Redis accepts).
    pub fn get(&self, sha: &[u8]) -> Option<&[u8]> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        self.bodies.get(&sha).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }

    /// Every digest, in order.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.bodies.keys().map(String::as_str)
    }

    /// Every body, in digest order (the same order on every node).
    pub fn bodies(&self) -> impl Iterator<Item = &[u8]> {
        self.bodies.values().map(Vec::as_slice)
    }

    /// What to run for `argv`, decided from the registry only (never the server's cache).
    pub fn resolve(&self, argv: &[Vec<u8>]) -> Resolved {
        match classify(argv) {
            ScriptCommand::EvalSha { sha, read_only } => match self.get(sha) {
                Some(body) => {
                    let name: &[u8] = if read_only { b"EVAL_RO" } else { b"EVAL" };
                    let mut run = Vec::with_capacity(argv.len());
                    run.push(name.to_vec());
                    run.push(body.to_vec());
                    run.extend(argv[2..].iter().cloned());
                    Resolved::Run(run)
                }
                None => Resolved::NoScript,
            },
            ScriptCommand::Exists(shas) => {
                Resolved::Exists(shas.iter().map(|sha| self.get(sha).is_some()).collect())
            }
            _ => Resolved::Unchanged,
        }
    }

    /// Records what an applied command did. `error`: the server's error reply, if any.
    /// A body that does not compile is not registered (Redis does not cache it either);
    /// a script that failed while running is, as in Redis.
    pub fn note_applied(&mut self, argv: &[Vec<u8>], error: Option<&[u8]>) {
        let compile_failed = error.is_some_and(|text| {
            text.windows(COMPILE_ERROR_MARK.len())
                .any(|window| window.eq_ignore_ascii_case(COMPILE_ERROR_MARK))
        });
        match classify(argv) {
            ScriptCommand::Load(body) if error.is_none() => {
                self.insert(body.to_vec());
            }
            ScriptCommand::Eval(body) if !compile_failed => {
                self.insert(body.to_vec());
            }
            ScriptCommand::Flush if error.is_none() => self.bodies.clear(),
            _ => {}
        }
    }
}

/// In the error of a script that does not compile (Redis 7.x and Valkey alike).
const COMPILE_ERROR_MARK: &[u8] = b"error compiling script";

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    const BODY: &str = "return redis.call('incr', KEYS[1])";

    #[test]
    fn digests_are_the_ones_redis_prints() {
        // `redis-cli SCRIPT LOAD "return 1"` prints this digest.
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn evalsha_runs_the_registered_body_or_answers_noscript() {
        let mut registry = ScriptRegistry::default();
        let sha = sha1_hex(BODY.as_bytes());
        let call = argv(&["evalsha", &sha.to_uppercase(), "1", "cnt"]);
        assert_eq!(registry.resolve(&call), Resolved::NoScript);
        registry.note_applied(&argv(&["SCRIPT", "LOAD", BODY]), None);
        assert_eq!(
            registry.resolve(&call),
            Resolved::Run(argv(&["EVAL", BODY, "1", "cnt"]))
        );
        let read = argv(&["EVALSHA_RO", &sha, "0"]);
        assert_eq!(
            registry.resolve(&read),
            Resolved::Run(argv(&["EVAL_RO", BODY, "0"]))
        );
        assert_eq!(
            registry.resolve(&argv(&["script", "exists", &sha, "00"])),
            Resolved::Exists(vec![true, false])
        );
        assert_eq!(registry.resolve(&argv(&["GET", "k"])), Resolved::Unchanged);
    }

    #[test]
    fn applied_commands_change_the_registry_like_the_script_cache() {
        let mut registry = ScriptRegistry::default();
        registry.note_applied(&argv(&["EVAL", "return 1", "0"]), None);
        registry.note_applied(
            &argv(&["EVAL", "return 2", "0"]),
            Some(b"ERR user_script:1: boom script: abc"),
        );
        registry.note_applied(
            &argv(&["EVAL", "retur 3", "0"]),
            Some(b"ERR Error compiling script (new function): user_script:1: syntax"),
        );
        registry.note_applied(&argv(&["SCRIPT", "LOAD", "bad"]), Some(b"ERR Error"));
        // EVAL_RO never changes what every node knows.
        registry.note_applied(&argv(&["EVAL_RO", "return 4", "0"]), None);
        let bodies: Vec<&[u8]> = registry.bodies().collect();
        assert_eq!(registry.len(), 2, "{bodies:?}");
        assert!(registry.get(sha1_hex(b"return 1").as_bytes()).is_some());
        assert!(registry.get(sha1_hex(b"return 2").as_bytes()).is_some());
        registry.note_applied(&argv(&["SCRIPT", "FLUSH", "ASYNC"]), None);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_registry_rebuilt_from_its_bodies_is_equal() {
        let mut registry = ScriptRegistry::default();
        registry.insert(b"return 1".to_vec());
        registry.insert(b"return 2".to_vec());
        let copy = ScriptRegistry::from_bodies(registry.bodies().map(<[u8]>::to_vec));
        assert_eq!(copy, registry);
    }
}
