//! One latency histogram shared by every worker of a load generator.
//!
//! An HDR histogram with the bounds a load generator needs (nanoseconds up to minutes,
//! 3 significant digits) is a few hundred KiB; one per worker made `planewire call
//! --concurrency 8000` peak at 2.2 GB. Here each worker buffers a few samples and adds
//! them to the one histogram under a lock, so the measuring side costs one histogram
//! plus about 1 KiB per worker, at any concurrency.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// Latency percentiles in microseconds: for requests, from send to the last response;
/// for events, from publish to receipt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// Locks `m`, ignoring poisoning: a panicking worker leaves a histogram whose samples
/// are still whole, and the others go on recording.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Samples a worker holds before it takes the lock: few enough to cost nothing per
/// worker, enough that 64 busy workers rarely meet at the lock.
const BATCH: usize = 128;

/// The histogram every [`Recorder`] of one run adds to.
#[derive(Clone)]
pub struct SharedHistogram {
    inner: Arc<Mutex<Histogram<u64>>>,
}

impl SharedHistogram {
    /// Values from 1 to `max` (saturating), at 3 significant digits.
    pub fn new(max: u64) -> Self {
        let histogram = Histogram::new_with_bounds(1, max, 3).expect("bounds 1..max, 3 digits");
        Self {
            inner: Arc::new(Mutex::new(histogram)),
        }
    }

    /// A buffer for one worker; what it holds is added when it fills and when dropped.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            buffer: Vec::with_capacity(BATCH),
        }
    }

    /// The samples added so far (a worker's buffer counts once the worker is dropped).
    pub fn snapshot(&self) -> Histogram<u64> {
        lock(&self.inner).clone()
    }
}

/// One worker's side of a [`SharedHistogram`].
pub struct Recorder {
    shared: SharedHistogram,
    buffer: Vec<u64>,
}

impl Recorder {
    pub fn record(&mut self, value: u64) {
        self.buffer.push(value);
        if self.buffer.len() == BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut histogram = lock(&self.shared.inner);
        for value in self.buffer.drain(..) {
            histogram.saturating_record(value.max(1));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_of_every_worker_lands_once() {
        let shared = SharedHistogram::new(1_000_000);
        std::thread::scope(|scope| {
            for worker in 0..8u64 {
                let mut recorder = shared.recorder();
                scope.spawn(move || {
                    for i in 0..1000 {
                        recorder.record(worker * 1000 + i + 1);
                    }
                });
            }
        });
        let histogram = shared.snapshot();
        assert_eq!(histogram.len(), 8000);
        assert_eq!(histogram.min(), 1);
        assert!(
            histogram.equivalent(histogram.max(), 8000),
            "{}",
            histogram.max()
        );
    }

    #[test]
    fn zero_and_oversize_values_are_kept_at_the_bounds() {
        let shared = SharedHistogram::new(1000);
        let mut recorder = shared.recorder();
        recorder.record(0);
        recorder.record(u64::MAX);
        drop(recorder);
        let histogram = shared.snapshot();
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.min(), 1);
    }
}
