//! Connecting to NATS with a [`NatsConfig`]: credentials, timeouts, reconnects.

use std::sync::Arc;

use async_nats::{Client, ConnectErrorKind, ConnectOptions};

use super::{NatsAuth, NatsConfig};

/// Messages each subscription holds inside the client before the client drops them as a
/// slow consumer. Our receive tasks drain their subscriptions without waiting, so this
/// only has to absorb a burst arriving faster than one task is scheduled: 64 Ki covers
/// the 10,000-event bursts the event plane is tested with, many times over.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Why the first connection to NATS failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot reach the NATS server at {url} (NATS_SERVER): {reason}")]
pub struct ConnectError {
    /// `NATS_SERVER` as configured.
    pub url: String,
    /// What happened, and which setting to check.
    pub reason: String,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Connects with `config`'s credentials and fails within `connect_timeout` when no
/// server answers (no retrying in the background: a wrong `NATS_SERVER` is reported at
/// startup, not discovered later as silence).
///
/// Once connected, the client reconnects through server restarts for ever (no limit on
/// attempts), resubscribes its subscriptions, and holds up to `publish_buffer` outgoing
/// messages (`NATS_PUBLISH_BUFFER`, default 65,536) while the server is away; a publisher
/// that fills that buffer waits for the connection.
pub(super) async fn connect(config: &NatsConfig) -> Result<Client, ConnectError> {
    let failed =
        |reason: String, source: Option<Arc<dyn std::error::Error + Send + Sync>>| ConnectError {
            url: config.url.clone(),
            reason,
            source,
        };
    let options = options(config)
        .await
        .map_err(|(reason, source)| failed(reason, Some(Arc::new(source))))?;
    let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
    // `connection_timeout` bounds one server's attempt; with several URLs the attempts
    // add up, so the whole connect is bounded too.
    match tokio::time::timeout(config.connect_timeout, options.connect(servers)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => {
            let reason = match err.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    format!("{err} (check the NATS_AUTH_* credentials)")
                }
                _ => err.to_string(),
            };
            Err(failed(reason, Some(Arc::new(err))))
        }
        Err(_) => Err(failed(
            format!(
                "no answer within {:?} (NATS_CONNECT_TIMEOUT)",
                config.connect_timeout
            ),
            None,
        )),
    }
}

async fn options(config: &NatsConfig) -> Result<ConnectOptions, (String, std::io::Error)> {
    let options = match &config.auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => ConnectOptions::with_token(token.clone()),
        NatsAuth::Nkey(seed) => ConnectOptions::with_nkey(seed.clone()),
        NatsAuth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|err| {
                let reason = format!(
                    "cannot read NATS_AUTH_CREDENTIALS_FILE {}: {err}",
                    path.display()
                );
                (reason, err)
            })?,
    };
    Ok(options
        .name("planewire")
        .connection_timeout(config.connect_timeout)
        .client_capacity(config.publish_buffer)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .max_reconnects(None))
}
