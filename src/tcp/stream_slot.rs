//! One stream's responses, handed from the connection's reader task to the caller.
//!
//! A bounded queue behind a mutex: per item the reader takes one uncontended lock and
//! wakes the caller only if it is waiting, which costs a fraction of a channel send (the
//! streaming benchmark moves 16 items per request through here).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::planes::RequestError;
use crate::sync::lock;

/// Responses buffered per stream before the stream is failed as overflowed. The reader
/// never waits on a slow consumer, so other streams on the connection keep flowing.
pub const STREAM_BUFFER: usize = 1024;

/// What the caller gets next.
pub(crate) enum Next {
    Item(Bytes),
    /// End of stream; a non-empty payload is the last item.
    End(Bytes),
    Failed(RequestError),
}

#[derive(Default)]
struct State {
    items: VecDeque<Bytes>,
    end: Option<Result<Bytes, RequestError>>,
    waker: Option<Waker>,
}

#[derive(Default)]
pub(crate) struct StreamSlot {
    state: Mutex<State>,
}

impl StreamSlot {
    /// Queues one response; `false` when the caller has left `STREAM_BUFFER - 1` unread
    /// (the reader then fails the stream, after those items).
    pub(crate) fn push(&self, item: Bytes) -> bool {
        let mut state = lock(&self.state);
        if state.items.len() >= STREAM_BUFFER - 1 {
            return false;
        }
        state.items.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
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
            return Poll::Ready(Next::Item(item));
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
