//! §10.3, subscriber side: a planewire subscriber against a ZMTP publisher written by
//! hand, which breaks the protocol on purpose. Discovery keeps listing the publisher, so
//! after each connection the subscriber drops it reconnects, and a test can check that
//! it hears a well-behaved publisher again.

mod common;

use common::zmtp::{
    HandWrittenPublisher, closed_by_subscriber, kv_envelope, next_event, zmtp_event, zmtp_hello,
    zmtp_message,
};

use planewire::planes::events::ZMQ_MAX_MESSAGE;
use tokio::io::AsyncWriteExt;

/// A message over 64 MiB is read past and counted as malformed, and the next one read; a
/// frame with reserved flag bits ends the connection, and so does a peer announcing a
/// socket type other than PUB or XPUB; each time the subscriber reconnects and hears the
/// publisher again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_skips_oversize_messages_and_drops_a_publisher_that_breaks_zmtp() {
    let mut publisher = HandWrittenPublisher::start("raw-publisher").await;
    let subject = publisher.subject.clone();
    let mut conn = publisher.accept_subscriber().await;
    conn.write_all(&zmtp_event(&subject, 0, b"first"))
        .await
        .unwrap();
    let oversize = vec![b'x'; ZMQ_MAX_MESSAGE];
    conn.write_all(&zmtp_event(&subject, 1, &oversize))
        .await
        .unwrap();
    conn.write_all(&zmtp_event(&subject, 1, b"after the oversize one"))
        .await
        .unwrap();
    let sub = &mut publisher.sub;
    assert_eq!(next_event(sub).await.payload, "first");
    // Not assert_eq: a failure would print 64 MiB.
    let next = next_event(sub).await.payload;
    assert!(
        next == "after the oversize one",
        "a {}-byte event",
        next.len()
    );
    assert_eq!(sub.stats().malformed, 1, "{:?}", sub.stats());

    // Flag bit 0x80 is reserved.
    conn.write_all(&[0x80, 1, b'x']).await.unwrap();
    closed_by_subscriber(conn, "the subscriber closes the connection").await;
    let conn = publisher.heard_again(2, "reconnected").await;

    // The publisher goes; what answers next at its address is a REQ socket.
    drop(conn);
    let mut req = publisher.accept().await;
    req.write_all(&zmtp_hello(b"REQ")).await.unwrap();
    closed_by_subscriber(req, "the subscriber ends the handshake").await;
    publisher.heard_again(3, "after the REQ peer").await;
    let stats = publisher.sub.stats();
    assert_eq!((stats.gaps, stats.duplicates), (0, 0), "{stats:?}");
}

/// A publisher whose greeting asks for another security mechanism (PLAIN), or speaks
/// ZMTP 2, has its handshake ended by the subscriber: the event it sends right after is
/// never delivered, and the subscription lives on to hear the next, well-behaved
/// publisher at that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_ends_the_handshake_with_another_mechanism_or_zmtp_2() {
    let mut publisher = HandWrittenPublisher::start("bad-greetings").await;
    let mut plain = zmtp_hello(b"PUB");
    plain[12..17].copy_from_slice(b"PLAIN");
    let mut zmtp_2 = zmtp_hello(b"PUB");
    zmtp_2[10] = 2;
    for (what, mut hello) in [("PLAIN", plain), ("ZMTP 2", zmtp_2)] {
        let mut conn = publisher.accept().await;
        hello.extend(zmtp_event(&publisher.subject, 0, what.as_bytes()));
        // The subscriber may close before reading it all: a failed write is no failure.
        let _ = conn.write_all(&hello).await;
        closed_by_subscriber(conn, &format!("the subscriber refuses {what}")).await;
    }
    publisher
        .heard_again(0, "a NULL mechanism over ZMTP 3")
        .await;
    let stats = publisher.sub.stats();
    assert_eq!((stats.received, stats.malformed), (1, 0), "{stats:?}");
}

/// A message of more than 16 frames (here 40) is read past to its last frame and counted
/// once as malformed; the connection goes on and the next message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_more_than_16_frames_is_read_past_and_the_next_one_delivered() {
    let mut publisher = HandWrittenPublisher::start("many-frames").await;
    let subject = publisher.subject.clone();
    let mut conn = publisher.accept_subscriber().await;
    conn.write_all(&zmtp_event(&subject, 0, b"first"))
        .await
        .unwrap();
    // An event's three frames, then 37 more: every frame up to the 40th is the message's.
    let envelope = kv_envelope(1);
    let mut frames: Vec<&[u8]> = vec![subject.as_bytes(), &envelope, b"forty frames"];
    frames.resize(40, b"more");
    conn.write_all(&zmtp_message(&frames)).await.unwrap();
    conn.write_all(&zmtp_event(&subject, 1, b"after the 40 frames"))
        .await
        .unwrap();
    let sub = &mut publisher.sub;
    assert_eq!(next_event(sub).await.payload, "first");
    assert_eq!(next_event(sub).await.payload, "after the 40 frames");
    let stats = sub.stats();
    assert_eq!((stats.malformed, stats.gaps), (1, 0), "{stats:?}");
}
