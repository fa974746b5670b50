//! [`EndpointTable`]: the endpoints one server hosts, looked up per request. Shared by
//! the planes whose requests name their endpoint by path (TCP, HTTP/2).

use std::sync::{Arc, RwLock};

use std::sync::atomic::{AtomicUsize, Ordering};

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
    max_concurrent_requests: usize,
}

impl EndpointTable {
    pub(crate) fn new(max_concurrent_requests: usize) -> Self {
        Self {
            endpoints: RwLock::default(),
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
        Ok(())
    }

    pub(crate) fn unregister(&self, path: &EndpointPath) -> bool {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        endpoints.remove(&path.to_string()).is_some()
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
}
