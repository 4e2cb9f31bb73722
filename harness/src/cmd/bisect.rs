//! `bisect`: the first commit that crossed the margin between a good and a bad commit, or
//! the range of the newest change point in this host's history.

use std::path::PathBuf;

use clap::Args;

use crate::bisect;
use crate::cmd::args::{session, write_json, Common, Statistics};
use crate::cmd::exit;
use crate::error::HarnessError;
use crate::history::series::{self, Metric};
use crate::output::render::print_bisect;
use crate::trial::workload::SEED_WORKLOAD;

#[derive(Args)]
pub struct BisectArgs {
    #[arg(long, required_unless_present = "from_change_point")]
    good: Option<String>,
    #[arg(long, required_unless_present = "from_change_point")]
    bad: Option<String>,
    /// Bisect the range of the newest change point of --metric in this host's history
    /// (see `history`) instead of --good/--bad.
    #[arg(long, conflicts_with_all = ["good", "bad"])]
    from_change_point: bool,
    /// The series whose change point is bisected (with --from-change-point).
    #[arg(long, value_enum, default_value_t = Metric::Throughput)]
    metric: Metric,
    #[arg(long, default_value = SEED_WORKLOAD)]
    workload: String,
    #[command(flatten)]
    stats: Statistics,
    /// Write the bisect log as JSON (input for `report --bisect`).
    #[arg(long)]
    json_output: Option<PathBuf>,
}

impl BisectArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let settings = self.stats.settings()?;
        let workload = c.workload(&self.workload)?;
        let s = session(c)?;
        let (good, bad) = match (&self.good, &self.bad) {
            (Some(good), Some(bad)) => (good.clone(), bad.clone()),
            _ => {
                let positions = s.repo.history_positions()?;
                let host = s.host.fingerprint();
                let all = series::load(&s.store, &workload, &[self.metric], &positions)?;
                // Relative series come first: their change points are free of drift.
                let change = all
                    .iter()
                    .filter(|series| series.host == host)
                    .find_map(|series| series.newest_change())
                    .ok_or_else(|| {
                        HarnessError::Usage(format!(
                            "no change point in the {} history of {} on this host ({host}); see `chronik-harness history --workload {}`",
                            self.metric.name(),
                            workload.name,
                            workload.name
                        ))
                    })?;
                println!(
                    "bisecting the newest change point of {}: {}",
                    self.metric.name(),
                    series::describe(change)
                );
                (change.good.sha.clone(), change.bad.sha.clone())
            }
        };
        let log = bisect::bisect(&s, &good, &bad, &workload, &settings)?;
        print_bisect(&log);
        write_json(&self.json_output, &log)?;
        Ok(exit::for_bisect(&log))
    }
}
