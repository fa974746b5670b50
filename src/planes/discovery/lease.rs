//! The process's one lease and the registrations hanging on it.
//!
//! A background task keeps the lease alive every third of its TTL, and then checks that
//! each registration is still in the store, intact and on the lease, rewriting any that
//! is not (someone deleted or damaged it; a file-backend reader removes a record file it
//! cannot read). If the store says the lease is gone (the process stalled, or the backend
//! was away, for longer than the TTL), the task grants a new one and writes every
//! registration again, with a warning. While the backend is unreachable, registrations
//! and deregistrations wait here and are written once it answers.
//!
//! Every write is a [`claim`](KvStore::claim) and every delete a
//! [`release`](KvStore::release): a key another lease holds (another process took the
//! instance id while this one's lease was lost) is never overwritten nor deleted, only
//! warned about and tried again each round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use super::DiscoveryError;
use super::kv::{KvStore, LeaseId};
use super::repeats::Repeats;
use crate::sync::lock;
use bytes::Bytes;

/// What the store is known to hold for this process. Behind an async mutex: every
/// change to the lease or the store's copy of the registrations happens under it, so
/// a re-registration never races a deregistration.
#[derive(Default)]
pub(super) struct LeaseState {
    pub(super) lease: Option<LeaseId>,
    /// Whether every registration is written under `lease` (or held by another lease).
    pub(super) synced: bool,
    /// Keys deregistered while the backend was unreachable, still to delete.
    pub(super) stale: BTreeSet<String>,
    /// Registrations another lease holds, counted so each is warned about at the 1st,
    /// 2nd, 4th… round that finds it so.
    pub(super) held: Repeats<(String, Option<LeaseId>)>,
    pub(super) keeper_started: bool,
    pub(super) closed: bool,
}

/// Registrations by key, with their values.
pub(super) type Registrations = Mutex<BTreeMap<String, Bytes>>;

fn wanted(registrations: &Registrations) -> Vec<(String, Bytes)> {
    lock(registrations)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Brings the store in line with `registrations` under `state`'s lease, granting a new
/// lease if there is none, and returns the lease. Keys another lease holds are warned
/// about and skipped. On error the state stays unsynced for the next attempt.
pub(super) async fn resync(
    store: &dyn KvStore,
    ttl: Duration,
    state: &mut LeaseState,
    registrations: &Registrations,
) -> Result<LeaseId, DiscoveryError> {
    state.synced = false;
    let lease = match state.lease {
        Some(lease) => lease,
        None => {
            let lease = store.grant_lease(ttl).await?;
            state.lease = Some(lease);
            // Keys still to delete were on the lease that is gone, and went with it.
            state.stale.clear();
            lease
        }
    };
    for (key, value) in wanted(registrations) {
        match store.claim(&key, value, lease).await {
            Ok(_) => {
                state.held.forget(|(held, _)| *held == key);
            }
            Err(DiscoveryError::KeyHeld { holder, .. }) => warn_held(state, &key, holder),
            Err(err) => {
                if matches!(err, DiscoveryError::LeaseExpired { .. }) {
                    state.lease = None;
                }
                return Err(err);
            }
        }
    }
    state.synced = true;
    delete_stale(store, lease, state).await?;
    Ok(lease)
}

async fn delete_stale(
    store: &dyn KvStore,
    lease: LeaseId,
    state: &mut LeaseState,
) -> Result<(), DiscoveryError> {
    while let Some(key) = state.stale.first().cloned() {
        store.release(&key, lease).await?;
        state.stale.remove(&key);
    }
    Ok(())
}

fn warn_held(state: &mut LeaseState, key: &str, holder: Option<LeaseId>) {
    if let Some(rounds) = state.held.sighted((key.to_owned(), holder)) {
        let holder = holder.map_or_else(|| "no lease".to_owned(), |lease| lease.to_string());
        tracing::warn!(%key, %holder, rounds, "a registration of this process is held by another lease, so it is not written; trying again every keep-alive round (logged at the 1st, 2nd, 4th… round)");
    }
}

/// Checks that every registration is in the store with its value on `lease`, and
/// rewrites those that are not: nothing else would bring back a deleted or damaged
/// record before the lease is lost. One claim per registration, which writes nothing
/// when it is intact.
async fn check_registrations(
    store: &dyn KvStore,
    lease: LeaseId,
    state: &mut LeaseState,
    registrations: &Registrations,
) -> Result<(), DiscoveryError> {
    for (key, value) in wanted(registrations) {
        match store.claim(&key, value, lease).await {
            Ok(false) => {}
            Ok(true) if state.held.forget(|(held, _)| *held == key) => {
                tracing::warn!(%key, %lease, "a registration another lease held is free again: written");
            }
            Ok(true) => {
                tracing::warn!(%key, %lease, "a registration was missing or damaged in discovery; rewrote it");
            }
            Err(DiscoveryError::KeyHeld { holder, .. }) => warn_held(state, &key, holder),
            Err(err) => return Err(err),
        }
    }
    let registrations = lock(registrations);
    state
        .held
        .forget(|(key, _)| !registrations.contains_key(key));
    Ok(())
}

/// One keep-alive round: refresh the lease and check the registrations, or re-register
/// if the lease was lost or never fully written. Each step is bounded by `interval`, so
/// a hung backend delays the next round but never stops the loop.
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
    if let (Some(lease), true) = (state.lease, state.synced) {
        if kept_alive(store, interval, lease, state, registrations).await {
            return;
        }
        let keys = lock(registrations).len();
        tracing::warn!(%lease, keys, "discovery lease lost (expired or revoked): registering again under a new lease");
        state.lease = None;
    }
    match tokio::time::timeout(interval, resync(store, ttl, state, registrations)).await {
        Ok(Ok(lease)) => {
            let keys = lock(registrations).len();
            tracing::warn!(%lease, keys, "registrations written again");
        }
        Ok(Err(err)) => tracing::warn!(%err, "could not register again; retrying"),
        Err(_) => tracing::warn!(?interval, "registering again got no answer; retrying"),
    }
}

/// Keeps `lease` alive and checks the registrations; `false` if the lease is gone (a
/// failure that may pass is logged and counts as kept, to be retried next round).
async fn kept_alive(
    store: &dyn KvStore,
    interval: Duration,
    lease: LeaseId,
    state: &mut LeaseState,
    registrations: &Registrations,
) -> bool {
    match tokio::time::timeout(interval, store.keep_alive(lease)).await {
        Ok(Ok(())) => {}
        Ok(Err(DiscoveryError::LeaseExpired { .. })) => return false,
        Ok(Err(err)) => {
            tracing::warn!(%lease, %err, ?interval, "lease keep-alive failed; retrying");
            return true;
        }
        Err(_) => {
            tracing::warn!(%lease, ?interval, "lease keep-alive got no answer; retrying");
            return true;
        }
    }
    if !state.stale.is_empty() {
        if let Err(err) = delete_stale(store, lease, state).await {
            tracing::warn!(%err, "could not delete deregistered keys; retrying");
        }
    }
    let check = check_registrations(store, lease, state, registrations);
    match tokio::time::timeout(interval, check).await {
        Ok(Ok(())) => true,
        Ok(Err(DiscoveryError::LeaseExpired { .. })) => false,
        Ok(Err(err)) => {
            tracing::warn!(%err, "could not check the registrations; retrying next round");
            true
        }
        Err(_) => {
            tracing::warn!(
                ?interval,
                "checking the registrations got no answer; retrying next round"
            );
            true
        }
    }
}
