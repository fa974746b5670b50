//! Closing, idleness and shutdown (`PROTOCOL.md` §7.6, §7.10, §7.11), from a raw client:
//! what the server writes on its way out, in what order, and when it closes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use planewire::codec::{ErrorCode, Frame, encode_frame};
use planewire::planes::request::{Request, RequestPlaneServer};
use planewire::tcp::{ServerConfig, TcpConfig, TcpServer};
use planewire_testkit::peer::*;
use planewire_testkit::raw::*;
use planewire_testkit::tcp::*;
use planewire_testkit::within;
use tokio_util::sync::CancellationToken;

/// What a server may write before a control frame that overtakes queued DATA (§9): the
/// batch being written, 256 KiB, which its last frame may cross.
const WRITE_BATCH: usize = 256 * 1024;

/// An echo server with these `DYN_TCP_IDLE_TIMEOUT` and `DYN_TCP_FRAME_TIMEOUT`.
async fn server_with_timeouts(idle: Duration, frame: Duration) -> TcpServer {
    server_with(ServerConfig {
        tcp: TcpConfig {
            idle_timeout: idle,
            frame_timeout: frame,
            ..tcp_config()
        },
        ..ServerConfig::default()
    })
    .await
}

/// Registers `answer`, whose requests all get `answer` as their one item.
async fn register_answer(server: &TcpServer, answer: Bytes) {
    server
        .register(
            &path("answer"),
            planewire::planes::request::unary_handler(move |_req: Request| {
                let answer = answer.clone();
                async move { Ok(answer) }
            }),
        )
        .await
        .unwrap();
}

/// Sends `frames` in one write, so that the server reads them together.
async fn send_together(raw: &mut RawConn, frames: &[Frame]) {
    let mut wire = BytesMut::new();
    for frame in frames {
        encode_frame(frame, usize::MAX, &mut wire).unwrap();
    }
    raw.send_bytes(&wire).await;
}

/// The GOAWAYs among `frames`.
fn go_aways(frames: &[Frame]) -> Vec<&Frame> {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::GoAway { .. }))
        .collect()
}

/// `frames` hold exactly one GOAWAY, graceful (`NoError`), naming `last_stream_id`.
fn assert_one_graceful_goaway(frames: &[Frame], last_stream_id: u64) {
    match go_aways(frames).as_slice() {
        [
            Frame::GoAway {
                last_stream_id: last,
                code: ErrorCode::NoError,
                ..
            },
        ] => assert_eq!(*last, last_stream_id, "{frames:?}"),
        other => panic!("expected one graceful GOAWAY, got {other:?} in {frames:?}"),
    }
}

/// Reads the first step of an idle close (§7.11): GOAWAY `NoError` refusing nothing
/// (`last_stream_id` 2^64 − 1) and naming the idle timeout, then a PING, whose opaque
/// it returns.
async fn first_idle_step(raw: &mut RawConn) -> u64 {
    match raw.next_frame().await {
        Some(Frame::GoAway {
            last_stream_id: u64::MAX,
            code: ErrorCode::NoError,
            message,
        }) => assert!(
            message.as_str().contains("DYN_TCP_IDLE_TIMEOUT"),
            "{message}"
        ),
        other => panic!("expected the idle close's first GOAWAY, got {other:?}"),
    }
    match raw.next_frame().await {
        Some(Frame::Ping { opaque }) => opaque,
        other => panic!("expected the idle close's PING, got {other:?}"),
    }
}

/// How long the workers of the test's runtime, which run the server's tasks too, have
/// been busy rather than parked.
fn workers_busy() -> Duration {
    let metrics = tokio::runtime::Handle::current().metrics();
    (0..metrics.num_workers())
        .map(|worker| metrics.worker_total_busy_duration(worker))
        .sum()
}

/// §7.10 and §9: the server writes a PONG ahead of the DATA it has queued, behind at
/// most the batch being written. The REQUEST and the PING go out in one write, so the
/// server reads them together: it queues the answer's whole first window (2 MiB of
/// 64 KiB items, ready at once) before it handles the PING, and writes none of it
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_overtakes_the_data_queued_before_its_ping() {
    const ITEM: usize = 64 * 1024;
    let server = echo_server().await;
    server
        .register(
            &path("endless"),
            |_req: Request, _cancel: CancellationToken| endless(ITEM),
        )
        .await
        .unwrap();
    let mut raw = RawConn::connect(&server).await;
    let request = request_frame(1, &path("endless"), b"");
    send_together(&mut raw, &[request, Frame::Ping { opaque: 7 }]).await;
    let spent = data_cost(&until_pong(&mut raw, 7).await, 1);
    assert!(
        spent <= WRITE_BATCH + planewire::codec::window_cost(ITEM),
        "{spent} bytes of DATA came before the PONG"
    );
    // The rest of the window was queued, and comes after the PONG.
    rest_of_window(&mut raw, 1, spent).await;
}

/// §7.10 steps 3 and 4: a server closing on an error shuts its write side, then reads
/// and discards what the client still sends before it closes its socket. Here the
/// client asks for an answer larger than its socket buffer, breaks the protocol, and
/// sends more bytes once the server has stopped reading frames, all before it reads
/// anything. Then it reads: the answer, the GOAWAY and a clean end-of-stream. A server
/// that closed with those bytes unread would have its kernel reset the connection and
/// drop what it had not sent yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_on_an_error_lingers_and_the_client_reads_all_without_a_reset() {
    let server = echo_server().await;
    let answer = Bytes::from(vec![b'a'; 1 << 20]);
    register_answer(&server, answer.clone()).await;
    let mut raw = RawConn::connect(&server).await;
    // The connection is registered once it has answered.
    assert_connection_alive(&mut raw, 1).await;
    raw.send(&request_frame(1, &path("answer"), b"")).await;
    raw.send_bytes(GARBAGE).await;
    // Deregistered: the server has left its read loop and reads no more frames.
    within("the server to stop serving the connection", async {
        while !server.connection_buffer_capacities().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    raw.send_bytes(&[0x5a; 64 * 1024]).await;
    let frames = raw.until_clean_close().await;
    assert_eq!(frames.len(), 2, "expected the answer and the GOAWAY");
    assert!(
        matches!(&frames[0], Frame::End { stream_id: 1, payload } if *payload == answer),
        "the answer, whole"
    );
    let (code, message) = go_away_code(&frames).expect("a GOAWAY");
    assert_eq!(code, ErrorCode::Protocol, "{message}");
    assert!(message.contains("magic"), "{message}");
}

/// §7.10 step 2: a server closing on an error writes what it owes, but gives up on a
/// client that never reads: after 5 s it closes anyway. The client grants a stream of
/// 76 items of 64 KiB (4.75 MiB) all the window it needs and reads nothing. Once the
/// handler has made them all, what the sockets of both sides cannot take (they take
/// about 4 MiB on Linux's loopback) waits in the server's writer: something, but less
/// than the 4 MiB at which the server stops reading (§7.8). Then the client breaks the
/// protocol, the server leaves its read loop at once, and from then on the client only
/// writes. The server cannot flush what it owes; it closes anyway, with the client's
/// bytes unread, which resets the connection: the client's write fails. (Where the
/// sockets take all 4.75 MiB, the server flushes, lingers and closes, and the test
/// shows only that it closes.) The frame timeout, which would close a connection whose
/// client stopped reading without any error, is longer than the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_on_an_error_closes_anyway_when_the_client_never_reads() {
    const BOUND: Duration = Duration::from_secs(30);
    const ITEMS: usize = 76;
    let server = server_with_timeouts(Duration::from_secs(300), 2 * BOUND).await;
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let made = made.clone();
        server
            .register(
                &path("items"),
                move |_req: Request, _cancel: CancellationToken| {
                    let made = made.clone();
                    endless(64 * 1024).take(ITEMS).inspect(move |_| {
                        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    })
                },
            )
            .await
            .unwrap();
    }
    let mut raw = RawConn::connect(&server).await;
    // The connection is registered once it has answered.
    assert_connection_alive(&mut raw, 1).await;
    let grant = Frame::WindowUpdate {
        stream_id: 1,
        increment: u32::MAX,
    };
    send_together(&mut raw, &[request_frame(1, &path("items"), b""), grant]).await;
    within("the handler to make every item", async {
        while made.load(std::sync::atomic::Ordering::Relaxed) < ITEMS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    raw.send_bytes(GARBAGE).await;
    // Deregistered: the server took in the bad bytes and left its read loop.
    within("the server to stop serving the connection", async {
        while !server.connection_buffer_capacities().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut pings = BytesMut::new();
    for opaque in 0..1000 {
        encode_frame(&Frame::Ping { opaque }, usize::MAX, &mut pings).unwrap();
    }
    let write_failed = tokio::time::timeout(BOUND, async {
        loop {
            if let Err(err) = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &pings).await {
                return err;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server kept the connection for {BOUND:?}"));
    assert!(
        matches!(
            write_failed.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{write_failed}"
    );
}

/// §7.11, idle close: a connection silent for `DYN_TCP_IDLE_TIMEOUT` gets the first
/// step (GOAWAY refusing nothing, then a PING). A request sent before the PONG is
/// served, and the PONG brings the final GOAWAY, naming that request's id, then the
/// close. Without the PONG only the frame timeout would, and it is longer than the test
/// waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pong_to_the_idle_ping_brings_the_final_goaway_and_the_close() {
    let server = server_with_timeouts(Duration::from_millis(200), Duration::from_secs(60)).await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("echo"), b"first")).await;
    until_terminal(&mut raw, 1).await;
    let idle_ping = first_idle_step(&mut raw).await;
    raw.send(&request_frame(3, &path("echo"), b"before the pong"))
        .await;
    raw.send(&Frame::Pong { opaque: idle_ping }).await;
    let rest = raw.until_closed().await;
    assert_eq!(
        frames_of(&rest, 3),
        [&Frame::End {
            stream_id: 3,
            payload: Bytes::from_static(b"before the pong")
        }]
    );
    assert_one_graceful_goaway(&rest, 3);
    assert_eq!(rest.len(), 2, "{rest:?}");
}

/// §7.11: idleness is silence in both directions, so a client that only pings keeps its
/// connection: no GOAWAY comes while it pings every tenth of the idle timeout for three
/// idle timeouts, and once it stops, the idle close begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_alone_keep_a_connection_from_the_idle_close() {
    const IDLE: Duration = Duration::from_millis(500);
    let server = server_with_timeouts(IDLE, Duration::from_secs(60)).await;
    let mut raw = RawConn::connect(&server).await;
    let started = std::time::Instant::now();
    for opaque in 1.. {
        assert_connection_alive(&mut raw, opaque).await;
        if started.elapsed() > 3 * IDLE {
            break;
        }
        // The client's pace, not a wait for the server.
        tokio::time::sleep(IDLE / 10).await;
    }
    first_idle_step(&mut raw).await;
}

/// §7.11: a connection is idle only with no open stream. A handler that keeps its
/// stream silent for many idle timeouts keeps the connection: the stream's end (ERROR
/// `DeadlineExceeded`, at the deadline its REQUEST carried) is the first frame, with no
/// GOAWAY before it, and only then does the idle close begin. Meanwhile the runtime's
/// workers are mostly parked: the idle clock does not keep firing on the open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_keeps_a_silent_connection_from_the_idle_close() {
    const IDLE: Duration = Duration::from_millis(100);
    let server = server_with_timeouts(IDLE, Duration::from_secs(60)).await;
    let (handler, mut tokens) = reporting(never);
    server.register(&path("silent"), handler).await.unwrap();
    let mut raw = RawConn::connect(&server).await;
    let (busy_before, started) = (workers_busy(), std::time::Instant::now());
    let silent = path("silent").to_string();
    raw.send(&request_to(1, &silent, Bytes::new(), Some(15 * IDLE)))
        .await;
    let _token = first_token(&mut tokens).await;
    let (code, message) = error_of(&until_terminal(&mut raw, 1).await);
    assert_eq!(code, ErrorCode::DeadlineExceeded, "{message}");
    let (busy, elapsed) = (workers_busy() - busy_before, started.elapsed());
    assert!(
        busy < elapsed / 4,
        "the workers were busy {busy:?} of the {elapsed:?} the stream was open"
    );
    first_idle_step(&mut raw).await;
}

/// §7.6 and §7.11: the final GOAWAY of an idle close is the connection's last. The
/// client leaves the idle PING unanswered, so the frame timeout brings the final GOAWAY,
/// while a request sent after the first step holds the connection open. Then the
/// server shuts down, the late PONG arrives, and the client pings and sends a new
/// request: none of it brings another GOAWAY. What follows is only what is owed: the
/// PING's PONG, ERROR `ShuttingDown` for the new request and the open stream's END.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_final_goaway_the_server_sends_only_what_is_owed() {
    let server = server_with_timeouts(Duration::from_millis(200), Duration::from_secs(1)).await;
    let gate = register_gated(&server).await;
    let mut raw = RawConn::connect(&server).await;
    let idle_ping = first_idle_step(&mut raw).await;
    raw.send(&request_frame(1, &path("gated"), b"")).await;
    let final_go_away = raw.next_frame().await.into_iter().collect::<Vec<_>>();
    assert_one_graceful_goaway(&final_go_away, 1);
    let client = async move {
        raw.send(&Frame::Pong { opaque: idle_ping }).await;
        raw.send(&request_frame(3, &path("echo"), b"late")).await;
        // Its PONG: the server has read all that came before.
        let mut after = ping_round(&mut raw, 1).await;
        gate.add_permits(1);
        after.extend(raw.until_closed().await);
        after
    };
    let ((), after) = within("the shutdown", async {
        tokio::join!(server.shutdown(), client)
    })
    .await;
    assert!(go_aways(&after).is_empty(), "{after:?}");
    assert_eq!(
        frames_of(&after, 1),
        [&Frame::End {
            stream_id: 1,
            payload: Bytes::from_static(b"done")
        }]
    );
    let late = frames_of(&after, 3);
    assert!(
        matches!(
            late[..],
            [Frame::Error {
                code: ErrorCode::ShuttingDown,
                ..
            }]
        ),
        "{after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");
}

/// §7.6, graceful shutdown: each connection's GOAWAY names the highest stream id
/// accepted on it: 0 on a connection that sent no REQUEST (only a PING), 7 on one whose
/// one request was stream 7. Then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_goaway_names_the_streams_accepted_on_its_connection_or_zero() {
    let server = echo_server().await;
    let mut quiet = RawConn::connect(&server).await;
    assert_connection_alive(&mut quiet, 1).await;
    let mut used = RawConn::connect(&server).await;
    used.send(&request_frame(7, &path("echo"), b"seven")).await;
    until_terminal(&mut used, 7).await;
    // Each closes its socket once it has read the close, which ends the server's linger.
    let until_closed = |mut raw: RawConn| async move { raw.until_closed().await };
    let ((), quiet, used) = within("the shutdown", async {
        tokio::join!(server.shutdown(), until_closed(quiet), until_closed(used))
    })
    .await;
    assert_one_graceful_goaway(&quiet, 0);
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_one_graceful_goaway(&used, 7);
    assert_eq!(used.len(), 1, "{used:?}");
}
