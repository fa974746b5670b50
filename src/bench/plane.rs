//! The system under test: a planewire `TcpServer` with echo endpoints and a `TcpClient`,
//! both in this process, talking over 127.0.0.1 with the default settings.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::driver::Caller;
use super::{BenchError, echo_handler};
use crate::codec::{HEADER_LEN, Utf8Bytes};
use crate::config::TcpConfig;
use crate::planes::{EndpointPath, Request, RequestPlaneClient, RequestPlaneServer};
use crate::tcp::{ServerConfig, TcpClient, TcpServer};

const SYSTEM: &str = "planewire";

pub(crate) struct Planewire {
    server: TcpServer,
    client: Arc<TcpClient>,
    address: Arc<str>,
    /// Echo endpoints by response count, registered on first use.
    paths: HashMap<usize, Utf8Bytes>,
}

impl Planewire {
    pub async fn start() -> Result<Self, BenchError> {
        // Defaults, not the `DYN_*` environment: the figures are for the embedded default.
        let tcp = TcpConfig {
            host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ..TcpConfig::default()
        };
        let server = TcpServer::bind(ServerConfig {
            tcp: tcp.clone(),
            ..ServerConfig::default()
        })
        .await
        .map_err(BenchError::io("starting the planewire server"))?;
        let client = TcpClient::new(tcp)?;
        Ok(Self {
            address: server.local_addr().to_string().into(),
            server,
            client: Arc::new(client),
            paths: HashMap::new(),
        })
    }

    /// The path of the endpoint that answers with `responses` copies of each payload.
    async fn path(&mut self, responses: usize) -> Utf8Bytes {
        if let Some(path) = self.paths.get(&responses) {
            return path.clone();
        }
        let name = match responses {
            1 => "unary".to_owned(),
            k => format!("stream{k}"),
        };
        let path = EndpointPath::new("bench", "echo", name, 1).expect("constant, valid path");
        self.server
            .register(&path, echo_handler(responses))
            .await
            .expect("each response count is registered once");
        let path = Utf8Bytes::from(&path);
        self.paths.insert(responses, path.clone());
        path
    }

    /// The largest unary payload whose request frame fits `DYN_TCP_MAX_MESSAGE_SIZE`: the
    /// frame also carries the fixed header and the endpoint path.
    pub async fn max_unary_payload(&mut self) -> usize {
        self.client.config().max_message_size - HEADER_LEN - self.path(1).await.len()
    }

    pub async fn callers(
        &mut self,
        payload: &Bytes,
        responses: usize,
        concurrency: usize,
    ) -> Vec<PlaneCaller<TcpClient>> {
        let path = self.path(responses).await;
        (0..concurrency)
            .map(|_| PlaneCaller {
                system: SYSTEM,
                client: Arc::clone(&self.client),
                address: Arc::clone(&self.address),
                path: path.clone(),
                payload: payload.clone(),
                responses,
            })
            .collect()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
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

// By hand: a derive would want `C: Clone`, but only the `Arc` is cloned.
impl<C> Clone for PlaneCaller<C> {
    fn clone(&self) -> Self {
        Self {
            system: self.system,
            client: Arc::clone(&self.client),
            address: Arc::clone(&self.address),
            path: self.path.clone(),
            payload: self.payload.clone(),
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
