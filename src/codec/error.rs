use super::FrameKind;
use crate::vocab::ErrorCode;

/// Why bytes could not be turned into a frame, or a frame into bytes.
///
/// Every error returned by the decoder means the byte stream can no longer be trusted
/// (after a bad length the next frame boundary is unknown): the connection must be closed.
/// Errors from encoding (`FrameTooLarge`, `PartTooLong`) concern one outgoing frame only,
/// are raised before any byte of it is queued, and leave the connection usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error(
        "bad magic byte 0x{0:02x} (expected 0xb7): the peer does not speak the planewire protocol"
    )]
    BadMagic(u8),
    #[error("unsupported protocol version {0} (this build speaks version {VERSION})", VERSION = super::VERSION)]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flags 0x{0:02x} (no flags are defined in version {VERSION})", VERSION = super::VERSION)]
    UnknownFlags(u8),
    #[error(
        "frame of {size} bytes exceeds the maximum message size of {max} bytes \
         (DYN_TCP_MAX_MESSAGE_SIZE)"
    )]
    FrameTooLarge { size: u64, max: usize },
    #[error("{kind:?} frame has inconsistent part lengths: {detail}")]
    LengthMismatch {
        kind: FrameKind,
        detail: &'static str,
    },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("malformed header map: {0}")]
    BadHeaderMap(&'static str),
    #[error("{field} is {len} bytes, over its wire limit of {max} bytes")]
    PartTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The code of the GOAWAY a receiver sends before closing on this decode error
    /// (`PROTOCOL.md` §6.2): `FrameTooLarge` for an oversize frame, `Protocol` for the rest;
    /// `None` for an I/O error, after which nothing can be sent.
    pub fn goaway_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Io(_) => None,
            Self::FrameTooLarge { .. } => Some(ErrorCode::FrameTooLarge),
            _ => Some(ErrorCode::Protocol),
        }
    }
}
