//! `chronik-harness`: builds commits, replays workloads, gates, bisects and reports.
//!
//! - `git`: resolve revisions, export a commit's tree, first-parent ranges (git2).
//! - `target`: how to build and start the target's broker (a small TOML file).
//! - `build`: build each commit at most once, binary cache, `build_failed` records.
//! - `workload`: workload files (data, not code) and the bench arguments they imply.
//! - `process`: process groups, SIGTERM then SIGKILL, timeouts.
//! - `runner`: one trial = fresh broker + one chronik-bench run, classified outcome.
//! - `instructions`: the deterministic tier (Valgrind instruction counts of a replayed stream).
//! - `store`: results history and baselines (JSON); `results_db`: every trial in SQLite.
//! - `changepoint`: E-divisive means with a permutation test; `history`: series per host and
//!   metric over commits, with their change points; `dashboard`: the static site of them.
//! - `stats`: paired log-ratios, exact sign-test intervals of the median against margins.
//! - `decision`: verdicts and how they combine, a measured pair's typed outcome, absolute
//!   limits, the gate's verdict.
//! - `exit`: every exit code, and how verdicts and errors map to them.
//! - `noise_bank`: same-commit trials from the store; the shipped rule replayed on them.
//! - `calibration`: per-host margins searched on the noise bank, stored, read by `gate`.
//! - `trial`: a valid trial's numbers (`TrialSummary`), or why a side gave none.
//! - `compare`: interleaved A/B scheduling over a `TrialSource` trait.
//! - `session`: the real `TrialSource`; `commands`: run/compare/gate/baseline/calibrate.
//! - `bisect`: first-bad-commit search with the paired statistic.
//! - `render`: the tables and one-line summaries every command prints and reports embed;
//!   `report`/`plots`: markdown documents and SVG figures.

pub mod bisect;
pub mod build;
pub mod calibration;
pub mod changepoint;
pub mod commands;
pub mod compare;
pub mod dashboard;
pub mod decision;
pub mod disk_probe;
pub mod error;
pub mod exit;
pub mod fixtures;
pub mod git;
pub mod history;
pub mod instructions;
pub mod noise_bank;
pub mod plots;
pub mod process;
pub mod render;
pub mod report;
pub mod results_db;
pub mod runner;
pub mod session;
pub mod stats;
pub mod store;
pub mod target;
pub mod trial;
pub mod workload;
