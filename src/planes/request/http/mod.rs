//! The HTTP/2 request plane (feature `http`): the same
//! [`RequestPlaneServer`](crate::planes::request::RequestPlaneServer) and
//! [`RequestPlaneClient`](crate::planes::request::RequestPlaneClient) as TCP, over
//! hyper's HTTP/2 server and pooled client, for deployments whose proxies and tools speak
//! HTTP, and for calling an endpoint with `curl --http2-prior-knowledge`.
//!
//! # Wire mapping (`PROTOCOL.md` §12)
//! - **Request.** `POST {DYN_HTTP_RPC_ROOT_PATH}/{namespace}/{component}/{endpoint}[/{instance hex}]`
//!   over HTTP/2 (prior knowledge, no TLS); the body is the payload, each header-map
//!   entry an HTTP header (names lowercase, as HTTP/2 requires), and the deadline
//!   [`TIMEOUT_HEADER`] (`pw-timeout-ms`, the milliseconds the client will wait). A path
//!   without an instance reaches the server's one instance of the endpoint.
//! - **Responses.** Status 200 and a body of records ([`CONTENT_TYPE`]): `item <len>\n`
//!   and the payload and `\n` per response, then `end\n`, or
//!   `error <code> <name> <len>\n<message>\n`. A request refused before its handler ran
//!   gets a 4xx/5xx status and one error record (404 `UnknownEndpoint`, 503 `Overloaded`
//!   or `ShuttingDown`, 413 `FrameTooLarge`).
//! - **Cancel.** A client that drops its stream resets it (`RST_STREAM`); the server
//!   fires the handler's cancellation token.
//! - **Limits, errors, drain** as on TCP: `DYN_HTTP_MAX_MESSAGE_SIZE` each way (a request
//!   over it is refused before sending, a response item over it ends the stream with
//!   `FrameTooLarge`), per-endpoint concurrency with `Overloaded`, the deadline with
//!   `DeadlineExceeded`, and a shutdown that refuses new requests, drains, then ends
//!   what is left with `ShuttingDown`, sending each connection GOAWAY once its streams
//!   are done. HTTP/2's own flow control bounds what a slow reader holds.

mod body;
mod client;
mod config;
mod framing;
mod server;
mod service;

pub use client::{HttpClient, HttpResponses};
pub use config::{
    ENV_HTTP_MAX_MESSAGE_SIZE, ENV_HTTP_RPC_HOST, ENV_HTTP_RPC_PORT, ENV_HTTP_RPC_ROOT_PATH,
    ENV_HTTP2_ADAPTIVE_WINDOW, ENV_HTTP2_KEEP_ALIVE_INTERVAL_SECS,
    ENV_HTTP2_KEEP_ALIVE_TIMEOUT_SECS, ENV_HTTP2_MAX_CONCURRENT_STREAMS, ENV_HTTP2_MAX_FRAME_SIZE,
    ENV_HTTP2_POOL_IDLE_TIMEOUT_SECS, ENV_HTTP2_POOL_MAX_IDLE_PER_HOST, HttpConfig,
};
pub use server::HttpServer;

use http::HeaderName;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE as CONTENT_TYPE_HEADER, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, USER_AGENT,
};

/// On a request: the milliseconds the client waits for the whole stream.
pub const TIMEOUT_HEADER: &str = "pw-timeout-ms";
/// The media type of a response body of records.
pub const CONTENT_TYPE: &str = "application/x-planewire-records";

/// Whether an HTTP header carries a header-map entry, rather than HTTP's own business or
/// the deadline. What a client sends anyway (curl's `user-agent` and `accept`) is not
/// passed to handlers; a header map may not use these names on this plane.
fn carries_metadata(name: &HeaderName) -> bool {
    let http_own = [
        ACCEPT,
        ACCEPT_ENCODING,
        CONNECTION,
        CONTENT_ENCODING,
        CONTENT_LENGTH,
        CONTENT_TYPE_HEADER,
        HOST,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        USER_AGENT,
    ];
    name.as_str() != TIMEOUT_HEADER && !http_own.contains(name)
}
