//! The noise bank: every valid trial of one commit, one workload definition and one host in the
//! results store, in the order they ran (same-commit trials, so any difference between them is
//! noise). The shipped decision rule (`compare::run_compare` with the given settings, looks,
//! levels and stopping) is replayed against pairs drawn from it, as they are (A/A) and with the
//! head shifted by a known amount, so the false-alarm rate and the detection rate are counted,
//! not asserted. No broker runs: thousands of replays take seconds.
//!
//! What resampling keeps: the unit drawn is a block of `BLOCK_PAIRS` adjacent pairs (trials 2i
//! and 2i+1 ran one after the other), so the correlation within a pair that interleaving relies
//! on, and a drift over a few pairs, stay as they were recorded, with the skew and outliers of
//! the trials (a moving-block bootstrap). A trial is never paired with itself. What it loses:
//! drift slower than a block. The real A/A comparisons of `calibrate` measure that too.
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::store::record::TrialRecord;
use crate::trial::summary::{Side, TrialFailure, TrialSummary};
use crate::verdict::compare::{run_compare, CompareSettings, Comparison, TrialSource};
use crate::verdict::state::Verdict;
use crate::verdict::stats::{median, median_interval, DISPLAY_COVERAGE};

/// Fewer valid trials than this make a bank too small to mean anything: 20 pairs, 10 for the
/// margins to be fitted on and 10 held out to measure them (`split`).
pub const NOISE_BANK_TRIALS_MIN: usize = 40;
/// Adjacent pairs drawn together (the block of the moving-block bootstrap).
pub const BLOCK_PAIRS: usize = 3;
/// Shifts replayed besides A/A: the fraction a regression costs.
pub const REPLAYED_SHIFTS: [f64; 4] = [0.02, 0.05, 0.10, 0.20];

/// Which metric a replay makes worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shifted {
    /// Nothing: A/A.
    Nothing,
    /// Head throughput times (1 - shift).
    Throughput,
    /// Head broker CPU time per message times (1 + shift).
    CpuPerMsg,
}

/// Outcomes of the replays of one shift.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayRow {
    pub shifted: Shifted,
    pub shift: f64,
    pub replays: usize,
    pub regression: usize,
    pub pass: usize,
    pub inconclusive: usize,
    pub mean_pairs: f64,
}

/// A pair's second trial against its first, over a bank's adjacent pairs: the median of
/// ln(second / first) per metric and its interval (`DISPLAY_COVERAGE`). An interval away from
/// zero is an order effect, which a random order turns into noise and ABBA blocks cancel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEffect {
    pub pairs: usize,
    /// Median of ln(second / first) throughput, and its interval.
    pub throughput: (f64, (f64, f64)),
    /// The same for p99.
    pub p99: (f64, (f64, f64)),
}

impl ReplayRow {
    pub fn rate(&self, count: usize) -> f64 {
        count as f64 / self.replays.max(1) as f64
    }
}

pub struct NoiseBank {
    pub trials: Vec<TrialSummary>,
}

impl NoiseBank {
    /// The valid trials of `commit_sha` among `records` for one workload definition and host.
    pub fn from_records(
        records: &[TrialRecord],
        commit_sha: &str,
        workload_hash: &str,
        host_fingerprint: &str,
    ) -> Self {
        let mut kept: Vec<&TrialRecord> = records
            .iter()
            .filter(|r| {
                r.commit.sha == commit_sha
                    && r.workload_hash == workload_hash
                    && r.host_fingerprint == host_fingerprint
            })
            .collect();
        // In the order they ran: adjacent trials are the pairs that are resampled.
        kept.sort_by(|a, b| a.recorded_at.cmp(&b.recorded_at));
        let trials = kept.iter().filter_map(|r| r.summary.clone()).collect();
        Self { trials }
    }

    /// Adjacent trials as pairs, in the order they ran (an odd last trial is left out).
    fn pairs(&self) -> Vec<[&TrialSummary; 2]> {
        self.trials
            .chunks_exact(2)
            .map(|p| [&p[0], &p[1]])
            .collect()
    }

    /// The first half of the pairs (to fit margins on) and the second (to measure them on,
    /// held out): split in time, so drift between the halves counts against the fit.
    pub fn split(&self) -> (NoiseBank, NoiseBank) {
        let half = self.trials.len() / 4 * 2;
        (
            NoiseBank {
                trials: self.trials[..half].to_vec(),
            },
            NoiseBank {
                trials: self.trials[half..].to_vec(),
            },
        )
    }

    /// The bank's order effect; `None` with fewer than two pairs.
    pub fn order_effect(&self) -> Option<OrderEffect> {
        let pairs = self.pairs();
        if pairs.len() < 2 {
            return None;
        }
        let effect = |metric: fn(&TrialSummary) -> f64| {
            let logs: Vec<f64> = pairs
                .iter()
                .map(|[first, second]| (metric(second) / metric(first)).ln())
                .collect();
            let interval = median_interval(&logs, DISPLAY_COVERAGE);
            (median(&logs), (interval.low, interval.high))
        };
        Some(OrderEffect {
            pairs: pairs.len(),
            throughput: effect(|t| t.throughput),
            p99: effect(|t| t.p99_ms),
        })
    }

    pub fn has_cpu(&self) -> bool {
        !self.trials.is_empty()
            && self
                .trials
                .iter()
                .all(|t| t.broker_cpu_us_per_msg.is_some())
    }

    /// Replays the rule `replays` times per shift: A/A, each throughput shift, and each CPU
    /// shift when the bank has CPU figures.
    pub fn replay(&self, settings: &CompareSettings, replays: usize, seed: u64) -> Vec<ReplayRow> {
        let mut cases = vec![(Shifted::Nothing, 0.0)];
        cases.extend(REPLAYED_SHIFTS.iter().map(|s| (Shifted::Throughput, *s)));
        if self.has_cpu() {
            cases.extend(REPLAYED_SHIFTS.iter().map(|s| (Shifted::CpuPerMsg, *s)));
        }
        cases
            .into_iter()
            .enumerate()
            .map(|(case, (shifted, shift))| {
                let mut row = ReplayRow {
                    shifted,
                    shift,
                    replays,
                    regression: 0,
                    pass: 0,
                    inconclusive: 0,
                    mean_pairs: 0.0,
                };
                let mut pairs = 0;
                for replay in 0..replays {
                    let Some(c) = self.replay_one(settings, (shifted, shift), case, replay, seed)
                    else {
                        continue;
                    };
                    pairs += c.pairs();
                    match c.verdict {
                        Verdict::Regression => row.regression += 1,
                        Verdict::Pass => row.pass += 1,
                        Verdict::Inconclusive => row.inconclusive += 1,
                    }
                }
                row.mean_pairs = pairs as f64 / replays.max(1) as f64;
                row
            })
            .collect()
    }

    /// `replays` A/A comparisons by the rule of `settings` (the margin search of `calibration`).
    pub fn replay_aa(
        &self,
        settings: &CompareSettings,
        replays: usize,
        seed: u64,
    ) -> Vec<Comparison> {
        (0..replays)
            .filter_map(|replay| {
                self.replay_one(settings, (Shifted::Nothing, 0.0), 0, replay, seed)
            })
            .collect()
    }

    /// One replayed comparison; `case` and `replay` pick its draws (reproducible by seed).
    fn replay_one(
        &self,
        settings: &CompareSettings,
        (shifted, shift): (Shifted, f64),
        case: usize,
        replay: usize,
        seed: u64,
    ) -> Option<Comparison> {
        let pairs = self.pairs();
        if pairs.is_empty() {
            return None;
        }
        let mut source = Resampled {
            pairs: &pairs,
            rng: SmallRng::seed_from_u64(seed ^ ((case as u64) << 32) ^ replay as u64),
            shifted,
            shift,
            next_pair: 0,
            left_in_block: 0,
            pending: None,
        };
        let run = CompareSettings {
            seed: seed.wrapping_add(replay as u64),
            ..*settings
        };
        run_compare(&mut source, &run).ok()
    }
}

/// Pairs drawn in blocks of adjacent pairs, with replacement; the first trial of a pair goes to
/// the side the comparison asks for first, as in a real interleaved pair; the head is shifted
/// as asked.
struct Resampled<'a> {
    pairs: &'a [[&'a TrialSummary; 2]],
    rng: SmallRng,
    shifted: Shifted,
    shift: f64,
    /// The next pair of the current block, and how many of the block are left.
    next_pair: usize,
    left_in_block: usize,
    /// The second trial of the pair being handed out.
    pending: Option<TrialSummary>,
}

impl Resampled<'_> {
    fn draw_pair(&mut self) -> [TrialSummary; 2] {
        if self.left_in_block == 0 {
            let block = BLOCK_PAIRS.min(self.pairs.len());
            self.next_pair = self.rng.random_range(0..=self.pairs.len() - block);
            self.left_in_block = block;
        }
        let [a, b] = self.pairs[self.next_pair];
        self.next_pair += 1;
        self.left_in_block -= 1;
        [a.clone(), b.clone()]
    }
}

impl TrialSource for Resampled<'_> {
    fn trial(&mut self, side: Side) -> Result<TrialSummary, TrialFailure> {
        let mut t = match self.pending.take() {
            Some(second) => second,
            None => {
                let [first, second] = self.draw_pair();
                self.pending = Some(second);
                first
            }
        };
        if side == Side::Head {
            match self.shifted {
                Shifted::Nothing => {}
                Shifted::Throughput => t.throughput *= 1.0 - self.shift,
                Shifted::CpuPerMsg => {
                    t.broker_cpu_us_per_msg =
                        t.broker_cpu_us_per_msg.map(|c| c * (1.0 + self.shift))
                }
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::compare::PairOrder;

    /// A bank with this machine's kind of noise: throughput spread by +-25% with a slow tail,
    /// p99 by a factor of two, CPU per message by +-2%.
    fn bank(seed: u64) -> NoiseBank {
        let mut rng = SmallRng::seed_from_u64(seed);
        let trials = (0..40)
            .map(|_| {
                let slow = if rng.random_bool(0.1) { 0.6 } else { 1.0 };
                TrialSummary {
                    throughput: 40_000.0 * slow * (1.0 + rng.random_range(-0.25..0.25)),
                    p99_ms: 10.0 * rng.random_range(0.7..1.4),
                    p999_ms: None,
                    per_second: vec![40_000; 3],
                    peak_rss_mib: Some(20.0 * rng.random_range(0.9..1.1)),
                    broker_cpu_us_per_msg: Some(12.0 * (1.0 + rng.random_range(-0.02..0.02))),
                    failover: None,
                }
            })
            .collect();
        NoiseBank { trials }
    }

    #[test]
    fn replays_count_false_alarms_and_find_large_shifts() {
        let rows = bank(3).replay(&CompareSettings::default(), 300, 11);
        let aa = &rows[0];
        assert_eq!(aa.shifted, Shifted::Nothing);
        assert_eq!(aa.regression + aa.pass + aa.inconclusive, 300);
        assert!(aa.rate(aa.regression) <= 0.01, "{aa:?}");
        let cpu_ten = rows
            .iter()
            .find(|r| r.shifted == Shifted::CpuPerMsg && r.shift == 0.10)
            .unwrap();
        // 2% CPU noise: a 10% CPU rise is found nearly every time.
        assert!(cpu_ten.rate(cpu_ten.regression) >= 0.95, "{cpu_ten:?}");
    }

    /// A bank whose pairs drift together: each pair ran at its own level (+-30% between
    /// pairs), its two trials within 1% of each other. Interleaving cancels such drift, and so
    /// must the replay: drawn as pairs, an unchanged commit passes; drawn as single trials (the
    /// old replay) the drift between pairs would make every comparison inconclusive.
    #[test]
    fn replayed_pairs_keep_the_correlation_within_a_pair() {
        let mut rng = SmallRng::seed_from_u64(5);
        let trials = (0..40)
            .flat_map(|_| {
                let level = 40_000.0 * (1.0 + rng.random_range(-0.3..0.3));
                let mut trial = |level: f64| TrialSummary {
                    throughput: level * (1.0 + rng.random_range(-0.01..0.01)),
                    p99_ms: 10.0 * 40_000.0 / level,
                    p999_ms: None,
                    per_second: vec![40_000; 3],
                    peak_rss_mib: None,
                    broker_cpu_us_per_msg: None,
                    failover: None,
                };
                [trial(level), trial(level)]
            })
            .collect();
        let bank = NoiseBank { trials };
        let aa = &bank.replay(&CompareSettings::default(), 200, 3)[0];
        assert!(aa.rate(aa.pass) >= 0.9, "{aa:?}");
    }

    /// Every pair's second trial 10% faster than its first: the order effect says so, and
    /// ABBA blocks, which cancel it, pass an unchanged commit more often than a random order,
    /// which turns it into noise.
    #[test]
    fn the_order_effect_is_measured_and_abba_cancels_it() {
        let mut rng = SmallRng::seed_from_u64(9);
        let trials = (0..80)
            .map(|i| {
                let second = if i % 2 == 1 { 1.10 } else { 1.0 };
                TrialSummary {
                    throughput: 40_000.0 * second * (1.0 + rng.random_range(-0.02..0.02)),
                    p99_ms: 10.0,
                    p999_ms: None,
                    per_second: vec![40_000; 3],
                    peak_rss_mib: None,
                    broker_cpu_us_per_msg: None,
                    failover: None,
                }
            })
            .collect();
        let bank = NoiseBank { trials };
        let effect = bank.order_effect().unwrap();
        assert_eq!(effect.pairs, 40);
        let (median, (low, high)) = effect.throughput;
        assert!((median - 1.10f64.ln()).abs() < 0.02, "{effect:?}");
        assert!(low > 0.05 && high < 0.15, "{effect:?}");
        assert_eq!(effect.p99.0, 0.0);
        let pass_rate = |order| {
            let settings = CompareSettings {
                order,
                ..CompareSettings::default()
            };
            let aa = &bank.replay(&settings, 300, 4)[0];
            aa.rate(aa.pass)
        };
        let (random, abba) = (pass_rate(PairOrder::Random), pass_rate(PairOrder::Abba));
        assert!(abba > random + 0.2, "ABBA {abba}, random {random}");
    }

    #[test]
    fn the_bank_splits_in_time_into_a_half_to_fit_and_a_half_held_out() {
        let b = bank(2);
        let (fit, held) = b.split();
        assert_eq!(fit.trials.len(), 20);
        assert_eq!(held.trials.len(), 20);
        assert_eq!(fit.trials[..], b.trials[..20]);
        assert_eq!(held.trials[..], b.trials[20..]);
    }

    #[test]
    fn the_bank_holds_only_its_commit_workload_and_host() {
        let b = bank(1);
        assert!(b.has_cpu());
        let empty = NoiseBank::from_records(&[], "abc", "hash", "host");
        assert!(empty.trials.is_empty());
        assert!(!empty.has_cpu());
    }
}
