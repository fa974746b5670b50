//! Reading `DYN_*` variables: one lookup, one parser per kind of value, one error type.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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

impl ConfigError {
    /// `var` holds `value`, which is not what `expected` describes.
    pub fn invalid(
        var: &'static str,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            var,
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// `var=value` names something this build lacks the cargo feature `feature` for;
    /// `instead` names the values it accepts.
    pub fn feature_not_built(var: &'static str, value: &str, feature: &str, instead: &str) -> Self {
        Self::invalid(
            var,
            value,
            format!(
                "{instead}: this build lacks the `{feature}` cargo feature (rebuild with --features {feature})"
            ),
        )
    }
}

/// The longest duration a setting takes: a year. Deadlines are computed as now plus the
/// setting, and a value near `u64::MAX` seconds would overflow the clock there.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Where variables come from: the process environment ([`Env::process`]) or any lookup,
/// such as a map in tests, so that they never race on the process environment.
///
/// Every reader trims the value; unset and blank both mean "use the default" (`None`).
/// A value that does not parse is an error naming the variable, the value and what was
/// expected, never a silent default.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<OsString>,
}

fn process_lookup(var: &str) -> Option<OsString> {
    std::env::var_os(var)
}

impl<'a> Env<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<OsString>) -> Self {
        Self { lookup }
    }

    /// The process environment.
    pub fn process() -> Env<'static> {
        Env {
            lookup: &process_lookup,
        }
    }

    /// The trimmed text of `var`.
    pub fn text(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.lookup)(var) {
            None => Ok(None),
            Some(v) => v
                .into_string()
                .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
                .map_err(|_| ConfigError::NotUnicode { var }),
        }
    }

    /// The text of `var` exactly as set, for values whose spaces matter (passwords).
    pub fn verbatim(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.lookup)(var) {
            Some(v) if !v.is_empty() => v
                .into_string()
                .map(Some)
                .map_err(|_| ConfigError::NotUnicode { var }),
            _ => Ok(None),
        }
    }

    /// A file path, taken as is (it need not be Unicode).
    pub fn path(&self, var: &'static str) -> Option<PathBuf> {
        (self.lookup)(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// A value whose `FromStr` error is already a [`ConfigError`] (plane and backend names).
    pub fn parse<T: FromStr<Err = ConfigError>>(
        &self,
        var: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        self.text(var)?.map(|v| v.parse()).transpose()
    }

    /// A positive number of seconds, fractions allowed (`10`, `0.5`), at most a year.
    pub fn seconds(&self, var: &'static str) -> Result<Option<Duration>, ConfigError> {
        self.with(var, |v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s <= MAX_SECONDS)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or("a positive number of seconds up to a year (31536000), e.g. 10 or 0.5")
        })
    }

    /// A positive integer (counts, depths, sizes of pools).
    pub fn count(&self, var: &'static str) -> Result<Option<usize>, ConfigError> {
        self.with(var, |v| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("a positive integer"),
        })
    }

    /// A whole number of bytes.
    pub fn bytes(&self, var: &'static str) -> Result<Option<usize>, ConfigError> {
        self.with(var, |v| {
            v.parse()
                .map_err(|_| "a whole number of bytes, e.g. 33554432 for 32 MiB")
        })
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
    pub fn flag(&self, var: &'static str) -> Result<Option<bool>, ConfigError> {
        self.with(var, |v| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("true or false"),
        })
    }

    /// An IP address to bind and advertise.
    pub fn ip(&self, var: &'static str) -> Result<Option<IpAddr>, ConfigError> {
        self.with(var, |v| {
            v.parse()
                .map_err(|_| "an IP address such as 10.0.0.5 or ::1")
        })
    }

    /// A port number; 0 means "let the OS pick", which is `None` too.
    pub fn port(&self, var: &'static str) -> Result<Option<u16>, ConfigError> {
        let port = self.with(var, |v| {
            v.parse::<u16>()
                .map_err(|_| "a port number from 0 to 65535")
        })?;
        Ok(port.filter(|p| *p != 0))
    }

    fn with<T>(
        &self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, &'static str>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = self.text(var)? else {
            return Ok(None);
        };
        parse(&v)
            .map(Some)
            .map_err(|expected| ConfigError::invalid(var, v, expected))
    }
}

/// Checks that `value`, set in code, is positive; the error names `var`.
pub(crate) fn require_positive(
    var: &'static str,
    value: usize,
    what: &str,
) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(
            var,
            "0",
            format!("a positive integer ({what})"),
        ));
    }
    Ok(())
}

/// Checks that a duration set in code is not zero and at most a year, as read from the
/// environment; the error names `var`.
pub(crate) fn require_nonzero(var: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() || value.as_secs_f64() > MAX_SECONDS {
        return Err(ConfigError::invalid(
            var,
            format!("{}", value.as_secs_f64()),
            "a positive number of seconds up to a year (31536000)",
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A lookup over `vars`, for the config tests of every plane.
    pub(crate) fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn blank_means_unset_and_values_are_trimmed() {
        let vars = lookup(&[("A", "  "), ("B", " 7 ")]);
        let env = Env::new(&vars);
        assert_eq!(env.count("A"), Ok(None));
        assert_eq!(env.count("B"), Ok(Some(7)));
        assert_eq!(env.count("C"), Ok(None));
    }

    /// Reads `V` one way, keeping only the error.
    type Reader = fn(&Env) -> Result<(), ConfigError>;

    #[test]
    fn each_reader_names_the_variable_the_value_and_the_expectation() {
        let cases: [(&str, &str, Reader); 9] = [
            ("ten", "positive number of seconds", |e| {
                e.seconds("V").map(drop)
            }),
            ("0", "positive number of seconds", |e| {
                e.seconds("V").map(drop)
            }),
            // Would overflow the clock when added to now, panicking in the first request.
            ("1e19", "up to a year", |e| e.seconds("V").map(drop)),
            ("31536001", "up to a year", |e| e.seconds("V").map(drop)),
            ("0", "positive integer", |e| e.count("V").map(drop)),
            ("32MiB", "whole number of bytes", |e| e.bytes("V").map(drop)),
            ("maybe", "true or false", |e| e.flag("V").map(drop)),
            ("my host", "IP address", |e| e.ip("V").map(drop)),
            ("70000", "0 to 65535", |e| e.port("V").map(drop)),
        ];
        for (value, expected, read) in cases {
            let vars = lookup(&[("V", value)]);
            let text = read(&Env::new(&vars)).unwrap_err().to_string();
            assert!(text.contains("V=") && text.contains(value), "{text}");
            assert!(text.contains(expected), "{value}: {text}");
        }
    }

    #[test]
    fn a_year_of_seconds_is_the_longest_duration_taken() {
        let vars = lookup(&[("Y", "31536000"), ("H", "0.5")]);
        let env = Env::new(&vars);
        assert_eq!(env.seconds("Y"), Ok(Some(Duration::from_secs(31_536_000))));
        assert_eq!(env.seconds("H"), Ok(Some(Duration::from_millis(500))));
    }

    #[test]
    fn port_zero_means_os_assigned_and_flags_take_common_spellings() {
        let vars = lookup(&[("P", "0"), ("F", "Yes"), ("G", "off")]);
        let env = Env::new(&vars);
        assert_eq!(env.port("P"), Ok(None));
        assert_eq!(env.flag("F"), Ok(Some(true)));
        assert_eq!(env.flag("G"), Ok(Some(false)));
    }

    #[cfg(unix)]
    #[test]
    fn non_unicode_value_is_an_error_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let vars = |_: &str| Some(OsString::from_vec(vec![0xff, 0xfe]));
        let err = Env::new(&vars).count("V").unwrap_err();
        assert_eq!(err, ConfigError::NotUnicode { var: "V" });
    }
}
