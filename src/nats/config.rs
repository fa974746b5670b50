//! [`NatsConfig`]: how to reach NATS (`NATS_*`), owned once for every plane that uses it.

use std::ffi::OsString;
use std::time::Duration;

use crate::config::{ConfigError, Env, require_nonzero, require_positive};

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
    /// Reads the `NATS_*` variables; unset ones take defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    pub(crate) fn read(env: &Env) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        if let Some(v) = env.text(ENV_NATS_SERVER)? {
            if !v.split(',').all(|u| {
                let u = u.trim();
                !u.is_empty() && !u.contains(char::is_whitespace)
            }) {
                return Err(ConfigError::invalid(
                    ENV_NATS_SERVER,
                    v,
                    "one or more comma-separated URLs, e.g. nats://127.0.0.1:4222",
                ));
            }
            cfg.url = v;
        }
        if let Some(v) = env.seconds(ENV_NATS_CONNECT_TIMEOUT)? {
            cfg.connect_timeout = v;
        }
        if let Some(v) = env.count(ENV_NATS_PUBLISH_BUFFER)? {
            cfg.publish_buffer = v;
        }
        let user = env.text(ENV_NATS_USERNAME)?;
        let password = env.text(ENV_NATS_PASSWORD)?;
        let mut choices = Vec::new();
        match (user, password) {
            (Some(user), Some(password)) => {
                choices.push((ENV_NATS_USERNAME, NatsAuth::UserPassword { user, password }))
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    ENV_NATS_PASSWORD,
                    "",
                    "a password, because NATS_AUTH_USERNAME is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    ENV_NATS_USERNAME,
                    "",
                    "a user name, because NATS_AUTH_PASSWORD is set",
                ));
            }
        }
        if let Some(token) = env.text(ENV_NATS_TOKEN)? {
            choices.push((ENV_NATS_TOKEN, NatsAuth::Token(token)));
        }
        if let Some(path) = env.text(ENV_NATS_CREDENTIALS)? {
            choices.push((ENV_NATS_CREDENTIALS, NatsAuth::CredentialsFile(path.into())));
        }
        if let Some(seed) = env.text(ENV_NATS_NKEY)? {
            choices.push((ENV_NATS_NKEY, NatsAuth::Nkey(seed)));
        }
        if choices.len() > 1 {
            let names: Vec<&str> = choices.iter().map(|(var, _)| *var).collect();
            return Err(ConfigError::invalid(
                choices[1].0,
                "(set)",
                format!(
                    "one kind of NATS credentials, but {} are all set",
                    names.join(", ")
                ),
            ));
        }
        if let Some((_, auth)) = choices.pop() {
            cfg.auth = auth;
        }
        cfg.validate()
    }

    /// Checks values set in code: a URL list, a connect timeout, a buffer.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.url.split(',').any(|u| u.trim().is_empty()) {
            return Err(ConfigError::invalid(
                ENV_NATS_SERVER,
                self.url,
                "one or more comma-separated URLs, e.g. nats://127.0.0.1:4222",
            ));
        }
        require_nonzero(ENV_NATS_CONNECT_TIMEOUT, self.connect_timeout)?;
        require_positive(ENV_NATS_PUBLISH_BUFFER, self.publish_buffer, "messages")?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_lookup;

    fn nats(vars: &[(&str, &str)]) -> Result<NatsConfig, ConfigError> {
        NatsConfig::from_lookup(test_lookup(vars))
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
