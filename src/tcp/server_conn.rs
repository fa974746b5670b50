//! One accepted connection, served by one task that reads frames, dispatches them and
//! writes the answers; handlers that cannot answer at once continue in their own task.
//!
//! The read loop never waits on a handler: a request is refused (`Overloaded`,
//! `UnknownEndpoint`, ...), answered inline when its handler is ready at once, or handed
//! to its own task, so one slow endpoint cannot stall the other streams of a connection.
//! Reading and writing share the task through `select!`, so a large write in progress
//! never stops the connection from reading.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::{FrameReader, FrameWriter, WRITE_BATCH_BYTES};
use super::server::Shared;
use super::stream_task::{Framer, Step, StreamTask};
use crate::codec::{CodecError, ErrorCode, Frame, RequestFrame};
use crate::planes::Request;
use crate::sync::lock;

/// Frames from stream tasks waiting for the connection task. Full means the client is
/// not reading; the stream tasks wait.
const OUTBOUND_QUEUE: usize = 1024;
/// Reading pauses while this much output waits: a client that sends but does not read
/// gets TCP backpressure instead of growing our write queue without bound.
const PAUSE_READING_AT: usize = 4 * 1024 * 1024;
/// Responses a ready handler may produce inline before the rest moves to its own task,
/// so an endless ready stream cannot monopolize the connection.
const INLINE_STEPS: usize = 64;
/// How long a closing connection may spend flushing its last frames to a peer that has
/// stopped reading.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The open streams of one connection.
struct Streams {
    open: Mutex<HashMap<u64, CancellationToken>>,
    /// Signalled whenever the last open stream finishes (drain completion).
    idle: Notify,
    /// Highest stream id accepted, reported in go-away.
    last_accepted: AtomicU64,
}

impl Streams {
    fn finish(&self, stream_id: u64) {
        let mut open = lock(&self.open);
        open.remove(&stream_id);
        if open.is_empty() {
            self.idle.notify_one();
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.open).is_empty()
    }
}

/// What the connection task owns.
struct Connection {
    shared: Arc<Shared>,
    streams: Arc<Streams>,
    writer: FrameWriter<OwnedWriteHalf>,
    /// Cloned into every stream task; the connection task drains the other end.
    tx: mpsc::Sender<Frame>,
    peer: SocketAddr,
    draining: bool,
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
    lock(&shared.buffer_capacities).insert(id, reader.held_bytes());

    let mut conn = Connection {
        shared: Arc::clone(&shared),
        streams: Arc::new(Streams {
            open: Mutex::default(),
            idle: Notify::new(),
            last_accepted: AtomicU64::new(0),
        }),
        writer: FrameWriter::new(wr, shared.max_frame_len),
        tx,
        peer,
        draining: false,
    };
    conn.run(&mut reader, &mut rx).await;

    // The client is gone, or the connection is being closed: stop every handler, then
    // flush what is queued (a go-away, last responses) for a bounded time.
    for (_, token) in lock(&conn.streams.open).drain() {
        token.cancel();
    }
    lock(&shared.buffer_capacities).remove(&id);
    while let Ok(frame) = rx.try_recv() {
        conn.writer.push(&frame);
    }
    match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, conn.writer.shutdown()).await {
        Ok(Err(err)) => tracing::debug!(%peer, %err, "closing write failed"),
        Err(_) => tracing::debug!(%peer, "peer stopped reading; closing without flushing"),
        Ok(Ok(())) => {}
    }
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut FrameReader<OwnedReadHalf>,
        rx: &mut mpsc::Receiver<Frame>,
    ) {
        // One future for the whole loop: creating one per frame would take the token's
        // lock, shared by every connection of the server.
        let shutdown = self.shared.shutdown.clone();
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        let streams = Arc::clone(&self.streams);
        loop {
            let queued = self.writer.queued();
            tokio::select! {
                biased;
                _ = &mut shutdown, if !self.draining => self.start_draining(),
                _ = streams.idle.notified(), if self.draining => {}
                frame = reader.next_frame(), if queued < PAUSE_READING_AT => {
                    let outcome = match frame {
                        Ok(Some(frame)) => self.on_frame(frame),
                        Ok(None) => return,
                        Err(err) => {
                            self.on_decode_error(err);
                            return;
                        }
                    };
                    if let Err(reason) = outcome {
                        self.go_away(ErrorCode::Protocol, reason);
                        return;
                    }
                }
                Some(frame) = rx.recv() => {
                    self.writer.push(&frame);
                    while self.writer.queued() < WRITE_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(frame) => self.writer.push(&frame),
                            Err(_) => break,
                        }
                    }
                }
                written = self.writer.flush(), if queued > 0 => {
                    if let Err(err) = written {
                        tracing::debug!(peer = %self.peer, %err, "write failed; closing");
                        return;
                    }
                }
            }
            if self.draining && streams.is_empty() {
                return;
            }
        }
    }

    fn on_decode_error(&mut self, err: CodecError) {
        let code = match err {
            CodecError::Io(_) | CodecError::Truncated { .. } => {
                tracing::debug!(peer = %self.peer, %err, "connection ended");
                return;
            }
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Protocol,
        };
        tracing::warn!(peer = %self.peer, %err, "closing connection after a bad frame");
        self.go_away(code, err.to_string());
    }

    fn start_draining(&mut self) {
        self.draining = true;
        self.go_away(ErrorCode::NoError, "server shutting down".to_owned());
    }

    fn go_away(&mut self, code: ErrorCode, message: String) {
        self.writer.push(&Frame::GoAway {
            last_stream_id: self.streams.last_accepted.load(Ordering::Relaxed),
            code,
            message: message.into(),
        });
    }

    /// Handles one frame; `Err` is a protocol violation that closes the connection.
    fn on_frame(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Request(request) => self.on_request(request)?,
            Frame::Cancel { stream_id } => {
                if let Some(token) = lock(&self.streams.open).remove(&stream_id) {
                    token.cancel();
                }
            }
            Frame::Ping { opaque } => self.writer.push(&Frame::Pong { opaque }),
            Frame::Pong { .. } => {}
            Frame::GoAway { message, .. } => {
                tracing::debug!(peer = %self.peer, %message, "client sent go-away");
            }
            Frame::Data { .. } => return Err("clients may not send DATA frames".to_owned()),
            Frame::End { .. } => return Err("clients may not send END frames".to_owned()),
            Frame::Error { .. } => return Err("clients may not send ERROR frames".to_owned()),
        }
        Ok(())
    }

    fn on_request(&mut self, request: RequestFrame) -> Result<(), String> {
        let stream_id = request.stream_id;
        if stream_id == 0 {
            return Err("stream id 0 is reserved for connection-level frames".to_owned());
        }
        let mut refuse = |code, message: String| {
            self.writer.push(&Frame::Error {
                stream_id,
                code,
                message: message.into(),
            });
            Ok(())
        };
        if self.draining {
            let msg = "server is shutting down; retry on another instance".to_owned();
            return refuse(ErrorCode::ShuttingDown, msg);
        }
        let endpoint = self.shared.endpoint(request.path.as_str());
        let Some(endpoint) = endpoint else {
            let msg = format!(
                "no endpoint {:?} is registered on this server (a path without an instance \
                 id matches only an endpoint with exactly one instance here)",
                request.path.as_str()
            );
            return refuse(ErrorCode::UnknownEndpoint, msg);
        };
        let Ok(permit) = Arc::clone(&endpoint.slots).try_acquire_owned() else {
            let msg = format!(
                "endpoint {} overloaded: all {} request slots are busy; retry later",
                request.path, self.shared.max_concurrent_requests
            );
            return refuse(ErrorCode::Overloaded, msg);
        };
        if lock(&self.streams.open).contains_key(&stream_id) {
            let msg = format!("stream id {stream_id} is already open on this connection");
            return refuse(ErrorCode::StreamIdInUse, msg);
        }
        self.streams
            .last_accepted
            .fetch_max(stream_id, Ordering::Relaxed);
        let deadline = request.timeout.map(|t| Instant::now() + t);
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
        // Most handlers answer without waiting (echo, cached results): take what is ready
        // here and write it directly, saving a task and a wake-up per request. Polling
        // with a no-op waker is sound: a stream that is not ready is handed to a task,
        // whose first poll registers a real waker.
        for _ in 0..INLINE_STEPS {
            let Some(next) = responses.next().now_or_never() else {
                break;
            };
            match framer.step(next) {
                Step::Continue(data) => self.writer.push_opt(data),
                Step::Finish {
                    data,
                    terminal,
                    stop_handler,
                } => {
                    self.writer.push_opt(data);
                    self.writer.push(&terminal);
                    if stop_handler {
                        token.cancel();
                    }
                    return Ok(());
                }
            }
        }
        lock(&self.streams.open).insert(stream_id, token.clone());
        let task = StreamTask {
            responses,
            framer,
            tx: self.tx.clone(),
            token,
            abort: self.shared.abort.clone(),
            deadline,
            permit,
        };
        let streams = Arc::clone(&self.streams);
        self.shared.tracker.spawn(async move {
            task.run().await;
            streams.finish(stream_id);
        });
        Ok(())
    }
}
