//! Margins calibrated on a host's noise: `calibrate` searches, per wall-clock metric, the
//! smallest margin at which the shipped rule passes an unchanged commit most of the time on this
//! host and workload, and stores it; `gate` reads it (unless a margin is given on the command
//! line), the way rustc-perf derives each benchmark's significance threshold from its own noise.
//!
//! A calibrated margin may be wider than the default (a noisy host can only vouch for large
//! effects, and says so in every verdict it prints) or narrower (a quiet host sees smaller ones).
//! It holds only for the design it was searched with (pairs and alpha), the workload definition
//! and the host type, and for `CALIBRATION_EXPIRY_DAYS`, so a calibration that differs in any
//! of them, or has expired, is ignored, with a note. Margins are fitted on the first half of the
//! noise bank and their error rates measured on the second, held out: a rate measured on the
//! data a margin was chosen on flatters it.

use std::time::{Duration, SystemTime};

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::HarnessError;
use crate::store::files::write_atomically;
use crate::verdict::compare::{CompareSettings, Comparison, ErrorControl, PairOrder};
use crate::verdict::noise_bank::NoiseBank;
use crate::verdict::state::Verdict;
use crate::verdict::stats::{Margins, MetricComparison};

/// Margins tried, smallest first (fractions).
pub const MARGIN_CANDIDATES: [f64; 12] = [
    0.01, 0.02, 0.03, 0.05, 0.075, 0.10, 0.15, 0.20, 0.30, 0.50, 0.75, 1.0,
];
/// A margin is calibrated when an unchanged commit passes its metric at least this often...
pub const AA_PASS_TARGET: f64 = 0.90;
/// ...and is called a regression on it at most this often (the goal for the rule).
pub const AA_REGRESSION_MAX: f64 = 0.01;
/// A/A replays per candidate margin.
pub const SEARCH_REPLAYS: usize = 500;
/// A calibration is used this long after it was made: a host's noise moves with its disk,
/// kernel and neighbours (the same binary ran 23% slower 90 minutes apart here).
pub const CALIBRATION_EXPIRY_DAYS: u64 = 30;

/// The wall-clock metrics whose margins are calibrated. Instructions per request is not: its
/// spread is a tenth of its margin (BENCHMARKS.md, "Deterministic tier") and the noise bank does not hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tuned {
    Throughput,
    P99,
    PeakRss,
    CpuPerMsg,
}

impl Tuned {
    pub const ALL: [Tuned; 4] = [
        Tuned::Throughput,
        Tuned::P99,
        Tuned::PeakRss,
        Tuned::CpuPerMsg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tuned::Throughput => "throughput",
            Tuned::P99 => "p99",
            Tuned::PeakRss => "peak RSS",
            Tuned::CpuPerMsg => "broker CPU/msg",
        }
    }

    pub fn get(self, m: &Margins) -> f64 {
        match self {
            Tuned::Throughput => m.throughput_drop,
            Tuned::P99 => m.p99_rise,
            Tuned::PeakRss => m.peak_rss_rise,
            Tuned::CpuPerMsg => m.cpu_per_msg_rise,
        }
    }

    pub fn set(self, m: &mut Margins, value: f64) {
        match self {
            Tuned::Throughput => m.throughput_drop = value,
            Tuned::P99 => m.p99_rise = value,
            Tuned::PeakRss => m.peak_rss_rise = value,
            Tuned::CpuPerMsg => m.cpu_per_msg_rise = value,
        }
    }

    fn of(self, c: &Comparison) -> Option<&MetricComparison> {
        match self {
            Tuned::Throughput => Some(&c.throughput),
            Tuned::P99 => Some(&c.p99),
            Tuned::PeakRss => c.peak_rss.as_ref(),
            Tuned::CpuPerMsg => c.cpu_per_msg.as_ref(),
        }
    }
}

/// One metric's calibrated margin and what the A/A replays did at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricMargin {
    pub metric: Tuned,
    /// `None`: no candidate up to 100% reached the target; the default stays.
    pub margin: Option<f64>,
    pub aa_pass_rate: f64,
    pub aa_regression_rate: f64,
}

impl MetricMargin {
    /// Whether its rates meet the targets a margin is chosen by.
    pub fn meets_targets(&self) -> bool {
        self.margin.is_some()
            && self.aa_pass_rate >= AA_PASS_TARGET
            && self.aa_regression_rate <= AA_REGRESSION_MAX
    }
}

/// A calibration as stored: the margins and everything they hold for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedMargins {
    pub workload: String,
    pub workload_hash: String,
    pub host_fingerprint: String,
    /// The machine (its hostname) whose trials were the bank: the fingerprint is its type.
    #[serde(default)]
    pub host_name: String,
    /// The commit whose same-commit trials were the noise bank.
    pub commit: String,
    pub calibrated_at: String,
    /// RFC 3339; `gate` ignores the calibration after it (empty: stored before expiry was).
    #[serde(default)]
    pub expires_at: String,
    pub bank_trials: usize,
    pub replays_per_candidate: usize,
    pub min_pairs: usize,
    pub max_pairs: usize,
    pub error: ErrorControl,
    /// The A/B order the replays drew (stored before it could be chosen: random).
    #[serde(default)]
    pub order: PairOrder,
    /// Margins found on the first half of the bank, with their rates there.
    pub metrics: Vec<MetricMargin>,
    /// The same margins replayed on the second half, held out: their honest rates.
    #[serde(default)]
    pub held_out: Vec<MetricMargin>,
}

/// Searches each metric's margin on `bank` with the design of `settings`, metric by metric:
/// the margins found so far stay set while the next is searched, because the rule stops on the
/// joint verdict.
pub fn search(bank: &NoiseBank, settings: &CompareSettings, seed: u64) -> Vec<MetricMargin> {
    let mut tuned = *settings;
    let mut found = Vec::new();
    for metric in Tuned::ALL {
        let mut chosen: Option<MetricMargin> = None;
        for &candidate in &MARGIN_CANDIDATES {
            let mut trial = tuned;
            metric.set(&mut trial.margins, candidate);
            let replays = bank.replay_aa(&trial, SEARCH_REPLAYS, seed);
            let Some((pass, regression)) = verdict_rates(&replays, metric) else {
                break; // the bank has no figure for this metric
            };
            if pass >= AA_PASS_TARGET && regression <= AA_REGRESSION_MAX {
                chosen = Some(MetricMargin {
                    metric,
                    margin: Some(candidate),
                    aa_pass_rate: pass,
                    aa_regression_rate: regression,
                });
                tuned = trial;
                break;
            }
            chosen = Some(MetricMargin {
                metric,
                margin: None,
                aa_pass_rate: pass,
                aa_regression_rate: regression,
            });
        }
        found.extend(chosen);
    }
    found
}

/// (pass rate, regression rate) of `metric` over `replays`; `None` when it was not compared.
fn verdict_rates(replays: &[Comparison], metric: Tuned) -> Option<(f64, f64)> {
    let verdicts: Vec<Verdict> = replays
        .iter()
        .filter_map(|c| metric.of(c).map(|m| m.verdict))
        .collect();
    if verdicts.is_empty() {
        return None;
    }
    let rate =
        |v: Verdict| verdicts.iter().filter(|x| **x == v).count() as f64 / verdicts.len() as f64;
    Some((rate(Verdict::Pass), rate(Verdict::Regression)))
}

/// Each metric's rates on `bank` with the margins of `found` set: what they do on data they
/// were not chosen on.
pub fn held_out_rates(
    bank: &NoiseBank,
    settings: &CompareSettings,
    found: &[MetricMargin],
    seed: u64,
) -> Vec<MetricMargin> {
    let mut tuned = *settings;
    for m in found {
        if let Some(v) = m.margin {
            m.metric.set(&mut tuned.margins, v);
        }
    }
    let replays = bank.replay_aa(&tuned, SEARCH_REPLAYS, seed);
    found
        .iter()
        .filter_map(|m| {
            let (pass, regression) = verdict_rates(&replays, m.metric)?;
            Some(MetricMargin {
                metric: m.metric,
                margin: m.margin,
                aa_pass_rate: pass,
                aa_regression_rate: regression,
            })
        })
        .collect()
}

impl CalibratedMargins {
    /// Whether `now` is past the expiry (a calibration without one has expired).
    pub fn expired(&self, now: SystemTime) -> bool {
        !humantime::parse_rfc3339(&self.expires_at).is_ok_and(|at| now <= at)
    }

    /// Applies the calibrated margins to `settings` where `explicit` (margins given on the
    /// command line) does not say otherwise, when the calibration holds for this design and
    /// has not expired at `now`. Returns the settings and one line saying where each margin
    /// came from, and from which machine when it was another one (`here`: this hostname).
    pub fn apply(
        &self,
        settings: &CompareSettings,
        explicit: &[Tuned],
        here: &str,
        now: SystemTime,
    ) -> (CompareSettings, String) {
        if let Some(why) = self.ignored(settings, now) {
            return (*settings, why);
        }
        let mut applied = *settings;
        let mut used = Vec::new();
        for m in &self.metrics {
            let Some(margin) = m.margin.filter(|_| !explicit.contains(&m.metric)) else {
                continue;
            };
            // A margin is used only when the held-out half confirms it: fitted at the edge of
            // its targets on one half, it may be far from them on the other.
            match self.held_out.iter().find(|h| h.metric == m.metric) {
                Some(held) if held.meets_targets() => {
                    m.metric.set(&mut applied.margins, margin);
                    used.push(format!(
                        "{} {:.1}% (A/A pass {:.0}% held out)",
                        m.metric.name(),
                        margin * 100.0,
                        held.aa_pass_rate * 100.0
                    ));
                }
                held => used.push(format!(
                    "{} {:.1}% not confirmed on the held-out half ({}): default kept",
                    m.metric.name(),
                    margin * 100.0,
                    held.map_or("not measured".to_owned(), |h| format!(
                        "A/A pass {:.0}%, regression {:.1}%",
                        h.aa_pass_rate * 100.0,
                        h.aa_regression_rate * 100.0
                    ))
                )),
            }
        }
        if used.is_empty() {
            used.push("none used (given on the command line, or none found)".to_owned());
        }
        let machine = if self.host_name == here {
            "this host".to_owned()
        } else {
            format!("{}, another machine of this type", self.host_name)
        };
        let line = format!(
            "margins calibrated on {machine} from {} trials of {} ({}, expires {}): {}",
            self.bank_trials,
            self.commit,
            self.calibrated_at,
            self.expires_at,
            used.join(", ")
        );
        (applied, line)
    }

    /// Why this calibration does not apply to a run with `settings` at `now` (expired, or
    /// searched with another design); None when it applies.
    fn ignored(&self, settings: &CompareSettings, now: SystemTime) -> Option<String> {
        if self.expired(now) {
            return Some(format!(
                "calibration of {} ignored: made {} on {}, expired {} (calibrate again on this host)",
                self.workload,
                self.calibrated_at,
                self.commit,
                if self.expires_at.is_empty() {
                    "(no expiry recorded)"
                } else {
                    self.expires_at.as_str()
                }
            ));
        }
        let same_design = self.min_pairs == settings.min_pairs
            && self.max_pairs == settings.max_pairs
            && self.error == settings.error
            && self.order == settings.order;
        if !same_design {
            return Some(format!(
                "calibration of {} ignored: searched with {}-{} pairs, {:?} and {:?} order, this run uses {}-{}, {:?} and {:?} order",
                self.workload,
                self.min_pairs,
                self.max_pairs,
                self.error,
                self.order,
                settings.min_pairs,
                settings.max_pairs,
                settings.error,
                settings.order
            ));
        }
        None
    }
}

/// `<baselines>/calibration/<workload>.json`: one entry per host.
fn calibration_path(dir: &Path, workload: &str) -> PathBuf {
    dir.join("calibration").join(format!("{workload}.json"))
}

fn load_all(path: &Path) -> Result<Vec<CalibratedMargins>, HarnessError> {
    match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(HarnessError::io(path, e)),
    }
}

/// The calibration of `workload` on `host` with this workload definition, if one is stored.
pub fn load(
    dir: &Path,
    workload: &str,
    workload_hash: &str,
    host: &str,
) -> Result<Option<CalibratedMargins>, HarnessError> {
    Ok(load_all(&calibration_path(dir, workload))?
        .into_iter()
        .find(|c| c.host_fingerprint == host && c.workload_hash == workload_hash))
}

/// Stores `calibration`, replacing the entry of its host.
pub fn save(dir: &Path, calibration: &CalibratedMargins) -> Result<PathBuf, HarnessError> {
    let path = calibration_path(dir, &calibration.workload);
    let mut all = load_all(&path)?;
    all.retain(|c| c.host_fingerprint != calibration.host_fingerprint);
    all.push(calibration.clone());
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| HarnessError::io(parent, e))?;
    }
    let json = serde_json::to_vec_pretty(&all).map_err(|e| HarnessError::Infra(e.to_string()))?;
    write_atomically(&path, &json)?;
    Ok(path)
}

/// Where a bank came from: the workload, its definition's hash, the host's type and name, and
/// the commit.
pub struct BankIdentity<'a> {
    pub workload: &'a str,
    pub workload_hash: &'a str,
    pub host_fingerprint: &'a str,
    pub host_name: &'a str,
    pub commit: &'a str,
}

/// A calibration record for `bank`: margins searched with `settings` on its first half, their
/// rates measured on the second.
pub fn calibrate(
    bank: &NoiseBank,
    settings: &CompareSettings,
    identity: &BankIdentity,
) -> CalibratedMargins {
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(CALIBRATION_EXPIRY_DAYS * 24 * 3600);
    let (fit, held) = bank.split();
    let metrics = search(&fit, settings, settings.seed);
    let held_out = held_out_rates(&held, settings, &metrics, settings.seed);
    CalibratedMargins {
        workload: identity.workload.to_owned(),
        workload_hash: identity.workload_hash.to_owned(),
        host_fingerprint: identity.host_fingerprint.to_owned(),
        host_name: identity.host_name.to_owned(),
        commit: identity.commit.to_owned(),
        calibrated_at: humantime::format_rfc3339_seconds(now).to_string(),
        expires_at: humantime::format_rfc3339_seconds(expires).to_string(),
        bank_trials: bank.trials.len(),
        replays_per_candidate: SEARCH_REPLAYS,
        min_pairs: settings.min_pairs,
        max_pairs: settings.max_pairs,
        error: settings.error,
        order: settings.order,
        metrics,
        held_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trial::summary::TrialSummary;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Throughput noisy by +-`spread`, p99 by a factor of two, RSS and CPU by +-2%.
    fn bank(spread: f64, seed: u64) -> NoiseBank {
        let mut rng = SmallRng::seed_from_u64(seed);
        let trials = (0..60)
            .map(|_| TrialSummary {
                throughput: 40_000.0 * (1.0 + rng.random_range(-spread..spread)),
                p99_ms: 10.0 * rng.random_range(0.7..1.4),
                p999_ms: None,
                per_second: vec![40_000; 3],
                peak_rss_mib: Some(20.0 * rng.random_range(0.98..1.02)),
                broker_cpu_us_per_msg: Some(12.0 * (1.0 + rng.random_range(-0.02..0.02))),
                failover: None,
            })
            .collect();
        NoiseBank { trials }
    }

    fn identity(host: &str) -> BankIdentity<'_> {
        BankIdentity {
            workload: "w",
            workload_hash: "h1",
            host_fingerprint: host,
            host_name: "runner-1",
            commit: "abc",
        }
    }

    fn margin(found: &[MetricMargin], metric: Tuned) -> Option<f64> {
        found.iter().find(|m| m.metric == metric).unwrap().margin
    }

    #[test]
    fn a_noisier_host_gets_a_wider_margin_and_every_margin_meets_its_target() {
        let settings = CompareSettings::default();
        let quiet = search(&bank(0.03, 1), &settings, 7);
        let noisy = search(&bank(0.30, 1), &settings, 7);
        let (q, n) = (
            margin(&quiet, Tuned::Throughput).unwrap(),
            margin(&noisy, Tuned::Throughput).unwrap(),
        );
        assert!(q <= 0.05 && n >= 2.0 * q, "quiet {q}, noisy {n}");
        for m in quiet.iter().chain(&noisy) {
            assert!(m.margin.is_some(), "{m:?}");
            assert!(m.aa_pass_rate >= AA_PASS_TARGET, "{m:?}");
            assert!(m.aa_regression_rate <= AA_REGRESSION_MAX, "{m:?}");
        }
        // CPU and RSS at +-2% need a small margin wherever throughput is.
        assert!(margin(&noisy, Tuned::CpuPerMsg).unwrap() <= 0.05);
    }

    #[test]
    fn the_margin_found_is_the_smallest_candidate_that_meets_the_target() {
        let settings = CompareSettings::default();
        let b = bank(0.15, 2);
        let found = search(&b, &settings, 7);
        let chosen = margin(&found, Tuned::Throughput).unwrap();
        let index = MARGIN_CANDIDATES.iter().position(|c| *c == chosen).unwrap();
        assert!(index > 0, "a +-15% bank cannot pass at 1%");
        // One step smaller fails the target with the other margins as found.
        let mut smaller = settings;
        for m in &found {
            if let Some(v) = m.margin {
                m.metric.set(&mut smaller.margins, v);
            }
        }
        Tuned::Throughput.set(&mut smaller.margins, MARGIN_CANDIDATES[index - 1]);
        let (pass, _) =
            verdict_rates(&b.replay_aa(&smaller, SEARCH_REPLAYS, 7), Tuned::Throughput).unwrap();
        assert!(
            pass < AA_PASS_TARGET,
            "pass {pass} at the next smaller margin"
        );
    }

    #[test]
    fn apply_respects_explicit_margins_and_the_design() {
        let settings = CompareSettings::default();
        let stored = CalibratedMargins {
            workload: "w".into(),
            workload_hash: "h".into(),
            host_fingerprint: "host".into(),
            host_name: "runner-1".into(),
            commit: "abc".into(),
            calibrated_at: "2026-11-27T00:00:00Z".into(),
            expires_at: "2026-12-27T00:00:00Z".into(),
            bank_trials: 60,
            replays_per_candidate: SEARCH_REPLAYS,
            min_pairs: settings.min_pairs,
            max_pairs: settings.max_pairs,
            error: settings.error,
            order: settings.order,
            metrics: vec![
                MetricMargin {
                    metric: Tuned::Throughput,
                    margin: Some(0.15),
                    aa_pass_rate: 0.93,
                    aa_regression_rate: 0.0,
                },
                MetricMargin {
                    metric: Tuned::P99,
                    margin: Some(0.30),
                    aa_pass_rate: 0.91,
                    aa_regression_rate: 0.0,
                },
            ],
            held_out: vec![
                MetricMargin {
                    metric: Tuned::Throughput,
                    margin: Some(0.15),
                    aa_pass_rate: 0.92,
                    aa_regression_rate: 0.0,
                },
                MetricMargin {
                    metric: Tuned::P99,
                    margin: Some(0.30),
                    aa_pass_rate: 0.40,
                    aa_regression_rate: 0.0,
                },
            ],
        };
        let day = |d: &str| humantime::parse_rfc3339(d).unwrap();
        let before_expiry = day("2026-12-01T00:00:00Z");
        let (applied, line) = stored.apply(&settings, &[Tuned::P99], "runner-1", before_expiry);
        assert_eq!(applied.margins.throughput_drop, 0.15);
        assert_eq!(applied.margins.p99_rise, settings.margins.p99_rise);
        assert!(line.contains("throughput 15.0%"), "{line}");
        // p99's margin passed 91% where it was fitted and 40% held out: not used.
        let (applied, line) = stored.apply(&settings, &[], "runner-1", before_expiry);
        assert_eq!(applied.margins.p99_rise, settings.margins.p99_rise);
        assert!(line.contains("p99 30.0% not confirmed"), "{line}");
        assert!(line.contains("on this host"), "{line}");
        // Another machine of the same type may use it, and the line says whose it was.
        let (_, elsewhere) = stored.apply(&settings, &[], "runner-2", before_expiry);
        assert!(
            elsewhere.contains("runner-1, another machine"),
            "{elsewhere}"
        );
        let other_design = CompareSettings {
            max_pairs: 9,
            ..settings
        };
        let (ignored, why) = stored.apply(&other_design, &[], "runner-1", before_expiry);
        assert_eq!(ignored.margins, other_design.margins);
        assert!(why.contains("ignored"), "{why}");
        let other_order = CompareSettings {
            order: PairOrder::Abba,
            ..settings
        };
        let (ignored, why) = stored.apply(&other_order, &[], "runner-1", before_expiry);
        assert_eq!(ignored.margins, other_order.margins);
        assert!(why.contains("Abba order"), "{why}");
        // Expired, or stored before expiry was recorded: ignored, and said so.
        let (ignored, why) = stored.apply(&settings, &[], "runner-1", day("2027-01-01T00:00:00Z"));
        assert_eq!(ignored.margins, settings.margins);
        assert!(why.contains("expired"), "{why}");
        let old = CalibratedMargins {
            expires_at: String::new(),
            ..stored
        };
        assert!(old.expired(before_expiry));
    }

    /// The rates stored with a calibration are measured on the half of the bank the margins
    /// were not fitted to.
    #[test]
    fn margins_are_fitted_on_one_half_and_measured_on_the_other() {
        let settings = CompareSettings::default();
        let b = bank(0.10, 4);
        let c = calibrate(&b, &settings, &identity("host-a"));
        let (fit, held) = b.split();
        assert_eq!(c.metrics, search(&fit, &settings, settings.seed));
        assert_eq!(
            c.held_out,
            held_out_rates(&held, &settings, &c.metrics, settings.seed)
        );
        assert_eq!(c.held_out.len(), c.metrics.len());
        assert!(!c.expired(SystemTime::now()));
    }

    #[test]
    fn save_keeps_one_entry_per_host_and_load_matches_the_definition() {
        let dir = tempfile::tempdir().unwrap();
        let settings = CompareSettings::default();
        let b = bank(0.05, 3);
        let first = calibrate(&b, &settings, &identity("host-a"));
        save(dir.path(), &first).unwrap();
        save(dir.path(), &calibrate(&b, &settings, &identity("host-b"))).unwrap();
        save(dir.path(), &first).unwrap();
        let all = load_all(&calibration_path(dir.path(), "w")).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(load(dir.path(), "w", "h1", "host-a").unwrap(), Some(first));
        assert_eq!(load(dir.path(), "w", "h2", "host-a").unwrap(), None);
        assert_eq!(load(dir.path(), "x", "h1", "host-a").unwrap(), None);
    }
}
