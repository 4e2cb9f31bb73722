//! `gate`: each workload's absolute limits plus the relative verdict against its baseline
//! commit, recorded in the results database; the exit code over all workloads.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common, Statistics};
use crate::cmd::exit;
use crate::error::HarnessError;
use crate::output::render::{
    comparison_table, degradation_line, instructions_line, invalid_line, limits_table,
};
use crate::session::Session;
use crate::store::db::GateRow;
use crate::store::files::{load_baseline, now_rfc3339};
use crate::trial::summary::{Side, GATE};
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::calibration::{self, Tuned};
use crate::verdict::compare::CompareSettings;
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
            let (applied, source) = c.apply(settings, explicit_margins);
            (applied, Some(source))
        }
        None => (*settings, None),
    };
    let settings = &settings;
    let stored = load_baseline(baselines_dir, &workload.name)?;
    let mut note = None;
    let base = match (base_override, &stored) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(s)) => {
            if s.workload_hash != workload.hash() {
                note = Some(format!(
                    "stored baseline was recorded with workload hash {}, now {}",
                    s.workload_hash,
                    workload.hash()
                ));
            }
            if s.host_fingerprint != session.host.fingerprint() {
                note = Some(
                    "stored baseline comes from another host: base re-measured side by side".into(),
                );
            }
            Some(session.repo.resolve(&s.commit.sha)?)
        }
        (None, None) => None,
    };
    let (comparison, failure, head_trials) = match &base {
        Some(base) => {
            match session
                .measure(
                    base,
                    head,
                    workload,
                    settings,
                    GATE,
                    &format!("{} pairs", workload.name),
                )?
                .0
                .into_result(base, head)?
            {
                Ok(c) => {
                    let head_trials = c.head.clone();
                    (Some(c), None, head_trials)
                }
                Err(f) => (None, Some(f), Vec::new()),
            }
        }
        None => {
            note = Some("no baseline for this workload: absolute limits only".into());
            let built = session.build(head)?;
            let mut trials = Vec::new();
            let mut failure = None;
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
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
            }
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
    })
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
        if let Some(line) = instructions_line(c) {
            println!("{line}");
        }
        if let Some(line) = degradation_line(c) {
            println!("{line}");
        }
        if let Some(line) = invalid_line(c) {
            println!("{line}");
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
        format!("{:?}", result.verdict).to_lowercase()
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
