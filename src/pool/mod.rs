//! Client connections, pooled per remote address.
//!
//! Each address gets up to `DYN_TCP_POOL_SIZE` connections. A request goes to the usable
//! connection with the fewest streams in flight; a new connection is opened only when
//! every open one already carries [`GROW_AT_IN_FLIGHT`] streams (multiplexing makes one
//! connection enough for light load). One connect runs at a time per address: a burst of
//! first calls opens one socket and waits for it (rather than opening a socket each and
//! spreading thin over them), and when that connect fails, every caller waiting on it gets
//! its error at once. Dead or draining connections are pruned on the next pick.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::TcpConfig;
use crate::planes::RequestError;
use crate::sync::lock;
use crate::tcp::ClientConnection;

/// Streams per connection at which the pool opens another connection. High on purpose:
/// many streams on one connection share its reads and writes (the latency bench's
/// 64-in-flight cells ran 3× faster on one connection than spread over eight on a 2-core
/// machine); more connections pay off only once one connection's task saturates a core.
pub const GROW_AT_IN_FLIGHT: usize = 64;

/// All pools of one client, by address string.
#[derive(Default)]
pub(crate) struct Pools {
    by_address: Mutex<HashMap<String, Arc<AddressPool>>>,
}

impl Pools {
    pub(crate) fn get(&self, address: &str, config: &TcpConfig) -> Arc<AddressPool> {
        let mut pools = lock(&self.by_address);
        if let Some(pool) = pools.get(address) {
            return Arc::clone(pool);
        }
        let pool = Arc::new(AddressPool::new(address, config.clone()));
        pools.insert(address.to_owned(), Arc::clone(&pool));
        pool
    }

    /// Forgets every pool: their connections close as soon as the streams still running
    /// on them end.
    pub(crate) fn clear(&self) {
        lock(&self.by_address).clear();
    }

    pub(crate) fn existing(&self, address: &str) -> Option<Arc<AddressPool>> {
        lock(&self.by_address).get(address).cloned()
    }
}

struct State {
    connections: Vec<Arc<ClientConnection>>,
    /// Whether a connect is in progress.
    connecting: bool,
    /// Number of the latest connect attempt.
    attempt: u64,
    /// The latest failed attempt and its error, for the callers that waited on it.
    failure: Option<(u64, RequestError)>,
}

/// The connections to one remote address.
pub(crate) struct AddressPool {
    address: String,
    config: TcpConfig,
    state: Mutex<State>,
    /// Signalled when a connect attempt finishes, so waiting callers look again.
    changed: Notify,
}

enum Pick {
    Use(Arc<ClientConnection>),
    /// Open a connection, as attempt number `.0`.
    Connect(u64),
    /// Wait for attempt number `.0` to finish.
    Wait(u64),
}

impl AddressPool {
    fn new(address: &str, config: TcpConfig) -> Self {
        Self {
            address: address.to_owned(),
            config,
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
    pub(crate) async fn connection(&self) -> Result<Arc<ClientConnection>, RequestError> {
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

    fn pick(&self) -> Pick {
        let mut state = lock(&self.state);
        state
            .connections
            .retain(|c| c.is_usable() || (!c.is_closed() && c.in_flight() > 0));
        // Draining connections do not count toward the size: they take no new streams and
        // close soon, and counting them could leave a caller waiting on a pool with no
        // usable slot.
        let mut usable = 0;
        let mut best: Option<&Arc<ClientConnection>> = None;
        for conn in state.connections.iter().filter(|c| c.is_usable()) {
            usable += 1;
            if best.is_none_or(|b| conn.in_flight() < b.in_flight()) {
                best = Some(conn);
            }
        }
        let best = best.cloned();
        let room = usable < self.config.pool_size;
        match best {
            Some(conn) if conn.in_flight() < GROW_AT_IN_FLIGHT || !room || state.connecting => {
                Pick::Use(conn)
            }
            None if state.connecting => Pick::Wait(state.attempt),
            _ => {
                state.connecting = true;
                state.attempt += 1;
                Pick::Connect(state.attempt)
            }
        }
    }

    async fn grow(&self, attempt: u64) -> Result<Arc<ClientConnection>, RequestError> {
        // Ends the attempt even if this caller's future is dropped mid-connect (its own
        // timeout), so the pool never believes a connect is still running.
        struct Attempt<'a> {
            pool: &'a AddressPool,
            id: u64,
            outcome: Option<Result<Arc<ClientConnection>, RequestError>>,
        }
        impl Drop for Attempt<'_> {
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
            Ok(target) => ClientConnection::connect(&self.address, target, &self.config)
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

    pub(crate) fn read_buffer_capacities(&self) -> Vec<usize> {
        lock(&self.state)
            .connections
            .iter()
            .map(|c| c.read_buffer_capacity())
            .collect()
    }
}
