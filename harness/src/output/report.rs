//! `chronik-harness report`: a GitHub-flavoured markdown file plus SVG figures, from the
//! results history, the stored baselines and (optionally) a gate or bisect result.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::{presets::ASCII_MARKDOWN, Table};
use hdrhistogram::Histogram;

use crate::bisect::BisectLog;
use crate::build::git::CommitInfo;
use crate::error::HarnessError;
use crate::output::plots::{self, CommitSeries};
use crate::output::render::{
    accepted_line, bisect_effect, bisect_steps_table, comparison_lines, comparison_table,
    limits_table,
};
use crate::store::files::{load_baseline, Baseline, ResultStore};
use crate::store::record::TrialRecord;
use crate::trial::runner::TrialStatus;
use crate::trial::workload::Workload;
use crate::verdict::decision::GateResult;
use crate::verdict::state::Verdict;
use crate::verdict::stats::median;

pub struct ReportInput<'a> {
    pub title: String,
    pub workloads: Vec<Workload>,
    pub store: &'a ResultStore,
    pub baselines_dir: &'a Path,
    pub base: Option<CommitInfo>,
    pub head: Option<CommitInfo>,
    pub gate: Option<Vec<GateResult>>,
    pub bisect: Option<BisectLog>,
    /// Position of each commit in the repository's history (oldest first): tables and plots
    /// follow it. Commits not in it keep the order of their first trial, after the others.
    pub history: HashMap<String, usize>,
    /// Link template for a commit; `{sha}` is replaced.
    pub commit_url: String,
    pub out_dir: PathBuf,
}

struct CommitTrials<'a> {
    commit: CommitInfo,
    records: Vec<&'a TrialRecord>,
}

impl CommitTrials<'_> {
    fn ok(&self) -> Vec<&TrialRecord> {
        self.records
            .iter()
            .copied()
            .filter(|r| r.status == TrialStatus::Ok)
            .collect()
    }
    fn median_of(&self, f: fn(&TrialRecord) -> Option<f64>) -> Option<f64> {
        let xs: Vec<f64> = self.ok().into_iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| median(&xs))
    }
    fn merged_histogram(&self) -> Option<Histogram<u64>> {
        let mut merged: Option<Histogram<u64>> = None;
        for r in self.ok() {
            let Some(h) = r
                .report
                .as_ref()
                .and_then(|rep| rep.results.histogram().ok())
            else {
                continue;
            };
            match merged.as_mut() {
                Some(m) => {
                    let _ = m.add(&h);
                }
                None => merged = Some(h),
            }
        }
        merged
    }
}

fn throughput(r: &TrialRecord) -> Option<f64> {
    r.summary.as_ref().map(|s| s.throughput)
}
fn p99(r: &TrialRecord) -> Option<f64> {
    r.summary.as_ref().map(|s| s.p99_ms)
}

/// Trials grouped by commit, in history order (see `ReportInput::history`).
fn by_commit<'a>(
    records: &'a [TrialRecord],
    history: &HashMap<String, usize>,
) -> Vec<CommitTrials<'a>> {
    let mut order: Vec<CommitTrials> = Vec::new();
    for r in records {
        match order.iter_mut().find(|c| c.commit.sha == r.commit.sha) {
            Some(c) => c.records.push(r),
            None => order.push(CommitTrials {
                commit: r.commit.clone(),
                records: vec![r],
            }),
        }
    }
    // A stable sort: commits outside the history stay in first-trial order, last.
    order.sort_by_key(|c| history.get(&c.commit.sha).copied().unwrap_or(usize::MAX));
    order
}

fn link(template: &str, commit: &CommitInfo) -> String {
    format!(
        "[`{}`]({})",
        commit.short(),
        template.replace("{sha}", &commit.sha)
    )
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Writes `report.md` and its figures into `out_dir`; returns the markdown path.
pub fn write(input: &ReportInput<'_>) -> Result<PathBuf, HarnessError> {
    std::fs::create_dir_all(&input.out_dir).map_err(|e| HarnessError::io(&input.out_dir, e))?;
    let mut md = String::new();
    let host = chronik_bench_schema::provenance::HostInfo::current();
    let _ = writeln!(md, "# {}\n", input.title);
    let _ = writeln!(
        md,
        "Generated {} by `chronik-harness report` on {} ({} cores, kernel {}). The broker and the load generator share this machine's cores.\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        host.cpu_model,
        host.cores,
        host.kernel
    );
    if let Some(gate) = &input.gate {
        write_gate(&mut md, gate, &input.commit_url);
    }
    if let Some(bisect) = &input.bisect {
        write_bisect_section(
            &mut md,
            bisect,
            &input.out_dir,
            &input.commit_url,
            &host.fingerprint(),
        )?;
    }
    for workload in &input.workloads {
        write_workload(&mut md, input, workload, &host.fingerprint())?;
    }
    let path = input.out_dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| HarnessError::io(&path, e))?;
    Ok(path)
}

/// One row per gated workload: the ratios with the intervals that decided them, the limits
/// and the verdict.
fn gate_table(gate: &[GateResult], commit_url: &str) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "workload",
        "base",
        "head",
        "pairs",
        "throughput head/base [interval]",
        "p99 head/base [interval]",
        "peak RSS head/base [interval]",
        "instructions/request head/base [every run]",
        "limits",
        "verdict",
    ]);
    for g in gate {
        let cmp = g.comparison.as_ref();
        let ratio = |m: Option<&crate::verdict::stats::MetricComparison>| {
            m.map_or("-".into(), |m| {
                format!(
                    "{:+.1}% [{:+.1}%, {:+.1}%]",
                    (m.median_ratio - 1.0) * 100.0,
                    (m.ci_low_ratio - 1.0) * 100.0,
                    (m.ci_high_ratio - 1.0) * 100.0
                )
            })
        };
        table.add_row(vec![
            g.workload.clone(),
            g.base.as_ref().map_or("-".into(), |b| link(commit_url, b)),
            link(commit_url, &g.head),
            cmp.map_or("-".into(), |c| c.pairs().to_string()),
            ratio(cmp.map(|c| &c.throughput)),
            ratio(cmp.map(|c| &c.p99)),
            ratio(cmp.and_then(|c| c.peak_rss.as_ref())),
            match cmp.and_then(|c| c.instructions.as_ref()) {
                Some(crate::verdict::instructions::TierOutcome::Compared(t)) => {
                    ratio(Some(&t.metric))
                }
                Some(crate::verdict::instructions::TierOutcome::NotMeasured { .. }) => {
                    "not measured".into()
                }
                None => "-".into(),
            },
            match crate::verdict::decision::limits_verdict(&g.limits) {
                Verdict::Pass => "pass".into(),
                Verdict::Regression => "**FAIL**".into(),
                Verdict::Inconclusive => "inconclusive".into(),
            },
            format!("**{:?}**", g.verdict),
        ]);
    }
    table
}

fn write_gate(md: &mut String, gate: &[GateResult], commit_url: &str) {
    let _ = writeln!(md, "## Gate\n");
    let table = gate_table(gate, commit_url);
    let _ = writeln!(md, "{table}\n");
    for g in gate {
        if let Some(c) = &g.comparison {
            let _ = writeln!(
                md,
                "<details><summary>{}: comparison details</summary>\n\n{}\n\n{}\n\n{}\n</details>\n",
                g.workload,
                comparison_table(c),
                escape(&c.design),
                limits_table(&g.limits)
            );
        }
        for line in g.comparison.iter().flat_map(comparison_lines) {
            let _ = writeln!(md, "{}: {}\n", g.workload, escape(&line));
        }
        for note in g
            .note
            .iter()
            .chain(&g.margins_source)
            .chain(&accepted_line(g))
        {
            let _ = writeln!(md, "> {}: {}\n", g.workload, escape(note));
        }
        if let Some(f) = &g.failure {
            let _ = writeln!(
                md,
                "> {}: {:?} side could not be measured ({:?}): {}\n",
                g.workload,
                f.side,
                f.status,
                escape(f.detail.lines().next().unwrap_or(""))
            );
        }
    }
}

/// When a commit's trials were recorded (the span, to the minute) and whether any came from
/// another host than the report's.
fn recorded_label(records: &[&TrialRecord], fingerprint: &str) -> String {
    let minute = |r: &&TrialRecord| r.recorded_at.chars().take(16).collect::<String>();
    let first = records.iter().map(minute).min().unwrap_or_default();
    let last = records.iter().map(minute).max().unwrap_or_default();
    let span = if first == last {
        first
    } else {
        format!("{first} .. {last}")
    };
    if records.iter().any(|r| r.host_fingerprint != fingerprint) {
        format!("{span} (some on another host)")
    } else {
        span
    }
}

fn write_workload(
    md: &mut String,
    input: &ReportInput<'_>,
    workload: &Workload,
    fingerprint: &str,
) -> Result<(), HarnessError> {
    let all = input.store.load_workload(&workload.name)?;
    let hash = workload.hash();
    let records: Vec<TrialRecord> = all
        .iter()
        .filter(|r| r.workload_hash == hash)
        .cloned()
        .collect();
    let _ = writeln!(
        md,
        "## Workload `{}`\n\n{}\n",
        workload.name, workload.description
    );
    if all.len() != records.len() {
        let _ = writeln!(
            md,
            "{} trial(s) recorded with an older definition of this workload are left out.\n",
            all.len() - records.len()
        );
    }
    if records.is_empty() {
        let _ = writeln!(md, "No trials recorded yet.\n");
        return Ok(());
    }
    let commits = by_commit(&records, &input.history);
    let baseline = load_baseline(input.baselines_dir, &workload.name)?;
    let table = commits_table(&commits, baseline.as_ref(), &input.commit_url, fingerprint);
    let _ = writeln!(md, "{table}\n");
    let _ = writeln!(
        md,
        "Each row is the median of that commit's stored trials, recorded at the time shown: rows \
         (and the stored baseline) were not measured side by side, so differences between them \
         include the machine's drift. Only the gate's interleaved comparison above is a verdict.\n"
    );
    if let Some(b) = &baseline {
        let _ = writeln!(
            md,
            "Stored baseline: {} recorded {} on {}{} ({} trials, median {:.0} msg/s, p99 {:.2} ms).\n",
            link(&input.commit_url, &b.commit),
            b.recorded_at,
            escape(&b.host_fingerprint),
            if b.host_fingerprint == fingerprint {
                " (this host)"
            } else {
                " (**another host**: not comparable)"
            },
            b.trials.len(),
            b.median_throughput,
            b.median_p99_ms
        );
    }
    let figures = Figures {
        input,
        workload,
        fingerprint,
        commits: &commits,
        baseline: baseline.as_ref(),
    };
    let mut names = figures.per_commit_medians()?;
    names.extend(figures.distributions()?);
    for f in names {
        let _ = writeln!(md, "![{f}]({f})\n");
    }
    Ok(())
}

/// One row per commit: its trials' medians, beside the stored baseline.
fn commits_table(
    commits: &[CommitTrials<'_>],
    baseline: Option<&Baseline>,
    commit_url: &str,
    fingerprint: &str,
) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "commit",
        "summary",
        "valid trials",
        "other",
        "recorded (UTC)",
        "median msg/s",
        "vs stored baseline",
        "median p99 ms",
        "p99.9 ms (merged)",
        "broker peak RSS MiB",
    ]);
    for c in commits {
        let mut others: BTreeMap<String, usize> = BTreeMap::new();
        for r in c.records.iter().filter(|r| r.status != TrialStatus::Ok) {
            *others
                .entry(format!("{:?}", r.status).to_lowercase())
                .or_default() += 1;
        }
        let tput = c.median_of(throughput);
        table.add_row(vec![
            link(commit_url, &c.commit),
            escape(&c.commit.summary.chars().take(60).collect::<String>()),
            c.ok().len().to_string(),
            others
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            recorded_label(&c.records, fingerprint),
            fmt_opt(tput, 0),
            match (tput, baseline) {
                (Some(t), Some(b)) => format!("{:+.1}%", (t / b.median_throughput - 1.0) * 100.0),
                _ => "-".into(),
            },
            fmt_opt(c.median_of(p99), 2),
            fmt_opt(
                c.merged_histogram()
                    .map(|h| h.value_at_quantile(0.999) as f64 / 1000.0),
                2,
            ),
            fmt_opt(
                c.median_of(|r| r.broker_peak_rss_kib.map(|k| k as f64 / 1024.0)),
                0,
            ),
        ]);
    }
    table
}

/// The figures of one workload's section, each captioned with the machine, the workload and
/// how many trials it draws.
struct Figures<'a> {
    input: &'a ReportInput<'a>,
    workload: &'a Workload,
    fingerprint: &'a str,
    commits: &'a [CommitTrials<'a>],
    baseline: Option<&'a Baseline>,
}

impl Figures<'_> {
    fn caption(&self, trials: usize) -> String {
        format!(
            "machine: {} | workload: {} ({}) | {trials} valid trials",
            self.fingerprint,
            self.workload.name,
            self.workload.hash()
        )
    }

    /// Median throughput and median p99 per commit, with the baseline and the limit drawn.
    fn per_commit_medians(&self) -> Result<Vec<String>, HarnessError> {
        let labels: Vec<String> = self
            .commits
            .iter()
            .map(|c| c.commit.short()[..7].to_owned())
            .collect();
        let limits = &self.workload.limits;
        let throughput_figure = self.per_commit(
            &labels,
            ("throughput", "median throughput", "msg/s"),
            throughput,
            self.baseline.map(|b| b.median_throughput),
            limits.throughput_min_msgs_per_s.map(|v| ("limit (min)", v)),
        )?;
        let p99_figure = self.per_commit(
            &labels,
            ("p99", "median p99", "p99 (ms)"),
            p99,
            self.baseline.map(|b| b.median_p99_ms),
            limits.p99_max_ms.map(|v| ("limit (max)", v)),
        )?;
        Ok(vec![throughput_figure, p99_figure])
    }

    /// One per-commit figure: (file suffix, title, y label), the metric, and its lines.
    fn per_commit(
        &self,
        labels: &[String],
        (suffix, title, y_label): (&str, &str, &str),
        metric: fn(&TrialRecord) -> Option<f64>,
        baseline_value: Option<f64>,
        limit: Option<(&str, f64)>,
    ) -> Result<String, HarnessError> {
        let values: Vec<Option<f64>> = self.commits.iter().map(|c| c.median_of(metric)).collect();
        let mut lines = Vec::new();
        if let (Some(b), Some(value)) = (self.baseline, baseline_value) {
            lines.push((format!("baseline {}", &b.commit.short()[..7]), value));
        }
        if let Some((label, value)) = limit {
            lines.push((label.to_owned(), value));
        }
        let trials: usize = self.commits.iter().map(|c| c.ok().len()).sum();
        let name = format!("{}-{suffix}.svg", self.workload.name);
        plots::per_commit(
            &self.input.out_dir.join(&name),
            &format!("{}: {title} per commit", self.workload.name),
            &self.caption(trials),
            &CommitSeries {
                labels,
                values: &values,
                y_label,
                lines: &lines,
            },
        )?;
        Ok(name)
    }

    /// Latency by percentile for base and head, and the head's rate through each run.
    fn distributions(&self) -> Result<Vec<String>, HarnessError> {
        let commits = self.commits;
        // Base vs head: explicit, else the baseline commit (or the first commit) vs the last one.
        let head = self
            .input
            .head
            .clone()
            .unwrap_or_else(|| commits.last().expect("non-empty").commit.clone());
        let base = self
            .input
            .base
            .clone()
            .or_else(|| self.baseline.map(|b| b.commit.clone()))
            .unwrap_or_else(|| commits[0].commit.clone());
        let pick = |c: &CommitInfo| commits.iter().find(|t| t.commit.sha == c.sha);
        let mut figures = Vec::new();
        let mut curves = Vec::new();
        let mut n = 0;
        for (role, commit) in [("base", &base), ("head", &head)] {
            let Some(t) = pick(commit) else { continue };
            let Some(h) = t.merged_histogram() else {
                continue;
            };
            let short = &commit.short()[..7];
            if curves
                .iter()
                .all(|(name, _): &(String, Histogram<u64>)| !name.contains(short))
            {
                n += t.ok().len();
                curves.push((format!("{role} {short} ({} trials)", t.ok().len()), h));
            }
        }
        if !curves.is_empty() {
            let name = format!("{}-percentiles.svg", self.workload.name);
            plots::percentile_curves(
                &self.input.out_dir.join(&name),
                &format!(
                    "{}: latency by percentile (merged histograms)",
                    self.workload.name
                ),
                &self.caption(n),
                &curves,
            )?;
            figures.push(name);
        }
        if let Some(t) = pick(&head) {
            let runs: Vec<(String, Vec<u64>)> = t
                .ok()
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    r.summary
                        .as_ref()
                        .map(|s| (format!("trial {}", i + 1), s.per_second.clone()))
                })
                .collect();
            let name = format!("{}-per-second.svg", self.workload.name);
            plots::per_second(
                &self.input.out_dir.join(&name),
                &format!(
                    "{}: rate through each run of {}",
                    self.workload.name,
                    &head.short()[..7]
                ),
                &self.caption(runs.len()),
                &runs,
            )?;
            figures.push(name);
        }
        Ok(figures)
    }
}

/// The bisect section of a report: steps table and the steps drawn on the commit line.
pub fn write_bisect_section(
    md: &mut String,
    log: &BisectLog,
    out_dir: &Path,
    url: &str,
    fingerprint: &str,
) -> Result<(), HarnessError> {
    let _ = writeln!(
        md,
        "## Bisect `{}`: {} (good) .. {} (bad)\n",
        log.workload,
        log.good.short(),
        log.bad.short()
    );
    let _ = writeln!(md, "{}\n", bisect_steps_table(log, url));
    if let Some(c) = &log.culprit {
        let _ = write!(
            md,
            "**First bad commit: [`{}`]({}) {}**",
            c.short(),
            url.replace("{sha}", &c.sha),
            c.summary.replace('|', "\\|")
        );
        if let Some(conf) = &log.confirmation {
            let _ = write!(md, ": vs its parent, {}", bisect_effect(conf));
        }
        let _ = writeln!(md, "\n");
    }
    if let Some(c) = &log.unconfirmed {
        let _ = write!(
            md,
            "**No culprit named:** the steps pointed at [`{}`]({}) {}, which its confirmation against its parent did not confirm",
            c.short(),
            url.replace("{sha}", &c.sha),
            c.summary.replace('|', "\\|")
        );
        if let Some(conf) = &log.confirmation {
            let _ = write!(md, " ({})", bisect_effect(conf));
        }
        let _ = writeln!(md, ".\n");
    }
    for note in &log.notes {
        let _ = writeln!(md, "> {note}\n");
    }
    let _ = writeln!(
        md,
        "{} steps, {} builds, {:.0} s wall time.\n",
        log.steps.len(),
        log.builds,
        log.wall_s
    );
    let name = bisect_figure(log, out_dir, fingerprint)?;
    let _ = writeln!(md, "![{name}]({name})\n");
    Ok(())
}

/// The bisect's steps drawn on the commit line, by the metric that decided them (throughput
/// unless only memory or p99 moved); the figure's file name.
fn bisect_figure(
    log: &BisectLog,
    out_dir: &Path,
    fingerprint: &str,
) -> Result<String, HarnessError> {
    let labels: Vec<String> = log
        .range
        .iter()
        .map(|c| c.short()[..7].to_owned())
        .collect();
    let (metric, ratio): (&str, fn(&crate::bisect::BisectStep) -> Option<f64>) =
        match log.deciding.first().map(String::as_str) {
            Some("p99") => ("p99", |s| s.p99_ratio),
            Some("peak RSS") => ("peak RSS", |s| s.peak_rss_ratio),
            _ => ("throughput", |s| s.throughput_ratio),
        };
    let mut values = vec![None; log.range.len()];
    for s in &log.steps {
        values[s.index] = ratio(s);
    }
    let name = format!("bisect-{}.svg", log.workload);
    let pairs: usize = log.steps.iter().map(|s| s.pairs).sum();
    let y_label = format!("{metric} / good");
    crate::output::plots::per_commit(
        &out_dir.join(&name),
        &format!("bisect steps: {metric} relative to the good commit"),
        &format!(
            "machine: {fingerprint} | workload: {} | {} steps, {} pairs",
            log.workload,
            log.steps.len(),
            pairs
        ),
        &crate::output::plots::CommitSeries {
            labels: &labels,
            values: &values,
            y_label: &y_label,
            lines: &[("good".into(), 1.0)],
        },
    )?;
    Ok(name)
}
