//! `fixtures`: generate the regression-fixture repository (one commit per seed root cause).

use std::path::PathBuf;

use clap::Args;

use crate::build::fixtures::{self, FixtureOptions};
use crate::build::git::TargetRepo;
use crate::cmd::args::Common;
use crate::cmd::exit::EXIT_PASS;
use crate::error::HarnessError;

#[derive(Args)]
pub struct FixturesArgs {
    #[arg(long)]
    out: PathBuf,
    /// Commit of the target repository to start from.
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// Only these fixtures (default: all).
    #[arg(long)]
    only: Vec<String>,
    /// CPU time per produce request in the fixed-slowdown fixture, in microseconds.
    #[arg(long, default_value_t = 150)]
    slowdown_us: u64,
}

impl FixturesArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let repo = TargetRepo::open(&c.repo)?;
        let from = repo.resolve(&self.rev)?;
        let options = FixtureOptions {
            slowdown_us: self.slowdown_us,
        };
        let history = fixtures::generate(&repo, &from, &self.out, &self.only, &options)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&history)
                .map_err(|e| HarnessError::Infra(e.to_string()))?
        );
        Ok(EXIT_PASS)
    }
}
