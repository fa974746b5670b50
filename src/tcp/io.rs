//! Frames over a byte stream: a buffered zero-copy reader and a vectored writer.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{CodecError, Frame, FrameDecoder, WriteQueue};

/// Free space below which the read buffer is topped up before a `read`.
const MIN_READ_SPACE: usize = 4096;
/// Frames are gathered from the queue until this many bytes wait, then written.
pub(crate) const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// iovecs per `writev`: async-nats uses 64, far above where returns diminish.
const MAX_IOVECS: usize = 64;

/// Reads frames from `io` through one reusable, shrinkable buffer.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_len: usize, shrink_threshold: usize) -> Self {
        let decoder = FrameDecoder::new(max_frame_len, shrink_threshold);
        Self {
            io,
            buf: decoder.new_buffer(),
            decoder,
        }
    }

    /// The next frame, or `None` at a clean end of stream. Cancel-safe: partial input
    /// stays in the buffer.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        loop {
            if let Some(frame) = self.decoder.decode_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ_SPACE {
                self.buf.reserve(MIN_READ_SPACE);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                self.decoder.check_eof(&self.buf)?;
                return Ok(None);
            }
        }
    }

    /// Capacity of the read buffer, to show it shrank after a large message.
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Writes frames to `io`: small ones batched into one buffer, large payloads as their
/// own iovecs.
pub(crate) struct FrameWriter<W> {
    io: W,
    queue: WriteQueue,
    max_frame_len: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W, max_frame_len: usize) -> Self {
        Self {
            io,
            queue: WriteQueue::new(),
            max_frame_len,
        }
    }

    /// Queues a frame. Senders check sizes before a frame reaches the writer, so a
    /// failure here is a bug upstream; the frame is dropped and logged, never half-written.
    pub(crate) fn push(&mut self, frame: &Frame) {
        if let Err(err) = self.queue.push(frame, self.max_frame_len) {
            tracing::error!(%err, stream_id = frame.stream_id(), "dropping unencodable frame");
        }
    }

    pub(crate) fn push_opt(&mut self, frame: Option<Frame>) {
        if let Some(frame) = frame {
            self.push(&frame);
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.remaining()
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        while self.queue.has_remaining() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.queue.chunks_vectored(&mut slices);
            let written = self.io.write_vectored(&slices[..n]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.queue.advance(written);
        }
        Ok(())
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.shutdown().await
    }
}

/// Drains `rx` into `writer` until every sender is gone, batching whatever is queued into
/// each write.
///
/// When more streams are in flight than requests wait here, their callers are likely
/// about to queue requests too (their answers just arrived): yielding once lets them, and
/// one write then carries the lot instead of one write per request. A lone caller
/// (`in_flight` 1) never waits for that.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: tokio::sync::mpsc::Receiver<Frame>,
    in_flight: &AtomicUsize,
) -> io::Result<()> {
    while let Some(frame) = rx.recv().await {
        if in_flight.load(Ordering::Relaxed) > rx.len() + 1 {
            tokio::task::yield_now().await;
        }
        writer.push(&frame);
        while writer.queued() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(frame) => writer.push(&frame),
                Err(_) => break,
            }
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}
