//! The NATS request plane (feature `nats`): the same
//! [`RequestPlaneServer`](crate::planes::request::RequestPlaneServer) and
//! [`RequestPlaneClient`](crate::planes::request::RequestPlaneClient) as TCP, carried by a
//! NATS server, so `DYN_REQUEST_PLANE=nats` changes no application code. Both ends take
//! their connection from a [`NatsLink`](crate::nats::NatsLink), which the event plane
//! may share.
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
//!   sending ([`RequestError::TooLarge`](crate::planes::request::RequestError)); a response
//!   over it becomes an error marker with code `FrameTooLarge`. Both say to use
//!   `DYN_REQUEST_PLANE=tcp` or raise `max_payload`.

mod client;
mod config;
mod server;
mod wire;

pub use client::{NatsRequestClient, NatsResponses, STREAM_BUFFER};
pub use config::NatsRequestConfig;
pub use server::NatsRequestServer;

use crate::vocab::{EndpointPath, escape_token};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_names_and_end_in_the_hex_instance_id() {
        let path = EndpointPath::new("dyn ns", "vllm.worker", "generate", 0xBEEF).unwrap();
        assert_eq!(subject(&path), "pw.rq.dyn~20ns.vllm~2Eworker.generate.beef");
        assert_eq!(cancel_subject("pw.rq.a.b.c.1"), "pw.rq.a.b.c.1.cancel");
    }
}
