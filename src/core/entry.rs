//! What a normal raft entry carries: the replicated request, encoded with bincode.
//!
//! The origin (node, incarnation, request id) travels inside the entry so that the node
//! that proposed it, and only that node, replies to the waiting client when the entry is
//! applied: matching by id survives leader changes, unlike matching by queue position.

use serde::{Deserialize, Serialize};

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
        /// MULTI/EXEC: the reply is the array of every command's reply.
        transaction: bool,
        #[serde(deserialize_with = "crate::core::bounded_serde::argvs")]
        commands: Vec<Argv>,
    },
    /// Keys the leader found expired by `time_ms`; each node deletes those still
    /// expired at that time (one may have been given a new TTL meanwhile).
    ExpireKeys {
        time_ms: i64,
        #[serde(deserialize_with = "crate::core::bounded_serde::byte_strings")]
        keys: Vec<Vec<u8>>,
    },
}

/// Upper bound on an encoded payload, so a hostile or corrupt entry can't make us allocate
/// without limit while decoding.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024 * 1024;

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

    #[test]
    fn encoded_payloads_hold_no_spare_capacity() {
        let payload = Payload::Commands {
            origin: None,
            time_ms: 1,
            user: None,
            transaction: false,
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
            transaction: true,
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
    fn huge_declared_length_does_not_allocate() {
        // variant 1 (ExpireKeys), time 0, then a vec length of u64::MAX
        let bytes = [1u8, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(Payload::decode(&bytes).is_err());
    }
}
