//! One stream's responses, handed from the connection's reader task to the caller, and
//! the stream's flow-control window on the client side.
//!
//! A bounded queue behind a mutex: per item the reader takes one uncontended lock and
//! wakes the caller only if it is waiting, which costs a fraction of a channel send (the
//! streaming benchmark moves 16 items per request through here). The bound is the
//! stream's window: the server sends DATA only while the client has granted credit, and
//! the client grants it back as its caller reads, so a slow caller slows its own stream
//! (the server stops polling that handler) and never fails it or stalls its neighbours.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::time::Instant;

use crate::codec::{INITIAL_STREAM_WINDOW, window_cost};
use crate::planes::request::RequestError;
use crate::sync::lock;

/// Read bytes are granted back once this many have gathered: one WINDOW_UPDATE per half
/// window, as HTTP/2 implementations do, keeps the server from ever waiting on a reader
/// that keeps up.
const GRANT_AT: usize = INITIAL_STREAM_WINDOW as usize / 2;

/// What the caller gets next.
pub(crate) enum Next {
    /// A response, and the window bytes to grant back now, if any.
    Item(Bytes, Option<u32>),
    /// End of stream; a non-empty payload is the last item.
    End(Bytes),
    Failed(RequestError),
}

#[derive(Default)]
struct State {
    items: VecDeque<Bytes>,
    end: Option<Result<Bytes, RequestError>>,
    waker: Option<Waker>,
    /// Window bytes the server has spent that were not granted back: the unread items'
    /// and `read`.
    outstanding: usize,
    /// Bytes of items the caller has taken, not yet granted back.
    read: usize,
}

pub(crate) struct StreamSlot {
    state: Mutex<State>,
    /// When the request times out; the connection's reader enforces it.
    deadline: Instant,
}

impl StreamSlot {
    pub(crate) fn new(deadline: Instant) -> Self {
        Self {
            state: Mutex::default(),
            deadline,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Queues one DATA item; `Err(outstanding)` when the server has sent more than the
    /// window allows (`max_frame_len` of slack, since any credit admits one frame).
    pub(crate) fn push(&self, item: Bytes, max_frame_len: usize) -> Result<(), usize> {
        let mut state = lock(&self.state);
        let outstanding = state.outstanding + window_cost(item.len());
        if outstanding > INITIAL_STREAM_WINDOW as usize + max_frame_len {
            return Err(outstanding);
        }
        state.outstanding = outstanding;
        state.items.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Ends the stream (the first end wins); queued items are still delivered first.
    pub(crate) fn finish(&self, end: Result<Bytes, RequestError>) {
        let mut state = lock(&self.state);
        if state.end.is_none() {
            state.end = Some(end);
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = lock(&self.state);
        if let Some(item) = state.items.pop_front() {
            state.read += window_cost(item.len());
            let grant = (state.read >= GRANT_AT).then(|| {
                let grant = std::mem::take(&mut state.read);
                state.outstanding -= grant;
                // At most the window plus one frame, which fits a u32 (frames do).
                u32::try_from(grant).unwrap_or(u32::MAX)
            });
            return Poll::Ready(Next::Item(item, grant));
        }
        match state.end.take() {
            Some(Ok(last)) => Poll::Ready(Next::End(last)),
            Some(Err(err)) => Poll::Ready(Next::Failed(err)),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
