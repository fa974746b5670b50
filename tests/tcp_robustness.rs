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
