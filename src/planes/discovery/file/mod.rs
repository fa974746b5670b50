//! The file backend: several processes on one host share records through a directory,
//! with no server.
//!
//! Layout of `DYN_FILE_KV` (default `<system temp dir>/planewire-kv`):
//!
//! ```text
//! lock                     flock'ed by every writer (see `dir`)
//! keys/<escaped key>       "<lease id: 16 hex digits, or ->\n<value bytes>"
//! leases/<lease id>        "<ttl ms> <expiry, ms since the Unix epoch>\n"
//! keys|leases/.tmp-<pid>-<n>   being written; renamed into place
//! ```
//!
//! A key's file name keeps `[A-Za-z0-9_-]` and writes every other byte as `%XX`, so
//! `/services/ns/backend/generate/1f` is `%2Fservices%2Fns%2Fbackend%2Fgenerate%2F1f`.
//!
//! Leases are real: keep-alive rewrites the lease file with a later expiry; a record
//! whose lease expired (its owner stopped refreshing it for longer than the TTL) is
//! treated as gone by every reader at once, and removed by the next one that looks.
//! Watches poll every [`FILE_POLL_INTERVAL`].
//!
//! Anything else in the directory is one bad entry, never a failed operation: a file
//! that is not a record, or not a lease file (garbage, empty, truncated, not UTF-8), a
//! name no key or lease has, a directory or FIFO, a file that cannot be read. It is
//! skipped and logged at its 1st, 2nd, 4th, 8th… sighting; a record that is not one
//! counts as absent (any process may write the key) and is removed, and a lease file
//! that is not one counts as expired, its records with it — except to its owner, which
//! rewrites it at its next keep-alive and keeps the lease.

mod dir;
mod entry;
mod layout;
mod watch;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use self::dir::Dir;
use super::DiscoveryError;
use super::kv::{KeyValue, KvStore, KvWatch, LeaseId};

/// How often a file-backend watch rescans the directory: changes reach watchers within
/// this interval.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A [`KvStore`] in a directory shared by the processes of one host.
pub struct FileStore {
    dir: Arc<Dir>,
}

impl FileStore {
    /// Opens (creating if needed) the store in `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, DiscoveryError> {
        let path = path.as_ref().to_owned();
        let dir = blocking(move || Dir::open(&path)).await?;
        Ok(Self { dir: Arc::new(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.root()
    }

    fn run<'a, T: Send + 'static>(
        &self,
        op: impl FnOnce(&Dir) -> Result<T, DiscoveryError> + Send + 'static,
    ) -> BoxFuture<'a, Result<T, DiscoveryError>> {
        let dir = Arc::clone(&self.dir);
        blocking(move || op(&dir)).boxed()
    }
}

/// Runs file-system work on tokio's blocking pool; a panic there resumes here.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, DiscoveryError> + Send + 'static,
) -> Result<T, DiscoveryError> {
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(err) => Err(DiscoveryError::Backend {
                backend: "file",
                operation: "blocking task",
                source: Box::new(err),
            }),
        },
    }
}

impl KvStore for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, DiscoveryError>> {
        self.run(move |dir| dir.grant(ttl))
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        self.run(move |dir| dir.keep_alive(lease))
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        self.run(move |dir| dir.revoke(lease))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        let key = key.to_owned();
        self.run(move |dir| dir.put(&key, &value, lease))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let key = key.to_owned();
        self.run(move |dir| dir.create(&key, &value, lease))
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let key = key.to_owned();
        self.run(move |dir| dir.claim(&key, &value, lease))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DiscoveryError>> {
        let key = key.to_owned();
        self.run(move |dir| dir.get(&key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, DiscoveryError>> {
        let prefix = prefix.to_owned();
        self.run(move |dir| dir.list(&prefix))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let key = key.to_owned();
        self.run(move |dir| dir.delete(&key))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let key = key.to_owned();
        self.run(move |dir| dir.release(&key, lease))
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KvWatch, DiscoveryError>> {
        let prefix = prefix.to_owned();
        let dir = Arc::clone(&self.dir);
        async move {
            let snapshot = {
                let (dir, prefix) = (Arc::clone(&dir), prefix.clone());
                blocking(move || dir.list(&prefix)).await?
            };
            Ok(watch::poll(Arc::downgrade(&dir), prefix, snapshot))
        }
        .boxed()
    }
}
