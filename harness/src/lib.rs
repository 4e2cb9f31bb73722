//! `chronik-harness`: builds commits, replays workloads, gates, bisects and reports.
//!
//! The layers, bottom to top; a module imports only from its own layer's lower modules and
//! from layers below it:
//!
//! - `error`: the library's typed errors.
//! - `build`: commits into binaries (git2 trees, the target's build and start commands, one
//!   build per distinct set of build inputs, the regression-fixture history).
//! - `trial`: one measurement (workload files, process groups, a fresh broker and one
//!   chronik-bench run, what a trial gives the statistics, the disk's own floor).
//! - `store`: trials as stored, the SQLite results database, result files and baselines.
//! - `verdict`: measurements into verdicts (three states, paired statistics, interleaved A/B
//!   scheduling over a `TrialSource` trait, the deterministic tier, limits, calibration).
//! - `history`: series over commits per host and their change points.
//! - `session`: the real `TrialSource` (builds, trials, the store, the instruction tier).
//! - `bisect`: first-bad-commit search with the paired statistic.
//! - `output`: console tables, markdown reports, SVG figures, the static dashboard.
//! - `cmd`: one module per subcommand (arguments, printing, exit code) and the exit codes.

pub mod bisect;
pub mod build;
pub mod cmd;
pub mod error;
pub mod history;
pub mod output;
pub mod session;
pub mod store;
pub mod trial;
pub mod verdict;
