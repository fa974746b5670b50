//! The HTTP/2 request plane's server (`PROTOCOL.md` §12) against a raw HTTP/2 client
//! (the `h2` crate, beneath hyper) that does what a well-behaved client library hides: it
//! resets a stream halfway through its body, and it keeps a stream open on a connection
//! while the server shuts down. The records and statuses as `curl` sees them are in
//! `http_plane.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use h2::client::SendRequest;
use planewire::planes::request::http::{HttpConfig, HttpServer};
use planewire::planes::request::{Request, RequestPlaneServer, ServerLimits, unary_handler};
use planewire_testkit::tcp::path;
use planewire_testkit::within;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// An HTTP/2 server on loopback with `limits`, serving `echo` (which counts its calls in
/// the returned counter) and `held` (which says it started on the returned receiver, then
/// answers its payload once the returned gate gives it a permit).
async fn server_with(
    limits: ServerLimits,
) -> (
    HttpServer,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<()>,
    Arc<Semaphore>,
) {
    let config = HttpConfig {
        host: Some("127.0.0.1".parse().unwrap()),
        port: 0,
        ..HttpConfig::default()
    };
    let server = HttpServer::bind(config, limits).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let echo = unary_handler(move |req: Request| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok(req.payload) }
    });
    server.register(&path("echo"), echo).await.unwrap();
    let (started, started_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let held_gate = Arc::clone(&gate);
    let held = unary_handler(move |req: Request| {
        let _ = started.send(());
        let gate = Arc::clone(&held_gate);
        async move {
            let _permit = gate.acquire().await.unwrap();
            Ok(req.payload)
        }
    });
    server.register(&path("held"), held).await.unwrap();
    (server, calls, started_rx, gate)
}

/// A raw HTTP/2 connection.
struct Raw {
    send: SendRequest<Bytes>,
    ping: h2::PingPong,
    /// The task driving the connection, which ends when the server closes it.
    driver: JoinHandle<Result<(), h2::Error>>,
}

async fn connect(address: SocketAddr) -> Raw {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let ping = connection
        .ping_pong()
        .expect("the connection's PING handle");
    let driver = tokio::spawn(connection);
    Raw { send, ping, driver }
}

/// The head of a POST to endpoint `endpoint` of `address`, with `headers`.
fn post(address: SocketAddr, endpoint: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let uri = format!("http://{address}/v1/rpc/test/worker/{endpoint}");
    let mut request = http::Request::builder().method("POST").uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

/// A POST with no body to `endpoint` on `send`'s connection: the status and the
/// response body as text, or the error that stopped it (a GOAWAY, say). END_STREAM is
/// on the HEADERS: a body sent after them could meet a reset, for the server answers a
/// refusal without reading the body and then resets the stream.
async fn call(
    send: &SendRequest<Bytes>,
    address: SocketAddr,
    endpoint: &str,
) -> Result<(u16, String), h2::Error> {
    let mut send = send.clone().ready().await?;
    let (response, _) = send.send_request(post(address, endpoint, &[]), true)?;
    read(response).await
}

/// A response's status and its body as text.
async fn read(response: h2::client::ResponseFuture) -> Result<(u16, String), h2::Error> {
    read_ready(response.await).await
}

/// The status and the body as text of a response whose head has come.
async fn read_ready(
    response: Result<http::Response<h2::RecvStream>, h2::Error>,
) -> Result<(u16, String), h2::Error> {
    let response = response?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        text.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8(text).unwrap()))
}

/// Opens a stream to `echo` that sends half a body and stops, then probes the endpoint's
/// one slot until a probe is refused: the server holds the half-sent request, waiting
/// for the rest of its body. `None` if the half-sent request was refused itself, as a
/// probe held the slot when it came. Probes that were served count in `served`.
async fn half_sent(
    send: &SendRequest<Bytes>,
    address: SocketAddr,
    served: &mut usize,
) -> Option<h2::SendStream<Bytes>> {
    let mut ready = send.clone().ready().await.unwrap();
    let head = post(address, "echo", &[("pw-timeout-ms", "600000")]);
    let (mut response, mut body) = ready.send_request(head, false).unwrap();
    if body
        .send_data(Bytes::from_static(b"the first half"), false)
        .is_err()
    {
        // Refused, as a probe held the slot, and reset before the body could go.
        return None;
    }
    loop {
        match call(send, address, "echo").await.unwrap() {
            (200, _) => *served += 1,
            (status, text) => {
                assert_eq!(status, 503, "{text}");
                assert!(text.starts_with("error 4 Overloaded "), "{text}");
                return Some(body);
            }
        }
        if let Some(refusal) = (&mut response).now_or_never() {
            let (status, text) = read_ready(refusal).await.unwrap();
            assert_eq!(status, 503, "{text}");
            assert!(text.starts_with("error 4 Overloaded "), "{text}");
            return None;
        }
    }
}

/// §12, 400 "a body that cannot be read": a client resets its stream (`RST_STREAM`
/// CANCEL) halfway through the body. No refusal can reach it on a reset stream, but the
/// request is not run with the part that came, and the endpoint's one slot is free again
/// for the next caller at once, not at the request's deadline ten minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_reset_halfway_is_not_run_and_frees_its_slot() {
    let limits = ServerLimits {
        max_concurrent_requests: 1,
        ..ServerLimits::default()
    };
    let (server, calls, _started, _gate) = server_with(limits).await;
    let address = server.local_addr();
    let Raw { send, .. } = connect(address).await;
    let (mut body, served) = within("a half-sent request to take the slot", async {
        let mut served = 0;
        loop {
            if let Some(body) = half_sent(&send, address, &mut served).await {
                return (body, served);
            }
        }
    })
    .await;

    body.send_reset(h2::Reason::CANCEL);
    within("the slot to be free again", async {
        loop {
            match call(&send, address, "echo").await.unwrap() {
                (200, text) => return assert_eq!(text, "item 0\n\nend\n"),
                (status, text) => assert_eq!(status, 503, "{text}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        served + 1,
        "the reset request ran"
    );
    server.shutdown().await;
}

/// §12's shutdown on one raw connection: while a stream it admitted is open, the server
/// sends no GOAWAY and answers each new stream 503 with an `error 8 ShuttingDown` record;
/// the open stream completes with its answer; then GOAWAY comes, the server closes the
/// connection, and no stream can be opened on it any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_connection_gets_goaway_only_once_its_open_stream_is_done() {
    // A drain timeout the test never reaches: the open stream ends when it lets it.
    let limits = ServerLimits {
        drain_timeout: Duration::from_secs(600),
        ..ServerLimits::default()
    };
    let (server, _calls, mut started, gate) = server_with(limits).await;
    let address = server.local_addr();
    let Raw {
        send,
        mut ping,
        driver,
    } = connect(address).await;
    let mut ready = send.clone().ready().await.unwrap();
    let (held, mut body) = ready
        .send_request(post(address, "held", &[]), false)
        .unwrap();
    body.send_data(Bytes::from_static(b"held"), true).unwrap();
    within("the held handler to start", started.recv()).await;

    let server = Arc::new(server);
    let shutdown = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.shutdown().await }
    });
    // New streams are served until the drain begins, then refused on the same
    // connection: no GOAWAY has come while the held stream is open.
    let (status, text) = within("a new stream to be refused", async {
        loop {
            let answer = call(&send, address, "echo").await;
            match answer.expect("no GOAWAY while a stream is open") {
                (200, _) => continue,
                refused => return refused,
            }
        }
    })
    .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.starts_with("error 8 ShuttingDown "), "{text}");
    // The server writes a GOAWAY it has begun before the PONG to a later PING: after
    // this round trip the client knows of any GOAWAY sent by the time of the refusal.
    let pong = ping.ping(h2::Ping::opaque());
    within("a PING round trip", pong).await.unwrap();
    let again = call(&send, address, "echo").await;
    let (status, text) = again.expect("no GOAWAY while a stream is open");
    assert_eq!(status, 503, "{text}");

    gate.add_permits(1);
    let answer = within("the held stream's answer", read(held)).await;
    assert_eq!(answer.unwrap(), (200, "item 4\nheld\nend\n".to_owned()));
    let closed = within("the server to close the connection", driver).await;
    closed
        .unwrap()
        .expect("a GOAWAY without error, then the close");
    let late = call(&send, address, "echo").await.unwrap_err();
    assert!(late.is_go_away() && late.is_remote(), "{late:?}");
    within("the shutdown", shutdown).await.unwrap();
}
