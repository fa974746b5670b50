//! What is measured: the cells of the benchmark and how long each run lasts.

use std::time::Duration;

use super::driver::Timing;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Default offered rate of an open-loop run, as a fraction of planewire's closed-loop rate
/// in the same cell: a heavily loaded system that should still keep up.
pub(crate) const DEFAULT_OPEN_LOAD: f64 = 0.75;

/// `--open-load`: a positive, finite fraction (above 1 overloads on purpose).
pub(crate) fn parse_open_load(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(load) if load > 0.0 && load.is_finite() => Ok(load),
        _ => Err("expected a positive fraction such as 0.75".to_owned()),
    }
}

/// One workload: `concurrency` requests of `payload` bytes in flight, each answered by
/// `responses` echoes of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub payload: usize,
    pub concurrency: usize,
    pub responses: usize,
    /// Whether peak RSS is recorded while planewire runs this cell.
    pub track_rss: bool,
}

/// The cells of issues #4 and #13, in order. `largest_payload` is the biggest unary request the
/// default `DYN_TCP_MAX_MESSAGE_SIZE` carries (32 MiB less the frame header and path).
pub(crate) fn plan(largest_payload: usize) -> Vec<Cell> {
    let cell = |payload, concurrency, responses| Cell {
        payload,
        concurrency,
        responses,
        track_rss: payload == largest_payload,
    };
    let mut cells: Vec<Cell> = [64, KIB, 64 * KIB, MIB, largest_payload]
        .into_iter()
        .map(|payload| cell(payload, 1, 1))
        .collect();
    cells.extend([
        cell(64, 64, 1),
        cell(KIB, 64, 1),
        cell(64 * KIB, 64, 1),
        cell(MIB, 64, 1),
        cell(64, 1, 16),
    ]);
    cells
}

/// `--cell PAYLOAD:CONCURRENCY:RESPONSES` (sizes as `64`, `1K`, `64K`, `1M`): one cell
/// of the plan, to measure it alone.
pub(crate) fn parse_cell(text: &str) -> Result<Cell, String> {
    const USAGE: &str = "expected PAYLOAD:CONCURRENCY:RESPONSES, such as 64:1:1 or 64K:64:1";
    let mut parts = text.split(':');
    let (Some(payload), Some(concurrency), Some(responses), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(USAGE.to_owned());
    };
    let (digits, unit) = match payload.as_bytes().last() {
        Some(b'K' | b'k') => (&payload[..payload.len() - 1], KIB),
        Some(b'M' | b'm') => (&payload[..payload.len() - 1], MIB),
        _ => (payload, 1),
    };
    let number = |text: &str| text.parse::<usize>().ok().filter(|n| *n > 0);
    match (number(digits), number(concurrency), number(responses)) {
        (Some(size), Some(concurrency), Some(responses)) => Ok(Cell {
            payload: size.saturating_mul(unit),
            concurrency,
            responses,
            track_rss: false,
        }),
        _ => Err(USAGE.to_owned()),
    }
}

/// The planned cells `wanted` names (payloads above `largest_payload` are cut to it), or
/// the whole plan when it names none.
pub(crate) fn select(largest_payload: usize, wanted: &[Cell]) -> Vec<Cell> {
    let plan = plan(largest_payload);
    if wanted.is_empty() {
        return plan;
    }
    plan.into_iter()
        .filter(|cell| {
            wanted.iter().any(|w| {
                w.payload.min(largest_payload) == cell.payload
                    && w.concurrency == cell.concurrency
                    && w.responses == cell.responses
            })
        })
        .collect()
}

/// The response counts the cells use: the server side has an echo endpoint for each.
pub(crate) fn response_counts() -> Vec<usize> {
    let mut counts: Vec<usize> = plan(0).iter().map(|c| c.responses).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Quick mode keeps the whole run under 20 s on two cores; full mode under 3 minutes.
pub(crate) fn timing(quick: bool) -> Timing {
    if quick {
        Timing {
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(350),
            slices: 2,
        }
    } else {
        Timing {
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(4),
            slices: 4,
        }
    }
}

/// `64 B`, `1 KiB`, `32 MiB-42`: exact sizes, short. A size just under a whole unit is
/// written as that unit less the difference in bytes.
pub(crate) fn size_label(bytes: usize) -> String {
    for (unit, name) in [(MIB, "MiB"), (KIB, "KiB")] {
        let rounded_up = bytes.div_ceil(unit) * unit;
        if bytes >= unit && rounded_up - bytes < unit / 16 {
            let short = rounded_up - bytes;
            return match short {
                0 => format!("{} {name}", bytes / unit),
                _ => format!("{} {name}-{short}", rounded_up / unit),
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_labelled_exactly() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(KIB), "1 KiB");
        assert_eq!(size_label(64 * KIB), "64 KiB");
        assert_eq!(size_label(32 * MIB - 42), "32 MiB-42");
        assert_eq!(size_label(1500), "1500 B");
    }

    #[test]
    fn open_load_must_be_a_positive_fraction() {
        assert_eq!(parse_open_load("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "most"] {
            assert!(parse_open_load(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_server_side_has_an_endpoint_for_every_response_count() {
        assert_eq!(response_counts(), [1, 16]);
    }

    #[test]
    fn cells_are_picked_by_name() {
        let largest = 32 * MIB - 42;
        let picked: Vec<Cell> = ["64:1:1", "32M:1:1", "64k:64:1"]
            .iter()
            .map(|text| parse_cell(text).unwrap())
            .collect();
        let cells = select(largest, &picked);
        let named: Vec<_> = cells.iter().map(|c| (c.payload, c.concurrency)).collect();
        assert_eq!(named, [(64, 1), (largest, 1), (64 * KIB, 64)]);
        assert!(
            cells[1].track_rss,
            "the largest cell keeps its RSS tracking"
        );
        assert_eq!(select(largest, &[]).len(), plan(largest).len());
        for bad in ["64", "64:1", "0:1:1", "64:x:1", "64:1:1:1", "1G:1:1"] {
            assert!(parse_cell(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_largest_cell_tracks_rss() {
        let cells = plan(32 * MIB - 42);
        assert_eq!(cells.len(), 10);
        let tracked: Vec<_> = cells.iter().filter(|c| c.track_rss).collect();
        assert_eq!(tracked.len(), 1);
        assert_eq!(tracked[0].payload, 32 * MIB - 42);
    }
}
