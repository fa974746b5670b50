//! Arbitrary bytes as an event envelope (a NATS body, or ZMQ's envelope and payload
//! frames): decoding must never panic, whole and two-frame decoding must agree, and
//! whatever is accepted re-encodes to the same bytes (the reserved word excepted: readers
//! ignore it).
//!
//! Input layout: the first byte picks where the bytes split into envelope and payload
//! frames for the two-frame pass, the rest is the message.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use planewire::planes::events::{ENVELOPE_HEADER_LEN, Event};

fuzz_target!(|data: &[u8]| {
    let Some((&split, message)) = data.split_first() else {
        return;
    };
    let whole = Event::decode(Bytes::copy_from_slice(message));
    if let Ok(event) = &whole {
        let encoded = event.encode();
        assert_eq!(encoded.len(), message.len(), "re-encoded length differs");
        for (i, (got, want)) in encoded.iter().zip(message).enumerate() {
            if !(4..8).contains(&i) {
                assert_eq!(got, want, "re-encoded {event:?} differs at byte {i}");
            }
        }
    }
    // The two-frame form: accepted exactly when the split falls where the topic ends.
    let at = usize::from(split).min(message.len());
    let (head, payload) = message.split_at(at);
    let parts = Event::decode_parts(
        Bytes::copy_from_slice(head),
        Bytes::copy_from_slice(payload),
    );
    if let (Ok(event), Ok(whole)) = (&parts, &whole) {
        assert_eq!(
            event, whole,
            "two-frame decoding disagrees with whole decoding"
        );
    }
    if let Ok(whole) = &whole {
        let topic_end = ENVELOPE_HEADER_LEN + whole.topic.len();
        assert_eq!(
            parts.is_ok(),
            at == topic_end,
            "split at {at}, topic ends at {topic_end}"
        );
    }
});
