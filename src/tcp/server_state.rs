//! What the TCP server shares with its connections: the endpoint table, the limits, and
//! the phase (serving, draining, aborting) each connection is told.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::planes::request::{Endpoint, EndpointCache, EndpointTable};
use crate::sync::lock;

/// What the server asks of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    Serving = 0,
    /// Send GOAWAY, refuse new requests, let open streams finish.
    Draining = 1,
    /// The drain timeout passed: end open streams with `ShuttingDown`.
    Aborting = 2,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Serving,
            1 => Self::Draining,
            _ => Self::Aborting,
        }
    }
}

/// One connection's view of the server's phase. Its loop polls this on every turn, so
/// it costs a few atomic operations, not the lock of a token every connection shares.
#[derive(Default)]
pub(super) struct PhaseSignal {
    phase: AtomicU8,
    waker: AtomicWaker,
}

impl PhaseSignal {
    fn raise(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Ready with the phase once it is past `seen`.
    pub(super) fn poll_past(&self, seen: Phase, cx: &mut Context<'_>) -> Poll<Phase> {
        self.waker.register(cx.waker());
        let phase = Phase::from_u8(self.phase.load(Ordering::SeqCst));
        if phase > seen {
            Poll::Ready(phase)
        } else {
            Poll::Pending
        }
    }
}

/// An open connection, as the server sees it.
pub(super) struct ConnectionEntry {
    /// Read-buffer memory it holds.
    held: Arc<AtomicUsize>,
    signal: Arc<PhaseSignal>,
}

/// When a connection is reaped (`DYN_TCP_FRAME_TIMEOUT`, `DYN_TCP_IDLE_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionTimeouts {
    /// A frame must arrive whole within this of its first byte; queued output must move
    /// at least this often.
    pub(super) frame: Duration,
    /// A connection with nothing open and no traffic for this long is closed.
    pub(super) idle: Duration,
}

/// State shared by the accept loop, every connection and every request task.
pub(super) struct Shared {
    pub(super) endpoints: EndpointTable,
    pub(super) max_concurrent_requests: usize,
    pub(super) max_frame_len: usize,
    pub(super) shrink_threshold: usize,
    pub(super) timeouts: ConnectionTimeouts,
    /// Fired by `shutdown`: stop accepting.
    pub(super) shutdown: CancellationToken,
    /// The phase every connection is told (`raise`).
    phase: AtomicU8,
    pub(super) tracker: TaskTracker,
    /// The open connections, by connection number.
    connections: Mutex<HashMap<u64, ConnectionEntry>>,
}

impl Shared {
    pub(super) fn new(
        max_concurrent_requests: usize,
        max_frame_len: usize,
        shrink_threshold: usize,
        timeouts: ConnectionTimeouts,
    ) -> Self {
        Self {
            endpoints: EndpointTable::new(max_concurrent_requests),
            max_concurrent_requests,
            max_frame_len,
            shrink_threshold,
            timeouts,
            shutdown: CancellationToken::new(),
            phase: AtomicU8::new(Phase::Serving as u8),
            tracker: TaskTracker::new(),
            connections: Mutex::default(),
        }
    }

    /// Tells every connection, open now or registered later, that the server is in
    /// `phase`.
    pub(super) fn raise(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::SeqCst);
        for entry in lock(&self.connections).values() {
            entry.signal.raise(phase);
        }
    }

    /// Adds connection `id`, holding `held` bytes of read buffer; its phase signal
    /// starts at the server's phase. Under the map's lock, as `raise` iterates it: a
    /// connection is either seen by `raise` or sees the phase `raise` set.
    pub(super) fn register(&self, id: u64, held: Arc<AtomicUsize>) -> Arc<PhaseSignal> {
        let mut connections = lock(&self.connections);
        let signal = Arc::new(PhaseSignal::default());
        signal.raise(Phase::from_u8(self.phase.load(Ordering::SeqCst)));
        let entry = ConnectionEntry {
            held,
            signal: Arc::clone(&signal),
        };
        connections.insert(id, entry);
        signal
    }

    pub(super) fn deregister(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// Read-buffer memory each open connection holds.
    pub(super) fn buffer_capacities(&self) -> Vec<usize> {
        lock(&self.connections)
            .values()
            .map(|c| c.held.load(Ordering::Relaxed))
            .collect()
    }

    /// The endpoint serving `path` (see [`EndpointTable::lookup_cached`]).
    pub(super) fn endpoint(&self, path: &str, cache: &mut EndpointCache) -> Option<Arc<Endpoint>> {
        self.endpoints.lookup_cached(path, cache)
    }
}
