//! One NATS client connection made from [`NatsConfig`], shared by the planes that use
//! NATS (the event plane today, the NATS request plane later).

use async_nats::{Client, ConnectErrorKind, ConnectOptions};

use crate::config::{NatsAuth, NatsConfig};

/// Messages each subscription holds inside the client before the client drops them as a
/// slow consumer. Our receive tasks drain their subscriptions without waiting, so this
/// only has to absorb a burst arriving faster than one task is scheduled: 64 Ki covers
/// the 10,000-event bursts the event plane is tested with, many times over.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Why the first connection to NATS failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the NATS server at {url}: {reason}")]
pub(crate) struct ConnectError {
    /// `NATS_SERVER` as configured.
    pub(crate) url: String,
    pub(crate) reason: String,
}

/// Connects with `config`'s credentials and fails within `connect_timeout` when no
/// server answers (no retrying in the background: a wrong `NATS_SERVER` is reported at
/// startup, not discovered later as silence).
///
/// Once connected, the client reconnects through server restarts for ever (no limit on
/// attempts), resubscribes its subscriptions, and holds up to `publish_buffer` outgoing
/// messages (`NATS_PUBLISH_BUFFER`, default 65,536) while the server is away; a publisher
/// that fills that buffer waits for the connection.
pub(crate) async fn connect(config: &NatsConfig) -> Result<Client, ConnectError> {
    let failed = |reason: String| ConnectError {
        url: config.url.clone(),
        reason,
    };
    let options = options(config).await.map_err(failed)?;
    let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
    // `connection_timeout` bounds one server's attempt; with several URLs the attempts
    // add up, so the whole connect is bounded too.
    match tokio::time::timeout(config.connect_timeout, options.connect(servers)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(failed(match err.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                format!("{err} (check the NATS_AUTH_* credentials)")
            }
            _ => err.to_string(),
        })),
        Err(_) => Err(failed(format!(
            "no answer within {:?} (NATS_CONNECT_TIMEOUT)",
            config.connect_timeout
        ))),
    }
}

async fn options(config: &NatsConfig) -> Result<ConnectOptions, String> {
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
                format!(
                    "cannot read NATS_AUTH_CREDENTIALS_FILE {}: {err}",
                    path.display()
                )
            })?,
    };
    Ok(options
        .name("planewire")
        .connection_timeout(config.connect_timeout)
        .client_capacity(config.publish_buffer)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .max_reconnects(None))
}
