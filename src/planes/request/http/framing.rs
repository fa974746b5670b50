//! The records of an HTTP/2 response body (`PROTOCOL.md` §12): bytes ⇄ records, no I/O.
//!
//! ```text
//! item <length>\n<payload: length bytes>\n        one response
//! end\n                                            the stream ended successfully
//! error <code> <name> <length>\n<message>\n        the stream failed
//! ```
//!
//! Lengths and codes are decimal; a record's first line is at most [`MAX_LINE`] bytes.
//! The format reads as text in `curl` output, and a payload may hold any bytes, line
//! feeds included: its length, not a delimiter, ends it.

use std::collections::VecDeque;

use bytes::buf::Chain;
use bytes::{Buf, Bytes, BytesMut};

use crate::vocab::ErrorCode;

/// Longest first line of a record, line feed included.
pub(super) const MAX_LINE: usize = 96;

/// One record as the body sends it: its first line, the payload (never copied), and the
/// line feed after it.
pub(super) type Chunk = Chain<Chain<Bytes, Bytes>, Bytes>;

const LF: Bytes = Bytes::from_static(b"\n");

pub(super) fn item(payload: Bytes) -> Chunk {
    let head = Bytes::from(format!("item {}\n", payload.len()));
    head.chain(payload).chain(LF)
}

pub(super) fn end() -> Chunk {
    Bytes::from_static(b"end\n")
        .chain(Bytes::new())
        .chain(Bytes::new())
}

pub(super) fn error(code: ErrorCode, message: &str) -> Chunk {
    let head = Bytes::from(format!(
        "error {} {code:?} {}\n",
        code.to_u32(),
        message.len()
    ));
    head.chain(Bytes::copy_from_slice(message.as_bytes()))
        .chain(LF)
}

/// What a response body carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    Item(Bytes),
    End,
    Error { code: ErrorCode, message: String },
}

/// Why a body is not a stream of records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed response body: {0}")]
pub(super) struct FramingError(pub(super) String);

/// Turns body chunks into records. Payloads that arrived in one chunk are slices of it;
/// one split across chunks is copied once into a buffer of its size.
pub(super) struct Decoder {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The largest payload or message accepted.
    max_len: usize,
    /// A first line read, waiting for its payload and line feed.
    pending: Option<Pending>,
}

enum Pending {
    Item(usize),
    Error(ErrorCode, usize),
}

impl Decoder {
    pub(super) fn new(max_len: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            buffered: 0,
            max_len,
            pending: None,
        }
    }

    pub(super) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Bytes received and not yet decoded.
    pub(super) fn buffered(&self) -> usize {
        self.buffered
    }

    /// The next whole record, `None` until more bytes arrive.
    pub(super) fn next(&mut self) -> Result<Option<Record>, FramingError> {
        if self.pending.is_none() {
            let Some(line) = self.take_line()? else {
                return Ok(None);
            };
            match self.parse_line(&line)? {
                Parsed::End => return Ok(Some(Record::End)),
                Parsed::Then(pending) => self.pending = Some(pending),
            }
        }
        let len = match self.pending {
            Some(Pending::Item(len) | Pending::Error(_, len)) => len,
            None => unreachable!("set just above"),
        };
        if self.buffered < len + 1 {
            return Ok(None);
        }
        let body = self.take(len);
        if self.take(1).as_ref() != b"\n" {
            return Err(FramingError(format!(
                "a record's {len} bytes are not followed by a line feed"
            )));
        }
        Ok(Some(match self.pending.take() {
            Some(Pending::Item(_)) => Record::Item(body),
            Some(Pending::Error(code, _)) => Record::Error {
                code,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
            None => unreachable!("taken once"),
        }))
    }

    fn parse_line(&self, line: &str) -> Result<Parsed, FramingError> {
        let bad = || FramingError(format!("unknown record {line:?}"));
        let mut words = line.split(' ');
        let parsed = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("end"), None, None, None) => Parsed::End,
            (Some("item"), Some(len), None, None) => Parsed::Then(Pending::Item(self.length(len)?)),
            (Some("error"), Some(code), Some(_name), Some(len)) => {
                let code = code.parse().map_err(|_| bad())?;
                Parsed::Then(Pending::Error(ErrorCode::from_u32(code), self.length(len)?))
            }
            _ => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(parsed)
    }

    fn length(&self, text: &str) -> Result<usize, FramingError> {
        let len: usize = text
            .parse()
            .map_err(|_| FramingError(format!("bad length {text:?}")))?;
        if len > self.max_len {
            return Err(FramingError(format!(
                "a record of {len} bytes exceeds the limit of {} bytes",
                self.max_len
            )));
        }
        Ok(len)
    }

    /// The next line without its line feed, once it is all here.
    fn take_line(&mut self) -> Result<Option<String>, FramingError> {
        let mut seen = 0;
        let mut end = None;
        'chunks: for chunk in &self.chunks {
            for (i, byte) in chunk.iter().enumerate() {
                if *byte == b'\n' {
                    end = Some(seen + i);
                    break 'chunks;
                }
                if seen + i + 1 >= MAX_LINE {
                    return Err(FramingError(format!(
                        "no record line ends within {MAX_LINE} bytes"
                    )));
                }
            }
            seen += chunk.len();
        }
        let Some(end) = end else {
            return Ok(None);
        };
        let line = self.take(end);
        self.take(1);
        String::from_utf8(line.to_vec())
            .map(Some)
            .map_err(|_| FramingError("a record line is not UTF-8".to_owned()))
    }

    /// The next `n` buffered bytes (at least that many are buffered): a slice when they
    /// lie in one chunk, else a copy.
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        let front = self.chunks.front_mut().expect("n bytes are buffered");
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        // Split across chunks: the one copy, into a buffer of exactly its size.
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self.chunks.front_mut().expect("n bytes are buffered");
            let part = front.split_to(front.len().min(n - out.len()));
            out.extend_from_slice(&part);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }
}

enum Parsed {
    End,
    Then(Pending),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(chunks: Vec<Chunk>) -> Vec<u8> {
        chunks
            .into_iter()
            .flat_map(|mut c| c.copy_to_bytes(c.remaining()).to_vec())
            .collect()
    }

    fn records(wire: &[u8], split: &[usize], max: usize) -> Result<Vec<Record>, FramingError> {
        let mut decoder = Decoder::new(max);
        let mut out = Vec::new();
        let mut start = 0;
        for end in split.iter().copied().chain([wire.len()]) {
            decoder.push(Bytes::copy_from_slice(&wire[start..end]));
            start = end;
            while let Some(record) = decoder.next()? {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn sample() -> (Vec<u8>, Vec<Record>) {
        let payloads = [&b"hello"[..], b"", b"two\nlines\n", b"item 3\n"];
        let mut chunks: Vec<Chunk> = payloads
            .iter()
            .map(|p| item(Bytes::copy_from_slice(p)))
            .collect();
        chunks.push(error(ErrorCode::Handler, "model exploded\r\non line 2"));
        let mut expected: Vec<Record> = payloads
            .iter()
            .map(|p| Record::Item(Bytes::copy_from_slice(p)))
            .collect();
        expected.push(Record::Error {
            code: ErrorCode::Handler,
            message: "model exploded\r\non line 2".into(),
        });
        (wire(chunks), expected)
    }

    #[test]
    fn the_wire_reads_as_text() {
        let bytes = wire(vec![item(Bytes::from_static(b"hello")), end()]);
        assert_eq!(bytes, b"item 5\nhello\nend\n");
        let bytes = wire(vec![error(ErrorCode::UnknownEndpoint, "no such")]);
        assert_eq!(bytes, b"error 3 UnknownEndpoint 7\nno such\n");
    }

    #[test]
    fn records_round_trip_split_at_every_point_and_in_single_bytes() {
        let (bytes, expected) = sample();
        assert_eq!(records(&bytes, &[], 1024).unwrap(), expected);
        for cut in 0..=bytes.len() {
            assert_eq!(
                records(&bytes, &[cut], 1024).unwrap(),
                expected,
                "cut at {cut}"
            );
        }
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(records(&bytes, &every, 1024).unwrap(), expected);
    }

    #[test]
    fn a_payload_inside_one_chunk_is_a_slice_of_it() {
        let chunk = Bytes::from(wire(vec![item(Bytes::from_static(b"zero-copy"))]));
        let mut decoder = Decoder::new(1024);
        decoder.push(chunk.clone());
        let Some(Record::Item(payload)) = decoder.next().unwrap() else {
            panic!("an item");
        };
        let offset = payload.as_ptr() as usize - chunk.as_ptr() as usize;
        assert_eq!(&chunk[offset..offset + payload.len()], b"zero-copy");
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn malformed_bodies_are_named_errors_not_hangs() {
        let cases: [(&[u8], &str); 6] = [
            (b"<html>502 Bad Gateway</html>\n", "unknown record"),
            (b"item five\n", "bad length"),
            (b"item 2000\n", "exceeds the limit of 1024"),
            (b"item 2\nabX", "not followed by a line feed"),
            (b"end now\n", "unknown record"),
            (&[b'x'; 200], "within 96 bytes"),
        ];
        for (bytes, expected) in cases {
            let err = records(bytes, &[], 1024).unwrap_err().to_string();
            assert!(err.contains(expected), "{bytes:?}: {err}");
        }
    }
}
