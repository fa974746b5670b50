//! A client connection's write side. A caller whose frame would be the only thing to
//! write writes it to the socket itself, saving the hand-off to the writer task (a wake
//! and a task switch per request, most of a lone caller's overhead); everything else
//! goes through a bounded queue to the writer task, which batches what waits into each
//! write.
//!
//! Order on the wire is the order frames were handed over: a frame goes straight out
//! only while no frame waits in the queue or in the writer, so it never overtakes one
//! (a REQUEST stays ahead of its stream's CANCEL, the requests before a PONG stay ahead
//! of it).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc};

use super::io::{FrameWriter, Outbound, WRITE_BATCH_BYTES};
use crate::codec::Frame;
use crate::sync::lock;

pub(crate) type Writer = FrameWriter<OwnedWriteHalf>;

/// What the writer task and the senders share.
struct Core {
    /// `None` once the connection's writing is over (the socket's write half dropped).
    writer: Mutex<Option<Writer>>,
    /// Frames handed to the queue and not yet taken into `writer`. Counted before the
    /// hand-off, uncounted under `writer`'s lock once taken: while it is above zero, no
    /// frame may go straight out.
    queued: AtomicUsize,
    /// A sender left bytes unwritten in `writer`: the writer task finishes them.
    kick: Notify,
}

/// The sending end, shared by the connection handle, its response streams and (weakly)
/// its reader task. Dropping the last one ends the writer task, which flushes and shuts
/// the write side.
pub(crate) struct Sender {
    core: Arc<Core>,
    tx: mpsc::Sender<Outbound>,
}

/// The writer task's end: drains the queue into the socket.
pub(crate) struct WriterTask {
    core: Arc<Core>,
    rx: mpsc::Receiver<Outbound>,
}

/// The connection's writing, split into its [`Sender`] and its [`WriterTask`]; the queue
/// holds at most `queue` frames.
pub(crate) fn write_side(writer: Writer, queue: usize) -> (Sender, WriterTask) {
    let core = Arc::new(Core {
        writer: Mutex::new(Some(writer)),
        queued: AtomicUsize::new(0),
        kick: Notify::new(),
    });
    let (tx, rx) = mpsc::channel(queue);
    let sender = Sender {
        core: Arc::clone(&core),
        tx,
    };
    (sender, WriterTask { core, rx })
}

/// Why a frame was not taken.
pub(crate) enum SendError {
    /// The queue is full; the frame is back.
    Full(Outbound),
    /// The connection's writing is over.
    Closed,
}

impl Sender {
    /// Writes `out` now if nothing waits ahead of it, else queues it without waiting.
    /// `direct` allows the first: a caller that expects company (other streams in
    /// flight) queues, so the writer task can batch it with theirs.
    #[expect(
        clippy::result_large_err,
        reason = "the frame comes back unboxed, as from mpsc's try_send: boxing it would \
                  cost an allocation per request"
    )]
    pub(crate) fn try_send(&self, out: Outbound, direct: bool) -> Result<(), SendError> {
        let out = if direct {
            match self.write_now(out) {
                None => return Ok(()),
                Some(out) => out,
            }
        } else {
            out
        };
        self.core.queued.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.core.queued.fetch_sub(1, Ordering::AcqRel);
                match err {
                    mpsc::error::TrySendError::Full(out) => Err(SendError::Full(out)),
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                }
            }
        }
    }

    /// Queues `out`, waiting for room. Counted as waiting from the start, so nothing
    /// sent after this call began overtakes it.
    pub(crate) async fn send(&self, out: Outbound) -> Result<(), SendError> {
        self.core.queued.fetch_add(1, Ordering::AcqRel);
        // Uncounted again unless the frame reaches the queue, also when this future is
        // dropped while it waits (a request that timed out): a count left behind would
        // keep every later frame off the direct path.
        let uncount = Uncount(&self.core.queued);
        let sent = self.tx.send(out).await;
        if sent.is_ok() {
            std::mem::forget(uncount);
        }
        sent.map_err(|_| SendError::Closed)
    }

    /// Queues a CANCEL, WINDOW_UPDATE or PONG without blocking (from `Drop`, `poll_next`
    /// and the reader task). If the queue is full, a task waits for room. These tasks are
    /// bounded: one cancel per stream, a stream's unsent grants never exceed its window
    /// plus one frame (the server cannot send more than that without them), and a PONG
    /// answers a PING the reader has read.
    pub(crate) fn send_control(self: &Arc<Self>, frame: Frame) {
        match self.try_send(Outbound::control(frame), false) {
            Ok(()) | Err(SendError::Closed) => {}
            Err(SendError::Full(out)) => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let sender = Arc::clone(self);
                    handle.spawn(async move {
                        let _ = sender.send(out).await;
                    });
                }
            }
        }
    }

    /// Takes the socket's write side from the writer task and every sender, for a close
    /// that owes the server a last frame; `None` if the connection's writing is over.
    /// Frames still queued are never written.
    pub(crate) fn take_writer(&self) -> Option<Writer> {
        lock(&self.core.writer).take()
    }

    /// Writes `out` to the socket from the caller, when nothing waits ahead of it and no
    /// one else is writing; the frame back otherwise. Bytes the socket does not take now
    /// stay in the writer, and the writer task is told to finish them.
    fn write_now(&self, out: Outbound) -> Option<Outbound> {
        // Someone else is writing: that is contention, and the queue is the place for it.
        let Ok(mut writer) = self.core.writer.try_lock() else {
            return Some(out);
        };
        let Some(writer) = writer.as_mut() else {
            return Some(out);
        };
        if writer.queued() > 0 || self.core.queued.load(Ordering::Acquire) > 0 {
            return Some(out);
        }
        // The frame's share of the output budget is back once it is in the writer, as
        // when the writer task takes it from the queue.
        writer.push(out.frame);
        // A write error is the writer task's to report: it meets the same error on the
        // bytes left, and its end closes the connection.
        if !matches!(writer.flush_now(), Ok(true)) {
            self.core.kick.notify_one();
        }
        None
    }
}

/// Takes one frame off [`Core::queued`] when dropped.
struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriterTask {
    /// Writes until every [`Sender`] is gone (then flushes and shuts the write side) or
    /// a write fails. When more streams are in flight than frames wait, their callers are
    /// likely about to queue too (their answers just arrived): yielding once lets them,
    /// and one write then carries the lot. A lone caller (`in_flight` 1) never waits.
    pub(crate) async fn run(&mut self, in_flight: &AtomicUsize) -> io::Result<()> {
        loop {
            let first = tokio::select! {
                biased;
                out = self.rx.recv() => match out {
                    Some(out) => Some(out),
                    None => break,
                },
                () = self.core.kick.notified() => None,
            };
            if first.is_some() && in_flight.load(Ordering::Relaxed) > self.rx.len() + 1 {
                tokio::task::yield_now().await;
            }
            self.take(first);
            std::future::poll_fn(|cx| match lock(&self.core.writer).as_mut() {
                Some(writer) => writer.poll_flush(cx),
                None => std::task::Poll::Ready(Ok(())),
            })
            .await?;
        }
        std::future::poll_fn(|cx| match lock(&self.core.writer).as_mut() {
            Some(writer) => writer.poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        })
        .await
    }

    /// Moves `first` and whatever else waits (up to a batch) from the queue into the
    /// writer.
    fn take(&mut self, first: Option<Outbound>) {
        let mut guard = lock(&self.core.writer);
        let Some(writer) = guard.as_mut() else { return };
        let mut taken = 0;
        if let Some(out) = first {
            writer.push(out.frame);
            taken += 1;
        }
        while writer.queued() < WRITE_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(out) => {
                    writer.push(out.frame);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        self.core.queued.fetch_sub(taken, Ordering::AcqRel);
    }

    /// Ends the connection's writing at once: the write half is dropped (the server,
    /// which lingers until we close, sees it now), and senders are refused from here on.
    pub(crate) fn close(&self) {
        lock(&self.core.writer).take();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::tcp::io::{FrameReader, Side};

    const MAX_FRAME: usize = 64 << 20;

    /// A connected pair: our sending side (its writer task not started) and the peer's
    /// frame reader.
    async fn pair(queue: usize) -> (Arc<Sender>, WriterTask, FrameReader<OwnedReadHalf>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        let (_, wr) = ours.unwrap().into_split();
        let (rd, _) = theirs.unwrap().0.into_split();
        let (sender, task) = write_side(FrameWriter::new(wr, MAX_FRAME, Side::Client), queue);
        (
            Arc::new(sender),
            task,
            FrameReader::new(rd, MAX_FRAME, 1 << 20),
        )
    }

    fn cancel(stream_id: u64) -> Outbound {
        Outbound::control(Frame::Cancel { stream_id })
    }

    async fn next_id(reader: &mut FrameReader<OwnedReadHalf>) -> u64 {
        let frame = tokio::time::timeout(Duration::from_secs(10), reader.next_frame());
        frame.await.unwrap().unwrap().unwrap().stream_id()
    }

    #[tokio::test]
    async fn a_lone_frame_reaches_the_socket_without_the_writer_task() {
        let (sender, _task, mut peer) = pair(8).await;
        assert!(sender.try_send(cancel(1), true).is_ok());
        // The writer task never runs: the caller wrote the frame itself.
        assert_eq!(next_id(&mut peer).await, 1);
    }

    #[tokio::test]
    async fn a_direct_frame_never_overtakes_one_in_the_queue() {
        let (sender, mut task, mut peer) = pair(8).await;
        assert!(sender.try_send(cancel(1), false).is_ok());
        // Allowed to go direct, but frame 1 waits ahead of it: it queues behind.
        assert!(sender.try_send(cancel(2), true).is_ok());
        let in_flight = AtomicUsize::new(0);
        let writer = tokio::spawn(async move { task.run(&in_flight).await });
        assert_eq!(next_id(&mut peer).await, 1);
        assert_eq!(next_id(&mut peer).await, 2);
        // With the queue drained, a direct frame goes straight out again.
        assert!(sender.try_send(cancel(3), true).is_ok());
        assert_eq!(next_id(&mut peer).await, 3);
        drop(sender);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_now_the_writer_task_finishes_in_order() {
        let (sender, mut task, mut peer) = pair(8).await;
        // Far more than the socket buffers hold while the peer is not reading.
        let big = Frame::Data {
            stream_id: 1,
            payload: Bytes::from(vec![7; 16 << 20]),
        };
        assert!(sender.try_send(Outbound::control(big), true).is_ok());
        // The rest of the big frame waits in the writer: the next frame queues behind.
        assert!(sender.try_send(cancel(2), true).is_ok());
        let in_flight = AtomicUsize::new(0);
        let writer = tokio::spawn(async move { task.run(&in_flight).await });
        let frame = tokio::time::timeout(Duration::from_secs(10), peer.next_frame());
        let frame = frame.await.unwrap().unwrap().unwrap();
        assert_eq!(frame.stream_id(), 1);
        assert_eq!(frame.payload().len(), 16 << 20);
        assert_eq!(next_id(&mut peer).await, 2);
        drop(sender);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_send_given_up_while_waiting_for_room_does_not_block_the_direct_path() {
        let (sender, mut task, mut peer) = pair(1).await;
        assert!(sender.try_send(cancel(1), false).is_ok());
        // The queue is full: this send waits, and is given up (as a timed-out request).
        let waiting = tokio::time::timeout(Duration::from_millis(10), sender.send(cancel(2)));
        assert!(waiting.await.is_err(), "the queue had no room");
        let in_flight = AtomicUsize::new(0);
        let writer = tokio::spawn(async move { task.run(&in_flight).await });
        assert_eq!(next_id(&mut peer).await, 1);
        // Nothing waits any more; whether frame 3 went direct or through the (now
        // empty) queue, the writer task is stopped first to tell which it was.
        writer.abort();
        let _ = writer.await;
        assert!(sender.try_send(cancel(3), true).is_ok());
        assert_eq!(next_id(&mut peer).await, 3, "went straight to the socket");
    }

    #[tokio::test]
    async fn a_closed_writer_refuses_frames() {
        let (sender, task, _peer) = pair(8).await;
        task.close();
        drop(task);
        assert!(matches!(
            sender.try_send(cancel(1), true),
            Err(SendError::Closed)
        ));
        assert!(matches!(
            sender.send(cancel(2)).await,
            Err(SendError::Closed)
        ));
    }
}
