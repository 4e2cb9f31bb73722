//! The noise bank: every valid trial of one commit, one workload definition and one host in the
//! results store (same-commit trials, so any difference between them is noise). The shipped
//! decision rule (`compare::run_compare` with the given settings, looks, levels and stopping)
//! is replayed against pairs drawn from it, as they are (A/A) and with the head shifted by a
//! known amount, so the false-alarm rate and the detection rate are counted, not asserted.
//! No broker runs: thousands of replays take seconds.
//!
//! What resampling keeps and loses: draws are independent, with replacement, from the trials as
//! recorded (their skew and outliers are kept); a slow drift within a real comparison, which
//! interleaving is there to cancel, is not reproduced. The real A/A comparisons of `calibrate`
//! measure the rule with drift included.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::store::record::TrialRecord;
use crate::trial::summary::{Side, TrialFailure, TrialSummary};
use crate::verdict::compare::{run_compare, CompareSettings, Comparison, TrialSource};
use crate::verdict::state::Verdict;

/// Fewer valid trials than this make a bank too small to resample from.
pub const NOISE_BANK_TRIALS_MIN: usize = 10;
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
        let trials = records
            .iter()
            .filter(|r| {
                r.commit.sha == commit_sha
                    && r.workload_hash == workload_hash
                    && r.host_fingerprint == host_fingerprint
            })
            .filter_map(|r| r.summary.clone())
            .collect();
        Self { trials }
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
        let mut source = Resampled {
            bank: &self.trials,
            rng: SmallRng::seed_from_u64(seed ^ ((case as u64) << 32) ^ replay as u64),
            shifted,
            shift,
        };
        let run = CompareSettings {
            seed: seed.wrapping_add(replay as u64),
            ..*settings
        };
        run_compare(&mut source, &run).ok()
    }
}

/// Trials drawn with replacement from the bank; the head's shifted as asked.
struct Resampled<'a> {
    bank: &'a [TrialSummary],
    rng: SmallRng,
    shifted: Shifted,
    shift: f64,
}

impl TrialSource for Resampled<'_> {
    fn trial(&mut self, side: Side) -> Result<TrialSummary, TrialFailure> {
        let mut t = self.bank[self.rng.random_range(0..self.bank.len())].clone();
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

    #[test]
    fn the_bank_holds_only_its_commit_workload_and_host() {
        let b = bank(1);
        assert!(b.has_cpu());
        let empty = NoiseBank::from_records(&[], "abc", "hash", "host");
        assert!(empty.trials.is_empty());
        assert!(!empty.has_cpu());
    }
}
