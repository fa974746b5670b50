//! planewire: the communication planes of a distributed inference runtime.
//!
//! Layers, bottom up (each imports only those before it; within the request plane, the
//! planes import the neutral traits and the dispatch imports the planes):
//! - [`vocab`]: the words every plane shares: endpoint paths, header maps, error codes,
//!   local-address detection, subject escaping.
//! - [`config`]: the toolkit every plane's settings are read with (`from_env()`,
//!   `validate()`), and where each plane's settings live.
//! - [`codec`]: the TCP wire format, bytes ⇄ frames, no I/O (specified in `PROTOCOL.md`).
//! - [`nats`]: the NATS connection the NATS request and event planes share.
//! - [`planes::request`]: the request plane's neutral traits ([`RequestPlaneClient`],
//!   [`RequestPlaneServer`], [`Handler`]) and errors; its planes, TCP ([`tcp`] and
//!   [`pool`]), NATS and HTTP/2 (features `nats`, `http`); and the one dispatch over
//!   them ([`PlaneClient`], [`PlaneServer`], [`Responses`]).
//! - [`planes::discovery`], [`planes::events`]: the discovery and event planes.
//! - [`planes::routing`]: requests to the instances discovery reports.
//! - [`runtime`]: the planes of one process built from the environment, and the
//!   `namespace(…).component(…).endpoint(…)` embedding API.
//!
//! The `planewire` binary and the latency benchmark are a separate package (`cli/`), so a
//! project that depends on this library builds none of their dependencies.
//!
//! # Cancel safety
//! Dropping a response stream before its end cancels the request on the server (a CANCEL
//! frame on TCP, a message to the endpoint's cancel subject on NATS, a stream reset on
//! HTTP/2); the handler's [`CancellationToken`] fires and its response stream is dropped.
//!
//! [`RequestPlaneClient`]: planes::request::RequestPlaneClient
//! [`RequestPlaneServer`]: planes::request::RequestPlaneServer
//! [`Handler`]: planes::request::Handler
//! [`PlaneClient`]: planes::request::PlaneClient
//! [`PlaneServer`]: planes::request::PlaneServer
//! [`Responses`]: planes::request::Responses
//! [`CancellationToken`]: planes::request::CancellationToken

pub mod codec;
pub mod config;
mod hash;
pub mod nats;
pub mod planes;
pub mod pool;
pub mod runtime;
mod sync;
pub mod tcp;
pub mod vocab;

/// The README's Rust examples, compiled as doc tests so that they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
