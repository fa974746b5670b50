//! [`Discovery`]: register endpoints under the process's lease; list and watch instances.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

use tokio_util::sync::CancellationToken;

use super::DiscoveryError;
use super::config::{DiscoveryBackend, DiscoveryConfig};
use super::file::FileStore;
use super::instances::InstanceWatch;
use super::kv::{KvStore, LeaseId};
use super::lease::{self, LeaseState, Registrations};
use super::memory::MemoryStore;
use super::record::{InstanceRecord, Transport, endpoint_prefix};
use crate::sync::lock;
use crate::vocab::EndpointPath;

/// The discovery plane of one process: one lease, the endpoints registered under it,
/// and lists and watches of everyone's instances. Cheap to clone; clones share the
/// lease. The lease is granted at the first registration and kept alive in the
/// background until [`shutdown`](Self::shutdown) or until this and every
/// [`RegistrationHandle`] are dropped.
#[derive(Clone)]
pub struct Discovery {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn KvStore>,
    ttl: Duration,
    state: tokio::sync::Mutex<LeaseState>,
    registrations: Registrations,
    /// Stops the keep-alive task.
    keeper: CancellationToken,
}

impl Discovery {
    /// Opens the backend `config` selects. Each call makes a separate in-memory store;
    /// clone the `Discovery` to share one within a process.
    pub async fn connect(config: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let config = config.clone().validate()?;
        let store: Arc<dyn KvStore> = match config.backend {
            DiscoveryBackend::Memory => Arc::new(MemoryStore::new()),
            DiscoveryBackend::File => Arc::new(FileStore::open(&config.file_dir).await?),
            #[cfg(feature = "etcd")]
            DiscoveryBackend::Etcd => {
                Arc::new(super::etcd::EtcdStore::connect(&config.etcd).await?)
            }
            #[cfg(not(feature = "etcd"))]
            DiscoveryBackend::Etcd => return Err(super::config::etcd_not_built().into()),
        };
        Ok(Self::new(store, config.lease_ttl))
    }

    /// Discovery over `store`, registering under leases of `lease_ttl`.
    pub fn new(store: Arc<dyn KvStore>, lease_ttl: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                ttl: lease_ttl,
                state: tokio::sync::Mutex::default(),
                registrations: Mutex::default(),
                keeper: CancellationToken::new(),
            }),
        }
    }

    /// The backend, for raw key-value access (the CLI's `discovery list` uses it).
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.shared.store
    }

    pub fn lease_ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The current lease, once something was registered.
    pub async fn lease_id(&self) -> Option<LeaseId> {
        self.shared.state.lock().await.lease
    }

    /// Publishes `path` as reachable over `transport` until the returned handle is
    /// dropped or deregistered, or [`shutdown`](Self::shutdown) is called.
    ///
    /// An instance id another live process has registered is
    /// [`DiscoveryError::InstanceHeld`], naming that process's lease and address; its
    /// record is left as it is. If the backend is unreachable, the registration is kept
    /// and written by the keep-alive task once it answers (logged as a warning); other
    /// failures are errors.
    pub async fn register(
        &self,
        path: &EndpointPath,
        transport: Transport,
    ) -> Result<RegistrationHandle, DiscoveryError> {
        let record = InstanceRecord::new(path, transport);
        let key = record.key()?;
        let value = record.to_json();
        match self.register_key(key, value).await {
            Ok(key) => Ok(RegistrationHandle { key, record }),
            Err(DiscoveryError::KeyHeld { key, holder }) => {
                Err(self.instance_held(&record, &key, holder).await)
            }
            Err(err) => Err(err),
        }
    }

    /// The error for `record`, whose key `holder` has: with the address the holder's
    /// record names, if it can be read.
    async fn instance_held(
        &self,
        record: &InstanceRecord,
        key: &str,
        holder: Option<LeaseId>,
    ) -> DiscoveryError {
        let address = match self.shared.store.get(key).await {
            Ok(Some(value)) => InstanceRecord::from_key_value(key, &value)
                .ok()
                .map(|held| held.transport.address().to_owned()),
            _ => None,
        };
        DiscoveryError::InstanceHeld {
            endpoint: format!(
                "{}/{}/{}",
                record.namespace, record.component, record.endpoint
            ),
            instance_id: record.instance_id,
            holder,
            address,
        }
    }

    /// Publishes `value` under `key` on this process's lease, with the same lifetime
    /// rules as [`register`](Self::register). Other planes keep their records in
    /// discovery this way (the ZMQ event plane's publishers, for one). A key another
    /// lease holds is [`DiscoveryError::KeyHeld`].
    pub async fn register_key(
        &self,
        key: String,
        value: Bytes,
    ) -> Result<KeyRegistration, DiscoveryError> {
        let shared = &self.shared;
        let mut state = shared.state.lock().await;
        if state.closed {
            return Err(DiscoveryError::Closed);
        }
        if lock(&shared.registrations).contains_key(&key) {
            return Err(DiscoveryError::AlreadyRegistered { key });
        }
        state.stale.remove(&key);
        self.start_keeper(&mut state);
        match self.claim_new(&mut state, &key, value.clone()).await {
            Ok(()) => {}
            Err(err) if err.is_unavailable() => {
                tracing::warn!(%key, %err, "discovery backend unreachable: the registration is kept and will be written once it answers");
            }
            Err(err) => return Err(err),
        }
        lock(&shared.registrations).insert(key.clone(), value);
        Ok(KeyRegistration {
            shared: Arc::clone(shared),
            key,
            active: true,
        })
    }

    /// Writes a registration not yet in `registrations`: under the lease if everything
    /// else is written, else after writing everything else (granting a lease if needed).
    async fn claim_new(
        &self,
        state: &mut LeaseState,
        key: &str,
        value: Bytes,
    ) -> Result<(), DiscoveryError> {
        let shared = &self.shared;
        let store = shared.store.as_ref();
        let lease = match (state.lease, state.synced) {
            (Some(lease), true) => Ok(lease),
            _ => lease::resync(store, shared.ttl, state, &shared.registrations).await,
        };
        let mut result = match lease {
            Ok(lease) => store.claim(key, value.clone(), lease).await.map(drop),
            Err(err) => Err(err),
        };
        if let Err(DiscoveryError::LeaseExpired { .. }) = result {
            // Lost before the keep-alive task noticed: write everything under a new lease.
            state.lease = None;
            result = match lease::resync(store, shared.ttl, state, &shared.registrations).await {
                Ok(lease) => store.claim(key, value, lease).await.map(drop),
                Err(err) => Err(err),
            };
        }
        if result
            .as_ref()
            .is_err_and(|err| !matches!(err, DiscoveryError::KeyHeld { .. }))
        {
            state.synced = false;
        }
        result
    }

    fn start_keeper(&self, state: &mut LeaseState) {
        if state.keeper_started {
            return;
        }
        state.keeper_started = true;
        tokio::spawn(keep_alive_loop(
            Arc::downgrade(&self.shared),
            self.shared.keeper.clone(),
            self.shared.ttl / 3,
        ));
    }

    /// The instances of `namespace/component/endpoint`. Corrupt records are logged and
    /// skipped.
    pub async fn list(
        &self,
        namespace: &str,
        component: &str,
        endpoint: &str,
    ) -> Result<Vec<InstanceRecord>, DiscoveryError> {
        self.list_prefix(&endpoint_prefix(namespace, component, endpoint)?)
            .await
    }

    /// The instance records whose keys start with `prefix` (see
    /// [`SERVICES_PREFIX`](super::SERVICES_PREFIX)), sorted by key.
    pub async fn list_prefix(&self, prefix: &str) -> Result<Vec<InstanceRecord>, DiscoveryError> {
        let kvs = self.shared.store.list(prefix).await?;
        Ok(kvs
            .into_iter()
            .filter_map(
                |kv| match InstanceRecord::from_key_value(&kv.key, &kv.value) {
                    Ok(record) => Some(record),
                    Err(err) => {
                        tracing::warn!(%err, "skipping an instance record that cannot be read");
                        None
                    }
                },
            )
            .collect())
    }

    /// The instances of `namespace/component/endpoint` and their changes.
    pub async fn watch(
        &self,
        namespace: &str,
        component: &str,
        endpoint: &str,
    ) -> Result<InstanceWatch, DiscoveryError> {
        self.watch_prefix(&endpoint_prefix(namespace, component, endpoint)?)
            .await
    }

    /// The instances whose keys start with `prefix`, and their changes.
    pub async fn watch_prefix(&self, prefix: &str) -> Result<InstanceWatch, DiscoveryError> {
        Ok(InstanceWatch::new(self.shared.store.watch(prefix).await?))
    }

    /// Deregisters everything by revoking the lease, and stops keeping it alive. Later
    /// registrations fail with [`DiscoveryError::Closed`].
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.keeper.cancel();
        let mut state = shared.state.lock().await;
        state.closed = true;
        lock(&shared.registrations).clear();
        if let Some(lease) = state.lease.take() {
            match tokio::time::timeout(shared.ttl, shared.store.revoke_lease(lease)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%lease, %err, "could not revoke the discovery lease; its records go when it expires")
                }
                Err(_) => {
                    tracing::warn!(%lease, "revoking the discovery lease got no answer; its records go when it expires")
                }
            }
        }
    }
}

impl Shared {
    async fn refresh(&self) {
        let mut state = self.state.lock().await;
        let interval = self.ttl / 3;
        lease::refresh(
            self.store.as_ref(),
            self.ttl,
            interval,
            &mut state,
            &self.registrations,
        )
        .await;
    }

    /// Deletes `key` if it is still on this process's lease: one another process has
    /// taken since (after this lease was lost) stays.
    async fn deregister(&self, key: &str) -> Result<(), DiscoveryError> {
        lock(&self.registrations).remove(key);
        let mut state = self.state.lock().await;
        state.held.forget(|(held, _)| held == key);
        if state.closed {
            return Ok(());
        }
        // No lease yet, or one lost with its keys: nothing of ours to delete.
        let Some(lease) = state.lease else {
            return Ok(());
        };
        match self.store.release(key, lease).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_unavailable() => {
                // The lease may outlive the outage: delete the key once the store answers.
                state.stale.insert(key.to_owned());
                Err(err)
            }
            Err(err) => Err(err),
        }
    }
}

impl Drop for Shared {
    /// Dropping the last handle without `shutdown` still ends the lease if a runtime is
    /// there to do it; otherwise the records go when the lease expires.
    fn drop(&mut self) {
        self.keeper.cancel();
        let lease = self.state.try_lock().ok().and_then(|mut s| s.lease.take());
        if let (Some(lease), Ok(runtime)) = (lease, tokio::runtime::Handle::try_current()) {
            let store = Arc::clone(&self.store);
            let ttl = self.ttl;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(ttl, store.revoke_lease(lease)).await;
            });
        }
    }
}

async fn keep_alive_loop(shared: Weak<Shared>, cancel: CancellationToken, interval: Duration) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.refresh().await;
    }
}

/// One registered endpoint instance. Dropping it deregisters (in a background task);
/// [`deregister`](Self::deregister) does the same and reports the outcome.
#[derive(Debug)]
pub struct RegistrationHandle {
    key: KeyRegistration,
    record: InstanceRecord,
}

impl RegistrationHandle {
    pub fn record(&self) -> &InstanceRecord {
        &self.record
    }

    pub fn key(&self) -> &str {
        self.key.key()
    }

    /// Removes the record now. If the backend is unreachable the error is returned and
    /// the deletion is retried in the background.
    pub async fn deregister(self) -> Result<(), DiscoveryError> {
        self.key.deregister().await
    }
}

/// One key written by [`Discovery::register_key`], with the lifetime rules of
/// [`RegistrationHandle`]: dropping it deletes the key in the background.
pub struct KeyRegistration {
    shared: Arc<Shared>,
    key: String,
    active: bool,
}

impl KeyRegistration {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Deletes the key now. If the backend is unreachable the error is returned and
    /// the deletion is retried in the background.
    pub async fn deregister(mut self) -> Result<(), DiscoveryError> {
        self.active = false;
        self.shared.deregister(&self.key).await
    }
}

impl Drop for KeyRegistration {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        // Forget it at once, so a re-registration racing the delete cannot revive it.
        lock(&self.shared.registrations).remove(&self.key);
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shared = Arc::clone(&self.shared);
                runtime.spawn(async move {
                    if let Err(err) = shared.deregister(&key).await {
                        tracing::warn!(%key, %err, "deregistration failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%key, "registration dropped outside a runtime: the record stays until the lease expires");
            }
        }
    }
}

impl std::fmt::Debug for KeyRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRegistration")
            .field("key", &self.key)
            .finish()
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("backend", &self.shared.store.backend())
            .field("lease_ttl", &self.shared.ttl)
            .finish()
    }
}
