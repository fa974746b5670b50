//! One client connection: many streams multiplexed by stream id, answered on the same
//! socket. A reader task routes response frames to per-stream queues. A request alone on
//! the connection is written by its caller; with others in flight it queues for the
//! writer task, which batches outgoing frames into vectored writes (`client_writer`).
//! Requests wait for a share of the connection's output budget before queueing, so a
//! server that stops reading holds callers back instead of growing the queue.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client_writer::{SendError, Sender, write_side};
use super::config::{ENV_CONNECT_TIMEOUT, ENV_TCP_REQUEST_TIMEOUT, TcpConfig};
use super::io::{
    FrameReader, FrameWriter, OUTPUT_BUDGET, Outbound, Side, budget_share, close_gracefully,
};
use super::stream_slot::{Next, StreamSlot};
use crate::codec::{ErrorCode, Frame, RequestFrame, fit_message};
use crate::hash::LocalMap;
use crate::planes::request::RequestError;
use crate::sync::lock;

/// State shared by the connection handle, its reader task and its response streams.
struct Shared {
    address: String,
    /// Changed only through [`Shared::change_streams`], which keeps `in_flight` true.
    streams: Mutex<Streams>,
    /// How many streams are open, for the pool and the writer to read without the lock;
    /// stored under it after every change (a store, not a read-modify-write on a line
    /// every caller and the reader touch).
    in_flight: AtomicUsize,
    /// Set after go-away: finish what is open, start nothing new.
    going_away: AtomicBool,
    /// Held shared while a request is queued, exclusively while `going_away` is set.
    send_gate: RwLock<()>,
    /// Fired when the connection is dead (reader or writer ended).
    closed: CancellationToken,
    /// Mirrors `closed` for the pool's per-request checks and the reader's every turn
    /// (through [`ReaderWake`]): reading a token takes its lock, which every caller on
    /// every thread would contend for.
    is_closed: AtomicBool,
    read_capacity: Arc<AtomicUsize>,
    max_frame_len: usize,
    /// The request timeout: every stream's deadline is its start plus this.
    timeout: Duration,
    /// Asks the reader to look at the deadlines again (a stream is due before its timer)
    /// or, once `is_closed` is set, to stop.
    reader_wake: ReaderWake,
}

/// Wakes the reader task for what it waits on beside the socket. Polled at every turn of
/// the reader's loop, once per response at concurrency 1: a flag and an `AtomicWaker`
/// cost a fraction of what a `Notify` (whose `Notified` takes its lock at every poll)
/// and a `CancellationToken` (its lock again) did.
#[derive(Default)]
struct ReaderWake {
    rearm: AtomicBool,
    reader: AtomicWaker,
}

/// Why [`ReaderWake`] woke the reader.
enum Woken {
    Closed,
    Rearm,
}

impl ReaderWake {
    fn wake(&self) {
        self.reader.wake();
    }

    fn ask_rearm(&self) {
        self.rearm.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Ready once the connection is closed or a re-arm is asked; registers the reader's
    /// waker before it looks, so a wake between the two is not lost.
    fn poll(&self, is_closed: &AtomicBool, cx: &mut Context<'_>) -> Poll<Woken> {
        self.reader.register(cx.waker());
        if is_closed.load(Ordering::Acquire) {
            Poll::Ready(Woken::Closed)
        } else if self.rearm.swap(false, Ordering::AcqRel) {
            Poll::Ready(Woken::Rearm)
        } else {
            Poll::Pending
        }
    }
}

/// The open streams, the id the next one takes and when the reader's timer fires: one
/// lock for all three, taken once per request start and once per end.
struct Streams {
    open: LocalMap<u64, Arc<StreamSlot>>,
    next_id: u64,
    /// A stream due before this needs the reader's deadline timer re-armed: the time it
    /// fires, less [`DEADLINE_SLACK`]. `None` until the reader has armed it. Set by the
    /// reader under this lock, so a stream registered after the reader last looked at
    /// the deadlines compares with the time it chose then.
    rearm_before: Option<Instant>,
}

impl Streams {
    /// Registers `slot` under the next id; returns that id, whether the stream is the
    /// only one open, and whether the reader's timer must be re-armed for it.
    fn open(&mut self, slot: Arc<StreamSlot>) -> (u64, bool, bool) {
        let stream_id = self.next_id;
        self.next_id += 1;
        let early = self
            .rearm_before
            .is_none_or(|before| slot.deadline() < before);
        self.open.insert(stream_id, slot);
        (stream_id, self.open.len() == 1, early)
    }
}

impl Shared {
    /// Runs `change` on the streams under their lock, then publishes how many are open.
    fn change_streams<R>(&self, change: impl FnOnce(&mut Streams) -> R) -> R {
        let mut streams = lock(&self.streams);
        let result = change(&mut streams);
        self.in_flight.store(streams.open.len(), Ordering::Relaxed);
        result
    }

    fn mark_closed(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed.cancel();
        self.reader_wake.wake();
    }

    fn remove_stream(&self, stream_id: u64) -> Option<Arc<StreamSlot>> {
        self.change_streams(|streams| streams.open.remove(&stream_id))
    }

    /// Removes the streams whose deadline has passed, to be failed as timed out, and
    /// picks when to look next: the earliest deadline left, and no later than one timeout
    /// from now, which no stream started later can be due before.
    fn expire(&self, now: Instant) -> (Vec<(u64, Arc<StreamSlot>)>, Instant) {
        let mut next = now.checked_add(self.timeout).unwrap_or(now + FAR_FUTURE);
        let mut expired = Vec::new();
        self.change_streams(|streams| {
            streams.open.retain(|id, slot| {
                if slot.deadline() <= now {
                    expired.push((*id, Arc::clone(slot)));
                    return false;
                }
                next = next.min(slot.deadline());
                true
            });
            streams.rearm_before = Some(next.checked_sub(DEADLINE_SLACK).unwrap_or(next));
        });
        (expired, next)
    }

    fn fail_all(&self, error: &RequestError) {
        let drained: Vec<_> = self.change_streams(|streams| streams.open.drain().collect());
        for (_, slot) in drained {
            slot.finish(Err(error.clone()));
        }
    }
}

/// How late a stream's timeout may be reported: tokio's timer counts in milliseconds, so
/// re-arming it for less would not make a timeout fire sooner.
const DEADLINE_SLACK: Duration = Duration::from_millis(1);
/// A timer for a timeout too long to add to the clock: about a year, never reached.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why [`ClientConnection::start`] did not open a stream.
pub(crate) enum StartError {
    /// The server is closing this connection (GOAWAY); the request, never sent, can go
    /// on another connection.
    GoingAway(RequestFrame),
    Failed(RequestError),
}

/// A handle to one pooled connection. Dropping every handle closes the socket once the
/// streams still open on it have ended.
pub(crate) struct ClientConnection {
    tx: Arc<Sender>,
    /// Request bytes that may wait in `tx`.
    budget: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl ClientConnection {
    /// Connects with TCP_NODELAY (set through `socket2` before the handshake) and starts
    /// the reader and writer tasks.
    pub(crate) async fn connect(
        address: &str,
        target: SocketAddr,
        config: &TcpConfig,
    ) -> Result<Self, RequestError> {
        let socket = tokio::time::timeout(config.connect_timeout, open_socket(target))
            .await
            .map_err(|_| RequestError::ConnectTimeout {
                address: address.to_owned(),
                timeout: config.connect_timeout,
                setting: ENV_CONNECT_TIMEOUT,
            })?
            .map_err(|e| RequestError::Connect {
                address: address.to_owned(),
                source: Arc::new(e),
            })?;
        let (rd, wr) = socket.into_split();
        let reader = FrameReader::new(rd, config.max_message_size, config.shrink_message_size);
        let shared = Arc::new(Shared {
            address: address.to_owned(),
            streams: Mutex::new(Streams {
                open: LocalMap::default(),
                next_id: 1,
                rearm_before: None,
            }),
            in_flight: AtomicUsize::new(0),
            going_away: AtomicBool::new(false),
            send_gate: RwLock::new(()),
            closed: CancellationToken::new(),
            is_closed: AtomicBool::new(false),
            read_capacity: reader.held_bytes(),
            max_frame_len: config.max_message_size,
            timeout: config.request_timeout,
            // The reader arms its timer as it starts; until then any stream asks it to.
            reader_wake: ReaderWake::default(),
        });
        let writer = FrameWriter::new(wr, config.max_message_size, Side::Client);
        let (tx, mut writer_task) = write_side(writer, config.channel_buffer);
        let tx = Arc::new(tx);
        let writer_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Once the reader has seen the server close, the socket goes at once: the
            // server lingers until we close too.
            let closed = writer_shared.closed.clone();
            tokio::select! {
                written = writer_task.run(&writer_shared.in_flight) => {
                    if let Err(err) = written {
                        tracing::debug!(%err, "client connection writer failed");
                    }
                }
                () = closed.cancelled() => {}
            }
            writer_task.close();
            writer_shared.mark_closed();
        });
        tokio::spawn(read_loop(reader, Arc::clone(&shared), Arc::downgrade(&tx)));
        Ok(Self {
            tx,
            budget: Arc::new(Semaphore::new(OUTPUT_BUDGET)),
            shared,
        })
    }

    /// Whether new requests may go on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.is_closed() && !self.shared.going_away.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.is_closed.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn read_buffer_capacity(&self) -> usize {
        self.shared.read_capacity.load(Ordering::Relaxed)
    }

    /// Opens a stream: registers it, then queues the request (waiting while the
    /// connection's output budget is spent). `request` must already be size-checked; its
    /// stream id is assigned here; `len` is its checked length. `deadline` is one request
    /// timeout after the caller began; until `waited` is set, so little time has passed
    /// since that the request tells the server the whole timeout is left. A connection
    /// the server is closing gives the request back untouched, for another connection.
    pub(crate) async fn start(
        &self,
        mut request: RequestFrame,
        len: usize,
        deadline: Instant,
        waited: &AtomicBool,
    ) -> Result<ResponseStream, StartError> {
        let Ok(permit) = budget_share(len, &self.budget).await else {
            return Err(StartError::Failed(self.unsent()));
        };
        let slot = Arc::new(StreamSlot::new(deadline));
        // Behind the send gate, which a GOAWAY closes: a request queued here goes out
        // before the PONG that tells the server we have seen the GOAWAY, and one that
        // comes later sees the GOAWAY and goes elsewhere. Callers share the gate.
        let (stream_id, sent) = {
            let _gate = self
                .shared
                .send_gate
                .read()
                .unwrap_or_else(|e| e.into_inner());
            if self.shared.going_away.load(Ordering::Relaxed) {
                return Err(StartError::GoingAway(request));
            }
            // Registered before sending: the answer can arrive before `send` returns. Not
            // on a connection the reader has given up: it marks it closed before failing
            // the streams under this lock, and one registered after that would never end.
            let opened = self.shared.change_streams(|streams| {
                let closed = self.shared.is_closed.load(Ordering::Relaxed);
                (!closed).then(|| streams.open(Arc::clone(&slot)))
            });
            let Some((stream_id, alone, early)) = opened else {
                return Err(StartError::Failed(self.unsent()));
            };
            // The reader's timer must not fire later than this stream's deadline (give or
            // take the timer's own millisecond).
            if early {
                self.shared.reader_wake.ask_rearm();
            }
            request.stream_id = stream_id;
            // The server gets the time left, so its handler stops when we stop waiting.
            request.timeout = Some(if waited.load(Ordering::Relaxed) {
                deadline.saturating_duration_since(Instant::now())
            } else {
                self.shared.timeout
            });
            let out = Outbound::budgeted(Frame::Request(request), permit);
            // A lone request goes straight to the socket; with others in flight it
            // queues, where the writer task batches it with theirs.
            (stream_id, self.tx.try_send(out, alone))
        };
        let mut stream = ResponseStream {
            slot,
            stream_id,
            shared: Arc::clone(&self.shared),
            tx: Some(Arc::clone(&self.tx)),
        };
        // A full queue is waited on outside the gate, so such a request can still land
        // behind an idle close's PONG and be refused as not processed (retryable). It
        // takes `DYN_TCP_CHANNEL_BUFFER` requests already waiting, at an idle moment.
        let queued = match sent {
            Ok(()) => true,
            Err(SendError::Full(out)) => self.tx.send(out).await.is_ok(),
            Err(SendError::Closed) => false,
        };
        if !queued {
            stream.tx = None;
            self.shared.remove_stream(stream_id);
            return Err(StartError::Failed(self.unsent()));
        }
        Ok(stream)
    }

    /// The error of a request that never left: the connection closed first.
    fn unsent(&self) -> RequestError {
        RequestError::ConnectionLost {
            address: self.shared.address.clone(),
            reason: "the connection closed before the request was sent".to_owned(),
        }
    }
}

async fn open_socket(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(target).await
}

async fn read_loop(
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    shared: Arc<Shared>,
    tx: Weak<Sender>,
) {
    // One timer for the deadlines of all the connection's streams, in place of one per
    // request: it is re-armed when it fires or a stream is due before it, which with
    // one timeout for every stream is about once per timeout, not once per request.
    let (_, first) = shared.expire(Instant::now());
    let timer = tokio::time::sleep_until(first);
    tokio::pin!(timer);
    // Why reading stopped, and the GOAWAY code owed to the server if it broke the
    // protocol (`PROTOCOL.md` §6.2, §7.6).
    let (reason, goaway) = 'read: loop {
        let frame = tokio::select! {
            biased;
            woken = std::future::poll_fn(|cx| shared.reader_wake.poll(&shared.is_closed, cx)) => {
                match woken {
                    // Only the writer task closes the connection while the reader runs.
                    Woken::Closed => {
                        break ("the connection could not be written to".to_owned(), None);
                    }
                    Woken::Rearm => None,
                }
            }
            () = &mut timer => None,
            frame = reader.next_frame() => Some(frame),
        };
        let Some(frame) = frame else {
            let (expired, next) = shared.expire(Instant::now());
            time_out(&shared, &tx, expired);
            timer.as_mut().reset(next);
            continue;
        };
        match frame {
            // The rest of what that read brought is handled before the next select: a
            // bounded amount (one read buffer), so the timer and the writer's failure
            // wait at most that long.
            Ok(Some(mut frame)) => loop {
                if let Err(reason) = on_frame(&shared, &tx, frame) {
                    break 'read (reason, Some(ErrorCode::Protocol));
                }
                match reader.buffered_frame() {
                    Ok(Some(next)) => frame = next,
                    Ok(None) => break,
                    Err(err) => break 'read (err.to_string(), err.goaway_code()),
                }
            },
            Ok(None) => break ("the server closed the connection".to_owned(), None),
            Err(err) => break (err.to_string(), err.goaway_code()),
        }
    };
    // Taken before the connection is marked closed, which makes the writer task drop it.
    let farewell = goaway.and_then(|code| {
        let writer = tx.upgrade()?.take_writer()?;
        Some((writer, code))
    });
    shared.mark_closed();
    shared.fail_all(&RequestError::ConnectionLost {
        address: shared.address.clone(),
        reason: reason.clone(),
    });
    if let Some((mut writer, code)) = farewell {
        // The streams have failed: their requests still queued are not worth sending.
        writer.discard_queued(|_| true);
        writer.push(Frame::GoAway {
            last_stream_id: 0,
            code,
            message: fit_message(reason, shared.max_frame_len),
        });
        if let Err(err) = close_gracefully(writer, reader.into_inner()).await {
            tracing::debug!(address = %shared.address, %err, "closing without flushing");
        }
    }
}

/// Fails streams past their deadline and cancels them on the server.
fn time_out(shared: &Shared, tx: &Weak<Sender>, expired: Vec<(u64, Arc<StreamSlot>)>) {
    if expired.is_empty() {
        return;
    }
    let tx = tx.upgrade();
    for (stream_id, slot) in expired {
        slot.finish(Err(RequestError::Timeout {
            timeout: shared.timeout,
            setting: ENV_TCP_REQUEST_TIMEOUT,
        }));
        if let Some(tx) = &tx {
            tx.send_control(Frame::Cancel { stream_id });
        }
    }
}

/// Routes one frame from the server; `Err` closes the connection with that reason.
fn on_frame(shared: &Shared, tx: &Weak<Sender>, frame: Frame) -> Result<(), String> {
    match frame {
        Frame::Data { stream_id, payload } => deliver(shared, tx, stream_id, payload),
        Frame::End { stream_id, payload } => {
            if let Some(slot) = shared.remove_stream(stream_id) {
                slot.finish(Ok(payload));
            }
        }
        Frame::Error {
            stream_id,
            code,
            message,
        } => {
            if let Some(slot) = shared.remove_stream(stream_id) {
                slot.finish(Err(RequestError::Remote {
                    code,
                    message: message.to_string(),
                }));
            }
        }
        Frame::GoAway {
            last_stream_id,
            code,
            message,
        } => {
            {
                // Ordered against `start`, which queues requests behind this gate.
                let _gate = shared.send_gate.write().unwrap_or_else(|e| e.into_inner());
                shared.going_away.store(true, Ordering::Relaxed);
            }
            if code != ErrorCode::NoError {
                tracing::warn!(address = %shared.address, ?code, %message, "server reported a connection error");
            }
            fail_unprocessed(shared, last_stream_id, &message.to_string());
        }
        Frame::Ping { opaque } => {
            // Dropped when the queue is full: a PING is a liveness check, and an answer
            // stuck behind a full queue would say little.
            if let Some(tx) = tx.upgrade() {
                let _ = tx.try_send(Outbound::control(Frame::Pong { opaque }), false);
            }
        }
        Frame::Pong { .. } => {}
        Frame::Request(_) | Frame::Cancel { .. } | Frame::WindowUpdate { .. } => {
            let kind = match frame {
                Frame::Request(_) => "REQUEST",
                Frame::Cancel { .. } => "CANCEL",
                _ => "WINDOW_UPDATE",
            };
            return Err(format!(
                "protocol error: the server sent a {kind} frame, which only clients send"
            ));
        }
    }
    Ok(())
}

/// Hands a response item to its stream, or fails the stream if the server overran its
/// flow-control window.
fn deliver(shared: &Shared, tx: &Weak<Sender>, stream_id: u64, payload: Bytes) {
    let slot = lock(&shared.streams).open.get(&stream_id).cloned();
    // Unknown ids are streams already cancelled or timed out: ignore.
    let Some(slot) = slot else { return };
    let Err(outstanding) = slot.push(payload, shared.max_frame_len) else {
        return;
    };
    shared.remove_stream(stream_id);
    slot.finish(Err(RequestError::FlowControl {
        address: shared.address.clone(),
        outstanding,
    }));
    if let Some(tx) = tx.upgrade() {
        tx.send_control(Frame::Cancel { stream_id });
    }
}

/// After go-away, streams above `last_stream_id` were never processed: fail them as
/// retryable now rather than letting them time out.
fn fail_unprocessed(shared: &Shared, last_stream_id: u64, message: &str) {
    let unprocessed: Vec<_> = shared.change_streams(|streams| {
        let ids: Vec<u64> = streams
            .open
            .keys()
            .copied()
            .filter(|id| *id > last_stream_id)
            .collect();
        ids.into_iter()
            .filter_map(|id| streams.open.remove(&id))
            .collect()
    });
    for slot in unprocessed {
        slot.finish(Err(RequestError::Remote {
            code: ErrorCode::ShuttingDown,
            message: format!("server is going away ({message}); the request was not processed"),
        }));
    }
}

/// The responses of one request, in order. Ends after the server's end-of-stream; yields
/// one `Err` and ends on failure or timeout. Dropping it early cancels the request on the
/// server.
pub struct ResponseStream {
    slot: Arc<StreamSlot>,
    stream_id: u64,
    shared: Arc<Shared>,
    /// For CANCEL and WINDOW_UPDATE; `None` once the stream is over, so a finished
    /// stream the caller still holds does not keep its connection open.
    tx: Option<Arc<Sender>>,
}

impl ResponseStream {
    /// Stops the request now: the server's handler sees its token fire.
    pub fn cancel(&mut self) {
        if let Some(tx) = self.tx.take() {
            if self.shared.remove_stream(self.stream_id).is_some() {
                tx.send_control(Frame::Cancel {
                    stream_id: self.stream_id,
                });
            }
        }
    }
}

impl Stream for ResponseStream {
    type Item = Result<Bytes, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.tx.is_none() {
            return Poll::Ready(None);
        }
        match self.slot.poll_next(cx) {
            Poll::Ready(Next::Item(item, grant)) => {
                if let (Some(increment), Some(tx)) = (grant, &self.tx) {
                    let stream_id = self.stream_id;
                    tx.send_control(Frame::WindowUpdate {
                        stream_id,
                        increment,
                    });
                }
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(Next::End(last)) => {
                self.tx = None;
                Poll::Ready((!last.is_empty()).then_some(Ok(last)))
            }
            Poll::Ready(Next::Failed(err)) => {
                self.tx = None;
                // The server enforces the deadline we sent; its verdict and ours race, and
                // the caller should see one kind of timeout either way.
                let err = match err.code() {
                    Some(ErrorCode::DeadlineExceeded) => RequestError::Timeout {
                        timeout: self.shared.timeout,
                        setting: ENV_TCP_REQUEST_TIMEOUT,
                    },
                    _ => err,
                };
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::net::TcpListener;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::*;

    const MAX_FRAME: usize = 1 << 20;

    /// A connection to a peer that reads our frames and never answers; the peer's frame
    /// reader, and its write half, which the test holds so the connection stays open.
    async fn silent_peer(
        timeout: Duration,
    ) -> (ClientConnection, FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let config = TcpConfig {
            request_timeout: timeout,
            max_message_size: MAX_FRAME,
            ..TcpConfig::default()
        };
        let address = target.to_string();
        let (conn, accepted) = tokio::join!(
            ClientConnection::connect(&address, target, &config),
            listener.accept()
        );
        let (rd, wr) = accepted.unwrap().0.into_split();
        let conn = conn.unwrap();
        // Until its reader task has armed the timer, every new stream sets it.
        while lock(&conn.shared.streams).rearm_before.is_none() {
            tokio::task::yield_now().await;
        }
        (conn, FrameReader::new(rd, MAX_FRAME, MAX_FRAME), wr)
    }

    async fn open(conn: &ClientConnection, deadline: Instant) -> ResponseStream {
        open_after(conn, deadline, true).await
    }

    /// [`open`] for a caller whose start `waited`, or not.
    async fn open_after(
        conn: &ClientConnection,
        deadline: Instant,
        waited: bool,
    ) -> ResponseStream {
        let request = RequestFrame {
            stream_id: 0,
            path: "ns/component/silent".into(),
            headers: Default::default(),
            payload: Bytes::from_static(b"hello"),
            timeout: None,
        };
        let len = request.checked_len(MAX_FRAME).unwrap();
        match conn
            .start(request, len, deadline, &AtomicBool::new(waited))
            .await
        {
            Ok(stream) => stream,
            Err(_) => panic!("the stream did not start"),
        }
    }

    /// The next frame the peer reads, within a bound far below any timeout under test.
    async fn peer_frame(peer: &mut FrameReader<OwnedReadHalf>) -> Frame {
        let frame = tokio::time::timeout(Duration::from_secs(20), peer.next_frame());
        frame
            .await
            .expect("no frame reached the peer")
            .unwrap()
            .unwrap()
    }

    async fn expect_timeout(stream: &mut ResponseStream, within: Duration) {
        let next = tokio::time::timeout(within, stream.next()).await;
        match next.expect("the stream outlived its deadline") {
            Some(Err(err)) => {
                assert!(err.is_timeout(), "expected a timeout, got {err}");
                assert!(err.to_string().contains(ENV_TCP_REQUEST_TIMEOUT), "{err}");
            }
            _ => panic!("expected a timeout error"),
        }
    }

    #[tokio::test]
    async fn a_stream_due_before_the_connection_timer_still_times_out_on_time() {
        // The connection's timer is set for one request timeout (an hour) ahead; a
        // stream that waited before it was sent is due much sooner and must re-arm it.
        let (conn, mut peer, _open) = silent_peer(Duration::from_secs(3600)).await;
        let mut patient = open(&conn, Instant::now() + Duration::from_secs(3600)).await;
        let mut hurried = open(&conn, Instant::now() + Duration::from_millis(200)).await;
        expect_timeout(&mut hurried, Duration::from_secs(20)).await;
        assert_eq!(peer_frame(&mut peer).await.stream_id(), 1);
        match peer_frame(&mut peer).await {
            // It waited: the server is told the time left, not the whole timeout.
            Frame::Request(request) => {
                assert_eq!(request.stream_id, 2);
                assert!(request.timeout <= Some(Duration::from_millis(200)));
            }
            other => panic!("expected the second request, got {other:?}"),
        }
        // The server is told to stop the timed-out request, and only that one.
        assert_eq!(peer_frame(&mut peer).await, Frame::Cancel { stream_id: 2 });
        assert_eq!(conn.in_flight(), 1);
        let still_open = tokio::time::timeout(Duration::from_millis(50), patient.next()).await;
        assert!(still_open.is_err(), "the other stream ended too");
    }

    #[tokio::test]
    async fn streams_started_after_the_timer_fired_time_out_too() {
        let timeout = Duration::from_millis(150);
        let (conn, mut peer, _open) = silent_peer(timeout).await;
        for round in 1..=3u64 {
            let mut stream = open(&conn, Instant::now() + timeout).await;
            expect_timeout(&mut stream, Duration::from_secs(20)).await;
            assert_eq!(peer_frame(&mut peer).await.stream_id(), round);
            assert_eq!(
                peer_frame(&mut peer).await,
                Frame::Cancel { stream_id: round }
            );
            assert_eq!(conn.in_flight(), 0);
        }
    }

    #[tokio::test]
    async fn a_request_that_did_not_wait_tells_the_server_the_whole_timeout() {
        let timeout = Duration::from_secs(3600);
        let (conn, mut peer, _open) = silent_peer(timeout).await;
        let _stream = open_after(&conn, Instant::now() + timeout, false).await;
        match peer_frame(&mut peer).await {
            Frame::Request(request) => assert_eq!(request.timeout, Some(timeout)),
            other => panic!("expected the request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_started_after_the_reader_gave_up_fails_at_once() {
        let (conn, _peer, _open) = silent_peer(Duration::from_secs(3600)).await;
        // What the reader does as it ends, before the pool has seen the connection close.
        conn.shared.mark_closed();
        conn.shared.fail_all(&RequestError::ConnectionLost {
            address: conn.shared.address.clone(),
            reason: "test".to_owned(),
        });
        let request = RequestFrame {
            stream_id: 0,
            path: "ns/component/silent".into(),
            headers: Default::default(),
            payload: Bytes::from_static(b"late"),
            timeout: None,
        };
        let len = request.checked_len(MAX_FRAME).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3600);
        let waited = AtomicBool::new(false);
        let started = conn.start(request, len, deadline, &waited);
        match tokio::time::timeout(Duration::from_secs(20), started).await {
            Ok(Err(StartError::Failed(err))) => {
                assert!(matches!(err, RequestError::ConnectionLost { .. }), "{err}");
            }
            Ok(Ok(_)) => panic!("a stream opened on a connection nothing reads any more"),
            Ok(Err(StartError::GoingAway(_))) => panic!("not going away: closed"),
            Err(_) => panic!("the start hung"),
        }
        assert_eq!(conn.in_flight(), 0);
    }
}
