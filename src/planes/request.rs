//! The request plane's transport-neutral shape: requests, handlers and the two traits.

use std::fmt;
use std::future::Future;
use tokio::time::Instant;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{HandlerError, RegisterError, RequestError};
use crate::codec::{HeaderMap, Utf8Bytes};

/// Where a handler lives: `namespace/component/endpoint`, plus an instance id so several
/// instances of one endpoint can share a process. On the wire it is
/// `{namespace}/{component}/{endpoint}/{instance_id as lowercase hex}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPath {
    namespace: String,
    component: String,
    endpoint: String,
    instance_id: u64,
}

impl EndpointPath {
    /// Segments must be non-empty and contain no `/`.
    pub fn new(
        namespace: impl Into<String>,
        component: impl Into<String>,
        endpoint: impl Into<String>,
        instance_id: u64,
    ) -> Result<Self, RegisterError> {
        let path = Self {
            namespace: namespace.into(),
            component: component.into(),
            endpoint: endpoint.into(),
            instance_id,
        };
        for segment in [&path.namespace, &path.component, &path.endpoint] {
            if segment.is_empty() || segment.contains('/') {
                return Err(RegisterError::InvalidPath {
                    path: path.to_string(),
                    reason: "namespace, component and endpoint must be non-empty and contain no '/'",
                });
            }
        }
        Ok(path)
    }

    /// Parses `ns/component/endpoint` (instance given separately), as typed on a command line.
    pub fn parse(spec: &str, instance_id: u64) -> Result<Self, RegisterError> {
        let mut parts = spec.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(c), Some(e), None) => Self::new(ns, c, e, instance_id),
            _ => Err(RegisterError::InvalidPath {
                path: spec.to_owned(),
                reason: "expected NAMESPACE/COMPONENT/ENDPOINT",
            }),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// `namespace/component/endpoint`: on the TCP plane, a request to this path reaches
    /// the server's one instance of the endpoint, whatever its id.
    pub fn without_instance(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.component, self.endpoint)
    }
}

impl fmt::Display for EndpointPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{:x}",
            self.namespace, self.component, self.endpoint, self.instance_id
        )
    }
}

impl From<&EndpointPath> for Utf8Bytes {
    fn from(path: &EndpointPath) -> Self {
        path.to_string().into()
    }
}

/// One request: endpoint path, metadata, payload. On the server every part is a slice of
/// the connection's read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: Utf8Bytes,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// On the server: when the client stops waiting, if it sent a deadline.
    pub deadline: Option<Instant>,
}

impl Request {
    pub fn new(path: impl Into<Utf8Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            path: path.into(),
            headers: HeaderMap::new(),
            payload: payload.into(),
            deadline: None,
        }
    }

    pub fn with_header(mut self, name: impl Into<Utf8Bytes>, value: impl Into<Utf8Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// The responses a handler produces; ending the stream ends the request successfully.
pub type HandlerStream = BoxStream<'static, Result<Bytes, HandlerError>>;

/// Serves one endpoint. `cancel` fires when the client cancels, goes away, or the request's
/// deadline passes; the returned stream is dropped right after, so a handler that only
/// awaits inside its stream needs no explicit check.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, request: Request, cancel: CancellationToken) -> HandlerStream;
}

impl<F, S> Handler for F
where
    F: Fn(Request, CancellationToken) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
{
    fn call(&self, request: Request, cancel: CancellationToken) -> HandlerStream {
        self(request, cancel).boxed()
    }
}

/// Adapts an async function returning one response into a [`Handler`].
pub fn unary_handler<F, Fut>(f: F) -> impl Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    move |request: Request, _cancel: CancellationToken| stream::once(f(request))
}

/// The client half of a request plane. Dropping a response stream before its end
/// cancels the request on the server.
pub trait RequestPlaneClient: Send + Sync {
    type Responses: Stream<Item = Result<Bytes, RequestError>> + Send + Unpin + 'static;

    /// Sends `request` to the server at `address` (transport-specific, e.g. `host:port`).
    fn request(
        &self,
        address: &str,
        request: Request,
    ) -> impl Future<Output = Result<Self::Responses, RequestError>> + Send;

    /// Sends `request` and returns its single response; zero or several responses is an error.
    fn unary(
        &self,
        address: &str,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, RequestError>> + Send {
        async move {
            let mut responses = self.request(address, request).await?;
            let first = responses
                .next()
                .await
                .ok_or(RequestError::NotUnary("the stream ended without one"))??;
            match responses.next().await {
                None => Ok(first),
                Some(Err(err)) => Err(err),
                Some(Ok(_)) => Err(RequestError::NotUnary("the server sent more than one")),
            }
        }
    }
}

/// The server half of a request plane: one per process, hosting many endpoints.
pub trait RequestPlaneServer: Send + Sync {
    /// Starts routing requests for `path` to `handler`; once this returns, requests for
    /// `path` reach it (so the path can be published in discovery).
    fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send;

    /// Stops routing `path`; requests already running finish. Returns whether it was registered.
    fn unregister(&self, path: &EndpointPath) -> bool;

    /// The address clients pass to [`RequestPlaneClient::request`] to reach `path` on
    /// this server: what its discovery record carries. TCP: `host:port`, the same for
    /// every path; NATS: the endpoint instance's subject.
    fn address(&self, path: &EndpointPath) -> String;

    /// Stops accepting, tells clients to go away, drains in-flight requests up to the drain
    /// timeout, then cancels the rest; returns when every task has ended.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
