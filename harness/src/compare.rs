//! Interleaved A/B comparison: pairs of trials in randomised order (A B or B A), the paired
//! statistic after `min_pairs`, more pairs while inconclusive, up to `max_pairs`. The trial
//! source is a trait so the scheduling and statistics are tested with a mock.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::stats::{
    compare_metric, last_vs_first_third, median, Margins, MetricComparison, Verdict,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Base,
    Head,
}

/// The numbers of one valid trial that the statistics use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialSummary {
    pub throughput: f64,
    pub p99_ms: f64,
    pub per_second: Vec<u64>,
    /// The broker's peak resident set, when the platform reports it.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
}

/// Why a side could not produce a valid trial (no numbers; the comparison stops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialFailure {
    pub side: Side,
    pub status: crate::runner::TrialStatus,
    pub detail: String,
}

pub trait TrialSource {
    /// One valid trial of `side` (the source reruns invalid trials a bounded number of times).
    fn trial(&mut self, side: Side) -> Result<TrialSummary, TrialFailure>;
    /// Called after each finished pair (progress display).
    fn pair_done(&mut self, _pairs: usize, _max_pairs: usize) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompareSettings {
    pub min_pairs: usize,
    pub max_pairs: usize,
    pub margins: Margins,
    pub seed: u64,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            min_pairs: 5,
            max_pairs: 15,
            margins: Margins::default(),
            seed: 0x00c0_ffee,
        }
    }
}

/// In-run degradation of the head: last third of the per-second rate vs the first third.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Degradation {
    pub median_ratio: f64,
    pub finding: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub base: Vec<TrialSummary>,
    pub head: Vec<TrialSummary>,
    pub throughput: MetricComparison,
    pub p99: MetricComparison,
    /// The broker's peak RSS; `None` when a trial has no RSS figure.
    #[serde(default)]
    pub peak_rss: Option<MetricComparison>,
    pub degradation: Option<Degradation>,
    pub verdict: Verdict,
}

impl Comparison {
    pub fn pairs(&self) -> usize {
        self.base.len()
    }

    /// Every metric compared, throughput first.
    pub fn metrics(&self) -> impl Iterator<Item = &MetricComparison> {
        [&self.throughput, &self.p99]
            .into_iter()
            .chain(self.peak_rss.as_ref())
    }
}

fn evaluate(
    base: &[TrialSummary],
    head: &[TrialSummary],
    settings: &CompareSettings,
) -> Comparison {
    let pick =
        |v: &[TrialSummary], f: fn(&TrialSummary) -> f64| v.iter().map(f).collect::<Vec<_>>();
    let throughput = compare_metric(
        "throughput",
        &pick(base, |t| t.throughput),
        &pick(head, |t| t.throughput),
        settings.margins.throughput_drop,
        true,
        settings.seed,
    );
    let p99 = compare_metric(
        "p99",
        &pick(base, |t| t.p99_ms),
        &pick(head, |t| t.p99_ms),
        settings.margins.p99_rise,
        false,
        settings.seed ^ 1,
    );
    let rss = |v: &[TrialSummary]| v.iter().map(|t| t.peak_rss_mib).collect::<Option<Vec<_>>>();
    let peak_rss = rss(base).zip(rss(head)).map(|(base_rss, head_rss)| {
        compare_metric(
            "peak RSS",
            &base_rss,
            &head_rss,
            settings.margins.peak_rss_rise,
            false,
            settings.seed ^ 2,
        )
    });
    let ratios: Vec<f64> = head
        .iter()
        .filter_map(|t| last_vs_first_third(&t.per_second))
        .collect();
    let degradation = (!ratios.is_empty()).then(|| {
        let median_ratio = median(&ratios);
        Degradation {
            median_ratio,
            finding: median_ratio < 1.0 - settings.margins.throughput_drop,
        }
    });
    let mut comparison = Comparison {
        base: base.to_vec(),
        head: head.to_vec(),
        throughput,
        p99,
        peak_rss,
        degradation,
        verdict: Verdict::Inconclusive,
    };
    comparison.verdict = Verdict::worst(comparison.metrics().map(|m| m.verdict));
    comparison
}

/// Runs interleaved pairs until the verdict is decided or `max_pairs` is reached.
pub fn run_compare(
    source: &mut dyn TrialSource,
    settings: &CompareSettings,
) -> Result<Comparison, TrialFailure> {
    let mut rng = SmallRng::seed_from_u64(settings.seed);
    let mut base = Vec::new();
    let mut head = Vec::new();
    loop {
        let order = if rng.random_bool(0.5) {
            [Side::Base, Side::Head]
        } else {
            [Side::Head, Side::Base]
        };
        for side in order {
            let trial = source.trial(side)?;
            match side {
                Side::Base => base.push(trial),
                Side::Head => head.push(trial),
            }
        }
        source.pair_done(base.len(), settings.max_pairs);
        if base.len() >= settings.min_pairs {
            let comparison = evaluate(&base, &head, settings);
            if comparison.verdict != Verdict::Inconclusive || base.len() >= settings.max_pairs {
                return Ok(comparison);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::TrialStatus;

    /// Draws trials from fixed distributions; remembers the order it was asked in.
    struct Mock {
        rng: SmallRng,
        base_mean: f64,
        head_mean: f64,
        spread: f64,
        calls: Vec<Side>,
        fail_head_at: Option<usize>,
        /// Head's peak RSS relative to base's.
        head_rss_factor: f64,
    }

    /// Peak RSS of the mock's base side.
    const MOCK_RSS_MIB: f64 = 14.0;

    impl Mock {
        fn new(base_mean: f64, head_mean: f64, spread: f64) -> Self {
            Self {
                rng: SmallRng::seed_from_u64(7),
                base_mean,
                head_mean,
                spread,
                calls: Vec::new(),
                fail_head_at: None,
                head_rss_factor: 1.0,
            }
        }
    }

    impl TrialSource for Mock {
        fn trial(&mut self, side: Side) -> Result<TrialSummary, TrialFailure> {
            self.calls.push(side);
            let heads = self.calls.iter().filter(|s| **s == Side::Head).count();
            if side == Side::Head && self.fail_head_at == Some(heads) {
                return Err(TrialFailure {
                    side,
                    status: TrialStatus::Crashed,
                    detail: "mock crash".into(),
                });
            }
            let (mean, rss) = if side == Side::Base {
                (self.base_mean, MOCK_RSS_MIB)
            } else {
                (self.head_mean, MOCK_RSS_MIB * self.head_rss_factor)
            };
            let x = mean * (1.0 + self.rng.random_range(-self.spread..self.spread));
            let rss_noise = 1.0 + self.rng.random_range(-0.12..0.12);
            Ok(TrialSummary {
                throughput: x,
                p99_ms: 200_000.0 / x,
                per_second: vec![x as u64; 30],
                peak_rss_mib: Some(rss * rss_noise),
            })
        }
    }

    #[test]
    fn a_clear_regression_is_found_with_the_minimum_pairs() {
        let mut mock = Mock::new(100_000.0, 50_000.0, 0.02);
        let c = run_compare(&mut mock, &CompareSettings::default()).unwrap();
        assert_eq!(c.verdict, Verdict::Regression);
        assert_eq!(c.pairs(), 5);
    }

    #[test]
    fn memory_growth_alone_is_a_regression() {
        let mut mock = Mock::new(100_000.0, 100_000.0, 0.01);
        mock.head_rss_factor = 30.0;
        let c = run_compare(&mut mock, &CompareSettings::default()).unwrap();
        assert_eq!(c.throughput.verdict, Verdict::Pass);
        assert_eq!(c.peak_rss.unwrap().verdict, Verdict::Regression);
        assert_eq!(c.verdict, Verdict::Regression);
    }

    #[test]
    fn rss_noise_of_one_commit_passes() {
        let mut mock = Mock::new(100_000.0, 100_000.0, 0.01);
        let c = run_compare(&mut mock, &CompareSettings::default()).unwrap();
        assert_eq!(c.peak_rss.unwrap().verdict, Verdict::Pass);
    }

    #[test]
    fn equal_sides_pass() {
        let mut mock = Mock::new(100_000.0, 100_000.0, 0.01);
        let c = run_compare(&mut mock, &CompareSettings::default()).unwrap();
        assert_eq!(c.verdict, Verdict::Pass, "{:?}", c.throughput);
    }

    #[test]
    fn noise_near_the_margin_adds_pairs_up_to_the_bound_then_says_inconclusive() {
        let mut mock = Mock::new(100_000.0, 95_000.0, 0.25);
        let c = run_compare(&mut mock, &CompareSettings::default()).unwrap();
        assert_eq!(c.pairs(), 15);
        assert_eq!(c.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn pairs_are_interleaved_in_randomised_order() {
        let mut mock = Mock::new(100_000.0, 100_000.0, 0.01);
        run_compare(&mut mock, &CompareSettings::default()).unwrap();
        let pairs: Vec<_> = mock.calls.chunks(2).collect();
        assert!(
            pairs.iter().all(|p| p[0] != p[1]),
            "each pair has one of each side"
        );
        assert!(
            pairs.iter().any(|p| p[0] == Side::Base) && pairs.iter().any(|p| p[0] == Side::Head)
        );
    }

    #[test]
    fn a_failed_trial_stops_the_comparison_without_numbers() {
        let mut mock = Mock::new(100_000.0, 100_000.0, 0.01);
        mock.fail_head_at = Some(2);
        let err = run_compare(&mut mock, &CompareSettings::default()).unwrap_err();
        assert_eq!(err.status, TrialStatus::Crashed);
        assert_eq!(err.side, Side::Head);
    }

    #[test]
    fn throttling_within_runs_is_reported() {
        let base: Vec<TrialSummary> = (0..5)
            .map(|_| TrialSummary {
                throughput: 1.0,
                p99_ms: 1.0,
                per_second: vec![100; 30],
                peak_rss_mib: None,
            })
            .collect();
        let head: Vec<TrialSummary> = (0..5)
            .map(|_| TrialSummary {
                throughput: 1.0,
                p99_ms: 1.0,
                per_second: (0..30).map(|i| 100 - 2 * i).collect(),
                peak_rss_mib: None,
            })
            .collect();
        let c = evaluate(&base, &head, &CompareSettings::default());
        assert!(c.degradation.unwrap().finding);
    }
}
