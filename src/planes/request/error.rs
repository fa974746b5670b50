//! The request plane's errors, the same on every plane. A cause (an I/O error, a NATS
//! error, a codec error) is kept as the `source`; the message also says what to do.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;
use crate::vocab::{ErrorCode, PathError};

/// A cause kept inside an error. Shared rather than boxed because request errors are
/// cloned: one failed connect is reported to every caller that waited on it.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// Why a request failed. Callers match on the variant or use the predicates.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("could not connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: SharedError,
    },
    #[error("connecting to {address} timed out after {timeout:?} ({setting})")]
    ConnectTimeout {
        address: String,
        timeout: Duration,
        /// The setting that bounds it, e.g. `DYN_TCP_CONNECT_TIMEOUT`.
        setting: &'static str,
    },
    #[error("request timed out after {timeout:?} ({setting})")]
    Timeout {
        timeout: Duration,
        /// The setting that bounds it, e.g. `DYN_REQUEST_TIMEOUT`.
        setting: &'static str,
    },
    #[error("connection to {address} lost: {reason}")]
    ConnectionLost { address: String, reason: String },
    /// Refused before anything was sent.
    #[error("request of {size} bytes exceeds {limit}={max} bytes; nothing was sent ({fix})")]
    TooLarge {
        size: u64,
        max: usize,
        /// The limit, e.g. `DYN_TCP_MAX_MESSAGE_SIZE` or the NATS server's `max_payload`.
        limit: &'static str,
        fix: &'static str,
    },
    #[error("request cannot be sent: {reason}")]
    Encode {
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
    #[error("server error ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    /// NATS, which has no flow control: the caller left a stream's buffer full.
    #[error(
        "response stream overflowed: the caller did not read {buffered} buffered responses; \
         the stream was cancelled"
    )]
    ResponseOverflow { buffered: usize },
    /// The server sent past the stream's flow-control window (a broken server; a slow
    /// caller only slows its stream).
    #[error(
        "server at {address} overran the stream's flow-control window ({outstanding} bytes \
         unacknowledged); the stream was cancelled"
    )]
    FlowControl { address: String, outstanding: usize },
    #[error("expected exactly one response, {0}")]
    NotUnary(&'static str),
    /// An instance serves over a plane this client has no connection for.
    #[error("the {plane} request plane is not available to this client: {hint}")]
    PlaneUnavailable { plane: String, hint: &'static str },
    #[error("the client has been shut down")]
    ClientClosed,
}

impl RequestError {
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::ConnectTimeout { .. }
                | Self::Remote {
                    code: ErrorCode::DeadlineExceeded,
                    ..
                }
        )
    }

    /// Whether a message was over a plane's size limit: a request refused before
    /// sending, or a response the server could not send.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. }
                | Self::Remote {
                    code: ErrorCode::FrameTooLarge,
                    ..
                }
        )
    }

    /// Whether sending the same request again (possibly elsewhere) may succeed: the
    /// failure was about the transport or the server's momentary state, not the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::ConnectionLost { .. } => {
                true
            }
            Self::Remote { code, .. } => {
                matches!(code, ErrorCode::Overloaded | ErrorCode::ShuttingDown)
            }
            _ => false,
        }
    }

    /// The server's error code, for errors the server sent.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// An error a handler returns; the client receives it as [`RequestError::Remote`] with
/// [`ErrorCode::Handler`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Why an endpoint could not be registered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    #[error("endpoint {0} is already registered on this server")]
    Duplicate(String),
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    /// The plane could not start routing the path (NATS: a subscription failed).
    #[error("cannot serve endpoint {path}: {reason}")]
    Plane {
        path: String,
        reason: &'static str,
        #[source]
        source: Option<SharedError>,
    },
}

/// Why a request plane could not start: its server, or a client that needs a
/// connection (NATS).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot start the {plane} request plane: {source}")]
    Plane {
        plane: &'static str,
        #[source]
        source: SharedError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StartError {
    pub(crate) fn plane(
        plane: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Plane {
            plane,
            source: Arc::new(source),
        }
    }
}
