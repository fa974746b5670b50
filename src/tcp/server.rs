//! The shared TCP listener: one per process, hosting every endpoint.
//!
//! Lifecycle (after mini-redis): an accept loop capped by a connection semaphore with
//! back-off on accept errors; one task per connection (see `server_conn`); a shutdown
//! token that stops accepting, and a phase each connection is told (drain: go-away;
//! abort: end what is left); a task tracker that `shutdown` waits on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::config::TcpConfig;
use super::server_conn::serve_connection;
use super::server_state::{ConnectionTimeouts, Phase, Shared};
use crate::planes::request::{
    EndpointPath, Handler, RegisterError, RequestPlaneServer, ServerLimits,
};
use crate::vocab::detect_local_ip;

/// What a [`TcpServer`] is started with: the plane's settings and the limits every
/// request-plane server shares.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub tcp: TcpConfig,
    /// Concurrency per endpoint, connections, drain timeout.
    pub limits: ServerLimits,
}

/// The TCP request-plane server. Create with [`TcpServer::bind`], add endpoints with
/// [`RequestPlaneServer::register`].
pub struct TcpServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    drain_timeout: Duration,
}

impl TcpServer {
    /// Binds `DYN_TCP_RPC_HOST:DYN_TCP_RPC_PORT` (all interfaces and an OS-assigned port
    /// by default) and starts accepting.
    pub async fn bind(config: ServerConfig) -> io::Result<Self> {
        let tcp = config.tcp.clone().validate().map_err(io::Error::other)?;
        let limits = config.limits.clone().validate().map_err(io::Error::other)?;
        let bind_ip = tcp.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let bind_addr = SocketAddr::new(bind_ip, tcp.bind_port());
        let listener = TcpListener::bind(bind_addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {bind_addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let advertised_ip = tcp.host.unwrap_or_else(detect_local_ip);
        let shared = Arc::new(Shared::new(
            limits.max_concurrent_requests,
            tcp.max_message_size,
            tcp.shrink_message_size,
            ConnectionTimeouts {
                frame: tcp.frame_timeout,
                idle: tcp.idle_timeout,
            },
        ));
        let connection_limit = Arc::new(Semaphore::new(limits.max_connections));
        shared
            .tracker
            .spawn(accept_loop(listener, Arc::clone(&shared), connection_limit));
        tracing::info!(%local_addr, "request plane listening");
        Ok(Self {
            shared,
            local_addr,
            advertised: SocketAddr::new(advertised_ip, local_addr.port()),
            drain_timeout: limits.drain_timeout,
        })
    }

    /// The address the listener is bound to (the OS-assigned port included).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Read-buffer memory each open connection holds: after large messages each returns
    /// to the small initial size within about a second (the spare large buffer kept for
    /// back-to-back large messages is given back).
    pub fn connection_buffer_capacities(&self) -> Vec<usize> {
        self.shared.buffer_capacities()
    }
}

impl RequestPlaneServer for TcpServer {
    async fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        self.shared.endpoints.register(path, handler)
    }

    fn unregister(&self, path: &EndpointPath) -> bool {
        self.shared.endpoints.unregister(path)
    }

    fn address(&self, _path: &EndpointPath) -> String {
        self.advertised.to_string()
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        shared.shutdown.cancel();
        shared.raise(Phase::Draining);
        shared.tracker.close();
        if tokio::time::timeout(self.drain_timeout, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?self.drain_timeout,
                "drain timeout passed; cancelling in-flight requests"
            );
            shared.raise(Phase::Aborting);
            shared.tracker.wait().await;
        }
    }
}

impl Drop for TcpServer {
    /// A server dropped without `shutdown` stops at once: nothing keeps its port open.
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.raise(Phase::Aborting);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, connection_limit: Arc<Semaphore>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = Duration::from_millis(1);
    let connection_ids = AtomicU64::new(0);
    loop {
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            permit = Arc::clone(&connection_limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(1);
                if let Err(err) = socket.set_nodelay(true) {
                    tracing::debug!(%peer, %err, "could not set TCP_NODELAY");
                }
                let id = connection_ids.fetch_add(1, Ordering::Relaxed);
                let shared2 = Arc::clone(&shared);
                shared.tracker.spawn(async move {
                    serve_connection(socket, peer, id, shared2).await;
                    drop(permit);
                });
            }
            Err(err) => {
                // Usually EMFILE: wait for descriptors to free up instead of spinning.
                tracing::warn!(%err, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
