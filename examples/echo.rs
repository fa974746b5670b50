//! Starts a TCP request-plane server with an echo endpoint on 127.0.0.1, sends a few
//! requests (unary and streaming), then times 64-byte unary round trips against a raw
//! TCP ping-pong measured in the same process.
//!
//! `cargo run --release --example echo [-- ROUND_TRIPS]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use planewire::config::TcpConfig;
use planewire::planes::{
    EndpointPath, HandlerError, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let round_trips: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("ROUND_TRIPS must be a number, got {n:?}"))?,
        None => 20_000,
    };
    let tcp = TcpConfig {
        host: Some("127.0.0.1".parse()?),
        ..TcpConfig::default()
    };
    let server = TcpServer::bind(ServerConfig {
        tcp: tcp.clone(),
        ..ServerConfig::default()
    })
    .await?;
    let echo = EndpointPath::new("example", "echo", "generate", 1)?;
    server.register(
        &echo,
        unary_handler(|req: Request| async move { Ok(req.payload) }),
    )?;
    let words = EndpointPath::new("example", "echo", "words", 1)?;
    server.register(&words, |req: Request, _cancel: CancellationToken| {
        let text = String::from_utf8_lossy(&req.payload).into_owned();
        let items: Vec<Result<Bytes, HandlerError>> = text
            .split_whitespace()
            .map(|w| Ok(Bytes::from(w.to_owned())))
            .collect();
        futures::stream::iter(items)
    })?;
    let address = server.local_addr().to_string();
    println!("listening on {address}");

    let client = TcpClient::new(tcp)?;
    let reply = client
        .unary(
            &address,
            Request::new(&echo, "hello planewire").with_header("x-request-id", "demo-1"),
        )
        .await?;
    println!("unary  -> {}", String::from_utf8_lossy(&reply));
    let mut words_stream = client
        .call(&address, Request::new(&words, "one request many responses"))
        .await?;
    while let Some(word) = words_stream.next().await {
        println!("stream -> {}", String::from_utf8_lossy(&word?));
    }

    let payload = Bytes::from(vec![b'x'; 64]);
    let planewire = time_it(round_trips, || {
        let request = Request::new(&echo, payload.clone());
        let client = &client;
        let address = &address;
        async move {
            client
                .unary(address, request)
                .await
                .map(drop)
                .map_err(Into::into)
        }
    })
    .await?;
    let raw = raw_ping_pong(round_trips).await?;
    println!("\n64-byte unary round trip, 1 in flight, {round_trips} samples:");
    report("raw TCP ping-pong", &raw, &raw);
    report("planewire", &planewire, &raw);
    server.shutdown().await;
    Ok(())
}

type BoxError = Box<dyn std::error::Error>;

async fn time_it<F, Fut>(n: usize, mut op: F) -> Result<Vec<Duration>, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    for _ in 0..n / 10 {
        op().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        op().await?;
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    Ok(samples)
}

/// The floor: a length-prefixed 64-byte echo over one TCP_NODELAY connection.
async fn raw_ping_pong(n: usize) -> Result<Vec<Duration>, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        let mut buf = vec![0u8; 4 + 64];
        loop {
            if sock.read_exact(&mut buf).await.is_err() {
                return Ok::<_, std::io::Error>(());
            }
            sock.write_all(&buf).await?;
        }
    });
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut msg = vec![b'x'; 4 + 64];
    msg[..4].copy_from_slice(&64u32.to_le_bytes());
    let mut reply = vec![0u8; msg.len()];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        sock.write_all(&msg).await?;
        sock.read_exact(&mut reply).await?;
        if i >= n / 10 {
            samples.push(start.elapsed());
        }
    }
    samples.sort_unstable();
    server.abort();
    Ok(samples)
}

fn report(name: &str, samples: &[Duration], floor: &[Duration]) {
    let pct = |s: &[Duration], p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
    let (p50, p99) = (pct(samples, 0.50), pct(samples, 0.99));
    println!(
        "  {name:<18} p50 {:>7.1} µs ({:.2}× floor)   p99 {:>7.1} µs ({:.2}× floor)",
        p50.as_secs_f64() * 1e6,
        p50.as_secs_f64() / pct(floor, 0.50).as_secs_f64(),
        p99.as_secs_f64() * 1e6,
        p99.as_secs_f64() / pct(floor, 0.99).as_secs_f64(),
    );
}
