//! File-backend watches: rescan the directory every [`FILE_POLL_INTERVAL`] and report
//! the differences from what was last delivered.
//!
//! Nothing queues between polls: the next scan happens only once the consumer took
//! the previous changes, so a slow consumer sees changes coalesced, and memory is
//! bounded by the number of keys under the prefix.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Weak;

use bytes::Bytes;
use futures::StreamExt;

use super::dir::Dir;
use super::{FILE_POLL_INTERVAL, blocking};
use crate::planes::discovery::kv::{KeyValue, KvEvent, KvWatch};

struct FileWatch {
    dir: Weak<Dir>,
    prefix: String,
    /// What the consumer has been told.
    known: BTreeMap<String, Bytes>,
    pending: VecDeque<KvEvent>,
    /// Whether the last scan failed, so a lasting failure is logged once.
    failing: bool,
}

/// A watch that starts with `snapshot` and ends once the store is dropped.
pub(super) fn poll(dir: Weak<Dir>, prefix: String, snapshot: Vec<KeyValue>) -> KvWatch {
    let known = snapshot
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let watch = FileWatch {
        dir,
        prefix,
        known,
        pending: VecDeque::from([KvEvent::Snapshot(snapshot)]),
        failing: false,
    };
    futures::stream::unfold(watch, FileWatch::next).boxed()
}

impl FileWatch {
    async fn next(mut self) -> Option<(KvEvent, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            tokio::time::sleep(FILE_POLL_INTERVAL).await;
            let dir = self.dir.upgrade()?;
            let prefix = self.prefix.clone();
            match blocking(move || dir.list(&prefix)).await {
                Ok(current) => {
                    self.failing = false;
                    self.diff(current);
                }
                Err(err) => {
                    if !self.failing {
                        tracing::warn!(prefix = %self.prefix, %err, "file discovery scan failed; retrying every poll");
                    }
                    self.failing = true;
                }
            }
        }
    }

    fn diff(&mut self, current: Vec<KeyValue>) {
        let mut current: BTreeMap<String, Bytes> =
            current.into_iter().map(|kv| (kv.key, kv.value)).collect();
        for key in self.known.keys() {
            if !current.contains_key(key) {
                self.pending.push_back(KvEvent::Delete(key.clone()));
            }
        }
        for (key, value) in &current {
            if self.known.get(key) != Some(value) {
                self.pending.push_back(KvEvent::Put(KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                }));
            }
        }
        std::mem::swap(&mut self.known, &mut current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::discovery::{DiscoveryError, FileStore, KvStore};
    use std::time::Duration;

    #[tokio::test]
    async fn polling_reports_puts_and_deletes_then_ends_with_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::open(tmp.path()).await.unwrap();
        store.put("/w/a", "1".into(), None).await.unwrap();
        store.put("/other", "x".into(), None).await.unwrap();
        let mut watch = store.watch("/w/").await.unwrap();
        assert_eq!(
            watch.next().await,
            Some(KvEvent::Snapshot(vec![KeyValue::of("/w/a", "1")]))
        );
        store.put("/w/b", "2".into(), None).await.unwrap();
        assert_eq!(
            watch.next().await,
            Some(KvEvent::Put(KeyValue::of("/w/b", "2")))
        );
        store.delete("/w/a").await.unwrap();
        assert_eq!(watch.next().await, Some(KvEvent::Delete("/w/a".into())));
        drop(store);
        assert_eq!(watch.next().await, None);
    }

    #[tokio::test]
    async fn records_of_an_expired_lease_are_gone_and_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::open(tmp.path()).await.unwrap();
        let lease = store.grant_lease(Duration::from_millis(100)).await.unwrap();
        store.put("/l/a", "1".into(), Some(lease)).await.unwrap();
        assert!(store.create("/l/b", "2".into(), Some(lease)).await.unwrap());
        assert!(!store.create("/l/b", "3".into(), None).await.unwrap());
        assert_eq!(store.list("/l/").await.unwrap().len(), 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.get("/l/a").await.unwrap(), None);
        assert_eq!(store.list("/l/").await.unwrap(), []);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("keys")).unwrap().count(),
            0,
            "listing removed the expired records"
        );
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(DiscoveryError::LeaseExpired { .. })
        ));
        assert!(matches!(
            store.put("/l/c", "x".into(), Some(lease)).await,
            Err(DiscoveryError::LeaseExpired { .. })
        ));
        assert!(store.create("/l/b", "4".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn files_that_are_not_records_are_skipped_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::open(tmp.path()).await.unwrap();
        store.put("/r/ok", "v".into(), None).await.unwrap();
        std::fs::write(tmp.path().join("keys").join("%2Fr%2Fbad"), "no header").unwrap();
        std::fs::write(tmp.path().join("keys").join("not a key name"), "-\nv").unwrap();
        assert_eq!(
            store.list("/r/").await.unwrap(),
            [KeyValue::of("/r/ok", "v")]
        );
        assert!(!tmp.path().join("keys").join("%2Fr%2Fbad").exists());
    }
}
