//! `DYN_EVENT_PLANE` and the settings of each event transport.

use std::ffi::OsString;
use std::net::IpAddr;

use super::queue::DEFAULT_SUBSCRIBER_BUFFER;
use crate::config::{ConfigError, Env, require_positive};

pub const ENV_EVENT_PLANE: &str = "DYN_EVENT_PLANE";
pub const ENV_EVENT_PLANE_HOST: &str = "DYN_EVENT_PLANE_HOST";
pub const ENV_EVENT_SUBSCRIBER_BUFFER: &str = "DYN_EVENT_SUBSCRIBER_BUFFER";
pub const ENV_EVENT_DURABLE: &str = "DYN_EVENT_PLANE_DURABLE";

/// Which transport carries events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPlaneKind {
    /// Brokerless PUB/SUB sockets found through discovery (feature `zmq`).
    Zmq,
    /// A NATS server, optionally with JetStream (feature `nats`).
    Nats,
    /// Within one process only.
    Inproc,
    /// Disabled: publishing does nothing, subscribing is an error.
    None,
}

impl Default for EventPlaneKind {
    /// The default needs no server: `zmq` when built (it is a default feature, and
    /// reaches other processes), otherwise `inproc`.
    fn default() -> Self {
        if cfg!(feature = "zmq") {
            Self::Zmq
        } else {
            Self::Inproc
        }
    }
}

impl EventPlaneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zmq => "zmq",
            Self::Nats => "nats",
            Self::Inproc => "inproc",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for EventPlaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventPlaneKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "zmq" if cfg!(feature = "zmq") => Ok(Self::Zmq),
            "zmq" => Err(not_built("zmq")),
            "nats" if cfg!(feature = "nats") => Ok(Self::Nats),
            "nats" => Err(not_built("nats")),
            "inproc" => Ok(Self::Inproc),
            "none" => Ok(Self::None),
            _ => Err(ConfigError::invalid(
                ENV_EVENT_PLANE,
                s,
                "one of: zmq, nats, inproc, none",
            )),
        }
    }
}

/// The error for choosing a transport this build lacks.
pub(crate) fn not_built(plane: &str) -> ConfigError {
    ConfigError::feature_not_built(ENV_EVENT_PLANE, plane, plane, "a transport this build has")
}

/// Everything the event plane reads from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPlaneConfig {
    /// `DYN_EVENT_PLANE`; see [`EventPlaneKind::default`].
    pub kind: EventPlaneKind,
    /// `DYN_EVENT_SUBSCRIBER_BUFFER` (4096): events one subscription holds before it
    /// drops its oldest.
    pub subscriber_buffer: usize,
    /// `DYN_EVENT_PLANE_HOST`: the address ZMQ publishers bind and advertise. Unset: the
    /// host's outbound interface address, or 127.0.0.1 when there is none.
    pub host: Option<IpAddr>,
    /// `DYN_EVENT_PLANE_DURABLE` (`false`): NATS only; subscriptions made with a durable
    /// name keep their position in a JetStream stream across restarts.
    pub durable: bool,
}

impl Default for EventPlaneConfig {
    fn default() -> Self {
        Self {
            kind: EventPlaneKind::default(),
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
            host: None,
            durable: false,
        }
    }
}

impl EventPlaneConfig {
    /// Reads the `DYN_EVENT_*` variables; unset ones take defaults. NATS's connection
    /// settings are [`NatsConfig`](crate::nats::NatsConfig)'s, shared with the request plane.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Self {
            kind: env.parse(ENV_EVENT_PLANE)?.unwrap_or(defaults.kind),
            subscriber_buffer: env
                .count(ENV_EVENT_SUBSCRIBER_BUFFER)?
                .unwrap_or(defaults.subscriber_buffer),
            host: env.ip(ENV_EVENT_PLANE_HOST)?,
            durable: env.flag(ENV_EVENT_DURABLE)?.unwrap_or(defaults.durable),
        }
        .validate()
    }

    /// Checks values set in code: the transport is built, the buffer holds something.
    pub fn validate(self) -> Result<Self, ConfigError> {
        require_positive(
            ENV_EVENT_SUBSCRIBER_BUFFER,
            self.subscriber_buffer,
            "events per subscription",
        )?;
        match self.kind {
            EventPlaneKind::Zmq if !cfg!(feature = "zmq") => Err(not_built("zmq")),
            EventPlaneKind::Nats if !cfg!(feature = "nats") => Err(not_built("nats")),
            _ => Ok(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<EventPlaneConfig, ConfigError> {
        EventPlaneConfig::from_lookup(crate::config::test_lookup(vars))
    }

    #[test]
    fn defaults_need_no_server() {
        let cfg = from(&[]).unwrap();
        let expected = if cfg!(feature = "zmq") {
            EventPlaneKind::Zmq
        } else {
            EventPlaneKind::Inproc
        };
        assert_eq!(cfg.kind, expected);
        assert_eq!(cfg.subscriber_buffer, 4096);
        assert_eq!(cfg.host, None);
        assert!(!cfg.durable);
    }

    #[test]
    fn every_variable_is_read() {
        let cfg = from(&[
            ("DYN_EVENT_PLANE", " None "),
            ("DYN_EVENT_SUBSCRIBER_BUFFER", "16"),
            ("DYN_EVENT_PLANE_HOST", "::1"),
            ("DYN_EVENT_PLANE_DURABLE", "true"),
        ])
        .unwrap();
        assert_eq!(cfg.kind, EventPlaneKind::None);
        assert_eq!(cfg.subscriber_buffer, 16);
        assert_eq!(cfg.host, Some("::1".parse().unwrap()));
        assert!(cfg.durable);
        assert_eq!(
            from(&[("DYN_EVENT_PLANE", "inproc")]).unwrap().kind,
            EventPlaneKind::Inproc
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_the_choices() {
        let text = |vars: &[(&str, &str)]| from(vars).unwrap_err().to_string();
        let err = text(&[("DYN_EVENT_PLANE", "kafka")]);
        assert!(
            err.contains("DYN_EVENT_PLANE") && err.contains("zmq, nats, inproc, none"),
            "{err}"
        );
        assert!(
            text(&[("DYN_EVENT_SUBSCRIBER_BUFFER", "0")]).contains("DYN_EVENT_SUBSCRIBER_BUFFER")
        );
        assert!(text(&[("DYN_EVENT_PLANE_HOST", "my host")]).contains("DYN_EVENT_PLANE_HOST"));
        assert!(text(&[("DYN_EVENT_PLANE_DURABLE", "maybe")]).contains("DYN_EVENT_PLANE_DURABLE"));
    }

    #[test]
    fn a_transport_not_built_names_its_feature() {
        for (plane, built) in [
            ("zmq", cfg!(feature = "zmq")),
            ("nats", cfg!(feature = "nats")),
        ] {
            match from(&[("DYN_EVENT_PLANE", plane)]) {
                Ok(cfg) => assert!(built && cfg.kind.as_str() == plane),
                Err(err) => {
                    assert!(!built);
                    assert!(
                        err.to_string().contains(&format!("--features {plane}")),
                        "{err}"
                    );
                }
            }
        }
    }
}
