//! planewire: the communication planes of a distributed inference runtime.
//!
//! See `README.md` for the architecture and `PROTOCOL.md` for the wire format.

pub mod codec;
pub mod config;
