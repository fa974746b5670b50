//! The NATS connection a process's planes share. Not a plane: the NATS request plane
//! ([`planes::request::nats`](crate::planes::request::nats)) and the NATS event plane
//! both take a [`NatsLink`], so one process holds one connection, made with one
//! [`NatsConfig`] (`NATS_*`), by whichever plane needs it first.

mod config;
#[cfg(feature = "nats")]
mod connect;

pub use config::{
    ENV_NATS_CONNECT_TIMEOUT, ENV_NATS_CREDENTIALS, ENV_NATS_NKEY, ENV_NATS_PASSWORD,
    ENV_NATS_PUBLISH_BUFFER, ENV_NATS_SERVER, ENV_NATS_TOKEN, ENV_NATS_USERNAME, NatsAuth,
    NatsConfig,
};
#[cfg(feature = "nats")]
pub use connect::ConnectError;

/// The NATS connection of one process, made at its first use and shared by clones.
/// Present in every build so that the planes take it whatever the features; without the
/// `nats` feature it only carries the settings.
#[derive(Clone, Debug)]
pub struct NatsLink {
    config: NatsConfig,
    #[cfg(feature = "nats")]
    connection: std::sync::Arc<tokio::sync::OnceCell<async_nats::Client>>,
}

impl NatsLink {
    /// A link that connects with `config` when a plane first asks for it.
    pub fn new(config: NatsConfig) -> Self {
        Self {
            config,
            #[cfg(feature = "nats")]
            connection: Default::default(),
        }
    }

    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// The connection, made now if no plane has made it yet; an unreachable server is an
    /// error naming its URL within `NATS_CONNECT_TIMEOUT`.
    #[cfg(feature = "nats")]
    pub async fn client(&self) -> Result<async_nats::Client, ConnectError> {
        self.connection
            .get_or_try_init(|| connect::connect(&self.config))
            .await
            .cloned()
    }

    /// Waits until what was published so far is on the wire (at shutdown, so that the
    /// last responses and events leave before the process does). Nothing to do when no
    /// plane connected.
    pub async fn flush(&self) {
        #[cfg(feature = "nats")]
        if let Some(client) = self.connection.get() {
            if let Err(err) = client.flush().await {
                tracing::warn!(%err, "flushing the NATS connection");
            }
        }
    }
}
