//! [`HeaderMap`]: the metadata that travels with a request on every plane.

use std::fmt;

use super::Utf8Bytes;

/// Request metadata: a small ordered list of UTF-8 name/value pairs (trace context,
/// request id). Names are case-sensitive; duplicates are kept in order. Each plane
/// carries it its own way: TCP in the frame's header-map section, NATS and HTTP/2 as
/// message headers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Utf8Bytes, Utf8Bytes)>,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry. Names must be non-empty; planes refuse the request otherwise.
    pub fn insert(&mut self, name: impl Into<Utf8Bytes>, value: impl Into<Utf8Bytes>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value stored under `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The entries as stored, for planes that encode them without copying.
    pub fn entries(&self) -> &[(Utf8Bytes, Utf8Bytes)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<Utf8Bytes>, V: Into<Utf8Bytes>> FromIterator<(K, V)> for HeaderMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}
