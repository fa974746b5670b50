//! Settings every request plane shares: the request timeout, and a server's limits.

use std::time::Duration;

use crate::config::{ConfigError, require_nonzero, require_positive};

/// Per request, until its last response, on every plane; `DYN_TCP_REQUEST_TIMEOUT`
/// still takes precedence on TCP.
pub const ENV_REQUEST_TIMEOUT: &str = "DYN_REQUEST_TIMEOUT";
/// The default of `DYN_REQUEST_TIMEOUT`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request-plane server bounds, whatever carries the requests. Set in code
/// (there are no variables for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Requests one endpoint handles at once (default 1024). A request beyond this is
    /// answered `Overloaded` at once instead of queueing, and a saturated endpoint takes
    /// no slots from the others.
    pub max_concurrent_requests: usize,
    /// Open connections (default 10,000; TCP and HTTP/2). At the cap, new connections
    /// wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// How long `shutdown` lets in-flight requests finish before cancelling them (10 s).
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerLimits {
    pub fn validate(self) -> Result<Self, ConfigError> {
        // A semaphore holds at most this many permits.
        let most = tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        for (name, value) in [
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_connections", self.max_connections),
        ] {
            require_positive(name, value, "set in ServerLimits")?;
            if value > most {
                return Err(ConfigError::invalid(
                    name,
                    value.to_string(),
                    format!("at most {most}"),
                ));
            }
        }
        require_nonzero("drain_timeout", self.drain_timeout)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_are_refused_by_name() {
        let none = ServerLimits {
            max_concurrent_requests: 0,
            ..ServerLimits::default()
        };
        let text = none.validate().unwrap_err().to_string();
        assert!(text.contains("max_concurrent_requests"), "{text}");
        assert!(ServerLimits::default().validate().is_ok());
    }
}
