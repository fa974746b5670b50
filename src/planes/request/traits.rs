//! The two traits every request plane implements.

use std::future::Future;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::{RegisterError, RequestError};
use super::handler::{Handler, Request};
use crate::vocab::EndpointPath;

/// The client half of a request plane. Dropping a response stream before its end
/// cancels the request on the server.
pub trait RequestPlaneClient: Send + Sync {
    type Responses: Stream<Item = Result<Bytes, RequestError>> + Send + Unpin + 'static;

    /// Sends `request` to the server at `address` (plane-specific, e.g. `host:port`).
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
    /// this server: what its discovery record carries. TCP and HTTP/2: `host:port`, the
    /// same for every path; NATS: the endpoint instance's subject.
    fn address(&self, path: &EndpointPath) -> String;

    /// Stops accepting, tells clients to go away, drains in-flight requests up to the drain
    /// timeout, then cancels the rest; returns when every task has ended.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
