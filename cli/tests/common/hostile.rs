//! What the hostile-peer test files share: handlers and servers to misbehave against.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::request::{HandlerError, Request, ServerLimits};
use planewire::tcp::{ServerConfig, TcpConfig, TcpServer};
use planewire_testkit::tcp::server_with;
use tokio_util::sync::CancellationToken;

/// A handler streaming `n` items of `size` bytes, all ready at once, counting how many
/// the server has taken from it.
pub fn counted_stream(
    n: usize,
    size: usize,
    taken: Arc<AtomicUsize>,
) -> impl Fn(
    Request,
    CancellationToken,
) -> futures::stream::BoxStream<'static, Result<Bytes, HandlerError>>
+ Send
+ Sync
+ 'static {
    move |_req, _cancel| {
        let taken = Arc::clone(&taken);
        let item = Bytes::from(vec![b'x'; size]);
        futures::stream::iter((0..n).map(move |_| {
            taken.fetch_add(1, Ordering::Relaxed);
            Ok(item.clone())
        }))
        .boxed()
    }
}

/// A server with these TCP settings and this drain timeout.
pub async fn server_with_config(tcp: TcpConfig, drain: Duration) -> TcpServer {
    server_with(ServerConfig {
        tcp,
        limits: ServerLimits {
            drain_timeout: drain,
            ..ServerLimits::default()
        },
    })
    .await
}
