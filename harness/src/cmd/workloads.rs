//! `workloads`: list the workload files.

use clap::Args;

use crate::cmd::args::Common;
use crate::cmd::exit::EXIT_PASS;
use crate::error::HarnessError;
use crate::trial::workload::Workload;

#[derive(Args)]
pub struct WorkloadsArgs {}

impl WorkloadsArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let dir = c.workload_dir()?;
        for name in Workload::list(&dir) {
            let w = Workload::find(&name, &dir)?;
            println!("{name:36} {}", w.description);
        }
        Ok(EXIT_PASS)
    }
}
