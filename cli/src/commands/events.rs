//! `planewire events publish|subscribe`: the event plane `DYN_EVENT_PLANE` selects, from
//! a shell.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::events::{Event, EventPlane, EventPlaneKind, EventScope, Subscription};
use serde::Serialize;

use super::CliError;
use super::signals::Signals;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EventsCommand {
    /// Publish events on a topic, then exit.
    ///
    /// Prints `publisher HEX` once the publisher is ready, and on stderr how many events
    /// it published in how long. On zmq, subscribers find a new
    /// publisher through discovery and connect to it; events sent before they have are
    /// not theirs to see, hence the --delay default.
    Publish(PublishArgs),
    /// Print one JSON line per event on a topic until SIGINT or SIGTERM (or --count).
    ///
    /// Each line: `{"publisher_id":"HEX","sequence":N,"topic":"T","payload_len":B,
    /// "published_at_us":…,"age_us":…}`. On exit, one summary line on stderr gives the
    /// received, gap, dropped and duplicate counts.
    Subscribe(SubscribeArgs),
}

#[derive(Debug, clap::Args)]
struct ScopeArgs {
    /// The scope topics belong to: the namespace and component (and optionally endpoint)
    /// in the same form as `serve --endpoint`.
    #[arg(long, value_name = "NS/COMPONENT[/ENDPOINT]")]
    endpoint: String,
    #[arg(long, value_name = "T")]
    topic: String,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Number of events.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Payload size in bytes (each payload is that many `x`).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64,
        conflicts_with = "data"
    )]
    size: usize,
    /// Payload text, instead of --size.
    #[arg(long, value_name = "TEXT")]
    data: Option<String>,
    /// Seconds to wait between events.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    interval: f64,
    /// Seconds to wait before the first event [default: 1 on zmq, so that subscribers
    /// can discover and connect; 0 otherwise].
    #[arg(long, value_name = "SECS")]
    delay: Option<f64>,
    /// Seconds to stay up after the last event, so queued events reach the wire.
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    linger: f64,
}

#[derive(Debug, clap::Args)]
struct SubscribeArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Exit after N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

pub async fn run(args: EventsArgs) -> Result<(), CliError> {
    let runtime = super::runtime().await?;
    let plane = runtime.events();
    let result = match args.command {
        EventsCommand::Publish(args) => publish(plane, args).await,
        EventsCommand::Subscribe(args) => subscribe(plane, args).await,
    };
    runtime.shutdown().await;
    result
}

async fn publish(plane: &EventPlane, args: PublishArgs) -> Result<(), CliError> {
    let scope = EventScope::parse(&args.scope.endpoint)?;
    let interval = seconds("--interval", args.interval)?;
    let default_delay = if plane.kind() == EventPlaneKind::Zmq {
        1.0
    } else {
        0.0
    };
    let delay = seconds("--delay", args.delay.unwrap_or(default_delay))?;
    let linger = seconds("--linger", args.linger)?;
    let payload = match args.data {
        Some(text) => Bytes::from(text),
        None => Bytes::from(vec![b'x'; args.size]),
    };
    let publisher = plane.publisher(scope).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "publisher {:016x}", publisher.id())?;
    stdout.flush()?;
    drop(stdout);
    tokio::time::sleep(delay).await;
    // Each event has its slot on a fixed schedule, so the rate holds however long a
    // publish takes; at interval 0 nothing sleeps (a zero sleep still waits for the
    // timer's next millisecond tick).
    let start = tokio::time::Instant::now();
    for i in 0..args.count {
        if interval.is_zero() {
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
        } else if i > 0 {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        }
        publisher
            .publish(&args.scope.topic, payload.clone())
            .await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "published {} events in {elapsed:.3} s ({:.0} events/s)",
        args.count,
        args.count as f64 / elapsed.max(f64::MIN_POSITIVE)
    );
    tokio::time::sleep(linger).await;
    Ok(())
}

/// At full speed, events between yields: the loop never waits, so it lets the runtime's
/// other tasks (the transport's writers) run this often.
const YIELD_EVERY: u64 = 256;

fn seconds(flag: &str, value: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{flag} {value}: expected a number of seconds, 0 or more").into())
}

async fn subscribe(plane: &EventPlane, args: SubscribeArgs) -> Result<(), CliError> {
    let scope = EventScope::parse(&args.scope.endpoint)?;
    let mut subscription = plane.subscriber(scope).subscribe(&args.scope.topic).await?;
    let mut signals = Signals::install()?;
    let mut seen = 0u64;
    let result = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        tokio::select! {
            signal = signals.recv() => {
                tracing::info!(signal = signal?, "stopping");
                break Ok(());
            }
            event = subscription.next() => match event {
                Some(event) => {
                    print_event(&event)?;
                    seen += 1;
                }
                None => break Err("the event plane closed the subscription".into()),
            },
        }
    };
    print_stats(&subscription);
    result
}

#[derive(Serialize)]
struct EventLine<'a> {
    publisher_id: String,
    sequence: u64,
    topic: &'a str,
    payload_len: usize,
    published_at_us: u128,
    /// Publish to print, across hosts only as good as their clocks' agreement.
    age_us: u128,
}

fn print_event(event: &Event) -> Result<(), CliError> {
    let micros = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
    let line = EventLine {
        publisher_id: format!("{:016x}", event.publisher_id),
        sequence: event.sequence,
        topic: event.topic.as_str(),
        payload_len: event.payload.len(),
        published_at_us: micros(event.published_at),
        age_us: SystemTime::now()
            .duration_since(event.published_at)
            .unwrap_or_default()
            .as_micros(),
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &line)?;
    writeln!(stdout)?;
    stdout.flush()?;
    Ok(())
}

fn print_stats(subscription: &Subscription) {
    let stats = subscription.stats();
    eprintln!(
        "received {} events, {} missing (gaps), {} dropped (queue full), {} duplicates, \
         {} malformed messages skipped",
        stats.received, stats.gaps, stats.dropped, stats.duplicates, stats.malformed
    );
}
