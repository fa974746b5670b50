//! The event cells: 64 B events, publish→receive latency (one event in flight) and a
//! publish burst's throughput, for every event transport this build has, each beside
//! the bare crate carrying the same bytes in the same run (`zeromq` for zmq,
//! `async-nats` for nats). The bare run's figures are the adapter's floor, as raw TCP is
//! the request plane's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::BenchError;
use super::latency::Percentiles;
use planewire::nats::{NatsConfig, NatsLink};
use planewire::planes::discovery::{Discovery, MemoryStore};
use planewire::planes::events::{
    EventPlane, EventPlaneConfig, EventPlaneKind, EventPublisher, EventScope, Subscription,
};

pub const EVENT_PAYLOAD: usize = 64;
const TOPIC: &str = "bench";

/// How long each latency run lasts and how many events a burst sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventTiming {
    pub warmup: Duration,
    pub measure: Duration,
    pub burst: u64,
}

pub(crate) fn timing(quick: bool) -> EventTiming {
    if quick {
        EventTiming {
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(400),
            burst: 20_000,
        }
    } else {
        EventTiming {
            warmup: Duration::from_millis(300),
            measure: Duration::from_secs(2),
            burst: 200_000,
        }
    }
}

/// One event system's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EventResult {
    /// Always `event`: tells these objects from the request-plane cells in the JSON.
    pub cell: &'static str,
    /// `planewire inproc`, `planewire zmq`, `bare zeromq`, `planewire nats`, `bare async-nats`.
    pub system: String,
    pub payload: usize,
    /// Publish → receive, one event in flight, in microseconds.
    pub latency_us: Percentiles,
    /// Events per second the publisher pushed during the burst.
    pub publish_rps: f64,
    /// Events per second that reached the subscriber, first publish to last receipt.
    pub delivered_rps: f64,
    /// Share of the burst that arrived (PUB sockets and full queues drop by design).
    pub delivered_fraction: f64,
    /// This system's figures over the bare crate's (`None` for bare runs and inproc).
    pub versus_bare: Option<VersusBare>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersusBare {
    /// Latency p50 over the bare p50: 1.10 is 10 % overhead.
    pub p50: f64,
    pub p99: f64,
    /// Delivered events/s over the bare crate's: 0.90 is 10 % overhead. (The publish
    /// rate alone is not compared: a bare PUB socket's send only queues, and drops what
    /// its queue cannot hold.)
    pub delivered_rps: f64,
}

/// Runs every event cell this build supports; `nats` adds the NATS ones.
pub(crate) async fn run(
    timing: EventTiming,
    nats: Option<&str>,
) -> Result<Vec<EventResult>, BenchError> {
    let payload = Bytes::from(vec![b'e'; EVENT_PAYLOAD]);
    let mut results = Vec::new();
    let config = EventPlaneConfig {
        kind: EventPlaneKind::Inproc,
        subscriber_buffer: timing.burst as usize,
        ..EventPlaneConfig::default()
    };
    // Only the NATS transport uses a link; the others are given an unconnected one.
    let no_nats = NatsLink::new(NatsConfig::default());
    let inproc = connect(&config, &no_nats).await?;
    results.push(measure("planewire inproc", pair(&inproc).await?, &payload, timing).await?);

    #[cfg(feature = "zmq")]
    {
        let config = EventPlaneConfig {
            kind: EventPlaneKind::Zmq,
            host: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            subscriber_buffer: timing.burst as usize,
            ..EventPlaneConfig::default()
        };
        let plane = connect(&config, &no_nats).await?;
        let adapter = measure("planewire zmq", pair(&plane).await?, &payload, timing).await?;
        let bare = measure("bare zeromq", bare::zmq().await?, &payload, timing).await?;
        results.push(adapter.versus(&bare));
        results.push(bare);
    }

    match nats {
        #[cfg(feature = "nats")]
        Some(url) => {
            let config = EventPlaneConfig {
                kind: EventPlaneKind::Nats,
                subscriber_buffer: timing.burst as usize,
                ..EventPlaneConfig::default()
            };
            let link = NatsLink::new(NatsConfig {
                url: url.to_owned(),
                ..NatsConfig::default()
            });
            let plane = connect(&config, &link).await?;
            let adapter = measure("planewire nats", pair(&plane).await?, &payload, timing).await?;
            let bare = measure("bare async-nats", bare::nats(url).await?, &payload, timing).await?;
            results.push(adapter.versus(&bare));
            results.push(bare);
        }
        #[cfg(not(feature = "nats"))]
        Some(_) => {
            return Err(BenchError::Worker(
                "--nats needs a build with the `nats` cargo feature (--features nats)".into(),
            ));
        }
        None => {}
    }
    Ok(results)
}

impl EventResult {
    #[cfg(any(feature = "zmq", feature = "nats"))]
    fn versus(mut self, bare: &EventResult) -> Self {
        self.versus_bare = Some(VersusBare {
            p50: self.latency_us.p50 / bare.latency_us.p50,
            p99: self.latency_us.p99 / bare.latency_us.p99,
            delivered_rps: self.delivered_rps / bare.delivered_rps,
        });
        self
    }
}

async fn connect(config: &EventPlaneConfig, nats: &NatsLink) -> Result<EventPlane, BenchError> {
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), Duration::from_secs(10));
    EventPlane::connect(config, &discovery, nats)
        .await
        .map_err(|e| BenchError::Worker(format!("event plane: {e}")))
}

async fn pair(plane: &EventPlane) -> Result<(Sender, Receiver), BenchError> {
    let scope = EventScope::new("bench", "events").expect("constant, valid scope");
    let publisher = plane.publisher(scope.clone()).await.map_err(event_error)?;
    let subscription = plane
        .subscriber(scope)
        .subscribe(TOPIC)
        .await
        .map_err(event_error)?;
    Ok((
        Sender::Planewire(publisher),
        Receiver::Planewire(subscription),
    ))
}

fn event_error(err: planewire::planes::events::EventError) -> BenchError {
    BenchError::Worker(format!("event plane: {err}"))
}

/// The sending half of a system under test (the bare ones boxed: they hold whole
/// clients, the planewire one a handle).
enum Sender {
    Planewire(EventPublisher),
    #[cfg(feature = "zmq")]
    Zmq(Box<bare::ZmqSender>),
    #[cfg(feature = "nats")]
    Nats(Box<bare::NatsSender>),
}

/// The receiving half.
enum Receiver {
    Planewire(Subscription),
    #[cfg(feature = "zmq")]
    Zmq(zeromq::SubSocket),
    #[cfg(feature = "nats")]
    Nats(async_nats::Subscriber),
}

impl Sender {
    async fn send(&mut self, payload: &Bytes) -> Result<(), BenchError> {
        match self {
            Self::Planewire(p) => p.publish(TOPIC, payload.clone()).await.map_err(event_error),
            #[cfg(feature = "zmq")]
            Self::Zmq(s) => s.send(payload).await,
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.send(payload).await,
        }
    }
}

impl Receiver {
    /// Waits for the next event; a subscription that ended is an error.
    async fn recv(&mut self) -> Result<(), BenchError> {
        let ended = || BenchError::Worker("the event subscription ended".into());
        match self {
            Self::Planewire(s) => s.next().await.map(drop).ok_or_else(ended),
            #[cfg(feature = "zmq")]
            Self::Zmq(s) => zeromq::SocketRecv::recv(s)
                .await
                .map(drop)
                .map_err(|e| BenchError::Worker(format!("zeromq receive: {e}"))),
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.next().await.map(drop).ok_or_else(ended),
        }
    }
}

async fn measure(
    system: &str,
    (mut sender, mut receiver): (Sender, Receiver),
    payload: &Bytes,
    timing: EventTiming,
) -> Result<EventResult, BenchError> {
    settle(&mut sender, &mut receiver, payload).await?;
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds");
    for (window, record) in [(timing.warmup, false), (timing.measure, true)] {
        let end = Instant::now() + window;
        while Instant::now() < end {
            let start = Instant::now();
            sender.send(payload).await?;
            receiver.recv().await?;
            if record {
                let micros = start.elapsed().as_secs_f64() * 1e6;
                histogram.saturating_record(micros.round().max(1.0) as u64);
            }
        }
    }
    let (publish_rps, delivered_rps, delivered) =
        burst(sender, receiver, payload, timing.burst).await?;
    let pct = |q: f64| histogram.value_at_quantile(q) as f64;
    Ok(EventResult {
        cell: "event",
        system: system.to_owned(),
        payload: payload.len(),
        latency_us: Percentiles {
            p50: pct(0.5),
            p90: pct(0.9),
            p99: pct(0.99),
            p99_9: pct(0.999),
            max: histogram.max() as f64,
        },
        publish_rps,
        delivered_rps,
        delivered_fraction: delivered as f64 / timing.burst as f64,
        versus_bare: None,
    })
}

/// Sends until one event comes back, then drains: after this, the subscriber is
/// connected (no slow-joiner loss) and nothing stale is queued.
async fn settle(
    sender: &mut Sender,
    receiver: &mut Receiver,
    payload: &Bytes,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sender.send(payload).await?;
        if let Ok(received) = tokio::time::timeout(Duration::from_millis(50), receiver.recv()).await
        {
            received?;
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Worker(
                "the event subscriber did not connect within 10 s".into(),
            ));
        }
    }
    while let Ok(received) = tokio::time::timeout(Duration::from_millis(100), receiver.recv()).await
    {
        received?;
    }
    Ok(())
}

/// Publishes `count` events back to back while the receiver counts them on its own
/// task. Returns (publish rate, delivery rate, delivered count).
async fn burst(
    mut sender: Sender,
    mut receiver: Receiver,
    payload: &Bytes,
    count: u64,
) -> Result<(f64, f64, u64), BenchError> {
    let start = Instant::now();
    let counter = tokio::spawn(async move {
        let mut received = 0u64;
        let mut last = Instant::now();
        // Lost events never come: stop once the line has been quiet for a while.
        while received < count {
            match tokio::time::timeout(Duration::from_millis(500), receiver.recv()).await {
                Ok(Ok(())) => {
                    received += 1;
                    last = Instant::now();
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => break,
            }
        }
        Ok((received, last))
    });
    for _ in 0..count {
        sender.send(payload).await?;
    }
    let published = start.elapsed();
    let (received, last) = counter
        .await
        .map_err(|e| BenchError::Worker(e.to_string()))??;
    let delivered_in = last.saturating_duration_since(start).max(published);
    Ok((
        count as f64 / published.as_secs_f64(),
        received as f64 / delivered_in.as_secs_f64(),
        received,
    ))
}

/// The bare crates, carrying the bytes planewire would: the same frames or body, built
/// once.
mod bare {
    #[cfg(any(feature = "zmq", feature = "nats"))]
    use bytes::Bytes;

    #[cfg(any(feature = "zmq", feature = "nats"))]
    use super::{BenchError, Receiver, Sender, TOPIC};

    #[cfg(any(feature = "zmq", feature = "nats"))]
    fn envelope(payload_len: usize) -> (String, planewire::planes::events::Event) {
        let scope = planewire::planes::events::EventScope::new("bench", "bare").expect("valid");
        let event = planewire::planes::events::Event {
            publisher_id: 1,
            sequence: 0,
            published_at: std::time::SystemTime::now(),
            topic: planewire::vocab::Utf8Bytes::from(TOPIC),
            payload: Bytes::from(vec![b'e'; payload_len]),
        };
        (scope.subject(TOPIC), event)
    }

    #[cfg(feature = "zmq")]
    pub(super) struct ZmqSender {
        socket: zeromq::PubSocket,
        topic: Bytes,
        header: Bytes,
    }

    #[cfg(feature = "zmq")]
    impl ZmqSender {
        pub(super) async fn send(&mut self, payload: &Bytes) -> Result<(), BenchError> {
            let frames = vec![self.topic.clone(), self.header.clone(), payload.clone()];
            let message = zeromq::ZmqMessage::try_from(frames).expect("three frames");
            zeromq::SocketSend::send(&mut self.socket, message)
                .await
                .map_err(|e| BenchError::Worker(format!("zeromq send: {e}")))
        }
    }

    #[cfg(feature = "zmq")]
    pub(super) async fn zmq() -> Result<(Sender, Receiver), BenchError> {
        use zeromq::Socket;
        let fail = |e: zeromq::ZmqError| BenchError::Worker(format!("bare zeromq: {e}"));
        let (subject, event) = envelope(super::EVENT_PAYLOAD);
        let mut socket = zeromq::PubSocket::new();
        let endpoint = socket.bind("tcp://127.0.0.1:0").await.map_err(fail)?;
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&endpoint.to_string()).await.map_err(fail)?;
        sub.subscribe(&subject).await.map_err(fail)?;
        let sender = ZmqSender {
            socket,
            topic: Bytes::from(subject),
            header: event.encode_header(),
        };
        Ok((Sender::Zmq(Box::new(sender)), Receiver::Zmq(sub)))
    }

    #[cfg(feature = "nats")]
    pub(super) struct NatsSender {
        client: async_nats::Client,
        subject: async_nats::Subject,
        body: Bytes,
    }

    #[cfg(feature = "nats")]
    impl NatsSender {
        pub(super) async fn send(&mut self, _payload: &Bytes) -> Result<(), BenchError> {
            self.client
                .publish(self.subject.clone(), self.body.clone())
                .await
                .map_err(|e| BenchError::Worker(format!("async-nats publish: {e}")))
        }
    }

    #[cfg(feature = "nats")]
    pub(super) async fn nats(url: &str) -> Result<(Sender, Receiver), BenchError> {
        let fail = |e: String| BenchError::Worker(format!("bare async-nats at {url}: {e}"));
        let (subject, event) = envelope(super::EVENT_PAYLOAD);
        let client = async_nats::connect(url)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let sender = NatsSender {
            client,
            subject: subject.into(),
            body: event.encode(),
        };
        Ok((Sender::Nats(Box::new(sender)), Receiver::Nats(subscriber)))
    }
}

/// The event table: one row per system.
pub(crate) fn table(results: &[EventResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>9} {:>12} {:>12} {:>9} {:>30}",
        "event system",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "publish/s",
        "delivered/s",
        "arrived",
        "vs bare p50 / p99 / delivered"
    );
    for r in results {
        let versus = r.versus_bare.as_ref().map_or_else(
            || "-".to_owned(),
            |v| format!("{:.2}× / {:.2}× / {:.2}×", v.p50, v.p99, v.delivered_rps),
        );
        let _ = writeln!(
            out,
            "{:<18} {:>9.1} {:>9.1} {:>9.1} {:>12.0} {:>12.0} {:>8.1}% {:>30}",
            r.system,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p99_9,
            r.publish_rps,
            r.delivered_rps,
            r.delivered_fraction * 100.0,
            versus
        );
    }
    out
}
