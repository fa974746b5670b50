//! [`HttpConfig`]: the HTTP/2 request plane's settings (`DYN_HTTP_RPC_*`, `DYN_HTTP2_*`).

use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{ConfigError, Env, require_nonzero, require_positive};
use crate::planes::request::{DEFAULT_REQUEST_TIMEOUT, ENV_REQUEST_TIMEOUT};

pub const ENV_HTTP_RPC_HOST: &str = "DYN_HTTP_RPC_HOST";
pub const ENV_HTTP_RPC_PORT: &str = "DYN_HTTP_RPC_PORT";
pub const ENV_HTTP_RPC_ROOT_PATH: &str = "DYN_HTTP_RPC_ROOT_PATH";
pub const ENV_HTTP_MAX_MESSAGE_SIZE: &str = "DYN_HTTP_MAX_MESSAGE_SIZE";
pub const ENV_HTTP2_MAX_FRAME_SIZE: &str = "DYN_HTTP2_MAX_FRAME_SIZE";
pub const ENV_HTTP2_MAX_CONCURRENT_STREAMS: &str = "DYN_HTTP2_MAX_CONCURRENT_STREAMS";
pub const ENV_HTTP2_POOL_MAX_IDLE_PER_HOST: &str = "DYN_HTTP2_POOL_MAX_IDLE_PER_HOST";
pub const ENV_HTTP2_POOL_IDLE_TIMEOUT_SECS: &str = "DYN_HTTP2_POOL_IDLE_TIMEOUT_SECS";
pub const ENV_HTTP2_KEEP_ALIVE_INTERVAL_SECS: &str = "DYN_HTTP2_KEEP_ALIVE_INTERVAL_SECS";
pub const ENV_HTTP2_KEEP_ALIVE_TIMEOUT_SECS: &str = "DYN_HTTP2_KEEP_ALIVE_TIMEOUT_SECS";
pub const ENV_HTTP2_ADAPTIVE_WINDOW: &str = "DYN_HTTP2_ADAPTIVE_WINDOW";

const MIB: usize = 1024 * 1024;
/// HTTP/2's bounds on SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2).
const FRAME_SIZES: std::ops::RangeInclusive<usize> = 16_384..=16_777_215;

/// Settings of the HTTP/2 request plane, for its server and its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `DYN_HTTP_RPC_HOST`: the address the server binds and advertises; `None` binds
    /// every interface and advertises the outbound one.
    pub host: Option<IpAddr>,
    /// `DYN_HTTP_RPC_PORT` (8888); 0 lets the OS pick.
    pub port: u16,
    /// `DYN_HTTP_RPC_ROOT_PATH` (`/v1/rpc`): requests go to
    /// `POST {root}/{namespace}/{component}/{endpoint}[/{instance hex}]`.
    pub root_path: String,
    /// `DYN_HTTP_MAX_MESSAGE_SIZE` (32 MiB): the largest request body, and the largest
    /// response item, each way; as `DYN_TCP_MAX_MESSAGE_SIZE` on TCP.
    pub max_message_size: usize,
    /// `DYN_HTTP2_MAX_FRAME_SIZE` (1 MiB): the largest HTTP/2 frame either side accepts.
    pub max_frame_size: usize,
    /// `DYN_HTTP2_MAX_CONCURRENT_STREAMS` (1000): streams per connection, both ways.
    pub max_concurrent_streams: u32,
    /// `DYN_HTTP2_POOL_MAX_IDLE_PER_HOST` (100): idle client connections kept per server.
    pub pool_max_idle_per_host: usize,
    /// `DYN_HTTP2_POOL_IDLE_TIMEOUT_SECS` (90 s): how long an idle client connection is kept.
    pub pool_idle_timeout: Duration,
    /// `DYN_HTTP2_KEEP_ALIVE_INTERVAL_SECS` (30 s): PING interval, both sides.
    pub keep_alive_interval: Duration,
    /// `DYN_HTTP2_KEEP_ALIVE_TIMEOUT_SECS` (10 s): a PING unanswered this long closes the
    /// connection.
    pub keep_alive_timeout: Duration,
    /// `DYN_HTTP2_ADAPTIVE_WINDOW` (true): flow-control windows sized to the measured
    /// bandwidth-delay product.
    pub adaptive_window: bool,
    /// `DYN_REQUEST_TIMEOUT` (10 s): per request, until its last response.
    pub request_timeout: Duration,
    /// Bound on one connect (3 s; set in code).
    pub connect_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 8888,
            root_path: "/v1/rpc".to_owned(),
            max_message_size: 32 * MIB,
            max_frame_size: MIB,
            max_concurrent_streams: 1000,
            pool_max_idle_per_host: 100,
            pool_idle_timeout: Duration::from_secs(90),
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
            adaptive_window: true,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl HttpConfig {
    /// Reads the `DYN_HTTP_RPC_*` and `DYN_HTTP2_*` variables (and `DYN_REQUEST_TIMEOUT`);
    /// unset ones take defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let port = match env.text(ENV_HTTP_RPC_PORT)? {
            Some(v) => v.parse().map_err(|_| {
                ConfigError::invalid(ENV_HTTP_RPC_PORT, v, "a port number from 0 to 65535")
            })?,
            None => d.port,
        };
        let streams = match env.count(ENV_HTTP2_MAX_CONCURRENT_STREAMS)? {
            Some(n) => u32::try_from(n).map_err(|_| {
                ConfigError::invalid(
                    ENV_HTTP2_MAX_CONCURRENT_STREAMS,
                    n.to_string(),
                    "at most 4294967295",
                )
            })?,
            None => d.max_concurrent_streams,
        };
        Self {
            host: env.ip(ENV_HTTP_RPC_HOST)?,
            port,
            root_path: env.text(ENV_HTTP_RPC_ROOT_PATH)?.unwrap_or(d.root_path),
            max_message_size: env
                .bytes(ENV_HTTP_MAX_MESSAGE_SIZE)?
                .unwrap_or(d.max_message_size),
            max_frame_size: env
                .bytes(ENV_HTTP2_MAX_FRAME_SIZE)?
                .unwrap_or(d.max_frame_size),
            max_concurrent_streams: streams,
            pool_max_idle_per_host: env
                .count(ENV_HTTP2_POOL_MAX_IDLE_PER_HOST)?
                .unwrap_or(d.pool_max_idle_per_host),
            pool_idle_timeout: env
                .seconds(ENV_HTTP2_POOL_IDLE_TIMEOUT_SECS)?
                .unwrap_or(d.pool_idle_timeout),
            keep_alive_interval: env
                .seconds(ENV_HTTP2_KEEP_ALIVE_INTERVAL_SECS)?
                .unwrap_or(d.keep_alive_interval),
            keep_alive_timeout: env
                .seconds(ENV_HTTP2_KEEP_ALIVE_TIMEOUT_SECS)?
                .unwrap_or(d.keep_alive_timeout),
            adaptive_window: env
                .flag(ENV_HTTP2_ADAPTIVE_WINDOW)?
                .unwrap_or(d.adaptive_window),
            request_timeout: env
                .seconds(ENV_REQUEST_TIMEOUT)?
                .unwrap_or(d.request_timeout),
            connect_timeout: d.connect_timeout,
        }
        .validate()
    }

    /// Checks ranges; the root path is normalized to start with `/` and not end with one.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        let root = self.root_path.trim_matches('/');
        if root.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
            return Err(ConfigError::invalid(
                ENV_HTTP_RPC_ROOT_PATH,
                self.root_path,
                "a URL path such as /v1/rpc (no spaces, '?' or '#')",
            ));
        }
        self.root_path = if root.is_empty() {
            String::new()
        } else {
            format!("/{root}")
        };
        if !FRAME_SIZES.contains(&self.max_frame_size) {
            return Err(ConfigError::invalid(
                ENV_HTTP2_MAX_FRAME_SIZE,
                self.max_frame_size.to_string(),
                "a number of bytes from 16384 to 16777215 (HTTP/2's bounds)",
            ));
        }
        if self.max_message_size > u32::MAX as usize {
            return Err(ConfigError::invalid(
                ENV_HTTP_MAX_MESSAGE_SIZE,
                self.max_message_size.to_string(),
                format!("at most {} bytes", u32::MAX),
            ));
        }
        require_positive(ENV_HTTP_MAX_MESSAGE_SIZE, self.max_message_size, "bytes")?;
        require_positive(
            ENV_HTTP2_MAX_CONCURRENT_STREAMS,
            self.max_concurrent_streams as usize,
            "streams per connection",
        )?;
        require_positive(
            ENV_HTTP2_POOL_MAX_IDLE_PER_HOST,
            self.pool_max_idle_per_host,
            "idle connections per host",
        )?;
        require_nonzero(ENV_HTTP2_POOL_IDLE_TIMEOUT_SECS, self.pool_idle_timeout)?;
        require_nonzero(ENV_HTTP2_KEEP_ALIVE_INTERVAL_SECS, self.keep_alive_interval)?;
        require_nonzero(ENV_HTTP2_KEEP_ALIVE_TIMEOUT_SECS, self.keep_alive_timeout)?;
        require_nonzero(ENV_REQUEST_TIMEOUT, self.request_timeout)?;
        require_nonzero("connect_timeout", self.connect_timeout)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_lookup;

    fn from(vars: &[(&str, &str)]) -> Result<HttpConfig, ConfigError> {
        HttpConfig::from_lookup(test_lookup(vars))
    }

    #[test]
    fn defaults_match_the_spec() {
        let cfg = from(&[]).unwrap();
        assert_eq!(cfg.host, None);
        assert_eq!(cfg.port, 8888);
        assert_eq!(cfg.root_path, "/v1/rpc");
        assert_eq!(cfg.max_frame_size, 1 << 20);
        assert_eq!(cfg.max_concurrent_streams, 1000);
        assert_eq!(cfg.pool_max_idle_per_host, 100);
        assert_eq!(cfg.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(cfg.keep_alive_interval, Duration::from_secs(30));
        assert_eq!(cfg.keep_alive_timeout, Duration::from_secs(10));
        assert!(cfg.adaptive_window);
        assert_eq!(cfg.request_timeout, Duration::from_secs(10));
        assert_eq!(cfg, HttpConfig::default().validate().unwrap());
    }

    #[test]
    fn every_variable_is_read() {
        let cfg = from(&[
            ("DYN_HTTP_RPC_HOST", "127.0.0.1"),
            ("DYN_HTTP_RPC_PORT", "0"),
            ("DYN_HTTP_RPC_ROOT_PATH", "rpc/"),
            ("DYN_HTTP_MAX_MESSAGE_SIZE", "65536"),
            ("DYN_HTTP2_MAX_FRAME_SIZE", "16384"),
            ("DYN_HTTP2_MAX_CONCURRENT_STREAMS", "8"),
            ("DYN_HTTP2_POOL_MAX_IDLE_PER_HOST", "2"),
            ("DYN_HTTP2_POOL_IDLE_TIMEOUT_SECS", "5"),
            ("DYN_HTTP2_KEEP_ALIVE_INTERVAL_SECS", "1.5"),
            ("DYN_HTTP2_KEEP_ALIVE_TIMEOUT_SECS", "2"),
            ("DYN_HTTP2_ADAPTIVE_WINDOW", "false"),
            ("DYN_REQUEST_TIMEOUT", "3"),
        ])
        .unwrap();
        assert_eq!(cfg.host, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(cfg.port, 0);
        assert_eq!(cfg.root_path, "/rpc");
        assert_eq!(cfg.max_message_size, 65536);
        assert_eq!(cfg.max_frame_size, 16384);
        assert_eq!(cfg.max_concurrent_streams, 8);
        assert_eq!(cfg.pool_max_idle_per_host, 2);
        assert_eq!(cfg.pool_idle_timeout, Duration::from_secs(5));
        assert_eq!(cfg.keep_alive_interval, Duration::from_millis(1500));
        assert_eq!(cfg.keep_alive_timeout, Duration::from_secs(2));
        assert!(!cfg.adaptive_window);
        assert_eq!(cfg.request_timeout, Duration::from_secs(3));
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let cases = [
            ("DYN_HTTP_RPC_HOST", "my host", "IP address"),
            ("DYN_HTTP_RPC_PORT", "99999", "0 to 65535"),
            ("DYN_HTTP_RPC_ROOT_PATH", "/v1 rpc", "URL path"),
            ("DYN_HTTP2_MAX_FRAME_SIZE", "1024", "16384 to 16777215"),
            ("DYN_HTTP2_MAX_CONCURRENT_STREAMS", "0", "positive integer"),
            (
                "DYN_HTTP2_POOL_IDLE_TIMEOUT_SECS",
                "never",
                "positive number of seconds",
            ),
            ("DYN_HTTP2_ADAPTIVE_WINDOW", "sometimes", "true or false"),
            ("DYN_HTTP_MAX_MESSAGE_SIZE", "0", "positive integer"),
        ];
        for (var, value, expected) in cases {
            let text = from(&[(var, value)]).unwrap_err().to_string();
            assert!(
                text.contains(var) && text.contains(expected),
                "{var}={value}: {text}"
            );
        }
    }

    #[test]
    fn an_empty_root_path_puts_endpoints_at_the_top() {
        assert_eq!(
            from(&[("DYN_HTTP_RPC_ROOT_PATH", "/")]).unwrap().root_path,
            ""
        );
    }
}
