//! [`EndpointTable`]: the endpoints one server hosts, looked up per request. Shared by
//! the planes whose requests name their endpoint by path (TCP, HTTP/2).

use std::sync::{Arc, RwLock, Weak};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::error::RegisterError;
use super::handler::Handler;
use crate::hash::LocalMap;
use crate::vocab::EndpointPath;

/// A registered handler and its concurrency slots.
pub(crate) struct Endpoint {
    pub(crate) handler: Arc<dyn Handler>,
    /// `max_concurrent_requests` slots: a request that finds none is `Overloaded`.
    pub(crate) slots: Arc<Slots>,
}

/// An endpoint's request slots. Requests never wait for one (they are refused), so a
/// counter does: a semaphore would take its waiters' lock on every release, once per
/// request.
pub(crate) struct Slots {
    free: AtomicUsize,
}

impl Slots {
    fn new(count: usize) -> Self {
        Self {
            free: AtomicUsize::new(count),
        }
    }

    /// A slot, held until the guard drops; `None` when all are taken.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.free
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |free| {
                free.checked_sub(1)
            })
            .ok()?;
        Some(Slot(Arc::clone(self)))
    }
}

/// One taken slot of an endpoint; dropping it frees the slot.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.free.fetch_add(1, Ordering::Release);
    }
}

/// Endpoints by path (`ns/component/endpoint/{instance hex}`).
pub(crate) struct EndpointTable {
    endpoints: RwLock<LocalMap<String, Arc<Endpoint>>>,
    /// Bumped by every change to `endpoints`, under its write lock: an
    /// [`EndpointCache`] filled at an older generation is stale.
    generation: AtomicU64,
    max_concurrent_requests: usize,
}

/// The last endpoint one connection looked up. A connection's requests mostly name one
/// endpoint, and a hit costs a load and a short comparison, where a lookup takes the
/// table's lock (a line every connection writes) and hashes the path.
#[derive(Default)]
pub(crate) struct EndpointCache {
    /// A copy, not a slice of the request: a slice would pin the read buffer it came in.
    path: String,
    generation: u64,
    /// Weak: an unregistered handler is dropped when the table and its running requests
    /// let go of it, not kept by an idle connection's cache.
    endpoint: Weak<Endpoint>,
}

impl EndpointTable {
    pub(crate) fn new(max_concurrent_requests: usize) -> Self {
        Self {
            endpoints: RwLock::default(),
            generation: AtomicU64::new(0),
            max_concurrent_requests,
        }
    }

    pub(crate) fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        let key = path.to_string();
        if endpoints.contains_key(&key) {
            return Err(RegisterError::Duplicate(key));
        }
        let endpoint = Endpoint {
            handler: Arc::new(handler),
            slots: Arc::new(Slots::new(self.max_concurrent_requests)),
        };
        endpoints.insert(key, Arc::new(endpoint));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub(crate) fn unregister(&self, path: &EndpointPath) -> bool {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::Release);
        endpoints.remove(&path.to_string()).is_some()
    }

    /// [`lookup`](Self::lookup) through `cache`: the same answer, without the lookup
    /// while `path` and the table are what they were last time.
    pub(crate) fn lookup_cached(
        &self,
        path: &str,
        cache: &mut EndpointCache,
    ) -> Option<Arc<Endpoint>> {
        // Read before the lookup: a change after it makes the next call look again.
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation == generation
            && cache.path == path
            && let Some(endpoint) = cache.endpoint.upgrade()
        {
            return Some(endpoint);
        }
        let endpoint = self.lookup(path)?;
        cache.path.clear();
        cache.path.push_str(path);
        cache.generation = generation;
        cache.endpoint = Arc::downgrade(&endpoint);
        Some(endpoint)
    }

    /// The endpoint serving `path`: an exact match or, for a path without an instance id
    /// (`namespace/component/endpoint`), the one instance of that endpoint hosted here.
    pub(crate) fn lookup(&self, path: &str) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = endpoints.get(path) {
            return Some(Arc::clone(endpoint));
        }
        if path.bytes().filter(|b| *b == b'/').count() != 2 {
            return None;
        }
        let mut instances = endpoints.iter().filter(|(key, _)| {
            key.strip_prefix(path)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|instance| !instance.contains('/'))
        });
        match (instances.next(), instances.next()) {
            (Some((_, endpoint)), None) => Some(Arc::clone(endpoint)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::request::{Request, unary_handler};

    fn echo() -> impl Handler {
        unary_handler(|req: Request| async move { Ok(req.payload) })
    }

    #[test]
    fn a_path_without_instance_finds_the_only_instance_and_duplicates_are_refused() {
        let table = EndpointTable::new(4);
        let one = EndpointPath::new("ns", "c", "e", 0x1f).unwrap();
        table.register(&one, echo()).unwrap();
        assert!(matches!(
            table.register(&one, echo()),
            Err(RegisterError::Duplicate(_))
        ));
        assert!(table.lookup("ns/c/e/1f").is_some());
        assert!(table.lookup("ns/c/e").is_some());
        assert!(table.lookup("ns/c").is_none());
        let two = EndpointPath::new("ns", "c", "e", 0x2f).unwrap();
        table.register(&two, echo()).unwrap();
        assert!(table.lookup("ns/c/e").is_none(), "two instances: ambiguous");
        assert!(table.unregister(&one));
        assert!(!table.unregister(&one));
        assert!(table.lookup("ns/c/e").is_some());
    }

    #[test]
    fn a_cached_lookup_follows_registrations_and_removals() {
        let table = EndpointTable::new(4);
        let mut cache = EndpointCache::default();
        let one = EndpointPath::new("ns", "c", "e", 0x1f).unwrap();
        assert!(table.lookup_cached("ns/c/e", &mut cache).is_none());
        table.register(&one, echo()).unwrap();
        let found = table.lookup_cached("ns/c/e", &mut cache).unwrap();
        let again = table.lookup_cached("ns/c/e", &mut cache).unwrap();
        assert!(Arc::ptr_eq(&found, &again));
        // Another path is looked up, not answered from the cache.
        assert!(table.lookup_cached("ns/c/other", &mut cache).is_none());
        assert!(table.lookup_cached("ns/c/e/1f", &mut cache).is_some());
        // A second instance makes the bare path ambiguous; removing the first makes it
        // name the second. The cache sees both changes.
        assert!(table.lookup_cached("ns/c/e", &mut cache).is_some());
        let two = EndpointPath::new("ns", "c", "e", 0x2f).unwrap();
        table.register(&two, echo()).unwrap();
        assert!(table.lookup_cached("ns/c/e", &mut cache).is_none());
        table.unregister(&one);
        let second = table.lookup_cached("ns/c/e", &mut cache).unwrap();
        assert!(!Arc::ptr_eq(&second, &found));
        table.unregister(&two);
        assert!(table.lookup_cached("ns/c/e", &mut cache).is_none());
        assert!(table.lookup_cached("ns/c/e/2f", &mut cache).is_none());
    }

    #[test]
    fn a_cache_does_not_keep_an_unregistered_handler_alive() {
        let table = EndpointTable::new(4);
        let mut cache = EndpointCache::default();
        let path = EndpointPath::new("ns", "c", "e", 1).unwrap();
        table.register(&path, echo()).unwrap();
        let weak = Arc::downgrade(&table.lookup_cached("ns/c/e/1", &mut cache).unwrap());
        table.unregister(&path);
        assert!(weak.upgrade().is_none(), "the cache held the handler");
    }
}
