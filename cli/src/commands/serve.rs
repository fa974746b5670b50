//! `planewire serve`: an echo worker on the runtime's request plane, registered in
//! discovery.

use std::io::Write;

use bytes::Bytes;
use planewire_cli::echo::{echo_handler, tagged_echo};

use super::signals::Signals;
use super::{CliError, EndpointArgs};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Instance id, in hexadecimal as on the wire [default: random, so that several
    /// workers can serve the same endpoint].
    #[arg(long, value_name = "HEX", value_parser = super::parse_instance)]
    instance: Option<u64>,
    /// Responses per request, each a copy of the request's payload.
    #[arg(long, value_name = "K", default_value_t = 1)]
    responses: usize,
    /// Append TEXT to every response, to tell workers apart.
    #[arg(long, value_name = "TEXT")]
    tag: Option<String>,
}

/// Serves until SIGINT or SIGTERM, then deregisters and shuts down gracefully. Prints
/// `listening on ADDRESS` (`HOST:PORT` on TCP, the subject on NATS) and then
/// `instance HEX registered at KEY`, once registered, for scripts to read.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let names = args.endpoint.path(0)?;
    let instance = args.instance.unwrap_or_else(|| fastrand::u64(..));
    let runtime = super::runtime().await?;
    let endpoint = runtime
        .namespace(names.namespace())
        .component(names.component())
        .endpoint(names.endpoint());
    let served = match &args.tag {
        Some(tag) => {
            let handler = tagged_echo(args.responses, Bytes::from(tag.clone()));
            endpoint.serve_instance(instance, handler).await?
        }
        None => {
            endpoint
                .serve_instance(instance, echo_handler(args.responses))
                .await?
        }
    };
    // Installed before the lines are printed: a script that reads them and at once sends
    // SIGTERM must get a deregistration and a graceful shutdown, not the default action.
    let mut signals = Signals::install()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", served.address())?;
    writeln!(
        stdout,
        "instance {:x} registered at {}",
        served.instance_id(),
        served.key()
    )?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(endpoint = %served.path(), responses = args.responses, "serving");
    let signal = signals.recv().await?;
    tracing::info!(signal, "shutting down");
    // Withdrawn first, then drained: clients stop picking this instance while it drains.
    runtime.shutdown().await;
    Ok(())
}
