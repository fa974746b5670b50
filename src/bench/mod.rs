//! The latency benchmark behind `planewire bench` and `cargo bench --bench latency`.
//!
//! Everything runs in this process on one multi-thread tokio runtime, over 127.0.0.1: a
//! planewire [`TcpServer`](crate::tcp::TcpServer) with echo endpoints and a
//! [`TcpClient`](crate::tcp::TcpClient), and, in the same run, the floor: a raw tokio TCP
//! echo that carries the same payloads with nothing but a length prefix. Absolute times
//! on a shared machine mean little, so every planewire figure is also given as a ratio to
//! the floor measured moments before or after it.
//!
//! Each cell (payload size × concurrency × responses) runs planewire and then the floor,
//! each with a warm-up, in a closed loop; at concurrency above 1 both also run an open
//! loop at a fixed offered rate. Latency is send → last response, in an HDR histogram.

mod cells;
mod driver;
mod echo;
mod error;
mod events;
mod latency;
#[cfg(feature = "nats")]
mod nats_plane;
mod plane;
mod plot;
mod raw;
mod report;
mod rss;

use std::path::PathBuf;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};

pub use cells::Cell;
pub use echo::echo_handler;
pub use error::BenchError;
pub use events::{EVENT_PAYLOAD, EventResult, VersusBare};
pub use latency::{Recorder, SharedHistogram};
pub use report::{CellResult, Mode, Percentiles, Ratios, System};

use driver::{Caller, Measurement, Timing};
use plane::Planewire;
use raw::RawServer;
use report::Run;

/// Options of `planewire bench` (and of `cargo bench --bench latency -- …`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Short runs (the whole benchmark in under 20 s) for CI and smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results to PATH as JSON: an array with one object per run.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also draw the latency percentile distributions to PATH as a PNG.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Offered rate of the open-loop runs (concurrency above 1), as a fraction of
    /// planewire's closed-loop rate in the same cell.
    #[arg(
        long,
        value_name = "FRACTION",
        default_value_t = cells::DEFAULT_OPEN_LOAD,
        value_parser = cells::parse_open_load
    )]
    pub open_load: f64,
    /// Also measure the NATS request plane (64 B unary at concurrency 1 and 64) and the
    /// NATS event plane against the nats-server at URL (needs the `nats` feature).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
}

/// Runs every cell, prints the table on stdout, writes the JSON and the plot if asked,
/// and returns the results. A progress bar is drawn on stderr when it is a terminal.
pub async fn run(options: &BenchOptions) -> Result<Vec<CellResult>, BenchError> {
    let timing = cells::timing(options.quick);
    let mut plane = Planewire::start().await?;
    let raw = RawServer::start().await?;
    let cells = cells::plan(plane.max_unary_payload().await);
    let progress = progress_bar(&cells);
    let mut runs = Vec::new();
    for cell in &cells {
        let cell_runs = run_cell(cell, &mut plane, &raw, timing, options.open_load, &progress);
        runs.extend(cell_runs.await?);
    }
    plane.shutdown().await;
    if let Some(url) = &options.nats {
        runs.extend(nats_cells(url, &raw, timing, &progress).await?);
    }
    progress.set_message("event plane");
    let event_results = events::run(events::timing(options.quick), options.nats.as_deref()).await?;
    progress.finish_and_clear();

    println!(
        "planewire latency benchmark ({} mode): 127.0.0.1, {} CPUs, {:?} warm-up + {:?} per run; \
         closed loops in {} slices, by turns with the floor",
        if options.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        timing.warmup,
        timing.measure,
        timing.slices,
    );
    let results: Vec<CellResult> = runs.iter().map(|r| r.result.clone()).collect();
    println!("{}", report::table(&results, options.open_load));
    if let Some(line) = report::nats_versus_tcp(&results) {
        println!("{line}");
    }
    println!(
        "event plane: {} B events; latency is publish → receive with one event in flight",
        events::EVENT_PAYLOAD
    );
    println!("{}", events::table(&event_results));
    if let Some(path) = &options.json {
        report::write_json(path, &results, &event_results)?;
    }
    if let Some(path) = &options.plot {
        plot::draw(path, &runs)?;
    }
    Ok(results)
}

/// The NATS request plane's cells, each beside a floor run of its own.
#[cfg(feature = "nats")]
async fn nats_cells(
    url: &str,
    raw: &RawServer,
    timing: Timing,
    progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    let nats = nats_plane::NatsPlane::start(url).await?;
    progress.inc_length(4);
    let payload = Bytes::from(vec![b'x'; 64]);
    let mut runs = Vec::new();
    for concurrency in [1, 64] {
        let cell = Cell {
            payload: payload.len(),
            concurrency,
            responses: 1,
            track_rss: false,
        };
        progress.set_message(format!("planewire nats 64 B c={concurrency}"));
        let callers = nats.callers(&payload, concurrency);
        let (measured, floor, _) = closed_by_turns(&cell, raw, &callers, timing).await?;
        progress.inc(2);
        let floor = Run::new(System::RawTcp, &cell, Mode::Closed, None, floor);
        let run = Run::new(System::PlanewireNats, &cell, Mode::Closed, None, measured)
            .compared_to(&floor);
        runs.extend([floor, run]);
    }
    nats.shutdown().await;
    Ok(runs)
}

#[cfg(not(feature = "nats"))]
async fn nats_cells(
    _url: &str,
    _raw: &RawServer,
    _timing: Timing,
    _progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    Err(BenchError::Worker(
        "--nats needs a build with the `nats` cargo feature (--features nats)".into(),
    ))
}

fn progress_bar(cells: &[Cell]) -> ProgressBar {
    let runs: usize = cells
        .iter()
        .map(|c| if c.concurrency > 1 { 4 } else { 2 })
        .sum();
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {elapsed}  {msg}")
        .expect("constant, valid template");
    ProgressBar::new(runs as u64).with_style(style)
}

/// Planewire and the floor by turns, closed loop; then, above concurrency 1, each in an
/// open loop. Runs come out in (floor, planewire) pairs, the plot's panels.
async fn run_cell(
    cell: &Cell,
    plane: &mut Planewire,
    raw: &RawServer,
    timing: Timing,
    open_load: f64,
    progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    let name = |system: &str, mode: &str| {
        let size = cells::size_label(cell.payload);
        let c = cell.concurrency;
        let k = cell.responses;
        format!("{system} {size} c={c} ×{k} {mode}")
    };
    let payload = Bytes::from(vec![b'x'; cell.payload]);

    progress.set_message(name("planewire and raw TCP", "closed"));
    let callers = plane
        .callers(&payload, cell.responses, cell.concurrency)
        .await;
    let (planewire, floor, peak_rss) = closed_by_turns(cell, raw, &callers, timing).await?;
    progress.inc(2);
    let rate = open_load * planewire.rps();

    let floor = Run::new(System::RawTcp, cell, Mode::Closed, None, floor);
    let mut planewire =
        Run::new(System::Planewire, cell, Mode::Closed, None, planewire).compared_to(&floor);
    planewire.result.peak_rss_bytes = peak_rss;
    let mut runs = vec![floor, planewire];
    if cell.concurrency == 1 {
        return Ok(runs);
    }

    progress.set_message(name("planewire", "open"));
    let planewire = driver::open_loop(callers, rate, timing).await?;
    progress.inc(1);
    progress.set_message(name("raw TCP", "open"));
    let floor = floor_run(cell, raw, Some(rate), timing).await?;
    progress.inc(1);
    let floor = Run::new(System::RawTcp, cell, Mode::Open, Some(rate), floor);
    let planewire =
        Run::new(System::Planewire, cell, Mode::Open, Some(rate), planewire).compared_to(&floor);
    runs.extend([floor, planewire]);
    Ok(runs)
}

/// Closed-loop runs of `callers` and of the floor for `cell`, cut into `timing.slices`
/// slices taken by turns (system, floor, floor, system, …): a shared VM's speed drifts
/// over seconds, and taking turns makes a drift weigh on both sides of a ratio alike.
/// Returns the system's and the floor's merged slices, and the system's peak RSS when the
/// cell tracks it (the largest peak over its slices, each from a reset just before it;
/// `Some(None)` where the platform cannot tell).
async fn closed_by_turns<C: Caller + Clone>(
    cell: &Cell,
    raw: &RawServer,
    callers: &[C],
    timing: Timing,
) -> Result<(Measurement, Measurement, Option<Option<u64>>), BenchError> {
    let slice = timing.slice();
    let mut system: Option<Measurement> = None;
    let mut floor: Option<Measurement> = None;
    let mut peak_rss = None;
    let mut rss_known = cell.track_rss;
    for turn in 0..timing.slices {
        let system_first = turn % 2 == 0;
        for system_now in [system_first, !system_first] {
            let (measured, sum) = if system_now {
                let reset = cell.track_rss && rss::reset_peak();
                let measured = driver::closed_loop(callers.to_vec(), slice).await?;
                let peak = reset.then(rss::peak).flatten();
                rss_known &= peak.is_some();
                peak_rss = peak_rss.max(peak);
                (measured, &mut system)
            } else {
                (floor_run(cell, raw, None, slice).await?, &mut floor)
            };
            match sum {
                Some(sum) => sum.merge(&measured),
                None => *sum = Some(measured),
            }
        }
    }
    let (Some(system), Some(floor)) = (system, floor) else {
        unreachable!("Timing::slices is at least 1, and each turn runs both sides");
    };
    let peak_rss = cell.track_rss.then(|| peak_rss.filter(|_| rss_known));
    Ok((system, floor, peak_rss))
}

/// The floor for `cell`: ping-pong on one connection at concurrency 1, otherwise the same
/// number of requests pipelined on one connection. `rate` selects the open loop.
async fn floor_run(
    cell: &Cell,
    raw: &RawServer,
    rate: Option<f64>,
    timing: Timing,
) -> Result<Measurement, BenchError> {
    if cell.concurrency == 1 {
        let caller = raw.ping_pong(cell.payload, cell.responses).await?;
        return measure(vec![caller], rate, timing).await;
    }
    let callers = raw
        .pipeline(cell.payload, cell.responses, cell.concurrency)
        .await?;
    measure(callers, rate, timing).await
}

async fn measure<C: Caller>(
    callers: Vec<C>,
    rate: Option<f64>,
    timing: Timing,
) -> Result<Measurement, BenchError> {
    match rate {
        Some(rate) => driver::open_loop(callers, rate, timing).await,
        None => driver::closed_loop(callers, timing).await,
    }
}
