//! `bisect-run`: a `git bisect run` predicate that tests the checked-out HEAD against --good.
//! Its exit codes are `git bisect run`'s: 0 good, 1 bad, 125 skip, and 128 for everything
//! that is not a verdict, so that no failure reads as "bad".

use clap::Args;

use crate::bisect::step_settings;
use crate::cmd::args::{session, Common, Statistics};
use crate::cmd::compare::print_comparison;
use crate::cmd::exit::{self, EXIT_BISECT_ABORT, EXIT_BISECT_SKIP};
use crate::error::HarnessError;
use crate::session::Session;
use crate::trial::summary::Side;
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::compare::CompareSettings;
use crate::verdict::decision::{good_does_not_build, PairOutcome};

#[derive(Args)]
pub struct BisectRunArgs {
    #[arg(long)]
    good: String,
    #[arg(long, default_value = SEED_WORKLOAD)]
    workload: String,
    #[command(flatten)]
    stats: Statistics,
}

impl BisectRunArgs {
    /// Never an error: every failure that is not a verdict, a usage error included, aborts
    /// `git bisect run` (128); any other code from 1 to 127 would read as "bad".
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let outcome = self.stats.settings().and_then(|settings| {
            let s = session(c)?;
            run_step(
                &s,
                &self.good,
                &c.workload(&self.workload)?,
                &step_settings(&settings),
            )
        });
        Ok(outcome.unwrap_or_else(|e| {
            eprintln!("chronik-harness: {e}");
            EXIT_BISECT_ABORT
        }))
    }
}

/// `bisect-run`: one step of `git bisect run`, on the checked-out HEAD against `good`. Exit
/// code 0 good, 1 bad, 125 skip (does not build, a failed trial of HEAD, inconclusive); an
/// error (the good side fails) aborts the bisect.
fn run_step(
    session: &Session,
    good: &str,
    workload: &Workload,
    settings: &CompareSettings,
) -> Result<u8, HarnessError> {
    let good = session.repo.resolve(good)?;
    let head = session.repo.resolve("HEAD")?;
    if session.build_key(&good)? == session.build_key(&head)? {
        println!(
            "{} builds the same broker as {}: good without measuring",
            head.short(),
            good.short()
        );
        return Ok(0);
    }
    let label = format!("{} pairs", workload.name);
    match session
        .measure(&good, &head, workload, settings, "bisect-run", &label)?
        .0
    {
        PairOutcome::Compared(cmp) => {
            print_comparison(workload, &good, &head, &cmp);
            Ok(exit::for_bisect_step(cmp.verdict))
        }
        PairOutcome::DoesNotBuild {
            side: Side::Head, ..
        } => {
            println!("{} does not build: skipped", head.short());
            Ok(EXIT_BISECT_SKIP)
        }
        PairOutcome::SideFailed(f) if f.side == Side::Head => Ok(EXIT_BISECT_SKIP),
        PairOutcome::DoesNotBuild { log_tail, .. } => Err(good_does_not_build(&good, &log_tail)),
        PairOutcome::SideFailed(f) => Err(HarnessError::Infra(format!(
            "good side failed: {}",
            f.detail
        ))),
    }
}
