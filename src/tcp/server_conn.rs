//! One accepted connection: a read loop that dispatches frames, a writer task, and one
//! task per open stream.
//!
//! The read loop never waits on a handler: requests are refused (`Overloaded`,
//! `UnknownEndpoint`, ...) or handed to their own task at once, so one slow endpoint
//! cannot stall the other streams of a connection.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::{FrameReader, FrameWriter, write_loop};
use super::server::Shared;
use crate::codec::{CodecError, ErrorCode, Frame, HEADER_LEN, RequestFrame, Utf8Bytes};
use crate::planes::{Handler, HandlerStream, Request};
use crate::sync::lock;

/// Frames waiting for the writer. Full means the client is not reading; senders wait.
const OUTBOUND_QUEUE: usize = 1024;

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

/// What one connection task owns.
struct Connection {
    shared: Arc<Shared>,
    streams: Arc<Streams>,
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
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = shared
        .tracker
        .spawn(write_loop(FrameWriter::new(wr, shared.max_frame_len), rx));
    let capacity = Arc::new(AtomicUsize::new(reader.buffer_capacity()));
    lock(&shared.buffer_capacities).insert(id, Arc::clone(&capacity));

    let mut conn = Connection {
        shared: Arc::clone(&shared),
        streams: Arc::new(Streams {
            open: Mutex::default(),
            idle: Notify::new(),
            last_accepted: AtomicU64::new(0),
        }),
        tx,
        peer,
        draining: false,
    };
    conn.read_loop(&mut reader, &capacity).await;

    // The client is gone, or the connection is being closed: stop every handler.
    for (_, token) in lock(&conn.streams.open).drain() {
        token.cancel();
    }
    lock(&shared.buffer_capacities).remove(&id);
    drop(conn);
    if let Ok(Err(err)) = writer.await {
        tracing::debug!(%peer, %err, "connection writer ended with an error");
    }
}

impl Connection {
    async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        capacity: &AtomicUsize,
    ) {
        let shutdown = self.shared.shutdown.clone();
        let streams = Arc::clone(&self.streams);
        loop {
            let frame = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !self.draining => {
                    self.start_draining().await;
                    if streams.is_empty() { return; }
                    continue;
                }
                _ = streams.idle.notified(), if self.draining => {
                    if streams.is_empty() { return; }
                    continue;
                }
                frame = reader.next_frame() => frame,
            };
            capacity.store(reader.buffer_capacity(), Ordering::Relaxed);
            match frame {
                Ok(Some(frame)) => {
                    if let Err(reason) = self.on_frame(frame).await {
                        self.go_away(ErrorCode::Protocol, reason).await;
                        return;
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    self.on_decode_error(err).await;
                    return;
                }
            }
        }
    }

    async fn on_decode_error(&mut self, err: CodecError) {
        let code = match err {
            CodecError::Io(_) | CodecError::Truncated { .. } => {
                tracing::debug!(peer = %self.peer, %err, "connection ended");
                return;
            }
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Protocol,
        };
        tracing::warn!(peer = %self.peer, %err, "closing connection after a bad frame");
        self.go_away(code, err.to_string()).await;
    }

    async fn start_draining(&mut self) {
        self.draining = true;
        self.go_away(ErrorCode::NoError, "server shutting down".to_owned())
            .await;
    }

    async fn go_away(&self, code: ErrorCode, message: String) {
        let frame = Frame::GoAway {
            last_stream_id: self.streams.last_accepted.load(Ordering::Relaxed),
            code,
            message: message.into(),
        };
        // The writer may already be gone with the socket; nothing left to tell then.
        let _ = self.tx.send(frame).await;
    }

    async fn send(&self, frame: Frame) {
        let _ = self.tx.send(frame).await;
    }

    /// Handles one frame; `Err` is a protocol violation that closes the connection.
    async fn on_frame(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Request(request) => self.on_request(request).await?,
            Frame::Cancel { stream_id } => {
                if let Some(token) = lock(&self.streams.open).remove(&stream_id) {
                    token.cancel();
                }
            }
            Frame::Ping { opaque } => self.send(Frame::Pong { opaque }).await,
            Frame::Pong { .. } => {}
            Frame::GoAway { message, .. } => {
                tracing::debug!(peer = %self.peer, %message, "client sent go-away");
            }
            Frame::Data { .. } | Frame::End { .. } | Frame::Error { .. } => {
                return Err(format!(
                    "clients may not send {} frames",
                    match frame {
                        Frame::Data { .. } => "DATA",
                        Frame::End { .. } => "END",
                        _ => "ERROR",
                    }
                ));
            }
        }
        Ok(())
    }

    async fn on_request(&mut self, request: RequestFrame) -> Result<(), String> {
        let stream_id = request.stream_id;
        if stream_id == 0 {
            return Err("stream id 0 is reserved for connection-level frames".to_owned());
        }
        let refuse = |code, message: String| Frame::Error {
            stream_id,
            code,
            message: message.into(),
        };
        if self.draining {
            let msg = "server is shutting down; retry on another instance".to_owned();
            self.send(refuse(ErrorCode::ShuttingDown, msg)).await;
            return Ok(());
        }
        let endpoint = self
            .shared
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(request.path.as_str())
            .cloned();
        let Some(endpoint) = endpoint else {
            let msg = format!(
                "no endpoint {:?} is registered on this server",
                request.path.as_str()
            );
            self.send(refuse(ErrorCode::UnknownEndpoint, msg)).await;
            return Ok(());
        };
        let Ok(permit) = Arc::clone(&endpoint.slots).try_acquire_owned() else {
            let msg = format!(
                "endpoint {} overloaded: all {} request slots are busy; retry later",
                request.path, self.shared.max_concurrent_requests
            );
            self.send(refuse(ErrorCode::Overloaded, msg)).await;
            return Ok(());
        };
        let handler = Arc::clone(&endpoint.handler);
        let token = self.shared.abort.child_token();
        let newly_opened = match lock(&self.streams.open).entry(stream_id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(token.clone());
                true
            }
        };
        if !newly_opened {
            let msg = format!("stream id {stream_id} is already open on this connection");
            self.send(refuse(ErrorCode::StreamIdInUse, msg)).await;
            return Ok(());
        }
        self.streams
            .last_accepted
            .fetch_max(stream_id, Ordering::Relaxed);
        let task = StreamTask {
            stream_id,
            tx: self.tx.clone(),
            token,
            abort: self.shared.abort.clone(),
            max_frame_len: self.shared.max_frame_len,
            deadline: request.timeout.map(|t| Instant::now() + t),
        };
        let streams = Arc::clone(&self.streams);
        self.shared.tracker.spawn(async move {
            task.run(handler, request, permit).await;
            streams.finish(stream_id);
        });
        Ok(())
    }
}

/// Runs one handler and turns its responses into frames.
struct StreamTask {
    stream_id: u64,
    tx: mpsc::Sender<Frame>,
    token: CancellationToken,
    abort: CancellationToken,
    max_frame_len: usize,
    deadline: Option<Instant>,
}

impl StreamTask {
    async fn run(
        self,
        handler: Arc<dyn Handler>,
        request: RequestFrame,
        _permit: OwnedSemaphorePermit,
    ) {
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
            deadline: self.deadline,
        };
        let responses = handler.call(request, self.token.clone());
        if let Some(terminal) = self.drive(responses).await {
            let _ = self.tx.send(terminal).await;
        }
    }

    /// Forwards responses until the handler ends, fails, or is cancelled; returns the
    /// terminal frame to send, if any (a client-cancelled stream gets none).
    ///
    /// An item that is followed at once by the end of the stream goes out inside the END
    /// frame, so a unary response costs one frame.
    async fn drive(&self, mut responses: HandlerStream) -> Option<Frame> {
        let stream_id = self.stream_id;
        let mut held: Option<Bytes> = None;
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            let next = match responses.next().now_or_never() {
                Some(next) if !self.token.is_cancelled() => next,
                _ => {
                    if let Some(item) = held.take() {
                        self.send_data(item).await?;
                    }
                    tokio::select! {
                        biased;
                        _ = self.token.cancelled() => return self.cancelled_terminal(),
                        _ = &mut deadline => {
                            self.token.cancel();
                            return Some(self.error(ErrorCode::DeadlineExceeded, "request deadline passed on the server".to_owned()));
                        }
                        next = responses.next() => next,
                    }
                }
            };
            match next {
                Some(Ok(item)) => {
                    if HEADER_LEN + item.len() > self.max_frame_len {
                        self.token.cancel();
                        let msg = format!(
                            "response of {} bytes exceeds DYN_TCP_MAX_MESSAGE_SIZE={} bytes",
                            HEADER_LEN + item.len(),
                            self.max_frame_len
                        );
                        return Some(self.error(ErrorCode::FrameTooLarge, msg));
                    }
                    if let Some(previous) = held.replace(item) {
                        self.send_data(previous).await?;
                    }
                }
                Some(Err(err)) => {
                    if let Some(item) = held.take() {
                        self.send_data(item).await?;
                    }
                    return Some(self.error(ErrorCode::Handler, err.0));
                }
                None => {
                    let payload = match held.take() {
                        // An empty END payload means "no item", so an empty last item
                        // travels as DATA.
                        Some(last) if last.is_empty() => {
                            self.send_data(last).await?;
                            Bytes::new()
                        }
                        last => last.unwrap_or_default(),
                    };
                    return Some(Frame::End { stream_id, payload });
                }
            }
        }
    }

    /// `None` when the connection is gone (nothing more can be sent).
    async fn send_data(&self, payload: Bytes) -> Option<()> {
        let frame = Frame::Data {
            stream_id: self.stream_id,
            payload,
        };
        self.tx.send(frame).await.ok()
    }

    fn cancelled_terminal(&self) -> Option<Frame> {
        // Client cancels need no answer; a drain timeout does.
        self.abort.is_cancelled().then(|| {
            self.error(
                ErrorCode::ShuttingDown,
                "server shut down before the request finished".to_owned(),
            )
        })
    }

    fn error(&self, code: ErrorCode, message: String) -> Frame {
        Frame::Error {
            stream_id: self.stream_id,
            code,
            message: Utf8Bytes::from(message),
        }
    }
}
