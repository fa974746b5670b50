//! Request-plane configuration: plain structs with documented defaults.
//!
//! [`RequestPlaneConfig::from_env`] is the one place the `DYN_*` environment is read.
//! Every value can also be set in code; call [`TcpConfig::validate`] after doing so.
//! Sizes are plain byte counts, durations plain (possibly fractional) seconds.

use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use crate::codec::HEADER_LEN;

pub const ENV_REQUEST_PLANE: &str = "DYN_REQUEST_PLANE";
pub const ENV_RPC_HOST: &str = "DYN_TCP_RPC_HOST";
pub const ENV_RPC_PORT: &str = "DYN_TCP_RPC_PORT";
pub const ENV_MAX_MESSAGE_SIZE: &str = "DYN_TCP_MAX_MESSAGE_SIZE";
pub const ENV_SHRINK_MESSAGE_SIZE: &str = "DYN_TCP_SHRINK_MESSAGE_SIZE";
pub const ENV_REQUEST_TIMEOUT: &str = "DYN_TCP_REQUEST_TIMEOUT";
pub const ENV_POOL_SIZE: &str = "DYN_TCP_POOL_SIZE";
pub const ENV_CONNECT_TIMEOUT: &str = "DYN_TCP_CONNECT_TIMEOUT";
pub const ENV_CHANNEL_BUFFER: &str = "DYN_TCP_CHANNEL_BUFFER";
pub const ENV_FRAME_TIMEOUT: &str = "DYN_TCP_FRAME_TIMEOUT";
pub const ENV_IDLE_TIMEOUT: &str = "DYN_TCP_IDLE_TIMEOUT";

const MIB: usize = 1024 * 1024;

/// A configuration value that was malformed or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid {var}={value:?}: expected {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    #[error("{var} is not valid Unicode")]
    NotUnicode { var: &'static str },
}

/// Which transport carries requests (`DYN_REQUEST_PLANE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestPlaneKind {
    #[default]
    Tcp,
    Nats,
}

impl std::str::FromStr for RequestPlaneKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "nats" if cfg!(feature = "nats") => Ok(Self::Nats),
            "nats" => Err(feature_not_built(ENV_REQUEST_PLANE, "nats", "tcp")),
            _ => Err(invalid(ENV_REQUEST_PLANE, s, "one of: tcp, nats")),
        }
    }
}

/// The error for `var=feature` in a build without that cargo feature; `instead` names
/// the values this build accepts.
pub(crate) fn feature_not_built(var: &'static str, feature: &str, instead: &str) -> ConfigError {
    invalid(
        var,
        feature,
        &format!(
            "{instead}: this build lacks the `{feature}` cargo feature (rebuild with --features {feature})"
        ),
    )
}

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
    /// `DYN_TCP_REQUEST_TIMEOUT`: per request, until its last response frame (10 s).
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
            request_timeout: Duration::from_secs(10),
            pool_size: 50,
            connect_timeout: Duration::from_secs(3),
            channel_buffer: 100,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl TcpConfig {
    /// Checks ranges and clamps the shrink threshold to the max message size.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if self.max_message_size <= HEADER_LEN || self.max_message_size > u32::MAX as usize {
            return Err(invalid(
                ENV_MAX_MESSAGE_SIZE,
                &self.max_message_size.to_string(),
                &format!(
                    "a number of bytes above the {HEADER_LEN}-byte frame header and at most {}",
                    u32::MAX
                ),
            ));
        }
        self.shrink_message_size = self.shrink_message_size.min(self.max_message_size);
        let positive = [
            (
                ENV_POOL_SIZE,
                self.pool_size,
                "connections per remote address",
            ),
            (
                ENV_CHANNEL_BUFFER,
                self.channel_buffer,
                "queued requests per connection",
            ),
        ];
        for (var, value, what) in positive {
            if value == 0 {
                return Err(invalid(var, "0", &format!("a positive integer ({what})")));
            }
        }
        for (var, value) in [
            (ENV_REQUEST_TIMEOUT, self.request_timeout),
            (ENV_CONNECT_TIMEOUT, self.connect_timeout),
            (ENV_FRAME_TIMEOUT, self.frame_timeout),
            (ENV_IDLE_TIMEOUT, self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(var, "0", "a positive number of seconds"));
            }
        }
        Ok(self)
    }

    /// The port to bind: 0 asks the OS for a free one.
    pub fn bind_port(&self) -> u16 {
        self.port.unwrap_or(0)
    }
}

/// Everything the request plane reads from the environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestPlaneConfig {
    pub plane: RequestPlaneKind,
    pub tcp: TcpConfig,
}

impl RequestPlaneConfig {
    /// Reads `DYN_REQUEST_PLANE` and the `DYN_TCP_*` variables; unset ones take defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var_os(var))
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup` (tests use a
    /// map, so they never race on the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| read_var(&lookup, var);
        let mut cfg = Self::default();
        if let Some(v) = get(ENV_REQUEST_PLANE)? {
            cfg.plane = v.parse()?;
        }
        let tcp = &mut cfg.tcp;
        if let Some(v) = get(ENV_RPC_HOST)? {
            tcp.host =
                Some(v.parse().map_err(|_| {
                    invalid(ENV_RPC_HOST, &v, "an IP address such as 10.0.0.5 or ::1")
                })?);
        }
        if let Some(v) = get(ENV_RPC_PORT)? {
            let port: u16 = v
                .parse()
                .map_err(|_| invalid(ENV_RPC_PORT, &v, "a port number from 0 to 65535"))?;
            tcp.port = (port != 0).then_some(port);
        }
        if let Some(v) = get(ENV_MAX_MESSAGE_SIZE)? {
            tcp.max_message_size = parse_bytes(ENV_MAX_MESSAGE_SIZE, &v)?;
        }
        if let Some(v) = get(ENV_SHRINK_MESSAGE_SIZE)? {
            tcp.shrink_message_size = parse_bytes(ENV_SHRINK_MESSAGE_SIZE, &v)?;
        }
        if let Some(v) = get(ENV_REQUEST_TIMEOUT)? {
            tcp.request_timeout = parse_seconds(ENV_REQUEST_TIMEOUT, &v)?;
        }
        if let Some(v) = get(ENV_CONNECT_TIMEOUT)? {
            tcp.connect_timeout = parse_seconds(ENV_CONNECT_TIMEOUT, &v)?;
        }
        if let Some(v) = get(ENV_FRAME_TIMEOUT)? {
            tcp.frame_timeout = parse_seconds(ENV_FRAME_TIMEOUT, &v)?;
        }
        if let Some(v) = get(ENV_IDLE_TIMEOUT)? {
            tcp.idle_timeout = parse_seconds(ENV_IDLE_TIMEOUT, &v)?;
        }
        if let Some(v) = get(ENV_POOL_SIZE)? {
            tcp.pool_size = parse_count(ENV_POOL_SIZE, &v)?;
        }
        if let Some(v) = get(ENV_CHANNEL_BUFFER)? {
            tcp.channel_buffer = parse_count(ENV_CHANNEL_BUFFER, &v)?;
        }
        cfg.tcp = cfg.tcp.validate()?;
        Ok(cfg)
    }
}

pub const ENV_NATS_SERVER: &str = "NATS_SERVER";
pub const ENV_NATS_USERNAME: &str = "NATS_AUTH_USERNAME";
pub const ENV_NATS_PASSWORD: &str = "NATS_AUTH_PASSWORD";
pub const ENV_NATS_TOKEN: &str = "NATS_AUTH_TOKEN";
pub const ENV_NATS_CREDENTIALS: &str = "NATS_AUTH_CREDENTIALS_FILE";
pub const ENV_NATS_NKEY: &str = "NATS_AUTH_NKEY";
pub const ENV_NATS_CONNECT_TIMEOUT: &str = "NATS_CONNECT_TIMEOUT";
pub const ENV_NATS_PUBLISH_BUFFER: &str = "NATS_PUBLISH_BUFFER";

/// How to reach NATS, shared by every plane that uses it. Present in every build so the
/// configuration has one shape; only used with the `nats` feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `NATS_SERVER` (`nats://localhost:4222`); several URLs may be comma-separated.
    pub url: String,
    pub auth: NatsAuth,
    /// `NATS_CONNECT_TIMEOUT` (3 s): an unreachable server is an error after this long.
    pub connect_timeout: Duration,
    /// `NATS_PUBLISH_BUFFER` (65536 messages): what the client holds while the server is
    /// away (a restart, a network blip) and sends once it reconnects. A publisher that
    /// fills it waits for the connection instead of losing messages.
    pub publish_buffer: usize,
}

/// NATS credentials; at most one kind may be configured.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    #[default]
    None,
    /// `NATS_AUTH_USERNAME` + `NATS_AUTH_PASSWORD`.
    UserPassword { user: String, password: String },
    /// `NATS_AUTH_TOKEN`.
    Token(String),
    /// `NATS_AUTH_CREDENTIALS_FILE`: a `.creds` file (JWT + nkey seed).
    CredentialsFile(std::path::PathBuf),
    /// `NATS_AUTH_NKEY`: an nkey seed.
    Nkey(String),
}

impl std::fmt::Debug for NatsAuth {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::CredentialsFile(path) => write!(f, "CredentialsFile({path:?})"),
            Self::Nkey(_) => f.write_str("Nkey(***)"),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://localhost:4222".to_owned(),
            auth: NatsAuth::None,
            connect_timeout: Duration::from_secs(3),
            publish_buffer: 65_536,
        }
    }
}

impl NatsConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var_os(var))
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        if let Some(v) = read_var(&lookup, ENV_NATS_SERVER)? {
            if !v.split(',').all(|u| {
                let u = u.trim();
                !u.is_empty() && !u.contains(char::is_whitespace)
            }) {
                return Err(invalid(
                    ENV_NATS_SERVER,
                    &v,
                    "one or more comma-separated URLs, e.g. nats://127.0.0.1:4222",
                ));
            }
            cfg.url = v;
        }
        if let Some(v) = read_var(&lookup, ENV_NATS_CONNECT_TIMEOUT)? {
            cfg.connect_timeout = parse_seconds(ENV_NATS_CONNECT_TIMEOUT, &v)?;
        }
        if let Some(v) = read_var(&lookup, ENV_NATS_PUBLISH_BUFFER)? {
            cfg.publish_buffer = parse_count(ENV_NATS_PUBLISH_BUFFER, &v)?;
        }
        let user = read_var(&lookup, ENV_NATS_USERNAME)?;
        let password = read_var(&lookup, ENV_NATS_PASSWORD)?;
        let mut choices = Vec::new();
        match (user, password) {
            (Some(user), Some(password)) => {
                choices.push((ENV_NATS_USERNAME, NatsAuth::UserPassword { user, password }))
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    ENV_NATS_PASSWORD,
                    "",
                    "a password, because NATS_AUTH_USERNAME is set",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    ENV_NATS_USERNAME,
                    "",
                    "a user name, because NATS_AUTH_PASSWORD is set",
                ));
            }
        }
        if let Some(token) = read_var(&lookup, ENV_NATS_TOKEN)? {
            choices.push((ENV_NATS_TOKEN, NatsAuth::Token(token)));
        }
        if let Some(path) = read_var(&lookup, ENV_NATS_CREDENTIALS)? {
            choices.push((ENV_NATS_CREDENTIALS, NatsAuth::CredentialsFile(path.into())));
        }
        if let Some(seed) = read_var(&lookup, ENV_NATS_NKEY)? {
            choices.push((ENV_NATS_NKEY, NatsAuth::Nkey(seed)));
        }
        if choices.len() > 1 {
            let names: Vec<&str> = choices.iter().map(|(var, _)| *var).collect();
            return Err(invalid(
                choices[1].0,
                "(set)",
                &format!(
                    "one kind of NATS credentials, but {} are all set",
                    names.join(", ")
                ),
            ));
        }
        if let Some((_, auth)) = choices.pop() {
            cfg.auth = auth;
        }
        Ok(cfg)
    }
}

/// The trimmed value of `var`; unset and blank both mean "use the default".
pub(crate) fn read_var(
    lookup: &impl Fn(&str) -> Option<OsString>,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    match lookup(var) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
            .map_err(|_| ConfigError::NotUnicode { var }),
    }
}

pub(crate) fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

fn parse_bytes(var: &'static str, v: &str) -> Result<usize, ConfigError> {
    v.parse()
        .map_err(|_| invalid(var, v, "a whole number of bytes, e.g. 33554432 for 32 MiB"))
}

pub(crate) fn parse_count(var: &'static str, v: &str) -> Result<usize, ConfigError> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(var, v, "a positive integer")),
    }
}

pub(crate) fn parse_seconds(var: &'static str, v: &str) -> Result<Duration, ConfigError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| invalid(var, v, "a positive number of seconds, e.g. 10 or 0.5"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<RequestPlaneConfig, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        RequestPlaneConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn err_text(vars: &[(&str, &str)]) -> String {
        from(vars).expect_err("should be refused").to_string()
    }

    #[test]
    fn defaults_match_the_spec() {
        let cfg = from(&[]).unwrap();
        assert_eq!(cfg.plane, RequestPlaneKind::Tcp);
        let tcp = cfg.tcp;
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
        let cfg = from(&[
            ("DYN_REQUEST_PLANE", " TCP "),
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
        assert_eq!(cfg.plane, RequestPlaneKind::Tcp);
        assert_eq!(cfg.tcp.host, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(cfg.tcp.port, Some(9123));
        assert_eq!(cfg.tcp.max_message_size, 1 << 20);
        assert_eq!(cfg.tcp.shrink_message_size, 1 << 16);
        assert_eq!(cfg.tcp.request_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.tcp.pool_size, 4);
        assert_eq!(cfg.tcp.connect_timeout, Duration::from_secs(1));
        assert_eq!(cfg.tcp.channel_buffer, 7);
        assert_eq!(cfg.tcp.frame_timeout, Duration::from_millis(500));
        assert_eq!(cfg.tcp.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn nats_request_plane_needs_its_feature() {
        let result = from(&[("DYN_REQUEST_PLANE", "Nats")]);
        if cfg!(feature = "nats") {
            assert_eq!(result.unwrap().plane, RequestPlaneKind::Nats);
        } else {
            let text = result.unwrap_err().to_string();
            assert!(
                text.contains("DYN_REQUEST_PLANE") && text.contains("--features nats"),
                "{text}"
            );
        }
    }

    #[test]
    fn request_plane_is_case_insensitive_and_names_valid_values() {
        assert_eq!(
            from(&[("DYN_REQUEST_PLANE", "Tcp")]).unwrap().plane,
            RequestPlaneKind::Tcp
        );
        let text = err_text(&[("DYN_REQUEST_PLANE", "grpc")]);
        assert!(
            text.contains("DYN_REQUEST_PLANE") && text.contains("grpc"),
            "{text}"
        );
        assert!(text.contains("tcp, nats"), "{text}");
    }

    #[test]
    fn port_zero_means_os_assigned() {
        assert_eq!(from(&[("DYN_TCP_RPC_PORT", "0")]).unwrap().tcp.port, None);
    }

    #[test]
    fn shrink_threshold_is_clamped_to_max_message_size() {
        let cfg = from(&[
            ("DYN_TCP_MAX_MESSAGE_SIZE", "4096"),
            ("DYN_TCP_SHRINK_MESSAGE_SIZE", "999999"),
        ])
        .unwrap();
        assert_eq!(cfg.tcp.shrink_message_size, 4096);
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
        assert!(
            zero_pool
                .validate()
                .unwrap_err()
                .to_string()
                .contains("DYN_TCP_POOL_SIZE")
        );
        let tiny = TcpConfig {
            max_message_size: HEADER_LEN,
            ..TcpConfig::default()
        };
        assert!(
            tiny.validate()
                .unwrap_err()
                .to_string()
                .contains("DYN_TCP_MAX_MESSAGE_SIZE")
        );
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
    }

    #[cfg(unix)]
    #[test]
    fn non_unicode_value_is_an_error_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let err = RequestPlaneConfig::from_lookup(|k| {
            (k == ENV_POOL_SIZE).then(|| OsString::from_vec(vec![0xff, 0xfe]))
        })
        .unwrap_err();
        assert_eq!(err, ConfigError::NotUnicode { var: ENV_POOL_SIZE });
    }

    #[test]
    fn blank_values_count_as_unset() {
        assert_eq!(
            from(&[("DYN_TCP_POOL_SIZE", "  ")]).unwrap().tcp.pool_size,
            50
        );
    }

    fn nats(vars: &[(&str, &str)]) -> Result<NatsConfig, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        NatsConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nats_defaults_and_variables() {
        let cfg = nats(&[]).unwrap();
        assert_eq!(cfg.url, "nats://localhost:4222");
        assert_eq!(cfg.auth, NatsAuth::None);
        assert_eq!(cfg.connect_timeout, Duration::from_secs(3));
        assert_eq!(cfg.publish_buffer, 65_536);
        let cfg = nats(&[
            ("NATS_SERVER", "nats://127.0.0.1:5000"),
            ("NATS_AUTH_USERNAME", "u"),
            ("NATS_AUTH_PASSWORD", "p"),
            ("NATS_CONNECT_TIMEOUT", "0.5"),
            ("NATS_PUBLISH_BUFFER", "10"),
        ])
        .unwrap();
        assert_eq!(cfg.url, "nats://127.0.0.1:5000");
        let auth = NatsAuth::UserPassword {
            user: "u".into(),
            password: "p".into(),
        };
        assert_eq!(cfg.auth, auth);
        assert!(
            !format!("{auth:?}").contains('p'),
            "secrets stay out of Debug"
        );
        assert_eq!(cfg.connect_timeout, Duration::from_millis(500));
        assert_eq!(cfg.publish_buffer, 10);
        let token = nats(&[("NATS_AUTH_TOKEN", "s3cret")]).unwrap();
        assert_eq!(token.auth, NatsAuth::Token("s3cret".into()));
    }

    #[test]
    fn nats_bad_values_name_the_variable() {
        let text = |vars: &[(&str, &str)]| nats(vars).unwrap_err().to_string();
        assert!(text(&[("NATS_SERVER", "nats://a b")]).contains("NATS_SERVER"));
        assert!(text(&[("NATS_CONNECT_TIMEOUT", "-1")]).contains("NATS_CONNECT_TIMEOUT"));
        assert!(text(&[("NATS_PUBLISH_BUFFER", "0")]).contains("NATS_PUBLISH_BUFFER"));
        assert!(text(&[("NATS_AUTH_USERNAME", "u")]).contains("NATS_AUTH_PASSWORD"));
        let both = text(&[("NATS_AUTH_TOKEN", "t"), ("NATS_AUTH_NKEY", "SU")]);
        assert!(both.contains("NATS_AUTH_TOKEN, NATS_AUTH_NKEY"), "{both}");
    }
}
