//! The TCP server against peers written from PROTOCOL.md alone that misbehave the way
//! real peers do: they stop reading, half-close, send after GOAWAY, drip bytes, reuse
//! stream ids. Each test breaks one promise on purpose and checks what the server owes.

mod common;

use common::hostile::*;
use common::planewire_bin;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use planewire::codec::{Frame, INITIAL_STREAM_WINDOW, encode_frame, window_cost};
use planewire::planes::request::{Request, RequestPlaneServer};
use planewire::tcp::TcpConfig;
use planewire_testkit::raw::*;
use planewire_testkit::tcp::*;
use planewire_testkit::within;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Waits until `value` stops changing for `quiet`, and returns it.
async fn settled(value: impl Fn() -> usize, quiet: Duration) -> usize {
    within("the value to settle", async {
        let mut last = value();
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = value();
            if now != last {
                last = now;
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= quiet {
                return now;
            }
        }
    })
    .await
}

/// Samples `pid`'s RSS every 100 ms for 3 s, asserting each time that it stays under
/// `before + bound`; prints the peak.
async fn rss_stays_bounded(pid: u32, before: u64, bound: u64, what: &str) {
    let mut peak = before;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(pid));
        assert!(
            peak < before + bound,
            "server RSS grew from {before} to {peak} bytes {what}"
        );
    }
    eprintln!(
        "server RSS {} KiB before, peak {} KiB {what}",
        before / 1024,
        peak / 1024
    );
}

/// Item 1, per stream: a caller reading slower than its handler produces slows its own
/// stream. The server stops taking items at the window; the neighbour on the same
/// connection flows; every item then arrives, in order, and the stream ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_pauses_its_own_handler_and_loses_nothing() {
    const ITEMS: usize = 8_000;
    const SIZE: usize = 1000;
    let server = echo_server().await;
    let taken = Arc::new(AtomicUsize::new(0));
    server
        .register(
            &path("flood"),
            counted_stream(ITEMS, SIZE, Arc::clone(&taken)),
        )
        .await
        .unwrap();
    let client = one_connection_client();
    let addr = server.local_addr().to_string();
    let mut slow = client
        .call(&addr, Request::new(&path("flood"), ""))
        .await
        .unwrap();
    let paused_at = settled(|| taken.load(Ordering::Relaxed), Duration::from_millis(300)).await;
    // The window admits this many DATA frames, plus the item the framer holds back and
    // the one in hand when the credit ran out.
    let window_items = INITIAL_STREAM_WINDOW as usize / window_cost(SIZE) + 3;
    assert!(
        paused_at <= window_items,
        "the handler was polled for {paused_at} items with nothing read (window: {window_items})"
    );
    assert!(paused_at < ITEMS);
    assert_echoes(&client, &addr, "the neighbour flows").await;
    let mut count = 0;
    while let Some(item) = within("the next item", slow.next()).await {
        let item = item.unwrap_or_else(|e| panic!("item {count} failed: {e}"));
        assert_eq!(item.len(), SIZE);
        count += 1;
    }
    assert_eq!(count, ITEMS);
    assert_eq!(taken.load(Ordering::Relaxed), ITEMS);
}

/// Item 1, per connection: a client that grants all the credit it can and never reads
/// holds a bounded amount of the server's memory. Measured on a real `planewire serve`
/// streaming a million 1 KiB responses to two such connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_a_bounded_amount_of_server_memory() {
    let setup = planewire_bin::Setup::file("10");
    let server = setup.serve(&["--endpoint", "t/w/flood", "--responses", "1000000"]);
    let pid = server.process.pid();
    let before = rss_bytes(pid);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut raw = raw_connect(&server.address).await;
        raw.send(&request_to(
            1,
            "t/w/flood",
            Bytes::from(vec![7u8; 1024]),
            None,
        ))
        .await;
        for _ in 0..4 {
            raw.grant(1, u32::MAX).await;
        }
        stalled.push(raw);
    }
    // Each connection may hold its output budget (4 MiB) plus a frame in each queue,
    // and the kernel's socket buffers; 64 MiB above the start leaves room for both.
    rss_stays_bounded(pid, before, 64 << 20, "with two non-reading clients").await;
    let mut fresh = raw_connect(&server.address).await;
    fresh
        .send(&request_to(9, "t/w/flood", Bytes::from_static(b"x"), None))
        .await;
    assert!(
        matches!(
            fresh.next_frame().await,
            Some(Frame::Data { stream_id: 9, .. })
        ),
        "a fresh connection is served beside the stalled ones"
    );
    drop(stalled);
}

/// Item 1, pipelined: a client that writes tens of MiB of requests in one go and reads
/// nothing leaves them in the socket, not in the server, which reads no further once the
/// answers it owes fill its output budget; when the client reads, every request is
/// answered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_flood_from_a_client_that_does_not_read_waits_in_the_socket() {
    const REQUESTS: u64 = 60_000;
    const SIZE: usize = 1024;
    let setup = planewire_bin::Setup::file("10");
    let server = setup.serve(&["--endpoint", "t/w/echo"]);
    let pid = server.process.pid();
    let before = rss_bytes(pid);
    let mut wire = BytesMut::new();
    for id in 1..=REQUESTS {
        let request = request_to(id, "t/w/echo", Bytes::from(vec![7u8; SIZE]), None);
        encode_frame(&request, usize::MAX, &mut wire).unwrap();
    }
    let socket = tokio::net::TcpStream::connect(&server.address)
        .await
        .unwrap();
    let (mut rd, mut wr) = socket.into_split();
    // Blocks once the server stops reading and the kernel's buffers are full: it ends
    // only after the reading below begins.
    let writer = tokio::spawn(async move {
        wr.write_all(&wire).await.unwrap();
        wr
    });
    // Far below the ~120 MiB the requests and their answers take, well above the 4 MiB
    // output budget plus a read buffer.
    let what = format!("under {REQUESTS} pipelined requests from a client that does not read");
    rss_stays_bounded(pid, before, 64 << 20, &what).await;
    let answered = within("reading every answer", async {
        let mut decoder = planewire::codec::FrameDecoder::new(64 << 20, 64 << 20);
        let mut buf = decoder.new_buffer();
        let mut answered = vec![false; REQUESTS as usize + 1];
        let mut count = 0;
        loop {
            while let Some(frame) = decoder.decode_frame(&mut buf).unwrap() {
                let Frame::End { stream_id, payload } = frame else {
                    panic!("only END frames answer unary echoes, got {frame:?}");
                };
                assert_eq!(payload.len(), SIZE, "stream {stream_id}");
                let slot = &mut answered[stream_id as usize];
                assert!(!*slot, "stream {stream_id} answered twice");
                *slot = true;
                count += 1;
            }
            if count == REQUESTS {
                return count;
            }
            let read = rd.read_buf(&mut buf).await.unwrap();
            assert!(read > 0, "the server closed after {count} answers");
        }
    })
    .await;
    assert_eq!(answered, REQUESTS);
    within("the flood's last bytes", writer).await.unwrap();
}

/// Item 9: with its descriptors exhausted, the server's accept loop backs off instead of
/// spinning, and accepts again once descriptors free up. A real process with a small
/// `RLIMIT_NOFILE`.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_descriptors_run_out_and_recovers() {
    let setup = planewire_bin::Setup::file("10");
    let server = setup.serve_with_file_limit(64, &["--endpoint", "t/w/echo"]);
    // More connections than the server has descriptors: the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(raw_connect(&server.address).await);
    }
    let mut probe = raw_connect(&server.address).await;
    probe
        .send(&request_to(1, "t/w/echo", Bytes::from_static(b"hi"), None))
        .await;
    let cpu_before = server.process.cpu_time();
    let wall = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = server.process.cpu_time() - cpu_before;
    assert!(
        cpu < wall.elapsed() / 4,
        "the server used {cpu:?} of CPU in {:?} while out of descriptors",
        wall.elapsed()
    );
    drop(held);
    match probe.next_frame().await {
        Some(Frame::End {
            stream_id: 1,
            payload,
        }) => assert_eq!(payload, "hi"),
        other => panic!("the waiting connection got {other:?}"),
    }
    let mut fresh = raw_connect(&server.address).await;
    fresh
        .send(&request_to(
            2,
            "t/w/echo",
            Bytes::from_static(b"again"),
            None,
        ))
        .await;
    assert!(matches!(
        fresh.next_frame().await,
        Some(Frame::End { stream_id: 2, .. })
    ));
}

/// Item 1, client side: a server that stops reading requests holds callers back. Of 64
/// calls with 1 MiB payloads, only what the output budget (4 MiB), one write batch and
/// the kernel's socket buffers hold gets queued; the rest wait in `call`. When the
/// server goes, every call ends with an error, none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_holds_callers_back() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let client = Arc::new(one_connection_client());
    let payload = Bytes::from(vec![5u8; 1 << 20]);
    let queued = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (client, addr, payload) = (Arc::clone(&client), addr.clone(), payload.clone());
            let queued = Arc::clone(&queued);
            tokio::spawn(async move {
                let stream = client
                    .call(&addr, Request::new(&path("echo"), payload))
                    .await?;
                queued.fetch_add(1, Ordering::Relaxed);
                futures::StreamExt::collect::<Vec<_>>(stream).await;
                Ok::<_, planewire::planes::request::RequestError>(())
            })
        })
        .collect();
    let socket = within("the connection", accepted).await.unwrap();
    let held = settled(
        || queued.load(Ordering::Relaxed),
        Duration::from_millis(500),
    )
    .await;
    eprintln!("{held} of 64 one-MiB requests queued to a server that reads nothing");
    assert!(
        held < 32,
        "{held} of 64 one-MiB requests were queued to a server that reads nothing"
    );
    drop(socket);
    for call in calls {
        let _ = within("every call to end", call).await.unwrap();
    }
}

/// Item 8, the other half: a peer that stops reading while output waits for it is
/// closed once that output has not moved for `DYN_TCP_FRAME_TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_after_the_frame_timeout() {
    let tcp = TcpConfig {
        frame_timeout: Duration::from_millis(500),
        ..tcp_config()
    };
    let server = server_with_config(tcp, Duration::from_secs(1)).await;
    server
        .register(
            &path("endless"),
            |_req: Request, _cancel: CancellationToken| {
                futures::stream::repeat_with(|| Ok(Bytes::from(vec![b'z'; 16 * 1024])))
            },
        )
        .await
        .unwrap();
    let mut raw = RawConn::connect(&server).await;
    raw.send(&request_frame(1, &path("endless"), b"")).await;
    raw.grant(1, u32::MAX).await;
    within("the stalled connection to be closed", async {
        while !server.connection_buffer_capacities().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_echoes(&client(), &server.local_addr().to_string(), "still serving").await;
    drop(raw);
}

/// Item 8, the other side of the rule: output that keeps moving is not stalled, however
/// long it takes in all. A peer with a small receive buffer reads a 12 MiB answer a
/// little at a time, for several frame timeouts in all but never one without reading,
/// and gets all of it. The write-stall clock must count from the last progress, not from
/// when the answer was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_reading_slowly_is_not_closed_as_stalled() {
    const ANSWER: usize = 12 << 20;
    const SIP: usize = 32 * 1024;
    let tcp = TcpConfig {
        frame_timeout: Duration::from_secs(1),
        ..tcp_config()
    };
    let server = server_with_config(tcp, Duration::from_secs(1)).await;
    let answer = Bytes::from(vec![b'a'; ANSWER]);
    server
        .register(
            &path("big"),
            planewire::planes::request::unary_handler(move |_req: Request| {
                let answer = answer.clone();
                async move { Ok(answer) }
            }),
        )
        .await
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut conn = socket.connect(server.local_addr()).await.unwrap();
    let mut wire = BytesMut::new();
    encode_frame(&request_frame(1, &path("big"), b""), usize::MAX, &mut wire).unwrap();
    conn.write_all(&wire).await.unwrap();
    // 32 KiB every 10 ms, about 3 MB/s: the 12 MiB take about 4 s, while what the
    // socket buffers cannot hold waits in the server for well over the 1 s timeout.
    let mut received = BytesMut::new();
    let mut sip = vec![0u8; SIP];
    let started = tokio::time::Instant::now();
    // The END frame: its header, then the answer.
    while received.len() < planewire::codec::HEADER_LEN + ANSWER {
        let n = within("the next sip", conn.read(&mut sip)).await.unwrap();
        assert!(
            n > 0,
            "closed after {} of {ANSWER} bytes, {:?} in",
            received.len(),
            started.elapsed()
        );
        received.extend_from_slice(&sip[..n]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut decoder = planewire::codec::FrameDecoder::new(64 << 20, 64 << 20);
    match decoder.decode_frame(&mut received).unwrap() {
        Some(Frame::End { stream_id, payload }) => {
            assert_eq!(stream_id, 1);
            assert_eq!(payload.len(), ANSWER);
        }
        other => panic!("the answer came as {other:?}"),
    }
}
