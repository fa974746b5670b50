//! The discovery suite against the in-process backends (memory, file), lease expiry, and
//! recovery from a partition.

mod common;

use common::discovery_suite as suite;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, ready};
use planewire::planes::discovery::{
    Discovery, DiscoveryError, FileStore, InstanceEvent, KeyValue, KvStore, KvWatch, LeaseId,
    MemoryStore, Transport,
};
use planewire::planes::request::EndpointPath;
use suite::next_event;

const TTL: Duration = Duration::from_secs(2);

fn memory() -> impl AsyncFn() -> Discovery {
    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    async move || Discovery::new(Arc::clone(&store), TTL)
}

/// Each call opens the directory anew, as another process would.
fn file(dir: &tempfile::TempDir) -> impl AsyncFn() -> Discovery {
    let path = dir.path().to_owned();
    async move || Discovery::new(Arc::new(FileStore::open(&path).await.unwrap()), TTL)
}

#[tokio::test]
async fn memory_kv_operations() {
    suite::kv_operations(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_kv_operations() {
    let dir = tempfile::tempdir().unwrap();
    suite::kv_operations(&FileStore::open(dir.path()).await.unwrap()).await;
}

#[tokio::test]
async fn memory_register_list_watch() {
    suite::register_list_watch(memory()).await;
}

#[tokio::test]
async fn memory_corrupt_records_are_skipped() {
    suite::corrupt_records_are_skipped(memory()).await;
}

#[tokio::test]
async fn memory_held_keys_are_refused_and_never_deleted() {
    suite::held_keys_are_refused_and_never_deleted(memory()).await;
}

#[tokio::test]
async fn memory_damaged_records_are_rewritten() {
    suite::damaged_records_are_rewritten(memory()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_lost_lease_is_re_registered() {
    suite::lost_lease_is_re_registered(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_register_list_watch() {
    let dir = tempfile::tempdir().unwrap();
    suite::register_list_watch(file(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_corrupt_records_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    suite::corrupt_records_are_skipped(file(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_held_keys_are_refused_and_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    suite::held_keys_are_refused_and_never_deleted(file(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_damaged_records_are_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    suite::damaged_records_are_rewritten(file(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_lost_lease_is_re_registered() {
    let dir = tempfile::tempdir().unwrap();
    suite::lost_lease_is_re_registered(file(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_records_of_a_killed_worker_expire() {
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().to_str().unwrap();
    let env = [
        ("DYN_DISCOVERY_BACKEND", "file"),
        ("DYN_FILE_KV", dir_text),
        ("DYN_DISCOVERY_LEASE_TTL", "2"),
    ];
    let frontend = file(&dir)().await;
    suite::killed_worker_expires(&env, frontend, TTL).await;
}

/// A store that can be cut off, as a network partition cuts a worker off etcd.
struct Partitionable {
    inner: Arc<MemoryStore>,
    cut: AtomicBool,
}

impl Partitionable {
    /// Runs `op` on the inner store only while connected (memory operations take effect
    /// when called, not when awaited).
    fn check<'a, T: Send + 'a>(
        &self,
        op: impl FnOnce() -> BoxFuture<'a, Result<T, DiscoveryError>>,
    ) -> BoxFuture<'a, Result<T, DiscoveryError>> {
        if self.cut.load(Ordering::SeqCst) {
            ready(Err(DiscoveryError::Unavailable {
                backend: "memory",
                target: "partitioned".into(),
                setting: "none",
                source: "cut off by the test".into(),
            }))
            .boxed()
        } else {
            op()
        }
    }
}

impl KvStore for Partitionable {
    fn backend(&self) -> &'static str {
        "partitionable memory"
    }
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, DiscoveryError>> {
        self.check(|| self.inner.grant_lease(ttl))
    }
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        self.check(|| self.inner.keep_alive(lease))
    }
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        self.check(|| self.inner.revoke_lease(lease))
    }
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        self.check(|| self.inner.put(key, value, lease))
    }
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        self.check(|| self.inner.create(key, value, lease))
    }
    fn claim<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        self.check(|| self.inner.claim(key, value, lease))
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DiscoveryError>> {
        self.check(|| self.inner.get(key))
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, DiscoveryError>> {
        self.check(|| self.inner.list(prefix))
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        self.check(|| self.inner.delete(key))
    }
    fn release<'a>(
        &'a self,
        key: &'a str,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        self.check(|| self.inner.release(key, lease))
    }
    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KvWatch, DiscoveryError>> {
        self.check(|| self.inner.watch(prefix))
    }
}

/// Paused time: keep-alives hold the record over many TTLs; a partition longer than
/// the TTL expires it; once the partition heals the worker registers again by itself,
/// and a registration made during the partition is written too.
#[tokio::test(start_paused = true)]
async fn memory_partition_expires_records_and_healing_re_registers_them() {
    let store = Arc::new(MemoryStore::new());
    let link = Arc::new(Partitionable {
        inner: Arc::clone(&store),
        cut: AtomicBool::new(false),
    });
    let worker = Discovery::new(link.clone(), TTL);
    let frontend = Discovery::new(store, TTL);
    let path = |id| EndpointPath::new("part", "c", "e", id).unwrap();
    let first = worker
        .register(&path(1), Transport::new("tcp", "127.0.0.1:1"))
        .await
        .unwrap();
    let mut watch = frontend.watch("part", "c", "e").await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(first.record().clone())
    );
    tokio::time::sleep(TTL * 20).await;
    assert_eq!(
        frontend.list("part", "c", "e").await.unwrap(),
        [first.record().clone()],
        "kept alive"
    );

    link.cut.store(true, Ordering::SeqCst);
    let cut_at = tokio::time::Instant::now();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Removed(first.record().clone())
    );
    assert!(cut_at.elapsed() <= TTL, "expired within the TTL");
    let second = worker
        .register(&path(2), Transport::new("tcp", "127.0.0.1:2"))
        .await
        .expect("kept while the store is unreachable");

    tokio::time::sleep(TTL * 3).await;
    link.cut.store(false, Ordering::SeqCst);
    let mut back = vec![next_event(&mut watch).await, next_event(&mut watch).await];
    back.sort_by_key(InstanceEvent::instance_id);
    assert_eq!(
        back,
        [
            InstanceEvent::Added(first.record().clone()),
            InstanceEvent::Added(second.record().clone())
        ]
    );
}

#[tokio::test]
async fn discovery_from_config_opens_the_selected_backend() {
    use planewire::planes::discovery::{DiscoveryBackend, DiscoveryConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = DiscoveryConfig {
        backend: DiscoveryBackend::File,
        file_dir: dir.path().join("nested").join("kv"),
        ..DiscoveryConfig::default()
    };
    let discovery = Discovery::connect(&config).await.unwrap();
    assert_eq!(discovery.store().backend(), "file");
    let handle = discovery
        .register(
            &EndpointPath::new("cfg", "c", "e", 1).unwrap(),
            Transport::new("tcp", "127.0.0.1:1"),
        )
        .await
        .unwrap();
    assert!(
        dir.path()
            .join("nested/kv/keys")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    handle.deregister().await.unwrap();
    let memory = Discovery::connect(&DiscoveryConfig {
        backend: DiscoveryBackend::Memory,
        ..DiscoveryConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(memory.store().backend(), "memory");
}
