//! The one place that knows every request plane: which one `DYN_REQUEST_PLANE` names
//! ([`RequestPlaneKind`]), its settings ([`RequestPlaneConfig`]), and a client
//! ([`PlaneClient`]), server ([`PlaneServer`]) and response stream ([`Responses`]) that
//! dispatch to the plane at hand. Every `cfg(feature)` of the request planes is here.

mod client;
mod config;
mod kind;
mod server;

pub use client::{PlaneClient, Responses};
pub use config::RequestPlaneConfig;
pub use kind::{ENV_REQUEST_PLANE, RequestPlaneKind};
pub use server::PlaneServer;
