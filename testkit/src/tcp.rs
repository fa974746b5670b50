//! A TCP server and clients on 127.0.0.1 with OS-assigned ports, and the paths tests use.

use planewire::planes::request::{
    EndpointPath, Request, RequestPlaneClient, RequestPlaneServer, unary_handler,
};
use planewire::tcp::{ServerConfig, TcpClient, TcpConfig, TcpServer};

use crate::within;

pub fn tcp_config() -> TcpConfig {
    TcpConfig {
        host: Some("127.0.0.1".parse().unwrap()),
        ..TcpConfig::default()
    }
}

pub fn path(endpoint: &str) -> EndpointPath {
    EndpointPath::new("test", "worker", endpoint, 1).unwrap()
}

/// [`echo_server`] with `DYN_TCP_MAX_MESSAGE_SIZE` set to `max`.
pub async fn echo_server_with_max_message(max: usize) -> TcpServer {
    server_with(ServerConfig {
        tcp: TcpConfig {
            max_message_size: max,
            ..tcp_config()
        },
        ..ServerConfig::default()
    })
    .await
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

/// A client whose requests to one address all share one connection.
pub fn one_connection_client() -> TcpClient {
    TcpClient::new(TcpConfig {
        pool_size: 1,
        ..tcp_config()
    })
    .unwrap()
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
