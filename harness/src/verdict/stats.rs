//! The decision rule of docs/STATISTICS.md. The unit is the trial; base and head trials are
//! paired; per pair r = ln(head / base). The bounds of the median r come from order statistics
//! and the sign test, so their coverage is exact for any distribution of r at any number of
//! pairs (given independent pairs): r(k) lies below the median with probability
//! 1 - P(Binomial(n, 1/2) <= k-1).
//!
//! Per metric, with the one-sided levels of the sequential design in `compare`:
//! - **regression**: the bound nearest "no change" (at the regression level) is beyond zero,
//!   so the change is real, and the median estimate is beyond the practical margin, so it
//!   matters. An unchanged commit is called a regression with probability at most the level.
//! - **pass**: the bound on the other side (at the pass level) is within the margin, and the
//!   pairs could have seen a change of the margin's size: their detectable change (below) is
//!   within it. A change exactly at the margin passes with probability at most the level.
//! - **inconclusive** otherwise.
//!
//! The interval printed with a verdict is these two bounds, so a reader can check the verdict
//! from the table.

use serde::{Deserialize, Serialize};

use crate::verdict::state::Verdict;

/// Coverage of the two-sided interval of the absolute-limit checks (reached from 6 values on;
/// below that the widest interval, [min, max], is shown with the coverage it has).
pub const DISPLAY_COVERAGE: f64 = 0.95;

/// Probability at which a comparison's detectable change is stated: the smallest change its
/// pairs would have told apart from no change this often.
pub const DETECTABLE_POWER: f64 = 0.8;

/// The spread of the log-ratios a detectable change is computed from: 1.4826 x their median
/// absolute deviation, the standard deviation of a normal distribution with that MAD (robust
/// to the outliers this machine's trials have).
const MAD_TO_SD: f64 = 1.4826;

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
    /// Heap allocations per request of the deterministic tier may rise by this fraction.
    #[serde(default = "default_allocations_rise")]
    pub allocations_rise: f64,
}

fn default_allocations_rise() -> f64 {
    ALLOCATIONS_RISE_DEFAULT
}

/// Default rise of heap allocations per request that counts as a regression (2%): one
/// allocation more per request of the replayed stream (43.7 per request at 7a93b18) is 2.3%,
/// and runs of one build spread about 0.05% (BENCHMARKS.md, "Verdicts").
pub const ALLOCATIONS_RISE_DEFAULT: f64 = 0.02;

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
            allocations_rise: default_allocations_rise(),
        }
    }
}

/// Head relative to base for one metric; ratios are head/base (1.0 = equal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricComparison {
    pub metric: String,
    pub pairs: usize,
    pub median_ratio: f64,
    /// The interval the verdict is decided on: the bound nearest "no change" at the regression
    /// level and the other at the pass level (`compare_metric`).
    pub ci_low_ratio: f64,
    pub ci_high_ratio: f64,
    /// Exact probability that [ci_low_ratio, ci_high_ratio] covers the true median ratio
    /// (0 in results stored before it was recorded).
    #[serde(default)]
    pub ci_coverage: f64,
    /// The ratio beyond which the change counts as a regression.
    pub limit_ratio: f64,
    /// The smallest change, as a fraction in the metric's worse direction (0.08: an 8% drop
    /// of throughput, an 8% rise of latency), that these pairs would have told apart from no
    /// change with probability `DETECTABLE_POWER` at this look's level. `None`: no change at
    /// all could have been, the pairs being too few for the level (or a result stored before
    /// it was recorded).
    #[serde(default)]
    pub detectable: Option<f64>,
    pub verdict: Verdict,
}

impl MetricComparison {
    /// The margin as a fraction in the worse direction (0.05 for a 5% drop or rise).
    pub fn margin(&self) -> f64 {
        (self.limit_ratio - 1.0).abs()
    }

    /// Whether these pairs could not see a change of the margin's size: the reason a metric
    /// whose interval lies within the margin is still not a pass.
    pub fn blind_at_margin(&self) -> bool {
        self.detectable.is_none_or(|d| d > self.margin())
    }
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

/// One-sided miss probabilities a decision may take at one look, for one metric. The pass
/// level is never the stricter one (the regression level is also spent over the metrics), so
/// a look whose pairs are too few for the pass level can see no regression either.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    /// Calling a regression when nothing changed.
    pub regression_tail: f64,
    /// Calling a pass when the true change is exactly at the margin.
    pub pass_tail: f64,
}

/// P(Binomial(n, p) >= j).
fn binomial_upper_tail(n: usize, p: f64, j: usize) -> f64 {
    (j..=n)
        .map(|i| {
            let choose = (0..i).fold(1.0, |acc, t| acc * (n - t) as f64 / (t + 1) as f64);
            choose * p.powi(i as i32) * (1.0 - p).powi((n - i) as i32)
        })
        .sum()
}

/// P(Binomial(n, p) >= j), from the log-gamma function: fast enough for the thousands of
/// trials of a rate's interval.
fn binomial_tail_at_least(n: usize, p: f64, j: usize) -> f64 {
    if j == 0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let ln_choose = |i: usize| {
        libm::lgamma(n as f64 + 1.0)
            - libm::lgamma(i as f64 + 1.0)
            - libm::lgamma((n - i) as f64 + 1.0)
    };
    (j..=n)
        .map(|i| (ln_choose(i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp())
        .sum::<f64>()
        .min(1.0)
}

/// The exact (Clopper-Pearson) interval of a rate from `k` events in `n` independent tries, at
/// two-sided `confidence`: the lowest rate at which `k` or more events have probability
/// (1 - confidence)/2, and the highest at which `k` or fewer have. 0 of 20 gives [0, 16.8%];
/// 7 of 7 gives [59.0%, 1].
pub fn rate_interval(k: usize, n: usize, confidence: f64) -> (f64, f64) {
    assert!(n > 0 && k <= n, "{k} events in {n} tries");
    let tail = (1.0 - confidence) / 2.0;
    // Bisection on a probability that moves one way with the rate.
    let solve = |rises_past_tail: &dyn Fn(f64) -> bool| {
        let (mut low, mut high) = (0.0f64, 1.0f64);
        for _ in 0..60 {
            let mid = (low + high) / 2.0;
            if rises_past_tail(mid) {
                high = mid;
            } else {
                low = mid;
            }
        }
        (low + high) / 2.0
    };
    let lower = if k == 0 {
        0.0
    } else {
        solve(&|p| binomial_tail_at_least(n, p, k) >= tail)
    };
    let upper = if k == n {
        1.0
    } else {
        solve(&|p| 1.0 - binomial_tail_at_least(n, p, k + 1) <= tail)
    };
    (lower, upper)
}

/// The standard normal distribution function.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The smallest shift (in log units, worse direction) at which the regression bound at rank
/// `k` of `n` pairs would exclude zero with probability `DETECTABLE_POWER`, for log-ratios
/// spread normally with standard deviation `sd` around their median. The bound r(k) is beyond
/// zero when at least n+1-k pairs are, and each pair is with probability Phi(shift / sd), so
/// the detection probability is a binomial tail, solved for the shift by bisection.
fn detectable_shift(n: usize, k: usize, sd: f64) -> f64 {
    if sd == 0.0 {
        return 0.0;
    }
    let needed = n + 1 - k;
    let power = |shift: f64| binomial_upper_tail(n, normal_cdf(shift / sd), needed);
    // At 40 standard deviations every pair is beyond zero: the power there is 1.
    let (mut low, mut high) = (0.0, 40.0 * sd);
    for _ in 0..100 {
        let mid = (low + high) / 2.0;
        if power(mid) >= DETECTABLE_POWER {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

/// The spread of log-ratios around their median: 1.4826 x their median absolute deviation;
/// when more than half of them sit exactly on the median (figures of coarse resolution, such
/// as memory in whole pages), that is 0 while the others still vary, and their standard
/// deviation is taken instead, so a few equal pairs never claim a noiseless comparison.
fn spread(xs: &[f64], median_of_xs: f64) -> f64 {
    let deviations: Vec<f64> = xs.iter().map(|x| (x - median_of_xs).abs()).collect();
    let mad = MAD_TO_SD * median(&deviations);
    if mad > 0.0 || xs.len() < 2 {
        return mad;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
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
    assert!(!base.is_empty(), "a comparison of no pairs");
    // Work in the worse direction: w = ln(head / base) for latency, -ln(head / base) for
    // throughput, so a regression is always a positive w and the margin a positive limit.
    let sign = if higher_is_better { -1.0 } else { 1.0 };
    let mut worse: Vec<f64> = base
        .iter()
        .zip(head)
        .map(|(b, h)| sign * (h / b).ln())
        .collect();
    worse.sort_by(f64::total_cmp);
    let n = worse.len();
    let limit = if higher_is_better {
        -(1.0 - margin).ln()
    } else {
        (1.0 + margin).ln()
    };
    let estimate = median(&worse);
    // The bound below the median at the regression level, above it at the pass level; a level
    // too strict for n pairs has no rank, and its side shows the extreme pair instead.
    let regression_rank = sign_rank(n, levels.regression_tail);
    let pass_rank = sign_rank(n, levels.pass_tail);
    let lower = worse[regression_rank.unwrap_or(1) - 1];
    let upper = worse[n - pass_rank.unwrap_or(1)];
    let coverage = 1.0
        - binomial_half_cdf(n, regression_rank.unwrap_or(1) - 1)
        - binomial_half_cdf(n, pass_rank.unwrap_or(1) - 1);
    let detectable = regression_rank.map(|k| detectable_shift(n, k, spread(&worse, estimate)));
    let regression = regression_rank.is_some() && lower > 0.0 && estimate > limit;
    let sees_margin = detectable.is_some_and(|d| d <= limit);
    let pass = pass_rank.is_some() && upper < limit && sees_margin;
    let verdict = match (regression, pass) {
        (true, _) => Verdict::Regression,
        (false, true) => Verdict::Pass,
        (false, false) => Verdict::Inconclusive,
    };
    // Back to head/base ratios: for throughput the worse direction is the lower ratio.
    let ratio = |w: f64| (sign * w).exp();
    let (ci_low_ratio, ci_high_ratio) = if higher_is_better {
        (ratio(upper), ratio(lower))
    } else {
        (ratio(lower), ratio(upper))
    };
    MetricComparison {
        metric: metric.to_owned(),
        pairs: n,
        median_ratio: ratio(estimate),
        ci_low_ratio,
        ci_high_ratio,
        ci_coverage: coverage,
        limit_ratio: ratio(limit),
        // As a fraction of change in the worse direction, like the margin.
        detectable: detectable.map(|d| (ratio(d) - 1.0).abs()),
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

    /// Normal noise of a known spread: Box-Muller from two uniforms.
    fn normal(rng: &mut SmallRng, sd: f64) -> f64 {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let v: f64 = rng.random_range(0.0..1.0);
        sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// The detectable shift is what it says: pairs shifted by it, with the spread it was
    /// computed for, put the regression bound beyond zero DETECTABLE_POWER of the time.
    #[test]
    fn the_detectable_shift_is_detected_as_often_as_it_says() {
        let mut rng = SmallRng::seed_from_u64(11);
        let sd = 0.12;
        for (n, tail) in [(11, 0.05 / 9.0), (15, 0.05 / 12.0), (40, 0.05 / 12.0)] {
            let k = sign_rank(n, tail).unwrap();
            let shift = detectable_shift(n, k, sd);
            let runs = 4_000;
            let mut beyond_zero = 0;
            for _ in 0..runs {
                let mut w: Vec<f64> = (0..n).map(|_| shift + normal(&mut rng, sd)).collect();
                w.sort_by(f64::total_cmp);
                if w[k - 1] > 0.0 {
                    beyond_zero += 1;
                }
            }
            let observed = beyond_zero as f64 / runs as f64;
            // Four standard errors of a proportion near 0.8 over 4,000 runs is about 0.025.
            assert!(
                (observed - DETECTABLE_POWER).abs() < 0.025,
                "n={n}: shift {shift:.3} detected {observed:.3}"
            );
        }
    }

    #[test]
    fn an_interval_within_the_margin_from_pairs_too_few_to_see_it_is_not_a_pass() {
        // 6 pairs within +-1%: inside a 5% margin, but at 0.5% per side no bound of 6 pairs
        // can ever exclude zero (the extreme misses with 1/64).
        let base = vec![100.0; 6];
        let head = [100.5, 99.5, 100.2, 99.8, 100.9, 99.1];
        let strict = Levels {
            regression_tail: 0.005,
            pass_tail: 0.02,
        };
        let c = compare_metric("throughput", &base, &head, 0.05, true, strict);
        assert!(c.ci_low_ratio > c.limit_ratio, "{c:?}");
        assert_eq!(c.detectable, None);
        assert!(c.blind_at_margin());
        assert_eq!(c.verdict, Verdict::Inconclusive);
        // The same pairs at a level 6 pairs can reach see a 5% drop, and pass.
        let c = compare_metric("throughput", &base, &head, 0.05, true, FIVE_PERCENT);
        assert!(c.detectable.unwrap() < 0.05, "{c:?}");
        assert_eq!(c.verdict, Verdict::Pass);
    }

    /// Memory figures of coarse resolution: most pairs exactly equal, a few not. Their median
    /// absolute deviation is 0, but the comparison is not noiseless.
    #[test]
    fn mostly_equal_pairs_do_not_claim_to_see_every_change() {
        let base = vec![100.0; 11];
        let mut head = vec![100.0; 11];
        head[0] = 80.0;
        head[1] = 125.0;
        head[2] = 90.0;
        let c = compare_metric("peak RSS", &base, &head, 0.5, false, FIVE_PERCENT);
        assert!(c.detectable.unwrap() > 0.05, "{c:?}");
        let all_equal = compare_metric("peak RSS", &base, &base, 0.5, false, FIVE_PERCENT);
        assert_eq!(all_equal.detectable, Some(0.0));
    }

    #[test]
    fn a_real_drop_within_the_margin_is_not_a_regression() {
        // Every pair 2% down: beyond zero without doubt, but within a 5% margin.
        let base = vec![100.0; 9];
        let head = [97.9, 98.1, 98.0, 97.8, 98.2, 98.0, 97.9, 98.1, 98.0];
        let c = compare_metric("throughput", &base, &head, 0.05, true, FIVE_PERCENT);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        assert!(
            c.ci_high_ratio < 1.0,
            "the interval excludes no change: {c:?}"
        );
    }

    /// A reader can check every verdict from the printed interval: a regression's interval is
    /// beyond no change and its median beyond the limit; a pass's interval is within the limit
    /// with a detectable change within the margin; neither, or too few pairs for the level, is
    /// inconclusive. Random pairs, many sizes, both directions.
    #[test]
    fn every_verdict_follows_from_the_printed_interval() {
        let mut rng = SmallRng::seed_from_u64(21);
        let mut seen = [0usize; 3];
        for _ in 0..5_000 {
            let n = rng.random_range(3..30);
            let shift: f64 = rng.random_range(-0.2..0.2);
            let sd: f64 = rng.random_range(0.001..0.2);
            let base: Vec<f64> = (0..n).map(|_| 100.0).collect();
            let head: Vec<f64> = (0..n)
                .map(|_| 100.0 * (shift + normal(&mut rng, sd)).exp())
                .collect();
            let higher_is_better = rng.random_bool(0.5);
            // As in every design: the pass level is never stricter than the regression level,
            // so pairs too few for the pass level see nothing ("none" detectable) either.
            let regression_tail = rng.random_range(0.001..0.05);
            let levels = Levels {
                regression_tail,
                pass_tail: rng.random_range(regression_tail..0.05),
            };
            let c = compare_metric("m", &base, &head, 0.05, higher_is_better, levels);
            assert!(c.ci_low_ratio <= c.median_ratio && c.median_ratio <= c.ci_high_ratio);
            let (worse_end, better_end, beyond) = if higher_is_better {
                (
                    c.ci_low_ratio,
                    c.ci_high_ratio,
                    c.median_ratio < c.limit_ratio,
                )
            } else {
                (
                    c.ci_high_ratio,
                    c.ci_low_ratio,
                    c.median_ratio > c.limit_ratio,
                )
            };
            let within = if higher_is_better {
                worse_end > c.limit_ratio
            } else {
                worse_end < c.limit_ratio
            };
            let excludes_no_change = if higher_is_better {
                better_end < 1.0
            } else {
                better_end > 1.0
            };
            match c.verdict {
                Verdict::Regression => {
                    seen[0] += 1;
                    assert!(excludes_no_change && beyond, "{c:?}");
                }
                Verdict::Pass => {
                    seen[1] += 1;
                    assert!(within && !c.blind_at_margin(), "{c:?}");
                }
                Verdict::Inconclusive => {
                    seen[2] += 1;
                    // Too few pairs for the level ("none" detectable): the interval shows the
                    // extreme pairs, with the lower coverage they have, and decides nothing.
                    let level_reached = c.detectable.is_some();
                    assert!(!(excludes_no_change && beyond && level_reached), "{c:?}");
                    assert!(!within || c.blind_at_margin(), "{c:?}");
                }
            }
        }
        assert!(seen.iter().all(|&s| s > 100), "{seen:?}");
    }

    /// With no change, a regression needs the bound beyond zero: at one look, at most the
    /// level's share of comparisons, whatever the noise.
    #[test]
    fn an_unchanged_commit_is_a_regression_at_most_at_the_level() {
        let mut rng = SmallRng::seed_from_u64(31);
        let levels = Levels {
            regression_tail: 0.02,
            pass_tail: 0.02,
        };
        let runs = 20_000;
        let mut regressions = 0;
        for _ in 0..runs {
            let base: Vec<f64> = (0..12).map(|_| 100.0).collect();
            // Heavy, skewed noise: the sign test does not care.
            let head: Vec<f64> = (0..12)
                .map(|_| {
                    let x = normal(&mut rng, 0.3);
                    100.0 * (if x > 0.0 { x * 0.3 } else { x * 3.0 }).exp()
                })
                .collect();
            // The median of the noise is 0 (the transform keeps signs), so nothing changed.
            if compare_metric("m", &base, &head, 0.0, true, levels).verdict == Verdict::Regression {
                regressions += 1;
            }
        }
        let rate = regressions as f64 / runs as f64;
        assert!(rate <= 0.02 + 0.003, "{rate}");
    }

    #[test]
    fn throttling_shows_in_the_thirds_ratio() {
        let steady = vec![100; 30];
        let throttled: Vec<u64> = (0..30).map(|i| 100 - 2 * i).collect();
        assert_eq!(last_vs_first_third(&steady), Some(1.0));
        assert!(last_vs_first_third(&throttled).unwrap() < 0.7);
        assert_eq!(last_vs_first_third(&[1, 2]), None);
    }

    /// The exact interval of a rate against values worked out by hand: with no events in n the
    /// upper bound is 1 - (tail)^(1/n), with all n the lower bound is (tail)^(1/n).
    #[test]
    fn a_rates_interval_is_the_exact_binomial_one() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        let (low, high) = rate_interval(0, 20, 0.95);
        assert_eq!(low, 0.0);
        assert!(close(high, 1.0 - 0.025f64.powf(1.0 / 20.0)), "{high}");
        let (low, high) = rate_interval(7, 7, 0.95);
        assert!(close(low, 0.025f64.powf(1.0 / 7.0)), "{low}");
        assert_eq!(high, 1.0);
        let (low, high) = rate_interval(0, 2000, 0.95);
        assert!(
            low == 0.0 && close(high, 1.0 - 0.025f64.powf(1.0 / 2000.0)),
            "{high}"
        );
        // 5 of 10: symmetric around one half, [18.7%, 81.3%].
        let (low, high) = rate_interval(5, 10, 0.95);
        assert!(
            close(low, 1.0 - high) && (low - 0.187).abs() < 0.001,
            "{low} {high}"
        );
    }
}
