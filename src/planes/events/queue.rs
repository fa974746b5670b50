//! The bounded queue between a transport's receive side and one subscription.
//!
//! Transports deliver into it without waiting: when it is full the oldest event is
//! dropped (and counted), so a slow subscriber costs only itself. It also checks each
//! publisher's sequence numbers: a jump is a gap (events lost before they got here), a
//! repeat is a duplicate (dropped).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;

use super::Event;
use crate::sync::lock;

/// Messages a receive task takes without waiting, after one it had to await, before it
/// wakes the subscriber: bounds how long a steady stream defers the wake.
#[cfg(any(feature = "zmq", feature = "nats"))]
pub(crate) const DRAIN_BEFORE_WAKE: usize = 64;

/// Events one subscription holds before dropping its oldest (`DYN_EVENT_SUBSCRIBER_BUFFER`).
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 4096;

/// What happened to one subscription's events so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Events handed to the queue (duplicates excluded).
    pub received: u64,
    /// Events missing from publishers' sequences: lost on the way, not seen at all.
    pub gaps: u64,
    /// Events received but dropped because the queue was full.
    pub dropped: u64,
    /// Events whose sequence number was already seen, discarded.
    pub duplicates: u64,
    /// Messages on the subscription's subject that were not event envelopes, skipped.
    pub malformed: u64,
}

pub(crate) struct SubscriberQueue {
    state: Mutex<QueueState>,
    waker: AtomicWaker,
    capacity: usize,
    /// Names the subscription in log lines.
    label: String,
}

struct QueueState {
    events: VecDeque<Event>,
    /// Per publisher: the sequence number expected next. The latest publisher's entry
    /// lives in `last` instead, and is written back here when another one sends.
    next_sequence: HashMap<u64, u64>,
    last: Option<(u64, u64)>,
    stats: SubscriptionStats,
    closed: bool,
}

impl SubscriberQueue {
    pub(crate) fn new(capacity: usize, label: String) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            state: Mutex::new(QueueState {
                events: VecDeque::with_capacity(capacity.min(1024)),
                next_sequence: HashMap::new(),
                last: None,
                stats: SubscriptionStats::default(),
                closed: false,
            }),
            waker: AtomicWaker::new(),
            capacity,
            label,
        })
    }

    /// Queues `event` without ever waiting, and wakes the subscriber.
    pub(crate) fn deliver(&self, event: Event) {
        self.push(event);
        self.notify();
    }

    /// Queues `event` without waking the subscriber: a transport that receives a burst
    /// pushes it all, then calls [`notify`](Self::notify) once.
    pub(crate) fn push(&self, event: Event) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let stats = &mut state.stats;
        let publisher = event.publisher_id;
        let sequence = event.sequence;
        let expected = match state.last {
            // Most events come from the publisher the previous one came from.
            Some((last, next)) if last == publisher => Some(next),
            _ => state.next_sequence.get(&publisher).copied(),
        };
        match expected {
            // The first event seen from a publisher sets the baseline: joining late is
            // not a loss.
            None => {}
            Some(expected) if sequence == expected => {}
            Some(expected) if sequence > expected => {
                // Saturating: the sequence comes off the wire, and a peer's jump near
                // u64::MAX must not wrap the count (or panic in a debug build).
                stats.gaps = stats.gaps.saturating_add(sequence - expected);
                tracing::warn!(
                    subscription = %self.label,
                    publisher = %format_args!("{publisher:016x}"),
                    expected,
                    got = sequence,
                    gaps_total = stats.gaps,
                    "event gap: {} event(s) from this publisher never arrived",
                    sequence - expected
                );
            }
            Some(_) => {
                // An old sequence is a redelivery; the furthest point reached stays.
                stats.duplicates += 1;
                return;
            }
        }
        if let Some((last, last_next)) = state.last
            && last != publisher
        {
            // Only a change of publisher writes the map: a single busy publisher costs
            // no hashing.
            state.next_sequence.insert(last, last_next);
        }
        state.last = Some((publisher, sequence.wrapping_add(1)));
        stats.received += 1;
        if state.events.len() == self.capacity {
            state.events.pop_front();
            stats.dropped += 1;
            // A persistently slow subscriber would log on every event; powers of two
            // keep the log readable while still showing the count grow.
            if stats.dropped.is_power_of_two() {
                tracing::warn!(
                    subscription = %self.label,
                    dropped_total = stats.dropped,
                    capacity = self.capacity,
                    "subscriber queue full: dropped the oldest event"
                );
            }
        }
        state.events.push_back(event);
    }

    /// Counts a message from `source` that is not an event (`reason` says why) and skips
    /// it. A broken peer may send nothing else: logging at powers of two keeps the log
    /// readable while still showing the count grow.
    #[cfg(any(feature = "zmq", feature = "nats"))]
    pub(crate) fn reject(&self, source: &str, reason: &str) {
        let malformed = {
            let mut state = lock(&self.state);
            state.stats.malformed += 1;
            state.stats.malformed
        };
        if malformed.is_power_of_two() {
            tracing::warn!(
                subscription = %self.label,
                source,
                malformed_total = malformed,
                "skipping a message that is not an event: {reason}"
            );
        }
    }

    /// Wakes the subscriber if it is waiting.
    pub(crate) fn notify(&self) {
        self.waker.wake();
    }

    /// Ends the subscription's stream once it has drained what is queued.
    #[cfg_attr(
        not(any(feature = "zmq", feature = "nats")),
        allow(dead_code, reason = "only the network transports end subscriptions")
    )]
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.waker.wake();
    }

    fn stats(&self) -> SubscriptionStats {
        lock(&self.state).stats
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if let Some(event) = self.try_pop() {
            return event;
        }
        self.waker.register(cx.waker());
        // Re-check: a delivery between the first look and the registration would
        // otherwise go unnoticed.
        self.try_pop().unwrap_or(Poll::Pending)
    }

    fn try_pop(&self) -> Option<Poll<Option<Event>>> {
        let mut state = lock(&self.state);
        match state.events.pop_front() {
            Some(event) => Some(Poll::Ready(Some(event))),
            None if state.closed => Some(Poll::Ready(None)),
            None => None,
        }
    }
}

/// What keeps a subscription's transport side alive (receive tasks, sockets); dropped
/// with the [`Subscription`].
pub(crate) type SubscriptionGuard = Box<dyn std::any::Any + Send + Sync>;

/// The events of one topic, in the order each publisher sent them. Dropping it
/// unsubscribes.
pub struct Subscription {
    queue: Arc<SubscriberQueue>,
    _guard: SubscriptionGuard,
}

impl Subscription {
    pub(crate) fn new(queue: Arc<SubscriberQueue>, guard: SubscriptionGuard) -> Self {
        Self {
            queue,
            _guard: guard,
        }
    }

    /// Counts of received, missing, dropped and duplicate events.
    pub fn stats(&self) -> SubscriptionStats {
        self.queue.stats()
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.queue.poll_next(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.queue.label)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;
    use crate::vocab::Utf8Bytes;

    fn event(publisher_id: u64, sequence: u64) -> Event {
        Event {
            publisher_id,
            sequence,
            published_at: SystemTime::now(),
            topic: Utf8Bytes::from("t"),
            payload: Bytes::new(),
        }
    }

    fn drain(sub: &mut Subscription) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(Some(e)) = sub.next().now_or_never() {
            out.push((e.publisher_id, e.sequence));
        }
        out
    }

    use futures::FutureExt;

    #[tokio::test]
    async fn full_queue_drops_the_oldest_and_counts() {
        let queue = SubscriberQueue::new(3, "t".into());
        let mut sub = Subscription::new(Arc::clone(&queue), Box::new(()));
        for seq in 0..5 {
            queue.deliver(event(1, seq));
        }
        assert_eq!(drain(&mut sub), [(1, 2), (1, 3), (1, 4)]);
        let stats = sub.stats();
        assert_eq!((stats.received, stats.dropped, stats.gaps), (5, 2, 0));
    }

    #[tokio::test]
    async fn gaps_and_duplicates_are_counted_per_publisher() {
        let queue = SubscriberQueue::new(100, "t".into());
        let mut sub = Subscription::new(Arc::clone(&queue), Box::new(()));
        // Publisher 1 is joined late (seq 7 first): not a gap. Then 8 is lost.
        for (publisher, seq) in [(1, 7), (2, 0), (1, 9), (2, 1), (1, 9), (1, 8), (1, 10)] {
            queue.deliver(event(publisher, seq));
        }
        assert_eq!(drain(&mut sub), [(1, 7), (2, 0), (1, 9), (2, 1), (1, 10)]);
        let stats = sub.stats();
        assert_eq!((stats.received, stats.gaps, stats.duplicates), (5, 1, 2));
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_and_closing_ends_the_stream() {
        let queue = SubscriberQueue::new(4, "t".into());
        let mut sub = Subscription::new(Arc::clone(&queue), Box::new(()));
        let deliver = Arc::clone(&queue);
        let waiter = tokio::spawn(async move { sub.next().await.map(|e| e.sequence) });
        tokio::task::yield_now().await;
        deliver.deliver(event(1, 0));
        assert_eq!(waiter.await.unwrap(), Some(0));
        queue.close();
        let mut sub = Subscription::new(queue, Box::new(()));
        assert!(sub.next().await.is_none());
    }
}
