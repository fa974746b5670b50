use std::path::PathBuf;
use std::time::Duration;

use super::kv::LeaseId;
use crate::config::ConfigError;
use crate::vocab::PathError;

/// A backend's own error, boxed so that enabling a backend feature never changes the
/// shape of [`DiscoveryError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a discovery operation failed. [`is_unavailable`](Self::is_unavailable) tells
/// failures that may pass by themselves (backend down or slow) from the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error(
        "{backend} at {target} is unreachable: {source}; check that it is running and that {setting} points at it"
    )]
    Unavailable {
        backend: &'static str,
        target: String,
        /// The setting that names the target, e.g. `ETCD_ENDPOINTS`.
        setting: &'static str,
        #[source]
        source: BoxError,
    },
    #[error(
        "{backend} at {target} did not answer within {timeout:?}; check that it is running and that {setting} points at it"
    )]
    Timeout {
        backend: &'static str,
        target: String,
        setting: &'static str,
        timeout: Duration,
    },
    #[error(
        "etcd auth failed for user {user:?} at {target}: {source}; check ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD"
    )]
    Auth {
        user: String,
        target: String,
        #[source]
        source: BoxError,
    },
    #[error("lease {lease} has expired or was revoked")]
    LeaseExpired { lease: LeaseId },
    #[error("{key} is already registered by this process; drop its RegistrationHandle first")]
    AlreadyRegistered { key: String },
    /// Another lease holds the key: a process writes a key only if it is absent or on
    /// its own lease (see [`KvStore::claim`](super::KvStore::claim)).
    #[error("{key} is already taken, {}; it is left as it is", held_by(*.holder))]
    KeyHeld {
        key: String,
        /// The lease the key is on; `None` for a key written with no lease.
        holder: Option<LeaseId>,
    },
    /// [`KeyHeld`](Self::KeyHeld) for an instance record: another process serves this
    /// instance id.
    #[error(
        "instance {instance_id:x} of {endpoint} is already registered by another process ({}{}); stop that process or choose another instance id",
        held_by(*.holder),
        address.as_ref().map_or_else(String::new, |a| format!(", serving at {a}"))
    )]
    InstanceHeld {
        /// `namespace/component/endpoint`.
        endpoint: String,
        instance_id: u64,
        holder: Option<LeaseId>,
        /// Where the holder's record says it serves, if the record is readable.
        address: Option<String>,
    },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("invalid instance record at {key}: {reason}")]
    InvalidRecord { key: String, reason: String },
    #[error(transparent)]
    InvalidEndpoint(#[from] PathError),
    #[error("could not {action} {}: {source}; check {setting} and the file's permissions", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        /// The setting that names the path, e.g. `DYN_FILE_KV`.
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{backend} {operation} failed: {source}")]
    Backend {
        backend: &'static str,
        operation: &'static str,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("discovery has been shut down")]
    Closed,
}

impl DiscoveryError {
    /// Whether the backend could not be reached or did not answer in time: the same
    /// operation may succeed later, and registrations are kept and retried meanwhile.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

fn held_by(holder: Option<LeaseId>) -> String {
    match holder {
        Some(lease) => format!("held by lease {lease}"),
        None => "written with no lease".to_owned(),
    }
}
