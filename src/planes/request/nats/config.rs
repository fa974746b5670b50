//! [`NatsRequestConfig`]: the NATS request plane's own settings. How to reach NATS is
//! [`NatsConfig`](crate::nats::NatsConfig), shared with the event plane.

use std::ffi::OsString;
use std::time::Duration;

use crate::config::{ConfigError, Env, require_nonzero};
use crate::planes::request::{DEFAULT_REQUEST_TIMEOUT, ENV_REQUEST_TIMEOUT};

/// Client side of the NATS request plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsRequestConfig {
    /// `DYN_REQUEST_TIMEOUT`: per request, until its last response (10 s). Sent to the
    /// server as [`TIMEOUT_HEADER`](super::TIMEOUT_HEADER) and enforced on the client.
    pub request_timeout: Duration,
}

impl Default for NatsRequestConfig {
    fn default() -> Self {
        Self {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl NatsRequestConfig {
    /// Reads `DYN_REQUEST_TIMEOUT`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        Self {
            request_timeout: env
                .seconds(ENV_REQUEST_TIMEOUT)?
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        }
        .validate()
    }

    pub fn validate(self) -> Result<Self, ConfigError> {
        require_nonzero(ENV_REQUEST_TIMEOUT, self.request_timeout)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_lookup;

    #[test]
    fn the_timeout_is_the_neutral_one() {
        let cfg = NatsRequestConfig::from_lookup(test_lookup(&[
            ("DYN_REQUEST_TIMEOUT", "2"),
            ("DYN_TCP_REQUEST_TIMEOUT", "5"),
        ]))
        .unwrap();
        assert_eq!(cfg.request_timeout, Duration::from_secs(2));
        assert_eq!(
            NatsRequestConfig::default().request_timeout,
            Duration::from_secs(10)
        );
    }
}
