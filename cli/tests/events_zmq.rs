//! The ZMQ event plane: the shared suite, publishers in other processes joining and
//! dying, and interop with libzmq through pyzmq. Every socket is on 127.0.0.1.
//!
//! Publisher processes are `planewire events publish`.
//!
//! The libzmq tests run Python with pyzmq: `$PLANEWIRE_PYTHON` (scripts/test.sh makes a
//! venv in `target/pyzmq-venv` and sets it), else `python3`. Without pyzmq they print a
//! note and pass — except under `CI=true`, where they fail.

use planewire_testkit::events_suite as suite;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::nats::{NatsConfig, NatsLink};
use planewire::planes::discovery::{Discovery, FileStore, KvEvent, KvStore, MemoryStore};
use planewire::planes::events::{
    EventError, EventPlane, EventPlaneConfig, EventPlaneKind, EventScope, Subscription,
};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use planewire_testkit::within;

const TTL: Duration = Duration::from_secs(2);

fn zmq_config() -> EventPlaneConfig {
    EventPlaneConfig {
        kind: EventPlaneKind::Zmq,
        host: Some("127.0.0.1".parse().unwrap()),
        ..EventPlaneConfig::default()
    }
}

async fn zmq_plane(discovery: &Discovery) -> EventPlane {
    EventPlane::connect(&zmq_config(), discovery, &no_nats())
        .await
        .unwrap()
}

fn memory_discovery() -> Discovery {
    Discovery::new(Arc::new(MemoryStore::new()), TTL)
}

/// Two planes, as two processes would have, meeting through one discovery store.
async fn two_planes() -> (EventPlane, EventPlane) {
    let discovery = memory_discovery();
    (zmq_plane(&discovery).await, zmq_plane(&discovery).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_in_order() {
    let (publishers, subscribers) = two_planes().await;
    suite::ten_thousand_in_order(&publishers, &subscribers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoping_isolates() {
    let (publishers, subscribers) = two_planes().await;
    suite::scoping_isolates(&publishers, &subscribers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_loses_oldest() {
    let (publishers, subscribers) = two_planes().await;
    suite::slow_subscriber_loses_oldest(&publishers, &subscribers).await;
}

#[tokio::test]
async fn durable_subscriptions_are_refused() {
    let (_, subscribers) = two_planes().await;
    let err = subscribers
        .subscriber(suite::scope("x"))
        .subscribe_durable("t", "me")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EventError::DurableUnsupported { plane: "zmq" }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publisher_withdraws_its_registration_and_closes_its_socket() {
    let discovery = memory_discovery();
    let plane = zmq_plane(&discovery).await;
    let prefix = suite::scope("gone").channels_prefix();
    let publisher = plane.publisher(suite::scope("gone")).await.unwrap();
    let listed = discovery.store().list(&prefix).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, format!("{prefix}{:016x}", publisher.id()));
    let record: serde_json::Value = serde_json::from_slice(&listed[0].value).unwrap();
    assert!(
        record["address"]
            .as_str()
            .unwrap()
            .starts_with("tcp://127.0.0.1:"),
        "{record}"
    );
    assert_eq!(record["publisher_id"], format!("{:016x}", publisher.id()));
    let port = record["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let socket_addr = format!("127.0.0.1:{port}");
    drop(publisher);
    within("the registration to go and the socket to close", async {
        while !discovery.store().list(&prefix).await.unwrap().is_empty()
            || tokio::net::TcpStream::connect(&socket_addr).await.is_ok()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

// ---- publishers in other processes ----------------------------------------------------

const PROCESS_SCOPE: (&str, &str) = ("procs", "worker");

fn process_scope() -> EventScope {
    EventScope::new(PROCESS_SCOPE.0, PROCESS_SCOPE.1).unwrap()
}

/// `planewire events publish` on `topic` every 20 ms, with file discovery in `dir` and
/// leases of `ttl_secs`. Killed (by PID) on drop.
struct PublisherProcess {
    child: Child,
    id: u64,
}

impl PublisherProcess {
    async fn start(dir: &Path, ttl_secs: &str, topic: &str) -> Self {
        let scope = format!("{}/{}", PROCESS_SCOPE.0, PROCESS_SCOPE.1);
        let mut child = Command::new(env!("CARGO_BIN_EXE_planewire"))
            .args(["events", "publish", "--endpoint", &scope, "--topic", topic])
            .args([
                "--count",
                "1000000000",
                "--interval",
                "0.02",
                "--delay",
                "0",
            ])
            .env("DYN_DISCOVERY_BACKEND", "file")
            .env("DYN_FILE_KV", dir)
            .env("DYN_DISCOVERY_LEASE_TTL", ttl_secs)
            .env("DYN_EVENT_PLANE", "zmq")
            .env("DYN_EVENT_PLANE_HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start planewire events publish");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within("the publisher's registration", lines.next_line())
            .await
            .expect("read the publisher's output")
            .expect("the publisher exited before printing its id");
        let id = line
            .strip_prefix("publisher ")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or_else(|| panic!("publish printed {line:?} instead of its id"));
        Self { child, id }
    }

    /// SIGKILL, by PID, and reap it: no deregistration, the record goes with the lease.
    async fn kill(&mut self) {
        self.child.start_kill().expect("kill the publisher");
        within("the killed publisher to exit", self.child.wait())
            .await
            .expect("reap the publisher");
    }
}

async fn file_plane(dir: &Path) -> EventPlane {
    let discovery = Discovery::new(Arc::new(FileStore::open(dir).await.unwrap()), TTL);
    zmq_plane(&discovery).await
}

/// Reads `sub` until an event from each of `publishers` arrived.
async fn until_heard_from(sub: &mut Subscription, publishers: &[u64]) {
    let mut missing: HashSet<u64> = publishers.iter().copied().collect();
    within("an event from every publisher", async {
        while !missing.is_empty() {
            let event = sub.next().await.expect("subscription ended");
            missing.remove(&event.publisher_id);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_processes_join_a_running_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let plane = file_plane(dir.path()).await;
    let mut sub = plane
        .subscriber(process_scope())
        .subscribe("load")
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut children = Vec::new();
    for _ in 0..3 {
        let child = PublisherProcess::start(dir.path(), "5", "load").await;
        ids.push(child.id);
        children.push(child);
        until_heard_from(&mut sub, &ids).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_publisher_leaves_and_a_new_one_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let plane = file_plane(dir.path()).await;
    let store = FileStore::open(dir.path()).await.unwrap();
    let prefix = process_scope().channels_prefix();
    let mut sub = plane
        .subscriber(process_scope())
        .subscribe("load")
        .await
        .unwrap();
    let mut doomed = PublisherProcess::start(dir.path(), "1", "load").await;
    until_heard_from(&mut sub, &[doomed.id]).await;

    let mut watch = store.watch(&prefix).await.unwrap();
    let doomed_key = format!("{prefix}{:016x}", doomed.id);
    doomed.kill().await;
    within("the killed publisher's lease to expire", async {
        loop {
            match watch.next().await.expect("watch ended") {
                KvEvent::Delete(key) if key == doomed_key => return,
                KvEvent::Snapshot(all) if all.iter().all(|kv| kv.key != doomed_key) => return,
                _ => {}
            }
        }
    })
    .await;

    let fresh = PublisherProcess::start(dir.path(), "1", "load").await;
    within("the new publisher's events", async {
        loop {
            let event = sub.next().await.expect("subscription ended");
            if event.publisher_id == fresh.id {
                return;
            }
            // Only what the killed one sent before it died may still be queued.
            assert_eq!(event.publisher_id, doomed.id, "{event:?}");
        }
    })
    .await;
}

// ---- libzmq peers (pyzmq) ---------------------------------------------------------------

/// Modes: `sub ADDRESS SUBJECT` prints the first message it gets as JSON;
/// `pub SUBJECT TOPIC PUBLISHER_ID [malformed]` binds on 127.0.0.1, prints its port and
/// publishes `py:{seq}` every 20 ms, each preceded by broken messages with `malformed`.
const PEER_PY: &str = r#"
import json, struct, sys, time, zmq

mode = sys.argv[1]
ctx = zmq.Context()
if mode == "sub":
    address, subject = sys.argv[2], sys.argv[3]
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.setsockopt(zmq.SUBSCRIBE, subject.encode())
    s.connect(address)
    frames = s.recv_multipart()
    header = frames[1]
    magic, version, topic_len, _, pub_id, seq, nanos = struct.unpack_from("<BBHIQQQ", header)
    print(json.dumps({
        "frames": len(frames),
        "topic_frame": frames[0].decode(),
        "magic": magic,
        "version": version,
        "topic": header[32:32 + topic_len].decode(),
        "publisher_id": "%016x" % pub_id,
        "sequence": seq,
        "nanos": nanos,
        "payload": frames[2].decode(),
    }), flush=True)
else:
    subject, topic, pub_id = sys.argv[2].encode(), sys.argv[3].encode(), int(sys.argv[4], 16)
    malformed = len(sys.argv) > 5
    s = ctx.socket(zmq.PUB)
    print(s.bind_to_random_port("tcp://127.0.0.1"), flush=True)
    def header(topic, seq):
        nanos = time.time_ns()
        return struct.pack("<BBHIQQQ", 0xE7, 1, len(topic), 0, pub_id, seq, nanos) + topic
    for seq in range(1000):
        if malformed:
            s.send_multipart([subject])
            s.send_multipart([subject, b"\x00" * 32 + topic, b"bad magic"])
            s.send_multipart([subject, header(topic, seq)])
            s.send_multipart([subject, header(topic, seq), b"x", b"extra frame"])
            s.send_multipart([subject, header(b"other", seq), b"wrong topic"])
            s.send_multipart([subject + b"2", header(topic + b"2", seq), b"longer topic"])
        s.send_multipart([subject, header(topic, seq), b"py:%d" % seq])
        time.sleep(0.02)
"#;

fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// A Python that can `import zmq`; `None` (after a note) if there is none, outside CI.
fn python() -> Option<String> {
    let python = std::env::var("PLANEWIRE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let works = std::process::Command::new(&python)
        .args(["-c", "import zmq"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        let message = format!(
            "`{python}` cannot import zmq (pyzmq): scripts/test.sh installs it in \
             target/pyzmq-venv and sets PLANEWIRE_PYTHON; or run `pip install pyzmq`"
        );
        assert!(
            !in_ci(),
            "{message}: libzmq interop tests cannot be skipped in CI"
        );
        eprintln!("skipping: {message}");
        return None;
    }
    Some(python)
}

/// The peer script in `mode`, killed (by PID) on drop, and its stdout lines.
fn peer(python: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(PEER_PY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the pyzmq peer");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn first_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    within("the pyzmq peer's output", lines.next_line())
        .await
        .expect("read the pyzmq peer")
        .expect("the pyzmq peer exited without output (its error is above)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_subscriber_reads_planewire_events() {
    let Some(python) = python() else { return };
    let discovery = memory_discovery();
    let plane = zmq_plane(&discovery).await;
    let scope = suite::scope("interop");
    let publisher = plane.publisher(scope.clone()).await.unwrap();
    let listed = discovery
        .store()
        .list(&scope.channels_prefix())
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&listed[0].value).unwrap();
    let address = record["address"].as_str().unwrap();
    let subject = scope.subject("kv");
    let (_child, mut lines) = peer(&python, &["sub", address, &subject]);
    let read = first_line(&mut lines);
    tokio::pin!(read);
    // Publishes until the peer has joined (a PUB socket drops what it sends before).
    let line = within("the pyzmq subscriber to get an event", async {
        loop {
            publisher
                .publish("kv", Bytes::from_static(b"hello libzmq"))
                .await
                .unwrap();
            tokio::select! {
                line = &mut read => return line,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await;
    let got: serde_json::Value = serde_json::from_str(&line).expect("the peer prints JSON");
    assert_eq!(got["frames"], 3, "{got}");
    assert_eq!(got["topic_frame"], subject.as_str());
    assert_eq!((&got["magic"], &got["version"]), (&0xE7.into(), &1.into()));
    assert_eq!(got["topic"], "kv");
    assert_eq!(got["publisher_id"], format!("{:016x}", publisher.id()));
    assert!(got["sequence"].as_u64().is_some(), "{got}");
    assert!(got["nanos"].as_u64().unwrap() > 1_600_000_000_000_000_000);
    assert_eq!(got["payload"], "hello libzmq");
}

/// Subscribes, then registers a pyzmq publisher by hand under the documented key and
/// reads three consecutive good events from it; returns the subscription.
async fn receive_from_libzmq_publisher(python: &str, malformed: bool) -> Subscription {
    let discovery = memory_discovery();
    let plane = zmq_plane(&discovery).await;
    let scope = suite::scope("interop");
    let mut sub = plane
        .subscriber(scope.clone())
        .subscribe("kv")
        .await
        .unwrap();
    let publisher_id = 0x00c0_ffee_0bad_f00d_u64;
    let id_hex = format!("{publisher_id:016x}");
    let subject = scope.subject("kv");
    let mut args = vec!["pub", &subject, "kv", &id_hex];
    if malformed {
        args.push("malformed");
    }
    let (child, mut lines) = peer(python, &args);
    let port = first_line(&mut lines).await;
    let value = format!(r#"{{"address":"tcp://127.0.0.1:{port}","publisher_id":"{id_hex}"}}"#);
    let _registration = discovery
        .register_key(format!("{}{id_hex}", scope.channels_prefix()), value.into())
        .await
        .unwrap();
    let mut sequences = Vec::new();
    within("three events from the pyzmq publisher", async {
        while sequences.len() < 3 {
            let event = sub.next().await.expect("subscription ended");
            assert_eq!(event.publisher_id, publisher_id);
            assert_eq!(event.topic.as_str(), "kv");
            assert_eq!(event.payload, format!("py:{}", event.sequence).as_bytes());
            sequences.push(event.sequence);
        }
    })
    .await;
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive: {sequences:?}"
    );
    drop(child);
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planewire_reads_a_libzmq_publisher() {
    let Some(python) = python() else { return };
    let sub = receive_from_libzmq_publisher(&python, false).await;
    let stats = sub.stats();
    assert_eq!(
        (stats.gaps, stats.duplicates, stats.malformed),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_libzmq_messages_are_skipped() {
    let Some(python) = python() else { return };
    // Each good event follows six bad ones (1 frame, bad magic, 2 frames, 4 frames, a
    // mismatched envelope topic, a longer topic sharing the prefix) on the same
    // connection, so the good ones arriving in sequence shows the bad ones were skipped.
    let sub = receive_from_libzmq_publisher(&python, true).await;
    let stats = sub.stats();
    assert_eq!((stats.gaps, stats.duplicates), (0, 0), "{stats:?}");
    // Five of the six are not events (the longer topic is just another topic); those
    // before the second and third good events surely arrived.
    assert!(stats.malformed >= 10, "{stats:?}");
}

/// The zmq transport uses no NATS connection; the plane is given an unconnected link.
fn no_nats() -> NatsLink {
    NatsLink::new(NatsConfig::default())
}
