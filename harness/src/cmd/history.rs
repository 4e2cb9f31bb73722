//! `history`: a metric's series over commits, per host, with its change points (E-divisive
//! means).

use std::path::PathBuf;

use clap::Args;

use crate::build::git::TargetRepo;
use crate::cmd::args::{write_json, Common};
use crate::cmd::exit::EXIT_PASS;
use crate::cmd::report::COMMIT_URL_DEFAULT;
use crate::error::HarnessError;
use crate::history::series::{self, Metric};
use crate::trial::workload::SEED_WORKLOAD;
use crate::verdict::acceptance;

#[derive(Args)]
pub struct HistoryArgs {
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    /// Metrics (repeatable).
    #[arg(long, value_enum, default_values_t = vec![Metric::Throughput])]
    metric: Vec<Metric>,
    /// Only this host fingerprint.
    #[arg(long)]
    host: Option<String>,
    /// Also write the change points as a markdown section (for the nightly report).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Note the change points in the database as reported: the next section marks only
    /// later ones new.
    #[arg(long, requires = "markdown")]
    record_reported: bool,
    #[arg(long)]
    json_output: Option<PathBuf>,
    #[arg(long, default_value = COMMIT_URL_DEFAULT)]
    commit_url: String,
}

impl HistoryArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let repo = TargetRepo::open(&c.repo)?;
        let positions = repo.history_positions()?;
        let store = c.store();
        let mut all = Vec::new();
        for workload in c.workloads(&self.workload)? {
            all.extend(series::load(&store, &workload, &self.metric, &positions)?);
        }
        all.retain(|s| self.host.as_ref().is_none_or(|h| &s.host == h));
        if all.is_empty() {
            println!("no valid trials of these workloads on commits of this history");
        }
        let db = store.db()?;
        for series in &all {
            println!("## {} — {}\n", series.workload, series.label());
            print!("{}", series.markdown(&self.commit_url));
            let accepted = db.acceptances(&series.workload)?;
            for point in &series.points {
                if let Some(note) = acceptance::note_for(&accepted, &point.commit.sha) {
                    println!("{}: {note}", point.commit.short());
                }
            }
            for change in &series.changes {
                println!("change point: {}", series::describe(change));
            }
            println!();
        }
        if let Some(path) = &self.markdown {
            let md = series::change_points_markdown(
                &store,
                &all,
                &self.commit_url,
                self.record_reported,
            )?;
            std::fs::write(path, md).map_err(|e| HarnessError::io(path, e))?;
        }
        write_json(&self.json_output, &all)?;
        Ok(EXIT_PASS)
    }
}
