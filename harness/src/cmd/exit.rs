//! The exit codes of `chronik-harness`: one table (README "Exit codes"), in which no verdict
//! shares a code with a usage error or with a shell's own failures.
//!
//! 2 is deliberately unused: clap, bash builtins, `grep` and many other tools exit 2 when they
//! are misused, so a script around the harness whose own step misfires must never read as a
//! verdict. Usage errors exit 64 (sysexits' EX_USAGE), except under `bisect-run`, where every
//! failure that is not a verdict aborts `git bisect run` (128) instead of reading as "bad".
//! Interrupted by a signal, the harness exits with 128 + the signal
//! (`build::process::stop_children_on_signal`), which also aborts `git bisect run`.

use crate::bisect::BisectLog;
use crate::error::HarnessError;
use crate::trial::summary::TrialFailure;
use crate::verdict::compare::Comparison;
use crate::verdict::decision::GateResult;
use crate::verdict::state::Verdict;

pub const EXIT_PASS: u8 = 0;
/// A regression, or an absolute limit failed.
pub const EXIT_REGRESSION: u8 = 1;
/// A trial of a side failed (crashed, timed out, stayed invalid), a side does not build, or the
/// harness could not do its work (git, I/O, configuration).
pub const EXIT_INFRA: u8 = 3;
/// `gate` found no baseline for a workload: only its absolute limits were checked, so a
/// relative regression could not have been seen. Never a silent pass.
pub const EXIT_NO_BASELINE: u8 = 4;
/// The comparison ended without deciding: neither a regression nor a pass could be shown.
pub const EXIT_INCONCLUSIVE: u8 = 5;
/// `bisect` found no single culprit: no regression between the ends, or skips left several
/// candidates.
pub const EXIT_NO_CULPRIT: u8 = 6;
/// `bisect`'s steps pointed at one commit, but its confirmation against its parent did not
/// show the regression: it is not named as the culprit.
pub const EXIT_CULPRIT_UNCONFIRMED: u8 = 7;
/// The command line was wrong: an unknown flag, a bad value, an unknown revision or workload.
pub const EXIT_USAGE: u8 = 64;
/// `git bisect run` convention: this commit cannot be tested.
pub const EXIT_BISECT_SKIP: u8 = 125;
/// `git bisect run` aborts on codes >= 128: a failure that is not a verdict never reads as
/// "bad".
pub const EXIT_BISECT_ABORT: u8 = 128;

/// The exit code of an error that ended a command.
pub fn for_error(err: &HarnessError) -> u8 {
    match err {
        HarnessError::Usage(_) | HarnessError::UnknownRev(..) => EXIT_USAGE,
        HarnessError::Git(_)
        | HarnessError::Io { .. }
        | HarnessError::Config(_)
        | HarnessError::Infra(_) => EXIT_INFRA,
    }
}

/// The exit code of a command line that does not parse. `bisect-run` is recognised by its name
/// among the arguments, since a command line that does not parse has no subcommand to ask:
/// a wrong guess can only turn 64 into 128, both of which stop a caller.
pub fn for_parse_error(args: &[std::ffi::OsString]) -> u8 {
    if args.iter().skip(1).any(|a| a == "bisect-run") {
        EXIT_BISECT_ABORT
    } else {
        EXIT_USAGE
    }
}

/// The exit code of `run`, `compare`, `gate` and `instructions` for a verdict.
pub fn for_verdict(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Pass => EXIT_PASS,
        Verdict::Regression => EXIT_REGRESSION,
        Verdict::Inconclusive => EXIT_INCONCLUSIVE,
    }
}

/// `bisect-run`'s answer to `git bisect run` for a step's verdict: good, bad, or skip.
pub fn for_bisect_step(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Pass => EXIT_PASS,
        Verdict::Regression => EXIT_REGRESSION,
        Verdict::Inconclusive => EXIT_BISECT_SKIP,
    }
}

/// `bisect`'s exit code: a confirmed culprit, one the confirmation did not confirm, or no
/// single commit.
pub fn for_bisect(log: &BisectLog) -> u8 {
    if log.culprit.is_some() {
        EXIT_PASS
    } else if log.unconfirmed.is_some() {
        EXIT_CULPRIT_UNCONFIRMED
    } else {
        EXIT_NO_CULPRIT
    }
}

/// `compare`'s exit code: the verdict's, or infrastructure when a side's trial failed.
pub fn for_comparison(result: &Result<Comparison, TrialFailure>) -> u8 {
    match result {
        Ok(c) => for_verdict(c.verdict),
        Err(f) => for_failure(f),
    }
}

/// A side whose trial failed: the reason on stderr, and the infrastructure exit code.
pub fn for_failure(f: &TrialFailure) -> u8 {
    eprintln!("{:?} side failed: {:?}: {}", f.side, f.status, f.detail);
    EXIT_INFRA
}

/// The code of several results of one command (one per workload): a regression anywhere wins,
/// then the codes that stop a job (infrastructure, no baseline, usage), then inconclusive,
/// then pass.
pub fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    // Least severe first; any other code (infrastructure, usage) ranks after these and before
    // a regression.
    const MILDEST: [u8; 3] = [EXIT_PASS, EXIT_INCONCLUSIVE, EXIT_NO_BASELINE];
    let severity = |code: u8| match MILDEST.iter().position(|&c| c == code) {
        Some(rank) => rank,
        None if code == EXIT_REGRESSION => MILDEST.len() + 1,
        None => MILDEST.len(),
    };
    codes
        .into_iter()
        .max_by_key(|&code| severity(code))
        .unwrap_or(EXIT_PASS)
}

/// `gate`'s exit code over every workload. A regression anywhere wins: it is what the night
/// must say, even when another workload's trial failed. Then the codes that stop a job (a
/// failed trial, a workload without a baseline) before inconclusive, which does not, and a
/// pass only when every workload passed against a baseline.
pub fn for_gate(results: &[GateResult]) -> u8 {
    let verdict = Verdict::worst(results.iter().map(|r| r.verdict));
    if verdict == Verdict::Regression {
        EXIT_REGRESSION
    } else if results.iter().any(|r| r.failure.is_some()) {
        EXIT_INFRA
    } else if results.iter().any(|r| r.base.is_none()) {
        EXIT_NO_BASELINE
    } else {
        for_verdict(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::git::CommitInfo;
    use crate::trial::summary::Side;

    fn gate(verdict: Verdict, with_base: bool, failed: bool) -> GateResult {
        let commit = CommitInfo {
            sha: "0123456789abcdef".into(),
            summary: "a commit".into(),
        };
        GateResult {
            workload: "w".into(),
            base: with_base.then(|| commit.clone()),
            head: commit,
            comparison: None,
            limits: Vec::new(),
            verdict,
            failure: failed.then(|| TrialFailure {
                side: Side::Head,
                status: crate::trial::runner::TrialStatus::Crashed,
                detail: "exited".into(),
            }),
            note: None,
            margins_source: None,
            accepted: Vec::new(),
        }
    }

    /// The gate's exit code: a regression beats everything, then a failed trial, then a
    /// missing baseline, then inconclusive; a pass without a baseline is not 0.
    #[test]
    fn gate_exit_codes_rank_regression_failure_missing_baseline_then_inconclusive() {
        use Verdict::*;
        assert_eq!(for_gate(&[gate(Pass, true, false)]), EXIT_PASS);
        assert_eq!(
            for_gate(&[gate(Pass, true, false), gate(Pass, false, false)]),
            EXIT_NO_BASELINE
        );
        assert_eq!(
            for_gate(&[gate(Inconclusive, true, false), gate(Pass, false, false)]),
            EXIT_NO_BASELINE
        );
        assert_eq!(
            for_gate(&[gate(Inconclusive, true, false), gate(Pass, true, false)]),
            EXIT_INCONCLUSIVE
        );
        assert_eq!(for_gate(&[gate(Regression, false, false)]), EXIT_REGRESSION);
        // One workload's failed trial does not hide another's regression.
        assert_eq!(
            for_gate(&[
                gate(Regression, true, false),
                gate(Inconclusive, true, true)
            ]),
            EXIT_REGRESSION
        );
        assert_eq!(
            for_gate(&[gate(Pass, true, false), gate(Inconclusive, true, true)]),
            EXIT_INFRA
        );
    }

    /// Several workloads' codes: a regression wins over a failed trial, which wins over
    /// inconclusive, which wins over pass.
    #[test]
    fn the_worst_of_several_codes_ranks_regression_first() {
        assert_eq!(worst([EXIT_PASS, EXIT_INCONCLUSIVE]), EXIT_INCONCLUSIVE);
        assert_eq!(
            worst([EXIT_INFRA, EXIT_REGRESSION, EXIT_PASS]),
            EXIT_REGRESSION
        );
        assert_eq!(worst([EXIT_INCONCLUSIVE, EXIT_INFRA]), EXIT_INFRA);
        assert_eq!(
            worst([EXIT_NO_BASELINE, EXIT_INCONCLUSIVE]),
            EXIT_NO_BASELINE
        );
        assert_eq!(worst([]), EXIT_PASS);
    }

    /// `git bisect run` reads 0 as good, 1 as bad and 125 as skip.
    #[test]
    fn bisect_codes_follow_git_bisect_run() {
        use Verdict::*;
        assert_eq!(for_bisect_step(Pass), 0);
        assert_eq!(for_bisect_step(Regression), 1);
        assert_eq!(for_bisect_step(Inconclusive), 125);
    }

    #[test]
    fn no_verdict_shares_a_code_with_usage_or_the_shells_misuse_code() {
        let verdicts = [
            EXIT_PASS,
            EXIT_REGRESSION,
            EXIT_INCONCLUSIVE,
            EXIT_NO_BASELINE,
            EXIT_NO_CULPRIT,
            EXIT_CULPRIT_UNCONFIRMED,
        ];
        for v in verdicts {
            assert_ne!(v, 2, "2 is what clap and bash exit with on misuse");
            assert_ne!(v, EXIT_USAGE);
            assert_ne!(v, EXIT_INFRA);
        }
        let mut all = verdicts.to_vec();
        all.extend([EXIT_INFRA, EXIT_USAGE, EXIT_BISECT_SKIP, EXIT_BISECT_ABORT]);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 10, "every code means one thing");
    }

    #[test]
    fn usage_errors_exit_64_and_abort_a_bisect_run() {
        assert_eq!(for_error(&HarnessError::Usage("x".into())), EXIT_USAGE);
        assert_eq!(
            for_error(&HarnessError::UnknownRev("nope".into(), "x".into())),
            EXIT_USAGE
        );
        assert_eq!(for_error(&HarnessError::Infra("x".into())), EXIT_INFRA);
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            for_parse_error(&args(&["chronik-harness", "compare", "--nope"])),
            EXIT_USAGE
        );
        assert_eq!(
            for_parse_error(&args(&["chronik-harness", "-q", "bisect-run", "--nope"])),
            EXIT_BISECT_ABORT
        );
    }
}
