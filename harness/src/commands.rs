//! The subcommands: run, compare, gate, baseline, calibrate. Each prints a table and returns
//! the exit code documented in the README.

use std::path::Path;

use chronik_bench_schema::provenance::Provenance;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde::Serialize;

use crate::calibration::{self, CalibratedMargins, Tuned};
use crate::compare::{metric_count, CompareSettings, Comparison};
use crate::decision::{
    check_limits, does_not_build, gate_verdict, limits_verdict, GateResult, PairOutcome, Verdict,
};
use crate::error::HarnessError;
use crate::exit::{self, EXIT_INFRA, EXIT_PASS};
use crate::git::CommitInfo;
use crate::instructions::TierOutcome;
use crate::noise_bank::{NoiseBank, ReplayRow, NOISE_BANK_TRIALS_MIN};
use crate::render::{
    comparison_table, degradation_line, instructions_line, limits_table, margins_table, pct,
    replay_table, tier_line, tier_table,
};
use crate::session::{BuiltCommit, Session};
use crate::stats::median;
use crate::store::{load_baseline, save_baseline, Baseline, BASELINE_SCHEMA};
use crate::trial::{Side, TrialSummary, GATE};
use crate::workload::Workload;

#[derive(Debug, Serialize)]
pub struct CompareOutput<'a> {
    pub workload: &'a str,
    pub base: &'a CommitInfo,
    pub head: &'a CommitInfo,
    pub comparison: &'a Comparison,
}

/// Builds both sides for the deterministic tier; a side that does not build is an error.
fn build_pair(
    session: &Session,
    base: &CommitInfo,
    head: &CommitInfo,
) -> Result<(BuiltCommit, BuiltCommit), HarnessError> {
    let b = session.build(base)?;
    let h = session.build(head)?; // cached when head == base
    if let Some((side, log_tail)) = crate::session::first_unbuilt(&b, &h) {
        return Err(does_not_build(side, log_tail, base, head));
    }
    Ok((b, h))
}

/// `instructions`: the deterministic tier alone, printed as its table row and line.
pub fn instructions(
    session: &Session,
    base: &CommitInfo,
    head: &CommitInfo,
    workload: &Workload,
    rise_margin: f64,
) -> Result<(u8, Option<TierOutcome>), HarnessError> {
    let (b, h) = build_pair(session, base, head)?;
    let Some(tier) = session.instruction_outcome(&b, &h, workload, rise_margin) else {
        return Err(HarnessError::Usage(
            "the deterministic tier is off (--instruction-runs 0)".into(),
        ));
    };
    let code = match &tier {
        TierOutcome::Compared(t) => {
            println!(
                "\n{}: base {} vs head {}\n\n{}",
                workload.name,
                base.short(),
                head.short(),
                tier_table(t)
            );
            exit::for_verdict(t.metric.verdict)
        }
        TierOutcome::NotMeasured { .. } => EXIT_INFRA,
    };
    if let Some(line) = tier_line(&tier) {
        println!("{line}");
    }
    println!("\nverdict: {:?}", tier.verdict());
    Ok((code, Some(tier)))
}

pub fn compare(
    session: &Session,
    base: &CommitInfo,
    head: &CommitInfo,
    workload: &Workload,
    settings: &CompareSettings,
    role: &str,
) -> Result<PairOutcome, HarnessError> {
    let b = session.build(base)?;
    let h = session.build(head)?; // cached when head == base
    Ok(session.compare_built(
        &b,
        &h,
        workload,
        settings,
        role,
        &format!("{} pairs", workload.name),
    ))
}

pub fn print_comparison(workload: &Workload, base: &CommitInfo, head: &CommitInfo, c: &Comparison) {
    println!(
        "\n{}: base {} vs head {} ({} interleaved pairs)\n",
        workload.name,
        base.short(),
        head.short(),
        c.pairs()
    );
    println!("{}", comparison_table(c));
    println!("{}", c.design);
    if let Some(line) = instructions_line(c) {
        println!("{line}");
    }
    if let Some(line) = degradation_line(c) {
        println!("\n{line}");
    }
    println!("\nverdict: {:?}", c.verdict);
}

/// `run`: N trials of one commit, printed and stored. Returns the exit code, the valid
/// trials' summaries and the load generator's provenance (from its reports).
pub fn run(
    session: &Session,
    commit: &CommitInfo,
    workload: &Workload,
    trials: usize,
) -> Result<(u8, Vec<TrialSummary>, Option<Provenance>), HarnessError> {
    let built = session.build(commit)?;
    if let crate::build::BuildOutcome::Failed { log_tail } = &built.outcome {
        session.trial(&built, workload, "run")?;
        eprintln!("{} does not build:\n{log_tail}", commit.short());
        return Ok((EXIT_INFRA, Vec::new(), None));
    }
    let mut provenance = None;
    let bar = session.progress_bar(trials as u64, &format!("{} trials", workload.name));
    let mut summaries = Vec::new();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "trial",
        "status",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "broker peak RSS MiB",
        "detail",
    ]);
    let mut code = EXIT_PASS;
    for _ in 0..trials {
        let record = session.trial(&built, workload, "run")?;
        let r = record.report.as_ref().map(|r| &r.results);
        table.add_row(vec![
            record.id.clone(),
            format!("{:?}", record.status).to_lowercase(),
            r.map_or("-".into(), |r| format!("{:.0}", r.rate_msgs_per_s)),
            r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p50)),
            r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p99)),
            r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p999)),
            record
                .broker_peak_rss_kib
                .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            record
                .detail
                .clone()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ]);
        if provenance.is_none() {
            provenance = record.report.as_ref().map(|r| r.provenance.clone());
        }
        match record.summary {
            Some(s) => summaries.push(s),
            None => code = EXIT_INFRA,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "\n{} @ {} ({})\n\n{table}",
        workload.name,
        commit.short(),
        commit.summary
    );
    if !summaries.is_empty() {
        let checks = check_limits(workload, &summaries);
        if !checks.is_empty() {
            println!("\n{}", limits_table(&checks));
            if code == EXIT_PASS {
                code = exit::for_verdict(limits_verdict(&checks));
            }
        }
    }
    Ok((code, summaries, provenance))
}

/// `baseline`: records `trials` trials of `commit` as the workload's baseline.
pub fn baseline(
    session: &Session,
    baselines_dir: &Path,
    commit: &CommitInfo,
    workload: &Workload,
    trials: usize,
) -> Result<u8, HarnessError> {
    let (code, summaries, provenance) = run(session, commit, workload, trials)?;
    let Some(provenance) = provenance.filter(|_| summaries.len() == trials) else {
        eprintln!("not every trial was valid: baseline not written");
        return Ok(EXIT_INFRA);
    };
    let baseline = Baseline {
        schema: BASELINE_SCHEMA.into(),
        workload: workload.name.clone(),
        workload_hash: workload.hash(),
        commit: commit.clone(),
        host_fingerprint: session.host.fingerprint(),
        bench_version: provenance.bench_version,
        librdkafka_version: provenance.librdkafka_version,
        recorded_at: crate::store::now_rfc3339(),
        median_throughput: median(&summaries.iter().map(|t| t.throughput).collect::<Vec<_>>()),
        median_p99_ms: median(&summaries.iter().map(|t| t.p99_ms).collect::<Vec<_>>()),
        trials: summaries,
    };
    let path = save_baseline(baselines_dir, &baseline)?;
    println!("\nbaseline written to {}", path.display());
    Ok(code)
}

/// `gate` for one workload: absolute limits on the head plus, when a baseline commit is known,
/// the relative verdict from interleaved trials of base and head on this machine (a stored
/// number from another day is a trend record, never the only comparator).
pub fn gate_one(
    session: &Session,
    baselines_dir: &Path,
    base_override: Option<&CommitInfo>,
    head: &CommitInfo,
    workload: &Workload,
    settings: &CompareSettings,
    explicit_margins: &[Tuned],
) -> Result<GateResult, HarnessError> {
    let calibrated = calibration::load(
        baselines_dir,
        &workload.name,
        &workload.hash(),
        &session.host.fingerprint(),
    )?;
    let (settings, margins_source) = match &calibrated {
        Some(c) => {
            let (applied, source) = c.apply(settings, explicit_margins);
            (applied, Some(source))
        }
        None => (*settings, None),
    };
    let settings = &settings;
    let stored = load_baseline(baselines_dir, &workload.name)?;
    let mut note = None;
    let base = match (base_override, &stored) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(s)) => {
            if s.workload_hash != workload.hash() {
                note = Some(format!(
                    "stored baseline was recorded with workload hash {}, now {}",
                    s.workload_hash,
                    workload.hash()
                ));
            }
            if s.host_fingerprint != session.host.fingerprint() {
                note = Some(
                    "stored baseline comes from another host: base re-measured side by side".into(),
                );
            }
            Some(session.repo.resolve(&s.commit.sha)?)
        }
        (None, None) => None,
    };
    let (comparison, failure, head_trials) = match &base {
        Some(base) => {
            match compare(session, base, head, workload, settings, GATE)?.into_result(base, head)? {
                Ok(c) => {
                    let head_trials = c.head.clone();
                    (Some(c), None, head_trials)
                }
                Err(f) => (None, Some(f), Vec::new()),
            }
        }
        None => {
            note = Some("no baseline for this workload: absolute limits only".into());
            let built = session.build(head)?;
            let mut trials = Vec::new();
            let mut failure = None;
            for _ in 0..settings.min_pairs {
                match session.valid_trial(&built, workload, &Side::Head.role(GATE), Side::Head) {
                    Ok(t) => trials.push(t),
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
            }
            (None, failure, trials)
        }
    };
    let limits = if head_trials.is_empty() {
        Vec::new()
    } else {
        check_limits(workload, &head_trials)
    };
    let verdict = gate_verdict(failure.as_ref(), &limits, comparison.as_ref());
    Ok(GateResult {
        workload: workload.name.clone(),
        base,
        head: head.clone(),
        comparison,
        limits,
        verdict,
        failure,
        note,
        margins_source,
    })
}

pub fn print_gate(result: &GateResult) {
    println!(
        "\n== gate {} (head {})",
        result.workload,
        result.head.short()
    );
    if let Some(note) = &result.note {
        println!("note: {note}");
    }
    if let Some(source) = &result.margins_source {
        println!("{source}");
    }
    if let Some(f) = &result.failure {
        println!(
            "{:?} side could not be measured: {:?}: {}",
            f.side, f.status, f.detail
        );
    }
    if let (Some(c), Some(base)) = (&result.comparison, &result.base) {
        println!(
            "relative to {} ({} pairs):\n\n{}",
            base.short(),
            c.pairs(),
            comparison_table(c)
        );
        println!("{}", c.design);
        if let Some(line) = instructions_line(c) {
            println!("{line}");
        }
        if let Some(line) = degradation_line(c) {
            println!("{line}");
        }
    }
    if !result.limits.is_empty() {
        println!("\n{}", limits_table(&result.limits));
    }
    println!("\ngate verdict: {:?}", result.verdict);
}

/// Stores a gate verdict in the results database (the dashboard marks it on the series).
pub fn record_gate(
    session: &Session,
    result: &GateResult,
    report_link: Option<&str>,
) -> Result<(), HarnessError> {
    let verdict = if result.failure.is_some() {
        "failed".to_owned()
    } else {
        format!("{:?}", result.verdict).to_lowercase()
    };
    let row = crate::results_db::GateRow {
        decided_at: crate::store::now_rfc3339(),
        host: session.host.fingerprint(),
        head_sha: result.head.sha.clone(),
        base_sha: result.base.as_ref().map(|b| b.sha.clone()),
        verdict,
        report: report_link.map(str::to_owned),
    };
    let json = serde_json::to_string(result).map_err(|e| HarnessError::Infra(e.to_string()))?;
    session
        .store
        .db()?
        .insert_gate(&row, &result.workload, &json)
}

#[derive(Debug, Serialize)]
pub struct Calibration {
    pub workload: String,
    pub commit: CommitInfo,
    pub comparisons: usize,
    pub false_alarms: usize,
    pub inconclusive: usize,
    pub false_alarm_rate: f64,
    /// Median half-width of the throughput interval (fraction): noise the default pairs see.
    pub median_ci_half_width: f64,
    /// Smallest drop the defaults flag reliably: the margin plus the typical half-width.
    pub smallest_reliable_drop: f64,
    pub results: Vec<(Verdict, f64, f64, f64)>,
    /// Valid trials of this commit, workload and host in the store: the noise bank.
    pub bank_trials: usize,
    /// The shipped rule replayed on the noise bank (empty when the bank is too small).
    pub replay: Vec<ReplayRow>,
    /// The design the verdicts were reached with.
    pub design: String,
    /// Margins searched on the noise bank and stored for `gate` (none when the bank is small).
    #[serde(default)]
    pub margins: Option<CalibratedMargins>,
    /// The rule replayed again with those margins.
    #[serde(default)]
    pub calibrated_replay: Vec<ReplayRow>,
}

/// `calibrate`: `comparisons` real A/A comparisons of one commit against itself, then the
/// shipped rule replayed `replays` times per shift on the noise bank (every valid trial of the
/// commit on this host, the ones just run included).
pub fn calibrate(
    session: &Session,
    baselines_dir: &Path,
    commit: &CommitInfo,
    workload: &Workload,
    comparisons: usize,
    replays: usize,
    settings: &CompareSettings,
) -> Result<(u8, Calibration), HarnessError> {
    let mut results = Vec::new();
    for i in 0..comparisons {
        let s = CompareSettings {
            seed: settings.seed.wrapping_add(i as u64 * 7919),
            ..*settings
        };
        match compare(session, commit, commit, workload, &s, "calibrate")?
            .into_result(commit, commit)?
        {
            Ok(c) => {
                session.say(&format!(
                    "A/A {}/{comparisons}: {:?} ({} pairs, ratio {})",
                    i + 1,
                    c.verdict,
                    c.pairs(),
                    pct(c.throughput.median_ratio)
                ));
                results.push((
                    c.verdict,
                    c.throughput.median_ratio,
                    c.throughput.ci_low_ratio,
                    c.throughput.ci_high_ratio,
                ));
            }
            Err(f) => return Ok((exit::for_failure(&f), empty_calibration(workload, commit))),
        }
    }
    let false_alarms = results
        .iter()
        .filter(|r| r.0 == Verdict::Regression)
        .count();
    let inconclusive = results
        .iter()
        .filter(|r| r.0 == Verdict::Inconclusive)
        .count();
    let half_widths: Vec<f64> = results.iter().map(|r| (r.3 - r.2) / 2.0).collect();
    let median_ci_half_width = if half_widths.is_empty() {
        0.0
    } else {
        median(&half_widths)
    };
    let calibration = Calibration {
        workload: workload.name.clone(),
        commit: commit.clone(),
        comparisons,
        false_alarms,
        inconclusive,
        false_alarm_rate: false_alarms as f64 / comparisons.max(1) as f64,
        median_ci_half_width,
        smallest_reliable_drop: settings.margins.throughput_drop + median_ci_half_width,
        results,
        bank_trials: 0,
        replay: Vec::new(),
        design: String::new(),
        margins: None,
        calibrated_replay: Vec::new(),
    };
    let mut calibration = calibration;
    if comparisons > 0 {
        print_real_calibration(workload, commit, &calibration);
    }
    let bank = NoiseBank::from_records(
        &session.store.load_workload(&workload.name)?,
        &commit.sha,
        &workload.hash(),
        &session.host.fingerprint(),
    );
    calibration.bank_trials = bank.trials.len();
    calibration.design = settings.describe(metric_count(true, bank.has_cpu()));
    if bank.trials.len() < NOISE_BANK_TRIALS_MIN {
        println!(
            "\nnoise bank: {} valid trial(s) of {} on this host (< {NOISE_BANK_TRIALS_MIN}): no replay; run calibrate with --comparisons to fill it",
            bank.trials.len(),
            commit.short()
        );
    } else if replays > 0 {
        calibration.replay = bank.replay(settings, replays, settings.seed);
        println!(
            "\nshipped rule replayed {replays} times per row on a noise bank of {} trials of {} on this host ({}):\n{}\n{}",
            bank.trials.len(),
            commit.short(),
            session.host.fingerprint(),
            replay_table(&calibration.replay),
            calibration.design
        );
        let margins = calibration::calibrate(
            &bank,
            settings,
            (
                &workload.name,
                &workload.hash(),
                &session.host.fingerprint(),
                commit.short(),
            ),
        );
        let path = calibration::save(baselines_dir, &margins)?;
        let (tuned, _) = margins.apply(settings, &[]);
        calibration.calibrated_replay = bank.replay(&tuned, replays, settings.seed);
        println!(
            "\nmargins searched on the bank (the smallest at which an unchanged commit passes the metric in >= {:.0}% of {} replays and is called a regression in <= {:.0}%), stored in {} for gate:\n{}\n\nshipped rule with these margins, replayed {replays} times per row:\n{}",
            calibration::AA_PASS_TARGET * 100.0,
            calibration::SEARCH_REPLAYS,
            calibration::AA_REGRESSION_MAX * 100.0,
            path.display(),
            margins_table(&margins, settings),
            replay_table(&calibration.calibrated_replay)
        );
        calibration.margins = Some(margins);
    }
    Ok((EXIT_PASS, calibration))
}

fn print_real_calibration(workload: &Workload, commit: &CommitInfo, calibration: &Calibration) {
    let (comparisons, false_alarms, inconclusive, median_ci_half_width) = (
        calibration.comparisons,
        calibration.false_alarms,
        calibration.inconclusive,
        calibration.median_ci_half_width,
    );
    println!(
        "\nA/A calibration of {} on {}: {} comparisons, {} false alarms ({:.0}%), {} inconclusive; median half-width of the throughput interval {:.2}%; smallest throughput drop flagged reliably ~{:.1}%",
        workload.name,
        commit.short(),
        comparisons,
        false_alarms,
        calibration.false_alarm_rate * 100.0,
        inconclusive,
        median_ci_half_width * 100.0,
        calibration.smallest_reliable_drop * 100.0
    );
}

fn empty_calibration(workload: &Workload, commit: &CommitInfo) -> Calibration {
    Calibration {
        workload: workload.name.clone(),
        commit: commit.clone(),
        comparisons: 0,
        false_alarms: 0,
        inconclusive: 0,
        false_alarm_rate: 0.0,
        median_ci_half_width: 0.0,
        smallest_reliable_drop: 0.0,
        results: Vec::new(),
        bank_trials: 0,
        replay: Vec::new(),
        design: String::new(),
        margins: None,
        calibrated_replay: Vec::new(),
    }
}
