//! `planewire serve`: an echo worker on the TCP request plane.

use std::io::Write;

use planewire::bench::echo_handler;
use planewire::planes::RequestPlaneServer;
use planewire::tcp::{ServerConfig, TcpServer};

use super::{CliError, EndpointArgs};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Responses per request, each a copy of the request's payload.
    #[arg(long, value_name = "K", default_value_t = 1)]
    responses: usize,
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully. The first stdout line is
/// `listening on HOST:PORT`, for scripts to read.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let path = args.endpoint.path()?;
    let server = TcpServer::bind(ServerConfig {
        tcp: super::tcp_config()?,
        ..ServerConfig::default()
    })
    .await?;
    server.register(&path, echo_handler(args.responses))?;
    // Installed before the address is printed: a script that reads the line and at once
    // sends SIGTERM must get a graceful shutdown, not the default action.
    let mut signals = Signals::install()?;
    let local = server.local_addr();
    // Bound to every interface: print the address clients should dial instead.
    let dial = if local.ip().is_unspecified() {
        server.address()
    } else {
        local.to_string()
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {dial}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(endpoint = %path, responses = args.responses, "serving");
    let signal = signals.recv().await?;
    tracing::info!(signal, "shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> std::io::Result<&'static str> {
        Ok(tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        })
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn recv(&mut self) -> std::io::Result<&'static str> {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}
