//! The planewire wire format: bytes ⇄ frames, with no I/O.
//!
//! A frame is a fixed 24-byte header ([`FrameHeader`], read in place with `zerocopy`)
//! followed by up to three parts: endpoint path, header map, payload. The full layout,
//! every frame kind and every error code are specified in `PROTOCOL.md`.
//!
//! - [`FrameDecoder`] turns a connection's read buffer into [`Frame`]s without copying
//!   payloads, checks sizes from the header alone, and shrinks its buffer after large frames.
//! - [`WriteQueue`] turns frames into a [`bytes::Buf`] suited to vectored writes, without
//!   copying large payloads.

mod decoder;
mod encoder;
mod error;
mod frame;
mod header;

/// The shared vocabulary frames carry, named here too for the codec's users.
pub use crate::vocab::{ErrorCode, HeaderMap, Utf8Bytes};
pub use decoder::{FrameDecoder, INITIAL_READ_CAPACITY, MEDIUM_BUFFER, RETIRED_BYTES};
pub use encoder::{FLATTEN_BELOW, WriteQueue, encode_frame};
pub use error::CodecError;
pub use frame::{Frame, INITIAL_STREAM_WINDOW, RequestFrame, fit_message, window_cost};
pub use header::{FrameHeader, FrameKind, HEADER_LEN, MAGIC, VERSION, ValidHeader};

#[cfg(test)]
mod tests;
