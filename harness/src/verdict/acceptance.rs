//! Regressions accepted on purpose. A commit that adds work intentionally (a new check on the
//! produce path) stays a "regression" against every older baseline; `accept` records who
//! accepted which metric of which commit, why and when, and later gates measure against the
//! accepted commit instead. An acceptance must cover exactly what the gate of that commit
//! called a regression, so moving the base past it hides nothing else.

use crate::store::db::AcceptanceRow;
use crate::verdict::decision::GateResult;
use crate::verdict::instructions::{TierOutcome, ALLOCATIONS_METRIC, INSTRUCTIONS_METRIC};
use crate::verdict::state::Verdict;

/// The metrics that can be accepted: the name `accept --metric` takes, then the name the
/// comparison gives it.
pub const ACCEPTABLE_METRICS: [(&str, &str); 6] = [
    ("throughput", "throughput"),
    ("p99", "p99"),
    ("peak-rss", "peak RSS"),
    ("cpu-per-msg", "broker CPU/msg"),
    ("instructions", INSTRUCTIONS_METRIC),
    ("allocations", ALLOCATIONS_METRIC),
];

/// The metrics (as `accept` names them) a recorded gate called a regression.
pub fn regressed_metrics(gate: &GateResult) -> Vec<&'static str> {
    let Some(c) = &gate.comparison else {
        return Vec::new();
    };
    let tier = match &c.instructions {
        Some(TierOutcome::Compared(t)) => std::iter::once(&t.metric)
            .chain(t.allocations.as_ref())
            .collect(),
        _ => Vec::new(),
    };
    c.metrics()
        .chain(tier)
        .filter(|m| m.verdict == Verdict::Regression)
        .filter_map(|m| {
            ACCEPTABLE_METRICS
                .iter()
                .find(|(_, name)| *name == m.metric)
                .map(|(cli, _)| *cli)
        })
        .collect()
}

/// Why an acceptance was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptanceError {
    #[error("its gate did not call {requested} a regression (it called: {called})")]
    NotRegressed { requested: String, called: String },
    #[error("its gate also called {0} a regression: accept it too (--metric) or fix it")]
    AlsoRegressed(String),
}

/// Whether accepting `requested` of a commit whose gate regressed `regressed` is sound: each
/// requested metric did regress, and every metric that regressed is accepted (otherwise the
/// base would move past a regression nobody accepted). The error says what is missing.
pub fn check(requested: &[&str], regressed: &[&str]) -> Result<(), AcceptanceError> {
    let missing = |from: &[&str], of: &[&str]| -> Vec<String> {
        from.iter()
            .filter(|m| !of.contains(m))
            .map(|m| (*m).to_owned())
            .collect()
    };
    let not_regressed = missing(requested, regressed);
    if !not_regressed.is_empty() {
        return Err(AcceptanceError::NotRegressed {
            requested: not_regressed.join(", "),
            called: if regressed.is_empty() {
                "nothing".to_owned()
            } else {
                regressed.join(", ")
            },
        });
    }
    let unaccepted = missing(regressed, requested);
    if !unaccepted.is_empty() {
        return Err(AcceptanceError::AlsoRegressed(unaccepted.join(", ")));
    }
    Ok(())
}

/// The acceptances of the commit `sha` in one line ("accepted: instructions by dev at ...:
/// why"), for the history, the dashboard and the report to mark it.
pub fn note_for(rows: &[AcceptanceRow], sha: &str) -> Option<String> {
    let of_it: Vec<&AcceptanceRow> = rows.iter().filter(|r| r.commit_sha == sha).collect();
    let first = of_it.first()?;
    let metrics: Vec<&str> = of_it.iter().map(|r| r.metric.as_str()).collect();
    Some(format!(
        "accepted: {} by {} at {}: {}",
        metrics.join(", "),
        first.accepted_by,
        first.accepted_at,
        first.reason
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acceptance_covers_exactly_what_regressed() {
        assert_eq!(check(&["instructions"], &["instructions"]), Ok(()));
        assert_eq!(
            check(&["p99", "throughput"], &["throughput", "p99"]),
            Ok(())
        );
        let not = check(&["p99"], &["instructions"]).unwrap_err().to_string();
        assert!(not.contains("did not call p99"), "{not}");
        let partial = check(&["instructions"], &["instructions", "throughput"])
            .unwrap_err()
            .to_string();
        assert!(partial.contains("also called throughput"), "{partial}");
        let nothing = check(&["throughput"], &[]).unwrap_err().to_string();
        assert!(nothing.contains("called: nothing"), "{nothing}");
    }

    #[test]
    fn a_commit_with_acceptances_is_noted_with_all_its_metrics() {
        let row = |metric: &str, sha: &str| AcceptanceRow {
            accepted_at: "2026-12-03T00:00:00Z".into(),
            workload: "w".into(),
            commit_sha: sha.into(),
            metric: metric.into(),
            reason: "CRC checks".into(),
            accepted_by: "dev".into(),
        };
        let rows = [
            row("instructions", "aaa"),
            row("cpu-per-msg", "aaa"),
            row("p99", "bbb"),
        ];
        assert_eq!(
            note_for(&rows, "aaa").unwrap(),
            "accepted: instructions, cpu-per-msg by dev at 2026-12-03T00:00:00Z: CRC checks"
        );
        assert_eq!(note_for(&rows, "ccc"), None);
    }
}
