//! ZMTP written by hand (`PROTOCOL.md` §10.3), for tests whose peer of a planewire
//! publisher or subscriber breaks the protocol on purpose, and a zmq plane on loopback.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use planewire::nats::{NatsConfig, NatsLink};
use planewire::planes::discovery::{Discovery, KeyRegistration, MemoryStore};
use planewire::planes::events::{
    Event, EventPlane, EventPlaneConfig, EventPlaneKind, EventScope, Subscription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::planewire_bin::PATIENCE;

/// The zmq plane on loopback, over `discovery`.
pub async fn zmq_plane(discovery: &Discovery) -> EventPlane {
    let config = EventPlaneConfig {
        kind: EventPlaneKind::Zmq,
        host: Some("127.0.0.1".parse().unwrap()),
        ..EventPlaneConfig::default()
    };
    EventPlane::connect(&config, discovery, &no_nats())
        .await
        .unwrap()
}

/// The zmq transport uses no NATS connection; the plane is given an unconnected link.
fn no_nats() -> NatsLink {
    NatsLink::new(NatsConfig::default())
}

pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("an event in time")
        .expect("the subscription goes on")
}

/// §10.3's greeting, and a READY announcing `socket_type`.
pub fn zmtp_hello(socket_type: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    bytes.extend(b"NULL");
    bytes.resize(64, 0);
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend((socket_type.len() as u32).to_be_bytes());
    body.extend(socket_type);
    bytes.extend([0x04, body.len() as u8]);
    bytes.extend(body);
    bytes
}

/// `frames` as one ZMTP message: MORE on all but the last, the 8-byte size on frames
/// over 255 bytes.
pub fn zmtp_message(frames: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let flags = if i + 1 < frames.len() { 0x01 } else { 0 };
        match u8::try_from(frame.len()) {
            Ok(len) => bytes.extend([flags, len]),
            Err(_) => {
                bytes.push(flags | 0x02);
                bytes.extend((frame.len() as u64).to_be_bytes());
            }
        }
        bytes.extend(*frame);
    }
    bytes
}

/// The envelope header and topic (§10.1) of the event `sequence` of publisher 7 on
/// topic `kv`.
pub fn kv_envelope(sequence: u64) -> bytes::Bytes {
    let event = Event {
        publisher_id: 7,
        sequence,
        published_at: std::time::SystemTime::now(),
        topic: "kv".into(),
        payload: Default::default(),
    };
    event.encode_header()
}

/// The event `sequence` of publisher 7 on topic `kv` as one 3-frame ZMTP message.
pub fn zmtp_event(subject: &str, sequence: u64, payload: &[u8]) -> Vec<u8> {
    zmtp_message(&[subject.as_bytes(), &kv_envelope(sequence), payload])
}

/// A planewire subscriber to topic `kv` whose discovery lists one publisher, id 7, at a
/// port the test answers by hand (as the publisher, or as whatever it likes).
pub struct HandWrittenPublisher {
    pub listener: TcpListener,
    pub sub: Subscription,
    /// What the subscriber filters on: frame 1 of each event.
    pub subject: String,
    _registration: KeyRegistration,
    _plane: EventPlane,
}

impl HandWrittenPublisher {
    pub async fn start(component: &str) -> Self {
        // The publisher's port first: its discovery record names it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let discovery = Discovery::new(Arc::new(MemoryStore::new()), Duration::from_secs(10));
        let plane = zmq_plane(&discovery).await;
        let scope = EventScope::new("test", component).unwrap();
        let sub = plane
            .subscriber(scope.clone())
            .subscribe("kv")
            .await
            .unwrap();
        let value = format!(
            r#"{{"address":"tcp://{}","publisher_id":"0000000000000007"}}"#,
            listener.local_addr().unwrap()
        );
        let key = format!("{}0000000000000007", scope.channels_prefix());
        let registration = discovery.register_key(key, value.into()).await.unwrap();
        Self {
            listener,
            sub,
            subject: scope.subject("kv"),
            _registration: registration,
            _plane: plane,
        }
    }

    /// The subscriber's next connection, not yet greeted.
    pub async fn accept(&self) -> TcpStream {
        let accepted = tokio::time::timeout(PATIENCE, self.listener.accept()).await;
        accepted.expect("the subscriber connects").unwrap().0
    }

    /// The subscriber's next connection, greetings and READYs exchanged, read up to
    /// its subscription.
    pub async fn accept_subscriber(&self) -> TcpStream {
        let mut conn = self.accept().await;
        conn.write_all(&zmtp_hello(b"PUB")).await.unwrap();
        let mut greeting = [0; 64];
        conn.read_exact(&mut greeting).await.unwrap();
        loop {
            let mut head = [0; 2];
            conn.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0] & 0x02, 0, "a subscriber's frames are short");
            let mut body = vec![0; usize::from(head[1])];
            conn.read_exact(&mut body).await.unwrap();
            let command = head[0] & 0x04 != 0;
            if !command && body.first() == Some(&1) {
                return conn;
            }
        }
    }

    /// Accepts the subscriber's next connection, sends it the event `sequence` (see
    /// [`zmtp_event`]) and checks the subscription gets it; returns the connection.
    pub async fn heard_again(&mut self, sequence: u64, payload: &'static str) -> TcpStream {
        let mut conn = self.accept_subscriber().await;
        let event = zmtp_event(&self.subject, sequence, payload.as_bytes());
        conn.write_all(&event).await.unwrap();
        assert_eq!(next_event(&mut self.sub).await.payload, payload);
        conn
    }
}

/// Reads `conn` until the subscriber closes it (or resets it), failing with `what`.
pub async fn closed_by_subscriber(mut conn: TcpStream, what: &str) {
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest)).await;
    closed.expect(what).ok();
}
