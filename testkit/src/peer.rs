//! What a raw client reads and checks in the server's answers (frames up to a PONG, up
//! to a stream's end, the GOAWAY or ERROR in them) and handlers a test can watch, for
//! the raw-peer tests of the TCP plane's rules (`PROTOCOL.md` §6–§7).

use bytes::Bytes;
use planewire::codec::{ErrorCode, Frame};
use planewire::planes::request::{HandlerError, Request, RequestPlaneServer};
use planewire::tcp::TcpServer;
use tokio_util::sync::CancellationToken;

use crate::raw::{RawConn, frames_of, request_frame};
use crate::tcp::path;
use crate::within;

/// Bytes that are no frame: their first byte is no magic.
pub const GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

pub fn go_away_code(frames: &[Frame]) -> Option<(ErrorCode, String)> {
    frames.iter().find_map(|f| match f {
        Frame::GoAway { code, message, .. } => Some((*code, message.to_string())),
        _ => None,
    })
}

/// Sends a PING and returns every frame that arrived before its PONG. The server
/// answers a PING at the next frame boundary, so this is a bounded read of what it sent
/// meanwhile, with no sleep.
pub async fn ping_round(raw: &mut RawConn, opaque: u64) -> Vec<Frame> {
    raw.send(&Frame::Ping { opaque }).await;
    until_pong(raw, opaque).await
}

/// Every frame that arrives before the PONG carrying `opaque`.
pub async fn until_pong(raw: &mut RawConn, opaque: u64) -> Vec<Frame> {
    let mut before = Vec::new();
    loop {
        match raw.next_frame().await {
            Some(Frame::Pong { opaque: o }) if o == opaque => return before,
            Some(frame) => before.push(frame),
            None => panic!("connection closed before the PONG {opaque}; saw {before:?}"),
        }
    }
}

/// Window cost (§7.8) of the DATA of `stream_id` among `frames`; panics on a terminal
/// frame for it, which none of the endless streams below may get.
pub fn data_cost(frames: &[Frame], stream_id: u64) -> usize {
    frames_of(frames, stream_id)
        .into_iter()
        .map(|f| match f {
            Frame::Data { payload, .. } => planewire::codec::window_cost(payload.len()),
            other => panic!("unexpected frame on stream {stream_id}: {other:?}"),
        })
        .sum()
}

/// Reads DATA of `stream_id` until, with the `spent` already seen, it has cost the whole
/// initial window (§7.8): what a server with no grant may send. Panics on any other frame.
pub async fn rest_of_window(raw: &mut RawConn, stream_id: u64, mut spent: usize) {
    while spent < planewire::codec::INITIAL_STREAM_WINDOW as usize {
        match raw.next_frame().await {
            Some(Frame::Data {
                stream_id: id,
                payload,
            }) if id == stream_id => {
                spent += planewire::codec::window_cost(payload.len());
            }
            other => panic!("expected DATA on stream {stream_id}, got {other:?}"),
        }
    }
}

/// Reads until the terminal frame (END or ERROR) of `stream_id` and returns every frame
/// read on the way, that one last; fails on a GOAWAY or a close.
pub async fn until_terminal(raw: &mut RawConn, stream_id: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = raw
            .next_frame()
            .await
            .unwrap_or_else(|| panic!("closed before stream {stream_id} ended: {frames:?}"));
        assert!(!matches!(frame, Frame::GoAway { .. }), "{frame:?}");
        let terminal = frame.stream_id() == stream_id
            && matches!(frame, Frame::End { .. } | Frame::Error { .. });
        frames.push(frame);
        if terminal {
            return frames;
        }
    }
}

/// The code and message of the last frame of a stream, which must be an ERROR.
pub fn error_of(frames: &[Frame]) -> (ErrorCode, String) {
    match frames.last() {
        Some(Frame::Error { code, message, .. }) => (*code, message.to_string()),
        other => panic!("expected an ERROR, got {other:?} after {frames:?}"),
    }
}

/// A handler that hands each request's cancellation token to the test before answering
/// with `responses()`, so the test can watch the token fire.
pub fn reporting<S>(
    responses: impl Fn() -> S + Send + Sync + 'static,
) -> (
    impl Fn(Request, CancellationToken) -> S + Send + Sync + 'static,
    tokio::sync::mpsc::UnboundedReceiver<CancellationToken>,
)
where
    S: futures::Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |_req: Request, cancel: CancellationToken| {
        let _ = tx.send(cancel);
        responses()
    };
    (handler, rx)
}

/// Serves `responses` at `endpoint` on `server` through a [`reporting`] handler, opens
/// stream 1 to it on a fresh raw connection, and returns the connection and the
/// handler's token once the handler has started.
pub async fn raw_stream_to<S>(
    server: &TcpServer,
    endpoint: &str,
    responses: impl Fn() -> S + Send + Sync + 'static,
) -> (RawConn, CancellationToken)
where
    S: futures::Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
{
    let (handler, mut tokens) = reporting(responses);
    server.register(&path(endpoint), handler).await.unwrap();
    let mut raw = RawConn::connect(server).await;
    raw.send(&request_frame(1, &path(endpoint), b"")).await;
    (raw, first_token(&mut tokens).await)
}

/// Items of `size` bytes for as long as the server polls.
pub fn endless(size: usize) -> impl futures::Stream<Item = Result<Bytes, HandlerError>> {
    let item = Bytes::from(vec![b'x'; size]);
    futures::stream::repeat_with(move || Ok(item.clone()))
}

/// A handler's stream that never yields.
pub fn never() -> futures::stream::Pending<Result<Bytes, HandlerError>> {
    futures::stream::pending()
}

pub async fn first_token(
    tokens: &mut tokio::sync::mpsc::UnboundedReceiver<CancellationToken>,
) -> CancellationToken {
    within("the handler to start", tokens.recv())
        .await
        .expect("the handler's token")
}

/// A PING on `raw` gets its PONG: the connection survived what came before.
pub async fn assert_connection_alive(raw: &mut RawConn, opaque: u64) {
    let before = ping_round(raw, opaque).await;
    assert!(go_away_code(&before).is_none(), "{before:?}");
}

/// Registers `gated`, whose requests each wait for a permit of the returned gate and
/// then answer `done`.
pub async fn register_gated(server: &TcpServer) -> std::sync::Arc<tokio::sync::Semaphore> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let handler_gate = gate.clone();
    server
        .register(
            &path("gated"),
            planewire::planes::request::unary_handler(move |_req: Request| {
                let gate = handler_gate.clone();
                async move {
                    let _open = gate.acquire().await.unwrap();
                    Ok(Bytes::from_static(b"done"))
                }
            }),
        )
        .await
        .unwrap();
    gate
}
