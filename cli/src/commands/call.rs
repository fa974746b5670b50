//! `planewire call`: send requests to one endpoint and print what came back.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use planewire::planes::request::{Request, Responses};
use planewire::planes::routing::{EndpointClient, EndpointClientConfig, Route, RouteError};
use planewire::runtime::Runtime;
use planewire::vocab::Utf8Bytes;
use planewire_cli::bench::{Recorder, SharedHistogram};
use tokio::task::JoinSet;

use super::{CliError, EndpointArgs};

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Call the server at this address (as `planewire serve` prints it) instead of the
    /// instances found through discovery.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Call only this instance, in hexadecimal as `planewire serve` prints it [default:
    /// round robin over every instance discovery knows].
    #[arg(long, value_name = "HEX", value_parser = super::parse_instance)]
    instance: Option<u64>,
    /// With no instance registered (or not the --instance asked for), wait up to SECS for
    /// one to appear instead of failing at once.
    #[arg(long, value_name = "SECS", value_parser = parse_wait, conflicts_with = "addr")]
    wait: Option<Duration>,
    /// Send TEXT and print every response payload on its own line (lossy UTF-8).
    #[arg(long, value_name = "TEXT", conflicts_with = "size")]
    data: Option<String>,
    /// Send payloads of BYTES bytes and print a latency summary [default: 64].
    #[arg(long, value_name = "BYTES")]
    size: Option<usize>,
    /// Requests to send [default: 1 with --data, 1000 otherwise].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "expected seconds, such as 5 or 0.5".to_owned())
}

/// What one worker saw besides latencies, which go to the run's one histogram.
struct Tally {
    errors: u64,
    first_error: Option<RouteError>,
}

/// Latencies in nanoseconds, up to an hour.
const MAX_LATENCY_NANOS: u64 = 3_600_000_000_000;

/// Sends the requests. With `--data` the first error ends the command; otherwise every
/// request is sent, failures are counted, and any failure makes the exit status non-zero.
/// Finding no instance ends the command either way: every other request would fail too.
pub async fn run(args: CallArgs) -> Result<(), CliError> {
    let destination = Destination::new(&args).await?;
    let print = args.data.is_some();
    let payload = match args.data {
        Some(text) => Bytes::from(text),
        None => Bytes::from(vec![b'x'; args.size.unwrap_or(64)]),
    };
    let count = args.count.unwrap_or(if print { 1 } else { 1000 });
    let job = Arc::new(Job {
        destination,
        payload,
        remaining: AtomicU64::new(count),
        print,
    });
    let start = Instant::now();
    let latencies = SharedHistogram::new(MAX_LATENCY_NANOS);
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.min(count) {
        workers.spawn(Arc::clone(&job).work(latencies.recorder()));
    }
    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        total.merge(joined??);
    }
    if !print {
        let summary = summary(
            &latencies.snapshot(),
            &total,
            count,
            args.concurrency,
            job.payload.len(),
            start.elapsed(),
        );
        std::io::stdout().lock().write_all(summary.as_bytes())?;
    }
    match total.first_error {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {count} requests failed; first: {first}",
            total.errors
        )
        .into()),
    }
}

/// Where the requests go.
enum Destination {
    /// `--addr`: one server, named by hand.
    Address {
        runtime: Runtime,
        address: String,
        path: Utf8Bytes,
    },
    /// The instances discovery reports, followed as they come and go.
    Discovered(EndpointClient),
}

impl Destination {
    async fn new(args: &CallArgs) -> Result<Self, CliError> {
        let runtime = super::runtime().await?;
        if let Some(address) = &args.addr {
            // Without --instance the path carries no instance id, and the server routes it
            // to the one instance of the endpoint it hosts.
            let path = match args.instance {
                Some(instance) => Utf8Bytes::from(&args.endpoint.path(instance)?),
                None => Utf8Bytes::from(args.endpoint.path(0)?.without_instance()),
            };
            return Ok(Self::Address {
                runtime,
                address: address.clone(),
                path,
            });
        }
        // Instance 0 only to check and split the names; the route picks the instances.
        let names = args.endpoint.path(0)?;
        let config = EndpointClientConfig {
            route: args.instance.map_or(Route::RoundRobin, Route::Instance),
            wait_for_instances: args.wait,
            ..EndpointClientConfig::default()
        };
        let routed = runtime
            .namespace(names.namespace())
            .component(names.component())
            .endpoint(names.endpoint())
            .client_with(config)
            .await?;
        Ok(Self::Discovered(routed))
    }

    async fn send(&self, payload: Bytes) -> Result<Responses, RouteError> {
        match self {
            Self::Address {
                runtime,
                address,
                path,
            } => Ok(runtime
                .request(address, Request::new(path.clone(), payload))
                .await?),
            Self::Discovered(routed) => routed.call(payload).await,
        }
    }
}

struct Job {
    destination: Destination,
    payload: Bytes,
    remaining: AtomicU64,
    print: bool,
}

impl Job {
    async fn work(self: Arc<Self>, mut latencies: Recorder) -> Result<Tally, CliError> {
        let mut tally = Tally::new();
        while self.take_one() {
            let start = Instant::now();
            match self.call_once().await {
                Ok(responses) => {
                    let nanos = start.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
                    latencies.record(nanos);
                    if self.print {
                        print_lines(&responses)?;
                    }
                }
                Err(err) if self.print || finds_nothing(&err) => return Err(err.into()),
                Err(err) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(err);
                }
            }
        }
        Ok(tally)
    }

    fn take_one(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn call_once(&self) -> Result<Vec<Bytes>, RouteError> {
        let mut stream = self.destination.send(self.payload.clone()).await?;
        let mut responses = Vec::new();
        while let Some(response) = stream.next().await {
            responses.push(response?);
        }
        Ok(responses)
    }
}

/// Whether discovery had no instance to send to (after `--wait`, if given).
fn finds_nothing(err: &RouteError) -> bool {
    matches!(
        err,
        RouteError::NoInstances { .. } | RouteError::UnknownInstance { .. }
    )
}

/// One request's responses together, even when several requests are in flight.
fn print_lines(responses: &[Bytes]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for response in responses {
        writeln!(stdout, "{}", String::from_utf8_lossy(response))?;
    }
    stdout.flush()
}

impl Tally {
    fn new() -> Self {
        Self {
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn summary(
    latencies: &Histogram<u64>,
    total: &Tally,
    count: u64,
    concurrency: u64,
    payload: usize,
    elapsed: Duration,
) -> String {
    let h = latencies;
    let latency = if h.is_empty() {
        "n/a (no request succeeded)".to_owned()
    } else {
        let us = |nanos: u64| nanos as f64 / 1e3;
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.90)),
            us(h.value_at_quantile(0.99)),
            us(h.max()),
        )
    };
    format!(
        "requests     {count} ({} errors), concurrency {concurrency}, {payload}-byte payload\n\
         latency µs   {latency}\n\
         throughput   {:.0} req/s ({:.3} s)\n",
        total.errors,
        h.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_in_seconds() {
        assert_eq!(parse_wait("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_wait("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["-1", "soon", "NaN", ""] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
    }
}
