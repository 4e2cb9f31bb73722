//! Workloads are data: TOML files naming the load, the client settings, extra broker flags and
//! the absolute limits. The hash of the file's parsed content ties results to the workload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::HarnessError;
use crate::trial::cores::Cores;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The median trial must reach this throughput.
    pub throughput_min_msgs_per_s: Option<f64>,
    /// The median trial's p99 must stay at or below this.
    pub p99_max_ms: Option<f64>,
    /// The median trial's p99.9 must stay at or below this (open-loop workloads: a closed loop
    /// hides stalls from its own tail).
    #[serde(default)]
    pub p999_max_ms: Option<f64>,
    /// Failover workloads: no trial may lose more acknowledged messages than this (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_lost_max: Option<u64>,
    /// Failover workloads: the median trial's longest time without an ack (the leader's
    /// death to the first write the new leader acknowledged) must stay at or below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_ack_gap_max_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub description: String,
    /// chronik-bench --mode.
    pub mode: String,
    pub concurrency: usize,
    pub message_size: usize,
    pub duration_s: u64,
    pub warmup_s: u64,
    #[serde(default = "one")]
    pub partitions: i32,
    /// "0", "1" or "all".
    pub acks: String,
    /// Open loop: messages per second offered.
    pub rate: Option<f64>,
    #[serde(default)]
    pub compression: Option<String>,
    /// librdkafka properties passed with -X (every one that changes results, explicitly).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// Extra flags appended to the broker's start command (every broker's, in a cluster).
    #[serde(default)]
    pub broker_args: Vec<String>,
    /// Brokers per trial: above 1, a cluster started from one cluster file (the target's
    /// `cluster_start`). Left out of the hash when 1, so single-broker workloads keep theirs.
    #[serde(default = "one_broker", skip_serializing_if = "is_one_broker")]
    pub brokers: usize,
    /// Replicas of the benchmark topic (chronik-bench --replication-factor).
    #[serde(default = "one_replica", skip_serializing_if = "is_one_replica")]
    pub replication_factor: i16,
    /// Brokers 1..=controllers are the voters of a controller quorum (a `controller_address`
    /// each in the cluster file), which then elects leaders and records in-sync sets. 0: a
    /// static cluster (left out of the hash, so workloads without a quorum keep theirs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub controllers: usize,
    /// A failover workload: this many seconds into the measured window the harness kills the
    /// broker leading the topic's partition 0 (SIGKILL, not restarted), and chronik-bench
    /// checks every acknowledged message against a read-back (`--verify-acked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_leader_after_s: Option<u64>,
    /// Where the brokers and the load generator run: `shared` CPUs (left out of the hash, so
    /// workloads from before keep theirs) or `disjoint` halves of them.
    #[serde(default, skip_serializing_if = "Cores::is_shared")]
    pub cores: Cores,
    pub limits: Limits,
}

/// A failover workload's quorum must outlive the broker it kills: three voters at least.
const FAILOVER_CONTROLLERS_MIN: usize = 3;

fn one() -> i32 {
    1
}

fn one_broker() -> usize {
    1
}

fn is_one_broker(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn one_replica() -> i16 {
    1
}

fn is_one_replica(n: &i16) -> bool {
    *n == 1
}

impl Workload {
    pub fn load(path: &Path) -> Result<Self, HarnessError> {
        let text = std::fs::read_to_string(path).map_err(|e| HarnessError::io(path, e))?;
        let workload: Self = toml::from_str(&text)
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))?;
        workload
            .check()
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))?;
        Ok(workload)
    }

    /// Settings that cannot run as asked.
    fn check(&self) -> Result<(), String> {
        if let Some(after) = self.kill_leader_after_s {
            if after >= self.duration_s {
                return Err("kill_leader_after_s must fall inside the window".into());
            }
            if self.controllers < FAILOVER_CONTROLLERS_MIN || self.replication_factor < 2 {
                return Err(format!(
                    "a failover workload needs controllers >= {FAILOVER_CONTROLLERS_MIN} (a quorum that survives the kill) and replication_factor >= 2"
                ));
            }
            if self.message_size < chronik_bench_schema::config::VERIFIED_MESSAGE_SIZE_MIN {
                return Err(
                    "a failover workload needs message_size >= 16 (room for the id)".into(),
                );
            }
        }
        Ok(())
    }

    /// Finds `name` (a file path, or a name in `dir`).
    pub fn find(name: &str, dir: &Path) -> Result<Self, HarnessError> {
        let as_path = PathBuf::from(name);
        if as_path.exists() {
            return Self::load(&as_path);
        }
        let in_dir = dir.join(format!("{name}.toml"));
        if in_dir.exists() {
            return Self::load(&in_dir);
        }
        Err(HarnessError::Usage(format!(
            "no workload {name:?} (looked for {} and {name}); available: {}",
            in_dir.display(),
            Self::list(dir).join(", ")
        )))
    }

    pub fn list(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let name = e.ok()?.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".toml").map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Hash of the parsed content: formatting changes keep it, any setting change alters it.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a workload serialises");
        let digest = Sha256::digest(canonical);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The chronik-bench arguments for one trial against `bootstrap`.
    pub fn bench_args(&self, bootstrap: &str, json_out: &Path) -> Vec<String> {
        let mut args = vec![
            format!("--bootstrap-servers={bootstrap}"),
            format!("--topic={}", self.name),
            format!("--mode={}", self.mode),
            format!("--concurrency={}", self.concurrency),
            format!("--message-size={}", self.message_size),
            format!("--duration={}s", self.duration_s),
            format!("--warmup={}s", self.warmup_s),
            format!("--partitions={}", self.partitions),
            format!("--acks={}", self.acks),
            format!("--replication-factor={}", self.replication_factor),
            "--create-topic".into(),
            "--quiet".into(),
            format!("--json-output={}", json_out.display()),
        ];
        if let Some(rate) = self.rate {
            args.push(format!("--rate={rate}"));
        }
        if self.kill_leader_after_s.is_some() {
            args.push("--verify-acked".into());
        }
        if let Some(codec) = &self.compression {
            args.push(format!("--compression={codec}"));
        }
        for (k, v) in &self.client {
            args.push(format!("-X{k}={v}"));
        }
        args
    }

    /// How the settings a run reports (`BenchReport::config`) differ from what this workload
    /// asks for; empty when they agree. A trial that ran other settings (an old or patched
    /// generator, a property it overrode) measured another workload.
    pub fn mismatches(&self, ran: &chronik_bench_schema::BenchConfig) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, asked: String, used: String| {
            if asked != used {
                out.push(format!("{what}: asked {asked}, ran {used}"));
            }
        };
        let mode = serde_json::to_value(ran.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        check("mode", self.mode.clone(), mode);
        check(
            "concurrency",
            self.concurrency.to_string(),
            ran.concurrency.to_string(),
        );
        check(
            "message size",
            self.message_size.to_string(),
            ran.message_size.to_string(),
        );
        check(
            "window (ms)",
            (self.duration_s * 1000).to_string(),
            ran.duration_ms.to_string(),
        );
        check(
            "warm-up (ms)",
            (self.warmup_s * 1000).to_string(),
            ran.warmup_ms.to_string(),
        );
        check(
            "partitions",
            self.partitions.to_string(),
            ran.partitions.to_string(),
        );
        check(
            "rate",
            format!("{:?}", self.rate),
            format!("{:?}", ran.rate),
        );
        check(
            "replication factor",
            self.replication_factor.to_string(),
            ran.replication_factor.to_string(),
        );
        check(
            "acks verified",
            self.kill_leader_after_s.is_some().to_string(),
            ran.verify_acked.to_string(),
        );
        let property = |key: &str| {
            ran.producer_properties
                .get(key)
                .cloned()
                .unwrap_or_else(|| "(unset)".into())
        };
        let acks = |a: String| if a == "-1" { "all".to_owned() } else { a };
        check("acks", acks(self.acks.clone()), acks(property("acks")));
        for (key, value) in &self.client {
            check(key, value.clone(), property(key));
        }
        out
    }

    /// Upper bound on one bench run (warm-up + window + drain + set-up slack).
    pub fn bench_timeout(&self) -> std::time::Duration {
        // A verified run reads the topic back after the drain (at least a minute allowed).
        let read_back = if self.kill_leader_after_s.is_some() {
            60
        } else {
            0
        };
        std::time::Duration::from_secs(self.warmup_s + self.duration_s + 30 + 60 + read_back)
    }

    /// When the harness kills the leader, counted from when the topic has a leader (the
    /// bench starts its load then).
    pub fn kill_leader_at(&self) -> Option<std::time::Duration> {
        self.kill_leader_after_s
            .map(|after| std::time::Duration::from_secs(self.warmup_s + after))
    }
}

/// The seed's workload (128 in flight, 256 B, 30 s): the default of every subcommand.
pub const SEED_WORKLOAD: &str = "produce-c128-s256-30s";

/// Where workload files live in a checkout of this repository.
const IN_REPOSITORY: &str = "harness/workloads";

/// The directory of workload files when `--workload-dir` is not given: `harness/workloads` of
/// the target repository, else `workloads/` beside the executable (an installed harness),
/// else `harness/workloads` of the checkout whose `target/<profile>/` holds the executable.
/// Never a path of the machine that built the binary.
pub fn find_dir(repo: &Path) -> Result<PathBuf, HarnessError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let mut candidates = vec![repo.join(IN_REPOSITORY)];
    if let Some(dir) = &exe_dir {
        candidates.push(dir.join("workloads"));
        if let Some(checkout) = dir.parent().and_then(Path::parent) {
            candidates.push(checkout.join(IN_REPOSITORY));
        }
    }
    candidates
        .iter()
        .find(|dir| dir.is_dir())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            HarnessError::Usage(format!(
                "no workload directory found (tried {}); pass --workload-dir",
                tried.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workload files of this checkout.
    fn shipped() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads")
    }
    use clap::Parser;

    /// What chronik-bench makes of a workload's arguments.
    fn ran(w: &Workload) -> chronik_bench_schema::BenchConfig {
        let args = w.bench_args("127.0.0.1:9092", Path::new("out.json"));
        let parsed = chronik_bench_schema::BenchArgs::try_parse_from(
            std::iter::once("chronik-bench".to_owned()).chain(args),
        )
        .unwrap();
        chronik_bench_schema::BenchConfig::from_args(&parsed).unwrap()
    }

    #[test]
    fn a_failover_workload_must_be_able_to_survive_its_kill() {
        let failover = Workload::find("failover-rf3-quorum-acks-all-c32-s256-20s", &shipped())
            .expect("shipped and valid");
        assert!(ran(&failover).verify_acked, "acks are verified");
        assert!(failover.check().is_ok());
        let mut w = failover.clone();
        w.controllers = 2; // killing a voter of two leaves no quorum
        assert!(w.check().unwrap_err().contains("controllers"));
        let mut w = failover.clone();
        w.kill_leader_after_s = Some(w.duration_s);
        assert!(w.check().unwrap_err().contains("window"));
        let mut w = failover;
        w.message_size = 8;
        assert!(w.check().unwrap_err().contains("message_size"));
    }

    #[test]
    fn every_shipped_workload_runs_the_settings_it_asks_for() {
        let dir = shipped();
        let names = Workload::list(&dir);
        assert!(names.len() >= 5, "{names:?}");
        for name in names {
            let w = Workload::find(&name, &dir).unwrap();
            assert_eq!(w.mismatches(&ran(&w)), Vec::<String>::new(), "{name}");
        }
    }

    #[test]
    fn single_broker_workloads_keep_their_hash() {
        // The hash ties stored results and baselines to a workload: the cluster fields,
        // at their defaults, must not change it.
        let w = Workload::find(SEED_WORKLOAD, &shipped()).unwrap();
        assert_eq!(w.brokers, 1);
        let json = serde_json::to_string(&w).unwrap();
        assert!(!json.contains("brokers") && !json.contains("replication_factor"));
        assert!(!json.contains("controllers") && !json.contains("cores"));
        let disjoint = Workload {
            cores: Cores::Disjoint,
            ..w.clone()
        };
        assert_ne!(disjoint.hash(), w.hash());
        let cluster = Workload {
            brokers: 2,
            replication_factor: 2,
            ..w.clone()
        };
        assert_ne!(cluster.hash(), w.hash());
        let quorum = Workload {
            controllers: 2,
            ..cluster.clone()
        };
        assert_ne!(quorum.hash(), cluster.hash());
    }

    #[test]
    fn a_run_with_other_client_settings_is_named() {
        let w = Workload::find(SEED_WORKLOAD, &shipped()).unwrap();
        let mut config = ran(&w);
        let key = w
            .client
            .keys()
            .next()
            .expect("the seed sets client properties")
            .clone();
        config
            .producer_properties
            .insert(key.clone(), "changed".into());
        config.concurrency = 1;
        let found = w.mismatches(&config);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|m| m.starts_with(&key)), "{found:?}");
        assert!(
            found.iter().any(|m| m.starts_with("concurrency")),
            "{found:?}"
        );
    }
}
