//! An event publisher in miniature: binds a ZMQ PUB socket, registers it in discovery and
//! publishes on one topic at a steady rate until interrupted. Discovery and the event
//! plane come from the environment (`DYN_DISCOVERY_BACKEND`, `DYN_FILE_KV`,
//! `DYN_DISCOVERY_LEASE_TTL`, `DYN_EVENT_PLANE=zmq`, `DYN_EVENT_PLANE_HOST`).
//!
//! ```sh
//! cargo run --example zmq_publisher -- NAMESPACE/COMPONENT TOPIC [INTERVAL_MS]
//! ```
//!
//! Once registered it prints its publisher id (16 hex digits) as its first line. Each
//! payload is `{publisher id}:{n}`. Ctrl-C withdraws the registration and exits; a
//! SIGKILL leaves it to expire with the lease (the tests rely on both).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use planewire::planes::discovery::{Discovery, DiscoveryConfig};
use planewire::planes::events::{EventPlane, EventPlaneConfig, EventScope};

const USAGE: &str = "usage: zmq_publisher NAMESPACE/COMPONENT TOPIC [INTERVAL_MS]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let scope = args.next().ok_or(USAGE)?;
    let (namespace, component) = scope.split_once('/').ok_or(USAGE)?;
    let topic = args.next().ok_or(USAGE)?;
    let interval = match args.next() {
        Some(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|_| format!("INTERVAL_MS must be a whole number, got {ms:?}"))?,
        ),
        None => Duration::from_millis(20),
    };

    let discovery = Discovery::connect(&DiscoveryConfig::from_env()?).await?;
    let plane = EventPlane::connect(&EventPlaneConfig::from_env()?, &discovery).await?;
    let publisher = plane
        .publisher(EventScope::new(namespace, component)?)
        .await?;
    let id = format!("{:016x}", publisher.id());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{id}")?;
    stdout.flush()?;
    drop(stdout);

    let mut ticks = tokio::time::interval(interval);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = ticks.tick() => {}
        }
        publisher
            .publish(&topic, Bytes::from(format!("{id}:{n}")))
            .await?;
        n += 1;
    }
    drop(publisher);
    discovery.shutdown().await;
    Ok(())
}
