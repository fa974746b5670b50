//! [`RequestPlaneKind`]: the planes by name, as `DYN_REQUEST_PLANE` and discovery records
//! spell them.

use std::fmt;
use std::str::FromStr;

use crate::config::ConfigError;

pub const ENV_REQUEST_PLANE: &str = "DYN_REQUEST_PLANE";

/// Which plane carries requests. Every kind exists in every build; one whose cargo
/// feature is missing is refused by [`FromStr`] with an error naming the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RequestPlaneKind {
    #[default]
    Tcp,
    /// Feature `nats`.
    Nats,
    /// HTTP/2, feature `http`.
    Http,
}

impl RequestPlaneKind {
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Nats, Self::Http];

    /// The name in `DYN_REQUEST_PLANE` and the `type` tag of a discovery record's
    /// transport.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Nats => "nats",
            Self::Http => "http",
        }
    }

    /// The kind a discovery record's tag names, whether or not this build has it.
    pub fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == tag)
    }

    /// Whether this build has the plane.
    pub fn is_built(self) -> bool {
        match self {
            Self::Tcp => true,
            Self::Nats => cfg!(feature = "nats"),
            Self::Http => cfg!(feature = "http"),
        }
    }

    /// The error for choosing this plane in a build without it (the cargo feature is
    /// named like the plane).
    pub(crate) fn not_built(self) -> ConfigError {
        ConfigError::feature_not_built(
            ENV_REQUEST_PLANE,
            self.as_str(),
            self.as_str(),
            &Self::built_names(),
        )
    }

    /// The names this build accepts, for error messages.
    fn built_names() -> String {
        let names: Vec<&str> = Self::ALL
            .into_iter()
            .filter(|kind| kind.is_built())
            .map(Self::as_str)
            .collect();
        names.join(", ")
    }
}

impl fmt::Display for RequestPlaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestPlaneKind {
    type Err = ConfigError;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match Self::from_tag(&s.trim().to_ascii_lowercase()) {
            Some(kind) if kind.is_built() => Ok(kind),
            Some(kind) => Err(kind.not_built()),
            None => Err(ConfigError::invalid(
                ENV_REQUEST_PLANE,
                s,
                "one of: tcp, nats, http",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_tags_round_trip() {
        assert_eq!(
            " TCP ".parse::<RequestPlaneKind>(),
            Ok(RequestPlaneKind::Tcp)
        );
        for kind in RequestPlaneKind::ALL {
            assert_eq!(RequestPlaneKind::from_tag(kind.as_str()), Some(kind));
        }
        assert_eq!(RequestPlaneKind::from_tag("grpc"), None);
    }

    #[test]
    fn an_unknown_plane_names_the_valid_ones() {
        let text = "grpc".parse::<RequestPlaneKind>().unwrap_err().to_string();
        assert!(
            text.contains("DYN_REQUEST_PLANE") && text.contains("grpc"),
            "{text}"
        );
        assert!(text.contains("tcp, nats, http"), "{text}");
    }

    #[test]
    fn a_plane_not_built_names_its_feature() {
        for (name, built) in [
            ("Nats", cfg!(feature = "nats")),
            ("HTTP", cfg!(feature = "http")),
        ] {
            match name.parse::<RequestPlaneKind>() {
                Ok(kind) => assert!(built && kind.as_str() == name.to_ascii_lowercase()),
                Err(err) => {
                    let text = err.to_string();
                    let feature = format!("--features {}", name.to_ascii_lowercase());
                    assert!(!built && text.contains(&feature), "{text}");
                }
            }
        }
    }
}
