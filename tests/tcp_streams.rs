//! Stream promises from a raw client (`PROTOCOL.md` §7.2–§7.8): flow control,
//! cancellation, deadlines, a vanished client, the error table, id order and the
//! client's GOAWAY. Each is broken on purpose and must stay on its own stream.

use std::time::Duration;

use bytes::Bytes;
use planewire::codec::{ErrorCode, Frame};
use planewire::planes::request::{HandlerError, Request, RequestPlaneServer};
use planewire::tcp::ServerConfig;
use planewire_testkit::peer::*;
use planewire_testkit::raw::*;
use planewire_testkit::tcp::*;
use planewire_testkit::within;
use tokio_util::sync::CancellationToken;

/// §7.8: a stream whose client never grants window stops once its DATA has cost the
/// initial 2 MiB window (plus less than one frame), without blocking the connection's
/// other streams, and a WINDOW_UPDATE sets it going again. A server ignoring the window
/// would queue without bound for a reader that stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_stream_stops_at_its_window_while_others_flow_and_a_grant_resumes_it() {
    let server = echo_server().await;
    server
        .register(
            &path("endless"),
            |_req: Request, _cancel: CancellationToken| endless(1000),
        )
        .await
        .unwrap();
    let limit =
        planewire::codec::INITIAL_STREAM_WINDOW as usize + planewire::codec::window_cost(1000);
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("endless"), b"")).await;

    // Stopped = a PING round that brought no DATA for stream 1 after the window was
    // spent. Each round is checked against the limit, so a server that never stops
    // fails here instead of running into the bound.
    let mut spent = 0;
    let mut opaque = 0;
    loop {
        opaque += 1;
        let round = data_cost(&ping_round(&mut raw, opaque).await, 1);
        spent += round;
        assert!(spent <= limit, "{spent} bytes of DATA without a grant");
        if round == 0 && spent >= planewire::codec::INITIAL_STREAM_WINDOW as usize {
            break;
        }
    }

    // Another stream on the same connection is answered while stream 1 is stalled.
    raw.send(&request_frame(3, &path("echo"), b"meanwhile"))
        .await;
    let meanwhile = until_terminal(&mut raw, 3).await;
    assert_eq!(
        frames_of(&meanwhile, 3),
        [&Frame::End {
            stream_id: 3,
            payload: Bytes::from_static(b"meanwhile")
        }]
    );
    // And stream 1 still got nothing more, then or by the next round trip.
    spent += data_cost(&meanwhile, 1);
    opaque += 1;
    spent += data_cost(&ping_round(&mut raw, opaque).await, 1);
    assert!(spent <= limit, "{spent} bytes of DATA without a grant");

    // A grant resumes it.
    raw.grant(1, 10 * 1024).await;
    loop {
        match raw.next_frame().await {
            Some(Frame::Data { stream_id: 1, .. }) => break,
            Some(Frame::Pong { .. }) => {}
            other => panic!("expected DATA on stream 1 after the grant, got {other:?}"),
        }
    }
    raw.send(&Frame::Cancel { stream_id: 1 }).await;
}

/// §7.4: on CANCEL the server stops the handler (its token fires) and sends nothing
/// more for the stream. The stream is cancelled once it has spent its whole window, so
/// nothing of it can still be queued (PONGs overtake queued DATA, §7.10) and any frame
/// for it after the CANCEL is one the server should not have sent. The client grants a
/// large window right after the CANCEL: a server that kept the stream would resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_fires_the_handlers_token_and_silences_the_stream() {
    let server = echo_server().await;
    let (mut raw, token) = raw_stream_to(&server, "endless", || endless(1000)).await;
    // Once DATA has cost the whole window the server's credit is spent: it has sent all
    // it may, and all of that has been read here.
    rest_of_window(&mut raw, 1, 0).await;
    raw.send(&Frame::Cancel { stream_id: 1 }).await;
    raw.grant(1, 64 << 20).await;
    within("the handler's token to fire", token.cancelled()).await;
    // The round trip after the CANCEL and the one after it bring nothing for the stream.
    for opaque in 1..=2 {
        let round = ping_round(&mut raw, opaque).await;
        assert!(
            frames_of(&round, 1).is_empty(),
            "after PONG {opaque}: {round:?}"
        );
    }
    // The connection itself is fine.
    raw.send(&request_frame(3, &path("echo"), b"next")).await;
    let next = until_terminal(&mut raw, 3).await;
    assert!(frames_of(&next, 1).is_empty(), "{next:?}");
}

/// §7.4, a stream cancelled while it flows (every item granted back as it arrives):
/// its token fires and what still arrives is only what its window let the server send
/// before the CANCEL, although a 64 MiB grant follows the CANCEL; the stream then falls
/// silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_flowing_stream_within_what_its_window_allowed() {
    let server = echo_server().await;
    let (mut raw, token) = raw_stream_to(&server, "endless", || endless(1000)).await;
    let (mut received, mut granted) = (0, 0);
    // Past the first window, so the stream flows on grants.
    while received < 3 * planewire::codec::INITIAL_STREAM_WINDOW as usize {
        match raw.next_frame().await {
            Some(Frame::Data {
                stream_id: 1,
                payload,
            }) => {
                let cost = planewire::codec::window_cost(payload.len());
                received += cost;
                granted += cost;
                raw.grant(1, cost as u32).await;
            }
            other => panic!("expected DATA on stream 1, got {other:?}"),
        }
    }
    raw.send(&Frame::Cancel { stream_id: 1 }).await;
    raw.grant(1, 64 << 20).await;
    within("the handler's token to fire", token.cancelled()).await;
    let limit = planewire::codec::INITIAL_STREAM_WINDOW as usize
        + granted
        + planewire::codec::window_cost(1000);
    // Rounds until one brings nothing for the stream; each is held to the limit, so a
    // server that went on fails here rather than running into the bound.
    for opaque in 1.. {
        let round = data_cost(&ping_round(&mut raw, opaque).await, 1);
        received += round;
        assert!(
            received <= limit,
            "{received} bytes of DATA, {granted} granted before the CANCEL"
        );
        if round == 0 {
            break;
        }
    }
}

/// §7.3: a REQUEST's `aux` deadline is kept by the server: a handler that never
/// answers is cancelled when it passes, and the client gets ERROR `DeadlineExceeded`
/// for that stream rather than silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deadline_ends_a_silent_handler_with_deadline_exceeded() {
    let server = echo_server().await;
    let (handler, mut tokens) = reporting(never);
    server.register(&path("silent"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_to(
        1,
        &path("silent").to_string(),
        Bytes::new(),
        Some(Duration::from_millis(100)),
    ))
    .await;
    let token = first_token(&mut tokens).await;
    let frames = until_terminal(&mut raw, 1).await;
    let mine = frames_of(&frames, 1);
    assert_eq!(mine.len(), 1, "{frames:?}");
    let (code, message) = error_of(&frames);
    assert_eq!(code, ErrorCode::DeadlineExceeded, "{message}");
    within("the handler's token to fire", token.cancelled()).await;
}

/// §7.7: a client that vanishes (its socket reset, no CANCEL, no GOAWAY) cancels the
/// handlers of its open streams; nothing keeps running for a peer that is gone. The
/// socket is dropped with a zero linger, so the server sees a reset as from a crashed
/// peer: a plain close sends only a FIN, which §7.10 defines as "no more requests", and
/// the server then rightly keeps the stream until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_cancels_its_open_handlers() {
    let server = echo_server().await;
    let (raw, token) = raw_stream_to(&server, "silent", never).await;
    assert!(!token.is_cancelled());
    raw.stream.set_zero_linger().unwrap();
    drop(raw);
    within("the handler's token to fire", token.cancelled()).await;
}

/// §7.2 error table: a request over the endpoint's concurrency limit is refused at once
/// with ERROR `Overloaded` on its own id; the held request and the connection go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_concurrency_limit_gets_overloaded_and_the_connection_stays() {
    let server = server_with(ServerConfig {
        tcp: tcp_config(),
        limits: planewire::planes::request::ServerLimits {
            max_concurrent_requests: 1,
            ..Default::default()
        },
    })
    .await;
    let (mut raw, held) = raw_stream_to(&server, "held", never).await;
    raw.send(&request_frame(3, &path("held"), b"")).await;
    let frames = until_terminal(&mut raw, 3).await;
    let (code, message) = error_of(&frames);
    assert_eq!(code, ErrorCode::Overloaded, "{message}");
    assert!(frames_of(&frames, 1).is_empty(), "{frames:?}");
    assert!(!held.is_cancelled(), "the held request is not touched");
    assert_connection_alive(&mut raw, 1).await;
}

/// §7.2 error table: a handler's own failure reaches the client as ERROR `Handler` with
/// the handler's message, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_gets_error_handler_with_its_message_and_the_connection_stays() {
    let server = echo_server().await;
    server
        .register(
            &path("fails"),
            planewire::planes::request::unary_handler(|_req: Request| async {
                Err(HandlerError::from("the model is on fire"))
            }),
        )
        .await
        .unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("fails"), b"")).await;
    let (code, message) = error_of(&until_terminal(&mut raw, 1).await);
    assert_eq!(code, ErrorCode::Handler, "{message}");
    assert!(message.contains("the model is on fire"), "{message}");
    assert_connection_alive(&mut raw, 1).await;
}

/// §7.2 error table: a response item over the server's maximum message size ends that
/// stream with ERROR `FrameTooLarge` and cancels its handler; the connection, which
/// never saw a byte of the item, stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_response_item_gets_frame_too_large_and_the_connection_stays() {
    let server = echo_server_with_max_message(4096).await;
    // One item too large, then it would go on forever: only the server can end it.
    let (mut raw, token) = raw_stream_to(&server, "huge", || endless(8192)).await;
    let frames = until_terminal(&mut raw, 1).await;
    assert_eq!(frames_of(&frames, 1).len(), 1, "{frames:?}");
    let (code, message) = error_of(&frames);
    assert_eq!(code, ErrorCode::FrameTooLarge, "{message}");
    within("the handler's token to fire", token.cancelled()).await;
    assert_connection_alive(&mut raw, 1).await;
    raw.send(&request_frame(3, &path("echo"), b"small")).await;
    let next = until_terminal(&mut raw, 3).await;
    assert!(matches!(next.last(), Some(Frame::End { .. })), "{next:?}");
}

/// §7.2: ids need not increase (id 9 then id 3 are both answered), and within one
/// stream items arrive in the order the handler produced them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_ids_are_served_and_a_streams_items_keep_their_order() {
    let server = echo_server().await;
    server
        .register(
            &path("count"),
            |_req: Request, _cancel: CancellationToken| {
                futures::stream::iter((0..500u32).map(|i| Ok(Bytes::from(i.to_string()))))
            },
        )
        .await
        .unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(9, &path("count"), b"")).await;
    raw.send(&request_frame(3, &path("echo"), b"three")).await;
    let mut frames = Vec::new();
    let mut ended = 0;
    while ended < 2 {
        let frame = raw.next_frame().await.expect("a frame");
        if matches!(frame, Frame::End { .. } | Frame::Error { .. }) {
            ended += 1;
        }
        frames.push(frame);
    }
    assert_eq!(
        frames_of(&frames, 3),
        [&Frame::End {
            stream_id: 3,
            payload: Bytes::from_static(b"three")
        }]
    );
    let mut items = Vec::new();
    for frame in frames_of(&frames, 9) {
        match frame {
            Frame::Data { payload, .. } => items.push(payload.clone()),
            Frame::End { payload, .. } if !payload.is_empty() => items.push(payload.clone()),
            Frame::End { .. } => {}
            other => panic!("unexpected frame on stream 9: {other:?}"),
        }
    }
    let expected: Vec<Bytes> = (0..500u32).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(items, expected);
}

/// §5 and §7.6: a client's GOAWAY with an unknown code (99) is a GOAWAY like any other,
/// not a decode error: the stream opened before it is still served to its END, a PING
/// still gets its PONG, and a REQUEST after it gets the documented answer (ERROR
/// `Protocol` on that id only, §7.9), not the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_goaway_with_an_unknown_code_is_accepted_as_a_goaway() {
    let server = echo_server().await;
    let gate = register_gated(&server).await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("gated"), b"")).await;
    raw.send(&Frame::GoAway {
        last_stream_id: 0,
        code: ErrorCode::Other(99),
        message: "bye for now".into(),
    })
    .await;
    assert_connection_alive(&mut raw, 1).await;
    raw.send(&request_frame(3, &path("echo"), b"late")).await;
    let late = until_terminal(&mut raw, 3).await;
    let (code, message) = error_of(&late);
    assert_eq!(code, ErrorCode::Protocol, "{message}");
    assert!(message.contains("own GOAWAY"), "{message}");
    gate.add_permits(1);
    let first = until_terminal(&mut raw, 1).await;
    assert_eq!(
        frames_of(&first, 1),
        [&Frame::End {
            stream_id: 1,
            payload: Bytes::from_static(b"done")
        }]
    );
}

/// §7.2: a REQUEST for a path no handler serves gets ERROR `UnknownEndpoint` whose
/// message names the path, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_endpoint_error_names_the_requested_path() {
    let server = echo_server().await;
    let mut raw = RawConn::connect(&server).await;
    let nowhere = "test/worker/nowhere/1f";
    raw.send(&request_to(1, nowhere, Bytes::new(), None)).await;
    let (code, message) = error_of(&until_terminal(&mut raw, 1).await);
    assert_eq!(code, ErrorCode::UnknownEndpoint, "{message}");
    assert!(message.contains(nowhere), "{message}");
    assert_connection_alive(&mut raw, 1).await;
}
