use crate::config::ConfigError;
use crate::planes::discovery::DiscoveryError;

/// Why an event-plane operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error(
        "the event plane is disabled (DYN_EVENT_PLANE=none): set it to zmq, nats or inproc to subscribe"
    )]
    Disabled,
    #[error("invalid event scope {scope:?}: {reason}")]
    InvalidScope { scope: String, reason: &'static str },
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("malformed event envelope: {reason}")]
    Malformed { reason: String },
    #[error(
        "event of {size} bytes exceeds the {plane} limit of {limit} bytes{hint}",
        hint = if *plane == "NATS" { " (the server's max_payload, which counts the envelope header and topic too; raise it in the nats-server config)" } else { "" }
    )]
    PayloadTooLarge {
        size: usize,
        limit: usize,
        plane: &'static str,
    },
    #[error("cannot reach the {server} server at {url}: {reason}")]
    Unreachable {
        server: &'static str,
        url: String,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{plane} event plane: {reason}")]
    Transport { plane: &'static str, reason: String },
    #[error(
        "durable subscriptions need JetStream: set DYN_EVENT_PLANE=nats and DYN_EVENT_PLANE_DURABLE=true (this plane is {plane})"
    )]
    DurableUnsupported { plane: &'static str },
    #[error("invalid durable subscription name {name:?}: {reason}")]
    InvalidDurableName { name: String, reason: &'static str },
    #[error("the event publisher was closed")]
    Closed,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("event plane discovery: {0}")]
    Discovery(#[from] DiscoveryError),
}
