//! The TCP server against peers that break the protocol's rules the way real peers do:
//! they half-close, send after GOAWAY, outlive the drain, truncate or drip frames, reuse
//! stream ids. Each test breaks one promise on purpose and checks what the server owes.

mod common;

use common::hostile::*;
use common::planewire_bin;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use planewire::codec::{ErrorCode, Frame, FrameHeader, FrameKind, encode_frame};
use planewire::planes::request::{HandlerError, Request, RequestPlaneServer};
use planewire::tcp::TcpConfig;
use planewire_testkit::raw::*;
use planewire_testkit::tcp::*;
use planewire_testkit::within;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use zerocopy::IntoBytes;

fn terminal_of(frames: &[&Frame]) -> Option<Frame> {
    frames
        .iter()
        .find(|f| matches!(f, Frame::End { .. } | Frame::Error { .. }))
        .map(|f| (*f).clone())
}

fn data_count(frames: &[&Frame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::Data { .. }))
        .count()
}

/// Item 2: EOF on the read side means "no more requests", never "drop what is owed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_every_stream_to_its_end() {
    let server = echo_server().await;
    server
        .register(
            &path("items"),
            counted_stream(256, 64, Arc::new(AtomicUsize::new(0))),
        )
        .await
        .unwrap();
    for trial in 0..100 {
        let mut raw = RawConn::connect(&server).await;
        raw.send(&request_frame(1, &path("items"), b"")).await;
        raw.send(&request_frame(2, &path("echo"), b"also")).await;
        raw.stream.shutdown().await.unwrap();
        let frames = raw.until_closed().await;
        let first = frames_of(&frames, 1);
        assert_eq!(
            data_count(&first),
            255,
            "trial {trial}: {} frames",
            first.len()
        );
        assert!(
            matches!(terminal_of(&first), Some(Frame::End { .. })),
            "trial {trial}: stream 1 ended without END"
        );
        assert_eq!(
            terminal_of(&frames_of(&frames, 2)),
            Some(Frame::End {
                stream_id: 2,
                payload: Bytes::from_static(b"also")
            }),
            "trial {trial}"
        );
        assert_eq!(raw.leftover(), 0, "trial {trial}: a frame was cut");
    }
}

/// Item 3: SIGTERM while a stream is mid-way; the client sends another REQUEST before
/// reading the GOAWAY. It gets the whole first stream and its END, `ShuttingDown` for
/// the second, and a clean close (a reset would destroy the unread tail). A second,
/// idle connection tells when the drain has begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_the_goaway_is_refused_and_costs_no_delivered_data() {
    const ITEMS: usize = 5000;
    let setup = planewire_bin::Setup::file("10");
    let items = ITEMS.to_string();
    let mut server = setup.serve(&["--endpoint", "t/w/items", "--responses", &items]);
    let mut raw = raw_connect(&server.address).await;
    raw.send(&request_to(
        1,
        "t/w/items",
        Bytes::from(vec![1u8; 1000]),
        None,
    ))
    .await;
    // Not read and not granted: the server stops at the window, mid-stream.
    let first = raw.next_frame().await;
    assert!(matches!(first, Some(Frame::Data { stream_id: 1, .. })));
    let mut witness = raw_connect(&server.address).await;
    server.process.signal("TERM");
    let witnessed = witness.until_closed().await;
    assert!(matches!(witnessed.as_slice(), [Frame::GoAway { .. }]));
    raw.send(&request_to(
        3,
        "t/w/items",
        Bytes::from_static(b"late"),
        None,
    ))
    .await;
    let frames = raw.until_closed_granting().await;
    assert_eq!(raw.leftover(), 0, "a frame was cut");
    let goaway = frames
        .iter()
        .find_map(|f| match f {
            Frame::GoAway {
                last_stream_id,
                code,
                ..
            } => Some((*last_stream_id, *code)),
            _ => None,
        })
        .expect("a GOAWAY");
    assert_eq!(goaway, (1, ErrorCode::NoError));
    let stream = frames_of(&frames, 1);
    // The first DATA was read before the loop; END carries the last item.
    assert_eq!(data_count(&stream) + 1, ITEMS - 1, "items of stream 1");
    assert!(matches!(terminal_of(&stream), Some(Frame::End { .. })));
    match terminal_of(&frames_of(&frames, 3)) {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::ShuttingDown),
        other => panic!("the late request got {other:?}"),
    }
    assert!(server.process.wait().success());
}

/// Item 4: a reader too slow for the drain. The GOAWAY overtakes the queued data, the
/// drain lasts its timeout, the open stream then ends with `ShuttingDown` at a frame
/// boundary, and the connection closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_by_its_timeout_ends_streams_at_frame_boundaries() {
    let drain = Duration::from_millis(800);
    let server = Arc::new(server_with_config(tcp_config(), drain).await);
    server
        .register(
            &path("endless"),
            |_req: Request, _cancel: CancellationToken| {
                futures::stream::repeat_with(|| Ok(Bytes::from(vec![b'y'; 4000])))
            },
        )
        .await
        .unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("endless"), b"")).await;
    raw.grant(1, u32::MAX).await;
    // Fill the server's queues, then shut down while the client has read nothing.
    assert!(matches!(raw.next_frame().await, Some(Frame::Data { .. })));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let shutdown = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.shutdown().await }
    });
    let mut data_before_goaway = 0usize;
    let mut goaway_at = None;
    let mut terminal = None;
    while let Some(frame) = raw.next_frame().await {
        match frame {
            Frame::GoAway { code, .. } => {
                assert_eq!(code, ErrorCode::NoError);
                goaway_at = Some(started.elapsed());
            }
            Frame::Data { payload, .. } if goaway_at.is_none() => {
                data_before_goaway += payload.len()
            }
            Frame::Data { .. } => {}
            Frame::Error { code, .. } if terminal.is_none() => terminal = Some(code),
            other => panic!("unexpected {other:?}"),
        }
        // A slow reader: about 4 MB/s.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let closed_at = started.elapsed();
    within("shutdown", shutdown).await.unwrap();
    eprintln!(
        "drain: GOAWAY after {goaway_at:?} behind {data_before_goaway} bytes of DATA, \
         closed after {closed_at:?} (drain timeout {drain:?})"
    );
    assert_eq!(raw.leftover(), 0, "a frame was cut");
    assert!(goaway_at.is_some(), "no GOAWAY");
    assert!(
        data_before_goaway < 16 << 20,
        "{data_before_goaway} bytes of DATA came before the GOAWAY"
    );
    assert_eq!(terminal, Some(ErrorCode::ShuttingDown));
    assert!(closed_at >= drain, "the drain was cut short: {closed_at:?}");
}

/// Item 5: the server stops a stream at its deadline even when the handler is always
/// ready, and cancels the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_ends_a_fast_stream() {
    let server = echo_server().await;
    let cancelled = CancellationToken::new();
    {
        let cancelled = cancelled.clone();
        server
            .register(
                &path("fast"),
                move |_req: Request, cancel: CancellationToken| {
                    let cancelled = cancelled.clone();
                    tokio::spawn(async move {
                        cancel.cancelled().await;
                        cancelled.cancel();
                    });
                    futures::stream::repeat_with(|| Ok(Bytes::from_static(b"t")))
                },
            )
            .await
            .unwrap();
    }
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_to(
        1,
        &path("fast").to_string(),
        Bytes::new(),
        Some(Duration::from_millis(50)),
    ))
    .await;
    raw.grant(1, u32::MAX).await;
    let terminal = within("the deadline", async {
        loop {
            match raw.next_frame().await {
                Some(Frame::Data { .. }) => {}
                other => return other,
            }
        }
    })
    .await;
    match terminal {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::DeadlineExceeded),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    within("the handler to be cancelled", cancelled.cancelled()).await;
}

/// Item 6: with the smallest limits, every REQUEST still gets one terminal frame and a
/// GOAWAY still goes out: messages are cut to fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frames_are_cut_to_fit_a_tiny_max_message_size() {
    for max in [25, 100] {
        let tcp = TcpConfig {
            max_message_size: max,
            ..tcp_config()
        };
        let server = server_with_config(tcp, Duration::from_secs(1)).await;
        let mut raw = RawConn::connect(&server).await;
        // 25 bytes: the smallest REQUEST there is.
        let unknown = request_to(1, "e", Bytes::new(), None);
        raw.send(&unknown).await;
        match raw.next_frame().await {
            Some(Frame::Error {
                stream_id: 1,
                code: ErrorCode::UnknownEndpoint,
                message,
            }) => assert!(24 + message.len() <= max, "{message}"),
            other => panic!("max {max}: expected UnknownEndpoint, got {other:?}"),
        }
        // Over the limit: refused with a GOAWAY that fits, then closed.
        let header = FrameHeader::new(FrameKind::Data, 1, 0, 0, 1000, 0);
        raw.send_bytes(header.as_bytes()).await;
        match raw.next_frame().await {
            Some(Frame::GoAway { code, message, .. }) => {
                assert_eq!(code, ErrorCode::FrameTooLarge);
                assert!(24 + message.len() <= max, "{message}");
            }
            other => panic!("max {max}: expected GOAWAY, got {other:?}"),
        }
        assert!(raw.until_closed().await.is_empty());
    }
}

/// Item 7: a frame cut off by EOF gets a GOAWAY `Protocol` naming the truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_is_answered_with_a_goaway() {
    let server = echo_server().await;
    for cut in [10, 30] {
        let mut raw = RawConn::connect(&server).await;
        let mut wire = BytesMut::new();
        encode_frame(
            &request_frame(1, &path("echo"), b"never finished"),
            usize::MAX,
            &mut wire,
        )
        .unwrap();
        raw.send_bytes(&wire[..cut]).await;
        raw.stream.shutdown().await.unwrap();
        match raw.until_closed().await.as_slice() {
            [Frame::GoAway { code, message, .. }] => {
                assert_eq!(*code, ErrorCode::Protocol);
                assert!(message.as_str().contains("middle of a frame"), "{message}");
            }
            other => panic!("cut at {cut}: expected one GOAWAY, got {other:?}"),
        }
    }
}

/// Item 8: a slowloris of 1,000 connections (half headers, half bodies, nothing at
/// all) is reaped by the frame and idle timeouts while the server answers others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_reaped_while_others_are_served() {
    let tcp = TcpConfig {
        frame_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(700),
        ..tcp_config()
    };
    let server = server_with_config(tcp, Duration::from_secs(1)).await;
    let healthy = client();
    let addr = server.local_addr().to_string();
    let mut wire = BytesMut::new();
    encode_frame(
        &request_frame(1, &path("echo"), b"0123456789"),
        usize::MAX,
        &mut wire,
    )
    .unwrap();
    let mut peers = Vec::new();
    for i in 0..1000 {
        let mut raw = RawConn::connect(&server).await;
        match i % 3 {
            0 => raw.send_bytes(&wire[..10]).await,
            1 => raw.send_bytes(&wire[..wire.len() - 3]).await,
            _ => {}
        }
        peers.push(raw);
    }
    assert_echoes(&healthy, &addr, "served during the slowloris").await;
    let mut goaways = [0usize; 2];
    for raw in &mut peers {
        match raw.until_closed().await.as_slice() {
            [Frame::GoAway { code, message, .. }] if *code == ErrorCode::Protocol => {
                assert!(
                    message.as_str().contains("DYN_TCP_FRAME_TIMEOUT"),
                    "{message}"
                );
                goaways[0] += 1;
            }
            // An idle close in two steps: a GOAWAY refusing nothing and a PING; with no
            // PONG, the real GOAWAY after the frame timeout.
            [
                Frame::GoAway {
                    code: ErrorCode::NoError,
                    last_stream_id: u64::MAX,
                    message,
                },
                Frame::Ping { .. },
                Frame::GoAway {
                    code: ErrorCode::NoError,
                    last_stream_id: 0,
                    ..
                },
            ] => {
                assert!(
                    message.as_str().contains("DYN_TCP_IDLE_TIMEOUT"),
                    "{message}"
                );
                goaways[1] += 1;
            }
            other => panic!("expected one GOAWAY, got {other:?}"),
        }
    }
    assert_eq!(goaways, [667, 333]);
    within("the reaped connections to go", async {
        while server.connection_buffer_capacities().len() > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_echoes(&healthy, &addr, "served after the slowloris").await;
}

/// A pooled client whose connections the server closes for idleness, sending just as
/// they close: every call succeeds (a request sent before the client saw the GOAWAY is
/// served; one after goes on a new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_closes_never_fail_a_request() {
    let tcp = TcpConfig {
        idle_timeout: Duration::from_millis(100),
        ..tcp_config()
    };
    let server = server_with_config(tcp, Duration::from_secs(1)).await;
    let client = client();
    let addr = server.local_addr().to_string();
    for i in 0..40u64 {
        // Idle periods around the timeout, so that requests meet closes at every stage.
        tokio::time::sleep(Duration::from_millis(80 + (i * 7) % 40)).await;
        assert_echoes(&client, &addr, &format!("call {i}")).await;
    }
}

/// Item 10: what the server does with stream ids it should never see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_id_rules() {
    let server = echo_server().await;
    server
        .register(
            &path("hang"),
            |_req: Request, _cancel: CancellationToken| {
                futures::stream::pending::<Result<Bytes, HandlerError>>()
            },
        )
        .await
        .unwrap();

    // A finished id may be used again: the server keeps no history of ids.
    let mut raw = RawConn::connect(&server).await;
    for _ in 0..2 {
        raw.send(&request_frame(5, &path("echo"), b"again")).await;
        assert_eq!(
            raw.next_frame().await,
            Some(Frame::End {
                stream_id: 5,
                payload: Bytes::from_static(b"again")
            })
        );
    }

    // A REQUEST on an id still open is a connection error, not an ERROR on that id
    // (which would read as the end of the stream open on it).
    raw.send(&request_frame(7, &path("hang"), b"")).await;
    raw.send(&request_frame(7, &path("echo"), b"dup")).await;
    match raw.until_closed().await.as_slice() {
        [
            Frame::GoAway {
                code,
                last_stream_id,
                message,
            },
        ] => {
            assert_eq!(*code, ErrorCode::StreamIdInUse);
            assert_eq!(*last_stream_id, 7);
            assert!(message.as_str().contains("stream id 7"), "{message}");
        }
        other => panic!("expected one GOAWAY, got {other:?}"),
    }

    // Id 0 names no stream.
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(0, &path("echo"), b"zero")).await;
    match raw.until_closed().await.as_slice() {
        [Frame::GoAway { code, .. }] => assert_eq!(*code, ErrorCode::Protocol),
        other => panic!("expected one GOAWAY, got {other:?}"),
    }

    // After its own GOAWAY, a client's REQUEST is refused alone; open streams go on.
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("hang"), b"")).await;
    raw.send(&Frame::GoAway {
        last_stream_id: 0,
        code: ErrorCode::NoError,
        message: "bye".into(),
    })
    .await;
    raw.send(&request_frame(3, &path("echo"), b"after")).await;
    match raw.next_frame().await {
        Some(Frame::Error {
            stream_id: 3,
            code: ErrorCode::Protocol,
            message,
        }) => assert!(message.as_str().contains("GOAWAY"), "{message}"),
        other => panic!("expected an ERROR for stream 3, got {other:?}"),
    }
    raw.send(&Frame::Ping { opaque: 1 }).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong { opaque: 1 }));

    // During a drain, new connections are refused: the listener is closed.
    let addr = server.local_addr();
    let shutdown = server.shutdown();
    tokio::pin!(shutdown);
    let refused = async {
        within("the listener to close", async {
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    };
    tokio::select! {
        () = refused => {}
        () = &mut shutdown => panic!("the drain ended while stream 1 was open"),
    }
    raw.send(&Frame::Cancel { stream_id: 1 }).await;
    within("shutdown", shutdown).await;
}
