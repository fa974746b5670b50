use std::time::Duration;

use crate::codec::{CodecError, ErrorCode};

/// Why a request failed. Callers match on the variant or use the predicates.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("could not connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("connecting to {address} timed out after {timeout:?} (DYN_TCP_CONNECT_TIMEOUT)")]
    ConnectTimeout { address: String, timeout: Duration },
    #[error("request timed out after {timeout:?} (DYN_TCP_REQUEST_TIMEOUT)")]
    Timeout { timeout: Duration },
    #[error("connection to {address} lost: {reason}")]
    ConnectionLost { address: String, reason: String },
    #[error(
        "request of {size} bytes exceeds DYN_TCP_MAX_MESSAGE_SIZE={max} bytes; \
         nothing was sent (raise the limit on both sides or split the payload)"
    )]
    MessageTooLarge { size: u64, max: usize },
    #[error(
        "request of {size} bytes exceeds the NATS server's max_payload={max} bytes; nothing \
         was sent (use DYN_REQUEST_PLANE=tcp, or raise max_payload in nats-server)"
    )]
    PayloadTooLarge { size: u64, max: usize },
    #[error("request cannot be encoded: {0}")]
    Encode(String),
    #[error("server error ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    /// NATS, which has no flow control: the caller left a stream's buffer full.
    #[error(
        "response stream overflowed: the caller did not read {buffered} buffered responses; \
         the stream was cancelled"
    )]
    ResponseOverflow { buffered: usize },
    /// TCP: the server sent past the stream's flow-control window (a broken server; a
    /// slow caller only slows its stream).
    #[error(
        "server at {address} overran the stream's flow-control window ({outstanding} bytes \
         unacknowledged); the stream was cancelled"
    )]
    FlowControl { address: String, outstanding: usize },
    #[error("expected exactly one response, {0}")]
    NotUnary(&'static str),
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

    /// Whether a message was over a transport's size limit: a request refused before
    /// sending, or a response the server could not send.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::MessageTooLarge { .. }
                | Self::PayloadTooLarge { .. }
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

    /// The server's error code, for errors that came from an error frame.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn from_encode(err: CodecError) -> Self {
        match err {
            CodecError::FrameTooLarge { size, max } => Self::MessageTooLarge { size, max },
            other => Self::Encode(other.to_string()),
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    #[error("endpoint {0} is already registered on this server")]
    Duplicate(String),
    #[error("invalid endpoint path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
}
