//! One request on the server: a handler's responses turned into frames, either inline in
//! the connection task (when the handler answers at once) or in a task of its own, paced
//! by the stream's flow-control credit and the connection's output budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::Outbound;
use crate::codec::{ErrorCode, Frame, HEADER_LEN, INITIAL_STREAM_WINDOW, fit_message, window_cost};
use crate::planes::request::{HandlerError, HandlerStream, Slot};

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

    /// An ERROR frame whose message is cut to fit the maximum frame size.
    pub(super) fn error(&self, code: ErrorCode, message: String) -> Frame {
        Frame::Error {
            stream_id: self.stream_id,
            code,
            message: fit_message(message, self.max_frame_len),
        }
    }
}

/// A stream's flow-control credit on the server: bytes of DATA it may still send before
/// the client grants more (`PROTOCOL.md` §7.8). The connection task grants, the stream
/// spends and waits.
pub(super) struct Credit {
    window: AtomicI64,
    granted: Notify,
}

/// Credit beyond this is not counted: a client granting without end cannot overflow it.
const MAX_CREDIT: i64 = 1 << 40;

/// What `frame` costs of its stream's window: DATA pays its length, END and ERROR are
/// free.
pub(super) fn cost(frame: &Frame) -> i64 {
    match frame {
        Frame::Data { payload, .. } => window_cost(payload.len()) as i64,
        _ => 0,
    }
}

impl Credit {
    /// The credit of a stream that has already spent `spent` bytes of its initial
    /// window (inline, before it had a task and could be granted more).
    pub(super) fn after(spent: i64) -> Arc<Self> {
        Arc::new(Self {
            window: AtomicI64::new(i64::from(INITIAL_STREAM_WINDOW) - spent),
            granted: Notify::new(),
        })
    }

    /// Whether a DATA frame may be sent now. Any positive credit admits one frame, so a
    /// frame larger than the window still passes (and the credit goes negative).
    pub(super) fn available(&self) -> bool {
        self.window.load(Ordering::Acquire) > 0
    }

    fn spend(&self, frame: &Frame) {
        self.window.fetch_sub(cost(frame), Ordering::AcqRel);
    }

    pub(super) fn grant(&self, increment: u32) {
        let _ = self
            .window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w + i64::from(increment)).min(MAX_CREDIT))
            });
        self.granted.notify_one();
    }

    async fn wait(&self) {
        while !self.available() {
            self.granted.notified().await;
        }
    }
}

/// Why a stream stopped before its handler finished.
enum Stop {
    /// The client cancelled, or the connection closed: send nothing more.
    Cancelled,
    /// The request's deadline passed on the server.
    Deadline,
}

/// A request whose handler had to wait (or ran out of credit), continued in its own task.
pub(super) struct StreamTask {
    pub(super) responses: HandlerStream,
    pub(super) framer: Framer,
    pub(super) tx: mpsc::Sender<Outbound>,
    /// The connection's output budget: frames wait for their share before queueing.
    pub(super) budget: Arc<Semaphore>,
    pub(super) credit: Arc<Credit>,
    /// Fired by the client's CANCEL or the connection closing.
    pub(super) token: CancellationToken,
    pub(super) deadline: Option<Instant>,
    pub(super) permit: Slot,
}

impl StreamTask {
    pub(super) async fn run(mut self) {
        let deadline = self.deadline;
        let timer = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timer);
        let terminal = match self.drive(timer).await {
            Ok(terminal) => Some(terminal),
            Err(Stop::Cancelled) => None,
            Err(Stop::Deadline) => {
                self.token.cancel();
                let message = "request deadline passed on the server".to_owned();
                Some(self.framer.error(ErrorCode::DeadlineExceeded, message))
            }
        };
        // Unguarded: the token may have fired for the deadline. A closing connection
        // closes the budget and the channel, which ends these waits.
        if let Some(terminal) = terminal
            && let Some(out) = Outbound::reserve(terminal, &self.budget).await
        {
            let _ = self.tx.send(out).await;
        }
        drop(self.permit);
    }

    /// Forwards responses until the handler ends or fails (the terminal frame to send),
    /// or the stream is stopped.
    async fn drive<D: Future<Output = ()>>(
        &mut self,
        mut deadline: Pin<&mut D>,
    ) -> Result<Frame, Stop> {
        loop {
            if !self.credit.available() {
                guarded(&self.token, deadline.as_mut(), self.credit.wait()).await?;
            }
            // A handler that is always ready never reaches the select below: the deadline
            // is checked per item, so a fast stream stops at it too.
            if self.deadline.is_some_and(|at| Instant::now() >= at) {
                return Err(Stop::Deadline);
            }
            let next = match self.responses.next().now_or_never() {
                Some(_) if self.token.is_cancelled() => return Err(Stop::Cancelled),
                Some(next) => next,
                None => {
                    if let Some(data) = self.framer.release() {
                        self.send(deadline.as_mut(), data).await?;
                    }
                    guarded(&self.token, deadline.as_mut(), self.responses.next()).await?
                }
            };
            match self.framer.step(next) {
                Step::Continue(data) => {
                    if let Some(data) = data {
                        self.send(deadline.as_mut(), data).await?;
                    }
                }
                Step::Finish {
                    data,
                    terminal,
                    stop_handler,
                } => {
                    if let Some(data) = data {
                        self.send(deadline.as_mut(), data).await?;
                    }
                    if stop_handler {
                        self.token.cancel();
                    }
                    return Ok(terminal);
                }
            }
        }
    }

    /// Queues one DATA frame, charging it to the stream's credit. Only a wait (for the
    /// budget or the queue) is guarded: watching the token takes its lock, too dear for
    /// every item of a stream that never waits (`drive` checks the token per item).
    async fn send<D: Future<Output = ()>>(
        &mut self,
        mut deadline: Pin<&mut D>,
        frame: Frame,
    ) -> Result<(), Stop> {
        self.credit.spend(&frame);
        let out = match Outbound::try_reserve(frame, &self.budget) {
            Ok(out) => out,
            Err(frame) => {
                let reserve = Outbound::reserve(frame, &self.budget);
                guarded(&self.token, deadline.as_mut(), reserve)
                    .await?
                    .ok_or(Stop::Cancelled)?
            }
        };
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Cancelled),
            Err(mpsc::error::TrySendError::Full(out)) => {
                guarded(&self.token, deadline, self.tx.send(out))
                    .await?
                    .map_err(|_| Stop::Cancelled)
            }
        }
    }
}

/// `fut`, unless the stream is cancelled or its deadline passes first.
async fn guarded<F: Future, D: Future<Output = ()>>(
    token: &CancellationToken,
    deadline: Pin<&mut D>,
    fut: F,
) -> Result<F::Output, Stop> {
    tokio::select! {
        biased;
        _ = token.cancelled() => Err(Stop::Cancelled),
        () = deadline => Err(Stop::Deadline),
        out = fut => Ok(out),
    }
}
