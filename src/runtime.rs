//! [`Runtime`]: the three planes of one process, built from the environment (or in code),
//! behind one embedding API.
//!
//! ```no_run
//! use planewire::planes::request::{Request, unary_handler};
//! use planewire::runtime::Runtime;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::from_env().await?; // DYN_REQUEST_PLANE, DYN_DISCOVERY_BACKEND, DYN_EVENT_PLANE
//! let generate = runtime.namespace("dynamo").component("backend").endpoint("generate");
//! generate.serve(unary_handler(|req: Request| async move { Ok(req.payload) })).await?;
//! let client = generate.client().await?;
//! let reply = client.call("hi").await?;
//! # drop(reply);
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::config::{ConfigError, Env};
use crate::nats::{NatsConfig, NatsLink};
use crate::planes::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, RegistrationHandle, Transport,
};
use crate::planes::events::{
    EventError, EventPlane, EventPlaneConfig, EventPublisher, EventScope, Subscription,
};
use crate::planes::request::{
    EndpointPath, Handler, PathError, PlaneClient, PlaneServer, RegisterError, Request,
    RequestError, RequestPlaneClient, RequestPlaneConfig, RequestPlaneKind, RequestPlaneServer,
    Responses, ServerLimits, StartError,
};
use crate::planes::routing::{EndpointClient, EndpointClientConfig};
use crate::sync::lock;

/// Why building the runtime, or one of its operations, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Events(#[from] EventError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The request plane's server or client could not start; the source says why.
    #[error(transparent)]
    RequestPlane(#[from] StartError),
    #[error("the runtime has been shut down")]
    Closed,
}

impl From<PathError> for RuntimeError {
    fn from(err: PathError) -> Self {
        Self::Register(err.into())
    }
}

/// Everything a [`Runtime`] is built from; [`RuntimeConfig::from_env`] reads it all.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// `DYN_REQUEST_PLANE`, `DYN_REQUEST_TIMEOUT` and each plane's settings.
    pub request: RequestPlaneConfig,
    /// Limits of this process's request-plane server (not in the environment).
    pub server: ServerLimits,
    /// `DYN_DISCOVERY_BACKEND`, `DYN_FILE_KV`, `ETCD_*`, …
    pub discovery: DiscoveryConfig,
    /// `DYN_EVENT_PLANE`, …
    pub events: EventPlaneConfig,
    /// `NATS_*`: one connection, shared by the NATS request and event planes.
    pub nats: NatsConfig,
}

impl RuntimeConfig {
    /// Reads every plane's variables; the first malformed one is the error.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            request: RequestPlaneConfig::read(env)?,
            server: ServerLimits::default(),
            discovery: DiscoveryConfig::read(env)?,
            events: EventPlaneConfig::read(env)?,
            nats: NatsConfig::read(env)?,
        })
    }
}

/// Sets a [`Runtime`]'s planes in code; anything not set takes its default (which needs
/// no server: TCP, file discovery, zmq or inproc events).
#[derive(Debug, Clone, Default)]
pub struct RuntimeBuilder {
    config: RuntimeConfig,
}

impl RuntimeBuilder {
    pub fn request_plane(mut self, config: RequestPlaneConfig) -> Self {
        self.config.request = config;
        self
    }

    pub fn server(mut self, limits: ServerLimits) -> Self {
        self.config.server = limits;
        self
    }

    pub fn discovery(mut self, config: DiscoveryConfig) -> Self {
        self.config.discovery = config;
        self
    }

    pub fn events(mut self, config: EventPlaneConfig) -> Self {
        self.config.events = config;
        self
    }

    pub fn nats(mut self, config: NatsConfig) -> Self {
        self.config.nats = config;
        self
    }

    /// Connects what needs connecting (etcd, NATS), each within its connect timeout.
    pub async fn build(self) -> Result<Runtime, RuntimeError> {
        Runtime::start(self.config).await
    }
}

/// The planes of one process. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    discovery: Discovery,
    events: EventPlane,
    nats: NatsLink,
    /// Reaches instances on every plane this build has (see [`PlaneClient`]).
    client: PlaneClient,
    /// Started at the first `serve`: a process that only calls needs no listener.
    server: OnceCell<PlaneServer>,
    /// What this process serves, by path, until `stop` or shutdown.
    served: Mutex<HashMap<String, RegistrationHandle>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Runtime {
    /// The planes `DYN_REQUEST_PLANE`, `DYN_DISCOVERY_BACKEND` and `DYN_EVENT_PLANE` name.
    pub async fn from_env() -> Result<Self, RuntimeError> {
        Self::start(RuntimeConfig::from_env()?).await
    }

    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The planes `config` describes.
    pub async fn with_config(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        Self::start(config).await
    }

    async fn start(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let nats = NatsLink::new(config.nats.clone().validate()?);
        // The request plane first: on NATS it makes the connection the events then share.
        let client = PlaneClient::connect(&config.request, &nats).await?;
        let discovery = Discovery::connect(&config.discovery).await?;
        let events = EventPlane::connect(&config.events, &discovery, &nats).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                discovery,
                events,
                nats,
                client,
                server: OnceCell::new(),
                served: Mutex::default(),
                closed: Default::default(),
            }),
        })
    }

    pub fn namespace(&self, name: impl Into<String>) -> Namespace {
        Namespace {
            runtime: self.clone(),
            name: name.into(),
        }
    }

    pub fn request_plane(&self) -> RequestPlaneKind {
        self.inner.client.plane()
    }

    /// The client routed calls use, for any plane.
    pub fn client(&self) -> &PlaneClient {
        &self.inner.client
    }

    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    pub fn events(&self) -> &EventPlane {
        &self.inner.events
    }

    /// Sends `request` straight to `address` (what a discovery record of this runtime's
    /// request plane would carry) on that plane, bypassing discovery.
    pub async fn request(
        &self,
        address: &str,
        request: Request,
    ) -> Result<Responses, RequestError> {
        self.inner.client.request(address, request).await
    }

    /// Deregisters everything this process registered (endpoints, event publishers),
    /// drains the requests in flight, then closes the client connections. Later calls to
    /// `serve` fail with [`RuntimeError::Closed`].
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // First out of discovery, so no new request is routed here while draining. The
        // lease revoke removes every record at once; the handles dropped after it find
        // discovery closed and delete nothing more.
        inner.discovery.shutdown().await;
        lock(&inner.served).clear();
        if let Some(server) = inner.server.get() {
            server.shutdown().await;
        }
        inner.client.close_connections();
        // What the handlers answered while draining is on the wire before we return.
        inner.nats.flush().await;
    }

    fn check_open(&self) -> Result<(), RuntimeError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RuntimeError::Closed);
        }
        Ok(())
    }

    async fn server(&self) -> Result<&PlaneServer, RuntimeError> {
        let inner = &self.inner;
        let start = || PlaneServer::start(&inner.config.request, &inner.config.server, &inner.nats);
        Ok(inner.server.get_or_try_init(start).await?)
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("request_plane", &self.request_plane())
            .field("discovery", &self.inner.discovery)
            .field("events", &self.inner.events)
            .finish()
    }
}

/// `runtime.namespace(…)`.
#[derive(Debug, Clone)]
pub struct Namespace {
    runtime: Runtime,
    name: String,
}

impl Namespace {
    pub fn component(&self, name: impl Into<String>) -> Component {
        Component {
            runtime: self.runtime.clone(),
            namespace: self.name.clone(),
            name: name.into(),
        }
    }
}

/// `runtime.namespace(…).component(…)`: a scope for events, and a parent of endpoints.
#[derive(Debug, Clone)]
pub struct Component {
    runtime: Runtime,
    namespace: String,
    name: String,
}

impl Component {
    pub fn endpoint(&self, name: impl Into<String>) -> Endpoint {
        Endpoint {
            component: self.clone(),
            name: name.into(),
        }
    }

    fn scope(&self) -> Result<EventScope, EventError> {
        EventScope::new(&self.namespace, &self.name)
    }

    /// Publishes on `topic` in this component's scope.
    pub async fn publisher(
        &self,
        topic: impl Into<String>,
    ) -> Result<TopicPublisher, RuntimeError> {
        topic_publisher(&self.runtime, self.scope()?, topic.into()).await
    }

    /// The events published on `topic` in this component's scope from now on.
    pub async fn subscriber(&self, topic: &str) -> Result<Subscription, RuntimeError> {
        let subscriber = self.runtime.events().subscriber(self.scope()?);
        Ok(subscriber.subscribe(topic).await?)
    }
}

/// `runtime.namespace(…).component(…).endpoint(…)`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    component: Component,
    name: String,
}

impl Endpoint {
    fn runtime(&self) -> &Runtime {
        &self.component.runtime
    }

    /// Serves this endpoint with `handler` on the runtime's request plane and registers
    /// it in discovery under a fresh instance id. It stays served until
    /// [`ServedEndpoint::stop`] or [`Runtime::shutdown`].
    pub async fn serve(&self, handler: impl Handler) -> Result<ServedEndpoint, RuntimeError> {
        self.serve_instance(fastrand::u64(..), handler).await
    }

    /// Like [`serve`](Self::serve), as instance `instance_id`.
    pub async fn serve_instance(
        &self,
        instance_id: u64,
        handler: impl Handler,
    ) -> Result<ServedEndpoint, RuntimeError> {
        let runtime = self.runtime();
        runtime.check_open()?;
        let path = EndpointPath::new(
            &self.component.namespace,
            &self.component.name,
            &self.name,
            instance_id,
        )?;
        let server = runtime.server().await?;
        server.register(&path, handler).await?;
        let transport = Transport::new(server.plane().as_str(), server.address(&path));
        let registration = match runtime.discovery().register(&path, transport).await {
            Ok(registration) => registration,
            Err(err) => {
                server.unregister(&path);
                return Err(err.into());
            }
        };
        let served = ServedEndpoint {
            runtime: runtime.clone(),
            path: path.clone(),
            address: registration.record().transport.address().to_owned(),
            key: registration.key().to_owned(),
        };
        lock(&runtime.inner.served).insert(path.to_string(), registration);
        Ok(served)
    }

    /// A client of every instance of this endpoint that discovery reports, as they come
    /// and go (round robin; see [`EndpointClient`]).
    pub async fn client(&self) -> Result<EndpointClient, RuntimeError> {
        self.client_with(EndpointClientConfig::default()).await
    }

    pub async fn client_with(
        &self,
        config: EndpointClientConfig,
    ) -> Result<EndpointClient, RuntimeError> {
        let runtime = self.runtime();
        let client = EndpointClient::new(
            runtime.discovery(),
            &self.component.namespace,
            &self.component.name,
            &self.name,
            runtime.inner.client.clone(),
            config,
        )
        .await?;
        Ok(client)
    }

    fn scope(&self) -> Result<EventScope, EventError> {
        self.component.scope()?.with_endpoint(&self.name)
    }

    /// Publishes on `topic` in this endpoint's scope.
    pub async fn publisher(
        &self,
        topic: impl Into<String>,
    ) -> Result<TopicPublisher, RuntimeError> {
        topic_publisher(self.runtime(), self.scope()?, topic.into()).await
    }

    /// The events published on `topic` in this endpoint's scope from now on.
    pub async fn subscriber(&self, topic: &str) -> Result<Subscription, RuntimeError> {
        let subscriber = self.runtime().events().subscriber(self.scope()?);
        Ok(subscriber.subscribe(topic).await?)
    }
}

async fn topic_publisher(
    runtime: &Runtime,
    scope: EventScope,
    topic: String,
) -> Result<TopicPublisher, RuntimeError> {
    Ok(TopicPublisher {
        publisher: runtime.events().publisher(scope).await?,
        topic,
    })
}

/// An [`EventPublisher`] bound to one topic.
#[derive(Debug, Clone)]
pub struct TopicPublisher {
    publisher: EventPublisher,
    topic: String,
}

impl TopicPublisher {
    pub async fn publish(&self, payload: impl Into<Bytes>) -> Result<(), EventError> {
        self.publisher.publish(&self.topic, payload.into()).await
    }

    pub fn publisher(&self) -> &EventPublisher {
        &self.publisher
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// An endpoint this process serves.
#[derive(Debug)]
pub struct ServedEndpoint {
    runtime: Runtime,
    path: EndpointPath,
    address: String,
    key: String,
}

impl ServedEndpoint {
    /// The path with this instance's id.
    pub fn path(&self) -> &EndpointPath {
        &self.path
    }

    pub fn instance_id(&self) -> u64 {
        self.path.instance_id()
    }

    /// Where clients reach it, as its discovery record says.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its discovery key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Withdraws it from discovery, then stops routing to it (requests already running
    /// finish).
    pub async fn stop(self) -> Result<(), RuntimeError> {
        let inner = &self.runtime.inner;
        let registration = lock(&inner.served).remove(&self.path.to_string());
        if let Some(registration) = registration {
            registration.deregister().await?;
        }
        if let Some(server) = inner.server.get() {
            server.unregister(&self.path);
        }
        Ok(())
    }
}
