//! The TCP request plane's client against a hand-written server ([`scripted`]) that
//! breaks the protocol (strangers, garbage, oversize or cut frames, frames only clients
//! send, version 1), goes away, pings, waits for window grants, or closes: the client
//! side of `PROTOCOL.md` §6–§7. The server's side, against raw clients, is in
//! `tcp_robustness.rs` and `tcp_closing.rs`.
//!
//! [`scripted`]: planewire_testkit::scripted

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::codec::{ErrorCode, Frame, HEADER_LEN, RequestFrame};
use planewire::planes::request::{Request, RequestError, RequestPlaneClient};
use planewire::tcp::{ResponseStream, TcpClient, TcpConfig};
use planewire_testkit::scripted::*;
use planewire_testkit::tcp::*;
use planewire_testkit::within;

/// PROTOCOL.md §7.5 and §7.6, client side, against a server that puts in one write: DATA,
/// END and ERROR for stream ids the client never opened, the answer to the first
/// request, then a GOAWAY `Protocol` whose `last_stream_id` leaves the second request
/// unprocessed. The client ignores the strangers, delivers the answer, and fails the
/// second request as not processed (`ShuttingDown`, safe to retry elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_an_answer_and_a_goaway_in_one_write_are_each_handled() {
    let (addr, fake_server) = scripted_server(2, false, |requests| {
        let answered = requests
            .iter()
            .find(|req| req.payload == "first")
            .unwrap()
            .stream_id;
        wire(vec![
            Frame::Data {
                stream_id: 1000,
                payload: Bytes::from_static(b"stale"),
            },
            Frame::End {
                stream_id: 1001,
                payload: Bytes::from_static(b"stale"),
            },
            Frame::Error {
                stream_id: 1002,
                code: ErrorCode::Handler,
                message: "stale".into(),
            },
            Frame::End {
                stream_id: answered,
                payload: Bytes::from_static(b"answer"),
            },
            Frame::GoAway {
                last_stream_id: answered,
                code: ErrorCode::Protocol,
                message: "going away on an error".into(),
            },
        ])
    })
    .await;
    let client = one_connection_client();
    let mut first = open_echo(&client, &addr, "first").await;
    let mut second = open_echo(&client, &addr, "second").await;
    let answer = within("the first answer", first.next()).await;
    assert_eq!(answer.unwrap().unwrap(), "answer");
    assert!(
        within("the first stream's end", first.next())
            .await
            .is_none()
    );
    match within("the second stream's end", second.next()).await {
        Some(Err(RequestError::Remote { code, message })) => {
            assert_eq!(code, ErrorCode::ShuttingDown, "{message}");
        }
        other => panic!("the unprocessed request ended with {other:?}"),
    }
    drop((first, second, client));
    within("the fake server to see the close", fake_server)
        .await
        .unwrap();
}

/// PROTOCOL.md §6.2, §7.1 and §7.6, client side: a server that breaks the protocol gets a
/// GOAWAY naming the break (`last_stream_id` 0, `code`) and the client's end-of-stream,
/// while the client itself lives on; the stream open on that connection fails with an
/// error naming the cause, not with an answer or a hang. The server shuts its write side
/// after the break if `then_eof`.
async fn a_broken_server_gets_goaway_and_the_close(
    max_message_size: usize,
    then_eof: bool,
    answer: impl FnOnce(&[RequestFrame]) -> Vec<u8> + Send + 'static,
    code: ErrorCode,
    cause: &str,
) {
    let (addr, fake_server) = scripted_server(1, then_eof, answer).await;
    let client = TcpClient::new(TcpConfig {
        max_message_size,
        ..tcp_config()
    })
    .unwrap();
    let mut stream = open_echo(&client, &addr, "hello").await;
    match within("the stream's end", stream.next()).await {
        Some(Err(err @ RequestError::ConnectionLost { .. })) => {
            assert!(err.to_string().contains(cause), "{err}");
        }
        other => panic!("the stream ended with {other:?}"),
    }
    // The client is still held: the close is the client's own doing.
    let after = within("the client to close", fake_server).await.unwrap();
    match after.as_slice() {
        [
            Frame::GoAway {
                last_stream_id: 0,
                code: sent,
                message,
            },
        ] => {
            assert_eq!(*sent, code, "{message}");
            assert!(message.as_str().contains(cause), "{message}");
        }
        other => panic!("the client sent {other:?} before closing"),
    }
    assert_eq!(client.connection_count(&addr), 0);
    drop((stream, client));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_only_frame_from_the_server_gets_goaway_protocol_and_the_close() {
    let cancel = |requests: &[RequestFrame]| {
        wire(vec![Frame::Cancel {
            stream_id: requests[0].stream_id,
        }])
    };
    let cause = "the server sent a CANCEL frame, which only clients send";
    a_broken_server_gets_goaway_and_the_close(1 << 20, false, cancel, ErrorCode::Protocol, cause)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_server_gets_goaway_protocol_and_the_close() {
    let http = |_: &[RequestFrame]| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
    let cause = "bad magic byte 0x48";
    a_broken_server_gets_goaway_and_the_close(1 << 20, false, http, ErrorCode::Protocol, cause)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_from_the_server_gets_goaway_frame_too_large_and_the_close() {
    // The header alone: the client refuses the frame before its body arrives.
    let oversize = |requests: &[RequestFrame]| {
        let mut bytes = wire(vec![Frame::End {
            stream_id: requests[0].stream_id,
            payload: Bytes::from(vec![0; 128 * 1024]),
        }]);
        bytes.truncate(HEADER_LEN);
        bytes
    };
    let cause = "exceeds the maximum message size of 65536 bytes";
    let code = ErrorCode::FrameTooLarge;
    a_broken_server_gets_goaway_and_the_close(64 * 1024, false, oversize, code, cause).await;
}

/// PROTOCOL.md §6.2, client side: a server that stops in the middle of a frame (half of
/// a valid END, then its end-of-stream) has cut the stream's answer; the client fails the
/// stream naming the truncation rather than waiting for the rest, and tells the server
/// with GOAWAY `Protocol` before closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ending_in_the_middle_of_a_frame_gets_goaway_protocol_and_the_close() {
    let half_an_end = |requests: &[RequestFrame]| {
        let mut bytes = wire(vec![Frame::End {
            stream_id: requests[0].stream_id,
            payload: Bytes::from_static(b"the whole answer"),
        }]);
        // 20 of 40 bytes: not even the header is whole.
        bytes.truncate(bytes.len() / 2);
        bytes
    };
    let cause = "connection closed in the middle of a frame (20 bytes of it received)";
    let code = ErrorCode::Protocol;
    a_broken_server_gets_goaway_and_the_close(1 << 20, true, half_an_end, code, cause).await;
}

/// PROTOCOL.md §7.1, client side: `frame` is one only clients send; from the server it is
/// a protocol break named by its `kind`.
async fn a_client_only_frame_gets_goaway_protocol(
    frame: impl Fn(u64) -> Frame + Send + 'static,
    kind: &str,
) {
    let answer = move |requests: &[RequestFrame]| wire(vec![frame(requests[0].stream_id)]);
    let cause = format!("the server sent a {kind} frame, which only clients send");
    a_broken_server_gets_goaway_and_the_close(1 << 20, false, answer, ErrorCode::Protocol, &cause)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_the_server_gets_goaway_protocol_and_the_close() {
    // A well-formed REQUEST, so only its direction is wrong.
    let request = |stream_id| {
        Frame::Request(RequestFrame {
            stream_id,
            path: "test/worker/echo/1".into(),
            headers: Default::default(),
            payload: Bytes::from_static(b"backwards"),
            timeout: None,
        })
    };
    a_client_only_frame_gets_goaway_protocol(request, "REQUEST").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_update_from_the_server_gets_goaway_protocol_and_the_close() {
    let grant = |stream_id| Frame::WindowUpdate {
        stream_id,
        increment: 1 << 20,
    };
    a_client_only_frame_gets_goaway_protocol(grant, "WINDOW_UPDATE").await;
}

/// PROTOCOL.md §6.2 (check 2) and §6.3, client side: versions do not mix; a version-1
/// frame (here a version-2 END with its version byte changed, otherwise valid) is refused
/// at its header with GOAWAY `Protocol` naming the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_frame_from_the_server_gets_goaway_protocol_and_the_close() {
    let version_1 = |requests: &[RequestFrame]| {
        let mut bytes = answer(requests[0].stream_id);
        assert_eq!(bytes[1], 2, "byte 1 is the version");
        bytes[1] = 1;
        bytes
    };
    let cause = "unsupported protocol version 1 (this build speaks version 2)";
    let code = ErrorCode::Protocol;
    a_broken_server_gets_goaway_and_the_close(1 << 20, false, version_1, code, cause).await;
}

/// PROTOCOL.md §4 (PING), client side: a PING the server sends while a request is open
/// is answered with a PONG carrying its `opaque`, and the request is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_from_the_server_gets_its_pong_and_the_request_its_answer() {
    let (addr, fake_server) = scripted_server(1, false, |requests| {
        wire(vec![
            Frame::Ping { opaque: 42 },
            Frame::End {
                stream_id: requests[0].stream_id,
                payload: Bytes::from_static(b"answer"),
            },
        ])
    })
    .await;
    let client = client();
    let answer = call_echo(&client, &addr, "the answer", "hello").await;
    assert_eq!(answer.unwrap(), "answer");
    // The PONG was queued before the answer reached the caller; closing sends it.
    drop(client);
    let after = within("the client to close", fake_server).await.unwrap();
    assert!(
        after.contains(&Frame::Pong { opaque: 42 }),
        "no PONG {{42}} among {after:?}"
    );
}

/// PROTOCOL.md §7.6, client side, graceful: after GOAWAY `NoError` whose `last_stream_id`
/// covers the open stream, that stream still gets its answer, but the connection takes
/// no new REQUEST: the next call opens a second connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_graceful_goaway_the_open_stream_is_answered_and_new_calls_go_elsewhere() {
    let (addr, fake_server) = script(|listener| async move {
        let mut first = ScriptedConn::accept(&listener).await;
        let open = first.request().await;
        // The GOAWAY first: by the time the answer reaches the caller, the client has
        // seen it.
        first
            .write(&wire(vec![
                Frame::GoAway {
                    last_stream_id: open.stream_id,
                    code: ErrorCode::NoError,
                    message: "draining".into(),
                },
                Frame::End {
                    stream_id: open.stream_id,
                    payload: Bytes::from_static(b"answered while draining"),
                },
            ]))
            .await;
        let mut second = ScriptedConn::accept(&listener).await;
        let next = second.request().await;
        second
            .write(&wire(vec![Frame::End {
                stream_id: next.stream_id,
                payload: next.payload.clone(),
            }]))
            .await;
        (next, first.rest().await, second.rest().await)
    })
    .await;
    let client = client();
    let answer = call_echo(&client, &addr, "the open stream's answer", "open").await;
    assert_eq!(answer.unwrap(), "answered while draining");
    let answer = call_echo(&client, &addr, "the call after the GOAWAY", "after").await;
    assert_eq!(answer.unwrap(), "after");
    drop(client);
    let (next, first_after, second_after) =
        within("the client to close", fake_server).await.unwrap();
    assert_eq!(
        next.payload, "after",
        "the second connection carried the new call"
    );
    assert!(
        !first_after.iter().any(|f| matches!(f, Frame::Request(_))),
        "a REQUEST went to the connection going away: {first_after:?}"
    );
    assert!(second_after.is_empty(), "the client sent {second_after:?}");
}

/// PROTOCOL.md §7.6 and §7.7, client side: a GOAWAY `Protocol` whose `last_stream_id`
/// covers the open stream does not fail it (it may have been processed), but the
/// server's end-of-stream without an answer does: the stream ends with ConnectionLost,
/// never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_on_error_then_the_close_without_an_answer_fails_the_open_stream() {
    let (addr, fake_server) = scripted_server(1, true, |requests| {
        wire(vec![Frame::GoAway {
            last_stream_id: requests[0].stream_id,
            code: ErrorCode::Protocol,
            message: "something broke".into(),
        }])
    })
    .await;
    let client = client();
    let mut stream = open_echo(&client, &addr, "hello").await;
    match within("the stream's end", stream.next()).await {
        Some(Err(err @ RequestError::ConnectionLost { .. })) => {
            assert!(err.to_string().contains(&addr), "{err}");
        }
        other => panic!("the stream ended with {other:?}"),
    }
    assert!(
        within("the stream after its error", stream.next())
            .await
            .is_none()
    );
    let after = within("the client to close", fake_server).await.unwrap();
    assert!(after.is_empty(), "the client sent {after:?}");
}

/// PROTOCOL.md §7.6 (step 4), client side: a draining server may end a stream still open
/// at its drain timeout with ERROR `Cancelled`; the caller gets that code from the
/// server, as a Remote error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_off_by_a_draining_server_gets_its_cancelled_error() {
    let (addr, fake_server) = scripted_server(1, false, |requests| {
        let stream_id = requests[0].stream_id;
        wire(vec![
            Frame::GoAway {
                last_stream_id: stream_id,
                code: ErrorCode::NoError,
                message: "draining".into(),
            },
            Frame::Error {
                stream_id,
                code: ErrorCode::Cancelled,
                message: "the drain timed out".into(),
            },
        ])
    })
    .await;
    let client = client();
    let err = call_echo(&client, &addr, "the stream's end", "hello")
        .await
        .unwrap_err();
    match &err {
        RequestError::Remote { code, message } => {
            assert_eq!(*code, ErrorCode::Cancelled, "{message}");
            assert!(message.contains("the drain timed out"), "{message}");
        }
        other => panic!("the stream ended with {other:?}"),
    }
    drop(client);
    within("the client to close", fake_server).await.unwrap();
}

/// PROTOCOL.md §7.8, client side: as its caller reads, the client grants the window
/// back, what has been read each time that reaches half the initial window (1 MiB). The
/// server sends items worth more than that, then waits for the grant before it ends the
/// stream: without the grant the caller would wait in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_grants_the_window_back_as_its_caller_reads() {
    use planewire::codec::{INITIAL_STREAM_WINDOW, window_cost};

    const ITEMS: usize = 1100;
    const ITEM: usize = 1000;
    let half_window = INITIAL_STREAM_WINDOW as usize / 2;
    // Within the window: the server never has to wait before the grant.
    assert!(half_window < ITEMS * window_cost(ITEM));
    assert!(ITEMS * window_cost(ITEM) <= INITIAL_STREAM_WINDOW as usize);
    // The first grant: the items read when their cost first reaches half the window.
    let grant = half_window.div_ceil(window_cost(ITEM)) * window_cost(ITEM);

    let (addr, fake_server) = script(|listener| async move {
        let mut conn = ScriptedConn::accept(&listener).await;
        let request = conn.request().await;
        let stream_id = request.stream_id;
        let items = (0..ITEMS)
            .map(|_| Frame::Data {
                stream_id,
                payload: Bytes::from(vec![b'x'; ITEM]),
            })
            .collect();
        conn.write(&wire(items)).await;
        let mut before_end = Vec::new();
        loop {
            match conn.next_frame().await {
                Some(frame @ Frame::WindowUpdate { stream_id: id, .. }) if id == stream_id => {
                    before_end.push(frame);
                    break;
                }
                Some(other) => before_end.push(other),
                None => panic!("the client closed before granting: {before_end:?}"),
            }
        }
        conn.write(&wire(vec![Frame::End {
            stream_id,
            payload: Bytes::new(),
        }]))
        .await;
        (stream_id, before_end, conn.rest().await)
    })
    .await;
    let client = client();
    let mut stream = open_echo(&client, &addr, "a long answer").await;
    let read = within("every item and the end", async {
        let mut read = 0;
        while let Some(item) = stream.next().await {
            assert_eq!(item.unwrap().len(), ITEM);
            read += 1;
        }
        read
    })
    .await;
    assert_eq!(read, ITEMS, "the caller read every item");
    drop((stream, client));
    let (stream_id, before_end, after) = within("the client to close", fake_server).await.unwrap();
    assert_eq!(
        before_end,
        vec![Frame::WindowUpdate {
            stream_id,
            increment: u32::try_from(grant).unwrap(),
        }],
        "one grant of what was read"
    );
    assert!(grant >= 1 << 20);
    // What was read after the grant is under half the window: nothing more to grant.
    assert!(after.is_empty(), "the client sent {after:?}");
}

/// PROTOCOL.md §6.1 (sending), client side: a request over the client's
/// `DYN_TCP_MAX_MESSAGE_SIZE`, on a connection already open, is refused before any byte
/// of it is written: the next frame the server reads is the next request, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_leaves_no_byte_on_an_open_connection() {
    const MAX: usize = 64 * 1024;
    let (addr, fake_server) = script(|listener| async move {
        let mut conn = ScriptedConn::accept(&listener).await;
        let mut received = Vec::new();
        for _ in 0..2 {
            let request = conn.request().await;
            conn.write(&wire(vec![Frame::End {
                stream_id: request.stream_id,
                payload: Bytes::from_static(b"ok"),
            }]))
            .await;
            received.push(request);
        }
        (received, conn.rest().await)
    })
    .await;
    let client = TcpClient::new(TcpConfig {
        max_message_size: MAX,
        ..tcp_config()
    })
    .unwrap();
    let echo = path("echo");
    let unary = |body: Bytes| client.unary(&addr, Request::new(&echo, body));
    assert_eq!(
        within("the first call", unary(Bytes::from_static(b"first")))
            .await
            .unwrap(),
        "ok"
    );
    // One byte over: the whole frame is MAX + 1.
    let over = MAX + 1 - HEADER_LEN - echo.to_string().len();
    let err = within("the oversize call", unary(Bytes::from(vec![0x5a; over])))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::TooLarge { size, max, .. } if size == MAX as u64 + 1 && max == MAX),
        "{err}"
    );
    let next = Bytes::from(vec![0xa5; 1000]);
    assert_eq!(
        within("the next call", unary(next.clone())).await.unwrap(),
        "ok"
    );
    drop(client);
    let (received, after) = within("the client to close", fake_server).await.unwrap();
    assert_eq!(received[0].payload, "first");
    assert_eq!(
        received[1].payload, next,
        "the frame after the first request is the next one, whole"
    );
    assert!(after.is_empty(), "the client sent {after:?}");
}

/// The END of `stream_id` carrying "answer", as one server write.
fn answer(stream_id: u64) -> Vec<u8> {
    wire(vec![Frame::End {
        stream_id,
        payload: Bytes::from_static(b"answer"),
    }])
}

/// A client whose one call to `addr` got "answer" back.
async fn answered_client(addr: &str) -> TcpClient {
    let client = client();
    let reply = call_echo(&client, addr, "the answer", "hello").await;
    assert_eq!(reply.unwrap(), "answer");
    client
}

/// A unary call of `payload` to the scripted server's echo path, within the tests'
/// patience (`what` names it if it takes longer).
/// Opens a stream to the echo endpoint, which the scripted server answers as it likes.
async fn open_echo(client: &TcpClient, addr: &str, payload: &'static str) -> ResponseStream {
    client
        .call(addr, Request::new(&path("echo"), payload))
        .await
        .unwrap()
}

async fn call_echo(
    client: &TcpClient,
    addr: &str,
    what: &str,
    payload: &'static str,
) -> Result<Bytes, RequestError> {
    within(
        what,
        client.unary(addr, Request::new(&path("echo"), payload)),
    )
    .await
}

/// PROTOCOL.md §7.10, client side: once the server has answered and shut its write side,
/// the client closes its socket, which ends the server's linger, though the client itself
/// (and its pool) lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_closes_once_it_sees_the_servers_end_of_stream() {
    let (addr, fake_server) =
        scripted_server(1, true, |requests| answer(requests[0].stream_id)).await;
    let client = answered_client(&addr).await;
    let after = within("the client to close", fake_server).await.unwrap();
    assert!(after.is_empty(), "the client sent {after:?}");
    assert_eq!(client.connection_count(&addr), 0);
}

/// A client that is dropped closes its sockets whole: its reader stops with its writer,
/// though the server goes on writing frames the reader would otherwise keep reading (a
/// PONG every few milliseconds), and the server's writes end in a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_closes_its_socket_though_the_server_keeps_writing() {
    let (addr, fake_server) = script(|listener| async move {
        use tokio::io::AsyncWriteExt;
        let mut conn = ScriptedConn::accept(&listener).await;
        let request = conn.request().await;
        conn.write(&answer(request.stream_id)).await;
        let pong = wire(vec![Frame::Pong { opaque: 7 }]);
        // Until a write meets the client's closed socket.
        while conn.socket.write_all(&pong).await.is_ok() {
            // The server's pace, not a wait for the client.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(answered_client(&addr).await);
    within("the client's socket to close", fake_server)
        .await
        .unwrap();
}
