//! [`ResponseBody`]: a handler's response stream as an HTTP/2 body of records. Polled by
//! hyper as the stream's flow-control window allows, so a client that reads slowly
//! pauses its handler and nothing queues up; dropped by hyper when the client resets the
//! stream, which fires the handler's cancellation token.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::framing::{self, Chunk};
use crate::planes::request::{HandlerStream, Slot};
use crate::vocab::ErrorCode;

use super::config::ENV_HTTP_MAX_MESSAGE_SIZE;

/// A body of records: a handler's, or a single error record.
pub(super) struct ResponseBody {
    running: Option<Running>,
    /// The record to send before anything else; the terminal one once `running` ends.
    next: Option<Chunk>,
    /// Counts this stream among its connection's open ones until hyper drops the body,
    /// which is after its last frame is queued: the connection holds its GOAWAY until
    /// then (see `server.rs`).
    _open: Option<TaskTrackerToken>,
}

/// A handler still producing.
struct Running {
    responses: HandlerStream,
    /// Fired when the client goes away, the deadline passes or the server aborts.
    token: CancellationToken,
    /// The endpoint's concurrency slot, given back when the stream ends.
    _slot: Slot,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Resolves when the drain timeout passes.
    abort: BoxFuture<'static, ()>,
    max_item: usize,
}

/// Items smaller than this are copied into the frame being filled, so that a burst of
/// small responses (and a unary response with its end) goes out as one DATA frame: the
/// peer's HTTP/2 stack budgets small frames, and each frame costs a header and a wake-up.
/// Larger items are sent as they are, without a copy.
const COPY_BELOW: usize = 4096;
/// How much a frame of small records may hold before it is sent.
const FILL_UP_TO: usize = 16 * 1024;

impl ResponseBody {
    /// The stream of `responses`.
    pub(super) fn stream(
        responses: HandlerStream,
        token: CancellationToken,
        slot: Slot,
        deadline: Option<Instant>,
        abort: CancellationToken,
        max_item: usize,
    ) -> Self {
        Self {
            running: Some(Running {
                responses,
                token,
                _slot: slot,
                deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                abort: Box::pin(abort.cancelled_owned()),
                max_item,
            }),
            next: None,
            _open: None,
        }
    }

    /// A body that is one error record.
    pub(super) fn error(code: ErrorCode, message: &str) -> Self {
        Self {
            running: None,
            next: Some(framing::error(code, message)),
            _open: None,
        }
    }

    /// The body, counted as an open stream of its connection while it lives.
    pub(super) fn counted(mut self, open: TaskTrackerToken) -> Self {
        self._open = Some(open);
        self
    }

    /// Ends the stream; the handler is cancelled unless it ended by itself.
    fn finish(&mut self, cancel: bool) {
        if let Some(running) = self.running.take() {
            if cancel {
                running.token.cancel();
            }
        }
    }

    /// Why the stream must end now, whatever the handler does: the drain timeout or the
    /// deadline passed.
    fn cut_short(running: &mut Running, cx: &mut Context<'_>) -> Option<Chunk> {
        if running.abort.as_mut().poll(cx).is_ready() {
            let message = "the server shut down before the stream ended (its drain timeout passed)";
            return Some(framing::error(ErrorCode::ShuttingDown, message));
        }
        let deadline = running.deadline.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            let message = "request deadline passed on the server";
            framing::error(ErrorCode::DeadlineExceeded, message)
        })
    }
}

/// Small records gathered for one frame.
struct Filling(BytesMut);

impl Filling {
    fn add(&mut self, record: Chunk) {
        let mut record = record;
        while record.has_remaining() {
            let chunk = record.chunk();
            self.0.extend_from_slice(chunk);
            let len = chunk.len();
            record.advance(len);
        }
    }

    /// The frame: the small records, then `large` (an item's line, payload and line feed)
    /// if there is one.
    fn into_chunk(self, large: Option<Chunk>) -> Chunk {
        let small = self.0.freeze();
        match large {
            None => small.chain(Bytes::new()).chain(Bytes::new()),
            Some(large) => {
                let (head_and_payload, tail) = large.into_inner();
                let (head, payload) = head_and_payload.into_inner();
                let mut prefix = BytesMut::from(&small[..]);
                prefix.extend_from_slice(&head);
                prefix.freeze().chain(payload).chain(tail)
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Chunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        let this = &mut *self;
        if let Some(record) = this.next.take() {
            return Poll::Ready(Some(Ok(Frame::data(record))));
        }
        let Some(running) = this.running.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(record) = Self::cut_short(running, cx) {
            this.finish(true);
            return Poll::Ready(Some(Ok(Frame::data(record))));
        }
        let mut filling = Filling(BytesMut::new());
        let mut large = None;
        let mut ended = None;
        while filling.0.len() < FILL_UP_TO {
            match running.responses.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(item))) if item.len() > running.max_item => {
                    let message = format!(
                        "response of {} bytes exceeds {ENV_HTTP_MAX_MESSAGE_SIZE}={} bytes",
                        item.len(),
                        running.max_item
                    );
                    filling.add(framing::error(ErrorCode::FrameTooLarge, &message));
                    ended = Some(true);
                    break;
                }
                Poll::Ready(Some(Ok(item))) if item.len() >= COPY_BELOW => {
                    large = Some(framing::item(item));
                    break;
                }
                Poll::Ready(Some(Ok(item))) => filling.add(framing::item(item)),
                Poll::Ready(Some(Err(err))) => {
                    filling.add(framing::error(ErrorCode::Handler, &err.0));
                    ended = Some(false);
                    break;
                }
                Poll::Ready(None) => {
                    filling.add(framing::end());
                    ended = Some(false);
                    break;
                }
                Poll::Pending => break,
            }
        }
        if let Some(cancel) = ended {
            this.finish(cancel);
        }
        if filling.0.is_empty() && large.is_none() {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Frame::data(filling.into_chunk(large)))))
    }

    /// True once the last record is out, so that hyper marks the frame carrying it
    /// END_STREAM instead of sending an empty one after it.
    fn is_end_stream(&self) -> bool {
        self.running.is_none() && self.next.is_none()
    }
}
impl Drop for ResponseBody {
    /// hyper drops the body when the client resets the stream or the connection goes:
    /// a handler still running is cancelled.
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.token.cancel();
        }
    }
}
