//! `cargo bench --bench latency [-- --quick] [-- --json PATH] [-- --plot PATH]`: the same
//! benchmark as `planewire bench`, see `planewire_cli::bench`.

use std::process::ExitCode;

use clap::Parser;
use planewire_cli::bench::{self, BenchOptions};

#[derive(Parser)]
#[command(about = "planewire latency benchmark against a raw-TCP floor")]
struct Args {
    #[command(flatten)]
    options: BenchOptions,
    /// Passed by `cargo bench` to every bench target; nothing to do with it here.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    // This executable has no `bench-server` subcommand: the server process is the
    // `planewire` binary cargo built beside it.
    args.options
        .server_exe
        .get_or_insert_with(|| env!("CARGO_BIN_EXE_planewire").into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(&args.options)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
