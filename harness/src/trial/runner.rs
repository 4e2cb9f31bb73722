//! One trial: a fresh broker (free port, temp data dir, own process group, readiness probe),
//! one chronik-bench run, then everything stopped. Each failure mode is classified and carries
//! no numbers: `crashed` (broker died), `timeout`, `invalid` (bench says so), `infra_error`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chronik_bench_schema::BenchReport;
use rustix::thread::CpuSet;
use serde::{Deserialize, Serialize};

use crate::build::process::{signal_group, tail, GroupChild};
use crate::build::target::TargetConfig;
use crate::trial::cores;
use crate::trial::leader;
use crate::trial::workload::Workload;

/// Lines of broker stderr kept with a `crashed` trial.
const STDERR_TAIL_LINES: usize = 20;
const READY_POLL: Duration = Duration::from_millis(50);
/// chronik-bench exit codes the harness distinguishes.
const BENCH_EXIT_UNREACHABLE: i32 = chronik_bench_schema::exit::EXIT_UNREACHABLE as i32;
const BENCH_EXIT_INVALID: i32 = chronik_bench_schema::exit::EXIT_INVALID_RUN as i32;

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
        let placement = match workload.cores.placement() {
            Ok(placement) => placement,
            Err(e) => return infra("placing the trial's processes", &e),
        };
        let mut brokers =
            match self.start_brokers(dir, broker_bin, workload, placement.map(|p| p.brokers)) {
                Ok(brokers) => brokers,
                Err(failed) => return *failed,
            };
        if let Err(failed) = self.wait_until_ready(&mut brokers) {
            return *failed;
        }
        let json = dir.join("bench.json");
        let cpu_before = cluster_cpu_s(&brokers);
        let generator = placement.map(|p| p.generator);
        let mut bench = match self.spawn_bench(dir, &json, workload, &brokers, generator) {
            Ok(child) => child,
            Err(e) => {
                stop_all(&mut brokers);
                return infra("starting chronik-bench", &e);
            }
        };
        let killed = match workload.kill_leader_at() {
            Some(at) => match failover(&mut bench, &mut brokers, workload, at) {
                Ok(index) => Some(index),
                Err(e) => {
                    bench.stop();
                    stop_all(&mut brokers);
                    return infra("the failover", &e);
                }
            },
            None => None,
        };
        let bench_status = bench.wait_timeout(
            workload
                .bench_timeout()
                .saturating_sub(workload.kill_leader_at().unwrap_or_default()),
        );
        if bench_status.is_none() {
            bench.stop();
            stop_all(&mut brokers);
            return TrialOutcome::failed(
                TrialStatus::Timeout,
                format!(
                    "chronik-bench did not finish within {} s",
                    workload.bench_timeout().as_secs()
                ),
            );
        }
        let broker_died = brokers
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| Some(*i) != killed)
            .find_map(|(_, b)| b.child.try_wait().map(|status| (status, b.stderr.clone())));
        let (broker_peak_rss_kib, broker_cpu_s) = cluster_usage(&brokers, cpu_before);
        let broker_status = stop_all(&mut brokers);
        let code = bench_status.and_then(|s| s.code());
        if let Some(crashed) = crashed(broker_died, code, broker_status) {
            return crashed;
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
        let detail = invalid_detail(workload, &report, code);
        TrialOutcome {
            status: if detail.is_some() {
                TrialStatus::Invalid
            } else {
                TrialStatus::Ok
            },
            detail,
            report: Some(report),
            broker_peak_rss_kib,
            broker_cpu_s,
        }
    }

    /// Starts chronik-bench on the workload against the cluster, its result to `json`.
    fn spawn_bench(
        &self,
        dir: &Path,
        json: &Path,
        workload: &Workload,
        brokers: &[TrialBroker],
        cpus: Option<CpuSet>,
    ) -> std::io::Result<GroupChild> {
        let bootstrap = brokers
            .iter()
            .map(|b| b.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut bench_cmd = Command::new(&self.bench_bin);
        bench_cmd
            .args(workload.bench_args(&bootstrap, json))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("bench.stderr")).map_or(Stdio::null(), Stdio::from),
            );
        cores::spawn_on(cpus.as_ref(), || GroupChild::spawn(bench_cmd))
    }

    /// Waits until every broker accepts connections; a broker that exits first, or the
    /// target's ready timeout, ends the trial (every broker stopped).
    fn wait_until_ready(&self, brokers: &mut [TrialBroker]) -> Result<(), Box<TrialOutcome>> {
        let deadline = Instant::now() + self.target.ready_timeout();
        for i in 0..brokers.len() {
            loop {
                if let Some((status, stderr)) = brokers
                    .iter_mut()
                    .find_map(|b| b.child.try_wait().map(|status| (status, b.stderr.clone())))
                {
                    stop_all(brokers);
                    return Err(Box::new(TrialOutcome::failed(
                        TrialStatus::Crashed,
                        format!(
                            "broker exited before it was ready ({status}):\n{}",
                            tail(&stderr, STDERR_TAIL_LINES)
                        ),
                    )));
                }
                if TcpStream::connect_timeout(&brokers[i].addr, READY_POLL).is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    stop_all(brokers);
                    return Err(Box::new(TrialOutcome::failed(
                        TrialStatus::Timeout,
                        format!(
                            "broker not accepting connections after {} s",
                            self.target.ready_timeout_s
                        ),
                    )));
                }
                std::thread::sleep(READY_POLL);
            }
        }
        Ok(())
    }
}

/// How long the harness waits for a broker to name the leader it is to kill.
const LEADER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the harness waits for chronik-bench's topic to have a leader (a cluster that
/// still elects its controller answers topic creation late).
const TOPIC_LED_WAIT: Duration = Duration::from_secs(60);
const TOPIC_LED_POLL: Duration = Duration::from_millis(100);

/// A failover: waits until the workload's topic has a leader (chronik-bench starts its load
/// then: its clock begins once the topic exists), then `at` more, then kills the leader as it
/// is then. Returns the killed broker's index.
fn failover(
    bench: &mut GroupChild,
    brokers: &mut [TrialBroker],
    workload: &Workload,
    at: Duration,
) -> Result<usize, String> {
    let addrs: Vec<SocketAddr> = brokers.iter().map(|b| b.addr).collect();
    let deadline = Instant::now() + TOPIC_LED_WAIT;
    loop {
        if let Some(early) = bench.wait_timeout(TOPIC_LED_POLL) {
            return Err(format!(
                "chronik-bench ended ({early}) before the topic had a leader"
            ));
        }
        match leader::leader_of(&addrs, &workload.name, 0, LEADER_LOOKUP_TIMEOUT) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
    }
    if let Some(early) = bench.wait_timeout(at) {
        return Err(format!(
            "chronik-bench ended ({early}) before the leader was killed"
        ));
    }
    kill_leader(brokers, workload)
}

/// Kills (SIGKILL, its whole process group) the broker that leads the workload's partition 0,
/// as the brokers' Metadata names it; returns its index. Broker ids are 1..=n in the cluster
/// file the harness writes.
fn kill_leader(brokers: &mut [TrialBroker], workload: &Workload) -> Result<usize, String> {
    let addrs: Vec<SocketAddr> = brokers.iter().map(|b| b.addr).collect();
    let leader = leader::leader_of(&addrs, &workload.name, 0, LEADER_LOOKUP_TIMEOUT)?;
    let index = usize::try_from(leader - 1)
        .ok()
        .filter(|i| *i < brokers.len())
        .ok_or_else(|| format!("the leader is broker {leader}, not one of this cluster"))?;
    signal_group(brokers[index].child.pgid, "KILL");
    Ok(index)
}

/// Why a run that produced a report is not a valid trial: settings other than the
/// workload's (checked first), or the instrument's own reasons; None for a valid one.
fn invalid_detail(workload: &Workload, report: &BenchReport, code: Option<i32>) -> Option<String> {
    let mismatches = workload.mismatches(&report.config);
    if !mismatches.is_empty() {
        Some(format!(
            "the run used other settings than the workload: {}",
            mismatches.join("; ")
        ))
    } else if code == Some(BENCH_EXIT_INVALID) || !report.is_valid() {
        Some(report.invalid_reasons.join("; "))
    } else {
        None
    }
}

/// One started broker of a trial.
struct TrialBroker {
    child: GroupChild,
    addr: SocketAddr,
    stderr: PathBuf,
}

/// A trial whose broker died during the run, or that the instrument could not reach.
fn crashed(
    broker_died: Option<(ExitStatus, PathBuf)>,
    bench_code: Option<i32>,
    broker_status: Option<ExitStatus>,
) -> Option<TrialOutcome> {
    if let Some((status, stderr)) = broker_died {
        return Some(TrialOutcome::failed(
            TrialStatus::Crashed,
            format!(
                "broker died during the run ({status}):\n{}",
                tail(&stderr, STDERR_TAIL_LINES)
            ),
        ));
    }
    (bench_code == Some(BENCH_EXIT_UNREACHABLE)).then(|| {
        TrialOutcome::failed(
            TrialStatus::Crashed,
            format!("broker unreachable (stopped with {broker_status:?})"),
        )
    })
}

/// The cluster's peak resident memory (its largest broker's: a cluster's memory is judged
/// by its largest broker) and the CPU seconds all its brokers used since `cpu_before`.
fn cluster_usage(brokers: &[TrialBroker], cpu_before: Option<f64>) -> (Option<u64>, Option<f64>) {
    let peak_rss_kib = brokers
        .iter()
        .map(|b| peak_rss_kib(b.child.pgid))
        .collect::<Option<Vec<_>>>()
        .and_then(|all| all.into_iter().max());
    let cpu_s = cpu_before
        .zip(cluster_cpu_s(brokers))
        .map(|(before, after)| after - before);
    (peak_rss_kib, cpu_s)
}

/// Stops every broker; the first one's exit status.
fn stop_all(brokers: &mut [TrialBroker]) -> Option<ExitStatus> {
    let statuses: Vec<Option<ExitStatus>> = brokers.iter_mut().map(|b| b.child.stop()).collect();
    statuses.into_iter().next().flatten()
}

/// CPU seconds of all brokers together, if every one can be read.
fn cluster_cpu_s(brokers: &[TrialBroker]) -> Option<f64> {
    brokers.iter().map(|b| cpu_s(b.child.pgid)).sum()
}

impl TrialRunner {
    /// Starts the trial's broker, or its cluster: free ports, a cluster file, one data
    /// directory and one process group per broker.
    fn start_brokers(
        &self,
        dir: &Path,
        broker_bin: &Path,
        workload: &Workload,
        cpus: Option<CpuSet>,
    ) -> Result<Vec<TrialBroker>, Box<TrialOutcome>> {
        let infra = |what: &str, e: &dyn std::fmt::Display| {
            Box::new(TrialOutcome::failed(
                TrialStatus::InfraError,
                format!("{what}: {e}"),
            ))
        };
        let ports = (0..workload.brokers.max(1))
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| infra("finding free ports", &e))?;
        let cluster_file = dir.join("cluster.toml");
        let template = self.start_template(&ports, workload.controllers, &cluster_file)?;
        let extra = workload.broker_args.join(" ");
        let mut brokers = Vec::with_capacity(ports.len());
        for (i, port) in ports.iter().enumerate() {
            let (data_dir, log) = if ports.len() == 1 {
                (dir.join("data"), "broker".to_owned())
            } else {
                (
                    dir.join("data").join(format!("broker-{}", i + 1)),
                    format!("broker-{}", i + 1),
                )
            };
            let start = template
                .replace("{binary}", &broker_bin.display().to_string())
                .replace("{port}", &port.to_string())
                .replace("{broker_id}", &(i + 1).to_string())
                .replace("{cluster_file}", &cluster_file.display().to_string())
                .replace("{data_dir}", &data_dir.display().to_string());
            let stderr_path = dir.join(format!("{log}.stderr"));
            let (Ok(stdout), Ok(stderr)) = (
                std::fs::File::create(dir.join(format!("{log}.stdout"))),
                std::fs::File::create(&stderr_path),
            ) else {
                stop_all(&mut brokers);
                return Err(infra("creating broker log files", &"I/O error"));
            };
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(format!("exec {start} {extra}"))
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr);
            match cores::spawn_on(cpus.as_ref(), || GroupChild::spawn(command)) {
                Ok(child) => brokers.push(TrialBroker {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                    stderr: stderr_path,
                }),
                Err(e) => {
                    stop_all(&mut brokers);
                    return Err(infra("starting the broker", &e));
                }
            }
        }
        Ok(brokers)
    }
}

impl TrialRunner {
    /// The start command: the target's, or for several brokers its cluster command, with
    /// the cluster file written (broker ids from 1, one loopback port each, and a controller
    /// port for each of the first `controllers`).
    fn start_template(
        &self,
        ports: &[u16],
        controllers: usize,
        cluster_file: &Path,
    ) -> Result<&str, Box<TrialOutcome>> {
        if ports.len() == 1 {
            return Ok(self.target.start.as_str());
        }
        let infra = |what: &str, e: &dyn std::fmt::Display| {
            Box::new(TrialOutcome::failed(
                TrialStatus::InfraError,
                format!("{what}: {e}"),
            ))
        };
        let template = self.target.cluster_start.as_deref().ok_or_else(|| {
            infra(
                "starting a cluster",
                &"the target config has no `cluster_start` command",
            )
        })?;
        let mut text = String::new();
        for (i, port) in ports.iter().enumerate() {
            text += &format!(
                "[[broker]]\nid = {}\naddress = \"127.0.0.1:{port}\"\n",
                i + 1
            );
            if i < controllers {
                let controller = free_port().map_err(|e| infra("finding free ports", &e))?;
                text += &format!("controller_address = \"127.0.0.1:{controller}\"\n");
            }
        }
        std::fs::write(cluster_file, text).map_err(|e| infra("writing the cluster file", &e))?;
        Ok(template)
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
    chronik_bench_schema::cpu::cpu_seconds_of(&pid.to_string()).map(|(user, system)| user + system)
}

/// The chronik-bench next to this executable (both are built from the harness's tree).
pub fn default_bench_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("chronik-bench")))
        .unwrap_or_else(|| PathBuf::from("chronik-bench"))
}
