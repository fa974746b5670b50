//! The behaviour every event transport must show, run by `events_*.rs` against each one.
//! `publishers` and `subscribers` may be the same plane or two planes that reach each
//! other (two ZMQ planes sharing discovery, two NATS clients).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::events::{Event, EventPlane, EventPublisher, EventScope, Subscription};

use crate::within;

pub fn scope(namespace: &str) -> EventScope {
    EventScope::new(namespace, "router").unwrap()
}

/// Publishes probes on `topic` until every subscription has seen one, so the events
/// that follow cannot be lost to a connection still being set up (ZMQ's slow joiner,
/// a NATS interest not yet propagated). Returns how many probes were sent: the
/// sequence number the next event gets.
pub async fn settle(
    publisher: &EventPublisher,
    topic: &str,
    subs: &mut [&mut Subscription],
) -> u64 {
    let mut sent = 0u64;
    let mut seen = vec![false; subs.len()];
    within("subscriptions to connect", async {
        while seen.iter().any(|s| !s) {
            publisher
                .publish(topic, Bytes::from_static(b"probe"))
                .await
                .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (sub, seen) in subs.iter_mut().zip(&mut seen) {
                while let Some(Some(_)) = futures::FutureExt::now_or_never(sub.next()) {
                    *seen = true;
                }
            }
        }
    })
    .await;
    sent
}

/// Reads from `sub` until the event with sequence `last` (probes before `first` skipped).
pub async fn collect_until(sub: &mut Subscription, first: u64, last: u64) -> Vec<Event> {
    let mut out = Vec::new();
    within("events to arrive", async {
        loop {
            let event = sub.next().await.expect("subscription ended early");
            if event.sequence < first {
                continue;
            }
            let done = event.sequence == last;
            out.push(event);
            if done {
                return;
            }
        }
    })
    .await;
    out
}

/// 10,000 events from one publisher reach two subscribers, in order, with no gap.
pub async fn ten_thousand_in_order(publishers: &EventPlane, subscribers: &EventPlane) {
    const N: u64 = 10_000;
    // Big enough that this test is about order and loss on the wire, not about a
    // subscriber falling behind (that is `slow_subscriber_loses_oldest`).
    let subscribers = subscribers.clone().with_subscriber_buffer(2 * N as usize);
    let publisher = publishers.publisher(scope("order")).await.unwrap();
    let sub = subscribers.subscriber(scope("order"));
    let mut a = sub.subscribe("kv").await.unwrap();
    let mut b = sub.subscribe("kv").await.unwrap();
    let first = settle(&publisher, "kv", &mut [&mut a, &mut b]).await;
    for i in 0..N {
        publisher
            .publish("kv", Bytes::from(i.to_le_bytes().to_vec()))
            .await
            .unwrap();
    }
    let last = first + N - 1;
    for sub in [&mut a, &mut b] {
        let events = collect_until(sub, first, last).await;
        assert_eq!(events.len() as u64, N, "every event arrives once");
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.sequence, first + i as u64, "in order");
            assert_eq!(event.payload.as_ref(), (i as u64).to_le_bytes());
            assert_eq!(event.publisher_id, publisher.id());
            assert_eq!(event.topic.as_str(), "kv");
        }
        let stats = sub.stats();
        assert_eq!(
            (stats.gaps, stats.dropped, stats.duplicates),
            (0, 0, 0),
            "{stats:?}"
        );
    }
}

/// A subscriber sees its own namespace's events (and endpoint scope's), never another's.
pub async fn scoping_isolates(publishers: &EventPlane, subscribers: &EventPlane) {
    let in_a = publishers.publisher(scope("ns-a")).await.unwrap();
    let in_b = publishers.publisher(scope("ns-b")).await.unwrap();
    let narrowed = scope("ns-a").with_endpoint("generate").unwrap();
    let in_a_endpoint = publishers.publisher(narrowed.clone()).await.unwrap();
    let mut sub_a = subscribers
        .subscriber(scope("ns-a"))
        .subscribe("load")
        .await
        .unwrap();
    let mut sub_b = subscribers
        .subscriber(scope("ns-b"))
        .subscribe("load")
        .await
        .unwrap();
    let mut sub_ep = subscribers
        .subscriber(narrowed)
        .subscribe("load")
        .await
        .unwrap();
    let a0 = settle(&in_a, "load", &mut [&mut sub_a]).await;
    let b0 = settle(&in_b, "load", &mut [&mut sub_b]).await;
    let e0 = settle(&in_a_endpoint, "load", &mut [&mut sub_ep]).await;
    in_a.publish("load", Bytes::from_static(b"a"))
        .await
        .unwrap();
    in_b.publish("load", Bytes::from_static(b"b"))
        .await
        .unwrap();
    in_a_endpoint
        .publish("load", Bytes::from_static(b"e"))
        .await
        .unwrap();
    // A marker after the real events: once it arrives, anything leaked would have too.
    in_a.publish("load", Bytes::from_static(b"end"))
        .await
        .unwrap();
    in_b.publish("load", Bytes::from_static(b"end"))
        .await
        .unwrap();
    in_a_endpoint
        .publish("load", Bytes::from_static(b"end"))
        .await
        .unwrap();
    for (sub, first, owner, expected) in [
        (&mut sub_a, a0, in_a.id(), "a"),
        (&mut sub_b, b0, in_b.id(), "b"),
        (&mut sub_ep, e0, in_a_endpoint.id(), "e"),
    ] {
        let events = collect_until(sub, first, first + 1).await;
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
        assert_eq!(payloads, [expected.as_bytes(), b"end"]);
        assert!(
            events.iter().all(|e| e.publisher_id == owner),
            "only its own scope's publisher"
        );
    }
}

/// A subscriber that does not read loses its oldest events, and counts them; one that
/// reads gets everything; the publisher is not held up by either.
pub async fn slow_subscriber_loses_oldest(publishers: &EventPlane, subscribers: &EventPlane) {
    const N: u64 = 2_000;
    const BUFFER: usize = 100;
    let publisher = publishers.publisher(scope("slow")).await.unwrap();
    let fast_plane = subscribers.clone().with_subscriber_buffer(N as usize * 2);
    let slow_plane = subscribers.clone().with_subscriber_buffer(BUFFER);
    let mut fast = fast_plane
        .subscriber(scope("slow"))
        .subscribe("m")
        .await
        .unwrap();
    let mut slow = slow_plane
        .subscriber(scope("slow"))
        .subscribe("m")
        .await
        .unwrap();
    let first = settle(&publisher, "m", &mut [&mut fast, &mut slow]).await;
    // Probes still in flight land now, so the slow queue starts this phase empty.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Some(Some(_)) = futures::FutureExt::now_or_never(slow.next()) {}
    let received_before = slow.stats().received;
    within("publishing while a subscriber sleeps", async {
        for i in 0..N {
            publisher
                .publish("m", Bytes::from(i.to_le_bytes().to_vec()))
                .await
                .unwrap();
        }
    })
    .await;
    let last = first + N - 1;
    let fast_events = collect_until(&mut fast, first, last).await;
    assert_eq!(
        fast_events.len() as u64,
        N,
        "the fast subscriber gets everything"
    );
    assert_eq!(fast.stats().dropped, 0);
    within("the slow subscriber's queue to fill", async {
        while slow.stats().received < received_before + N {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stats = slow.stats();
    assert_eq!(stats.dropped, N - BUFFER as u64, "{stats:?}");
    assert_eq!(stats.gaps, 0, "drops are not gaps: {stats:?}");
    let kept = collect_until(&mut slow, first, last).await;
    let sequences: Vec<u64> = kept.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (last + 1 - BUFFER as u64..=last).collect();
    assert_eq!(sequences, expected, "the newest {BUFFER} events are kept");
}
