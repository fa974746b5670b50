//! [`PlaneClient`]: requests to any instance, over the plane its address belongs to, and
//! [`Responses`], the stream that comes back whichever plane carried it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::config::RequestPlaneConfig;
use super::kind::RequestPlaneKind;
use crate::nats::NatsLink;
#[cfg(feature = "http")]
use crate::planes::request::http::{HttpClient, HttpResponses};
#[cfg(feature = "nats")]
use crate::planes::request::nats::{NatsRequestClient, NatsResponses};
use crate::planes::request::{Request, RequestError, RequestPlaneClient, StartError};
use crate::tcp::{ResponseStream, TcpClient};

/// The responses of a request, whichever plane carried it. Dropping it before the end
/// cancels the request on the server.
pub enum Responses {
    Tcp(ResponseStream),
    #[cfg(feature = "nats")]
    Nats(NatsResponses),
    #[cfg(feature = "http")]
    Http(HttpResponses),
}

impl Stream for Responses {
    type Item = Result<Bytes, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Tcp(stream) => stream.poll_next_unpin(cx),
            #[cfg(feature = "nats")]
            Self::Nats(stream) => stream.poll_next_unpin(cx),
            #[cfg(feature = "http")]
            Self::Http(stream) => stream.poll_next_unpin(cx),
        }
    }
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plane = match self {
            Self::Tcp(_) => RequestPlaneKind::Tcp,
            #[cfg(feature = "nats")]
            Self::Nats(_) => RequestPlaneKind::Nats,
            #[cfg(feature = "http")]
            Self::Http(_) => RequestPlaneKind::Http,
        };
        write!(f, "Responses({plane})")
    }
}

/// A client of every plane this build has: requests go out over the plane an instance
/// serves on ([`request_on`](Self::request_on)), or over the configured one through
/// [`RequestPlaneClient`]. TCP and HTTP/2 clients connect on demand; the NATS client
/// needs its connection up front, so it exists only when NATS is the configured plane.
/// Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct PlaneClient {
    plane: RequestPlaneKind,
    tcp: Arc<TcpClient>,
    #[cfg(feature = "nats")]
    nats: Option<NatsRequestClient>,
    #[cfg(feature = "http")]
    http: Option<HttpClient>,
}

impl PlaneClient {
    /// Clients with `config`'s settings; on NATS, connects (or shares `nats`'s
    /// connection) within `NATS_CONNECT_TIMEOUT`.
    pub async fn connect(config: &RequestPlaneConfig, nats: &NatsLink) -> Result<Self, StartError> {
        let config = config.clone().validate()?;
        #[cfg(feature = "nats")]
        let nats = match config.plane {
            RequestPlaneKind::Nats => {
                let connection = nats
                    .client()
                    .await
                    .map_err(|err| StartError::plane("nats", err))?;
                Some(NatsRequestClient::new(connection, config.nats.clone()).await?)
            }
            _ => None,
        };
        #[cfg(not(feature = "nats"))]
        let _ = nats;
        Ok(Self {
            plane: config.plane,
            tcp: Arc::new(TcpClient::new(config.tcp.clone())?),
            #[cfg(feature = "nats")]
            nats,
            #[cfg(feature = "http")]
            http: Some(HttpClient::new(config.http.clone())?),
        })
    }

    /// A client of the TCP plane alone, over `tcp`: an instance on another plane is a
    /// [`RequestError::PlaneUnavailable`].
    pub fn tcp(tcp: Arc<TcpClient>) -> Self {
        Self {
            plane: RequestPlaneKind::Tcp,
            tcp,
            #[cfg(feature = "nats")]
            nats: None,
            #[cfg(feature = "http")]
            http: None,
        }
    }

    /// The plane [`RequestPlaneClient::request`] uses.
    pub fn plane(&self) -> RequestPlaneKind {
        self.plane
    }

    /// Sends `request` to `address` over `plane`.
    pub async fn request_on(
        &self,
        plane: RequestPlaneKind,
        address: &str,
        request: Request,
    ) -> Result<Responses, RequestError> {
        match plane {
            RequestPlaneKind::Tcp => self.tcp.call(address, request).await.map(Responses::Tcp),
            #[cfg(feature = "nats")]
            RequestPlaneKind::Nats => match &self.nats {
                Some(nats) => nats.request(address, request).await.map(Responses::Nats),
                None => Err(RequestError::PlaneUnavailable {
                    plane: plane.to_string(),
                    hint: "connect with DYN_REQUEST_PLANE=nats (and NATS_SERVER)",
                }),
            },
            #[cfg(feature = "http")]
            RequestPlaneKind::Http => match &self.http {
                Some(http) => http.call(address, request).await.map(Responses::Http),
                None => Err(RequestError::PlaneUnavailable {
                    plane: plane.to_string(),
                    hint: "this client was made for TCP alone (PlaneClient::tcp)",
                }),
            },
            #[allow(unreachable_patterns)]
            other => Err(RequestError::PlaneUnavailable {
                plane: other.to_string(),
                hint: "this build lacks its cargo feature (rebuild with --features nats or http)",
            }),
        }
    }

    /// Closes every pooled connection once the requests still running on it end.
    pub fn close_connections(&self) {
        self.tcp.close_connections();
        #[cfg(feature = "http")]
        if let Some(http) = &self.http {
            http.close_connections();
        }
    }
}

impl RequestPlaneClient for PlaneClient {
    type Responses = Responses;

    async fn request(&self, address: &str, request: Request) -> Result<Responses, RequestError> {
        self.request_on(self.plane, address, request).await
    }
}
