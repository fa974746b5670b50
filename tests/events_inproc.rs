//! The event-plane suite on the in-process transport, and the disabled plane.

use planewire_testkit::events_suite as suite;

use bytes::Bytes;
use planewire::planes::events::{EventError, EventPlane, EventPlaneKind};

#[tokio::test]
async fn ten_thousand_in_order() {
    let plane = EventPlane::inproc();
    suite::ten_thousand_in_order(&plane, &plane).await;
}

#[tokio::test]
async fn scoping_isolates() {
    let plane = EventPlane::inproc();
    suite::scoping_isolates(&plane, &plane).await;
}

#[tokio::test]
async fn slow_subscriber_loses_oldest() {
    let plane = EventPlane::inproc();
    suite::slow_subscriber_loses_oldest(&plane, &plane).await;
}

#[tokio::test]
async fn separate_inproc_planes_do_not_meet() {
    let one = EventPlane::inproc();
    let other = EventPlane::inproc();
    let publisher = one.publisher(suite::scope("x")).await.unwrap();
    let mut sub = other
        .subscriber(suite::scope("x"))
        .subscribe("t")
        .await
        .unwrap();
    let mut own = one
        .subscriber(suite::scope("x"))
        .subscribe("t")
        .await
        .unwrap();
    publisher
        .publish("t", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let got = suite::collect_until(&mut own, 0, 0).await;
    assert_eq!(got[0].payload.as_ref(), b"1");
    assert!(futures::FutureExt::now_or_never(futures::StreamExt::next(&mut sub)).is_none());
}

#[tokio::test]
async fn disabled_plane_publishes_nothing_and_refuses_subscriptions() {
    let plane = EventPlane::disabled();
    assert_eq!(plane.kind(), EventPlaneKind::None);
    let publisher = plane.publisher(suite::scope("x")).await.unwrap();
    publisher
        .publish("t", Bytes::from_static(b"dropped"))
        .await
        .unwrap();
    let err = plane
        .subscriber(suite::scope("x"))
        .subscribe("t")
        .await
        .unwrap_err();
    assert!(matches!(err, EventError::Disabled));
    assert!(err.to_string().contains("DYN_EVENT_PLANE=none"), "{err}");
}

#[tokio::test]
async fn bad_topics_and_durable_requests_are_refused() {
    let plane = EventPlane::inproc();
    let publisher = plane.publisher(suite::scope("x")).await.unwrap();
    let err = publisher.publish("", Bytes::new()).await.unwrap_err();
    assert!(err.to_string().contains("1 to 1024 bytes"), "{err}");
    let sub = plane.subscriber(suite::scope("x"));
    let err = sub.subscribe_durable("t", "me").await.unwrap_err();
    assert!(err.to_string().contains("JetStream"), "{err}");
    // A refused publish used no sequence number: the next event is still 0.
    let mut s = sub.subscribe("t").await.unwrap();
    publisher.publish("t", Bytes::new()).await.unwrap();
    assert_eq!(suite::collect_until(&mut s, 0, 0).await[0].sequence, 0);
}
