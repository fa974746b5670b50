//! A worker that uses only the `Runtime` API: it serves `demo/backend/generate` (each
//! request answered with `worker {process id}: {payload}`) and publishes a `load` event every
//! 100 ms, until Ctrl-C or SIGTERM, then shuts down in order (deregister, drain, close).
//!
//! The planes come from the environment, so the same program runs on NATS and etcd with
//! `DYN_REQUEST_PLANE=nats DYN_DISCOVERY_BACKEND=etcd DYN_EVENT_PLANE=nats` (in a build with
//! `--features nats,etcd`). Its first stdout line is `serving INSTANCE at ADDRESS`.
//!
//! ```sh
//! cargo run --example worker
//! ```

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use planewire::planes::request::{Request, unary_handler};
use planewire::runtime::Runtime;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::from_env().await?;
    let backend = runtime.namespace("demo").component("backend");
    let generate = backend.endpoint("generate");
    let pid = std::process::id();
    let served = generate
        .serve(unary_handler(move |req: Request| async move {
            let text = String::from_utf8_lossy(&req.payload);
            Ok(Bytes::from(format!("worker {pid}: {text}")))
        }))
        .await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "serving {:x} at {}",
        served.instance_id(),
        served.address()
    )?;
    stdout.flush()?;
    drop(stdout);

    let load = backend.publisher("load").await?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminated() => break,
            _ = tick.tick() => {
                beat += 1;
                load.publish(format!("{:x} beat {beat}", served.instance_id())).await?;
            }
        }
    }
    runtime.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}
