//! An event's ZMQ message: three frames, the topic's subject (what SUB sockets filter
//! on), the envelope header, the payload (`PROTOCOL.md` §10.3).

use bytes::Bytes;

use crate::planes::events::Event;

/// Frames per event message: topic, envelope, payload.
const FRAMES: usize = 3;

/// The event in a message's `frames`, `None` for another topic that shares the
/// subscribed prefix, or why the message is not an event.
pub(super) fn parse(
    frames: Vec<Bytes>,
    subject: &str,
    topic: &str,
) -> Result<Option<Event>, String> {
    let count = frames.len();
    let [topic_frame, header, payload]: [Bytes; FRAMES] = frames
        .try_into()
        .map_err(|_| format!("{count} frame(s), expected {FRAMES} (topic, envelope, payload)"))?;
    if topic_frame != subject.as_bytes() {
        return Ok(None);
    }
    let event = Event::decode_parts(header, payload).map_err(|err| err.to_string())?;
    if event.topic.as_str() != topic {
        return Err(format!(
            "the envelope's topic {:?} does not match the topic frame {subject:?}",
            event.topic.as_str()
        ));
    }
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::vocab::Utf8Bytes;

    const SUBJECT: &str = "pw.ev.ns.c.~.kv";

    fn event() -> Event {
        Event {
            publisher_id: 7,
            sequence: 3,
            published_at: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            topic: Utf8Bytes::from("kv"),
            payload: Bytes::from_static(b"data"),
        }
    }

    fn good(subject: &str) -> Vec<Bytes> {
        let e = event();
        vec![
            Bytes::copy_from_slice(subject.as_bytes()),
            e.encode_header(),
            e.payload,
        ]
    }

    #[test]
    fn parses_three_frames_without_copying_the_payload() {
        let msg = good(SUBJECT);
        let payload_ptr = msg[2].as_ptr();
        let got = parse(msg, SUBJECT, "kv").unwrap().unwrap();
        assert_eq!(got, event());
        assert_eq!(got.payload.as_ptr(), payload_ptr);
    }

    #[test]
    fn a_longer_topic_sharing_the_prefix_is_not_ours() {
        assert_eq!(parse(good("pw.ev.ns.c.~.kv2"), SUBJECT, "kv"), Ok(None));
    }

    #[test]
    fn malformed_messages_say_why() {
        let one = vec![Bytes::from_static(SUBJECT.as_bytes())];
        assert!(
            parse(one, SUBJECT, "kv")
                .unwrap_err()
                .contains("1 frame(s)")
        );
        let bad_magic = vec![
            Bytes::from_static(SUBJECT.as_bytes()),
            Bytes::from(vec![0u8; 34]),
            Bytes::new(),
        ];
        assert!(
            parse(bad_magic, SUBJECT, "kv")
                .unwrap_err()
                .contains("magic")
        );
        let other_topic = Event {
            topic: Utf8Bytes::from("kx"),
            ..event()
        };
        let mismatched = vec![
            Bytes::from_static(SUBJECT.as_bytes()),
            other_topic.encode_header(),
            Bytes::new(),
        ];
        assert!(
            parse(mismatched, SUBJECT, "kv")
                .unwrap_err()
                .contains("does not match")
        );
    }
}
