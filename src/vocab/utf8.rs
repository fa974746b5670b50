//! [`Utf8Bytes`]: text that is a slice of a received buffer.

use std::fmt;

use bytes::Bytes;

/// A `Bytes` known to hold valid UTF-8 (endpoint paths, header entries, error messages).
///
/// Decoded values are slices of the connection's read buffer: no copy is made.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps `bytes` if it is UTF-8; gives it back otherwise.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Bytes> {
        // Paths and header entries are nearly always ASCII, which a word at a time
        // checks in a fraction of the full decoder's time (it goes byte by byte on short
        // unaligned input such as a path inside a frame).
        if bytes.is_ascii() || std::str::from_utf8(&bytes).is_ok() {
            Ok(Self(bytes))
        } else {
            Err(bytes)
        }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or starts from) valid UTF-8 and the bytes are
        // immutable afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
