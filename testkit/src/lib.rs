//! Helpers the integration tests of every package share: real `nats-server` and `etcd`
//! processes on 127.0.0.1 with free ports ([`nats`], [`etcd`]), a proxy whose
//! connections a test can cut ([`proxy`]), a TCP request-plane server and clients
//! ([`tcp`]), a raw frame-speaking peer ([`raw`]) and what it checks ([`peer`]), a
//! server a test scripts frame by frame ([`scripted`]), and the event-plane suite every
//! transport runs ([`events_suite`]). Every process a helper starts is stopped by its
//! PID when its guard drops.

pub mod etcd;
pub mod events_suite;
pub mod nats;
pub mod peer;
pub mod proxy;
pub mod raw;
pub mod scripted;
pub mod tcp;

use std::time::Duration;

/// Upper bound on waits in tests: a hang fails the test instead of blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// `fut`'s output, or a panic naming `what` after [`PATIENCE`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}
