//! [`NatsRequestClient`]: requests published with a reply subject under one wildcard
//! inbox subscription per client; a router task hands each reply to its request's
//! [`NatsResponses`] stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{
    Client, HeaderMap as NatsHeaders, Message, PublishErrorKind, StatusCode, Subscriber,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    END_HEADER, END_WITH_LAST, NatsClientConfig, SEQ_HEADER, TIMEOUT_HEADER, cancel_subject,
    wire_size,
};
use crate::codec::ErrorCode;
use crate::planes::{Request, RequestError, RequestPlaneClient};
use crate::sync::lock;
use crate::tcp::STREAM_BUFFER;

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
    config: NatsClientConfig,
    /// Stops the router task (and so the inbox subscription) with the last clone.
    _router: DropGuard,
}

/// Open requests by id. Bounded by the caller's concurrency: one entry per live stream.
type Pending = Mutex<HashMap<u64, Slot>>;

struct Slot {
    tx: mpsc::Sender<Message>,
    /// Set when the stream's buffer was full and its reply was dropped.
    overflowed: Arc<AtomicBool>,
}

impl NatsRequestClient {
    /// Subscribes this client's reply inbox on `client` (a connection possibly shared with
    /// other planes).
    pub async fn new(client: Client, config: NatsClientConfig) -> Result<Self, RequestError> {
        config
            .validate()
            .map_err(|err| RequestError::Encode(err.to_string()))?;
        let inbox = client.new_inbox();
        let replies = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|err| RequestError::Connect {
                address: inbox.clone(),
                reason: format!("cannot subscribe the reply inbox: {err}"),
            })?;
        let pending = Arc::new(Pending::default());
        let stop = CancellationToken::new();
        tokio::spawn(route_replies(
            replies,
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

    pub fn config(&self) -> &NatsClientConfig {
        &self.inner.config
    }

    /// Requests awaiting their last response.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.pending).len()
    }
}

/// Hands each reply to its stream. Never waits on a stream: a full buffer drops the
/// request (its stream reports the overflow).
async fn route_replies(
    mut replies: Subscriber,
    inbox: String,
    pending: Arc<Pending>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
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
        let Some(slot) = pending.get(&id) else {
            tracing::trace!("dropping a reply to request {id}, which is no longer open");
            continue;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(message) {
            slot.overflowed.store(true, Ordering::Relaxed);
            pending.remove(&id);
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
        let too_large = || RequestError::PayloadTooLarge {
            size: size as u64,
            max,
        };
        if size > max {
            return Err(too_large());
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{id}", inner.inbox);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let overflowed = Arc::new(AtomicBool::new(false));
        lock(&inner.pending).insert(
            id,
            Slot {
                tx,
                overflowed: overflowed.clone(),
            },
        );
        let mut responses = NatsResponses {
            inner: inner.clone(),
            id,
            rx,
            overflowed,
            address: address.to_owned(),
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
        let name: async_nats::header::HeaderName = name.parse().map_err(|_| {
            RequestError::Encode(format!("header name {name:?} cannot be carried by NATS"))
        })?;
        let value: async_nats::HeaderValue = value.parse().map_err(|_| {
            RequestError::Encode(format!(
                "the value of header {name} cannot be carried by NATS"
            ))
        })?;
        headers.append(name, value);
    }
    headers.insert(TIMEOUT_HEADER, timeout.as_millis().to_string());
    Ok(headers)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The server ended the stream (or never got it): no cancel to send.
    Finished,
    /// The client gave up (timeout, lost response): the server is told to stop.
    Abandoned,
}

/// The responses to one request, in order. Ends after the last response or the first
/// error. Dropping it before the end tells the server to cancel the handler.
pub struct NatsResponses {
    inner: Arc<Inner>,
    id: u64,
    rx: mpsc::Receiver<Message>,
    overflowed: Arc<AtomicBool>,
    address: String,
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
            return Some(Err(self.abandon(format!(
                "response #{} from {} was lost (the next one received was #{seq})",
                self.next_seq, self.address
            ))));
        }
        self.next_seq += 1;
        if let Some(code) = header(NATS_SERVICE_ERROR_CODE) {
            self.state = State::Finished;
            let code = code
                .parse::<u32>()
                .map_or(ErrorCode::Internal, ErrorCode::from_u32);
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
        self.state = State::Abandoned;
        RequestError::ConnectionLost {
            address: self.address.clone(),
            reason,
        }
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
                this.state = State::Abandoned;
                let error = if this.overflowed.load(Ordering::Relaxed) {
                    RequestError::ResponseOverflow {
                        buffered: STREAM_BUFFER,
                    }
                } else {
                    RequestError::ClientClosed
                };
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Pending => {}
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.state = State::Abandoned;
            return Poll::Ready(Some(Err(RequestError::Timeout {
                timeout: this.timeout,
            })));
        }
        Poll::Pending
    }
}

impl Drop for NatsResponses {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.id);
        if self.state == State::Finished {
            return;
        }
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
