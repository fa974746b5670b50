//! Frames over a byte stream: a buffered zero-copy reader and a vectored writer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::codec::{CodecError, FLATTEN_BELOW, Frame, FrameDecoder, WriteQueue};

/// Free space below which the read buffer is topped up before a `read`.
const MIN_READ_SPACE: usize = 4096;
/// Frames are gathered from the queue until this many bytes wait, then written.
pub(crate) const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// iovecs per `writev`: async-nats uses 64, far above where returns diminish.
const MAX_IOVECS: usize = 64;

/// How long the reader keeps a large buffer for the next large message. Back-to-back
/// large messages reuse it; a connection whose large messages stopped gives it back soon.
pub(crate) const SPARE_KEEP: Duration = Duration::from_secs(1);

/// Reads frames from `io` through one reusable, shrinkable buffer.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// The decoder's spare (by number) and when it is given back if not reused.
    spare_expiry: Option<(u64, Instant)>,
    /// Bytes of read buffer held, spare included, for the connection's owner to report.
    held: Arc<AtomicUsize>,
    /// When the first bytes of the frame still incomplete in `buf` were seen.
    partial_since: Option<Instant>,
    /// When bytes last arrived.
    last_read: Instant,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_len: usize, shrink_threshold: usize) -> Self {
        let decoder = FrameDecoder::new(max_frame_len, shrink_threshold).with_spare();
        let buf = decoder.new_buffer();
        Self {
            io,
            held: Arc::new(AtomicUsize::new(buf.capacity())),
            buf,
            decoder,
            spare_expiry: None,
            partial_since: None,
            last_read: Instant::now(),
        }
    }

    /// The next frame, or `None` at a clean end of stream. Cancel-safe: partial input
    /// stays in the buffer.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            // Only while waiting: a spare given back here is reported at once.
            let spare_deadline = self.spare_deadline();
            self.note_held();
            self.decoder.reserve_for_read(&mut self.buf, MIN_READ_SPACE);
            let read = self.io.read_buf(&mut self.buf);
            let read = match spare_deadline {
                None => read.await?,
                Some(deadline) => tokio::select! {
                    biased;
                    read = read => read?,
                    // Back to the top, where `spare_deadline` gives the spare back.
                    () = tokio::time::sleep_until(deadline) => continue,
                },
            };
            if read == 0 {
                self.decoder.check_eof(&self.buf)?;
                return Ok(None);
            }
            self.last_read = Instant::now();
        }
    }

    /// The next frame already read in, without reading more: `None` until a whole one
    /// has arrived. Lets a loop handle every frame one read brought before it goes back
    /// to waiting on the socket beside its timers and signals (whose polling, per frame,
    /// cost more than decoding).
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        let decoded = self.decoder.decode_frame(&mut self.buf);
        self.note_held();
        let frame = decoded?;
        self.track_partial(frame.is_some());
        Ok(frame)
    }

    /// Starts the frame clock when the buffer holds part of a frame and none was decoded;
    /// stops it when a frame was, or nothing is left.
    fn track_partial(&mut self, decoded: bool) {
        if decoded || self.buf.is_empty() {
            self.partial_since = None;
        } else if self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
    }

    /// When the frame now arriving began, if one is partly received.
    pub(crate) fn partial_since(&self) -> Option<Instant> {
        self.partial_since
    }

    pub(crate) fn last_read(&self) -> Instant {
        self.last_read
    }

    /// The byte stream, for reading and discarding what a closing peer still sends.
    pub(crate) fn into_inner(self) -> R {
        self.io
    }

    /// When the decoder's spare is to be given back; releases it if that time has come.
    fn spare_deadline(&mut self) -> Option<Instant> {
        let Some(spare) = self.decoder.spare() else {
            self.spare_expiry = None;
            return None;
        };
        let now = Instant::now();
        let (_, deadline) = match self.spare_expiry {
            Some(expiry) if expiry.0 == spare => expiry,
            _ => *self.spare_expiry.insert((spare, now + SPARE_KEEP)),
        };
        if now >= deadline {
            self.decoder.release_spare();
            self.spare_expiry = None;
            return None;
        }
        Some(deadline)
    }

    fn note_held(&self) {
        let held = self.buf.capacity() + self.decoder.spare_capacity();
        self.held.store(held, Ordering::Relaxed);
    }

    /// Bytes of read buffer this reader holds, kept up to date as it reads: the buffer's
    /// capacity plus a spare large buffer it keeps for up to [`SPARE_KEEP`].
    pub(crate) fn held_bytes(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.held)
    }
}

/// Writes frames to `io`: small ones batched into one buffer, large payloads as their
/// own iovecs, control frames ahead of queued data.
///
/// Frames wait as frames (`backlog`, `urgent`) and are encoded into `writing` only when
/// it is empty, at most [`WRITE_BATCH_BYTES`] at a time: a write never stops inside a
/// frame that something else must overtake, and a GOAWAY, PONG or WINDOW_UPDATE waits
/// behind one batch at most, never behind the whole backlog.
pub(crate) struct FrameWriter<W> {
    io: W,
    /// Whole frames being written; bytes leave from the front.
    writing: WriteQueue,
    /// Connection-level frames, written before the backlog.
    urgent: VecDeque<(Frame, usize)>,
    backlog: VecDeque<(Frame, usize)>,
    /// Wire bytes of the frames in `urgent` and `backlog`.
    waiting: usize,
    max_frame_len: usize,
    /// A server's PONG overtakes queued data; a client's does not: its PONG tells the
    /// server that every request sent before it has arrived (`PROTOCOL.md` §7.11), so it
    /// keeps its place behind them. Only a server keeps `last_progress` (it watches for
    /// a peer that stops reading); a client saves the two clock reads per request.
    side: Side,
    /// When output last moved (or started waiting): a peer that stops reading is seen
    /// by this not advancing.
    last_progress: Instant,
}

/// Which end of the connection a [`FrameWriter`] writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W, max_frame_len: usize, side: Side) -> Self {
        Self {
            io,
            writing: WriteQueue::new(),
            urgent: VecDeque::new(),
            backlog: VecDeque::new(),
            waiting: 0,
            max_frame_len,
            side,
            last_progress: Instant::now(),
        }
    }

    /// Queues a frame: GOAWAY, PING, WINDOW_UPDATE (and a server's PONG) go ahead of
    /// queued data, the rest in order. Senders check sizes (and fit error messages) before
    /// a frame reaches the writer; the check when it is encoded is a safety net (see
    /// `encode`).
    pub(crate) fn push(&mut self, frame: Frame) {
        let len = frame.wire_len();
        if self.side == Side::Server && self.queued() == 0 {
            self.last_progress = Instant::now();
        }
        // Nothing waits and the batch has room: the frame goes straight into it, where it
        // is no further from the socket than an urgent frame could get ahead of it.
        if self.waiting == 0 && self.writing.remaining() < WRITE_BATCH_BYTES {
            self.encode(&frame);
            return;
        }
        self.waiting += len;
        let urgent = match frame {
            Frame::GoAway { .. } | Frame::Ping { .. } | Frame::WindowUpdate { .. } => true,
            Frame::Pong { .. } => self.side == Side::Server,
            _ => false,
        };
        if urgent {
            self.urgent.push_back((frame, len));
        } else {
            self.backlog.push_back((frame, len));
        }
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.writing.remaining() + self.waiting
    }

    pub(crate) fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Drops the queued frames (not yet started) that `drop_frame` picks; the frame being
    /// written is always finished.
    pub(crate) fn discard_queued(&mut self, mut drop_frame: impl FnMut(&Frame) -> bool) {
        let mut dropped = 0;
        self.backlog.retain(|(frame, len)| {
            let keep = !drop_frame(frame);
            if !keep {
                dropped += len;
            }
            keep
        });
        self.waiting -= dropped;
    }

    /// Moves waiting frames into `writing`: every urgent one, then backlog frames up to
    /// a batch (at least one).
    fn refill(&mut self) {
        while let Some((frame, len)) = self.urgent.pop_front() {
            self.waiting -= len;
            self.encode(&frame);
        }
        while self.writing.remaining() < WRITE_BATCH_BYTES {
            let Some((frame, len)) = self.backlog.pop_front() else {
                break;
            };
            self.waiting -= len;
            self.encode(&frame);
        }
    }

    fn encode(&mut self, frame: &Frame) {
        // A failure is a bug upstream: the frame is dropped and logged, never
        // half-written.
        if let Err(err) = self.writing.push(frame, self.max_frame_len) {
            tracing::error!(%err, stream_id = frame.stream_id(), "dropping unencodable frame");
        }
    }

    /// Writes everything queued. Cancel-safe: what was written stays written, and the
    /// rest stays queued, whole frames included.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// [`flush`](Self::flush) as a poll: ready once everything queued is written.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.writing.is_empty() {
                self.refill();
                if self.writing.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            let io = Pin::new(&mut self.io);
            let written = if self.writing.is_one_chunk() {
                // Small frames only, the usual case: a plain write, without filling an
                // array of iovecs, which cost more than encoding a small frame.
                ready!(io.poll_write(cx, self.writing.chunk()))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let n = self.writing.chunks_vectored(&mut slices);
                ready!(io.poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.writing.advance(written);
            // Only what still waits has a stall clock: once everything is written, the
            // next `push` starts it again, so the usual write that empties the queue
            // saves its clock read.
            if self.side == Side::Server && self.queued() > 0 {
                self.last_progress = Instant::now();
            }
        }
    }

    /// Writes what the socket takes now, without waiting; `Ok(true)` when nothing is
    /// left. Whoever calls this must make sure a task then polls
    /// [`poll_flush`](Self::poll_flush) if something is left: a socket that would block
    /// wakes only the waker of the last poll, and this one's is a no-op.
    pub(crate) fn flush_now(&mut self) -> io::Result<bool> {
        match self.poll_flush(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_shutdown(cx)).await
    }

    /// Flushes, then shuts the write side.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A frame on its way from a stream to a connection's writer, with its share of the
/// connection's output budget: the budget is back once the writer has taken the frame.
pub(crate) struct Outbound {
    pub(crate) frame: Frame,
    /// `None` for the few small control frames, which are bounded by count instead.
    _budget: Option<OwnedSemaphorePermit>,
}

impl Outbound {
    /// Waits for `frame`'s share of `budget` (see [`budget_share`]). `None` once the
    /// budget is closed (the connection is closing).
    pub(crate) async fn reserve(frame: Frame, budget: &Arc<Semaphore>) -> Option<Self> {
        let permit = budget_share(frame.wire_len(), budget).await.ok()?;
        Some(Self {
            frame,
            _budget: permit,
        })
    }

    /// [`reserve`](Self::reserve) when the share is free now; the frame back when it
    /// would have to wait (or the budget is closed).
    pub(crate) fn try_reserve(frame: Frame, budget: &Arc<Semaphore>) -> Result<Self, Frame> {
        let permit = match share(frame.wire_len()) {
            None if budget.is_closed() => return Err(frame),
            None => None,
            Some(share) => match Arc::clone(budget).try_acquire_many_owned(share) {
                Ok(permit) => Some(permit),
                Err(_) => return Err(frame),
            },
        };
        Ok(Self::budgeted(frame, permit))
    }

    pub(crate) fn budgeted(frame: Frame, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            frame,
            _budget: permit,
        }
    }

    /// A CANCEL, WINDOW_UPDATE or PONG: small, and bounded by their senders.
    pub(crate) fn control(frame: Frame) -> Self {
        Self {
            frame,
            _budget: None,
        }
    }
}

/// Frames below this take no share of the output budget: the queues' frame counts bound
/// them (256 × 16 KiB on a server connection), and small requests and responses skip
/// the semaphore.
const BUDGET_FROM: usize = FLATTEN_BELOW;

/// The permits a frame of `len` bytes takes: its length, at most the whole budget;
/// `None` for a small frame.
fn share(len: usize) -> Option<u32> {
    (len >= BUDGET_FROM).then(|| len.min(OUTPUT_BUDGET) as u32)
}

/// The output budget is closed: the connection is closing.
pub(crate) struct BudgetClosed;

/// The share of `budget` for a frame of `len` bytes: its length, at most the whole
/// budget (a frame larger than the budget waits until it has the budget to itself);
/// `None` for a small frame.
pub(crate) async fn budget_share(
    len: usize,
    budget: &Arc<Semaphore>,
) -> Result<Option<OwnedSemaphorePermit>, BudgetClosed> {
    let Some(share) = share(len) else {
        return if budget.is_closed() {
            Err(BudgetClosed)
        } else {
            Ok(None)
        };
    };
    match Arc::clone(budget).try_acquire_many_owned(share) {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => Arc::clone(budget)
            .acquire_many_owned(share)
            .await
            .map(Some)
            .map_err(|_| BudgetClosed),
    }
}

/// Output bytes a connection lets wait in its queues before producers wait: a few MiB,
/// whatever the peer does. A single frame larger than this still passes, alone.
pub(crate) const OUTPUT_BUDGET: usize = 4 * 1024 * 1024;

/// How long a closing connection may spend flushing its last frames to a slow peer.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection reads and discards what the peer still sends after our
/// write side is shut.
const LINGER: Duration = Duration::from_secs(2);

/// The end of a close, either side (`PROTOCOL.md` §7.10): writes what `writer` holds,
/// never cutting a frame, shuts the write side, then reads and discards until the peer
/// closes too or [`LINGER`] passes. Closing with unread input would make the kernel send a
/// reset, which destroys what the peer has received and not read yet. A peer that does not
/// take the bytes within [`CLOSE_FLUSH_TIMEOUT`] (it stopped reading) is left at once.
pub(crate) async fn close_gracefully<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rd: impl AsyncRead + Unpin,
) -> io::Result<()> {
    tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer.shutdown())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading"))??;
    let mut scratch = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::codec::{INITIAL_READ_CAPACITY, encode_frame};

    const LARGE: usize = 4 << 20;

    /// A DATA frame on the wire.
    fn data(stream_id: u64, payload: Bytes) -> BytesMut {
        let mut wire = BytesMut::new();
        let frame = Frame::Data { stream_id, payload };
        encode_frame(&frame, usize::MAX, &mut wire).unwrap();
        wire
    }

    fn large_frame() -> BytesMut {
        data(1, Bytes::from(vec![7; LARGE]))
    }

    /// Paused time: the runtime jumps to each timer once every task waits.
    #[tokio::test(start_paused = true)]
    async fn the_spare_is_given_back_after_spare_keep_of_silence() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(io, 2 * LARGE, 1 << 20);
        let held = reader.held_bytes();
        let wire = large_frame();
        let writer = tokio::spawn(async move {
            peer.write_all(&wire).await.unwrap();
            peer
        });
        let frame = reader.next_frame().await.unwrap().unwrap();
        assert_eq!(frame.payload().len(), LARGE);
        let _peer = writer.await.unwrap();
        drop(frame);

        let silent = tokio::time::timeout(SPARE_KEEP / 2, reader.next_frame()).await;
        assert!(silent.is_err(), "nothing was sent");
        assert!(
            held.load(Ordering::Relaxed) > LARGE,
            "the spare is kept for a while"
        );
        let silent = tokio::time::timeout(SPARE_KEEP, reader.next_frame()).await;
        assert!(silent.is_err(), "nothing was sent");
        assert_eq!(held.load(Ordering::Relaxed), INITIAL_READ_CAPACITY);
    }

    #[tokio::test(start_paused = true)]
    async fn back_to_back_large_frames_reuse_one_buffer() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(io, 2 * LARGE, 1 << 20);
        let held = reader.held_bytes();
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                peer.write_all(&large_frame()).await.unwrap();
            }
            peer
        });
        let mut addresses = Vec::new();
        for _ in 0..3 {
            let frame = reader.next_frame().await.unwrap().unwrap();
            addresses.push(frame.payload().as_ptr());
            assert!(
                held.load(Ordering::Relaxed) < 2 * LARGE,
                "one spare at most"
            );
        }
        let _peer = writer.await.unwrap();
        assert_eq!(addresses[1], addresses[0]);
        assert_eq!(addresses[2], addresses[0]);
    }

    #[tokio::test]
    async fn buffered_frames_are_what_reads_brought_and_a_partial_one_waits_for_the_socket() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(io, 1 << 20, 1 << 20);
        let mut wire = BytesMut::new();
        for stream_id in 1..=3 {
            wire.extend_from_slice(&data(stream_id, Bytes::from_static(b"payload")));
        }
        let last = data(4, Bytes::from_static(b"payload"));
        let cut = last.len() - 1;
        wire.extend_from_slice(&last[..cut]);
        peer.write_all(&wire).await.unwrap();

        let first = reader.next_frame().await.unwrap().unwrap();
        assert_eq!(first.stream_id(), 1);
        for stream_id in 2..=3 {
            let frame = reader.buffered_frame().unwrap().expect("already read in");
            assert_eq!(frame.stream_id(), stream_id);
        }
        assert!(
            reader.buffered_frame().unwrap().is_none(),
            "the fourth frame lacks its last byte: it is not decoded, nor waited for"
        );
        assert!(reader.partial_since().is_some(), "the frame clock runs");

        peer.write_all(&last[cut..]).await.unwrap();
        let fourth = reader.next_frame().await.unwrap().unwrap();
        assert_eq!(fourth.stream_id(), 4);
        assert!(reader.partial_since().is_none());
    }
}
