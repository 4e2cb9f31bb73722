//! Change points in a noisy series of nights: E-divisive means (Matteson & James, "A
//! Nonparametric Approach for Multiple Change Point Analysis of Multivariate Data", 2014), the
//! detector MongoDB's performance CI and Otava (formerly Hunter) run over their histories, with
//! a permutation significance test.
//!
//! The series is a list of *groups*: the trials of one commit measured together (one night), in
//! commit order. A change point can only sit between two groups, and the permutation test
//! shuffles whole groups, not trials: trials of one night share that night's machine state, so
//! shuffling them one by one would call a noisy night a change. Values are compared on a log
//! scale, so a shift is a ratio whichever the metric's size.
//!
//! The statistic for a split of a segment into X (m trials) and Y (n trials), with d = |a - b|:
//! Q = m n / (m + n) * (2 E d(X, Y) - E d(X, X') - E d(Y, Y')), the energy distance scaled by
//! the sizes. The best split of the segment with the largest Q is tested against the largest Q
//! of `permutations` shuffles of that segment's groups; if significant it is kept and both sides
//! are searched again, else the search stops.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::verdict::stats::median;

/// How hard the detector looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detector {
    /// A split is a change point when its permutation p-value is at most this.
    pub significance: f64,
    /// Shuffles per test. The smallest p-value is 1 / (permutations + 1).
    pub permutations: usize,
    /// Each side of a split holds at least this many groups (nights).
    pub min_groups: usize,
    /// Seed of the shuffles: the same history always gives the same answer.
    pub seed: u64,
}

impl Default for Detector {
    fn default() -> Self {
        Self {
            significance: SIGNIFICANCE_DEFAULT,
            permutations: PERMUTATIONS_DEFAULT,
            min_groups: MIN_GROUPS_DEFAULT,
            seed: 0x5eed_c4a9,
        }
    }
}

/// 1%: a history is looked at every night, and every false change point costs a bisect.
pub const SIGNIFICANCE_DEFAULT: f64 = 0.01;
pub const PERMUTATIONS_DEFAULT: usize = 499;
/// Three nights each side: a single odd night is never a change point on its own.
pub const MIN_GROUPS_DEFAULT: usize = 3;
/// Bootstrap resamples behind a change point's range, and the share of them it covers.
pub const RANGE_RESAMPLES: usize = 200;
pub const RANGE_COVERAGE: f64 = 0.9;
/// False-discovery rate the nightly report controls over all the series it tests in one night
/// (Benjamini-Hochberg): each series is tested at `SIGNIFICANCE_DEFAULT`, and with 8 or more
/// series a night, one of them is a false change point far more often than 1% of nights.
pub const FDR_LEVEL: f64 = 0.05;
/// Relative difference under which two statistics are the same number summed in another order.
const TIE_TOLERANCE: f64 = 1e-9;
/// How far `min_groups_to_detect` looks.
const GROUPS_SEARCHED: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct ChangePoint {
    /// Index of the first group after the change.
    pub group: usize,
    /// Permutation p-value of the split when it was found.
    pub p_value: f64,
    /// Median of the segment before and after the change (the segments between neighbouring
    /// change points), in the series' own unit.
    pub median_before: f64,
    pub median_after: f64,
    /// Where the change may be, as the first group after it: the central `RANGE_COVERAGE` of the
    /// best split over bootstrap resamples of the trials of each night (in the segments around
    /// the change point). A small shift in large noise cannot be put on one night; bisect
    /// searches the whole range.
    pub range: std::ops::RangeInclusive<usize>,
}

impl ChangePoint {
    /// after / before - 1.
    pub fn relative_shift(&self) -> f64 {
        self.median_after / self.median_before - 1.0
    }
}

impl Detector {
    /// Change points of `groups` (each a non-empty list of positive values), by group index,
    /// ascending. Groups that are empty or hold a non-positive value are a caller's bug.
    pub fn detect(&self, groups: &[Vec<f64>]) -> Vec<usize> {
        self.search(groups)
            .into_iter()
            .map(|(cut, _)| cut)
            .collect()
    }

    /// The change points, ascending, each with its p-value when it was found.
    fn search(&self, groups: &[Vec<f64>]) -> Vec<(usize, f64)> {
        let logs = log_scale(groups);
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut cuts: Vec<(usize, f64)> = Vec::new();
        loop {
            let mut bounds = vec![0];
            bounds.extend(cuts.iter().map(|c| c.0));
            bounds.push(logs.len());
            let best = bounds
                .windows(2)
                .filter_map(|w| {
                    let (split, q) = self.best_split(&logs[w[0]..w[1]])?;
                    Some((w[0], w[1], w[0] + split, q))
                })
                .max_by(|a, b| a.3.total_cmp(&b.3));
            let Some((start, end, at, q)) = best else {
                break;
            };
            let p = self.p_value(&logs[start..end], q, &mut rng);
            if p > self.significance {
                break;
            }
            cuts.push((at, p));
            cuts.sort_unstable_by_key(|c| c.0);
        }
        cuts
    }

    /// The change points with the medians of the segments around each.
    pub fn describe(&self, groups: &[Vec<f64>]) -> Vec<ChangePoint> {
        let cuts = self.search(groups);
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().map(|c| c.0));
        bounds.push(groups.len());
        let median_of = |from: usize, to: usize| median(&flatten(&groups[from..to]));
        cuts.iter()
            .enumerate()
            .map(|(i, &(group, p_value))| {
                let logs = log_scale(&groups[bounds[i]..bounds[i + 2]]);
                let mut rng = SmallRng::seed_from_u64(self.seed ^ group as u64);
                let range = self.location_range(&logs, &mut rng);
                ChangePoint {
                    group,
                    range: bounds[i] + range.start()..=bounds[i] + range.end(),
                    p_value,
                    median_before: median_of(bounds[i], group),
                    median_after: median_of(group, bounds[i + 2]),
                }
            })
            .collect()
    }

    /// The split (index of the first group of the right side) with the largest statistic.
    fn best_split<G: AsRef<[f64]>>(&self, groups: &[G]) -> Option<(usize, f64)> {
        let distances = DistanceSums::new(&flatten(groups));
        let starts = offsets(groups);
        (self.min_groups..=groups.len().checked_sub(self.min_groups)?)
            .map(|split| (split, distances.split_statistic(starts[split])))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The central `RANGE_COVERAGE` of the best split over resamples of each group's trials.
    fn location_range(
        &self,
        groups: &[Vec<f64>],
        rng: &mut SmallRng,
    ) -> std::ops::RangeInclusive<usize> {
        let mut splits: Vec<usize> = (0..RANGE_RESAMPLES)
            .filter_map(|_| {
                let resampled: Vec<Vec<f64>> = groups
                    .iter()
                    .map(|g| {
                        (0..g.len())
                            .map(|_| g[rng.random_range(0..g.len())])
                            .collect()
                    })
                    .collect();
                Some(self.best_split(&resampled)?.0)
            })
            .collect();
        splits.sort_unstable();
        let tail = ((1.0 - RANGE_COVERAGE) / 2.0 * splits.len() as f64) as usize;
        match (
            splits.get(tail),
            splits
                .len()
                .checked_sub(tail + 1)
                .and_then(|i| splits.get(i)),
        ) {
            (Some(&lo), Some(&hi)) => lo..=hi,
            _ => 0..=groups.len(),
        }
    }

    /// The p-value the test can at best be expected to give a series of `groups` groups: even
    /// a step that separates the series perfectly is matched by every shuffle that keeps its
    /// two sides together (either way round), at best 2 / C(n, n/2) of all shuffles. Below
    /// `min_groups_to_detect` groups no change point is expected to be found, whatever the data.
    pub fn p_value_floor(&self, groups: usize) -> f64 {
        let half = groups / 2;
        if half < self.min_groups {
            return 1.0;
        }
        let ways = (0..half).fold(1.0, |c, i| c * (groups - i) as f64 / (i + 1) as f64);
        let chance = (2.0 / ways).min(1.0);
        (1.0 + self.permutations as f64 * chance) / (self.permutations + 1) as f64
    }

    /// The fewest groups whose `p_value_floor` is within the significance (None if no length
    /// up to `GROUPS_SEARCHED` is: too few permutations for the significance).
    pub fn min_groups_to_detect(&self) -> Option<usize> {
        (2 * self.min_groups..=GROUPS_SEARCHED)
            .find(|&n| self.p_value_floor(n) <= self.significance)
    }

    /// How often a step of `shift` (ln units; night-to-night noise `night_sd`, trial noise
    /// `trial_sd`, `trials` a night) after `before` of `nights` nights is found within one
    /// night of where it is, over `runs` simulated histories: the power at a real series length.
    pub fn power(&self, nights: usize, before: usize, shift: f64, noise: Noise, runs: u64) -> f64 {
        let mut found = 0;
        for run in 0..runs {
            let mut rng = SmallRng::seed_from_u64(self.seed ^ (run << 20) ^ nights as u64);
            let groups: Vec<Vec<f64>> = (0..nights)
                .map(|i| {
                    let level = if i < before { 0.0 } else { shift } + noise.night(&mut rng);
                    (0..noise.trials)
                        .map(|_| (level + noise.trial(&mut rng)).exp())
                        .collect()
                })
                .collect();
            let detected = Detector {
                seed: self.seed ^ run,
                ..*self
            }
            .detect(&groups);
            if detected.iter().any(|&g| g.abs_diff(before) <= 1) {
                found += 1;
            }
        }
        found as f64 / runs as f64
    }

    fn p_value(&self, groups: &[Vec<f64>], q: f64, rng: &mut SmallRng) -> f64 {
        let mut shuffled: Vec<&Vec<f64>> = groups.iter().collect();
        let mut as_large = 0usize;
        // A shuffle that keeps the split's two sides together has the same statistic, summed
        // in another order: equal up to rounding, and it must count as "as large". Few groups
        // make such ties common (1 shuffle in 28 for 3 + 5 nights).
        let tie = q.abs() * TIE_TOLERANCE;
        for _ in 0..self.permutations {
            shuffled.shuffle(rng);
            if self
                .best_split(&shuffled)
                .is_some_and(|(_, qp)| qp >= q - tie)
            {
                as_large += 1;
            }
        }
        (as_large + 1) as f64 / (self.permutations + 1) as f64
    }
}

/// Noise of a simulated history (`Detector::power`), in ln units: each night's level moves by
/// a normal `night_sd`, each of its `trials` trials by a normal `trial_sd` around it.
#[derive(Debug, Clone, Copy)]
pub struct Noise {
    pub night_sd: f64,
    pub trial_sd: f64,
    pub trials: usize,
}

impl Noise {
    fn night(&self, rng: &mut SmallRng) -> f64 {
        self.night_sd * standard_normal(rng)
    }

    fn trial(&self, rng: &mut SmallRng) -> f64 {
        self.trial_sd * standard_normal(rng)
    }
}

/// Box-Muller.
fn standard_normal(rng: &mut SmallRng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Benjamini-Hochberg q-values of `p` (one per discovery) among `tests` tests in all (the
/// series tested, at least as many as the p-values): a discovery with q <= `FDR_LEVEL` is kept
/// at that false-discovery rate.
pub fn benjamini_hochberg(p: &[f64], tests: usize) -> Vec<f64> {
    let m = tests.max(p.len()) as f64;
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![1.0; p.len()];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m / (rank + 1) as f64);
        q[i] = running.min(1.0);
    }
    q
}

fn log_scale(groups: &[Vec<f64>]) -> Vec<Vec<f64>> {
    groups
        .iter()
        .map(|g| g.iter().map(|v| v.max(f64::MIN_POSITIVE).ln()).collect())
        .collect()
}

fn flatten<G: AsRef<[f64]>>(groups: &[G]) -> Vec<f64> {
    groups
        .iter()
        .flat_map(|g| g.as_ref().iter().copied())
        .collect()
}

/// Index of each group's first value in the flattened series, plus the total length.
fn offsets<G: AsRef<[f64]>>(groups: &[G]) -> Vec<usize> {
    let mut at = vec![0];
    for g in groups {
        at.push(at.last().copied().unwrap_or(0) + g.as_ref().len());
    }
    at
}

/// Sums of |a - b| over any rectangle of the series' pairs, in O(1) after O(n^2) set-up: each
/// permutation test evaluates every split of hundreds of shuffles.
struct DistanceSums {
    n: usize,
    /// prefix[i * (n + 1) + j] = sum of |v[a] - v[b]| over a < i, b < j.
    prefix: Vec<f64>,
}

impl DistanceSums {
    fn new(values: &[f64]) -> Self {
        let n = values.len();
        let width = n + 1;
        let mut prefix = vec![0.0; width * width];
        for i in 0..n {
            let mut row = 0.0;
            for j in 0..n {
                row += (values[i] - values[j]).abs();
                prefix[(i + 1) * width + j + 1] = prefix[i * width + j + 1] + row;
            }
        }
        Self { n, prefix }
    }

    /// Sum over a in rows, b in cols.
    fn rect(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> f64 {
        let w = self.n + 1;
        let p = &self.prefix;
        p[rows.end * w + cols.end] - p[rows.start * w + cols.end] - p[rows.end * w + cols.start]
            + p[rows.start * w + cols.start]
    }

    /// Q for splitting the series before index `at`.
    fn split_statistic(&self, at: usize) -> f64 {
        let (m, n) = (at, self.n - at);
        if m == 0 || n == 0 {
            return 0.0;
        }
        let cross = self.rect(0..at, at..self.n) / (m * n) as f64;
        // Means over distinct pairs: the diagonal's zeros are left out.
        let within = |range: std::ops::Range<usize>, k: usize| {
            if k < 2 {
                0.0
            } else {
                self.rect(range.clone(), range) / (k * (k - 1)) as f64
            }
        };
        let (m, n) = (m as f64, n as f64);
        m * n / (m + n) * (2.0 * cross - within(0..at, at) - within(at..self.n, self.n - at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-trial noise of this machine: trials of one commit of the seed workload spread
    /// -14%..+12% around their median (results of e597e6a, fdefeb2, b780501). Uniform +-15% is at
    /// least that wide.
    const NOISE: f64 = 0.15;
    const TRIALS_PER_NIGHT: usize = 6;

    /// `levels[i]` is night i's true level; each trial is level * (1 + U(-NOISE, NOISE)).
    fn nights(levels: &[f64], seed: u64) -> Vec<Vec<f64>> {
        let mut rng = SmallRng::seed_from_u64(seed);
        levels
            .iter()
            .map(|level| {
                (0..TRIALS_PER_NIGHT)
                    .map(|_| level * (1.0 + rng.random_range(-NOISE..NOISE)))
                    .collect()
            })
            .collect()
    }

    const NIGHTS_BEFORE: usize = 30;
    const NIGHTS_AFTER: usize = 30;
    const SEEDS: u64 = 100;

    #[test]
    fn finds_nothing_in_a_flat_series_in_at_least_95_of_100_cases() {
        let flat = vec![200_000.0; NIGHTS_BEFORE + NIGHTS_AFTER];
        let detector = Detector::default();
        let quiet = (0..SEEDS)
            .filter(|&seed| detector.detect(&nights(&flat, seed)).is_empty())
            .count();
        eprintln!("flat: no change point in {quiet} of 100");
        assert!(
            quiet >= 95,
            "a flat series had change points in {} of 100 cases",
            100 - quiet
        );
    }

    #[test]
    fn finds_the_commit_of_a_5_percent_shift() {
        let mut levels = vec![200_000.0; NIGHTS_BEFORE];
        levels.extend(vec![190_000.0; NIGHTS_AFTER]);
        let detector = Detector::default();
        let (mut found, mut widths) = (0, Vec::new());
        for seed in 0..SEEDS {
            let points = detector.describe(&nights(&levels, seed));
            // Right place, and a size a reader would take for the 5% it is.
            let right = |p: &&ChangePoint| {
                p.range.contains(&NIGHTS_BEFORE) && (p.relative_shift() + 0.05).abs() < 0.03
            };
            if let Some(p) = points.iter().find(right) {
                found += 1;
                widths.push(p.range.end() - p.range.start() + 1);
            }
        }
        widths.sort_unstable();
        let median_width = widths.get(widths.len() / 2).copied().unwrap_or(0);
        eprintln!("5% shift: found in {found} of 100, median range {median_width} nights");
        // Measured: 84 of 100, median range 16 nights (6 trials a night, as the gate's first look).
        assert!(
            found >= 80,
            "the shift's commit was in a change point's range in {found} of 100 cases"
        );
    }

    #[test]
    fn finds_five_2_percent_steps_inside_their_range() {
        // Nights 30..35 each fall 2% more than the last: a drift no night-to-night gate sees.
        let mut levels = vec![200_000.0; NIGHTS_BEFORE];
        for step in 1..=5 {
            levels.push(200_000.0 * (1.0 - 0.02 * step as f64));
        }
        levels.extend(vec![180_000.0; NIGHTS_AFTER]);
        // The first night after the change is one of the five steps, or the first flat night.
        let drift = NIGHTS_BEFORE..=NIGHTS_BEFORE + 5;
        let detector = Detector::default();
        let mut inside = 0;
        for seed in 0..SEEDS {
            let points = detector.describe(&nights(&levels, seed));
            if !points.is_empty() && points.iter().all(|p| drift.contains(&p.group)) {
                inside += 1;
            }
        }
        eprintln!("drift: found inside its range in {inside} of 100");
        assert!(
            inside >= 85,
            "the drift was found inside its range in {inside} of 100 cases"
        );
    }

    #[test]
    fn too_short_a_series_has_no_change_point() {
        let detector = Detector::default();
        assert!(detector.detect(&[]).is_empty());
        assert!(detector
            .detect(&nights(&[1.0, 2.0, 4.0, 8.0, 16.0], 1))
            .is_empty());
    }

    #[test]
    fn a_clean_step_is_found_only_once_the_history_is_long_enough_to_test_it() {
        let detector = Detector::default();
        // 2 / C(8, 4) = 2.9% of shuffles keep 4 + 4 nights apart; 2 / C(10, 5) = 0.8%.
        assert!(detector.p_value_floor(8) > SIGNIFICANCE_DEFAULT);
        assert_eq!(detector.min_groups_to_detect(), Some(10));
        let step = |n: usize| -> Vec<Vec<f64>> {
            (0..n)
                .map(|i| vec![if i < n / 2 { 100.0 } else { 150.0 }; TRIALS_PER_NIGHT])
                .collect()
        };
        assert!(
            detector.detect(&step(8)).is_empty(),
            "8 nights cannot show a change"
        );
        assert_eq!(detector.detect(&step(12)), [6], "12 nights show it");
        let impossible = Detector {
            significance: 0.001,
            ..detector
        };
        assert_eq!(impossible.min_groups_to_detect(), None, "1/500 > 0.001");
    }

    #[test]
    fn a_shuffle_that_keeps_the_sides_together_ties_whatever_the_rounding() {
        // Values whose sums round differently in another order, nights of unequal size (a
        // base measured every night has many more trials): 3 + 5 nights cannot reach 1%.
        let mut groups: Vec<Vec<f64>> = (0..5)
            .map(|i| {
                (0..if i == 0 { 96 } else { 15 })
                    .map(|t| 1.3 + 0.1 * (((i * 7 + t) % 11) as f64) / 3.0)
                    .collect()
            })
            .collect();
        groups.extend((0..3).map(|i| {
            (0..15)
                .map(|t| 2.9 + 0.1 * (((i * 5 + t) % 7) as f64) / 3.0)
                .collect()
        }));
        let detector = Detector::default();
        assert!(detector.p_value_floor(8) > SIGNIFICANCE_DEFAULT);
        assert!(
            detector.detect(&groups).is_empty(),
            "{:?}",
            detector.describe(&groups)
        );
    }

    #[test]
    fn q_values_are_benjamini_hochbergs() {
        // The textbook case: p sorted 0.01, 0.02, 0.03, 0.5 of 4 tests -> 0.04, 0.04, 0.04, 0.5.
        let q = benjamini_hochberg(&[0.03, 0.01, 0.5, 0.02], 4);
        let expected = [0.04, 0.04, 0.5, 0.04];
        for (got, want) in q.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{q:?}");
        }
        // Fewer discoveries than tests: the tests that found nothing still count.
        assert!((benjamini_hochberg(&[0.01], 8)[0] - 0.08).abs() < 1e-12);
        assert!(benjamini_hochberg(&[], 8).is_empty());
    }

    /// The power at the series lengths the nightly has, simulated with night-to-night noise
    /// (the dominant part here) and trial noise, for a step in the middle of the history and
    /// for the newest change with 3 nights after it. Printed for BENCHMARKS.md ("History");
    /// asserted only where it must hold: more nights and larger steps never see less, and a
    /// step of 4 night-sds in the middle of 30 nights is found nearly always.
    #[test]
    fn the_power_at_real_series_lengths() {
        let detector = Detector::default();
        let noise = Noise {
            night_sd: 0.05,
            trial_sd: 0.03,
            trials: 5,
        };
        let runs = 60;
        let mut table = Vec::new();
        for nights in [10, 15, 20, 30] {
            for steps in [1.0, 2.0, 4.0] {
                let shift = steps * noise.night_sd;
                let centred = detector.power(nights, nights / 2, shift, noise, runs);
                let newest = detector.power(nights, nights - 3, shift, noise, runs);
                eprintln!(
                    "nights {nights:>2}, step {steps} night-sd ({:.0}%): centred {:.0}%, newest (3 after) {:.0}%",
                    shift * 100.0,
                    centred * 100.0,
                    newest * 100.0
                );
                table.push((nights, steps, centred));
            }
        }
        let at = |n: usize, s: f64| table.iter().find(|r| r.0 == n && r.1 == s).unwrap().2;
        assert!(at(30, 4.0) >= 0.9, "{table:?}");
        assert!(
            at(30, 4.0) >= at(10, 4.0) && at(30, 2.0) >= at(30, 1.0),
            "{table:?}"
        );
    }

    #[test]
    fn a_large_shift_is_found_with_its_size() {
        let mut levels = vec![100.0; 8];
        levels.extend(vec![150.0; 8]);
        let points = Detector::default().describe(&nights(&levels, 3));
        assert_eq!(points.len(), 1, "{points:?}");
        assert_eq!(points[0].group, 8);
        assert!((points[0].relative_shift() - 0.5).abs() < 0.1, "{points:?}");
        assert!(points[0].p_value <= SIGNIFICANCE_DEFAULT);
    }
}
