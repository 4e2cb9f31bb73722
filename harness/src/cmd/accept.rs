//! `accept`: records that a commit's regression of some metrics is intended: who, what, why and
//! when, in the results database. Later gates of the workload measure against that commit.

use clap::builder::PossibleValuesParser;
use clap::Args;

use crate::cmd::args::{session, Common};
use crate::cmd::exit::EXIT_PASS;
use crate::error::HarnessError;
use crate::store::db::AcceptanceRow;
use crate::store::files::now_rfc3339;
use crate::trial::workload::SEED_WORKLOAD;
use crate::verdict::acceptance::{self, ACCEPTABLE_METRICS};
use crate::verdict::decision::GateResult;

#[derive(Args)]
pub struct AcceptArgs {
    /// The commit whose regression is intended.
    #[arg(long)]
    rev: String,
    /// Workloads whose gate of that commit is accepted (repeatable).
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    /// A metric accepted (repeatable); together they must be every metric the commit's last
    /// recorded gate called a regression.
    #[arg(long, required = true, value_parser = PossibleValuesParser::new(ACCEPTABLE_METRICS.map(|(cli, _)| cli)))]
    metric: Vec<String>,
    /// Why the regression is intended; shown with every later gate that measures against it.
    #[arg(long)]
    reason: String,
    /// Who accepts it (default: git's user.name, else $USER).
    #[arg(long)]
    by: Option<String>,
}

impl AcceptArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        if self.reason.trim().is_empty() {
            return Err(HarnessError::Usage(
                "--reason must say why the regression is intended".into(),
            ));
        }
        let workloads = c.workloads(&self.workload)?;
        let s = session(c)?;
        let commit = s.repo.resolve(&self.rev)?;
        let by = self
            .by
            .clone()
            .or_else(|| s.repo.user_name())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into());
        let requested: Vec<&str> = self.metric.iter().map(String::as_str).collect();
        let mut db = s.store.db()?;
        // Every workload is checked before any is recorded: all or nothing.
        for workload in &workloads {
            let Some(last) = db.gate_results(&workload.name, &commit.sha)?.pop() else {
                return Err(HarnessError::Usage(format!(
                    "no gate of {} is recorded for {}: run `chronik-harness gate --head {} --workload {}` first, so the acceptance names what it measured",
                    commit.short(),
                    workload.name,
                    commit.short(),
                    workload.name
                )));
            };
            let gate: GateResult = serde_json::from_str(&last).map_err(|e| {
                HarnessError::Infra(format!("the recorded gate of {}: {e}", commit.short()))
            })?;
            acceptance::check(&requested, &acceptance::regressed_metrics(&gate)).map_err(
                |why| {
                    HarnessError::Usage(format!(
                        "cannot accept {} of {} for {}: {why}",
                        requested.join(", "),
                        commit.short(),
                        workload.name
                    ))
                },
            )?;
        }
        let accepted_at = now_rfc3339();
        for workload in &workloads {
            for metric in &requested {
                db.insert_acceptance(&AcceptanceRow {
                    accepted_at: accepted_at.clone(),
                    workload: workload.name.clone(),
                    commit_sha: commit.sha.clone(),
                    metric: (*metric).to_owned(),
                    reason: self.reason.clone(),
                    accepted_by: by.clone(),
                })?;
            }
            println!(
                "accepted: {} of {} ({}) for {}, by {by}: {}; later gates of {} measure against {}",
                requested.join(", "),
                commit.short(),
                commit.summary,
                workload.name,
                self.reason,
                workload.name,
                commit.short()
            );
        }
        Ok(EXIT_PASS)
    }
}
