//! What a handler receives and returns, on every plane.

use std::future::Future;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::HandlerError;
use crate::vocab::{HeaderMap, Utf8Bytes};

/// One request: endpoint path, metadata, payload. On a TCP server every part is a slice
/// of the connection's read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: Utf8Bytes,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// On the server: when the client stops waiting, if it sent a deadline.
    pub deadline: Option<Instant>,
}

impl Request {
    pub fn new(path: impl Into<Utf8Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            path: path.into(),
            headers: HeaderMap::new(),
            payload: payload.into(),
            deadline: None,
        }
    }

    pub fn with_header(mut self, name: impl Into<Utf8Bytes>, value: impl Into<Utf8Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// The responses a handler produces; ending the stream ends the request successfully.
pub type HandlerStream = BoxStream<'static, Result<Bytes, HandlerError>>;

/// Serves one endpoint. `cancel` fires when the client cancels, goes away, or the request's
/// deadline passes; the returned stream is dropped right after, so a handler that only
/// awaits inside its stream needs no explicit check.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, request: Request, cancel: CancellationToken) -> HandlerStream;
}

impl<F, S> Handler for F
where
    F: Fn(Request, CancellationToken) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
{
    fn call(&self, request: Request, cancel: CancellationToken) -> HandlerStream {
        self(request, cancel).boxed()
    }
}

/// Adapts an async function returning one response into a [`Handler`].
pub fn unary_handler<F, Fut>(f: F) -> impl Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    move |request: Request, _cancel: CancellationToken| stream::once(f(request))
}
