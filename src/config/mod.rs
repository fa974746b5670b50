//! Configuration: plain structs with documented defaults, each read from the environment
//! by one explicit constructor (`from_env()`, or `from_lookup()` with any lookup) and
//! checked by `validate()` when set in code. Sizes are plain byte counts, durations plain
//! (possibly fractional) seconds.
//!
//! [`Env`] is the toolkit every reader uses. Each plane owns its settings:
//!
//! | settings | struct | variables |
//! |---|---|---|
//! | which request plane, the neutral timeout | [`RequestPlaneConfig`](crate::planes::request::RequestPlaneConfig) | `DYN_REQUEST_PLANE`, `DYN_REQUEST_TIMEOUT` |
//! | TCP request plane | [`TcpConfig`](crate::tcp::TcpConfig) | `DYN_TCP_*` |
//! | NATS request plane | [`NatsRequestConfig`](crate::planes::request::nats::NatsRequestConfig) | `DYN_REQUEST_TIMEOUT` |
//! | HTTP/2 request plane | [`HttpConfig`](crate::planes::request::http::HttpConfig) | `DYN_HTTP_RPC_*`, `DYN_HTTP2_*` |
//! | the NATS connection, shared by the NATS request and event planes | [`NatsConfig`](crate::nats::NatsConfig) | `NATS_*` |
//! | discovery | [`DiscoveryConfig`](crate::planes::discovery::DiscoveryConfig) | `DYN_DISCOVERY_*`, `DYN_FILE_KV`, `ETCD_*` |
//! | event plane | [`EventPlaneConfig`](crate::planes::events::EventPlaneConfig) | `DYN_EVENT_*` |
//!
//! [`RuntimeConfig`](crate::runtime::RuntimeConfig) reads them all at once.

mod env;

pub use env::{ConfigError, Env};
pub(crate) use env::{require_nonzero, require_positive};

#[cfg(test)]
pub(crate) use env::tests::lookup as test_lookup;
