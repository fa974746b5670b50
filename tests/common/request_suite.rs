//! The behaviour every request plane must show, run by `request_planes.rs` on each plane
//! the build has. Each body takes a server, a client and `address`, which gives the
//! address a client uses for a path (what the path's discovery record would carry).

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use planewire::planes::request::{
    EndpointPath, HandlerError, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::vocab::ErrorCode;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use planewire_testkit::tcp::path;
use planewire_testkit::within;

/// Every item of the stream `client` gets from the endpoint at `address`, each unwrapped.
async fn all_items<C: RequestPlaneClient>(
    client: &C,
    address: &str,
    path: &EndpointPath,
) -> Vec<Bytes> {
    let responses = client
        .request(address, Request::new(path, Bytes::new()))
        .await
        .unwrap();
    responses.map(Result::unwrap).collect().await
}

async fn register_echo<S: RequestPlaneServer>(server: &S, endpoint: &str) -> EndpointPath {
    let path = path(endpoint);
    server
        .register(
            &path,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    path
}

pub async fn unary_echo<S, C>(server: &S, client: &C, address: impl Fn(&EndpointPath) -> String)
where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = register_echo(server, "echo").await;
    let request = Request::new(&path, Bytes::from_static(b"hello"));
    let reply = within("a unary call", client.unary(&address(&path), request)).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"hello"));
}

pub async fn streaming_in_order<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = path("count");
    let handler = |_req: Request, _cancel: CancellationToken| {
        stream::iter((0..16).map(|i| Ok(Bytes::from(format!("item {i}")))))
    };
    server.register(&path, handler).await.unwrap();
    let items = within(
        "a 16-item stream",
        all_items(client, &address(&path), &path),
    )
    .await;
    let expected: Vec<Bytes> = (0..16).map(|i| Bytes::from(format!("item {i}"))).collect();
    assert_eq!(items, expected);
}

pub async fn concurrent_calls<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
    calls: usize,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = register_echo(server, "echo").await;
    let address = address(&path);
    let replies = within(
        "concurrent calls",
        futures::future::join_all((0..calls).map(|i| {
            let request = Request::new(&path, Bytes::from(format!("call {i}")));
            client.unary(&address, request)
        })),
    )
    .await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), Bytes::from(format!("call {i}")), "call {i}");
    }
}

/// Dropping the response stream fires the handler's cancellation token.
pub async fn cancellation_reaches_handler<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = path("forever");
    let (started_tx, mut started) = mpsc::channel::<()>(1);
    let (cancelled_tx, mut cancelled) = mpsc::channel::<()>(1);
    let handler = move |_req: Request, cancel: CancellationToken| {
        let started_tx = started_tx.clone();
        let cancelled_tx = cancelled_tx.clone();
        tokio::spawn(async move {
            let _ = started_tx.send(()).await;
            cancel.cancelled().await;
            let _ = cancelled_tx.send(()).await;
        });
        stream::pending::<Result<Bytes, HandlerError>>()
    };
    server.register(&path, handler).await.unwrap();
    let responses = client
        .request(&address(&path), Request::new(&path, Bytes::new()))
        .await
        .unwrap();
    within("the handler to start", started.recv())
        .await
        .unwrap();
    drop(responses);
    within("the handler's token to fire", cancelled.recv())
        .await
        .unwrap();
}

/// `client` must have a short request timeout; the handler never answers. The caller
/// gets a timeout naming its setting, the handler's token fires, and the next call works.
pub async fn timeout<S, C>(server: &S, client: &C, address: impl Fn(&EndpointPath) -> String)
where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let echo = register_echo(server, "echo").await;
    let path = path("silent");
    let (handler, mut cancelled) = reporting_cancel(stream::pending);
    server.register(&path, handler).await.unwrap();
    let err = within(
        "the client's timeout",
        client.unary(&address(&path), Request::new(&path, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(err.to_string().contains("REQUEST_TIMEOUT"), "{err}");
    within("the handler's token to fire", cancelled.recv())
        .await
        .unwrap();
    assert_echo(client, &address(&echo), &echo, "after").await;
}

/// A path nobody registered: a clear `UnknownEndpoint` naming it, not a timeout; the
/// next call works.
pub async fn unknown_endpoint<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let echo = register_echo(server, "echo").await;
    let nowhere = path("nowhere");
    let err = within(
        "the unknown-endpoint error",
        client.unary(&address(&nowhere), Request::new(&nowhere, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownEndpoint), "got {err}");
    assert!(!err.is_timeout());
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert_echo(client, &address(&echo), &echo, "still here").await;
}

/// A request of `size` bytes, over the transport's limit: refused with the size error.
pub async fn over_limit<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
    size: usize,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = register_echo(server, "echo").await;
    let request = Request::new(&path, Bytes::from(vec![7u8; size]));
    let err = within("the size error", client.unary(&address(&path), request))
        .await
        .unwrap_err();
    assert!(err.is_too_large(), "expected a size error, got {err}");
    assert!(!err.is_timeout());
    assert!(err.to_string().contains(&size.to_string()) || err.to_string().contains("bytes"));
    // The connection still serves.
    let small = Request::new(&path, Bytes::from_static(b"small"));
    let reply = within(
        "a call after the refusal",
        client.unary(&address(&path), small),
    )
    .await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"small"));
}

/// A handler error after an item reaches the client as that item, then
/// `Remote { Handler, message }` (line breaks and all), then the end.
pub async fn handler_error<S, C>(server: &S, client: &C, address: impl Fn(&EndpointPath) -> String)
where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = path("fails");
    let handler = |_req: Request, _cancel: CancellationToken| {
        stream::iter([
            Ok(Bytes::from_static(b"partial")),
            Err(HandlerError::from("model exploded\r\non line 2")),
        ])
    };
    server.register(&path, handler).await.unwrap();
    let mut responses = within(
        "the call",
        client.request(&address(&path), Request::new(&path, Bytes::new())),
    )
    .await
    .unwrap();
    let first = within("the item", responses.next()).await.unwrap();
    assert_eq!(first.unwrap(), Bytes::from_static(b"partial"));
    let err = within("the error", responses.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Handler), "got {err}");
    assert!(err.to_string().contains("model exploded"), "got {err}");
    assert!(within("the end", responses.next()).await.is_none());
}

pub const SHORT_TIMEOUT: Duration = Duration::from_millis(300);

/// A stream whose items are spaced out and whose end comes after a pause of its own,
/// and an empty one: every item arrives once, in order, and the end is seen in both.
pub async fn paced_stream_and_empty_stream<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let paced = path("paced");
    let handler = |_req: Request, _cancel: CancellationToken| {
        stream::unfold(0, |i| async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            (i < 3).then(|| (Ok(Bytes::from(format!("item {i}"))), i + 1))
        })
    };
    server.register(&paced, handler).await.unwrap();
    let empty = path("empty");
    let nothing = |_req: Request, _cancel: CancellationToken| stream::empty();
    server.register(&empty, nothing).await.unwrap();
    within("the paced and empty streams", async {
        let items = all_items(client, &address(&paced), &paced).await;
        assert_eq!(items, ["item 0", "item 1", "item 2"]);
        let items = all_items(client, &address(&empty), &empty).await;
        assert!(items.is_empty(), "{items:?}");
    })
    .await;
}

/// Sends `payload` to the echo endpoint `path` at `address` and checks it comes back.
pub async fn assert_echo<C: RequestPlaneClient>(
    client: &C,
    address: &str,
    path: &EndpointPath,
    payload: &'static str,
) {
    let reply = within(
        "an echo",
        client.unary(address, Request::new(path, payload)),
    )
    .await;
    assert_eq!(reply.unwrap(), payload.as_bytes());
}

/// A handler made by `stream` whose token, once fired, sends on the returned receiver. A
/// watcher task reports it: on cancel the server drops the handler's stream, so the
/// stream itself cannot.
fn reporting_cancel<F, St>(
    stream: F,
) -> (
    impl Fn(Request, CancellationToken) -> St + Send + Sync + 'static,
    mpsc::Receiver<()>,
)
where
    F: Fn() -> St + Send + Sync + 'static,
    St: futures::Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
{
    let (cancelled_tx, cancelled) = mpsc::channel(1);
    let handler = move |_req: Request, cancel: CancellationToken| {
        let cancelled_tx = cancelled_tx.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            let _ = cancelled_tx.send(()).await;
        });
        stream()
    };
    (handler, cancelled)
}

/// Metadata travels with the request: its headers, and the deadline the client set (its
/// 10 s default), as time left on the server.
pub async fn headers_and_deadline_reach_the_handler<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let inspect = path("inspect");
    let handler = unary_handler(|req: Request| async move {
        let left = req
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        Ok(Bytes::from(format!(
            "{} {} {} {}",
            req.path,
            req.headers.get("traceparent").unwrap_or("-"),
            req.headers.get("x-request-id").unwrap_or("-"),
            left.is_some_and(|l| l > Duration::from_secs(5) && l <= Duration::from_secs(10)),
        )))
    });
    server.register(&inspect, handler).await.unwrap();
    let request = Request::new(&inspect, Bytes::new())
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_header("x-request-id", "r-42");
    let reply = within("the call", client.unary(&address(&inspect), request))
        .await
        .unwrap();
    let expected =
        format!("{inspect} 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 r-42 true");
    assert_eq!(reply, Bytes::from(expected));
}

/// `server` must allow one request per endpoint at a time: a second one to a busy
/// endpoint is `Overloaded` at once (retryable), and other endpoints still serve.
pub async fn overloaded_endpoint_answers_at_once<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let echo = register_echo(server, "echo").await;
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
    let first = client
        .request(&address(&busy), Request::new(&busy, Bytes::new()))
        .await
        .unwrap();
    within("the handler to start", started.recv())
        .await
        .unwrap();
    let err = within(
        "the overload error",
        client.unary(&address(&busy), Request::new(&busy, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "got {err}");
    assert!(err.is_retryable());
    assert_echo(client, &address(&echo), &echo, "others serve").await;
    drop(first);
}

/// Shutdown lets a request in flight finish, then returns; afterwards a request fails at
/// once with an error, not a timeout.
pub async fn shutdown_drains_in_flight<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
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
    let at = address(&slow);
    let call = client.unary(&at, Request::new(&slow, Bytes::new()));
    let shutdown = async {
        within("the handler to start", started.recv())
            .await
            .unwrap();
        within("shutdown", server.shutdown()).await;
    };
    let (reply, ()) = tokio::join!(call, shutdown);
    assert_eq!(reply.unwrap(), Bytes::from_static(b"finished"));
    let err = within(
        "a call after shutdown",
        client.unary(&address(&slow), Request::new(&slow, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert!(!err.is_timeout(), "{err}");
}

/// `server` must have a short drain timeout: a handler still running when it passes is
/// cancelled, and its caller gets `ShuttingDown` rather than silence.
pub async fn drain_timeout_cancels_what_is_left<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let stuck = path("stuck");
    let (started_tx, mut started) = mpsc::channel::<()>(1);
    let (handler, mut cancelled) = reporting_cancel(move || {
        let started_tx = started_tx.clone();
        stream::once(async move {
            let _ = started_tx.send(()).await;
            std::future::pending::<Result<Bytes, HandlerError>>().await
        })
    });
    server.register(&stuck, handler).await.unwrap();
    let at = address(&stuck);
    let call = client.unary(&at, Request::new(&stuck, Bytes::new()));
    let shutdown = async {
        within("the handler to start", started.recv())
            .await
            .unwrap();
        within("shutdown past its drain timeout", server.shutdown()).await;
        within("the handler's token to fire", cancelled.recv())
            .await
            .unwrap();
    };
    let (reply, ()) = within("the caller's answer", async {
        tokio::join!(call, shutdown)
    })
    .await;
    let err = reply.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ShuttingDown), "got {err}");
}

/// The drain timeout of [`drain_timeout_cancels_what_is_left`].
pub const SHORT_DRAIN: Duration = Duration::from_millis(200);
