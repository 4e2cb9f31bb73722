//! The harness's one rendering layer for what commands print and reports embed: the
//! comparison, limit, tier and calibration tables (markdown through comfy-table) and their
//! one-line summaries. Figures are drawn by `plots`, whole reports assembled by `report`,
//! the history's page by `dashboard`; every number they show comes formatted from here or there.

use comfy_table::{presets::ASCII_MARKDOWN, Table};

use crate::bisect::BisectLog;
use crate::trial::summary::TrialSummary;
use crate::verdict::acceptance;
use crate::verdict::calibration::CalibratedMargins;
use crate::verdict::compare::{CompareSettings, Comparison};
use crate::verdict::decision::{GateResult, LimitCheck};
use crate::verdict::instructions::{InstructionComparison, TierOutcome};
use crate::verdict::noise_bank::{ReplayRow, Shifted};
use crate::verdict::state::Verdict;
use crate::verdict::stats::{median, MetricComparison, DETECTABLE_POWER};

/// A head/base ratio as a signed percentage ("+2.5%").
pub fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

/// A markdown table of a comparison.
pub fn comparison_table(c: &Comparison) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "metric",
        "base median",
        "head median",
        "head/base (median)",
        "interval the verdict uses (coverage)",
        "limit",
        "detectable",
        "verdict",
    ]);
    let med = |v: &[TrialSummary], f: fn(&TrialSummary) -> f64| {
        median(&v.iter().map(f).collect::<Vec<_>>())
    };
    // Median of a figure some trials may lack (NaN when none has it).
    let known = |v: &[TrialSummary], f: fn(&TrialSummary) -> Option<f64>| {
        let known: Vec<f64> = v.iter().filter_map(f).collect();
        if known.is_empty() {
            f64::NAN
        } else {
            median(&known)
        }
    };
    let rss = |v: &[TrialSummary]| known(v, |t| t.peak_rss_mib);
    let cpu = |v: &[TrialSummary]| known(v, |t| t.broker_cpu_us_per_msg);
    let rows = [
        (
            Some(&c.throughput),
            med(&c.base, |t| t.throughput),
            med(&c.head, |t| t.throughput),
            "msg/s",
        ),
        (
            Some(&c.p99),
            med(&c.base, |t| t.p99_ms),
            med(&c.head, |t| t.p99_ms),
            "ms",
        ),
        (c.peak_rss.as_ref(), rss(&c.base), rss(&c.head), "MiB"),
        (c.cpu_per_msg.as_ref(), cpu(&c.base), cpu(&c.head), "µs CPU"),
    ];
    for (m, base, head, unit) in rows {
        let Some(m) = m else { continue };
        table.add_row(vec![
            m.metric.clone(),
            format!("{base:.1} {unit}"),
            format!("{head:.1} {unit}"),
            pct(m.median_ratio),
            format!(
                "[{}, {}] ({:.1}%)",
                pct(m.ci_low_ratio),
                pct(m.ci_high_ratio),
                m.ci_coverage * 100.0
            ),
            pct(m.limit_ratio),
            detectable(m),
            metric_verdict(m),
        ]);
    }
    add_tier_rows(&mut table, c.instructions.as_ref());
    table
}

/// The deterministic tier's rows: instructions and allocations per request, or that the tier
/// could not measure.
fn add_tier_rows(table: &mut Table, tier: Option<&TierOutcome>) {
    match tier {
        Some(TierOutcome::Compared(t)) => {
            let per_request = |count: u64, s: &crate::verdict::instructions::InstructionSample| {
                count as f64 / s.requests.max(1) as f64
            };
            let rows = [(
                &t.metric,
                format!("{:.0} instr", t.base.per_request()),
                format!("{:.0} instr", t.head.per_request()),
            )]
            .into_iter()
            .chain(t.allocations.as_ref().map(|a| {
                (
                    a,
                    format!("{:.1}", per_request(t.base.heap_blocks, &t.base)),
                    format!("{:.1}", per_request(t.head.heap_blocks, &t.head)),
                )
            }));
            for (m, base, head) in rows {
                table.add_row(vec![
                    format!("{} (Valgrind)", m.metric),
                    base,
                    head,
                    pct(m.median_ratio),
                    format!(
                        "[{}, {}] (every run)",
                        pct(m.ci_low_ratio),
                        pct(m.ci_high_ratio)
                    ),
                    pct(m.limit_ratio),
                    "-".to_owned(),
                    format!("{:?}", m.verdict).to_lowercase(),
                ]);
            }
        }
        Some(TierOutcome::NotMeasured { .. }) => {
            table.add_row(vec![
                "instructions/request (Valgrind)",
                "-",
                "-",
                "-",
                "not measured",
                "-",
                "-",
                "inconclusive",
            ]);
        }
        None => {}
    }
}

/// A metric's detectable change: the smallest change in its worse direction its pairs would
/// have told apart from no change with `DETECTABLE_POWER`, or that none could have been.
pub fn detectable(m: &MetricComparison) -> String {
    let direction = if m.limit_ratio < 1.0 { "-" } else { "+" };
    m.detectable.map_or_else(
        || format!("none at {} pairs", m.pairs),
        |d| format!("{direction}{:.1}%", d * 100.0),
    )
}

/// A metric's verdict; an inconclusive metric whose interval lies within the margin says
/// that its pairs could not see a change of the margin's size.
pub fn metric_verdict(m: &MetricComparison) -> String {
    let within_margin = if m.limit_ratio < 1.0 {
        m.ci_low_ratio > m.limit_ratio
    } else {
        m.ci_high_ratio < m.limit_ratio
    };
    match m.verdict {
        Verdict::Inconclusive if within_margin && m.blind_at_margin() => format!(
            "inconclusive: could not see below {}",
            m.detectable
                .map_or("any change".to_owned(), |d| format!("{:.1}%", d * 100.0))
        ),
        v => format!("{v:?}").to_lowercase(),
    }
}

/// The lines every comparison is printed with below its table, in one order: what it could
/// see, why it stopped early, the deterministic tier, in-run degradation, invalid trials.
pub fn comparison_lines(c: &Comparison) -> Vec<String> {
    [
        Some(sight_line(c)),
        budget_line(c),
        instructions_line(c),
        degradation_line(c),
        invalid_line(c),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Why a comparison stopped before its last look, when it did.
pub fn budget_line(c: &Comparison) -> Option<String> {
    c.out_of_budget.then(|| {
        format!(
            "stopped at {} pairs: the comparison's time budget was spent (the verdict is that look's; --budget-minutes, 0 for none)",
            c.pairs()
        )
    })
}

/// What a comparison could see, one line: each metric's detectable change beside its margin.
pub fn sight_line(c: &Comparison) -> String {
    let metrics: Vec<String> = c
        .metrics()
        .map(|m| {
            format!(
                "{} {} (margin {})",
                m.metric,
                detectable(m),
                pct(m.limit_ratio)
            )
        })
        .collect();
    format!(
        "could see (detected {:.0}% of the time from these pairs' spread): {}",
        DETECTABLE_POWER * 100.0,
        metrics.join(", ")
    )
}

/// The deterministic tier of a comparison in one line (`tier_line`).
pub fn instructions_line(c: &Comparison) -> Option<String> {
    tier_line(c.instructions.as_ref()?)
}

/// The deterministic tier in one line: what was replayed and how tightly runs repeated, or why
/// it did not measure.
pub fn tier_line(tier: &TierOutcome) -> Option<String> {
    Some(match tier {
        TierOutcome::Compared(t) => format!(
            "deterministic tier: {} Valgrind (DHAT) runs per commit, base and head alternating, of a fixed stream of {} requests ({} messages, sha256 {}); run spread base {:.2}%, head {:.2}%; startup and shutdown ({:.2}M instructions) removed, and the clock (idle instructions per second {:.0} -> {:.0}, {:.2}M -> {:.2}M per run); heap allocations/request {:.1} -> {:.1}, bytes/request {:.0} -> {:.0}",
            t.base.runs.len(),
            t.base.requests,
            t.base.messages,
            &t.base.stream_sha256[..12.min(t.base.stream_sha256.len())],
            t.base.spread() * 100.0,
            t.head.spread() * 100.0,
            t.base.startup as f64 / 1e6,
            t.base.idle_per_s,
            t.head.idle_per_s,
            t.base.idle_removed as f64 / 1e6,
            t.head.idle_removed as f64 / 1e6,
            t.base.heap_blocks as f64 / t.base.requests.max(1) as f64,
            t.head.heap_blocks as f64 / t.head.requests.max(1) as f64,
            t.base.heap_bytes as f64 / t.base.requests.max(1) as f64,
            t.head.heap_bytes as f64 / t.head.requests.max(1) as f64,
        ),
        TierOutcome::NotMeasured { reason } => {
            format!("deterministic tier not measured: {reason}")
        }
    })
}

/// The deterministic tier's row alone, per run, for `instructions`.
pub fn tier_table(t: &InstructionComparison) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "side",
        "instructions per run (stream only)",
        "median/request",
        "spread",
    ]);
    for (side, s) in [("base", &t.base), ("head", &t.head)] {
        let runs: Vec<String> = s.runs.iter().map(u64::to_string).collect();
        table.add_row(vec![
            side.to_owned(),
            runs.join(" "),
            format!("{:.0}", s.per_request()),
            format!("{:.2}%", s.spread() * 100.0),
        ]);
    }
    for (what, m) in [
        ("head/base", Some(&t.metric)),
        ("allocations", t.allocations.as_ref()),
    ] {
        let Some(m) = m else { continue };
        table.add_row(vec![
            what.to_owned(),
            format!(
                "[{}, {}] (every run)",
                pct(m.ci_low_ratio),
                pct(m.ci_high_ratio)
            ),
            pct(m.median_ratio),
            format!("limit {}: {:?}", pct(m.limit_ratio), m.verdict).to_lowercase(),
        ]);
    }
    table
}

/// The seed's throttling pattern, one line: the head's per-second rate in the last third of
/// its runs relative to the first third.
/// Invalid trials per side (each rerun), when there were any; a finding when the head was
/// invalid markedly more often.
pub fn invalid_line(c: &Comparison) -> Option<String> {
    let i = &c.invalid;
    (i.base + i.head > 0).then(|| {
        format!(
            "invalid trials, rerun and not counted: base {}, head {}{}",
            i.base,
            i.head,
            if i.finding {
                "  <- FINDING: the head fails its validity checks markedly more often; its valid trials may be its lucky ones, so it cannot pass"
            } else {
                ""
            }
        )
    })
}

pub fn degradation_line(c: &Comparison) -> Option<String> {
    c.degradation.as_ref().map(|d| {
        format!(
            "in-run degradation (head, last third / first third of each run, median): {}{}",
            pct(d.median_ratio),
            if d.finding {
                "  <- FINDING: throughput falls during the run"
            } else {
                ""
            }
        )
    })
}

/// Why a gate measured against an accepted commit: what was accepted, by whom, when and why.
pub fn accepted_line(g: &GateResult) -> Option<String> {
    let base = g.base.as_ref()?;
    acceptance::note_for(&g.accepted, &base.sha).map(|note| {
        format!(
            "measured against {} instead of the stored baseline; {note}",
            base.short()
        )
    })
}

/// The absolute limits, one row each: median, its interval, the limit and the result.
pub fn limits_table(checks: &[LimitCheck]) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "absolute limit",
        "median",
        "interval of the median (coverage)",
        "limit",
        "result",
    ]);
    for c in checks {
        table.add_row(vec![
            c.metric.clone(),
            format!("{:.2}", c.median),
            format!(
                "[{:.2}, {:.2}] ({:.1}%)",
                c.ci_low,
                c.ci_high,
                c.ci_coverage * 100.0
            ),
            format!("{:.2}", c.limit),
            match c.verdict {
                Verdict::Pass => "pass".into(),
                Verdict::Regression => "FAIL".into(),
                Verdict::Inconclusive => "inconclusive (limit inside the interval)".into(),
            },
        ]);
    }
    table
}

/// The calibrated margins, one row per metric, next to the defaults.
pub fn margins_table(margins: &CalibratedMargins, defaults: &CompareSettings) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "metric",
        "default margin",
        "calibrated margin",
        "A/A pass (fitted half)",
        "A/A regression (fitted half)",
        "A/A pass (held out)",
        "A/A regression (held out)",
    ]);
    let rate = |r: f64| format!("{:.1}%", r * 100.0);
    for m in &margins.metrics {
        let held = margins.held_out.iter().find(|h| h.metric == m.metric);
        table.add_row(vec![
            m.metric.name().to_owned(),
            format!("{:.1}%", m.metric.get(&defaults.margins) * 100.0),
            m.margin.map_or("none up to 100%".to_owned(), |v| {
                format!("{:.1}%", v * 100.0)
            }),
            rate(m.aa_pass_rate),
            rate(m.aa_regression_rate),
            held.map_or("-".into(), |h| rate(h.aa_pass_rate)),
            held.map_or("-".into(), |h| rate(h.aa_regression_rate)),
        ]);
    }
    table
}

/// The replayed rates, one row per shift.
pub fn replay_table(rows: &[ReplayRow]) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "head made worse",
        "replays",
        "regression",
        "pass",
        "inconclusive",
        "mean pairs",
    ]);
    for r in rows {
        let what = match r.shifted {
            Shifted::Nothing => "nothing (A/A)".to_owned(),
            Shifted::Throughput => format!("throughput -{:.0}%", r.shift * 100.0),
            Shifted::CpuPerMsg => format!("broker CPU/msg +{:.0}%", r.shift * 100.0),
        };
        let rate = |n: usize| format!("{:.1}%", r.rate(n) * 100.0);
        table.add_row(vec![
            what,
            r.replays.to_string(),
            rate(r.regression),
            rate(r.pass),
            rate(r.inconclusive),
            format!("{:.1}", r.mean_pairs),
        ]);
    }
    table
}

/// A bisect's steps, notes and answer, as `bisect` prints them.
pub fn print_bisect(log: &BisectLog) {
    println!("\n{}", bisect_steps_table(log, "{sha}"));
    for note in &log.notes {
        println!("note: {note}");
    }
    match (&log.culprit, &log.confirmation) {
        (Some(c), Some(conf)) => println!(
            "\nfirst bad commit: {} {}\neffect vs its parent: {}",
            c.sha,
            c.summary,
            bisect_effect(conf)
        ),
        // A culprit is named only when its confirmation showed the regression.
        (Some(c), None) => println!("\nfirst bad commit: {} {}", c.sha, c.summary),
        (None, _) if log.unconfirmed.is_some() => {
            let c = log.unconfirmed.as_ref().expect("checked");
            println!(
                "\nno culprit named: the steps pointed at {} {}, which its confirmation did not confirm{}",
                c.sha,
                c.summary,
                log.confirmation
                    .as_ref()
                    .map_or(String::new(), |conf| format!(" ({})", bisect_effect(conf)))
            );
        }
        (None, _) if log.candidates.len() > 1 => {
            println!("\nfirst bad commit is one of:");
            for c in &log.candidates {
                println!("  {} {}", c.sha, c.summary);
            }
        }
        _ => {}
    }
    println!(
        "steps: {}, builds: {}, wall time: {:.0} s",
        log.steps.len(),
        log.builds,
        log.wall_s
    );
}

/// Every metric of a comparison as "name +x% [interval lo, hi]" (the instruction tier's
/// range holds every run), then the pair count.
pub fn bisect_effect(c: &Comparison) -> String {
    let pct = |r: f64| (r - 1.0) * 100.0;
    let metrics: Vec<String> = c
        .metrics()
        .chain(c.instruction_metric())
        .map(|m| {
            format!(
                "{} {:+.1}% [{:+.1}%, {:+.1}%]",
                m.metric,
                pct(m.median_ratio),
                pct(m.ci_low_ratio),
                pct(m.ci_high_ratio)
            )
        })
        .collect();
    format!("{} ({} pairs)", metrics.join(", "), c.pairs())
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".into(), pct)
}

/// The bisect steps, one row each; `url` links commits (`{sha}` alone: plain short ids).
pub fn bisect_steps_table(log: &BisectLog, url: &str) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "step",
        "commit",
        "position",
        "vs good (throughput)",
        "interval",
        "p99",
        "peak RSS",
        "instructions",
        "pairs",
        "verdict",
        "detail",
    ]);
    for (n, s) in log.steps.iter().enumerate() {
        let commit = if url == "{sha}" {
            s.commit.short().to_owned()
        } else {
            format!(
                "[`{}`]({})",
                s.commit.short(),
                url.replace("{sha}", &s.commit.sha)
            )
        };
        table.add_row(vec![
            n.to_string(),
            commit,
            format!("{}/{}", s.index + 1, log.range.len()),
            percent(s.throughput_ratio),
            s.ci.map_or("-".into(), |(lo, hi)| {
                format!("[{:+.1}%, {:+.1}%]", (lo - 1.0) * 100.0, (hi - 1.0) * 100.0)
            }),
            percent(s.p99_ratio),
            percent(s.peak_rss_ratio),
            s.instructions_ratio
                .map_or("-".into(), |r| format!("{:+.2}%", (r - 1.0) * 100.0)),
            s.pairs.to_string(),
            format!("{:?}", s.verdict).to_lowercase(),
            s.detail.clone().unwrap_or_default(),
        ]);
    }
    table
}
