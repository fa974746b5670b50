//! The discovery plane: workers register their endpoints; clients list, watch and route.
//!
//! Three layers, bottom up:
//! - [`KvStore`]: what a backend provides — leases, put / create-if-absent / get / list /
//!   delete, claim and release (write only a key that is absent or on one's own lease,
//!   delete only one on it), and prefix watches that resume after reconnects. Backends: [`MemoryStore`]
//!   (one process), [`FileStore`] (one host, no server, the default) and `EtcdStore`
//!   (cargo feature `etcd`).
//! - [`Discovery`]: one lease per process, kept alive in the background; every
//!   registration hangs on it, so a process that dies vanishes after the lease TTL. A
//!   lost lease is noticed, re-granted and every registration written again; a record
//!   deleted or damaged under a live lease is rewritten at the next keep-alive. A key
//!   another process holds is never overwritten nor deleted.
//! - [`EndpointClient`]: routes requests for one endpoint to the instances discovery
//!   reports, over the TCP request plane.
//!
//! Records live at `/services/{namespace}/{component}/{endpoint}/{instance_id:x}` as
//! JSON [`InstanceRecord`]s (see [`record`](InstanceRecord) and the README).
//!
//! ```no_run
//! use std::sync::Arc;
//! use planewire::config::TcpConfig;
//! use planewire::planes::discovery::{Discovery, DiscoveryConfig, EndpointClient, Transport};
//! use planewire::planes::{EndpointPath, RequestPlaneServer};
//! use planewire::tcp::TcpClient;
//! # async fn demo(server: planewire::tcp::TcpServer) -> Result<(), Box<dyn std::error::Error>> {
//! let discovery = Discovery::connect(&DiscoveryConfig::from_env()?).await?;
//! // Worker: publish an endpoint the server hosts; dropping `handle` withdraws it.
//! let path = EndpointPath::new("dynamo", "backend", "generate", 0x1f)?;
//! let handle = discovery.register(&path, Transport::tcp(server.address(&path))).await?;
//! // Frontend: route to whatever instances exist.
//! let tcp = Arc::new(TcpClient::new(TcpConfig::default())?);
//! let client =
//!     EndpointClient::new(&discovery, "dynamo", "backend", "generate", tcp, Default::default())
//!         .await?;
//! let responses = client.call("hello").await?;
//! # drop((handle, responses)); Ok(()) }
//! ```

mod config;
mod endpoint_client;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod instances;
mod kv;
mod lease;
mod memory;
mod record;
mod registry;
mod repeats;

pub use config::{
    DiscoveryBackend, DiscoveryConfig, ENV_DISCOVERY_BACKEND, ENV_DISCOVERY_LEASE_TTL, ENV_ETCD_CA,
    ENV_ETCD_CLIENT_CERT, ENV_ETCD_CLIENT_KEY, ENV_ETCD_ENDPOINTS, ENV_ETCD_PASSWORD,
    ENV_ETCD_USERNAME, ENV_FILE_KV, EtcdConfig,
};
pub use endpoint_client::{EndpointClient, EndpointClientConfig, Responses, Route};
pub use error::{BoxError, DiscoveryError, RouteError};
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use file::{FILE_POLL_INTERVAL, FileStore};
pub use instances::{InstanceEvent, InstanceWatch};
pub use kv::{KeyValue, KvEvent, KvStore, KvWatch, LeaseId};
pub use memory::MemoryStore;
pub use record::{InstanceRecord, SERVICES_PREFIX, Transport, endpoint_prefix, instance_key};
pub use registry::{Discovery, KeyRegistration, RegistrationHandle};

/// Changes a memory-backend watch may fall behind by before it is resynchronized with
/// a fresh snapshot instead of queueing more.
pub const WATCH_BUFFER: usize = 1024;
