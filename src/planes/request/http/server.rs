//! [`HttpServer`]: one HTTP/2 listener per process, hosting every endpoint. The
//! lifecycle is the TCP server's: an accept loop capped by a connection semaphore, with
//! back-off on accept errors; one task per connection; a shutdown that stops accepting,
//! refuses new requests with `ShuttingDown`, lets open streams finish for the drain
//! timeout, sends GOAWAY on each connection once its streams are done, then ends what is
//! left with `ShuttingDown`.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::HttpConfig;
use super::service::Service;
use crate::planes::request::{
    EndpointTable, Handler, RegisterError, RequestPlaneServer, ServerLimits,
};
use crate::vocab::{EndpointPath, detect_local_ip};

/// How long a connection may take to send its last records once the drain timeout has
/// passed and its streams were told to end; then it is closed.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 request-plane server. Create with [`HttpServer::bind`], add endpoints with
/// [`RequestPlaneServer::register`].
pub struct HttpServer {
    service: Arc<Service>,
    tracker: TaskTracker,
    /// Stops the accept loop.
    stop_accepting: CancellationToken,
    local_addr: SocketAddr,
    /// `host:port{root}`, what clients are given.
    address: String,
    drain_timeout: Duration,
}

impl HttpServer {
    /// Binds `DYN_HTTP_RPC_HOST:DYN_HTTP_RPC_PORT` (every interface, port 8888 by
    /// default) and starts accepting.
    pub async fn bind(config: HttpConfig, limits: ServerLimits) -> io::Result<Self> {
        let config = config.validate().map_err(io::Error::other)?;
        let limits = limits.validate().map_err(io::Error::other)?;
        let bind_ip = config.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let bind_addr = SocketAddr::new(bind_ip, config.port);
        let listener = TcpListener::bind(bind_addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind {bind_addr} (DYN_HTTP_RPC_HOST, DYN_HTTP_RPC_PORT): {e}"),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let advertised = SocketAddr::new(
            config.host.unwrap_or_else(detect_local_ip),
            local_addr.port(),
        );
        let service = Arc::new(Service {
            endpoints: EndpointTable::new(limits.max_concurrent_requests),
            prefix: format!("{}/", config.root_path),
            max_message_size: config.max_message_size,
            draining: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let accept = AcceptLoop {
            listener,
            service: Arc::clone(&service),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            builder: builder(&config),
            tracker: tracker.clone(),
            stop: stop_accepting.clone(),
        };
        tracker.spawn(accept.run());
        tracing::info!(%local_addr, "HTTP/2 request plane listening");
        Ok(Self {
            service,
            tracker,
            stop_accepting,
            local_addr,
            address: format!("{advertised}{}", config.root_path),
            drain_timeout: limits.drain_timeout,
        })
    }

    /// The address the listener is bound to (the OS-assigned port included).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

fn builder(config: &HttpConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_frame_size(config.max_frame_size as u32)
        .max_concurrent_streams(config.max_concurrent_streams)
        .adaptive_window(config.adaptive_window)
        .keep_alive_interval(config.keep_alive_interval)
        .keep_alive_timeout(config.keep_alive_timeout);
    builder
}

impl RequestPlaneServer for HttpServer {
    async fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        self.service.endpoints.register(path, handler)
    }

    fn unregister(&self, path: &EndpointPath) -> bool {
        self.service.endpoints.unregister(path)
    }

    /// `host:port{root}`: a client sends `POST http://{address}/{path}`.
    fn address(&self, _path: &EndpointPath) -> String {
        self.address.clone()
    }

    async fn shutdown(&self) {
        self.stop_accepting.cancel();
        self.service.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?self.drain_timeout,
                "drain timeout passed; ending the streams still open"
            );
            self.service.abort.cancel();
            self.tracker.wait().await;
        }
    }
}

impl Drop for HttpServer {
    /// A server dropped without `shutdown` stops at once: nothing keeps its port open.
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.service.draining.cancel();
        self.service.abort.cancel();
    }
}

struct AcceptLoop {
    listener: TcpListener,
    service: Arc<Service>,
    connections: Arc<Semaphore>,
    builder: http2::Builder<TokioExecutor>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl AcceptLoop {
    async fn run(self) {
        const MAX_BACKOFF: Duration = Duration::from_secs(1);
        let mut backoff = Duration::from_millis(1);
        loop {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return,
                permit = Arc::clone(&self.connections).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((socket, peer)) => {
                    backoff = Duration::from_millis(1);
                    if let Err(err) = socket.set_nodelay(true) {
                        tracing::debug!(%peer, %err, "could not set TCP_NODELAY");
                    }
                    let connection = self.serve(socket, permit);
                    self.tracker.spawn(connection);
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

    /// One connection until the peer closes it, or through the server's drain.
    ///
    /// On drain the connection keeps serving and sends GOAWAY only once none of its own
    /// requests is open (`open`). The reason is hyper's client (1.x, `ClientTask::poll`
    /// in `proto/h2/client.rs`): right after `send_request` it calls `poll_ready` again,
    /// and if a GOAWAY has come in by then it fails the request it has just sent and
    /// drops its response future. The stream is reset (CANCEL) and the caller gets
    /// "connection error received: not a result of an error", although the GOAWAY's
    /// `last_stream_id` covers the stream and the server ran the request. The window is
    /// short, but on a loaded machine the client's thread can be descheduled in it for a
    /// whole round trip. While the GOAWAY waits, `draining` makes the service refuse new
    /// requests (503 `ShuttingDown`), so the only requests that run were admitted before
    /// the drain, and the GOAWAY goes out after they are done.
    fn serve(
        &self,
        socket: TcpStream,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let service = Arc::clone(&self.service);
        let draining = service.draining.clone();
        let abort = service.abort.clone();
        let open = TaskTracker::new();
        let respond = {
            let open = open.clone();
            service_fn(move |request| {
                let service = Arc::clone(&service);
                // Taken when hyper accepts the stream, before the service checks
                // `draining`: a request either counts here or is refused.
                let token = open.token();
                async move { Ok::<_, Infallible>(service.respond(request, token).await) }
            })
        };
        let connection = self.builder.serve_connection(TokioIo::new(socket), respond);
        async move {
            let _permit = permit;
            tokio::pin!(connection);
            // After the drain timeout, streams end with `ShuttingDown`; a peer that does
            // not read them does not keep the connection past the grace.
            let hard_stop = async {
                abort.cancelled().await;
                tokio::time::sleep(ABORT_GRACE).await;
            };
            tokio::pin!(hard_stop);
            let quiet = async {
                draining.cancelled().await;
                open.close();
                open.wait().await;
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = hard_stop.as_mut() => Ok(()),
                () = quiet => {
                    // GOAWAY: the peer opens no new stream, and the connection closes
                    // once the streams still open (refusals racing this) are done.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = connection.as_mut() => result,
                        () = hard_stop => Ok(()),
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "HTTP/2 connection ended with an error");
            }
        }
    }
}
