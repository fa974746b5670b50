//! What every discovery backend must do, written once. Each scenario takes `connect`,
//! which opens a new `Discovery` on the backend under test: one call per simulated
//! process, each with its own lease.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::discovery::{
    Discovery, DiscoveryError, InstanceEvent, InstanceWatch, KeyValue, KvStore, Transport,
};
use planewire::planes::request::EndpointPath;

use super::worker::Worker;
use planewire_testkit::within;

/// A namespace no other test (or earlier run against the same store) uses.
pub fn unique_namespace(tag: &str) -> String {
    format!("{tag}-{:x}", fastrand::u64(..))
}

pub async fn next_event(watch: &mut InstanceWatch) -> InstanceEvent {
    within("a discovery event", watch.next())
        .await
        .expect("the watch ended")
}

fn tcp(port: u16) -> Transport {
    Transport::new("tcp", format!("127.0.0.1:{port}"))
}

/// A second registration shows up as `Added`, deregistration (explicit, by drop, by
/// shutdown) as `Removed`; the snapshot and `list` agree with the events.
pub async fn register_list_watch(connect: impl AsyncFn() -> Discovery) {
    let ns = unique_namespace("suite");
    let (frontend, worker_a, worker_b) = (connect().await, connect().await, connect().await);
    let path = |id| EndpointPath::new(&ns, "backend", "generate", id).unwrap();

    let first = worker_a.register(&path(1), tcp(10001)).await.unwrap();
    let mut watch = frontend.watch(&ns, "backend", "generate").await.unwrap();
    assert_eq!(watch.current().await, [first.record().clone()], "snapshot");
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(first.record().clone())
    );
    let list = || frontend.list(&ns, "backend", "generate");
    assert_eq!(list().await.unwrap(), [first.record().clone()]);

    let other_endpoint = EndpointPath::new(&ns, "backend", "other", 1).unwrap();
    let other = worker_b
        .register(&other_endpoint, tcp(10003))
        .await
        .unwrap();
    let second = worker_b.register(&path(0x2f), tcp(10002)).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(second.record().clone()),
        "the other endpoint's registration is not in this watch"
    );
    assert_eq!(
        list().await.unwrap(),
        [first.record().clone(), second.record().clone()]
    );
    assert!(matches!(
        worker_b.register(&path(0x2f), tcp(10002)).await,
        Err(DiscoveryError::AlreadyRegistered { .. })
    ));

    let second_record = second.record().clone();
    second.deregister().await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Removed(second_record)
    );
    let first_record = first.record().clone();
    drop(first);
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Removed(first_record)
    );

    let third = worker_b.register(&path(3), tcp(10004)).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(third.record().clone())
    );
    worker_b.shutdown().await;
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Removed(third.record().clone())
    );
    assert_eq!(list().await.unwrap(), []);
    assert!(
        frontend
            .list(&ns, "backend", "other")
            .await
            .unwrap()
            .is_empty(),
        "shutdown removed every registration of the process"
    );
    assert!(matches!(
        worker_b.register(&path(4), tcp(10005)).await,
        Err(DiscoveryError::Closed)
    ));
    drop((other, third));
}

/// A value under `/services/` that is not a valid record is skipped by `list` and by
/// watches, and the watch goes on delivering.
pub async fn corrupt_records_are_skipped(connect: impl AsyncFn() -> Discovery) {
    let ns = unique_namespace("corrupt");
    let (frontend, worker) = (connect().await, connect().await);
    let mut watch = frontend.watch(&ns, "c", "e").await.unwrap();
    let store = frontend.store();
    let bad_json = format!("/services/{ns}/c/e/bad");
    store
        .put(&bad_json, Bytes::from_static(b"{not json"), None)
        .await
        .unwrap();
    // Valid JSON, but describing another key: routing by it would be wrong.
    let misplaced = format!("/services/{ns}/c/e/5");
    let elsewhere = EndpointPath::new(&ns, "c", "e", 6).unwrap();
    let record = planewire::planes::discovery::InstanceRecord::new(&elsewhere, tcp(1));
    store.put(&misplaced, record.to_json(), None).await.unwrap();

    let good = worker
        .register(&EndpointPath::new(&ns, "c", "e", 7).unwrap(), tcp(10007))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(good.record().clone()),
        "the corrupt records produced no event and did not end the watch"
    );
    assert_eq!(
        frontend.list(&ns, "c", "e").await.unwrap(),
        [good.record().clone()]
    );
    let mut fresh = frontend.watch(&ns, "c", "e").await.unwrap();
    assert_eq!(fresh.current().await, [good.record().clone()]);
    store.delete(&bad_json).await.unwrap();
    store.delete(&misplaced).await.unwrap();
}

/// When the store loses the lease (what a partition longer than the TTL does), the
/// process notices, registers again under a new lease, and watchers see the instance
/// go and come back.
pub async fn lost_lease_is_re_registered(connect: impl AsyncFn() -> Discovery) {
    let ns = unique_namespace("lost");
    let (frontend, worker) = (connect().await, connect().await);
    let path = EndpointPath::new(&ns, "c", "e", 9).unwrap();
    let handle = worker.register(&path, tcp(10009)).await.unwrap();
    let record = handle.record().clone();
    let mut watch = frontend.watch(&ns, "c", "e").await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(record.clone())
    );
    let lease = worker.lease_id().await.expect("a lease after registering");
    frontend.store().revoke_lease(lease).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Removed(record.clone())
    );
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(record.clone()),
        "re-registered by the keep-alive task"
    );
    let new_lease = worker.lease_id().await.expect("a new lease");
    assert_ne!(new_lease, lease);
    drop(handle);
    assert_eq!(next_event(&mut watch).await, InstanceEvent::Removed(record));
}

/// A worker process killed with SIGKILL never deregisters: its record must vanish
/// within the lease TTL (plus 2 s of slack) and watchers get `Removed`.
/// `worker_env` configures the child's discovery; `frontend` watches the same store.
pub async fn killed_worker_expires(
    worker_env: &[(&str, &str)],
    frontend: Discovery,
    ttl: Duration,
) {
    let ns = unique_namespace("killed");
    let mut worker = Worker::start(worker_env, &format!("{ns}/backend/generate"), 0xdead).await;
    let record = worker.record.clone();
    let mut watch = frontend.watch(&ns, "backend", "generate").await.unwrap();
    assert_eq!(watch.current().await, std::slice::from_ref(&record));
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(record.clone())
    );
    // Outlive a TTL: the worker's keep-alive holds the record.
    tokio::time::sleep(ttl + ttl / 2).await;
    assert_eq!(
        frontend.list(&ns, "backend", "generate").await.unwrap(),
        std::slice::from_ref(&record)
    );

    worker.kill().await;
    let killed = Instant::now();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Removed(record.clone())
    );
    let gone_after = killed.elapsed();
    eprintln!("record of the killed worker vanished {gone_after:?} after SIGKILL (TTL {ttl:?})");
    assert!(
        gone_after <= ttl + Duration::from_secs(2),
        "the record outlived the TTL by too much: {gone_after:?}"
    );
    assert_eq!(frontend.list(&ns, "backend", "generate").await.unwrap(), []);
}

/// `claim` writes a key that is absent or on its lease (and writes nothing when the
/// value is already there), refuses one on another lease or on none, naming the
/// holder; `release` deletes only a key on its lease.
async fn claim_and_release(store: &dyn KvStore, key: &impl Fn(&str) -> String) {
    let (e, f) = (key("e"), key("f"));
    let mine = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let theirs = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert!(
        store.claim(&e, "8".into(), mine).await.unwrap(),
        "absent: written"
    );
    assert!(
        !store.claim(&e, "8".into(), mine).await.unwrap(),
        "intact: no write"
    );
    assert!(
        store.claim(&e, "9".into(), mine).await.unwrap(),
        "ours: rewritten"
    );
    match store.claim(&e, "x".into(), theirs).await {
        Err(DiscoveryError::KeyHeld { key, holder }) => {
            assert_eq!((key.as_str(), holder), (e.as_str(), Some(mine)));
        }
        other => panic!("claimed a key on another lease: {other:?}"),
    }
    assert!(
        !store.release(&e, theirs).await.unwrap(),
        "not on that lease"
    );
    assert_eq!(store.get(&e).await.unwrap().unwrap(), "9");
    store.put(&f, "10".into(), None).await.unwrap();
    assert!(matches!(
        store.claim(&f, "x".into(), mine).await,
        Err(DiscoveryError::KeyHeld { holder: None, .. })
    ));
    assert!(
        !store.release(&f, mine).await.unwrap(),
        "no lease is not my lease"
    );
    assert!(store.release(&e, mine).await.unwrap());
    assert!(!store.release(&e, mine).await.unwrap(), "already gone");
    assert_eq!(store.get(&e).await.unwrap(), None);
    store.revoke_lease(theirs).await.unwrap();
    assert!(matches!(
        store.claim(&e, "x".into(), theirs).await,
        Err(DiscoveryError::LeaseExpired { .. })
    ));
    store.revoke_lease(mine).await.unwrap();
    assert!(store.delete(&f).await.unwrap());
}

/// Polls `done` every 50 ms until it holds, for at most `PATIENCE`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    within(what, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Registration is create-if-absent (issue 14, item 4). A second process registering a
/// live instance id gets `InstanceHeld` naming the id and the first's lease and
/// address; the first's record stays, and the second's shutdown deletes nothing of it.
/// If the first's lease is lost and a third process takes the id meanwhile, the first's
/// keep-alive never overwrites it, and the first's deregistration and shutdown leave it.
pub async fn held_keys_are_refused_and_never_deleted(connect: impl AsyncFn() -> Discovery) {
    let ns = unique_namespace("held");
    let (frontend, first, second) = (connect().await, connect().await, connect().await);
    let path = EndpointPath::new(&ns, "c", "e", 0x1f).unwrap();
    let held = first.register(&path, tcp(10021)).await.unwrap();
    let first_lease = first.lease_id().await.unwrap();
    let err = second.register(&path, tcp(10022)).await.unwrap_err();
    match &err {
        DiscoveryError::InstanceHeld {
            instance_id,
            holder,
            address,
            ..
        } => {
            assert_eq!(*instance_id, 0x1f);
            assert_eq!(*holder, Some(first_lease));
            assert_eq!(address.as_deref(), Some("127.0.0.1:10021"));
        }
        other => panic!("expected InstanceHeld, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("instance 1f of {ns}/c/e")), "{text}");
    assert!(text.contains(&format!("lease {first_lease}")), "{text}");
    let raw = format!("/{ns}/raw");
    let _raw = first
        .register_key(raw.clone(), "mine".into())
        .await
        .unwrap();
    assert!(matches!(
        second.register_key(raw.clone(), "theirs".into()).await,
        Err(DiscoveryError::KeyHeld { holder: Some(h), .. }) if h == first_lease
    ));
    second.shutdown().await;
    let list = || frontend.list(&ns, "c", "e");
    assert_eq!(list().await.unwrap(), [held.record().clone()]);
    assert_eq!(frontend.store().get(&raw).await.unwrap().unwrap(), "mine");

    // The first's lease is lost (revoked here, as a stall past the TTL would expire
    // it) and a third process takes the id before the first's keep-alive notices; if
    // the keep-alive wins that race, revoke again.
    let third = connect().await;
    let mut attempts = 0;
    let (taken, lost) = loop {
        let lease = first.lease_id().await.unwrap();
        frontend.store().revoke_lease(lease).await.unwrap();
        match third.register(&path, tcp(10023)).await {
            Ok(taken) => break (taken, lease),
            Err(DiscoveryError::InstanceHeld { .. }) if attempts < 10 => attempts += 1,
            Err(err) => panic!("the third could not take the id: {err}"),
        }
    };
    // Once the first holds a new lease its keep-alive has tried to write the record.
    eventually("the first re-registering", async || {
        first.lease_id().await.is_some_and(|l| l != lost)
    })
    .await;
    assert_eq!(list().await.unwrap(), [taken.record().clone()]);
    assert_eq!(
        frontend.store().get(&raw).await.unwrap().unwrap(),
        "mine",
        "the first's other key is written again"
    );
    held.deregister().await.unwrap();
    first.shutdown().await;
    assert_eq!(list().await.unwrap(), [taken.record().clone()]);
    drop(taken);
    eventually("the third's deregistration", async || {
        list().await.unwrap().is_empty()
    })
    .await;
}

/// A registration whose record is deleted, or overwritten on its lease with a value
/// that is not its record, is written again by the keep-alive (issue 14, item 3),
/// under the same lease.
pub async fn damaged_records_are_rewritten(connect: impl AsyncFn() -> Discovery) {
    let ns = unique_namespace("heal");
    let (frontend, worker) = (connect().await, connect().await);
    let path = EndpointPath::new(&ns, "c", "e", 0x31).unwrap();
    let handle = worker.register(&path, tcp(10031)).await.unwrap();
    let intact = handle.record().to_json();
    let lease = worker.lease_id().await.unwrap();
    let store = frontend.store();
    let rewritten = async || store.get(handle.key()).await.unwrap() == Some(intact.clone());

    assert!(store.delete(handle.key()).await.unwrap());
    eventually("the deleted record rewritten", rewritten).await;
    store
        .put(handle.key(), Bytes::from_static(b"{not json"), Some(lease))
        .await
        .unwrap();
    eventually("the damaged record rewritten", rewritten).await;
    assert_eq!(worker.lease_id().await, Some(lease), "repaired in place");
    assert_eq!(
        frontend.list(&ns, "c", "e").await.unwrap(),
        [handle.record().clone()]
    );
}

/// The raw key-value operations: create-if-absent, get, put, list by prefix, delete,
/// and keys on a lease that is revoked.
pub async fn kv_operations(store: &dyn KvStore) {
    let prefix = format!("/{}/", unique_namespace("kv"));
    let key = |k: &str| format!("{prefix}{k}");
    let kv = |k: &str, v: &'static str| KeyValue {
        key: key(k),
        value: Bytes::from_static(v.as_bytes()),
    };
    assert_eq!(store.get(&key("a")).await.unwrap(), None);
    assert!(store.create(&key("a"), "1".into(), None).await.unwrap());
    assert!(!store.create(&key("a"), "2".into(), None).await.unwrap());
    assert_eq!(store.get(&key("a")).await.unwrap().unwrap(), "1");
    store.put(&key("a"), "3".into(), None).await.unwrap();
    store.put(&key("b"), "4".into(), None).await.unwrap();
    // Shares the prefix's text but not its trailing slash.
    let outside = format!("{}z", prefix.trim_end_matches('/'));
    store.put(&outside, "5".into(), None).await.unwrap();
    assert_eq!(
        store.list(&prefix).await.unwrap(),
        [kv("a", "3"), kv("b", "4")]
    );

    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    store.put(&key("c"), "6".into(), Some(lease)).await.unwrap();
    store.keep_alive(lease).await.unwrap();
    assert_eq!(store.get(&key("c")).await.unwrap().unwrap(), "6");
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get(&key("c")).await.unwrap(), None);
    store
        .revoke_lease(lease)
        .await
        .expect("revoking twice is fine");
    let expired =
        |r: &Result<_, DiscoveryError>| matches!(r, Err(DiscoveryError::LeaseExpired { .. }));
    assert!(expired(&store.keep_alive(lease).await));
    assert!(expired(
        &store
            .put(&key("d"), "7".into(), Some(lease))
            .await
            .map(drop)
    ));
    assert!(expired(
        &store
            .create(&key("d"), "7".into(), Some(lease))
            .await
            .map(drop)
    ));

    claim_and_release(store, &key).await;

    assert!(store.delete(&key("a")).await.unwrap());
    assert!(!store.delete(&key("a")).await.unwrap());
    assert!(store.delete(&key("b")).await.unwrap());
    assert!(store.delete(&outside).await.unwrap());
    assert_eq!(store.list(&prefix).await.unwrap(), []);
}
