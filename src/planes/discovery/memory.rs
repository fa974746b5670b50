//! The in-memory backend: one process, no persistence. Leases expire on tokio's clock, so
//! tests with paused time see them expire without waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, ready};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::kv::{KeyValue, KvEvent, KvStore, KvWatch, LeaseId};
use super::{DiscoveryError, WATCH_BUFFER};
use crate::sync::lock;

/// A [`KvStore`] held in this process. Watches end when it is dropped. Granting a
/// lease starts its expiry task, so that needs a tokio runtime.
pub struct MemoryStore {
    inner: Arc<Inner>,
    /// Wakes the expiry task; shared with it so the task can outlive `inner` briefly.
    wake_reaper: Arc<Notify>,
    reaper_started: AtomicBool,
}

struct Inner {
    state: Mutex<State>,
    /// Every change, for watches. Sent while holding `state`, so a watch that subscribes
    /// under the same lock sees exactly the changes after its snapshot.
    changes: broadcast::Sender<KvEvent>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
    last_lease: i64,
}

struct Entry {
    value: Bytes,
    lease: Option<LeaseId>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                changes: broadcast::channel(WATCH_BUFFER).0,
            }),
            wake_reaper: Arc::new(Notify::new()),
            reaper_started: AtomicBool::new(false),
        }
    }

    /// Expiry runs in a task started by the first lease, so a store that never grants
    /// one needs no runtime.
    fn start_reaper(&self) {
        if !self.reaper_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(expire_leases(
                Arc::downgrade(&self.inner),
                Arc::clone(&self.wake_reaper),
            ));
        }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        // The reaper holds only a weak reference: waking it lets it see we are gone.
        self.wake_reaper.notify_one();
    }
}

impl Inner {
    fn put(&self, state: &mut State, key: &str, value: Bytes, lease: Option<LeaseId>) {
        if let Some(lease) = lease.and_then(|id| state.leases.get_mut(&id)) {
            lease.keys.insert(key.to_owned());
        }
        let old = state.entries.insert(
            key.to_owned(),
            Entry {
                value: value.clone(),
                lease,
            },
        );
        if let Some(old_lease) = old.and_then(|e| e.lease).filter(|l| Some(*l) != lease) {
            if let Some(old_lease) = state.leases.get_mut(&old_lease) {
                old_lease.keys.remove(key);
            }
        }
        let _ = self.changes.send(KvEvent::Put(KeyValue {
            key: key.to_owned(),
            value,
        }));
    }

    fn delete(&self, state: &mut State, key: &str) -> bool {
        let Some(entry) = state.entries.remove(key) else {
            return false;
        };
        if let Some(lease) = entry.lease.and_then(|id| state.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
        let _ = self.changes.send(KvEvent::Delete(key.to_owned()));
        true
    }

    fn end_lease(&self, state: &mut State, id: LeaseId) -> bool {
        let Some(lease) = state.leases.remove(&id) else {
            return false;
        };
        for key in &lease.keys {
            self.delete(state, key);
        }
        true
    }

    fn check_lease(state: &State, lease: Option<LeaseId>) -> Result<(), DiscoveryError> {
        match lease {
            Some(id) if !state.leases.contains_key(&id) => {
                Err(DiscoveryError::LeaseExpired { lease: id })
            }
            _ => Ok(()),
        }
    }

    /// A snapshot of `prefix` and a subscription to every later change, atomically.
    fn subscribe(&self, prefix: &str) -> (Vec<KeyValue>, broadcast::Receiver<KvEvent>) {
        let state = lock(&self.state);
        let receiver = self.changes.subscribe();
        let snapshot = state
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| KeyValue {
                key: k.clone(),
                value: e.value.clone(),
            })
            .collect();
        (snapshot, receiver)
    }
}

/// Ends leases at their deadline; sleeps until the earliest one or until woken.
async fn expire_leases(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let woken = wake.notified();
        let next_deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let mut state = lock(&inner.state);
            let now = Instant::now();
            let due: Vec<LeaseId> = state
                .leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                tracing::debug!(lease = %id, "memory lease expired");
                inner.end_lease(&mut state, id);
            }
            state.leases.values().map(|l| l.deadline).min()
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = woken => {}
                }
            }
            None => woken.await,
        }
    }
}

fn done<'a, T: Send + 'a>(
    value: Result<T, DiscoveryError>,
) -> BoxFuture<'a, Result<T, DiscoveryError>> {
    ready(value).boxed()
}

impl KvStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, DiscoveryError>> {
        self.start_reaper();
        let id = {
            let mut state = lock(&self.inner.state);
            state.last_lease += 1;
            let id = LeaseId(state.last_lease);
            let lease = Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            };
            state.leases.insert(id, lease);
            id
        };
        self.wake_reaper.notify_one();
        done(Ok(id))
    }

    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        let result = match state.leases.get_mut(&id) {
            Some(lease) => {
                lease.deadline = Instant::now() + lease.ttl;
                Ok(())
            }
            None => Err(DiscoveryError::LeaseExpired { lease: id }),
        };
        done(result)
    }

    fn revoke_lease(&self, id: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        self.inner.end_lease(&mut state, id);
        done(Ok(()))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        let result = Inner::check_lease(&state, lease)
            .map(|()| self.inner.put(&mut state, key, value, lease));
        done(result)
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        let result = Inner::check_lease(&state, lease).map(|()| {
            let absent = !state.entries.contains_key(key);
            if absent {
                self.inner.put(&mut state, key, value, lease);
            }
            absent
        });
        done(result)
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        let result =
            Inner::check_lease(&state, Some(lease)).and_then(|()| match state.entries.get(key) {
                Some(entry) if entry.lease != Some(lease) => Err(DiscoveryError::KeyHeld {
                    key: key.to_owned(),
                    holder: entry.lease,
                }),
                Some(entry) if entry.value == value => Ok(false),
                _ => {
                    self.inner.put(&mut state, key, value, Some(lease));
                    Ok(true)
                }
            });
        done(result)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DiscoveryError>> {
        let value = lock(&self.inner.state)
            .entries
            .get(key)
            .map(|e| e.value.clone());
        done(Ok(value))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, DiscoveryError>> {
        done(Ok(self.inner.subscribe(prefix).0))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        done(Ok(self.inner.delete(&mut state, key)))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut state = lock(&self.inner.state);
        let ours = state
            .entries
            .get(key)
            .is_some_and(|entry| entry.lease == Some(lease));
        done(Ok(ours && self.inner.delete(&mut state, key)))
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KvWatch, DiscoveryError>> {
        let (snapshot, changes) = self.inner.subscribe(prefix);
        let watch = MemoryWatch {
            inner: Arc::downgrade(&self.inner),
            prefix: prefix.to_owned(),
            changes,
            snapshot: Some(snapshot),
        };
        done(Ok(futures::StreamExt::boxed(futures::stream::unfold(
            watch,
            MemoryWatch::next,
        ))))
    }
}

struct MemoryWatch {
    inner: Weak<Inner>,
    prefix: String,
    changes: broadcast::Receiver<KvEvent>,
    snapshot: Option<Vec<KeyValue>>,
}

impl MemoryWatch {
    async fn next(mut self) -> Option<(KvEvent, Self)> {
        if let Some(snapshot) = self.snapshot.take() {
            return Some((KvEvent::Snapshot(snapshot), self));
        }
        loop {
            let event = match self.changes.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // The consumer fell more than WATCH_BUFFER changes behind: rather than
                    // queue without bound, start over from the current state.
                    let inner = self.inner.upgrade()?;
                    tracing::warn!(prefix = %self.prefix, missed, "watch consumer fell behind; resynchronizing with a snapshot");
                    let (snapshot, changes) = inner.subscribe(&self.prefix);
                    self.changes = changes;
                    return Some((KvEvent::Snapshot(snapshot), self));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let key = match &event {
                KvEvent::Put(kv) => &kv.key,
                KvEvent::Delete(key) => key,
                KvEvent::Snapshot(_) => continue,
            };
            if key.starts_with(&self.prefix) {
                return Some((event, self));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn keys_vanish_when_their_lease_expires_and_watchers_see_the_delete() {
        let store = MemoryStore::new();
        let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
        store.put("/a/1", "one".into(), Some(lease)).await.unwrap();
        store.put("/a/2", "two".into(), None).await.unwrap();
        let mut watch = store.watch("/a/").await.unwrap();
        assert_eq!(
            watch.next().await,
            Some(KvEvent::Snapshot(vec![
                KeyValue::of("/a/1", "one"),
                KeyValue::of("/a/2", "two")
            ]))
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        store.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(store.get("/a/1").await.unwrap().is_some(), "kept alive");
        let start = Instant::now();
        assert_eq!(watch.next().await, Some(KvEvent::Delete("/a/1".into())));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(4),
            "expired at the TTL"
        );
        assert!(store.get("/a/1").await.unwrap().is_none());
        assert!(
            store.get("/a/2").await.unwrap().is_some(),
            "no lease, no expiry"
        );
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(DiscoveryError::LeaseExpired { .. })
        ));
        assert!(matches!(
            store.put("/a/3", "x".into(), Some(lease)).await,
            Err(DiscoveryError::LeaseExpired { .. })
        ));
    }

    #[tokio::test]
    async fn a_lagging_watch_resynchronizes_with_a_snapshot() {
        let store = MemoryStore::new();
        let mut watch = store.watch("/p/").await.unwrap();
        assert_eq!(watch.next().await, Some(KvEvent::Snapshot(vec![])));
        for i in 0..WATCH_BUFFER + 10 {
            store
                .put(&format!("/p/{i:05}"), "v".into(), None)
                .await
                .unwrap();
        }
        match watch.next().await {
            Some(KvEvent::Snapshot(all)) => assert_eq!(all.len(), WATCH_BUFFER + 10),
            other => panic!("expected a resync snapshot, got {other:?}"),
        }
        store.delete("/p/00000").await.unwrap();
        assert_eq!(watch.next().await, Some(KvEvent::Delete("/p/00000".into())));
    }

    #[tokio::test]
    async fn watches_filter_by_prefix_and_end_with_the_store() {
        let store = MemoryStore::new();
        let mut watch = store.watch("/x/").await.unwrap();
        assert_eq!(watch.next().await, Some(KvEvent::Snapshot(vec![])));
        store.put("/y/1", "no".into(), None).await.unwrap();
        store.put("/x/1", "yes".into(), None).await.unwrap();
        assert_eq!(
            watch.next().await,
            Some(KvEvent::Put(KeyValue::of("/x/1", "yes")))
        );
        drop(store);
        assert_eq!(watch.next().await, None);
    }
}
