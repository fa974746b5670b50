//! The zmq event plane with real processes under faults: a subscriber process stopped
//! (SIGSTOP) while its publisher floods, and a connection cut and refused for seconds
//! between a publisher process and a subscriber.
//!
//! Subscribers that break ZMTP, written by hand, against a publisher; a hand-written
//! publisher against a subscriber is in `events_zmq_raw_publishers.rs`.

mod common;

use common::planewire_bin;
use common::zmtp::{next_event, zmq_plane, zmtp_hello};
use planewire_testkit::proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use planewire::planes::discovery::{Discovery, FileStore, KvStore, MemoryStore};
use planewire::planes::events::{
    DEFAULT_SUBSCRIBER_BUFFER, EventScope, ZMQ_PEER_QUEUE_MESSAGES, ZMQ_RECONNECT_MAX,
};
use planewire_bin::{PATIENCE, Running, Setup};
use proxy::Proxy;

/// Publishing a million events takes a few seconds in a debug build on a small machine;
/// this bounds it generously.
const FLOOD_PATIENCE: Duration = Duration::from_secs(120);

fn max_socket_buffer(sysctl: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{sysctl}")).unwrap();
    text.split_whitespace().last().unwrap().parse().unwrap()
}

fn sequence(line: &str) -> u64 {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    value["sequence"].as_u64().unwrap()
}

/// Reads `process`'s stderr until a line containing `needle`, by `deadline`.
fn stderr_line_with(process: &Running, needle: &str, deadline: Instant) -> String {
    loop {
        let line = process
            .stderr_line_by(deadline)
            .unwrap_or_else(|| panic!("no stderr line with {needle:?} in time"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// The number between `prefix` and `suffix` in one `, `-separated part of `summary`.
fn count(summary: &str, prefix: &str, suffix: &str) -> u64 {
    summary
        .split(", ")
        .find_map(|part| {
            part.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {prefix:?}N{suffix:?} in {summary:?}"))
}

#[test]
#[cfg(target_os = "linux")]
fn a_stopped_subscriber_costs_its_publisher_a_bounded_queue() {
    const EVENTS: u64 = 1_000_000;
    let setup = Setup::file("10");
    let subscriber = setup.spawn_capturing_stderr(&[
        "events",
        "subscribe",
        "--endpoint",
        "test/stall",
        "--topic",
        "kv",
    ]);
    // Two seconds for the subscriber to find the publisher in discovery and connect,
    // then a flood at full speed; the publisher then stays up so its memory can be read.
    let events = EVENTS.to_string();
    let publisher = setup.spawn_capturing_stderr(&[
        "events",
        "publish",
        "--endpoint",
        "test/stall",
        "--topic",
        "kv",
        "--count",
        &events,
        "--size",
        "64",
        "--delay",
        "2",
        "--linger",
        "600",
    ]);
    let ready = publisher.next_line();
    assert!(ready.starts_with("publisher "), "{ready}");
    let (baseline, _) = publisher.memory();
    let first = subscriber.line_by(Instant::now() + PATIENCE + Duration::from_secs(2));
    let first = sequence(&first.expect("the subscriber hears the publisher"));
    subscriber.signal("STOP");
    let line = stderr_line_with(&publisher, "published", Instant::now() + FLOOD_PATIENCE);
    let (stalled_rss, peak) = publisher.memory();
    eprintln!(
        "{line}; publisher RSS {} MiB before, {} MiB with the subscriber stopped, peak {} MiB",
        baseline >> 20,
        stalled_rss >> 20,
        peak >> 20
    );
    // What may wait for the stopped subscriber: the publisher's queue for it, the
    // kernel's socket buffers (each event is about 130 bytes on the wire), and the
    // subscriber's own queue.
    let in_kernel = (max_socket_buffer("tcp_wmem") + max_socket_buffer("tcp_rmem")) / 100;
    let may_arrive = ZMQ_PEER_QUEUE_MESSAGES as u64 + in_kernel + DEFAULT_SUBSCRIBER_BUFFER as u64;
    // The queue's share: a slot, a shared 100-byte frame head, allocator overhead.
    let bound = baseline + 48 * 1024 * 1024;
    assert!(
        peak <= bound,
        "publisher peak RSS {} MiB over the {} MiB bound",
        peak >> 20,
        bound >> 20
    );

    subscriber.signal("CONT");
    let mut delivered = 0u64;
    let deadline = Instant::now() + FLOOD_PATIENCE;
    loop {
        let line = subscriber
            .line_by(deadline)
            .expect("the subscriber catches up to the last event");
        delivered += 1;
        if sequence(&line) == EVENTS - 1 {
            break;
        }
    }
    let (caught_up_rss, _) = publisher.memory();
    eprintln!(
        "after SIGCONT: {delivered} events delivered (at most {may_arrive} may wait); publisher RSS {} MiB",
        caught_up_rss >> 20
    );
    assert!(
        caught_up_rss <= baseline + 8 * 1024 * 1024,
        "the publisher's memory goes back once the subscriber caught up: {} MiB, {} MiB at the start",
        caught_up_rss >> 20,
        baseline >> 20
    );
    assert!(
        delivered <= may_arrive,
        "{delivered} events arrived after the subscriber resumed: more than the {may_arrive} \
         the bounds allow"
    );
    let mut subscriber = subscriber;
    subscriber.signal("TERM");
    let summary = stderr_line_with(&subscriber, "missing (gaps)", Instant::now() + PATIENCE);
    let received = count(&summary, "received ", " events");
    let gaps = count(&summary, "", " missing (gaps)");
    eprintln!("subscriber: {summary}");
    assert!(
        received <= may_arrive,
        "{received} events reached the subscriber: more than the {may_arrive} the bounds allow"
    );
    // Every event from the first one seen (at or before `first`) to the last is either
    // received or counted missing: what the publisher dropped shows up as gaps.
    assert!(
        gaps > 0 && (EVENTS - first..=EVENTS).contains(&(received + gaps)),
        "first printed {first}: {summary}"
    );
    assert!(subscriber.wait().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_subscriber_is_back_within_a_second_and_counts_what_it_missed() {
    // A publisher process, an event every 2 ms, registered in a file store...
    let setup = Setup::file("10");
    let publisher = setup.spawn(&[
        "events",
        "publish",
        "--endpoint",
        "test/outage",
        "--topic",
        "kv",
        "--count",
        "1000000000",
        "--interval",
        "0.002",
        "--delay",
        "0",
    ]);
    let ready = tokio::task::block_in_place(|| publisher.next_line());
    let id = ready
        .strip_prefix("publisher ")
        .expect("the publisher's id line");
    let scope = EventScope::new("test", "outage").unwrap();
    let key = format!("{}{id}", scope.channels_prefix());
    let store = FileStore::open(setup.file_dir().unwrap()).await.unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&store.get(&key).await.unwrap().expect("its record")).unwrap();
    let target: SocketAddr = record["address"].as_str().unwrap()["tcp://".len()..]
        .parse()
        .unwrap();
    // ...reached through a proxy by a subscriber whose discovery names the proxy.
    let proxy = Proxy::start(target).await;
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), Duration::from_secs(10));
    let plane = zmq_plane(&discovery).await;
    let mut sub = plane.subscriber(scope).subscribe("kv").await.unwrap();
    let value = format!(
        r#"{{"address":"tcp://{}","publisher_id":"{id}"}}"#,
        proxy.address()
    );
    let _registration = discovery.register_key(key, value.into()).await.unwrap();
    let mut last = next_event(&mut sub).await.sequence;

    // Twelve seconds refused: with a backoff doubling from 100 ms to 30 s (the zeromq
    // crate's) the subscriber was deaf for 6.4 s after such an outage.
    proxy.close();
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(12);
    while let Ok(event) = tokio::time::timeout_at(outage_ends, sub.next()).await {
        last = event.expect("the subscription goes on").sequence;
    }
    proxy.open().await;
    let reopened = Instant::now();
    let after = next_event(&mut sub).await;
    let deaf_for = reopened.elapsed();
    eprintln!(
        "first event {deaf_for:?} after the port reopened; sequence {last} then {}",
        after.sequence
    );
    assert!(
        deaf_for <= ZMQ_RECONNECT_MAX * 2,
        "the subscriber heard the publisher again {deaf_for:?} after it was reachable"
    );
    let stats = sub.stats();
    let missed = after.sequence - last - 1;
    assert!(missed > 0, "the publisher went on during the outage");
    assert_eq!(
        (stats.gaps, stats.dropped),
        (missed, 0),
        "the events sent during the outage are counted as a gap: {stats:?}"
    );
}

/// Writes `bytes` to a raw connection to `address` and reads until the publisher closes
/// it; returns what it sent first (its greeting, unless it closed before).
async fn closed_after(address: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(address).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut got))
        .await
        .expect("the publisher closes the connection")
        .ok();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_closes_peers_that_break_zmtp_and_serves_the_rest() {
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), Duration::from_secs(10));
    let plane = zmq_plane(&discovery).await;
    let scope = EventScope::new("test", "hostile").unwrap();
    let publisher = plane.publisher(scope.clone()).await.unwrap();
    let record = &discovery
        .store()
        .list(&scope.channels_prefix())
        .await
        .unwrap()[0];
    let record: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    let address: SocketAddr = record["address"].as_str().unwrap()["tcp://".len()..]
        .parse()
        .unwrap();

    // Not ZMTP at all: 64 bytes, as much as a greeting, so that the publisher has read
    // everything when it closes (unread input would turn the close into a reset).
    let mut http = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    http.resize(64, b' ');
    let got = closed_after(address, &http).await;
    assert_eq!(got.len(), 64, "only the publisher's greeting: {got:?}");
    assert_eq!((got[0], got[9], got[10]), (0xFF, 0x7F, 3), "ZMTP 3.0");
    // A PUB cannot subscribe to a PUB.
    closed_after(address, &zmtp_hello(b"PUB")).await;
    // A frame with reserved flag bits, after a valid handshake and subscription.
    let subject = scope.subject("kv");
    let mut bytes = zmtp_hello(b"SUB");
    bytes.extend([0x00, 1 + subject.len() as u8, 1]);
    bytes.extend(subject.as_bytes());
    bytes.extend([0x80, 0]);
    closed_after(address, &bytes).await;
    // A ZMTP 2 greeting, and a mechanism other than NULL.
    let mut old_version = zmtp_hello(b"SUB");
    old_version[10] = 2;
    closed_after(address, &old_version[..64]).await;
    let mut curve = zmtp_hello(b"SUB");
    curve[12..17].copy_from_slice(b"CURVE");
    closed_after(address, &curve[..64]).await;
    // A command frame with MORE, and a command inside a multi-frame message.
    let mut bytes = zmtp_hello(b"SUB");
    bytes.extend([0x05, 5, 4]);
    bytes.extend(b"PING");
    closed_after(address, &bytes).await;
    let mut bytes = zmtp_hello(b"SUB");
    bytes.extend([0x01, 1, b'x', 0x04, 5, 4]);
    bytes.extend(b"PING");
    closed_after(address, &bytes).await;
    // More than 1,024 subscriptions.
    let mut bytes = zmtp_hello(b"SUB");
    for i in 0..1025 {
        let prefix = format!("p{i}");
        bytes.extend([0x00, 1 + prefix.len() as u8, 1]);
        bytes.extend(prefix.as_bytes());
    }
    closed_after(address, &bytes).await;

    // A subscriber that keeps to the protocol is served all along.
    let mut sub = plane.subscriber(scope).subscribe("kv").await.unwrap();
    let heard = tokio::time::timeout(PATIENCE, async {
        loop {
            publisher.publish("kv", "still here".into()).await.unwrap();
            if let Ok(event) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
                return event.expect("the subscription goes on");
            }
        }
    })
    .await
    .expect("the well-behaved subscriber hears the publisher");
    assert_eq!(heard.payload, "still here");
}
