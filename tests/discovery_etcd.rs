//! The discovery suite against a real etcd (started per test on 127.0.0.1), plus what
//! only etcd has: restarts, auth, and endpoints that do not answer.
#![cfg(feature = "etcd")]

mod common;

use common::discovery_suite as suite;
use planewire_testkit::etcd;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd::Etcd;
use futures::StreamExt;
use planewire::planes::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, EtcdConfig, EtcdStore, InstanceEvent, KeyValue,
    KvEvent, KvStore, KvWatch, Transport,
};
use planewire::planes::request::EndpointPath;
use planewire_testkit::within;
use suite::next_event;

/// etcd's shortest lease with its default election settings.
const TTL: Duration = Duration::from_secs(2);

fn config(etcd: &Etcd) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![etcd.url()],
        ..EtcdConfig::default()
    }
}

fn connector(etcd: &Etcd) -> impl AsyncFn() -> Discovery {
    let config = config(etcd);
    async move || Discovery::new(Arc::new(EtcdStore::connect(&config).await.unwrap()), TTL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_register_list_watch() {
    let Some(etcd) = Etcd::start() else { return };
    suite::register_list_watch(connector(&etcd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_corrupt_records_are_skipped() {
    let Some(etcd) = Etcd::start() else { return };
    suite::corrupt_records_are_skipped(connector(&etcd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_held_keys_are_refused_and_never_deleted() {
    let Some(etcd) = Etcd::start() else { return };
    suite::held_keys_are_refused_and_never_deleted(connector(&etcd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_damaged_records_are_rewritten() {
    let Some(etcd) = Etcd::start() else { return };
    suite::damaged_records_are_rewritten(connector(&etcd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lost_lease_is_re_registered() {
    let Some(etcd) = Etcd::start() else { return };
    suite::lost_lease_is_re_registered(connector(&etcd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_records_of_a_killed_worker_expire() {
    let Some(etcd) = Etcd::start() else { return };
    let url = etcd.url();
    let env = [
        ("DYN_DISCOVERY_BACKEND", "etcd"),
        ("ETCD_ENDPOINTS", url.as_str()),
        ("DYN_DISCOVERY_LEASE_TTL", "2"),
    ];
    let frontend = connector(&etcd)().await;
    suite::killed_worker_expires(&env, frontend, TTL).await;
}

/// etcd stops and starts again on the same data dir and port: the lease goes on (or is
/// re-granted), the watch resumes, and a registration made while etcd was down
/// appears once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_keeps_registrations_and_resumes_watches() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let (frontend, worker) = (connector(&etcd)().await, connector(&etcd)().await);
    let path = |id| EndpointPath::new("restart", "c", "e", id).unwrap();
    let before = worker
        .register(&path(1), Transport::new("tcp", "127.0.0.1:1"))
        .await
        .unwrap();
    let mut watch = frontend.watch("restart", "c", "e").await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        InstanceEvent::Added(before.record().clone())
    );

    tokio::task::block_in_place(|| etcd.stop());
    let during = within(
        "registering while etcd is down",
        worker.register(&path(2), Transport::new("tcp", "127.0.0.1:2")),
    )
    .await
    .expect("kept for when etcd is back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| etcd.restart());

    // Apply events until the watcher's view is both instances.
    let wanted: BTreeSet<u64> = [1, 2].into();
    let mut seen: BTreeSet<u64> = [1].into();
    while seen != wanted {
        match next_event(&mut watch).await {
            InstanceEvent::Added(r) => seen.insert(r.instance_id),
            InstanceEvent::Removed(r) => seen.remove(&r.instance_id),
        };
    }
    assert_eq!(
        frontend.list("restart", "c", "e").await.unwrap(),
        [before.record().clone(), during.record().clone()]
    );
    // Later changes still arrive on the resumed watch.
    let during_record = during.record().clone();
    during.deregister().await.unwrap();
    loop {
        if next_event(&mut watch).await == InstanceEvent::Removed(during_record.clone()) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_accepts_the_right_password_and_names_auth_for_a_wrong_one() {
    let Some(etcd) = Etcd::start() else { return };
    tokio::task::block_in_place(|| etcd.enable_auth("svc", "right-password"));

    let good = EtcdConfig {
        username: Some("svc".into()),
        password: Some("right-password".into()),
        ..config(&etcd)
    };
    let discovery = Discovery::new(Arc::new(EtcdStore::connect(&good).await.unwrap()), TTL);
    let handle = discovery
        .register(
            &EndpointPath::new("auth", "c", "e", 1).unwrap(),
            Transport::new("tcp", "127.0.0.1:1"),
        )
        .await
        .unwrap();
    assert_eq!(
        discovery.list("auth", "c", "e").await.unwrap(),
        [handle.record().clone()]
    );

    let wrong = EtcdConfig {
        password: Some("wrong-password".into()),
        ..good
    };
    let err = EtcdStore::connect(&wrong).await.err().expect("refused");
    let text = err.to_string();
    assert!(matches!(err, DiscoveryError::Auth { .. }), "{err:?}");
    assert!(text.contains("etcd auth failed for user \"svc\""), "{text}");
    assert!(text.contains("ETCD_AUTH_PASSWORD"), "{text}");
}

async fn assert_unreachable_error(url: String) {
    let config = EtcdConfig {
        endpoints: vec![url.clone()],
        connect_timeout: Duration::from_secs(1),
        ..EtcdConfig::default()
    };
    let started = Instant::now();
    let err = within("connecting to a dead endpoint", EtcdStore::connect(&config))
        .await
        .err()
        .expect("no etcd there");
    eprintln!("{url}: refused after {:?}: {err}", started.elapsed());
    assert!(err.is_unavailable(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("etcd at") && text.contains(&url), "{text}");
    assert!(text.contains("ETCD_ENDPOINTS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_endpoint_with_nothing_listening_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_unreachable_error(format!("http://127.0.0.1:{port}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_endpoint_that_never_answers_is_a_clear_error_within_the_timeout() {
    // Accepts connections (the kernel completes the handshake) but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    assert_unreachable_error(url).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_kv_operations() {
    let Some(etcd) = Etcd::start() else { return };
    suite::kv_operations(&EtcdStore::connect(&config(&etcd)).await.unwrap()).await;
}

/// A watch replays from the revision after its snapshot whatever happened before it
/// read on; if etcd compacted those revisions away, it delivers a fresh snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_replays_from_its_revision_and_resnapshots_after_compaction() {
    let Some(etcd) = Etcd::start() else { return };
    let store = EtcdStore::connect(&config(&etcd)).await.unwrap();
    let kv = |k: &str, v: &'static str| KeyValue {
        key: k.to_owned(),
        value: Bytes::from_static(v.as_bytes()),
    };
    let next = async |watch: &mut KvWatch| within("a watch event", watch.next()).await.unwrap();

    let mut replaying = store.watch("/replay/").await.unwrap();
    assert_eq!(next(&mut replaying).await, KvEvent::Snapshot(vec![]));
    store.put("/replay/a", "1".into(), None).await.unwrap();
    store.put("/replay/b", "2".into(), None).await.unwrap();
    store.delete("/replay/a").await.unwrap();
    assert_eq!(
        next(&mut replaying).await,
        KvEvent::Put(kv("/replay/a", "1"))
    );
    assert_eq!(
        next(&mut replaying).await,
        KvEvent::Put(kv("/replay/b", "2"))
    );
    assert_eq!(
        next(&mut replaying).await,
        KvEvent::Delete("/replay/a".into())
    );

    let mut compacted = store.watch("/compact/").await.unwrap();
    assert_eq!(next(&mut compacted).await, KvEvent::Snapshot(vec![]));
    store.put("/compact/a", "1".into(), None).await.unwrap();
    store.put("/compact/b", "2".into(), None).await.unwrap();
    store.delete("/compact/a").await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    let revision = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    assert_eq!(
        next(&mut compacted).await,
        KvEvent::Snapshot(vec![kv("/compact/b", "2")])
    );
    store.put("/compact/c", "3".into(), None).await.unwrap();
    assert_eq!(
        next(&mut compacted).await,
        KvEvent::Put(kv("/compact/c", "3"))
    );
}

/// TLS with a client certificate, configured as `ETCD_AUTH_CA`,
/// `ETCD_AUTH_CLIENT_CERT` and `ETCD_AUTH_CLIENT_KEY` would configure it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    let Some(etcd) = Etcd::start_tls() else {
        return;
    };
    let files = etcd.tls_files().unwrap().clone();
    let url = etcd.url();
    let lookup = |var: &str| -> Option<std::ffi::OsString> {
        match var {
            "DYN_DISCOVERY_BACKEND" => Some("etcd".into()),
            "ETCD_ENDPOINTS" => Some(url.clone().into()),
            "ETCD_AUTH_CA" => Some(files.ca.clone().into()),
            "ETCD_AUTH_CLIENT_CERT" => Some(files.client_cert.clone().into()),
            "ETCD_AUTH_CLIENT_KEY" => Some(files.client_key.clone().into()),
            _ => None,
        }
    };
    let config = DiscoveryConfig::from_lookup(lookup).unwrap();
    let discovery = Discovery::connect(&config).await.unwrap();
    let handle = discovery
        .register(
            &EndpointPath::new("tls", "c", "e", 1).unwrap(),
            Transport::new("tcp", "127.0.0.1:1"),
        )
        .await
        .unwrap();
    assert_eq!(
        discovery.list("tls", "c", "e").await.unwrap(),
        [handle.record().clone()]
    );

    let plain = EtcdConfig {
        endpoints: vec![url.replace("https://", "http://")],
        ..config.etcd.clone()
    };
    let err = EtcdStore::connect(&plain).await.err().expect("refused");
    assert!(err.to_string().contains("https:// URLs"), "{err}");
    let missing = EtcdConfig {
        ca: Some(files.ca.with_file_name("missing.pem")),
        ..config.etcd
    };
    let err = EtcdStore::connect(&missing).await.err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("missing.pem") && text.contains("ETCD_AUTH_CA"),
        "{text}"
    );
}
