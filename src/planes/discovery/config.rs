//! Discovery settings: plain structs with documented defaults, read from the
//! environment by [`DiscoveryConfig::from_env`] only.
//!
//! | variable | default | |
//! |---|---|---|
//! | `DYN_DISCOVERY_BACKEND` | `file` | `file`, `mem` or `etcd`, case-insensitive |
//! | `DYN_DISCOVERY_LEASE_TTL` | `10` | seconds a dead process's records survive it |
//! | `DYN_FILE_KV` | `<temp dir>/planewire-kv` | directory of the file backend |
//! | `ETCD_ENDPOINTS` | `http://localhost:2379` | comma-separated |
//! | `ETCD_AUTH_USERNAME`, `ETCD_AUTH_PASSWORD` | unset | both or neither |
//! | `ETCD_AUTH_CA` | unset | PEM CA certificate: TLS |
//! | `ETCD_AUTH_CLIENT_CERT`, `ETCD_AUTH_CLIENT_KEY` | unset | PEM client identity: both or neither |

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, Env};

pub const ENV_DISCOVERY_BACKEND: &str = "DYN_DISCOVERY_BACKEND";
pub const ENV_DISCOVERY_LEASE_TTL: &str = "DYN_DISCOVERY_LEASE_TTL";
pub const ENV_FILE_KV: &str = "DYN_FILE_KV";
pub const ENV_ETCD_ENDPOINTS: &str = "ETCD_ENDPOINTS";
pub const ENV_ETCD_USERNAME: &str = "ETCD_AUTH_USERNAME";
pub const ENV_ETCD_PASSWORD: &str = "ETCD_AUTH_PASSWORD";
pub const ENV_ETCD_CA: &str = "ETCD_AUTH_CA";
pub const ENV_ETCD_CLIENT_CERT: &str = "ETCD_AUTH_CLIENT_CERT";
pub const ENV_ETCD_CLIENT_KEY: &str = "ETCD_AUTH_CLIENT_KEY";

/// Which store holds the records (`DYN_DISCOVERY_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryBackend {
    /// Files in a directory: several processes on one host, no server. The default, so
    /// that the default path needs nothing running (Dynamo defaults to etcd).
    #[default]
    File,
    /// In this process only.
    Memory,
    /// An etcd cluster; needs the `etcd` cargo feature.
    Etcd,
}

impl std::str::FromStr for DiscoveryBackend {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "file" => Ok(Self::File),
            "mem" | "memory" => Ok(Self::Memory),
            "etcd" if cfg!(feature = "etcd") => Ok(Self::Etcd),
            "etcd" => Err(etcd_not_built()),
            _ => Err(ConfigError::invalid(
                ENV_DISCOVERY_BACKEND,
                s,
                "one of: file, mem, etcd",
            )),
        }
    }
}

/// The error for choosing etcd in a build without it.
pub(crate) fn etcd_not_built() -> ConfigError {
    ConfigError::feature_not_built(ENV_DISCOVERY_BACKEND, "etcd", "etcd", "file or mem")
}

/// Everything discovery reads from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub backend: DiscoveryBackend,
    /// `DYN_DISCOVERY_LEASE_TTL`: how long the records of a process that stopped
    /// keeping its lease alive survive it (10 s). Keep-alives go every third of it.
    pub lease_ttl: Duration,
    /// `DYN_FILE_KV`: the file backend's directory (`<system temp dir>/planewire-kv`).
    pub file_dir: PathBuf,
    pub etcd: EtcdConfig,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            backend: DiscoveryBackend::default(),
            lease_ttl: Duration::from_secs(10),
            file_dir: std::env::temp_dir().join("planewire-kv"),
            etcd: EtcdConfig::default(),
        }
    }
}

/// How to reach etcd. Present in every build so the configuration has one shape; only
/// used with the `etcd` feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `ETCD_ENDPOINTS` (`http://localhost:2379`).
    pub endpoints: Vec<String>,
    /// `ETCD_AUTH_USERNAME` and `ETCD_AUTH_PASSWORD`: both or neither.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `ETCD_AUTH_CA`: PEM file of the CA that signed etcd's certificate; enables TLS.
    pub ca: Option<PathBuf>,
    /// `ETCD_AUTH_CLIENT_CERT` and `ETCD_AUTH_CLIENT_KEY`: PEM client identity for
    /// mutual TLS, both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Bound on connecting (and authenticating) at startup (3 s).
    pub connect_timeout: Duration,
    /// Bound on each later request, keep-alives included (5 s).
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://localhost:2379".to_owned()],
            username: None,
            password: None,
            ca: None,
            client_cert: None,
            client_key: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl DiscoveryConfig {
    /// Reads the variables in the module docs; unset or blank ones take defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup` (tests use a
    /// map, so they never race on the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        if let Some(backend) = env.parse(ENV_DISCOVERY_BACKEND)? {
            cfg.backend = backend;
        }
        if let Some(ttl) = env.seconds(ENV_DISCOVERY_LEASE_TTL)? {
            cfg.lease_ttl = ttl;
        }
        if let Some(dir) = env.path(ENV_FILE_KV) {
            cfg.file_dir = dir;
        }
        let etcd = &mut cfg.etcd;
        if let Some(v) = env.text(ENV_ETCD_ENDPOINTS)? {
            etcd.endpoints = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
        }
        etcd.username = env.text(ENV_ETCD_USERNAME)?;
        // A password may legitimately have surrounding spaces: take it verbatim.
        etcd.password = env.verbatim(ENV_ETCD_PASSWORD)?;
        etcd.ca = env.path(ENV_ETCD_CA);
        etcd.client_cert = env.path(ENV_ETCD_CLIENT_CERT);
        etcd.client_key = env.path(ENV_ETCD_CLIENT_KEY);
        cfg.validate()
    }

    /// Checks values that may have been set in code.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.lease_ttl.is_zero() {
            return Err(ConfigError::invalid(
                ENV_DISCOVERY_LEASE_TTL,
                "0",
                "a positive number of seconds, e.g. 10 or 2.5",
            ));
        }
        if self.backend == DiscoveryBackend::Etcd && !cfg!(feature = "etcd") {
            return Err(etcd_not_built());
        }
        let etcd = &self.etcd;
        if etcd.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                ENV_ETCD_ENDPOINTS,
                "",
                "comma-separated URLs such as http://10.0.0.1:2379,http://10.0.0.2:2379",
            ));
        }
        match (&etcd.username, &etcd.password) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    ENV_ETCD_PASSWORD,
                    "",
                    "a password, since ETCD_AUTH_USERNAME is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    ENV_ETCD_USERNAME,
                    "",
                    "a user name, since ETCD_AUTH_PASSWORD is set",
                ));
            }
            _ => {}
        }
        if etcd.client_cert.is_some() != etcd.client_key.is_some() {
            let (var, other) = if etcd.client_cert.is_some() {
                (ENV_ETCD_CLIENT_KEY, ENV_ETCD_CLIENT_CERT)
            } else {
                (ENV_ETCD_CLIENT_CERT, ENV_ETCD_CLIENT_KEY)
            };
            return Err(ConfigError::invalid(
                var,
                "",
                format!("a PEM file path, since {other} is set"),
            ));
        }
        for (var, value) in [
            ("etcd connect timeout", etcd.connect_timeout),
            ("etcd request timeout", etcd.request_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(var, "0", "a positive duration"));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<DiscoveryConfig, ConfigError> {
        DiscoveryConfig::from_lookup(crate::config::test_lookup(vars))
    }

    #[test]
    fn defaults_need_no_server() {
        let cfg = from(&[]).unwrap();
        assert_eq!(cfg.backend, DiscoveryBackend::File);
        assert_eq!(cfg.lease_ttl, Duration::from_secs(10));
        assert_eq!(cfg.file_dir, std::env::temp_dir().join("planewire-kv"));
        assert_eq!(cfg.etcd.endpoints, ["http://localhost:2379"]);
        assert_eq!(cfg.etcd.username, None);
        assert_eq!(cfg, DiscoveryConfig::default());
    }

    #[test]
    fn every_variable_is_read() {
        let backend = if cfg!(feature = "etcd") {
            "ETCD"
        } else {
            "Mem"
        };
        let cfg = from(&[
            ("DYN_DISCOVERY_BACKEND", backend),
            ("DYN_DISCOVERY_LEASE_TTL", "2.5"),
            ("DYN_FILE_KV", "/var/lib/kv"),
            ("ETCD_ENDPOINTS", "http://a:2379, http://b:2379,"),
            ("ETCD_AUTH_USERNAME", "svc"),
            ("ETCD_AUTH_PASSWORD", " s3cret "),
            ("ETCD_AUTH_CA", "/ca.pem"),
            ("ETCD_AUTH_CLIENT_CERT", "/c.pem"),
            ("ETCD_AUTH_CLIENT_KEY", "/k.pem"),
        ])
        .unwrap();
        let expected = if cfg!(feature = "etcd") {
            DiscoveryBackend::Etcd
        } else {
            DiscoveryBackend::Memory
        };
        assert_eq!(cfg.backend, expected);
        assert_eq!(cfg.lease_ttl, Duration::from_millis(2500));
        assert_eq!(cfg.file_dir, PathBuf::from("/var/lib/kv"));
        assert_eq!(cfg.etcd.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(cfg.etcd.username.as_deref(), Some("svc"));
        assert_eq!(cfg.etcd.password.as_deref(), Some(" s3cret "));
        assert_eq!(cfg.etcd.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(cfg.etcd.client_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(cfg.etcd.client_key, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn backend_is_case_insensitive_and_names_valid_values() {
        assert_eq!(
            from(&[("DYN_DISCOVERY_BACKEND", "FILE")]).unwrap().backend,
            DiscoveryBackend::File
        );
        assert_eq!(
            from(&[("DYN_DISCOVERY_BACKEND", "mem")]).unwrap().backend,
            DiscoveryBackend::Memory
        );
        let text = from(&[("DYN_DISCOVERY_BACKEND", "zookeeper")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("DYN_DISCOVERY_BACKEND"), "{text}");
        assert!(text.contains("zookeeper"), "{text}");
        assert!(text.contains("file, mem, etcd"), "{text}");
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_without_the_feature_names_the_feature() {
        let text = from(&[("DYN_DISCOVERY_BACKEND", "etcd")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("`etcd` cargo feature"), "{text}");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let cases: &[&[(&str, &str)]] = &[
            &[("DYN_DISCOVERY_LEASE_TTL", "ten")],
            &[("DYN_DISCOVERY_LEASE_TTL", "0")],
            &[("ETCD_ENDPOINTS", " , ")],
            &[("ETCD_AUTH_USERNAME", "svc")],
            &[("ETCD_AUTH_CLIENT_CERT", "/c.pem")],
        ];
        let expected_var = [
            "DYN_DISCOVERY_LEASE_TTL",
            "DYN_DISCOVERY_LEASE_TTL",
            "ETCD_ENDPOINTS",
            "ETCD_AUTH_PASSWORD",
            "ETCD_AUTH_CLIENT_KEY",
        ];
        for (vars, var) in cases.iter().zip(expected_var) {
            let text = from(vars).expect_err("should be refused").to_string();
            assert!(text.contains(var), "{vars:?}: {text}");
        }
    }
}
