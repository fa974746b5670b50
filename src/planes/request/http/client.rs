//! [`HttpClient`]: requests over pooled HTTP/2 connections (hyper's client, one
//! connection per server carrying many streams), and [`HttpResponses`], a response body
//! read record by record.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};

use super::config::{ENV_HTTP_MAX_MESSAGE_SIZE, HttpConfig};
use super::framing::{Decoder, Record};
use super::{TIMEOUT_HEADER, carries_metadata};
use crate::config::ConfigError;
use crate::planes::request::{ENV_REQUEST_TIMEOUT, Request, RequestError, RequestPlaneClient};
use crate::vocab::ErrorCode;

type Pool = Client<HttpConnector, Full<Bytes>>;

/// Sends requests to HTTP/2 request-plane servers. Cheap to clone; clones share the
/// connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: HttpConfig,
    /// Replaced by a fresh pool on `close_connections`; requests running on the old one
    /// keep it until they end.
    pool: RwLock<Pool>,
}

impl HttpClient {
    /// A client with `config` (validated here). Connects on demand.
    pub fn new(config: HttpConfig) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool: RwLock::new(pool(&config)),
                config,
            }),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// Closes every pooled connection once the requests still running on it end.
    pub fn close_connections(&self) {
        let fresh = pool(&self.inner.config);
        *self.inner.pool.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// Sends `request` to the server at `address`: `host:port{root}` as its discovery
    /// record says, or `host:port` (then `DYN_HTTP_RPC_ROOT_PATH` is the root).
    ///
    /// A payload over `DYN_HTTP_MAX_MESSAGE_SIZE` is refused before anything is sent.
    /// `DYN_REQUEST_TIMEOUT` bounds the whole request, from this call to the last
    /// response. Returns once the response head has arrived.
    pub async fn call(
        &self,
        address: &str,
        request: Request,
    ) -> Result<HttpResponses, RequestError> {
        let config = &self.inner.config;
        let size = request.payload.len();
        if size > config.max_message_size {
            return Err(RequestError::TooLarge {
                size: size as u64,
                max: config.max_message_size,
                limit: ENV_HTTP_MAX_MESSAGE_SIZE,
                fix: "raise the limit on both sides or split the payload",
            });
        }
        let timeout = config.request_timeout;
        let deadline = Instant::now() + timeout;
        let http_request = self.http_request(address, request)?;
        let pool = self
            .inner
            .pool
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sent = tokio::time::timeout_at(deadline, pool.request(http_request)).await;
        let response = match sent {
            Err(_) => {
                return Err(RequestError::Timeout {
                    timeout,
                    setting: ENV_REQUEST_TIMEOUT,
                });
            }
            Ok(Err(err)) if err.is_connect() => {
                return Err(RequestError::Connect {
                    address: address.to_owned(),
                    source: Arc::new(err),
                });
            }
            Ok(Err(err)) => {
                return Err(RequestError::ConnectionLost {
                    address: address.to_owned(),
                    reason: error_chain(&err),
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        Ok(HttpResponses {
            body: Some(response.into_body()),
            decoder: Decoder::new(config.max_message_size),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
            status,
            address: address.into(),
            done: false,
        })
    }

    fn http_request(
        &self,
        address: &str,
        request: Request,
    ) -> Result<http::Request<Full<Bytes>>, RequestError> {
        let config = &self.inner.config;
        let base = if address.contains('/') {
            address.to_owned()
        } else {
            format!("{address}{}", config.root_path)
        };
        let uri: Uri = format!("http://{base}/{}", request.path).parse().map_err(
            |err: http::uri::InvalidUri| RequestError::InvalidAddress {
                address: address.to_owned(),
                reason: format!("expected HOST:PORT or HOST:PORT/ROOT ({err})"),
            },
        )?;
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(
                TIMEOUT_HEADER,
                config.request_timeout.as_millis().to_string(),
            );
        for (name, value) in request.headers.iter() {
            let bad = |what: &str| RequestError::Encode {
                reason: format!("{what} cannot be carried as an HTTP/2 header"),
                source: None,
            };
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(&format!("header name {name:?}")))?;
            if !carries_metadata(&header) {
                return Err(RequestError::Encode {
                    reason: format!("header {name} is reserved on the HTTP/2 plane"),
                    source: None,
                });
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| bad(&format!("the value of header {name}")))?;
            builder = builder.header(header, value);
        }
        builder
            .body(Full::new(request.payload))
            .map_err(|err| RequestError::Encode {
                reason: err.to_string(),
                source: Some(Arc::new(err)),
            })
    }
}

fn pool(config: &HttpConfig) -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_max_frame_size(config.max_frame_size as u32)
        .http2_max_concurrent_streams(config.max_concurrent_streams)
        .http2_adaptive_window(config.adaptive_window)
        .http2_keep_alive_interval(config.keep_alive_interval)
        .http2_keep_alive_timeout(config.keep_alive_timeout)
        .http2_keep_alive_while_idle(true)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(config.pool_idle_timeout)
        .build(connector)
}

/// An error and its causes on one line: hyper's own message is often just "connection
/// error", the cause says which.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl RequestPlaneClient for HttpClient {
    type Responses = HttpResponses;

    async fn request(
        &self,
        address: &str,
        request: Request,
    ) -> Result<HttpResponses, RequestError> {
        self.call(address, request).await
    }
}

/// The responses of one HTTP/2 request, read from its body as the caller asks for them
/// (the stream's flow-control window holds the server back meanwhile). Dropping it
/// before the end resets the stream, which cancels the handler.
pub struct HttpResponses {
    /// Dropped as soon as the stream ends, so that a stream given up on is reset at once.
    body: Option<Incoming>,
    decoder: Decoder,
    deadline: Pin<Box<Sleep>>,
    timeout: std::time::Duration,
    status: StatusCode,
    address: Box<str>,
    done: bool,
}

impl HttpResponses {
    /// Ends the stream with `err`.
    fn fail(&mut self, err: RequestError) -> Poll<Option<Result<Bytes, RequestError>>> {
        self.done = true;
        self.body = None;
        Poll::Ready(Some(Err(err)))
    }

    fn malformed(&self, reason: String) -> RequestError {
        RequestError::Remote {
            code: ErrorCode::Protocol,
            message: format!(
                "{} answered HTTP status {} with {reason}",
                self.address, self.status
            ),
        }
    }
}

impl Stream for HttpResponses {
    type Item = Result<Bytes, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.decoder.next() {
                Ok(Some(Record::Item(item))) => return Poll::Ready(Some(Ok(item))),
                Ok(Some(Record::End)) => {
                    this.done = true;
                    this.body = None;
                    return Poll::Ready(None);
                }
                // The server enforces the deadline we sent; its verdict and ours race,
                // and the caller should see one kind of timeout either way.
                Ok(Some(Record::Error {
                    code: ErrorCode::DeadlineExceeded,
                    ..
                })) => {
                    let timeout = this.timeout;
                    return this.fail(RequestError::Timeout {
                        timeout,
                        setting: ENV_REQUEST_TIMEOUT,
                    });
                }
                Ok(Some(Record::Error { code, message })) => {
                    return this.fail(RequestError::Remote { code, message });
                }
                Err(err) => {
                    let err = this.malformed(err.to_string());
                    return this.fail(err);
                }
                Ok(None) => {}
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(data);
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let err = RequestError::ConnectionLost {
                        address: this.address.to_string(),
                        reason: error_chain(&err),
                    };
                    return this.fail(err);
                }
                Poll::Ready(None) => {
                    let reason = if this.decoder.buffered() > 0 {
                        "a body cut inside a record".to_owned()
                    } else {
                        "a body that ended without its end record".to_owned()
                    };
                    let err = this.malformed(reason);
                    return this.fail(err);
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        let timeout = this.timeout;
                        return this.fail(RequestError::Timeout {
                            timeout,
                            setting: ENV_REQUEST_TIMEOUT,
                        });
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
