//! Criterion: one full unary 64-byte round trip over loopback through `TcpClient` and
//! `TcpServer`, so regressions show in criterion's history. The latency distribution
//! against a raw-TCP floor is `cargo bench --bench latency`.

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use planewire::codec::Utf8Bytes;
use planewire::planes::request::{
    EndpointPath, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::tcp::TcpConfig;
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};

fn unary_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tcp = TcpConfig {
        host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ..TcpConfig::default()
    };
    let server = runtime
        .block_on(TcpServer::bind(ServerConfig {
            tcp: tcp.clone(),
            ..ServerConfig::default()
        }))
        .expect("bind 127.0.0.1");
    let echo = EndpointPath::new("bench", "echo", "unary", 1).expect("valid path");
    runtime
        .block_on(server.register(
            &echo,
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        ))
        .expect("register");
    let client = TcpClient::new(tcp).expect("valid config");
    let address = server.local_addr().to_string();
    let path = Utf8Bytes::from(&echo);
    let payload = Bytes::from(vec![b'x'; 64]);

    c.bench_function("tcp unary round trip 64 B", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::new(path.clone(), payload.clone());
            let reply = client.unary(&address, request).await.expect("echo");
            assert_eq!(reply.len(), 64);
        })
    });
    runtime.block_on(server.shutdown());
}

criterion_group!(benches, unary_round_trip);
criterion_main!(benches);
