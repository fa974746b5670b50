//! Routing: requests to one endpoint, sent to the instances discovery reports. A
//! consumer of both the discovery plane (an [`InstanceWatch`](crate::planes::discovery::InstanceWatch)
//! feeds the table of targets) and the request plane (the dispatch
//! [`PlaneClient`] sends over whichever plane each instance's record names); neither
//! knows about routing.

mod error;
mod targets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::DropGuard;

pub use error::RouteError;
use targets::{Target, Targets};

use crate::planes::discovery::{Discovery, DiscoveryError};
use crate::planes::request::{PlaneClient, Request, RequestError, Responses};
use crate::sync::lock;
use crate::vocab::HeaderMap;

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
    client: PlaneClient,
    config: EndpointClientConfig,
    targets: Targets,
    next: AtomicUsize,
    /// Instances that failed to connect, until when to avoid them.
    skipped: Mutex<HashMap<u64, Instant>>,
    _follow: DropGuard,
}

impl EndpointClient {
    /// Watches `namespace/component/endpoint` and routes calls with `client`. Returns
    /// once the instances present now are known.
    pub async fn new(
        discovery: &Discovery,
        namespace: &str,
        component: &str,
        endpoint: &str,
        client: PlaneClient,
        config: EndpointClientConfig,
    ) -> Result<Self, DiscoveryError> {
        let watch = discovery.watch(namespace, component, endpoint).await?;
        let endpoint = format!("{namespace}/{component}/{endpoint}");
        // Watches end when their store is dropped: keep it for as long as we route.
        let store = Arc::clone(discovery.store());
        let (targets, follow) = targets::follow(endpoint.clone(), watch, store).await;
        Ok(Self {
            endpoint,
            client,
            config,
            targets,
            next: AtomicUsize::new(0),
            skipped: Mutex::default(),
            _follow: follow,
        })
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
        // Failures returned before a response stream exists happen before the request
        // leaves, and the retryable ones say the instance could not be reached: safe to
        // send elsewhere.
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
        match self
            .client
            .request_on(target.plane, &target.address, request)
            .await
        {
            Err(RequestError::PlaneUnavailable { plane, hint }) => {
                Err(RouteError::PlaneUnavailable {
                    endpoint: self.endpoint.clone(),
                    instance_id: target.id,
                    plane,
                    hint,
                })
            }
            result => Ok(result),
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
