//! `EndpointClient`: routing that follows discovery, over real TCP request-plane servers
//! on 127.0.0.1, with the memory and file backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::codec::HeaderMap;
use planewire::planes::discovery::{
    Discovery, FileStore, KvStore, MemoryStore, RegistrationHandle, Transport,
};
use planewire::planes::request::{
    EndpointPath, PlaneClient, Request, RequestPlaneServer, unary_handler,
};
use planewire::planes::routing::{EndpointClient, EndpointClientConfig, Route, RouteError};
use planewire::tcp::{ServerConfig, TcpServer};
use planewire_testkit::tcp::*;
use planewire_testkit::{PATIENCE, within};

const TTL: Duration = Duration::from_secs(10);

/// A worker: a server hosting `ns/backend/generate` as `instance_id`, counting calls.
struct Instance {
    server: Option<TcpServer>,
    calls: Arc<AtomicUsize>,
    registration: Option<RegistrationHandle>,
}

impl Instance {
    async fn start(discovery: &Discovery, ns: &str, id: u64) -> Self {
        let server = TcpServer::bind(ServerConfig {
            tcp: tcp_config(),
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let path = EndpointPath::new(ns, "backend", "generate", id).unwrap();
        server
            .register(
                &path,
                unary_handler(move |req: Request| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move {
                        Ok(Bytes::from(format!(
                            "{id:x}:{}",
                            String::from_utf8_lossy(&req.payload)
                        )))
                    }
                }),
            )
            .await
            .unwrap();
        let registration = discovery
            .register(&path, Transport::new("tcp", server.address(&path)))
            .await
            .unwrap();
        Self {
            server: Some(server),
            calls,
            registration: Some(registration),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    fn address(&self) -> String {
        self.server.as_ref().unwrap().local_addr().to_string()
    }
}

/// One Discovery per backend: the workers' and the frontend's share the store.
async fn backends(dir: &tempfile::TempDir) -> Vec<(&'static str, Discovery, Discovery)> {
    let memory: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    // Each open is a separate handle on the directory, as another process would have.
    let file = async || Arc::new(FileStore::open(dir.path()).await.unwrap()) as Arc<dyn KvStore>;
    vec![
        (
            "memory",
            Discovery::new(Arc::clone(&memory), TTL),
            Discovery::new(memory, TTL),
        ),
        (
            "file",
            Discovery::new(file().await, TTL),
            Discovery::new(file().await, TTL),
        ),
    ]
}

async fn endpoint_client(
    discovery: &Discovery,
    ns: &str,
    config: EndpointClientConfig,
) -> EndpointClient {
    EndpointClient::new(
        discovery,
        ns,
        "backend",
        "generate",
        PlaneClient::tcp(Arc::new(client())),
        config,
    )
    .await
    .unwrap()
}

async fn call(client: &EndpointClient, payload: &str) -> Result<Bytes, RouteError> {
    let mut responses = client.call(payload.to_owned()).await?;
    let reply = within("a response", responses.next())
        .await
        .expect("one response")?;
    Ok(reply)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_300_calls_over_three_instances() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, workers, frontend) in backends(&dir).await {
        let ns = format!("rr-{backend}");
        let mut instances = Vec::new();
        for id in [0xa, 0xb, 0xc] {
            instances.push(Instance::start(&workers, &ns, id).await);
        }
        let client = endpoint_client(&frontend, &ns, EndpointClientConfig::default()).await;
        assert_eq!(
            client.instance_ids(),
            [0xa, 0xb, 0xc],
            "{backend}: known before the first call"
        );
        for i in 0..300 {
            let reply = call(&client, &i.to_string()).await.unwrap();
            assert!(
                reply.ends_with(format!(":{i}").as_bytes()),
                "{backend}: {reply:?}"
            );
        }
        let counts: Vec<usize> = instances.iter().map(Instance::calls).collect();
        assert_eq!(counts, [100, 100, 100], "{backend}: round robin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_direct_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, workers, frontend) = backends(&dir).await.remove(0);
    let ns = "routes";
    let instances = [
        Instance::start(&workers, ns, 1).await,
        Instance::start(&workers, ns, 2).await,
        Instance::start(&workers, ns, 3).await,
    ];
    let random = EndpointClientConfig {
        route: Route::Random,
        ..EndpointClientConfig::default()
    };
    let client = endpoint_client(&frontend, ns, random).await;
    for _ in 0..300 {
        call(&client, "r").await.unwrap();
    }
    assert!(
        instances.iter().all(|i| i.calls() > 0),
        "random reached every instance: {:?}",
        instances.iter().map(Instance::calls).collect::<Vec<_>>()
    );
    let before = instances[1].calls();
    for _ in 0..10 {
        let mut responses = client
            .call_with(Route::Instance(2), Bytes::from("d"), HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(responses.next().await.unwrap().unwrap(), "2:d");
    }
    assert_eq!(instances[1].calls(), before + 10);
    let Err(err) = client
        .call_with(Route::Instance(0x77), Bytes::from("d"), HeaderMap::new())
        .await
    else {
        panic!("an unknown instance id was routed")
    };
    assert!(
        matches!(
            err,
            RouteError::UnknownInstance {
                instance_id: 0x77,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("instance 77 of routes/backend/generate is not registered"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_instance_gets_no_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, workers, frontend) in backends(&dir).await {
        let ns = format!("dereg-{backend}");
        let mut instances = Vec::new();
        for id in [1, 2, 3] {
            instances.push(Instance::start(&workers, &ns, id).await);
        }
        let client = endpoint_client(&frontend, &ns, EndpointClientConfig::default()).await;
        for _ in 0..30 {
            call(&client, "x").await.unwrap();
        }
        instances[0]
            .registration
            .take()
            .unwrap()
            .deregister()
            .await
            .unwrap();
        wait_until("the removal to reach the client", || {
            client.instance_ids() == [2, 3]
        })
        .await;
        let before = instances[0].calls();
        for _ in 0..60 {
            call(&client, "x").await.unwrap();
        }
        assert_eq!(
            instances[0].calls(),
            before,
            "{backend}: no request after removal"
        );
        assert_eq!(instances[1].calls() + instances[2].calls(), 20 + 60);
    }
}

/// A worker that dies without deregistering: its record stays until the lease expires,
/// so calls still pick it; each such call fails to connect and goes to another
/// instance, and the dead one is then skipped. No call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_retried_elsewhere_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, workers, frontend) in backends(&dir).await {
        let ns = format!("dead-{backend}");
        let mut instances = Vec::new();
        for id in [1, 2, 3] {
            instances.push(Instance::start(&workers, &ns, id).await);
        }
        let tcp = Arc::new(client());
        let client = EndpointClient::new(
            &frontend,
            &ns,
            "backend",
            "generate",
            PlaneClient::tcp(Arc::clone(&tcp)),
            EndpointClientConfig::default(),
        )
        .await
        .unwrap();
        for _ in 0..30 {
            call(&client, "warm").await.unwrap();
        }
        // Crash instance 1: the server goes, its registration is leaked, not dropped.
        let dead = &mut instances[0];
        let dead_address = dead.address();
        std::mem::forget(dead.registration.take());
        drop(dead.server.take());
        wait_until("the dead server's port to close", || {
            std::net::TcpStream::connect(&dead_address).is_err()
        })
        .await;
        wait_until("the client to see its connection close", || {
            tcp.connection_count(&dead_address) == 0
        })
        .await;

        for i in 0..120 {
            call(&client, "after")
                .await
                .unwrap_or_else(|e| panic!("{backend}: call {i} after the crash failed: {e}"));
        }
        assert_eq!(
            client.instance_ids(),
            [1, 2, 3],
            "{backend}: still registered"
        );
        assert_eq!(
            client.skipped_instance_ids(),
            [1],
            "{backend}: skipped after the failure"
        );
        assert_eq!(instances[1].calls() + instances[2].calls(), 20 + 120);
    }
}

#[tokio::test]
async fn no_instances_fails_fast_or_waits_if_asked() {
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), TTL);
    let client = endpoint_client(&discovery, "empty", EndpointClientConfig::default()).await;
    let err = call(&client, "x").await.unwrap_err();
    assert!(matches!(err, RouteError::NoInstances { waited: None, .. }));
    assert!(
        err.to_string()
            .starts_with("no instances for empty/backend/generate"),
        "{err}"
    );

    let patient = EndpointClientConfig {
        wait_for_instances: Some(PATIENCE),
        ..EndpointClientConfig::default()
    };
    let client = endpoint_client(&discovery, "later", patient).await;
    let worker = discovery.clone();
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Instance::start(&worker, "later", 5).await
    });
    let reply = call(&client, "waited").await.unwrap();
    assert_eq!(reply, "5:waited");
    drop(starter.await.unwrap());

    let brief = EndpointClientConfig {
        wait_for_instances: Some(Duration::from_millis(50)),
        ..EndpointClientConfig::default()
    };
    let client = endpoint_client(&discovery, "never", brief).await;
    let err = call(&client, "x").await.unwrap_err();
    assert!(err.to_string().contains("(waited 50ms)"), "{err}");
}
