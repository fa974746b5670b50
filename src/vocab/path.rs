//! [`EndpointPath`]: where a handler lives, as every plane and discovery name it.

use std::fmt;

use super::Utf8Bytes;

/// A path that is not `namespace/component/endpoint` with non-empty segments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

/// Where a handler lives: `namespace/component/endpoint`, plus an instance id so several
/// instances of one endpoint can share a process. Its text form is
/// `{namespace}/{component}/{endpoint}/{instance_id as lowercase hex}`: the TCP frame's
/// path, the HTTP/2 request path's tail, the discovery key's tail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPath {
    namespace: String,
    component: String,
    endpoint: String,
    instance_id: u64,
}

impl EndpointPath {
    /// Segments must be non-empty and contain no `/`.
    pub fn new(
        namespace: impl Into<String>,
        component: impl Into<String>,
        endpoint: impl Into<String>,
        instance_id: u64,
    ) -> Result<Self, PathError> {
        let path = Self {
            namespace: namespace.into(),
            component: component.into(),
            endpoint: endpoint.into(),
            instance_id,
        };
        for segment in [&path.namespace, &path.component, &path.endpoint] {
            if segment.is_empty() || segment.contains('/') {
                return Err(PathError {
                    path: path.to_string(),
                    reason: "namespace, component and endpoint must be non-empty and contain no '/'",
                });
            }
        }
        Ok(path)
    }

    /// Parses `ns/component/endpoint` (instance given separately), as typed on a command line.
    pub fn parse(spec: &str, instance_id: u64) -> Result<Self, PathError> {
        let mut parts = spec.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(c), Some(e), None) => Self::new(ns, c, e, instance_id),
            _ => Err(PathError {
                path: spec.to_owned(),
                reason: "expected NAMESPACE/COMPONENT/ENDPOINT",
            }),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// `namespace/component/endpoint`: a request to this path reaches the server's one
    /// instance of the endpoint, whatever its id.
    pub fn without_instance(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.component, self.endpoint)
    }
}

impl fmt::Display for EndpointPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{:x}",
            self.namespace, self.component, self.endpoint, self.instance_id
        )
    }
}

impl From<&EndpointPath> for Utf8Bytes {
    fn from(path: &EndpointPath) -> Self {
        path.to_string().into()
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointPath;

    #[test]
    fn the_text_form_ends_in_the_hex_instance_id() {
        let path = EndpointPath::new("dynamo", "backend", "generate", 0xBEEF).unwrap();
        assert_eq!(path.to_string(), "dynamo/backend/generate/beef");
        assert_eq!(path.without_instance(), "dynamo/backend/generate");
        assert_eq!(
            EndpointPath::parse("dynamo/backend/generate", 0xBEEF),
            Ok(path)
        );
    }

    #[test]
    fn bad_segments_are_refused_naming_the_path() {
        for (ns, c, e) in [("", "b", "c"), ("a/x", "b", "c"), ("a", "b", "")] {
            let err = EndpointPath::new(ns, c, e, 1).unwrap_err();
            assert!(err.to_string().contains("non-empty"), "{err}");
        }
        let err = EndpointPath::parse("a/b", 1).unwrap_err();
        assert!(
            err.to_string().contains("NAMESPACE/COMPONENT/ENDPOINT"),
            "{err}"
        );
    }
}
