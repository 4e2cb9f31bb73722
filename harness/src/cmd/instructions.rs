//! `instructions`: only the deterministic tier, instructions per request of a fixed stream
//! under Valgrind, base against head (a minute instead of many).

use std::path::PathBuf;

use clap::Args;

use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common};
use crate::cmd::exit::{self, EXIT_INFRA};
use crate::error::HarnessError;
use crate::output::render::{tier_line, tier_table};
use crate::session::{first_unbuilt, BuiltCommit, Session};
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::decision::does_not_build;
use crate::verdict::instructions::TierOutcome;
use crate::verdict::stats::{Margins, ALLOCATIONS_RISE_DEFAULT, INSTRUCTIONS_RISE_DEFAULT};

#[derive(Args)]
pub struct InstructionsArgs {
    /// The commit compared against.
    #[arg(long)]
    base: String,
    #[arg(long, default_value = "HEAD")]
    head: String,
    /// Its broker arguments are used (the stream itself is fixed).
    #[arg(long, default_value = SEED_WORKLOAD)]
    workload: String,
    /// Rise of instructions per request that counts as a regression (fraction).
    #[arg(long, default_value_t = INSTRUCTIONS_RISE_DEFAULT)]
    instructions_margin: f64,
    /// Rise of heap allocations per request that counts as a regression (fraction).
    #[arg(long, default_value_t = ALLOCATIONS_RISE_DEFAULT)]
    allocations_margin: f64,
    #[arg(long)]
    json_output: Option<PathBuf>,
}

impl InstructionsArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let s = session(c)?;
        let (base, head) = (s.repo.resolve(&self.base)?, s.repo.resolve(&self.head)?);
        let (code, tier) = instructions(
            &s,
            &base,
            &head,
            &c.workload(&self.workload)?,
            &Margins {
                instructions_rise: self.instructions_margin,
                allocations_rise: self.allocations_margin,
                ..Margins::default()
            },
        )?;
        write_json(&self.json_output, &tier)?;
        Ok(code)
    }
}

/// Builds both sides for the deterministic tier; a side that does not build is an error.
fn build_pair(
    session: &Session,
    base: &CommitInfo,
    head: &CommitInfo,
) -> Result<(BuiltCommit, BuiltCommit), HarnessError> {
    let b = session.build(base)?;
    let h = session.build(head)?; // cached when head == base
    if let Some((side, log_tail)) = first_unbuilt(&b, &h) {
        return Err(does_not_build(side, log_tail, base, head));
    }
    Ok((b, h))
}

/// `instructions`: the deterministic tier alone, printed as its table row and line.
fn instructions(
    session: &Session,
    base: &CommitInfo,
    head: &CommitInfo,
    workload: &Workload,
    margins: &Margins,
) -> Result<(u8, Option<TierOutcome>), HarnessError> {
    let (b, h) = build_pair(session, base, head)?;
    let Some(tier) = session.instruction_outcome(&b, &h, workload, margins) else {
        return Err(HarnessError::Usage(
            "the deterministic tier is off (--instruction-runs 0)".into(),
        ));
    };
    let code = match &tier {
        TierOutcome::Compared(t) => {
            println!(
                "\n{}: base {} vs head {}\n\n{}",
                workload.name,
                base.short(),
                head.short(),
                tier_table(t)
            );
            exit::for_verdict(t.metric.verdict)
        }
        TierOutcome::NotMeasured { .. } => EXIT_INFRA,
    };
    if let Some(line) = tier_line(&tier) {
        println!("{line}");
    }
    println!("\nverdict: {:?}", tier.verdict());
    Ok((code, Some(tier)))
}
