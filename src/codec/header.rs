//! The fixed 24-byte frame header, read in place with `zerocopy`.
//!
//! ```text
//!  0       1       2       3       4               6               8
//! +-------+-------+-------+-------+---------------+---------------+
//! | magic |version| kind  | flags |   path_len    |   meta_len    |
//! +-------+-------+-------+-------+---------------+---------------+
//! |                        stream_id (u64)                        |
//! +-------------------------------+-------------------------------+
//! |        payload_len (u32)      |           aux (u32)           |
//! +-------------------------------+-------------------------------+
//! ```
//! All integers are little-endian. See `PROTOCOL.md` for the meaning of each field.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::CodecError;

/// First byte of every frame; a peer speaking another protocol is refused on it.
pub const MAGIC: u8 = 0xB7;
/// The only protocol version this implementation speaks. Version 2 added per-stream flow
/// control (the WINDOW_UPDATE kind); a version-1 peer is refused on its first frame.
pub const VERSION: u8 = 2;
/// Size of [`FrameHeader`] on the wire.
pub const HEADER_LEN: usize = 24;

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Data = 2,
    End = 3,
    Error = 4,
    Cancel = 5,
    GoAway = 6,
    Ping = 7,
    Pong = 8,
    WindowUpdate = 9,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, CodecError> {
        Ok(match byte {
            1 => Self::Request,
            2 => Self::Data,
            3 => Self::End,
            4 => Self::Error,
            5 => Self::Cancel,
            6 => Self::GoAway,
            7 => Self::Ping,
            8 => Self::Pong,
            9 => Self::WindowUpdate,
            other => return Err(CodecError::UnknownKind(other)),
        })
    }

    /// Whether a frame of this kind may carry a payload (the error message counts as one).
    fn allows_payload(self) -> bool {
        matches!(
            self,
            Self::Request | Self::Data | Self::End | Self::Error | Self::GoAway
        )
    }
}

/// The header exactly as it sits on the wire; `ref_from_prefix` maps it over the read
/// buffer without copying a field.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct FrameHeader {
    magic: u8,
    version: u8,
    kind: u8,
    flags: u8,
    path_len: U16,
    meta_len: U16,
    stream_id: U64,
    payload_len: U32,
    aux: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == HEADER_LEN);

/// A header whose fields have been checked against the protocol rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidHeader {
    pub kind: FrameKind,
    pub path_len: usize,
    pub meta_len: usize,
    pub stream_id: u64,
    pub payload_len: usize,
    pub aux: u32,
}

impl ValidHeader {
    /// Total frame length on the wire, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.path_len + self.meta_len + self.payload_len
    }
}

impl FrameHeader {
    /// Builds a header for sending; lengths are checked by the encoder before this is called.
    pub fn new(
        kind: FrameKind,
        stream_id: u64,
        path_len: u16,
        meta_len: u16,
        payload_len: u32,
        aux: u32,
    ) -> Self {
        Self {
            magic: MAGIC,
            version: VERSION,
            kind: kind as u8,
            flags: 0,
            path_len: U16::new(path_len),
            meta_len: U16::new(meta_len),
            stream_id: U64::new(stream_id),
            payload_len: U32::new(payload_len),
            aux: U32::new(aux),
        }
    }

    /// Reads and validates the header at the front of `buf` without copying it.
    /// Returns `Ok(None)` when fewer than [`HEADER_LEN`] bytes are available.
    ///
    /// The frame length is checked against `max_frame_len` here, from the header alone,
    /// so an oversize frame is refused before any of its body is buffered.
    pub fn parse(buf: &[u8], max_frame_len: usize) -> Result<Option<ValidHeader>, CodecError> {
        let Ok((raw, _)) = FrameHeader::ref_from_prefix(buf) else {
            return Ok(None);
        };
        if raw.magic != MAGIC {
            return Err(CodecError::BadMagic(raw.magic));
        }
        if raw.version != VERSION {
            return Err(CodecError::UnsupportedVersion(raw.version));
        }
        let kind = FrameKind::from_byte(raw.kind)?;
        if raw.flags != 0 {
            return Err(CodecError::UnknownFlags(raw.flags));
        }
        let header = ValidHeader {
            kind,
            path_len: usize::from(raw.path_len.get()),
            meta_len: usize::from(raw.meta_len.get()),
            stream_id: raw.stream_id.get(),
            payload_len: raw.payload_len.get() as usize,
            aux: raw.aux.get(),
        };
        // u64 arithmetic: the sum cannot overflow (2 × u16 + u32 + 24), even on 32-bit targets.
        let frame_len = HEADER_LEN as u64
            + header.path_len as u64
            + header.meta_len as u64
            + u64::from(raw.payload_len.get());
        if frame_len > max_frame_len as u64 {
            return Err(CodecError::FrameTooLarge {
                size: frame_len,
                max: max_frame_len,
            });
        }
        check_part_lengths(&header)?;
        Ok(Some(header))
    }
}

fn check_part_lengths(h: &ValidHeader) -> Result<(), CodecError> {
    let mismatch = |what: &'static str| {
        Err(CodecError::LengthMismatch {
            kind: h.kind,
            detail: what,
        })
    };
    if h.kind == FrameKind::Request {
        if h.path_len == 0 {
            return mismatch("a request needs a non-empty endpoint path");
        }
    } else if h.path_len != 0 || h.meta_len != 0 {
        return mismatch("only a request carries an endpoint path or header map");
    }
    if !h.kind.allows_payload() && h.payload_len != 0 {
        return mismatch("this kind carries no payload");
    }
    Ok(())
}
