//! What a normal raft entry carries: the replicated request, encoded with bincode.
//!
//! The origin (node, incarnation, request id) travels inside the entry so that the node
//! that proposed it, and only that node, replies to the waiting client when the entry is
//! applied: matching by id survives leader changes, unlike matching by queue position.

use serde::{Deserialize, Serialize};

use crate::core::bounded_serde::varint_len;

/// Who is waiting for an entry's result. `incarnation` changes on every process start, so a
/// request id from before a restart can never be confused with a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub node_id: u64,
    pub incarnation: u64,
    pub request_id: u64,
}

/// One command as the client sent it: argv[0] is the command name.
pub type Argv = Vec<Vec<u8>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Commands applied in order as one unit (a single command, or a MULTI/EXEC body).
    Commands {
        origin: Option<Origin>,
        /// The leader's clock when it proposed the entry (ms since the epoch, never
        /// decreasing along the log): the only "now" expiry and stream ids may use.
        time_ms: i64,
        /// ACL user the commands run as; `None` runs them unrestricted.
        #[serde(deserialize_with = "crate::core::bounded_serde::opt_string")]
        user: Option<String>,
        /// [`FLAG_TRANSACTION`] | [`FLAG_ASKING`]. One byte, as the `transaction: bool` it
        /// replaced (so entries written before read alike).
        flags: u8,
        #[serde(
            serialize_with = "crate::core::bounded_serde::write_argvs",
            deserialize_with = "crate::core::bounded_serde::argvs"
        )]
        commands: Vec<Argv>,
    },
    /// Keys the leader found expired by `time_ms`; each node deletes those still
    /// expired at that time (one may have been given a new TTL meanwhile).
    ExpireKeys {
        time_ms: i64,
        #[serde(
            serialize_with = "crate::core::bounded_serde::write_byte_strings",
            deserialize_with = "crate::core::bounded_serde::byte_strings"
        )]
        keys: Vec<Vec<u8>>,
    },
    /// A change of the shard map (`core::shards`); the node of `origin` answers its
    /// client `OK`, or why the change was refused when it was applied.
    ShardMap {
        origin: Option<Origin>,
        change: crate::core::shards::ShardMapChange,
    },
    /// A step of a slot migration (`core::shards::MigrationStep`), at the leader's time.
    Migration {
        origin: Option<Origin>,
        time_ms: i64,
        step: crate::core::shards::MigrationStep,
    },
}

/// `Payload::Commands::flags`: MULTI/EXEC, the reply is the array of every command's reply.
pub const FLAG_TRANSACTION: u8 = 1;
/// `Payload::Commands::flags`: the client sent `ASKING` first (it may use an importing
/// slot).
pub const FLAG_ASKING: u8 = 2;

/// Upper bound on an encoded payload, so a hostile or corrupt entry can't make us allocate
/// without limit while decoding.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024 * 1024;

/// Largest encoded payload a client's request may be proposed with. The entry must fit
/// one log record (`logfile::MAX_RECORD_BYTES`, which adds the entry's index, term and
/// type), decode again on every node (`MAX_PAYLOAD_BYTES`), travel to followers in one
/// `RAFT.MSG` bulk string (the server's default `proto-max-bulk-len` is 512 MiB, and the
/// peer codec's limit too), and a value it writes must fit a snapshot record
/// (`snapshot::MAX_SNAPSHOT_RECORD_BYTES`, with its key and DUMP framing). 1 MiB below
/// the smallest of those leaves room for every one of these framings. A larger request
/// is refused before it is proposed: once in the log it would stop every leader that
/// tried to append it.
pub const MAX_PROPOSAL_BYTES: usize = 511 * 1024 * 1024;

/// A request whose entry would be over [`MAX_PROPOSAL_BYTES`]; nothing was proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalTooLarge {
    /// Upper bound of the entry's encoded payload.
    pub bytes: usize,
}

impl std::fmt::Display for ProposalTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ERR request too large for the raft log: its entry would take {} bytes, the limit is {} bytes",
            self.bytes, MAX_PROPOSAL_BYTES
        )
    }
}

impl std::error::Error for ProposalTooLarge {}

/// Bytes of a byte string (or an argv) encoded as a sequence: its length, then its bytes.
fn bytes_len(bytes: &[u8]) -> usize {
    varint_len(bytes.len() as u64) + bytes.len()
}

/// Upper bound of the encoded `Payload::Commands` carrying `commands` for `user`, whatever
/// origin and time the entry gets: those are counted at their longest encoding. Computed
/// from the lengths alone (a value of hundreds of MB is not walked through).
pub fn commands_payload_bound(commands: &[Argv], user: Option<&str>) -> usize {
    let variant = 1;
    let origin = 1 + 3 * 9;
    let time_ms = 9;
    let user = 1 + user.map_or(0, |user| bytes_len(user.as_bytes()));
    let flags = 1;
    let commands_len = varint_len(commands.len() as u64)
        + commands
            .iter()
            .map(|argv| {
                varint_len(argv.len() as u64) + argv.iter().map(|a| bytes_len(a)).sum::<usize>()
            })
            .sum::<usize>();
    variant + origin + time_ms + user + flags + commands_len
}

/// Refuses `commands` if their entry could be over [`MAX_PROPOSAL_BYTES`].
pub fn check_proposal_size(commands: &[Argv], user: Option<&str>) -> Result<(), ProposalTooLarge> {
    let bytes = commands_payload_bound(commands, user);
    if bytes > MAX_PROPOSAL_BYTES {
        return Err(ProposalTooLarge { bytes });
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub struct PayloadError(pub String);

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid entry payload: {}", self.0)
    }
}

impl std::error::Error for PayloadError {}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD_BYTES>()
}

impl Payload {
    /// The bytes of a log entry. Exactly sized: the leader keeps them in its entry cache,
    /// and the encoder's doubling growth left a 4 KB value in an 8 KB allocation (a third
    /// of the leader's memory in a 4 KB SET benchmark). Measured first, then written
    /// once: growing and shrinking copied every value several times on the hot path.
    pub fn encode(&self) -> Vec<u8> {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(self, &mut size, bincode_config())
            .expect("measuring a payload cannot fail");
        let mut bytes = vec![0u8; size.bytes_written];
        let written = bincode::serde::encode_into_slice(self, &mut bytes, bincode_config())
            .expect("a payload fits the size just measured");
        assert_eq!(
            written,
            bytes.len(),
            "payload encoding is not deterministic"
        );
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let (payload, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
            .map_err(|e| PayloadError(e.to_string()))?;
        if used != bytes.len() {
            return Err(PayloadError(format!(
                "{} trailing bytes after payload",
                bytes.len() - used
            )));
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Payload` as serde derives it, without the whole-byte-string writers: the
    /// encoding logs and peers already hold.
    #[derive(Serialize)]
    enum DerivedPayload {
        Commands {
            origin: Option<Origin>,
            time_ms: i64,
            user: Option<String>,
            transaction: bool,
            commands: Vec<Argv>,
        },
        ExpireKeys {
            time_ms: i64,
            keys: Vec<Vec<u8>>,
        },
    }

    #[test]
    fn byte_strings_written_whole_encode_as_serde_derives_them() {
        let commands = vec![
            vec![b"SET".to_vec(), b"k".to_vec(), vec![7; 300]],
            vec![b"DEL".to_vec(), Vec::new(), vec![1; 70_000]],
            Vec::new(),
        ];
        let ours = Payload::Commands {
            origin: Some(Origin {
                node_id: 2,
                incarnation: 5,
                request_id: 9,
            }),
            time_ms: -3,
            user: Some("u".into()),
            flags: FLAG_TRANSACTION,
            commands: commands.clone(),
        };
        let derived = DerivedPayload::Commands {
            origin: Some(Origin {
                node_id: 2,
                incarnation: 5,
                request_id: 9,
            }),
            time_ms: -3,
            user: Some("u".into()),
            transaction: true,
            commands,
        };
        let derived_bytes = bincode::serde::encode_to_vec(&derived, bincode_config()).unwrap();
        assert_eq!(ours.encode(), derived_bytes);
        let keys = vec![b"a".to_vec(), vec![0; 251], Vec::new()];
        let ours = Payload::ExpireKeys {
            time_ms: 4,
            keys: keys.clone(),
        };
        let derived = DerivedPayload::ExpireKeys { time_ms: 4, keys };
        let derived_bytes = bincode::serde::encode_to_vec(&derived, bincode_config()).unwrap();
        assert_eq!(ours.encode(), derived_bytes);
    }

    #[test]
    fn encoded_payloads_hold_no_spare_capacity() {
        let payload = Payload::Commands {
            origin: None,
            time_ms: 1,
            user: None,
            flags: 0,
            commands: vec![vec![b"SET".to_vec(), b"k".to_vec(), vec![b'v'; 4096]]],
        };
        let bytes = payload.encode();
        assert_eq!(bytes.capacity(), bytes.len());
    }

    #[test]
    fn roundtrip() {
        let payload = Payload::Commands {
            origin: Some(Origin {
                node_id: 3,
                incarnation: 99,
                request_id: 7,
            }),
            time_ms: 1_700_000_000_000,
            user: Some("alice".into()),
            flags: FLAG_TRANSACTION | FLAG_ASKING,
            commands: vec![vec![b"SET".to_vec(), b"k".to_vec(), vec![0, 255, 10]]],
        };
        assert_eq!(Payload::decode(&payload.encode()).unwrap(), payload);
        let expire = Payload::ExpireKeys {
            time_ms: 5,
            keys: vec![b"a".to_vec()],
        };
        assert_eq!(Payload::decode(&expire.encode()).unwrap(), expire);
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert!(Payload::decode(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut bytes = Payload::ExpireKeys {
            time_ms: 0,
            keys: vec![],
        }
        .encode();
        bytes.push(0);
        assert!(Payload::decode(&bytes).is_err());
    }

    #[test]
    fn the_payload_bound_covers_every_origin_and_time() {
        // Lengths on each side of every varint width.
        let commands = vec![
            vec![
                b"MSET".to_vec(),
                b"k".to_vec(),
                vec![b'v'; 250],
                b"j".to_vec(),
            ],
            vec![b"SET".to_vec(), vec![b'x'; 251], vec![b'y'; 65_535]],
            vec![vec![b'z'; 65_536]; 251],
            Vec::new(),
        ];
        let bound = commands_payload_bound(&commands, Some("alice"));
        for (origin, time_ms) in [
            (None, 0),
            (
                Some(Origin {
                    node_id: u64::MAX,
                    incarnation: u64::MAX,
                    request_id: u64::MAX,
                }),
                i64::MAX,
            ),
            (
                Some(Origin {
                    node_id: 1,
                    incarnation: 1,
                    request_id: 1,
                }),
                i64::MIN,
            ),
        ] {
            for flags in [0, FLAG_TRANSACTION | FLAG_ASKING] {
                let encoded = Payload::Commands {
                    origin,
                    time_ms,
                    user: Some("alice".into()),
                    flags,
                    commands: commands.clone(),
                }
                .encode();
                assert!(encoded.len() <= bound, "{} > {bound}", encoded.len());
            }
        }
        let widest = Payload::Commands {
            origin: Some(Origin {
                node_id: u64::MAX,
                incarnation: u64::MAX,
                request_id: u64::MAX,
            }),
            time_ms: i64::MIN,
            user: Some("alice".into()),
            flags: FLAG_TRANSACTION,
            commands,
        };
        assert_eq!(
            widest.encode().len(),
            bound,
            "the bound is exact at the widest"
        );
    }

    /// A `SET k <value>` whose bound is `MAX_PROPOSAL_BYTES + extra`.
    fn set_of_bound(extra: usize) -> Vec<Argv> {
        let mut commands = vec![vec![b"SET".to_vec(), b"k".to_vec(), Vec::new()]];
        let overhead = commands_payload_bound(&commands, None);
        // The value's length prefix grows from 1 to 5 bytes once it holds bytes.
        let value_len = MAX_PROPOSAL_BYTES + extra - overhead - 4;
        commands[0][2] = vec![b'v'; value_len];
        assert_eq!(
            commands_payload_bound(&commands, None),
            MAX_PROPOSAL_BYTES + extra
        );
        commands
    }

    #[test]
    fn proposals_up_to_the_limit_are_accepted_and_one_byte_more_refused() {
        let at_limit = set_of_bound(0);
        assert_eq!(check_proposal_size(&at_limit, None), Ok(()));
        // The largest accepted entry still fits a log record at the widest index/term.
        let entry = raft::eraftpb::Entry {
            index: crate::core::logfile::MAX_LOG_INDEX,
            term: u64::MAX,
            data: Payload::Commands {
                origin: Some(Origin {
                    node_id: u64::MAX,
                    incarnation: u64::MAX,
                    request_id: u64::MAX,
                }),
                time_ms: i64::MIN,
                user: None,
                flags: FLAG_TRANSACTION,
                commands: at_limit,
            }
            .encode()
            .into(),
            ..Default::default()
        };
        let mut record = Vec::new();
        crate::core::logfile::encode_entry(&entry, &mut record)
            .expect("an entry of MAX_PROPOSAL_BYTES fits a log record");
        drop((entry, record));
        let over = set_of_bound(1);
        assert_eq!(
            check_proposal_size(&over, None),
            Err(ProposalTooLarge {
                bytes: MAX_PROPOSAL_BYTES + 1
            })
        );
        const { assert!(MAX_PROPOSAL_BYTES < crate::core::snapshot::MAX_SNAPSHOT_RECORD_BYTES) };
        const { assert!(MAX_PROPOSAL_BYTES < MAX_PAYLOAD_BYTES) };
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        // variant 1 (ExpireKeys), time 0, then a vec length of u64::MAX
        let bytes = [1u8, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(Payload::decode(&bytes).is_err());
    }
}
