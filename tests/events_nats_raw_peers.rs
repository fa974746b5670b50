//! The NATS event plane (`PROTOCOL.md` §10.1, §10.4) as peers in another language meet
//! it: envelopes built by hand, right and wrong, published on a plain NATS connection to
//! a planewire subscriber, and a plain NATS subscriber reading what a planewire
//! publisher sends. The plane through its own publishers is in `events_nats.rs`.

use planewire_testkit::events_suite as suite;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::events::{EventPlane, EventPublisher, EventScope, Subscription};
use planewire_testkit::nats::NatsServer;
use planewire_testkit::within;

#[path = "common/nats_events.rs"]
mod nats_events;
use nats_events::two_planes;

/// Two planes, a publisher and a subscription to `topic` of scope `namespace` that has
/// heard the publisher (`suite::settle`): nothing published next is lost to a
/// subscription still being set up.
struct Settled {
    scope: EventScope,
    publisher: EventPublisher,
    sub: Subscription,
    /// The sequence the publisher's next event gets.
    first: u64,
    _planes: (EventPlane, EventPlane),
    /// Last, so that it stops after the planes' clients.
    server: NatsServer,
}

/// `None` where NATS tests are skipped (see `NatsServer::start`).
async fn settled(namespace: &str, topic: &str) -> Option<Settled> {
    let server = NatsServer::start()?;
    let (publishers, subscribers) = two_planes(&server, false).await;
    let scope = suite::scope(namespace);
    let publisher = publishers.publisher(scope.clone()).await.unwrap();
    let mut sub = subscribers
        .subscriber(scope.clone())
        .subscribe(topic)
        .await
        .unwrap();
    let first = suite::settle(&publisher, topic, &mut [&mut sub]).await;
    Some(Settled {
        scope,
        publisher,
        sub,
        first,
        _planes: (publishers, subscribers),
        server,
    })
}

/// A message that is not an event envelope is skipped; the subscription carries on.
#[tokio::test]
async fn garbage_on_the_subject_is_skipped() {
    let Some(Settled {
        scope,
        publisher,
        mut sub,
        first,
        _planes,
        server,
    }) = settled("garbage", "t").await
    else {
        return;
    };
    let received = sub.stats().received;
    let subject = scope.subject("t");
    server.publish_raw(&subject, b"not an envelope");
    server.publish_raw(&subject, &[0xE7, 1, 0xFF, 0xFF]); // magic, then truncated
    server.publish_raw(&subject, b"");
    publisher
        .publish("t", Bytes::from_static(b"good"))
        .await
        .unwrap();
    let got = suite::collect_until(&mut sub, first, first).await;
    assert_eq!(got[0].payload.as_ref(), b"good");
    assert_eq!(
        sub.stats().received,
        received + 1,
        "garbage is not an event"
    );
    // The raw messages came on another connection, so they may trail the good event.
    within("the three bad messages counted", async {
        while sub.stats().malformed < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(sub.stats().malformed, 3);
}

/// An envelope's fields as §10.1 draws them (`struct.pack('<BBHIQQQ', …)` + topic), any
/// of them wrong if a test wants; `topic_len` need not be the topic's length.
struct RawEnvelope<'a> {
    magic: u8,
    version: u8,
    topic_len: u16,
    topic: &'a [u8],
    reserved: u32,
    publisher_id: u64,
    sequence: u64,
    payload: &'a str,
}

impl<'a> RawEnvelope<'a> {
    /// A valid envelope on `topic`.
    fn valid(topic: &'a str, publisher_id: u64, sequence: u64, payload: &'a str) -> Self {
        Self {
            magic: 0xE7,
            version: 1,
            topic_len: topic.len() as u16,
            topic: topic.as_bytes(),
            reserved: 0,
            publisher_id,
            sequence,
            payload,
        }
    }

    /// Header, topic and payload, as one NATS body.
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = vec![self.magic, self.version];
        bytes.extend_from_slice(&self.topic_len.to_le_bytes());
        bytes.extend_from_slice(&self.reserved.to_le_bytes());
        for field in [self.publisher_id, self.sequence, 1_700_000_000_000_000_000] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(self.topic);
        bytes.extend_from_slice(self.payload.as_bytes());
        bytes
    }
}

/// An envelope on topic `t` with the fields given, the others valid.
fn envelope(
    version: u8,
    reserved: u32,
    publisher_id: u64,
    sequence: u64,
    payload: &str,
) -> Vec<u8> {
    let valid = RawEnvelope::valid("t", publisher_id, sequence, payload);
    RawEnvelope {
        version,
        reserved,
        ..valid
    }
    .bytes()
}

/// The payloads `sub` receives until `last`, the scope's probes left out.
async fn payloads_until(sub: &mut Subscription, last: &str) -> Vec<String> {
    within("the hand-made events", async {
        let mut payloads = Vec::new();
        while payloads.last().map(String::as_str) != Some(last) {
            let event = sub.next().await.expect("the subscription ended");
            if event.payload != "probe" {
                payloads.push(String::from_utf8(event.payload.to_vec()).unwrap());
            }
        }
        payloads
    })
    .await
}

/// §10.1 from a hand-made publisher on a plain NATS connection: a reserved field that is
/// not 0 is ignored, another version is refused (skipped and counted, the subscription
/// goes on), a lower or repeated sequence is a discarded duplicate, a higher one a gap of
/// that many, and a jump as large as a u64 allows is counted without overflow.
#[tokio::test]
async fn hand_made_envelopes_are_read_as_the_envelope_section_says() {
    let Some(mut settled) = settled("envelope", "t").await else {
        return;
    };
    let sub = &mut settled.sub;
    let before = sub.stats();
    let subject = settled.scope.subject("t");
    // Each raw publish is processed by the server before the next: they arrive in order.
    for message in [
        envelope(1, 0xdead_beef, 7, 0, "reserved set"),
        envelope(2, 0, 7, 1, "version 2"),
        envelope(1, 0, 7, 1, "one"),
        envelope(1, 0, 7, 1, "repeated"),
        envelope(1, 0, 7, 0, "older"),
        envelope(1, 0, 7, 4, "four"),
        envelope(1, 0, 8, 0, "other publisher"),
        envelope(1, 0, 8, u64::MAX, "the last"),
    ] {
        settled.server.publish_raw(&subject, &message);
    }
    let payloads = payloads_until(sub, "the last").await;
    let expected = ["reserved set", "one", "four", "other publisher", "the last"];
    assert_eq!(payloads, expected);
    let stats = sub.stats();
    assert_eq!(
        stats.malformed - before.malformed,
        1,
        "version 2: {stats:?}"
    );
    assert_eq!(stats.duplicates - before.duplicates, 2, "{stats:?}");
    // 2 missing before "four", then a jump of u64::MAX - 1: the count saturates (it
    // would wrap to 0, or panic in a debug build).
    assert_eq!(stats.gaps, u64::MAX, "{stats:?}");
}

/// §10.4 and §10.1 as a consumer in another language sees them: on a plain NATS
/// connection, each event is one message on its subject, without NATS headers, whose
/// body is the envelope exactly as drawn (header, topic, payload), numbered from 0.
#[tokio::test]
async fn a_plain_nats_subscriber_reads_the_documented_envelope() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let plain = async_nats::connect(server.url()).await.unwrap();
    let scope = suite::scope("plain");
    let subject = scope.subject("kv-events");
    assert_eq!(subject, "pw.ev.plain.router.~.kv-events");
    let mut messages = plain.subscribe(subject.clone()).await.unwrap();
    // The server has the subscription before anything is published.
    plain.flush().await.unwrap();
    let (publishers, _) = two_planes(&server, false).await;
    let publisher = publishers.publisher(scope).await.unwrap();
    let nanos = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.unwrap().as_nanos() as u64
    };
    let before = nanos();
    for payload in ["hello", "again"] {
        publisher
            .publish("kv-events", Bytes::from(payload))
            .await
            .unwrap();
    }
    let after = nanos();
    for (sequence, payload) in [(0u64, "hello"), (1, "again")] {
        let message = within("the event as a NATS message", messages.next())
            .await
            .unwrap();
        assert_eq!(message.subject.as_str(), subject);
        assert!(message.headers.is_none(), "{:?}", message.headers);
        let body = &message.payload;
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap());
        assert_eq!(
            &body[..8],
            &[0xE7, 1, 9, 0, 0, 0, 0, 0],
            "magic, version 1, topic_len 9, reserved 0"
        );
        assert_eq!(u64_at(8), publisher.id());
        assert_eq!(u64_at(16), sequence);
        assert!(
            (before..=after).contains(&u64_at(24)),
            "published_at {}",
            u64_at(24)
        );
        assert_eq!(&body[32..41], b"kv-events");
        assert_eq!(&body[41..], payload.as_bytes());
    }
}

/// §10.1's `topic_len` (1 to 1024) and magic from a hand-made publisher: a `topic_len`
/// of 0, one over 1024 (with that many topic bytes present, so only the limit refuses
/// it), and a first byte other than 0xE7 make a message no envelope: each is skipped and
/// counted as malformed, the subscription goes on, and the next valid event, whose topic
/// is the longest allowed, arrives.
#[tokio::test]
async fn envelopes_with_a_topic_len_out_of_range_or_another_magic_are_skipped() {
    let longest = "t".repeat(1024);
    let Some(mut settled) = settled("topic-len", &longest).await else {
        return;
    };
    let sub = &mut settled.sub;
    let before = sub.stats();
    let subject = settled.scope.subject(&longest);
    let too_long = format!("{longest}u");
    let empty = RawEnvelope {
        topic_len: 0,
        topic: b"",
        ..RawEnvelope::valid(&longest, 9, 0, "topic_len 0")
    };
    let over = RawEnvelope::valid(&too_long, 9, 1, "topic_len 1025");
    let magic = RawEnvelope {
        magic: 0xE8,
        ..RawEnvelope::valid(&longest, 9, 2, "magic 0xE8")
    };
    // Numbered after the others, so that it is delivered whichever of them gets through
    // (a lower number would be a duplicate) and the list below names it.
    let next = RawEnvelope::valid(&longest, 9, 3, "the next");
    // Each raw publish is processed by the server before the next: they arrive in order.
    for message in [empty, over, magic, next] {
        settled.server.publish_raw(&subject, &message.bytes());
    }
    assert_eq!(payloads_until(sub, "the next").await, ["the next"]);
    let stats = sub.stats();
    assert_eq!(stats.malformed - before.malformed, 3, "{stats:?}");
    assert_eq!(stats.received - before.received, 1, "{stats:?}");
}
