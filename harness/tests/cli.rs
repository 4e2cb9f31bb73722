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
