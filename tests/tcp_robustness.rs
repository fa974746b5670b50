//! What the network can throw at the TCP request plane: garbage, protocol violations,
//! dying servers, shutdowns. Each failure must stay on its own connection or stream.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use planewire::codec::{ErrorCode, Frame, FrameHeader, FrameKind, encode_frame};
use planewire::planes::request::{
    HandlerError, Request, RequestError, RequestPlaneClient, RequestPlaneServer,
};
use planewire::tcp::TcpConfig;
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};
use planewire_testkit::peer::*;
use planewire_testkit::raw::*;
use planewire_testkit::tcp::*;
use planewire_testkit::{PATIENCE, within};
use tokio_util::sync::CancellationToken;
use zerocopy::IntoBytes;

/// Sends each case's bytes on a fresh connection: each must get GOAWAY `Protocol` whose
/// message contains the case's text, then the close.
async fn each_is_a_protocol_goaway<'a>(
    server: &TcpServer,
    cases: impl IntoIterator<Item = (&'a [u8], &'a str)>,
) {
    for (wire, expected) in cases {
        let mut raw = RawConn::connect(server).await;
        raw.send_bytes(wire).await;
        let (code, message) = go_away_code(&raw.until_closed().await).expect("go-away");
        assert_eq!(code, ErrorCode::Protocol, "{expected}");
        assert!(message.contains(expected), "{message}");
    }
}

async fn assert_still_serving(server: &TcpServer, client: &TcpClient) {
    assert_echoes(client, &server.local_addr().to_string(), "alive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_only_that_connection() {
    let server = echo_server().await;
    let healthy = client();
    assert_still_serving(&server, &healthy).await;
    let mut raw = RawConn::connect(&server).await;
    raw.send_bytes(GARBAGE).await;
    let frames = raw.until_closed().await;
    let (code, message) = go_away_code(&frames).expect("a go-away before the close");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(message.contains("magic"), "{message}");
    assert_still_serving(&server, &healthy).await;
}

/// PROTOCOL.md §6.2 and §7.10: end-of-stream exactly between two frames is a normal close.
/// The request before it is answered, and the server closes without a GOAWAY: it has no
/// error to name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_stream_between_frames_is_answered_and_closed_without_goaway() {
    let server = echo_server().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("echo"), b"last")).await;
    tokio::io::AsyncWriteExt::shutdown(&mut raw.stream)
        .await
        .unwrap();
    let frames = raw.until_closed().await;
    assert_eq!(
        frames,
        vec![Frame::End {
            stream_id: 1,
            payload: Bytes::from_static(b"last"),
        }],
        "exactly the answer, then the close"
    );
}

/// A version-1 peer (no flow control) is refused on its first frame, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version_is_refused_by_name() {
    let server = echo_server().await;
    let healthy = client();
    let mut raw = RawConn::connect(&server).await;
    let mut wire = BytesMut::new();
    encode_frame(
        &request_frame(1, &path("echo"), b"x"),
        usize::MAX,
        &mut wire,
    )
    .unwrap();
    wire[1] = 1;
    raw.send_bytes(&wire).await;
    let (code, message) = go_away_code(&raw.until_closed().await).expect("go-away");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(
        message.contains("version 1") && message.contains("speaks version 2"),
        "{message}"
    );
    assert_still_serving(&server, &healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_is_refused_from_the_header_without_waiting_for_the_body() {
    let server = echo_server().await;
    let healthy = client();
    let mut raw = RawConn::connect(&server).await;
    // Claims a 1 GiB payload and sends none of it: the server must answer from the
    // header alone (a server that reserved or awaited the body would not answer).
    let header = FrameHeader::new(FrameKind::Data, 1, 0, 0, 1 << 30, 0);
    raw.send_bytes(header.as_bytes()).await;
    let (code, message) = go_away_code(&raw.until_closed().await).expect("go-away");
    assert_eq!(code, ErrorCode::FrameTooLarge);
    assert!(message.contains("DYN_TCP_MAX_MESSAGE_SIZE"), "{message}");
    assert_still_serving(&server, &healthy).await;
    assert_eq!(
        server.connection_buffer_capacities().len(),
        1,
        "the bad connection is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_only_rules_are_enforced() {
    let server = echo_server().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&Frame::Ping { opaque: 77 }).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong { opaque: 77 }));
    raw.send(&request_frame(5, &path("echo"), b"hi")).await;
    assert_eq!(
        raw.next_frame().await,
        Some(Frame::End {
            stream_id: 5,
            payload: Bytes::from_static(b"hi")
        })
    );
    raw.send(&Frame::Data {
        stream_id: 5,
        payload: Bytes::from_static(b"?"),
    })
    .await;
    let (code, message) = go_away_code(&raw.until_closed().await).expect("go-away");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(message.contains("DATA"), "{message}");
}

/// A server on its own runtime, so the test can kill it the way a crash would: every
/// task and socket dropped at once, no go-away, no drain.
struct Killable {
    runtime: tokio::runtime::Runtime,
    server: TcpServer,
}

fn start_killable(port: u16) -> Killable {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(async {
            let tcp = TcpConfig {
                port: Some(port).filter(|p| *p != 0),
                ..tcp_config()
            };
            let server = server_with(ServerConfig {
                tcp,
                ..ServerConfig::default()
            })
            .await;
            server
                .register(
                    &path("ticks"),
                    |_req: Request, _cancel: CancellationToken| {
                        futures::stream::unfold(0u32, |i| async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            Some((Ok::<_, HandlerError>(Bytes::from(i.to_string())), i + 1))
                        })
                    },
                )
                .await
                .unwrap();
            server
        });
        Killable { runtime, server }
    })
    .join()
    .unwrap()
}

impl Killable {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops the server as a dying process would, and returns once its port refuses
    /// connections. The runtime stops first, dropping every task unpolled, the listener
    /// and sockets among them; only then is the server dropped, so its `Drop` (which
    /// tells connections to end their streams with `ShuttingDown`) finds no task left to
    /// tell, as in a crash. Until the listener is gone the kernel still accepts
    /// connections, which it resets later.
    async fn kill(self) {
        let addr = self.addr();
        let Killable { runtime, server } = self;
        tokio::task::spawn_blocking(move || {
            runtime.shutdown_timeout(PATIENCE);
            drop(server);
        })
        .await
        .unwrap();
        within("the killed server's port to close", async {
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_ends_streams_with_connection_lost_and_a_restart_is_used() {
    let first = start_killable(0);
    let addr = first.addr();
    let client = client();
    let target = addr.to_string();
    let mut stream = client
        .call(&target, Request::new(&path("ticks"), ""))
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), "0");
    first.kill().await;
    let err = within("the stream to fail", async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return err,
                None => panic!("the stream ended cleanly although the server died"),
            }
        }
    })
    .await;
    assert!(matches!(err, RequestError::ConnectionLost { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&target), "{err}");

    let refused = client
        .unary(&target, Request::new(&path("echo"), "x"))
        .await
        .unwrap_err();
    assert!(matches!(refused, RequestError::Connect { .. }), "{refused}");

    let second = start_killable(addr.port());
    assert_eq!(second.addr(), addr);
    let reply = within(
        "a call after restart",
        client.unary(&target, Request::new(&path("echo"), "back")),
    )
    .await
    .unwrap();
    assert_eq!(reply, "back");
    second.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_and_refuses_new_requests() {
    let server = echo_server().await;
    let entered = CancellationToken::new();
    {
        let entered = entered.clone();
        server
            .register(
                &path("slow"),
                move |_req: Request, _cancel: CancellationToken| {
                    entered.cancel();
                    futures::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, HandlerError>(Bytes::from_static(b"finished"))
                    })
                },
            )
            .await
            .unwrap();
    }
    let client = client();
    let addr = server.local_addr().to_string();
    let slow = client
        .call(&addr, Request::new(&path("slow"), ""))
        .await
        .unwrap();
    within("the handler to start", entered.cancelled()).await;
    let shutdown = async {
        server.shutdown().await;
    };
    let after = async {
        // Give the go-away a moment to arrive, then try to start new work.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fresh = planewire_testkit::tcp::client();
        fresh
            .unary(&addr, Request::new(&path("echo"), "late"))
            .await
    };
    let (drained, (), late) = within("shutdown", async {
        tokio::join!(slow.collect::<Vec<_>>(), shutdown, after)
    })
    .await;
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0].as_ref().unwrap(), "finished");
    let late = late.unwrap_err();
    assert!(late.is_retryable(), "{late}");
}

/// PROTOCOL.md §6.2 checks 3, 4, 6 and 7 against a live server, one connection each:
/// every one is a GOAWAY `Protocol` naming the problem, then the close; other
/// connections are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_header_check_is_a_named_protocol_goaway() {
    let server = echo_server().await;
    let healthy = client();
    let mut unknown_kind = FrameHeader::new(FrameKind::Data, 1, 0, 0, 0, 0)
        .as_bytes()
        .to_vec();
    unknown_kind[2] = 10;
    let mut flags = FrameHeader::new(FrameKind::Data, 1, 0, 0, 0, 0)
        .as_bytes()
        .to_vec();
    flags[3] = 1;
    let payload_on_cancel = FrameHeader::new(FrameKind::Cancel, 1, 0, 0, 3, 0)
        .as_bytes()
        .to_vec();
    let mut bad_path = FrameHeader::new(FrameKind::Request, 1, 2, 0, 0, 0)
        .as_bytes()
        .to_vec();
    bad_path.extend_from_slice(b"\xff\xfe");
    let cases: [(&[u8], &str); 4] = [
        (&unknown_kind, "unknown frame kind 10"),
        (&flags, "unknown flags"),
        (&payload_on_cancel, "carries no payload"),
        (&bad_path, "not valid UTF-8"),
    ];
    each_is_a_protocol_goaway(&server, cases.iter().map(|(w, e)| (&w[..], *e))).await;
    assert_still_serving(&server, &healthy).await;
}

/// §7.5: CANCEL and WINDOW_UPDATE for ids the server does not know are ignored, and
/// END or ERROR from a client is a protocol error like DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_ignored_and_server_only_frames_refused() {
    let server = echo_server().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&Frame::Cancel { stream_id: 99 }).await;
    raw.send(&Frame::WindowUpdate {
        stream_id: 98,
        increment: 1000,
    })
    .await;
    raw.send(&Frame::Ping { opaque: 5 }).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong { opaque: 5 }));
    let server_only = [
        (
            Frame::End {
                stream_id: 1,
                payload: Bytes::new(),
            },
            "END",
        ),
        (
            Frame::Error {
                stream_id: 1,
                code: ErrorCode::Handler,
                message: "x".into(),
            },
            "ERROR",
        ),
    ];
    for (frame, kind) in server_only {
        let mut raw = RawConn::connect(&server).await;
        raw.send(&frame).await;
        let (code, message) = go_away_code(&raw.until_closed().await).expect("go-away");
        assert_eq!(code, ErrorCode::Protocol);
        assert!(message.contains(kind), "{message}");
    }
}

// ---------------------------------------------------------------------------------------
// Server-side promises, broken on purpose from a raw client.
// ---------------------------------------------------------------------------------------

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
    let (handler, mut tokens) = reporting(|| endless(1000));
    server.register(&path("endless"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("endless"), b"")).await;
    let token = first_token(&mut tokens).await;
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
    let (handler, mut tokens) = reporting(|| endless(1000));
    server.register(&path("endless"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("endless"), b"")).await;
    let token = first_token(&mut tokens).await;
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
    let (handler, mut tokens) = reporting(never);
    server.register(&path("silent"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("silent"), b"")).await;
    let token = first_token(&mut tokens).await;
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
    let (handler, mut tokens) = reporting(never);
    server.register(&path("held"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("held"), b"")).await;
    let held = first_token(&mut tokens).await;
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
    let (handler, mut tokens) = reporting(|| endless(8192));
    server.register(&path("huge"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("huge"), b"")).await;
    let token = first_token(&mut tokens).await;
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

/// A frame's bytes: the header built field by field, then `body` as it is, so that
/// the parts can be made to disagree with the kind or hold bad bytes.
fn raw_frame(
    kind: FrameKind,
    stream_id: u64,
    path_len: u16,
    meta_len: u16,
    aux: u32,
    body: &[u8],
) -> Vec<u8> {
    let payload_len = body.len() - usize::from(path_len) - usize::from(meta_len);
    let mut wire = FrameHeader::new(kind, stream_id, path_len, meta_len, payload_len as u32, aux)
        .as_bytes()
        .to_vec();
    wire.extend_from_slice(body);
    wire
}

/// §6.2 checks 6, 7 and 8 not covered above, each on a fresh connection: a PING with a
/// payload, an END carrying a path length, a REQUEST whose header map is malformed and
/// a GOAWAY whose message is not UTF-8 each get GOAWAY `Protocol` naming the problem,
/// then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_body_check_is_a_named_protocol_goaway() {
    let server = echo_server().await;
    let healthy = client();
    let echo = path("echo").to_string();
    let path_len = echo.len() as u16;
    // One entry whose name claims 5 bytes where the section has 1 left.
    let mut bad_map = echo.as_bytes().to_vec();
    bad_map.extend_from_slice(&[5, 0, b'a']);
    let cases: [(Vec<u8>, &str); 4] = [
        (
            raw_frame(FrameKind::Ping, 1, 0, 0, 0, b"pong?"),
            "carries no payload",
        ),
        (
            raw_frame(FrameKind::End, 1, 1, 0, 0, b"x"),
            "only a request carries an endpoint path",
        ),
        (
            raw_frame(FrameKind::Request, 1, path_len, 3, 0, &bad_map),
            "malformed header map",
        ),
        (
            raw_frame(FrameKind::GoAway, 0, 0, 0, 0, b"\xff\xfe"),
            "go-away message is not valid UTF-8",
        ),
    ];
    each_is_a_protocol_goaway(&server, cases.iter().map(|(w, e)| (&w[..], *e))).await;
    assert_still_serving(&server, &healthy).await;
}

/// §6.2 "not checked": `aux` on a kind that ignores it (CANCEL, for an unknown id,
/// §7.5) and a REQUEST payload that is not UTF-8 (payloads are opaque) are no decode
/// errors: the connection stays and the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchecked_fields_are_not_protocol_errors() {
    let server = echo_server().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send_bytes(&raw_frame(FrameKind::Cancel, 42, 0, 0, 7, b""))
        .await;
    raw.send(&request_frame(1, &path("echo"), b"\xff\xfe not text"))
        .await;
    let frames = until_terminal(&mut raw, 1).await;
    assert_eq!(
        frames_of(&frames, 1),
        [&Frame::End {
            stream_id: 1,
            payload: Bytes::from_static(b"\xff\xfe not text")
        }]
    );
    assert_connection_alive(&mut raw, 1).await;
    raw.send(&request_frame(3, &path("echo"), b"next")).await;
    let next = until_terminal(&mut raw, 3).await;
    assert!(matches!(next.last(), Some(Frame::End { .. })), "{next:?}");
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
