//! The command line's exit codes, as a script sees them: a usage error never reads as a
//! verdict. Every subcommand the binary lists is run with a flag it does not know, and a few
//! with values it refuses; none of these runs a trial.

use std::path::Path;
use std::process::{Command, Output};

use chronik_harness::cmd::exit::{EXIT_BISECT_ABORT, EXIT_PASS, EXIT_USAGE};
use git2::Repository;

mod common;
use common::{bin_dir, commit, run_logged};

fn harness(cwd: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(bin_dir().join("chronik-harness"));
    command.current_dir(cwd);
    run_logged(&mut command, args)
}

/// The subcommands `--help` lists (all but `help` itself).
fn subcommands(cwd: &Path) -> Vec<String> {
    let help = harness(cwd, &["--help"]);
    assert_eq!(help.status.code(), Some(i32::from(EXIT_PASS)));
    let text = String::from_utf8(help.stdout).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The exit code a usage error of this subcommand must have.
fn usage_code(subcommand: &str) -> Option<i32> {
    Some(i32::from(if subcommand == "bisect-run" {
        EXIT_BISECT_ABORT
    } else {
        EXIT_USAGE
    }))
}

#[test]
fn every_subcommand_exits_with_the_usage_code_on_a_flag_it_does_not_know() {
    let tmp = tempfile::tempdir().unwrap();
    let names = subcommands(tmp.path());
    assert!(names.len() >= 15, "subcommands from --help: {names:?}");
    let mut wrong = Vec::new();
    for name in &names {
        let out = harness(tmp.path(), &[name, "--no-such-flag"]);
        if out.status.code() != usage_code(name) {
            wrong.push(format!("{name}: exit {:?}", out.status.code()));
        }
    }
    for args in [
        &["no-such-subcommand"][..],
        &[],
        &["--no-such-global-flag", "workloads"],
    ] {
        let out = harness(tmp.path(), args);
        if out.status.code() != Some(i32::from(EXIT_USAGE)) {
            wrong.push(format!("{args:?}: exit {:?}", out.status.code()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn values_the_harness_refuses_are_usage_errors_and_abort_a_bisect_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init(tmp.path()).unwrap();
    commit(&repo, &[("README", "a repository\n")], "first");
    let root = tmp.path();
    let usage = Some(i32::from(EXIT_USAGE));
    let abort = Some(i32::from(EXIT_BISECT_ABORT));
    for (args, code) in [
        (&["compare", "--base=HEAD", "--min-pairs=1"][..], usage),
        (&["compare", "--base=HEAD", "--alpha=1.5"], usage),
        (&["gate", "--max-pairs=1"], usage),
        (&["run", "--rev=no-such-branch", "--trials=1"], usage),
        (&["run", "--workload=no-such-workload", "--trials=1"], usage),
        (&["compare", "--base=HEAD", "--seed=not-a-number"], usage),
        (&["compare", "HEAD", "HEAD"], usage),
        (&["compare", "--base=HEAD", "--order=sideways"], usage),
        (
            &["power", "--base=HEAD", "--head=HEAD", "--order=abba"],
            usage,
        ),
        (&["bisect-run", "--good=HEAD", "--min-pairs=1"], abort),
        (&["bisect-run", "--good=no-such-branch"], abort),
        (&["bisect-run"], abort),
    ] {
        let out = harness(root, args);
        assert_eq!(out.status.code(), code, "{args:?}");
        assert!(
            !out.stderr.is_empty(),
            "{args:?} says what is wrong on stderr"
        );
    }
}

/// A gate of `head` as the database records it, its throughput called a regression.
fn throughput_regression(head: &str) -> String {
    use chronik_harness::build::git::CommitInfo;
    use chronik_harness::verdict::compare::{Comparison, InvalidTrials};
    use chronik_harness::verdict::decision::GateResult;
    use chronik_harness::verdict::state::Verdict;
    use chronik_harness::verdict::stats::MetricComparison;
    let metric = |name: &str, ratio: f64, verdict: Verdict| MetricComparison {
        metric: name.into(),
        pairs: 11,
        median_ratio: ratio,
        ci_low_ratio: ratio * 0.98,
        ci_high_ratio: ratio * 1.02,
        ci_coverage: 0.99,
        limit_ratio: 0.95,
        detectable: Some(0.03),
        verdict,
    };
    let gate = GateResult {
        workload: "produce-c128-s256-30s".into(),
        base: None,
        head: CommitInfo {
            sha: head.into(),
            summary: "slower".into(),
        },
        comparison: Some(Comparison {
            base: Vec::new(),
            head: Vec::new(),
            throughput: metric("throughput", 0.9, Verdict::Regression),
            p99: metric("p99", 1.0, Verdict::Pass),
            peak_rss: None,
            cpu_per_msg: None,
            degradation: None,
            invalid: InvalidTrials::default(),
            verdict: Verdict::Regression,
            design: String::new(),
            instructions: None,
            out_of_budget: false,
        }),
        limits: Vec::new(),
        verdict: Verdict::Regression,
        failure: None,
        note: None,
        margins_source: None,
        accepted: Vec::new(),
    };
    serde_json::to_string(&gate).unwrap()
}

/// `accept` records who accepted what, why and when, and only what the commit's recorded gate
/// called a regression: not before a gate, not a metric that did not regress, not without a
/// reason.
#[test]
fn a_regression_is_accepted_only_as_its_gate_recorded_it() {
    use chronik_harness::store::db::{GateRow, ResultsDb, DB_FILE};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let repo = Repository::init(root).unwrap();
    commit(&repo, &[("README", "base\n")], "base");
    let slower = commit(&repo, &[("README", "slower\n")], "slower");
    commit(&repo, &[("README", "head\n")], "head");
    let results = root.join("results");
    let results_flag = format!("--results-dir={}", results.display());
    // The repository under test has no workload files; this crate's are named explicitly (a
    // target dir outside the checkout has none beside the binary either).
    let workloads_flag = format!(
        "--workload-dir={}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workloads")
            .display()
    );
    let accept = |metric: &str, reason: &str| {
        harness(
            root,
            &[
                &results_flag,
                &workloads_flag,
                "accept",
                "--rev",
                &slower,
                "--metric",
                metric,
                "--reason",
                reason,
                "--by",
                "dev",
            ],
        )
    };
    let usage = Some(i32::from(EXIT_USAGE));
    assert_eq!(
        accept("throughput", "intended").status.code(),
        usage,
        "no gate yet"
    );
    {
        let mut db = ResultsDb::open(&results.join(DB_FILE)).unwrap();
        let row = GateRow {
            decided_at: "2026-12-03T00:00:00Z".into(),
            host: "host".into(),
            head_sha: slower.clone(),
            base_sha: None,
            verdict: "regression".into(),
            report: None,
        };
        db.insert_gate(
            &row,
            "produce-c128-s256-30s",
            &throughput_regression(&slower),
        )
        .unwrap();
    }
    let not_regressed = accept("p99", "intended");
    assert_eq!(not_regressed.status.code(), usage);
    assert!(String::from_utf8_lossy(&not_regressed.stderr).contains("did not call p99"));
    assert_eq!(accept("throughput", " ").status.code(), usage, "no reason");
    assert_eq!(accept("no-such-metric", "x").status.code(), usage);
    let db = ResultsDb::open(&results.join(DB_FILE)).unwrap();
    assert!(db.acceptances("produce-c128-s256-30s").unwrap().is_empty());
    let ok = accept("throughput", "a CRC check on every batch, on purpose");
    assert_eq!(ok.status.code(), Some(i32::from(EXIT_PASS)));
    let rows = db.acceptances("produce-c128-s256-30s").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].commit_sha, slower);
    assert_eq!(rows[0].metric, "throughput");
    assert_eq!(rows[0].accepted_by, "dev");
    assert_eq!(rows[0].reason, "a CRC check on every batch, on purpose");
}
