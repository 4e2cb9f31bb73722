//! The deterministic tier: instructions the broker executes for a fixed request stream,
//! counted by Valgrind (this VM has no hardware counters), plus the heap allocations it makes.
//!
//! Black-box, so it works for every commit, old ones included: the commit's own broker binary
//! runs under Valgrind with its data directory on tmpfs, and `chronik-replay` (built with
//! chronik-bench from the harness's tree) sends the stream over loopback one request at a time.
//! What a run counts apart from the stream (startup, readiness probe, shutdown) is measured by a
//! run without the stream and removed. So is the clock: a broker's timers (the in-tree one
//! writes back every 20 ms) execute per second of wall time, not per request, and a run under
//! Valgrind lasts seconds that vary with the machine's load. A second run without the stream
//! idles `IDLE_EXTRA` longer; the instructions per idle second it shows are removed from each
//! run in proportion to its own duration. Base and head runs alternate (ABBA), so a machine
//! that slows down during a comparison weighs on both sides alike.
//!
//! Why DHAT and not cachegrind: under cachegrind the broker keeps glibc's allocator, whose work
//! depends on the order in which threads free memory (free-list searches, whether a realloc
//! grows in place). That order changes from run to run, and so did the count: 0.4-0.7% between
//! runs of one commit, tunables or jemalloc included (BENCHMARKS.md). DHAT replaces the
//! allocator with Valgrind's own, outside the count, and reports the instructions the program
//! executed (`te`) with every allocation: 8 runs spread 0.1%. Its price: allocator work is
//! counted as allocations (blocks and bytes, reported next to the instructions) instead of
//! instructions, and Valgrind's replacements of memcpy and friends copy byte by byte, so
//! copying weighs more in the count than on hardware. The count is a deterministic proxy for
//! CPU work, not a hardware figure. One tokio worker (`TOKIO_WORKER_THREADS`, read by tokio's
//! default runtime) keeps the scheduling part small.
//!
//! A verdict is three-state on the range of every head run over every base run, with a margin
//! of 1% by default: a regression when even the smallest ratio is beyond the margin, a pass
//! when even the largest is within it. Counts of a commit do not depend on what it is compared
//! with, so they are measured once per broker build and session.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chronik_bench_schema::replay::{ReplaySummary, StreamShape};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::build::process::{tail, GroupChild};
use crate::build::target::TargetConfig;
use crate::verdict::state::Verdict;
use crate::verdict::stats::{median, MetricComparison};

/// Produce requests of the replayed stream (16 records of 256 B each). About 235M instructions
/// at today's broker, about 5 s per run under DHAT on this machine.
pub const STREAM_PRODUCE_REQUESTS: u32 = 2_000;

/// Runs with the stream per commit (plus one without).
pub const RUNS_DEFAULT: usize = 3;

/// Valgrind starts the broker tens of times slower than natively.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const READY_POLL: Duration = Duration::from_millis(50);
/// How much longer the second run without the stream idles than the first: the difference
/// is the broker's instructions per idle second.
const IDLE_EXTRA: Duration = Duration::from_secs(3);
/// Wait after the port accepts: a broker listens before it installs its SIGTERM handler (the
/// in-tree one does), and a SIGTERM in between would kill it without its shutdown, counting
/// fewer instructions. Idle work during the wait is the same with and without the stream.
const SETTLE: Duration = Duration::from_secs(1);
/// A clean shutdown under Valgrind, including writing the counts.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole replayed stream: about 5 s under DHAT here; each response may take up to
/// chronik-replay's own 60 s, so this only catches a replay that hangs as a whole.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);
const STDERR_TAIL_LINES: usize = 15;

/// Environment that makes the broker's work independent of thread timing (see the module docs).
const DETERMINISM_ENV: &[(&str, &str)] = &[("TOKIO_WORKER_THREADS", "1")];

/// The counts of one broker build: net instructions of the stream per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionSample {
    /// Instructions of each run with the stream, minus the run without it.
    pub runs: Vec<u64>,
    /// Instructions of the run without the stream (startup, probe, shutdown).
    pub startup: u64,
    /// Heap allocations (blocks) and bytes allocated for the stream (median run, startup
    /// removed).
    pub heap_blocks: u64,
    pub heap_bytes: u64,
    /// Heap allocations of each run with the stream, startup removed (judged beside the
    /// instructions; empty in results stored before they were).
    #[serde(default)]
    pub heap_block_runs: Vec<u64>,
    /// Instructions per second of the idle broker (its timers), removed from each run in
    /// proportion to its duration, and the median amount removed.
    #[serde(default)]
    pub idle_per_s: f64,
    #[serde(default)]
    pub idle_removed: u64,
    pub requests: u64,
    pub messages: u64,
    pub stream_sha256: String,
    /// Whether the data directory was on tmpfs (no disk timing in the counts).
    pub tmpfs: bool,
}

impl InstructionSample {
    pub fn median(&self) -> f64 {
        median(&self.runs.iter().map(|&r| r as f64).collect::<Vec<_>>())
    }

    pub fn per_request(&self) -> f64 {
        self.median() / self.requests.max(1) as f64
    }

    /// (max - min) / median of the runs.
    pub fn spread(&self) -> f64 {
        let (Some(min), Some(max)) = (self.runs.iter().min(), self.runs.iter().max()) else {
            return 0.0;
        };
        (max - min) as f64 / self.median()
    }
}

/// Base and head of one comparison in this tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionComparison {
    pub base: InstructionSample,
    pub head: InstructionSample,
    pub metric: MetricComparison,
    /// Heap allocations per request, judged like the instructions (`None`: a side has no
    /// per-run allocation counts, stored before they were kept).
    #[serde(default)]
    pub allocations: Option<MetricComparison>,
}

impl InstructionComparison {
    /// Compares the counts of two samples: instructions at `instructions_rise`, heap
    /// allocations at `allocations_rise`.
    pub fn new(
        base: InstructionSample,
        head: InstructionSample,
        instructions_rise: f64,
        allocations_rise: f64,
    ) -> Self {
        let metric = compare_counts(
            INSTRUCTIONS_METRIC,
            &base.runs,
            &head.runs,
            instructions_rise,
        );
        let allocations = (!base.heap_block_runs.is_empty() && !head.heap_block_runs.is_empty())
            .then(|| {
                compare_counts(
                    ALLOCATIONS_METRIC,
                    &base.heap_block_runs,
                    &head.heap_block_runs,
                    allocations_rise,
                )
            });
        Self {
            base,
            head,
            metric,
            allocations,
        }
    }

    /// The tier's verdict: the worse of instructions and allocations.
    pub fn verdict(&self) -> Verdict {
        Verdict::worst(
            std::iter::once(self.metric.verdict).chain(self.allocations.iter().map(|a| a.verdict)),
        )
    }
}

/// The names the tier's metrics are compared and accepted under.
pub const INSTRUCTIONS_METRIC: &str = "instructions/request";
pub const ALLOCATIONS_METRIC: &str = "heap allocations/request";

/// What the tier says next to a wall-clock comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum TierOutcome {
    Compared(Box<InstructionComparison>),
    /// A side could not be counted (Valgrind missing, the broker failed under it, the stream
    /// met an error): the tier is inconclusive and says why.
    NotMeasured {
        reason: String,
    },
}

impl TierOutcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            TierOutcome::Compared(c) => c.verdict(),
            TierOutcome::NotMeasured { .. } => Verdict::Inconclusive,
        }
    }

    pub fn comparison(&self) -> Option<&InstructionComparison> {
        match self {
            TierOutcome::Compared(c) => Some(c),
            TierOutcome::NotMeasured { .. } => None,
        }
    }
}

/// Head relative to base: three-state on the range of all cross ratios head_i / base_j.
pub fn compare_counts(
    metric: &str,
    base: &[u64],
    head: &[u64],
    rise_margin: f64,
) -> MetricComparison {
    assert!(!base.is_empty() && !head.is_empty(), "counts on both sides");
    let (b_min, b_max) = min_max(base);
    let (h_min, h_max) = min_max(head);
    let as_f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let median_ratio = median(&as_f(head)) / median(&as_f(base));
    let low = h_min as f64 / b_max as f64;
    let high = h_max as f64 / b_min as f64;
    let limit_ratio = 1.0 + rise_margin;
    let verdict = if low > limit_ratio {
        Verdict::Regression
    } else if high <= limit_ratio {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    MetricComparison {
        metric: metric.into(),
        pairs: base.len().min(head.len()),
        median_ratio,
        ci_low_ratio: low,
        ci_high_ratio: high,
        // Not a probability: the range holds every observed ratio (see `compare_counts`).
        ci_coverage: 1.0,
        limit_ratio,
        // A rise wider than the range of every cross ratio moves the whole range.
        detectable: Some(high / low - 1.0),
        verdict,
    }
}

fn min_max(v: &[u64]) -> (u64, u64) {
    (
        v.iter().copied().min().unwrap_or(0),
        v.iter().copied().max().unwrap_or(0),
    )
}

/// Counts instructions of broker builds; set at session construction when Valgrind is there.
pub struct InstructionTier {
    pub valgrind: PathBuf,
    pub runs: usize,
    /// Produce requests of the seed-shaped stream `chronik-replay` sends.
    pub produce_requests: u32,
    /// The `chronik-replay` binary (next to chronik-bench).
    pub replay_bin: PathBuf,
    pub target: TargetConfig,
    pub scratch: PathBuf,
    /// Samples by build key and broker arguments.
    cache: Mutex<HashMap<String, InstructionSample>>,
}

impl InstructionTier {
    /// The tier, or why it cannot run here.
    pub fn new(
        valgrind: &Path,
        runs: usize,
        replay_bin: PathBuf,
        target: TargetConfig,
        scratch: PathBuf,
    ) -> Result<Self, TierError> {
        if !replay_bin.exists() {
            return Err(TierError::Unavailable(format!(
                "chronik-replay not found at {} (build it with `cargo build --release -p chronik-bench`)",
                replay_bin.display()
            )));
        }
        if !target.start.contains("{binary}") {
            return Err(TierError::Unavailable("the target's start command does not name {binary}, so it cannot run under Valgrind (turn the tier off with --instruction-runs 0)".into()));
        }
        let version = Command::new(valgrind)
            .arg("--version")
            .output()
            .map_err(|e| {
                TierError::Unavailable(format!(
                    "{} not runnable ({e}); install valgrind (apt install valgrind)",
                    valgrind.display()
                ))
            })?;
        if !version.status.success() {
            return Err(TierError::Unavailable(format!(
                "{} --version failed",
                valgrind.display()
            )));
        }
        Ok(Self {
            valgrind: valgrind.to_owned(),
            runs,
            produce_requests: STREAM_PRODUCE_REQUESTS,
            replay_bin,
            target,
            scratch,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The sample of one broker build, measured once per `key` and session.
    pub fn sample(
        &self,
        key: &str,
        binary: &Path,
        broker_args: &[String],
        on_run: &dyn Fn(&str),
    ) -> Result<InstructionSample, TierError> {
        let cache_key = format!("{key}|{}", broker_args.join(" "));
        if let Some(sample) = self.cache.lock().expect("cache lock").get(&cache_key) {
            return Ok(sample.clone());
        }
        let sample = self
            .measure(&[binary], broker_args, on_run)?
            .pop()
            .expect("one sample per binary");
        self.cache
            .lock()
            .expect("cache lock")
            .insert(cache_key, sample.clone());
        Ok(sample)
    }

    /// The samples of two builds, their runs interleaved (base, head, head, base, ...) unless
    /// one of them is already measured in this session. `(key, binary)` of each.
    pub fn sample_pair(
        &self,
        base: (&str, &Path),
        head: (&str, &Path),
        broker_args: &[String],
        on_run: &dyn Fn(&str),
    ) -> Result<(InstructionSample, InstructionSample), TierError> {
        let cache_key = |key: &str| format!("{key}|{}", broker_args.join(" "));
        let cached = {
            let cache = self.cache.lock().expect("cache lock");
            cache.contains_key(&cache_key(base.0)) || cache.contains_key(&cache_key(head.0))
        };
        if cached || base.0 == head.0 {
            let b = self.sample(base.0, base.1, broker_args, on_run)?;
            let h = self.sample(head.0, head.1, broker_args, on_run)?;
            return Ok((b, h));
        }
        let mut samples = self.measure(&[base.1, head.1], broker_args, on_run)?;
        let h = samples.pop().expect("head sample");
        let b = samples.pop().expect("base sample");
        let mut cache = self.cache.lock().expect("cache lock");
        cache.insert(cache_key(base.0), b.clone());
        cache.insert(cache_key(head.0), h.clone());
        Ok((b, h))
    }

    /// Counts each binary: two idle runs (the startup, and the idle rate), then `self.runs`
    /// runs with the stream, the binaries' runs alternating in counterbalanced order.
    fn measure(
        &self,
        binaries: &[&Path],
        broker_args: &[String],
        on_run: &dyn Fn(&str),
    ) -> Result<Vec<InstructionSample>, TierError> {
        let mut idle = Vec::with_capacity(binaries.len());
        for binary in binaries {
            let short = self.count(binary, broker_args, Duration::ZERO, false)?;
            let long = self.count(binary, broker_args, IDLE_EXTRA, false)?;
            let seconds = (long.wall_s - short.wall_s).max(f64::EPSILON);
            let extra = long
                .totals
                .instructions
                .saturating_sub(short.totals.instructions);
            idle.push((short, extra as f64 / seconds));
        }
        let mut runs: Vec<Vec<NetRun>> = vec![Vec::new(); binaries.len()];
        let mut summaries: Vec<Option<ReplaySummary>> = vec![None; binaries.len()];
        for i in 0..self.runs {
            let order: Vec<usize> = if i % 2 == 0 {
                (0..binaries.len()).collect()
            } else {
                (0..binaries.len()).rev().collect()
            };
            for side in order {
                let which = match (binaries.len(), side) {
                    (1, _) => "",
                    (_, 0) => " (base)",
                    _ => " (head)",
                };
                on_run(&format!("Valgrind run {}/{}{which}", i + 1, self.runs));
                let run = self.count(binaries[side], broker_args, Duration::ZERO, true)?;
                let (short, per_s) = &idle[side];
                runs[side].push(NetRun::of(&run, short, *per_s));
                summaries[side] = run.replayed;
            }
        }
        runs.into_iter()
            .zip(summaries)
            .zip(idle)
            .map(|((runs, summary), (short, idle_per_s))| {
                let summary =
                    summary.ok_or_else(|| TierError::Run("no run replayed the stream".into()))?;
                let median_of = |f: fn(&NetRun) -> u64| {
                    let mut v: Vec<u64> = runs.iter().map(f).collect();
                    v.sort_unstable();
                    v[v.len() / 2]
                };
                Ok(InstructionSample {
                    runs: runs.iter().map(|r| r.instructions).collect(),
                    startup: short.totals.instructions,
                    heap_blocks: median_of(|r| r.heap_blocks),
                    heap_bytes: median_of(|r| r.heap_bytes),
                    heap_block_runs: runs.iter().map(|r| r.heap_blocks).collect(),
                    idle_per_s,
                    idle_removed: median_of(|r| r.clock),
                    requests: summary.requests,
                    messages: summary.messages,
                    stream_sha256: summary.stream_sha256,
                    tmpfs: tmpfs_dir().is_some(),
                })
            })
            .collect()
    }

    /// One run: the broker under Valgrind, `idle_extra` of idling, the stream (if any), a
    /// clean stop; its totals and how long it ran after the settling wait.
    fn count(
        &self,
        binary: &Path,
        broker_args: &[String],
        idle_extra: Duration,
        with_stream: bool,
    ) -> Result<CountedRun, TierError> {
        let dir = RunDir::create(tmpfs_dir().unwrap_or(&self.scratch))?;
        let counts = dir.path().join("dhat.json");
        let stderr_path = dir.path().join("stderr");
        let (mut broker, addr) =
            self.spawn_under_valgrind(binary, broker_args, dir.path(), &counts, &stderr_path)?;
        let failed = |what: &str, broker: &mut GroupChild| {
            broker.stop();
            TierError::Run(format!(
                "{what}:\n{}",
                tail(&stderr_path, STDERR_TAIL_LINES)
            ))
        };
        if let Some(why) = wait_listening(&mut broker, addr) {
            return Err(failed(&why, &mut broker));
        }
        std::thread::sleep(SETTLE);
        let ready = Instant::now();
        std::thread::sleep(idle_extra);
        let replayed = if with_stream {
            match self.replay(addr, dir.path()) {
                Ok(summary) => Some(summary),
                Err(e) => {
                    return Err(failed(
                        &format!("the replayed stream failed: {e}"),
                        &mut broker,
                    ))
                }
            }
        } else {
            None
        };
        let wall_s = ready.elapsed().as_secs_f64();
        crate::build::process::signal_group(broker.pgid, "TERM");
        let status = broker.wait_timeout(EXIT_TIMEOUT);
        broker.stop();
        match status {
            Some(s) if s.success() => {}
            other => {
                return Err(TierError::Run(format!(
                    "the broker under Valgrind did not stop cleanly ({other:?}):\n{}",
                    tail(&stderr_path, STDERR_TAIL_LINES)
                )))
            }
        }
        let text = std::fs::read_to_string(&counts)
            .map_err(io(format!("reading {}", counts.display())))?;
        let totals = DhatTotals::parse(&text).map_err(|e| {
            TierError::Run(format!(
                "{}: not a DHAT heap profile: {e}",
                counts.display()
            ))
        })?;
        Ok(CountedRun {
            totals,
            replayed,
            wall_s,
        })
    }

    /// Starts the target's start command with the broker binary under Valgrind (DHAT, its
    /// profile to `counts`) on a free port; the broker and the address it will listen on.
    fn spawn_under_valgrind(
        &self,
        binary: &Path,
        broker_args: &[String],
        dir: &Path,
        counts: &Path,
        stderr_path: &Path,
    ) -> Result<(GroupChild, SocketAddr), TierError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let under_valgrind = format!(
            // Children are followed so a start script that execs the broker is measured
            // through; the count is the last program's (an exec replaces the profile).
            "{} --tool=dhat --trace-children=yes --dhat-out-file={} {}",
            self.valgrind.display(),
            counts.display(),
            binary.display()
        );
        let start = self
            .target
            .start
            .replace("{binary}", &under_valgrind)
            .replace("{port}", &port.to_string())
            .replace("{data_dir}", &dir.join("data").display().to_string());
        let stderr = std::fs::File::create(stderr_path).map_err(io("creating the broker's log"))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec {start} {}", broker_args.join(" ")))
            .envs(DETERMINISM_ENV.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let broker = GroupChild::spawn(command).map_err(io("starting Valgrind"))?;
        Ok((broker, SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// Sends the stream to the broker at `addr` with `chronik-replay`; its summary.
    fn replay(&self, addr: SocketAddr, dir: &Path) -> Result<ReplaySummary, TierError> {
        let summary_path = dir.join("replay.json");
        let stderr_path = dir.join("replay.stderr");
        let stderr =
            std::fs::File::create(&stderr_path).map_err(io("creating chronik-replay's log"))?;
        let mut command = Command::new(&self.replay_bin);
        command
            .arg("--bootstrap")
            .arg(addr.to_string())
            .arg("--produce-requests")
            .arg(self.produce_requests.to_string())
            .arg("--json-output")
            .arg(&summary_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut replay = GroupChild::spawn(command)
            .map_err(io(format!("starting {}", self.replay_bin.display())))?;
        let status = replay.wait_timeout(REPLAY_TIMEOUT);
        replay.stop();
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(TierError::Run(format!(
                    "chronik-replay {s}: {}",
                    tail(&stderr_path, STDERR_TAIL_LINES)
                )))
            }
            None => {
                return Err(TierError::Run(format!(
                    "chronik-replay did not finish within {} s",
                    REPLAY_TIMEOUT.as_secs()
                )))
            }
        }
        let raw = std::fs::read(&summary_path)
            .map_err(io(format!("reading {}", summary_path.display())))?;
        let summary: ReplaySummary = serde_json::from_slice(&raw).map_err(|e| {
            TierError::Run(format!(
                "{}: not a replay summary: {e}",
                summary_path.display()
            ))
        })?;
        // Another chronik-replay build could send another stream: counts would not compare.
        let expected = StreamShape::seed(self.produce_requests);
        if summary.shape != expected {
            return Err(TierError::Run(format!(
                "chronik-replay sent {:?}, not the stream {expected:?} this harness counts",
                summary.shape
            )));
        }
        Ok(summary)
    }
}

/// Why the deterministic tier could not measure: what a `NotMeasured` outcome says.
#[derive(Debug, Error)]
pub enum TierError {
    /// The tier cannot run with this target or on this machine.
    #[error("{0}")]
    Unavailable(String),
    /// An operation of a run failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A run gave no count: a process failed or stalled, or its output did not parse.
    #[error("{0}")]
    Run(String),
}

/// The `Io` error of `what`, for `map_err`.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TierError {
    let what = what.into();
    move |source| TierError::Io { what, source }
}

/// What one run counted, and how long the broker ran between ready and the stop.
struct CountedRun {
    totals: DhatTotals,
    replayed: Option<ReplaySummary>,
    wall_s: f64,
}

/// One run with the stream, net of the startup run and of the clock.
#[derive(Debug, Clone, Copy)]
struct NetRun {
    instructions: u64,
    /// The instructions removed for this run's idle seconds beyond the startup run's.
    clock: u64,
    heap_blocks: u64,
    heap_bytes: u64,
}

impl NetRun {
    fn of(run: &CountedRun, startup: &CountedRun, idle_per_s: f64) -> Self {
        let clock = (idle_per_s * (run.wall_s - startup.wall_s).max(0.0)) as u64;
        let net = |total: u64, start: u64| total.saturating_sub(start);
        Self {
            instructions: net(run.totals.instructions, startup.totals.instructions)
                .saturating_sub(clock),
            clock,
            heap_blocks: net(run.totals.heap_blocks, startup.totals.heap_blocks),
            heap_bytes: net(run.totals.heap_bytes, startup.totals.heap_bytes),
        }
    }
}

/// A run's own directory (data, counts, log), removed when the run ends however it ends.
struct RunDir(PathBuf);

impl RunDir {
    fn create(parent: &Path) -> Result<Self, TierError> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let path = parent.join(format!(
            "chronik-instructions-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one DHAT run counted: instructions to the end (`te`, in the file's time unit "instrs")
/// and every heap block allocated, summed over allocation points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DhatTotals {
    instructions: u64,
    heap_blocks: u64,
    heap_bytes: u64,
}

#[derive(Deserialize)]
struct DhatFile {
    mode: String,
    tu: String,
    te: u64,
    pps: Vec<DhatPoint>,
}

#[derive(Deserialize)]
struct DhatPoint {
    tb: u64,
    tbk: u64,
}

impl DhatTotals {
    fn parse(text: &str) -> Result<Self, TierError> {
        let file: DhatFile =
            serde_json::from_str(text).map_err(|e| TierError::Run(e.to_string()))?;
        if file.mode != "heap" || file.tu != "instrs" {
            return Err(TierError::Run(format!(
                "mode {:?}, time unit {:?}",
                file.mode, file.tu
            )));
        }
        Ok(Self {
            instructions: file.te,
            heap_blocks: file.pps.iter().map(|p| p.tbk).sum(),
            heap_bytes: file.pps.iter().map(|p| p.tb).sum(),
        })
    }
}

/// Waits until the broker under Valgrind accepts connections at `addr`; why not, when it
/// exited first or did not listen within `READY_TIMEOUT`.
fn wait_listening(broker: &mut GroupChild, addr: SocketAddr) -> Option<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = broker.try_wait() {
            return Some(format!(
                "the broker exited under Valgrind before it was ready ({status})"
            ));
        }
        if TcpStream::connect_timeout(&addr, READY_POLL).is_ok() {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "the broker under Valgrind did not listen within {} s",
                READY_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// A tmpfs directory for data directories, so no disk timing reaches the counts.
fn tmpfs_dir() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    let writable =
        shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly());
    writable.then_some(shm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_counts_within_their_spread_pass() {
        let m = compare_counts(
            INSTRUCTIONS_METRIC,
            &[100_000, 100_300, 100_150],
            &[100_100, 100_250, 99_950],
            0.01,
        );
        assert_eq!(m.verdict, Verdict::Pass);
        assert!((m.median_ratio - 1.0).abs() < 0.002);
    }

    #[test]
    fn a_rise_beyond_the_margin_and_the_spread_is_a_regression() {
        let m = compare_counts(
            INSTRUCTIONS_METRIC,
            &[100_000, 100_300, 100_150],
            &[101_700, 101_900, 101_800],
            0.01,
        );
        assert_eq!(m.verdict, Verdict::Regression);
        assert!(m.ci_low_ratio > 1.01);
    }

    /// At the edge of what the tier sees: a 1.2% rise is a regression only when the runs are
    /// tight enough to put every ratio beyond 1%; with runs as loose as 0.5% it is undecided.
    #[test]
    fn a_rise_near_the_margin_is_decided_only_by_tight_runs() {
        let tight = compare_counts(
            INSTRUCTIONS_METRIC,
            &[100_000, 100_050, 100_020],
            &[101_220, 101_260, 101_200],
            0.01,
        );
        assert_eq!(tight.verdict, Verdict::Regression);
        let loose = compare_counts(
            INSTRUCTIONS_METRIC,
            &[100_000, 100_500, 100_250],
            &[101_200, 101_700, 101_450],
            0.01,
        );
        assert_eq!(loose.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn fewer_instructions_pass() {
        let m = compare_counts(
            INSTRUCTIONS_METRIC,
            &[100_000, 100_100],
            &[90_000, 90_100],
            0.01,
        );
        assert_eq!(m.verdict, Verdict::Pass);
        assert!(m.median_ratio < 0.91);
    }

    #[test]
    fn a_dhat_profile_is_read() {
        let text = r#"{"dhatFileVersion":2,"mode":"heap","verb":"Allocated","bklt":true,"bkacc":true,"tu":"instrs","Mtu":"Minstr","tuth":500,"cmd":"broker","pid":1,"te":235958948,"tg":235155916,"pps":[{"tb":472,"tbk":1,"tl":1,"mb":472,"mbk":1,"gb":0,"gbk":0,"eb":0,"ebk":0,"rb":3285,"wb":1482,"fs":[1]},{"tb":100,"tbk":4,"tl":1,"mb":25,"mbk":1,"gb":0,"gbk":0,"eb":0,"ebk":0,"rb":0,"wb":0,"fs":[2]}],"ftbl":["[root]","a","b"]}"#;
        let totals = DhatTotals::parse(text).unwrap();
        assert_eq!(
            totals,
            DhatTotals {
                instructions: 235_958_948,
                heap_blocks: 5,
                heap_bytes: 572
            }
        );
        assert!(DhatTotals::parse(&text.replace("\"heap\"", "\"copy\"")).is_err());
        assert!(DhatTotals::parse("==1== not json").is_err());
    }

    /// A sample of 10 requests with these instruction and allocation counts per run.
    fn sample_of(runs: Vec<u64>, heap_block_runs: Vec<u64>) -> InstructionSample {
        InstructionSample {
            runs,
            startup: 10,
            heap_blocks: heap_block_runs[heap_block_runs.len() / 2],
            heap_bytes: 4_000,
            heap_block_runs,
            idle_per_s: 0.0,
            idle_removed: 0,
            requests: 10,
            messages: 160,
            stream_sha256: String::new(),
            tmpfs: true,
        }
    }

    /// The tier judges allocations beside instructions: a head that allocates more per request
    /// is a regression even when its instructions are unchanged (DHAT counts the allocator's
    /// work as allocations, not as instructions).
    #[test]
    fn more_allocations_alone_are_a_regression_of_the_tier() {
        let sample = |blocks: u64| {
            sample_of(
                vec![1_000_000, 1_000_400, 1_000_200],
                vec![blocks, blocks + 1, blocks],
            )
        };
        let same = InstructionComparison::new(sample(1_000), sample(1_000), 0.01, 0.02);
        assert_eq!(same.verdict(), Verdict::Pass);
        let more = InstructionComparison::new(sample(1_000), sample(1_050), 0.01, 0.02);
        assert_eq!(more.metric.verdict, Verdict::Pass);
        assert_eq!(
            more.allocations.as_ref().unwrap().verdict,
            Verdict::Regression
        );
        assert_eq!(more.verdict(), Verdict::Regression);
        assert_eq!(
            TierOutcome::Compared(Box::new(more)).verdict(),
            Verdict::Regression
        );
    }

    /// The clock's share of a run: its idle instructions per second times the seconds it ran
    /// beyond the startup run, removed with the startup's own count.
    #[test]
    fn a_run_is_counted_net_of_the_startup_and_of_the_clock() {
        let run = |instructions: u64, wall_s: f64| CountedRun {
            totals: DhatTotals {
                instructions,
                heap_blocks: 100,
                heap_bytes: 1_000,
            },
            replayed: None,
            wall_s,
        };
        let startup = run(50_000_000, 1.0);
        // The same work in a run that lasted 6 s and in one that lasted 9 s: at 100,000
        // idle instructions per second, the slower run counted 300,000 more.
        let fast = NetRun::of(&run(285_500_000, 6.0), &startup, 100_000.0);
        let slow = NetRun::of(&run(285_800_000, 9.0), &startup, 100_000.0);
        assert_eq!(fast.instructions, slow.instructions);
        assert_eq!(fast.instructions, 235_000_000);
        assert_eq!((fast.clock, slow.clock), (500_000, 800_000));
    }

    #[test]
    fn spread_is_range_over_median() {
        let s = sample_of(vec![1_000, 1_004, 1_002], vec![40; 3]);
        assert!((s.spread() - 0.004 / 1.002).abs() < 1e-9);
        assert!((s.per_request() - 100.2).abs() < 1e-9);
    }
}
