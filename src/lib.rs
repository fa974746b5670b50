//! planewire: the communication planes of a distributed inference runtime.
//!
//! - [`codec`]: the wire format, bytes ⇄ frames, no I/O (specified in `PROTOCOL.md`).
//! - [`tcp`]: the default request plane, a multiplexed framed TCP server and client.
//! - `nats_request` (feature `nats`): the NATS request plane, same traits as [`tcp`].
//! - [`pool`]: client connections per remote address.
//! - [`planes`]: the transport-neutral traits (`RequestPlaneClient`, `RequestPlaneServer`) and
//!   the discovery plane ([`planes::discovery`]).
//! - [`config`]: settings and the `DYN_*` environment.
//! - [`runtime`]: the planes of one process built from the environment, and the
//!   `namespace(…).component(…).endpoint(…)` embedding API.
//! - `bench` (feature `cli`): the latency benchmark against a raw-TCP floor.
//!
//! # Cancel safety
//! Dropping a [`tcp::ResponseStream`] before its end sends a cancel frame; the server's
//! handler sees its `CancellationToken` fire and its response stream is dropped. On the
//! NATS request plane, dropping a `NatsResponses` publishes a cancel to the endpoint's
//! `{subject}.cancel` subject, with the same effect on the server.

#[cfg(feature = "cli")]
pub mod bench;
pub mod codec;
pub mod config;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
pub mod nats_request;
pub mod planes;
pub mod pool;
pub mod runtime;
mod sync;
pub mod tcp;
