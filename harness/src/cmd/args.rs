//! The argument groups every subcommand shares (global options, the statistics of a
//! comparison) and what they open: the session, the store, workloads, JSON in and out.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::build::git::TargetRepo;
use crate::build::target::TargetConfig;
use crate::error::HarnessError;
use crate::session::Session;
use crate::store::files::ResultStore;
use crate::trial::runner::default_bench_bin;
use crate::trial::workload::{self, Workload};
use crate::verdict::calibration::Tuned;
use crate::verdict::compare::{CompareSettings, ErrorControl, PairOrder, BUDGET_DEFAULT};
use crate::verdict::stats::Margins;

#[derive(Args)]
pub struct Common {
    /// The target git repository (default: the current directory's repository).
    #[arg(long, global = true, default_value = ".")]
    pub repo: PathBuf,
    /// Target config (build, binary, start); default: <repo>/.chronik-target.toml or built-in.
    #[arg(long, global = true)]
    pub target_config: Option<PathBuf>,
    /// Directory of workload files (default: harness/workloads of --repo, else workloads/
    /// beside this executable, else harness/workloads of the checkout it was built in).
    #[arg(long, global = true)]
    pub workload_dir: Option<PathBuf>,
    /// Build cache, checkouts, shared target dir and trial scratch space.
    #[arg(long, global = true, default_value = "target/chronik-harness")]
    pub work_dir: PathBuf,
    /// Results: the database (results.sqlite) and one JSON export per trial.
    #[arg(long, global = true, default_value = "results")]
    pub results_dir: PathBuf,
    #[arg(long, global = true, default_value = "baselines")]
    pub baselines_dir: PathBuf,
    /// The chronik-bench binary (default: next to this executable).
    #[arg(long, global = true)]
    pub bench_bin: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Valgrind runs with the replayed stream per commit in the deterministic tier (0 = the
    /// tier is off; it then reports "not measured").
    #[arg(long, global = true, default_value_t = crate::verdict::instructions::RUNS_DEFAULT)]
    pub instruction_runs: usize,
    /// The valgrind executable of the deterministic tier.
    #[arg(long, global = true, default_value = "valgrind")]
    pub valgrind: PathBuf,
}

#[derive(Args, Clone, Copy)]
pub struct Statistics {
    /// Pairs at the first look (the rule looks again at the midpoint and at --max-pairs).
    #[arg(long, default_value_t = CompareSettings::default().min_pairs)]
    pub min_pairs: usize,
    /// Pairs at most; still undecided then = inconclusive.
    #[arg(long, default_value_t = CompareSettings::default().max_pairs)]
    pub max_pairs: usize,
    /// Minutes a comparison may take: it stops at the first look after they are spent, with
    /// that look's verdict (0: no limit, run to --max-pairs).
    #[arg(long, default_value_t = BUDGET_DEFAULT.as_secs_f64() / 60.0)]
    pub budget_minutes: f64,
    /// Family-wise error: the probability of calling a change that sits exactly at the margin
    /// a regression (over all looks and metrics), or a pass (per metric). Fewer pairs can
    /// decide with a larger alpha.
    #[arg(long, default_value_t = crate::verdict::compare::ALPHA_DEFAULT)]
    pub alpha: f64,
    /// Throughput drop that counts as a regression (fraction). Default 0.05; `gate` takes the
    /// host's calibrated margin instead when `calibrate` stored one.
    #[arg(long)]
    pub throughput_margin: Option<f64>,
    /// p99 rise that counts as a regression (fraction). Default 0.10, or calibrated (gate).
    #[arg(long)]
    pub p99_margin: Option<f64>,
    /// Rise of the broker's peak resident memory that counts as a regression (fraction).
    /// Default 0.5, or calibrated (gate).
    #[arg(long)]
    pub peak_rss_margin: Option<f64>,
    /// Rise of the broker's CPU time per message that counts as a regression (fraction).
    /// Default 0.05, or calibrated (gate).
    #[arg(long)]
    pub cpu_margin: Option<f64>,
    /// Rise of instructions per request (the deterministic tier) that counts as a regression.
    #[arg(long, default_value_t = crate::verdict::stats::INSTRUCTIONS_RISE_DEFAULT)]
    pub instructions_margin: f64,
    /// Rise of heap allocations per request (the deterministic tier) that counts as a
    /// regression.
    #[arg(long, default_value_t = crate::verdict::stats::ALLOCATIONS_RISE_DEFAULT)]
    pub allocations_margin: f64,
    /// Seed of the random A/B order of the pairs (default: a new one each time, printed with
    /// the design and stored with the comparison, so that every gate runs another order).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How each pair's A/B order is drawn: `random` per pair, or `abba` (blocks of two pairs of
    /// opposite order, the block's drawn at random).
    #[arg(long, value_enum, default_value_t = PairOrder::Random)]
    pub order: PairOrder,
}

impl Statistics {
    pub fn settings(&self) -> Result<CompareSettings, HarnessError> {
        if self.min_pairs < 2 || self.max_pairs < self.min_pairs {
            return Err(HarnessError::Usage(
                "need 2 <= --min-pairs <= --max-pairs".into(),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(HarnessError::Usage("need 0 < --alpha < 1".into()));
        }
        if !(self.budget_minutes >= 0.0 && self.budget_minutes.is_finite()) {
            return Err(HarnessError::Usage(
                "need --budget-minutes >= 0 (0: no limit)".into(),
            ));
        }
        Ok(CompareSettings {
            min_pairs: self.min_pairs,
            max_pairs: self.max_pairs,
            margins: Margins {
                throughput_drop: self
                    .throughput_margin
                    .unwrap_or(Margins::default().throughput_drop),
                p99_rise: self.p99_margin.unwrap_or(Margins::default().p99_rise),
                peak_rss_rise: self
                    .peak_rss_margin
                    .unwrap_or(Margins::default().peak_rss_rise),
                cpu_per_msg_rise: self
                    .cpu_margin
                    .unwrap_or(Margins::default().cpu_per_msg_rise),
                instructions_rise: self.instructions_margin,
                allocations_rise: self.allocations_margin,
            },
            seed: self.seed.unwrap_or_else(rand::random),
            order: self.order,
            error: ErrorControl::FamilyWise { alpha: self.alpha },
            budget: (self.budget_minutes > 0.0)
                .then(|| std::time::Duration::from_secs_f64(self.budget_minutes * 60.0)),
        })
    }
}

impl Statistics {
    /// The wall-clock margins given on the command line (a calibration does not override them).
    pub fn explicit_margins(&self) -> Vec<Tuned> {
        [
            (Tuned::Throughput, self.throughput_margin),
            (Tuned::P99, self.p99_margin),
            (Tuned::PeakRss, self.peak_rss_margin),
            (Tuned::CpuPerMsg, self.cpu_margin),
        ]
        .into_iter()
        .filter_map(|(metric, given)| given.map(|_| metric))
        .collect()
    }
}

impl Common {
    /// The directory workloads are read from: `--workload-dir`, or the first that exists of
    /// the places it defaults to.
    pub fn workload_dir(&self) -> Result<PathBuf, HarnessError> {
        match &self.workload_dir {
            Some(dir) => Ok(dir.clone()),
            None => workload::find_dir(&self.repo),
        }
    }

    /// A workload by name (or path).
    pub fn workload(&self, name: &str) -> Result<Workload, HarnessError> {
        Workload::find(name, &self.workload_dir()?)
    }

    /// Several workloads by name.
    pub fn workloads(&self, names: &[String]) -> Result<Vec<Workload>, HarnessError> {
        names.iter().map(|name| self.workload(name)).collect()
    }

    pub fn store(&self) -> ResultStore {
        ResultStore {
            dir: self.results_dir.clone(),
        }
    }
}

pub fn write_json<T: serde::Serialize>(
    path: &Option<PathBuf>,
    value: &T,
) -> Result<(), HarnessError> {
    if let Some(path) = path {
        let json =
            serde_json::to_vec_pretty(value).map_err(|e| HarnessError::Infra(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| HarnessError::io(path, e))?;
    }
    Ok(())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HarnessError> {
    let raw = std::fs::read(path).map_err(|e| HarnessError::io(path, e))?;
    serde_json::from_slice(&raw)
        .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))
}

pub fn session(common: &Common) -> Result<Session, HarnessError> {
    let repo = TargetRepo::open(&common.repo)?;
    let target = TargetConfig::load(common.target_config.as_deref(), &repo.path)?;
    Session::new(
        repo,
        target,
        common.work_dir.clone(),
        common.results_dir.clone(),
        common.bench_bin.clone().unwrap_or_else(default_bench_bin),
        common.quiet,
        (&common.valgrind, common.instruction_runs),
    )
}
