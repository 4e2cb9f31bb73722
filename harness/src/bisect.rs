//! Bisect a regression over first-parent history with the same paired statistic as `compare`:
//! each step compares the candidate against the good endpoint (the reference). A commit that
//! does not build, or stays inconclusive after the extra pairs, is skipped (as `git bisect`
//! does with exit code 125). The culprit is confirmed against its parent with more pairs.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::build::git::CommitInfo;
use crate::error::HarnessError;
use crate::session::Session;
use crate::trial::summary::Side;
use crate::trial::workload::Workload;
use crate::verdict::compare::{CompareSettings, Comparison, ErrorControl};
use crate::verdict::decision::{bisect_step, good_does_not_build, PairOutcome, StepVerdict};
use crate::verdict::state::Verdict;
use crate::verdict::stats::MetricComparison;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BisectStep {
    /// Position in the range (0 = first commit after good).
    pub index: usize,
    pub commit: CommitInfo,
    pub verdict: StepVerdict,
    pub pairs: usize,
    pub throughput_ratio: Option<f64>,
    pub ci: Option<(f64, f64)>,
    /// Candidate / good for p99 and for the broker's peak RSS.
    #[serde(default)]
    pub p99_ratio: Option<f64>,
    #[serde(default)]
    pub peak_rss_ratio: Option<f64>,
    /// Candidate / good for the deterministic tier's instructions per request.
    #[serde(default)]
    pub instructions_ratio: Option<f64>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BisectLog {
    pub workload: String,
    pub good: CommitInfo,
    pub bad: CommitInfo,
    pub range: Vec<CommitInfo>,
    pub steps: Vec<BisectStep>,
    /// The first bad commit, when it could be pinned to one.
    pub culprit: Option<CommitInfo>,
    /// The commit the steps pointed at when its confirmation against its parent did not show
    /// the regression: never named as the culprit.
    #[serde(default)]
    pub unconfirmed: Option<CommitInfo>,
    /// When skips leave several candidates: all of them.
    pub candidates: Vec<CommitInfo>,
    /// Culprit vs its parent, with more pairs: the effect size and its interval.
    pub confirmation: Option<Comparison>,
    /// The metrics that classified the steps (those the endpoints regressed on).
    #[serde(default)]
    pub deciding: Vec<String>,
    pub builds: usize,
    pub wall_s: f64,
    pub notes: Vec<String>,
}

/// What the search needs from the world: which broker a commit builds, and a measured pair.
/// `Session` builds and measures real commits; a unit test measures through a mock
/// `TrialSource`, with the real statistics, so the search is tested without a build.
pub trait PairBench {
    /// Equal for commits that build the same broker (their build inputs are the same).
    fn build_key(&self, commit: &CommitInfo) -> Result<String, HarnessError>;
    /// Builds both commits and measures them as a pair; with it, how many builds this made
    /// (new or failed; a cached one does not count).
    fn measure_pair(
        &self,
        base: &CommitInfo,
        head: &CommitInfo,
        workload: &Workload,
        settings: &CompareSettings,
        label: &str,
    ) -> Result<(PairOutcome, usize), HarnessError>;
    /// A progress line (silent under --quiet).
    fn say(&self, line: &str);
}

impl PairBench for Session {
    fn build_key(&self, commit: &CommitInfo) -> Result<String, HarnessError> {
        Session::build_key(self, commit)
    }

    fn measure_pair(
        &self,
        base: &CommitInfo,
        head: &CommitInfo,
        workload: &Workload,
        settings: &CompareSettings,
        label: &str,
    ) -> Result<(PairOutcome, usize), HarnessError> {
        self.measure(base, head, workload, settings, "bisect", label)
    }

    fn say(&self, line: &str) {
        Session::say(self, line);
    }
}

/// Step details of commits decided without trials.
const SAME_AS_GOOD: &str = "same build inputs as good: identical broker, not measured";
const SAME_AS_BAD: &str = "same build inputs as bad: identical broker, not measured";

/// One-sided level of each look of a bisect step: the extreme of 3 pairs (1/8). A step only
/// says which endpoint a commit resembles, at margins half the endpoint effect; a wrong step
/// shows up when the culprit is confirmed against its parent with the family-wise design.
const STEP_TAIL: f64 = 0.125;

/// Settings per step: fewer pairs than `compare`, more only while inconclusive.
pub fn step_settings(base: &CompareSettings) -> CompareSettings {
    CompareSettings {
        min_pairs: base.min_pairs.clamp(3, 3),
        max_pairs: base.max_pairs.clamp(3, 9),
        error: ErrorControl::PerLook { tail: STEP_TAIL },
        ..*base
    }
}

/// Once the endpoints differ by a known effect, a step only has to say which endpoint a commit
/// resembles: its margins sit at the geometric midpoint of the endpoint effect (never tighter
/// than the configured margins). A benign commit then reads "good" even on a noisy machine,
/// where a strict "within 5%" would stay inconclusive.
pub fn midpoint_settings(step: &CompareSettings, endpoints: &Comparison) -> CompareSettings {
    let rise = |ratio: f64, margin: f64| (ratio.sqrt() - 1.0).max(margin);
    let throughput_drop =
        (1.0 - endpoints.throughput.median_ratio.sqrt()).max(step.margins.throughput_drop);
    CompareSettings {
        margins: crate::verdict::stats::Margins {
            throughput_drop,
            p99_rise: rise(endpoints.p99.median_ratio, step.margins.p99_rise),
            peak_rss_rise: endpoints
                .peak_rss
                .as_ref()
                .map_or(step.margins.peak_rss_rise, |m| {
                    rise(m.median_ratio, step.margins.peak_rss_rise)
                }),
            cpu_per_msg_rise: endpoints
                .cpu_per_msg
                .as_ref()
                .map_or(step.margins.cpu_per_msg_rise, |m| {
                    rise(m.median_ratio, step.margins.cpu_per_msg_rise)
                }),
            instructions_rise: endpoints
                .instruction_metric()
                .map_or(step.margins.instructions_rise, |m| {
                    rise(m.median_ratio, step.margins.instructions_rise)
                }),
            allocations_rise: step.margins.allocations_rise,
        },
        ..*step
    }
}

/// Which metrics decide a step: those on which the endpoints showed the regression clearly (a
/// metric the fault does not move would only add noise and turn clear steps into skips).
#[derive(Debug, Clone, Copy)]
struct Deciding {
    throughput: bool,
    p99: bool,
    peak_rss: bool,
    cpu_per_msg: bool,
    instructions: bool,
}

/// A regressed metric's effect (in margins) must reach this share of the strongest regressed
/// metric's for it to classify steps too.
const DECIDING_STRENGTH_SHARE: f64 = 0.5;

const ALL_METRICS: Deciding = Deciding {
    throughput: true,
    p99: true,
    peak_rss: true,
    cpu_per_msg: true,
    instructions: true,
};

impl Deciding {
    /// A metric decides when the endpoints regressed on it and its effect, counted in margins,
    /// is at least `DECIDING_STRENGTH_SHARE` of the strongest one's. A fault that multiplies
    /// peak RSS by 5 must not be bisected on a -7% throughput blip that noise put at the
    /// endpoints (that blip would then turn every benign step into a skip).
    fn from_endpoints(c: &Comparison) -> Self {
        let strength = |m: Option<&MetricComparison>| {
            m.filter(|m| m.verdict == Verdict::Regression)
                .map_or(0.0, |m| {
                    m.median_ratio.ln().abs() / m.limit_ratio.ln().abs()
                })
        };
        let strengths = [
            strength(Some(&c.throughput)),
            strength(Some(&c.p99)),
            strength(c.peak_rss.as_ref()),
            strength(c.cpu_per_msg.as_ref()),
            strength(c.instruction_metric()),
        ];
        let strongest = strengths.iter().copied().fold(0.0, f64::max);
        let decides = |s: f64| s > 0.0 && s >= strongest * DECIDING_STRENGTH_SHARE;
        let picked = Self {
            throughput: decides(strengths[0]),
            p99: decides(strengths[1]),
            peak_rss: decides(strengths[2]),
            cpu_per_msg: decides(strengths[3]),
            instructions: decides(strengths[4]),
        };
        if picked.names().is_empty() {
            ALL_METRICS
        } else {
            picked
        }
    }

    /// Only the deterministic tier decides.
    fn deterministic_only(self) -> bool {
        self.instructions && !(self.throughput || self.p99 || self.peak_rss || self.cpu_per_msg)
    }

    fn names(self) -> Vec<&'static str> {
        [
            (self.throughput, "throughput"),
            (self.p99, "p99"),
            (self.peak_rss, "peak RSS"),
            (self.cpu_per_msg, "broker CPU/msg"),
            (self.instructions, "instructions/request"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect()
    }

    fn verdict(self, c: &Comparison) -> Verdict {
        let picked = [
            (self.throughput, Some(&c.throughput)),
            (self.p99, Some(&c.p99)),
            (self.peak_rss, c.peak_rss.as_ref()),
            (self.cpu_per_msg, c.cpu_per_msg.as_ref()),
        ];
        // A deciding tier that could not measure leaves the step undecided.
        let tier = c
            .instructions
            .as_ref()
            .filter(|_| self.instructions)
            .map(|t| t.verdict());
        Verdict::worst(
            picked
                .iter()
                .filter_map(|(on, m)| m.filter(|_| *on))
                .map(|m| m.verdict)
                .chain(tier),
        )
    }
}

fn measure(
    bench: &dyn PairBench,
    good: &CommitInfo,
    candidate: &CommitInfo,
    workload: &Workload,
    settings: &CompareSettings,
    deciding: Deciding,
    builds: &mut usize,
) -> Result<(StepVerdict, Option<Comparison>, Option<String>), HarnessError> {
    let (outcome, built) = bench.measure_pair(
        good,
        candidate,
        workload,
        settings,
        &format!("{} vs good", candidate.short()),
    )?;
    *builds += built;
    match outcome {
        PairOutcome::Compared(c) => {
            let verdict = bisect_step(deciding.verdict(&c));
            let detail = (verdict == StepVerdict::Skip)
                .then(|| "inconclusive after the extra pairs".to_owned());
            Ok((verdict, Some(*c), detail))
        }
        PairOutcome::DoesNotBuild {
            side: Side::Head,
            log_tail,
        } => Ok((
            StepVerdict::Skip,
            None,
            Some(format!(
                "build failed: {}",
                log_tail.lines().next().unwrap_or("")
            )),
        )),
        PairOutcome::DoesNotBuild { log_tail, .. } => Err(good_does_not_build(good, &log_tail)),
        // The candidate's broker crashed or never produced a valid trial: untestable, skip.
        PairOutcome::SideFailed(f) if f.side == Side::Head => Ok((
            StepVerdict::Skip,
            None,
            Some(format!(
                "{:?}: {}",
                f.status,
                f.detail.lines().next().unwrap_or("")
            )),
        )),
        PairOutcome::SideFailed(f) => Err(HarnessError::Infra(format!(
            "the good commit could not be measured: {:?}: {}",
            f.status, f.detail
        ))),
    }
}

/// Picks the untested, unskipped index in (lo, hi) nearest the middle.
fn next_candidate(lo: isize, hi: usize, tested: &[Option<StepVerdict>]) -> Option<usize> {
    let start = (lo + 1) as usize;
    if start >= hi {
        return None;
    }
    let mid = (lo + hi as isize) / 2;
    let mut candidates: Vec<usize> = (start..hi).filter(|i| tested[*i].is_none()).collect();
    candidates.sort_by_key(|i| (*i as isize - mid).abs());
    candidates.first().copied()
}

pub fn bisect(
    session: &Session,
    good_rev: &str,
    bad_rev: &str,
    workload: &Workload,
    settings: &CompareSettings,
) -> Result<BisectLog, HarnessError> {
    let good = session.repo.resolve(good_rev)?;
    let bad = session.repo.resolve(bad_rev)?;
    if good == bad {
        return Err(HarnessError::Usage(
            "good and bad are the same commit".into(),
        ));
    }
    if !session.repo.is_ancestor(&good, &bad)? {
        if session.repo.is_ancestor(&bad, &good)? {
            return Err(HarnessError::Usage(format!(
                "good ({}) and bad ({}) are the wrong way round: bad is an ancestor of good; swap --good and --bad",
                good.short(),
                bad.short()
            )));
        }
        return Err(HarnessError::Usage(format!(
            "{} is not an ancestor of {}",
            good.short(),
            bad.short()
        )));
    }
    let range = session.repo.first_parent_range(&good, &bad)?;
    search(session, good, bad, range, workload, settings)
}

/// The search over `range` (the first-parent commits after `good` up to `bad`): the endpoints
/// first, then the untested commit nearest the middle of what is left, then the culprit
/// confirmed against its parent.
pub fn search(
    bench: &dyn PairBench,
    good: CommitInfo,
    bad: CommitInfo,
    range: Vec<CommitInfo>,
    workload: &Workload,
    settings: &CompareSettings,
) -> Result<BisectLog, HarnessError> {
    let started = Instant::now();
    // A commit that builds the same broker as an endpoint (it only touched files outside the
    // build inputs) performs like it: trials could tell them apart only by noise.
    let good_key = bench.build_key(&good)?;
    let bad_key = bench.build_key(&bad)?;
    let mut search = Search {
        bench,
        workload,
        settings,
        step: step_settings(settings),
        deciding: ALL_METRICS,
        log: BisectLog {
            workload: workload.name.clone(),
            good,
            bad,
            range,
            steps: Vec::new(),
            culprit: None,
            unconfirmed: None,
            candidates: Vec::new(),
            confirmation: None,
            deciding: Vec::new(),
            builds: 0,
            wall_s: 0.0,
            notes: Vec::new(),
        },
        good_key,
        bad_key,
    };
    if search.good_key == search.bad_key {
        search.log.notes.push(format!(
            "{} and {} build the same broker (no change to the build inputs between them): nothing to bisect",
            search.log.good.short(),
            search.log.bad.short()
        ));
    } else if search.endpoints_regressed()? {
        let (first_candidate, hi) = search.narrow()?;
        search.log.candidates = search.log.range[first_candidate..=hi].to_vec();
        if first_candidate == hi {
            search.confirm(hi)?;
        } else {
            search.log.notes.push(format!(
                "skipped commits leave {} candidates for the first bad commit",
                search.log.candidates.len()
            ));
        }
    }
    search.log.wall_s = started.elapsed().as_secs_f64();
    Ok(search.log)
}

/// A bisect in progress: how it measures, what decides a step, and what it has found so far.
struct Search<'a> {
    bench: &'a dyn PairBench,
    workload: &'a Workload,
    settings: &'a CompareSettings,
    /// The settings of a step (after the endpoints: margins at the midpoint of their effect).
    step: CompareSettings,
    deciding: Deciding,
    log: BisectLog,
    good_key: String,
    bad_key: String,
}

impl Search<'_> {
    fn measure(
        &mut self,
        base: &CommitInfo,
        candidate: &CommitInfo,
        settings: &CompareSettings,
        deciding: Deciding,
    ) -> Result<(StepVerdict, Option<Comparison>, Option<String>), HarnessError> {
        measure(
            self.bench,
            base,
            candidate,
            self.workload,
            settings,
            deciding,
            &mut self.log.builds,
        )
    }

    /// Compares the endpoints on every metric; when bad regressed, picks the metrics that
    /// decide the steps and their margins. False when there is nothing to bisect.
    fn endpoints_regressed(&mut self) -> Result<bool, HarnessError> {
        let (good, bad) = (self.log.good.clone(), self.log.bad.clone());
        let last = self.log.range.len() - 1;
        self.bench.say(&format!(
            "bisect: {} commits after {} up to {}; checking the endpoints",
            self.log.range.len(),
            good.short(),
            bad.short()
        ));
        let (verdict, comparison, detail) =
            self.measure(&good, &bad, self.settings, ALL_METRICS)?;
        self.deciding = comparison
            .as_ref()
            .map_or(ALL_METRICS, Deciding::from_endpoints);
        self.log.deciding = self
            .deciding
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        push_step(
            &mut self.log,
            last,
            &bad,
            verdict,
            comparison.as_ref(),
            detail,
        );
        match verdict {
            StepVerdict::Bad => {
                let endpoints = comparison
                    .as_ref()
                    .expect("a verdict comes from a comparison");
                self.step = midpoint_settings(&self.step, endpoints);
                if self.deciding.deterministic_only() {
                    // The steps are decided by the instruction counts: more wall-clock pairs
                    // would not change a step, only show its wall-clock effect more precisely.
                    self.step.max_pairs = self.step.min_pairs;
                }
                let margins = &self.step.margins;
                self.log.notes.push(format!(
                    "steps are classified by {} at the midpoint of the endpoint effect: throughput -{:.1}%, p99 +{:.1}%, peak RSS +{:.1}%, CPU/msg +{:.1}%, instructions/request +{:.2}%",
                    self.deciding.names().join(" and "),
                    margins.throughput_drop * 100.0,
                    margins.p99_rise * 100.0,
                    margins.peak_rss_rise * 100.0,
                    margins.cpu_per_msg_rise * 100.0,
                    margins.instructions_rise * 100.0
                ));
                Ok(true)
            }
            StepVerdict::Good => {
                self.log.notes.push(format!(
                    "no regression between {} and {}: bad is not slower than good beyond the margin",
                    good.short(),
                    bad.short()
                ));
                Ok(false)
            }
            StepVerdict::Skip => {
                self.log.notes.push(format!(
                    "the endpoints could not be told apart ({}); nothing to bisect",
                    self.log.steps[0].detail.clone().unwrap_or_default()
                ));
                Ok(false)
            }
        }
    }

    /// Tests the untested commit nearest the middle until no untested commit is left between
    /// the last good and the first bad one; returns the candidates' span (first, last bad).
    fn narrow(&mut self) -> Result<(usize, usize), HarnessError> {
        let last = self.log.range.len() - 1;
        let mut tested: Vec<Option<StepVerdict>> = vec![None; self.log.range.len()];
        tested[last] = Some(StepVerdict::Bad);
        let (mut lo, mut hi): (isize, usize) = (-1, last);
        while let Some(i) = next_candidate(lo, hi, &tested) {
            let (good, commit) = (self.log.good.clone(), self.log.range[i].clone());
            let key = self.bench.build_key(&commit)?;
            let (verdict, comparison, detail) = if key == self.good_key {
                (StepVerdict::Good, None, Some(SAME_AS_GOOD.to_owned()))
            } else if key == self.bad_key {
                (StepVerdict::Bad, None, Some(SAME_AS_BAD.to_owned()))
            } else {
                let step = self.step;
                self.measure(&good, &commit, &step, self.deciding)?
            };
            self.bench.say(&format!(
                "  step {}: {} -> {verdict:?}",
                self.log.steps.len(),
                commit.short()
            ));
            push_step(
                &mut self.log,
                i,
                &commit,
                verdict,
                comparison.as_ref(),
                detail,
            );
            tested[i] = Some(verdict);
            match verdict {
                StepVerdict::Bad => hi = i,
                StepVerdict::Good => lo = i as isize,
                StepVerdict::Skip => {}
            }
        }
        Ok(((lo + 1) as usize, hi))
    }

    /// Confirms the one candidate left (at `index` in the range) against its parent and looks
    /// for a second regression on either side of it. The steps only say which endpoint a
    /// commit resembles; the culprit is named only when its own comparison with its parent,
    /// at the configured margins and error, shows the regression.
    fn confirm(&mut self, index: usize) -> Result<(), HarnessError> {
        let culprit = self.log.range[index].clone();
        let parent = if index == 0 {
            self.log.good.clone()
        } else {
            self.log.range[index - 1].clone()
        };
        self.bench.say(&format!(
            "culprit {}; confirming against its parent {}",
            culprit.short(),
            parent.short()
        ));
        let confirm = CompareSettings {
            min_pairs: self.settings.min_pairs.max(5),
            ..*self.settings
        };
        let (_, comparison, _) = self.measure(&parent, &culprit, &confirm, self.deciding)?;
        let confirmed = comparison.as_ref().map(|c| self.deciding.verdict(c));
        self.log.confirmation = comparison;
        self.look_beside(index, &parent, &culprit)?;
        if confirmed == Some(Verdict::Regression) {
            self.log.culprit = Some(culprit);
        } else {
            self.log.notes.push(format!(
                "{} is not named the culprit: against its parent {} its confirmation says {}, not a regression (the drop may be spread over several commits, or a step erred)",
                culprit.short(),
                parent.short(),
                confirmed.map_or("nothing (a side could not be measured)".to_owned(), |v| format!("{v:?}").to_lowercase())
            ));
            self.log.unconfirmed = Some(culprit);
        }
        Ok(())
    }

    /// More than one regression in the range? Checks both sides of the culprit: before it
    /// (parent vs good) and after it (bad vs culprit), with the step margins (half the
    /// endpoint effect: the configured 5% would read this machine's noise as a second
    /// regression). A few pairs suffice: only a clear "regression" adds a note; a side that
    /// builds the same broker needs no trials.
    fn look_beside(
        &mut self,
        index: usize,
        parent: &CommitInfo,
        culprit: &CommitInfo,
    ) -> Result<(), HarnessError> {
        let (good, bad) = (self.log.good.clone(), self.log.bad.clone());
        let extra = CompareSettings {
            max_pairs: self.step.min_pairs + 2,
            ..self.step
        };
        if index > 0 && self.bench.build_key(parent)? != self.good_key {
            let (before, _, _) = self.measure(&good, parent, &extra, self.deciding)?;
            if before == StepVerdict::Bad {
                self.log.notes.push(format!(
                    "the range holds more than one regression: {} (the culprit's parent) is already slower than good by more than half the endpoint effect; bisect good..{} to find the earlier one",
                    parent.short(),
                    parent.short()
                ));
            }
        }
        if index != self.log.range.len() - 1 && self.bench.build_key(culprit)? != self.bad_key {
            let (after, _, _) = self.measure(culprit, &bad, &extra, self.deciding)?;
            if after == StepVerdict::Bad {
                self.log.notes.push(format!(
                    "the range holds more than one regression: {} is slower again than the culprit {}",
                    bad.short(),
                    culprit.short()
                ));
            }
        }
        Ok(())
    }
}

fn push_step(
    log: &mut BisectLog,
    index: usize,
    commit: &CommitInfo,
    verdict: StepVerdict,
    comparison: Option<&Comparison>,
    detail: Option<String>,
) {
    log.steps.push(BisectStep {
        index,
        commit: commit.clone(),
        verdict,
        pairs: comparison.map_or(0, |c| c.pairs()),
        throughput_ratio: comparison.map(|c| c.throughput.median_ratio),
        ci: comparison.map(|c| (c.throughput.ci_low_ratio, c.throughput.ci_high_ratio)),
        p99_ratio: comparison.map(|c| c.p99.median_ratio),
        peak_rss_ratio: comparison.and_then(|c| c.peak_rss.as_ref().map(|m| m.median_ratio)),
        instructions_ratio: comparison
            .and_then(Comparison::instruction_metric)
            .map(|m| m.median_ratio),
        detail,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(
        name: &str,
        median_ratio: f64,
        limit_ratio: f64,
        verdict: Verdict,
    ) -> MetricComparison {
        MetricComparison {
            metric: name.to_owned(),
            pairs: 3,
            median_ratio,
            ci_low_ratio: median_ratio,
            ci_high_ratio: median_ratio,
            ci_coverage: 0.75,
            limit_ratio,
            detectable: Some(0.01),
            verdict,
        }
    }

    fn endpoints(throughput: f64, p99: f64, peak_rss: f64) -> Comparison {
        let verdict = |ratio: f64, limit: f64, higher_is_better: bool| {
            let worse = if higher_is_better {
                ratio < limit
            } else {
                ratio > limit
            };
            if worse {
                Verdict::Regression
            } else {
                Verdict::Pass
            }
        };
        Comparison {
            base: Vec::new(),
            head: Vec::new(),
            throughput: metric(
                "throughput",
                throughput,
                0.95,
                verdict(throughput, 0.95, true),
            ),
            p99: metric("p99", p99, 1.10, verdict(p99, 1.10, false)),
            peak_rss: Some(metric(
                "peak RSS",
                peak_rss,
                1.5,
                verdict(peak_rss, 1.5, false),
            )),
            cpu_per_msg: None,
            degradation: None,
            invalid: Default::default(),
            verdict: Verdict::Regression,
            design: String::new(),
            instructions: None,
            out_of_budget: false,
        }
    }

    #[test]
    fn a_noise_blip_beside_a_large_effect_does_not_decide_steps() {
        // The no-flush fixture as CI once measured it: peak RSS x5.8, throughput -7.5%.
        let d = Deciding::from_endpoints(&endpoints(0.925, 1.0, 5.8));
        assert_eq!(d.names(), vec!["peak RSS"]);
    }

    #[test]
    fn effects_of_similar_strength_all_decide() {
        // A lock on the produce path: throughput -92%, p99 x20.
        let d = Deciding::from_endpoints(&endpoints(0.08, 20.0, 1.0));
        assert_eq!(d.names(), vec!["throughput", "p99"]);
    }

    #[test]
    fn without_a_regressed_metric_every_metric_decides() {
        let d = Deciding::from_endpoints(&endpoints(1.0, 1.0, 1.0));
        assert_eq!(
            d.names(),
            vec![
                "throughput",
                "p99",
                "peak RSS",
                "broker CPU/msg",
                "instructions/request"
            ]
        );
    }

    fn with_instructions(mut c: Comparison, ratio: f64) -> Comparison {
        let runs = |x: f64| vec![x as u64, (x * 1.001) as u64, (x * 0.999) as u64];
        let sample = |x: f64| crate::verdict::instructions::InstructionSample {
            runs: runs(x),
            startup: 1_000_000,
            heap_blocks: 110_000,
            heap_bytes: 56_000_000,
            heap_block_runs: vec![110_000; 3],
            idle_per_s: 0.0,
            idle_removed: 0,
            requests: 2_534,
            messages: 32_000,
            stream_sha256: String::new(),
            tmpfs: true,
        };
        c.attach_instructions(Some(crate::verdict::instructions::TierOutcome::Compared(
            Box::new(crate::verdict::instructions::InstructionComparison::new(
                sample(235e6),
                sample(235e6 * ratio),
                crate::verdict::stats::INSTRUCTIONS_RISE_DEFAULT,
                crate::verdict::stats::ALLOCATIONS_RISE_DEFAULT,
            )),
        )));
        c
    }

    #[test]
    fn a_graded_cpu_fault_is_bisected_on_instructions_alone() {
        // 5% more work per message: +5% instructions, while noise put throughput at -7%
        // (a regression at the 5% margin, but 3.5x weaker in margins than the tier's effect).
        let endpoints = with_instructions(endpoints(0.93, 1.0, 1.0), 1.05);
        let d = Deciding::from_endpoints(&endpoints);
        assert_eq!(d.names(), vec!["instructions/request"]);
        assert!(d.deterministic_only());
        let step = midpoint_settings(&step_settings(&CompareSettings::default()), &endpoints);
        assert!((step.margins.instructions_rise - (1.05f64.sqrt() - 1.0)).abs() < 0.002);
        // A benign step reads good whatever the wall clock said; the culprit reads bad.
        let benign = with_instructions(endpoints.clone(), 1.0005);
        assert_eq!(d.verdict(&benign), Verdict::Pass);
        let culprit = with_instructions(endpoints.clone(), 1.05);
        assert_eq!(d.verdict(&culprit), Verdict::Regression);
    }

    #[test]
    fn a_tier_that_could_not_measure_leaves_a_step_undecided() {
        let endpoints = with_instructions(endpoints(1.0, 1.0, 1.0), 1.05);
        let d = Deciding::from_endpoints(&endpoints);
        let mut step = endpoints.clone();
        step.attach_instructions(Some(
            crate::verdict::instructions::TierOutcome::NotMeasured {
                reason: "the broker did not stop cleanly".into(),
            },
        ));
        assert_eq!(d.verdict(&step), Verdict::Inconclusive);
    }

    mod search {
        use std::cell::Cell;
        use std::path::PathBuf;

        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};

        use super::super::*;
        use crate::cmd::exit::{self, EXIT_CULPRIT_UNCONFIRMED, EXIT_PASS};
        use crate::trial::summary::{TrialFailure, TrialSummary};
        use crate::trial::workload::SEED_WORKLOAD;
        use crate::verdict::compare::{run_compare, TrialSource};

        const THROUGHPUT: f64 = 100_000.0;

        /// Trials of two commits whose throughput differs by their means, with +-`spread` noise.
        struct Trials {
            rng: SmallRng,
            means: [f64; 2],
            spread: f64,
        }

        impl TrialSource for Trials {
            fn trial(&mut self, side: Side) -> Result<TrialSummary, TrialFailure> {
                let mean = self.means[usize::from(side == Side::Head)];
                let x = mean * (1.0 + self.rng.random_range(-self.spread..self.spread));
                Ok(TrialSummary {
                    throughput: x,
                    p99_ms: 200_000.0 / x,
                    p999_ms: None,
                    per_second: vec![x as u64; 30],
                    peak_rss_mib: Some(100.0),
                    broker_cpu_us_per_msg: None,
                    failover: None,
                })
            }
        }

        /// A first-parent history `c0` (good) .. `cN` (bad): commit i's throughput is
        /// `mean(i)`; every pair goes through the real `run_compare`.
        struct History {
            commits: Vec<CommitInfo>,
            mean: Box<dyn Fn(usize) -> f64>,
            spread: f64,
            seed: Cell<u64>,
        }

        impl History {
            fn new(len: usize, seed: u64, spread: f64, mean: Box<dyn Fn(usize) -> f64>) -> Self {
                let commits = (0..=len)
                    .map(|i| CommitInfo {
                        sha: format!("{i:040x}"),
                        summary: format!("commit {i}"),
                    })
                    .collect();
                Self {
                    commits,
                    mean,
                    spread,
                    seed: Cell::new(seed),
                }
            }

            fn index(&self, c: &CommitInfo) -> usize {
                self.commits.iter().position(|x| x == c).expect("known")
            }

            fn search(&self) -> BisectLog {
                let workload = Workload::find(
                    SEED_WORKLOAD,
                    &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads"),
                )
                .unwrap();
                let settings = CompareSettings {
                    seed: self.seed.get(),
                    ..CompareSettings::default()
                };
                search(
                    self,
                    self.commits[0].clone(),
                    self.commits.last().unwrap().clone(),
                    self.commits[1..].to_vec(),
                    &workload,
                    &settings,
                )
                .unwrap()
            }
        }

        impl PairBench for History {
            fn build_key(&self, commit: &CommitInfo) -> Result<String, HarnessError> {
                Ok(commit.sha.clone())
            }

            fn measure_pair(
                &self,
                base: &CommitInfo,
                head: &CommitInfo,
                _: &Workload,
                settings: &CompareSettings,
                _: &str,
            ) -> Result<(PairOutcome, usize), HarnessError> {
                let seed = self.seed.get() + 1;
                self.seed.set(seed);
                let mut trials = Trials {
                    rng: SmallRng::seed_from_u64(seed),
                    means: [(self.mean)(self.index(base)), (self.mean)(self.index(head))],
                    spread: self.spread,
                };
                let outcome = match run_compare(&mut trials, settings) {
                    Ok(c) => PairOutcome::Compared(Box::new(c)),
                    Err(f) => PairOutcome::SideFailed(f),
                };
                Ok((outcome, 0))
            }

            fn say(&self, _: &str) {}
        }

        /// Random histories (2 to 12 commits, the culprit anywhere, a drop of 20-60%, noise
        /// +-5%): the search names the culprit, confirmed, and every step it measured agrees
        /// with the truth.
        #[test]
        fn a_single_drop_anywhere_in_random_histories_is_named_and_confirmed() {
            let mut rng = SmallRng::seed_from_u64(0x5eed);
            for case in 0..40 {
                let len = rng.random_range(2..=12);
                let culprit = rng.random_range(1..=len);
                let drop = rng.random_range(0.2..0.6);
                let history = History::new(
                    len,
                    1_000 * case,
                    0.05,
                    Box::new(move |i| THROUGHPUT * if i >= culprit { 1.0 - drop } else { 1.0 }),
                );
                let log = history.search();
                let named = log.culprit.as_ref().map(|c| history.index(c));
                assert_eq!(
                    named,
                    Some(culprit),
                    "case {case}: {len} commits, drop {drop:.2} at {culprit}: {:?}",
                    log.notes
                );
                assert_eq!(exit::for_bisect(&log), EXIT_PASS);
                for step in &log.steps {
                    let truth = if step.index + 1 >= culprit {
                        StepVerdict::Bad
                    } else {
                        StepVerdict::Good
                    };
                    assert!(
                        step.verdict == truth || step.verdict == StepVerdict::Skip,
                        "case {case}: step at {} said {:?}",
                        step.index,
                        step.verdict
                    );
                }
            }
        }

        /// A drop spread over many commits, 3% each: the steps point at the first commit
        /// beyond the midpoint of the endpoints' effect (13 commits put it between the 6th
        /// and the 7th), but against its parent that commit is no regression at the 5%
        /// margin, so it is not named. Trials vary by +-0.2%: the steps are clear-cut.
        #[test]
        fn a_culprit_its_confirmation_does_not_confirm_is_not_named() {
            let history = History::new(
                13,
                7,
                0.002,
                Box::new(|i| THROUGHPUT * 0.97_f64.powi(i as i32)),
            );
            let log = history.search();
            assert!(log.culprit.is_none(), "{:?}", log.notes);
            assert!(log.unconfirmed.is_some(), "{:?}", log.notes);
            assert!(
                log.notes
                    .iter()
                    .any(|n| n.contains("is not named the culprit")),
                "{:?}",
                log.notes
            );
            assert_eq!(exit::for_bisect(&log), EXIT_CULPRIT_UNCONFIRMED);
        }
    }
}
