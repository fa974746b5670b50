//! One HTTP/2 request, in the order a server meets it: route it, admit it, read it, and
//! answer with its handler's stream (`PROTOCOL.md` §12). Every refusal is a status and
//! one error record naming the cause.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::body::ResponseBody;
use super::config::ENV_HTTP_MAX_MESSAGE_SIZE;
use super::{CONTENT_TYPE, TIMEOUT_HEADER, carries_metadata};
use crate::planes::request::{Endpoint, EndpointTable, Request};
use crate::vocab::{ErrorCode, HeaderMap, Utf8Bytes};

/// How long a request body may take to arrive when the client sent no deadline (as
/// `DYN_TCP_FRAME_TIMEOUT` bounds a TCP frame).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request of one server shares.
pub(super) struct Service {
    pub(super) endpoints: EndpointTable,
    /// `{root}/`: what a request path starts with.
    pub(super) prefix: String,
    pub(super) max_message_size: usize,
    /// Fired by `shutdown`: new requests are refused with `ShuttingDown`, and each
    /// connection sends GOAWAY once the requests it had already admitted are done.
    pub(super) draining: CancellationToken,
    /// Fired when the drain timeout passes: running streams end with `ShuttingDown`.
    pub(super) abort: CancellationToken,
}

/// A refusal: its status and error record.
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl Service {
    /// `open` counts the request as its connection's until its response body is done,
    /// refusals included; it must be taken before `admit` checks `draining`.
    pub(super) async fn respond(
        self: Arc<Self>,
        request: http::Request<Incoming>,
        open: TaskTrackerToken,
    ) -> Response<ResponseBody> {
        match self.run(request).await {
            Ok(body) => reply(StatusCode::OK, body.counted(open)),
            Err(refusal) => reply(
                refusal.status,
                ResponseBody::error(refusal.code, &refusal.message).counted(open),
            ),
        }
    }

    async fn run(&self, request: http::Request<Incoming>) -> Result<ResponseBody, Refusal> {
        let path = self.route(&request)?;
        let endpoint = self.admit(&path)?;
        let slot = endpoint.slots.try_take().ok_or_else(|| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Overloaded,
                format!("endpoint {path} overloaded: all its request slots are busy; retry later"),
            )
        })?;
        let call = self.read(path, request).await?;
        let token = CancellationToken::new();
        let deadline = call.deadline;
        let responses = endpoint.handler.call(call, token.clone());
        Ok(ResponseBody::stream(
            responses,
            token,
            slot,
            deadline,
            self.abort.clone(),
            self.max_message_size,
        ))
    }

    /// The endpoint path after the root: `ns/component/endpoint[/instance]`.
    fn route(&self, request: &http::Request<Incoming>) -> Result<String, Refusal> {
        if request.method() != Method::POST {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Protocol,
                format!(
                    "{} is not a request: POST to {}NAMESPACE/COMPONENT/ENDPOINT[/INSTANCE]",
                    request.method(),
                    self.prefix
                ),
            ));
        }
        let path = request.uri().path();
        match path.strip_prefix(&self.prefix) {
            Some(rest) if !rest.is_empty() => Ok(rest.to_owned()),
            _ => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownEndpoint,
                format!(
                    "no endpoint at {path}: request paths start with {}",
                    self.prefix
                ),
            )),
        }
    }

    fn admit(&self, path: &str) -> Result<Arc<Endpoint>, Refusal> {
        if self.draining.is_cancelled() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                "the server is shutting down and takes no new requests; the request was not processed",
            ));
        }
        self.endpoints.lookup(path).ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownEndpoint,
                format!(
                    "no endpoint {path:?} is registered on this server (a path without an \
                     instance id matches only an endpoint with exactly one instance here)"
                ),
            )
        })
    }

    /// The request as a handler sees it: metadata from the headers, the whole body.
    async fn read(
        &self,
        path: String,
        request: http::Request<Incoming>,
    ) -> Result<Request, Refusal> {
        let bad =
            |message: String| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::Protocol, message);
        let (parts, body) = request.into_parts();
        let deadline = match parts.headers.get(TIMEOUT_HEADER) {
            None => None,
            Some(value) => {
                let millis: u64 = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "{TIMEOUT_HEADER} must be a whole number of milliseconds"
                        ))
                    })?;
                Some(Instant::now() + Duration::from_millis(millis))
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if !carries_metadata(name) {
                continue;
            }
            let value = value
                .to_str()
                .map_err(|_| bad(format!("header {name} is not text")))?;
            headers.insert(name.as_str().to_owned(), value.to_owned());
        }
        let payload = self.body(body, &parts.headers, deadline).await?;
        Ok(Request {
            path: Utf8Bytes::from(path),
            headers,
            payload,
            deadline,
        })
    }

    /// The body, refused at once when its declared length is over the limit.
    async fn body(
        &self,
        body: Incoming,
        headers: &http::HeaderMap,
        deadline: Option<Instant>,
    ) -> Result<Bytes, Refusal> {
        let max = self.max_message_size;
        let too_large = |size: String| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::FrameTooLarge,
                format!("request of {size} bytes exceeds {ENV_HTTP_MAX_MESSAGE_SIZE}={max} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = declared.filter(|size| *size > max as u64) {
            return Err(too_large(size.to_string()));
        }
        let until = deadline.unwrap_or_else(|| Instant::now() + BODY_TIMEOUT);
        let collected = tokio::time::timeout_at(until, Limited::new(body, max).collect()).await;
        match collected {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                Err(too_large(format!("more than {max}")))
            }
            Ok(Err(err)) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Protocol,
                format!("the request body could not be read: {err}"),
            )),
            Err(_) => Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::DeadlineExceeded,
                "the request body did not arrive in time",
            )),
        }
    }
}

fn reply(status: StatusCode, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
