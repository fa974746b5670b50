//! `Runtime`: the planes built from configuration, the namespace/component/endpoint API,
//! shutdown, and the errors of bad or unreachable settings. Servers and sockets on
//! 127.0.0.1 only.

#[cfg(feature = "nats")]
use planewire_testkit::nats;

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use futures::StreamExt;
use planewire::planes::request::{Request, unary_handler};
use planewire::runtime::{Runtime, RuntimeConfig, RuntimeError};

use planewire_testkit::within;

/// The configuration `vars` give, with every server-side socket on 127.0.0.1.
fn config(vars: &[(&str, &str)]) -> Result<RuntimeConfig, RuntimeError> {
    let mut map: HashMap<String, OsString> = [
        ("DYN_TCP_RPC_HOST", "127.0.0.1"),
        ("DYN_EVENT_PLANE_HOST", "127.0.0.1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), OsString::from(v)))
    .collect();
    map.extend(vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))));
    Ok(RuntimeConfig::from_lookup(|k| map.get(k).cloned())?)
}

async fn runtime(vars: &[(&str, &str)]) -> Runtime {
    Runtime::with_config(config(vars).unwrap()).await.unwrap()
}

#[tokio::test]
async fn one_process_serves_calls_and_publishes() {
    let rt = runtime(&[
        ("DYN_DISCOVERY_BACKEND", "mem"),
        ("DYN_EVENT_PLANE", "inproc"),
    ])
    .await;
    let component = rt.namespace("test").component("worker");
    let generate = component.endpoint("generate");
    let served = generate
        .serve(unary_handler(|req: Request| async move { Ok(req.payload) }))
        .await
        .unwrap();
    assert!(
        served.address().starts_with("127.0.0.1:"),
        "{}",
        served.address()
    );
    let client = generate.client().await.unwrap();
    assert_eq!(client.instance_ids(), [served.instance_id()]);
    let mut responses = client.call("hi").await.unwrap();
    assert_eq!(responses.next().await.unwrap().unwrap(), "hi");

    let mut events = component.subscriber("load").await.unwrap();
    let publisher = component.publisher("load").await.unwrap();
    publisher.publish("busy").await.unwrap();
    let event = within("the event", events.next()).await.unwrap();
    assert_eq!(event.payload, "busy");
    assert_eq!(event.publisher_id, publisher.publisher().id());
    // The endpoint's scope is narrower than the component's: a separate topic space.
    let mut narrow = generate.subscriber("load").await.unwrap();
    generate
        .publisher("load")
        .await
        .unwrap()
        .publish("mine")
        .await
        .unwrap();
    assert_eq!(
        within("the endpoint's event", narrow.next())
            .await
            .unwrap()
            .payload,
        "mine"
    );
    assert!(futures::FutureExt::now_or_never(events.next()).is_none());
    rt.shutdown().await;
}

/// A worker and a frontend as two runtimes sharing file discovery and zmq events (the
/// default; inproc events, without `zmq`, do not cross runtimes): the frontend finds the
/// worker, calls it, hears its events, and sees it go when it shuts down.
#[cfg(feature = "zmq")]
#[tokio::test]
async fn worker_and_frontend_meet_through_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().to_str().unwrap();
    let vars = [("DYN_DISCOVERY_BACKEND", "file"), ("DYN_FILE_KV", kv)];
    let worker = runtime(&vars).await;
    let frontend = runtime(&vars).await;
    let backend = worker.namespace("dyn").component("backend");
    backend
        .endpoint("generate")
        .serve(unary_handler(|req: Request| async move {
            Ok(bytes::Bytes::from(
                [b"worker:", req.payload.as_ref()].concat(),
            ))
        }))
        .await
        .unwrap();
    let generate = frontend
        .namespace("dyn")
        .component("backend")
        .endpoint("generate");
    let client = generate.client().await.unwrap();
    let mut responses = client.call("x").await.unwrap();
    assert_eq!(responses.next().await.unwrap().unwrap(), "worker:x");

    let mut kv_events = frontend
        .namespace("dyn")
        .component("backend")
        .subscriber("kv")
        .await
        .unwrap();
    let publisher = backend.publisher("kv").await.unwrap();
    // Publish until the subscription has connected to the worker's socket.
    within("an event across runtimes", async {
        loop {
            publisher.publish("stored").await.unwrap();
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(100), kv_events.next()).await
            {
                assert_eq!(event.payload, "stored");
                return;
            }
        }
    })
    .await;

    worker.shutdown().await;
    within("the worker to leave discovery", async {
        while !client.instance_ids().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let err = backend
        .endpoint("other")
        .serve(unary_handler(|req: Request| async move { Ok(req.payload) }))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Closed), "{err}");
    frontend.shutdown().await;
}

#[tokio::test]
async fn stopping_an_endpoint_withdraws_it() {
    let rt = runtime(&[
        ("DYN_DISCOVERY_BACKEND", "mem"),
        ("DYN_EVENT_PLANE", "none"),
    ])
    .await;
    let endpoint = rt.namespace("test").component("worker").endpoint("e");
    let served = endpoint
        .serve(unary_handler(|req: Request| async move { Ok(req.payload) }))
        .await
        .unwrap();
    let client = endpoint.client().await.unwrap();
    assert_eq!(client.instance_ids().len(), 1);
    served.stop().await.unwrap();
    within("the instance to go", async {
        while !client.instance_ids().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let Err(err) = client.call("x").await else {
        panic!("a stopped endpoint still answers");
    };
    assert!(
        err.to_string().contains("no instances for test/worker/e"),
        "{err}"
    );
}

#[test]
fn bad_values_name_the_variable_and_the_choices() {
    for (var, value, expected) in [
        ("DYN_REQUEST_PLANE", "grpc", "one of: tcp, nats"),
        ("DYN_DISCOVERY_BACKEND", "consul", "one of: file, mem, etcd"),
        (
            "DYN_EVENT_PLANE",
            "kafka",
            "one of: zmq, nats, inproc, none",
        ),
        ("DYN_TCP_POOL_SIZE", "lots", "a positive integer"),
    ] {
        let err = config(&[(var, value)]).unwrap_err().to_string();
        assert!(err.contains(var) && err.contains(expected), "{var}: {err}");
    }
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn an_unreachable_nats_server_is_named_within_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let config = config(&[
        ("DYN_DISCOVERY_BACKEND", "mem"),
        ("DYN_EVENT_PLANE", "nats"),
        ("NATS_SERVER", &url),
        ("NATS_CONNECT_TIMEOUT", "1"),
    ])
    .unwrap();
    let err = within("the connect timeout", Runtime::with_config(config))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("NATS") && err.contains(&url), "{err}");
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn an_unreachable_etcd_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let config = config(&[("DYN_DISCOVERY_BACKEND", "etcd"), ("ETCD_ENDPOINTS", &url)]).unwrap();
    let err = within("the connect timeout", Runtime::with_config(config))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcd") && err.contains(&url), "{err}");
}

/// Credentials from `NATS_AUTH_*` reach the connection the NATS request plane and the
/// NATS event plane share: with them a worker and a caller meet over NATS; with a wrong
/// password the runtime does not start and says which settings to check.
#[cfg(feature = "nats")]
#[tokio::test]
async fn nats_credentials_reach_the_request_plane() {
    use nats::{NatsOptions, NatsServer};

    let Some(server) = NatsServer::start_with(NatsOptions {
        user_password: Some(("planewire".into(), "s3cret".into())),
        ..NatsOptions::default()
    }) else {
        return;
    };
    let url = server.url();
    let vars = |password: &'static str| {
        config(&[
            ("DYN_DISCOVERY_BACKEND", "mem"),
            ("DYN_REQUEST_PLANE", "nats"),
            ("DYN_EVENT_PLANE", "nats"),
            ("NATS_SERVER", &url),
            ("NATS_AUTH_USERNAME", "planewire"),
            ("NATS_AUTH_PASSWORD", password),
        ])
        .unwrap()
    };

    let rt = Runtime::with_config(vars("s3cret")).await.unwrap();
    let generate = rt
        .namespace("auth")
        .component("worker")
        .endpoint("generate");
    let served = generate
        .serve(unary_handler(|req: Request| async move { Ok(req.payload) }))
        .await
        .unwrap();
    assert!(
        served.address().starts_with("pw.rq."),
        "{}",
        served.address()
    );
    let client = generate.client().await.unwrap();
    let mut responses = within("a call over NATS", client.call("over nats"))
        .await
        .unwrap();
    let reply = within("the reply", responses.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, "over nats");
    rt.shutdown().await;

    let err = within(
        "the refused connection",
        Runtime::with_config(vars("wrong")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("NATS_AUTH_"), "{err}");
}
