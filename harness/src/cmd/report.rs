//! `report`: the markdown report with SVG figures, from the results database and optionally
//! a gate result and a bisect log.

use std::path::PathBuf;

use clap::Args;

use crate::build::git::TargetRepo;
use crate::cmd::args::{read_json, Common};
use crate::cmd::exit::EXIT_PASS;
use crate::error::HarnessError;
use crate::output::report::{self, ReportInput};
use crate::trial::workload::SEED_WORKLOAD;

#[derive(Args)]
pub struct ReportArgs {
    /// Output directory (report.md and figures).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "Broker performance report")]
    title: String,
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    #[arg(long)]
    base: Option<String>,
    #[arg(long)]
    head: Option<String>,
    /// A gate result (`gate --json-output`).
    #[arg(long)]
    gate: Option<PathBuf>,
    /// A bisect log (`bisect --json-output`).
    #[arg(long)]
    bisect: Option<PathBuf>,
    /// Commit link template; the default works for reports under reports/<name>/ on GitHub.
    #[arg(long, default_value = COMMIT_URL_DEFAULT)]
    commit_url: String,
}

/// Commit links from a page two folders below the repository root on GitHub
/// (`reports/<name>/`): up to the repository, then `commit/<sha>`.
pub const COMMIT_URL_DEFAULT: &str = "../../../../commit/{sha}";

impl ReportArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let repo = TargetRepo::open(&c.repo)?;
        let resolve = |r: &Option<String>| r.as_deref().map(|r| repo.resolve(r)).transpose();
        let store = c.store();
        let input = ReportInput {
            title: self.title.clone(),
            workloads: c.workloads(&self.workload)?,
            store: &store,
            baselines_dir: &c.baselines_dir,
            base: resolve(&self.base)?,
            head: resolve(&self.head)?,
            gate: self.gate.as_deref().map(read_json).transpose()?,
            bisect: self.bisect.as_deref().map(read_json).transpose()?,
            history: repo.history_positions()?,
            commit_url: self.commit_url.clone(),
            out_dir: self.out.clone(),
        };
        let path = report::write(&input)?;
        println!("report written to {}", path.display());
        Ok(EXIT_PASS)
    }
}
