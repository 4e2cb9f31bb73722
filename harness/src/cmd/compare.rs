//! `compare`: interleaved A/B trials of two commits, the verdict table, and its exit code.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common, Statistics};
use crate::cmd::exit;
use crate::error::HarnessError;
use crate::output::render::{comparison_lines, comparison_table};
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::compare::Comparison;

#[derive(Args)]
pub struct CompareArgs {
    /// The commit compared against.
    #[arg(long)]
    base: String,
    #[arg(long, default_value = "HEAD")]
    head: String,
    /// Workloads to compare on, one after the other (repeatable).
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    #[command(flatten)]
    stats: Statistics,
    /// Write the comparisons as JSON (an array, one per workload).
    #[arg(long)]
    json_output: Option<PathBuf>,
}

impl CompareArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let settings = self.stats.settings()?;
        let workloads = c.workloads(&self.workload)?;
        let s = session(c)?;
        let (base, head) = (s.repo.resolve(&self.base)?, s.repo.resolve(&self.head)?);
        let mut codes = Vec::new();
        let mut compared = Vec::new();
        for workload in &workloads {
            let result = s
                .measure(
                    &base,
                    &head,
                    workload,
                    &settings,
                    "compare",
                    &format!("{} pairs", workload.name),
                )?
                .0
                .into_result(&base, &head)?;
            codes.push(exit::for_comparison(&result));
            if let Ok(comparison) = result {
                print_comparison(workload, &base, &head, &comparison);
                compared.push((workload.name.clone(), comparison));
            }
        }
        let outputs: Vec<CompareOutput> = compared
            .iter()
            .map(|(workload, comparison)| CompareOutput {
                workload,
                base: &base,
                head: &head,
                comparison,
            })
            .collect();
        write_json(&self.json_output, &outputs)?;
        Ok(exit::worst(codes))
    }
}

#[derive(Debug, Serialize)]
pub struct CompareOutput<'a> {
    pub workload: &'a str,
    pub base: &'a CommitInfo,
    pub head: &'a CommitInfo,
    pub comparison: &'a Comparison,
}

pub fn print_comparison(workload: &Workload, base: &CommitInfo, head: &CommitInfo, c: &Comparison) {
    println!(
        "\n{}: base {} vs head {} ({} interleaved pairs)\n",
        workload.name,
        base.short(),
        head.short(),
        c.pairs()
    );
    println!("{}", comparison_table(c));
    println!("{}", c.design);
    for line in comparison_lines(c) {
        println!("{line}");
    }
    println!("\nverdict: {:?}", c.verdict);
}
