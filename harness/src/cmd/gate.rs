//! `gate`: each workload's absolute limits plus the relative verdict against its baseline
//! commit, recorded in the results database; the exit code over all workloads.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::build::git::{CommitInfo, TargetRepo};
use crate::cmd::args::{session, write_json, Common, Statistics};
use crate::cmd::exit;
use crate::error::HarnessError;
use crate::output::render::{accepted_line, comparison_lines, comparison_table, limits_table};
use crate::session::Session;
use crate::store::db::{AcceptanceRow, GateRow};
use crate::store::files::{load_baseline, now_rfc3339};
use crate::trial::summary::{Side, TrialFailure, TrialSummary, GATE};
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::calibration::{self, Tuned};
use crate::verdict::compare::{CompareSettings, Comparison};
use crate::verdict::decision::{check_limits, gate_verdict, GateResult};

#[derive(Args)]
pub struct GateArgs {
    #[arg(long, default_value = "HEAD")]
    head: String,
    /// Baseline commit (default: the one stored in baselines/<workload>.json).
    #[arg(long)]
    base: Option<String>,
    /// Workloads to gate (repeatable).
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    #[command(flatten)]
    stats: Statistics,
    #[arg(long)]
    json_output: Option<PathBuf>,
    /// Where this gate's report will be (stored with the verdict; the dashboard links it).
    #[arg(long)]
    report_link: Option<String>,
}

impl GateArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let settings = self.stats.settings()?;
        let workloads = c.workloads(&self.workload)?;
        let s = session(c)?;
        let head = s.repo.resolve(&self.head)?;
        let base = self
            .base
            .as_deref()
            .map(|b| s.repo.resolve(b))
            .transpose()?;
        let started = std::time::Instant::now();
        let mut results = Vec::new();
        for workload in &workloads {
            let result = gate_one(
                &s,
                &c.baselines_dir,
                base.as_ref(),
                &head,
                workload,
                &settings,
                &self.stats.explicit_margins(),
            )?;
            print_gate(&result);
            record_gate(&s, &result, self.report_link.as_deref())?;
            results.push(result);
        }
        println!("\ngate wall time: {:.0} s", started.elapsed().as_secs_f64());
        write_json(&self.json_output, &results)?;
        Ok(exit::for_gate(&results))
    }
}

/// `gate` for one workload: absolute limits on the head plus, when a baseline commit is known,
/// the relative verdict from interleaved trials of base and head on this machine (a stored
/// number from another day is a trend record, never the only comparator).
fn gate_one(
    session: &Session,
    baselines_dir: &Path,
    base_override: Option<&CommitInfo>,
    head: &CommitInfo,
    workload: &Workload,
    settings: &CompareSettings,
    explicit_margins: &[Tuned],
) -> Result<GateResult, HarnessError> {
    let calibrated = calibration::load(
        baselines_dir,
        &workload.name,
        &workload.hash(),
        &session.host.fingerprint(),
    )?;
    let (settings, margins_source) = match &calibrated {
        Some(c) => {
            let (applied, source) = c.apply(
                settings,
                explicit_margins,
                &session.host.hostname,
                std::time::SystemTime::now(),
            );
            (applied, Some(source))
        }
        None => (*settings, None),
    };
    let settings = &settings;
    let (base, mut note) = gate_base(session, baselines_dir, base_override, workload)?;
    let (base, accepted) = match base {
        Some(b) => match accepted_base(
            &session.repo,
            session.store.db()?.acceptances(&workload.name)?,
            &b,
            head,
        )? {
            Some((moved, rows)) => (Some(moved), rows),
            None => (Some(b), Vec::new()),
        },
        None => (None, Vec::new()),
    };
    let (comparison, failure, head_trials) = match &base {
        Some(base) => against_base(session, base, head, workload, settings)?,
        None => {
            note = Some("no baseline for this workload: absolute limits only".into());
            let (trials, failure) = head_alone(session, head, workload, settings)?;
            (None, failure, trials)
        }
    };
    let limits = if head_trials.is_empty() {
        Vec::new()
    } else {
        check_limits(workload, &head_trials)
    };
    let verdict = gate_verdict(failure.as_ref(), &limits, comparison.as_ref());
    Ok(GateResult {
        workload: workload.name.clone(),
        base,
        head: head.clone(),
        comparison,
        limits,
        verdict,
        failure,
        note,
        margins_source,
        accepted,
    })
}

/// The commit the gate compares against: `--base`, else the stored baseline's commit (with a
/// note when that baseline came from another workload definition or host), else none.
fn gate_base(
    session: &Session,
    baselines_dir: &Path,
    base_override: Option<&CommitInfo>,
    workload: &Workload,
) -> Result<(Option<CommitInfo>, Option<String>), HarnessError> {
    if let Some(b) = base_override {
        return Ok((Some(b.clone()), None));
    }
    let Some(stored) = load_baseline(baselines_dir, &workload.name)? else {
        return Ok((None, None));
    };
    let mut note = None;
    if stored.workload_hash != workload.hash() {
        note = Some(format!(
            "stored baseline was recorded with workload hash {}, now {}",
            stored.workload_hash,
            workload.hash()
        ));
    }
    if stored.host_fingerprint != session.host.fingerprint() {
        note =
            Some("stored baseline comes from another host: base re-measured side by side".into());
    }
    Ok((Some(session.repo.resolve(&stored.commit.sha)?), note))
}

/// What a gate measured: the comparison (with a base), the failure that stopped the trials,
/// and the head's trials (for the absolute limits).
type Measured = (Option<Comparison>, Option<TrialFailure>, Vec<TrialSummary>);

/// The interleaved comparison with the base, or the failure that stopped it.
fn against_base(
    session: &Session,
    base: &CommitInfo,
    head: &CommitInfo,
    workload: &Workload,
    settings: &CompareSettings,
) -> Result<Measured, HarnessError> {
    let outcome = session
        .measure(
            base,
            head,
            workload,
            settings,
            GATE,
            &format!("{} pairs", workload.name),
        )?
        .0
        .into_result(base, head)?;
    Ok(match outcome {
        Ok(c) => {
            let head_trials = c.head.clone();
            (Some(c), None, head_trials)
        }
        Err(f) => (None, Some(f), Vec::new()),
    })
}

/// Without a base: the head's trials for the absolute limits (the design's first look), or
/// the failure that stopped them.
fn head_alone(
    session: &Session,
    head: &CommitInfo,
    workload: &Workload,
    settings: &CompareSettings,
) -> Result<(Vec<TrialSummary>, Option<TrialFailure>), HarnessError> {
    let built = session.build(head)?;
    let mut trials = Vec::new();
    for _ in 0..settings.min_pairs {
        let mut invalid = 0;
        match session.valid_trial(
            &built,
            workload,
            &Side::Head.role(GATE),
            Side::Head,
            &mut invalid,
        ) {
            Ok(t) => trials.push(t),
            Err(f) => return Ok((trials, Some(f))),
        }
    }
    Ok((trials, None))
}

/// The newest commit after `base`, up to `head`, among the accepted ones (`rows`, of one
/// workload), with its acceptances: the gate measures against it instead of `base`. An
/// acceptance of a commit this repository does not have, or one outside base..head, is left out.
fn accepted_base(
    repo: &TargetRepo,
    rows: Vec<AcceptanceRow>,
    base: &CommitInfo,
    head: &CommitInfo,
) -> Result<Option<(CommitInfo, Vec<AcceptanceRow>)>, HarnessError> {
    let mut newest: Option<CommitInfo> = None;
    for row in &rows {
        let Ok(commit) = repo.resolve(&row.commit_sha) else {
            continue;
        };
        let inside = commit.sha != base.sha
            && repo.is_ancestor(base, &commit)?
            && repo.is_ancestor(&commit, head)?;
        let newer = match &newest {
            Some(n) => repo.is_ancestor(n, &commit)?,
            None => true,
        };
        if inside && newer {
            newest = Some(commit);
        }
    }
    Ok(newest.map(|commit| {
        let of_it = rows
            .into_iter()
            .filter(|r| r.commit_sha == commit.sha)
            .collect();
        (commit, of_it)
    }))
}

fn print_gate(result: &GateResult) {
    println!(
        "\n== gate {} (head {})",
        result.workload,
        result.head.short()
    );
    if let Some(note) = &result.note {
        println!("note: {note}");
    }
    if let Some(source) = &result.margins_source {
        println!("{source}");
    }
    if let Some(line) = accepted_line(result) {
        println!("{line}");
    }
    if let Some(f) = &result.failure {
        println!(
            "{:?} side could not be measured: {:?}: {}",
            f.side, f.status, f.detail
        );
    }
    if let (Some(c), Some(base)) = (&result.comparison, &result.base) {
        println!(
            "relative to {} ({} pairs):\n\n{}",
            base.short(),
            c.pairs(),
            comparison_table(c)
        );
        println!("{}", c.design);
        // Prefixed with the workload: ci/nightly.yml quotes the "could see" lines.
        for line in comparison_lines(c) {
            println!("{}: {line}", result.workload);
        }
    }
    if !result.limits.is_empty() {
        println!("\n{}", limits_table(&result.limits));
    }
    println!("\ngate verdict: {:?}", result.verdict);
}

/// Stores a gate verdict in the results database (the dashboard marks it on the series).
fn record_gate(
    session: &Session,
    result: &GateResult,
    report_link: Option<&str>,
) -> Result<(), HarnessError> {
    let verdict = if result.failure.is_some() {
        "failed".to_owned()
    } else {
        result.verdict.name().to_owned()
    };
    let row = GateRow {
        decided_at: now_rfc3339(),
        host: session.host.fingerprint(),
        head_sha: result.head.sha.clone(),
        base_sha: result.base.as_ref().map(|b| b.sha.clone()),
        verdict,
        report: report_link.map(str::to_owned),
    };
    let json = serde_json::to_string(result).map_err(|e| HarnessError::Infra(e.to_string()))?;
    session
        .store
        .db()?
        .insert_gate(&row, &result.workload, &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Repository, Signature};

    /// A line of commits; returns their ids, oldest first.
    fn history(dir: &Path, n: usize) -> Vec<CommitInfo> {
        let raw = Repository::init(dir).unwrap();
        let sig = Signature::now("t", "t@example.invalid").unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            std::fs::write(dir.join("f"), i.to_string()).unwrap();
            let mut index = raw.index().unwrap();
            index.add_path(Path::new("f")).unwrap();
            let tree = raw.find_tree(index.write_tree().unwrap()).unwrap();
            let parents: Vec<git2::Commit> = raw
                .head()
                .ok()
                .map(|h| h.peel_to_commit().unwrap())
                .into_iter()
                .collect();
            let refs: Vec<&git2::Commit> = parents.iter().collect();
            let oid = raw
                .commit(Some("HEAD"), &sig, &sig, &format!("c{i}"), &tree, &refs)
                .unwrap();
            out.push(CommitInfo {
                sha: oid.to_string(),
                summary: format!("c{i}"),
            });
        }
        out
    }

    fn accepted(sha: &str, metric: &str) -> AcceptanceRow {
        AcceptanceRow {
            accepted_at: "2026-12-03T00:00:00Z".into(),
            workload: "w".into(),
            commit_sha: sha.into(),
            metric: metric.into(),
            reason: "intended".into(),
            accepted_by: "dev".into(),
        }
    }

    #[test]
    fn the_gate_measures_against_the_newest_accepted_commit_between_base_and_head() {
        let dir = tempfile::tempdir().unwrap();
        let c = history(dir.path(), 5);
        let repo = TargetRepo::open(dir.path()).unwrap();
        let rows = vec![
            accepted(&c[1].sha, "p99"),
            accepted(&c[3].sha, "instructions"),
            accepted(&c[3].sha, "cpu-per-msg"),
            accepted(&"f".repeat(40), "p99"), // not in this repository
        ];
        let (moved, of_it) = accepted_base(&repo, rows.clone(), &c[0], &c[4])
            .unwrap()
            .unwrap();
        assert_eq!(moved, c[3]);
        assert_eq!(of_it.len(), 2);
        // Only acceptances after the base and up to the head count.
        let (moved, _) = accepted_base(&repo, rows.clone(), &c[0], &c[2])
            .unwrap()
            .unwrap();
        assert_eq!(moved, c[1]);
        assert_eq!(
            accepted_base(&repo, rows.clone(), &c[3], &c[4]).unwrap(),
            None
        );
        assert_eq!(accepted_base(&repo, rows, &c[1], &c[2]).unwrap(), None);
        assert_eq!(
            accepted_base(&repo, Vec::new(), &c[0], &c[4]).unwrap(),
            None
        );
    }
}
