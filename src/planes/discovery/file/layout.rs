//! File names and file contents of the file backend; no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::planes::discovery::LeaseId;

/// Longest file name most file systems accept.
const NAME_MAX: usize = 255;

/// A key's file name: bytes in `[A-Za-z0-9_-]` stay, every other byte becomes `%XX`
/// (uppercase hex). So `/` never reaches the file system, names never start with `.`
/// (temp files do), and every key has exactly one name. `None` if the name would
/// exceed 255 bytes.
pub(super) fn key_to_name(key: &str) -> Option<String> {
    let mut name = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    (name.len() <= NAME_MAX).then_some(name)
}

/// The key a file name stands for; `None` for names [`key_to_name`] never makes.
pub(super) fn name_to_key(name: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(name.len());
    let mut rest = name.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                return None;
            }
            bytes.push(byte);
            rest = &tail[2..];
        } else if first.is_ascii_alphanumeric() || first == b'_' || first == b'-' {
            bytes.push(first);
            rest = tail;
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A lease file's name: the id as 16 hex digits.
pub(super) fn lease_name(lease: LeaseId) -> String {
    format!("{:016x}", lease.0)
}

/// The lease a file name in `leases/` stands for; `None` for names [`lease_name`]
/// never makes.
pub(super) fn parse_lease_name(name: &str) -> Option<LeaseId> {
    let valid = name.len() == 16 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid
        .then(|| u64::from_str_radix(name, 16).ok())
        .flatten()
        .map(|id| LeaseId(id as i64))
}

/// A record file: the lease id (16 hex digits, or `-` for none), a newline, the value.
pub(super) fn record_header(lease: Option<LeaseId>) -> String {
    match lease {
        Some(lease) => format!("{}\n", lease_name(lease)),
        None => "-\n".to_owned(),
    }
}

/// A record file's lease and value; `None` if it is not one (the value is a slice of
/// `contents`, not a copy).
pub(super) fn parse_record(contents: Bytes) -> Option<(Option<LeaseId>, Bytes)> {
    let newline = contents.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&contents[..newline]).ok()?;
    let lease = match header {
        "-" => None,
        hex if hex.len() == 16 => Some(LeaseId(u64::from_str_radix(hex, 16).ok()? as i64)),
        _ => return None,
    };
    Some((lease, contents.slice(newline + 1..)))
}

/// A lease file: TTL and expiry, both in milliseconds, the expiry since the Unix epoch
/// (wall clock, so every process on the host reads it the same way).
pub(super) fn lease_contents(ttl: Duration, now: SystemTime) -> String {
    let expires = unix_millis(now).saturating_add(ttl.as_millis() as u64);
    format!("{} {expires}\n", ttl.as_millis())
}

/// TTL and expiry (ms since the epoch) of a lease file; `None` if it is not one.
pub(super) fn parse_lease(contents: &str) -> Option<(Duration, u64)> {
    let mut fields = contents.split_whitespace();
    let ttl = fields.next()?.parse().ok()?;
    let expires = fields.next()?.parse().ok()?;
    Some((Duration::from_millis(ttl), expires))
}

pub(super) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn service_keys_escape_slashes_and_dots() {
        let name = key_to_name("/services/ns/c.x/e/1f").unwrap();
        assert_eq!(name, "%2Fservices%2Fns%2Fc%2Ex%2Fe%2F1f");
        assert_eq!(name_to_key(&name).unwrap(), "/services/ns/c.x/e/1f");
        assert_eq!(key_to_name("..").unwrap(), "%2E%2E");
        assert!(key_to_name(&"k".repeat(256)).is_none());
    }

    #[test]
    fn foreign_names_are_not_keys() {
        for name in [".tmp-1-2", "a%2", "a%zz", "%61", "a b", "x.y"] {
            assert_eq!(name_to_key(name), None, "{name}");
        }
    }

    #[test]
    fn record_and_lease_files_round_trip() {
        let lease = LeaseId(0x1234_5678_9abc_def0);
        let file = Bytes::from(format!("{}{}", record_header(Some(lease)), "{\"a\":1}\nx"));
        assert_eq!(
            parse_record(file),
            Some((Some(lease), Bytes::from("{\"a\":1}\nx")))
        );
        let file = Bytes::from(format!("{}v", record_header(None)));
        assert_eq!(parse_record(file), Some((None, Bytes::from("v"))));
        assert_eq!(parse_record(Bytes::from("no header")), None);
        assert_eq!(parse_record(Bytes::from("xyz\nv")), None);
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let text = lease_contents(Duration::from_millis(2500), now);
        assert_eq!(
            parse_lease(&text),
            Some((Duration::from_millis(2500), 102_500))
        );
        assert_eq!(parse_lease("garbage"), None);
        assert_eq!(parse_lease_name(&lease_name(lease)), Some(lease));
        let negative = LeaseId(-2);
        assert_eq!(parse_lease_name(&lease_name(negative)), Some(negative));
        for name in [
            "ab",
            "00000000000000AB",
            "000000000000000g",
            "00000000000000abc",
        ] {
            assert_eq!(parse_lease_name(name), None, "{name}");
        }
    }

    proptest! {
        #[test]
        fn every_key_that_fits_round_trips(key in "\\PC{0,20}") {
            let name = key_to_name(&key).unwrap();
            prop_assert!(!name.contains('/') && !name.starts_with('.'));
            prop_assert_eq!(name_to_key(&name), Some(key));
        }
    }
}
