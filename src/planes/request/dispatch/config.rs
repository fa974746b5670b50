//! [`RequestPlaneConfig`]: which plane, and the settings of every plane this build has.

use std::ffi::OsString;

use super::kind::{ENV_REQUEST_PLANE, RequestPlaneKind};
use crate::config::{ConfigError, Env};
#[cfg(feature = "http")]
use crate::planes::request::http::HttpConfig;
#[cfg(feature = "nats")]
use crate::planes::request::nats::NatsRequestConfig;
use crate::tcp::TcpConfig;

/// Everything the request plane reads from the environment. TCP's settings are always
/// there: a process on another plane still reaches instances that serve over TCP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestPlaneConfig {
    /// `DYN_REQUEST_PLANE` (`tcp`).
    pub plane: RequestPlaneKind,
    /// `DYN_TCP_*`.
    pub tcp: TcpConfig,
    /// `DYN_REQUEST_TIMEOUT` for NATS (the connection is [`NatsConfig`](crate::nats::NatsConfig)'s).
    #[cfg(feature = "nats")]
    pub nats: NatsRequestConfig,
    /// `DYN_HTTP_RPC_*`, `DYN_HTTP2_*`, `DYN_HTTP_MAX_MESSAGE_SIZE`, `DYN_REQUEST_TIMEOUT`.
    #[cfg(feature = "http")]
    pub http: HttpConfig,
}

impl RequestPlaneConfig {
    /// Reads `DYN_REQUEST_PLANE` and every built plane's variables; unset ones take
    /// defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            plane: env.parse(ENV_REQUEST_PLANE)?.unwrap_or_default(),
            tcp: TcpConfig::read(env)?,
            #[cfg(feature = "nats")]
            nats: NatsRequestConfig::read(env)?,
            #[cfg(feature = "http")]
            http: HttpConfig::read(env)?,
        })
    }

    /// Checks every plane's settings, and that the chosen plane is built.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if !self.plane.is_built() {
            return Err(self.plane.not_built());
        }
        Ok(Self {
            plane: self.plane,
            tcp: self.tcp.validate()?,
            #[cfg(feature = "nats")]
            nats: self.nats.validate()?,
            #[cfg(feature = "http")]
            http: self.http.validate()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_lookup;

    #[test]
    fn the_default_is_tcp_and_every_plane_reads_its_variables() {
        let cfg = RequestPlaneConfig::from_lookup(test_lookup(&[])).unwrap();
        assert_eq!(cfg, RequestPlaneConfig::default().validate().unwrap());
        let cfg = RequestPlaneConfig::from_lookup(test_lookup(&[
            ("DYN_REQUEST_PLANE", "Tcp"),
            ("DYN_TCP_POOL_SIZE", "3"),
        ]))
        .unwrap();
        assert_eq!(cfg.plane, RequestPlaneKind::Tcp);
        assert_eq!(cfg.tcp.pool_size, 3);
    }

    #[test]
    fn a_malformed_variable_of_any_plane_is_an_error_naming_it() {
        let err = RequestPlaneConfig::from_lookup(test_lookup(&[("DYN_REQUEST_TIMEOUT", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("DYN_REQUEST_TIMEOUT"), "{err}");
    }
}
