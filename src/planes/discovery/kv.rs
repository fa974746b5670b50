//! The key-value store every discovery backend provides.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::DiscoveryError;

/// A lease: keys put with it vanish when it expires (no keep-alive within its TTL) or
/// is revoked. Shown as lowercase hex, as etcd tools show lease ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
}

#[cfg(test)]
impl KeyValue {
    /// A pair with a static value, for tests.
    pub(crate) fn of(key: &str, value: &'static str) -> Self {
        Self {
            key: key.to_owned(),
            value: Bytes::from_static(value.as_bytes()),
        }
    }
}

/// One item of a prefix watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Every key under the prefix, sorted by key. Always the first item of a watch, and
    /// sent again whenever the watch had to resynchronize (see [`KvStore::watch`]): the
    /// consumer diffs it against what it holds, so keys missing from it were deleted.
    Snapshot(Vec<KeyValue>),
    Put(KeyValue),
    Delete(String),
}

/// A prefix watch: [`KvEvent`]s in order, ending only when the store is dropped.
pub type KvWatch = BoxStream<'static, KvEvent>;

/// What a discovery backend must do. Object-safe so the backend can be chosen at run
/// time (`Arc<dyn KvStore>`); each async method returns a boxed future.
///
/// Keys are UTF-8 strings; values are opaque bytes.
pub trait KvStore: Send + Sync + 'static {
    /// `"memory"`, `"file"` or `"etcd"`, for logs and errors.
    fn backend(&self) -> &'static str;

    /// A new lease that expires `ttl` after it was granted or last kept alive.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, DiscoveryError>>;

    /// Restarts the lease's TTL. [`DiscoveryError::LeaseExpired`] when it is gone; its
    /// keys are gone with it.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>>;

    /// Ends the lease now and deletes its keys. Revoking a lease that is gone is not an error.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>>;

    /// Sets `key`, attached to `lease` if given (a lease that is gone is
    /// [`DiscoveryError::LeaseExpired`]).
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>>;

    /// Like [`put`](Self::put), only if `key` is absent; returns whether it was written.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>>;

    /// Sets `key` on `lease` unless another lease holds it: writes if the key is absent
    /// (for the file backend, also if its file is unreadable or names an expired lease)
    /// or already on `lease`, atomically with that check. Returns whether it wrote:
    /// `false` if the key already held exactly `value` on `lease`, so checking that a
    /// registration is intact costs no write. A key on another lease, or written with
    /// none, is [`DiscoveryError::KeyHeld`]; a `lease` that is gone is
    /// [`DiscoveryError::LeaseExpired`].
    fn claim<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>>;

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DiscoveryError>>;

    /// Every key starting with `prefix`, sorted by key.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, DiscoveryError>>;

    /// Removes `key`; returns whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, DiscoveryError>>;

    /// Removes `key` only if it is on `lease`, atomically with that check; returns
    /// whether it did. A process deletes its registrations this way, so it never
    /// deletes a key another process has since taken.
    fn release<'a>(
        &'a self,
        key: &'a str,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>>;

    /// Watches every key starting with `prefix`: a [`KvEvent::Snapshot`] first, then
    /// puts and deletes as they happen. The snapshot is taken before this returns, so
    /// an unreachable backend is an error here; later trouble is logged and retried
    /// inside the stream, which resumes without losing a change:
    ///
    /// | backend | after a disconnect | consumer too slow |
    /// |---|---|---|
    /// | memory | (never disconnects) | a fresh `Snapshot` once it lags [`WATCH_BUFFER`](super::WATCH_BUFFER) events |
    /// | file | (polls; an I/O error is retried at the next poll) | nothing queues: each poll diffs against what was delivered |
    /// | etcd | replays from the last revision seen; a fresh `Snapshot` if that revision was compacted | etcd holds the backlog server-side |
    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KvWatch, DiscoveryError>>;
}
