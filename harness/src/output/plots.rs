//! SVG figures with plotters (text as SVG elements: no font library needed). Every figure's
//! caption names the machine, the workload and the number of trials.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::error::HarnessError;

const WIDTH_PX: u32 = 900;
const HEIGHT_PX: u32 = 420;
const SERIES_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err(path: &Path) -> impl Fn(Box<dyn std::error::Error + '_>) -> HarnessError + '_ {
    move |e| HarnessError::Infra(format!("drawing {}: {e}", path.display()))
}

type Canvas<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A white SVG canvas with the title on top and the caption (machine, workload, trials) below;
/// returns the area left for the chart.
fn canvas<'a>(path: &'a Path, title: &str, caption: &str) -> Result<Canvas<'a>, HarnessError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(Box::new(x)))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|x| e(Box::new(x)))?;
    let (chart_area, caption_area) = root.split_vertically(HEIGHT_PX - 60);
    caption_area
        .draw_text(
            caption,
            &("sans-serif", 12).into_text_style(&caption_area),
            (10, 20),
        )
        .map_err(|x| e(Box::new(x)))?;
    Ok(chart_area)
}

/// One value per commit, in history order, with optional reference lines.
pub struct CommitSeries<'a> {
    pub labels: &'a [String],
    pub values: &'a [Option<f64>],
    pub y_label: &'a str,
    /// (label, value) horizontal lines: the baseline and the absolute limit.
    pub lines: &'a [(String, f64)],
}

/// The label of a commit axis (commits at 0, 1, 2, ...) at x: empty between commits.
pub fn commit_label(labels: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 {
        labels.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

pub fn per_commit(
    path: &Path,
    title: &str,
    caption: &str,
    series: &CommitSeries<'_>,
) -> Result<(), HarnessError> {
    let e = plot_err(path);
    let chart_area = canvas(path, title, caption)?;
    let known: Vec<f64> = series
        .values
        .iter()
        .flatten()
        .copied()
        .chain(series.lines.iter().map(|l| l.1))
        .collect();
    let y_max = known.iter().copied().fold(0.0, f64::max) * 1.15 + 1e-9;
    let n = series.labels.len().max(1);
    let mut chart = ChartBuilder::on(&chart_area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..y_max)
        .map_err(|x| e(Box::new(x)))?;
    let labels = series.labels.to_vec();
    chart
        .configure_mesh()
        .x_labels(n.min(20))
        .x_label_formatter(&|x| commit_label(&labels, *x))
        .y_desc(series.y_label)
        .draw()
        .map_err(|x| e(Box::new(x)))?;
    let points: Vec<(f64, f64)> = series
        .values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), &SERIES_COLORS[0]))
        .map_err(|x| e(Box::new(x)))?
        .label(series.y_label)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SERIES_COLORS[0]));
    chart
        .draw_series(
            points
                .iter()
                .map(|p| Circle::new(*p, 4, SERIES_COLORS[0].filled())),
        )
        .map_err(|x| e(Box::new(x)))?;
    for (i, (label, value)) in series.lines.iter().enumerate() {
        let color = SERIES_COLORS[(i + 1) % SERIES_COLORS.len()];
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, *value), (n as f64 - 0.5, *value)],
                6,
                4,
                color.into(),
            ))
            .map_err(|x| e(Box::new(x)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(Box::new(x)))?;
    chart_area.present().map_err(|x| e(Box::new(x)))?;
    Ok(())
}

/// Latency by percentile (x: "nines", log scale) for several merged histograms.
pub fn percentile_curves(
    path: &Path,
    title: &str,
    caption: &str,
    curves: &[(String, Histogram<u64>)],
) -> Result<(), HarnessError> {
    let e = plot_err(path);
    let chart_area = canvas(path, title, caption)?;
    let (data, (y_min, y_max)) = percentile_points(curves);
    let mut chart = ChartBuilder::on(&chart_area)
        .margin(10)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (2.0f64..10_000.0).log_scale(),
            (y_min..y_max * 1.3).log_scale(),
        )
        .map_err(|x| e(Box::new(x)))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 1.0 / x);
            format!(
                "p{}",
                format!("{q:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
            )
        })
        .y_desc("latency (ms)")
        .draw()
        .map_err(|x| e(Box::new(x)))?;
    for (i, (name, pts)) in data.into_iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|x| e(Box::new(x)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(Box::new(x)))?;
    chart_area.present().map_err(|x| e(Box::new(x)))?;
    Ok(())
}

/// A curve's name and its (x, y) points.
type NamedCurve = (String, Vec<(f64, f64)>);

/// Each curve's (x, latency ms) points, x = 1 / (1 - q): 2 = p50, 10 = p90, 100 = p99,
/// 1000 = p99.9, 10000 = p99.99; and the latency range all curves span.
fn percentile_points(curves: &[(String, Histogram<u64>)]) -> (Vec<NamedCurve>, (f64, f64)) {
    let quantiles: Vec<f64> = (0..=80)
        .map(|i| 1.0 - 10f64.powf(-(0.3 + i as f64 * 0.05)))
        .filter(|q| *q <= 0.9999)
        .collect();
    let mut y_max: f64 = 0.01;
    let mut y_min: f64 = f64::MAX;
    let data: Vec<NamedCurve> = curves
        .iter()
        .map(|(name, h)| {
            let pts: Vec<(f64, f64)> = quantiles
                .iter()
                .map(|q| {
                    (
                        1.0 / (1.0 - q),
                        (h.value_at_quantile(*q) as f64 / 1000.0).max(0.001),
                    )
                })
                .collect();
            for p in &pts {
                y_max = y_max.max(p.1);
                y_min = y_min.min(p.1);
            }
            (name.clone(), pts)
        })
        .collect();
    let y_min = if y_min == f64::MAX {
        0.001
    } else {
        y_min * 0.8
    };
    (data, (y_min, y_max))
}

/// Messages per second through each run (a throttling pattern slopes down).
pub fn per_second(
    path: &Path,
    title: &str,
    caption: &str,
    runs: &[(String, Vec<u64>)],
) -> Result<(), HarnessError> {
    let e = plot_err(path);
    let chart_area = canvas(path, title, caption)?;
    let x_max = runs.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1) as f64;
    let y_max = runs
        .iter()
        .flat_map(|r| r.1.iter())
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(&chart_area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|x| e(Box::new(x)))?;
    chart
        .configure_mesh()
        .x_desc("second of the measured window")
        .y_desc("acked msg/s")
        .draw()
        .map_err(|x| e(Box::new(x)))?;
    for (i, (name, series)) in runs.iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
        let pts: Vec<(f64, f64)> = series
            .iter()
            .enumerate()
            .map(|(s, v)| (s as f64 + 0.5, *v as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, &color))
            .map_err(|x| e(Box::new(x)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(Box::new(x)))?;
    chart_area.present().map_err(|x| e(Box::new(x)))?;
    Ok(())
}
