//! Frame → bytes, without copying large payloads.
//!
//! [`WriteQueue`] collects outgoing frames for one connection. Headers and small payloads
//! are flattened into one buffer (an iovec per 64-byte response costs more than copying
//! it); payloads of [`FLATTEN_BELOW`] bytes or more stay as their own `Bytes` and go out as
//! separate entries of a vectored write. The queue implements [`Buf`], so
//! `chunks_vectored` feeds `write_vectored` directly.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{CodecError, Frame, FrameHeader, FrameKind};
use zerocopy::IntoBytes;

/// Payloads below this size are copied into the flat buffer; larger ones are not copied.
pub const FLATTEN_BELOW: usize = 16 * 1024;

/// Encodes `frame` completely into `dst` (payload included, so this copies it).
/// For the socket path use [`WriteQueue`]; this is for tests, tools and fuzzing.
pub fn encode_frame(
    frame: &Frame,
    max_frame_len: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let len = frame.checked_len(max_frame_len)?;
    dst.reserve(len);
    encode_prefix(frame, dst);
    dst.put_slice(frame.payload());
    Ok(())
}

/// Writes the fixed header plus the path and header-map sections (everything but the
/// payload). The frame must have passed `checked_len`.
fn encode_prefix(frame: &Frame, dst: &mut BytesMut) {
    let payload_len = frame.payload().len() as u32;
    let header = match frame {
        Frame::Request(r) => {
            let timeout_ms = r.timeout.map_or(0, |t| {
                // 0 means "no deadline", so a sub-millisecond deadline is sent as 1 ms.
                u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
            });
            FrameHeader::new(
                FrameKind::Request,
                r.stream_id,
                r.path.len() as u16,
                r.headers.encoded_len() as u16,
                payload_len,
                timeout_ms,
            )
        }
        Frame::Data { stream_id, .. } => {
            FrameHeader::new(FrameKind::Data, *stream_id, 0, 0, payload_len, 0)
        }
        Frame::End { stream_id, .. } => {
            FrameHeader::new(FrameKind::End, *stream_id, 0, 0, payload_len, 0)
        }
        Frame::Error {
            stream_id, code, ..
        } => FrameHeader::new(
            FrameKind::Error,
            *stream_id,
            0,
            0,
            payload_len,
            code.to_u32(),
        ),
        Frame::Cancel { stream_id } => FrameHeader::new(FrameKind::Cancel, *stream_id, 0, 0, 0, 0),
        Frame::GoAway {
            last_stream_id,
            code,
            ..
        } => FrameHeader::new(
            FrameKind::GoAway,
            *last_stream_id,
            0,
            0,
            payload_len,
            code.to_u32(),
        ),
        Frame::Ping { opaque } => FrameHeader::new(FrameKind::Ping, *opaque, 0, 0, 0, 0),
        Frame::Pong { opaque } => FrameHeader::new(FrameKind::Pong, *opaque, 0, 0, 0, 0),
        Frame::WindowUpdate {
            stream_id,
            increment,
        } => FrameHeader::new(FrameKind::WindowUpdate, *stream_id, 0, 0, 0, *increment),
    };
    dst.put_slice(header.as_bytes());
    if let Frame::Request(r) = frame {
        dst.put_slice(r.path.as_bytes());
        r.headers.encode_into(dst);
    }
}

/// Outgoing bytes of one connection, in order, as a [`Buf`] over a few chunks.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Frames already sealed behind a large payload, oldest first.
    chunks: VecDeque<Bytes>,
    /// The tail: headers and small payloads, flattened.
    flat: BytesMut,
    remaining: usize,
}

impl WriteQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `frame`. On error (frame over `max_frame_len` or a part over its field
    /// width) nothing is appended.
    pub fn push(&mut self, frame: &Frame, max_frame_len: usize) -> Result<(), CodecError> {
        let len = frame.checked_len(max_frame_len)?;
        let payload = frame.payload();
        encode_prefix(frame, &mut self.flat);
        if payload.len() < FLATTEN_BELOW {
            // Deliberate copy: cheaper than a separate iovec for a small payload.
            self.flat.extend_from_slice(payload);
        } else {
            self.chunks.push_back(self.flat.split().freeze());
            self.chunks.push_back(payload.clone());
        }
        self.remaining += len;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// Whether everything left is in one chunk (no large payload is queued), which
    /// [`chunk`](Buf::chunk) then returns whole.
    pub fn is_one_chunk(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl Buf for WriteQueue {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        match self.chunks.front() {
            Some(chunk) => chunk,
            None => &self.flat,
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.remaining,
            "advance past the end of the write queue"
        );
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.flat.advance(cnt);
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let pieces = self
            .chunks
            .iter()
            .map(|c| &c[..])
            .chain(std::iter::once(&self.flat[..]))
            .filter(|c| !c.is_empty());
        for (slot, piece) in dst.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }
}
