//! RESP2 codec over byte slices: encode commands and replies, parse replies incrementally.
//! No I/O. The parser never trusts a length prefix for allocation: a bulk string is
//! copied only once all of its bytes are in the buffer, and arrays reserve at most a
//! small capacity up front, so memory grows with bytes actually received.

use std::fmt;

/// Array capacity reserved before elements arrive; larger arrays grow as they parse.
const MAX_PREALLOCATED_ELEMENTS: usize = 1_024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespValue {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array (`*-1`).
    Array(Option<Vec<RespValue>>),
}

impl RespValue {
    pub fn is_error(&self) -> bool {
        matches!(self, RespValue::Error(_))
    }

    /// The error text (e.g. `MOVED 0 10.0.0.1:6379`) when this is an error reply.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            RespValue::Error(text) => Some(text),
            _ => None,
        }
    }
}

/// Bounds on what the parser accepts; the defaults match Redis' own protocol limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespLimits {
    pub max_bulk_bytes: usize,
    pub max_array_len: usize,
    pub max_depth: usize,
    /// Longest type/length/simple-string line, CRLF excluded.
    pub max_line_bytes: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_array_len: 1024 * 1024 * 1024,
            max_depth: 128,
            max_line_bytes: 64 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespError {
    UnknownType(u8),
    LineTooLong {
        limit: usize,
    },
    /// A CR not followed by LF, or a bulk string not followed by CRLF.
    MissingCrlf,
    InvalidInteger(String),
    InvalidLength(i64),
    BulkTooLong {
        len: u64,
        limit: usize,
    },
    ArrayTooLong {
        len: u64,
        limit: usize,
    },
    TooDeep {
        limit: usize,
    },
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::UnknownType(byte) => {
                write!(f, "protocol error: unknown type byte {:?}", *byte as char)
            }
            RespError::LineTooLong { limit } => {
                write!(f, "protocol error: line longer than {limit} bytes")
            }
            RespError::MissingCrlf => write!(f, "protocol error: expected CRLF"),
            RespError::InvalidInteger(text) => {
                write!(f, "protocol error: invalid integer {text:?}")
            }
            RespError::InvalidLength(len) => write!(f, "protocol error: invalid length {len}"),
            RespError::BulkTooLong { len, limit } => {
                write!(
                    f,
                    "protocol error: bulk string of {len} bytes exceeds {limit}"
                )
            }
            RespError::ArrayTooLong { len, limit } => {
                write!(f, "protocol error: array of {len} elements exceeds {limit}")
            }
            RespError::TooDeep { limit } => {
                write!(f, "protocol error: nesting deeper than {limit}")
            }
        }
    }
}

impl std::error::Error for RespError {}

/// Appends `argv` as a RESP array of bulk strings, the form Redis expects commands in.
/// Reserves the whole encoding first: a batch of 4 KB entries grew the buffer by
/// doubling, and those copies were most of the raft thread's `memmove`.
pub fn encode_command(argv: &[&[u8]], out: &mut Vec<u8>) {
    out.reserve(encoded_command_len(argv));
    write_header(b'*', argv.len() as i64, out);
    for arg in argv {
        write_bulk(arg, out);
    }
}

/// Bytes [`encode_command`] appends for `argv`.
pub fn encoded_command_len(argv: &[&[u8]]) -> usize {
    // A header: the type byte, the decimal count, CRLF.
    let header_len = |count: usize| 1 + count.checked_ilog10().map_or(1, |d| d as usize + 1) + 2;
    header_len(argv.len())
        + argv
            .iter()
            .map(|arg| header_len(arg.len()) + arg.len() + 2)
            .sum::<usize>()
}

/// Appends `value` in RESP2. CR and LF inside simple strings and errors become spaces,
/// since they would otherwise end the line early and desynchronise the stream.
pub fn encode_value(value: &RespValue, out: &mut Vec<u8>) {
    match value {
        RespValue::Simple(text) => write_line(b'+', text, out),
        RespValue::Error(text) => write_line(b'-', text, out),
        RespValue::Integer(number) => write_header(b':', *number, out),
        RespValue::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        RespValue::Bulk(Some(bytes)) => write_bulk(bytes, out),
        RespValue::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        RespValue::Array(Some(items)) => {
            write_header(b'*', items.len() as i64, out);
            for item in items {
                encode_value(item, out);
            }
        }
    }
}

fn write_header(kind: u8, number: i64, out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(number.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_bulk(bytes: &[u8], out: &mut Vec<u8>) {
    write_header(b'$', bytes.len() as i64, out);
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn write_line(kind: u8, text: &str, out: &mut Vec<u8>) {
    out.push(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Parses one value from the start of `buf`.
/// `Ok(None)`: the value is not complete yet; call again with more bytes.
/// `Ok(Some((value, consumed)))`: drop `consumed` bytes from the buffer.
pub fn parse_value(
    buf: &[u8],
    limits: &RespLimits,
) -> Result<Option<(RespValue, usize)>, RespError> {
    let mut parser = Parser {
        buf,
        pos: 0,
        limits,
    };
    match parser.value(0)? {
        Some(value) => Ok(Some((value, parser.pos))),
        None => Ok(None),
    }
}

/// A command's arguments, borrowed from the buffer, and the bytes it took.
pub type ParsedCommand<'a> = (Vec<&'a [u8]>, usize);

/// Parses one command as clients send it (an array of bulk strings) from the start of
/// `buf` without copying: the arguments borrow from `buf`. A partial command costs one
/// scan of its length lines, not a copy of what arrived so far, so a large command read
/// in many pieces is not copied over and over. Inline commands are refused.
/// `Ok(None)`: not complete yet. `Ok(Some((args, consumed)))`: drop `consumed` bytes.
pub fn parse_command<'a>(
    buf: &'a [u8],
    limits: &RespLimits,
) -> Result<Option<ParsedCommand<'a>>, RespError> {
    let mut parser = Parser {
        buf,
        pos: 0,
        limits,
    };
    let Some(len) = parser.header(b'*')? else {
        return Ok(None);
    };
    if len > limits.max_array_len as u64 {
        return Err(RespError::ArrayTooLong {
            len,
            limit: limits.max_array_len,
        });
    }
    let mut args = Vec::with_capacity((len as usize).min(MAX_PREALLOCATED_ELEMENTS));
    for _ in 0..len {
        let Some(len) = parser.header(b'$')? else {
            return Ok(None);
        };
        if len > limits.max_bulk_bytes as u64 {
            return Err(RespError::BulkTooLong {
                len,
                limit: limits.max_bulk_bytes,
            });
        }
        let len = len as usize;
        let rest = &buf[parser.pos..];
        if rest.len() < len + 2 {
            return Ok(None);
        }
        if &rest[len..len + 2] != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        args.push(&rest[..len]);
        parser.pos += len + 2;
    }
    Ok(Some((args, parser.pos)))
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a RespLimits,
}

impl<'a> Parser<'a> {
    fn value(&mut self, depth: usize) -> Result<Option<RespValue>, RespError> {
        let Some(&kind) = self.buf.get(self.pos) else {
            return Ok(None);
        };
        // Check the type first so garbage is reported at once rather than after a line.
        if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
            return Err(RespError::UnknownType(kind));
        }
        self.pos += 1;
        let Some(line) = self.line()? else {
            return Ok(None);
        };
        match kind {
            b'+' => Ok(Some(RespValue::Simple(lossy(line)))),
            b'-' => Ok(Some(RespValue::Error(lossy(line)))),
            b':' => Ok(Some(RespValue::Integer(parse_integer(line)?))),
            b'$' => self.bulk(parse_integer(line)?),
            _ => self.array(parse_integer(line)?, depth),
        }
    }

    /// A `<kind><length>` line whose kind must be `kind` and whose length is not negative.
    fn header(&mut self, kind: u8) -> Result<Option<u64>, RespError> {
        let Some(&found) = self.buf.get(self.pos) else {
            return Ok(None);
        };
        if found != kind {
            return Err(RespError::UnknownType(found));
        }
        self.pos += 1;
        let Some(line) = self.line()? else {
            return Ok(None);
        };
        checked_len(parse_integer(line)?).map(Some)
    }

    /// The bytes up to the next CRLF, which is consumed.
    fn line(&mut self) -> Result<Option<&'a [u8]>, RespError> {
        let buf = self.buf;
        let rest = &buf[self.pos..];
        let search_len = rest.len().min(self.limits.max_line_bytes + 1);
        match rest[..search_len].iter().position(|&b| b == b'\r') {
            Some(cr) => match rest.get(cr + 1) {
                None => Ok(None),
                Some(b'\n') => {
                    self.pos += cr + 2;
                    Ok(Some(&rest[..cr]))
                }
                Some(_) => Err(RespError::MissingCrlf),
            },
            None if rest.len() > self.limits.max_line_bytes => Err(RespError::LineTooLong {
                limit: self.limits.max_line_bytes,
            }),
            None => Ok(None),
        }
    }

    fn bulk(&mut self, len: i64) -> Result<Option<RespValue>, RespError> {
        if len == -1 {
            return Ok(Some(RespValue::Bulk(None)));
        }
        let len = checked_len(len)?;
        if len > self.limits.max_bulk_bytes as u64 {
            return Err(RespError::BulkTooLong {
                len,
                limit: self.limits.max_bulk_bytes,
            });
        }
        let len = len as usize;
        let buf = self.buf;
        let rest = &buf[self.pos..];
        if rest.len() < len + 2 {
            return Ok(None);
        }
        if &rest[len..len + 2] != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        self.pos += len + 2;
        Ok(Some(RespValue::Bulk(Some(rest[..len].to_vec()))))
    }

    fn array(&mut self, len: i64, depth: usize) -> Result<Option<RespValue>, RespError> {
        if len == -1 {
            return Ok(Some(RespValue::Array(None)));
        }
        let len = checked_len(len)?;
        if len > self.limits.max_array_len as u64 {
            return Err(RespError::ArrayTooLong {
                len,
                limit: self.limits.max_array_len,
            });
        }
        if len > 0 && depth + 1 > self.limits.max_depth {
            return Err(RespError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        let len = len as usize;
        let mut items = Vec::with_capacity(len.min(MAX_PREALLOCATED_ELEMENTS));
        for _ in 0..len {
            match self.value(depth + 1)? {
                Some(item) => items.push(item),
                None => return Ok(None),
            }
        }
        Ok(Some(RespValue::Array(Some(items))))
    }
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

fn parse_integer(line: &[u8]) -> Result<i64, RespError> {
    let invalid = || RespError::InvalidInteger(lossy(line));
    // from_str accepts a leading '+', RESP does not.
    if line.first() == Some(&b'+') {
        return Err(invalid());
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(invalid)
}

fn checked_len(len: i64) -> Result<u64, RespError> {
    u64::try_from(len).map_err(|_| RespError::InvalidLength(len))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_length_is_exact_and_reserved_up_front() {
        let big = vec![b'v'; 100_000];
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![],
            vec![b""],
            vec![b"SET", b"key", &big],
            (0..10).map(|_| &b"123456789"[..]).collect(),
        ];
        for argv in cases {
            let mut wire = Vec::new();
            encode_command(&argv, &mut wire);
            assert_eq!(wire.len(), encoded_command_len(&argv), "{:?}", argv.len());
            // One allocation of the exact size (a Vec holds at least 8 bytes): no
            // growth by doubling.
            assert_eq!(wire.capacity(), wire.len().max(8));
        }
    }

    use super::*;

    #[test]
    fn parse_command_borrows_its_arguments_and_waits_for_the_whole_command() {
        let mut wire = Vec::new();
        encode_command(&[b"RAFT.MSG", b"db", b"", b"x\r\ny"], &mut wire);
        wire.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let limits = RespLimits::default();
        let (args, used) = parse_command(&wire, &limits).unwrap().unwrap();
        assert_eq!(args, vec![&b"RAFT.MSG"[..], b"db", b"", b"x\r\ny"]);
        let (next, rest) = parse_command(&wire[used..], &limits).unwrap().unwrap();
        assert_eq!(next, vec![&b"PING"[..]]);
        assert_eq!(used + rest, wire.len());
        for cut in 0..used {
            assert_eq!(
                parse_command(&wire[..cut], &limits),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn parse_command_refuses_what_is_not_a_bounded_array_of_bulk_strings() {
        let limits = RespLimits {
            max_bulk_bytes: 4,
            max_array_len: 2,
            ..RespLimits::default()
        };
        let cases: [(&[u8], RespError); 5] = [
            (b"PING\r\n", RespError::UnknownType(b'P')),
            (b"*1\r\n:1\r\n", RespError::UnknownType(b':')),
            (b"*3\r\n", RespError::ArrayTooLong { len: 3, limit: 2 }),
            (b"*1\r\n$5\r\n", RespError::BulkTooLong { len: 5, limit: 4 }),
            (b"*1\r\n$-1\r\n", RespError::InvalidLength(-1)),
        ];
        for (wire, error) in cases {
            assert_eq!(parse_command(wire, &limits), Err(error), "{wire:?}");
        }
        assert_eq!(
            parse_command(b"*1\r\n$2\r\nabXY", &limits),
            Err(RespError::MissingCrlf)
        );
    }

    fn parse(buf: &[u8]) -> Result<Option<(RespValue, usize)>, RespError> {
        parse_value(buf, &RespLimits::default())
    }

    fn bulk(bytes: &[u8]) -> RespValue {
        RespValue::Bulk(Some(bytes.to_vec()))
    }

    fn samples() -> Vec<RespValue> {
        vec![
            RespValue::Simple("OK".into()),
            RespValue::Simple(String::new()),
            RespValue::Error("MOVED 0 127.0.0.1:5001".into()),
            RespValue::Integer(0),
            RespValue::Integer(i64::MIN),
            RespValue::Integer(i64::MAX),
            RespValue::Bulk(None),
            bulk(b""),
            bulk(b"binary\r\n\0\xff"),
            RespValue::Array(None),
            RespValue::Array(Some(vec![])),
            RespValue::Array(Some(vec![
                RespValue::Integer(7),
                RespValue::Array(Some(vec![bulk(b"x"), RespValue::Bulk(None)])),
                RespValue::Error("ERR nested".into()),
            ])),
        ]
    }

    #[test]
    fn every_sample_roundtrips() {
        for value in samples() {
            let mut wire = Vec::new();
            encode_value(&value, &mut wire);
            assert_eq!(parse(&wire), Ok(Some((value, wire.len()))));
        }
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut wire = Vec::new();
        encode_command(&[b"SET", b"k", b""], &mut wire);
        assert_eq!(wire, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let (value, used) = parse(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(
            value,
            RespValue::Array(Some(vec![bulk(b"SET"), bulk(b"k"), bulk(b"")]))
        );
    }

    #[test]
    fn line_breaks_in_simple_strings_cannot_break_framing() {
        let mut wire = Vec::new();
        encode_value(&RespValue::Error("ERR a\r\nb".into()), &mut wire);
        assert_eq!(wire, b"-ERR a  b\r\n");
    }

    #[test]
    fn every_truncation_asks_for_more_bytes() {
        let mut wire = Vec::new();
        for value in samples() {
            encode_value(&value, &mut wire);
        }
        let mut offset = 0;
        for value in samples() {
            let (parsed, used) = parse(&wire[offset..]).unwrap().unwrap();
            assert_eq!(parsed, value);
            for cut in 0..used {
                assert_eq!(
                    parse(&wire[offset..offset + cut]),
                    Ok(None),
                    "{value:?} cut at {cut}"
                );
            }
            offset += used;
        }
        assert_eq!(offset, wire.len());
    }

    #[test]
    fn feeding_byte_by_byte_yields_every_value_in_order() {
        let mut wire = Vec::new();
        for value in samples() {
            encode_value(&value, &mut wire);
        }
        let mut buffer = Vec::new();
        let mut parsed = Vec::new();
        for &byte in &wire {
            buffer.push(byte);
            while let Some((value, used)) = parse(&buffer).unwrap() {
                buffer.drain(..used);
                parsed.push(value);
            }
        }
        assert!(buffer.is_empty());
        assert_eq!(parsed, samples());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let cases: &[(&[u8], RespError)] = &[
            (b"?x\r\n", RespError::UnknownType(b'?')),
            (b"+OK\rX", RespError::MissingCrlf),
            (b":12a\r\n", RespError::InvalidInteger("12a".into())),
            (b":+5\r\n", RespError::InvalidInteger("+5".into())),
            (b":\r\n", RespError::InvalidInteger(String::new())),
            (
                b":99999999999999999999\r\n",
                RespError::InvalidInteger("99999999999999999999".into()),
            ),
            (b"$-2\r\n", RespError::InvalidLength(-2)),
            (b"*-5\r\n", RespError::InvalidLength(-5)),
            (b"$3\r\nabcXY", RespError::MissingCrlf),
            (b"*2\r\n:1\r\n!\r\n", RespError::UnknownType(b'!')),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).as_ref(), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn errors_display_clearly() {
        let error = RespError::BulkTooLong { len: 10, limit: 4 };
        assert_eq!(
            error.to_string(),
            "protocol error: bulk string of 10 bytes exceeds 4"
        );
        assert!(RespError::UnknownType(b'?').to_string().contains("'?'"));
    }

    #[test]
    fn limits_reject_huge_lengths_before_any_bytes_arrive() {
        let limits = RespLimits {
            max_bulk_bytes: 4,
            max_array_len: 2,
            max_depth: 2,
            max_line_bytes: 8,
        };
        // These headers promise far more than any machine holds: rejecting them from the
        // header alone shows nothing was allocated from the length.
        assert_eq!(
            parse_value(b"$9223372036854775807\r\n", &RespLimits::default()),
            Err(RespError::BulkTooLong {
                len: i64::MAX as u64,
                limit: 512 * 1024 * 1024
            })
        );
        assert_eq!(
            parse_value(b"$5\r\n", &limits),
            Err(RespError::BulkTooLong { len: 5, limit: 4 })
        );
        assert_eq!(
            parse_value(b"*3\r\n", &limits),
            Err(RespError::ArrayTooLong { len: 3, limit: 2 })
        );
        assert_eq!(
            parse_value(b"*1\r\n*1\r\n*1\r\n", &limits),
            Err(RespError::TooDeep { limit: 2 })
        );
        assert_eq!(
            parse_value(b"+123456789", &limits),
            Err(RespError::LineTooLong { limit: 8 })
        );
        assert_eq!(parse_value(b"+12345678", &limits), Ok(None));
        assert_eq!(
            parse_value(b"*1\r\n*1\r\n:1\r\n", &limits),
            Ok(Some((
                RespValue::Array(Some(vec![RespValue::Array(Some(vec![
                    RespValue::Integer(1)
                ]))])),
                12
            )))
        );
    }

    #[test]
    fn a_huge_array_header_only_grows_with_received_elements() {
        // Accepted by the limits, yet only two elements arrived: the parser waits.
        let wire = b"*1000000000\r\n:1\r\n:2\r\n";
        assert_eq!(parse(wire), Ok(None));
    }

    #[test]
    fn error_helpers() {
        let error = RespValue::Error("CLUSTERDOWN No raft leader".into());
        assert!(error.is_error());
        assert_eq!(error.as_error(), Some("CLUSTERDOWN No raft leader"));
        assert!(!RespValue::Simple("OK".into()).is_error());
        assert_eq!(RespValue::Integer(1).as_error(), None);
    }
}
