//! `planewire`: run an echo worker, call an endpoint by hand, look at discovery, or run
//! the latency benchmark.
//! The subcommands live in `src/commands/`, the benchmark in the `planewire_cli` library;
//! errors end the process with one `error: …` line.

mod commands;

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
    Serve(commands::serve::ServeArgs),
    /// Send requests to an endpoint's instances (found through discovery, or --addr);
    /// print the responses (--data) or a latency summary.
    Call(commands::call::CallArgs),
    /// List or watch the instances registered in discovery.
    Discovery(commands::discovery::DiscoveryArgs),
    /// Publish or subscribe to events on the event plane (DYN_EVENT_PLANE).
    Events(commands::events::EventsArgs),
    /// Run the latency benchmark against a raw-TCP floor, its servers in a second process.
    Bench(planewire_cli::bench::BenchOptions),
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
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Call(args) => commands::call::run(args).await,
        Command::Discovery(args) => commands::discovery::run(args).await,
        Command::Events(args) => commands::events::run(args).await,
        Command::Bench(options) => planewire_cli::bench::run(&options)
            .await
            .map(drop)
            .map_err(Into::into),
        Command::BenchServer => planewire_cli::bench::serve_bench_server()
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
