//! [`EndpointClient`]: requests to one endpoint, routed to the instances discovery
//! reports, over a shared [`TcpClient`] (and a NATS request-plane client for instances
//! that serve over NATS).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Discovery, DiscoveryError, InstanceEvent, InstanceRecord, RouteError, Transport};
use crate::codec::{HeaderMap, Utf8Bytes};
use crate::planes::{Request, RequestError};
use crate::sync::lock;
use crate::tcp::{ResponseStream, TcpClient};

/// Which instance a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// An instance picked uniformly at random.
    Random,
    /// This instance id only; never retried elsewhere.
    Instance(u64),
}

/// Settings of an [`EndpointClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointClientConfig {
    /// The route of [`EndpointClient::call`] (round robin).
    pub route: Route,
    /// How long an instance that could not be reached gets no new requests (5 s).
    pub skip_unreachable_for: Duration,
    /// With no instance (or not the one asked for), wait this long for one to appear
    /// instead of failing at once (`None`: fail at once).
    pub wait_for_instances: Option<Duration>,
}

impl Default for EndpointClientConfig {
    fn default() -> Self {
        Self {
            route: Route::RoundRobin,
            skip_unreachable_for: Duration::from_secs(5),
            wait_for_instances: None,
        }
    }
}

/// Which request plane reaches a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Tcp,
    Nats,
}

/// An instance as the router uses it: the request path is built once.
#[derive(Debug, Clone)]
struct Target {
    id: u64,
    plane: Plane,
    /// `host:port` on TCP, the instance's subject on NATS.
    address: String,
    path: Utf8Bytes,
}

/// The responses of a routed call, whichever plane carried it. Dropping it before the
/// end cancels the request on the server.
pub enum Responses {
    Tcp(ResponseStream),
    #[cfg(feature = "nats")]
    Nats(crate::nats_request::NatsResponses),
}

impl Stream for Responses {
    type Item = Result<Bytes, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Tcp(stream) => stream.poll_next_unpin(cx),
            #[cfg(feature = "nats")]
            Self::Nats(stream) => stream.poll_next_unpin(cx),
        }
    }
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "Responses(tcp)",
            #[cfg(feature = "nats")]
            Self::Nats(_) => "Responses(nats)",
        })
    }
}

/// Sends requests to the live instances of one endpoint.
///
/// A background task follows the endpoint's discovery watch: an instance that is
/// removed gets no new request from the moment its removal arrives. A request whose
/// connection fails before anything was sent (refused, timed out, or closed) is sent
/// once more to another instance, and the failed instance is skipped for
/// [`skip_unreachable_for`](EndpointClientConfig::skip_unreachable_for). A failure
/// after the request was sent is returned as is: the handler may have run.
pub struct EndpointClient {
    endpoint: String,
    tcp: Arc<TcpClient>,
    #[cfg(feature = "nats")]
    nats: Option<Arc<crate::nats_request::NatsRequestClient>>,
    config: EndpointClientConfig,
    targets: watch::Receiver<Arc<[Target]>>,
    next: AtomicUsize,
    /// Instances that failed to connect, until when to avoid them.
    skipped: Mutex<HashMap<u64, Instant>>,
    _follow: DropGuard,
}

impl EndpointClient {
    /// Watches `namespace/component/endpoint` and routes calls over `tcp`. Returns once
    /// the instances present now are known.
    pub async fn new(
        discovery: &Discovery,
        namespace: &str,
        component: &str,
        endpoint: &str,
        tcp: Arc<TcpClient>,
        config: EndpointClientConfig,
    ) -> Result<Self, DiscoveryError> {
        let mut watch = discovery.watch(namespace, component, endpoint).await?;
        let mut table: BTreeMap<u64, Target> = watch
            .current()
            .await
            .into_iter()
            .filter_map(|r| target(&r).map(|t| (t.id, t)))
            .collect();
        let (publish, targets) = watch::channel(snapshot(&table));
        let stop = CancellationToken::new();
        let endpoint_name = format!("{namespace}/{component}/{endpoint}");
        let name = endpoint_name.clone();
        let stopped = stop.clone();
        // Watches end when their store is dropped: keep it for as long as we route.
        let store = Arc::clone(discovery.store());
        tokio::spawn(async move {
            let _store = store;
            loop {
                let event = tokio::select! {
                    _ = stopped.cancelled() => return,
                    event = watch.next() => event,
                };
                match event {
                    // The snapshot's instances come again as `Added`: applying is idempotent.
                    Some(InstanceEvent::Added(record)) => {
                        if let Some(t) = target(&record) {
                            table.insert(t.id, t);
                        }
                    }
                    Some(InstanceEvent::Removed(record)) => {
                        table.remove(&record.instance_id);
                    }
                    None => {
                        tracing::warn!(endpoint = %name, "discovery watch ended; routing to the last known instances");
                        return;
                    }
                }
                publish.send_replace(snapshot(&table));
            }
        });
        Ok(Self {
            endpoint: endpoint_name,
            tcp,
            #[cfg(feature = "nats")]
            nats: None,
            config,
            targets,
            next: AtomicUsize::new(0),
            skipped: Mutex::default(),
            _follow: stop.drop_guard(),
        })
    }

    /// Routes to instances that serve over NATS with `nats` (without it, calling one
    /// is an error saying so).
    #[cfg(feature = "nats")]
    pub fn with_nats(mut self, nats: Arc<crate::nats_request::NatsRequestClient>) -> Self {
        self.nats = Some(nats);
        self
    }

    /// `namespace/component/endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Ids of the instances requests can go to now.
    pub fn instance_ids(&self) -> Vec<u64> {
        self.targets.borrow().iter().map(|t| t.id).collect()
    }

    /// Ids of the instances being skipped after a failed connection.
    pub fn skipped_instance_ids(&self) -> Vec<u64> {
        let now = Instant::now();
        let mut ids: Vec<u64> = lock(&self.skipped)
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Sends `payload` by the configured route; returns the response stream.
    pub async fn call(&self, payload: impl Into<Bytes>) -> Result<Responses, RouteError> {
        self.call_with(self.config.route, payload.into(), HeaderMap::new())
            .await
    }

    /// Sends `payload` with `headers` by `route`.
    pub async fn call_with(
        &self,
        route: Route,
        payload: Bytes,
        headers: HeaderMap,
    ) -> Result<Responses, RouteError> {
        let targets = self.wait_for_targets(route).await?;
        let first = self
            .pick(&targets, route, None)
            .ok_or_else(|| self.no_instances(None))?;
        let err = match self.send(&first, payload.clone(), headers.clone()).await? {
            Ok(responses) => return Ok(responses),
            Err(err) => err,
        };
        // Failures from `TcpClient::call` happen before the request leaves, and the
        // retryable ones say the instance could not be reached: safe to send elsewhere.
        if !err.is_retryable() || matches!(route, Route::Instance(_)) {
            return Err(err.into());
        }
        self.skip(first.id);
        let targets = self.targets.borrow().clone();
        let Some(second) = self.pick(&targets, route, Some(first.id)) else {
            return Err(err.into());
        };
        tracing::warn!(endpoint = %self.endpoint, instance = format_args!("{:x}", first.id), address = %first.address, %err,
            skip_for = ?self.config.skip_unreachable_for, "instance unreachable; retrying on another");
        match self.send(&second, payload, headers).await? {
            Err(err) if err.is_retryable() => {
                self.skip(second.id);
                Err(err.into())
            }
            result => result.map_err(RouteError::from),
        }
    }

    /// The outer error: the target's plane is not available here (not retried
    /// elsewhere: every instance of an endpoint normally serves over the same plane).
    async fn send(
        &self,
        target: &Target,
        payload: Bytes,
        headers: HeaderMap,
    ) -> Result<Result<Responses, RequestError>, RouteError> {
        let request = Request {
            path: target.path.clone(),
            headers,
            payload,
            deadline: None,
        };
        match target.plane {
            Plane::Tcp => Ok(self
                .tcp
                .call(&target.address, request)
                .await
                .map(Responses::Tcp)),
            Plane::Nats => {
                #[cfg(feature = "nats")]
                if let Some(nats) = &self.nats {
                    use crate::planes::RequestPlaneClient;
                    return Ok(nats
                        .request(&target.address, request)
                        .await
                        .map(Responses::Nats));
                }
                Err(RouteError::PlaneUnavailable {
                    endpoint: self.endpoint.clone(),
                    instance_id: target.id,
                    plane: "NATS",
                    hint: if cfg!(feature = "nats") {
                        "connect with DYN_REQUEST_PLANE=nats (and NATS_SERVER)"
                    } else {
                        "this build lacks the `nats` cargo feature (rebuild with --features nats)"
                    },
                })
            }
        }
    }

    /// The current targets, waiting for a suitable one if so configured.
    async fn wait_for_targets(&self, route: Route) -> Result<Arc<[Target]>, RouteError> {
        let suitable = |targets: &Arc<[Target]>| match route {
            Route::Instance(id) => targets.iter().any(|t| t.id == id),
            Route::RoundRobin | Route::Random => !targets.is_empty(),
        };
        let current = self.targets.borrow().clone();
        if suitable(&current) {
            return Ok(current);
        }
        let Some(wait) = self.config.wait_for_instances else {
            return Err(self.missing(route, None));
        };
        let mut targets = self.targets.clone();
        match tokio::time::timeout(wait, targets.wait_for(suitable)).await {
            Ok(Ok(found)) => Ok(found.clone()),
            // Timed out, or the watch task ended (nothing will ever appear).
            _ => Err(self.missing(route, Some(wait))),
        }
    }

    fn missing(&self, route: Route, waited: Option<Duration>) -> RouteError {
        match route {
            Route::Instance(instance_id) => RouteError::UnknownInstance {
                endpoint: self.endpoint.clone(),
                instance_id,
                waited,
            },
            Route::RoundRobin | Route::Random => self.no_instances(waited),
        }
    }

    fn no_instances(&self, waited: Option<Duration>) -> RouteError {
        RouteError::NoInstances {
            endpoint: self.endpoint.clone(),
            waited,
        }
    }

    /// Picks a target other than `exclude`, preferring those not being skipped (if all
    /// are skipped, trying one beats failing).
    fn pick(&self, targets: &[Target], route: Route, exclude: Option<u64>) -> Option<Target> {
        if let Route::Instance(id) = route {
            return targets.iter().find(|t| t.id == id).cloned();
        }
        let now = Instant::now();
        let candidates: Vec<&Target> = {
            let skipped = lock(&self.skipped);
            let eligible = |t: &&Target| Some(t.id) != exclude;
            let fresh: Vec<&Target> = targets
                .iter()
                .filter(eligible)
                .filter(|t| skipped.get(&t.id).is_none_or(|until| *until <= now))
                .collect();
            if fresh.is_empty() {
                targets.iter().filter(eligible).collect()
            } else {
                fresh
            }
        };
        if candidates.is_empty() {
            return None;
        }
        let index = match route {
            Route::Random => fastrand::usize(..candidates.len()),
            _ => self.next.fetch_add(1, Ordering::Relaxed) % candidates.len(),
        };
        Some(candidates[index].clone())
    }

    fn skip(&self, id: u64) {
        let now = Instant::now();
        let mut skipped = lock(&self.skipped);
        // Bounded by the number of instances: expired entries go on every insert.
        skipped.retain(|_, until| *until > now);
        skipped.insert(id, now + self.config.skip_unreachable_for);
    }
}

fn target(record: &InstanceRecord) -> Option<Target> {
    let path = match record.path() {
        Ok(path) => path,
        Err(err) => {
            tracing::warn!(%err, "skipping an instance with an invalid path");
            return None;
        }
    };
    let (plane, address) = match &record.transport {
        Transport::Tcp { address } => (Plane::Tcp, address),
        Transport::Nats { subject } => (Plane::Nats, subject),
    };
    Some(Target {
        id: record.instance_id,
        plane,
        address: address.clone(),
        path: Utf8Bytes::from(&path),
    })
}

fn snapshot(table: &BTreeMap<u64, Target>) -> Arc<[Target]> {
    table.values().cloned().collect()
}
