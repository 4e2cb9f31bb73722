//! One trial: a fresh broker (free port, temp data dir, own process group, readiness probe),
//! one chronik-bench run, then everything stopped. Each failure mode is classified and carries
//! no numbers: `crashed` (broker died), `timeout`, `invalid` (bench says so), `infra_error`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chronik_bench::BenchReport;
use serde::{Deserialize, Serialize};

use crate::process::{tail, GroupChild};
use crate::target::TargetConfig;
use crate::workload::Workload;

/// Lines of broker stderr kept with a `crashed` trial.
const STDERR_TAIL_LINES: usize = 20;
const READY_POLL: Duration = Duration::from_millis(50);
/// chronik-bench exit codes the harness distinguishes.
const BENCH_EXIT_UNREACHABLE: i32 = 3;
const BENCH_EXIT_INVALID: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    Ok,
    BuildFailed,
    Crashed,
    Timeout,
    Invalid,
    InfraError,
}

/// What one trial produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialOutcome {
    pub status: TrialStatus,
    pub detail: Option<String>,
    pub report: Option<BenchReport>,
    /// The broker's peak resident memory (VmHWM) at the end of the run.
    pub broker_peak_rss_kib: Option<u64>,
    /// CPU time (user + system) the broker used while chronik-bench ran, in seconds.
    pub broker_cpu_s: Option<f64>,
}

impl TrialOutcome {
    fn failed(status: TrialStatus, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: Some(detail.into()),
            report: None,
            broker_peak_rss_kib: None,
            broker_cpu_s: None,
        }
    }
}

/// Runs trials of built brokers with one chronik-bench binary (the harness's own, so the
/// instrument never changes under a comparison).
pub struct TrialRunner {
    pub bench_bin: PathBuf,
    pub target: TargetConfig,
    pub scratch: PathBuf,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TrialRunner {
    pub fn run(&self, broker_bin: &Path, workload: &Workload, trial_id: &str) -> TrialOutcome {
        let dir = self.scratch.join(trial_id);
        let outcome = self.run_in(&dir, broker_bin, workload);
        let _ = std::fs::remove_dir_all(dir.join("data"));
        outcome
    }

    fn run_in(&self, dir: &Path, broker_bin: &Path, workload: &Workload) -> TrialOutcome {
        let infra = |what: &str, e: &dyn std::fmt::Display| {
            TrialOutcome::failed(TrialStatus::InfraError, format!("{what}: {e}"))
        };
        if let Err(e) = std::fs::create_dir_all(dir.join("data")) {
            return infra("creating the trial directory", &e);
        }
        let port = match free_port() {
            Ok(port) => port,
            Err(e) => return infra("finding a free port", &e),
        };
        let start = self
            .target
            .start
            .replace("{binary}", &broker_bin.display().to_string())
            .replace("{port}", &port.to_string())
            .replace("{data_dir}", &dir.join("data").display().to_string());
        let extra = workload.broker_args.join(" ");
        let stderr_path = dir.join("broker.stderr");
        let (Ok(stdout), Ok(stderr)) = (
            std::fs::File::create(dir.join("broker.stdout")),
            std::fs::File::create(&stderr_path),
        ) else {
            return infra("creating broker log files", &"I/O error");
        };
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec {start} {extra}"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut broker = match GroupChild::spawn(command) {
            Ok(child) => child,
            Err(e) => return infra("starting the broker", &e),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + self.target.ready_timeout();
        loop {
            if let Some(status) = broker.try_wait() {
                return TrialOutcome::failed(
                    TrialStatus::Crashed,
                    format!(
                        "broker exited before it was ready ({status}):\n{}",
                        tail(&stderr_path, STDERR_TAIL_LINES)
                    ),
                );
            }
            if TcpStream::connect_timeout(&addr, READY_POLL).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                broker.stop();
                return TrialOutcome::failed(
                    TrialStatus::Timeout,
                    format!(
                        "broker not accepting connections after {} s",
                        self.target.ready_timeout_s
                    ),
                );
            }
            std::thread::sleep(READY_POLL);
        }
        let json = dir.join("bench.json");
        let mut bench_cmd = Command::new(&self.bench_bin);
        bench_cmd
            .args(workload.bench_args(&addr.to_string(), &json))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("bench.stderr")).map_or(Stdio::null(), Stdio::from),
            );
        let cpu_before = cpu_s(broker.pgid);
        let mut bench = match GroupChild::spawn(bench_cmd) {
            Ok(child) => child,
            Err(e) => {
                broker.stop();
                return infra("starting chronik-bench", &e);
            }
        };
        let bench_status = bench.wait_timeout(workload.bench_timeout());
        if bench_status.is_none() {
            bench.stop();
            broker.stop();
            return TrialOutcome::failed(
                TrialStatus::Timeout,
                format!(
                    "chronik-bench did not finish within {} s",
                    workload.bench_timeout().as_secs()
                ),
            );
        }
        let broker_died = broker.try_wait();
        let broker_peak_rss_kib = peak_rss_kib(broker.pgid);
        let broker_cpu_s = cpu_before
            .zip(cpu_s(broker.pgid))
            .map(|(before, after)| after - before);
        let broker_status = broker.stop();
        if let Some(status) = broker_died {
            return TrialOutcome::failed(
                TrialStatus::Crashed,
                format!(
                    "broker died during the run ({status}):\n{}",
                    tail(&stderr_path, STDERR_TAIL_LINES)
                ),
            );
        }
        let code = bench_status.and_then(|s| s.code());
        if code == Some(BENCH_EXIT_UNREACHABLE) {
            return TrialOutcome::failed(
                TrialStatus::Crashed,
                format!("broker unreachable (stopped with {broker_status:?})"),
            );
        }
        let report = match BenchReport::read(&json) {
            Ok(report) => report,
            Err(e) => {
                return infra(
                    "reading the bench result",
                    &format!(
                        "{e} (bench exit {code:?}): {}",
                        tail(&dir.join("bench.stderr"), 5)
                    ),
                )
            }
        };
        let mismatches = workload.mismatches(&report.config);
        if !mismatches.is_empty() {
            return TrialOutcome {
                status: TrialStatus::Invalid,
                detail: Some(format!(
                    "the run used other settings than the workload: {}",
                    mismatches.join("; ")
                )),
                report: Some(report),
                broker_peak_rss_kib,
                broker_cpu_s,
            };
        }
        if code == Some(BENCH_EXIT_INVALID) || !report.is_valid() {
            return TrialOutcome {
                status: TrialStatus::Invalid,
                detail: Some(report.invalid_reasons.join("; ")),
                report: Some(report),
                broker_peak_rss_kib,
                broker_cpu_s,
            };
        }
        TrialOutcome {
            status: TrialStatus::Ok,
            detail: None,
            report: Some(report),
            broker_peak_rss_kib,
            broker_cpu_s,
        }
    }
}

/// Peak resident set size of a process (the start command `exec`s the broker, so the group
/// leader's pid is the broker's).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// User plus system CPU time of a process in seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    chronik_bench::cpu::cpu_seconds_of(&pid.to_string()).map(|(user, system)| user + system)
}

/// The chronik-bench next to this executable (both are built from the harness's tree).
pub fn default_bench_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("chronik-bench")))
        .unwrap_or_else(|| PathBuf::from("chronik-bench"))
}
