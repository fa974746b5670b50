//! The planes: [`request`] (RPC: the neutral traits, the NATS and HTTP/2 planes, and the
//! dispatch over them; TCP is [`crate::tcp`]), [`discovery`] (who serves what),
//! [`events`] (pub/sub), and [`routing`], which sends requests to the instances
//! discovery reports.

pub mod discovery;
pub mod events;
pub mod request;
pub mod routing;
