//! The instances a router can send to, kept current from a discovery watch: tonic's
//! `discover.rs` shape, where a watch's added/removed changes feed a table the balancer
//! reads and knows nothing of where the changes come from.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::planes::discovery::{InstanceEvent, InstanceRecord, InstanceWatch};
use crate::planes::request::RequestPlaneKind;
use crate::vocab::Utf8Bytes;

/// An instance as the router uses it: its plane resolved and its request path built once.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) id: u64,
    pub(super) plane: RequestPlaneKind,
    /// What the instance's record says reaches it on `plane`.
    pub(super) address: String,
    pub(super) path: Utf8Bytes,
}

/// The current targets, published on every change.
pub(super) type Targets = watch::Receiver<Arc<[Target]>>;

/// Follows `watch` in a background task until the returned guard is dropped (or the
/// watch ends); `keep` is held as long (the watch's store, which ends watches when
/// dropped). Returns once the instances present now are in the table.
pub(super) async fn follow(
    endpoint: String,
    mut watch: InstanceWatch,
    keep: impl Send + 'static,
) -> (Targets, DropGuard) {
    let mut table: BTreeMap<u64, Target> = watch
        .current()
        .await
        .iter()
        .filter_map(target)
        .map(|t| (t.id, t))
        .collect();
    let (publish, targets) = watch::channel(snapshot(&table));
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let _keep = keep;
        loop {
            let event = tokio::select! {
                _ = stopped.cancelled() => return,
                event = watch.next() => event,
            };
            match event {
                // The snapshot's instances come again as `Added`: applying is idempotent.
                Some(InstanceEvent::Added(record)) => match target(&record) {
                    Some(t) => {
                        table.insert(t.id, t);
                    }
                    // A record now unusable replaces a usable one: stop routing to it.
                    None => {
                        table.remove(&record.instance_id);
                    }
                },
                Some(InstanceEvent::Removed(record)) => {
                    table.remove(&record.instance_id);
                }
                None => {
                    tracing::warn!(%endpoint, "discovery watch ended; routing to the last known instances");
                    return;
                }
            }
            publish.send_replace(snapshot(&table));
        }
    });
    (targets, stop.drop_guard())
}

fn target(record: &InstanceRecord) -> Option<Target> {
    let path = match record.path() {
        Ok(path) => path,
        Err(err) => {
            tracing::warn!(%err, "skipping an instance with an invalid path");
            return None;
        }
    };
    let Some(plane) = RequestPlaneKind::from_tag(&record.transport.plane) else {
        tracing::warn!(instance = %path, plane = %record.transport.plane,
            "skipping an instance on a request plane this version does not know");
        return None;
    };
    Some(Target {
        id: record.instance_id,
        plane,
        address: record.transport.address.clone(),
        path: Utf8Bytes::from(&path),
    })
}

fn snapshot(table: &BTreeMap<u64, Target>) -> Arc<[Target]> {
    table.values().cloned().collect()
}
