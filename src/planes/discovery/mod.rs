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
//!
//! Routing requests to the instances discovery reports is not part of discovery: it is
//! [`crate::planes::routing`], a consumer of [`InstanceWatch`].
//!
//! Records live at `/services/{namespace}/{component}/{endpoint}/{instance_id:x}` as
//! JSON [`InstanceRecord`]s (see [`record`](InstanceRecord) and the README).
//!
//! ```no_run
//! use planewire::planes::discovery::{Discovery, DiscoveryConfig, Transport};
//! use planewire::planes::request::{EndpointPath, RequestPlaneServer};
//! # async fn demo(server: planewire::tcp::TcpServer) -> Result<(), Box<dyn std::error::Error>> {
//! let discovery = Discovery::connect(&DiscoveryConfig::from_env()?).await?;
//! // Worker: publish an endpoint the server hosts; dropping `handle` withdraws it.
//! let path = EndpointPath::new("dynamo", "backend", "generate", 0x1f)?;
//! let handle = discovery.register(&path, Transport::new("tcp", server.address(&path))).await?;
//! // Anyone: the instances of an endpoint, now and as they come and go.
//! let mut watch = discovery.watch("dynamo", "backend", "generate").await?;
//! let instances = watch.current().await;
//! # drop((handle, instances)); Ok(()) }
//! ```

mod config;
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
pub use error::{BoxError, DiscoveryError};
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
