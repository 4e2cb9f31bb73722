//! The regression fixtures bisect to the commit that introduced the fault. Real cargo builds of
//! this repository's broker (one per commit, cached), real trials, the smoke workload. Only the
//! broker-wide-lock fixture is asserted here: its effect (about -92%) is far outside this
//! machine's noise; the smaller fixtures need longer runs (see BENCHMARKS.md).

use std::path::PathBuf;
use std::process::Command;

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Shared with the other slow test so dependencies compile once per CI run.
fn work_dir() -> PathBuf {
    bin_dir().parent().unwrap().join("chronik-harness-tests")
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

#[test]
fn the_produce_lock_fixture_bisects_to_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let this_repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let fixtures = tmp.path().join("fixtures");
    let generated = harness(
        &this_repo,
        tmp.path(),
        &[
            "fixtures",
            &format!("--out={}", fixtures.display()),
            "--only=produce-lock",
        ],
    );
    assert!(generated.status.success());
    let history: serde_json::Value = serde_json::from_slice(&generated.stdout).unwrap();
    for fixture in history["fixtures"].as_array().unwrap() {
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
        assert_eq!(out.status.code(), Some(0), "{name}: bisect found a culprit");
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&log_path).unwrap()).unwrap();
        assert_eq!(
            log["culprit"]["sha"], fixture["culprit"],
            "{name}: the right commit"
        );
        let effect = log["confirmation"]["throughput"]["median_ratio"]
            .as_f64()
            .unwrap();
        assert!(
            effect < 0.95,
            "{name}: confirmed slowdown vs the parent ({effect})"
        );
    }
}
