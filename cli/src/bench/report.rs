//! Results: one [`CellResult`] per system, cell and mode, printed as a table and written
//! as JSON.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::BenchError;
use super::cells::{Cell, size_label};
use super::driver::Measurement;
use super::events::EventResult;
use super::latency::Percentiles;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// The TCP request plane.
    Planewire,
    /// The NATS request plane (`bench --nats URL`).
    PlanewireNats,
    /// The HTTP/2 request plane (`bench --plane http`).
    PlanewireHttp,
    /// The raw tokio TCP echo measured in the same run.
    RawTcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each of `concurrency` clients sends its next request when the last one is answered.
    Closed,
    /// Requests leave at a fixed rate; latency counts from each one's scheduled send time.
    Open,
}

/// Where the servers ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// The servers in a process of their own (`planewire bench-server`), the default.
    TwoProcess,
    /// Servers and clients on one runtime (`--in-process`).
    InProcess,
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TwoProcess => "two processes",
            Self::InProcess => "one process",
        })
    }
}

/// CPU time (user + system, every thread) per request, in microseconds, over a run's
/// closed-loop slices and their warm-ups (whose requests count too).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuCost {
    /// The measuring process: the clients (in-process, the servers too).
    pub client_us: f64,
    /// The server process; absent in-process.
    pub server_us: Option<f64>,
}

/// Planewire's figure divided by the raw floor's, for the same cell and mode.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub p50: f64,
    pub p99: f64,
    /// Requests per second; equal to the MB/s ratio, since both move the same bytes.
    pub rps: f64,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub system: System,
    pub topology: Topology,
    /// Request payload in bytes; each response carries the same payload back.
    pub payload: usize,
    pub concurrency: usize,
    pub responses: usize,
    pub mode: Mode,
    /// Requests per second offered in open-loop mode.
    pub offered_rps: Option<f64>,
    pub samples: u64,
    pub latency_us: Percentiles,
    pub rps: f64,
    /// Payload megabytes (10^6 bytes) per second, request and responses together.
    pub mb_per_s: f64,
    /// `None` on the floor's own rows.
    pub ratio_to_floor: Option<Ratios>,
    /// Closed loops only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<CpuCost>,
    /// The measuring process's peak (in-process: both sides'). Absent where not
    /// measured; `null` where the platform cannot tell (not Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<Option<u64>>,
    /// The server process's peak, in two-process runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_bytes: Option<Option<u64>>,
}

/// A result with the histogram it came from, for the plot.
pub(crate) struct Run {
    pub result: CellResult,
    pub histogram: Histogram<u64>,
}

impl Run {
    pub fn new(
        system: System,
        cell: &Cell,
        mode: Mode,
        offered_rps: Option<f64>,
        measurement: Measurement,
    ) -> Self {
        let h = &measurement.histogram;
        let us = |nanos: u64| nanos as f64 / 1e3;
        let rps = measurement.rps();
        let bytes_per_request = cell.payload * (1 + cell.responses);
        let result = CellResult {
            system,
            // Set for every run once the run of cells is over.
            topology: Topology::TwoProcess,
            payload: cell.payload,
            concurrency: cell.concurrency,
            responses: cell.responses,
            mode,
            offered_rps,
            samples: h.len(),
            latency_us: Percentiles {
                p50: us(h.value_at_quantile(0.50)),
                p90: us(h.value_at_quantile(0.90)),
                p99: us(h.value_at_quantile(0.99)),
                p99_9: us(h.value_at_quantile(0.999)),
                max: us(h.max()),
            },
            rps,
            mb_per_s: rps * bytes_per_request as f64 / 1e6,
            ratio_to_floor: None,
            cpu_us_per_request: None,
            peak_rss_bytes: None,
            server_peak_rss_bytes: None,
        };
        Self {
            result,
            histogram: measurement.histogram,
        }
    }

    pub fn with_cpu(mut self, cpu: Option<CpuCost>) -> Self {
        self.result.cpu_us_per_request = cpu;
        self
    }

    /// Planewire's run, compared with the floor's run of the same cell and mode.
    pub fn compared_to(mut self, floor: &Run) -> Self {
        let (pw, raw) = (&self.result, &floor.result);
        self.result.ratio_to_floor = Some(Ratios {
            p50: pw.latency_us.p50 / raw.latency_us.p50,
            p99: pw.latency_us.p99 / raw.latency_us.p99,
            rps: pw.rps / raw.rps,
        });
        self
    }
}

/// A short description of a run's workload, for the table and the plot.
pub(crate) fn workload_label(r: &CellResult) -> String {
    let mode = match r.offered_rps {
        Some(rate) => format!("open loop at {rate:.0} req/s"),
        None => "closed loop".to_owned(),
    };
    let responses = match r.responses {
        1 => "unary".to_owned(),
        k => format!("{k} responses"),
    };
    format!(
        "{}, {responses}, concurrency {}, {mode}",
        size_label(r.payload),
        r.concurrency
    )
}

pub(crate) fn table(results: &[CellResult], open_load: f64, topology: Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>3} {:>4}  {:<9} {:<11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>5} {:>5} {:>5} {:>11}  peak RSS",
        "payload",
        "c",
        "resp",
        "system",
        "mode",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "rps",
        "MB/s",
        "p50×",
        "p99×",
        "rps×",
        "cpu µs/req",
    );
    for r in results {
        let mode = match r.offered_rps {
            Some(rate) => format!("open {}", compact(rate)),
            None => "closed".to_owned(),
        };
        let system = match r.system {
            System::Planewire => "planewire",
            System::PlanewireNats => "pw NATS",
            System::PlanewireHttp => "pw HTTP/2",
            System::RawTcp => "raw TCP",
        };
        let ratio = |f: fn(&Ratios) -> f64| {
            r.ratio_to_floor
                .as_ref()
                .map_or_else(String::new, |x| format!("{:.2}", f(x)))
        };
        let mib = |peak: Option<u64>| {
            peak.map_or("n/a".to_owned(), |bytes| {
                format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
            })
        };
        let rss = match (r.peak_rss_bytes, r.server_peak_rss_bytes) {
            (None, _) => String::new(),
            (Some(client), None) => mib(client),
            (Some(client), Some(server)) => format!("{} + {}", mib(client), mib(server)),
        };
        let cpu = match r.cpu_us_per_request {
            None => String::new(),
            Some(CpuCost {
                client_us,
                server_us: None,
            }) => micros(client_us),
            Some(CpuCost {
                client_us,
                server_us: Some(server_us),
            }) => format!("{}+{}", micros(client_us), micros(server_us)),
        };
        let l = &r.latency_us;
        let _ = writeln!(
            out,
            "{:<10} {:>3} {:>4}  {:<9} {:<11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>8.1} {:>5} {:>5} {:>5} {cpu:>11}  {rss}",
            size_label(r.payload),
            r.concurrency,
            r.responses,
            system,
            mode,
            micros(l.p50),
            micros(l.p90),
            micros(l.p99),
            micros(l.p99_9),
            micros(l.max),
            r.rps,
            r.mb_per_s,
            ratio(|x| x.p50),
            ratio(|x| x.p99),
            ratio(|x| x.rps),
        );
    }
    // Rows without ratios or RSS end in padding; drop it.
    let mut out: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    let sides = match topology {
        Topology::TwoProcess => "client process + server process; peak RSS likewise",
        Topology::InProcess => "the one process, clients and servers together",
    };
    let _ = write!(
        out,
        "latency in µs from send to last response; MB/s counts payload both ways; \
         × = planewire ÷ raw TCP in the same cell and mode;\n\
         open N = N req/s offered ({:.0}% of planewire's closed-loop rate), latency from each \
         request's scheduled send time;\n\
         cpu = user + system CPU time per request (closed loops, warm-ups included) of {sides}",
        open_load * 100.0
    );
    out
}

fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// One line per plane measured beside TCP: its figures divided by the TCP plane's in
/// the same cells (closed loops).
pub(crate) fn planes_versus_tcp(results: &[CellResult]) -> Vec<String> {
    let planes = [
        (System::PlanewireNats, "NATS"),
        (System::PlanewireHttp, "HTTP/2"),
    ];
    planes
        .into_iter()
        .filter_map(|(system, name)| {
            let parts: Vec<String> = results
                .iter()
                .filter(|r| r.system == system)
                .filter_map(|other| {
                    let tcp = results.iter().find(|r| {
                        r.system == System::Planewire
                            && r.mode == Mode::Closed
                            && (r.payload, r.concurrency, r.responses)
                                == (other.payload, other.concurrency, other.responses)
                    })?;
                    Some(format!(
                        "{} c={} ×{}: p50 {:.2}×, p99 {:.2}×, rps {:.2}×",
                        size_label(other.payload),
                        other.concurrency,
                        other.responses,
                        other.latency_us.p50 / tcp.latency_us.p50,
                        other.latency_us.p99 / tcp.latency_us.p99,
                        other.rps / tcp.rps
                    ))
                })
                .collect();
            (!parts.is_empty()).then(|| {
                format!(
                    "{name} request plane ÷ TCP request plane: {}",
                    parts.join("; ")
                )
            })
        })
        .collect()
}

/// `24k/s` style rates, so the mode column stays narrow.
fn compact(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.0}k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

/// One array: the request-plane cells, then the event cells (`"cell": "event"`).
pub(crate) fn write_json(
    path: &Path,
    results: &[CellResult],
    events: &[EventResult],
) -> Result<(), BenchError> {
    let output_error = |reason: String| BenchError::Output {
        path: path.to_owned(),
        reason,
    };
    let mut all = Vec::with_capacity(results.len() + events.len());
    for value in results.iter().map(serde_json::to_value) {
        all.push(value.map_err(|e| output_error(e.to_string()))?);
    }
    for value in events.iter().map(serde_json::to_value) {
        all.push(value.map_err(|e| output_error(e.to_string()))?);
    }
    let json = serde_json::to_vec_pretty(&all).map_err(|e| output_error(e.to_string()))?;
    std::fs::write(path, json).map_err(|e| output_error(e.to_string()))
}
