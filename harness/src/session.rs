//! One harness invocation's context: the target repository, its build cache, the trial runner
//! and the results store; plus the `TrialSource` that feeds real trials to `compare`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chronik_bench_schema::provenance::HostInfo;
use indicatif::{ProgressBar, ProgressStyle};

use crate::build::builder::{BuildOutcome, Builder};
use crate::build::git::{CommitInfo, TargetRepo};
use crate::build::target::TargetConfig;
use crate::error::HarnessError;
use crate::store::files::{now_rfc3339, ResultStore};
use crate::store::record::{TrialRecord, TRIAL_SCHEMA};
use crate::trial::runner::{TrialRunner, TrialStatus};
use crate::trial::summary::{FailoverSummary, Side, TrialFailure, TrialSummary};
use crate::trial::workload::Workload;
use crate::verdict::compare::{run_compare, CompareSettings, TrialSource};
use crate::verdict::decision::PairOutcome;
use crate::verdict::instructions::{
    InstructionComparison, InstructionTier, TierError, TierOutcome,
};
use crate::verdict::stats::Margins;

/// An invalid trial is rerun (never counted) at most this many times before the side fails.
const INVALID_RERUNS_MAX: usize = 2;

pub struct Session {
    pub repo: TargetRepo,
    pub work_dir: PathBuf,
    pub store: ResultStore,
    pub runner: TrialRunner,
    pub host: HostInfo,
    pub quiet: bool,
    /// The deterministic tier: `None` when turned off (`--instruction-runs 0`), an error when
    /// asked for but it cannot run here (every comparison then says "not measured").
    pub instructions: Option<Result<InstructionTier, TierError>>,
    trial_counter: AtomicU64,
}

/// A commit whose broker is built (or not).
pub struct BuiltCommit {
    pub commit: CommitInfo,
    pub outcome: BuildOutcome,
}

impl Session {
    pub fn new(
        repo: TargetRepo,
        target: TargetConfig,
        work_dir: PathBuf,
        results_dir: PathBuf,
        bench_bin: PathBuf,
        quiet: bool,
        (valgrind, instruction_runs): (&Path, usize),
    ) -> Result<Self, HarnessError> {
        if !bench_bin.exists() {
            return Err(HarnessError::Config(format!(
                "chronik-bench not found at {} (build it with `cargo build --release -p chronik-bench` or pass --bench-bin)",
                bench_bin.display()
            )));
        }
        std::fs::create_dir_all(&work_dir).map_err(|e| HarnessError::io(&work_dir, e))?;
        // Absolute, because checkouts and builds run in other directories.
        let work_dir = work_dir
            .canonicalize()
            .map_err(|e| HarnessError::io(&work_dir, e))?;
        let instructions = (instruction_runs > 0).then(|| {
            InstructionTier::new(
                valgrind,
                instruction_runs,
                // Built with chronik-bench, from the same tree.
                bench_bin.with_file_name("chronik-replay"),
                target.clone(),
                work_dir.join("instructions"),
            )
        });
        Ok(Self {
            repo,
            runner: TrialRunner {
                bench_bin,
                target,
                scratch: work_dir.join("trials"),
            },
            instructions,
            work_dir,
            store: ResultStore { dir: results_dir },
            host: HostInfo::current(),
            quiet,
            trial_counter: AtomicU64::new(0),
        })
    }

    pub fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// What decides the commit's binary (see `TargetConfig::build_inputs`): commits with the
    /// same key run the same broker.
    pub fn build_key(&self, commit: &CommitInfo) -> Result<String, HarnessError> {
        self.repo
            .build_key(commit, &self.runner.target.build_inputs)
    }

    pub fn build(&self, commit: &CommitInfo) -> Result<BuiltCommit, HarnessError> {
        self.say(&format!("building {} {}", commit.short(), commit.summary));
        let builder = Builder {
            repo: &self.repo,
            target: &self.runner.target,
            work_dir: self.work_dir.clone(),
        };
        let outcome = builder.build(commit)?;
        self.say(&format!("  {}", crate::build::builder::describe(&outcome)));
        Ok(BuiltCommit {
            commit: commit.clone(),
            outcome,
        })
    }

    fn next_id(&self, commit: &CommitInfo, role: &str) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let n = self.trial_counter.fetch_add(1, Ordering::Relaxed);
        format!("{ms}-{}-{role}-{n}", commit.short())
    }

    /// Runs one trial (or records the build failure), stores it and returns the record.
    pub fn trial(
        &self,
        built: &BuiltCommit,
        workload: &Workload,
        role: &str,
    ) -> Result<TrialRecord, HarnessError> {
        let id = self.next_id(&built.commit, role);
        let (status, detail, report, broker_peak_rss_kib, broker_cpu_s) = match &built.outcome {
            BuildOutcome::Failed { log_tail } => (
                TrialStatus::BuildFailed,
                Some(log_tail.clone()),
                None,
                None,
                None,
            ),
            BuildOutcome::Built { binary, .. } => {
                let outcome = self.runner.run(binary, workload, &id);
                (
                    outcome.status,
                    outcome.detail,
                    outcome.report,
                    outcome.broker_peak_rss_kib,
                    outcome.broker_cpu_s,
                )
            }
        };
        let summary = report
            .as_ref()
            .filter(|_| status == TrialStatus::Ok)
            .map(|r| TrialSummary {
                throughput: r.results.rate_msgs_per_s,
                p99_ms: r.results.latency_ms.p99,
                p999_ms: Some(r.results.latency_ms.p999),
                per_second: r.results.per_second.clone(),
                peak_rss_mib: broker_peak_rss_kib.map(|kib| kib as f64 / 1024.0),
                broker_cpu_us_per_msg: broker_cpu_s.and_then(|cpu| {
                    let p = &r.results.phases;
                    let messages = p.warmup.acked + p.window.acked + p.drain.acked;
                    (messages > 0).then(|| cpu * 1e6 / messages as f64)
                }),
                failover: r.verification.map(|v| FailoverSummary {
                    acked_lost: v.lost,
                    longest_ack_gap_s: v.longest_ack_gap_ms / 1000.0,
                }),
            });
        let record = TrialRecord {
            schema: TRIAL_SCHEMA.into(),
            id,
            recorded_at: now_rfc3339(),
            commit: built.commit.clone(),
            workload: workload.name.clone(),
            workload_hash: workload.hash(),
            host_fingerprint: self.host.fingerprint(),
            role: role.to_owned(),
            status,
            detail,
            summary,
            broker_peak_rss_kib,
            report,
        };
        self.store.save(&record)?;
        Ok(record)
    }

    /// A valid trial, rerunning invalid ones a bounded number of times; each invalid one is
    /// counted in `invalid`, so that a side that needs reruns more often shows.
    pub fn valid_trial(
        &self,
        built: &BuiltCommit,
        workload: &Workload,
        role: &str,
        side: Side,
        invalid: &mut usize,
    ) -> Result<TrialSummary, TrialFailure> {
        let mut last = None;
        for _ in 0..=INVALID_RERUNS_MAX {
            let record = self
                .trial(built, workload, role)
                .map_err(|e| TrialFailure {
                    side,
                    status: TrialStatus::InfraError,
                    detail: e.to_string(),
                })?;
            match (record.status, record.summary) {
                (TrialStatus::Ok, Some(summary)) => return Ok(summary),
                (TrialStatus::Invalid, _) => {
                    *invalid += 1;
                    self.say(&format!(
                        "  invalid trial of {} rerun: {}",
                        built.commit.short(),
                        record.detail.clone().unwrap_or_default()
                    ));
                    last = Some(record.detail.unwrap_or_default());
                }
                (status, _) => {
                    return Err(TrialFailure {
                        side,
                        status,
                        detail: record.detail.unwrap_or_default(),
                    })
                }
            }
        }
        Err(TrialFailure {
            side,
            status: TrialStatus::Invalid,
            detail: format!(
                "{} invalid trials in a row; last: {}",
                INVALID_RERUNS_MAX + 1,
                last.unwrap_or_default()
            ),
        })
    }

    /// Builds both commits (each once; cached when they build the same broker) and measures
    /// them as a pair (`compare_built`). Also returns how many builds this made (new or
    /// failed; a cached one does not count).
    pub fn measure(
        &self,
        base: &CommitInfo,
        head: &CommitInfo,
        workload: &Workload,
        settings: &CompareSettings,
        role: &str,
        label: &str,
    ) -> Result<(PairOutcome, usize), HarnessError> {
        let b = self.build(base)?;
        let h = self.build(head)?;
        let builds = [&b, &h]
            .iter()
            .filter(|built| {
                matches!(
                    built.outcome,
                    BuildOutcome::Built { cached: false, .. } | BuildOutcome::Failed { .. }
                )
            })
            .count();
        let outcome = self.compare_built(&b, &h, workload, settings, role, label);
        Ok((outcome, builds))
    }

    /// Interleaved pairs of two built commits (`compare::run_compare`), then the deterministic
    /// tier on the same builds: the one way `compare`, `gate`, `bisect` and `bisect-run`
    /// measure a pair. A side that does not build or whose trial fails is an outcome, not an
    /// error: each caller decides what it means (an error for `compare`, a skip for bisect).
    pub fn compare_built(
        &self,
        base: &BuiltCommit,
        head: &BuiltCommit,
        workload: &Workload,
        settings: &CompareSettings,
        role: &str,
        label: &str,
    ) -> PairOutcome {
        if let Some((side, log_tail)) = first_unbuilt(base, head) {
            return PairOutcome::DoesNotBuild {
                side,
                log_tail: log_tail.to_owned(),
            };
        }
        let mut source = PairSource {
            session: self,
            base,
            head,
            workload,
            role,
            bar: self.progress_bar(settings.max_pairs as u64, label),
            pairs_done: 0,
            invalid: [0, 0],
            started: std::time::Instant::now(),
        };
        let result = run_compare(&mut source, settings);
        source.bar.finish_and_clear();
        match result {
            Ok(mut c) => {
                c.attach_instructions(self.instruction_outcome(
                    base,
                    head,
                    workload,
                    &settings.margins,
                ));
                PairOutcome::Compared(Box::new(c))
            }
            Err(failure) => PairOutcome::SideFailed(failure),
        }
    }

    /// The deterministic tier for `base` vs `head`: each build's counts (measured once per
    /// session, the two sides' runs interleaved), compared at the margins' instruction and
    /// allocation rises; `None` when the tier is off.
    pub fn instruction_outcome(
        &self,
        base: &BuiltCommit,
        head: &BuiltCommit,
        workload: &Workload,
        margins: &Margins,
    ) -> Option<TierOutcome> {
        let tier = match self.instructions.as_ref()? {
            Ok(tier) => tier,
            Err(reason) => {
                return Some(TierOutcome::NotMeasured {
                    reason: reason.to_string(),
                })
            }
        };
        let side = |built: &BuiltCommit| -> Result<(String, std::path::PathBuf), String> {
            let BuildOutcome::Built { binary, .. } = &built.outcome else {
                return Err(format!("{} does not build", built.commit.short()));
            };
            let key = self.build_key(&built.commit).map_err(|e| e.to_string())?;
            Ok((key, binary.clone()))
        };
        let say = |what: &str| {
            self.say(&format!(
                "  {}..{} {what}",
                base.commit.short(),
                head.commit.short()
            ))
        };
        let samples = side(base).and_then(|(base_key, base_bin)| {
            let (head_key, head_bin) = side(head)?;
            tier.sample_pair(
                (&base_key, &base_bin),
                (&head_key, &head_bin),
                &workload.broker_args,
                &say,
            )
            .map_err(|e| e.to_string())
        });
        Some(match samples {
            Ok((base, head)) => TierOutcome::Compared(Box::new(InstructionComparison::new(
                base,
                head,
                margins.instructions_rise,
                margins.allocations_rise,
            ))),
            Err(reason) => TierOutcome::NotMeasured { reason },
        })
    }

    pub fn progress_bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} (elapsed {elapsed}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }
}

/// Feeds interleaved base/head trials of two built commits to `compare::run_compare`.
pub struct PairSource<'a> {
    pub session: &'a Session,
    pub base: &'a BuiltCommit,
    pub head: &'a BuiltCommit,
    pub workload: &'a Workload,
    pub role: &'a str,
    pub bar: ProgressBar,
    /// Pairs completed so far (for the per-trial log line).
    pub pairs_done: usize,
    /// Invalid (rerun) trials of base and head so far.
    pub invalid: [usize; 2],
    /// When the first trial started (the comparison's time budget counts from it).
    pub started: std::time::Instant,
}

impl TrialSource for PairSource<'_> {
    fn invalid_trials(&self) -> [usize; 2] {
        self.invalid
    }

    fn trial(&mut self, side: Side) -> Result<TrialSummary, TrialFailure> {
        let built = match side {
            Side::Base => self.base,
            Side::Head => self.head,
        };
        let result = self.session.valid_trial(
            built,
            self.workload,
            &side.role(self.role),
            side,
            &mut self.invalid[usize::from(side == Side::Head)],
        );
        // One line per trial, above the bar on a terminal and alone in a CI log, where the bar
        // is hidden and a gate would otherwise be silent for many minutes.
        if !self.session.quiet {
            let line = match &result {
                Ok(t) => format!("{:>12.0} msg/s  p99 {:.2} ms", t.throughput, t.p99_ms),
                Err(f) => format!("{:?}: {}", f.status, f.detail),
            };
            self.bar.suspend(|| {
                eprintln!(
                    "  {} pair {:>2} {:<4} {}  {line}",
                    self.workload.name,
                    self.pairs_done + 1,
                    match side {
                        Side::Base => "base",
                        Side::Head => "head",
                    },
                    built.commit.short(),
                )
            });
        }
        result
    }

    fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    fn pair_done(&mut self, pairs: usize, max_pairs: usize) {
        self.pairs_done = pairs;
        self.bar.set_length(max_pairs as u64);
        self.bar.set_position(pairs as u64);
    }
}

/// The first side of a pair that does not build, with the tail of its build log.
pub fn first_unbuilt<'a>(base: &'a BuiltCommit, head: &'a BuiltCommit) -> Option<(Side, &'a str)> {
    [(Side::Base, base), (Side::Head, head)]
        .into_iter()
        .find_map(|(side, built)| match &built.outcome {
            BuildOutcome::Failed { log_tail } => Some((side, log_tail.as_str())),
            BuildOutcome::Built { .. } => None,
        })
}
