//! Series over commits from the results database, one per host and metric (hosts are never
//! mixed: a number from another machine is another series), with their change points.
//!
//! A point is a commit: every valid trial of it on that host, whatever the trial was for (gate,
//! baseline, bisect, calibrate), under the workload's current definition. Commits are in the
//! order of the repository's history; commits outside it (other branches) are left out, because
//! a series needs an order.

use std::collections::HashMap;
use std::fmt::Write as _;

use clap::ValueEnum;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde::Serialize;

use crate::changepoint::{ChangePoint, Detector};
use crate::error::HarnessError;
use crate::git::CommitInfo;
use crate::runner::TrialStatus;
use crate::stats::median;
use crate::store::ResultStore;
use crate::store::TrialRecord;
use crate::workload::Workload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Messages per second (higher is better).
    Throughput,
    /// p99 latency, ms.
    P99,
    /// p99.9 latency, ms.
    P999,
    /// Broker CPU time per message, µs.
    CpuPerMsg,
    /// Broker peak resident memory, MiB.
    PeakRss,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Throughput,
        Metric::P99,
        Metric::P999,
        Metric::CpuPerMsg,
        Metric::PeakRss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::P99 => "p99",
            Metric::P999 => "p999",
            Metric::CpuPerMsg => "cpu_per_msg",
            Metric::PeakRss => "peak_rss",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::Throughput => "msg/s",
            Metric::P99 => "p99 ms",
            Metric::P999 => "p99.9 ms",
            Metric::CpuPerMsg => "broker CPU µs/msg",
            Metric::PeakRss => "broker peak RSS MiB",
        }
    }

    /// Whether a rise is a change for the better.
    pub fn higher_is_better(self) -> bool {
        self == Metric::Throughput
    }

    pub fn of(self, r: &TrialRecord) -> Option<f64> {
        let s = r.summary.as_ref()?;
        match self {
            Metric::Throughput => Some(s.throughput),
            Metric::P99 => Some(s.p99_ms),
            Metric::P999 => s.p999_ms,
            Metric::CpuPerMsg => s.broker_cpu_us_per_msg,
            Metric::PeakRss => s.peak_rss_mib,
        }
        .filter(|v| v.is_finite() && *v > 0.0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub commit: CommitInfo,
    pub values: Vec<f64>,
    pub median: f64,
    /// When the first and the last trial of this point were recorded (RFC 3339): a point's
    /// trials may come from several nights.
    pub first_recorded_at: String,
    pub last_recorded_at: String,
}

/// A change point with its commits: the change came after `good` and by `bad` (the range
/// `bisect` searches); `at` is the single most likely first commit after it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub good: CommitInfo,
    pub at: CommitInfo,
    pub bad: CommitInfo,
    pub relative_shift: f64,
    pub p_value: f64,
    /// Index of `at` in the series' points.
    pub point: usize,
    /// Whether the change is for the worse.
    pub regression: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub workload: String,
    pub host: String,
    pub metric: Metric,
    pub points: Vec<Point>,
    pub changes: Vec<Change>,
}

/// The series of `metric` for each host, from `records` (all trials of one workload). Only
/// trials of `workload_hash` count. `positions` orders commits (see `TargetRepo::history_positions`).
pub fn series(
    records: &[TrialRecord],
    workload_hash: &str,
    metric: Metric,
    positions: &HashMap<String, usize>,
    detector: &Detector,
) -> Vec<Series> {
    let mut hosts: Vec<&str> = records
        .iter()
        .map(|r| r.host_fingerprint.as_str())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
        .into_iter()
        .filter_map(|host| {
            let mut by_commit: HashMap<&str, Point> = HashMap::new();
            for r in records.iter().filter(|r| {
                r.host_fingerprint == host
                    && r.workload_hash == workload_hash
                    && r.status == TrialStatus::Ok
                    && positions.contains_key(&r.commit.sha)
            }) {
                let Some(v) = metric.of(r) else { continue };
                let point = by_commit.entry(&r.commit.sha).or_insert_with(|| Point {
                    commit: r.commit.clone(),
                    values: Vec::new(),
                    median: 0.0,
                    first_recorded_at: r.recorded_at.clone(),
                    last_recorded_at: r.recorded_at.clone(),
                });
                point.values.push(v);
                if r.recorded_at > point.last_recorded_at {
                    point.last_recorded_at = r.recorded_at.clone();
                }
                if r.recorded_at < point.first_recorded_at {
                    point.first_recorded_at = r.recorded_at.clone();
                }
            }
            let mut points: Vec<Point> = by_commit.into_values().collect();
            if points.is_empty() {
                return None;
            }
            points.sort_by_key(|p| positions[&p.commit.sha]);
            for p in &mut points {
                p.median = median(&p.values);
            }
            let groups: Vec<Vec<f64>> = points.iter().map(|p| p.values.clone()).collect();
            let changes = detector
                .describe(&groups)
                .into_iter()
                .map(|c| change(&points, &c, metric))
                .collect();
            Some(Series {
                workload: records[0].workload.clone(),
                host: host.to_owned(),
                metric,
                points,
                changes,
            })
        })
        .collect()
}

fn change(points: &[Point], c: &ChangePoint, metric: Metric) -> Change {
    let first = (*c.range.start()).clamp(1, points.len() - 1);
    let last = (*c.range.end()).clamp(first, points.len() - 1);
    let shift = c.relative_shift();
    Change {
        good: points[first - 1].commit.clone(),
        at: points[c.group].commit.clone(),
        bad: points[last].commit.clone(),
        relative_shift: shift,
        p_value: c.p_value,
        point: c.group,
        regression: (shift < 0.0) == metric.higher_is_better(),
    }
}

impl Series {
    /// The newest change point (the one `bisect --from-change-point` searches).
    pub fn newest_change(&self) -> Option<&Change> {
        self.changes.iter().max_by_key(|c| c.point)
    }

    /// A markdown table of the series and the list of its change points.
    pub fn markdown(&self, commit_url: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "**{}**, host `{}`: {} commit(s), {} change point(s).\n",
            self.metric.label(),
            self.host,
            self.points.len(),
            self.changes.len()
        );
        let mut table = Table::new();
        table.load_preset(ASCII_MARKDOWN).set_header(vec![
            "commit",
            "summary",
            "trials",
            &format!("median {}", self.metric.label()),
            "change",
        ]);
        for (i, p) in self.points.iter().enumerate() {
            let mark = self
                .changes
                .iter()
                .find(|c| c.point == i)
                .map(describe)
                .unwrap_or_default();
            table.add_row(vec![
                format!(
                    "[`{}`]({})",
                    p.commit.short(),
                    commit_url.replace("{sha}", &p.commit.sha)
                ),
                p.commit
                    .summary
                    .chars()
                    .take(60)
                    .collect::<String>()
                    .replace('|', "\\|"),
                p.values.len().to_string(),
                format_value(p.median),
                mark,
            ]);
        }
        let _ = writeln!(md, "{table}\n");
        md
    }
}

pub fn describe(c: &Change) -> String {
    format!(
        "{:+.1}% ({}), p = {:.3}, between {} and {}",
        c.relative_shift * 100.0,
        if c.regression { "worse" } else { "better" },
        c.p_value,
        c.good.short(),
        c.bad.short()
    )
}

pub fn format_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The series of each metric of `workload` from the store, per host.
pub fn load(
    store: &ResultStore,
    workload: &Workload,
    metrics: &[Metric],
    positions: &HashMap<String, usize>,
) -> Result<Vec<Series>, HarnessError> {
    let records = store.load_workload(&workload.name)?;
    let hash = workload.hash();
    let detector = Detector::default();
    Ok(metrics
        .iter()
        .flat_map(|&m| series(&records, &hash, m, positions, &detector))
        .collect())
}

/// The change points section of a nightly report: every change point of `series`, those not
/// reported before marked new (and noted as reported when `record` is set).
pub fn change_points_markdown(
    store: &ResultStore,
    series: &[Series],
    commit_url: &str,
    record: bool,
) -> Result<String, HarnessError> {
    let mut db = store.db()?;
    let now = crate::store::now_rfc3339();
    let mut md = String::from(
        "## Change points over the nights

",
    );
    let _ = writeln!(
        md,
        "E-divisive means over every recorded trial of each commit, one series per host and \
         metric, {:.0}% significance (permutation test over whole commits). A range is where \
         the change may be (90% of bootstrap resamples); `chronik-harness bisect \
         --from-change-point` searches the newest one.\n",
        crate::changepoint::SIGNIFICANCE_DEFAULT * 100.0
    );
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "workload",
        "metric",
        "host",
        "first commit after",
        "change",
        "new",
    ]);
    let mut rows = 0;
    for s in series {
        let reported = db.reported_change_points(&s.workload, &s.host, s.metric.name())?;
        for c in &s.changes {
            let new = !reported.contains(&c.at.sha);
            if new && record {
                db.mark_reported(&s.workload, &s.host, s.metric.name(), &c.at.sha, &now)?;
            }
            rows += 1;
            table.add_row(vec![
                format!("`{}`", s.workload),
                s.metric.label().to_owned(),
                // The fingerprint holds '|', which would split a markdown table's cell.
                format!("`{}`", s.host.replace('|', "\\|")),
                format!(
                    "[`{}`]({})",
                    c.at.short(),
                    commit_url.replace("{sha}", &c.at.sha)
                ),
                describe(c),
                if new { "**new**".into() } else { String::new() },
            ]);
        }
    }
    let points: usize = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
    if rows == 0 {
        let _ = writeln!(md, "None found (longest series: {points} commit(s)).\n");
    } else {
        let _ = writeln!(md, "{table}\n");
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(sha: &str, host: &str, throughput: f64) -> TrialRecord {
        let mut r =
            crate::results_db::tests::trial(&format!("{sha}-{throughput}"), sha, throughput);
        r.host_fingerprint = host.into();
        r
    }

    #[test]
    fn hosts_are_separate_series_in_history_order_with_the_drop_located() {
        let mut records = Vec::new();
        let mut positions = HashMap::new();
        for c in 0..16 {
            let sha = format!("c{c:02}");
            positions.insert(sha.clone(), 15 - c); // recorded newest first
            let level = if c < 8 { 100.0 } else { 70.0 };
            for t in 0..4 {
                records.push(trial(&sha, "a", level * (1.0 + 0.01 * t as f64)));
            }
            records.push(trial(&sha, "b", 50.0));
        }
        records.push(trial("elsewhere", "a", 1.0));
        let all = series(
            &records,
            "h",
            Metric::Throughput,
            &positions,
            &Detector::default(),
        );
        assert_eq!(all.len(), 2);
        let a = &all[0];
        assert_eq!(a.host, "a");
        assert_eq!(
            a.points.len(),
            16,
            "the commit outside the history is left out"
        );
        assert_eq!(a.points[0].commit.sha, "c15", "oldest first");
        let change = a.newest_change().expect("the drop is found");
        assert_eq!(change.at.sha, "c07");
        assert!(
            !change.regression,
            "throughput rose from c07 on (history order)"
        );
        assert!(all[1].changes.is_empty(), "host b is flat");
    }
}
