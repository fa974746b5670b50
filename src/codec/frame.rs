//! Typed frames: what the decoder yields and what the encoder accepts.

use std::time::Duration;

use bytes::Bytes;

use super::CodecError;
use crate::vocab::{ErrorCode, HeaderMap, Utf8Bytes};

/// The codec's constructor: a part that is not UTF-8 is a [`CodecError`] naming it.
impl Utf8Bytes {
    /// Wraps `bytes` after checking it is UTF-8; `field` names it in the error.
    pub fn try_from_bytes(bytes: Bytes, field: &'static str) -> Result<Self, CodecError> {
        Self::from_utf8(bytes).map_err(|_| CodecError::InvalidUtf8 { field })
    }
}

/// The header map's wire form.
impl HeaderMap {
    /// Bytes this map takes on the wire: per entry `u16 name_len, name, u16 value_len, value`.
    pub(crate) fn encoded_len(&self) -> usize {
        self.entries()
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum()
    }

    pub(crate) fn encode_into(&self, dst: &mut bytes::BytesMut) {
        use bytes::BufMut;
        for (k, v) in self.entries() {
            // Lengths were checked by `check_encodable` before anything was written.
            dst.put_u16_le(k.len() as u16);
            dst.put_slice(k.as_bytes());
            dst.put_u16_le(v.len() as u16);
            dst.put_slice(v.as_bytes());
        }
    }

    fn check_encodable(&self) -> Result<(), CodecError> {
        for (k, v) in self.entries() {
            if k.is_empty() {
                return Err(CodecError::BadHeaderMap("empty header name"));
            }
            for (field, len) in [("header name", k.len()), ("header value", v.len())] {
                if len > usize::from(u16::MAX) {
                    return Err(CodecError::PartTooLong {
                        field,
                        len,
                        max: usize::from(u16::MAX),
                    });
                }
            }
        }
        Ok(())
    }

    /// Parses a header-map section; every name and value is a slice of `meta`.
    pub(crate) fn decode(mut meta: Bytes) -> Result<Self, CodecError> {
        // Entries go straight into the map: no list to build and convert, which for the
        // usual empty section was most of the cost.
        let mut headers = Self::new();
        while !meta.is_empty() {
            let name = take_prefixed(&mut meta, "header name")?;
            if name.is_empty() {
                return Err(CodecError::BadHeaderMap("empty header name"));
            }
            let value = take_prefixed(&mut meta, "header value")?;
            headers.insert(name, value);
        }
        Ok(headers)
    }
}

fn take_prefixed(buf: &mut Bytes, field: &'static str) -> Result<Utf8Bytes, CodecError> {
    if buf.len() < 2 {
        return Err(CodecError::BadHeaderMap(
            "section ends inside a length prefix",
        ));
    }
    let len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
    if buf.len() - 2 < len {
        return Err(CodecError::BadHeaderMap(
            "an entry's length runs past the end of the section",
        ));
    }
    let mut entry = buf.split_to(2 + len);
    let _ = entry.split_to(2);
    Utf8Bytes::try_from_bytes(entry, field)
}

/// Bytes of DATA a stream may receive before its client grants more with WINDOW_UPDATE
/// (`PROTOCOL.md` §7.8). Large enough that a reader keeping up never waits on it (two
/// 1 MiB items in flight), small enough that a stream nobody reads costs little.
pub const INITIAL_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// What a DATA frame with a payload of `payload_len` bytes costs of its stream's window:
/// its whole length on the wire, so that even empty items are paid for.
pub fn window_cost(payload_len: usize) -> usize {
    super::HEADER_LEN + payload_len
}

/// `message` cut at a UTF-8 boundary so that an ERROR or GOAWAY frame carrying it fits in
/// `max_frame_len`: a terminal frame must reach the peer whatever the limit, and a short
/// message is better than none (`max_frame_len` is at least 25, one byte of message).
pub fn fit_message(message: impl Into<String>, max_frame_len: usize) -> Utf8Bytes {
    let mut message = message.into();
    let room = max_frame_len.saturating_sub(super::HEADER_LEN);
    if message.len() > room {
        let mut cut = room;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Utf8Bytes::from(message)
}

/// A request: the first frame of every stream, sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    pub stream_id: u64,
    /// Endpoint path, `namespace/component/endpoint[/instance]`.
    pub path: Utf8Bytes,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// Time the client will still wait for the last response, if it set a deadline.
    pub timeout: Option<Duration>,
}

/// One protocol frame. See `PROTOCOL.md` for what each side does with each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request(RequestFrame),
    /// One response item on an open stream.
    Data {
        stream_id: u64,
        payload: Bytes,
    },
    /// Successful end of a stream, optionally carrying a last item (non-empty payload).
    End {
        stream_id: u64,
        payload: Bytes,
    },
    /// Failed end of a stream.
    Error {
        stream_id: u64,
        code: ErrorCode,
        message: Utf8Bytes,
    },
    /// Client asks the server to stop producing responses for a stream.
    Cancel {
        stream_id: u64,
    },
    /// The sender takes no streams above `last_stream_id`; in-flight ones may finish.
    GoAway {
        last_stream_id: u64,
        code: ErrorCode,
        message: Utf8Bytes,
    },
    Ping {
        opaque: u64,
    },
    Pong {
        opaque: u64,
    },
    /// The client grants the server `increment` more bytes of DATA frames on a stream
    /// (flow control, `PROTOCOL.md` §7.8).
    WindowUpdate {
        stream_id: u64,
        increment: u32,
    },
}

impl Frame {
    /// The stream this frame belongs to; 0 for connection-level frames.
    pub fn stream_id(&self) -> u64 {
        match self {
            Self::Request(r) => r.stream_id,
            Self::Data { stream_id, .. }
            | Self::End { stream_id, .. }
            | Self::Error { stream_id, .. }
            | Self::Cancel { stream_id }
            | Self::WindowUpdate { stream_id, .. } => *stream_id,
            Self::GoAway { .. } | Self::Ping { .. } | Self::Pong { .. } => 0,
        }
    }

    /// The payload part (error and go-away messages travel there too).
    pub(crate) fn payload(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        match self {
            Self::Request(r) => &r.payload,
            Self::Data { payload, .. } | Self::End { payload, .. } => payload,
            Self::Error { message, .. } | Self::GoAway { message, .. } => message.as_bytes(),
            Self::Cancel { .. }
            | Self::Ping { .. }
            | Self::Pong { .. }
            | Self::WindowUpdate { .. } => &EMPTY,
        }
    }

    /// Total bytes on the wire, or an error if a part exceeds its field or the whole frame
    /// exceeds `max_frame_len`. Nothing is written when this fails.
    pub fn checked_len(&self, max_frame_len: usize) -> Result<usize, CodecError> {
        match self {
            Self::Request(r) => r.checked_len(max_frame_len),
            other => checked_total(0, 0, other.payload().len(), max_frame_len),
        }
    }
}

impl Frame {
    /// Bytes on the wire, without the checks of [`checked_len`](Self::checked_len): for
    /// frames that passed them (or will, before a byte is written).
    pub(crate) fn wire_len(&self) -> usize {
        let prefix = match self {
            Self::Request(r) => r.path.len() + r.headers.encoded_len(),
            _ => 0,
        };
        super::HEADER_LEN + prefix + self.payload().len()
    }
}

impl RequestFrame {
    /// [`Frame::checked_len`] for a request, without wrapping it in a [`Frame`].
    pub fn checked_len(&self, max_frame_len: usize) -> Result<usize, CodecError> {
        if self.path.is_empty() {
            return Err(CodecError::LengthMismatch {
                kind: super::FrameKind::Request,
                detail: "a request needs a non-empty endpoint path",
            });
        }
        self.headers.check_encodable()?;
        let meta_len = self.headers.encoded_len();
        checked_total(self.path.len(), meta_len, self.payload.len(), max_frame_len)
    }
}

fn checked_total(
    path_len: usize,
    meta_len: usize,
    payload_len: usize,
    max_frame_len: usize,
) -> Result<usize, CodecError> {
    let limits = [
        ("endpoint path", path_len, usize::from(u16::MAX)),
        ("header map", meta_len, usize::from(u16::MAX)),
        ("payload", payload_len, u32::MAX as usize),
    ];
    for (field, len, max) in limits {
        if len > max {
            return Err(CodecError::PartTooLong { field, len, max });
        }
    }
    let total = super::HEADER_LEN + path_len + meta_len + payload_len;
    if total > max_frame_len {
        return Err(CodecError::FrameTooLarge {
            size: total as u64,
            max: max_frame_len,
        });
    }
    Ok(total)
}
