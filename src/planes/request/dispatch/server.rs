//! [`PlaneServer`]: this process's server on whichever plane is configured.

use super::config::RequestPlaneConfig;
use super::kind::RequestPlaneKind;
use crate::nats::NatsLink;
#[cfg(feature = "http")]
use crate::planes::request::http::HttpServer;
#[cfg(feature = "nats")]
use crate::planes::request::nats::NatsRequestServer;
use crate::planes::request::{
    Handler, RegisterError, RequestPlaneServer, ServerLimits, StartError,
};
use crate::tcp::{ServerConfig, TcpServer};
use crate::vocab::EndpointPath;

/// The server of the plane `DYN_REQUEST_PLANE` names; one per process, hosting many
/// endpoints.
pub enum PlaneServer {
    Tcp(TcpServer),
    #[cfg(feature = "nats")]
    Nats(NatsRequestServer),
    #[cfg(feature = "http")]
    Http(HttpServer),
}

impl PlaneServer {
    /// Binds (TCP, HTTP/2) or subscribes (NATS, on `nats`'s connection) with `config`'s
    /// settings and `limits`.
    pub async fn start(
        config: &RequestPlaneConfig,
        limits: &ServerLimits,
        nats: &NatsLink,
    ) -> Result<Self, StartError> {
        let config = config.clone().validate()?;
        let limits = limits.clone().validate()?;
        let plane = config.plane;
        match plane {
            RequestPlaneKind::Tcp => {
                let server_config = ServerConfig {
                    tcp: config.tcp,
                    limits,
                };
                TcpServer::bind(server_config)
                    .await
                    .map(Self::Tcp)
                    .map_err(|err| StartError::plane(plane.as_str(), err))
            }
            #[cfg(feature = "nats")]
            RequestPlaneKind::Nats => {
                let connection = nats
                    .client()
                    .await
                    .map_err(|err| StartError::plane(plane.as_str(), err))?;
                Ok(Self::Nats(
                    NatsRequestServer::new(connection, limits).await?,
                ))
            }
            #[cfg(feature = "http")]
            RequestPlaneKind::Http => HttpServer::bind(config.http, limits)
                .await
                .map(Self::Http)
                .map_err(|err| StartError::plane(plane.as_str(), err)),
            #[allow(unreachable_patterns)]
            other => {
                let _ = nats;
                Err(other.not_built().into())
            }
        }
    }

    /// The plane it serves on: the `type` of its discovery records.
    pub fn plane(&self) -> RequestPlaneKind {
        match self {
            Self::Tcp(_) => RequestPlaneKind::Tcp,
            #[cfg(feature = "nats")]
            Self::Nats(_) => RequestPlaneKind::Nats,
            #[cfg(feature = "http")]
            Self::Http(_) => RequestPlaneKind::Http,
        }
    }
}

impl RequestPlaneServer for PlaneServer {
    async fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        match self {
            Self::Tcp(server) => server.register(path, handler).await,
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.register(path, handler).await,
            #[cfg(feature = "http")]
            Self::Http(server) => server.register(path, handler).await,
        }
    }

    fn unregister(&self, path: &EndpointPath) -> bool {
        match self {
            Self::Tcp(server) => server.unregister(path),
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.unregister(path),
            #[cfg(feature = "http")]
            Self::Http(server) => server.unregister(path),
        }
    }

    fn address(&self, path: &EndpointPath) -> String {
        match self {
            Self::Tcp(server) => server.address(path),
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.address(path),
            #[cfg(feature = "http")]
            Self::Http(server) => server.address(path),
        }
    }

    async fn shutdown(&self) {
        match self {
            Self::Tcp(server) => server.shutdown().await,
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.shutdown().await,
            #[cfg(feature = "http")]
            Self::Http(server) => server.shutdown().await,
        }
    }
}
