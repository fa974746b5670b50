//! The TCP request-plane client: pooled, multiplexed, with deadlines and cancel-on-drop.

use tokio::time::Instant;

use crate::codec::RequestFrame;
use crate::config::TcpConfig;
use crate::planes::{Request, RequestError, RequestPlaneClient};
use crate::pool::Pools;

pub use super::client_conn::ResponseStream;
use super::client_conn::StartError;

/// Sends requests to TCP request-plane servers. Cheap to share: wrap it in an `Arc`.
pub struct TcpClient {
    config: TcpConfig,
    pools: Pools,
}

impl TcpClient {
    /// A client with `config` (validated here).
    pub fn new(config: TcpConfig) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            config: config.validate()?,
            pools: Pools::default(),
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
    /// is made or byte written. `DYN_TCP_REQUEST_TIMEOUT` bounds the whole request, from
    /// this call to the last response.
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
            .map_err(RequestError::from_encode)?;
        let pool = self.pools.get(address, &self.config);
        let start = async {
            let mut frame = frame;
            // A connection the server is closing (idle, or draining) hands the request
            // back unsent; the pool no longer picks that connection, so this ends.
            loop {
                let conn = pool.connection().await?;
                match conn.start(frame, len, deadline, timeout).await {
                    Ok(stream) => return Ok(stream),
                    Err(StartError::GoingAway(request)) => frame = request,
                    Err(StartError::Failed(err)) => return Err(err),
                }
            }
        };
        tokio::time::timeout_at(deadline, start)
            .await
            .map_err(|_| RequestError::Timeout { timeout })?
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
        self.pools
            .existing(address)
            .map_or_else(Vec::new, |pool| pool.read_buffer_capacities())
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
