//! Bytes → frames: the zero-copy, shrinkable decoder.
//!
//! The connection owns one `BytesMut` read buffer (create it with
//! [`FrameDecoder::new_buffer`]). Each complete frame leaves it as
//! `split_to(len).freeze()`, and the frame's path, header entries and payload are slices
//! of that `Bytes`: nothing is copied. Once the buffer is empty after having grown past
//! the shrink threshold, it is replaced by a fresh small one, so a single 32 MiB message
//! does not pin 32 MiB for the life of the connection.
//!
//! A decoder made [`with_spare`](FrameDecoder::with_spare) keeps the large buffer it
//! replaced as a *spare*, and the next large frame lands in it once every `Bytes` of the
//! earlier frame is gone. Fresh memory costs a page fault and the kernel zeroing every
//! page, which for back-to-back 32 MiB messages costs more than moving the bytes; the
//! owner gives the spare back ([`release_spare`](FrameDecoder::release_spare)) when large
//! messages stop coming.
//!
//! Frames too big for what is left of the read buffer but under 2 MiB (64 KiB responses,
//! say) move the read on to a new buffer of at least [`MEDIUM_BUFFER`]. The one they
//! leave is kept, retired, and reused once every frame split off it is gone, so a steady
//! flow of such frames runs on a few buffers instead of a fresh allocation per frame:
//! the allocator hands freed memory of that size back to the kernel, and faulting it in
//! again cost a connection at 64 KiB × 64 in flight half its CPU time. Retired buffers go
//! with the spare.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{
    CodecError, ErrorCode, Frame, FrameHeader, FrameKind, HEADER_LEN, HeaderMap, RequestFrame,
    Utf8Bytes, ValidHeader,
};

/// Capacity of a fresh read buffer: enough for many small frames per `read` syscall,
/// small enough that ten thousand idle connections cost little.
pub const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// Decoder state for one connection. Stateless apart from the shrink bookkeeping, so it
/// can be driven by hand or through `tokio_util::codec::FramedRead`.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_len: usize,
    shrink_threshold: usize,
    /// Capacity of the read buffer once it has grown past the threshold; cleared when
    /// the buffer is replaced.
    oversized: Option<usize>,
    keep_spare: bool,
    spare: Option<Spare>,
    /// Counts spares kept and buffers retired, so an owner can tell a new spare from the
    /// one it timed.
    spares_kept: u64,
    /// Read buffers left behind by medium frames, each with its allocation's size, for
    /// reuse once nothing split off them is alive; at most [`RETIRED_BYTES`] in all.
    retired: Vec<(BytesMut, usize)>,
    /// The sizes in `retired`, summed: read on every frame (for the held-bytes report).
    retired_bytes: usize,
    /// About the size of the read buffer's allocation (its `capacity()` shrinks as frames
    /// are split off), for the retired buffers' bound.
    buffer_size: usize,
}

/// Capacity of the read buffer a medium frame moves to: room for a few 64 KiB frames,
/// so a retired buffer is free again soon after its last frame is consumed.
pub const MEDIUM_BUFFER: usize = 256 * 1024;
/// Room a medium buffer keeps past its frame for the bytes that follow it, so the next
/// frame's header arrives there and moves the read on (retiring this buffer).
const MEDIUM_TAIL: usize = 64 * 1024;
/// Frames from this size up move to a buffer of their own size class when they do not
/// fit; smaller ones grow the read buffer as before (they are cheap to allocate).
const MEDIUM_FRAME: usize = 16 * 1024;
/// Retired read buffers one decoder keeps, in bytes of allocation. A client hands each
/// response to its caller's task, which drops it some turns later, so at 1 MiB × 64 in
/// flight several frames are alive at once: with room for three 1 MiB buffers (4 MiB)
/// the client took 15–23 page faults per request for fresh ones, with seven (8 MiB) 6–9.
pub const RETIRED_BYTES: usize = 8 * 1024 * 1024;

/// An emptied large read buffer kept for the next large frame.
#[derive(Debug, Clone)]
struct Spare {
    /// Empty; its allocation is shared with the frames split off it until they drop.
    buffer: BytesMut,
    /// About the size of that allocation (`buffer.capacity()` is 0 once everything is
    /// split off).
    capacity: usize,
}

impl FrameDecoder {
    /// `max_frame_len` bounds whole frames, header included; `shrink_threshold` is the
    /// capacity above which an emptied buffer is swapped for a fresh small one.
    pub fn new(max_frame_len: usize, shrink_threshold: usize) -> Self {
        Self {
            max_frame_len,
            shrink_threshold: shrink_threshold.max(INITIAL_READ_CAPACITY),
            oversized: None,
            keep_spare: false,
            spare: None,
            spares_kept: 0,
            retired: Vec::new(),
            retired_bytes: 0,
            buffer_size: INITIAL_READ_CAPACITY,
        }
    }

    /// Keeps each replaced large buffer as a spare for the next large frame, until it is
    /// reused or [`release_spare`](Self::release_spare) is called. The caller owns that
    /// call: a spare is never released by the decoder itself.
    pub fn with_spare(mut self) -> Self {
        self.keep_spare = true;
        self
    }

    /// The number of the spare or retired buffers held now (each kept spare and each
    /// retired buffer gets the next number), or `None` when none is held.
    pub fn spare(&self) -> Option<u64> {
        (self.spare.is_some() || !self.retired.is_empty()).then_some(self.spares_kept)
    }

    /// Gives the spare's and the retired buffers' memory back (once the frames split off
    /// them are gone too).
    pub fn release_spare(&mut self) {
        self.spare = None;
        self.retired.clear();
        self.retired_bytes = 0;
    }

    /// Memory this decoder holds beyond the read buffer: the spare's size and the
    /// retired buffers'.
    pub fn spare_capacity(&self) -> usize {
        self.spare.as_ref().map_or(0, |spare| spare.capacity) + self.retired_bytes
    }

    /// A fresh read buffer of [`INITIAL_READ_CAPACITY`].
    pub fn new_buffer(&self) -> BytesMut {
        BytesMut::with_capacity(INITIAL_READ_CAPACITY)
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// `Ok(None)` means more bytes are needed; when the header is complete, `src` has
    /// room reserved for the rest of the frame (after the size check). Any `Err` means
    /// the stream is out of sync and the connection must be closed.
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(header) = FrameHeader::parse(src, self.max_frame_len)? else {
            self.shrink_if_idle(src);
            return Ok(None);
        };
        let frame_len = header.frame_len();
        if src.len() < frame_len {
            if frame_len >= LARGE_FRAME && src.capacity() < frame_len {
                *src = self
                    .reclaim_spare(frame_len, src)
                    .unwrap_or_else(|| large_buffer(frame_len, src));
                self.buffer_size = src.capacity();
            } else if frame_len >= MEDIUM_FRAME && src.capacity() < frame_len && self.keep_spare {
                self.move_to_medium_buffer(frame_len, src);
            } else {
                src.reserve(frame_len - src.len());
                self.buffer_size = self.buffer_size.max(src.capacity());
            }
            self.note_capacity(src);
            return Ok(None);
        }
        self.note_capacity(src);
        let bytes = src.split_to(frame_len).freeze();
        self.shrink_if_idle(src);
        parse_frame(header, bytes).map(Some)
    }

    /// Makes sure the next read into `src` has at least `min_space` bytes of room. Call it
    /// after [`decode_frame`](Self::decode_frame) returned `Ok(None)`: once a frame's
    /// header is in, the decoder has already reserved room for the whole frame, and
    /// topping up then would reallocate (and copy) a buffer sized to that frame.
    pub fn reserve_for_read(&self, src: &mut BytesMut, min_space: usize) {
        if src.len() < HEADER_LEN && src.capacity() - src.len() < min_space {
            src.reserve(min_space);
        }
    }

    /// Called at end of input: leftover bytes mean the peer closed mid-frame.
    pub fn check_eof(&self, src: &BytesMut) -> Result<(), CodecError> {
        if src.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Truncated {
                buffered: src.len(),
            })
        }
    }

    fn note_capacity(&mut self, src: &BytesMut) {
        if src.capacity() > self.shrink_threshold {
            self.oversized = Some(src.capacity());
        }
    }

    fn shrink_if_idle(&mut self, src: &mut BytesMut) {
        if src.is_empty()
            && let Some(capacity) = self.oversized.take()
        {
            let buffer = std::mem::replace(src, self.new_buffer());
            self.buffer_size = INITIAL_READ_CAPACITY;
            if self.keep_spare {
                self.spare = Some(Spare { buffer, capacity });
                self.spares_kept += 1;
            }
        }
    }

    /// Moves the frame's first bytes from `src` to a retired buffer that is free again,
    /// or to a new one of at least [`MEDIUM_BUFFER`], and retires `src`'s buffer.
    fn move_to_medium_buffer(&mut self, frame_len: usize, src: &mut BytesMut) {
        // Room beyond the frame for the next frame's start: a buffer the frame filled
        // exactly would be left behind by the next `reserve`, never retired nor reused,
        // and every frame over `MEDIUM_BUFFER` would land in fresh memory.
        let size = (frame_len + MEDIUM_TAIL).max(MEDIUM_BUFFER);
        // `try_reclaim` succeeds only once nothing split off the buffer is alive and its
        // allocation holds `size` bytes. The most recently retired free buffer first:
        // its memory is the likeliest still in cache, and a steady flow then cycles
        // through as few buffers as it can instead of all of them in turn.
        let reusable = self
            .retired
            .iter_mut()
            .rposition(|(buffer, _)| buffer.try_reclaim(size));
        let mut next = match reusable {
            Some(at) => {
                // `remove`, not `swap_remove`: the list stays in retirement order.
                let (buffer, size) = self.retired.remove(at);
                self.retired_bytes -= size;
                buffer
            }
            None => BytesMut::with_capacity(size),
        };
        let next_size = next.capacity();
        next.extend_from_slice(src);
        let mut old = std::mem::replace(src, next);
        let old_size = std::mem::replace(&mut self.buffer_size, next_size);
        old.clear();
        if self.retired_bytes + old_size <= RETIRED_BYTES {
            self.retired_bytes += old_size;
            self.retired.push((old, old_size));
            self.spares_kept += 1;
        }
    }

    /// The spare, holding the frame's first bytes from `partial`, if it is large enough
    /// and nothing split off it is still alive; `None` leaves the spare where it is.
    fn reclaim_spare(&mut self, frame_len: usize, partial: &BytesMut) -> Option<BytesMut> {
        let spare = self.spare.as_mut()?;
        if spare.capacity < frame_len || !spare.buffer.try_reclaim(frame_len) {
            return None;
        }
        let mut buffer = self.spare.take()?.buffer;
        buffer.extend_from_slice(partial);
        Some(buffer)
    }
}

/// Frames this large get a buffer of their own, sized to the frame and backed by huge
/// pages where the OS offers them.
const LARGE_FRAME: usize = 2 * 1024 * 1024;

/// A buffer of exactly `frame_len` bytes holding the frame's first bytes from `partial`
/// (a deliberate copy of at most one read's worth). A large frame with no spare to reuse
/// lands in fresh memory; with 4 KiB pages, faulting in 32 MiB costs more than the
/// transfer itself, so the buffer asks for 2 MiB pages instead.
fn large_buffer(frame_len: usize, partial: &BytesMut) -> BytesMut {
    let mut buffer = BytesMut::with_capacity(frame_len);
    advise_huge_pages(buffer.spare_capacity_mut());
    buffer.extend_from_slice(partial);
    buffer
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(memory: &mut [std::mem::MaybeUninit<u8>]) {
    const HUGE_PAGE: usize = 2 * 1024 * 1024;
    let start = memory.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + memory.len()) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: the range lies inside `memory`, which we borrow mutably; MADV_HUGEPAGE
        // only changes how its pages are backed, never their contents. Failure (no THP
        // support) just leaves normal pages, so the result is ignored.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_memory: &mut [std::mem::MaybeUninit<u8>]) {}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.decode_frame(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode_frame(src)? {
            Some(frame) => Ok(Some(frame)),
            None => self.check_eof(src).map(|()| None),
        }
    }
}

/// Splits a complete frame into its typed parts; all parts are slices of `bytes`.
fn parse_frame(h: ValidHeader, mut bytes: Bytes) -> Result<Frame, CodecError> {
    bytes.advance(HEADER_LEN);
    let path = bytes.split_to(h.path_len);
    let meta = bytes.split_to(h.meta_len);
    let payload = bytes;
    let stream_id = h.stream_id;
    Ok(match h.kind {
        FrameKind::Request => Frame::Request(RequestFrame {
            stream_id,
            path: Utf8Bytes::try_from_bytes(path, "endpoint path")?,
            headers: HeaderMap::decode(meta)?,
            payload,
            timeout: (h.aux != 0).then(|| Duration::from_millis(u64::from(h.aux))),
        }),
        FrameKind::Data => Frame::Data { stream_id, payload },
        FrameKind::End => Frame::End { stream_id, payload },
        FrameKind::Error => Frame::Error {
            stream_id,
            code: ErrorCode::from_u32(h.aux),
            message: Utf8Bytes::try_from_bytes(payload, "error message")?,
        },
        FrameKind::Cancel => Frame::Cancel { stream_id },
        FrameKind::GoAway => Frame::GoAway {
            last_stream_id: stream_id,
            code: ErrorCode::from_u32(h.aux),
            message: Utf8Bytes::try_from_bytes(payload, "go-away message")?,
        },
        FrameKind::Ping => Frame::Ping { opaque: stream_id },
        FrameKind::Pong => Frame::Pong { opaque: stream_id },
        FrameKind::WindowUpdate => Frame::WindowUpdate {
            stream_id,
            increment: h.aux,
        },
    })
}
