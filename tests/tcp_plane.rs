//! The TCP request plane's own behaviour through its public client and server, over real
//! sockets: pooling, sizes, flow control, read buffers. What every plane shares is in
//! `request_planes.rs`; the client against a scripted server that breaks the protocol is
//! in `tcp_client_vs_raw_server.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::codec::{
    ErrorCode, Frame, FrameDecoder, HEADER_LEN, INITIAL_READ_CAPACITY, encode_frame,
};
use planewire::planes::request::ServerLimits;
use planewire::planes::request::{
    HandlerError, Request, RequestError, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::tcp::TcpConfig;
use planewire::tcp::{ServerConfig, TcpClient};
use planewire_testkit::tcp::*;
use planewire_testkit::within;
use tokio::sync::{Barrier, mpsc};
use tokio_util::sync::CancellationToken;

/// Requests to one server share one connection (headers and the rest of what every plane
/// carries are in the request-plane suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_one_server_share_one_connection() {
    let server = echo_server().await;
    let client = client();
    let addr = server.local_addr().to_string();
    for body in ["ping", "pong", "again"] {
        assert_echoes(&client, &addr, body).await;
    }
    assert_eq!(
        client.connection_count(&addr),
        1,
        "the requests shared one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_from_200_tasks_over_4_connections() {
    let server = echo_server().await;
    let client = Arc::new(
        TcpClient::new(TcpConfig {
            pool_size: 4,
            ..tcp_config()
        })
        .unwrap(),
    );
    let addr = server.local_addr().to_string();
    let tasks: Vec<_> = (0..200)
        .map(|task| {
            let client = Arc::clone(&client);
            let addr = addr.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let body = format!("task {task} request {i}");
                    let reply = client
                        .unary(&addr, Request::new(&path("echo"), body.clone()))
                        .await
                        .unwrap();
                    assert_eq!(reply, body.as_bytes(), "an answer reached the wrong caller");
                }
            })
        })
        .collect();
    within("10,000 requests", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    let connections = client.connection_count(&addr);
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for a pool of 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_is_refused_before_sending() {
    let server = echo_server().await;
    let max = 1 << 20;
    let client = TcpClient::new(TcpConfig {
        max_message_size: max,
        ..tcp_config()
    })
    .unwrap();
    let addr = server.local_addr().to_string();
    let err = client
        .unary(&addr, Request::new(&path("echo"), vec![0u8; 2 << 20]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::TooLarge { max: m, .. } if m == max),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("DYN_TCP_MAX_MESSAGE_SIZE") && text.contains("1048576"),
        "{text}"
    );
    assert_eq!(
        client.connection_count(&addr),
        0,
        "no connection was opened, so no byte was written"
    );
    assert_echoes(&client, &addr, "small").await;
    let err = client
        .unary(&addr, Request::new(&path("echo"), vec![0u8; 2 << 20]))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::TooLarge { .. }));
    assert_echoes(&client, &addr, "still").await;
    assert_eq!(client.connection_count(&addr), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_response_is_an_error_not_a_dead_connection() {
    let server = echo_server_with_max_message(4096).await;
    server
        .register(
            &path("big"),
            unary_handler(|_req: Request| async { Ok(Bytes::from(vec![1u8; 8192])) }),
        )
        .await
        .unwrap();
    let client = client();
    let addr = server.local_addr().to_string();
    let err = client
        .unary(&addr, Request::new(&path("big"), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge));
    assert!(
        err.to_string().contains("DYN_TCP_MAX_MESSAGE_SIZE"),
        "{err}"
    );
    assert_echoes(&client, &addr, "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_endpoint_sheds_at_once_while_others_keep_serving() {
    let server = server_with(ServerConfig {
        tcp: tcp_config(),
        limits: ServerLimits {
            max_concurrent_requests: 2,
            ..ServerLimits::default()
        },
    })
    .await;
    let release = CancellationToken::new();
    let entered = Arc::new(AtomicUsize::new(0));
    {
        let release = release.clone();
        let entered = Arc::clone(&entered);
        server
            .register(
                &path("slow"),
                move |_req: Request, _cancel: CancellationToken| {
                    entered.fetch_add(1, Ordering::SeqCst);
                    let release = release.clone();
                    futures::stream::once(async move {
                        release.cancelled().await;
                        Ok::<_, HandlerError>(Bytes::from_static(b"done"))
                    })
                },
            )
            .await
            .unwrap();
    }
    let client = one_connection_client();
    let addr = server.local_addr().to_string();
    let slow1 = client
        .call(&addr, Request::new(&path("slow"), ""))
        .await
        .unwrap();
    let slow2 = client
        .call(&addr, Request::new(&path("slow"), ""))
        .await
        .unwrap();
    within("both slow handlers to start", async {
        while entered.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for _ in 0..3 {
        let err = within(
            "an overloaded answer",
            client.unary(&addr, Request::new(&path("slow"), "")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("overloaded"), "{err}");
    }
    for i in 0..20 {
        let body = format!("fast {i}");
        let reply = within(
            "a fast request",
            client.unary(&addr, Request::new(&path("echo"), body.clone())),
        )
        .await;
        assert_eq!(reply.unwrap(), body.as_bytes());
    }
    assert_eq!(
        client.connection_count(&addr),
        1,
        "all of it on one connection"
    );
    release.cancel();
    for stream in [slow1, slow2] {
        let items: Vec<_> = within("slow requests", stream.collect::<Vec<_>>()).await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap(), "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_never_exceeds_its_size_under_a_burst_of_first_calls() {
    let server = echo_server().await;
    let barrier = Arc::new(Barrier::new(500));
    {
        let barrier = Arc::clone(&barrier);
        server
            .register(
                &path("gather"),
                unary_handler(move |_req: Request| {
                    let barrier = Arc::clone(&barrier);
                    async move {
                        barrier.wait().await;
                        Ok(Bytes::new())
                    }
                }),
            )
            .await
            .unwrap();
    }
    let pool_size = 6;
    let client = Arc::new(
        TcpClient::new(TcpConfig {
            pool_size,
            ..tcp_config()
        })
        .unwrap(),
    );
    let addr = server.local_addr().to_string();
    let calls: Vec<_> = (0..500)
        .map(|_| {
            let client = Arc::clone(&client);
            let addr = addr.clone();
            tokio::spawn(
                async move { client.unary(&addr, Request::new(&path("gather"), "")).await },
            )
        })
        .collect();
    let peak = within("the burst", async {
        let mut peak = 0;
        for call in calls {
            peak = peak.max(client.connection_count(&addr));
            call.await.unwrap().unwrap();
        }
        peak
    })
    .await;
    let connections = client.connection_count(&addr);
    assert!(
        connections <= pool_size && peak <= pool_size,
        "{connections} / peak {peak} > {pool_size}"
    );
    assert!(connections >= 2, "the pool grew under load ({connections})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_buffers_return_to_their_initial_size_after_twenty_32_mib_requests() {
    let server = echo_server().await;
    let client = client();
    let addr = server.local_addr().to_string();
    let echo = path("echo");
    let max = client.config().max_message_size;
    let payload = Bytes::from(vec![0x5au8; max - HEADER_LEN - echo.to_string().len()]);
    for _ in 0..20 {
        let reply = within(
            "a 32 MiB echo",
            client.unary(&addr, Request::new(&echo, payload.clone())),
        )
        .await
        .unwrap();
        assert_eq!(reply.len(), payload.len());
        drop(reply);
    }
    // Each side keeps at most one large buffer for the next large message...
    let one_spare = INITIAL_READ_CAPACITY + max;
    for held in client
        .connection_buffer_capacities(&addr)
        .into_iter()
        .chain(server.connection_buffer_capacities())
    {
        assert!(held <= one_spare, "{held} bytes held after 20 messages");
    }
    // ...and gives it back once large messages stop.
    let released = || {
        client.connection_buffer_capacities(&addr) == [INITIAL_READ_CAPACITY]
            && server.connection_buffer_capacities() == [INITIAL_READ_CAPACITY]
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !released() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.connection_buffer_capacities(&addr),
        vec![INITIAL_READ_CAPACITY]
    );
    assert_eq!(
        server.connection_buffer_capacities(),
        vec![INITIAL_READ_CAPACITY]
    );
}

/// A hand-written server ignores flow control: it writes a flood of responses far past
/// the stream's window, then answers a second request on the same socket. Frames arrive
/// in order, so once the second answer is in, the client has seen the whole flood while
/// the flood's consumer was not reading. Only the flooded stream fails, after what the
/// window (plus one frame of slack) admits, and it is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_overrunning_the_window_fails_its_own_stream_only() {
    use planewire::codec::INITIAL_STREAM_WINDOW;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAX_FRAME: usize = 1 << 20;
    const ITEM: usize = 1000;
    // Each item costs its frame: 24 + 1000 bytes.
    let admitted = (INITIAL_STREAM_WINDOW as usize + MAX_FRAME) / (24 + ITEM);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (cancelled_tx, mut cancelled_rx) = mpsc::channel(1);
    let fake_server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut decoder = FrameDecoder::new(1 << 20, 1 << 20);
        let mut buf = decoder.new_buffer();
        let mut wire = bytes::BytesMut::new();
        loop {
            let frame = match decoder.decode_frame(&mut buf).unwrap() {
                Some(frame) => frame,
                None if socket.read_buf(&mut buf).await.unwrap() == 0 => return,
                None => continue,
            };
            match frame {
                Frame::Request(req) if req.payload == "flood" => {
                    for _ in 0..admitted * 2 {
                        let data = Frame::Data {
                            stream_id: req.stream_id,
                            payload: Bytes::from(vec![b'x'; ITEM]),
                        };
                        encode_frame(&data, usize::MAX, &mut wire).unwrap();
                    }
                    let end = Frame::End {
                        stream_id: req.stream_id,
                        payload: Bytes::new(),
                    };
                    encode_frame(&end, usize::MAX, &mut wire).unwrap();
                }
                Frame::Request(req) => {
                    let end = Frame::End {
                        stream_id: req.stream_id,
                        payload: req.payload,
                    };
                    encode_frame(&end, usize::MAX, &mut wire).unwrap();
                }
                Frame::Cancel { stream_id } => cancelled_tx.send(stream_id).await.unwrap(),
                // This server ignores flow control.
                Frame::WindowUpdate { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
            socket.write_all(&wire.split()).await.unwrap();
        }
    });

    let client = TcpClient::new(TcpConfig {
        pool_size: 1,
        max_message_size: MAX_FRAME,
        ..tcp_config()
    })
    .unwrap();
    let mut flood = client
        .call(&addr, Request::new(&path("flood"), "flood"))
        .await
        .unwrap();
    let reply = within(
        "a request beside the flood",
        client.unary(&addr, Request::new(&path("echo"), "meanwhile")),
    )
    .await;
    assert_eq!(reply.unwrap(), "meanwhile");
    let (items, err) = within("the flood to end", async {
        let mut items = 0;
        loop {
            match flood.next().await {
                Some(Ok(_)) => items += 1,
                Some(Err(err)) => return (items, err),
                None => panic!("the flood ended cleanly after {items} items"),
            }
        }
    })
    .await;
    assert!(matches!(err, RequestError::FlowControl { .. }), "{err}");
    assert!(err.to_string().contains("flow-control window"), "{err}");
    assert_eq!(
        items, admitted,
        "every item the window admits is delivered before the error"
    );
    assert_eq!(
        within("the cancel", cancelled_rx.recv()).await,
        Some(1),
        "the overrun stream was cancelled"
    );
    assert_echoes(&client, &addr, "after").await;
    drop(client);
    within("the fake server to see the close", fake_server)
        .await
        .unwrap();
}

/// The server remembers each connection's last endpoint; registering and unregistering
/// still take effect at once for requests on a connection already open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_reach_requests_on_an_open_connection() {
    let server = echo_server().await;
    let client = one_connection_client();
    let addr = server.local_addr().to_string();
    let echo = path("echo");
    assert_echoes(&client, &addr, "before").await;
    assert!(server.unregister(&echo));
    let err = client
        .unary(&addr, Request::new(&echo, "gone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownEndpoint), "{err}");
    let upper =
        unary_handler(
            |req: Request| async move { Ok(Bytes::from(req.payload.to_ascii_uppercase())) },
        );
    server.register(&echo, upper).await.unwrap();
    let reply = client.unary(&addr, Request::new(&echo, "again")).await;
    assert_eq!(reply.unwrap(), "AGAIN", "the new handler answers");
    assert_eq!(client.connection_count(&addr), 1, "all on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_without_instance_reaches_the_only_instance() {
    let server = echo_server().await;
    let client = client();
    let addr = server.local_addr().to_string();
    let bare = path("echo").without_instance();
    assert_eq!(
        client
            .unary(&addr, Request::new(bare.clone(), "one"))
            .await
            .unwrap(),
        "one"
    );
    let second =
        planewire::planes::request::EndpointPath::new("test", "worker", "echo", 2).unwrap();
    server
        .register(
            &second,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    let err = client
        .unary(&addr, Request::new(bare, "two"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::UnknownEndpoint),
        "ambiguous: {err}"
    );
    assert!(err.to_string().contains("exactly one instance"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_calls_shares_one_connect() {
    let server = echo_server().await;
    let client = Arc::new(client());
    let addr = server.local_addr().to_string();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (client, addr) = (Arc::clone(&client), addr.clone());
            tokio::spawn(async move {
                client
                    .unary(&addr, Request::new(&path("echo"), format!("{i}")))
                    .await
            })
        })
        .collect();
    for call in calls {
        within("a burst call", call).await.unwrap().unwrap();
    }
    assert_eq!(
        client.connection_count(&addr),
        1,
        "50 callers fit on one multiplexed connection"
    );

    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (client, dead) = (Arc::clone(&client), dead.clone());
            tokio::spawn(async move { client.unary(&dead, Request::new(&path("echo"), "x")).await })
        })
        .collect();
    for call in calls {
        let err = within("a call to a dead address", call)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, RequestError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&dead), "{err}");
    }
    assert_eq!(client.connection_count(&dead), 0);
}
