//! One request on the server: runs its handler and turns the responses into frames.

use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{ErrorCode, Frame, HEADER_LEN, RequestFrame, Utf8Bytes};
use crate::planes::{Handler, HandlerStream, Request};

/// Runs one handler and turns its responses into frames.
pub(super) struct StreamTask {
    pub(super) stream_id: u64,
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) token: CancellationToken,
    pub(super) abort: CancellationToken,
    pub(super) max_frame_len: usize,
    pub(super) deadline: Option<Instant>,
}

impl StreamTask {
    pub(super) async fn run(
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
