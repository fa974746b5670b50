//! Client connections, pooled per remote address.
//!
//! The pool knows connections only through `PooledConnection` and opens them through a
//! `Connector`: the TCP plane supplies both. Each address gets up to `pool_size`
//! (`DYN_TCP_POOL_SIZE`) connections. A request goes to the usable
//! connection with the fewest streams in flight; a new connection is opened only when
//! every open one already carries [`GROW_AT_IN_FLIGHT`] streams (multiplexing makes one
//! connection enough for light load). One connect runs at a time per address: a burst of
//! first calls opens one socket and waits for it (rather than opening a socket each and
//! spreading thin over them), and when that connect fails, every caller waiting on it gets
//! its error at once. Dead or draining connections are pruned on the next pick.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::hash::LocalMap;
use crate::planes::request::RequestError;
use crate::sync::lock;

/// Streams per connection at which the pool opens another connection. High on purpose:
/// many streams on one connection share its reads and writes (the latency bench's
/// 64-in-flight cells ran 3× faster on one connection than spread over eight on a 2-core
/// machine); more connections pay off only once one connection's task saturates a core.
pub const GROW_AT_IN_FLIGHT: usize = 64;

/// What the pool asks of a connection.
pub(crate) trait PooledConnection: Send + Sync + 'static {
    /// Takes new streams: open and not draining.
    fn is_usable(&self) -> bool;
    fn is_closed(&self) -> bool;
    /// Streams open on it now.
    fn in_flight(&self) -> usize;
}

/// Opens the pool's connections.
pub(crate) trait Connector: Send + Sync + 'static {
    type Connection: PooledConnection;

    /// A connection to `target`, which `address` (as the caller gave it) resolved to.
    fn connect(
        &self,
        address: &str,
        target: SocketAddr,
    ) -> impl Future<Output = Result<Self::Connection, RequestError>> + Send;
}

/// All pools of one client, by address string.
pub(crate) struct Pools<C: Connector> {
    connector: Arc<C>,
    pool_size: usize,
    /// Read per request by every caller, written when an address is first seen.
    by_address: RwLock<LocalMap<String, Arc<AddressPool<C>>>>,
}

impl<C: Connector> Pools<C> {
    /// Pools of up to `pool_size` connections per address, opened by `connector`.
    pub(crate) fn new(connector: C, pool_size: usize) -> Self {
        Self {
            connector: Arc::new(connector),
            pool_size,
            by_address: RwLock::default(),
        }
    }

    pub(crate) fn get(&self, address: &str) -> Arc<AddressPool<C>> {
        if let Some(pool) = self.read().get(address) {
            return Arc::clone(pool);
        }
        let mut pools = self.by_address.write().unwrap_or_else(|e| e.into_inner());
        // Another caller may have added it between the two locks.
        let pool = pools.entry(address.to_owned()).or_insert_with(|| {
            Arc::new(AddressPool::new(
                address,
                Arc::clone(&self.connector),
                self.pool_size,
            ))
        });
        Arc::clone(pool)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, LocalMap<String, Arc<AddressPool<C>>>> {
        self.by_address.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `address` the pool hands out without waiting or growing (see
    /// [`AddressPool::connection`]); `None` sends the caller the long way, through
    /// [`get`](Self::get). The common case, taken per request: it saves a reference count
    /// on the pool, which every caller on every thread shares, and a wake subscription.
    pub(crate) fn ready_connection(&self, address: &str) -> Option<Arc<C::Connection>> {
        let pools = self.read();
        let pool = pools.get(address)?;
        pool.pick_now(&mut lock(&pool.state))
    }

    /// Forgets every pool: their connections close as soon as the streams still running
    /// on them end.
    pub(crate) fn clear(&self) {
        self.by_address
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) fn existing(&self, address: &str) -> Option<Arc<AddressPool<C>>> {
        self.read().get(address).cloned()
    }
}

struct State<T> {
    connections: Vec<Arc<T>>,
    /// Whether a connect is in progress.
    connecting: bool,
    /// Number of the latest connect attempt.
    attempt: u64,
    /// The latest failed attempt and its error, for the callers that waited on it.
    failure: Option<(u64, RequestError)>,
}

/// The connections to one remote address.
pub(crate) struct AddressPool<C: Connector> {
    address: String,
    connector: Arc<C>,
    pool_size: usize,
    state: Mutex<State<C::Connection>>,
    /// Signalled when a connect attempt finishes, so waiting callers look again.
    changed: Notify,
}

enum Pick<T> {
    Use(Arc<T>),
    /// Open a connection, as attempt number `.0`.
    Connect(u64),
    /// Wait for attempt number `.0` to finish.
    Wait(u64),
}

impl<C: Connector> AddressPool<C> {
    fn new(address: &str, connector: Arc<C>, pool_size: usize) -> Self {
        Self {
            address: address.to_owned(),
            connector,
            pool_size,
            state: Mutex::new(State {
                connections: Vec::new(),
                connecting: false,
                attempt: 0,
                failure: None,
            }),
            changed: Notify::new(),
        }
    }

    /// A connection to send on, connecting if the pool should grow.
    pub(crate) async fn connection(&self) -> Result<Arc<C::Connection>, RequestError> {
        loop {
            // Subscribe before looking, so a connect finishing in between is not missed.
            let changed = self.changed.notified();
            match self.pick() {
                Pick::Use(conn) => return Ok(conn),
                Pick::Connect(attempt) => return self.grow(attempt).await,
                Pick::Wait(attempt) => {
                    changed.await;
                    if let Some((failed, err)) = &lock(&self.state).failure {
                        if *failed == attempt {
                            return Err(err.clone());
                        }
                    }
                }
            }
        }
    }

    fn pick(&self) -> Pick<C::Connection> {
        let mut state = lock(&self.state);
        if let Some(conn) = self.pick_now(&mut state) {
            return Pick::Use(conn);
        }
        // Nothing to use now: with a connect under way there is no usable connection at
        // all (`pick_now` takes a busy one then), so wait for it; otherwise grow.
        if state.connecting {
            return Pick::Wait(state.attempt);
        }
        state.connecting = true;
        state.attempt += 1;
        Pick::Connect(state.attempt)
    }

    /// The usable connection with the fewest streams in flight, unless the pool should
    /// grow first (it is busy, there is room, and no connect is under way) or has none.
    fn pick_now(&self, state: &mut State<C::Connection>) -> Option<Arc<C::Connection>> {
        state
            .connections
            .retain(|c| c.is_usable() || (!c.is_closed() && c.in_flight() > 0));
        // Draining connections do not count toward the size: they take no new streams and
        // close soon, and counting them could leave a caller waiting on a pool with no
        // usable slot.
        let mut usable = 0;
        let mut best: Option<&Arc<C::Connection>> = None;
        for conn in state.connections.iter().filter(|c| c.is_usable()) {
            usable += 1;
            if best.is_none_or(|b| conn.in_flight() < b.in_flight()) {
                best = Some(conn);
            }
        }
        let room = usable < self.pool_size;
        best.filter(|conn| conn.in_flight() < GROW_AT_IN_FLIGHT || !room || state.connecting)
            .cloned()
    }

    async fn grow(&self, attempt: u64) -> Result<Arc<C::Connection>, RequestError> {
        // Ends the attempt even if this caller's future is dropped mid-connect (its own
        // timeout), so the pool never believes a connect is still running.
        struct Attempt<'a, C: Connector> {
            pool: &'a AddressPool<C>,
            id: u64,
            outcome: Option<Result<Arc<C::Connection>, RequestError>>,
        }
        impl<C: Connector> Drop for Attempt<'_, C> {
            fn drop(&mut self) {
                let mut state = lock(&self.pool.state);
                state.connecting = false;
                match &self.outcome {
                    Some(Ok(conn)) => state.connections.push(Arc::clone(conn)),
                    Some(Err(err)) => state.failure = Some((self.id, err.clone())),
                    None => {}
                }
                drop(state);
                self.pool.changed.notify_waiters();
            }
        }
        let mut guard = Attempt {
            pool: self,
            id: attempt,
            outcome: None,
        };
        let result = match self.resolve().await {
            Ok(target) => self
                .connector
                .connect(&self.address, target)
                .await
                .map(Arc::new),
            Err(err) => Err(err),
        };
        guard.outcome = Some(result.clone());
        drop(guard);
        result
    }

    async fn resolve(&self) -> Result<SocketAddr, RequestError> {
        if let Ok(addr) = self.address.parse() {
            return Ok(addr);
        }
        let invalid = |reason: String| RequestError::InvalidAddress {
            address: self.address.clone(),
            reason,
        };
        let mut addrs = tokio::net::lookup_host(&self.address)
            .await
            .map_err(|e| invalid(format!("expected HOST:PORT ({e})")))?;
        addrs
            .next()
            .ok_or_else(|| invalid("the host name resolved to no address".to_owned()))
    }

    /// Open connections, live or draining.
    pub(crate) fn connection_count(&self) -> usize {
        lock(&self.state)
            .connections
            .iter()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// The connections held now, live or draining.
    pub(crate) fn connections(&self) -> Vec<Arc<C::Connection>> {
        lock(&self.state).connections.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A connection whose load the test sets.
    struct Fake {
        in_flight: AtomicUsize,
    }

    impl PooledConnection for Fake {
        fn is_usable(&self) -> bool {
            true
        }

        fn is_closed(&self) -> bool {
            false
        }

        fn in_flight(&self) -> usize {
            self.in_flight.load(Ordering::Relaxed)
        }
    }

    /// Counts the connects it makes.
    #[derive(Default)]
    struct Counting {
        connects: AtomicUsize,
    }

    impl Connector for Counting {
        type Connection = Fake;

        async fn connect(&self, _: &str, _: SocketAddr) -> Result<Fake, RequestError> {
            self.connects.fetch_add(1, Ordering::Relaxed);
            Ok(Fake {
                in_flight: AtomicUsize::new(0),
            })
        }
    }

    const ADDRESS: &str = "127.0.0.1:9";

    #[tokio::test]
    async fn the_ready_path_hands_out_what_is_there_and_leaves_growing_to_the_long_way() {
        let pools = Pools::new(Counting::default(), 2);
        assert!(pools.ready_connection(ADDRESS).is_none(), "no pool yet");
        let pool = pools.get(ADDRESS);
        assert!(
            pools.ready_connection(ADDRESS).is_none(),
            "no connection yet"
        );
        // Looking did not claim a connect: the long way makes one.
        let first = pool.connection().await.unwrap();
        assert_eq!(pools.connector.connects.load(Ordering::Relaxed), 1);
        let ready = pools.ready_connection(ADDRESS).unwrap();
        assert!(Arc::ptr_eq(&ready, &first));
        // Busy, with room for another: the pool should grow, which only the long way does.
        first.in_flight.store(GROW_AT_IN_FLIGHT, Ordering::Relaxed);
        assert!(pools.ready_connection(ADDRESS).is_none());
        let second = pool.connection().await.unwrap();
        assert_eq!(pools.connector.connects.load(Ordering::Relaxed), 2);
        assert!(Arc::ptr_eq(
            &pools.ready_connection(ADDRESS).unwrap(),
            &second
        ));
        // Full: the least busy connection, however busy.
        second
            .in_flight
            .store(GROW_AT_IN_FLIGHT + 5, Ordering::Relaxed);
        assert!(Arc::ptr_eq(
            &pools.ready_connection(ADDRESS).unwrap(),
            &first
        ));
        assert_eq!(pools.connector.connects.load(Ordering::Relaxed), 2);
    }
}
