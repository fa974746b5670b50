//! Load generators shared by planewire and the raw floor: a closed loop (each worker sends
//! its next request when the last one is answered) and an open loop (requests leave on a
//! fixed schedule whatever the server does).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::BenchError;
use super::latency::{Recorder, SharedHistogram};

/// One client's way of doing one round trip: send a request, wait for its last response.
pub(crate) trait Caller: Send + 'static {
    fn call(&mut self) -> impl Future<Output = Result<(), BenchError>> + Send;
}

/// Warm-up and measurement time of every run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
    /// Closed-loop runs are cut into this many slices, taken by turns with the floor's.
    pub slices: u32,
}

impl Timing {
    /// The warm-up and measurement of one slice.
    pub fn slice(self) -> Self {
        Self {
            warmup: self.warmup / self.slices,
            measure: self.measure / self.slices,
            slices: 1,
        }
    }
}

/// Round-trip latencies (nanoseconds) of one run, and how long it took.
pub(crate) struct Measurement {
    pub histogram: Histogram<u64>,
    pub elapsed: Duration,
    /// Round trips made, warm-up included: what the run's CPU time was spent on.
    pub calls: u64,
}

impl Measurement {
    pub fn rps(&self) -> f64 {
        self.histogram.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Adds another run of the same system and cell to this one.
    pub fn merge(&mut self, other: &Measurement) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds always add");
        self.elapsed += other.elapsed;
        self.calls += other.calls;
    }
}

/// Latencies from 1 ns to 100 s at 3 significant digits, one histogram per run.
const MAX_LATENCY_NANOS: u64 = 100_000_000_000;

fn record(recorder: &mut Recorder, latency: Duration) {
    recorder.record(latency.as_nanos().try_into().unwrap_or(u64::MAX));
}

/// Every caller loops send → wait: warm-up, then the round trips that start inside the
/// measurement window are recorded. The run's time counts from the first recorded round
/// trip, not from the end of the warm-up: a warm-up call still running then would
/// otherwise count as idle time, a bias as large as one call per run (at 32 MiB, tens
/// of milliseconds of a one-second slice).
pub(crate) async fn closed_loop<C: Caller>(
    callers: Vec<C>,
    timing: Timing,
) -> Result<Measurement, BenchError> {
    let warm_end = Instant::now() + timing.warmup;
    let end = warm_end + timing.measure;
    let shared = SharedHistogram::new(MAX_LATENCY_NANOS);
    let workers = callers.into_iter().map(|mut caller| {
        let mut recorder = shared.recorder();
        async move {
            let mut calls = 0;
            while Instant::now() < warm_end {
                caller.call().await?;
                calls += 1;
            }
            let started = Instant::now();
            loop {
                let start = Instant::now();
                if start >= end {
                    return Ok((started, calls));
                }
                caller.call().await?;
                calls += 1;
                record(&mut recorder, start.elapsed());
            }
        }
    });
    collect(workers, shared.clone()).await
}

/// Requests are scheduled at `rate` per second from a shared clock; each caller takes the
/// next slot when it is free. Latency counts from the *scheduled* time whenever every
/// caller was still busy when the slot came due, so a stall delays the requests queued
/// behind it and shows in their latency instead of silently lowering the send rate
/// (coordinated omission). When a caller was idle and only tokio's millisecond timer
/// woke it late, latency counts from the actual send: that lateness is the harness's, not
/// the server's, and would otherwise add up to 1 ms to every sample.
pub(crate) async fn open_loop<C: Caller>(
    callers: Vec<C>,
    rate: f64,
    timing: Timing,
) -> Result<Measurement, BenchError> {
    let t0 = Instant::now();
    let warm_end = t0 + timing.warmup;
    let end = warm_end + timing.measure;
    let next_slot = Arc::new(AtomicU64::new(0));
    let shared = SharedHistogram::new(MAX_LATENCY_NANOS);
    let workers = callers.into_iter().map(|mut caller| {
        let next_slot = Arc::clone(&next_slot);
        let mut recorder = shared.recorder();
        async move {
            let mut calls = 0;
            loop {
                let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                let scheduled = t0 + Duration::from_secs_f64(slot as f64 / rate);
                if scheduled >= end {
                    return Ok((warm_end, calls));
                }
                let start = if Instant::now() >= scheduled {
                    scheduled
                } else {
                    tokio::time::sleep_until(scheduled).await;
                    Instant::now()
                };
                caller.call().await?;
                calls += 1;
                if scheduled >= warm_end {
                    record(&mut recorder, start.elapsed());
                }
            }
        }
    });
    collect(workers, shared.clone()).await
}

/// Runs the workers as tasks (so they spread over the runtime's threads); they record
/// into `shared`, and the first error stops the run. Each worker returns when its
/// recording began and how many calls it made; the run lasts from the earliest such
/// start until the last worker is done (and has dropped its recorder, adding what it
/// held).
async fn collect<W>(
    workers: impl Iterator<Item = W>,
    shared: SharedHistogram,
) -> Result<Measurement, BenchError>
where
    W: Future<Output = Result<(Instant, u64), BenchError>> + Send + 'static,
{
    let mut tasks: JoinSet<_> = workers.collect();
    let mut started: Option<Instant> = None;
    let mut calls = 0;
    while let Some(joined) = tasks.join_next().await {
        let (worker_started, worker_calls) =
            joined.map_err(|e| BenchError::Worker(e.to_string()))??;
        started = Some(started.map_or(worker_started, |s| s.min(worker_started)));
        calls += worker_calls;
    }
    Ok(Measurement {
        histogram: shared.snapshot(),
        elapsed: started.map_or(Duration::ZERO, |started| started.elapsed()),
        calls,
    })
}
