//! The PNG: one panel per cell and mode, planewire's latency-by-percentile curve against
//! the raw floor's. The percentile axis is HdrHistogram's: x = 1 / (1 - percentile) on a
//! log scale, so 90%, 99%, 99.9% … are evenly spaced and the tail gets room.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::BenchError;
use super::report::{Run, System, workload_label};

/// DejaVu Sans (Bitstream Vera license, see `assets/`): plotters' own text rendering
/// would need the system's fontconfig and FreeType.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const PANEL: (u32, u32) = (760, 400);
const TITLE_HEIGHT: u32 = 60;
const PLANEWIRE: RGBColor = RGBColor(31, 90, 200);
const FLOOR: RGBColor = RGBColor(210, 70, 40);

/// Draws every (floor, planewire) pair of `runs` into a PNG at `path`.
pub(crate) fn draw(path: &Path, runs: &[Run]) -> Result<(), BenchError> {
    let failed = |reason: String| BenchError::Output {
        path: path.to_owned(),
        reason,
    };
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| failed("the embedded font is not a valid TrueType file".to_owned()))?;
    let pairs: Vec<&[Run]> = runs.chunks(2).collect();
    let rows = pairs.len().div_ceil(2) as u32;
    let size = (PANEL.0 * 2, PANEL.1 * rows + TITLE_HEIGHT);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(e.to_string()))?;
    let body = root
        .titled(
            "planewire vs raw TCP floor: round-trip latency by percentile (same run, 127.0.0.1)",
            (FAMILY, 28),
        )
        .map_err(|e| failed(e.to_string()))?;
    for (area, pair) in body.split_evenly((rows as usize, 2)).iter().zip(pairs) {
        draw_panel(area, pair).map_err(|e| failed(e.to_string()))?;
    }
    root.present().map_err(|e| failed(e.to_string()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult<'a> =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

fn draw_panel<'a>(area: &Area<'a>, pair: &[Run]) -> DrawResult<'a> {
    let mut curves: Vec<(System, Vec<(f64, f64)>)> = pair
        .iter()
        .map(|run| (run.result.system, curve(&run.histogram)))
        .collect();
    // Milliseconds when even the fastest sample took one, so tick labels stay short.
    let fastest = curves
        .iter()
        .flat_map(|(_, c)| c)
        .map(|p| p.1)
        .fold(f64::MAX, f64::min);
    let unit = if fastest >= 1_000.0 { "ms" } else { "µs" };
    if unit == "ms" {
        for point in curves.iter_mut().flat_map(|(_, c)| c) {
            point.1 /= 1e3;
        }
    }
    let points = curves.iter().flat_map(|(_, c)| c);
    let x_max = points.clone().map(|p| p.0).fold(100.0, f64::max);
    // Above zero for the log scale; no latency is below a nanosecond anyway.
    let y_min = points
        .clone()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .max(1e-3);
    let y_max = points.map(|p| p.1).fold(y_min, f64::max);
    let (y_low, y_high) = (y_min * 0.8, y_max * 1.25);
    let mut chart = ChartBuilder::on(area)
        .caption(workload_label(&pair[0].result), (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0..x_max * 1.05).log_scale(),
            (y_low..y_high)
                .log_scale()
                .with_key_points(log_ticks(y_low, y_high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(format!("latency ({unit})"))
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    for (system, points) in curves {
        let (color, name) = match system {
            System::Planewire => (PLANEWIRE, "planewire"),
            System::PlanewireNats => (PLANEWIRE, "planewire over NATS"),
            System::PlanewireHttp => (PLANEWIRE, "planewire over HTTP/2"),
            System::RawTcp => (FLOOR, "raw TCP floor"),
        };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// (1 / (1 - quantile), latency in µs) at HdrHistogram's quantile steps. The maximum is
/// placed at x = sample count: no finer quantile can be told apart with that many samples.
fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    let samples = histogram.len().max(1) as f64;
    histogram
        .iter_quantiles(4)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 {
                samples
            } else {
                (1.0 / (1.0 - q)).min(samples)
            };
            (x, v.value_iterated_to() as f64 / 1e3)
        })
        .collect()
}

/// Latency ticks at 1, 2, 5 × 10ⁿ inside `low..=high`; only powers of ten when the range
/// spans more than three decades, so labels never crowd.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let steps: &[f64] = if high / low > 1e3 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut decade = 10f64.powf(low.log10().floor());
    let mut ticks = Vec::new();
    while decade <= high {
        ticks.extend(
            steps
                .iter()
                .map(|step| step * decade)
                .filter(|tick| (low..=high).contains(tick)),
        );
        decade *= 10.0;
    }
    ticks
}

/// 1 → "0%", 10 → "90%", 1000 → "99.9%".
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{percent:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(2.0), "50%");
    }

    #[test]
    fn latency_ticks_are_one_two_five() {
        assert_eq!(log_ticks(15.0, 700.0), [20.0, 50.0, 100.0, 200.0, 500.0]);
        assert_eq!(log_ticks(15.0, 70_000.0), [100.0, 1000.0, 10_000.0]);
    }

    #[test]
    fn curve_rises_to_the_maximum_at_the_sample_count() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let points = curve(&h);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
        let last = points.last().unwrap();
        assert_eq!(last.0, 1000.0);
        assert!((last.1 - 1000.0).abs() < 1.0, "{last:?}");
    }
}
