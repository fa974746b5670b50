//! `planewire discovery list|watch`: what discovery holds, one JSON object per line.

use std::io::Write;

use futures::StreamExt;
use planewire::planes::discovery::{InstanceEvent, InstanceRecord, SERVICES_PREFIX};
use serde::Serialize;

use super::CliError;
use super::signals::Signals;

#[derive(Debug, clap::Args)]
pub struct DiscoveryArgs {
    #[command(subcommand)]
    command: DiscoveryCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DiscoveryCommand {
    /// Print the records under PREFIX, one JSON object per line: instance records as
    /// they are stored, every other JSON record as `{"key":…,"value":…}`.
    List(PrefixArg),
    /// Print the instances under PREFIX, then each change, until SIGINT or SIGTERM.
    ///
    /// One `{"event":"added"|"removed","record":{…}}` per line, flushed as it happens;
    /// the instances present at the start come first, as `added`.
    Watch(PrefixArg),
}

#[derive(Debug, clap::Args)]
struct PrefixArg {
    /// Key prefix, such as /services/dynamo/, /services/dynamo/backend/generate/, or /
    /// for everything (the ZMQ event plane's publishers are under /event_channels/).
    #[arg(default_value = SERVICES_PREFIX)]
    prefix: String,
}

pub async fn run(args: DiscoveryArgs) -> Result<(), CliError> {
    match args.command {
        DiscoveryCommand::List(PrefixArg { prefix }) => list(&prefix).await,
        DiscoveryCommand::Watch(PrefixArg { prefix }) => watch(&prefix).await,
    }
}

/// Instance records print as themselves; any other record whose value is JSON (a ZMQ
/// publisher's `/event_channels/…` record, for one) as `{"key":…,"value":…}`. Records
/// that cannot be read are skipped (and logged at `warn`).
async fn list(prefix: &str) -> Result<(), CliError> {
    let runtime = super::runtime().await?;
    for kv in runtime.discovery().store().list(prefix).await? {
        if kv.key.starts_with(SERVICES_PREFIX) {
            match InstanceRecord::from_key_value(&kv.key, &kv.value) {
                Ok(record) => print_line(&record)?,
                Err(err) => tracing::warn!(%err, "skipping an instance record that cannot be read"),
            }
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(&kv.value) {
            Ok(value) => print_line(&Record {
                key: &kv.key,
                value,
            })?,
            Err(err) => tracing::warn!(key = %kv.key, %err, "skipping a record that is not JSON"),
        }
    }
    Ok(())
}

/// A line of `list` for a record that is not an instance.
#[derive(Serialize)]
struct Record<'a> {
    key: &'a str,
    value: serde_json::Value,
}

async fn watch(prefix: &str) -> Result<(), CliError> {
    let runtime = super::runtime().await?;
    let mut changes = runtime.discovery().watch_prefix(prefix).await?;
    let mut signals = Signals::install()?;
    loop {
        let change = tokio::select! {
            signal = signals.recv() => {
                tracing::info!(signal = signal?, "stopping the watch");
                return Ok(());
            }
            change = changes.next() => change,
        };
        let (event, record) = match &change {
            Some(InstanceEvent::Added(record)) => ("added", record),
            Some(InstanceEvent::Removed(record)) => ("removed", record),
            // We hold the store, so the stream has no reason to end.
            None => return Err("the discovery watch ended unexpectedly".into()),
        };
        print_line(&Change { event, record })?;
    }
}

/// One line of `watch`; a struct rather than a `json!` map so fields keep this order.
#[derive(Serialize)]
struct Change<'a> {
    event: &'static str,
    record: &'a InstanceRecord,
}

/// Flushed at once: a reader of `watch` must see each change when it happens.
fn print_line(value: &impl Serialize) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(stdout.flush()?)
}
