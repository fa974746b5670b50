//! Starts a TCP request-plane server with an echo endpoint on 127.0.0.1 and sends a few
//! requests, unary and streaming. Latency against a raw-TCP floor is the benchmark's job:
//! `cargo run --release -- bench`.
//!
//! `cargo run --example echo`

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::request::{
    EndpointPath, HandlerError, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::tcp::TcpConfig;
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    server
        .register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await?;
    let words = EndpointPath::new("example", "echo", "words", 1)?;
    server
        .register(&words, |req: Request, _cancel: CancellationToken| {
            let text = String::from_utf8_lossy(&req.payload).into_owned();
            let items: Vec<Result<Bytes, HandlerError>> = text
                .split_whitespace()
                .map(|w| Ok(Bytes::from(w.to_owned())))
                .collect();
            futures::stream::iter(items)
        })
        .await?;
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

    server.shutdown().await;
    Ok(())
}
