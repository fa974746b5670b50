//! The NATS request plane: the same [`RequestPlaneServer`](crate::planes::RequestPlaneServer)
//! and [`RequestPlaneClient`](crate::planes::RequestPlaneClient) as TCP, carried by a NATS
//! server, so `DYN_REQUEST_PLANE=nats` changes no application code.
//!
//! # Wire protocol
//! - **Subjects.** Each endpoint instance has its own subject,
//!   `pw.rq.{namespace}.{component}.{endpoint}.{instance id, lowercase hex}` ([`subject`]),
//!   each name escaped into one token. The server serves it as an endpoint of one NATS
//!   service (`planewire`), so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer with the
//!   standard micro-service replies and STATS counts requests and errors.
//! - **Request.** Published to the endpoint subject with a reply subject
//!   `{client inbox}.{request id}`: one wildcard inbox subscription per client, requests
//!   told apart by the decimal id in the last token. Headers: the caller's headers, and
//!   [`TIMEOUT_HEADER`] (`Pw-Timeout-Ms`, the milliseconds the client will wait).
//! - **Responses.** Each response is one message to the reply subject carrying
//!   [`SEQ_HEADER`] (`Pw-Seq`, 0, 1, 2, …). A response the handler's stream ends right
//!   after is sent with [`END_HEADER`] `Pw-End: last` and ends the stream itself (one
//!   message for a unary call). Otherwise the stream ends with one more message with the
//!   next sequence number and either [`END_HEADER`] (`Pw-End: 1`, empty payload) or the
//!   NATS service error headers `Nats-Service-Error-Code` (the planewire `ErrorCode` as a
//!   number) and `Nats-Service-Error` (the message). A gap in the sequence numbers is an
//!   error on the client's stream: a lost message never turns into a hang.
//! - **Cancel.** A client that drops its stream before the end publishes the request's
//!   reply subject as the payload of a message to [`cancel_subject`]`(endpoint subject)`
//!   (`{endpoint subject}.cancel`); the server fires the handler's cancellation token.
//! - **Lost connection.** NATS does not resend what was in flight when a connection
//!   dropped. A client whose connection drops (or drops and comes back) while a request is
//!   open ends its stream with `ConnectionLost` within 100 ms and sends the cancel, which
//!   waits in its buffer until it reconnects. A server whose connection dropped while a
//!   request was open cancels the handler before its next response and sends an error
//!   marker (`Internal`, naming the lost connection) instead. A stream silent for 1 s is
//!   probed with a request to the cancel subject, which servers answer; "no responders"
//!   ends it with `ConnectionLost` (its server is gone).
//! - **No responders.** When nothing subscribes to the subject, nats-server answers the
//!   reply subject with status 503; the client reports `UnknownEndpoint` at once.
//! - **max_payload.** A request larger than the server's `max_payload` is refused before
//!   sending ([`RequestError::PayloadTooLarge`](crate::planes::RequestError)); a response
//!   over it becomes an error marker with code `FrameTooLarge`. Both say to use
//!   `DYN_REQUEST_PLANE=tcp` or raise `max_payload`.

mod client;
mod server;

use std::time::Duration;

pub use client::{NatsRequestClient, NatsResponses, STREAM_BUFFER};
pub use server::NatsRequestServer;

use crate::config::{ConfigError, NatsConfig};
use crate::planes::events::escape_token;
use crate::planes::{EndpointPath, RequestError};

/// First token of every request-plane subject.
pub const SUBJECT_PREFIX: &str = "pw.rq";
/// Service name under `$SRV.*`.
pub const SERVICE_NAME: &str = "planewire";
/// Sequence number of a response message (decimal, from 0).
pub const SEQ_HEADER: &str = "Pw-Seq";
/// Present (`1`) on the message that ends a successful stream.
pub const END_HEADER: &str = "Pw-End";
/// [`END_HEADER`] value of a message that carries the last response itself (a stream
/// that ends right after a response, like every unary one, takes one message, not two).
pub const END_WITH_LAST: &str = "last";
/// On a request: milliseconds the client waits for the whole stream.
pub const TIMEOUT_HEADER: &str = "Pw-Timeout-Ms";
/// `client`'s connection count: it goes up with every connect and reconnect.
pub(crate) fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `client`'s connection is down now, or went down and came back since it had
/// made `connects` connections: either way, messages may have been lost in between.
pub(crate) fn connection_dropped(client: &async_nats::Client, since: u64) -> bool {
    client.connection_state() != async_nats::connection::State::Connected
        || connects(client) != since
}

/// The fix both size errors name.
pub(crate) const PAYLOAD_FIX: &str =
    "use DYN_REQUEST_PLANE=tcp, or raise max_payload in nats-server";

/// `pw.rq.{ns}.{component}.{endpoint}.{instance id as lowercase hex}`.
pub fn subject(path: &EndpointPath) -> String {
    let mut out = String::with_capacity(64);
    out.push_str(SUBJECT_PREFIX);
    for name in [path.namespace(), path.component(), path.endpoint()] {
        out.push('.');
        escape_token(name, &mut out);
    }
    out.push_str(&format!(".{:x}", path.instance_id()));
    out
}

/// Where a client sends the cancel for a request to `endpoint_subject`.
pub fn cancel_subject(endpoint_subject: &str) -> String {
    format!("{endpoint_subject}.cancel")
}

/// Server side of the NATS request plane.
#[derive(Debug, Clone)]
pub struct NatsServerConfig {
    /// Requests one endpoint handles at once (default 1024). A request beyond this is
    /// answered `Overloaded` at once instead of queueing.
    pub max_concurrent_requests: usize,
    /// How long `shutdown` lets in-flight requests finish before cancelling them (10 s).
    pub drain_timeout: Duration,
}

impl Default for NatsServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl NatsServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent_requests == 0
            || self.max_concurrent_requests
                > tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize)
        {
            return Err(ConfigError::Invalid {
                var: "max_concurrent_requests",
                value: self.max_concurrent_requests.to_string(),
                expected: "at least 1".to_owned(),
            });
        }
        Ok(())
    }
}

/// Client side of the NATS request plane.
#[derive(Debug, Clone)]
pub struct NatsClientConfig {
    /// Per request, until its last response (10 s, the default of `DYN_TCP_REQUEST_TIMEOUT`).
    /// Sent to the server as [`TIMEOUT_HEADER`] and enforced on the client.
    pub request_timeout: Duration,
}

impl Default for NatsClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl NatsClientConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.request_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                var: "request_timeout",
                value: format!("{:?}", self.request_timeout),
                expected: "more than zero".to_owned(),
            });
        }
        Ok(())
    }
}

/// Connects to NATS with `config` (credentials, connect timeout, reconnects), for callers
/// that do not share a connection with other planes.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, RequestError> {
    crate::nats::connect(config)
        .await
        .map_err(|err| RequestError::Connect {
            address: err.url.clone(),
            reason: err.reason,
        })
}

/// Bytes a message takes against `max_payload`: payload plus serialized headers
/// (`NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`), as nats-server counts them.
pub(crate) fn wire_size(headers: &async_nats::HeaderMap, payload: usize) -> usize {
    if headers.is_empty() {
        return payload;
    }
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    payload + 10 + fields + 2
}
