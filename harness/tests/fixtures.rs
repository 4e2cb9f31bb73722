//! Tests that build real commits of this repository with cargo through the harness: a plain
//! run of HEAD, and every regression fixture bisected to the commit that introduced its fault
//! (one cargo build per distinct broker source, cached; real trials of the smoke workload).

use std::path::PathBuf;
use std::process::Command;

const EXIT_PASS: i32 = 0;

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Shared with the other slow test so dependencies compile once per CI run.
fn work_dir() -> PathBuf {
    bin_dir().parent().unwrap().join("chronik-harness-tests")
}

/// These tests build with cargo and measure: run them one at a time, or one's build would be
/// noise in the other's measurements.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The root of this repository (the workspace).
fn this_repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn harness(
    repo: &std::path::Path,
    results: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let output = Command::new(bin_dir().join("chronik-harness"))
        .arg(format!("--repo={}", repo.display()))
        .arg(format!("--work-dir={}", work_dir().display()))
        .arg(format!("--results-dir={}", results.display()))
        .arg(format!(
            "--bench-bin={}",
            bin_dir().join("chronik-bench").display()
        ))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The metric each fixture's fault moves on this broker, and how far at least (head/base).
fn expected_effect(fixture: &str) -> (&'static str, fn(f64) -> bool) {
    match fixture {
        // Nothing slows down, but pending_batches is never drained: memory grows.
        "no-flush" => ("peak_rss", |ratio| ratio > 1.5),
        _ => ("throughput", |ratio| ratio < 0.95),
    }
}

/// CPU per request in the fixed-slowdown fixture here: a size that is found every time on
/// this 2-core machine with 3-second trials (BENCHMARKS.md has the sweep down to smaller ones).
const TEST_SLOWDOWN_US: &str = "500";

#[test]
fn every_fixture_bisects_to_its_commit() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = tmp.path().join("fixtures");
    let generated = harness(
        &this_repo(),
        tmp.path(),
        &[
            "fixtures",
            &format!("--out={}", fixtures.display()),
            &format!("--slowdown-us={TEST_SLOWDOWN_US}"),
        ],
    );
    assert!(generated.status.success());
    let history: serde_json::Value = serde_json::from_slice(&generated.stdout).unwrap();
    let all = history["fixtures"].as_array().unwrap();
    assert_eq!(all.len(), 4, "one fixture per root cause plus the slowdown");
    let mut wrong = Vec::new();
    for fixture in all {
        let name = fixture["name"].as_str().unwrap();
        let log_path = tmp.path().join(format!("{name}.json"));
        let out = harness(
            &fixtures,
            &tmp.path().join("results"),
            &[
                "bisect",
                "--good",
                fixture["good"].as_str().unwrap(),
                "--bad",
                fixture["bad"].as_str().unwrap(),
                "--workload=smoke-c32-s256-3s",
                &format!("--json-output={}", log_path.display()),
            ],
        );
        if out.status.code() != Some(0) {
            wrong.push(format!(
                "{name}: bisect exited with {:?}",
                out.status.code()
            ));
            continue;
        }
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&log_path).unwrap()).unwrap();
        if log["culprit"]["sha"] != fixture["culprit"] {
            wrong.push(format!(
                "{name}: named {} instead of {}",
                log["culprit"]["sha"], fixture["culprit"]
            ));
            continue;
        }
        let (metric, moved) = expected_effect(name);
        let ratio = log["confirmation"][metric]["median_ratio"]
            .as_f64()
            .unwrap_or(f64::NAN);
        if !moved(ratio) {
            wrong.push(format!(
                "{name}: confirmed {metric} ratio vs the parent is {ratio}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The slower test: builds a real commit of this repository with cargo through the harness.
#[test]
fn builds_and_runs_a_real_commit_of_this_repository() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let output = harness(
        &this_repo(),
        &work.path().join("results"),
        &[
            "run",
            "--rev=HEAD",
            "--workload=smoke-c32-s256-3s",
            "--trials=1",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(EXIT_PASS));
    assert!(stdout.contains("| ok "), "one valid trial: {stdout}");
}
