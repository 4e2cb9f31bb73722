//! `power`: how often the shipped rule finds regressions of known size on this machine, from
//! real trials of real commits (graded fixtures), and how often it calls an unchanged commit a
//! regression, each rate with its exact confidence interval.
//!
//! Trials run in rounds: each round runs the base twice (the second run is the A/A arm's
//! head) and each head once, in a random order. Every arm's pairs (base trial, arm trial of
//! the same round) are then judged comparison after comparison by the rule `compare` uses
//! (`compare::judge_recorded`). Sharing the base trial of a round between the arms spends
//! one trial per pair instead of two, so an hour gives about twice the comparisons that
//! separate `compare` runs would; the two trials of a pair are then up to a round apart
//! instead of adjacent, which widens a pair's noise a little (the A/A arm measures that too).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common, Statistics};
use crate::cmd::exit::{EXIT_INFRA, EXIT_PASS};
use crate::error::HarnessError;
use crate::output::render::pct;
use crate::session::{first_unbuilt, BuiltCommit, Session};
use crate::trial::summary::{Side, TrialSummary};
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::compare::{judge_recorded, CompareSettings, Comparison, PairOrder};
use crate::verdict::state::Verdict;
use crate::verdict::stats::{median, rate_interval};

/// Confidence of the intervals printed beside each rate.
const RATE_CONFIDENCE: f64 = 0.95;

#[derive(Args)]
pub struct PowerArgs {
    /// The commit every arm is compared against.
    #[arg(long)]
    base: String,
    /// A commit of known effect compared against the base (repeatable): one arm each.
    #[arg(long, required = true)]
    head: Vec<String>,
    /// Rounds of trials: each runs the base twice and every head once, in a random order.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    #[arg(long, default_value = SEED_WORKLOAD)]
    workload: String,
    #[command(flatten)]
    stats: Statistics,
    /// Write the arms, their comparisons and rates as JSON.
    #[arg(long)]
    json_output: Option<PathBuf>,
}

/// One arm: the comparisons its recorded pairs make, and its rates.
#[derive(Debug, Serialize)]
pub struct Arm {
    /// "A/A" for the base against itself, else the head's short sha and summary.
    pub name: String,
    pub head: CommitInfo,
    pub pairs: usize,
    /// Median over all of the arm's pairs of head/base throughput.
    pub throughput_ratio: f64,
    pub comparisons: Vec<Comparison>,
    /// Comparisons called a regression (any metric), with its interval.
    pub regressions: usize,
    pub regression_interval: (f64, f64),
    /// Comparisons whose throughput alone was called a regression, with its interval.
    pub throughput_regressions: usize,
    pub throughput_interval: (f64, f64),
    pub passes: usize,
    /// Minutes of trials one comparison took on average (both sides; the base trial shared
    /// with the other arms counted in full).
    pub minutes_per_comparison: f64,
}

#[derive(Debug, Serialize)]
pub struct PowerReport {
    pub workload: String,
    pub base: CommitInfo,
    pub rounds: usize,
    pub design: String,
    pub arms: Vec<Arm>,
}

/// A trial slot of a round: the base, the base's second run (the A/A arm) or head `i`.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Base,
    Again,
    Head(usize),
}

impl PowerArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let settings = self.stats.settings()?;
        if settings.order == PairOrder::Abba {
            // A round's order is drawn over all of its slots; ABBA blocks would be judged as
            // units without having run as blocks.
            return Err(HarnessError::Usage(
                "power draws the order of each round itself; --order abba is for compare, gate, calibrate and bisect".into(),
            ));
        }
        if self.rounds < settings.min_pairs {
            return Err(HarnessError::Usage(format!(
                "--rounds {} is fewer than the {} pairs of one comparison",
                self.rounds, settings.min_pairs
            )));
        }
        let workload = c.workload(&self.workload)?;
        let s = session(c)?;
        let base = s.build(&s.repo.resolve(&self.base)?)?;
        let heads = self
            .head
            .iter()
            .map(|h| s.build(&s.repo.resolve(h)?))
            .collect::<Result<Vec<BuiltCommit>, HarnessError>>()?;
        for head in &heads {
            if let Some((_, log)) = first_unbuilt(&base, head) {
                eprintln!("a commit does not build:\n{log}");
                return Ok(EXIT_INFRA);
            }
        }
        let slots: Vec<Slot> = [Slot::Base, Slot::Again]
            .into_iter()
            .chain((0..heads.len()).map(Slot::Head))
            .collect();
        let Some(Rounds {
            trials,
            seconds,
            invalid,
        }) = self.run_rounds(&s, &base, &heads, &slots, &workload, settings.seed)
        else {
            return Ok(EXIT_INFRA);
        };
        let trial_seconds = |at: usize| seconds[at] / trials[at].len().max(1) as f64;
        let arms: Vec<Arm> = slots[1..]
            .iter()
            .enumerate()
            .map(|(i, &slot)| {
                let (name, head) = match slot {
                    Slot::Head(h) => (arm_name(&heads[h].commit), heads[h].commit.clone()),
                    _ => ("A/A".to_owned(), base.commit.clone()),
                };
                let per_pair = trial_seconds(0) + trial_seconds(i + 1);
                arm(name, head, &trials[0], &trials[i + 1], &settings, per_pair)
            })
            .collect();
        let report = PowerReport {
            workload: workload.name.clone(),
            base: base.commit.clone(),
            rounds: self.rounds,
            design: settings.describe(4),
            arms,
        };
        println!(
            "\n{}: {} rounds against base {}, {} invalid trials rerun\n",
            report.workload,
            report.rounds,
            report.base.short(),
            invalid
        );
        println!("{}", power_table(&report.arms));
        println!("{}", report.design);
        write_json(&self.json_output, &report)?;
        Ok(EXIT_PASS)
    }
}

/// What the rounds measured: trials per slot in round order, the seconds they took, and how
/// many invalid trials were rerun.
struct Rounds {
    trials: Vec<Vec<TrialSummary>>,
    seconds: Vec<f64>,
    invalid: usize,
}

impl PowerArgs {
    /// Runs `--rounds` rounds, each slot once per round in an order shuffled from `seed`; None
    /// when a trial could not be measured (said on stderr).
    fn run_rounds(
        &self,
        s: &Session,
        base: &BuiltCommit,
        heads: &[BuiltCommit],
        slots: &[Slot],
        workload: &Workload,
        seed: u64,
    ) -> Option<Rounds> {
        let mut trials: Vec<Vec<TrialSummary>> = vec![Vec::new(); slots.len()];
        let mut seconds: Vec<f64> = vec![0.0; slots.len()];
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut invalid = 0;
        for round in 0..self.rounds {
            let mut order: Vec<usize> = (0..slots.len()).collect();
            order.shuffle(&mut rng);
            for at in order {
                let slot = slots[at];
                let (built, side) = match slot {
                    Slot::Base => (base, Side::Base),
                    Slot::Again => (base, Side::Head),
                    Slot::Head(i) => (&heads[i], Side::Head),
                };
                let started = Instant::now();
                match s.valid_trial(built, workload, "power", side, &mut invalid) {
                    Ok(trial) => {
                        s.say(&format!(
                            "  round {:>3} {:<6} {}  {:>10.0} msg/s  p99 {:.2} ms",
                            round + 1,
                            slot_name(slot),
                            built.commit.short(),
                            trial.throughput,
                            trial.p99_ms
                        ));
                        trials[at].push(trial);
                        seconds[at] += started.elapsed().as_secs_f64();
                    }
                    Err(failure) => {
                        eprintln!(
                            "{} of {} failed: {:?}: {}",
                            slot_name(slot),
                            built.commit.short(),
                            failure.status,
                            failure.detail
                        );
                        return None;
                    }
                }
            }
        }
        Some(Rounds {
            trials,
            seconds,
            invalid,
        })
    }
}

/// Characters of a head's summary kept in its arm's name (the table stays readable).
const ARM_SUMMARY_CHARS_MAX: usize = 48;

/// A head's short sha and the start of its summary, or its fixture note when it has one
/// ("(fixture: ...)" at the end says what the commit is for).
fn arm_name(commit: &CommitInfo) -> String {
    let summary = commit
        .summary
        .rfind("(fixture: ")
        .map_or(commit.summary.as_str(), |at| &commit.summary[at..]);
    let mut name: String = summary.chars().take(ARM_SUMMARY_CHARS_MAX).collect();
    if name.len() < summary.len() {
        name.push_str("...");
    }
    format!("{} {name}", commit.short())
}

fn slot_name(slot: Slot) -> String {
    match slot {
        Slot::Base => "base".into(),
        Slot::Again => "A/A".into(),
        Slot::Head(i) => format!("head{}", i + 1),
    }
}

/// Judges one arm's recorded pairs and counts its rates.
fn arm(
    name: String,
    head_commit: CommitInfo,
    base: &[TrialSummary],
    head: &[TrialSummary],
    settings: &CompareSettings,
    seconds_per_pair: f64,
) -> Arm {
    let comparisons = judge_recorded(base, head, settings);
    let count = |f: &dyn Fn(&Comparison) -> bool| comparisons.iter().filter(|c| f(c)).count();
    let regressions = count(&|c| c.verdict == Verdict::Regression);
    let throughput_regressions = count(&|c| c.throughput.verdict == Verdict::Regression);
    let interval = |k| {
        if comparisons.is_empty() {
            (0.0, 1.0)
        } else {
            rate_interval(k, comparisons.len(), RATE_CONFIDENCE)
        }
    };
    let pairs = base.len().min(head.len());
    let ratios: Vec<f64> = base
        .iter()
        .zip(head)
        .map(|(b, h)| h.throughput / b.throughput)
        .collect();
    let judged_pairs: usize = comparisons.iter().map(Comparison::pairs).sum();
    Arm {
        name,
        head: head_commit,
        pairs,
        throughput_ratio: if ratios.is_empty() {
            1.0
        } else {
            median(&ratios)
        },
        regressions,
        regression_interval: interval(regressions),
        throughput_regressions,
        throughput_interval: interval(throughput_regressions),
        passes: count(&|c| c.verdict == Verdict::Pass),
        minutes_per_comparison: if comparisons.is_empty() {
            0.0
        } else {
            judged_pairs as f64 * seconds_per_pair / 60.0 / comparisons.len() as f64
        },
        comparisons,
    }
}

fn rate(k: usize, n: usize, (low, high): (f64, f64)) -> String {
    if n == 0 {
        return "no comparison".into();
    }
    format!("{k} of {n} [{:.0}%, {:.0}%]", low * 100.0, high * 100.0)
}

/// One row per arm: its effect, how its comparisons ended, and the rates with their intervals.
fn power_table(arms: &[Arm]) -> Table {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "arm",
        "throughput (median pair)",
        "comparisons",
        "regression, any metric (95% interval)",
        "regression on throughput",
        "pass",
        "inconclusive",
        "pairs each (median)",
        "minutes each",
    ]);
    for a in arms {
        let n = a.comparisons.len();
        let pairs: Vec<f64> = a.comparisons.iter().map(|c| c.pairs() as f64).collect();
        table.add_row(vec![
            a.name.clone(),
            pct(a.throughput_ratio),
            format!("{n} (from {} pairs)", a.pairs),
            rate(a.regressions, n, a.regression_interval),
            rate(a.throughput_regressions, n, a.throughput_interval),
            a.passes.to_string(),
            (n - a.regressions - a.passes).to_string(),
            if pairs.is_empty() {
                "-".into()
            } else {
                format!("{:.0}", median(&pairs))
            },
            format!("{:.1}", a.minutes_per_comparison),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(throughput: f64) -> TrialSummary {
        TrialSummary {
            throughput,
            p99_ms: 1.0,
            p999_ms: None,
            per_second: vec![throughput as u64; 10],
            peak_rss_mib: None,
            broker_cpu_us_per_msg: None,
            failover: None,
        }
    }

    /// An arm's rates come from its judged comparisons, with the exact interval.
    #[test]
    fn an_arm_counts_its_comparisons_and_their_intervals() {
        let base: Vec<TrialSummary> = (0..40).map(|i| trial(100_000.0 + i as f64)).collect();
        let head: Vec<TrialSummary> = (0..40).map(|i| trial(70_000.0 + i as f64)).collect();
        let commit = CommitInfo {
            sha: "0".repeat(40),
            summary: "a 30% drop".into(),
        };
        let a = arm(
            "drop".into(),
            commit,
            &base,
            &head,
            &CompareSettings::default(),
            20.0,
        );
        assert_eq!(a.comparisons.len(), 4);
        assert_eq!((a.regressions, a.throughput_regressions), (4, 4));
        assert_eq!(a.regression_interval, rate_interval(4, 4, RATE_CONFIDENCE));
        assert!((a.throughput_ratio - 0.7).abs() < 0.01);
        // 10 pairs of 20 s each: 200 s.
        assert!((a.minutes_per_comparison - 200.0 / 60.0).abs() < 1e-9);
        assert!(power_table(&[a]).to_string().contains("4 of 4 ["));
    }
}
