//! Where a result came from: tool versions and the host, so results from different machines are
//! never compared as if they were alike; and the generator's own CPU use.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    pub bench_version: String,
    pub librdkafka_version: String,
    pub host: HostInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_kib: u64,
}

impl HostInfo {
    pub fn current() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into())
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease"),
            memory_kib,
        }
    }

    /// A short fingerprint: two results are comparable side by side only when these match.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}c|{}|{}MiB",
            self.cpu_model,
            self.cores,
            self.kernel,
            self.memory_kib / 1024
        )
    }
}

impl Provenance {
    pub fn current() -> Self {
        Self {
            bench_version: env!("CARGO_PKG_VERSION").to_owned(),
            librdkafka_version: rdkafka::util::get_rdkafka_version().1,
            host: HostInfo::current(),
        }
    }
}

/// CPU time this process used over a wall-clock span.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuUsage {
    pub user_s: f64,
    pub system_s: f64,
    pub wall_s: f64,
    /// (user + system) / wall: 1.0 = one core busy the whole time.
    pub cores_used: f64,
}

/// Linux reports /proc times in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// (user, system) CPU seconds of this process so far.
pub fn process_cpu_seconds() -> (f64, f64) {
    cpu_seconds_of("self").unwrap_or((0.0, 0.0))
}

/// (user, system) CPU seconds so far of the process `pid` (a number, or "self"), from
/// /proc/PID/stat; `None` when it cannot be read (the process is gone, or no /proc).
pub fn cpu_seconds_of(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| Some(fields.get(i)?.parse::<f64>().ok()? / USER_HZ);
    Some((tick(11)?, tick(12)?))
}

impl CpuUsage {
    pub fn between(start: (f64, f64), end: (f64, f64), wall_s: f64) -> Self {
        let user_s = end.0 - start.0;
        let system_s = end.1 - start.1;
        Self {
            user_s,
            system_s,
            wall_s,
            cores_used: if wall_s > 0.0 {
                (user_s + system_s) / wall_s
            } else {
                0.0
            },
        }
    }
}
