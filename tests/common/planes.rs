//! A server and a client of each plane the build has (TCP, NATS, HTTP/2), on 127.0.0.1, set up as the
//! request-plane suite asks ([`Options`]). NATS needs a real nats-server: without one
//! its constructor returns `None` and the test is skipped (a failure under `CI=true`).

use std::time::Duration;

#[cfg(feature = "nats")]
use planewire::nats::{NatsConfig, NatsLink};
use planewire::planes::request::ServerLimits;
#[cfg(feature = "http")]
use planewire::planes::request::http::{HttpClient, HttpConfig, HttpServer};
#[cfg(feature = "nats")]
use planewire::planes::request::nats::{NatsRequestClient, NatsRequestConfig, NatsRequestServer};
use planewire::tcp::{ServerConfig, TcpClient, TcpConfig, TcpServer};
#[cfg(feature = "nats")]
use planewire_testkit::nats::{NatsOptions, NatsServer};
use planewire_testkit::tcp::tcp_config;

/// How the suite wants a plane set up; the defaults are the plane's own.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub limits: ServerLimits,
    /// The client's request timeout.
    pub request_timeout: Option<Duration>,
    /// The plane's message-size limit, on both sides (NATS: the server's `max_payload`).
    pub message_limit: Option<usize>,
}

/// A server, a client of it, and whatever must outlive both (a nats-server).
pub struct Pair<S, C> {
    pub server: S,
    pub client: C,
    _keep: Box<dyn std::any::Any>,
}

pub async fn tcp(options: Options) -> Pair<TcpServer, TcpClient> {
    let config = TcpConfig {
        max_message_size: options
            .message_limit
            .unwrap_or(tcp_config().max_message_size),
        ..tcp_config()
    };
    let server = TcpServer::bind(ServerConfig {
        tcp: config.clone(),
        limits: options.limits,
    })
    .await
    .expect("bind on 127.0.0.1");
    let client = TcpClient::new(TcpConfig {
        request_timeout: options.request_timeout.unwrap_or(config.request_timeout),
        ..config
    })
    .unwrap();
    Pair {
        server,
        client,
        _keep: Box::new(()),
    }
}

/// An HTTP/2 server on 127.0.0.1 with an OS-assigned port, and a client of it.
#[cfg(feature = "http")]
pub async fn http(options: Options) -> Pair<HttpServer, HttpClient> {
    let defaults = HttpConfig::default();
    let config = HttpConfig {
        host: Some("127.0.0.1".parse().unwrap()),
        port: 0,
        max_message_size: options.message_limit.unwrap_or(defaults.max_message_size),
        ..defaults
    };
    let server = HttpServer::bind(config.clone(), options.limits)
        .await
        .expect("bind on 127.0.0.1");
    let client = HttpClient::new(HttpConfig {
        request_timeout: options.request_timeout.unwrap_or(config.request_timeout),
        ..config
    })
    .unwrap();
    Pair {
        server,
        client,
        _keep: Box::new(()),
    }
}

/// Server and client on connections of their own, as in two processes.
#[cfg(feature = "nats")]
pub async fn nats(options: Options) -> Option<Pair<NatsRequestServer, NatsRequestClient>> {
    let nats = NatsServer::start_with(NatsOptions {
        max_payload: options.message_limit,
        ..NatsOptions::default()
    })?;
    let connect = || async {
        NatsLink::new(NatsConfig {
            url: nats.url(),
            ..NatsConfig::default()
        })
        .client()
        .await
        .expect("connect to nats-server")
    };
    let server = NatsRequestServer::new(connect().await, options.limits)
        .await
        .unwrap();
    let defaults = NatsRequestConfig::default();
    let config = NatsRequestConfig {
        request_timeout: options.request_timeout.unwrap_or(defaults.request_timeout),
    };
    let client = NatsRequestClient::new(connect().await, config)
        .await
        .unwrap();
    Some(Pair {
        server,
        client,
        _keep: Box::new(nats),
    })
}
