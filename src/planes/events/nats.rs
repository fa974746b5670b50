//! `DYN_EVENT_PLANE=nats`: each topic is a core NATS subject ([`EventScope::subject`]);
//! the message body is the whole envelope ([`Event::encode`]).
//!
//! With `DYN_EVENT_PLANE_DURABLE=true` every scope also gets a JetStream stream
//! ([`EventScope::stream_name`], capturing [`EventScope::subject_wildcard`]), created by
//! the first publisher or durable subscriber that needs it. Publishing stays a core
//! publish, which the stream captures; a durable subscription is a durable pull consumer
//! on that stream, filtered to its topic's subject and named after the subscription.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::task::AbortOnDropHandle;

use super::config::EventPlaneConfig;
use super::envelope::ENVELOPE_HEADER_LEN;
use super::queue::{DRAIN_BEFORE_WAKE, SubscriberQueue, SubscriptionGuard};
use super::{Event, EventError, EventPlaneKind, EventScope, EventSink, Transport};
use crate::nats::{ConnectError, NatsLink};
use crate::vocab::{Utf8Bytes, escape_token};

/// How long a durable scope's stream keeps events. It bounds the server's disk use; a
/// durable subscriber away for longer misses the oldest events (and counts them as gaps
/// once it is back).
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

pub(super) struct Nats {
    client: Client,
    /// `Some` in durable mode.
    jetstream: Option<jetstream::Context>,
}

impl Nats {
    /// Over `link`'s connection, made now if no other plane has made it.
    pub(super) async fn connect(
        config: &EventPlaneConfig,
        link: &NatsLink,
    ) -> Result<Self, EventError> {
        let client = link.client().await?;
        let jetstream = config.durable.then(|| jetstream::new(client.clone()));
        Ok(Self { client, jetstream })
    }

    async fn subscribe_core(
        &self,
        scope: &EventScope,
        topic: &str,
        queue: Arc<SubscriberQueue>,
    ) -> Result<SubscriptionGuard, EventError> {
        let subject = scope.subject(topic);
        let subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(|err| transport(format!("subscribing: {err}")))?;
        let task = tokio::spawn(receive_core(subscriber, queue));
        Ok(Box::new(AbortOnDropHandle::new(task)))
    }

    async fn subscribe_jetstream(
        &self,
        jetstream: &jetstream::Context,
        scope: &EventScope,
        topic: &str,
        name: &str,
        queue: Arc<SubscriberQueue>,
    ) -> Result<SubscriptionGuard, EventError> {
        let consumer_name = consumer_name(name)?;
        let subject = scope.subject(topic);
        let stream = ensure_stream(jetstream, scope).await?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &consumer_name,
                pull::Config {
                    durable_name: Some(consumer_name.clone()),
                    filter_subject: subject.clone(),
                    // A new name starts from now, like a plain subscription; only a
                    // returning one catches up.
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| {
                transport(format!(
                    "JetStream consumer {consumer_name} on stream {}: {err}",
                    scope.stream_name()
                ))
            })?;
        // An existing consumer is returned as it is; reusing a name for another topic
        // would silently deliver the other topic's events.
        let existing = &consumer.cached_info().config.filter_subject;
        if *existing != subject {
            return Err(transport(format!(
                "the durable name {name:?} is already used in {scope} for subject {existing} \
                 (JetStream consumer {consumer_name}); give each topic its own durable name"
            )));
        }
        let messages = consumer.messages().await.map_err(|err| {
            transport(format!(
                "pulling from JetStream consumer {consumer_name}: {err}"
            ))
        })?;
        let task = tokio::spawn(receive_durable(messages, consumer_name, queue));
        Ok(Box::new(AbortOnDropHandle::new(task)))
    }
}

impl Transport for Nats {
    fn kind(&self) -> EventPlaneKind {
        EventPlaneKind::Nats
    }

    fn sink<'a>(
        &'a self,
        scope: &'a EventScope,
        _publisher_id: u64,
    ) -> BoxFuture<'a, Result<Box<dyn EventSink>, EventError>> {
        async move {
            // The stream must exist before the first publish, or the events published
            // before any durable subscriber appeared would not be kept.
            if let Some(jetstream) = &self.jetstream {
                ensure_stream(jetstream, scope).await?;
            }
            let sink: Box<dyn EventSink> = Box::new(NatsSink {
                client: self.client.clone(),
            });
            Ok(sink)
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        scope: &'a EventScope,
        topic: &'a str,
        queue: Arc<SubscriberQueue>,
    ) -> BoxFuture<'a, Result<SubscriptionGuard, EventError>> {
        self.subscribe_core(scope, topic, queue).boxed()
    }

    fn subscribe_durable<'a>(
        &'a self,
        scope: &'a EventScope,
        topic: &'a str,
        name: &'a str,
        queue: Arc<SubscriberQueue>,
    ) -> BoxFuture<'a, Result<SubscriptionGuard, EventError>> {
        async move {
            let Some(jetstream) = &self.jetstream else {
                return Err(EventError::DurableUnsupported {
                    plane: "nats with DYN_EVENT_PLANE_DURABLE off",
                });
            };
            self.subscribe_jetstream(jetstream, scope, topic, name, queue)
                .await
        }
        .boxed()
    }
}

struct NatsSink {
    client: Client,
}

impl EventSink for NatsSink {
    fn send<'a>(
        &'a mut self,
        subject: &'a Utf8Bytes,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), EventError>> {
        async move {
            // The server limits the whole message body, and the body is the envelope.
            let size = ENVELOPE_HEADER_LEN + event.topic.len() + event.payload.len();
            let limit = self.client.max_payload();
            if size > limit {
                return Err(EventError::PayloadTooLarge {
                    size,
                    limit,
                    plane: "NATS",
                });
            }
            // One copy, deliberate: a NATS message has one body, so the header and the
            // payload are joined here.
            // Shares the topic slot's bytes: no allocation for the subject.
            let subject = async_nats::Subject::from_utf8(subject.as_bytes().clone())
                .map_err(|err| transport(format!("subject is not UTF-8: {err}")))?;
            self.client
                .publish(subject.clone(), event.encode())
                .await
                .map_err(|err| transport(format!("publishing on {subject}: {err}")))
        }
        .boxed()
    }
}

/// Gets `scope`'s stream, creating it if it is missing.
async fn ensure_stream(
    jetstream: &jetstream::Context,
    scope: &EventScope,
) -> Result<stream::Stream, EventError> {
    let name = scope.stream_name();
    jetstream
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![scope.subject_wildcard()],
            max_age: STREAM_MAX_AGE,
            ..Default::default()
        })
        .await
        .map_err(|err| {
            transport(format!(
                "JetStream stream {name}: {err} (DYN_EVENT_PLANE_DURABLE=true needs a server \
                 with JetStream enabled, e.g. nats-server -js)"
            ))
        })
}

/// `name` as a JetStream consumer name: escaped like a subject token, so it has none of
/// the characters JetStream refuses (`.`, `*`, `>`, whitespace, `/`, `\`) and distinct
/// names stay distinct.
fn consumer_name(name: &str) -> Result<String, EventError> {
    if name.is_empty() {
        return Err(EventError::InvalidDurableName {
            name: name.to_owned(),
            reason: "durable names must not be empty",
        });
    }
    let mut out = String::with_capacity(name.len());
    escape_token(name, &mut out);
    Ok(out)
}

/// Reads the subscription as fast as messages come: `deliver` never waits, so the
/// client never sees a slow consumer.
async fn receive_core(mut subscriber: async_nats::Subscriber, queue: Arc<SubscriberQueue>) {
    while let Some(message) = subscriber.next().await {
        push(&queue, &message.subject, message.payload);
        // Take what has already arrived before waking the subscriber: one wake per
        // burst instead of one per event.
        for _ in 0..DRAIN_BEFORE_WAKE {
            match subscriber.next().now_or_never() {
                Some(Some(message)) => push(&queue, &message.subject, message.payload),
                Some(None) | None => break,
            }
        }
        queue.notify();
    }
    tracing::info!(
        "NATS event subscription ended: the NATS client shut down or stopped reconnecting"
    );
    queue.close();
}

/// Like [`receive_core`], acking each message once it is queued. An event still queued
/// when the subscription is dropped has been acked, so it is not redelivered.
async fn receive_durable(
    mut messages: pull::Stream,
    consumer_name: String,
    queue: Arc<SubscriberQueue>,
) {
    while let Some(item) = messages.next().await {
        match item {
            Ok(message) => {
                let (message, acker) = message.split();
                // Acked even when it does not decode: a redelivery would not decode either.
                push(&queue, &message.subject, message.payload);
                queue.notify();
                if let Err(err) = acker.ack().await {
                    tracing::warn!(
                        consumer = %consumer_name,
                        "could not ack a JetStream event, it will be redelivered: {err}"
                    );
                }
            }
            Err(err) if err.kind() == MessagesErrorKind::ConsumerDeleted => {
                tracing::warn!(
                    consumer = %consumer_name,
                    "durable event subscription ended: its JetStream consumer was deleted"
                );
                queue.close();
                return;
            }
            // Missed heartbeats and failed pulls (a server restart) are retried by the
            // stream itself.
            Err(err) => tracing::warn!(
                consumer = %consumer_name,
                "JetStream consumer error, still pulling: {err}"
            ),
        }
    }
    tracing::info!(
        consumer = %consumer_name,
        "durable event subscription ended: the JetStream pull stream finished"
    );
    queue.close();
}

/// Queues the event `payload` holds, without waking the subscriber.
fn push(queue: &SubscriberQueue, subject: &str, payload: Bytes) {
    match Event::decode(payload) {
        Ok(event) => queue.push(event),
        Err(err) => queue.reject(subject, &err.to_string()),
    }
}

fn transport(reason: String) -> EventError {
    EventError::Transport {
        plane: "nats",
        reason,
    }
}

impl From<ConnectError> for EventError {
    fn from(err: ConnectError) -> Self {
        EventError::Unreachable {
            server: "NATS",
            url: err.url.clone(),
            reason: err.reason.clone(),
            source: Some(Box::new(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_have_no_character_jetstream_refuses() {
        let name = consumer_name("router.1 *>/\\\tx").unwrap();
        assert_eq!(name, "router~2E1~20~2A~3E~2F~5C~09x");
        assert!(
            !name.contains(['.', '*', '>', '/', '\\', ' ', '\t']),
            "{name}"
        );
        assert_eq!(consumer_name("kv-router_2").unwrap(), "kv-router_2");
        assert_ne!(
            consumer_name("a.b").unwrap(),
            consumer_name("a~2Eb").unwrap()
        );
        let err = consumer_name("").unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }
}
