//! The command layer: one module per subcommand, holding its arguments, its printing and its
//! exit code; `args` holds what they share, `exit` every exit code. Nothing below this layer
//! prints a verdict table or chooses an exit code.

pub mod accept;
pub mod args;
pub mod baseline;
pub mod bisect;
pub mod bisect_run;
pub mod calibrate;
pub mod compare;
pub mod dashboard;
pub mod disk_probe;
pub mod exit;
pub mod fixtures;
pub mod gate;
pub mod history;
pub mod import;
pub mod instructions;
pub mod power;
pub mod report;
pub mod run;
pub mod workloads;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::HarnessError;

#[derive(Parser)]
#[command(
    name = "chronik-harness",
    version,
    about = "Build commits, replay workloads, gate and bisect broker performance"
)]
struct Cli {
    #[command(flatten)]
    common: args::Common,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run trials of one commit and print them (with the workload's absolute limits).
    Run(run::RunArgs),
    /// Interleaved A/B comparison of two commits.
    Compare(compare::CompareArgs),
    /// Absolute limits plus the relative verdict against the baseline commit.
    Gate(gate::GateArgs),
    /// Record (or replace) the stored baseline of a workload.
    Baseline(baseline::BaselineArgs),
    /// Accept a commit's regression as intended (who, what, why, when): later gates of the
    /// workload measure against that commit.
    Accept(accept::AcceptArgs),
    /// Only the deterministic tier: instructions per request of a fixed stream, base vs head,
    /// under Valgrind (no wall-clock trials; a minute instead of many).
    Instructions(instructions::InstructionsArgs),
    /// A/A runs of one commit against itself, then the shipped rule replayed on every stored
    /// trial of it (the noise bank): false-alarm and detection rates.
    Calibrate(calibrate::CalibrateArgs),
    /// How often the rule finds regressions of known size (commits given as heads, such as
    /// the graded fixtures) and calls an unchanged commit one: real trials in rounds, each
    /// rate with its 95% interval.
    Power(power::PowerArgs),
    /// Find the first commit that crossed the margin between a good and a bad commit.
    Bisect(bisect::BisectArgs),
    /// A `git bisect run` predicate: tests the repository's HEAD against --good.
    /// Exit 0 good, 1 bad, 125 skip (no build, crash, inconclusive), 128 for anything else,
    /// usage errors included (which aborts `git bisect run` instead of reading as "bad").
    BisectRun(bisect_run::BisectRunArgs),
    /// Write the markdown report with SVG figures.
    Report(report::ReportArgs),
    /// Generate the regression-fixture repository (one commit per seed root cause).
    Fixtures(fixtures::FixturesArgs),
    /// List the workload files.
    Workloads(workloads::WorkloadsArgs),
    /// The disk's own append + fdatasync latency with no broker, alone, then beside a
    /// background writer, then in a closed loop: the floor under any broker's tail and
    /// flatness on this host (defaults: about the seed workload's WAL commits and segment
    /// write-back).
    DiskProbe(disk_probe::DiskProbeArgs),
    /// Load JSON trial files (exports, or results from before the database) into the results
    /// database. Trials already there are left as they are.
    Import(import::ImportArgs),
    /// Write the static dashboard (HTML + SVG, no server): one page per workload with each
    /// metric's series over commits, change points and gate verdicts.
    Dashboard(dashboard::DashboardArgs),
    /// A metric's series over commits, per host, with its change points (E-divisive means).
    History(history::HistoryArgs),
}

impl Cmd {
    fn run(&self, c: &args::Common) -> Result<u8, HarnessError> {
        match self {
            Cmd::Run(a) => a.run(c),
            Cmd::Compare(a) => a.run(c),
            Cmd::Gate(a) => a.run(c),
            Cmd::Baseline(a) => a.run(c),
            Cmd::Accept(a) => a.run(c),
            Cmd::Instructions(a) => a.run(c),
            Cmd::Calibrate(a) => a.run(c),
            Cmd::Power(a) => a.run(c),
            Cmd::Bisect(a) => a.run(c),
            Cmd::BisectRun(a) => a.run(c),
            Cmd::Report(a) => a.run(c),
            Cmd::Fixtures(a) => a.run(c),
            Cmd::Workloads(a) => a.run(c),
            Cmd::DiskProbe(a) => a.run(c),
            Cmd::Import(a) => a.run(c),
            Cmd::Dashboard(a) => a.run(c),
            Cmd::History(a) => a.run(c),
        }
    }
}

/// Parses the command line, runs the subcommand and turns its outcome into the exit code.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // clap's own exit code for a bad command line is 2, which no verdict may share.
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::for_parse_error(&args)
            } else {
                exit::EXIT_PASS // --help, --version
            });
        }
    };
    if let Err(err) = crate::build::process::stop_children_on_signal() {
        eprintln!("chronik-harness: installing the signal handler: {err}");
        return ExitCode::from(exit::for_error(&HarnessError::Infra(err.to_string())));
    }
    match cli.command.run(&cli.common) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("chronik-harness: {err}");
            ExitCode::from(exit::for_error(&err))
        }
    }
}
