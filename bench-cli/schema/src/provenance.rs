//! Where a result came from: tool versions and the host, so results from different machines are
//! never compared as if they were alike.

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
    /// This build's provenance on this host; the Kafka client's version is the caller's to
    /// give (this crate does not link it).
    pub fn new(librdkafka_version: String) -> Self {
        Self {
            bench_version: env!("CARGO_PKG_VERSION").to_owned(),
            librdkafka_version,
            host: HostInfo::current(),
        }
    }
}
