//! The decision rule of docs/STATISTICS.md. The unit is the trial; base and head trials are
//! paired; per pair r = ln(head / base). The interval of the median r comes from order statistics and
//! the sign test, so its coverage is exact for any distribution of r at any number of pairs
//! (given independent pairs): [r(k), r(n+1-k)] misses the true median on each side with
//! probability P(Binomial(n, 1/2) <= k-1). A metric is a regression when its one-sided bound
//! nearest "no change" is beyond the practical margin, a pass when the bound on the other side
//! is within it, inconclusive otherwise; the one-sided levels come from the sequential design
//! in `compare` (error spent over its looks and metrics).

use serde::{Deserialize, Serialize};

use crate::verdict::state::Verdict;

/// Coverage the displayed two-sided interval aims for (reached from 6 pairs on; below that the
/// widest interval, [min, max], is shown with the coverage it has).
pub const DISPLAY_COVERAGE: f64 = 0.95;

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
    /// The broker's CPU time per message may rise by this fraction before it is a regression.
    #[serde(default = "default_cpu_per_msg_rise")]
    pub cpu_per_msg_rise: f64,
    /// Instructions per request of the deterministic tier may rise by this fraction.
    #[serde(default = "default_instructions_rise")]
    pub instructions_rise: f64,
}

fn default_instructions_rise() -> f64 {
    INSTRUCTIONS_RISE_DEFAULT
}

/// Default rise of instructions per request that counts as a regression (1%): ten times the
/// run-to-run spread measured here (0.1% over 8 runs, BENCHMARKS.md).
pub const INSTRUCTIONS_RISE_DEFAULT: f64 = 0.01;

fn default_cpu_per_msg_rise() -> f64 {
    CPU_PER_MSG_RISE_DEFAULT
}

/// Default for `Margins::cpu_per_msg_rise` (also the CLI default).
pub const CPU_PER_MSG_RISE_DEFAULT: f64 = 0.05;

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
            cpu_per_msg_rise: default_cpu_per_msg_rise(),
            instructions_rise: default_instructions_rise(),
        }
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
    /// Exact probability that [ci_low_ratio, ci_high_ratio] covers the true median ratio
    /// (0 in results stored before it was recorded).
    #[serde(default)]
    pub ci_coverage: f64,
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

/// P(Binomial(n, 1/2) <= j), exactly enough for the n of a comparison (n < 1000).
pub fn binomial_half_cdf(n: usize, j: usize) -> f64 {
    let mut term = 0.5f64.powi(n as i32); // C(n, 0) / 2^n
    let mut sum = term;
    for i in 1..=j.min(n) {
        term *= (n + 1 - i) as f64 / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// The largest rank k (1-based) whose one-sided miss probability P(Bin(n, 1/2) <= k-1) is at
/// most `tail`: the bound r(k) (or r(n+1-k)) then holds with probability >= 1 - tail. `None`
/// when even the extreme order statistic is not sure enough (too few pairs for `tail`).
pub fn sign_rank(n: usize, tail: f64) -> Option<usize> {
    (1..=n.div_ceil(2))
        .take_while(|k| binomial_half_cdf(n, k - 1) <= tail)
        .last()
}

/// A two-sided interval of the median and the exact probability that it covers it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianInterval {
    pub low: f64,
    pub high: f64,
    pub coverage: f64,
}

/// The narrowest order-statistic interval that covers the median with `target` probability, or
/// [min, max] with the (lower) coverage it has when there are too few values.
pub fn median_interval(xs: &[f64], target: f64) -> MedianInterval {
    assert!(!xs.is_empty(), "interval of nothing");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let k = sign_rank(n, (1.0 - target) / 2.0).unwrap_or(1);
    MedianInterval {
        low: v[k - 1],
        high: v[n - k],
        coverage: 1.0 - 2.0 * binomial_half_cdf(n, k - 1),
    }
}

/// One-sided miss probabilities a decision may take at one look, for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    /// Calling a regression when the true change is exactly at the margin.
    pub regression_tail: f64,
    /// Calling a pass when the true change is exactly at the margin.
    pub pass_tail: f64,
}

/// Compares paired samples. `higher_is_better` for throughput, not for latency.
pub fn compare_metric(
    metric: &str,
    base: &[f64],
    head: &[f64],
    margin: f64,
    higher_is_better: bool,
    levels: Levels,
) -> MetricComparison {
    assert_eq!(base.len(), head.len(), "samples must be paired");
    let mut logs: Vec<f64> = base.iter().zip(head).map(|(b, h)| (h / b).ln()).collect();
    logs.sort_by(f64::total_cmp);
    let n = logs.len();
    let limit = if higher_is_better {
        (1.0 - margin).ln()
    } else {
        (1.0 + margin).ln()
    };
    // The one-sided bounds: `low(k)` is below the median, `high(k)` above it, each with
    // probability >= 1 - P(Bin(n, 1/2) <= k-1).
    let low = |k: usize| logs[k - 1];
    let high = |k: usize| logs[n - k];
    let regression = sign_rank(n, levels.regression_tail).is_some_and(|k| {
        if higher_is_better {
            high(k) < limit
        } else {
            low(k) > limit
        }
    });
    let pass = sign_rank(n, levels.pass_tail).is_some_and(|k| {
        if higher_is_better {
            low(k) > limit
        } else {
            high(k) < limit
        }
    });
    let verdict = match (regression, pass) {
        (true, _) => Verdict::Regression,
        (false, true) => Verdict::Pass,
        (false, false) => Verdict::Inconclusive,
    };
    let shown = median_interval(&logs, DISPLAY_COVERAGE);
    MetricComparison {
        metric: metric.to_owned(),
        pairs: n,
        median_ratio: median(&logs).exp(),
        ci_low_ratio: shown.low.exp(),
        ci_high_ratio: shown.high.exp(),
        ci_coverage: shown.coverage,
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
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Levels of a single look at 5% each way.
    const FIVE_PERCENT: Levels = Levels {
        regression_tail: 0.025,
        pass_tail: 0.025,
    };

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
        let c = compare_metric("throughput", &base, &head, 0.05, true, FIVE_PERCENT);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
    }

    #[test]
    fn a_twenty_percent_drop_is_a_regression() {
        let base = noisy(100_000.0, 0.02, 7, 3);
        let head = noisy(80_000.0, 0.02, 7, 4);
        let c = compare_metric("throughput", &base, &head, 0.05, true, FIVE_PERCENT);
        assert_eq!(c.verdict, Verdict::Regression, "{c:?}");
        assert!((c.median_ratio - 0.8).abs() < 0.03);
    }

    #[test]
    fn too_few_pairs_for_the_level_decide_nothing() {
        let base = vec![100.0; 4];
        let head = vec![50.0; 4];
        // The most extreme of 4 pairs misses with probability 1/16 > 2.5%.
        let c = compare_metric("throughput", &base, &head, 0.05, true, FIVE_PERCENT);
        assert_eq!(c.verdict, Verdict::Inconclusive, "{c:?}");
    }

    #[test]
    fn a_drop_near_the_margin_under_heavy_noise_is_inconclusive() {
        let base = vec![100_000.0; 7];
        let head: Vec<f64> = [0.80, 0.85, 0.90, 0.95, 1.00, 1.05, 1.10]
            .iter()
            .map(|r| r * 100_000.0)
            .collect();
        let c = compare_metric("throughput", &base, &head, 0.05, true, FIVE_PERCENT);
        assert_eq!(c.verdict, Verdict::Inconclusive, "{c:?}");
    }

    #[test]
    fn latency_rises_are_regressions_and_falls_pass() {
        let base = noisy(2.0, 0.02, 7, 7);
        let worse = noisy(3.0, 0.02, 7, 8);
        let better = noisy(1.5, 0.02, 7, 8);
        assert_eq!(
            compare_metric("p99", &base, &worse, 0.10, false, FIVE_PERCENT).verdict,
            Verdict::Regression
        );
        assert_eq!(
            compare_metric("p99", &base, &better, 0.10, false, FIVE_PERCENT).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn sign_ranks_and_coverages_are_the_textbook_ones() {
        // n = 5: [min, max] covers 1 - 2/32 = 93.75%; 95% needs 6 pairs (96.9%).
        assert_eq!(
            median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).coverage,
            0.9375
        );
        let six = median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.95);
        assert_eq!((six.low, six.high), (1.0, 6.0));
        assert!((six.coverage - 0.96875).abs() < 1e-12);
        // n = 3: 75%, the real coverage of the old bootstrap interval at 3 pairs.
        assert_eq!(median_interval(&[1.0, 2.0, 3.0], 0.95).coverage, 0.75);
        // n = 15, 95%: ranks 4..12 (P(Bin(15, 1/2) <= 3) = 0.0176).
        assert_eq!(sign_rank(15, 0.025), Some(4));
        assert_eq!(sign_rank(4, 0.05), None);
        assert!((binomial_half_cdf(10, 10) - 1.0).abs() < 1e-12);
    }

    /// Coverage checked by simulation where it matters: few pairs and noise as large as this
    /// machine's (log-ratios spread by tens of percent, skewed, with outliers).
    #[test]
    fn the_interval_covers_the_true_median_as_often_as_it_says() {
        let mut rng = SmallRng::seed_from_u64(5);
        for n in [3, 5, 6, 9, 15] {
            let mut covered = 0;
            let mut claimed = 0.0;
            let runs = 4_000;
            for _ in 0..runs {
                // Skewed noise with a known median of 0: |N|-like half of the time, outliers.
                let xs: Vec<f64> = (0..n)
                    .map(|_| {
                        let u: f64 = rng.random_range(-1.0..1.0);
                        let outlier = if rng.random_bool(0.1) { 3.0 } else { 1.0 };
                        if u < 0.0 {
                            u * 0.1 * outlier
                        } else {
                            u * 0.4 * outlier
                        }
                    })
                    .collect();
                let i = median_interval(&xs, 0.95);
                claimed = i.coverage;
                if i.low <= 0.0 && 0.0 <= i.high {
                    covered += 1;
                }
            }
            let observed = covered as f64 / runs as f64;
            // Four standard errors of a proportion near 0.95 over 4,000 runs is about 0.014.
            assert!(
                (observed - claimed).abs() < 0.02,
                "n={n}: covered {observed:.3}, claims {claimed:.3}"
            );
        }
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
