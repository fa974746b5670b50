//! The process's one lease and the registrations hanging on it.
//!
//! A background task keeps the lease alive every third of its TTL. If the store says
//! the lease is gone (the process stalled, or the backend was away, for longer than the
//! TTL), the task grants a new one and writes every registration again, with a warning.
//! While the backend is unreachable, registrations and deregistrations wait here and
//! are written once it answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use super::DiscoveryError;
use super::kv::{KvStore, LeaseId};
use crate::sync::lock;
use bytes::Bytes;

/// What the store is known to hold for this process. Behind an async mutex: every
/// change to the lease or the store's copy of the registrations happens under it, so
/// a re-registration never races a deregistration.
#[derive(Default)]
pub(super) struct LeaseState {
    pub(super) lease: Option<LeaseId>,
    /// Whether every registration is written under `lease`.
    pub(super) synced: bool,
    /// Keys deregistered while the backend was unreachable, still to delete.
    pub(super) stale: BTreeSet<String>,
    pub(super) keeper_started: bool,
    pub(super) closed: bool,
}

/// Registrations by key, with their values.
pub(super) type Registrations = Mutex<BTreeMap<String, Bytes>>;

/// Brings the store in line with `registrations` under `state`'s lease, granting a new
/// lease if there is none. On error the state stays unsynced for the next attempt.
pub(super) async fn resync(
    store: &dyn KvStore,
    ttl: Duration,
    state: &mut LeaseState,
    registrations: &Registrations,
) -> Result<(), DiscoveryError> {
    state.synced = false;
    let lease = match state.lease {
        Some(lease) => lease,
        None => {
            let lease = store.grant_lease(ttl).await?;
            state.lease = Some(lease);
            lease
        }
    };
    let wanted: Vec<(String, Bytes)> = lock(registrations)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in wanted {
        if let Err(err) = store.put(&key, value, Some(lease)).await {
            if matches!(err, DiscoveryError::LeaseExpired { .. }) {
                state.lease = None;
            }
            return Err(err);
        }
    }
    state.synced = true;
    delete_stale(store, state).await
}

async fn delete_stale(store: &dyn KvStore, state: &mut LeaseState) -> Result<(), DiscoveryError> {
    while let Some(key) = state.stale.first().cloned() {
        store.delete(&key).await?;
        state.stale.remove(&key);
    }
    Ok(())
}

/// One keep-alive round: refresh the lease, or re-register if it was lost or never
/// fully written. Each store call is bounded by `interval`, so a hung backend delays
/// the next round but never stops the loop.
pub(super) async fn refresh(
    store: &dyn KvStore,
    ttl: Duration,
    interval: Duration,
    state: &mut LeaseState,
    registrations: &Registrations,
) {
    if state.closed {
        return;
    }
    let keep_alive = match (state.lease, state.synced) {
        (Some(lease), true) => Some(lease),
        _ => None,
    };
    if let Some(lease) = keep_alive {
        match tokio::time::timeout(interval, store.keep_alive(lease)).await {
            Ok(Ok(())) => {
                if !state.stale.is_empty() {
                    if let Err(err) = delete_stale(store, state).await {
                        tracing::warn!(%err, "could not delete deregistered keys; retrying");
                    }
                }
                return;
            }
            Ok(Err(DiscoveryError::LeaseExpired { .. })) => {
                let keys = lock(registrations).len();
                tracing::warn!(%lease, keys, "discovery lease lost (expired or revoked): registering again under a new lease");
                state.lease = None;
            }
            Ok(Err(err)) => {
                tracing::warn!(%lease, %err, ?interval, "lease keep-alive failed; retrying");
                return;
            }
            Err(_) => {
                tracing::warn!(%lease, ?interval, "lease keep-alive got no answer; retrying");
                return;
            }
        }
    }
    match tokio::time::timeout(interval, resync(store, ttl, state, registrations)).await {
        Ok(Ok(())) => {
            let keys = lock(registrations).len();
            if let Some(lease) = state.lease {
                tracing::warn!(%lease, keys, "registrations written again");
            }
        }
        Ok(Err(err)) => tracing::warn!(%err, "could not register again; retrying"),
        Err(_) => tracing::warn!(?interval, "registering again got no answer; retrying"),
    }
}
