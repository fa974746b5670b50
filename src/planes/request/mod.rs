//! The request plane: one request in, a stream of responses out, cancellable.
//!
//! Three layers, each knowing only the ones below it:
//! - **Neutral** (this module): [`Request`], [`Handler`] and the [`CancellationToken`]
//!   it receives, the two traits [`RequestPlaneClient`] and [`RequestPlaneServer`],
//!   [`RequestError`] (which keeps its cause as its `source`), [`ServerLimits`] and the
//!   plane-neutral `DYN_REQUEST_TIMEOUT`. The words they use (paths, headers, error
//!   codes) are [`crate::vocab`]'s.
//! - **Planes**, each implementing the traits and nothing more: TCP (the core, in
//!   [`crate::tcp`] and [`crate::pool`]), [`nats`] (feature `nats`), [`http`] (HTTP/2,
//!   feature `http`). No plane imports another.
//! - **Dispatch**: [`RequestPlaneKind`] (`DYN_REQUEST_PLANE`), [`RequestPlaneConfig`],
//!   and one client ([`PlaneClient`]), server ([`PlaneServer`]) and response stream
//!   ([`Responses`]) over whichever planes the build has. Every `cfg(feature)` that
//!   chooses between planes is there; adding a plane means its own module plus the
//!   dispatch.
//!
//! Routing to the instances discovery reports is a consumer of this plane and of
//! discovery: [`crate::planes::routing`].
//!
//! # Cancel safety
//! Dropping a response stream before its end cancels the request on the server: TCP
//! sends a CANCEL frame, NATS publishes to the endpoint's cancel subject, HTTP/2 resets
//! the stream. Either way the handler's [`CancellationToken`] fires and its response
//! stream is dropped.

mod dispatch;
mod endpoints;
mod error;
mod handler;
#[cfg(feature = "http")]
pub mod http;
mod limits;
#[cfg(feature = "nats")]
pub mod nats;
mod traits;

/// Paths, as handlers and clients name them.
pub use crate::vocab::{EndpointPath, HeaderMap, PathError};
pub use dispatch::{
    ENV_REQUEST_PLANE, PlaneClient, PlaneServer, RequestPlaneConfig, RequestPlaneKind, Responses,
};
pub(crate) use endpoints::{Endpoint, EndpointCache, EndpointTable, Slot};
pub use error::{HandlerError, RegisterError, RequestError, SharedError, StartError};
pub use handler::{Handler, HandlerStream, Request, unary_handler};
pub use limits::{DEFAULT_REQUEST_TIMEOUT, ENV_REQUEST_TIMEOUT, ServerLimits};
/// Every handler receives one; re-exported so a handler needs no direct `tokio-util`.
pub use tokio_util::sync::CancellationToken;
pub use traits::{RequestPlaneClient, RequestPlaneServer};
