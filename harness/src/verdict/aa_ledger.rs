//! What real A/A comparisons (a commit measured against itself) say about the rule's
//! false-regression rate. Replays of a noise bank resample the same pairs, so thousands of
//! them are not thousands of independent comparisons: the rate is bounded only from real ones.
//! `calibrate` records each in the results database the moment it is decided, so comparisons
//! run on different nights under one rule, workload and host add up to one bound
//! (docs/STATISTICS.md 5d).

use serde::Serialize;

use crate::verdict::calibration::AA_REGRESSION_MAX;
use crate::verdict::compare::CompareSettings;
use crate::verdict::state::Verdict;
use crate::verdict::stats::rate_interval;

/// One-sided confidence of the upper bound on the false-regression rate.
pub const BOUND_CONFIDENCE: f64 = 0.95;

/// Real A/A comparisons counted, with the bound they put on the false-regression rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AaTally {
    pub comparisons: usize,
    pub regressions: usize,
    pub inconclusive: usize,
    /// The rate at most this, at one-sided `BOUND_CONFIDENCE` (exact binomial); 1 with no
    /// comparisons. 0 of 14 bounds it at 19.3%, not at 0%.
    pub regression_rate_upper: f64,
    /// Comparisons, none a regression, that would bound the rate at `AA_REGRESSION_MAX`.
    pub comparisons_for_target: usize,
}

pub fn tally(verdicts: &[Verdict]) -> AaTally {
    let count = |wanted: Verdict| verdicts.iter().filter(|v| **v == wanted).count();
    let regressions = count(Verdict::Regression);
    // A two-sided interval at 1 - 2(1 - c) has the one-sided upper bound at c.
    let two_sided = 1.0 - 2.0 * (1.0 - BOUND_CONFIDENCE);
    AaTally {
        comparisons: verdicts.len(),
        regressions,
        inconclusive: count(Verdict::Inconclusive),
        regression_rate_upper: if verdicts.is_empty() {
            1.0
        } else {
            rate_interval(regressions, verdicts.len(), two_sided).1
        },
        comparisons_for_target: comparisons_to_bound(AA_REGRESSION_MAX),
    }
}

/// The fewest comparisons, none a regression, whose upper bound is at most `rate`: the n with
/// 1 - (1 - c)^(1/n) <= rate.
pub fn comparisons_to_bound(rate: f64) -> usize {
    ((1.0 - BOUND_CONFIDENCE).ln() / (1.0 - rate).ln()).ceil() as usize
}

/// The rule a verdict was reached with, as comparisons are pooled by: every setting but the
/// seed, which only draws the A/B order.
pub fn rule_key(settings: &CompareSettings) -> String {
    serde_json::to_string(&CompareSettings {
        seed: 0,
        ..*settings
    })
    .expect("settings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::compare::PairOrder;

    #[test]
    fn no_regression_in_a_few_comparisons_is_a_wide_bound_not_zero() {
        let t = tally(&[Verdict::Pass; 14]);
        assert_eq!((t.comparisons, t.regressions, t.inconclusive), (14, 0, 0));
        assert!((t.regression_rate_upper - 0.1927).abs() < 1e-3, "{t:?}");
        assert_eq!(t.comparisons_for_target, 299);
        assert_eq!(tally(&[]).regression_rate_upper, 1.0);
    }

    #[test]
    fn one_regression_in_a_hundred_is_bounded_near_five_percent() {
        let mut verdicts = vec![Verdict::Pass; 98];
        verdicts.push(Verdict::Inconclusive);
        verdicts.push(Verdict::Regression);
        let t = tally(&verdicts);
        assert_eq!((t.comparisons, t.regressions, t.inconclusive), (100, 1, 1));
        // Exact binomial: P(X <= 1 | n = 100, p = 4.66%) = 5%.
        assert!((t.regression_rate_upper - 0.0466).abs() < 1e-3, "{t:?}");
    }

    #[test]
    fn a_bound_needs_as_many_comparisons_as_the_binomial_says() {
        for rate in [0.01, 0.03, 0.05] {
            let n = comparisons_to_bound(rate);
            assert!(tally(&vec![Verdict::Pass; n]).regression_rate_upper <= rate);
            assert!(tally(&vec![Verdict::Pass; n - 1]).regression_rate_upper > rate);
        }
    }

    #[test]
    fn comparisons_pool_across_seeds_but_not_across_rules() {
        let shipped = CompareSettings::default();
        let key = rule_key(&shipped);
        assert_eq!(
            rule_key(&CompareSettings {
                seed: 20261204,
                ..shipped
            }),
            key
        );
        let mut wider = shipped;
        wider.margins.throughput_drop *= 2.0;
        assert_ne!(rule_key(&wider), key);
        assert_ne!(
            rule_key(&CompareSettings {
                order: PairOrder::Abba,
                ..shipped
            }),
            key
        );
        assert_ne!(
            rule_key(&CompareSettings {
                max_pairs: 40,
                ..shipped
            }),
            key
        );
    }
}
