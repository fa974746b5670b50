//! Helpers shared by the integration tests: servers on 127.0.0.1 with OS-assigned ports,
//! and a raw socket that speaks frames by hand.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use planewire::codec::{Frame, FrameDecoder, HeaderMap, RequestFrame, encode_frame};
use planewire::config::TcpConfig;
use planewire::planes::{
    EndpointPath, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::tcp::{ServerConfig, TcpClient, TcpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on waits in tests: a hang fails the test instead of blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn tcp_config() -> TcpConfig {
    TcpConfig {
        host: Some("127.0.0.1".parse().unwrap()),
        ..TcpConfig::default()
    }
}

pub fn path(endpoint: &str) -> EndpointPath {
    EndpointPath::new("test", "worker", endpoint, 1).unwrap()
}

pub async fn server_with(config: ServerConfig) -> TcpServer {
    let server = TcpServer::bind(config).await.expect("bind on 127.0.0.1");
    server
        .register(
            &path("echo"),
            unary_handler(|req: Request| async move { Ok(req.payload) }),
        )
        .await
        .unwrap();
    server
}

pub async fn echo_server() -> TcpServer {
    server_with(ServerConfig {
        tcp: tcp_config(),
        ..ServerConfig::default()
    })
    .await
}

pub fn client() -> TcpClient {
    TcpClient::new(tcp_config()).unwrap()
}

pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

/// Sends `body` to the echo endpoint at `addr` and checks it comes back.
pub async fn assert_echoes(client: &TcpClient, addr: &str, body: &str) {
    let reply = within(
        "an echo",
        client.unary(addr, Request::new(&path("echo"), body.to_owned())),
    )
    .await
    .unwrap();
    assert_eq!(reply, body.as_bytes());
}

/// A hand-driven protocol peer, for sending what a well-behaved client never would.
pub struct RawConn {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl RawConn {
    pub async fn connect(server: &TcpServer) -> Self {
        let stream = TcpStream::connect(server.local_addr()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let decoder = FrameDecoder::new(64 << 20, 64 << 20);
        Self {
            stream,
            buf: decoder.new_buffer(),
            decoder,
        }
    }

    pub async fn send(&mut self, frame: &Frame) {
        let mut wire = BytesMut::new();
        encode_frame(frame, usize::MAX, &mut wire).unwrap();
        self.stream.write_all(&wire).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        within("reading a frame", async {
            loop {
                if let Some(frame) = self.decoder.decode_frame(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Reads until the server closes; returns the frames seen on the way.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await {
            frames.push(frame);
        }
        frames
    }
}

pub fn request_frame(stream_id: u64, endpoint: &EndpointPath, payload: &'static [u8]) -> Frame {
    Frame::Request(RequestFrame {
        stream_id,
        path: endpoint.into(),
        headers: HeaderMap::new(),
        payload: Bytes::from_static(payload),
        timeout: None,
    })
}
