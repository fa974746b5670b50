//! A frontend that uses only the `Runtime` API: it waits for `demo/backend/generate`
//! workers, sends N requests round robin (printing each answer), then prints the next
//! load events it hears from the workers, and shuts down.
//!
//! ```sh
//! cargo run --example frontend -- 6      # 6 requests (default 4)
//! ```
//!
//! Like `examples/worker.rs` it takes its planes from the environment.

use std::time::Duration;

use futures::StreamExt;
use planewire::planes::routing::EndpointClientConfig;
use planewire::runtime::Runtime;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("usage: frontend [REQUESTS], not {n:?}"))?,
        None => 4,
    };
    let runtime = Runtime::from_env().await?;
    let backend = runtime.namespace("demo").component("backend");
    let mut load = backend.subscriber("load").await?;
    let client = backend
        .endpoint("generate")
        .client_with(EndpointClientConfig {
            wait_for_instances: Some(Duration::from_secs(10)),
            ..EndpointClientConfig::default()
        })
        .await?;
    for i in 0..requests {
        let mut responses = client.call(format!("request {i}")).await?;
        while let Some(response) = responses.next().await {
            println!("{}", String::from_utf8_lossy(&response?));
        }
    }
    // Events published before this subscription reached a worker are not replayed:
    // wait for the next few.
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), load.next()).await {
            Ok(Some(event)) => println!(
                "event from {:016x} #{}: {}",
                event.publisher_id,
                event.sequence,
                String::from_utf8_lossy(&event.payload)
            ),
            Ok(None) => break,
            Err(_) => return Err("no load event within 5 s".into()),
        }
    }
    runtime.shutdown().await;
    Ok(())
}
