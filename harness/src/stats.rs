//! The decision rule of STATISTICS.md. The unit is the trial; base and head trials are paired;
//! per pair r = ln(head / base); the verdict comes from a bootstrap 95% interval of the median
//! r against a practical margin: regression if the whole interval is worse than the margin,
//! pass if the whole interval is better than it, inconclusive otherwise.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Bootstrap resamples per interval.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;
/// Two-sided interval level.
const CONFIDENCE: f64 = 0.95;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Margins {
    /// Throughput may fall by this fraction before it is a regression (0.05 = 5%).
    pub throughput_drop: f64,
    /// p99 may rise by this fraction before it is a regression (0.10 = 10%).
    pub p99_rise: f64,
    /// The broker's peak resident memory may rise by this fraction before it is a regression.
    /// Wide: peak RSS of one commit spreads about +-12% between trials here, and the faults it
    /// catches (a buffer that is never drained) grow it many times over.
    #[serde(default = "default_peak_rss_rise")]
    pub peak_rss_rise: f64,
}

fn default_peak_rss_rise() -> f64 {
    PEAK_RSS_RISE_DEFAULT
}

/// Default for `Margins::peak_rss_rise` (also the CLI default).
pub const PEAK_RSS_RISE_DEFAULT: f64 = 0.5;

impl Default for Margins {
    fn default() -> Self {
        Self {
            throughput_drop: 0.05,
            p99_rise: 0.10,
            peak_rss_rise: default_peak_rss_rise(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Regression,
    Inconclusive,
}

impl Verdict {
    /// Worst of several: regression > inconclusive > pass.
    pub fn worst(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts
            .into_iter()
            .fold(Verdict::Pass, |acc, v| match (acc, v) {
                (Verdict::Regression, _) | (_, Verdict::Regression) => Verdict::Regression,
                (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
                _ => Verdict::Pass,
            })
    }
}

/// Head relative to base for one metric; ratios are head/base (1.0 = equal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricComparison {
    pub metric: String,
    pub pairs: usize,
    pub median_ratio: f64,
    pub ci_low_ratio: f64,
    pub ci_high_ratio: f64,
    /// The ratio beyond which the change counts as a regression.
    pub limit_ratio: f64,
    pub verdict: Verdict,
}

pub fn median(xs: &[f64]) -> f64 {
    assert!(!xs.is_empty(), "median of nothing");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Percentile bootstrap interval of the median (seeded: the same data gives the same interval).
pub fn bootstrap_median_ci(xs: &[f64], seed: u64) -> (f64, f64) {
    if xs.len() == 1 {
        return (xs[0], xs[0]);
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut medians = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut sample = vec![0.0; xs.len()];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for slot in sample.iter_mut() {
            *slot = xs[rng.random_range(0..xs.len())];
        }
        medians.push(median(&sample));
    }
    medians.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    let at = |q: f64| medians[((medians.len() - 1) as f64 * q).round() as usize];
    (at(tail), at(1.0 - tail))
}

/// Compares paired samples. `higher_is_better` for throughput, not for latency.
pub fn compare_metric(
    metric: &str,
    base: &[f64],
    head: &[f64],
    margin: f64,
    higher_is_better: bool,
    seed: u64,
) -> MetricComparison {
    assert_eq!(base.len(), head.len(), "samples must be paired");
    let logs: Vec<f64> = base.iter().zip(head).map(|(b, h)| (h / b).ln()).collect();
    let (lo, hi) = bootstrap_median_ci(&logs, seed);
    let limit = if higher_is_better {
        (1.0 - margin).ln()
    } else {
        (1.0 + margin).ln()
    };
    let verdict = if higher_is_better {
        if hi < limit {
            Verdict::Regression
        } else if lo > limit {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        }
    } else if lo > limit {
        Verdict::Regression
    } else if hi < limit {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    MetricComparison {
        metric: metric.to_owned(),
        pairs: logs.len(),
        median_ratio: median(&logs).exp(),
        ci_low_ratio: lo.exp(),
        ci_high_ratio: hi.exp(),
        limit_ratio: limit.exp(),
        verdict,
    }
}

/// Rate in the last third of a run relative to the first third (1.0 = steady). `None` when the
/// series is too short to split.
pub fn last_vs_first_third(per_second: &[u64]) -> Option<f64> {
    let third = per_second.len() / 3;
    if third == 0 {
        return None;
    }
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len() as f64;
    let first = mean(&per_second[..third]);
    let last = mean(&per_second[per_second.len() - third..]);
    (first > 0.0).then(|| last / first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(center: f64, spread: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n)
            .map(|_| center * (1.0 + rng.random_range(-spread..spread)))
            .collect()
    }

    #[test]
    fn identical_distributions_pass() {
        let base = noisy(100_000.0, 0.01, 7, 1);
        let head = noisy(100_000.0, 0.01, 7, 2);
        let c = compare_metric("throughput", &base, &head, 0.05, true, 9);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
    }

    #[test]
    fn a_twenty_percent_drop_is_a_regression() {
        let base = noisy(100_000.0, 0.02, 5, 3);
        let head = noisy(80_000.0, 0.02, 5, 4);
        let c = compare_metric("throughput", &base, &head, 0.05, true, 9);
        assert_eq!(c.verdict, Verdict::Regression, "{c:?}");
        assert!((c.median_ratio - 0.8).abs() < 0.03);
    }

    #[test]
    fn a_drop_near_the_margin_under_heavy_noise_is_inconclusive() {
        let base = vec![100_000.0; 5];
        let head: Vec<f64> = [0.80, 0.90, 0.95, 1.00, 1.10]
            .iter()
            .map(|r| r * 100_000.0)
            .collect();
        let c = compare_metric("throughput", &base, &head, 0.05, true, 9);
        assert_eq!(c.verdict, Verdict::Inconclusive, "{c:?}");
    }

    #[test]
    fn latency_rises_are_regressions_and_falls_pass() {
        let base = noisy(2.0, 0.02, 5, 7);
        let worse = noisy(3.0, 0.02, 5, 8);
        let better = noisy(1.5, 0.02, 5, 8);
        assert_eq!(
            compare_metric("p99", &base, &worse, 0.10, false, 1).verdict,
            Verdict::Regression
        );
        assert_eq!(
            compare_metric("p99", &base, &better, 0.10, false, 1).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn the_interval_is_reproducible_and_contains_the_median() {
        let xs = noisy(1.0, 0.3, 9, 11);
        let (lo, hi) = bootstrap_median_ci(&xs, 42);
        assert_eq!((lo, hi), bootstrap_median_ci(&xs, 42));
        let m = median(&xs);
        assert!(lo <= m && m <= hi);
    }

    #[test]
    fn worst_verdict_wins() {
        use Verdict::*;
        assert_eq!(Verdict::worst([Pass, Inconclusive, Pass]), Inconclusive);
        assert_eq!(Verdict::worst([Pass, Regression, Inconclusive]), Regression);
        assert_eq!(Verdict::worst([Pass, Pass]), Pass);
    }

    #[test]
    fn throttling_shows_in_the_thirds_ratio() {
        let steady = vec![100; 30];
        let throttled: Vec<u64> = (0..30).map(|i| 100 - 2 * i).collect();
        assert_eq!(last_vs_first_third(&steady), Some(1.0));
        assert!(last_vs_first_third(&throttled).unwrap() < 0.7);
        assert_eq!(last_vs_first_third(&[1, 2]), None);
    }
}
