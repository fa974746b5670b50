//! One request on the server: a handler's responses turned into frames, either inline in
//! the connection task (when the handler answers at once) or in a task of its own.

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{ErrorCode, Frame, HEADER_LEN, Utf8Bytes};
use crate::planes::{HandlerError, HandlerStream};

/// What to send after one step of a handler's stream.
pub(super) enum Step {
    /// The stream goes on; send this DATA frame, if any.
    Continue(Option<Frame>),
    /// The stream is over: send `data` (if any), then `terminal`. `stop_handler` when the
    /// handler may still be working behind its stream (an oversize item ended it).
    Finish {
        data: Option<Frame>,
        terminal: Frame,
        stop_handler: bool,
    },
}

/// Turns a handler's items into frames. It holds one item back, so that an item followed
/// at once by the end of the stream travels inside END: a unary response is one frame.
pub(super) struct Framer {
    stream_id: u64,
    max_frame_len: usize,
    held: Option<Bytes>,
}

impl Framer {
    pub(super) fn new(stream_id: u64, max_frame_len: usize) -> Self {
        Self {
            stream_id,
            max_frame_len,
            held: None,
        }
    }

    pub(super) fn step(&mut self, next: Option<Result<Bytes, HandlerError>>) -> Step {
        match next {
            Some(Ok(item)) if HEADER_LEN + item.len() > self.max_frame_len => {
                let message = format!(
                    "response of {} bytes exceeds DYN_TCP_MAX_MESSAGE_SIZE={} bytes",
                    HEADER_LEN + item.len(),
                    self.max_frame_len
                );
                Step::Finish {
                    data: self.release(),
                    terminal: self.error(ErrorCode::FrameTooLarge, message),
                    stop_handler: true,
                }
            }
            Some(Ok(item)) => Step::Continue(self.held.replace(item).map(|p| self.data(p))),
            Some(Err(err)) => Step::Finish {
                data: self.release(),
                terminal: self.error(ErrorCode::Handler, err.0),
                stop_handler: false,
            },
            None => match self.held.take() {
                // An empty END payload means "no item", so an empty last item travels as
                // DATA.
                Some(last) if last.is_empty() => Step::Finish {
                    data: Some(self.data(last)),
                    terminal: self.end(Bytes::new()),
                    stop_handler: false,
                },
                last => Step::Finish {
                    data: None,
                    terminal: self.end(last.unwrap_or_default()),
                    stop_handler: false,
                },
            },
        }
    }

    /// The held item as DATA: called before waiting, so nothing sits back while idle.
    pub(super) fn release(&mut self) -> Option<Frame> {
        self.held.take().map(|p| self.data(p))
    }

    fn data(&self, payload: Bytes) -> Frame {
        Frame::Data {
            stream_id: self.stream_id,
            payload,
        }
    }

    fn end(&self, payload: Bytes) -> Frame {
        Frame::End {
            stream_id: self.stream_id,
            payload,
        }
    }

    pub(super) fn error(&self, code: ErrorCode, message: String) -> Frame {
        Frame::Error {
            stream_id: self.stream_id,
            code,
            message: Utf8Bytes::from(message),
        }
    }
}

/// A request whose handler had to wait, continued in its own task.
pub(super) struct StreamTask {
    pub(super) responses: HandlerStream,
    pub(super) framer: Framer,
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) token: CancellationToken,
    /// The server's drain timeout passed: stop and say so.
    pub(super) abort: CancellationToken,
    pub(super) deadline: Option<Instant>,
    pub(super) permit: OwnedSemaphorePermit,
}

impl StreamTask {
    pub(super) async fn run(mut self) {
        if let Some(terminal) = self.drive().await {
            let _ = self.tx.send(terminal).await;
        }
        drop(self.permit);
    }

    /// Forwards responses until the handler ends, fails, or is cancelled; returns the
    /// terminal frame to send, if any (a client-cancelled stream gets none). `None` too
    /// when the connection is gone.
    async fn drive(&mut self) -> Option<Frame> {
        let deadline = self.deadline;
        let deadline = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        // Created once: each creation takes the lock of a token every stream shares.
        let abort = self.abort.clone();
        let abort = abort.cancelled();
        tokio::pin!(abort);
        loop {
            let next = match self.responses.next().now_or_never() {
                Some(next) if !self.token.is_cancelled() => next,
                _ => {
                    if let Some(data) = self.framer.release() {
                        self.tx.send(data).await.ok()?;
                    }
                    tokio::select! {
                        biased;
                        _ = self.token.cancelled() => return None,
                        _ = &mut abort => {
                            self.token.cancel();
                            let message = "server shut down before the request finished".to_owned();
                            return Some(self.framer.error(ErrorCode::ShuttingDown, message));
                        }
                        _ = &mut deadline => {
                            self.token.cancel();
                            let message = "request deadline passed on the server".to_owned();
                            return Some(self.framer.error(ErrorCode::DeadlineExceeded, message));
                        }
                        next = self.responses.next() => next,
                    }
                }
            };
            match self.framer.step(next) {
                Step::Continue(data) => {
                    if let Some(data) = data {
                        self.tx.send(data).await.ok()?;
                    }
                }
                Step::Finish {
                    data,
                    terminal,
                    stop_handler,
                } => {
                    if let Some(data) = data {
                        self.tx.send(data).await.ok()?;
                    }
                    if stop_handler {
                        self.token.cancel();
                    }
                    return Some(terminal);
                }
            }
        }
    }
}
