//! The handlers `planewire serve` and the benchmark serve: an echo, and an echo that
//! tells workers apart.

use bytes::{Bytes, BytesMut};
use futures::stream;
use planewire::planes::request::{CancellationToken, Handler, HandlerError, Request};

/// An echo endpoint: answers every request with `responses` copies of its payload. Each
/// copy is the request's own `Bytes`, a slice of the connection's read buffer, so nothing
/// is copied on the server. `planewire serve` and the benchmark both use it.
pub fn echo_handler(responses: usize) -> impl Handler {
    move |request: Request, _cancel: CancellationToken| {
        let copies = std::iter::repeat_n(request.payload, responses);
        stream::iter(copies.map(Ok::<Bytes, HandlerError>))
    }
}

/// Like [`echo_handler`], with `tag` after the payload. That costs a copy of the payload
/// per request, so the untagged worker keeps the zero-copy echo.
pub fn tagged_echo(responses: usize, tag: Bytes) -> impl Handler {
    move |request: Request, _cancel: CancellationToken| {
        let mut reply = BytesMut::with_capacity(request.payload.len() + tag.len());
        reply.extend_from_slice(&request.payload);
        reply.extend_from_slice(&tag);
        let copies = std::iter::repeat_n(reply.freeze(), responses);
        stream::iter(copies.map(Ok::<Bytes, HandlerError>))
    }
}
