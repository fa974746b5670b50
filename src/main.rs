//! `planewire`: run an echo worker, call an endpoint by hand, look at discovery, or run
//! the latency benchmark.
//! The subcommands live in `src/cli/`; errors end the process with one `error: …` line.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "planewire",
    version,
    about = "The planewire request plane, discovery and event plane from a shell"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an echo worker, registered in discovery: every request is answered with K
    /// copies of its payload.
    Serve(cli::serve::ServeArgs),
    /// Send requests to an endpoint's instances (found through discovery, or --addr);
    /// print the responses (--data) or a latency summary.
    Call(cli::call::CallArgs),
    /// List or watch the instances registered in discovery.
    Discovery(cli::discovery::DiscoveryArgs),
    /// Publish or subscribe to events on the event plane (DYN_EVENT_PLANE).
    Events(cli::events::EventsArgs),
    /// Run the latency benchmark against a raw-TCP floor, its servers in a second process.
    Bench(planewire::bench::BenchOptions),
    /// The benchmark's server process (started by `bench`).
    #[command(name = "bench-server", hide = true)]
    BenchServer,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Call(args) => cli::call::run(args).await,
        Command::Discovery(args) => cli::discovery::run(args).await,
        Command::Events(args) => cli::events::run(args).await,
        Command::Bench(options) => planewire::bench::run(&options)
            .await
            .map(drop)
            .map_err(Into::into),
        Command::BenchServer => planewire::bench::serve_bench_server()
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
