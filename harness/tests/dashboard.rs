//! The history tools on a scripted repository of 12 commits whose trials (JSON exports, as an
//! older results directory holds them) show a 30% drop at one commit: `import` loads them,
//! `history` finds the change point and reports it new once, and the dashboard page, opened in
//! a real headless browser (Debian's `chromium`; `.ci/run` installs it), loads without a
//! console message and lays out every point. Two commits were gated against the first one,
//! with base trials beside them: their series relative to the base is drawn too.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use chronik_harness::build::git::CommitInfo;
use chronik_harness::store::db::{GateRow, ResultsDb, DB_FILE};
use chronik_harness::store::record::{TrialRecord, TRIAL_SCHEMA};
use chronik_harness::trial::runner::TrialStatus;
use chronik_harness::trial::summary::TrialSummary;
use git2::Repository;

mod common;
use common::{bin_dir, commit, run_logged};

const COMMITS: usize = 12;
const DROP_AT: usize = 8;
const TRIALS_PER_COMMIT: usize = 5;
/// The page's default metrics: throughput, p99, p99.9.
const METRICS_ON_PAGE: usize = 3;
/// Commits gated against the first commit (the one before the drop, and the drop).
const GATED: [usize; 2] = [DROP_AT - 1, DROP_AT];
const BROWSER_TIMEOUT_S: &str = "120";

const WORKLOAD: &str = r#"
name = "w"
description = "scripted history"
mode = "produce"
concurrency = 8
message_size = 256
duration_s = 2
warmup_s = 1
acks = "1"
[client]
[limits]
"#;

fn harness(root: &Path, args: &[&str]) -> Output {
    run_logged(
        Command::new(bin_dir().join("chronik-harness"))
            .arg(format!("--repo={}", root.join("repo").display()))
            .arg(format!(
                "--workload-dir={}",
                root.join("workloads").display()
            ))
            .arg(format!("--results-dir={}", root.join("results").display()))
            .arg(format!("--work-dir={}", root.join("work").display()))
            .arg(format!(
                "--bench-bin={}",
                bin_dir().join("chronik-bench").display()
            )),
        args,
    )
}

/// This machine's fingerprint: `bisect --from-change-point` reads this host's series.
fn host() -> String {
    chronik_bench_schema::provenance::HostInfo::current().fingerprint()
}

fn trial(sha: &str, n: usize, throughput: f64, workload_hash: &str) -> TrialRecord {
    TrialRecord {
        schema: TRIAL_SCHEMA.into(),
        id: format!("{sha}-{n}"),
        recorded_at: format!("2026-11-{:02}T02:00:{n:02}Z", 1 + n / TRIALS_PER_COMMIT),
        commit: CommitInfo {
            sha: sha.into(),
            summary: format!("change {n}"),
        },
        workload: "w".into(),
        workload_hash: workload_hash.into(),
        host_fingerprint: host(),
        role: "head".into(),
        status: TrialStatus::Ok,
        detail: None,
        summary: Some(TrialSummary {
            throughput,
            p99_ms: 2.0,
            p999_ms: Some(5.0),
            per_second: vec![throughput as u64; 2],
            peak_rss_mib: None,
            broker_cpu_us_per_msg: None,
            failover: None,
        }),
        broker_peak_rss_kib: None,
        report: None,
    }
}

fn chromium(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(BROWSER_TIMEOUT_S)
        .arg("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(args)
        .output()
        .expect("chromium is not installed (apt-get install chromium; .ci/run installs it)")
}

#[test]
fn history_finds_the_drop_and_the_dashboard_shows_every_point_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("repo")).unwrap();
    fs::create_dir_all(root.join("workloads")).unwrap();
    fs::write(root.join("workloads/w.toml"), WORKLOAD).unwrap();
    let repo = Repository::init(root.join("repo")).unwrap();
    let shas: Vec<String> = (0..COMMITS)
        .map(|i| commit(&repo, &[("n.txt", &i.to_string())], &format!("change {i}")))
        .collect();

    // The workload's hash, as the harness computes it (series keep only the current definition).
    let workload =
        chronik_harness::trial::workload::Workload::find("w", &root.join("workloads")).unwrap();
    let exports = root.join("results/w");
    fs::create_dir_all(&exports).unwrap();
    let mut records = Vec::new();
    for (i, sha) in shas.iter().enumerate() {
        let level = if i < DROP_AT { 100_000.0 } else { 70_000.0 };
        for t in 0..TRIALS_PER_COMMIT {
            let noise = 1.0 + 0.03 * ((t * 7 + i * 3) % 5) as f64 / 4.0 - 0.015;
            let n = i * TRIALS_PER_COMMIT + t;
            let mut record = trial(sha, n, level * noise, &workload.hash());
            if GATED.contains(&i) {
                // Measured by that night's gate, beside the base (the first commit).
                record.role = "gate-head".into();
                let mut base = trial(&shas[0], n, 100_000.0 * noise, &workload.hash());
                base.id = format!("{}-base-{n}", shas[0]);
                base.role = "gate-base".into();
                base.recorded_at = record.recorded_at.replace("T02:00:", "T02:30:");
                records.push(base);
            }
            records.push(record);
        }
    }
    for record in &records {
        fs::write(
            exports.join(format!("{}.json", record.id)),
            serde_json::to_vec(record).unwrap(),
        )
        .unwrap();
    }

    let imported = harness(root, &["import"]);
    assert!(imported.status.success());
    let said = String::from_utf8_lossy(&imported.stdout);
    assert!(said.contains(&format!("{} new", records.len())), "{said}");

    // Gate verdicts as `gate` stores them: the dashboard rings them and links the report.
    let mut db = ResultsDb::open(&root.join("results").join(DB_FILE)).unwrap();
    for (i, verdict) in GATED.into_iter().zip(["pass", "regression"]) {
        let row = GateRow {
            decided_at: format!("2026-11-{:02}T03:00:00Z", i + 1),
            host: host(),
            head_sha: shas[i].clone(),
            base_sha: Some(shas[0].clone()),
            verdict: verdict.into(),
            report: Some(format!("reports/nightly-{i}/report.md")),
        };
        db.insert_gate(&row, "w", "{}").unwrap();
    }
    drop(db);

    let markdown = root.join("change-points.md");
    let history_args = [
        "history",
        "--workload=w",
        "--record-reported",
        &format!("--markdown={}", markdown.display()),
    ];
    let history = harness(root, &history_args);
    assert!(history.status.success());
    let said = String::from_utf8_lossy(&history.stdout);
    assert!(said.contains("change point: -30.0% (worse)"), "{said}");
    let section = fs::read_to_string(&markdown).unwrap();
    assert!(section.contains(&shas[DROP_AT][..10]), "{section}");
    assert!(section.contains("**new**"), "{section}");
    // Reported once: the next night's section lists it without "new".
    assert!(harness(root, &history_args).status.success());
    assert!(!fs::read_to_string(&markdown).unwrap().contains("**new**"));

    // bisect takes the newest change point's range on this host. (The scripted commits have
    // no broker to build, so the bisect itself ends there; e2e covers bisecting.)
    let bisect = harness(
        root,
        &["bisect", "--from-change-point", "--workload=w", "--quiet"],
    );
    let said = String::from_utf8_lossy(&bisect.stdout);
    assert!(
        said.contains("bisecting the newest change point of throughput: -30.0% (worse)"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "between {} and {}",
            &shas[DROP_AT - 1][..10],
            &shas[DROP_AT][..10]
        )),
        "{said}"
    );

    let site = root.join("site");
    let written = harness(root, &["dashboard", &format!("--out={}", site.display())]);
    assert!(written.status.success());
    let page = site.join("w.html");
    let html = fs::read_to_string(&page).unwrap();
    // Per metric: the series relative to the base (the two gated commits), then the raw one.
    let points = (GATED.len() + COMMITS) * METRICS_ON_PAGE;
    assert_eq!(html.matches("class=\"pt\"").count(), points);
    assert_eq!(
        html.matches("class=\"gate\"").count(),
        2 * GATED.len() * METRICS_ON_PAGE
    );
    assert!(
        html.contains(&format!("relative to {}", &shas[0][..10])),
        "the relative series' title"
    );
    assert!(
        html.contains("median -30.0% (msg/s relative to"),
        "the drop as a ratio to the base measured beside it"
    );
    assert!(
        html.contains(&format!("--bad {}", &shas[DROP_AT][..10])),
        "the change point's bisect command"
    );

    let profile = root.join("browser-profile");
    let url = format!("file://{}", page.display());
    let loaded = chromium(&[
        &format!("--user-data-dir={}", profile.display()),
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1100,1400",
        "--virtual-time-budget=5000",
        "--dump-dom",
        &url,
    ]);
    assert!(
        loaded.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let dom = String::from_utf8_lossy(&loaded.stdout);
    let log = String::from_utf8_lossy(&loaded.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(
        dom.contains(&format!("data-points-shown=\"{points}\"")),
        "every point laid out: {}",
        dom.lines().find(|l| l.contains("<body")).unwrap_or("")
    );
}
