//! `calibrate`: real A/A comparisons of one commit against itself, then the shipped rule
//! replayed on every stored trial of it (the noise bank); margins searched there are stored
//! for `gate`.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common, Statistics};
use crate::cmd::exit::{self, EXIT_PASS};
use crate::error::HarnessError;
use crate::output::render::{margins_table, pct, replay_table};
use crate::session::Session;
use crate::store::db::AaRow;
use crate::store::files::now_rfc3339;
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::aa_ledger::{self, AaTally, BOUND_CONFIDENCE};
use crate::verdict::calibration::{self, BankIdentity, CalibratedMargins};
use crate::verdict::compare::{metric_count, CompareSettings};
use crate::verdict::noise_bank::{NoiseBank, OrderEffect, ReplayRow, NOISE_BANK_TRIALS_MIN};
use crate::verdict::state::Verdict;
use crate::verdict::stats::{median, DISPLAY_COVERAGE};

#[derive(Args)]
pub struct CalibrateArgs {
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// Workloads to calibrate, one after the other (repeatable).
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    /// Real A/A comparisons to run (0: only replay the stored noise bank).
    #[arg(long, default_value_t = 10)]
    comparisons: usize,
    /// Replays of the shipped rule per shift on the noise bank.
    #[arg(long, default_value_t = 2000)]
    replays: usize,
    #[command(flatten)]
    stats: Statistics,
    /// Write the calibrations as JSON (an array, one per workload).
    #[arg(long)]
    json_output: Option<PathBuf>,
}

impl CalibrateArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let settings = self.stats.settings()?;
        let workloads = c.workloads(&self.workload)?;
        let s = session(c)?;
        let commit = s.repo.resolve(&self.rev)?;
        let mut codes = Vec::new();
        let mut calibrations = Vec::new();
        for workload in &workloads {
            let (code, calibration) = calibrate(
                &s,
                &c.baselines_dir,
                &commit,
                workload,
                self.comparisons,
                self.replays,
                &settings,
            )?;
            codes.push(code);
            calibrations.push(calibration);
        }
        write_json(&self.json_output, &calibrations)?;
        Ok(exit::worst(codes))
    }
}

#[derive(Debug, Serialize)]
pub struct Calibration {
    pub workload: String,
    pub commit: CommitInfo,
    /// This run's real A/A comparisons.
    pub this_run: AaTally,
    /// Every real A/A comparison of this workload on this host under this rule, this run's
    /// included: the bound on the false-regression rate.
    pub recorded: AaTally,
    /// Median half-width of the throughput interval (fraction): noise the default pairs see.
    pub median_ci_half_width: f64,
    /// Smallest drop the defaults flag reliably: the margin plus the typical half-width.
    pub smallest_reliable_drop: f64,
    pub results: Vec<AaResult>,
    /// Valid trials of this commit, workload and host in the store: the noise bank.
    pub bank_trials: usize,
    /// A pair's second trial against its first over the bank's pairs.
    #[serde(default)]
    pub order_effect: Option<OrderEffect>,
    /// The shipped rule replayed on the noise bank (empty when the bank is too small).
    pub replay: Vec<ReplayRow>,
    /// The design the verdicts were reached with.
    pub design: String,
    /// Margins searched on the noise bank and stored for `gate` (none when the bank is small).
    #[serde(default)]
    pub margins: Option<CalibratedMargins>,
    /// The rule replayed again with those margins, on the held-out half of the bank.
    #[serde(default)]
    pub calibrated_replay: Vec<ReplayRow>,
}

/// One real A/A comparison: its verdict and its throughput ratio with the interval that
/// decided it.
#[derive(Debug, Serialize)]
pub struct AaResult {
    pub verdict: Verdict,
    pub throughput_ratio: f64,
    pub ci_low_ratio: f64,
    pub ci_high_ratio: f64,
}

/// `calibrate`: `comparisons` real A/A comparisons of one commit against itself, then the
/// shipped rule replayed `replays` times per shift on the noise bank (every valid trial of the
/// commit on this host, the ones just run included).
fn calibrate(
    session: &Session,
    baselines_dir: &Path,
    commit: &CommitInfo,
    workload: &Workload,
    comparisons: usize,
    replays: usize,
    settings: &CompareSettings,
) -> Result<(u8, Calibration), HarnessError> {
    let results = match real_comparisons(session, commit, workload, comparisons, settings)? {
        Ok(results) => results,
        Err(code) => return Ok((code, empty_calibration(workload, commit))),
    };
    let verdicts: Vec<Verdict> = results.iter().map(|r| r.verdict).collect();
    let half_widths: Vec<f64> = results
        .iter()
        .map(|r| (r.ci_high_ratio - r.ci_low_ratio) / 2.0)
        .collect();
    let median_ci_half_width = if half_widths.is_empty() {
        0.0
    } else {
        median(&half_widths)
    };
    let mut calibration = Calibration {
        workload: workload.name.clone(),
        commit: commit.clone(),
        this_run: aa_ledger::tally(&verdicts),
        recorded: recorded_tally(session, workload, settings)?,
        median_ci_half_width,
        smallest_reliable_drop: settings.margins.throughput_drop + median_ci_half_width,
        results,
        bank_trials: 0,
        order_effect: None,
        replay: Vec::new(),
        design: String::new(),
        margins: None,
        calibrated_replay: Vec::new(),
    };
    if comparisons > 0 {
        print_real_calibration(workload, commit, &calibration);
    }
    print_recorded(workload, &calibration.recorded);
    replay_bank(
        session,
        baselines_dir,
        &mut calibration,
        workload,
        replays,
        settings,
    )?;
    Ok((EXIT_PASS, calibration))
}

/// Runs the real A/A comparisons, each with its own seed, and records each in the results
/// database as soon as it is decided; a side that could not be measured ends them with its
/// exit code.
fn real_comparisons(
    session: &Session,
    commit: &CommitInfo,
    workload: &Workload,
    comparisons: usize,
    settings: &CompareSettings,
) -> Result<Result<Vec<AaResult>, u8>, HarnessError> {
    let mut results = Vec::new();
    for i in 0..comparisons {
        let s = CompareSettings {
            seed: settings.seed.wrapping_add(i as u64 * 7919),
            ..*settings
        };
        let outcome = session
            .measure(
                commit,
                commit,
                workload,
                &s,
                "calibrate",
                &format!("{} pairs", workload.name),
            )?
            .0
            .into_result(commit, commit)?;
        let c = match outcome {
            Ok(c) => c,
            Err(f) => return Ok(Err(exit::for_failure(&f))),
        };
        session.say(&format!(
            "A/A {}/{comparisons}: {:?} ({} pairs, ratio {})",
            i + 1,
            c.verdict,
            c.pairs(),
            pct(c.throughput.median_ratio)
        ));
        session.store.db()?.insert_aa(&AaRow {
            decided_at: now_rfc3339(),
            workload: workload.name.clone(),
            workload_hash: workload.hash(),
            host: session.host.fingerprint(),
            rule: aa_ledger::rule_key(settings),
            commit_sha: commit.sha.clone(),
            seed: s.seed.to_string(),
            verdict: c.verdict.name().to_owned(),
            pairs: c.pairs(),
            throughput_ratio: c.throughput.median_ratio,
        })?;
        results.push(AaResult {
            verdict: c.verdict,
            throughput_ratio: c.throughput.median_ratio,
            ci_low_ratio: c.throughput.ci_low_ratio,
            ci_high_ratio: c.throughput.ci_high_ratio,
        });
    }
    Ok(Ok(results))
}

/// Replays the shipped rule on the noise bank (every valid trial of the commit on this host),
/// searches margins on its first half, measures them on the held-out second half and stores
/// them for `gate`. A bank under `NOISE_BANK_TRIALS_MIN` trials is not replayed.
fn replay_bank(
    session: &Session,
    baselines_dir: &Path,
    calibration: &mut Calibration,
    workload: &Workload,
    replays: usize,
    settings: &CompareSettings,
) -> Result<(), HarnessError> {
    let commit = calibration.commit.clone();
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
        return Ok(());
    }
    calibration.order_effect = bank.order_effect();
    if let Some(e) = &calibration.order_effect {
        let show = |(median, (low, high)): (f64, (f64, f64))| {
            format!(
                "{} [{}, {}]",
                pct(median.exp()),
                pct(low.exp()),
                pct(high.exp())
            )
        };
        println!(
            "\norder effect over the bank's {} pairs (a pair's second trial against its first, median and {:.0}% interval): throughput {}, p99 {}",
            e.pairs,
            DISPLAY_COVERAGE * 100.0,
            show(e.throughput),
            show(e.p99)
        );
    }
    if replays == 0 {
        return Ok(());
    }
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
        &BankIdentity {
            workload: &workload.name,
            workload_hash: &workload.hash(),
            host_fingerprint: &session.host.fingerprint(),
            host_name: &session.host.hostname,
            commit: commit.short(),
        },
    );
    let path = calibration::save(baselines_dir, &margins)?;
    let (tuned, _) = margins.apply(
        settings,
        &[],
        &session.host.hostname,
        std::time::SystemTime::now(),
    );
    let (fit, held) = bank.split();
    calibration.calibrated_replay = held.replay(&tuned, replays, settings.seed);
    println!(
        "\nmargins searched on the first {} trials of the bank (the smallest at which an unchanged commit passes the metric in >= {:.0}% of {} replays and is called a regression in <= {:.0}%), measured on the last {} (held out), stored in {} for gate until {}:\n{}\n\nshipped rule with these margins, replayed {replays} times per row on the held-out trials:\n{}",
        fit.trials.len(),
        calibration::AA_PASS_TARGET * 100.0,
        calibration::SEARCH_REPLAYS,
        calibration::AA_REGRESSION_MAX * 100.0,
        held.trials.len(),
        path.display(),
        margins.expires_at,
        margins_table(&margins, settings),
        replay_table(&calibration.calibrated_replay)
    );
    calibration.margins = Some(margins);
    Ok(())
}

/// Every real A/A comparison recorded for this workload definition, host and rule.
fn recorded_tally(
    session: &Session,
    workload: &Workload,
    settings: &CompareSettings,
) -> Result<AaTally, HarnessError> {
    let rows = session.store.db()?.aa_comparisons(
        &workload.name,
        &workload.hash(),
        &session.host.fingerprint(),
        &aa_ledger::rule_key(settings),
    )?;
    let verdicts: Vec<Verdict> = rows
        .iter()
        .map(|r| {
            Verdict::from_name(&r.verdict).ok_or_else(|| {
                HarnessError::Infra(format!(
                    "results database: A/A comparison of {} at {} has an unknown verdict {:?}",
                    r.workload, r.decided_at, r.verdict
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(aa_ledger::tally(&verdicts))
}

/// "0 regressions" in a few comparisons is a wide bound, not a rate of 0%: say which.
fn describe_tally(t: &AaTally) -> String {
    format!(
        "{} comparisons, {} regressions, {} inconclusive; false-regression rate at most {:.1}% (one-sided {:.0}%, exact binomial)",
        t.comparisons,
        t.regressions,
        t.inconclusive,
        t.regression_rate_upper * 100.0,
        BOUND_CONFIDENCE * 100.0
    )
}

fn print_real_calibration(workload: &Workload, commit: &CommitInfo, calibration: &Calibration) {
    println!(
        "\nA/A calibration of {} on {}: {}; median half-width of the throughput interval {:.2}%; smallest throughput drop flagged reliably ~{:.1}%",
        workload.name,
        commit.short(),
        describe_tally(&calibration.this_run),
        calibration.median_ci_half_width * 100.0,
        calibration.smallest_reliable_drop * 100.0
    );
}

fn print_recorded(workload: &Workload, recorded: &AaTally) {
    println!(
        "\nreal A/A comparisons of {} on this host under this rule, all recorded: {}; {} with none a regression would bound it at {:.0}%",
        workload.name,
        describe_tally(recorded),
        recorded.comparisons_for_target,
        calibration::AA_REGRESSION_MAX * 100.0
    );
}

fn empty_calibration(workload: &Workload, commit: &CommitInfo) -> Calibration {
    Calibration {
        workload: workload.name.clone(),
        commit: commit.clone(),
        this_run: aa_ledger::tally(&[]),
        recorded: aa_ledger::tally(&[]),
        median_ci_half_width: 0.0,
        smallest_reliable_drop: 0.0,
        results: Vec::new(),
        bank_trials: 0,
        order_effect: None,
        replay: Vec::new(),
        design: String::new(),
        margins: None,
        calibrated_replay: Vec::new(),
    }
}
