//! `baseline`: record (or replace) the stored baseline of a workload.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common};
use crate::cmd::exit::{self, EXIT_INFRA};
use crate::cmd::run::trials;
use crate::error::HarnessError;
use crate::session::Session;
use crate::store::files::{now_rfc3339, save_baseline, Baseline, BASELINE_SCHEMA};
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::stats::median;

#[derive(Args)]
pub struct BaselineArgs {
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// Workloads whose baselines to record (repeatable).
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Write the baselines (as stored) as JSON here too (an array, one per workload).
    #[arg(long)]
    json_output: Option<PathBuf>,
}

impl BaselineArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let workloads = c.workloads(&self.workload)?;
        let s = session(c)?;
        let commit = s.repo.resolve(&self.rev)?;
        let mut codes = Vec::new();
        let mut recorded = Vec::new();
        for workload in &workloads {
            let (code, baseline) = record(&s, &c.baselines_dir, &commit, workload, self.trials)?;
            codes.push(code);
            recorded.extend(baseline);
        }
        write_json(&self.json_output, &recorded)?;
        Ok(exit::worst(codes))
    }
}

/// Records `count` trials of `commit` as the workload's baseline.
fn record(
    session: &Session,
    baselines_dir: &Path,
    commit: &CommitInfo,
    workload: &Workload,
    count: usize,
) -> Result<(u8, Option<Baseline>), HarnessError> {
    let (code, summaries, provenance) = trials(session, commit, workload, count)?;
    let Some(provenance) = provenance.filter(|_| summaries.len() == count) else {
        eprintln!("not every trial was valid: baseline not written");
        return Ok((EXIT_INFRA, None));
    };
    let baseline = Baseline {
        schema: BASELINE_SCHEMA.into(),
        workload: workload.name.clone(),
        workload_hash: workload.hash(),
        commit: commit.clone(),
        host_fingerprint: session.host.fingerprint(),
        bench_version: provenance.bench_version,
        librdkafka_version: provenance.librdkafka_version,
        recorded_at: now_rfc3339(),
        median_throughput: median(&summaries.iter().map(|t| t.throughput).collect::<Vec<_>>()),
        median_p99_ms: median(&summaries.iter().map(|t| t.p99_ms).collect::<Vec<_>>()),
        trials: summaries,
    };
    let path = save_baseline(baselines_dir, &baseline)?;
    println!("\nbaseline written to {}", path.display());
    Ok((code, Some(baseline)))
}
