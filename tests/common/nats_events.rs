//! NATS event planes for the tests of `events_nats.rs` and `events_nats_raw_peers.rs`,
//! which include this file by path (the rest of `common` needs other features).

use std::sync::Arc;
use std::time::Duration;

use planewire::nats::{NatsConfig, NatsLink};
use planewire::planes::discovery::{Discovery, MemoryStore};
use planewire::planes::events::{EventError, EventPlane, EventPlaneConfig, EventPlaneKind};
use planewire_testkit::nats::NatsServer;

/// What a plane of these tests is made with: the event plane's settings and NATS's.
#[derive(Clone)]
pub struct Config {
    pub events: EventPlaneConfig,
    pub nats: NatsConfig,
}

pub fn config(url: &str, durable: bool) -> Config {
    Config {
        events: EventPlaneConfig {
            kind: EventPlaneKind::Nats,
            durable,
            ..EventPlaneConfig::default()
        },
        nats: NatsConfig {
            url: url.to_owned(),
            ..NatsConfig::default()
        },
    }
}

/// A plane on a connection of its own.
pub async fn connect(config: &Config) -> Result<EventPlane, EventError> {
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), Duration::from_secs(10));
    let link = NatsLink::new(config.nats.clone());
    EventPlane::connect(&config.events, &discovery, &link).await
}

/// Two planes on two NATS clients: what publishes and what subscribes.
pub async fn two_planes(server: &NatsServer, durable: bool) -> (EventPlane, EventPlane) {
    let config = config(&server.url(), durable);
    let publishers = connect(&config).await.expect("connect publishers");
    let subscribers = connect(&config).await.expect("connect subscribers");
    assert_eq!(publishers.kind(), EventPlaneKind::Nats);
    (publishers, subscribers)
}
