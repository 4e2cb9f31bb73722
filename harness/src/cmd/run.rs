//! `run`: trials of one commit, printed with the workload's absolute limits.

use std::path::PathBuf;

use chronik_bench_schema::provenance::Provenance;
use clap::Args;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde::Serialize;

use crate::build::builder::BuildOutcome;
use crate::build::git::CommitInfo;
use crate::cmd::args::{session, write_json, Common};
use crate::cmd::exit::{self, EXIT_INFRA, EXIT_PASS};
use crate::error::HarnessError;
use crate::output::render::limits_table;
use crate::session::Session;
use crate::trial::summary::TrialSummary;
use crate::trial::workload::{Workload, SEED_WORKLOAD};
use crate::verdict::decision::{check_limits, limits_verdict};

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// Workloads to run, one after the other (repeatable).
    #[arg(long, default_values_t = vec![SEED_WORKLOAD.to_string()])]
    workload: Vec<String>,
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Write the valid trials' numbers as JSON (an array, one entry per workload).
    #[arg(long)]
    json_output: Option<PathBuf>,
}

/// What `run --json-output` writes.
#[derive(Serialize)]
struct RunOutput<'a> {
    workload: &'a str,
    commit: &'a CommitInfo,
    trials: &'a [TrialSummary],
}

impl RunArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let workloads = c.workloads(&self.workload)?;
        let s = session(c)?;
        let commit = s.repo.resolve(&self.rev)?;
        let mut codes = Vec::new();
        let mut runs = Vec::new();
        for workload in &workloads {
            let (code, summaries, _) = trials(&s, &commit, workload, self.trials)?;
            codes.push(code);
            runs.push((workload.name.as_str(), summaries));
        }
        let outputs: Vec<RunOutput> = runs
            .iter()
            .map(|(workload, summaries)| RunOutput {
                workload,
                commit: &commit,
                trials: summaries,
            })
            .collect();
        write_json(&self.json_output, &outputs)?;
        Ok(exit::worst(codes))
    }
}

/// N trials of one commit, printed and stored. Returns the exit code, the valid
/// trials' summaries and the load generator's provenance (from its reports).
pub fn trials(
    session: &Session,
    commit: &CommitInfo,
    workload: &Workload,
    count: usize,
) -> Result<(u8, Vec<TrialSummary>, Option<Provenance>), HarnessError> {
    let built = session.build(commit)?;
    if let BuildOutcome::Failed { log_tail } = &built.outcome {
        session.trial(&built, workload, "run")?;
        eprintln!("{} does not build:\n{log_tail}", commit.short());
        return Ok((EXIT_INFRA, Vec::new(), None));
    }
    let mut provenance = None;
    let bar = session.progress_bar(count as u64, &format!("{} trials", workload.name));
    let mut summaries = Vec::new();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "trial",
        "status",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "broker peak RSS MiB",
        "detail",
    ]);
    let mut code = EXIT_PASS;
    for _ in 0..count {
        let record = session.trial(&built, workload, "run")?;
        let r = record.report.as_ref().map(|r| &r.results);
        table.add_row(vec![
            record.id.clone(),
            format!("{:?}", record.status).to_lowercase(),
            r.map_or("-".into(), |r| format!("{:.0}", r.rate_msgs_per_s)),
            r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p50)),
            r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p99)),
            r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p999)),
            record
                .broker_peak_rss_kib
                .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            record
                .detail
                .clone()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ]);
        if provenance.is_none() {
            provenance = record.report.as_ref().map(|r| r.provenance.clone());
        }
        match record.summary {
            Some(s) => summaries.push(s),
            None => code = EXIT_INFRA,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "\n{} @ {} ({})\n\n{table}",
        workload.name,
        commit.short(),
        commit.summary
    );
    if !summaries.is_empty() {
        let checks = check_limits(workload, &summaries);
        if !checks.is_empty() {
            println!("\n{}", limits_table(&checks));
            if code == EXIT_PASS {
                code = exit::for_verdict(limits_verdict(&checks));
            }
        }
    }
    Ok((code, summaries, provenance))
}
