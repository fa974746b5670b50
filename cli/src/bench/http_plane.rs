//! The HTTP/2 request plane under test (`bench --plane http`, feature `http`): an
//! `HttpServer` with the same echo endpoints as the TCP server, beside it in the server
//! process (or this one, `--in-process`), and an `HttpClient` here.

#[cfg(feature = "http")]
pub(crate) use built::{HttpEcho, HttpPlane};
#[cfg(not(feature = "http"))]
pub(crate) use not_built::HttpEcho;

#[cfg(feature = "http")]
mod built {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use bytes::Bytes;
    use planewire::planes::request::http::{HttpClient, HttpConfig, HttpServer};
    use planewire::planes::request::{RequestPlaneServer, ServerLimits};
    use planewire::vocab::Utf8Bytes;

    use super::super::BenchError;
    use super::super::plane::{PlaneCaller, echo_path};
    use crate::echo::echo_handler;

    const SYSTEM: &str = "planewire http";

    /// Defaults, not the `DYN_*` environment, on loopback with an OS-assigned port.
    fn config() -> HttpConfig {
        HttpConfig {
            host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: 0,
            ..HttpConfig::default()
        }
    }

    /// The server side: an echo endpoint per response count.
    pub(crate) struct HttpEcho {
        server: HttpServer,
    }

    impl HttpEcho {
        pub async fn start(response_counts: &[usize]) -> Result<Self, BenchError> {
            let server = HttpServer::bind(config(), ServerLimits::default())
                .await
                .map_err(BenchError::io("starting the HTTP/2 server"))?;
            for &responses in response_counts {
                server
                    .register(&echo_path(responses), echo_handler(responses))
                    .await
                    .map_err(|err| {
                        BenchError::Worker(format!("registering an HTTP/2 echo endpoint: {err}"))
                    })?;
            }
            Ok(Self { server })
        }

        /// What its clients are given, `host:port/root`.
        pub fn address(&self) -> Option<String> {
            let path = echo_path(1);
            Some(self.server.address(&path))
        }

        pub async fn shutdown(self) {
            self.server.shutdown().await;
        }
    }

    /// The client side.
    pub(crate) struct HttpPlane {
        client: Arc<HttpClient>,
        address: Arc<str>,
    }

    impl HttpPlane {
        pub fn connect(address: &str) -> Result<Self, BenchError> {
            Ok(Self {
                client: Arc::new(HttpClient::new(config())?),
                address: address.into(),
            })
        }

        pub fn callers(
            &self,
            payload: &Bytes,
            responses: usize,
            concurrency: usize,
        ) -> Vec<PlaneCaller<HttpClient>> {
            let path = Utf8Bytes::from(&echo_path(responses));
            let caller = PlaneCaller::new(SYSTEM, &self.client, &self.address, path, payload);
            vec![caller.expecting(responses); concurrency]
        }
    }
}

#[cfg(not(feature = "http"))]
mod not_built {
    use super::super::BenchError;

    /// Nothing to serve without the `http` feature.
    pub(crate) struct HttpEcho;

    impl HttpEcho {
        pub async fn start(_response_counts: &[usize]) -> Result<Self, BenchError> {
            Ok(Self)
        }

        pub fn address(&self) -> Option<String> {
            None
        }

        pub async fn shutdown(self) {}
    }
}
