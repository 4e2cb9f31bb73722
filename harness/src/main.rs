//! `chronik-harness` command line. Exit codes: `exit` (and the README's table).

use std::path::PathBuf;
use std::process::ExitCode;

use chronik_harness::calibration::Tuned;
use chronik_harness::commands;
use chronik_harness::compare::{CompareSettings, ErrorControl};
use chronik_harness::error::HarnessError;
use chronik_harness::exit::{self, EXIT_BISECT_ABORT};
use chronik_harness::git::TargetRepo;
use chronik_harness::history::{self, Metric};
use chronik_harness::runner::default_bench_bin;
use chronik_harness::session::Session;
use chronik_harness::stats::Margins;
use chronik_harness::store::ResultStore;
use chronik_harness::target::TargetConfig;
use chronik_harness::workload::{self, Workload};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chronik-harness",
    version,
    about = "Build commits, replay workloads, gate and bisect broker performance"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct Common {
    /// The target git repository (default: the current directory's repository).
    #[arg(long, global = true, default_value = ".")]
    repo: PathBuf,
    /// Target config (build, binary, start); default: <repo>/.chronik-target.toml or built-in.
    #[arg(long, global = true)]
    target_config: Option<PathBuf>,
    /// Directory of workload files.
    #[arg(long, global = true, default_value_os_t = workload::default_dir())]
    workload_dir: PathBuf,
    /// Build cache, checkouts, shared target dir and trial scratch space.
    #[arg(long, global = true, default_value = "target/chronik-harness")]
    work_dir: PathBuf,
    /// Results: the database (results.sqlite) and one JSON export per trial.
    #[arg(long, global = true, default_value = "results")]
    results_dir: PathBuf,
    #[arg(long, global = true, default_value = "baselines")]
    baselines_dir: PathBuf,
    /// The chronik-bench binary (default: next to this executable).
    #[arg(long, global = true)]
    bench_bin: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Valgrind runs with the replayed stream per commit in the deterministic tier (0 = the
    /// tier is off; it then reports "not measured").
    #[arg(long, global = true, default_value_t = chronik_harness::instructions::RUNS_DEFAULT)]
    instruction_runs: usize,
    /// The valgrind executable of the deterministic tier.
    #[arg(long, global = true, default_value = "valgrind")]
    valgrind: PathBuf,
}

#[derive(Args, Clone, Copy)]
struct Statistics {
    /// Pairs at the first look (the rule looks again at the midpoint and at --max-pairs).
    #[arg(long, default_value_t = 6)]
    min_pairs: usize,
    /// Pairs at most; still undecided then = inconclusive.
    #[arg(long, default_value_t = 15)]
    max_pairs: usize,
    /// Family-wise error: the probability of calling a change that sits exactly at the margin
    /// a regression (over all looks and metrics), or a pass (per metric). Fewer pairs can
    /// decide with a larger alpha.
    #[arg(long, default_value_t = chronik_harness::compare::ALPHA_DEFAULT)]
    alpha: f64,
    /// Throughput drop that counts as a regression (fraction). Default 0.05; `gate` takes the
    /// host's calibrated margin instead when `calibrate` stored one.
    #[arg(long)]
    throughput_margin: Option<f64>,
    /// p99 rise that counts as a regression (fraction). Default 0.10, or calibrated (gate).
    #[arg(long)]
    p99_margin: Option<f64>,
    /// Rise of the broker's peak resident memory that counts as a regression (fraction).
    /// Default 0.5, or calibrated (gate).
    #[arg(long)]
    peak_rss_margin: Option<f64>,
    /// Rise of the broker's CPU time per message that counts as a regression (fraction).
    /// Default 0.05, or calibrated (gate).
    #[arg(long)]
    cpu_margin: Option<f64>,
    /// Rise of instructions per request (the deterministic tier) that counts as a regression.
    #[arg(long, default_value_t = chronik_harness::instructions::INSTRUCTIONS_RISE_DEFAULT)]
    instructions_margin: f64,
    #[arg(long, default_value_t = 0x00c0_ffee)]
    seed: u64,
}

impl Statistics {
    fn settings(&self) -> Result<CompareSettings, HarnessError> {
        if self.min_pairs < 2 || self.max_pairs < self.min_pairs {
            return Err(HarnessError::Usage(
                "need 2 <= --min-pairs <= --max-pairs".into(),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(HarnessError::Usage("need 0 < --alpha < 1".into()));
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
            },
            seed: self.seed,
            error: ErrorControl::FamilyWise { alpha: self.alpha },
        })
    }
}

impl Statistics {
    /// The wall-clock margins given on the command line (a calibration does not override them).
    fn explicit_margins(&self) -> Vec<Tuned> {
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

#[derive(Subcommand)]
enum Cmd {
    /// Run trials of one commit and print them (with the workload's absolute limits).
    Run {
        #[arg(long, default_value = "HEAD")]
        rev: String,
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        #[arg(long, default_value_t = 3)]
        trials: usize,
    },
    /// Interleaved A/B comparison of two commits.
    Compare {
        base: String,
        head: String,
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        #[command(flatten)]
        stats: Statistics,
        /// Write the comparison as JSON.
        #[arg(long)]
        json_output: Option<PathBuf>,
    },
    /// Absolute limits plus the relative verdict against the baseline commit.
    Gate {
        #[arg(long, default_value = "HEAD")]
        head: String,
        /// Baseline commit (default: the one stored in baselines/<workload>.json).
        #[arg(long)]
        base: Option<String>,
        /// Workloads to gate (repeatable).
        #[arg(long, default_values_t = vec![workload::SEED_WORKLOAD.to_string()])]
        workload: Vec<String>,
        #[command(flatten)]
        stats: Statistics,
        #[arg(long)]
        json_output: Option<PathBuf>,
        /// Where this gate's report will be (stored with the verdict; the dashboard links it).
        #[arg(long)]
        report_link: Option<String>,
    },
    /// Record (or replace) the stored baseline of a workload.
    Baseline {
        #[arg(long, default_value = "HEAD")]
        rev: String,
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        #[arg(long, default_value_t = 5)]
        trials: usize,
    },
    /// Only the deterministic tier: instructions per request of a fixed stream, base vs head,
    /// under Valgrind (no wall-clock trials; a minute instead of many).
    Instructions {
        base: String,
        head: String,
        /// Its broker arguments are used (the stream itself is fixed).
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        /// Rise of instructions per request that counts as a regression (fraction).
        #[arg(long, default_value_t = chronik_harness::instructions::INSTRUCTIONS_RISE_DEFAULT)]
        instructions_margin: f64,
        #[arg(long)]
        json_output: Option<PathBuf>,
    },
    /// A/A runs of one commit against itself, then the shipped rule replayed on every stored
    /// trial of it (the noise bank): false-alarm and detection rates.
    Calibrate {
        #[arg(long, default_value = "HEAD")]
        rev: String,
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        /// Real A/A comparisons to run (0: only replay the stored noise bank).
        #[arg(long, default_value_t = 10)]
        comparisons: usize,
        /// Replays of the shipped rule per shift on the noise bank.
        #[arg(long, default_value_t = 2000)]
        replays: usize,
        #[command(flatten)]
        stats: Statistics,
        #[arg(long)]
        json_output: Option<PathBuf>,
    },
    /// Find the first commit that crossed the margin between a good and a bad commit.
    Bisect {
        #[arg(long, required_unless_present = "from_change_point")]
        good: Option<String>,
        #[arg(long, required_unless_present = "from_change_point")]
        bad: Option<String>,
        /// Bisect the range of the newest change point of --metric in this host's history
        /// (see `history`) instead of --good/--bad.
        #[arg(long, conflicts_with_all = ["good", "bad"])]
        from_change_point: bool,
        /// The series whose change point is bisected (with --from-change-point).
        #[arg(long, value_enum, default_value_t = Metric::Throughput)]
        metric: Metric,
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        #[command(flatten)]
        stats: Statistics,
        /// Write the bisect log as JSON (input for `report --bisect`).
        #[arg(long)]
        json_output: Option<PathBuf>,
    },
    /// A `git bisect run` predicate: tests the repository's HEAD against --good.
    /// Exit 0 good, 1 bad, 125 skip (no build, crash, inconclusive), 128 infrastructure
    /// failure (which aborts `git bisect run` instead of leaking as "bad").
    BisectRun {
        #[arg(long)]
        good: String,
        #[arg(long, default_value = workload::SEED_WORKLOAD)]
        workload: String,
        #[command(flatten)]
        stats: Statistics,
    },
    /// Write the markdown report with SVG figures.
    Report {
        /// Output directory (report.md and figures).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "Broker performance report")]
        title: String,
        #[arg(long, default_values_t = vec![workload::SEED_WORKLOAD.to_string()])]
        workload: Vec<String>,
        #[arg(long)]
        base: Option<String>,
        #[arg(long)]
        head: Option<String>,
        /// A gate result (`gate --json-output`).
        #[arg(long)]
        gate: Option<PathBuf>,
        /// A bisect log (`bisect --json-output`).
        #[arg(long)]
        bisect: Option<PathBuf>,
        /// Commit link template; the default works for reports under reports/<name>/ on GitHub.
        #[arg(long, default_value = "../../../../commit/{sha}")]
        commit_url: String,
    },
    /// Generate the regression-fixture repository (one commit per seed root cause).
    Fixtures {
        #[arg(long)]
        out: PathBuf,
        /// Commit of the target repository to start from.
        #[arg(long, default_value = "HEAD")]
        from: String,
        /// Only these fixtures (default: all).
        #[arg(long)]
        only: Vec<String>,
        /// CPU time per produce request in the fixed-slowdown fixture, in microseconds.
        #[arg(long, default_value_t = 150)]
        slowdown_us: u64,
    },
    /// List the workload files.
    Workloads,
    /// The disk's own append + fdatasync latency with no broker, alone, then beside a
    /// background writer, then in a closed loop: the floor under any broker's tail and
    /// flatness on this host (defaults: about the seed workload's WAL commits and segment
    /// write-back).
    DiskProbe {
        /// A directory on the disk to probe (default: the work dir, where trials keep their
        /// broker's data).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Length of each phase.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value_t = 2000)]
        syncs_per_second: u32,
        #[arg(long, default_value_t = 16384)]
        append_bytes: usize,
        /// The second phase's background writer, fdatasynced after every MiB (0: no second
        /// phase).
        #[arg(long, default_value_t = 60)]
        background_mib_per_second: u32,
        /// The last phase: appends in a closed loop, alone, whose rate in the last third
        /// against the first is the floor under a closed-loop workload's flatness.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        closed_loop: bool,
    },
    /// Load JSON trial files (exports, or results from before the database) into the results
    /// database. Trials already there are left as they are.
    Import {
        /// Directory searched for trial JSON files, at any depth (default: --results-dir).
        from: Option<PathBuf>,
    },
    /// Write the static dashboard (HTML + SVG, no server): one page per workload with each
    /// metric's series over commits, change points and gate verdicts.
    Dashboard {
        #[arg(long, default_value = "reports/dashboard")]
        out: PathBuf,
        /// Workloads (default: every workload with trials in the database).
        #[arg(long)]
        workload: Vec<String>,
        #[arg(long, value_enum, default_values_t = vec![Metric::Throughput, Metric::P99, Metric::P999])]
        metric: Vec<Metric>,
        /// Commit link template; the default works for a dashboard under reports/<name>/ on GitHub.
        #[arg(long, default_value = "../../../../commit/{sha}")]
        commit_url: String,
        /// Put before a gate's stored report path (stored relative to the repository root).
        #[arg(long, default_value = chronik_harness::dashboard::REPORT_PREFIX_DEFAULT)]
        report_prefix: String,
    },
    /// A metric's series over commits, per host, with its change points (E-divisive means).
    History {
        #[arg(long, default_values_t = vec![workload::SEED_WORKLOAD.to_string()])]
        workload: Vec<String>,
        /// Metrics (repeatable).
        #[arg(long, value_enum, default_values_t = vec![Metric::Throughput])]
        metric: Vec<Metric>,
        /// Only this host fingerprint.
        #[arg(long)]
        host: Option<String>,
        /// Also write the change points as a markdown section (for the nightly report).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Note the change points in the database as reported: the next section marks only
        /// later ones new.
        #[arg(long, requires = "markdown")]
        record_reported: bool,
        #[arg(long)]
        json_output: Option<PathBuf>,
        #[arg(long, default_value = "../../../../commit/{sha}")]
        commit_url: String,
    },
}

fn write_json<T: serde::Serialize>(path: &Option<PathBuf>, value: &T) -> Result<(), HarnessError> {
    if let Some(path) = path {
        let json =
            serde_json::to_vec_pretty(value).map_err(|e| HarnessError::Infra(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| HarnessError::io(path, e))?;
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, HarnessError> {
    let raw = std::fs::read(path).map_err(|e| HarnessError::io(path, e))?;
    serde_json::from_slice(&raw)
        .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))
}

fn session(common: &Common) -> Result<Session, HarnessError> {
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

fn run(cli: Cli) -> Result<u8, HarnessError> {
    let c = &cli.common;
    let load = |name: &str| Workload::find(name, &c.workload_dir);
    let store = ResultStore {
        dir: c.results_dir.clone(),
    };
    match &cli.command {
        Cmd::Import { from } => {
            // Not `store.db()`, which imports the directory by itself when it creates the
            // database: the counts below would then say nothing was new.
            let mut db = chronik_harness::results_db::ResultsDb::open(&store.db_path())?;
            let from = from.as_ref().unwrap_or(&c.results_dir);
            let (found, added) = store.import_json_into(&mut db, from)?;
            println!(
                "{found} trial(s) found under {}, {added} new, in {}",
                from.display(),
                store.db_path().display()
            );
            Ok(0)
        }
        Cmd::History {
            workload,
            metric,
            host,
            markdown,
            record_reported,
            json_output,
            commit_url,
        } => {
            let repo = TargetRepo::open(&c.repo)?;
            let positions = repo.history_positions()?;
            let mut all = Vec::new();
            for name in workload {
                all.extend(history::load(&store, &load(name)?, metric, &positions)?);
            }
            all.retain(|s| host.as_ref().is_none_or(|h| &s.host == h));
            if all.is_empty() {
                println!("no valid trials of these workloads on commits of this history");
            }
            for series in &all {
                println!("## {} — {}\n", series.workload, series.label());
                print!("{}", series.markdown(commit_url));
                for change in &series.changes {
                    println!("change point: {}", history::describe(change));
                }
                println!();
            }
            if let Some(path) = markdown {
                let md =
                    history::change_points_markdown(&store, &all, commit_url, *record_reported)?;
                std::fs::write(path, md).map_err(|e| HarnessError::io(path, e))?;
            }
            write_json(json_output, &all)?;
            Ok(0)
        }
        Cmd::Dashboard {
            out,
            workload,
            metric,
            commit_url,
            report_prefix,
        } => {
            let repo = TargetRepo::open(&c.repo)?;
            let names = if workload.is_empty() {
                let known = Workload::list(&c.workload_dir);
                store
                    .db()?
                    .workloads()?
                    .into_iter()
                    .filter(|w| known.contains(w))
                    .collect()
            } else {
                workload.clone()
            };
            let input = chronik_harness::dashboard::DashboardInput {
                store: &store,
                workloads: names.iter().map(|w| load(w)).collect::<Result<_, _>>()?,
                metrics: metric.clone(),
                positions: repo.history_positions()?,
                commit_url: commit_url.clone(),
                report_prefix: report_prefix.clone(),
                out_dir: out.clone(),
            };
            let written = chronik_harness::dashboard::write(&input)?;
            for (name, path, points) in &written.pages {
                println!("{name}: {points} point(s) in {}", path.display());
            }
            println!("dashboard written to {}", written.index.display());
            Ok(0)
        }
        Cmd::DiskProbe {
            dir,
            duration,
            syncs_per_second,
            append_bytes,
            background_mib_per_second,
            closed_loop,
        } => {
            use chronik_harness::disk_probe::{self, ProbeSettings, PHASE_MAX};
            if *duration > PHASE_MAX || duration.is_zero() || *syncs_per_second == 0 {
                return Err(HarnessError::Usage(format!(
                    "--duration must be above 0 and at most {PHASE_MAX:?}, --syncs-per-second above 0"
                )));
            }
            let dir = dir.clone().unwrap_or_else(|| c.work_dir.clone());
            std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
            // Paced alone first, then beside the background writer, then in a closed loop alone
            // (each unless it is off).
            let paced = Some(*syncs_per_second);
            let phases = std::iter::once((paced, 0))
                .chain(
                    (*background_mib_per_second > 0).then_some((paced, *background_mib_per_second)),
                )
                .chain(closed_loop.then_some((None, 0)))
                .map(|(pace, background)| ProbeSettings {
                    duration: *duration,
                    syncs_per_second: pace,
                    append_bytes: *append_bytes,
                    background_mib_per_second: background,
                });
            let mut results = Vec::new();
            for settings in phases {
                if !c.quiet {
                    eprintln!(
                        "probing {} for {duration:?}: {} B appends + fdatasync, {}, beside {} MiB/s of background writes",
                        dir.display(),
                        settings.append_bytes,
                        settings.syncs_per_second.map_or("in a closed loop".to_owned(), |rate| format!("{rate}/s")),
                        settings.background_mib_per_second
                    );
                }
                results.push(
                    disk_probe::run_phase(&dir, &settings)
                        .map_err(|e| HarnessError::io(&dir, e))?,
                );
            }
            println!("{}", disk_probe::table(&results));
            Ok(0)
        }
        Cmd::Workloads => {
            for name in Workload::list(&c.workload_dir) {
                let w = load(&name)?;
                println!("{name:36} {}", w.description);
            }
            Ok(0)
        }
        Cmd::Run {
            rev,
            workload,
            trials,
        } => {
            let s = session(c)?;
            let commit = s.repo.resolve(rev)?;
            Ok(commands::run(&s, &commit, &load(workload)?, *trials)?.0)
        }
        Cmd::Compare {
            base,
            head,
            workload,
            stats,
            json_output,
        } => {
            let settings = stats.settings()?;
            let s = session(c)?;
            let (base, head, workload) = (
                s.repo.resolve(base)?,
                s.repo.resolve(head)?,
                load(workload)?,
            );
            let result = commands::compare(&s, &base, &head, &workload, &settings, "compare")?
                .into_result(&base, &head)?;
            if let Ok(comparison) = &result {
                commands::print_comparison(&workload, &base, &head, comparison);
                write_json(
                    json_output,
                    &commands::CompareOutput {
                        workload: &workload.name,
                        base: &base,
                        head: &head,
                        comparison,
                    },
                )?;
            }
            Ok(exit::for_comparison(&result))
        }
        Cmd::Gate {
            head,
            base,
            workload,
            stats,
            json_output,
            report_link,
        } => {
            let settings = stats.settings()?;
            let s = session(c)?;
            let head = s.repo.resolve(head)?;
            let base = base.as_deref().map(|b| s.repo.resolve(b)).transpose()?;
            let started = std::time::Instant::now();
            let mut results = Vec::new();
            for name in workload {
                let result = commands::gate_one(
                    &s,
                    &c.baselines_dir,
                    base.as_ref(),
                    &head,
                    &load(name)?,
                    &settings,
                    &stats.explicit_margins(),
                )?;
                commands::print_gate(&result);
                commands::record_gate(&s, &result, report_link.as_deref())?;
                results.push(result);
            }
            println!("\ngate wall time: {:.0} s", started.elapsed().as_secs_f64());
            write_json(json_output, &results)?;
            Ok(exit::for_gate(&results))
        }
        Cmd::Baseline {
            rev,
            workload,
            trials,
        } => {
            let s = session(c)?;
            let commit = s.repo.resolve(rev)?;
            commands::baseline(&s, &c.baselines_dir, &commit, &load(workload)?, *trials)
        }
        Cmd::Bisect {
            good,
            bad,
            from_change_point,
            metric,
            workload,
            stats,
            json_output,
        } => {
            let settings = stats.settings()?;
            let s = session(c)?;
            let workload = load(workload)?;
            let (good, bad) = match (good, bad) {
                (Some(good), Some(bad)) => (good.clone(), bad.clone()),
                _ => {
                    debug_assert!(*from_change_point);
                    let positions = s.repo.history_positions()?;
                    let host = s.host.fingerprint();
                    let all = history::load(&s.store, &workload, &[*metric], &positions)?;
                    // Relative series come first: their change points are free of drift.
                    let change = all
                        .iter()
                        .filter(|series| series.host == host)
                        .find_map(|series| series.newest_change())
                        .ok_or_else(|| {
                            HarnessError::Usage(format!(
                                "no change point in the {} history of {} on this host ({host}); see `chronik-harness history --workload {}`",
                                metric.name(),
                                workload.name,
                                workload.name
                            ))
                        })?;
                    println!(
                        "bisecting the newest change point of {}: {}",
                        metric.name(),
                        history::describe(change)
                    );
                    (change.good.sha.clone(), change.bad.sha.clone())
                }
            };
            let log = chronik_harness::bisect::bisect(&s, &good, &bad, &workload, &settings)?;
            chronik_harness::render::print_bisect(&log);
            write_json(json_output, &log)?;
            Ok(exit::for_bisect(log.culprit.is_some()))
        }
        Cmd::BisectRun {
            good,
            workload,
            stats,
        } => {
            // Every failure that is not a verdict, a usage error included, aborts `git bisect
            // run` (128): any other code from 1 to 127 would read as "bad".
            let outcome = stats.settings().and_then(|settings| {
                let settings = chronik_harness::bisect::step_settings(&settings);
                let s = session(c)?;
                chronik_harness::bisect::run_step(&s, good, &load(workload)?, &settings)
            });
            Ok(outcome.unwrap_or_else(|e| {
                eprintln!("chronik-harness: {e}");
                EXIT_BISECT_ABORT
            }))
        }
        Cmd::Report {
            out,
            title,
            workload,
            base,
            head,
            gate,
            bisect,
            commit_url,
        } => {
            let repo = TargetRepo::open(&c.repo)?;
            let resolve = |r: &Option<String>| r.as_deref().map(|r| repo.resolve(r)).transpose();
            let gate = gate.as_deref().map(read_json).transpose()?;
            let bisect = bisect.as_deref().map(read_json).transpose()?;
            let input = chronik_harness::report::ReportInput {
                title: title.clone(),
                workloads: workload.iter().map(|w| load(w)).collect::<Result<_, _>>()?,
                store: &store,
                baselines_dir: &c.baselines_dir,
                base: resolve(base)?,
                head: resolve(head)?,
                gate,
                bisect,
                history: repo.history_positions()?,
                commit_url: commit_url.clone(),
                out_dir: out.clone(),
            };
            let path = chronik_harness::report::write(&input)?;
            println!("report written to {}", path.display());
            Ok(0)
        }
        Cmd::Fixtures {
            out,
            from,
            only,
            slowdown_us,
        } => {
            let repo = TargetRepo::open(&c.repo)?;
            let from = repo.resolve(from)?;
            let options = chronik_harness::fixtures::FixtureOptions {
                slowdown_us: *slowdown_us,
            };
            let history = chronik_harness::fixtures::generate(&repo, &from, out, only, &options)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&history)
                    .map_err(|e| HarnessError::Infra(e.to_string()))?
            );
            Ok(0)
        }
        Cmd::Instructions {
            base,
            head,
            workload,
            instructions_margin,
            json_output,
        } => {
            let s = session(c)?;
            let (base, head) = (s.repo.resolve(base)?, s.repo.resolve(head)?);
            let (code, tier) =
                commands::instructions(&s, &base, &head, &load(workload)?, *instructions_margin)?;
            write_json(json_output, &tier)?;
            Ok(code)
        }
        Cmd::Calibrate {
            rev,
            workload,
            comparisons,
            replays,
            stats,
            json_output,
        } => {
            let settings = stats.settings()?;
            let s = session(c)?;
            let commit = s.repo.resolve(rev)?;
            let (code, calibration) = commands::calibrate(
                &s,
                &c.baselines_dir,
                &commit,
                &load(workload)?,
                *comparisons,
                *replays,
                &settings,
            )?;
            write_json(json_output, &calibration)?;
            Ok(code)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
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
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("chronik-harness: {err}");
            ExitCode::from(exit::for_error(&err))
        }
    }
}
