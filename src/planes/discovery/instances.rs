//! Turning a key watch into instance changes.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use super::kv::{KvEvent, KvWatch};
use super::record::InstanceRecord;

/// A change in the set of instances under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// A new instance, or a new record for a known one (apply it as a replacement).
    Added(InstanceRecord),
    /// An instance left. Carries the record it had: a prefix watch can span endpoints,
    /// and one instance id can serve several of them.
    Removed(InstanceRecord),
}

impl InstanceEvent {
    pub fn instance_id(&self) -> u64 {
        match self {
            Self::Added(r) | Self::Removed(r) => r.instance_id,
        }
    }
}

/// The records a consumer has been told about, by key; diffing against it turns puts,
/// deletes and snapshots into [`InstanceEvent`]s. Corrupt records are logged and
/// skipped: one bad value must not take down every watcher.
#[derive(Default)]
struct InstanceSet {
    by_key: BTreeMap<String, InstanceRecord>,
}

impl InstanceSet {
    fn apply(&mut self, event: KvEvent, out: &mut VecDeque<InstanceEvent>) {
        match event {
            KvEvent::Snapshot(kvs) => {
                let fresh: BTreeMap<String, InstanceRecord> = kvs
                    .into_iter()
                    .filter_map(|kv| parse(&kv.key, &kv.value).map(|r| (kv.key, r)))
                    .collect();
                let old = std::mem::take(&mut self.by_key);
                for (key, record) in &old {
                    if !fresh.contains_key(key) {
                        out.push_back(InstanceEvent::Removed(record.clone()));
                    }
                }
                for (key, record) in &fresh {
                    if old.get(key) != Some(record) {
                        out.push_back(InstanceEvent::Added(record.clone()));
                    }
                }
                self.by_key = fresh;
            }
            KvEvent::Put(kv) => match parse(&kv.key, &kv.value) {
                Some(record) => {
                    if self.by_key.get(&kv.key) != Some(&record) {
                        self.by_key.insert(kv.key, record.clone());
                        out.push_back(InstanceEvent::Added(record));
                    }
                }
                // A record we can no longer read cannot be routed to.
                None => self.remove(&kv.key, out),
            },
            KvEvent::Delete(key) => self.remove(&key, out),
        }
    }

    fn remove(&mut self, key: &str, out: &mut VecDeque<InstanceEvent>) {
        if let Some(record) = self.by_key.remove(key) {
            out.push_back(InstanceEvent::Removed(record));
        }
    }
}

fn parse(key: &str, value: &[u8]) -> Option<InstanceRecord> {
    match InstanceRecord::from_key_value(key, value) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!(%err, "skipping an instance record that cannot be read");
            None
        }
    }
}

/// The instances under a prefix, as a stream of [`InstanceEvent`]s: first an `Added`
/// for each instance present when the watch started, then changes as they happen.
/// After a backend resynchronization only the differences are reported. Ends only when
/// the store is dropped. Memory is bounded by the number of instances.
pub struct InstanceWatch {
    events: KvWatch,
    set: InstanceSet,
    pending: VecDeque<InstanceEvent>,
    synced: bool,
}

impl InstanceWatch {
    pub(crate) fn new(events: KvWatch) -> Self {
        Self {
            events,
            set: InstanceSet::default(),
            pending: VecDeque::new(),
            synced: false,
        }
    }

    /// The instances known so far, including those whose events are not yet taken from
    /// the stream. The first call reads the initial snapshot, so the result is
    /// complete even before the stream is polled.
    pub async fn current(&mut self) -> Vec<InstanceRecord> {
        if !self.synced {
            if let Some(event) = self.events.next().await {
                self.set.apply(event, &mut self.pending);
            }
            self.synced = true;
        }
        self.set.by_key.values().cloned().collect()
    }
}

impl Stream for InstanceWatch {
    type Item = InstanceEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InstanceEvent>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(event));
            }
            match this.events.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => {
                    this.synced = true;
                    this.set.apply(event, &mut this.pending);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::discovery::{KeyValue, Transport};
    use crate::vocab::EndpointPath;

    fn record(id: u64, address: &str) -> InstanceRecord {
        let path = EndpointPath::new("ns", "c", "e", id).unwrap();
        InstanceRecord::new(&path, Transport::new("tcp", address))
    }

    fn kv(record: &InstanceRecord) -> KeyValue {
        KeyValue {
            key: record.key().unwrap(),
            value: record.to_json(),
        }
    }

    fn apply(set: &mut InstanceSet, event: KvEvent) -> Vec<InstanceEvent> {
        let mut out = VecDeque::new();
        set.apply(event, &mut out);
        out.into()
    }

    #[test]
    fn snapshots_are_diffed_and_repeated_puts_are_quiet() {
        let (a, b, c) = (record(1, "h:1"), record(2, "h:2"), record(3, "h:3"));
        let mut set = InstanceSet::default();
        let first = apply(&mut set, KvEvent::Snapshot(vec![kv(&a), kv(&b)]));
        assert_eq!(
            first,
            [
                InstanceEvent::Added(a.clone()),
                InstanceEvent::Added(b.clone())
            ]
        );
        assert!(apply(&mut set, KvEvent::Put(kv(&a))).is_empty());
        let moved = record(1, "h:9");
        assert_eq!(
            apply(&mut set, KvEvent::Put(kv(&moved))),
            [InstanceEvent::Added(moved.clone())]
        );
        let resync = apply(&mut set, KvEvent::Snapshot(vec![kv(&moved), kv(&c)]));
        assert_eq!(
            resync,
            [InstanceEvent::Removed(b), InstanceEvent::Added(c.clone())]
        );
        assert_eq!(
            apply(&mut set, KvEvent::Delete(c.key().unwrap())),
            [InstanceEvent::Removed(c)]
        );
        assert!(apply(&mut set, KvEvent::Delete("/services/ns/c/e/77".into())).is_empty());
    }

    #[test]
    fn corrupt_records_are_skipped_and_a_record_turning_corrupt_is_removed() {
        let a = record(1, "h:1");
        let mut set = InstanceSet::default();
        let garbage = KeyValue {
            key: "/services/ns/c/e/2".into(),
            value: "{oops".into(),
        };
        let first = apply(&mut set, KvEvent::Snapshot(vec![kv(&a), garbage.clone()]));
        assert_eq!(first, [InstanceEvent::Added(a.clone())]);
        assert!(apply(&mut set, KvEvent::Put(garbage)).is_empty());
        let broken = KeyValue {
            key: a.key().unwrap(),
            value: "null".into(),
        };
        assert_eq!(
            apply(&mut set, KvEvent::Put(broken)),
            [InstanceEvent::Removed(a)]
        );
    }
}
