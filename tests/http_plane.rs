//! The HTTP/2 request plane's own behaviour, seen with a bare HTTP/2 client as `curl`
//! would see it: the text records of `PROTOCOL.md` §12, the statuses of refusals, the
//! root path, metadata and the deadline header, flow control. What every plane shares
//! is in `request_planes.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use planewire::planes::request::http::{HttpClient, HttpConfig, HttpServer};
use planewire::planes::request::{
    CancellationToken, EndpointPath, HandlerError, Request, RequestError, RequestPlaneClient,
    RequestPlaneServer, ServerLimits, unary_handler,
};
use planewire::vocab::ErrorCode;
use planewire_testkit::tcp::path;
use planewire_testkit::within;

fn config() -> HttpConfig {
    HttpConfig {
        host: Some("127.0.0.1".parse().unwrap()),
        port: 0,
        ..HttpConfig::default()
    }
}

async fn echo_server(config: HttpConfig) -> (HttpServer, EndpointPath) {
    echo_server_with(config, ServerLimits::default()).await
}

async fn echo_server_with(config: HttpConfig, limits: ServerLimits) -> (HttpServer, EndpointPath) {
    let server = HttpServer::bind(config, limits).await.unwrap();
    let echo = path("echo");
    server
        .register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    (server, echo)
}

/// What `curl --http2-prior-knowledge -X METHOD --data BODY URL` gets: status and body.
async fn bare(method: &str, url: String, body: &'static str) -> (u16, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("user-agent", "curl/8")
        .header("x-request-id", "r-7")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send_bare(request).await
}

/// `request` sent by a bare HTTP/2 client: the status and the whole body as text.
async fn send_bare<B>(request: http::Request<B>) -> (u16, String)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client: Client<HttpConnector, B> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = within("a bare request", client.request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = within("its body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_http2_client_reads_the_records_as_text() {
    let (server, echo) = echo_server(config()).await;
    let base = format!("http://{}", server.address(&echo));
    let (status, body) = bare("POST", format!("{base}/test/worker/echo"), "hello").await;
    assert_eq!((status, body.as_str()), (200, "item 5\nhello\nend\n"));
    let (status, body) = bare("POST", format!("{base}/test/worker/echo/1"), "").await;
    assert_eq!((status, body.as_str()), (200, "item 0\n\nend\n"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_statuses_with_one_error_record_naming_the_cause() {
    let (server, echo) = echo_server(HttpConfig {
        max_message_size: 16,
        ..config()
    })
    .await;
    let address = server.address(&echo);
    let (host, _root) = address.split_once('/').unwrap();
    let cases = [
        (
            "GET",
            format!("http://{address}/test/worker/echo"),
            "",
            405,
            "1 Protocol",
            "POST to /v1/rpc/",
        ),
        (
            "POST",
            format!("http://{host}/elsewhere/test/worker/echo"),
            "",
            404,
            "3 UnknownEndpoint",
            "start with /v1/rpc/",
        ),
        (
            "POST",
            format!("http://{address}/test/worker/nope"),
            "",
            404,
            "3 UnknownEndpoint",
            "test/worker/nope",
        ),
        (
            "POST",
            format!("http://{address}/test/worker/echo"),
            "far more than sixteen bytes",
            413,
            "2 FrameTooLarge",
            "DYN_HTTP_MAX_MESSAGE_SIZE=16",
        ),
    ];
    for (method, url, body, status, code, cause) in cases {
        let (got, text) = bare(method, url.clone(), body).await;
        assert_eq!(got, status, "{method} {url}: {text}");
        assert!(text.starts_with(&format!("error {code} ")), "{text}");
        assert!(text.contains(cause), "{text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_custom_headers_but_not_http_ones() {
    let server = HttpServer::bind(config(), ServerLimits::default())
        .await
        .unwrap();
    let inspect = path("inspect");
    let handler = unary_handler(|req: Request| async move {
        let names: Vec<&str> = req.headers.iter().map(|(name, _)| name).collect();
        Ok(Bytes::from(names.join(",")))
    });
    server.register(&inspect, handler).await.unwrap();
    let url = format!("http://{}/test/worker/inspect", server.address(&inspect));
    let (status, body) = bare("POST", url, "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "item 12\nx-request-id\nend\n")
    );
    server.shutdown().await;
}

/// §12: a header map that uses a name HTTP owns, or `pw-timeout-ms`, in any case, is
/// refused by the client with an error naming the header, before anything is sent: no
/// handler runs for it, and the client's next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_header_map_using_a_reserved_name_naming_it() {
    let server = HttpServer::bind(config(), ServerLimits::default())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler = unary_handler(move |req: Request| {
        counted.fetch_add(1, Ordering::SeqCst);
        let names: Vec<&str> = req.headers.iter().map(|(name, _)| name).collect();
        let names = Bytes::from(names.join(","));
        async move { Ok(names) }
    });
    let inspect = path("inspect");
    server.register(&inspect, handler).await.unwrap();
    let address = server.address(&inspect);
    let client = HttpClient::new(config()).unwrap();
    for name in ["content-type", "pw-timeout-ms", "Host", "user-agent"] {
        let mut request = Request::new(&inspect, Bytes::new());
        request.headers.insert(name, "1");
        let err = client.unary(&address, request).await.unwrap_err();
        assert!(
            matches!(err, RequestError::Encode { .. }),
            "{name}: {err:?}"
        );
        let named = format!("header {name} is reserved on the HTTP/2 plane");
        assert!(err.to_string().contains(&named), "{err}");
    }
    let mut request = Request::new(&inspect, Bytes::new());
    request.headers.insert("x-trace", "1");
    let names = within(
        "a request after the refusals",
        client.unary(&address, request),
    )
    .await
    .unwrap();
    assert_eq!(names, "x-trace");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused request was sent"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_limit_ends_the_stream_and_the_connection_serves_on() {
    let small = HttpConfig {
        max_message_size: 4096,
        ..config()
    };
    let (server, echo) = echo_server(small.clone()).await;
    let big = path("big");
    server
        .register(
            &big,
            unary_handler(|_req: Request| async { Ok(Bytes::from(vec![1u8; 8192])) }),
        )
        .await
        .unwrap();
    let client = HttpClient::new(small).unwrap();
    let address = server.address(&big);
    let err = within(
        "the size error",
        client.unary(&address, Request::new(&big, "")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    assert!(
        err.to_string().contains("DYN_HTTP_MAX_MESSAGE_SIZE"),
        "{err}"
    );
    let reply = within(
        "an echo after",
        client.unary(&address, Request::new(&echo, "ok")),
    )
    .await
    .unwrap();
    assert_eq!(reply, "ok");
    server.shutdown().await;
}

/// A caller that stops reading pauses its handler at the stream's flow-control window:
/// the handler is not polled for more than the window holds, and every item arrives once
/// the caller reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_pauses_its_handler_and_loses_nothing() {
    let server = HttpServer::bind(
        HttpConfig {
            adaptive_window: false,
            ..config()
        },
        ServerLimits::default(),
    )
    .await
    .unwrap();
    let flood = path("flood");
    let produced = Arc::new(AtomicUsize::new(0));
    const ITEMS: usize = 2000;
    const ITEM: usize = 16 * 1024;
    {
        let produced = Arc::clone(&produced);
        let handler = move |_req: Request, _cancel: CancellationToken| {
            let produced = Arc::clone(&produced);
            stream::iter(0..ITEMS).map(move |i| {
                produced.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(Bytes::from(vec![(i % 251) as u8; ITEM]))
            })
        };
        server.register(&flood, handler).await.unwrap();
    }
    let client = HttpClient::new(config()).unwrap();
    let mut responses = client
        .request(&server.address(&flood), Request::new(&flood, ""))
        .await
        .unwrap();
    let first = within("the first item", responses.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), ITEM);
    // Let the server run into the window: what it produced stays bounded.
    let mut settled = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = produced.load(Ordering::SeqCst);
        if now == settled {
            break;
        }
        settled = now;
    }
    let paused_at = produced.load(Ordering::SeqCst);
    assert!(
        paused_at < ITEMS / 2,
        "the handler ran ahead of a reader that stopped: {paused_at} of {ITEMS} items made"
    );
    let mut count = 1;
    while let Some(item) = within("the rest", responses.next()).await {
        let item = item.unwrap();
        assert_eq!(item[0], (count % 251) as u8, "item {count} in order");
        count += 1;
    }
    assert_eq!(count, ITEMS);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_deadline_header_is_refused_by_name() {
    let (server, echo) = echo_server(config()).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/test/worker/echo", server.address(&echo)))
        .header("pw-timeout-ms", "soon")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within("the refusal", client.request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("pw-timeout-ms"), "{text}");
    server.shutdown().await;
}

/// Bytes that are not HTTP/2 (an HTTP/1 request, then noise) close that connection within
/// the bound, and a well-behaved client on another connection is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_the_preface_closes_that_connection_and_serves_the_rest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (server, echo) = echo_server(config()).await;
    let base = format!("http://{}", server.address(&echo));
    let authority = server.address(&echo);
    let socket_address = authority.split('/').next().unwrap().to_owned();
    let mut raw = tokio::net::TcpStream::connect(&socket_address)
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x13garbage")
        .await
        .unwrap();
    let (status, body) = bare("POST", format!("{base}/test/worker/echo"), "still").await;
    assert_eq!((status, body.as_str()), (200, "item 5\nstill\nend\n"));
    // The server ends the bad connection (within the bound): a clean end of stream, or
    // a reset because our unread garbage was still in its buffer.
    let mut sink = Vec::new();
    let closed = within("the bad connection to close", raw.read_to_end(&mut sink)).await;
    if let Err(err) = closed {
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    server.shutdown().await;
}

/// A request body that sends `chunks` and then neither ends nor sends more: an upload
/// that never finishes, as a hostile or stuck client makes one.
type HeldOpenBody = http_body_util::StreamBody<
    futures::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
>;

fn held_open(chunks: impl Iterator<Item = Bytes> + Send + 'static) -> HeldOpenBody {
    let frames = stream::iter(chunks).map(|chunk| Ok(http_body::Frame::data(chunk)));
    http_body_util::StreamBody::new(frames.chain(stream::pending()).boxed())
}

/// The refusal a bare client gets for a held-open `body` sent to `url` with `headers`:
/// status, then the body's one record.
async fn held_open_refusal(
    url: String,
    headers: &[(&str, http::HeaderValue)],
    body: HeldOpenBody,
) -> (u16, String) {
    let mut request = http::Request::builder().method("POST").uri(url);
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    send_bare(request.body(body).unwrap()).await
}

/// An echo server whose endpoint serves one request at a time.
async fn one_slot_echo_server(config: HttpConfig) -> (HttpServer, EndpointPath) {
    let limits = ServerLimits {
        max_concurrent_requests: 1,
        ..ServerLimits::default()
    };
    echo_server_with(config, limits).await
}

/// §12, 413: a body without `content-length` that goes on past `DYN_HTTP_MAX_MESSAGE_SIZE`
/// and never ends is refused as soon as it passes the limit, not buffered until it ends;
/// the endpoint's one request slot is free again for the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upload_is_refused_once_past_the_limit_and_frees_its_slot() {
    let (server, echo) = one_slot_echo_server(HttpConfig {
        max_message_size: 64 * 1024,
        ..config()
    })
    .await;
    let url = format!("http://{}/test/worker/echo", server.address(&echo));
    let endless = std::iter::repeat(Bytes::from(vec![b'x'; 16 * 1024]));
    let (status, text) = held_open_refusal(url.clone(), &[], held_open(endless)).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.starts_with("error 2 FrameTooLarge "), "{text}");
    assert!(
        text.contains("more than 65536 bytes exceeds DYN_HTTP_MAX_MESSAGE_SIZE=65536"),
        "{text}"
    );
    let (status, text) = bare("POST", url, "next").await;
    assert_eq!((status, text.as_str()), (200, "item 4\nnext\nend\n"));
    server.shutdown().await;
}

/// §12, 408: a client that sends part of its body and stops is refused once its own
/// `pw-timeout-ms` has passed, naming the cause, rather than holding the request open;
/// the endpoint's one request slot is free again for the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_refused_at_its_deadline_and_frees_its_slot() {
    let (server, echo) = one_slot_echo_server(config()).await;
    let url = format!("http://{}/test/worker/echo", server.address(&echo));
    let part = std::iter::once(Bytes::from_static(b"the first half"));
    let headers = [("pw-timeout-ms", http::HeaderValue::from_static("300"))];
    let (status, text) = held_open_refusal(url.clone(), &headers, held_open(part)).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.starts_with("error 7 DeadlineExceeded "), "{text}");
    assert!(text.contains("did not arrive in time"), "{text}");
    let (status, text) = bare("POST", url, "next").await;
    assert_eq!((status, text.as_str()), (200, "item 4\nnext\nend\n"));
    server.shutdown().await;
}

/// A hand-written HTTP/2 server that answers a request for `/v1/rpc/test/worker/{name}/1`
/// with the status and body `answer(name)` gives, whatever they are; its address.
async fn scripted_http_server(answer: fn(&str) -> (u16, &'static str)) -> String {
    use hyper::server::conn::http2;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |req: http::Request<_>| async move {
                let name = req.uri().path().split('/').nth(5).unwrap_or_default();
                let (status, body) = answer(name);
                let mut response =
                    http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            let connection = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service);
            tokio::spawn(connection);
        }
    });
    address
}

/// §12, client side: a body that is not records (a proxy's error page), one cut inside
/// a record and one that ends without its `end` record each fail their own stream with
/// an error naming the status and the cause, after the items that were whole, never a
/// silent end; the client's requests before and after are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_bodies_fail_their_own_stream_naming_status_and_cause() {
    let address = scripted_http_server(|name| match name {
        "proxy" => (502, "<html><body>502 Bad Gateway</body></html>\n"),
        "cut" => (200, "item 5\nhello\nitem 5\nwor"),
        "unended" => (200, "item 5\nhello\n"),
        _ => (200, "item 2\nok\nend\n"),
    })
    .await;
    let client = HttpClient::new(config()).unwrap();
    let items_then_error = |endpoint: &'static str| {
        let (client, address) = (&client, &address);
        async move {
            let mut responses = client
                .request(address, Request::new(&path(endpoint), ""))
                .await
                .unwrap();
            let mut items = Vec::new();
            loop {
                match within("the stream's end", responses.next()).await {
                    Some(Ok(item)) => items.push(item),
                    Some(Err(err)) => return (items, err),
                    None => panic!("{endpoint}: a silent end after {items:?}"),
                }
            }
        }
    };
    let served = || async {
        let reply = client.unary(&address, Request::new(&path("ok"), "")).await;
        assert_eq!(reply.unwrap(), "ok");
    };
    served().await;
    let cases = [
        ("proxy", 0, "502 Bad Gateway", "unknown record \"<html>"),
        ("cut", 1, "200 OK", "a body cut inside a record"),
        (
            "unended",
            1,
            "200 OK",
            "a body that ended without its end record",
        ),
    ];
    for (endpoint, whole, status, cause) in cases {
        let (items, err) = items_then_error(endpoint).await;
        assert_eq!(items.len(), whole, "{endpoint}: {items:?}");
        assert!(items.iter().all(|item| item == "hello"), "{items:?}");
        assert_eq!(err.code(), Some(ErrorCode::Protocol), "{endpoint}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("HTTP status {status} with")),
            "{text}"
        );
        assert!(text.contains(cause), "{endpoint}: {text}");
        assert!(text.contains(&address), "{endpoint}: {text}");
    }
    served().await;
}

/// §12, 400: a header value that is not text (bytes over 0x7F, which HTTP/2 carries) is
/// refused by name before the body is read, rather than dropped or mangled on its way
/// to the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_value_that_is_not_text_is_refused_by_name() {
    let (server, echo) = echo_server(config()).await;
    let url = format!("http://{}/test/worker/echo", server.address(&echo));
    let latin1 = http::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let body = held_open(std::iter::once(Bytes::from_static(b"never ends")));
    let (status, text) = held_open_refusal(url, &[("x-menu", latin1)], body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.starts_with("error 1 Protocol "), "{text}");
    assert!(text.contains("header x-menu is not text"), "{text}");
    server.shutdown().await;
}

/// §12, `pw-timeout-ms` as REQUEST `aux` (§7.3), from a bare client: a handler that never
/// answers has its stream ended by the server with an `error 7 DeadlineExceeded` record
/// once the deadline passes, and its cancellation token fired; nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_stream_at_the_deadline_a_bare_client_sent() {
    use planewire_testkit::peer::{first_token, never, reporting};

    let (server, _echo) = echo_server(config()).await;
    let silent = path("silent");
    let (handler, mut tokens) = reporting(never);
    server.register(&silent, handler).await.unwrap();
    let url = format!("http://{}/test/worker/silent", server.address(&silent));
    let request = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("pw-timeout-ms", "200")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, text) = send_bare(request).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("error 7 DeadlineExceeded "), "{text}");
    assert!(text.contains("deadline passed"), "{text}");
    let token = first_token(&mut tokens).await;
    within("the handler's cancellation", token.cancelled()).await;
    server.shutdown().await;
}
