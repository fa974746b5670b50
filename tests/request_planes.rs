//! The request-plane suite against TCP and NATS, and the NATS plane's own behaviour
//! (service tooling, max_payload, drain, garbage on the wire) against a real nats-server.

mod common;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/request_suite.rs"]
mod suite;

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use planewire::codec::ErrorCode;
use planewire::config::TcpConfig;
use planewire::nats_request::{
    NatsClientConfig, NatsRequestClient, NatsRequestServer, NatsServerConfig, subject,
};
use planewire::planes::{
    EndpointPath, HandlerError, Request, RequestError, RequestPlaneClient, RequestPlaneServer,
    unary_handler,
};
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{path, tcp_config, within};
use nats::{NatsOptions, NatsServer};

/// Limit the over-limit tests use on both transports.
const SMALL_LIMIT: usize = 64 * 1024;

async fn tcp_pair(client_config: TcpConfig) -> (TcpServer, TcpClient) {
    let server = TcpServer::bind(ServerConfig {
        tcp: tcp_config(),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    (server, TcpClient::new(client_config).unwrap())
}

async fn tcp_default() -> (TcpServer, TcpClient) {
    tcp_pair(tcp_config()).await
}

async fn nats_client(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url())
        .await
        .expect("connect to nats-server")
}

async fn nats_pair_with(
    nats: &NatsServer,
    server_config: NatsServerConfig,
    client_config: NatsClientConfig,
) -> (NatsRequestServer, NatsRequestClient) {
    // Server and client on separate connections, as in two processes.
    let server = NatsRequestServer::new(nats_client(nats).await, server_config)
        .await
        .unwrap();
    let client = NatsRequestClient::new(nats_client(nats).await, client_config)
        .await
        .unwrap();
    (server, client)
}

async fn nats_pair(nats: &NatsServer) -> (NatsRequestServer, NatsRequestClient) {
    nats_pair_with(
        nats,
        NatsServerConfig::default(),
        NatsClientConfig::default(),
    )
    .await
}

/// Runs a suite body against TCP and against NATS (skipped without nats-server).
macro_rules! on_both_planes {
    ($name:ident, |$server:ident, $client:ident, $address:ident| $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                let ($server, $client) = tcp_default().await;
                let $address = |p: &EndpointPath| $server.address(p);
                $body.await;
                $server.shutdown().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                let Some(nats) = NatsServer::start() else {
                    return;
                };
                let ($server, $client) = nats_pair(&nats).await;
                let $address = |p: &EndpointPath| $server.address(p);
                $body.await;
                $server.shutdown().await;
            }
        }
    };
}

on_both_planes!(unary_echo, |server, client, address| suite::unary_echo(
    &server, &client, address
));
on_both_planes!(streaming_in_order, |server, client, address| {
    suite::streaming_in_order(&server, &client, address)
});
on_both_planes!(thousand_concurrent_calls, |server, client, address| {
    suite::concurrent_calls(&server, &client, address, 1000)
});
on_both_planes!(cancellation_reaches_handler, |server, client, address| {
    suite::cancellation_reaches_handler(&server, &client, address)
});
on_both_planes!(unknown_endpoint, |server, client, address| {
    suite::unknown_endpoint(&server, &client, address)
});
on_both_planes!(handler_error, |server, client, address| {
    suite::handler_error(&server, &client, address)
});

mod timeout {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        let (server, client) = tcp_pair(TcpConfig {
            request_timeout: suite::SHORT_TIMEOUT,
            ..tcp_config()
        })
        .await;
        suite::timeout(&server, &client, |p| server.address(p)).await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats() {
        let Some(nats) = NatsServer::start() else {
            return;
        };
        let client_config = NatsClientConfig {
            request_timeout: suite::SHORT_TIMEOUT,
        };
        let (server, client) =
            nats_pair_with(&nats, NatsServerConfig::default(), client_config).await;
        suite::timeout(&server, &client, |p| server.address(p)).await;
        server.shutdown().await;
    }
}

mod over_limit {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        let (server, client) = tcp_pair(TcpConfig {
            max_message_size: SMALL_LIMIT,
            ..tcp_config()
        })
        .await;
        suite::over_limit(&server, &client, |p| server.address(p), 2 * SMALL_LIMIT).await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats() {
        let Some(nats) = NatsServer::start_with(NatsOptions {
            max_payload: Some(SMALL_LIMIT),
            ..NatsOptions::default()
        }) else {
            return;
        };
        let (server, client) = nats_pair(&nats).await;
        suite::over_limit(&server, &client, |p| server.address(p), 2 * SMALL_LIMIT).await;
        server.shutdown().await;
    }
}

#[test]
fn subjects_escape_names_and_end_in_the_hex_instance_id() {
    let path = EndpointPath::new("dyn ns", "vllm.worker", "generate", 0xBEEF).unwrap();
    assert_eq!(subject(&path), "pw.rq.dyn~20ns.vllm~2Eworker.generate.beef");
}

async fn plain_request(client: &async_nats::Client, subject: &str) -> serde_json::Value {
    let reply = within(
        "a $SRV reply",
        client.request(subject.to_owned(), Bytes::new()),
    )
    .await
    .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_service_tooling_sees_the_endpoint_and_counts_requests_and_errors() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client) = nats_pair(&nats).await;
    let echo = path("echo");
    server
        .register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    let fails = path("fails");
    server
        .register(
            &fails,
            unary_handler(|_req: Request| async move { Err::<Bytes, _>(HandlerError::from("no")) }),
        )
        .await
        .unwrap();
    for i in 0..5 {
        let request = Request::new(&echo, Bytes::from(format!("{i}")));
        // Streams of several responses still count once.
        client.unary(&server.address(&echo), request).await.unwrap();
    }
    client
        .unary(&server.address(&fails), Request::new(&fails, Bytes::new()))
        .await
        .unwrap_err();

    let tool = nats_client(&nats).await;
    let ping = plain_request(&tool, "$SRV.PING").await;
    assert_eq!(ping["name"], "planewire", "{ping}");
    let info = plain_request(&tool, "$SRV.INFO.planewire").await;
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&subject(&echo).as_str()), "{info}");

    let stats = plain_request(&tool, "$SRV.STATS.planewire").await;
    let endpoint = |s: &str| {
        stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["subject"] == s)
            .cloned()
            .unwrap_or_else(|| panic!("{s} not in {stats}"))
    };
    assert_eq!(endpoint(&subject(&echo))["num_requests"], 5, "{stats}");
    assert_eq!(endpoint(&subject(&echo))["num_errors"], 0, "{stats}");
    assert_eq!(endpoint(&subject(&fails))["num_errors"], 1, "{stats}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mib_request_against_a_default_nats_server_is_refused_naming_the_fix() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let client_config = NatsClientConfig {
        // Long enough that a timeout could not pass for the size error.
        request_timeout: Duration::from_secs(30),
    };
    let (server, client) = nats_pair_with(&nats, NatsServerConfig::default(), client_config).await;
    let echo = path("echo");
    server
        .register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    let request = Request::new(&echo, Bytes::from(vec![0u8; 2 * 1024 * 1024]));
    let err = client
        .unary(&server.address(&echo), request)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::PayloadTooLarge { max: 1048576, .. }),
        "got {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("max_payload=1048576"), "{text}");
    assert!(text.contains("DYN_REQUEST_PLANE=tcp"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_max_payload_is_an_error_marker_not_a_timeout() {
    let Some(nats) = NatsServer::start_with(NatsOptions {
        max_payload: Some(SMALL_LIMIT),
        ..NatsOptions::default()
    }) else {
        return;
    };
    let client_config = NatsClientConfig {
        request_timeout: Duration::from_secs(30),
    };
    let (server, client) = nats_pair_with(&nats, NatsServerConfig::default(), client_config).await;
    let big = path("big");
    server
        .register(
            &big,
            unary_handler(
                |_req: Request| async move { Ok(Bytes::from(vec![1u8; 2 * SMALL_LIMIT])) },
            ),
        )
        .await
        .unwrap();
    let err = within(
        "the size error",
        client.unary(&server.address(&big), Request::new(&big, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "got {err}");
    assert!(err.to_string().contains("DYN_REQUEST_PLANE=tcp"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_shutdown_drains_an_in_flight_request() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client) = nats_pair(&nats).await;
    let slow = path("slow");
    let (started_tx, mut started) = mpsc::channel::<()>(1);
    let handler = unary_handler(move |_req: Request| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Bytes::from_static(b"finished"))
        }
    });
    server.register(&slow, handler).await.unwrap();
    let address = server.address(&slow);
    let call = tokio::spawn({
        let client = client.clone();
        let address = address.clone();
        async move {
            client
                .unary(&address, Request::new(&path("slow"), Bytes::new()))
                .await
        }
    });
    within("the handler to start", started.recv())
        .await
        .unwrap();
    within("shutdown", server.shutdown()).await;
    assert_eq!(
        call.await.unwrap().unwrap(),
        Bytes::from_static(b"finished")
    );
    // Shut down: nothing serves the subject any more.
    let err = within(
        "a call after shutdown",
        client.unary(&address, Request::new(&slow, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownEndpoint), "got {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_overloaded_endpoint_answers_at_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let server_config = NatsServerConfig {
        max_concurrent_requests: 1,
        ..NatsServerConfig::default()
    };
    let (server, client) = nats_pair_with(&nats, server_config, NatsClientConfig::default()).await;
    let busy = path("busy");
    let (started_tx, mut started) = mpsc::channel::<()>(1);
    let handler = move |_req: Request, _cancel: CancellationToken| {
        let started_tx = started_tx.clone();
        stream::once(async move {
            let _ = started_tx.send(()).await;
            std::future::pending::<Result<Bytes, HandlerError>>().await
        })
    };
    server.register(&busy, handler).await.unwrap();
    let address = server.address(&busy);
    let first = client
        .request(&address, Request::new(&busy, Bytes::new()))
        .await
        .unwrap();
    within("the handler to start", started.recv())
        .await
        .unwrap();
    let err = within(
        "the overload error",
        client.unary(&address, Request::new(&busy, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "got {err}");
    assert!(err.is_retryable());
    drop(first);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_an_endpoint_subject_does_not_hurt_the_server() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client) = nats_pair(&nats).await;
    let echo = path("echo");
    server
        .register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    let address = server.address(&echo);
    // No reply subject, binary junk, on the endpoint and its cancel subject.
    nats.publish_raw(&address, &[0xff, 0x00, 0x13, 0x37]);
    nats.publish_raw(&format!("{address}.cancel"), &[0xff, 0xfe]);
    nats.publish_raw(&format!("{address}.cancel"), b"_INBOX.nobody.7");
    // A reply subject nobody listens on and a nonsense deadline header.
    let raw = nats_client(&nats).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Pw-Timeout-Ms", "tomorrow");
    raw.publish_with_reply_and_headers(address.clone(), "_INBOX.nobody.1", headers, "x".into())
        .await
        .unwrap();
    // Replies to requests the client never made.
    let inbox_garbage = raw.new_inbox();
    raw.publish(format!("{inbox_garbage}.99"), "stray".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();

    let reply = within(
        "a good request after the garbage",
        client.unary(
            &address,
            Request::new(&echo, Bytes::from_static(b"still here")),
        ),
    )
    .await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"still here"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_midway_cancels_the_handler_over_nats() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client) = nats_pair(&nats).await;
    let ticks = path("ticks");
    let (cancelled_tx, mut cancelled) = mpsc::channel::<()>(1);
    let handler = move |_req: Request, cancel: CancellationToken| {
        let cancelled_tx = cancelled_tx.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            let _ = cancelled_tx.send(()).await;
        });
        stream::unfold(0u64, |i| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok(Bytes::from(i.to_string())), i + 1))
        })
    };
    server.register(&ticks, handler).await.unwrap();
    let mut responses = client
        .request(&server.address(&ticks), Request::new(&ticks, Bytes::new()))
        .await
        .unwrap();
    for i in 0..3 {
        let item = within("a tick", responses.next()).await.unwrap().unwrap();
        assert_eq!(item, Bytes::from(i.to_string()));
    }
    drop(responses);
    within("the handler's token to fire", cancelled.recv())
        .await
        .unwrap();
    within("the in-flight map to empty", async {
        while client.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.shutdown().await;
}
