//! [`NatsRequestClient`]: requests published with a reply subject under one wildcard
//! inbox subscription per client; a router task hands each reply to its request's
//! [`NatsResponses`] stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{
    Client, HeaderMap as NatsHeaders, Message, PublishErrorKind, RequestErrorKind, StatusCode,
    Subscriber,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::wire::{PAYLOAD_FIX, connection_dropped, connects, wire_size};
use super::{
    END_HEADER, END_WITH_LAST, NatsRequestConfig, SEQ_HEADER, TIMEOUT_HEADER, cancel_subject,
};
use crate::planes::request::{
    ENV_REQUEST_TIMEOUT, Request, RequestError, RequestPlaneClient, StartError,
};
use crate::sync::lock;
use crate::vocab::ErrorCode;

/// Responses buffered per stream before the stream is failed as overflowed: NATS has no
/// flow control, so a caller that stops reading ends its own stream (its neighbours keep
/// flowing).
pub const STREAM_BUFFER: usize = 1024;

/// Sends requests over NATS. Clones share one inbox subscription; the subscription ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct NatsRequestClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `{inbox}`: replies arrive on `{inbox}.{request id}`.
    inbox: String,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    config: NatsRequestConfig,
    /// Stops the router task (and so the inbox subscription) with the last clone.
    _router: DropGuard,
}

/// Open requests by id. Bounded by the caller's concurrency: one entry per live stream.
type Pending = Mutex<HashMap<u64, Slot>>;

/// How often the router looks at the NATS connection and at silent streams: a connection
/// lost while requests are open fails their streams within this time, not at their timeout.
const CONNECTION_CHECK: Duration = Duration::from_millis(100);
/// Silence after which the router asks whether anything still serves a stream's subject:
/// a server that died (or lost NATS for good) mid-stream sends nothing, and nats-server
/// answers "no responders" only to a request.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// How long a probe waits for its answer; no answer in time proves nothing either way.
const PROBE_PATIENCE: Duration = Duration::from_secs(1);

struct Slot {
    tx: mpsc::Sender<Message>,
    /// The endpoint subject, for the probe.
    address: Arc<str>,
    /// When the last reply came (or the request went out).
    last_heard: Instant,
    /// Whether a probe for this stream is out.
    probing: bool,
    /// Set when the router gives up on the stream, before it drops `tx`.
    dropped: Arc<OnceLock<Dropped>>,
    /// The client's connection count when the request was sent: a higher count later
    /// means the connection dropped (and came back) in between.
    connects: u64,
}

/// Why the router stopped feeding a stream.
#[derive(Debug, Clone, Copy)]
enum Dropped {
    /// Its buffer was full when a reply came.
    Overflow,
    /// The connection to the NATS server dropped while it was open.
    ConnectionLost,
    /// A probe after a silence found nothing serving its subject.
    ServerGone,
}

impl NatsRequestClient {
    /// Subscribes this client's reply inbox on `client` (a connection possibly shared with
    /// other planes).
    pub async fn new(client: Client, config: NatsRequestConfig) -> Result<Self, StartError> {
        let config = config.validate()?;
        let inbox = client.new_inbox();
        let replies = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|err| StartError::plane("nats", err))?;
        let pending = Arc::new(Pending::default());
        let stop = CancellationToken::new();
        tokio::spawn(route_replies(
            replies,
            client.clone(),
            inbox.clone(),
            pending.clone(),
            stop.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                inbox,
                pending,
                next_id: AtomicU64::new(0),
                config,
                _router: stop.drop_guard(),
            }),
        })
    }

    pub fn config(&self) -> &NatsRequestConfig {
        &self.inner.config
    }

    /// Requests awaiting their last response.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.pending).len()
    }
}

/// Hands each reply to its stream. Never waits on a stream: a full buffer drops the
/// request (its stream reports the overflow). Every [`CONNECTION_CHECK`] it looks over
/// the open streams ([`check_streams`]).
async fn route_replies(
    mut replies: Subscriber,
    client: Client,
    inbox: String,
    pending: Arc<Pending>,
    stop: CancellationToken,
) {
    let mut check = tokio::time::interval(CONNECTION_CHECK);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            _ = check.tick() => {
                check_streams(&client, &pending);
                continue;
            }
            message = replies.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let id = message
            .subject
            .strip_prefix(inbox.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|id| id.parse::<u64>().ok());
        let Some(id) = id else {
            tracing::debug!("dropping a reply on unexpected subject {}", message.subject);
            continue;
        };
        let mut pending = lock(&pending);
        let Some(slot) = pending.get_mut(&id) else {
            tracing::trace!("dropping a reply to request {id}, which is no longer open");
            continue;
        };
        slot.last_heard = Instant::now();
        if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(message) {
            let _ = slot.dropped.set(Dropped::Overflow);
            pending.remove(&id);
        }
    }
}

/// Drops the open streams whose replies may have been lost: NATS does not resend what
/// was published while a connection was down, so a stream that spanned a drop could
/// otherwise wait for its timeout. Replies already buffered are still delivered first.
/// Probes the streams silent for [`PROBE_AFTER`].
fn check_streams(client: &Client, pending: &Arc<Pending>) {
    let mut open = lock(pending);
    if open.is_empty() {
        return;
    }
    let now = Instant::now();
    open.retain(|&id, slot| {
        if connection_dropped(client, slot.connects) {
            let _ = slot.dropped.set(Dropped::ConnectionLost);
            return false;
        }
        if !slot.probing && now.duration_since(slot.last_heard) >= PROBE_AFTER {
            slot.probing = true;
            let subject = cancel_subject(&slot.address);
            tokio::spawn(probe(client.clone(), Arc::clone(pending), id, subject));
        }
        true
    });
}

/// Asks whether anything serves the cancel subject of stream `id` (servers answer a
/// cancel that has a reply subject); ends the stream when nats-server says no one does.
async fn probe(client: Client, pending: Arc<Pending>, id: u64, subject: String) {
    let answer = tokio::time::timeout(PROBE_PATIENCE, client.request(subject, Bytes::new())).await;
    let mut open = lock(&pending);
    let Some(slot) = open.get_mut(&id) else {
        return;
    };
    match answer {
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => {
            let _ = slot.dropped.set(Dropped::ServerGone);
            open.remove(&id);
        }
        _ => {
            slot.probing = false;
            slot.last_heard = Instant::now();
        }
    }
}

impl RequestPlaneClient for NatsRequestClient {
    type Responses = NatsResponses;

    async fn request(
        &self,
        address: &str,
        request: Request,
    ) -> Result<NatsResponses, RequestError> {
        check_subject(address)?;
        let inner = &self.inner;
        let timeout = inner.config.request_timeout;
        let headers = request_headers(&request, timeout)?;
        let size = wire_size(&headers, request.payload.len());
        let max = inner.client.max_payload();
        let too_large = || RequestError::TooLarge {
            size: size as u64,
            max,
            limit: "the NATS server's max_payload",
            fix: PAYLOAD_FIX,
        };
        if size > max {
            return Err(too_large());
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{id}", inner.inbox);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let dropped = Arc::new(OnceLock::new());
        // One copy of the subject, shared by the stream (for errors and the cancel) and
        // its slot (for the probe).
        let subject: Arc<str> = Arc::from(address);
        lock(&inner.pending).insert(
            id,
            Slot {
                tx,
                address: Arc::clone(&subject),
                last_heard: Instant::now(),
                probing: false,
                dropped: dropped.clone(),
                connects: connects(&inner.client),
            },
        );
        let mut responses = NatsResponses {
            inner: inner.clone(),
            id,
            rx,
            dropped,
            address: subject,
            reply: reply.clone(),
            next_seq: 0,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            state: State::Open,
        };
        let sent = inner
            .client
            .publish_with_reply_and_headers(address.to_owned(), reply, headers, request.payload)
            .await;
        match sent {
            Ok(()) => Ok(responses),
            Err(err) => {
                // Nothing reached the server: nothing to cancel.
                responses.state = State::Finished;
                if err.kind() == PublishErrorKind::MaxPayloadExceeded {
                    Err(too_large())
                } else {
                    Err(RequestError::ConnectionLost {
                        address: address.to_owned(),
                        reason: err.to_string(),
                    })
                }
            }
        }
    }
}

/// A subject a request can be published to: non-empty tokens, no wildcards, no spaces.
fn check_subject(address: &str) -> Result<(), RequestError> {
    let valid = !address.is_empty()
        && address.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        });
    if valid {
        Ok(())
    } else {
        Err(RequestError::InvalidAddress {
            address: address.to_owned(),
            reason: "expected a NATS subject without wildcards, e.g. pw.rq.ns.component.endpoint.1"
                .to_owned(),
        })
    }
}

fn request_headers(request: &Request, timeout: Duration) -> Result<NatsHeaders, RequestError> {
    let mut headers = NatsHeaders::new();
    for (name, value) in request.headers.iter() {
        let name: async_nats::header::HeaderName =
            name.parse().map_err(|_| RequestError::Encode {
                reason: format!("header name {name:?} cannot be carried by NATS"),
                source: None,
            })?;
        let value: async_nats::HeaderValue = value.parse().map_err(|_| RequestError::Encode {
            reason: format!("the value of header {name} cannot be carried by NATS"),
            source: None,
        })?;
        headers.append(name, value);
    }
    headers.insert(TIMEOUT_HEADER, timeout.as_millis().to_string());
    Ok(headers)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The server ended the stream, never got it, or was told to stop when the client
    /// gave up on it: nothing more to send.
    Finished,
}

/// The responses to one request, in order. Ends after the last response or the first
/// error. Dropping it before the end tells the server to cancel the handler.
pub struct NatsResponses {
    inner: Arc<Inner>,
    id: u64,
    rx: mpsc::Receiver<Message>,
    dropped: Arc<OnceLock<Dropped>>,
    address: Arc<str>,
    reply: String,
    next_seq: u64,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    state: State,
}

impl NatsResponses {
    /// Reads one reply: `Some(item)` to yield, `None` for the end.
    fn read(&mut self, message: Message) -> Option<Result<Bytes, RequestError>> {
        if let Some(status) = message.status
            && status != StatusCode::OK
        {
            self.state = State::Finished;
            let error = if status == StatusCode::NO_RESPONDERS {
                RequestError::Remote {
                    code: ErrorCode::UnknownEndpoint,
                    message: format!(
                        "no instance serves {}: nothing subscribes to that NATS subject \
                         (the endpoint is not registered, or its server is gone)",
                        self.address
                    ),
                }
            } else {
                RequestError::Remote {
                    code: ErrorCode::Protocol,
                    message: format!("NATS status {status} for {}", self.address),
                }
            };
            return Some(Err(error));
        }
        let headers = message.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let Some(seq) = header(SEQ_HEADER).and_then(|s| s.parse::<u64>().ok()) else {
            return Some(Err(self.abandon(format!(
                "a reply from {} had no valid {SEQ_HEADER} header",
                self.address
            ))));
        };
        if seq != self.next_seq {
            // A lower number is one already received (or older than it): calling it
            // lost would send whoever debugs it after a missing message.
            let reason = if seq < self.next_seq {
                format!(
                    "response #{seq} from {} arrived again or out of order (expected #{})",
                    self.address, self.next_seq
                )
            } else {
                format!(
                    "response #{} from {} was lost (the next one received was #{seq})",
                    self.next_seq, self.address
                )
            };
            return Some(Err(self.abandon(reason)));
        }
        self.next_seq += 1;
        if let Some(code) = header(NATS_SERVICE_ERROR_CODE) {
            self.state = State::Finished;
            let code = code
                .parse::<u32>()
                .map_or(ErrorCode::Internal, ErrorCode::from_u32);
            // The server enforces the deadline we sent; its verdict and ours race, and
            // the caller should see one kind of timeout either way (as on TCP and HTTP/2).
            if code == ErrorCode::DeadlineExceeded {
                return Some(Err(RequestError::Timeout {
                    timeout: self.timeout,
                    setting: ENV_REQUEST_TIMEOUT,
                }));
            }
            let message = header(NATS_SERVICE_ERROR).unwrap_or_default().to_owned();
            return Some(Err(RequestError::Remote { code, message }));
        }
        match header(END_HEADER) {
            Some(END_WITH_LAST) => {
                self.state = State::Finished;
                Some(Ok(message.payload))
            }
            Some(_) => {
                self.state = State::Finished;
                None
            }
            None => Some(Ok(message.payload)),
        }
    }

    fn abandon(&mut self, reason: String) -> RequestError {
        self.give_up();
        RequestError::ConnectionLost {
            address: self.address.to_string(),
            reason,
        }
    }

    /// Tells the server to stop the handler, at once rather than when the stream is
    /// dropped (the caller may hold a failed stream for a while), and ends the stream.
    /// While the connection is down the cancel waits in the client's publish buffer.
    fn give_up(&mut self) {
        if self.state != State::Open {
            return;
        }
        self.state = State::Finished;
        lock(&self.inner.pending).remove(&self.id);
        // Publishing is async; the cancel goes out from a task of its own.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.inner.client.clone();
        let subject = cancel_subject(&self.address);
        let reply = Bytes::from(std::mem::take(&mut self.reply));
        runtime.spawn(async move {
            if let Err(err) = client.publish(subject, reply).await {
                tracing::debug!("cannot send a cancel: {err}");
            }
        });
    }
}

impl Stream for NatsResponses {
    type Item = Result<Bytes, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.state != State::Open {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => return Poll::Ready(this.read(message)),
            Poll::Ready(None) => {
                this.give_up();
                let error = match this.dropped.get() {
                    Some(Dropped::Overflow) => RequestError::ResponseOverflow {
                        buffered: STREAM_BUFFER,
                    },
                    Some(Dropped::ConnectionLost) => RequestError::ConnectionLost {
                        address: this.address.to_string(),
                        reason: "the connection to the NATS server dropped while the request \
                                 was open, and NATS does not resend replies published \
                                 meanwhile (the client reconnects by itself: retry)"
                            .to_owned(),
                    },
                    Some(Dropped::ServerGone) => RequestError::ConnectionLost {
                        address: this.address.to_string(),
                        reason: format!(
                            "nothing serves it any more: its server stopped or lost NATS for \
                             good while the request was open (a probe after {PROBE_AFTER:?} \
                             without a response found no subscriber)"
                        ),
                    },
                    None => RequestError::ClientClosed,
                };
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Pending => {}
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.give_up();
            return Poll::Ready(Some(Err(RequestError::Timeout {
                timeout: this.timeout,
                setting: ENV_REQUEST_TIMEOUT,
            })));
        }
        Poll::Pending
    }
}

impl Drop for NatsResponses {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.id);
        // A stream dropped before its end cancels the handler.
        self.give_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_with_wildcards_or_spaces_are_refused() {
        assert!(check_subject("pw.rq.a.b.c.1").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", "a.b."] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
