//! [`RouteError`]: why a routed call failed.

use std::time::Duration;

use crate::planes::request::RequestError;

/// Why an [`EndpointClient`](super::EndpointClient) call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("no instances for {endpoint}{}; start a worker that registers it, or check the namespace and DYN_DISCOVERY_BACKEND", waited_for(*.waited))]
    NoInstances {
        endpoint: String,
        /// How long the call waited for one to appear, if it was configured to.
        waited: Option<Duration>,
    },
    #[error("instance {instance_id:x} of {endpoint} is not registered{}", waited_for(*.waited))]
    UnknownInstance {
        endpoint: String,
        instance_id: u64,
        waited: Option<Duration>,
    },
    #[error(
        "instance {instance_id:x} of {endpoint} serves over {plane}, which this client cannot reach: {hint}"
    )]
    PlaneUnavailable {
        endpoint: String,
        instance_id: u64,
        /// The `type` of the instance's discovery record.
        plane: String,
        hint: &'static str,
    },
    #[error(transparent)]
    Request(#[from] RequestError),
}

fn waited_for(waited: Option<Duration>) -> String {
    waited.map_or_else(String::new, |w| format!(" (waited {w:?})"))
}
