//! `DYN_EVENT_PLANE` and the settings of each event transport.

use std::ffi::OsString;
use std::net::IpAddr;

use super::queue::DEFAULT_SUBSCRIBER_BUFFER;
use crate::config::{ConfigError, NatsConfig, feature_not_built, invalid, parse_count, read_var};

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
            _ => Err(invalid(
                ENV_EVENT_PLANE,
                s,
                "one of: zmq, nats, inproc, none",
            )),
        }
    }
}

/// The error for choosing a transport this build lacks.
pub(crate) fn not_built(plane: &str) -> ConfigError {
    feature_not_built(ENV_EVENT_PLANE, plane, "a transport this build has")
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
    /// `NATS_SERVER` and `NATS_AUTH_*`.
    pub nats: NatsConfig,
}

impl Default for EventPlaneConfig {
    fn default() -> Self {
        Self {
            kind: EventPlaneKind::default(),
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
            host: None,
            durable: false,
            nats: NatsConfig::default(),
        }
    }
}

impl EventPlaneConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var_os(var))
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        if let Some(v) = read_var(&lookup, ENV_EVENT_PLANE)? {
            cfg.kind = v.parse()?;
        }
        if let Some(v) = read_var(&lookup, ENV_EVENT_SUBSCRIBER_BUFFER)? {
            cfg.subscriber_buffer = parse_count(ENV_EVENT_SUBSCRIBER_BUFFER, &v)?;
        }
        if let Some(v) = read_var(&lookup, ENV_EVENT_PLANE_HOST)? {
            cfg.host = Some(v.parse().map_err(|_| {
                invalid(
                    ENV_EVENT_PLANE_HOST,
                    &v,
                    "an IP address to bind and advertise, e.g. 10.0.0.5",
                )
            })?);
        }
        if let Some(v) = read_var(&lookup, ENV_EVENT_DURABLE)? {
            cfg.durable = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(invalid(ENV_EVENT_DURABLE, &v, "true or false")),
            };
        }
        cfg.nats = NatsConfig::from_lookup(&lookup)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<EventPlaneConfig, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        EventPlaneConfig::from_lookup(|k| map.get(k).cloned())
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
            ("NATS_SERVER", "nats://127.0.0.1:1"),
        ])
        .unwrap();
        assert_eq!(cfg.kind, EventPlaneKind::None);
        assert_eq!(cfg.subscriber_buffer, 16);
        assert_eq!(cfg.host, Some("::1".parse().unwrap()));
        assert!(cfg.durable);
        assert_eq!(cfg.nats.url, "nats://127.0.0.1:1");
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
