//! Every rule that turns measurements into a verdict, and a verdict into an exit code:
//! the three states and how they combine, a measured pair's typed outcome, the absolute
//! limits (docs/STATISTICS.md rule 6), the gate's verdict, bisect's codes and the exit codes
//! documented in the README. The statistics under one metric's verdict (intervals against
//! margins, the sequential design) are in `stats` and `compare`.

use serde::{Deserialize, Serialize};

use crate::build::git::CommitInfo;
use crate::error::HarnessError;
use crate::store::db::AcceptanceRow;
use crate::trial::summary::{FailoverSummary, Side, TrialFailure, TrialSummary};
use crate::trial::workload::Workload;
use crate::verdict::compare::Comparison;
use crate::verdict::state::Verdict;
use crate::verdict::stats::{median, median_interval, DISPLAY_COVERAGE};

/// What a bisect step says about its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepVerdict {
    Good,
    Bad,
    Skip,
}

/// A bisect step's answer from its deciding metrics' verdict: like the good commit, like the
/// bad one, or untestable (inconclusive after the extra pairs).
pub fn bisect_step(verdict: Verdict) -> StepVerdict {
    match verdict {
        Verdict::Regression => StepVerdict::Bad,
        Verdict::Pass => StepVerdict::Good,
        Verdict::Inconclusive => StepVerdict::Skip,
    }
}

/// What measuring a pair of commits came to.
#[derive(Debug)]
pub enum PairOutcome {
    /// Both sides built and gave valid trials: the comparison decides.
    Compared(Box<Comparison>),
    /// A side does not build (the tail of its build log): no numbers.
    DoesNotBuild { side: Side, log_tail: String },
    /// A side built but a trial of it failed (crashed, timed out, stayed invalid).
    SideFailed(TrialFailure),
}

impl PairOutcome {
    /// For `compare` and `gate`, where a side that does not build is an infrastructure
    /// failure: the comparison, or the failed trial for the caller to report.
    pub fn into_result(
        self,
        base: &CommitInfo,
        head: &CommitInfo,
    ) -> Result<Result<Comparison, TrialFailure>, HarnessError> {
        match self {
            PairOutcome::Compared(c) => Ok(Ok(*c)),
            PairOutcome::SideFailed(f) => Ok(Err(f)),
            PairOutcome::DoesNotBuild { side, log_tail } => {
                Err(does_not_build(side, &log_tail, base, head))
            }
        }
    }
}

/// A side that does not build, as the error `compare`, `gate` and `instructions` report.
pub fn does_not_build(
    side: Side,
    log_tail: &str,
    base: &CommitInfo,
    head: &CommitInfo,
) -> HarnessError {
    let commit = if side == Side::Base { base } else { head };
    HarnessError::Infra(format!("{} does not build:\n{log_tail}", commit.short()))
}

/// Bisect's good end that does not build: no step can be decided against it.
pub fn good_does_not_build(good: &CommitInfo, log_tail: &str) -> HarnessError {
    HarnessError::Infra(format!(
        "the good commit {} does not build:\n{log_tail}",
        good.short()
    ))
}

/// Absolute limits of a workload checked on the head's trials, three-state on the interval of
/// the median (docs/STATISTICS.md rule 6): a fail when the whole interval is beyond the limit,
/// a pass when the whole interval is within it, inconclusive when the limit is inside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitCheck {
    pub metric: String,
    pub median: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Exact coverage of [ci_low, ci_high].
    pub ci_coverage: f64,
    pub limit: f64,
    pub verdict: Verdict,
}

pub fn check_limits(workload: &Workload, trials: &[TrialSummary]) -> Vec<LimitCheck> {
    let mut checks = Vec::new();
    let series = |f: fn(&TrialSummary) -> f64| trials.iter().map(f).collect::<Vec<_>>();
    let check = |metric: &str, xs: Vec<f64>, limit: f64, at_least: bool| {
        let interval = median_interval(&xs, DISPLAY_COVERAGE);
        let (within, beyond) = if at_least {
            (interval.low >= limit, interval.high < limit)
        } else {
            (interval.high <= limit, interval.low > limit)
        };
        LimitCheck {
            metric: metric.to_owned(),
            median: median(&xs),
            ci_low: interval.low,
            ci_high: interval.high,
            ci_coverage: interval.coverage,
            limit,
            verdict: if beyond {
                Verdict::Regression
            } else if within {
                Verdict::Pass
            } else {
                Verdict::Inconclusive
            },
        }
    };
    if let Some(min) = workload.limits.throughput_min_msgs_per_s {
        checks.push(check(
            "throughput msg/s (>=)",
            series(|t| t.throughput),
            min,
            true,
        ));
    }
    if let Some(max) = workload.limits.p99_max_ms {
        checks.push(check("p99 ms (<=)", series(|t| t.p99_ms), max, false));
    }
    let failovers: Vec<FailoverSummary> = trials.iter().filter_map(|t| t.failover).collect();
    if let (Some(max), false) = (workload.limits.acked_lost_max, failovers.is_empty()) {
        // Not a median: one trial that lost an acknowledged write is one too many.
        let worst = failovers.iter().map(|f| f.acked_lost).max().unwrap_or(0) as f64;
        checks.push(LimitCheck {
            metric: "acked lost, worst trial (<=)".to_owned(),
            median: worst,
            ci_low: worst,
            ci_high: worst,
            ci_coverage: 1.0,
            limit: max as f64,
            verdict: if worst > max as f64 {
                Verdict::Regression
            } else {
                Verdict::Pass
            },
        });
    }
    if let (Some(max), false) = (workload.limits.longest_ack_gap_max_s, failovers.is_empty()) {
        let gaps = failovers.iter().map(|f| f.longest_ack_gap_s).collect();
        checks.push(check("longest without an ack s (<=)", gaps, max, false));
    }
    if let Some(max) = workload.limits.p999_max_ms {
        // Trials recorded before p99.9 was kept have none: the check is left out, not failed.
        let xs: Vec<f64> = trials.iter().filter_map(|t| t.p999_ms).collect();
        if !xs.is_empty() {
            checks.push(check("p99.9 ms (<=)", xs, max, false));
        }
    }
    checks
}

/// The worst of the limit checks (pass when there are none).
pub fn limits_verdict(checks: &[LimitCheck]) -> Verdict {
    Verdict::worst(checks.iter().map(|c| c.verdict))
}

/// What the gate decided for one workload (`gate.json` holds one per workload).
#[derive(Debug, Serialize, Deserialize)]
pub struct GateResult {
    pub workload: String,
    pub base: Option<CommitInfo>,
    pub head: CommitInfo,
    pub comparison: Option<Comparison>,
    pub limits: Vec<LimitCheck>,
    pub verdict: Verdict,
    pub failure: Option<TrialFailure>,
    pub note: Option<String>,
    /// Where the wall-clock margins came from when a stored calibration was read.
    #[serde(default)]
    pub margins_source: Option<String>,
    /// The acceptances that made `base` the commit measured against (empty: the baseline).
    #[serde(default)]
    pub accepted: Vec<AcceptanceRow>,
}

/// One workload's gate: a failed trial leaves it inconclusive; otherwise the worst of its
/// absolute limits and its comparison with the baseline (when there is one).
pub fn gate_verdict(
    failure: Option<&TrialFailure>,
    limits: &[LimitCheck],
    comparison: Option<&Comparison>,
) -> Verdict {
    if failure.is_some() {
        Verdict::Inconclusive
    } else {
        Verdict::worst([
            limits_verdict(limits),
            comparison.map_or(Verdict::Pass, |c| c.verdict),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed trial leaves that workload's own verdict inconclusive.
    #[test]
    fn a_failed_trial_is_no_pass() {
        let failure = TrialFailure {
            side: Side::Head,
            status: crate::trial::runner::TrialStatus::Crashed,
            detail: "exited".into(),
        };
        assert_eq!(
            gate_verdict(Some(&failure), &[], None),
            Verdict::Inconclusive
        );
        assert_eq!(gate_verdict(None, &[], None), Verdict::Pass);
    }

    /// One failover trial that lost an acknowledged write fails the workload, whatever the
    /// others did; the time without an ack is judged like a latency.
    #[test]
    fn one_trial_losing_an_acked_write_fails_a_failover_workload() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let workload =
            Workload::find("failover-rf3-quorum-acks-all-c32-s256-20s", &dir).expect("shipped");
        let trial = |lost: u64, gap_s: f64| TrialSummary {
            throughput: 1000.0,
            p99_ms: 100.0,
            p999_ms: None,
            per_second: vec![],
            peak_rss_mib: None,
            broker_cpu_us_per_msg: None,
            failover: Some(FailoverSummary {
                acked_lost: lost,
                longest_ack_gap_s: gap_s,
            }),
        };
        let verdicts = |trials: &[TrialSummary]| -> Vec<(String, Verdict)> {
            check_limits(&workload, trials)
                .into_iter()
                .map(|c| (c.metric, c.verdict))
                .collect()
        };
        let clean = verdicts(&[trial(0, 9.5), trial(0, 9.8), trial(0, 10.1)]);
        assert!(clean.iter().all(|(_, v)| *v == Verdict::Pass), "{clean:?}");
        let one_lost = verdicts(&[trial(0, 9.5), trial(3, 9.8), trial(0, 10.1)]);
        assert_eq!(one_lost[0].1, Verdict::Regression, "{one_lost:?}");
        let slow = verdicts(&[trial(0, 25.0), trial(0, 26.0), trial(0, 30.0)]);
        assert_eq!(slow[1].1, Verdict::Regression, "{slow:?}");
    }

    /// A bisect step reads a regression as bad, a pass as good, inconclusive as skip.
    #[test]
    fn bisect_steps_follow_the_verdict() {
        use Verdict::*;
        assert_eq!(bisect_step(Pass), StepVerdict::Good);
        assert_eq!(bisect_step(Regression), StepVerdict::Bad);
        assert_eq!(bisect_step(Inconclusive), StepVerdict::Skip);
    }
}
