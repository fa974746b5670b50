//! [`NatsRequestServer`]: one NATS service per server, one service endpoint per
//! registered path, one task per request.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::service::{self, Service, ServiceExt};
use async_nats::{Client, HeaderMap as NatsHeaders, RequestErrorKind, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{PAYLOAD_FIX, connection_dropped, connects, wire_size};
use super::{
    END_HEADER, END_WITH_LAST, SEQ_HEADER, SERVICE_NAME, TIMEOUT_HEADER, cancel_subject, subject,
};
use crate::planes::request::{
    Handler, RegisterError, Request, RequestPlaneServer, ServerLimits, SharedError, StartError,
};
use crate::sync::lock;
use crate::vocab::{EndpointPath, ErrorCode, HeaderMap};

/// Longest error message put in the `Nats-Service-Error` header.
const MAX_ERROR_MESSAGE: usize = 4096;

/// Serves registered endpoints over NATS. Cheap to share behind an `Arc`; `shutdown`
/// drains and stops it.
pub struct NatsRequestServer {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    /// `None` once shut down.
    service: Mutex<Option<Service>>,
    /// Each registered path and the token that stops its endpoint task.
    endpoints: Mutex<HashMap<EndpointPath, CancellationToken>>,
    /// Running requests by reply subject, for cancels.
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    config: ServerLimits,
    /// Fired by `shutdown`: stop taking requests.
    shutdown: CancellationToken,
    /// Fired when the drain timeout passes: cancel whatever still runs.
    abort: CancellationToken,
    tracker: TaskTracker,
}

impl NatsRequestServer {
    /// Starts the `planewire` NATS service on `client` (a connection possibly shared with
    /// other planes).
    /// Only `max_concurrent_requests` and `drain_timeout` of `config` apply: NATS has no
    /// connections of its own to limit.
    pub async fn new(client: Client, config: ServerLimits) -> Result<Self, StartError> {
        let config = config.validate()?;
        let service = client
            .service_builder()
            .description("planewire request plane")
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|err| StartError::Plane {
                plane: "nats",
                source: SharedError::from(err),
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                service: Mutex::new(Some(service)),
                endpoints: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                config,
                shutdown: CancellationToken::new(),
                abort: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// The NATS connection this server uses.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }
}

impl RequestPlaneServer for NatsRequestServer {
    async fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        let shared = &self.shared;
        let stop = shared.shutdown.child_token();
        {
            let mut endpoints = lock(&shared.endpoints);
            if endpoints.contains_key(path) {
                return Err(RegisterError::Duplicate(path.to_string()));
            }
            endpoints.insert(path.clone(), stop.clone());
        }
        match self.start_endpoint(path, Arc::new(handler), stop).await {
            Ok(()) => Ok(()),
            Err((reason, source)) => {
                lock(&shared.endpoints).remove(path);
                Err(RegisterError::Plane {
                    path: path.to_string(),
                    reason,
                    source,
                })
            }
        }
    }

    /// Unsubscribes the path's subject in the background. Requests already buffered get
    /// an `UnknownEndpoint` error; one that nats-server routes here in the instant before
    /// it processes the unsubscribe is lost and times out on its client, so take the path
    /// out of discovery before unregistering it.
    fn unregister(&self, path: &EndpointPath) -> bool {
        match lock(&self.shared.endpoints).remove(path) {
            Some(stop) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    fn address(&self, path: &EndpointPath) -> String {
        subject(path)
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        shared.shutdown.cancel();
        lock(&shared.endpoints).clear();
        shared.tracker.close();
        if tokio::time::timeout(shared.config.drain_timeout, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "NATS request plane: requests still running after the drain timeout of {:?}; cancelling them",
                shared.config.drain_timeout
            );
            shared.abort.cancel();
            shared.tracker.wait().await;
        }
        let service = lock(&shared.service).take();
        if let Some(service) = service
            && let Err(err) = service.stop().await
        {
            tracing::debug!("stopping the NATS service: {err}");
        }
    }
}

impl NatsRequestServer {
    /// Subscribes the endpoint and its cancel subject, waits until nats-server has both
    /// (so the path is routable once this returns), and spawns the endpoint's task.
    async fn start_endpoint(
        &self,
        path: &EndpointPath,
        handler: Arc<dyn Handler>,
        stop: CancellationToken,
    ) -> Result<(), (&'static str, Option<SharedError>)> {
        let shared = &self.shared;
        let subject = subject(path);
        let builder = match lock(&shared.service).as_ref() {
            Some(service) => service.endpoint_builder(),
            None => return Err(("the server has been shut down", None)),
        };
        let requests = builder.add(subject.clone()).await.map_err(|err| {
            let err: SharedError = SharedError::from(err);
            ("cannot subscribe its NATS subject", Some(err))
        })?;
        let cancels = shared
            .client
            .subscribe(cancel_subject(&subject))
            .await
            .map_err(|err| {
                let err: SharedError = std::sync::Arc::new(err);
                ("cannot subscribe its NATS cancel subject", Some(err))
            })?;
        confirm_processed(&shared.client).await.map_err(|err| {
            let err: SharedError = std::sync::Arc::new(err);
            (
                "the NATS server did not confirm the subscription",
                Some(err),
            )
        })?;
        let endpoint = EndpointTask {
            shared: shared.clone(),
            path: path.to_string(),
            handler,
            slots: Arc::new(Semaphore::new(shared.config.max_concurrent_requests)),
        };
        shared.tracker.spawn(endpoint.run(requests, cancels, stop));
        Ok(())
    }
}

/// Returns once nats-server has processed everything this connection sent before
/// (subscriptions included). `Client::flush` only empties the socket buffer; a request to
/// a subject nobody serves is answered by the server itself (503) after it has read all
/// that came earlier on the connection.
async fn confirm_processed(client: &Client) -> Result<(), async_nats::RequestError> {
    match client.request(client.new_inbox(), Bytes::new()).await {
        Err(err) if err.kind() != RequestErrorKind::NoResponders => Err(err),
        _ => Ok(()),
    }
}

struct EndpointTask {
    shared: Arc<Shared>,
    /// The path as handlers see it in [`Request::path`].
    path: String,
    handler: Arc<dyn Handler>,
    slots: Arc<Semaphore>,
}

impl EndpointTask {
    /// Takes requests until `stop` fires, then keeps honouring cancels until its last
    /// request has ended.
    async fn run(
        self,
        mut requests: service::endpoint::Endpoint,
        mut cancels: Subscriber,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                request = requests.next() => match request {
                    Some(request) => self.dispatch(request).await,
                    None => break,
                },
                Some(cancel) = cancels.next() => self.cancel(cancel).await,
            }
        }
        if let Err(err) = requests.stop().await {
            tracing::debug!("unsubscribing {}: {err}", self.path);
        }
        // Requests that arrived before the unsubscribe: a clear error, not silence.
        let (code, message) = if self.shared.shutdown.is_cancelled() {
            (ErrorCode::ShuttingDown, "the server is shutting down")
        } else {
            (ErrorCode::UnknownEndpoint, "the endpoint was unregistered")
        };
        while let Some(request) = requests.next().await {
            respond_error(&request, code, format!("{}: {message}", self.path), 0).await;
        }
        let all = u32::try_from(self.shared.config.max_concurrent_requests).unwrap_or(u32::MAX);
        let idle = self.slots.acquire_many(all);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                _ = &mut idle => break,
                Some(cancel) = cancels.next() => self.cancel(cancel).await,
            }
        }
    }

    /// Fires the token of the request whose reply subject `message` carries. A message
    /// with a reply subject of its own is a client's probe ("is anyone serving this?"):
    /// it gets an empty answer.
    async fn cancel(&self, message: async_nats::Message) {
        if let Some(probe) = message.reply {
            if let Err(err) = self.shared.client.publish(probe, Bytes::new()).await {
                tracing::debug!("cannot answer a probe: {err}");
            }
        }
        let Ok(reply) = std::str::from_utf8(&message.payload) else {
            tracing::debug!("dropping a cancel that is not UTF-8");
            return;
        };
        if let Some(token) = lock(&self.shared.in_flight).remove(reply) {
            token.cancel();
        }
    }

    async fn dispatch(&self, request: service::Request) {
        let Some(reply) = request.message.reply.as_ref().map(|r| r.to_string()) else {
            tracing::debug!(
                "dropping a request to {} without a reply subject",
                self.path
            );
            return;
        };
        let shared = &self.shared;
        if shared.shutdown.is_cancelled() {
            let message = "the server is shutting down".to_owned();
            return respond_error(&request, ErrorCode::ShuttingDown, message, 0).await;
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            let message = format!(
                "endpoint {} is at its limit of {} concurrent requests",
                self.path, shared.config.max_concurrent_requests
            );
            return respond_error(&request, ErrorCode::Overloaded, message, 0).await;
        };
        let token = shared.abort.child_token();
        let duplicate = {
            let mut in_flight = lock(&shared.in_flight);
            let duplicate = in_flight.contains_key(&reply);
            if !duplicate {
                in_flight.insert(reply.clone(), token.clone());
            }
            duplicate
        };
        if duplicate {
            let message = format!("reply subject {reply} is already in use");
            return respond_error(&request, ErrorCode::StreamIdInUse, message, 0).await;
        }
        let (headers, deadline) = read_headers(request.message.headers.as_ref());
        let call = Request {
            path: self.path.clone().into(),
            headers,
            payload: request.message.payload.clone(),
            deadline,
        };
        let handler = self.handler.clone();
        let shared = shared.clone();
        shared.tracker.clone().spawn(async move {
            run_request(&shared, handler, call, request, token).await;
            lock(&shared.in_flight).remove(&reply);
            drop(permit);
        });
    }
}

/// The caller's headers (ours removed) and the deadline from [`TIMEOUT_HEADER`].
fn read_headers(nats: Option<&NatsHeaders>) -> (HeaderMap, Option<Instant>) {
    let mut headers = HeaderMap::new();
    let mut deadline = None;
    for (name, values) in nats.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(TIMEOUT_HEADER) {
            match values.first().map(|v| v.as_str().parse::<u64>()) {
                Some(Ok(ms)) => deadline = Some(Instant::now() + Duration::from_millis(ms)),
                _ => tracing::debug!("ignoring an invalid {TIMEOUT_HEADER} header"),
            }
        } else if !name.starts_with("Pw-") && !name.starts_with("Nats-") {
            for value in values {
                headers.insert(name.to_owned(), value.as_str().to_owned());
            }
        }
    }
    (headers, deadline)
}

/// Runs one handler to its end, cancellation or deadline, answering on the reply subject.
async fn run_request(
    shared: &Shared,
    handler: Arc<dyn Handler>,
    call: Request,
    request: service::Request,
    token: CancellationToken,
) {
    let deadline = call.deadline;
    let connects_at_start = connects(&shared.client);
    let stream = std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(call, token.clone())));
    let Ok(mut stream) = stream else {
        let message = "the handler panicked".to_owned();
        return respond_error(&request, ErrorCode::Internal, message, 0).await;
    };
    let deadline_passed = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_passed);
    let mut seq: u64 = 0;
    let mut lookahead = None;
    loop {
        let item = match lookahead.take() {
            Some(item) => item,
            None => tokio::select! {
                biased;
                _ = token.cancelled() => {
                    if shared.abort.is_cancelled() {
                        let message = "the server shut down before the request finished".to_owned();
                        respond_error(&request, ErrorCode::ShuttingDown, message, seq).await;
                    }
                    return;
                }
                _ = &mut deadline_passed => {
                    token.cancel();
                    drop(stream);
                    let message = "the request's deadline passed on the server".to_owned();
                    return respond_error(&request, ErrorCode::DeadlineExceeded, message, seq).await;
                }
                item = AssertUnwindSafe(stream.next()).catch_unwind() => item,
            },
        };
        match item {
            Ok(Some(Ok(_))) if connection_dropped(&shared.client, connects_at_start) => {
                // Responses sent before the drop may be lost: the stream cannot go on
                // whole. The marker waits in the client's buffer if the link is still down.
                token.cancel();
                let message = "the server's connection to NATS dropped while the request was \
                               open, and NATS does not resend what was in flight (retry)"
                    .to_owned();
                return respond_error(&request, ErrorCode::Internal, message, seq).await;
            }
            Ok(Some(Ok(payload))) => {
                // A handler that ends right after this response (every unary one) gets it
                // sent with the end marker: one message instead of two.
                let next = AssertUnwindSafe(stream.next())
                    .catch_unwind()
                    .now_or_never();
                let last = matches!(next, Some(Ok(None)));
                if let Err((code, message)) =
                    send_response(shared, &request, payload, seq, last).await
                {
                    return respond_error(&request, code, message, seq).await;
                }
                if last {
                    return;
                }
                seq += 1;
                lookahead = next;
            }
            Ok(Some(Err(err))) => {
                return respond_error(&request, ErrorCode::Handler, err.0, seq).await;
            }
            Ok(None) => return respond_end(&request, seq).await,
            Err(_) => {
                let message = "the handler panicked".to_owned();
                return respond_error(&request, ErrorCode::Internal, message, seq).await;
            }
        }
    }
}

fn seq_headers(seq: u64) -> NatsHeaders {
    let mut headers = NatsHeaders::new();
    headers.insert(SEQ_HEADER, seq.to_string());
    headers
}

/// Publishes one response (the `last` one with the end marker, as the service's reply so
/// that STATS counts it); a response over `max_payload` becomes an error to report.
async fn send_response(
    shared: &Shared,
    request: &service::Request,
    payload: Bytes,
    seq: u64,
    last: bool,
) -> Result<(), (ErrorCode, String)> {
    let Some(reply) = request.message.reply.clone() else {
        return Ok(());
    };
    let mut headers = seq_headers(seq);
    if last {
        headers.insert(END_HEADER, END_WITH_LAST);
    }
    let size = wire_size(&headers, payload.len());
    let max = shared.client.max_payload();
    let too_large = || {
        let message = format!(
            "response of {size} bytes exceeds the NATS server's max_payload={max} bytes ({PAYLOAD_FIX})"
        );
        (ErrorCode::FrameTooLarge, message)
    };
    if size > max {
        return Err(too_large());
    }
    let sent = if last {
        request.respond_with_headers(Ok(payload), headers).await
    } else {
        shared
            .client
            .publish_with_headers(reply, headers, payload)
            .await
    };
    match sent {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => Err(too_large()),
        Err(err) => Err((
            ErrorCode::Internal,
            format!("cannot publish a response: {err}"),
        )),
    }
}

async fn respond_end(request: &service::Request, seq: u64) {
    let mut headers = seq_headers(seq);
    headers.insert(END_HEADER, "1");
    if let Err(err) = request
        .respond_with_headers(Ok(Bytes::new()), headers)
        .await
    {
        tracing::debug!("cannot send the end of a response stream: {err}");
    }
}

/// The error marker: the service error headers (so STATS counts it) plus the sequence
/// number.
async fn respond_error(request: &service::Request, code: ErrorCode, message: String, seq: u64) {
    let error = service::error::Error {
        status: header_safe(&message),
        code: code.to_u32() as usize,
    };
    if let Err(err) = request
        .respond_with_headers(Err(error), seq_headers(seq))
        .await
    {
        tracing::debug!("cannot send an error marker ({code:?}: {message}): {err}");
    }
}

/// A header value cannot hold line breaks; long messages are cut.
fn header_safe(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_strips_line_breaks_and_cuts() {
        assert_eq!(header_safe("a\r\nb"), "a  b");
        assert_eq!(header_safe(&"é".repeat(5000)).len(), MAX_ERROR_MESSAGE);
    }

    #[test]
    fn read_headers_keeps_caller_headers_and_reads_the_deadline() {
        let mut nats = NatsHeaders::new();
        nats.insert("trace", "abc");
        nats.insert(TIMEOUT_HEADER, "1000");
        nats.insert(SEQ_HEADER, "3");
        let (headers, deadline) = read_headers(Some(&nats));
        assert_eq!(headers.get("trace"), Some("abc"));
        assert_eq!(headers.len(), 1);
        assert!(deadline.is_some());
        let mut bad = NatsHeaders::new();
        bad.insert(TIMEOUT_HEADER, "soon");
        assert!(read_headers(Some(&bad)).1.is_none());
    }
}
