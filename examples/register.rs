//! A worker in miniature: serves one endpoint on the TCP request plane and registers it
//! in discovery, until interrupted. Discovery and the server come from the environment
//! (`DYN_DISCOVERY_BACKEND`, `DYN_FILE_KV`, `DYN_DISCOVERY_LEASE_TTL`, `ETCD_*`,
//! `DYN_TCP_*`).
//!
//! ```sh
//! cargo run --example register -- NAMESPACE/COMPONENT/ENDPOINT [INSTANCE_ID_HEX]
//! ```
//!
//! Once registered it prints its instance record as one JSON line. The endpoint answers
//! each request with `{instance id in hex}:{payload}`. Ctrl-C deregisters and exits; a
//! SIGKILL leaves the record to expire with the lease (the tests rely on both).

use std::io::Write;

use bytes::Bytes;
use planewire::planes::discovery::{Discovery, DiscoveryConfig, Transport};
use planewire::planes::request::{EndpointPath, Request, RequestPlaneServer, unary_handler};
use planewire::tcp::{ServerConfig, TcpConfig, TcpServer};

const USAGE: &str = "usage: register NAMESPACE/COMPONENT/ENDPOINT [INSTANCE_ID_HEX]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().ok_or(USAGE)?;
    let instance_id = match args.next() {
        Some(hex) => u64::from_str_radix(&hex, 16)
            .map_err(|_| format!("INSTANCE_ID_HEX must be hexadecimal, got {hex:?}"))?,
        None => fastrand::u64(..),
    };
    let path = EndpointPath::parse(&spec, instance_id)?;

    let server = TcpServer::bind(ServerConfig {
        tcp: TcpConfig::from_env()?,
        ..ServerConfig::default()
    })
    .await?;
    server
        .register(
            &path,
            unary_handler(move |req: Request| async move {
                let mut reply = format!("{instance_id:x}:").into_bytes();
                reply.extend_from_slice(&req.payload);
                Ok(Bytes::from(reply))
            }),
        )
        .await?;

    let discovery = Discovery::connect(&DiscoveryConfig::from_env()?).await?;
    let registration = discovery
        .register(&path, Transport::new("tcp", server.address(&path)))
        .await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(registration.record())?)?;
    stdout.flush()?;
    drop(stdout);

    tokio::signal::ctrl_c().await?;
    registration.deregister().await?;
    discovery.shutdown().await;
    server.shutdown().await;
    Ok(())
}
