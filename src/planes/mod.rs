//! The planes' thin traits and their backends.
//!
//! The request plane is [`RequestPlaneClient`] + [`RequestPlaneServer`]; the TCP
//! implementation lives in [`crate::tcp`]. The discovery plane is [`discovery`], the
//! event plane [`events`].

pub mod discovery;
mod error;
pub mod events;
mod request;

pub use error::{HandlerError, RegisterError, RequestError};
pub use request::{
    EndpointPath, Handler, HandlerStream, Request, RequestPlaneClient, RequestPlaneServer,
    unary_handler,
};
