//! The event envelope on the wire: a fixed 32-byte little-endian header, the topic, then
//! the payload. NATS carries all three in one message body; ZMQ sends the header and
//! topic as one frame and the payload as the next (see `PROTOCOL.md`, "Event plane").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::EventError;
use crate::vocab::Utf8Bytes;

/// First byte of every envelope (the request plane's frames start with 0xB7).
pub const EVENT_MAGIC: u8 = 0xE7;
pub const EVENT_VERSION: u8 = 1;
/// magic u8, version u8, topic_len u16, reserved u32, publisher_id u64, sequence u64,
/// published_at u64 (nanoseconds since the Unix epoch).
pub const ENVELOPE_HEADER_LEN: usize = 32;
/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// One event as a subscriber sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique per publisher (not per process), so one process can run several.
    pub publisher_id: u64,
    /// Per publisher and topic: 0, 1, 2, … with no holes on the sending side, so a
    /// subscriber can tell a lost event from a late join.
    pub sequence: u64,
    pub published_at: SystemTime,
    /// The topic as given to `publish`, without the namespace/component scope.
    pub topic: Utf8Bytes,
    pub payload: Bytes,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("publisher_id", &format_args!("{:016x}", self.publisher_id))
            .field("sequence", &self.sequence)
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Event {
    /// The header and topic: the envelope without its payload.
    pub fn encode_header(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(ENVELOPE_HEADER_LEN + self.topic.len());
        self.put_header(&mut out);
        out.freeze()
    }

    /// Header, topic and payload in one buffer (the NATS message body).
    pub fn encode(&self) -> Bytes {
        let mut out =
            BytesMut::with_capacity(ENVELOPE_HEADER_LEN + self.topic.len() + self.payload.len());
        self.put_header(&mut out);
        out.put_slice(&self.payload);
        out.freeze()
    }

    /// Appends the header and topic (what [`encode_header`](Self::encode_header) returns).
    pub(crate) fn put_header(&self, out: &mut BytesMut) {
        let nanos = self
            .published_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        out.put_u8(EVENT_MAGIC);
        out.put_u8(EVENT_VERSION);
        // Topics are checked against MAX_TOPIC_LEN before an event is built.
        out.put_u16_le(self.topic.len() as u16);
        out.put_u32_le(0);
        out.put_u64_le(self.publisher_id);
        out.put_u64_le(self.sequence);
        out.put_u64_le(nanos);
        out.put_slice(self.topic.as_bytes());
    }

    /// Reads an envelope whose payload follows the topic in the same buffer.
    pub fn decode(mut bytes: Bytes) -> Result<Self, EventError> {
        let (mut event, topic_end) = Self::decode_header(&bytes)?;
        event.topic = topic(bytes.slice(ENVELOPE_HEADER_LEN..topic_end))?;
        event.payload = bytes.split_off(topic_end);
        Ok(event)
    }

    /// Reads a header-and-topic frame whose payload arrived separately.
    pub fn decode_parts(header: Bytes, payload: Bytes) -> Result<Self, EventError> {
        let (mut event, topic_end) = Self::decode_header(&header)?;
        if topic_end != header.len() {
            return Err(malformed(format!(
                "the envelope frame has {} bytes after its topic",
                header.len() - topic_end
            )));
        }
        event.topic = topic(header.slice(ENVELOPE_HEADER_LEN..))?;
        event.payload = payload;
        Ok(event)
    }

    /// The event with an empty topic and payload, and where the topic ends.
    fn decode_header(bytes: &[u8]) -> Result<(Self, usize), EventError> {
        let Some(head) = bytes.first_chunk::<ENVELOPE_HEADER_LEN>() else {
            return Err(malformed(format!(
                "{} bytes is shorter than the {ENVELOPE_HEADER_LEN}-byte envelope header",
                bytes.len()
            )));
        };
        if head[0] != EVENT_MAGIC {
            return Err(malformed(format!(
                "first byte {:#04x} is not the envelope magic {EVENT_MAGIC:#04x}",
                head[0]
            )));
        }
        if head[1] != EVENT_VERSION {
            return Err(malformed(format!(
                "envelope version {} (this build reads {EVENT_VERSION})",
                head[1]
            )));
        }
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap());
        let topic_len = usize::from(u16::from_le_bytes([head[2], head[3]]));
        let topic_end = ENVELOPE_HEADER_LEN + topic_len;
        if topic_len == 0 || topic_len > MAX_TOPIC_LEN || topic_end > bytes.len() {
            return Err(malformed(format!(
                "topic length {topic_len} does not fit (1..={MAX_TOPIC_LEN} bytes, {} available)",
                bytes.len() - ENVELOPE_HEADER_LEN
            )));
        }
        let event = Self {
            publisher_id: u64_at(8),
            sequence: u64_at(16),
            published_at: UNIX_EPOCH + Duration::from_nanos(u64_at(24)),
            topic: Utf8Bytes::default(),
            payload: Bytes::new(),
        };
        Ok((event, topic_end))
    }
}

fn topic(bytes: Bytes) -> Result<Utf8Bytes, EventError> {
    Utf8Bytes::try_from_bytes(bytes, "topic").map_err(|_| malformed("the topic is not UTF-8"))
}

fn malformed(reason: impl Into<String>) -> EventError {
    EventError::Malformed {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            publisher_id: 0x0123_4567_89ab_cdef,
            sequence: 42,
            published_at: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            topic: Utf8Bytes::from("kv-events"),
            payload: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn round_trips_whole_and_in_parts() {
        let e = event();
        assert_eq!(Event::decode(e.encode()).unwrap(), e);
        assert_eq!(
            Event::decode_parts(e.encode_header(), e.payload.clone()).unwrap(),
            e
        );
    }

    #[test]
    fn header_layout_is_the_documented_one() {
        let bytes = event().encode();
        assert_eq!(&bytes[..4], &[0xE7, 1, 9, 0]);
        assert_eq!(&bytes[4..8], &[0; 4]);
        assert_eq!(&bytes[8..16], &0x0123_4567_89ab_cdef_u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &42u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &1_700_000_000_123_456_789u64.to_le_bytes());
        assert_eq!(&bytes[32..41], b"kv-events");
        assert_eq!(&bytes[41..], b"hello");
    }

    #[test]
    fn decoding_is_zero_copy() {
        let bytes = event().encode();
        let decoded = Event::decode(bytes.clone()).unwrap();
        assert_eq!(decoded.payload.as_ptr(), bytes[41..].as_ptr());
    }

    #[test]
    fn malformed_envelopes_are_refused_with_the_reason() {
        let good = event().encode();
        let cases: Vec<(Bytes, &str)> = vec![
            (good.slice(..10), "shorter than"),
            (Bytes::from([&[0xB7], &good[1..]].concat()), "magic"),
            (
                Bytes::from([&good[..1], &[9], &good[2..]].concat()),
                "version 9",
            ),
            (good.slice(..35), "does not fit"),
            (
                Bytes::from([&good[..2], &[0, 0], &good[4..]].concat()),
                "does not fit",
            ),
            (
                Bytes::from([&good[..32], &[0xff; 9], &good[41..]].concat()),
                "not UTF-8",
            ),
        ];
        for (bytes, expected) in cases {
            let err = Event::decode(bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let err = Event::decode_parts(good.clone(), Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("after its topic"), "{err}");
    }
}
