//! The event-plane suite and the NATS-specific behaviour (server restarts, JetStream
//! durability, max_payload, unreachable servers) against a real nats-server, with
//! publishers and subscribers on two separate NATS clients. Peers that build envelopes
//! by hand, or read them, are in `events_nats_raw_peers.rs`.

use planewire_testkit::events_suite as suite;
use planewire_testkit::nats;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use planewire::nats::{NatsAuth, NatsConfig};
use planewire::planes::events::{
    ENVELOPE_HEADER_LEN, EventError, EventPlaneConfig, EventPublisher, Subscription,
};

use nats::{NatsOptions, NatsServer};
use planewire_testkit::within;

#[path = "common/nats_events.rs"]
mod nats_events;
use nats_events::{Config, config, connect, two_planes};

async fn publish_numbered(publisher: &EventPublisher, topic: &str, count: u64) {
    for i in 0..count {
        publisher
            .publish(topic, Bytes::from(i.to_le_bytes().to_vec()))
            .await
            .unwrap();
    }
}

/// The next `count` events of `sub`, whatever their sequence numbers.
async fn take(sub: &mut Subscription, count: usize) -> Vec<u64> {
    within("events to arrive", async {
        let mut sequences = Vec::with_capacity(count);
        while sequences.len() < count {
            let event = sub.next().await.expect("subscription ended early");
            sequences.push(event.sequence);
        }
        sequences
    })
    .await
}

#[tokio::test]
async fn ten_thousand_in_order() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (publishers, subscribers) = two_planes(&server, false).await;
    suite::ten_thousand_in_order(&publishers, &subscribers).await;
}

#[tokio::test]
async fn scoping_isolates() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (publishers, subscribers) = two_planes(&server, false).await;
    suite::scoping_isolates(&publishers, &subscribers).await;
}

#[tokio::test]
async fn slow_subscriber_loses_oldest() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (publishers, subscribers) = two_planes(&server, false).await;
    suite::slow_subscriber_loses_oldest(&publishers, &subscribers).await;
}

/// Publishing carries on through a server restart and subscriptions resume.
///
/// Events published while the server is down wait in the publishing client's buffer
/// and go out once it reconnects, after it has resubscribed its own subscriptions: a
/// subscriber on the publisher's client (`own`) gets every one of them. A subscriber on
/// another client (`sub`) gets them only if its client resubscribed first, so for it we
/// assert that whatever arrives is in order without duplicates, that every event it
/// missed is counted as a gap, and that everything published after the restart arrives.
#[tokio::test]
async fn publishing_and_subscriptions_survive_a_server_restart() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let (publishers, subscribers) = two_planes(&server, false).await;
    let publisher = publishers.publisher(suite::scope("restart")).await.unwrap();
    let mut own = publishers
        .subscriber(suite::scope("restart"))
        .subscribe("t")
        .await
        .unwrap();
    let mut sub = subscribers
        .subscriber(suite::scope("restart"))
        .subscribe("t")
        .await
        .unwrap();
    let first = suite::settle(&publisher, "t", &mut [&mut own, &mut sub]).await;
    publish_numbered(&publisher, "t", 10).await;
    for s in [&mut own, &mut sub] {
        assert_eq!(suite::collect_until(s, first, first + 9).await.len(), 10);
    }
    let stats_before = sub.stats();

    server.stop();
    // Killing the server closes its sockets, and the clients see it at once; this
    // wait makes sure they have. What is written into a connection that is already
    // dead but not yet known to be is lost, as with any core NATS publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    within(
        "publishing while the server is down (buffered, not refused)",
        publish_numbered(&publisher, "t", 10),
    )
    .await;
    server.start_again();

    assert_eq!(
        take(&mut own, 10).await,
        (first + 10..first + 20).collect::<Vec<_>>(),
        "the buffered events reach a subscriber on the publisher's client"
    );
    let probes = suite::settle(&publisher, "t", &mut [&mut own, &mut sub]).await;
    let resumed = first + 20 + probes;
    publish_numbered(&publisher, "t", 100).await;
    let after = suite::collect_until(&mut sub, first + 10, resumed + 99).await;
    let sequences: Vec<u64> = after.iter().map(|e| e.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {sequences:?}"
    );
    let tail: Vec<u64> = sequences
        .iter()
        .copied()
        .filter(|s| *s >= resumed)
        .collect();
    assert_eq!(
        tail,
        (resumed..resumed + 100).collect::<Vec<_>>(),
        "everything published after the restart arrives"
    );
    // From the first outage event on, each event either arrived (the settle probes
    // included, though `settle` consumed them) or is counted as a gap.
    let stats = sub.stats();
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(
        (stats.received - stats_before.received) + (stats.gaps - stats_before.gaps),
        resumed + 100 - (first + 10),
        "every missing event is counted as a gap: {stats:?}"
    );
    assert_eq!(
        suite::collect_until(&mut own, resumed, resumed + 99)
            .await
            .len(),
        100
    );
}

/// A durable subscriber that goes away and comes back under the same name gets what was
/// published meanwhile, in order, and not what it had already received.
#[tokio::test]
async fn durable_subscriber_catches_up_after_a_restart() {
    let Some(server) = NatsServer::start_jetstream() else {
        return;
    };
    let (publishers, subscribers) = two_planes(&server, true).await;
    let publisher = publishers.publisher(suite::scope("durable")).await.unwrap();
    let subscriber = subscribers.subscriber(suite::scope("durable"));
    let name = "router 1.kv"; // needs sanitizing for JetStream
    let mut sub = subscriber.subscribe_durable("kv", name).await.unwrap();
    let first = suite::settle(&publisher, "kv", &mut [&mut sub]).await;
    publish_numbered(&publisher, "kv", 5).await;
    assert_eq!(
        suite::collect_until(&mut sub, first, first + 4).await.len(),
        5
    );
    drop(sub);
    // The unsubscription travels to the server asynchronously; a process that restarts
    // takes far longer than this to come back.
    tokio::time::sleep(Duration::from_millis(300)).await;

    publish_numbered(&publisher, "kv", 100).await;
    let mut again = subscriber.subscribe_durable("kv", name).await.unwrap();
    let missed = take(&mut again, 100).await;
    assert_eq!(
        missed,
        (first + 5..first + 105).collect::<Vec<_>>(),
        "all 100 events published while away, in order, nothing received before"
    );
    publish_numbered(&publisher, "kv", 1).await;
    assert_eq!(
        take(&mut again, 1).await,
        [first + 105],
        "and then live ones"
    );
    assert_eq!(again.stats().gaps, 0);

    let err = subscriber
        .subscribe_durable("other-topic", name)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("give each topic its own durable name"),
        "{err}"
    );
}

#[tokio::test]
async fn durable_subscriptions_need_durable_mode() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (_, subscribers) = two_planes(&server, false).await;
    let err = subscribers
        .subscriber(suite::scope("x"))
        .subscribe_durable("t", "me")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EventError::DurableUnsupported { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("DYN_EVENT_PLANE_DURABLE=true"),
        "{err}"
    );
}

#[tokio::test]
async fn durable_mode_without_jetstream_names_the_fix() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let plane = connect(&config(&server.url(), true)).await.unwrap();
    let err = within(
        "a refused stream creation",
        plane.publisher(suite::scope("x")),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("JetStream enabled"), "{err}");
}

/// An event whose envelope does not fit the server's max_payload is refused at once,
/// naming its size and the limit; one that just fits goes through.
#[tokio::test]
async fn oversized_events_are_refused_before_sending() {
    const LIMIT: usize = 4096;
    let Some(server) = NatsServer::start_with(NatsOptions {
        max_payload: Some(LIMIT),
        ..NatsOptions::default()
    }) else {
        return;
    };
    let (publishers, subscribers) = two_planes(&server, false).await;
    let publisher = publishers.publisher(suite::scope("big")).await.unwrap();
    let mut sub = subscribers
        .subscriber(suite::scope("big"))
        .subscribe("t")
        .await
        .unwrap();
    let first = suite::settle(&publisher, "t", &mut [&mut sub]).await;

    let too_big = LIMIT - ENVELOPE_HEADER_LEN; // plus the 1-byte topic: one over
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(1),
        publisher.publish("t", Bytes::from(vec![0; too_big])),
    )
    .await
    .expect("refused at once, not after a timeout")
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    match &err {
        EventError::PayloadTooLarge { size, limit, .. } => {
            assert_eq!((*size, *limit), (LIMIT + 1, LIMIT));
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&(LIMIT + 1).to_string()) && text.contains(&LIMIT.to_string()),
        "{text}"
    );
    assert!(text.contains("max_payload"), "{text}");

    publisher
        .publish("t", Bytes::from(vec![7; too_big - 1]))
        .await
        .unwrap();
    let got = suite::collect_until(&mut sub, first, first).await;
    assert_eq!(
        got[0].payload.len(),
        too_big - 1,
        "the refused event used no sequence number"
    );
}

/// Nobody listens on the port: `Unreachable`, naming the URL, well within the timeout.
#[tokio::test]
async fn an_unreachable_server_is_reported_with_its_url() {
    let url = format!("nats://127.0.0.1:{}", nats::free_port());
    let lookup = |var: &str| match var {
        "DYN_EVENT_PLANE" => Some("nats".into()),
        "NATS_SERVER" => Some(url.clone().into()),
        "NATS_CONNECT_TIMEOUT" => Some("2".into()),
        _ => None,
    };
    let config = Config {
        events: EventPlaneConfig::from_lookup(lookup).unwrap(),
        nats: NatsConfig::from_lookup(lookup).unwrap(),
    };
    let started = Instant::now();
    let err = connect(&config).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, EventError::Unreachable { url: u, .. } if *u == url),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url), "{err}");
}

/// Something accepts the connection but never speaks NATS: `Unreachable` once the
/// connect timeout has passed, not a hang.
#[tokio::test]
async fn a_silent_server_times_out_within_the_connect_timeout() {
    // The kernel completes the TCP handshake from the backlog; nothing ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let mut config = config(&url, false);
    config.nats.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = within("connecting to a silent server", connect(&config))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        matches!(&err, EventError::Unreachable { url: u, .. } if *u == url),
        "{err:?}"
    );
}

#[tokio::test]
async fn user_and_password_authenticate() {
    let Some(server) = NatsServer::start_with(NatsOptions {
        user_password: Some(("planewire".into(), "s3cret".into())),
        ..NatsOptions::default()
    }) else {
        return;
    };
    let mut good = config(&server.url(), false);
    good.nats.auth = NatsAuth::UserPassword {
        user: "planewire".into(),
        password: "s3cret".into(),
    };
    let plane = connect(&good).await.unwrap();
    let publisher = plane.publisher(suite::scope("auth")).await.unwrap();
    let mut sub = plane
        .subscriber(suite::scope("auth"))
        .subscribe("t")
        .await
        .unwrap();
    suite::settle(&publisher, "t", &mut [&mut sub]).await;

    let mut bad = good.clone();
    bad.nats.auth = NatsAuth::UserPassword {
        user: "planewire".into(),
        password: "wrong".into(),
    };
    let err = connect(&bad).await.unwrap_err();
    assert!(matches!(err, EventError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("NATS_AUTH_"), "{err}");
}
