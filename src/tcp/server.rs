//! The shared TCP listener: one per process, hosting every endpoint.
//!
//! Lifecycle (after mini-redis): an accept loop capped by a connection semaphore with
//! back-off on accept errors; one task per connection (see `server_conn`); a shutdown
//! token that stops accepting, and a phase each connection is told (drain: go-away;
//! abort: end what is left); a task tracker that `shutdown` waits on.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::server_conn::serve_connection;
use crate::config::TcpConfig;
use crate::planes::{EndpointPath, Handler, RegisterError, RequestPlaneServer};
use crate::sync::lock;

/// Server settings beyond the shared [`TcpConfig`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub tcp: TcpConfig,
    /// Requests one endpoint handles at once, across all connections (default 1024). A
    /// request beyond this is answered `Overloaded` at once instead of queueing, and a
    /// saturated endpoint takes no slots from the others.
    pub max_concurrent_requests: usize,
    /// Open connections (default 10,000). At the cap, new connections wait in the
    /// kernel's accept backlog.
    pub max_connections: usize,
    /// How long `shutdown` lets in-flight requests finish before cancelling them (10 s).
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            tcp: TcpConfig::default(),
            max_concurrent_requests: 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A registered handler and its concurrency slots.
pub(super) struct Endpoint {
    pub(super) handler: Arc<dyn Handler>,
    pub(super) slots: Arc<Semaphore>,
}

/// What the server asks of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    Serving = 0,
    /// Send GOAWAY, refuse new requests, let open streams finish.
    Draining = 1,
    /// The drain timeout passed: end open streams with `ShuttingDown`.
    Aborting = 2,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Serving,
            1 => Self::Draining,
            _ => Self::Aborting,
        }
    }
}

/// One connection's view of the server's phase. Its loop polls this on every turn, so
/// it costs a few atomic operations, not the lock of a token every connection shares.
#[derive(Default)]
pub(super) struct PhaseSignal {
    phase: AtomicU8,
    waker: AtomicWaker,
}

impl PhaseSignal {
    fn raise(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Ready with the phase once it is past `seen`.
    pub(super) fn poll_past(&self, seen: Phase, cx: &mut Context<'_>) -> Poll<Phase> {
        self.waker.register(cx.waker());
        let phase = Phase::from_u8(self.phase.load(Ordering::SeqCst));
        if phase > seen {
            Poll::Ready(phase)
        } else {
            Poll::Pending
        }
    }
}

/// An open connection, as the server sees it.
pub(super) struct ConnectionEntry {
    /// Read-buffer memory it holds.
    held: Arc<AtomicUsize>,
    signal: Arc<PhaseSignal>,
}

/// When a connection is reaped (`DYN_TCP_FRAME_TIMEOUT`, `DYN_TCP_IDLE_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionTimeouts {
    /// A frame must arrive whole within this of its first byte; queued output must move
    /// at least this often.
    pub(super) frame: Duration,
    /// A connection with nothing open and no traffic for this long is closed.
    pub(super) idle: Duration,
}

/// State shared by the accept loop, every connection and every request task.
pub(super) struct Shared {
    pub(super) endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
    pub(super) max_concurrent_requests: usize,
    pub(super) max_frame_len: usize,
    pub(super) shrink_threshold: usize,
    pub(super) timeouts: ConnectionTimeouts,
    /// Fired by `shutdown`: stop accepting.
    pub(super) shutdown: CancellationToken,
    /// The phase every connection is told (`raise`).
    phase: AtomicU8,
    pub(super) tracker: TaskTracker,
    /// The open connections, by connection number.
    connections: Mutex<HashMap<u64, ConnectionEntry>>,
}

impl Shared {
    /// Tells every connection, open now or registered later, that the server is in
    /// `phase`.
    fn raise(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::SeqCst);
        for entry in lock(&self.connections).values() {
            entry.signal.raise(phase);
        }
    }

    /// Adds connection `id`, holding `held` bytes of read buffer; its phase signal
    /// starts at the server's phase. Under the map's lock, as `raise` iterates it: a
    /// connection is either seen by `raise` or sees the phase `raise` set.
    pub(super) fn register(&self, id: u64, held: Arc<AtomicUsize>) -> Arc<PhaseSignal> {
        let mut connections = lock(&self.connections);
        let signal = Arc::new(PhaseSignal::default());
        signal.raise(Phase::from_u8(self.phase.load(Ordering::SeqCst)));
        let entry = ConnectionEntry {
            held,
            signal: Arc::clone(&signal),
        };
        connections.insert(id, entry);
        signal
    }

    pub(super) fn deregister(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// The endpoint serving `path`: an exact match or, for a path without an instance id
    /// (`namespace/component/endpoint`), the one instance of that endpoint hosted here.
    pub(super) fn endpoint(&self, path: &str) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = endpoints.get(path) {
            return Some(Arc::clone(endpoint));
        }
        if path.bytes().filter(|b| *b == b'/').count() != 2 {
            return None;
        }
        let mut instances = endpoints.iter().filter(|(key, _)| {
            key.strip_prefix(path)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|instance| !instance.contains('/'))
        });
        match (instances.next(), instances.next()) {
            (Some((_, endpoint)), None) => Some(Arc::clone(endpoint)),
            _ => None,
        }
    }
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
        let bind_ip = tcp.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let bind_addr = SocketAddr::new(bind_ip, tcp.bind_port());
        let listener = TcpListener::bind(bind_addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {bind_addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let advertised_ip = tcp.host.unwrap_or_else(super::addr::detect_local_ip);
        let shared = Arc::new(Shared {
            endpoints: RwLock::default(),
            max_concurrent_requests: config.max_concurrent_requests,
            max_frame_len: tcp.max_message_size,
            shrink_threshold: tcp.shrink_message_size,
            timeouts: ConnectionTimeouts {
                frame: tcp.frame_timeout,
                idle: tcp.idle_timeout,
            },
            shutdown: CancellationToken::new(),
            phase: AtomicU8::new(Phase::Serving as u8),
            tracker: TaskTracker::new(),
            connections: Mutex::default(),
        });
        let connection_limit = Arc::new(Semaphore::new(config.max_connections));
        shared
            .tracker
            .spawn(accept_loop(listener, Arc::clone(&shared), connection_limit));
        tracing::info!(%local_addr, "request plane listening");
        Ok(Self {
            shared,
            local_addr,
            advertised: SocketAddr::new(advertised_ip, local_addr.port()),
            drain_timeout: config.drain_timeout,
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
        lock(&self.shared.connections)
            .values()
            .map(|c| c.held.load(Ordering::Relaxed))
            .collect()
    }
}

impl RequestPlaneServer for TcpServer {
    async fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        let mut endpoints = self
            .shared
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let key = path.to_string();
        if endpoints.contains_key(&key) {
            return Err(RegisterError::Duplicate(key));
        }
        let endpoint = Endpoint {
            handler: Arc::new(handler),
            slots: Arc::new(Semaphore::new(self.shared.max_concurrent_requests)),
        };
        endpoints.insert(key, Arc::new(endpoint));
        Ok(())
    }

    fn unregister(&self, path: &EndpointPath) -> bool {
        let mut endpoints = self
            .shared
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner());
        endpoints.remove(&path.to_string()).is_some()
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
