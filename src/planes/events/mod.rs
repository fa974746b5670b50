//! The event plane: scoped pub/sub of near-real-time events (KV-cache updates, load
//! metrics) between workers and routers.
//!
//! [`EventPlane::connect`] picks the transport `DYN_EVENT_PLANE` names:
//! - `zmq` (feature `zmq`, on by default): no broker; each publisher binds a PUB socket and
//!   registers it in discovery under [`EventScope::channels_prefix`], subscribers watch
//!   that prefix and connect to every live publisher;
//! - `nats` (feature `nats`): core NATS subjects per scope, optionally JetStream;
//! - `inproc`: within one process;
//! - `none`: publishing is a no-op, subscribing an error.
//!
//! Every event carries an [`Event`] envelope (publisher id, per-publisher-and-topic
//! sequence number, publish time, topic). Each [`Subscription`] has a bounded queue
//! ([`DEFAULT_SUBSCRIBER_BUFFER`]): when it is full the oldest event is dropped and
//! counted, so a slow subscriber never blocks a publisher and memory stays bounded;
//! holes in a publisher's sequence are counted as gaps and logged
//! ([`SubscriptionStats`]).

mod config;
mod envelope;
mod error;
mod inproc;
#[cfg(feature = "nats")]
mod nats;
mod queue;
mod scope;
#[cfg(feature = "zmq")]
mod zmq;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use config::{
    ENV_EVENT_DURABLE, ENV_EVENT_PLANE, ENV_EVENT_PLANE_HOST, ENV_EVENT_SUBSCRIBER_BUFFER,
    EventPlaneConfig, EventPlaneKind,
};
pub use envelope::{ENVELOPE_HEADER_LEN, EVENT_MAGIC, EVENT_VERSION, Event, MAX_TOPIC_LEN};
pub use error::EventError;
pub use queue::{DEFAULT_SUBSCRIBER_BUFFER, Subscription, SubscriptionStats};
pub use scope::{EVENT_CHANNELS_PREFIX, EventScope, SUBJECT_PREFIX};
#[cfg(feature = "zmq")]
pub use zmq::{ZMQ_MAX_MESSAGE, ZMQ_PEER_QUEUE_BYTES, ZMQ_PEER_QUEUE_MESSAGES, ZMQ_RECONNECT_MAX};

use crate::nats::NatsLink;
use crate::planes::discovery::Discovery;
use crate::vocab::Utf8Bytes;
use queue::{SubscriberQueue, SubscriptionGuard};

/// One transport's publishing and subscribing; [`EventPlane`] adds the envelope,
/// sequencing and the subscriber queue around it.
trait Transport: Send + Sync + 'static {
    fn kind(&self) -> EventPlaneKind;

    /// Whatever a new publisher needs to send (a socket, a registration).
    fn sink<'a>(
        &'a self,
        scope: &'a EventScope,
        publisher_id: u64,
    ) -> BoxFuture<'a, Result<Box<dyn EventSink>, EventError>>;

    /// Starts delivering `scope`'s `topic` into `queue` until the guard is dropped.
    fn subscribe<'a>(
        &'a self,
        scope: &'a EventScope,
        topic: &'a str,
        queue: Arc<SubscriberQueue>,
    ) -> BoxFuture<'a, Result<SubscriptionGuard, EventError>>;

    /// Like `subscribe`, but the subscription `name` resumes where it left off. Only a
    /// transport that stores events has it; the others refuse, naming themselves.
    fn subscribe_durable<'a>(
        &'a self,
        _scope: &'a EventScope,
        _topic: &'a str,
        _name: &'a str,
        _queue: Arc<SubscriberQueue>,
    ) -> BoxFuture<'a, Result<SubscriptionGuard, EventError>> {
        let plane = self.kind().as_str();
        futures::FutureExt::boxed(futures::future::ready(Err(
            EventError::DurableUnsupported { plane },
        )))
    }
}

/// Sends one publisher's events, in the order given.
trait EventSink: Send + 'static {
    /// `subject` is [`EventScope::subject`] of the event's topic, built once per topic.
    fn send<'a>(
        &'a mut self,
        subject: &'a Utf8Bytes,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), EventError>>;
}

/// The event plane of a process. Cheap to clone; clones share the transport (and, for
/// `inproc`, the bus).
#[derive(Clone)]
pub struct EventPlane {
    /// `None` when disabled.
    transport: Option<Arc<dyn Transport>>,
    subscriber_buffer: usize,
}

impl EventPlane {
    /// The transport `config` selects. `discovery` is where ZMQ publishers register and
    /// subscribers find them; `nats` is the connection the NATS transport uses (made now
    /// if no other plane has made it: the runtime shares it with the NATS request plane).
    /// Each transport uses only what it needs.
    pub async fn connect(
        config: &EventPlaneConfig,
        discovery: &Discovery,
        nats: &NatsLink,
    ) -> Result<Self, EventError> {
        let link = nats;
        let transport: Option<Arc<dyn Transport>> = match config.kind {
            EventPlaneKind::None => None,
            EventPlaneKind::Inproc => Some(Arc::new(inproc::Inproc::default())),
            #[cfg(feature = "zmq")]
            EventPlaneKind::Zmq => Some(Arc::new(zmq::Zmq::new(discovery.clone(), config.host))),
            #[cfg(feature = "nats")]
            EventPlaneKind::Nats => Some(Arc::new(nats::Nats::connect(config, link).await?)),
            #[allow(unreachable_patterns)]
            other => return Err(config::not_built(other.as_str()).into()),
        };
        let _ = (discovery, link);
        Ok(Self {
            transport,
            subscriber_buffer: config.subscriber_buffer,
        })
    }

    /// An in-process plane with the default subscriber buffer.
    pub fn inproc() -> Self {
        Self {
            transport: Some(Arc::new(inproc::Inproc::default())),
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
        }
    }

    /// The plane `DYN_EVENT_PLANE=none` gives.
    pub fn disabled() -> Self {
        Self {
            transport: None,
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
        }
    }

    /// Sets how many events each later subscription holds before dropping its oldest.
    pub fn with_subscriber_buffer(mut self, events: usize) -> Self {
        self.subscriber_buffer = events.max(1);
        self
    }

    pub fn kind(&self) -> EventPlaneKind {
        self.transport
            .as_ref()
            .map_or(EventPlaneKind::None, |t| t.kind())
    }

    /// A new publisher in `scope`, with a fresh publisher id (on `zmq`: a bound socket,
    /// registered in discovery until the publisher is dropped).
    pub async fn publisher(&self, scope: EventScope) -> Result<EventPublisher, EventError> {
        let Some(transport) = &self.transport else {
            return Ok(EventPublisher { inner: None });
        };
        let id = fastrand::u64(..);
        let sink = transport.sink(&scope, id).await?;
        Ok(EventPublisher {
            inner: Some(Arc::new(PublisherInner {
                id,
                scope,
                state: tokio::sync::Mutex::new(PublisherState {
                    sink,
                    topics: HashMap::new(),
                }),
            })),
        })
    }

    /// Subscriptions to topics of `scope`.
    pub fn subscriber(&self, scope: EventScope) -> EventSubscriber {
        EventSubscriber {
            plane: self.clone(),
            scope,
        }
    }
}

impl std::fmt::Debug for EventPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPlane")
            .field("kind", &self.kind())
            .field("subscriber_buffer", &self.subscriber_buffer)
            .finish()
    }
}

/// Publishes events in one scope. Clones share the publisher id and sequences.
#[derive(Clone)]
pub struct EventPublisher {
    /// `None` on a disabled plane.
    inner: Option<Arc<PublisherInner>>,
}

struct PublisherInner {
    id: u64,
    scope: EventScope,
    /// Held across the send so that sequence order is wire order.
    state: tokio::sync::Mutex<PublisherState>,
}

struct PublisherState {
    sink: Box<dyn EventSink>,
    topics: HashMap<String, TopicSlot>,
}

/// A topic this publisher has used: its names, built once, and its next sequence number.
struct TopicSlot {
    topic: Utf8Bytes,
    subject: Utf8Bytes,
    next: u64,
}

impl EventPublisher {
    /// Sends `payload` on `topic`. It waits only for the local transport (a socket
    /// queue, the NATS client's buffer), never for subscribers. On a disabled plane it
    /// does nothing. A failed send uses up no sequence number, so it shows as no gap.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), EventError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut state = inner.state.lock().await;
        let PublisherState { sink, topics } = &mut *state;
        let slot = match topics.get_mut(topic) {
            Some(slot) => slot,
            None => {
                scope::check_topic(topic)?;
                topics.entry(topic.to_owned()).or_insert(TopicSlot {
                    topic: Utf8Bytes::from(topic.to_owned()),
                    subject: Utf8Bytes::from(inner.scope.subject(topic)),
                    next: 0,
                })
            }
        };
        let event = Event {
            publisher_id: inner.id,
            sequence: slot.next,
            published_at: SystemTime::now(),
            topic: slot.topic.clone(),
            payload,
        };
        sink.send(&slot.subject, &event).await?;
        slot.next += 1;
        Ok(())
    }

    /// This publisher's id (0 on a disabled plane).
    pub fn id(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.id)
    }
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => f
                .debug_struct("EventPublisher")
                .field("id", &format_args!("{:016x}", inner.id))
                .field("scope", &inner.scope)
                .finish(),
            None => f.write_str("EventPublisher(disabled)"),
        }
    }
}

/// Subscribes to topics of one scope.
#[derive(Clone, Debug)]
pub struct EventSubscriber {
    plane: EventPlane,
    scope: EventScope,
}

impl EventSubscriber {
    /// The events published on `topic` in this scope from now on.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, EventError> {
        self.start(topic, None).await
    }

    /// Like [`subscribe`](Self::subscribe), but `name` keeps this subscription's place
    /// across restarts: a subscriber that comes back under the same name first gets what
    /// was published while it was away. Needs the `nats` plane with
    /// `DYN_EVENT_PLANE_DURABLE=true` (JetStream).
    pub async fn subscribe_durable(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Subscription, EventError> {
        self.start(topic, Some(name)).await
    }

    async fn start(&self, topic: &str, durable: Option<&str>) -> Result<Subscription, EventError> {
        let Some(transport) = &self.plane.transport else {
            return Err(EventError::Disabled);
        };
        scope::check_topic(topic)?;
        let label = format!("{}:{topic}", self.scope);
        let queue = SubscriberQueue::new(self.plane.subscriber_buffer, label);
        let scope = &self.scope;
        let guard = match durable {
            None => {
                transport
                    .subscribe(scope, topic, Arc::clone(&queue))
                    .await?
            }
            Some(name) => {
                let queue = Arc::clone(&queue);
                transport
                    .subscribe_durable(scope, topic, name, queue)
                    .await?
            }
        };
        Ok(Subscription::new(queue, guard))
    }

    pub fn scope(&self) -> &EventScope {
        &self.scope
    }
}
