//! The system under test: a planewire `TcpServer` with echo endpoints and a `TcpClient`,
//! talking over 127.0.0.1 with the default settings, in one process or two.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::BenchError;
use super::driver::Caller;
use crate::echo::echo_handler;
use planewire::codec::HEADER_LEN;
use planewire::planes::request::{EndpointPath, Request, RequestPlaneClient, RequestPlaneServer};
use planewire::tcp::TcpConfig;
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};
use planewire::vocab::Utf8Bytes;

const SYSTEM: &str = "planewire";

/// Defaults, not the `DYN_*` environment: the figures are for the embedded default.
fn tcp_config() -> TcpConfig {
    TcpConfig {
        host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ..TcpConfig::default()
    }
}

/// The endpoint that answers each request with `responses` copies of its payload.
pub(super) fn echo_path(responses: usize) -> EndpointPath {
    let name = match responses {
        1 => "unary".to_owned(),
        k => format!("stream{k}"),
    };
    EndpointPath::new("bench", "echo", name, 1).expect("constant, valid path")
}

/// The server side: a planewire server with an echo endpoint per response count.
pub(crate) struct PlanewireServer {
    server: TcpServer,
}

impl PlanewireServer {
    pub async fn start(
        response_counts: impl IntoIterator<Item = usize>,
    ) -> Result<Self, BenchError> {
        let server = TcpServer::bind(ServerConfig {
            tcp: tcp_config(),
            ..ServerConfig::default()
        })
        .await
        .map_err(BenchError::io("starting the planewire server"))?;
        for responses in response_counts {
            server
                .register(&echo_path(responses), echo_handler(responses))
                .await
                .map_err(|err| {
                    BenchError::Worker(format!("registering an echo endpoint: {err}"))
                })?;
        }
        Ok(Self { server })
    }

    pub fn address(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The client side, for a [`PlanewireServer`] in this process or another.
pub(crate) struct Planewire {
    client: Arc<TcpClient>,
    address: Arc<str>,
}

impl Planewire {
    pub fn connect(address: SocketAddr) -> Result<Self, BenchError> {
        Ok(Self {
            client: Arc::new(TcpClient::new(tcp_config())?),
            address: address.to_string().into(),
        })
    }

    /// The largest unary payload whose request frame fits `DYN_TCP_MAX_MESSAGE_SIZE`: the
    /// frame also carries the fixed header and the endpoint path.
    pub fn max_unary_payload(&self) -> usize {
        let path = Utf8Bytes::from(&echo_path(1));
        self.client.config().max_message_size - HEADER_LEN - path.len()
    }

    pub fn callers(
        &self,
        payload: &Bytes,
        responses: usize,
        concurrency: usize,
    ) -> Vec<PlaneCaller<TcpClient>> {
        let path = Utf8Bytes::from(&echo_path(responses));
        let caller = PlaneCaller::new(SYSTEM, &self.client, &self.address, path, payload);
        vec![caller.expecting(responses); concurrency]
    }
}

/// One caller of an echo endpoint on any request plane: sends the payload and checks
/// that `responses` responses of the same size come back.
pub(crate) struct PlaneCaller<C> {
    pub(super) system: &'static str,
    pub(super) client: Arc<C>,
    pub(super) address: Arc<str>,
    pub(super) path: Utf8Bytes,
    pub(super) payload: Bytes,
    pub(super) responses: usize,
}

impl<C> PlaneCaller<C> {
    /// A caller of `path` at `address` that expects one response per request.
    pub(super) fn new(
        system: &'static str,
        client: &Arc<C>,
        address: &Arc<str>,
        path: Utf8Bytes,
        payload: &Bytes,
    ) -> Self {
        Self {
            system,
            client: Arc::clone(client),
            address: Arc::clone(address),
            path,
            payload: payload.clone(),
            responses: 1,
        }
    }

    /// This caller, expecting `responses` responses per request.
    pub(super) fn expecting(self, responses: usize) -> Self {
        Self { responses, ..self }
    }
}

/// Payloads up to this size are copied for each caller (at most 4 MiB for 64 callers).
const OWN_COPY_MAX: usize = 64 * 1024;

// By hand: a derive would want `C: Clone`, and would share the buffers.
impl<C> Clone for PlaneCaller<C> {
    /// Another caller with its own copy of the path and (up to [`OWN_COPY_MAX`]) the
    /// payload, as independent users' requests have: sharing one buffer would have every
    /// caller on every thread bump one reference count on one cache line per request, a
    /// cost the floor, which writes from a buffer of its own, does not pay. Larger payloads
    /// stay shared, where that count is lost in the cost of moving the bytes.
    fn clone(&self) -> Self {
        let payload = if self.payload.len() <= OWN_COPY_MAX {
            Bytes::copy_from_slice(&self.payload)
        } else {
            self.payload.clone()
        };
        Self {
            system: self.system,
            client: Arc::clone(&self.client),
            address: Arc::clone(&self.address),
            path: Utf8Bytes::from(self.path.as_str().to_owned()),
            payload,
            responses: self.responses,
        }
    }
}

impl<C: RequestPlaneClient + 'static> Caller for PlaneCaller<C> {
    async fn call(&mut self) -> Result<(), BenchError> {
        // Path and payload clones are reference-count bumps: nothing is copied per request.
        let request = Request::new(self.path.clone(), self.payload.clone());
        let mut responses = self.client.request(&self.address, request).await?;
        let bad = |detail| BenchError::BadResponse {
            system: self.system,
            detail,
        };
        let mut received = 0;
        while let Some(response) = responses.next().await {
            let len = response?.len();
            if len != self.payload.len() {
                return Err(bad(format!(
                    "a {len}-byte response to a {}-byte request",
                    self.payload.len()
                )));
            }
            received += 1;
        }
        if received != self.responses {
            return Err(bad(format!(
                "{received} responses where {} were expected",
                self.responses
            )));
        }
        Ok(())
    }
}
