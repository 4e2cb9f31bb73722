//! `dashboard`: the static site (HTML + SVG, no server): one page per workload with each
//! metric's series over commits, change points and gate verdicts.

use std::path::PathBuf;

use clap::Args;

use crate::build::git::TargetRepo;
use crate::cmd::args::Common;
use crate::cmd::exit::EXIT_PASS;
use crate::cmd::report::COMMIT_URL_DEFAULT;
use crate::error::HarnessError;
use crate::history::series::Metric;
use crate::output::dashboard::{self, DashboardInput, REPORT_PREFIX_DEFAULT};
use crate::trial::workload::Workload;

#[derive(Args)]
pub struct DashboardArgs {
    #[arg(long, default_value = "reports/dashboard")]
    out: PathBuf,
    /// Workloads (default: every workload with trials in the database).
    #[arg(long)]
    workload: Vec<String>,
    #[arg(long, value_enum, default_values_t = vec![Metric::Throughput, Metric::P99, Metric::P999])]
    metric: Vec<Metric>,
    /// Commit link template; the default works for a dashboard under reports/<name>/ on GitHub.
    #[arg(long, default_value = COMMIT_URL_DEFAULT)]
    commit_url: String,
    /// Put before a gate's stored report path (stored relative to the repository root).
    #[arg(long, default_value = REPORT_PREFIX_DEFAULT)]
    report_prefix: String,
}

impl DashboardArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let repo = TargetRepo::open(&c.repo)?;
        let store = c.store();
        let names = if self.workload.is_empty() {
            let known = Workload::list(&c.workload_dir()?);
            store
                .db()?
                .workloads()?
                .into_iter()
                .filter(|w| known.contains(w))
                .collect()
        } else {
            self.workload.clone()
        };
        let input = DashboardInput {
            store: &store,
            workloads: c.workloads(&names)?,
            metrics: self.metric.clone(),
            positions: repo.history_positions()?,
            commit_url: self.commit_url.clone(),
            report_prefix: self.report_prefix.clone(),
            out_dir: self.out.clone(),
        };
        let written = dashboard::write(&input)?;
        for (name, path, points) in &written.pages {
            println!("{name}: {points} point(s) in {}", path.display());
        }
        println!("dashboard written to {}", written.index.display());
        Ok(EXIT_PASS)
    }
}
