//! The NATS request plane's own behaviour against a real nats-server: service tooling,
//! max_payload, garbage on the wire, lost links, overflowing streams. What
//! every plane shares is in `request_planes.rs`.

use planewire_testkit::nats;
use planewire_testkit::proxy;

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use planewire::codec::ErrorCode;
use planewire::planes::request::nats::{
    NatsRequestClient, NatsRequestConfig, NatsRequestServer, NatsResponses, cancel_subject, subject,
};
use planewire::planes::request::{
    EndpointPath, Handler, HandlerError, Request, RequestError, RequestPlaneClient,
    RequestPlaneServer, ServerLimits, unary_handler,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use nats::{NatsOptions, NatsServer};
use planewire_testkit::tcp::path;
use planewire_testkit::within;

/// Limit the over-limit tests use on both transports.
const SMALL_LIMIT: usize = 64 * 1024;

async fn nats_client(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url())
        .await
        .expect("connect to nats-server")
}

async fn nats_pair_with(
    nats: &NatsServer,
    server_config: ServerLimits,
    client_config: NatsRequestConfig,
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
    nats_pair_with(nats, ServerLimits::default(), NatsRequestConfig::default()).await
}

/// A NATS server and client, with an echo endpoint registered.
async fn nats_echo(nats: &NatsServer) -> (NatsRequestServer, NatsRequestClient, EndpointPath) {
    nats_echo_with(nats, ServerLimits::default(), NatsRequestConfig::default()).await
}

async fn nats_echo_with(
    nats: &NatsServer,
    server_config: ServerLimits,
    client_config: NatsRequestConfig,
) -> (NatsRequestServer, NatsRequestClient, EndpointPath) {
    let (server, client) = nats_pair_with(nats, server_config, client_config).await;
    let echo = path("echo");
    server
        .register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    (server, client, echo)
}

/// Wraps `handler` so that each call's cancellation token, once fired, sends on the
/// returned receiver. A watcher task does it: on cancel the server drops the handler's
/// stream, so the stream itself cannot report.
fn reporting_cancel<S>(
    handler: impl Fn(Request) -> S + Send + Sync + 'static,
) -> (impl Handler, mpsc::Receiver<()>)
where
    S: futures::Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
{
    let (cancelled_tx, cancelled) = mpsc::channel(1);
    let wrapped = move |req: Request, cancel: CancellationToken| {
        let cancelled_tx = cancelled_tx.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            let _ = cancelled_tx.send(()).await;
        });
        handler(req)
    };
    (wrapped, cancelled)
}

/// "0", "1", "2", … one every `every`, for ever.
fn tick_stream(every: Duration) -> impl futures::Stream<Item = Result<Bytes, HandlerError>> {
    stream::unfold(0u64, move |i| async move {
        tokio::time::sleep(every).await;
        Some((Ok(Bytes::from(i.to_string())), i + 1))
    })
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
    let (server, client, echo) = nats_echo(&nats).await;
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
    let client_config = NatsRequestConfig {
        // Long enough that a timeout could not pass for the size error.
        request_timeout: Duration::from_secs(30),
    };
    let (server, client, echo) =
        nats_echo_with(&nats, ServerLimits::default(), client_config).await;
    let request = Request::new(&echo, Bytes::from(vec![0u8; 2 * 1024 * 1024]));
    let err = client
        .unary(&server.address(&echo), request)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::TooLarge { max: 1048576, .. }),
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
    let client_config = NatsRequestConfig {
        request_timeout: Duration::from_secs(30),
    };
    let (server, client) = nats_pair_with(&nats, ServerLimits::default(), client_config).await;
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

/// A caller that stops reading loses its own stream once its buffer is full: it gets
/// the responses buffered so far, then ResponseOverflow; the same client's other
/// requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_stream_nobody_reads_overflows_alone() {
    use planewire::planes::request::nats::STREAM_BUFFER;

    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client, echo) = nats_echo(&nats).await;
    let flood = path("flood");
    let handler = |_req: Request, _cancel: CancellationToken| {
        stream::iter((0..STREAM_BUFFER * 3).map(|i| Ok(Bytes::from(i.to_string()))))
    };
    server.register(&flood, handler).await.unwrap();
    let mut flooded = client
        .request(&server.address(&flood), Request::new(&flood, Bytes::new()))
        .await
        .unwrap();
    // The router gives the stream up (and forgets it) once a reply finds its buffer full.
    within("the stream to overflow", async {
        while client.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let reply = within(
        "an echo beside the overflowed stream",
        client.unary(
            &server.address(&echo),
            Request::new(&echo, Bytes::from_static(b"fine")),
        ),
    )
    .await
    .unwrap();
    assert_eq!(reply, Bytes::from_static(b"fine"));

    for i in 0..STREAM_BUFFER {
        let item = flooded.next().await.unwrap().unwrap();
        assert_eq!(item, Bytes::from(i.to_string()), "in order, none lost");
    }
    let err = flooded.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, RequestError::ResponseOverflow { buffered } if buffered == STREAM_BUFFER),
        "{err:?}"
    );
    assert!(flooded.next().await.is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_an_endpoint_subject_does_not_hurt_the_server() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client, echo) = nats_echo(&nats).await;
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
    let (handler, mut cancelled) = reporting_cancel(|_| tick_stream(Duration::from_millis(10)));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_an_internal_error_and_unregister_stops_routing() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client) = nats_pair(&nats).await;
    let boom = path("boom");
    let handler = unary_handler(|req: Request| async move {
        if req.payload.is_empty() {
            panic!("handler bug");
        }
        Ok(req.payload)
    });
    server.register(&boom, handler).await.unwrap();
    let address = server.address(&boom);
    let err = within(
        "the panic error",
        client.unary(&address, Request::new(&boom, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Internal), "got {err}");
    let ok = Request::new(&boom, Bytes::from_static(b"fine"));
    assert_eq!(
        client.unary(&address, ok).await.unwrap(),
        Bytes::from_static(b"fine")
    );

    assert!(server.unregister(&boom));
    assert!(!server.unregister(&boom));
    // A request racing the unsubscribe may be lost (see `unregister`): poll with a short
    // timeout until the subject has no responders.
    let short = NatsRequestClient::new(
        nats_client(&nats).await,
        NatsRequestConfig {
            request_timeout: Duration::from_millis(300),
        },
    )
    .await
    .unwrap();
    within("the endpoint to unsubscribe", async {
        loop {
            let request = Request::new(&boom, Bytes::from_static(b"x"));
            match short.unary(&address, request).await {
                Err(err) if err.code() == Some(ErrorCode::UnknownEndpoint) => break,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    // Registering the path again works.
    let echo = unary_handler(|req: Request| async move { Ok(req.payload) });
    server.register(&boom, echo).await.unwrap();
    let again = Request::new(&boom, Bytes::from_static(b"again"));
    assert_eq!(
        client.unary(&address, again).await.unwrap(),
        Bytes::from_static(b"again")
    );
    server.shutdown().await;
}

/// A client that waits far longer than any test (600 s): a stream that fails did not
/// time out.
async fn patient_client(nats: &NatsServer) -> NatsRequestClient {
    let config = NatsRequestConfig {
        request_timeout: Duration::from_secs(600),
    };
    NatsRequestClient::new(nats_client(nats).await, config)
        .await
        .unwrap()
}

/// Registers an endpoint ticking every 20 ms on `server`, calls it and reads the first
/// tick; returns the open stream and what hears the handler's cancellation.
async fn ticking(
    server: &NatsRequestServer,
    client: &NatsRequestClient,
) -> (NatsResponses, mpsc::Receiver<()>) {
    let ticks = path("ticks");
    let (handler, cancelled) = reporting_cancel(|_| tick_stream(Duration::from_millis(20)));
    server.register(&ticks, handler).await.unwrap();
    let mut responses = client
        .request(&server.address(&ticks), Request::new(&ticks, Bytes::new()))
        .await
        .unwrap();
    let first = within("the first tick", responses.next()).await.unwrap();
    assert_eq!(first.unwrap(), Bytes::from_static(b"0"));
    (responses, cancelled)
}

/// The error that ends `responses`, skipping the ticks before it.
async fn final_error(responses: &mut NatsResponses) -> RequestError {
    within("the stream to fail", async {
        loop {
            match responses.next().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => break err,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await
}

/// nats-server going away mid-stream fails the open stream with an error naming the lost
/// connection, not a timeout (the timeout here is far beyond the test's patience), and
/// the same client serves requests again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_dying_mid_stream_fails_the_stream_naming_the_lost_connection() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (server, _, echo) = nats_echo(&nats).await;
    let client = patient_client(&nats).await;
    let (mut responses, mut cancelled) = ticking(&server, &client).await;

    nats.stop();
    let err = final_error(&mut responses).await;
    assert!(
        matches!(err, RequestError::ConnectionLost { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("NATS server dropped"), "{err}");
    assert!(err.is_retryable());
    assert!(responses.next().await.is_none(), "the stream is over");
    assert_eq!(client.in_flight(), 0);

    nats.start_again();
    let reply = within("an echo once nats-server is back", async {
        loop {
            let request = Request::new(&echo, Bytes::from_static(b"back"));
            match client.request(&server.address(&echo), request).await {
                Ok(mut responses) => match responses.next().await {
                    Some(Ok(reply)) => break reply,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(reply, Bytes::from_static(b"back"));
    // The handler is stopped although the caller still holds the failed stream: the
    // server cancels a handler whose connection dropped mid-request (and the client's
    // cancel, sent when it gave up, may get there too once both have reconnected).
    within("the handler's token to fire", cancelled.recv())
        .await
        .unwrap();
    drop(responses);
    server.shutdown().await;
}

/// When only the server's link to NATS drops mid-stream (here through a proxy), the
/// caller, whose own connection stayed up, gets the server's error marker naming the
/// lost connection, and the handler is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_losing_its_nats_link_mid_stream_ends_the_stream_with_an_error() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let proxy = proxy::Proxy::start(([127, 0, 0, 1], nats.port()).into()).await;
    let server = server_behind(&proxy).await;
    let client = patient_client(&nats).await;
    let (mut responses, mut cancelled) = ticking(&server, &client).await;

    proxy.cut();
    let err = final_error(&mut responses).await;
    assert_eq!(err.code(), Some(ErrorCode::Internal), "{err:?}");
    assert!(
        err.to_string()
            .contains("server's connection to NATS dropped"),
        "{err}"
    );
    within("the handler's token to fire", cancelled.recv())
        .await
        .unwrap();
    server.shutdown().await;
}

/// A NATS request plane server that talks to nats-server through `proxy`, with a short
/// drain so that a test can shut it down while its handler hangs.
async fn server_behind(proxy: &proxy::Proxy) -> NatsRequestServer {
    let link = async_nats::connect(format!("nats://{}", proxy.address()))
        .await
        .unwrap();
    let config = ServerLimits {
        drain_timeout: Duration::from_millis(100),
        ..ServerLimits::default()
    };
    NatsRequestServer::new(link, config).await.unwrap()
}

/// A server that dies mid-stream (its NATS link gone for good, as when its process is
/// killed) sends nothing more; after a second of silence a probe finds nothing serving
/// the subject, and the stream fails saying so, long before its 600 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_for_good_mid_stream_is_found_by_a_probe() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let proxy = proxy::Proxy::start(([127, 0, 0, 1], nats.port()).into()).await;
    let server = server_behind(&proxy).await;
    let client = patient_client(&nats).await;
    let hangs = path("hangs");
    let handler = |_req: Request, _cancel: CancellationToken| {
        stream::once(async { Ok(Bytes::from_static(b"first")) }).chain(stream::pending())
    };
    server.register(&hangs, handler).await.unwrap();
    let mut responses = client
        .request(&server.address(&hangs), Request::new(&hangs, Bytes::new()))
        .await
        .unwrap();
    let first = within("the first response", responses.next())
        .await
        .unwrap();
    assert_eq!(first.unwrap(), Bytes::from_static(b"first"));

    drop(proxy);
    let err = within("the probe to find the server gone", responses.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, RequestError::ConnectionLost { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("nothing serves it any more"),
        "{err}"
    );
    assert!(responses.next().await.is_none());
    server.shutdown().await;
}

/// Probes do not end a stream whose server is alive but slow: a unary handler taking
/// 2.5 s (two probes' worth of silence) still gets its answer through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_live_server_passes_the_probes() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (server, client) = nats_pair(&nats).await;
    let slow = path("slow");
    let handler = unary_handler(|_req: Request| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(Bytes::from_static(b"worth the wait"))
    });
    server.register(&slow, handler).await.unwrap();
    let reply = within(
        "the slow answer",
        client.unary(&server.address(&slow), Request::new(&slow, Bytes::new())),
    )
    .await
    .unwrap();
    assert_eq!(reply, Bytes::from_static(b"worth the wait"));
    // What a probe gets from a live server: an empty answer on the cancel subject.
    let probe = nats_client(&nats)
        .await
        .request(cancel_subject(&server.address(&slow)), Bytes::new())
        .await
        .unwrap();
    assert!(probe.payload.is_empty());
    server.shutdown().await;
}
