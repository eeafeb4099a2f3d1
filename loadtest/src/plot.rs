//! The plot written next to a report: latency percentiles over time (top)
//! and the latency distribution (bottom), as SVG.

use crate::report::Partial;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

const QUANTILES: [f64; 9] = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999];

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Write `path` (SVG). `start_ms` is the run's start (x axis origin).
pub fn write(path: &Path, title: &str, p: &Partial, start_ms: u64) -> Result<(), String> {
    let total = p.histogram();
    if total.is_empty() {
        return Err("no latency samples to plot".into());
    }
    let per_sec = p.timeline_histograms();
    let start_s = start_ms / 1000;
    let series = |q: f64| -> Vec<(f64, f64)> {
        per_sec.iter().map(|(s, h)| (s.saturating_sub(start_s) as f64, ms(h.value_at_quantile(q)))).collect()
    };
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(360);
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();

    // 1. Percentiles over time.
    let t_max = per_sec.keys().last().map(|s| s.saturating_sub(start_s) as f64 + 1.0).unwrap_or(1.0);
    let y_max = per_sec.values().map(|h| ms(h.max())).fold(0.0, f64::max).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{title}: latency over time"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("seconds since start").y_desc("ms").draw().map_err(err)?;
    for (q, label, color) in [(0.5, "p50", BLUE), (0.9, "p90", GREEN), (0.99, "p99", RED), (1.0, "max", BLACK)] {
        chart
            .draw_series(LineSeries::new(series(q), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;

    // 2. Distribution: latency at each percentile, x = 1 / (1 - q) on a log axis.
    let points = distribution(&total);
    let x_max = points.last().map(|p| p.0).unwrap_or(10.0) * 1.5;
    let y_max = ms(total.max()).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("{title}: latency distribution ({} samples)", total.len()), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| format!("{:.3}%", (1.0 - 1.0 / x) * 100.0))
        .y_desc("ms")
        .draw()
        .map_err(err)?;
    chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2))).map_err(err)?;
    chart.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled()))).map_err(err)?;
    root.present().map_err(|e| e.to_string())
}

fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len() as f64;
    QUANTILES
        .iter()
        // a quantile finer than the sample count says nothing
        .filter(|q| **q == 0.0 || 1.0 / (1.0 - **q) <= n)
        .map(|&q| (1.0 / (1.0 - q), ms(h.value_at_quantile(q))))
        .collect()
}
