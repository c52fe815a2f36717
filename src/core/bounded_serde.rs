//! Serde helpers for decoding untrusted bytes: strings, byte strings and sequences are
//! built from what the input really holds, never pre-allocated from a length the input
//! claims: bincode's owned decoding of `Vec<u8>` and `String` reserves the claimed length
//! before reading, so these go through borrowed, bounds-checked slices; sequences grow
//! only as their elements actually decode.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// Bytes of an unsigned integer (a length, a variant index) in bincode's standard varint
/// encoding (`config::standard()`), for sizing an encoding before writing it.
pub fn varint_len(value: u64) -> usize {
    match value {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

pub mod bytes {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct ByteVecVisitor;

        impl Visitor<'_> for ByteVecVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }

            fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
        }

        deserializer.deserialize_bytes(ByteVecVisitor)
    }
}

pub fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct StringVisitor;

    impl Visitor<'_> for StringVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_owned())
        }

        fn visit_string<E: Error>(self, text: String) -> Result<String, E> {
            Ok(text)
        }
    }

    deserializer.deserialize_str(StringVisitor)
}

pub fn vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct VecVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for VecVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // The claimed length (seq.size_hint()) is not trusted.
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(VecVisitor(PhantomData))
}

/// A byte string decoded through [`bytes`], as a sequence element.
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bytes::deserialize(deserializer).map(Bytes)
    }
}

/// A list of byte strings decoded through [`byte_strings`], as a sequence element.
struct ByteStrings(Vec<Vec<u8>>);

impl<'de> Deserialize<'de> for ByteStrings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        byte_strings(deserializer).map(ByteStrings)
    }
}

/// A string decoded through [`string`], inside an `Option`.
struct BoundedString(String);

impl<'de> Deserialize<'de> for BoundedString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        string(deserializer).map(BoundedString)
    }
}

/// `Vec<Vec<u8>>` (keys, one command's arguments): neither the list nor any element is
/// reserved from a claimed length. Same encoding as serde's own.
pub fn byte_strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
    vec::<D, Bytes>(deserializer).map(|items| items.into_iter().map(|b| b.0).collect())
}

/// One byte string written whole (`serialize_bytes`): serde's own `Vec<u8>` goes byte
/// by byte, one serializer call per byte, which was the hottest symbol of the leader's
/// main thread on 4 KB SETs. bincode writes both the same way: a varint length, then
/// the bytes.
struct BytesOut<'a>(&'a [u8]);

impl Serialize for BytesOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A list of byte strings, each written whole.
struct ByteStringsOut<'a>(&'a [Vec<u8>]);

impl Serialize for ByteStringsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|bytes| BytesOut(bytes)))
    }
}

/// Writes `Vec<Vec<u8>>` as serde's own encoding would, each element whole.
pub fn write_byte_strings<S: Serializer>(
    items: &[Vec<u8>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    ByteStringsOut(items).serialize(serializer)
}

/// Writes `Vec<Vec<Vec<u8>>>` as serde's own encoding would, each byte string whole.
pub fn write_argvs<S: Serializer>(
    items: &[Vec<Vec<u8>>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(items.iter().map(|argv| ByteStringsOut(argv)))
}

/// `Vec<Vec<Vec<u8>>>` (a list of commands), bounded at every level like [`byte_strings`].
pub fn argvs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<Vec<u8>>>, D::Error> {
    vec::<D, ByteStrings>(deserializer).map(|items| items.into_iter().map(|a| a.0).collect())
}

/// `Option<String>` through [`string`].
pub fn opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<BoundedString>::deserialize(deserializer).map(|s| s.map(|s| s.0))
}
