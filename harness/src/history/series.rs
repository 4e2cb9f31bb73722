//! Series over commits from the results database, one per host and metric (hosts are never
//! mixed: a number from another machine is another series), with their change points.
//!
//! Two kinds of series (`Scale`):
//! - **raw**: a point is a commit, every valid trial of it on that host, whatever the trial was
//!   for (gate, baseline, bisect, calibrate), under the workload's current definition. Trials of
//!   different commits ran at different times, so the series also draws the machine's drift
//!   (on the 2-core VM the same binary lost 23% in 90 minutes: BENCHMARKS.md, "History").
//! - **relative to a base**: a point is a commit gated against that base; each of its gate
//!   trials divided by the median of the base trials measured beside it in the same gate (same
//!   host, same night, interleaved). Drift between nights cancels, which is why the nightly
//!   measures the base every night. A series per base commit: ratios to different bases are
//!   not comparable.
//!
//! Commits are in the order of the repository's history; commits outside it (other branches)
//! are left out, because a series needs an order.

use std::collections::HashMap;
use std::fmt::Write as _;

use clap::ValueEnum;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde::Serialize;

use crate::build::git::CommitInfo;
use crate::error::HarnessError;
use crate::history::changepoint::{benjamini_hochberg, ChangePoint, Detector, FDR_LEVEL};
use crate::store::db::GateRow;
use crate::store::files::ResultStore;
use crate::store::record::TrialRecord;
use crate::trial::runner::TrialStatus;
use crate::trial::summary::{Side, GATE};
use crate::trial::workload::Workload;
use crate::verdict::acceptance;
use crate::verdict::stats::median;

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

/// What a series' values are (see the module's comment).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scale {
    /// The metric as measured.
    Raw,
    /// Each gate trial of a commit over the median of the base trials of the same gate.
    RelativeTo { base: CommitInfo },
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub workload: String,
    pub host: String,
    pub metric: Metric,
    pub scale: Scale,
    pub points: Vec<Point>,
    pub changes: Vec<Change>,
    /// Why the detector that searched this series could not find a change point whatever
    /// its values, if so (too few commits).
    pub too_short: Option<String>,
}

/// The raw series of `metric` for each host, from `records` (all trials of one workload). Only
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
            let mut points = Points::default();
            for r in records
                .iter()
                .filter(|r| r.host_fingerprint == host && counts(r, workload_hash, positions))
            {
                if let Some(v) = metric.of(r) {
                    points.add(r, v);
                }
            }
            points.into_series(
                &records[0].workload,
                host,
                metric,
                Scale::Raw,
                positions,
                detector,
            )
        })
        .collect()
}

/// The series of `metric` relative to each base commit, for each host, from `records` (all
/// trials of one workload) and the gates that measured them (`gates`, oldest first). A gate's
/// trials are the `gate-head` trials of its head and the `gate-base` trials of its base
/// recorded on its host after the host's previous gate of this workload and by its verdict.
pub fn relative_series(
    records: &[TrialRecord],
    gates: &[GateRow],
    workload_hash: &str,
    metric: Metric,
    positions: &HashMap<String, usize>,
    detector: &Detector,
) -> Vec<Series> {
    // (host, base sha) -> (base commit, points)
    let mut by_base: Vec<((&str, &str), CommitInfo, Points)> = Vec::new();
    let mut previous_gate: HashMap<&str, &str> = HashMap::new();
    let head_role = Side::Head.role(GATE);
    let base_role = Side::Base.role(GATE);
    for g in gates {
        let after = previous_gate.insert(&g.host, &g.decided_at).unwrap_or("");
        let Some(base_sha) = g.base_sha.as_deref() else {
            continue;
        };
        let of_gate = |role: &str, sha: &str| -> Vec<&TrialRecord> {
            records
                .iter()
                .filter(|r| {
                    r.role == role
                        && r.commit.sha == sha
                        && r.host_fingerprint == g.host
                        && r.recorded_at.as_str() > after
                        && r.recorded_at <= g.decided_at
                        && counts(r, workload_hash, positions)
                })
                .collect()
        };
        let bases = of_gate(&base_role, base_sha);
        let base_values: Vec<f64> = bases.iter().filter_map(|r| metric.of(r)).collect();
        if base_values.is_empty() || g.head_sha == base_sha {
            continue;
        }
        let base_commit = &bases[0].commit;
        let base_median = median(&base_values);
        let key = (g.host.as_str(), base_sha);
        let at = match by_base.iter().position(|(k, ..)| *k == key) {
            Some(at) => at,
            None => {
                by_base.push((key, base_commit.clone(), Points::default()));
                by_base.len() - 1
            }
        };
        for r in of_gate(&head_role, &g.head_sha) {
            if let Some(v) = metric.of(r) {
                by_base[at].2.add(r, v / base_median);
            }
        }
    }
    by_base
        .into_iter()
        .filter_map(|((host, _), base, points)| {
            points.into_series(
                &records.first()?.workload,
                host,
                metric,
                Scale::RelativeTo { base },
                positions,
                detector,
            )
        })
        .collect()
}

/// Whether a trial belongs in a series: valid, of the workload's current definition, of a
/// commit in this history.
fn counts(r: &TrialRecord, workload_hash: &str, positions: &HashMap<String, usize>) -> bool {
    r.workload_hash == workload_hash
        && r.status == TrialStatus::Ok
        && positions.contains_key(&r.commit.sha)
}

/// Points under construction, one per commit.
#[derive(Default)]
struct Points(HashMap<String, Point>);

impl Points {
    fn add(&mut self, r: &TrialRecord, value: f64) {
        let point = self.0.entry(r.commit.sha.clone()).or_insert_with(|| Point {
            commit: r.commit.clone(),
            values: Vec::new(),
            median: 0.0,
            first_recorded_at: r.recorded_at.clone(),
            last_recorded_at: r.recorded_at.clone(),
        });
        point.values.push(value);
        if r.recorded_at > point.last_recorded_at {
            point.last_recorded_at = r.recorded_at.clone();
        }
        if r.recorded_at < point.first_recorded_at {
            point.first_recorded_at = r.recorded_at.clone();
        }
    }

    /// The series of these points, in history order, with its change points; None without
    /// points.
    fn into_series(
        self,
        workload: &str,
        host: &str,
        metric: Metric,
        scale: Scale,
        positions: &HashMap<String, usize>,
        detector: &Detector,
    ) -> Option<Series> {
        let mut points: Vec<Point> = self.0.into_values().collect();
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
        let too_short = too_short(points.len(), detector);
        Some(Series {
            workload: workload.to_owned(),
            host: host.to_owned(),
            metric,
            scale,
            points,
            changes,
            too_short,
        })
    }
}

/// Why `detector` cannot find a change point in `n` commits whatever their values, if so.
fn too_short(n: usize, detector: &Detector) -> Option<String> {
    let needed = detector.min_groups_to_detect();
    needed.is_none_or(|needed| n < needed).then(|| {
        format!(
            "too few commits to find a change: with {n}, even a clean step has p >= {:.3} \
             (significance {}; shuffles of whole commits), {} are needed",
            detector.p_value_floor(n),
            detector.significance,
            needed.map_or("more permutations".to_owned(), |n| n.to_string())
        )
    })
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
    /// What the values are, for titles and axes.
    pub fn label(&self) -> String {
        match &self.scale {
            Scale::Raw => self.metric.label().to_owned(),
            Scale::RelativeTo { base } => format!(
                "{} relative to {} measured beside it",
                self.metric.label(),
                base.short()
            ),
        }
    }

    /// The key change points are remembered under (see `change_points_markdown`).
    pub fn key(&self) -> String {
        match &self.scale {
            Scale::Raw => self.metric.name().to_owned(),
            Scale::RelativeTo { base } => format!("{}/{}", self.metric.name(), base.sha),
        }
    }

    /// A value of this series as text: raw values in the metric's unit, ratios as a change.
    pub fn format(&self, v: f64) -> String {
        match self.scale {
            Scale::Raw => format_value(v),
            Scale::RelativeTo { .. } => format!("{:+.1}%", (v - 1.0) * 100.0),
        }
    }

    /// The newest change point (the one `bisect --from-change-point` searches).
    pub fn newest_change(&self) -> Option<&Change> {
        self.changes.iter().max_by_key(|c| c.point)
    }

    /// A markdown table of the series and the list of its change points.
    pub fn markdown(&self, commit_url: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "**{}**, host `{}`: {} commit(s), {} change point(s){}.\n",
            self.label(),
            self.host,
            self.points.len(),
            self.changes.len(),
            self.too_short
                .as_ref()
                .map(|why| format!("; {why}"))
                .unwrap_or_default()
        );
        let mut table = Table::new();
        table.load_preset(ASCII_MARKDOWN).set_header(vec![
            "commit",
            "summary",
            "trials",
            &format!("median {}", self.label()),
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
                self.format(p.median),
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

/// The series of each metric of `workload` from the store, per host: for each metric first
/// those relative to a base (drift removed), then the raw one.
pub fn load(
    store: &ResultStore,
    workload: &Workload,
    metrics: &[Metric],
    positions: &HashMap<String, usize>,
) -> Result<Vec<Series>, HarnessError> {
    let records = store.load_workload(&workload.name)?;
    let gates = store.db()?.gates(&workload.name)?;
    let hash = workload.hash();
    let detector = Detector::default();
    Ok(metrics
        .iter()
        .flat_map(|&m| {
            let mut all = relative_series(&records, &gates, &hash, m, positions, &detector);
            all.extend(series(&records, &hash, m, positions, &detector));
            all
        })
        .collect())
}

/// The change points table's header.
fn change_points_table() -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "workload",
        "metric",
        "host",
        "first commit after",
        "change",
        "q (FDR)",
        "new",
        "accepted",
    ]);
    table
}

/// A change point's q-value, flagged when it is above the false-discovery level.
fn q_cell(q: f64) -> String {
    if q <= FDR_LEVEL {
        format!("{q:.3}")
    } else {
        format!("{q:.3}, above {:.0}%: may be noise", FDR_LEVEL * 100.0)
    }
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
    let now = crate::store::files::now_rfc3339();
    let mut md = String::from(
        "## Change points over the nights

",
    );
    let _ = writeln!(
        md,
        "E-divisive means over every recorded trial of each commit, one series per host and \
         metric, {:.0}% significance (permutation test over whole commits): the series relative \
         to the base measured beside each commit (drift between nights removed) and the raw \
         one. A range is where the change may be (90% of bootstrap resamples); \
         `chronik-harness bisect --from-change-point` searches the newest one. q: the \
         Benjamini-Hochberg q-value over all {} series tested tonight (a change point above \
         {:.0}% may be one of the false ones among them). A series of fewer than 10 commits \
         cannot show a change point, and one in the newest 3 commits is rarely found \
         (BENCHMARKS.md, \"History\").\n",
        crate::history::changepoint::SIGNIFICANCE_DEFAULT * 100.0,
        series.len(),
        FDR_LEVEL * 100.0
    );
    let mut table = change_points_table();
    // One family: every change point of every series tested tonight.
    let p_values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.changes.iter().map(|c| c.p_value))
        .collect();
    let q_values = benjamini_hochberg(&p_values, series.len());
    let mut rows = 0;
    for s in series {
        let reported = db.reported_change_points(&s.workload, &s.host, &s.key())?;
        let accepted = db.acceptances(&s.workload)?;
        for c in &s.changes {
            let new = !reported.contains(&c.at.sha);
            if new && record {
                db.mark_reported(&s.workload, &s.host, &s.key(), &c.at.sha, &now)?;
            }
            rows += 1;
            table.add_row(vec![
                format!("`{}`", s.workload),
                s.label(),
                // The fingerprint holds '|', which would split a markdown table's cell.
                format!("`{}`", s.host.replace('|', "\\|")),
                format!(
                    "[`{}`]({})",
                    c.at.short(),
                    commit_url.replace("{sha}", &c.at.sha)
                ),
                describe(c),
                q_cell(q_values[rows - 1]),
                if new { "**new**".into() } else { String::new() },
                acceptance::note_for(&accepted, &c.at.sha).unwrap_or_default(),
            ]);
        }
    }
    let longest = series.iter().max_by_key(|s| s.points.len());
    if rows == 0 {
        let _ = writeln!(
            md,
            "None found (longest series: {} commit(s){}).\n",
            longest.map_or(0, |s| s.points.len()),
            longest
                .and_then(|s| s.too_short.as_ref())
                .map(|why| format!("; {why}"))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(md, "{table}\n");
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(sha: &str, host: &str, throughput: f64) -> TrialRecord {
        let mut r = crate::store::db::tests::trial(&format!("{sha}-{throughput}"), sha, throughput);
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

    fn gate_trial(sha: &str, role: &str, at: &str, throughput: f64) -> TrialRecord {
        let mut r = trial(sha, "a", throughput);
        r.id = format!("{at}-{sha}-{role}-{throughput}");
        r.role = role.into();
        r.recorded_at = at.into();
        r
    }

    fn gate(head: &str, base: &str, decided_at: &str) -> GateRow {
        GateRow {
            decided_at: decided_at.into(),
            host: "a".into(),
            head_sha: head.into(),
            base_sha: Some(base.into()),
            verdict: "pass".into(),
            report: None,
        }
    }

    #[test]
    fn the_relative_series_divides_each_gate_by_its_own_base_so_drift_cancels() {
        let positions: HashMap<String, usize> = [("b", 0), ("c1", 1), ("c2", 2)]
            .into_iter()
            .map(|(s, i)| (s.to_owned(), i))
            .collect();
        // Night 1: the machine runs at 100; night 2 at 80 (drift), and c2 is 10% faster
        // than the base beside it.
        let records = vec![
            gate_trial("c1", "gate-head", "2026-11-01T00:01:00Z", 100.0),
            gate_trial("b", "gate-base", "2026-11-01T00:02:00Z", 100.0),
            gate_trial("c1", "gate-head", "2026-11-01T00:03:00Z", 100.0),
            gate_trial("b", "gate-base", "2026-11-01T00:04:00Z", 100.0),
            gate_trial("c2", "gate-head", "2026-11-02T00:01:00Z", 88.0),
            gate_trial("b", "gate-base", "2026-11-02T00:02:00Z", 80.0),
            gate_trial("b", "gate-base", "2026-11-02T00:03:00Z", 80.0),
            // Not part of a gate: a bisect trial of c2 after the night's gate.
            gate_trial("c2", "bisect-head", "2026-11-02T00:09:00Z", 10.0),
        ];
        let gates = [
            gate("c1", "b", "2026-11-01T00:05:00Z"),
            gate("c2", "b", "2026-11-02T00:05:00Z"),
        ];
        let detector = Detector::default();
        let relative = relative_series(
            &records,
            &gates,
            "h",
            Metric::Throughput,
            &positions,
            &detector,
        );
        assert_eq!(relative.len(), 1);
        let r = &relative[0];
        assert_eq!(
            r.scale,
            Scale::RelativeTo {
                base: records[1].commit.clone()
            }
        );
        let medians: Vec<(&str, f64)> = r
            .points
            .iter()
            .map(|p| (p.commit.sha.as_str(), p.median))
            .collect();
        assert_eq!(medians, [("c1", 1.0), ("c2", 1.1)]);
        assert_eq!(r.format(1.1), "+10.0%");
        assert_eq!(r.key(), "throughput/b");
        let raw = series(&records, "h", Metric::Throughput, &positions, &detector);
        let c2 = raw[0].points.iter().find(|p| p.commit.sha == "c2").unwrap();
        assert_eq!(c2.values, [88.0, 10.0], "the raw series keeps every trial");
        assert!(r.too_short.is_some());
    }
}
