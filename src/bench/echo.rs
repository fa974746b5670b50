use bytes::Bytes;
use futures::stream;
use tokio_util::sync::CancellationToken;

use crate::planes::{Handler, HandlerError, Request};

/// An echo endpoint: answers every request with `responses` copies of its payload. Each
/// copy is the request's own `Bytes`, a slice of the connection's read buffer, so nothing
/// is copied on the server. `planewire serve` and the benchmark both use it.
pub fn echo_handler(responses: usize) -> impl Handler {
    move |request: Request, _cancel: CancellationToken| {
        let copies = std::iter::repeat_n(request.payload, responses);
        stream::iter(copies.map(Ok::<Bytes, HandlerError>))
    }
}
