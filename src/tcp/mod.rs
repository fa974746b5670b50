//! The TCP request plane: one shared listener per process ([`TcpServer`]) and a pooled,
//! multiplexed client ([`TcpClient`]). Every response returns on the connection that
//! carried its request; see `PROTOCOL.md`.

pub(crate) mod addr;
mod client;
mod client_conn;
mod client_writer;
mod io;
mod server;
mod server_conn;
mod stream_slot;
mod stream_task;

pub use client::{ResponseStream, TcpClient};
pub(crate) use client_conn::ClientConnection;
pub use server::{ServerConfig, TcpServer};
