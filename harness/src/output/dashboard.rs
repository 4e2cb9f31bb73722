//! `chronik-harness dashboard`: a static site of the results database (no server, no script
//! needed to read it; publishable as-is, e.g. on GitHub Pages), like asv's published history.
//!
//! `index.html` lists the workloads; `<workload>.html` has, per metric and host, the series
//! over commits: every trial as a dot, each commit's median joined by a line, change points as
//! a shaded range with a line at the most likely commit, gate verdicts as coloured rings. The
//! figure is an SVG drawn by plotters; over each median sits a link to the commit (and over a
//! verdict ring a link to the gate's report), placed from the chart's own coordinate mapping.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::HarnessError;
use crate::history::series::{self, Metric, Scale, Series};
use crate::store::db::{AcceptanceRow, GateRow};
use crate::store::files::ResultStore;
use crate::trial::workload::Workload;
use crate::verdict::acceptance;

const CHART_WIDTH_PX: u32 = 960;
const CHART_HEIGHT_PX: u32 = 360;
/// Side of the clickable square over a point.
const POINT_HIT_PX: i32 = 14;

pub struct DashboardInput<'a> {
    pub store: &'a ResultStore,
    pub workloads: Vec<Workload>,
    pub metrics: Vec<Metric>,
    /// Position of each commit in the repository's history (see `history`).
    pub positions: HashMap<String, usize>,
    /// Link template for a commit; `{sha}` is replaced.
    pub commit_url: String,
    /// Prefix put before a gate's stored report link (relative links are stored relative to
    /// the repository root; the default suits a dashboard written to `reports/<name>/`).
    pub report_prefix: String,
    pub out_dir: PathBuf,
}

/// What was written: per workload page, the number of points drawn (for tests and the log).
#[derive(Debug)]
pub struct Written {
    pub index: PathBuf,
    pub pages: Vec<(String, PathBuf, usize)>,
}

pub fn write(input: &DashboardInput<'_>) -> Result<Written, HarnessError> {
    std::fs::create_dir_all(&input.out_dir).map_err(|e| HarnessError::io(&input.out_dir, e))?;
    let db = input.store.db()?;
    let mut pages = Vec::new();
    let mut index_rows = String::new();
    for workload in &input.workloads {
        let series = series::load(input.store, workload, &input.metrics, &input.positions)?;
        let gates = db.gates(&workload.name)?;
        let accepted = db.acceptances(&workload.name)?;
        let file = format!("{}.html", workload.name);
        let (html, points) = workload_page(input, workload, &series, &gates, &accepted)?;
        let path = input.out_dir.join(&file);
        std::fs::write(&path, html).map_err(|e| HarnessError::io(&path, e))?;
        let commits = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
        let changes: usize = series.iter().map(|s| s.changes.len()).sum();
        let _ = writeln!(
            index_rows,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{commits}</td><td>{changes}</td><td>{}</td></tr>",
            escape(&file),
            escape(&workload.name),
            escape(&workload.description),
            gates.len()
        );
        pages.push((workload.name.clone(), path, points));
    }
    let index = input.out_dir.join("index.html");
    let body = format!(
        "<h1>Broker performance history</h1>\n<p>Every trial in the results database, per \
         workload, metric and machine. Points of one series come from one machine (its \
         fingerprint is shown) but from different days: each point's tooltip says when its \
         trials ran. Each metric is drawn twice: relative to the base commit the nightly gate \
         measured beside each commit the same night (the machine's drift between nights \
         cancels; the series to read first), and raw (what each night measured, drift \
         included). Generated {}.</p>\n<table><tr><th>workload</th><th>what</th><th>commits</th>\
         <th>change points</th><th>gate verdicts</th></tr>\n{index_rows}</table>\n",
        crate::store::files::now_rfc3339()
    );
    std::fs::write(&index, page("Broker performance history", &body))
        .map_err(|e| HarnessError::io(&index, e))?;
    Ok(Written { index, pages })
}

fn workload_page(
    input: &DashboardInput<'_>,
    workload: &Workload,
    series: &[Series],
    gates: &[GateRow],
    accepted: &[AcceptanceRow],
) -> Result<(String, usize), HarnessError> {
    let mut body = format!(
        "<p><a href=\"index.html\">all workloads</a></p>\n<h1>{}</h1>\n<p>{}</p>\n",
        escape(&workload.name),
        escape(&workload.description)
    );
    body.push_str(
        "<p class=\"legend\"><span class=\"dot\"></span> a trial &nbsp; \
         <span class=\"med\"></span> a commit's median (links to the commit) &nbsp; \
         <span class=\"ring pass\"></span> gate pass &nbsp; <span class=\"ring regression\"></span> \
         regression &nbsp; <span class=\"ring inconclusive\"></span> inconclusive &nbsp; \
         <span class=\"band\"></span> change point range (line: most likely commit) &nbsp; \
         <span class=\"rep\"></span> the gate's report</p>\n",
    );
    if series.is_empty() {
        body.push_str("<p>No valid trials of this workload on commits of this history yet.</p>\n");
    }
    let mut points = 0;
    for s in series {
        let host_gates: HashMap<&str, &GateRow> = gates
            .iter()
            .filter(|g| g.host == s.host)
            .map(|g| (g.head_sha.as_str(), g)) // the latest verdict of a commit wins
            .collect();
        let _ = writeln!(
            body,
            "<h2>{}</h2>\n<p class=\"host\">machine <code>{}</code>: {} commit(s), trials from {} to {}</p>",
            escape(&s.label()),
            escape(&s.host),
            s.points.len(),
            escape(s.points.iter().map(|p| p.first_recorded_at.as_str()).min().unwrap_or("-")),
            escape(s.points.iter().map(|p| p.last_recorded_at.as_str()).max().unwrap_or("-")),
        );
        body.push_str(&chart(input, s, &host_gates, accepted)?);
        if let Some(why) = &s.too_short {
            let _ = writeln!(body, "<p class=\"host\">{}</p>", escape(why));
        }
        points += s.points.len();
        changes_table(&mut body, input, workload, s);
    }
    accepted_table(&mut body, input, accepted);
    Ok((page(&workload.name, &body), points))
}

/// A series' change points, each with the bisect command that searches it.
fn changes_table(body: &mut String, input: &DashboardInput<'_>, workload: &Workload, s: &Series) {
    if !s.changes.is_empty() {
        body.push_str(
            "<table><tr><th>change</th><th>most likely first commit</th><th>bisect</th></tr>\n",
        );
        for c in &s.changes {
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td><a href=\"{}\">{}</a> {}</td><td><code>chronik-harness bisect --good {} --bad {} --workload {}</code></td></tr>",
                escape(&series::describe(c)),
                escape(&input.commit_url.replace("{sha}", &c.at.sha)),
                escape(c.at.short()),
                escape(&c.at.summary),
                c.good.short(),
                c.bad.short(),
                escape(&workload.name),
            );
        }
        body.push_str("</table>\n");
    }
}

/// The accepted regressions of the workload: who accepted what, when and why.
fn accepted_table(body: &mut String, input: &DashboardInput<'_>, accepted: &[AcceptanceRow]) {
    if !accepted.is_empty() {
        body.push_str(
            "<h2>Accepted regressions</h2>\n<p>Gates measure against the newest accepted commit \
             before their head.</p>\n<table><tr><th>commit</th><th>metric</th><th>by</th>\
             <th>when</th><th>why</th></tr>\n",
        );
        for a in accepted {
            let _ = writeln!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&input.commit_url.replace("{sha}", &a.commit_sha)),
                escape(&a.commit_sha[..a.commit_sha.len().min(10)]),
                escape(&a.metric),
                escape(&a.accepted_by),
                escape(&a.accepted_at),
                escape(&a.reason),
            );
        }
        body.push_str("</table>\n");
    }
}

fn plot_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Infra(format!("drawing the dashboard: {e}"))
}

/// The SVG figure of one series with its link overlay.
/// The chart's drawing area: commits on x (0, 1, 2, ...), the metric on y.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn chart(
    input: &DashboardInput<'_>,
    s: &Series,
    gates: &HashMap<&str, &GateRow>,
    accepted: &[AcceptanceRow],
) -> Result<String, HarnessError> {
    let n = s.points.len();
    let (y_min, y_max) = y_range(s);
    let mut svg = String::new();
    let overlay;
    {
        let root = SVGBackend::with_string(&mut svg, (CHART_WIDTH_PX, CHART_HEIGHT_PX))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let labels: Vec<String> = s
            .points
            .iter()
            .map(|p| p.commit.short()[..7].to_owned())
            .collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y_min..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_labels(n.min(16))
            .x_label_formatter(&|x| crate::output::plots::commit_label(&labels, *x))
            .y_desc(s.label())
            .y_label_formatter(&|y| s.format(*y))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()
            .map_err(plot_err)?;
        draw_changes(&mut chart, s, (y_min, y_max))?;
        draw_points(&mut chart, s, gates)?;
        overlay = point_links(&chart, input, s, gates, accepted);
        root.present().map_err(plot_err)?;
    }
    Ok(format!(
        "<div class=\"chart\" style=\"width:{CHART_WIDTH_PX}px;height:{CHART_HEIGHT_PX}px\">\n{svg}\n{overlay}</div>\n"
    ))
}

/// A raw axis starts at zero, so a drop looks its size; ratios sit around 1 (the base).
fn y_range(s: &Series) -> (f64, f64) {
    let all: Vec<f64> = s
        .points
        .iter()
        .flat_map(|p| p.values.iter().copied())
        .collect();
    let high = all.iter().copied().fold(0.0, f64::max);
    match s.scale {
        Scale::Raw => (0.0, high * 1.1 + 1e-9),
        Scale::RelativeTo { .. } => {
            let low = all.iter().copied().fold(1.0, f64::min);
            (low - 0.05, high.max(1.0) + 0.05)
        }
    }
}

/// Each change point: a band over the commits between the last one surely before the change
/// and the first one surely after it, and a dashed line before the most likely one.
fn draw_changes(
    chart: &mut Chart<'_, '_>,
    s: &Series,
    (y_min, y_max): (f64, f64),
) -> Result<(), HarnessError> {
    let n = s.points.len();
    for c in &s.changes {
        let position = |sha: &str| s.points.iter().position(|p| p.commit.sha == sha);
        let (lo, hi) = (
            position(&c.good.sha).unwrap_or(0) as f64,
            position(&c.bad.sha).unwrap_or(n - 1) as f64,
        );
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(lo, y_min), (hi, y_max)],
                RGBColor(214, 39, 40).mix(0.10).filled(),
            )))
            .map_err(plot_err)?;
        let x = c.point as f64 - 0.5;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, y_min), (x, y_max)],
                6,
                4,
                RGBColor(214, 39, 40).into(),
            ))
            .map_err(plot_err)?;
    }
    if let Scale::RelativeTo { .. } = s.scale {
        chart
            .draw_series(LineSeries::new(
                vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
                RGBColor(90, 90, 90).stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Every trial as a grey dot, the medians joined in blue, a gate's verdict as a ring.
fn draw_points(
    chart: &mut Chart<'_, '_>,
    s: &Series,
    gates: &HashMap<&str, &GateRow>,
) -> Result<(), HarnessError> {
    let trials = s
        .points
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.values.iter().map(move |v| (i as f64, *v)));
    chart
        .draw_series(trials.map(|p| Circle::new(p, 2, RGBColor(150, 150, 150).filled())))
        .map_err(plot_err)?;
    let medians: Vec<(f64, f64)> = s
        .points
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f64, p.median))
        .collect();
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(medians.clone(), &blue))
        .map_err(plot_err)?;
    chart
        .draw_series(medians.iter().map(|p| Circle::new(*p, 4, blue.filled())))
        .map_err(plot_err)?;
    for (i, p) in s.points.iter().enumerate() {
        let Some(g) = gates.get(p.commit.sha.as_str()) else {
            continue;
        };
        chart
            .draw_series(std::iter::once(Circle::new(
                (i as f64, p.median),
                8,
                verdict_color(&g.verdict).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// The HTML links laid over the SVG: one per median (to the commit, its figures as the
/// title), one per gate ring (to the gate's report), placed by the chart's own mapping.
fn point_links(
    chart: &Chart<'_, '_>,
    input: &DashboardInput<'_>,
    s: &Series,
    gates: &HashMap<&str, &GateRow>,
    accepted: &[AcceptanceRow],
) -> String {
    let mut overlay = String::new();
    for (i, p) in s.points.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64, p.median));
        let gate = gates.get(p.commit.sha.as_str());
        let title = format!(
            "{} {}\nmedian {} ({}) of {} trial(s), recorded {} to {}{}",
            p.commit.short(),
            p.commit.summary,
            s.format(p.median),
            s.label(),
            p.values.len(),
            p.first_recorded_at,
            p.last_recorded_at,
            gate.map(|g| format!("\ngate: {} ({})", g.verdict, g.decided_at))
                .unwrap_or_default()
                + &acceptance::note_for(accepted, &p.commit.sha)
                    .map(|n| format!("\n{n}"))
                    .unwrap_or_default()
        );
        let _ = writeln!(
            overlay,
            "<a class=\"pt\" style=\"left:{}px;top:{}px\" href=\"{}\" title=\"{}\"></a>",
            x - POINT_HIT_PX / 2,
            y - POINT_HIT_PX / 2,
            escape(&input.commit_url.replace("{sha}", &p.commit.sha)),
            escape(&title)
        );
        if let Some(report) = gate.and_then(|g| g.report.as_deref()) {
            let _ = writeln!(
                overlay,
                "<a class=\"gate\" style=\"left:{}px;top:{}px\" href=\"{}\" title=\"gate report\"></a>",
                x + POINT_HIT_PX / 2,
                y - POINT_HIT_PX,
                escape(&report_link(&input.report_prefix, report)),
            );
        }
    }
    overlay
}

fn report_link(prefix: &str, report: &str) -> String {
    if report.contains("://") || report.starts_with('/') {
        report.to_owned()
    } else {
        format!("{prefix}{report}")
    }
}

fn verdict_color(verdict: &str) -> RGBColor {
    match verdict {
        "pass" => RGBColor(44, 160, 44),
        "regression" => RGBColor(214, 39, 40),
        "inconclusive" => RGBColor(255, 160, 14),
        _ => RGBColor(90, 90, 90),
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{STYLE}</style></head>\n<body>\n{body}\n{SCRIPT}</body></html>\n",
        escape(title)
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}
.chart{position:relative}.chart svg{position:absolute;left:0;top:0}
a.pt,a.gate{position:absolute;width:14px;height:14px;border-radius:7px}
a.pt:hover{outline:2px solid #1f77b4}a.gate{width:9px;height:9px;border:1px solid #555;border-radius:2px;background:#fff}
.host{color:#555;font-size:14px}.legend span{display:inline-block;vertical-align:middle}
.dot{width:5px;height:5px;border-radius:3px;background:#969696}.med{width:9px;height:9px;border-radius:5px;background:#1f77b4}
.ring{width:12px;height:12px;border-radius:7px;border:2px solid}.pass{border-color:#2ca02c}.regression{border-color:#d62728}
.inconclusive{border-color:#ffa00e}.band{width:18px;height:10px;background:rgba(214,39,40,.12)}
.rep{width:9px;height:9px;border:1px solid #555;border-radius:2px}
";

/// Not needed to read the page: it counts the point links that are laid out and visible, so a
/// headless browser (the dashboard's test) can check what a reader sees.
const SCRIPT: &str = "<script>
addEventListener('load', function () {
  var shown = 0;
  document.querySelectorAll('a.pt').forEach(function (a) {
    var r = a.getBoundingClientRect();
    if (r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0) { shown += 1; }
  });
  document.body.setAttribute('data-points-shown', String(shown));
});
</script>
";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Default `report_prefix`: from `reports/<name>/` back to the repository root.
pub const REPORT_PREFIX_DEFAULT: &str = "../../";
