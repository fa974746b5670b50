//! The NATS request plane under test (`bench --nats URL`, feature `nats`): a
//! `NatsRequestServer` with an echo endpoint and a `NatsRequestClient`, each on its own
//! connection to the given nats-server, as two processes would be.

use std::sync::Arc;

use bytes::Bytes;

use super::BenchError;
use super::plane::PlaneCaller;
use crate::echo::echo_handler;
use planewire::nats::{NatsConfig, NatsLink};
use planewire::planes::request::nats::{
    NatsRequestClient, NatsRequestConfig, NatsRequestServer, subject,
};
use planewire::planes::request::{EndpointPath, RequestPlaneServer, ServerLimits};
use planewire::vocab::Utf8Bytes;

const SYSTEM: &str = "planewire nats";

pub(crate) struct NatsPlane {
    server: NatsRequestServer,
    client: Arc<NatsRequestClient>,
    subject: Arc<str>,
    path: Utf8Bytes,
}

impl NatsPlane {
    pub async fn start(url: &str) -> Result<Self, BenchError> {
        let config = NatsConfig {
            url: url.to_owned(),
            ..NatsConfig::default()
        };
        let nats_error = |err: &dyn std::fmt::Display| BenchError::Worker(format!("NATS: {err}"));
        // Two links, two connections: server and client as two processes would have them.
        let server_connection = NatsLink::new(config.clone())
            .client()
            .await
            .map_err(|e| nats_error(&e))?;
        let client_connection = NatsLink::new(config)
            .client()
            .await
            .map_err(|e| nats_error(&e))?;
        let server = NatsRequestServer::new(server_connection, ServerLimits::default())
            .await
            .map_err(|e| nats_error(&e))?;
        let path = EndpointPath::new("bench", "echo", "unary", 1).expect("constant, valid path");
        server
            .register(&path, echo_handler(1))
            .await
            .map_err(|e| nats_error(&e))?;
        let client = NatsRequestClient::new(client_connection, NatsRequestConfig::default())
            .await
            .map_err(|e| nats_error(&e))?;
        Ok(Self {
            server,
            client: Arc::new(client),
            subject: subject(&path).into(),
            path: Utf8Bytes::from(&path),
        })
    }

    pub fn callers(
        &self,
        payload: &Bytes,
        concurrency: usize,
    ) -> Vec<PlaneCaller<NatsRequestClient>> {
        let path = self.path.clone();
        let caller = PlaneCaller::new(SYSTEM, &self.client, &self.subject, path, payload);
        vec![caller; concurrency]
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
