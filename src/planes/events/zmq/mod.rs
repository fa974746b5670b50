//! `DYN_EVENT_PLANE=zmq`: brokerless PUB/SUB over ZMTP 3.0, with publishers found
//! through discovery.
//!
//! Each publisher binds its own PUB socket on an OS-assigned port and registers it under
//! `{channels_prefix}{publisher_id:016x}` on the process lease (see [`ChannelRecord`]).
//! Each subscription watches the scope's prefix and keeps one SUB socket and receive
//! task per live publisher: a key that appears starts one, a key that goes (deleted,
//! expired with its lease, or missing from a resynchronizing snapshot) ends it.
//!
//! A message is three frames:
//!
//! ```text
//! frame 1: topic frame   EventScope::subject(topic), UTF-8, e.g. "pw.ev.ns.comp.~.kv"
//! frame 2: envelope      32-byte little-endian header + topic (Event::encode_header)
//! frame 3: payload       the event's bytes, as given to publish
//! ```
//!
//! SUB sockets filter by prefix on frame 1, so a receiver also checks it is exactly the
//! subject it asked for. Messages that do not parse are logged and skipped.
//!
//! The sockets are this module's own ([`zmtp`], [`publisher`], [`subscriber`]), not the
//! `zeromq` crate's: its PUB socket queues without bound behind a stalled subscriber
//! (567 MB after 2 M events of 64 B, most of them delivered late), and its SUB socket
//! backs off to 30 s between reconnects. Here a subscriber costs its publisher at most
//! [`ZMQ_PEER_QUEUE_MESSAGES`] events or [`ZMQ_PEER_QUEUE_BYTES`] bytes, oldest dropped first,
//! and a subscriber waits at most [`ZMQ_RECONNECT_MAX`] between attempts.

mod connection;
mod message;
mod publisher;
mod subscriber;
mod zmtp;

pub use publisher::{ZMQ_PEER_QUEUE_BYTES, ZMQ_PEER_QUEUE_MESSAGES};
pub use subscriber::{ZMQ_MAX_MESSAGE, ZMQ_RECONNECT_MAX};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::publisher::PubSocket;
use self::subscriber::Receiver;
use super::queue::{SubscriberQueue, SubscriptionGuard};
use super::{Event, EventError, EventPlaneKind, EventScope, EventSink, Transport};
use crate::planes::discovery::{Discovery, KeyRegistration, KeyValue, KvEvent, KvWatch};
use crate::vocab::Utf8Bytes;

const PLANE: &str = "zmq";

pub(super) struct Zmq {
    discovery: Discovery,
    /// Where publishers bind, and the address they advertise.
    host: IpAddr,
}

impl Zmq {
    /// `host` unset: the outbound interface's address, or loopback when there is none.
    pub(super) fn new(discovery: Discovery, host: Option<IpAddr>) -> Self {
        Self {
            discovery,
            host: host.unwrap_or_else(crate::vocab::detect_local_ip),
        }
    }

    async fn bind_and_register(
        &self,
        scope: &EventScope,
        publisher_id: u64,
    ) -> Result<Box<dyn EventSink>, EventError> {
        // Binding the std listener ourselves gives the OS-assigned port as a SocketAddr,
        // which formats IPv6 hosts with their brackets.
        let cannot_bind = |err: std::io::Error| {
            transport(format!(
                "cannot bind a PUB socket on {}: {err}; set DYN_EVENT_PLANE_HOST to an address of this host",
                self.host
            ))
        };
        let listener = std::net::TcpListener::bind((self.host, 0)).map_err(cannot_bind)?;
        let local = listener.local_addr().map_err(cannot_bind)?;
        let socket = PubSocket::serve(listener)
            .map_err(|err| transport(format!("cannot listen on {local}: {err}")))?;
        let record = ChannelRecord::new(local, publisher_id);
        let key = format!("{}{publisher_id:016x}", scope.channels_prefix());
        let registration = self.discovery.register_key(key, record.to_json()).await?;
        tracing::debug!(address = %record.address, %scope, "zmq event publisher registered");
        Ok(Box::new(ZmqSink {
            _registration: registration,
            socket,
        }))
    }
}

impl Transport for Zmq {
    fn kind(&self) -> EventPlaneKind {
        EventPlaneKind::Zmq
    }

    fn sink<'a>(
        &'a self,
        scope: &'a EventScope,
        publisher_id: u64,
    ) -> BoxFuture<'a, Result<Box<dyn EventSink>, EventError>> {
        self.bind_and_register(scope, publisher_id).boxed()
    }

    fn subscribe<'a>(
        &'a self,
        scope: &'a EventScope,
        topic: &'a str,
        queue: Arc<SubscriberQueue>,
    ) -> BoxFuture<'a, Result<SubscriptionGuard, EventError>> {
        async move {
            let prefix = scope.channels_prefix();
            // Watching before returning makes an unreachable backend an error here.
            let watch = self.discovery.store().watch(&prefix).await?;
            let stop = CancellationToken::new();
            let peers = Peers::new(prefix, scope.subject(topic), topic, queue, stop.clone());
            tokio::spawn(follow_publishers(watch, peers, stop.clone()));
            let guard: SubscriptionGuard = Box::new(stop.drop_guard());
            Ok(guard)
        }
        .boxed()
    }
}

/// The discovery value of one publisher: a JSON object
/// `{"address":"tcp://10.0.0.5:41234","publisher_id":"00c0ffee00c0ffee"}`. Only
/// `address` is read by subscribers; unknown fields are ignored, so it may grow.
#[derive(Debug, Serialize, Deserialize)]
struct ChannelRecord {
    /// A ZMQ endpoint a SUB socket can connect to.
    address: String,
    /// The envelope's publisher id, as 16 lowercase hex digits (as in the key).
    publisher_id: String,
}

impl ChannelRecord {
    fn new(local: SocketAddr, publisher_id: u64) -> Self {
        Self {
            address: format!("tcp://{local}"),
            publisher_id: format!("{publisher_id:016x}"),
        }
    }

    fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a struct of strings serializes"))
    }
}

/// One publisher's PUB socket and its discovery record; dropping it deregisters and
/// closes the socket.
struct ZmqSink {
    /// Dropped first, so subscribers stop looking for the socket before it goes.
    _registration: KeyRegistration,
    socket: PubSocket,
}

impl EventSink for ZmqSink {
    fn send<'a>(
        &'a mut self,
        subject: &'a Utf8Bytes,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), EventError>> {
        // Never waits for subscribers: each has a bounded queue of its own.
        self.socket.send(subject.as_bytes(), event);
        futures::future::ready(Ok(())).boxed()
    }
}

/// Until `stop`: applies each discovery change to `peers`.
async fn follow_publishers(mut watch: KvWatch, mut peers: Peers, stop: CancellationToken) {
    loop {
        let change = tokio::select! {
            _ = stop.cancelled() => return,
            change = watch.next() => change,
        };
        match change {
            Some(change) => peers.apply(change),
            None => {
                // Only a dropped store ends a watch: publishers can no longer be
                // followed, so end the subscription rather than go silently stale.
                tracing::warn!(prefix = %peers.prefix, "discovery watch ended: closing the zmq event subscription");
                peers.queue.close();
                return;
            }
        }
    }
}

/// The publishers one subscription is connected to, by discovery key.
struct Peers {
    prefix: String,
    subject: Arc<str>,
    topic: Arc<str>,
    queue: Arc<SubscriberQueue>,
    /// Parent of every receive task's token.
    stop: CancellationToken,
    live: HashMap<String, Peer>,
}

/// A receive task for one publisher; dropping it cancels the task, which drops the
/// connection.
struct Peer {
    address: String,
    task: CancellationToken,
    retry_now: Arc<Notify>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.cancel();
    }
}

impl Peers {
    fn new(
        prefix: String,
        subject: String,
        topic: &str,
        queue: Arc<SubscriberQueue>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            prefix,
            subject: subject.into(),
            topic: topic.into(),
            queue,
            stop,
            live: HashMap::new(),
        }
    }

    fn apply(&mut self, change: KvEvent) {
        match change {
            KvEvent::Snapshot(all) => {
                // A snapshot replaces what we knew: keys missing from it are gone.
                self.live
                    .retain(|key, _| all.iter().any(|kv| kv.key == *key));
                for kv in all {
                    self.upsert(kv);
                }
            }
            KvEvent::Put(kv) => self.upsert(kv),
            KvEvent::Delete(key) => {
                if let Some(peer) = self.live.remove(&key) {
                    tracing::debug!(address = %peer.address, "zmq event publisher left");
                }
            }
        }
    }

    fn upsert(&mut self, kv: KeyValue) {
        let record = match serde_json::from_slice::<ChannelRecord>(&kv.value) {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!(key = %kv.key, %err, "skipping a zmq publisher record that is not {{\"address\": ...}} JSON");
                self.live.remove(&kv.key);
                return;
            }
        };
        if let Some(peer) = self.live.get(&kv.key) {
            if peer.address == record.address {
                // Written again (a new lease, or a repaired record): the publisher is
                // probably back, so a connection waiting to retry tries now.
                peer.retry_now.notify_one();
                return;
            }
        }
        tracing::debug!(address = %record.address, "zmq event publisher joined");
        let token = self.stop.child_token();
        let retry_now = Arc::new(Notify::new());
        let receiver = Receiver {
            address: record.address.clone(),
            subject: Arc::clone(&self.subject),
            topic: Arc::clone(&self.topic),
            queue: Arc::clone(&self.queue),
            retry_now: Arc::clone(&retry_now),
        };
        let cancelled = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancelled.cancelled() => {}
                _ = receiver.run() => {}
            }
        });
        self.live.insert(
            kv.key,
            Peer {
                address: record.address,
                task: token,
                retry_now,
            },
        );
    }
}

fn transport(reason: String) -> EventError {
    EventError::Transport {
        plane: PLANE,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "pw.ev.ns.c.~.kv";

    #[test]
    fn the_record_is_small_json_with_the_address() {
        let record = ChannelRecord::new("127.0.0.1:5555".parse().unwrap(), 0xabc);
        assert_eq!(
            record.to_json(),
            r#"{"address":"tcp://127.0.0.1:5555","publisher_id":"0000000000000abc"}"#
        );
        let v6 = ChannelRecord::new("[::1]:5555".parse().unwrap(), 1);
        assert_eq!(v6.address, "tcp://[::1]:5555");
    }

    fn kv(key: &str, port: u16) -> KeyValue {
        // Port 1 on loopback refuses connections: the receive tasks retry quietly and
        // send nothing anywhere else.
        let record = ChannelRecord::new(SocketAddr::from(([127, 0, 0, 1], port)), 1);
        KeyValue {
            key: key.to_owned(),
            value: record.to_json(),
        }
    }

    fn live(peers: &Peers) -> Vec<(String, String)> {
        let mut out: Vec<_> = peers
            .live
            .iter()
            .map(|(k, p)| (k.clone(), p.address.clone()))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn peers_follow_puts_deletes_and_resynchronizing_snapshots() {
        let stop = CancellationToken::new();
        let queue = SubscriberQueue::new(4, "t".into());
        let mut peers = Peers::new("p/".into(), SUBJECT.into(), "kv", queue, stop.clone());
        peers.apply(KvEvent::Snapshot(vec![kv("p/a", 1), kv("p/b", 1)]));
        peers.apply(KvEvent::Put(kv("p/c", 1)));
        peers.apply(KvEvent::Delete("p/a".into()));
        let b_task = peers.live["p/b"].task.clone();
        // A resync that lost b, kept c, moved c's address and brought back a.
        peers.apply(KvEvent::Snapshot(vec![kv("p/a", 1), kv("p/c", 2)]));
        assert_eq!(
            live(&peers),
            [
                ("p/a".into(), "tcp://127.0.0.1:1".into()),
                ("p/c".into(), "tcp://127.0.0.1:2".into())
            ]
        );
        assert!(b_task.is_cancelled(), "a dropped peer's task is cancelled");
        peers.apply(KvEvent::Put(KeyValue {
            key: "p/a".into(),
            value: Bytes::from_static(b"not json"),
        }));
        assert_eq!(live(&peers).len(), 1, "an unreadable record drops its peer");
        // The same record written again (a re-registration): no new task, but a
        // connection waiting to retry is told to try now.
        let retry = Arc::clone(&peers.live["p/c"].retry_now);
        assert!(retry.notified().now_or_never().is_none());
        peers.apply(KvEvent::Put(kv("p/c", 2)));
        assert!(retry.notified().now_or_never().is_some(), "retry now");
        let c_task = peers.live["p/c"].task.clone();
        assert!(!c_task.is_cancelled(), "the same publisher keeps its task");
        stop.cancel();
        assert!(
            c_task.is_cancelled(),
            "ending the subscription ends every task"
        );
    }
}
