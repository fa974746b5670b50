//! One accepted connection, served by one task that reads frames, dispatches them and
//! writes the answers; handlers that cannot answer at once continue in their own task.
//!
//! The read loop never waits on a handler: a request is refused (`Overloaded`,
//! `UnknownEndpoint`, ...), answered inline when its handler is ready at once, or handed
//! to its own task, so one slow endpoint cannot stall the other streams of a connection.
//! Reading and writing share the task through `select!`, so a large write in progress
//! never stops the connection from reading.
//!
//! Memory per connection is bounded whatever the peer does: each stream sends DATA only
//! while it has flow-control credit, stream tasks wait for a share of the connection's
//! output budget before queueing a frame, and the task stops taking frames (and reading
//! requests) while [`OUTPUT_BUDGET`] bytes wait to be written.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::{FrameReader, FrameWriter, OUTPUT_BUDGET, Outbound, Side, close_gracefully};
use super::server_state::{Phase, PhaseSignal, Shared};
use super::stream_task::{Credit, Framer, Step, StreamTask, cost};
use crate::codec::{
    CodecError, ErrorCode, Frame, INITIAL_STREAM_WINDOW, RequestFrame, fit_message,
};
use crate::planes::request::{EndpointCache, Request};
use crate::sync::lock;

/// Frames from stream tasks waiting for the connection task: this bounds the small ones
/// (to 4 MiB), the output budget the large ones.
const OUTBOUND_QUEUE: usize = 256;
/// Responses a ready handler may produce inline before the rest moves to its own task,
/// so an endless ready stream cannot monopolize the connection.
const INLINE_STEPS: usize = 64;

/// The PING that asks an idle connection's client whether it has seen the first GOAWAY.
const IDLE_PING: u64 = u64::from_le_bytes(*b"idle-pw\0");

/// A stream whose handler runs in its own task.
struct OpenStream {
    token: CancellationToken,
    credit: Arc<Credit>,
}

/// The open streams of one connection: those whose handlers continue in a task of their
/// own. Only the connection task adds to them; stream tasks and the connection task take
/// away.
struct Streams {
    /// Changed only through [`Streams::change`], which keeps `len` true.
    open: Mutex<HashMap<u64, OpenStream>>,
    /// How many are open, stored under the lock after every change. Requests answered
    /// inline never enter the map, so it is mostly empty: the connection task, the only
    /// one to add, can then skip the lock and the hashing (`may_hold`).
    len: AtomicUsize,
    /// Signalled whenever the last open stream finishes (drain completion).
    idle: Notify,
    /// Highest stream id accepted, reported in go-away.
    last_accepted: AtomicU64,
}

impl Streams {
    /// Runs `change` on the open streams under their lock, then publishes how many are
    /// open.
    fn change<R>(&self, change: impl FnOnce(&mut HashMap<u64, OpenStream>) -> R) -> R {
        let mut open = lock(&self.open);
        let result = change(&mut open);
        self.len.store(open.len(), Ordering::Release);
        result
    }

    /// Forgets `stream_id`; the stream's handler is cancelled if `cancel`.
    fn remove(&self, stream_id: u64, cancel: bool) {
        let now_empty = self.change(|open| {
            if let Some(stream) = open.remove(&stream_id)
                && cancel
            {
                stream.token.cancel();
            }
            open.is_empty()
        });
        if now_empty {
            self.idle.notify_one();
        }
    }

    fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Whether `stream_id` is open. Exact when called by the connection task: nothing
    /// else adds streams, so an empty count cannot be stale in the direction that
    /// matters.
    fn may_hold(&self, stream_id: u64) -> bool {
        !self.is_empty() && lock(&self.open).contains_key(&stream_id)
    }
}

/// A timeout a connection watches (see `Connection::clocks`).
#[derive(Debug, Clone, Copy)]
enum Clock {
    /// Queued output has not moved for `DYN_TCP_FRAME_TIMEOUT`.
    WriteStall,
    /// The idle close's PING got no PONG.
    IdlePong,
    /// A frame began arriving and did not finish.
    Frame,
    /// Nothing open, no traffic for `DYN_TCP_IDLE_TIMEOUT`.
    Idle,
}

/// How the connection's loop ended, which decides how it closes.
enum Close {
    /// Everything owed is queued: the peer half-closed or went idle, or the drain ended.
    Done,
    /// A protocol error or a timeout; a GOAWAY naming it is queued. Open streams are
    /// cancelled.
    Failed,
    /// The drain timeout passed: open streams end with `ShuttingDown`.
    Aborted,
    /// Nothing more can be written: the socket failed or the peer stopped reading.
    Broken,
}

/// What the connection task owns.
struct Connection {
    shared: Arc<Shared>,
    streams: Arc<Streams>,
    writer: FrameWriter<OwnedWriteHalf>,
    /// Cloned into every stream task; the connection task drains the other end.
    tx: mpsc::Sender<Outbound>,
    /// Bytes stream tasks may have queued in `tx`.
    budget: Arc<Semaphore>,
    peer: SocketAddr,
    /// We sent a graceful GOAWAY: requests from now on are refused.
    draining: bool,
    /// When an idle connection's first GOAWAY (no new requests, those on their way are
    /// served) and its PING went out.
    idle_since: Option<Instant>,
    /// When the idle clock last fired and found a stream open. An open stream is
    /// activity however silent, so the clock looks again one idle timeout later; left at
    /// its old deadline it would fire again at once, and spin, until the stream ended.
    busy_at: Instant,
    /// The client sent GOAWAY: it promised no new requests.
    peer_going_away: bool,
    /// The client shut its write side: no more requests, but every open stream still
    /// runs to its end.
    read_closed: bool,
    endpoint_cache: EndpointCache,
}

pub(super) async fn serve_connection(
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
) {
    let (rd, wr) = socket.into_split();
    let mut reader = FrameReader::new(rd, shared.max_frame_len, shared.shrink_threshold);
    let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
    let phase = shared.register(id, reader.held_bytes());

    let mut conn = Connection {
        shared: Arc::clone(&shared),
        streams: Arc::new(Streams {
            open: Mutex::default(),
            len: AtomicUsize::new(0),
            idle: Notify::new(),
            last_accepted: AtomicU64::new(0),
        }),
        writer: FrameWriter::new(wr, shared.max_frame_len, Side::Server),
        tx,
        budget: Arc::new(Semaphore::new(OUTPUT_BUDGET)),
        peer,
        draining: false,
        idle_since: None,
        busy_at: Instant::now(),
        peer_going_away: false,
        read_closed: false,
        endpoint_cache: EndpointCache::default(),
    };
    let how = conn.run(&mut reader, &mut rx, &phase).await;
    shared.deregister(id);
    conn.close(how, reader, rx).await;
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut FrameReader<OwnedReadHalf>,
        rx: &mut mpsc::Receiver<Outbound>,
        phase: &PhaseSignal,
    ) -> Close {
        let mut seen = Phase::Serving;
        // Armed lazily: a deadline that moves later (traffic came) is left to fire early
        // and be re-armed, so the timer is touched about once per timeout, not per frame.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let streams = Arc::clone(&self.streams);
        loop {
            if (self.draining || self.read_closed) && streams.is_empty() {
                return Close::Done;
            }
            let queued = self.writer.queued();
            let room = queued < OUTPUT_BUDGET;
            // Stream tasks are the channel's only other senders, and only this task starts
            // them: with none alive and nothing queued, nothing can arrive before the next
            // turn, so the channel is left unpolled (a poll cost about a twentieth of a
            // request answered inline). A task's sends happen before its sender's drop,
            // which `strong_count` observes.
            let outbound = self.tx.strong_count() > 1 || !rx.is_empty();
            if let Some(at) = self.next_check(reader, queued)
                && armed.is_none_or(|armed| at < armed)
            {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
            tokio::select! {
                biased;
                now = std::future::poll_fn(|cx| phase.poll_past(seen, cx)) => {
                    if now == Phase::Aborting {
                        return Close::Aborted;
                    }
                    seen = now;
                    if !self.draining {
                        self.start_draining();
                    }
                }
                _ = streams.idle.notified(), if self.draining || self.read_closed => {}
                frame = reader.next_frame(), if room && !self.read_closed => match frame {
                    // The rest of what that read brought, while the answers have room:
                    // one turn of this loop (its clocks, its signals) per read, not per
                    // frame. Bounded by one read buffer.
                    Ok(Some(mut frame)) => {
                        loop {
                            if let Err(how) = self.on_frame(frame, reader.last_read()) {
                                return how;
                            }
                            if self.writer.queued() >= OUTPUT_BUDGET {
                                break;
                            }
                            match reader.buffered_frame() {
                                Ok(Some(next)) => frame = next,
                                Ok(None) => break,
                                Err(err) => return self.on_decode_error(err),
                            }
                        }
                        if let Err(how) = self.write_now() {
                            return how;
                        }
                    }
                    Ok(None) => self.read_closed = true,
                    Err(err) => return self.on_decode_error(err),
                },
                Some(out) = rx.recv(), if room && outbound => {
                    self.writer.push(out.frame);
                    while self.writer.queued() < OUTPUT_BUDGET {
                        match rx.try_recv() {
                            Ok(out) => self.writer.push(out.frame),
                            Err(_) => break,
                        }
                    }
                    if let Err(how) = self.write_now() {
                        return how;
                    }
                }
                written = self.writer.flush(), if queued > 0 => {
                    if let Err(err) = written {
                        return self.write_failed(&err);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    if let Some(how) = self.on_timer(reader) {
                        return how;
                    }
                }
            }
        }
    }

    /// Writes what the socket takes now, in the turn that queued it. Leaving it to the
    /// `select!`'s flush would cost a turn of the loop (its clocks, its signals, a read
    /// that finds nothing) per request at concurrency 1, and hold the answers back
    /// behind that turn. What the socket does not take waits for that flush, whose poll
    /// registers this task for the socket's room.
    fn write_now(&mut self) -> Result<(), Close> {
        if self.writer.queued() == 0 {
            return Ok(());
        }
        self.writer
            .flush_now()
            .map(drop)
            .map_err(|err| self.write_failed(&err))
    }

    fn write_failed(&self, err: &std::io::Error) -> Close {
        tracing::debug!(peer = %self.peer, %err, "write failed; closing");
        Close::Broken
    }

    /// The timeouts that apply now, each with when it fires: output stuck behind a peer
    /// that does not read, an idle close waiting for its PONG, and either the frame
    /// being received or the idle clock. One list for `next_check` and `on_timer`, so
    /// the two cannot disagree.
    fn clocks(
        &self,
        reader: &FrameReader<OwnedReadHalf>,
        queued: usize,
    ) -> [Option<(Clock, Instant)>; 3] {
        let tcp = &self.shared.timeouts;
        let stall =
            (queued > 0).then(|| (Clock::WriteStall, self.writer.last_progress() + tcp.frame));
        if self.read_closed {
            return [stall, None, None];
        }
        let pong = self
            .idle_since
            .filter(|_| !self.draining)
            .map(|since| (Clock::IdlePong, since + tcp.frame));
        let input = match reader.partial_since() {
            // Paused reading is our doing, not the peer's: the frame clock waits.
            Some(since) if queued < OUTPUT_BUDGET => Some((Clock::Frame, since + tcp.frame)),
            Some(_) => None,
            // Whether streams are open is left to `on_timer`: this runs per frame. An
            // idle timer that fires on a busy connection is only re-armed: traffic has
            // moved `active` on, or an open stream `busy_at`.
            None if queued == 0 && self.idle_since.is_none() => {
                let active = reader
                    .last_read()
                    .max(self.writer.last_progress())
                    .max(self.busy_at);
                Some((Clock::Idle, active + tcp.idle))
            }
            None => None,
        };
        [stall, pong, input]
    }

    /// The earliest time a timeout could fire.
    fn next_check(&self, reader: &FrameReader<OwnedReadHalf>, queued: usize) -> Option<Instant> {
        let clocks = self.clocks(reader, queued);
        clocks.into_iter().flatten().map(|(_, at)| at).min()
    }

    /// Acts on the first timeout that has passed; `None` if none has (traffic moved
    /// them) or the connection goes on.
    fn on_timer(&mut self, reader: &FrameReader<OwnedReadHalf>) -> Option<Close> {
        let now = Instant::now();
        let clocks = self.clocks(reader, self.writer.queued());
        let (clock, _) = clocks.into_iter().flatten().find(|(_, at)| now >= *at)?;
        match clock {
            Clock::WriteStall => {
                tracing::debug!(peer = %self.peer, "peer stopped reading; closing");
                Some(Close::Broken)
            }
            Clock::IdlePong => {
                // No PONG: the client does not answer pings, or is gone.
                self.close_idle();
                None
            }
            Clock::Frame => {
                let message = format!(
                    "no complete frame within {:?} of its first byte (DYN_TCP_FRAME_TIMEOUT)",
                    self.shared.timeouts.frame
                );
                tracing::debug!(peer = %self.peer, "{message}");
                Some(self.fail(ErrorCode::Protocol, message))
            }
            Clock::Idle => {
                if self.streams.is_empty() {
                    self.announce_idle_close(now);
                } else {
                    self.busy_at = now;
                }
                None
            }
        }
    }

    /// The first half of an idle close, as HTTP/2 does a graceful one: a GOAWAY that
    /// refuses nothing (`last_stream_id` is the largest id), so a request the client sent
    /// before seeing it is still served, and a PING whose PONG says the client has seen
    /// it.
    fn announce_idle_close(&mut self, now: Instant) {
        self.idle_since = Some(now);
        self.writer.push(Frame::GoAway {
            last_stream_id: u64::MAX,
            code: ErrorCode::NoError,
            message: fit_message(self.idle_message(), self.shared.max_frame_len),
        });
        self.writer.push(Frame::Ping { opaque: IDLE_PING });
    }

    /// The second half: the real GOAWAY; the connection closes once its streams end.
    fn close_idle(&mut self) {
        self.draining = true;
        self.go_away(ErrorCode::NoError, self.idle_message());
    }

    fn idle_message(&self) -> String {
        let idle = self.shared.timeouts.idle;
        format!("connection idle for {idle:?} (DYN_TCP_IDLE_TIMEOUT)")
    }

    fn on_decode_error(&mut self, err: CodecError) -> Close {
        let Some(code) = err.goaway_code() else {
            tracing::debug!(peer = %self.peer, %err, "connection ended");
            return Close::Broken;
        };
        tracing::warn!(peer = %self.peer, %err, "closing connection after a bad frame");
        self.fail(code, err.to_string())
    }

    fn start_draining(&mut self) {
        self.draining = true;
        self.go_away(ErrorCode::NoError, "server shutting down".to_owned());
    }

    /// Queues a GOAWAY naming the connection's error; the connection then closes.
    fn fail(&mut self, code: ErrorCode, message: String) -> Close {
        self.go_away(code, message);
        Close::Failed
    }

    fn go_away(&mut self, code: ErrorCode, message: String) {
        self.writer.push(Frame::GoAway {
            last_stream_id: self.streams.last_accepted.load(Ordering::Relaxed),
            code,
            message: fit_message(message, self.shared.max_frame_len),
        });
    }

    /// Handles one frame, whose last bytes arrived at `arrived`; `Err` closes the
    /// connection.
    fn on_frame(&mut self, frame: Frame, arrived: Instant) -> Result<(), Close> {
        match frame {
            Frame::Request(request) => self.on_request(request, arrived)?,
            Frame::Cancel { stream_id } => self.streams.remove(stream_id, true),
            Frame::WindowUpdate {
                stream_id,
                increment,
            } => {
                // Unknown ids are streams that already ended: ignore.
                if let Some(stream) = lock(&self.streams.open).get(&stream_id) {
                    stream.credit.grant(increment);
                }
            }
            Frame::Ping { opaque } => self.writer.push(Frame::Pong { opaque }),
            Frame::Pong { opaque } => {
                if opaque == IDLE_PING && self.idle_since.is_some() && !self.draining {
                    self.close_idle();
                }
            }
            Frame::GoAway { message, .. } => {
                self.peer_going_away = true;
                tracing::debug!(peer = %self.peer, %message, "client sent go-away");
            }
            Frame::Data { .. } | Frame::End { .. } | Frame::Error { .. } => {
                let kind = match frame {
                    Frame::Data { .. } => "DATA",
                    Frame::End { .. } => "END",
                    _ => "ERROR",
                };
                let message = format!("clients may not send {kind} frames");
                return Err(self.fail(ErrorCode::Protocol, message));
            }
        }
        Ok(())
    }

    /// Queues an ERROR refusing a request; the connection stays up.
    fn refuse(&mut self, stream_id: u64, code: ErrorCode, message: String) {
        self.writer.push(Frame::Error {
            stream_id,
            code,
            message: fit_message(message, self.shared.max_frame_len),
        });
    }

    fn on_request(&mut self, request: RequestFrame, arrived: Instant) -> Result<(), Close> {
        let stream_id = request.stream_id;
        if stream_id == 0 {
            let message = "stream id 0 is reserved for connection-level frames".to_owned();
            return Err(self.fail(ErrorCode::Protocol, message));
        }
        if self.streams.may_hold(stream_id) {
            // An ERROR on this id would read as the end of the stream already open on it.
            let message = format!(
                "stream id {stream_id} was reused while its stream is still open; \
                 stream ids must not be reused on a connection"
            );
            return Err(self.fail(ErrorCode::StreamIdInUse, message));
        }
        if self.draining {
            let msg = "server is shutting down; retry on another instance".to_owned();
            self.refuse(stream_id, ErrorCode::ShuttingDown, msg);
            return Ok(());
        }
        if self.peer_going_away {
            let msg = "request sent after the client's own GOAWAY".to_owned();
            self.refuse(stream_id, ErrorCode::Protocol, msg);
            return Ok(());
        }
        let Some(endpoint) = self
            .shared
            .endpoint(request.path.as_str(), &mut self.endpoint_cache)
        else {
            let msg = format!(
                "no endpoint {:?} is registered on this server (a path without an instance \
                 id matches only an endpoint with exactly one instance here)",
                request.path.as_str()
            );
            self.refuse(stream_id, ErrorCode::UnknownEndpoint, msg);
            return Ok(());
        };
        let Some(permit) = endpoint.slots.try_take() else {
            let msg = format!(
                "endpoint {} overloaded: all {} request slots are busy; retry later",
                request.path, self.shared.max_concurrent_requests
            );
            self.refuse(stream_id, ErrorCode::Overloaded, msg);
            return Ok(());
        };
        self.streams
            .last_accepted
            .fetch_max(stream_id, Ordering::Relaxed);
        // The client's time left counts from when it sent the request: from its arrival
        // here (the read that brought it), which is also one clock read fewer per request.
        let deadline = request.timeout.map(|t| arrived + t);
        let RequestFrame {
            path,
            headers,
            payload,
            ..
        } = request;
        let request = Request {
            path,
            headers,
            payload,
            deadline,
        };
        let token = CancellationToken::new();
        let mut responses = endpoint.handler.call(request, token.clone());
        let mut framer = Framer::new(stream_id, self.shared.max_frame_len);
        // Window spent inline; a stream that continues in a task takes the rest along.
        let mut spent = 0;
        // Most handlers answer without waiting (echo, cached results): take what is ready
        // here and write it directly, saving a task and a wake-up per request. Polling
        // with a no-op waker is sound: a stream that is not ready is handed to a task,
        // whose first poll registers a real waker.
        for _ in 0..INLINE_STEPS {
            if spent >= i64::from(INITIAL_STREAM_WINDOW) || self.writer.queued() >= OUTPUT_BUDGET {
                break;
            }
            let Some(next) = responses.next().now_or_never() else {
                break;
            };
            match framer.step(next) {
                Step::Continue(data) => spent += self.push_data(data),
                Step::Finish {
                    data,
                    terminal,
                    stop_handler,
                } => {
                    self.push_data(data);
                    self.writer.push(terminal);
                    if stop_handler {
                        token.cancel();
                    }
                    return Ok(());
                }
            }
        }
        let credit = Credit::after(spent);
        let stream = OpenStream {
            token: token.clone(),
            credit: Arc::clone(&credit),
        };
        self.streams.change(|open| open.insert(stream_id, stream));
        let task = StreamTask {
            responses,
            framer,
            tx: self.tx.clone(),
            budget: Arc::clone(&self.budget),
            credit,
            token,
            deadline,
            permit,
        };
        let streams = Arc::clone(&self.streams);
        self.shared.tracker.spawn(async move {
            task.run().await;
            streams.remove(stream_id, false);
        });
        Ok(())
    }

    /// Queues `data`, if any; returns what it cost of the stream's window.
    fn push_data(&mut self, data: Option<Frame>) -> i64 {
        let Some(data) = data else { return 0 };
        let cost = cost(&data);
        self.writer.push(data);
        cost
    }

    /// Ends the connection as `how` says: stops every handler still running, sends what
    /// is owed at frame boundaries, shuts the write side, then reads and discards until
    /// the peer closes too (see [`close_gracefully`]).
    async fn close(
        mut self,
        how: Close,
        reader: FrameReader<OwnedReadHalf>,
        mut rx: mpsc::Receiver<Outbound>,
    ) {
        let open: HashSet<u64> = self.streams.change(|open| {
            open.drain()
                .map(|(id, stream)| {
                    stream.token.cancel();
                    id
                })
                .collect()
        });
        // Stream tasks still waiting to queue a frame give up.
        self.budget.close();
        rx.close();
        if matches!(how, Close::Broken) {
            return;
        }
        let aborted = matches!(how, Close::Aborted);
        while let Ok(out) = rx.try_recv() {
            if !(aborted && open.contains(&out.frame.stream_id())) {
                self.writer.push(out.frame);
            }
        }
        if aborted {
            // What the cut-off streams had queued goes; each gets its terminal frame.
            self.writer
                .discard_queued(|frame| open.contains(&frame.stream_id()));
            for stream_id in open {
                let message = "server shut down before the request finished (drain timeout passed)";
                self.refuse(stream_id, ErrorCode::ShuttingDown, message.to_owned());
            }
        }
        if let Err(err) = close_gracefully(self.writer, reader.into_inner()).await {
            tracing::debug!(peer = %self.peer, %err, "closing without flushing");
        }
    }
}
