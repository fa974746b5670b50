//! etcd prefix watches that survive etcd restarts.
//!
//! The watch remembers the revision of the last event it delivered. When the stream
//! breaks (etcd restarted, connection lost) it watches again from the next revision,
//! so etcd replays whatever happened meanwhile, after a back-off that grows to
//! [`MAX_BACKOFF`]. If that revision was compacted away, it reads the prefix again and
//! delivers a fresh [`KvEvent::Snapshot`] for the consumer to diff.
//!
//! Nothing queues on our side: the events of one etcd response are delivered before
//! the stream is read again, and etcd holds the rest.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{EventType, WatchOptions, WatchStream};
use futures::StreamExt;

use super::EtcdStore;
use crate::planes::discovery::kv::{KeyValue, KvEvent, KvWatch};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct EtcdWatch {
    store: EtcdStore,
    prefix: String,
    /// Revision of the last change delivered (or of the last snapshot).
    revision: i64,
    stream: Option<WatchStream>,
    pending: VecDeque<KvEvent>,
    resnapshot: bool,
    backoff: Duration,
}

/// A watch that starts with `snapshot`, read at `revision`.
pub(super) fn resumable(
    store: EtcdStore,
    prefix: String,
    snapshot: Vec<KeyValue>,
    revision: i64,
) -> KvWatch {
    let watch = EtcdWatch {
        store,
        prefix,
        revision,
        stream: None,
        pending: VecDeque::from([KvEvent::Snapshot(snapshot)]),
        resnapshot: false,
        backoff: MIN_BACKOFF,
    };
    futures::stream::unfold(watch, EtcdWatch::next).boxed()
}

impl EtcdWatch {
    async fn next(mut self) -> Option<(KvEvent, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if self.resnapshot {
                self.snapshot().await;
                continue;
            }
            match self.stream.as_mut() {
                None => self.open().await,
                Some(stream) => match stream.message().await {
                    Ok(Some(answer)) => self.on_answer(&answer),
                    Ok(None) => self.broken("etcd closed the watch stream").await,
                    Err(err) => self.broken(&err.to_string()).await,
                },
            }
        }
    }

    async fn open(&mut self) {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut client = self.store.client.clone();
        let timeout = self.store.info.request_timeout;
        match tokio::time::timeout(timeout, client.watch(self.prefix.as_str(), Some(options))).await
        {
            Ok(Ok(stream)) => self.stream = Some(stream),
            Ok(Err(err)) => self.broken(&err.to_string()).await,
            Err(_) => self.broken("no answer to the watch request").await,
        }
    }

    fn on_answer(&mut self, answer: &etcd_client::WatchResponse) {
        if answer.compact_revision() > 0 {
            tracing::warn!(prefix = %self.prefix, from = self.revision + 1, compacted = answer.compact_revision(),
                "etcd compacted the revisions this watch needed; reading the prefix again");
            self.stream = None;
            self.resnapshot = true;
            return;
        }
        if answer.canceled() {
            tracing::warn!(prefix = %self.prefix, reason = answer.cancel_reason(), "etcd cancelled the watch; watching again");
            self.stream = None;
            return;
        }
        // An answer proves the connection works again.
        self.backoff = MIN_BACKOFF;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else {
                tracing::warn!(key = ?kv.key(), "skipping an etcd key that is not UTF-8");
                continue;
            };
            self.pending.push_back(match event.event_type() {
                EventType::Put => KvEvent::Put(KeyValue {
                    key: key.to_owned(),
                    value: Bytes::copy_from_slice(kv.value()),
                }),
                EventType::Delete => KvEvent::Delete(key.to_owned()),
            });
        }
    }

    /// Drops the stream and waits out the back-off before the next attempt.
    async fn broken(&mut self, reason: &str) {
        tracing::warn!(prefix = %self.prefix, reason, resume_from = self.revision + 1, retry_in = ?self.backoff,
            "etcd watch interrupted; resuming");
        self.stream = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn snapshot(&mut self) {
        match self.store.snapshot(&self.prefix).await {
            Ok((kvs, revision)) => {
                self.revision = revision;
                self.resnapshot = false;
                self.backoff = MIN_BACKOFF;
                self.pending.push_back(KvEvent::Snapshot(kvs));
            }
            Err(err) => self.broken(&err.to_string()).await,
        }
    }
}
