//! [`ErrorCode`]: why a stream failed, in numbers every plane carries the same way.

/// Error codes of failed streams, the same on every plane: TCP's `Error` and `GoAway`
/// frames, NATS's `Nats-Service-Error-Code` header, HTTP/2's error records (numbers in
/// `PROTOCOL.md` §5). Unknown codes from a newer peer decode as [`ErrorCode::Other`]
/// rather than failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Graceful go-away; never used on an `Error` frame.
    NoError,
    /// The peer sent a malformed frame; the connection is closed.
    Protocol,
    /// A frame exceeded the receiver's maximum message size.
    FrameTooLarge,
    /// No handler is registered for the requested endpoint path.
    UnknownEndpoint,
    /// The server is at its concurrency limit; retrying later may succeed.
    Overloaded,
    /// The handler itself failed; the message is the handler's.
    Handler,
    /// The stream was cancelled.
    Cancelled,
    /// The request's deadline passed on the server.
    DeadlineExceeded,
    /// The server is shutting down and takes no new requests.
    ShuttingDown,
    /// A request reused a stream id that is still open.
    StreamIdInUse,
    /// An unexpected failure inside the peer.
    Internal,
    Other(u32),
}

impl ErrorCode {
    pub fn to_u32(self) -> u32 {
        match self {
            Self::NoError => 0,
            Self::Protocol => 1,
            Self::FrameTooLarge => 2,
            Self::UnknownEndpoint => 3,
            Self::Overloaded => 4,
            Self::Handler => 5,
            Self::Cancelled => 6,
            Self::DeadlineExceeded => 7,
            Self::ShuttingDown => 8,
            Self::StreamIdInUse => 9,
            Self::Internal => 10,
            Self::Other(code) => code,
        }
    }

    pub fn from_u32(code: u32) -> Self {
        match code {
            0 => Self::NoError,
            1 => Self::Protocol,
            2 => Self::FrameTooLarge,
            3 => Self::UnknownEndpoint,
            4 => Self::Overloaded,
            5 => Self::Handler,
            6 => Self::Cancelled,
            7 => Self::DeadlineExceeded,
            8 => Self::ShuttingDown,
            9 => Self::StreamIdInUse,
            10 => Self::Internal,
            other => Self::Other(other),
        }
    }
}
