//! `DYN_EVENT_PLANE=inproc`: a map from subject to the live subscriptions' queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::queue::{SubscriberQueue, SubscriptionGuard};
use super::{Event, EventError, EventPlaneKind, EventScope, EventSink, Transport};
use crate::sync::lock;
use crate::vocab::Utf8Bytes;

type Bus = Arc<Mutex<HashMap<String, Vec<Weak<SubscriberQueue>>>>>;

#[derive(Default)]
pub(super) struct Inproc {
    bus: Bus,
}

impl Transport for Inproc {
    fn kind(&self) -> EventPlaneKind {
        EventPlaneKind::Inproc
    }

    fn sink<'a>(
        &'a self,
        _scope: &'a EventScope,
        _publisher_id: u64,
    ) -> BoxFuture<'a, Result<Box<dyn EventSink>, EventError>> {
        let sink: Box<dyn EventSink> = Box::new(InprocSink {
            bus: Arc::clone(&self.bus),
        });
        futures::future::ready(Ok(sink)).boxed()
    }

    fn subscribe<'a>(
        &'a self,
        scope: &'a EventScope,
        topic: &'a str,
        queue: Arc<SubscriberQueue>,
    ) -> BoxFuture<'a, Result<SubscriptionGuard, EventError>> {
        // The subscription owns the queue; the bus only holds it weakly and forgets it
        // on the first publish after it is dropped.
        lock(&self.bus)
            .entry(scope.subject(topic))
            .or_default()
            .push(Arc::downgrade(&queue));
        let guard: SubscriptionGuard = Box::new(());
        futures::future::ready(Ok(guard)).boxed()
    }
}

struct InprocSink {
    bus: Bus,
}

impl EventSink for InprocSink {
    fn send<'a>(
        &'a mut self,
        subject: &'a Utf8Bytes,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), EventError>> {
        let subject = subject.as_str();
        let mut bus = lock(&self.bus);
        if let Some(queues) = bus.get_mut(subject) {
            queues.retain(|queue| match queue.upgrade() {
                Some(queue) => {
                    queue.deliver(event.clone());
                    true
                }
                None => false,
            });
            if queues.is_empty() {
                bus.remove(subject);
            }
        }
        futures::future::ready(Ok(())).boxed()
    }
}
