//! The TCP request plane, the default: one shared listener per process ([`TcpServer`])
//! and a pooled, multiplexed client ([`TcpClient`], its connections pooled by
//! [`crate::pool`]). Every response returns on the connection that carried its request;
//! the frames are [`crate::codec`]'s and the wire is specified in `PROTOCOL.md`.

mod client;
mod client_conn;
mod client_writer;
mod config;
mod io;
mod server;
mod server_conn;
mod server_state;
mod stream_slot;
mod stream_task;

pub use client::{ResponseStream, TcpClient};
pub use config::{
    ENV_CHANNEL_BUFFER, ENV_CONNECT_TIMEOUT, ENV_FRAME_TIMEOUT, ENV_IDLE_TIMEOUT,
    ENV_MAX_MESSAGE_SIZE, ENV_POOL_SIZE, ENV_RPC_HOST, ENV_RPC_PORT, ENV_SHRINK_MESSAGE_SIZE,
    ENV_TCP_REQUEST_TIMEOUT, TcpConfig,
};
pub use server::{ServerConfig, TcpServer};
