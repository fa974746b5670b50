//! The latency benchmark behind `planewire bench` and `cargo bench --bench latency`.
//!
//! Over 127.0.0.1: a planewire [`TcpServer`](planewire::tcp::TcpServer) with echo endpoints
//! and a [`TcpClient`](planewire::tcp::TcpClient), and, in the same run, the floor: a raw
//! tokio TCP echo that carries the same payloads with nothing but a length prefix. By
//! default both servers run in a second process (`planewire bench-server`, see
//! [`remote`]) and the clients in this one, as a frontend and its workers do;
//! `--in-process` puts everything on this process's runtime. Absolute times on a shared
//! machine mean little, so every planewire figure is also given as a ratio to the floor
//! measured moments before or after it, and CPU time per request is reported for each
//! process.
//!
//! Each cell (payload size × concurrency × responses) runs planewire and then the floor,
//! each with a warm-up, in a closed loop; at concurrency above 1 both also run an open
//! loop at a fixed offered rate. Latency is send → last response, in an HDR histogram.

mod cells;
mod driver;
mod error;
mod events;
mod http_plane;
mod latency;
#[cfg(feature = "nats")]
mod nats_plane;
mod plane;
mod plot;
mod procfs;
mod raw;
mod remote;
mod report;

use std::path::PathBuf;

use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};

pub use cells::Cell;
pub use error::BenchError;
pub use events::{EVENT_PAYLOAD, EventResult, VersusBare};
pub use latency::{Percentiles, Recorder, SharedHistogram};
pub use remote::{SERVER_SUBCOMMAND, serve as serve_bench_server};
pub use report::{CellResult, CpuCost, Mode, Ratios, System, Topology};

use driver::{Caller, Measurement, Timing};
use http_plane::HttpEcho;
use plane::{Planewire, PlanewireServer};
use procfs::Process;
use raw::{RawClient, RawServer};
use remote::ServerProcess;
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
    /// Also measure this request plane beside TCP: `http` (HTTP/2; 64 B unary at
    /// concurrency 1 and 64, 64 KiB, 16 streamed responses), its server beside the TCP one.
    #[arg(long, value_enum, value_name = "PLANE")]
    pub plane: Option<ExtraPlane>,
    /// Run the servers on this process's runtime, beside the clients, instead of in a
    /// server process of their own.
    #[arg(long)]
    pub in_process: bool,
    /// Measure only this cell (PAYLOAD:CONCURRENCY:RESPONSES, e.g. 64:1:1 or 64K:64:1),
    /// and skip the event plane; repeat for several cells of the plan.
    #[arg(long = "cell", value_name = "CELL", value_parser = cells::parse_cell)]
    pub cells: Vec<Cell>,
    /// Connections the floor pipelines its requests over at concurrency above 1.
    #[arg(long, value_name = "N", default_value_t = raw::PIPELINE_CONNECTIONS, value_parser = clap::value_parser!(u16).range(1..))]
    pub floor_connections: u16,
    /// The `planewire` executable that runs the server process [default: this one].
    #[arg(long, value_name = "PATH", hide = true)]
    pub server_exe: Option<PathBuf>,
}

/// A request plane `--plane` adds beside TCP (NATS is `--nats URL`: it needs a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtraPlane {
    Http,
}

/// Where the servers run, and how to reach them.
enum Servers {
    InProcess {
        plane: PlanewireServer,
        raw: RawServer,
        http: HttpEcho,
    },
    TwoProcess(ServerProcess),
}

impl Servers {
    async fn start(options: &BenchOptions) -> Result<Self, BenchError> {
        if options.in_process {
            let counts = cells::response_counts();
            return Ok(Self::InProcess {
                plane: PlanewireServer::start(counts.iter().copied()).await?,
                raw: RawServer::start().await?,
                http: HttpEcho::start(&counts).await?,
            });
        }
        let exe = match &options.server_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(BenchError::io(
                "finding this executable, to run the server process",
            ))?,
        };
        Ok(Self::TwoProcess(ServerProcess::start(&exe).await?))
    }

    fn topology(&self) -> Topology {
        match self {
            Self::InProcess { .. } => Topology::InProcess,
            Self::TwoProcess(_) => Topology::TwoProcess,
        }
    }

    /// The planewire server's and the floor's addresses, and the HTTP/2 server's when
    /// there is one.
    fn addresses(&self) -> (std::net::SocketAddr, std::net::SocketAddr, Option<String>) {
        match self {
            Self::InProcess { plane, raw, http } => {
                (plane.address(), raw.address(), http.address())
            }
            Self::TwoProcess(process) => (process.planewire, process.raw, process.http.clone()),
        }
    }

    /// The processes whose CPU time and memory are measured: the clients' (this one,
    /// which in-process is the servers' too) and the servers' when apart.
    fn processes(&self) -> Sides {
        Sides {
            client: Process::This,
            server: match self {
                Self::InProcess { .. } => None,
                Self::TwoProcess(process) => Some(Process::Other(process.pid())),
            },
        }
    }

    async fn stop(self) {
        match self {
            Self::InProcess { plane, raw, http } => {
                drop(raw);
                http.shutdown().await;
                plane.shutdown().await;
            }
            Self::TwoProcess(process) => process.stop().await,
        }
    }
}

/// The measured processes: the client side, and the server side when it is another.
#[derive(Clone, Copy)]
struct Sides {
    client: Process,
    server: Option<Process>,
}

/// Runs every cell, prints the table on stdout, writes the JSON and the plot if asked,
/// and returns the results. A progress bar is drawn on stderr when it is a terminal.
pub async fn run(options: &BenchOptions) -> Result<Vec<CellResult>, BenchError> {
    let timing = cells::timing(options.quick);
    let servers = Servers::start(options).await?;
    let topology = servers.topology();
    let (plane_address, raw_address, http_address) = servers.addresses();
    let sides = servers.processes();
    let plane = Planewire::connect(plane_address)?;
    let raw = RawClient {
        address: raw_address,
        connections: usize::from(options.floor_connections),
    };
    let cells = cells::select(plane.max_unary_payload(), &options.cells);
    if cells.is_empty() {
        servers.stop().await;
        return Err(BenchError::NoSuchCell);
    }
    let progress = progress_bar(&cells);
    let mut runs = Vec::new();
    let measured = async {
        for cell in &cells {
            let cell_runs = run_cell(
                cell,
                &plane,
                &raw,
                sides,
                timing,
                options.open_load,
                &progress,
            );
            runs.extend(cell_runs.await?);
        }
        if let Some(url) = &options.nats {
            runs.extend(nats_cells(url, (&raw, sides, timing), &progress).await?);
        }
        if options.plane == Some(ExtraPlane::Http) {
            let measure = (&raw, sides, timing);
            runs.extend(http_cells(http_address.as_deref(), measure, &progress).await?);
        }
        Ok::<_, BenchError>(())
    }
    .await;
    servers.stop().await;
    measured?;
    for run in &mut runs {
        run.result.topology = topology;
    }
    // A run of chosen cells is a focused measurement of the request plane.
    let event_results = if options.cells.is_empty() {
        progress.set_message("event plane");
        events::run(events::timing(options.quick), options.nats.as_deref()).await?
    } else {
        Vec::new()
    };
    progress.finish_and_clear();

    println!(
        "planewire latency benchmark ({} mode, {topology}): 127.0.0.1, {} CPUs, {:?} warm-up + {:?} per run; \
         closed loops in {} slices, by turns with the floor",
        if options.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        timing.warmup,
        timing.measure,
        timing.slices,
    );
    let results: Vec<CellResult> = runs.iter().map(|r| r.result.clone()).collect();
    println!("{}", report::table(&results, options.open_load, topology));
    for line in report::planes_versus_tcp(&results) {
        println!("{line}");
    }
    if !event_results.is_empty() {
        println!(
            "event plane: {} B events; latency is publish → receive with one event in flight",
            events::EVENT_PAYLOAD
        );
        println!("{}", events::table(&event_results));
    }
    if let Some(path) = &options.json {
        report::write_json(path, &results, &event_results)?;
    }
    if let Some(path) = &options.plot {
        plot::draw(path, &runs)?;
    }
    Ok(results)
}

/// Cells of a plane measured beside TCP, each a closed loop taken by turns with the floor.
/// `callers(payload, responses, concurrency)` makes the plane's callers.
#[cfg(any(feature = "nats", feature = "http"))]
async fn plane_cells<C: Caller + Clone>(
    system: System,
    cells: &[Cell],
    callers: impl Fn(&Bytes, usize, usize) -> Vec<C>,
    (raw, sides, timing): (&RawClient, Sides, Timing),
    progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    progress.inc_length(2 * cells.len() as u64);
    let mut runs = Vec::new();
    for cell in cells {
        let size = cells::size_label(cell.payload);
        progress.set_message(format!(
            "{system:?} {size} c={} ×{}",
            cell.concurrency, cell.responses
        ));
        let payload = Bytes::from(vec![b'x'; cell.payload]);
        let callers = callers(&payload, cell.responses, cell.concurrency);
        let turns = closed_by_turns(cell, raw, &callers, sides, timing).await?;
        progress.inc(2);
        let floor = Run::new(System::RawTcp, cell, Mode::Closed, None, turns.floor)
            .with_cpu(turns.floor_cpu);
        let run = Run::new(system, cell, Mode::Closed, None, turns.system)
            .with_cpu(turns.system_cpu)
            .compared_to(&floor);
        runs.extend([floor, run]);
    }
    Ok(runs)
}

/// A unary cell of `payload` bytes at `concurrency`.
#[cfg(any(feature = "nats", feature = "http"))]
fn unary_cell(payload: usize, concurrency: usize) -> Cell {
    Cell {
        payload,
        concurrency,
        responses: 1,
        track_rss: false,
    }
}

/// The NATS request plane's cells: 64 B unary at concurrency 1 and 64.
#[cfg(feature = "nats")]
async fn nats_cells(
    url: &str,
    measure: (&RawClient, Sides, Timing),
    progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    let nats = nats_plane::NatsPlane::start(url).await?;
    let (raw, sides, timing) = measure;
    // The NATS plane's server side is in this process whatever the topology.
    let sides = Sides {
        server: None,
        ..sides
    };
    let cells = [unary_cell(64, 1), unary_cell(64, 64)];
    let callers =
        |payload: &Bytes, _responses: usize, concurrency: usize| nats.callers(payload, concurrency);
    let runs = plane_cells(
        System::PlanewireNats,
        &cells,
        callers,
        (raw, sides, timing),
        progress,
    )
    .await;
    nats.shutdown().await;
    runs
}

#[cfg(not(feature = "nats"))]
async fn nats_cells(
    _url: &str,
    _measure: (&RawClient, Sides, Timing),
    _progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    Err(BenchError::Worker(
        "--nats needs a build with the `nats` cargo feature (--features nats)".into(),
    ))
}

/// The HTTP/2 request plane's cells, its server beside the TCP one: 64 B unary at
/// concurrency 1 and 64, 64 KiB at 1, and 16 streamed responses of 64 B.
#[cfg(feature = "http")]
async fn http_cells(
    address: Option<&str>,
    measure: (&RawClient, Sides, Timing),
    progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    let address = address
        .ok_or_else(|| BenchError::Worker("the server process serves no HTTP/2 endpoint".into()))?;
    let http = http_plane::HttpPlane::connect(address)?;
    let streamed = Cell {
        responses: 16,
        ..unary_cell(64, 1)
    };
    let cells = [
        unary_cell(64, 1),
        unary_cell(64, 64),
        unary_cell(64 * 1024, 1),
        streamed,
    ];
    let callers = |payload: &Bytes, responses: usize, concurrency: usize| {
        http.callers(payload, responses, concurrency)
    };
    plane_cells(System::PlanewireHttp, &cells, callers, measure, progress).await
}

#[cfg(not(feature = "http"))]
async fn http_cells(
    _address: Option<&str>,
    _measure: (&RawClient, Sides, Timing),
    _progress: &ProgressBar,
) -> Result<Vec<Run>, BenchError> {
    Err(BenchError::Worker(
        "--plane http needs a build with the `http` cargo feature (--features http)".into(),
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
    plane: &Planewire,
    raw: &RawClient,
    sides: Sides,
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
    let callers = plane.callers(&payload, cell.responses, cell.concurrency);
    let turns = closed_by_turns(cell, raw, &callers, sides, timing).await?;
    progress.inc(2);
    let rate = open_load * turns.system.rps();

    let floor =
        Run::new(System::RawTcp, cell, Mode::Closed, None, turns.floor).with_cpu(turns.floor_cpu);
    let mut planewire = Run::new(System::Planewire, cell, Mode::Closed, None, turns.system)
        .with_cpu(turns.system_cpu)
        .compared_to(&floor);
    planewire.result.peak_rss_bytes = turns.peak_rss;
    planewire.result.server_peak_rss_bytes = turns.server_peak_rss;
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

/// What [`closed_by_turns`] measured.
struct Turns {
    system: Measurement,
    floor: Measurement,
    system_cpu: Option<CpuCost>,
    floor_cpu: Option<CpuCost>,
    /// The client process's and the server process's peak RSS while the system ran, when
    /// the cell tracks it (`Some(None)` where the platform cannot tell; the server's is
    /// absent in-process, where the client's figure covers both).
    peak_rss: Option<Option<u64>>,
    server_peak_rss: Option<Option<u64>>,
}

/// Both sides' CPU time so far, at one moment.
#[derive(Clone, Copy)]
struct CpuSample {
    client: Option<Duration>,
    server: Option<Duration>,
}

impl CpuSample {
    fn now(sides: Sides) -> Self {
        Self {
            client: sides.client.cpu_time(),
            server: sides.server.and_then(Process::cpu_time),
        }
    }
}

/// CPU time each side spent over the slices of one system; `None` once a reading failed
/// (and for the server side in-process).
struct CpuTally {
    client: Option<Duration>,
    server: Option<Duration>,
}

impl CpuTally {
    fn new(sides: Sides) -> Self {
        Self {
            client: Some(Duration::ZERO),
            server: sides.server.map(|_| Duration::ZERO),
        }
    }

    fn add(&mut self, before: CpuSample, after: CpuSample) {
        let spent = |total: Option<Duration>, before: Option<Duration>, after: Option<Duration>| {
            Some(total? + after?.checked_sub(before?)?)
        };
        self.client = spent(self.client, before.client, after.client);
        self.server = spent(self.server, before.server, after.server);
    }

    fn per_request(&self, measurement: &Measurement) -> Option<CpuCost> {
        let requests = measurement.calls.max(1) as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / requests;
        Some(CpuCost {
            client_us: us(self.client?),
            server_us: self.server.map(us),
        })
    }
}

/// Closed-loop runs of `callers` and of the floor for `cell`, cut into `timing.slices`
/// slices taken by turns (system, floor, floor, system, …): a shared VM's speed drifts
/// over seconds, and taking turns makes a drift weigh on both sides of a ratio alike.
/// Returns both sides' merged slices with the CPU time each process spent per call made
/// in them (warm-up calls included, as their CPU time is), and the peak RSS
/// when the cell tracks it (the largest peak over the system's slices, each from a
/// reset just before it).
async fn closed_by_turns<C: Caller + Clone>(
    cell: &Cell,
    raw: &RawClient,
    callers: &[C],
    sides: Sides,
    timing: Timing,
) -> Result<Turns, BenchError> {
    let slice = timing.slice();
    let mut system: Option<Measurement> = None;
    let mut floor: Option<Measurement> = None;
    let mut system_cpu = CpuTally::new(sides);
    let mut floor_cpu = CpuTally::new(sides);
    let mut peaks = [None, None];
    let mut rss_known = [cell.track_rss, cell.track_rss && sides.server.is_some()];
    for turn in 0..timing.slices {
        let system_first = turn % 2 == 0;
        for system_now in [system_first, !system_first] {
            let processes = [Some(sides.client), sides.server];
            let before = CpuSample::now(sides);
            let (measured, sum) = if system_now {
                let reset = processes.map(|p| cell.track_rss && p.is_some_and(Process::reset_peak));
                let measured = driver::closed_loop(callers.to_vec(), slice).await?;
                system_cpu.add(before, CpuSample::now(sides));
                for (i, process) in processes.into_iter().enumerate() {
                    let peak = process.filter(|_| reset[i]).and_then(Process::peak);
                    rss_known[i] &= peak.is_some();
                    peaks[i] = peaks[i].max(peak);
                }
                (measured, &mut system)
            } else {
                let measured = floor_run(cell, raw, None, slice).await?;
                floor_cpu.add(before, CpuSample::now(sides));
                (measured, &mut floor)
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
    let peak = |i: usize| cell.track_rss.then(|| peaks[i].filter(|_| rss_known[i]));
    Ok(Turns {
        system_cpu: system_cpu.per_request(&system),
        floor_cpu: floor_cpu.per_request(&floor),
        peak_rss: peak(0),
        server_peak_rss: sides.server.and_then(|_| peak(1)),
        system,
        floor,
    })
}

/// The floor for `cell`: ping-pong on one connection at concurrency 1, otherwise the same
/// number of requests pipelined on one connection. `rate` selects the open loop.
async fn floor_run(
    cell: &Cell,
    raw: &RawClient,
    rate: Option<f64>,
    timing: Timing,
) -> Result<Measurement, BenchError> {
    if cell.concurrency == 1 {
        let caller = raw.ping_pong(cell.payload, cell.responses).await?;
        return measure(vec![caller], rate, timing).await;
    }
    let callers = raw
        .pipeline(
            cell.payload,
            cell.responses,
            cell.concurrency,
            raw.connections,
        )
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
