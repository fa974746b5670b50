//! [`Runtime`]: the three planes of one process, built from the environment (or in code),
//! behind one embedding API.
//!
//! ```no_run
//! use planewire::planes::{Request, unary_handler};
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

use crate::config::{ConfigError, RequestPlaneConfig, RequestPlaneKind};
use crate::planes::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, EndpointClient, EndpointClientConfig,
    RegistrationHandle, Responses, Transport,
};
use crate::planes::events::{
    EventError, EventPlane, EventPlaneConfig, EventPublisher, EventScope, Subscription,
};
use crate::planes::{
    EndpointPath, Handler, RegisterError, Request, RequestError, RequestPlaneServer,
};
use crate::sync::lock;
use crate::tcp::{ServerConfig, TcpClient, TcpServer};

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
    #[error("cannot start the {plane} request plane: {reason}")]
    Serve { plane: &'static str, reason: String },
    /// A server the configuration names did not answer (the message names it and its URL).
    #[error("{message}")]
    Unreachable {
        server: &'static str,
        message: String,
    },
    #[error("the runtime has been shut down")]
    Closed,
}

/// Everything a [`Runtime`] is built from; [`RuntimeConfig::from_env`] reads it all.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// `DYN_REQUEST_PLANE` and the `DYN_TCP_*` settings.
    pub request: RequestPlaneConfig,
    /// Server-side limits of the request plane (not in the environment).
    pub server: ServerConfig,
    /// `DYN_DISCOVERY_BACKEND`, `DYN_FILE_KV`, `ETCD_*`, …
    pub discovery: DiscoveryConfig,
    /// `DYN_EVENT_PLANE`, `NATS_*`, …
    pub events: EventPlaneConfig,
}

impl RuntimeConfig {
    /// Reads every plane's variables; the first malformed one is the error.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var_os(var))
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            request: RequestPlaneConfig::from_lookup(&lookup)?,
            server: ServerConfig::default(),
            discovery: DiscoveryConfig::from_lookup(&lookup)?,
            events: EventPlaneConfig::from_lookup(&lookup)?,
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

    pub fn server(mut self, config: ServerConfig) -> Self {
        self.config.server = config;
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
    /// Also for instances other processes serve over TCP when this one is on NATS.
    tcp_client: Arc<TcpClient>,
    #[cfg(feature = "nats")]
    nats: Option<NatsPlane>,
    /// Started at the first `serve`: a process that only calls needs no listener.
    server: OnceCell<Server>,
    /// What this process serves, by path, until `stop` or shutdown.
    served: Mutex<HashMap<String, RegistrationHandle>>,
    closed: std::sync::atomic::AtomicBool,
}

/// The NATS request plane's connection and client (`DYN_REQUEST_PLANE=nats`).
#[cfg(feature = "nats")]
struct NatsPlane {
    connection: async_nats::Client,
    client: Arc<crate::nats_request::NatsRequestClient>,
}

/// This process's request-plane server.
enum Server {
    Tcp(TcpServer),
    #[cfg(feature = "nats")]
    Nats(crate::nats_request::NatsRequestServer),
}

impl Server {
    async fn register(
        &self,
        path: &EndpointPath,
        handler: impl Handler,
    ) -> Result<(), RegisterError> {
        match self {
            Self::Tcp(server) => server.register(path, handler).await,
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.register(path, handler).await,
        }
    }

    fn unregister(&self, path: &EndpointPath) -> bool {
        match self {
            Self::Tcp(server) => server.unregister(path),
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.unregister(path),
        }
    }

    fn transport(&self, path: &EndpointPath) -> Transport {
        match self {
            Self::Tcp(server) => Transport::tcp(server.address(path)),
            #[cfg(feature = "nats")]
            Self::Nats(server) => Transport::nats(server.address(path)),
        }
    }

    async fn shutdown(&self) {
        match self {
            Self::Tcp(server) => server.shutdown().await,
            #[cfg(feature = "nats")]
            Self::Nats(server) => server.shutdown().await,
        }
    }
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
        let tcp = config.request.tcp.clone().validate()?;
        #[cfg(feature = "nats")]
        let nats = match config.request.plane {
            RequestPlaneKind::Nats => Some(NatsPlane::connect(&config).await?),
            RequestPlaneKind::Tcp => None,
        };
        #[cfg(not(feature = "nats"))]
        if config.request.plane == RequestPlaneKind::Nats {
            return Err(crate::config::feature_not_built(
                crate::config::ENV_REQUEST_PLANE,
                "nats",
                "tcp",
            )
            .into());
        }
        let discovery = Discovery::connect(&config.discovery).await?;
        // One NATS connection per process when both planes use it.
        let events = EventPlane::connect_sharing(
            &config.events,
            &discovery,
            #[cfg(feature = "nats")]
            nats.as_ref().map(|n| n.connection.clone()),
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                tcp_client: Arc::new(TcpClient::new(tcp)?),
                #[cfg(feature = "nats")]
                nats,
                config,
                discovery,
                events,
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
        self.inner.config.request.plane
    }

    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    pub fn events(&self) -> &EventPlane {
        &self.inner.events
    }

    /// Sends `request` straight to `address` (`host:port` on TCP, a subject on NATS) on
    /// this runtime's request plane, bypassing discovery.
    pub async fn request(
        &self,
        address: &str,
        request: Request,
    ) -> Result<Responses, RequestError> {
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.inner.nats {
            use crate::planes::RequestPlaneClient;
            return nats
                .client
                .request(address, request)
                .await
                .map(Responses::Nats);
        }
        self.inner
            .tcp_client
            .call(address, request)
            .await
            .map(Responses::Tcp)
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
        inner.tcp_client.close_connections();
        #[cfg(feature = "nats")]
        if let Some(nats) = &inner.nats {
            // What the handlers answered while draining is on the wire before we return.
            if let Err(err) = nats.connection.flush().await {
                tracing::warn!(%err, "flushing the NATS connection at shutdown");
            }
        }
    }

    fn check_open(&self) -> Result<(), RuntimeError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RuntimeError::Closed);
        }
        Ok(())
    }

    async fn server(&self) -> Result<&Server, RuntimeError> {
        self.inner
            .server
            .get_or_try_init(|| self.start_server())
            .await
    }

    async fn start_server(&self) -> Result<Server, RuntimeError> {
        let config = &self.inner.config;
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.inner.nats {
            let server_config = crate::nats_request::NatsServerConfig {
                max_concurrent_requests: config.server.max_concurrent_requests,
                drain_timeout: config.server.drain_timeout,
            };
            return crate::nats_request::NatsRequestServer::new(
                nats.connection.clone(),
                server_config,
            )
            .await
            .map(Server::Nats)
            .map_err(|err| RuntimeError::Serve {
                plane: "nats",
                reason: err.to_string(),
            });
        }
        let server_config = ServerConfig {
            tcp: config.request.tcp.clone(),
            ..config.server.clone()
        };
        TcpServer::bind(server_config)
            .await
            .map(Server::Tcp)
            .map_err(|err| RuntimeError::Serve {
                plane: "tcp",
                reason: err.to_string(),
            })
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
        let transport = server.transport(&path);
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
            Arc::clone(&runtime.inner.tcp_client),
            config,
        )
        .await?;
        #[cfg(feature = "nats")]
        let client = match &runtime.inner.nats {
            Some(nats) => client.with_nats(Arc::clone(&nats.client)),
            None => client,
        };
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

#[cfg(feature = "nats")]
impl NatsPlane {
    /// Connects with the `NATS_*` settings (shared with the event plane), within
    /// `NATS_CONNECT_TIMEOUT`.
    async fn connect(config: &RuntimeConfig) -> Result<Self, RuntimeError> {
        let connection = crate::nats::connect(&config.events.nats)
            .await
            .map_err(|err| RuntimeError::Unreachable {
                server: "NATS",
                message: format!("DYN_REQUEST_PLANE=nats: {err}"),
            })?;
        let client_config = crate::nats_request::NatsClientConfig {
            request_timeout: config.request.tcp.request_timeout,
        };
        let client = crate::nats_request::NatsRequestClient::new(connection.clone(), client_config)
            .await
            .map_err(|err| RuntimeError::Unreachable {
                server: "NATS",
                message: format!("DYN_REQUEST_PLANE=nats: {err}"),
            })?;
        Ok(Self {
            connection,
            client: Arc::new(client),
        })
    }
}
