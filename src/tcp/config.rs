//! [`TcpConfig`]: the TCP request plane's settings (`DYN_TCP_*`), defaults of `SPEC.md`.

use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use crate::codec::HEADER_LEN;
use crate::config::{ConfigError, Env, require_nonzero, require_positive};
use crate::planes::request::{DEFAULT_REQUEST_TIMEOUT, ENV_REQUEST_TIMEOUT};

pub const ENV_RPC_HOST: &str = "DYN_TCP_RPC_HOST";
pub const ENV_RPC_PORT: &str = "DYN_TCP_RPC_PORT";
pub const ENV_MAX_MESSAGE_SIZE: &str = "DYN_TCP_MAX_MESSAGE_SIZE";
pub const ENV_SHRINK_MESSAGE_SIZE: &str = "DYN_TCP_SHRINK_MESSAGE_SIZE";
/// Still honoured, and ahead of the plane-neutral `DYN_REQUEST_TIMEOUT`.
pub const ENV_TCP_REQUEST_TIMEOUT: &str = "DYN_TCP_REQUEST_TIMEOUT";
pub const ENV_POOL_SIZE: &str = "DYN_TCP_POOL_SIZE";
pub const ENV_CONNECT_TIMEOUT: &str = "DYN_TCP_CONNECT_TIMEOUT";
pub const ENV_CHANNEL_BUFFER: &str = "DYN_TCP_CHANNEL_BUFFER";
pub const ENV_FRAME_TIMEOUT: &str = "DYN_TCP_FRAME_TIMEOUT";
pub const ENV_IDLE_TIMEOUT: &str = "DYN_TCP_IDLE_TIMEOUT";

const MIB: usize = 1024 * 1024;

/// Settings of the TCP request plane. Defaults are those of `SPEC.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// `DYN_TCP_RPC_HOST`: address the server binds and advertises; `None` auto-detects.
    pub host: Option<IpAddr>,
    /// `DYN_TCP_RPC_PORT`: `None` (or 0) lets the OS assign a port.
    pub port: Option<u16>,
    /// `DYN_TCP_MAX_MESSAGE_SIZE`: largest whole frame, header included (32 MiB).
    pub max_message_size: usize,
    /// `DYN_TCP_SHRINK_MESSAGE_SIZE`: read-buffer capacity above which an emptied buffer is
    /// replaced by a small one (8 MiB); clamped to at most `max_message_size`.
    pub shrink_message_size: usize,
    /// `DYN_TCP_REQUEST_TIMEOUT`, else `DYN_REQUEST_TIMEOUT`: per request, until its last
    /// response frame (10 s).
    pub request_timeout: Duration,
    /// `DYN_TCP_POOL_SIZE`: connections per remote address (50).
    pub pool_size: usize,
    /// `DYN_TCP_CONNECT_TIMEOUT`: bound on one TCP connect (3 s).
    pub connect_timeout: Duration,
    /// `DYN_TCP_CHANNEL_BUFFER`: requests queued per connection before callers wait (100).
    pub channel_buffer: usize,
    /// `DYN_TCP_FRAME_TIMEOUT` (server, 10 s): a frame must arrive whole within this time
    /// of its first byte, and output waiting for the peer must move at least this often;
    /// otherwise the connection is closed. Bounds what a slowloris peer can hold.
    pub frame_timeout: Duration,
    /// `DYN_TCP_IDLE_TIMEOUT` (server, 300 s): a connection with no open stream and no
    /// traffic for this long is closed with a graceful go-away.
    pub idle_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: None,
            max_message_size: 32 * MIB,
            shrink_message_size: 8 * MIB,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            pool_size: 50,
            connect_timeout: Duration::from_secs(3),
            channel_buffer: 100,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl TcpConfig {
    /// Reads the `DYN_TCP_*` variables (and `DYN_REQUEST_TIMEOUT`); unset ones take defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let timeout = match env.seconds(ENV_TCP_REQUEST_TIMEOUT)? {
            Some(timeout) => Some(timeout),
            None => env.seconds(ENV_REQUEST_TIMEOUT)?,
        };
        Self {
            host: env.ip(ENV_RPC_HOST)?,
            port: env.port(ENV_RPC_PORT)?,
            max_message_size: env
                .bytes(ENV_MAX_MESSAGE_SIZE)?
                .unwrap_or(defaults.max_message_size),
            shrink_message_size: env
                .bytes(ENV_SHRINK_MESSAGE_SIZE)?
                .unwrap_or(defaults.shrink_message_size),
            request_timeout: timeout.unwrap_or(defaults.request_timeout),
            pool_size: env.count(ENV_POOL_SIZE)?.unwrap_or(defaults.pool_size),
            connect_timeout: env
                .seconds(ENV_CONNECT_TIMEOUT)?
                .unwrap_or(defaults.connect_timeout),
            channel_buffer: env
                .count(ENV_CHANNEL_BUFFER)?
                .unwrap_or(defaults.channel_buffer),
            frame_timeout: env
                .seconds(ENV_FRAME_TIMEOUT)?
                .unwrap_or(defaults.frame_timeout),
            idle_timeout: env
                .seconds(ENV_IDLE_TIMEOUT)?
                .unwrap_or(defaults.idle_timeout),
        }
        .validate()
    }

    /// Checks ranges and clamps the shrink threshold to the max message size.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if self.max_message_size <= HEADER_LEN || self.max_message_size > u32::MAX as usize {
            return Err(ConfigError::invalid(
                ENV_MAX_MESSAGE_SIZE,
                self.max_message_size.to_string(),
                format!(
                    "a number of bytes above the {HEADER_LEN}-byte frame header and at most {}",
                    u32::MAX
                ),
            ));
        }
        self.shrink_message_size = self.shrink_message_size.min(self.max_message_size);
        require_positive(
            ENV_POOL_SIZE,
            self.pool_size,
            "connections per remote address",
        )?;
        require_positive(
            ENV_CHANNEL_BUFFER,
            self.channel_buffer,
            "queued requests per connection",
        )?;
        require_nonzero(ENV_TCP_REQUEST_TIMEOUT, self.request_timeout)?;
        require_nonzero(ENV_CONNECT_TIMEOUT, self.connect_timeout)?;
        require_nonzero(ENV_FRAME_TIMEOUT, self.frame_timeout)?;
        require_nonzero(ENV_IDLE_TIMEOUT, self.idle_timeout)?;
        Ok(self)
    }

    /// The port to bind: 0 asks the OS for a free one.
    pub fn bind_port(&self) -> u16 {
        self.port.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_lookup;

    fn from(vars: &[(&str, &str)]) -> Result<TcpConfig, ConfigError> {
        TcpConfig::from_lookup(test_lookup(vars))
    }

    fn err_text(vars: &[(&str, &str)]) -> String {
        from(vars).expect_err("should be refused").to_string()
    }

    #[test]
    fn defaults_match_the_spec() {
        let tcp = from(&[]).unwrap();
        assert_eq!(tcp.host, None);
        assert_eq!(tcp.port, None);
        assert_eq!(tcp.bind_port(), 0);
        assert_eq!(tcp.max_message_size, 32 * 1024 * 1024);
        assert_eq!(tcp.shrink_message_size, 8 * 1024 * 1024);
        assert_eq!(tcp.request_timeout, Duration::from_secs(10));
        assert_eq!(tcp.pool_size, 50);
        assert_eq!(tcp.connect_timeout, Duration::from_secs(3));
        assert_eq!(tcp.channel_buffer, 100);
        assert_eq!(tcp, TcpConfig::default().validate().unwrap());
    }

    #[test]
    fn every_variable_is_read() {
        let tcp = from(&[
            ("DYN_TCP_RPC_HOST", "127.0.0.1"),
            ("DYN_TCP_RPC_PORT", "9123"),
            ("DYN_TCP_MAX_MESSAGE_SIZE", "1048576"),
            ("DYN_TCP_SHRINK_MESSAGE_SIZE", "65536"),
            ("DYN_TCP_REQUEST_TIMEOUT", "2.5"),
            ("DYN_TCP_POOL_SIZE", "4"),
            ("DYN_TCP_CONNECT_TIMEOUT", "1"),
            ("DYN_TCP_CHANNEL_BUFFER", "7"),
            ("DYN_TCP_FRAME_TIMEOUT", "0.5"),
            ("DYN_TCP_IDLE_TIMEOUT", "60"),
        ])
        .unwrap();
        assert_eq!(tcp.host, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(tcp.port, Some(9123));
        assert_eq!(tcp.max_message_size, 1 << 20);
        assert_eq!(tcp.shrink_message_size, 1 << 16);
        assert_eq!(tcp.request_timeout, Duration::from_millis(2500));
        assert_eq!(tcp.pool_size, 4);
        assert_eq!(tcp.connect_timeout, Duration::from_secs(1));
        assert_eq!(tcp.channel_buffer, 7);
        assert_eq!(tcp.frame_timeout, Duration::from_millis(500));
        assert_eq!(tcp.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_neutral_timeout_applies_unless_the_tcp_one_is_set() {
        let neutral = from(&[("DYN_REQUEST_TIMEOUT", "4")]).unwrap();
        assert_eq!(neutral.request_timeout, Duration::from_secs(4));
        let both = from(&[
            ("DYN_REQUEST_TIMEOUT", "4"),
            ("DYN_TCP_REQUEST_TIMEOUT", "2"),
        ])
        .unwrap();
        assert_eq!(both.request_timeout, Duration::from_secs(2));
    }

    #[test]
    fn port_zero_means_os_assigned() {
        assert_eq!(from(&[("DYN_TCP_RPC_PORT", "0")]).unwrap().port, None);
    }

    #[test]
    fn shrink_threshold_is_clamped_to_max_message_size() {
        let tcp = from(&[
            ("DYN_TCP_MAX_MESSAGE_SIZE", "4096"),
            ("DYN_TCP_SHRINK_MESSAGE_SIZE", "999999"),
        ])
        .unwrap();
        assert_eq!(tcp.shrink_message_size, 4096);
    }

    #[test]
    fn malformed_values_name_the_variable_value_and_expectation() {
        let cases = [
            ("DYN_TCP_RPC_HOST", "not-an-ip", "IP address"),
            ("DYN_TCP_RPC_PORT", "70000", "0 to 65535"),
            ("DYN_TCP_RPC_PORT", "-1", "0 to 65535"),
            ("DYN_TCP_MAX_MESSAGE_SIZE", "32MiB", "whole number of bytes"),
            (
                "DYN_TCP_MAX_MESSAGE_SIZE",
                "10",
                "above the 24-byte frame header",
            ),
            ("DYN_TCP_MAX_MESSAGE_SIZE", "8589934592", "at most"),
            ("DYN_TCP_SHRINK_MESSAGE_SIZE", "-5", "whole number of bytes"),
            (
                "DYN_TCP_REQUEST_TIMEOUT",
                "ten",
                "positive number of seconds",
            ),
            ("DYN_TCP_REQUEST_TIMEOUT", "0", "positive number of seconds"),
            (
                "DYN_TCP_REQUEST_TIMEOUT",
                "-3",
                "positive number of seconds",
            ),
            (
                "DYN_TCP_REQUEST_TIMEOUT",
                "NaN",
                "positive number of seconds",
            ),
            (
                "DYN_TCP_REQUEST_TIMEOUT",
                "inf",
                "positive number of seconds",
            ),
            ("DYN_REQUEST_TIMEOUT", "soon", "positive number of seconds"),
            ("DYN_TCP_CONNECT_TIMEOUT", "0", "positive number of seconds"),
            ("DYN_TCP_POOL_SIZE", "0", "positive integer"),
            ("DYN_TCP_POOL_SIZE", "many", "positive integer"),
            ("DYN_TCP_CHANNEL_BUFFER", "0", "positive integer"),
            ("DYN_TCP_FRAME_TIMEOUT", "0", "positive number of seconds"),
            ("DYN_TCP_IDLE_TIMEOUT", "soon", "positive number of seconds"),
        ];
        for (var, value, expected) in cases {
            let text = err_text(&[(var, value)]);
            assert!(text.contains(var), "{var}={value}: {text}");
            assert!(text.contains(value), "{var}={value}: {text}");
            assert!(text.contains(expected), "{var}={value}: {text}");
        }
    }

    #[test]
    fn validate_refuses_nonsense_set_in_code() {
        let zero_pool = TcpConfig {
            pool_size: 0,
            ..TcpConfig::default()
        };
        let text = zero_pool.validate().unwrap_err().to_string();
        assert!(text.contains("DYN_TCP_POOL_SIZE"), "{text}");
        let tiny = TcpConfig {
            max_message_size: HEADER_LEN,
            ..TcpConfig::default()
        };
        let text = tiny.validate().unwrap_err().to_string();
        assert!(text.contains("DYN_TCP_MAX_MESSAGE_SIZE"), "{text}");
        let no_buffer = TcpConfig {
            channel_buffer: 0,
            ..TcpConfig::default()
        };
        assert!(no_buffer.validate().is_err());
        let no_timeout = TcpConfig {
            request_timeout: Duration::ZERO,
            ..TcpConfig::default()
        };
        assert!(no_timeout.validate().is_err());
        // Set in code past what the clock can add to now: refused here, not a panic in
        // the first request.
        let endless = TcpConfig {
            request_timeout: Duration::MAX,
            ..TcpConfig::default()
        };
        let text = endless.validate().unwrap_err().to_string();
        assert!(
            text.contains("DYN_TCP_REQUEST_TIMEOUT") && text.contains("up to a year"),
            "{text}"
        );
    }

    #[test]
    fn blank_values_count_as_unset() {
        assert_eq!(from(&[("DYN_TCP_POOL_SIZE", "  ")]).unwrap().pool_size, 50);
    }
}
