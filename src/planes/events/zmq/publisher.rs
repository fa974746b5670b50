//! The PUB side: one listener per publisher and, per subscriber connection, a queue
//! with a hard bound.
//!
//! Publishing never waits. Each event is encoded once and offered to every connected
//! subscriber whose subscriptions match its subject; a subscriber's queue holds at most
//! [`ZMQ_PEER_QUEUE_MESSAGES`] events and [`ZMQ_PEER_QUEUE_BYTES`] bytes, and when either is
//! reached the oldest queued events are dropped and counted (the subscriber sees the
//! loss as a gap). A writer task per subscriber drains its queue to the socket; a peer
//! that stops reading stalls only its own queue, and the queue's memory is released as
//! it drains or when the peer leaves.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::connection::{self, Reader};
use super::zmtp::{self, Command, Incoming, SocketType, ZmtpError};
use crate::planes::events::{ENVELOPE_HEADER_LEN, Event};
use crate::sync::lock;

/// Events queued for one subscriber before the oldest are dropped.
pub const ZMQ_PEER_QUEUE_MESSAGES: usize = 100_000;
/// Bytes (frame headers, subject, envelope and payload) queued for one subscriber
/// before the oldest events are dropped; a single larger event is still sent alone.
pub const ZMQ_PEER_QUEUE_BYTES: usize = 32 << 20;
/// Subscriber connections one publisher serves at once (handshakes included); more are
/// closed as they arrive.
const MAX_PEERS: usize = 1024;
/// A connection that has not finished the ZMTP handshake by then is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Subscriptions one peer may hold; a peer that asks for more is disconnected.
const MAX_SUBSCRIPTIONS: usize = 1024;
/// Largest message a subscriber may send (subscriptions are a prefix each).
const MAX_PEER_MESSAGE: usize = 64 * 1024;
/// Bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Payloads this large are written from the caller's buffer rather than copied.
const COPY_PAYLOAD_BELOW: usize = 16 * 1024;
/// A drained queue keeps at most this many slots of capacity, so a burst's memory goes
/// back once the peer has caught up.
const KEEP_CAPACITY: usize = 1024;
/// A backlog this large, once drained or dropped, hands freed memory back to the OS.
const TRIM_AFTER_BACKLOG: usize = 4 << 20;
/// Pause after a failed accept (out of file descriptors, say), so it cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// One event as every subscriber gets it: the three frames' headers with the subject
/// and envelope in `head`, then the caller's payload, shared rather than copied.
#[derive(Clone)]
struct Wire {
    head: Bytes,
    payload: Bytes,
}

impl Wire {
    fn encode(subject: &[u8], event: &Event) -> Self {
        let envelope_len = ENVELOPE_HEADER_LEN + event.topic.len();
        let mut head = BytesMut::with_capacity(3 * 9 + subject.len() + envelope_len);
        zmtp::put_frame_header(&mut head, subject.len(), true);
        head.put_slice(subject);
        zmtp::put_frame_header(&mut head, envelope_len, true);
        // Written in place: one allocation per event, shared by every subscriber.
        event.put_header(&mut head);
        zmtp::put_frame_header(&mut head, event.payload.len(), false);
        Self {
            head: head.freeze(),
            payload: event.payload.clone(),
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }
}

/// The connected subscribers (past their handshake) of one PUB socket.
type PeerList = Arc<Mutex<Vec<Arc<Outbox>>>>;

/// A bound PUB socket. Dropping it closes the listener and every subscriber connection.
pub(super) struct PubSocket {
    peers: PeerList,
    _stop: DropGuard,
}

impl PubSocket {
    /// Serves subscribers on `listener` (already bound) until dropped.
    pub(super) fn serve(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let peers = Arc::default();
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&peers), stop.clone()));
        Ok(Self {
            peers,
            _stop: stop.drop_guard(),
        })
    }

    /// Queues `event` for every subscriber of `subject`; never waits.
    pub(super) fn send(&self, subject: &[u8], event: &Event) {
        let peers = lock(&self.peers);
        let mut wire = None;
        for outbox in peers.iter() {
            outbox.offer(subject, || {
                wire.get_or_insert_with(|| Wire::encode(subject, event))
                    .clone()
            });
        }
    }
}

async fn accept(listener: TcpListener, peers: PeerList, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_PEERS));
    let mut refused = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(serve_peer(
                        stream,
                        peer,
                        Arc::clone(&peers),
                        stop.clone(),
                        permit,
                    ));
                }
                Err(_) => {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(%peer, refused_total = refused, "zmq publisher already serves {MAX_PEERS} subscriber connections: closing a new one");
                    }
                }
            },
            Err(err) => {
                tracing::warn!(%err, "zmq publisher cannot accept a connection; retrying");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve_peer(
    stream: TcpStream,
    peer: SocketAddr,
    peers: PeerList,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // Events are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        connection::handshake(stream, SocketType::Pub, MAX_PEER_MESSAGE),
    );
    let (reader, writer) = tokio::select! {
        _ = stop.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(halves)) => halves,
            Ok(Err(err)) => {
                tracing::debug!(%peer, %err, "zmq subscriber handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "zmq subscriber did not finish its handshake in {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        },
    };
    let outbox = Arc::new(Outbox::new(peer));
    lock(&peers).push(Arc::clone(&outbox));
    let ended = tokio::select! {
        _ = stop.cancelled() => None,
        err = read_subscriptions(&outbox, reader) => Some(err),
        result = write_queued(&outbox, writer) => result.err().map(ZmtpError::Io),
    };
    lock(&peers).retain(|other| !Arc::ptr_eq(other, &outbox));
    let backlog = lock(&outbox.state).backlog;
    // The last reference but for a publish that is offering an event right now: the
    // queue is freed here, or at the end of that publish.
    drop(outbox);
    if backlog >= TRIM_AFTER_BACKLOG {
        release_freed_memory();
    }
    if let Some(err) = ended {
        tracing::debug!(%peer, %err, "zmq subscriber left");
    }
}

/// Hands freed heap memory back to the OS after a large backlog is gone. Each queued
/// event's frame head is a small allocation, and glibc keeps freed small blocks in its
/// free lists rather than return them, so without this a publisher's resident memory
/// would stay at its peak after one stalled subscriber (34 of 41 MiB did, measured).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One subscriber connection's subscriptions and queue.
struct Outbox {
    peer: SocketAddr,
    state: Mutex<OutboxState>,
    /// Signalled when the queue goes from empty to not.
    ready: Notify,
}

#[derive(Default)]
struct OutboxState {
    /// Prefixes of the subjects the peer wants; one entry per subscribe, as ZMTP counts.
    subscriptions: Vec<Bytes>,
    queue: VecDeque<Wire>,
    bytes: usize,
    /// The most `bytes` has been since the queue was last empty.
    backlog: usize,
    dropped: u64,
}

impl Outbox {
    fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            state: Mutex::default(),
            ready: Notify::new(),
        }
    }

    /// Queues the event `wire` makes if the peer subscribed to a prefix of `subject`,
    /// dropping the oldest events to stay within the bounds.
    fn offer(&self, subject: &[u8], wire: impl FnOnce() -> Wire) {
        let dropped = {
            let mut state = lock(&self.state);
            if !state.subscriptions.iter().any(|p| subject.starts_with(p)) {
                return;
            }
            let wire = wire();
            let before = state.dropped;
            while state.queue.len() >= ZMQ_PEER_QUEUE_MESSAGES
                || (!state.queue.is_empty() && state.bytes + wire.len() > ZMQ_PEER_QUEUE_BYTES)
            {
                let oldest = state.queue.pop_front().expect("not empty");
                state.bytes -= oldest.len();
                state.dropped += 1;
            }
            state.bytes += wire.len();
            state.backlog = state.backlog.max(state.bytes);
            state.queue.push_back(wire);
            (state.dropped, before)
        };
        self.ready.notify_one();
        let (total, before) = dropped;
        // Logged when the count passes a power of two (its log2 moves on): a peer
        // stalled for good would otherwise log at the publish rate.
        if total.checked_ilog2() != before.checked_ilog2() {
            tracing::warn!(
                peer = %self.peer,
                dropped_total = total,
                "zmq subscriber is not keeping up: dropping its oldest queued events \
                 (at most {ZMQ_PEER_QUEUE_MESSAGES} events or {ZMQ_PEER_QUEUE_BYTES} bytes wait per subscriber)"
            );
        }
    }

    /// Moves about [`WRITE_BATCH`] bytes of queued events into `batch`.
    fn take(&self, batch: &mut Vec<Wire>) {
        let mut state = lock(&self.state);
        let mut size = 0;
        while size < WRITE_BATCH {
            let Some(wire) = state.queue.pop_front() else {
                break;
            };
            size += wire.len();
            state.bytes -= wire.len();
            batch.push(wire);
        }
        if state.queue.is_empty() {
            if state.queue.capacity() > KEEP_CAPACITY {
                state.queue.shrink_to(KEEP_CAPACITY);
            }
            if std::mem::take(&mut state.backlog) >= TRIM_AFTER_BACKLOG {
                drop(state);
                release_freed_memory();
            }
        }
    }

    /// Applies one subscription change; an error if the peer holds too many.
    fn subscribe(&self, prefix: &[u8], subscribe: bool) -> Result<(), ZmtpError> {
        let mut state = lock(&self.state);
        if subscribe {
            if state.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Err(ZmtpError::Protocol(format!(
                    "more than {MAX_SUBSCRIPTIONS} subscriptions"
                )));
            }
            state.subscriptions.push(Bytes::copy_from_slice(prefix));
        } else if let Some(at) = state.subscriptions.iter().position(|p| p == prefix) {
            state.subscriptions.swap_remove(at);
        }
        Ok(())
    }
}

/// Applies the peer's subscriptions until it leaves or breaks the protocol.
async fn read_subscriptions(outbox: &Outbox, mut reader: Reader<OwnedReadHalf>) -> ZmtpError {
    loop {
        let result = match reader.next().await {
            Ok(Incoming::Message(frames)) => match frames.as_slice() {
                [frame] => match frame.split_first() {
                    Some((1, prefix)) => outbox.subscribe(prefix, true),
                    Some((0, prefix)) => outbox.subscribe(prefix, false),
                    _ => Ok(()),
                },
                // A SUB socket sends nothing else; an XSUB's other messages mean
                // nothing to a PUB.
                _ => Ok(()),
            },
            Ok(Incoming::Command(Command::Subscribe { prefix, subscribe })) => {
                outbox.subscribe(&prefix, subscribe)
            }
            Ok(Incoming::Command(Command::Error(reason))) => Err(ZmtpError::Protocol(format!(
                "the peer sent ERROR: {reason}"
            ))),
            Ok(Incoming::Command(_) | Incoming::Discarded(_)) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            return err;
        }
    }
}

/// Writes the peer's queue as it fills, until a write fails.
async fn write_queued(outbox: &Outbox, mut writer: OwnedWriteHalf) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + COPY_PAYLOAD_BELOW);
    loop {
        outbox.take(&mut batch);
        if batch.is_empty() {
            // A notify_one since the queue was found empty left a permit: no lost wake.
            outbox.ready.notified().await;
            continue;
        }
        for wire in batch.drain(..) {
            buf.put_slice(&wire.head);
            if wire.payload.len() < COPY_PAYLOAD_BELOW {
                buf.put_slice(&wire.payload);
            } else {
                writer.write_all(&buf).await?;
                buf.clear();
                writer.write_all(&wire.payload).await?;
            }
        }
        if !buf.is_empty() {
            writer.write_all(&buf).await?;
            buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::vocab::Utf8Bytes;

    fn event(sequence: u64, payload: &'static [u8]) -> Event {
        Event {
            publisher_id: 1,
            sequence,
            published_at: UNIX_EPOCH,
            topic: Utf8Bytes::from("kv"),
            payload: Bytes::from_static(payload),
        }
    }

    fn sequences(outbox: &Outbox) -> Vec<u64> {
        let mut batch = Vec::new();
        let mut out = Vec::new();
        loop {
            outbox.take(&mut batch);
            if batch.is_empty() {
                return out;
            }
            for wire in batch.drain(..) {
                // The envelope's sequence sits at offset 16 of frame 2.
                let subject_end = 2 + usize::from(wire.head[1]);
                let envelope = &wire.head[subject_end + 2..];
                out.push(u64::from_le_bytes(envelope[16..24].try_into().unwrap()));
            }
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_events_and_counts_them() {
        let outbox = Outbox::new("127.0.0.1:1".parse().unwrap());
        outbox.subscribe(b"pw.ev.", true).unwrap();
        let subject = b"pw.ev.a.b.~.kv";
        for sequence in 0..ZMQ_PEER_QUEUE_MESSAGES as u64 + 5 {
            outbox.offer(subject, || Wire::encode(subject, &event(sequence, b"x")));
        }
        assert_eq!(lock(&outbox.state).dropped, 5);
        let got = sequences(&outbox);
        assert_eq!(got.len(), ZMQ_PEER_QUEUE_MESSAGES);
        assert_eq!(got[0], 5, "the oldest went first");
        assert_eq!(lock(&outbox.state).bytes, 0);
        assert!(lock(&outbox.state).queue.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn the_byte_bound_holds_for_large_events_but_one_always_fits() {
        static BIG: [u8; ZMQ_PEER_QUEUE_BYTES / 4] = [0; ZMQ_PEER_QUEUE_BYTES / 4];
        static HUGE: [u8; ZMQ_PEER_QUEUE_BYTES + 1] = [0; ZMQ_PEER_QUEUE_BYTES + 1];
        let outbox = Outbox::new("127.0.0.1:1".parse().unwrap());
        outbox.subscribe(b"s", true).unwrap();
        for sequence in 0..10 {
            outbox.offer(b"s", || Wire::encode(b"s", &event(sequence, &BIG)));
            assert!(lock(&outbox.state).bytes <= ZMQ_PEER_QUEUE_BYTES);
        }
        assert_eq!(sequences(&outbox), [7, 8, 9]);
        outbox.offer(b"s", || Wire::encode(b"s", &event(10, &HUGE)));
        assert_eq!(sequences(&outbox), [10]);
    }

    #[test]
    fn only_matching_subscriptions_are_queued_and_cancel_removes_one() {
        let outbox = Outbox::new("127.0.0.1:1".parse().unwrap());
        let mut encoded = 0;
        outbox.offer(b"pw.ev.x", || {
            encoded += 1;
            Wire::encode(b"pw.ev.x", &event(0, b""))
        });
        assert_eq!(
            encoded, 0,
            "nothing is encoded for a peer that did not subscribe"
        );
        outbox.subscribe(b"pw.ev.x", true).unwrap();
        outbox.subscribe(b"pw.ev.x", true).unwrap();
        outbox.subscribe(b"pw.ev.x", false).unwrap();
        outbox.offer(b"pw.ev.y", || Wire::encode(b"pw.ev.y", &event(1, b"")));
        outbox.offer(b"pw.ev.xy", || Wire::encode(b"pw.ev.xy", &event(2, b"")));
        assert_eq!(
            sequences(&outbox),
            [2],
            "prefix match, one subscription left"
        );
        outbox.subscribe(b"pw.ev.x", false).unwrap();
        outbox.offer(b"pw.ev.x", || Wire::encode(b"pw.ev.x", &event(3, b"")));
        assert_eq!(sequences(&outbox), Vec::<u64>::new());
        for i in 0..MAX_SUBSCRIPTIONS {
            outbox.subscribe(i.to_string().as_bytes(), true).unwrap();
        }
        assert!(outbox.subscribe(b"one more", true).is_err());
    }
}
