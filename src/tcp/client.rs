//! The TCP request-plane client: pooled, multiplexed, with deadlines and cancel-on-drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::time::Instant;

pub use super::client_conn::ResponseStream;
use super::client_conn::{ClientConnection, StartError};
use super::config::{ENV_MAX_MESSAGE_SIZE, ENV_TCP_REQUEST_TIMEOUT, TcpConfig};
use crate::codec::{CodecError, RequestFrame};
use crate::config::ConfigError;
use crate::planes::request::{Request, RequestError, RequestPlaneClient};
use crate::pool::{Connector, PooledConnection, Pools};

/// Sends requests to TCP request-plane servers. Cheap to share: wrap it in an `Arc`.
pub struct TcpClient {
    config: TcpConfig,
    pools: Pools<TcpConnector>,
}

/// Opens the pool's connections with the client's settings.
struct TcpConnector {
    config: TcpConfig,
}

impl Connector for TcpConnector {
    type Connection = ClientConnection;

    async fn connect(
        &self,
        address: &str,
        target: SocketAddr,
    ) -> Result<ClientConnection, RequestError> {
        ClientConnection::connect(address, target, &self.config).await
    }
}

impl PooledConnection for ClientConnection {
    fn is_usable(&self) -> bool {
        ClientConnection::is_usable(self)
    }

    fn is_closed(&self) -> bool {
        ClientConnection::is_closed(self)
    }

    fn in_flight(&self) -> usize {
        ClientConnection::in_flight(self)
    }
}

impl TcpClient {
    /// A client with `config` (validated here).
    pub fn new(config: TcpConfig) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        let connector = TcpConnector {
            config: config.clone(),
        };
        Ok(Self {
            pools: Pools::new(connector, config.pool_size),
            config,
        })
    }

    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Closes every pooled connection once the requests still running on it end. Later
    /// calls open new connections.
    pub fn close_connections(&self) {
        self.pools.clear();
    }

    /// Sends `request` to the server at `address` (`host:port`).
    ///
    /// A request over `DYN_TCP_MAX_MESSAGE_SIZE` is refused here, before any connection
    /// is made or byte written. The request timeout (`DYN_TCP_REQUEST_TIMEOUT`, else
    /// `DYN_REQUEST_TIMEOUT`) bounds the whole request, from this call to the last
    /// response.
    pub async fn call(
        &self,
        address: &str,
        request: Request,
    ) -> Result<ResponseStream, RequestError> {
        let timeout = self.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let frame = RequestFrame {
            stream_id: 0,
            path: request.path,
            headers: request.headers,
            payload: request.payload,
            timeout: Some(timeout),
        };
        // Stream id and timeout are fixed-width fields: the checked length stays exact.
        let len = frame
            .checked_len(self.config.max_message_size)
            .map_err(encode_error)?;
        // Set once the start has had to wait; until then no time has passed to speak of,
        // and the request carries the whole timeout without another clock read.
        let waited = AtomicBool::new(false);
        let start = async {
            let mut frame = frame;
            // A connection the server is closing (idle, or draining) hands the request
            // back unsent; the pool no longer picks that connection, so this ends.
            loop {
                let conn = match self.pools.ready_connection(address) {
                    Some(conn) => conn,
                    None => self.pools.get(address).connection().await?,
                };
                match conn.start(frame, len, deadline, &waited).await {
                    Ok(stream) => return Ok(stream),
                    Err(StartError::GoingAway(request)) => frame = request,
                    Err(StartError::Failed(err)) => return Err(err),
                }
            }
        };
        // Usually the request is on its way at the first poll (a pooled connection with
        // room in its queue): only one that has to wait gets a timer, saving a timer
        // handle (a reference count every caller on every thread bumps) per request.
        let mut start = std::pin::pin!(start);
        if let Poll::Ready(started) =
            std::future::poll_fn(|cx| Poll::Ready(start.as_mut().poll(cx))).await
        {
            return started;
        }
        waited.store(true, Ordering::Relaxed);
        tokio::time::timeout_at(deadline, start)
            .await
            .map_err(|_| RequestError::Timeout {
                timeout,
                setting: ENV_TCP_REQUEST_TIMEOUT,
            })?
    }

    /// Open connections to `address`.
    pub fn connection_count(&self, address: &str) -> usize {
        self.pools
            .existing(address)
            .map_or(0, |pool| pool.connection_count())
    }

    /// Read-buffer memory held by each connection to `address` (as on the server's
    /// [`TcpServer::connection_buffer_capacities`](crate::tcp::TcpServer::connection_buffer_capacities)).
    pub fn connection_buffer_capacities(&self, address: &str) -> Vec<usize> {
        self.pools.existing(address).map_or_else(Vec::new, |pool| {
            pool.connections()
                .iter()
                .map(|c| c.read_buffer_capacity())
                .collect()
        })
    }
}

/// A request the codec refuses: over the size limit (nothing was sent), or malformed.
fn encode_error(err: CodecError) -> RequestError {
    match err {
        CodecError::FrameTooLarge { size, max } => RequestError::TooLarge {
            size,
            max,
            limit: ENV_MAX_MESSAGE_SIZE,
            fix: "raise the limit on both sides or split the payload",
        },
        other => RequestError::Encode {
            reason: other.to_string(),
            source: Some(Arc::new(other)),
        },
    }
}

impl RequestPlaneClient for TcpClient {
    type Responses = ResponseStream;

    async fn request(
        &self,
        address: &str,
        request: Request,
    ) -> Result<ResponseStream, RequestError> {
        self.call(address, request).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::codec::{Frame, FrameDecoder};

    /// The REQUEST a raw server reads next from `socket`.
    async fn next_request(
        socket: &mut tokio::net::TcpStream,
        decoder: &mut FrameDecoder,
        buf: &mut bytes::BytesMut,
    ) -> RequestFrame {
        loop {
            match decoder.decode_frame(buf).unwrap() {
                Some(Frame::Request(request)) => return request,
                Some(other) => panic!("expected a REQUEST, got {other:?}"),
                None => assert!(socket.read_buf(buf).await.unwrap() > 0, "closed"),
            }
        }
    }

    #[tokio::test]
    async fn a_request_that_waited_for_its_connection_sends_the_time_left() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let timeout = Duration::from_secs(3600);
        let client = TcpClient::new(TcpConfig {
            request_timeout: timeout,
            ..TcpConfig::default()
        })
        .unwrap();
        let request = || Request::new("ns/component/e", "x");
        // The first call waits for the connect; its REQUEST says how much is left, which
        // on the wire (whole milliseconds, rounded down) is less than the timeout.
        let (first, accepted) = tokio::join!(client.call(&address, request()), listener.accept());
        let _first = first.unwrap();
        let mut socket = accepted.unwrap().0;
        let mut decoder = FrameDecoder::new(1 << 20, 1 << 20);
        let mut buf = decoder.new_buffer();
        let sent = next_request(&mut socket, &mut decoder, &mut buf).await;
        assert!(sent.timeout < Some(timeout), "{:?}", sent.timeout);
        // The second finds the connection open and sends at once: the whole timeout.
        let _second = client.call(&address, request()).await.unwrap();
        let sent = next_request(&mut socket, &mut decoder, &mut buf).await;
        assert_eq!(sent.timeout, Some(timeout));
    }
}
