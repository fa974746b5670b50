//! Where events live: a namespace and component (and optionally an endpoint), and the
//! names derived from them on each transport.

use std::fmt;

use super::EventError;
use super::envelope::MAX_TOPIC_LEN;
use crate::vocab::escape_token;

/// Prefix of every event subject (NATS) and topic frame (ZMQ).
pub const SUBJECT_PREFIX: &str = "pw.ev";
/// Discovery prefix under which ZMQ publishers register their sockets.
pub const EVENT_CHANNELS_PREFIX: &str = "/event_channels/";
/// Stands for "no endpoint" in subjects and keys; escaping never yields a bare `~`.
const NO_ENDPOINT: &str = "~";

/// The namespace/component (and optional endpoint) that topics belong to. Publishers and
/// subscribers only meet when their scopes are equal, so two namespaces never see each
/// other's events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventScope {
    namespace: String,
    component: String,
    endpoint: Option<String>,
}

impl EventScope {
    /// Names must be non-empty and contain no `/`, as for endpoints.
    pub fn new(
        namespace: impl Into<String>,
        component: impl Into<String>,
    ) -> Result<Self, EventError> {
        let scope = Self {
            namespace: namespace.into(),
            component: component.into(),
            endpoint: None,
        };
        check_name(&scope, &scope.namespace)?;
        check_name(&scope, &scope.component)?;
        Ok(scope)
    }

    /// `NAMESPACE/COMPONENT` or `NAMESPACE/COMPONENT/ENDPOINT`.
    pub fn parse(spec: &str) -> Result<Self, EventError> {
        let mut parts = spec.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(c), None, None) => Self::new(ns, c),
            (Some(ns), Some(c), Some(e), None) => Self::new(ns, c)?.with_endpoint(e),
            _ => Err(EventError::InvalidScope {
                scope: spec.to_owned(),
                reason: "expected NAMESPACE/COMPONENT or NAMESPACE/COMPONENT/ENDPOINT",
            }),
        }
    }

    /// Narrows the scope to one endpoint of the component.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Result<Self, EventError> {
        self.endpoint = Some(endpoint.into());
        check_name(&self, self.endpoint.as_deref().unwrap_or_default())?;
        Ok(self)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// `pw.ev.{namespace}.{component}.{endpoint or ~}.{topic}`, each part escaped (see
    /// [`escape_token`]). The NATS subject of the topic, and the first frame of its ZMQ
    /// messages.
    pub fn subject(&self, topic: &str) -> String {
        let mut out = self.subject_stem();
        out.push('.');
        escape_token(topic, &mut out);
        out
    }

    /// Every subject of this scope, as a NATS wildcard (`….>`).
    pub fn subject_wildcard(&self) -> String {
        let mut out = self.subject_stem();
        out.push_str(".>");
        out
    }

    fn subject_stem(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(SUBJECT_PREFIX);
        for part in [&self.namespace, &self.component] {
            out.push('.');
            escape_token(part, &mut out);
        }
        out.push('.');
        match &self.endpoint {
            Some(endpoint) => escape_token(endpoint, &mut out),
            None => out.push_str(NO_ENDPOINT),
        }
        out
    }

    /// `/event_channels/{namespace}/{component}/{endpoint or ~}/`: where this scope's ZMQ
    /// publishers register, one key per publisher id.
    /// Each name is escaped as in subjects, so keys are unambiguous.
    pub fn channels_prefix(&self) -> String {
        let mut out = String::from(EVENT_CHANNELS_PREFIX);
        for part in [&self.namespace, &self.component] {
            escape_token(part, &mut out);
            out.push('/');
        }
        match &self.endpoint {
            Some(endpoint) => escape_token(endpoint, &mut out),
            None => out.push_str(NO_ENDPOINT),
        }
        out.push('/');
        out
    }

    /// A name for this scope made only of characters JetStream allows in stream names.
    pub fn stream_name(&self) -> String {
        let mut out = String::from("PW_EV_");
        escape_token(&self.namespace, &mut out);
        out.push('_');
        escape_token(&self.component, &mut out);
        out.push('_');
        match &self.endpoint {
            Some(endpoint) => escape_token(endpoint, &mut out),
            None => out.push_str(NO_ENDPOINT),
        }
        out
    }
}

impl fmt::Display for EventScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.component)?;
        match &self.endpoint {
            Some(endpoint) => write!(f, "/{endpoint}"),
            None => Ok(()),
        }
    }
}

fn check_name(scope: &EventScope, name: &str) -> Result<(), EventError> {
    if name.is_empty() || name.contains('/') {
        return Err(EventError::InvalidScope {
            scope: scope.to_string(),
            reason: "namespace, component and endpoint must be non-empty and contain no '/'",
        });
    }
    Ok(())
}

/// Checks a topic given to `publish` or `subscribe`.
pub(crate) fn check_topic(topic: &str) -> Result<(), EventError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(EventError::InvalidTopic {
            topic: topic.chars().take(64).collect(),
            reason: "topics must be 1 to 1024 bytes long",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_what_nats_does_not_allow() {
        let scope = EventScope::new("dyn.amo", "back end").unwrap();
        assert_eq!(
            scope.subject("kv-events"),
            "pw.ev.dyn~2Eamo.back~20end.~.kv-events"
        );
        assert_eq!(
            scope.subject("a*b>c"),
            "pw.ev.dyn~2Eamo.back~20end.~.a~2Ab~3Ec"
        );
        assert_eq!(scope.subject("é"), "pw.ev.dyn~2Eamo.back~20end.~.~C3~A9");
        assert_eq!(scope.subject_wildcard(), "pw.ev.dyn~2Eamo.back~20end.~.>");
        let narrowed = scope.with_endpoint("gen").unwrap();
        assert_eq!(narrowed.subject("t"), "pw.ev.dyn~2Eamo.back~20end.gen.t");
    }

    #[test]
    fn distinct_scopes_never_share_a_subject_or_key() {
        let a = EventScope::new("a", "b").unwrap();
        let b = EventScope::new("a.b", "c").unwrap();
        let c = EventScope::new("a", "b")
            .unwrap()
            .with_endpoint("~")
            .unwrap();
        assert_ne!(a.subject("c.t"), b.subject("t"));
        assert_ne!(a.subject("t"), c.subject("t"));
        assert_ne!(a.channels_prefix(), c.channels_prefix());
        assert_ne!(a.stream_name(), c.stream_name());
        assert_eq!(a.channels_prefix(), "/event_channels/a/b/~/");
        assert_eq!(c.stream_name(), "PW_EV_a_b_~7E");
    }

    #[test]
    fn parse_takes_two_or_three_segments() {
        assert_eq!(
            EventScope::parse("a/b").unwrap(),
            EventScope::new("a", "b").unwrap()
        );
        let three = EventScope::parse("a/b/c").unwrap();
        assert_eq!(three.endpoint(), Some("c"));
        assert_eq!(three.to_string(), "a/b/c");
        for bad in ["a", "a/b/c/d", "a//c", ""] {
            assert!(EventScope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_names_and_topics_are_refused() {
        assert!(EventScope::new("", "c").is_err());
        assert!(EventScope::new("a/b", "c").is_err());
        let err = EventScope::new("a", "b").unwrap().with_endpoint("x/y");
        assert!(err.unwrap_err().to_string().contains("a/b/x/y"));
        assert!(check_topic("").is_err());
        assert!(check_topic(&"t".repeat(1025)).is_err());
        assert!(check_topic(&"t".repeat(1024)).is_ok());
    }
}
