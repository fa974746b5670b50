//! The behaviour every request plane must show, run by `request_planes.rs` against TCP
//! and NATS. Each body takes a server, a client and `address`, which gives the address
//! a client uses for a path (what the path's discovery record would carry).
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use planewire::codec::ErrorCode;
use planewire::planes::{
    EndpointPath, HandlerError, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{path, within};

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

/// `client` must have a short request timeout; the handler never answers.
pub async fn timeout<S, C>(server: &S, client: &C, address: impl Fn(&EndpointPath) -> String)
where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = path("silent");
    let handler = |_req: Request, _cancel: CancellationToken| {
        stream::pending::<Result<Bytes, HandlerError>>()
    };
    server.register(&path, handler).await.unwrap();
    let err = within(
        "the client's timeout",
        client.unary(&address(&path), Request::new(&path, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "expected a timeout, got {err}");
}

/// A path nobody registered: a clear `UnknownEndpoint`, not a timeout.
pub async fn unknown_endpoint<S, C>(
    server: &S,
    client: &C,
    address: impl Fn(&EndpointPath) -> String,
) where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    register_echo(server, "echo").await;
    let nowhere = path("nowhere");
    let err = within(
        "the unknown-endpoint error",
        client.unary(&address(&nowhere), Request::new(&nowhere, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownEndpoint), "got {err}");
    assert!(!err.is_timeout());
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

/// A handler error reaches the client as `Remote { Handler, message }`.
pub async fn handler_error<S, C>(server: &S, client: &C, address: impl Fn(&EndpointPath) -> String)
where
    S: RequestPlaneServer,
    C: RequestPlaneClient,
{
    let path = path("fails");
    let handler = unary_handler(|_req: Request| async move {
        Err::<Bytes, _>(HandlerError::from("model exploded\r\non line 2"))
    });
    server.register(&path, handler).await.unwrap();
    let err = within(
        "the handler error",
        client.unary(&address(&path), Request::new(&path, Bytes::new())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Handler), "got {err}");
    assert!(err.to_string().contains("model exploded"), "got {err}");
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
