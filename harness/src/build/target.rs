//! How to build and start the broker of the target repository. One small TOML file, given on
//! the command line or found as `.chronik-target.toml` at the repository root; without either,
//! the defaults fit this repository's own `broker-under-test`. Because the file is read from
//! the harness's side, it also applies to commits older than the file itself.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::HarnessError;

pub const TARGET_CONFIG_FILE: &str = ".chronik-target.toml";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Shell command run in the commit's checkout; `CARGO_TARGET_DIR` points at a target
    /// directory shared by every commit so builds stay incremental.
    pub build: String,
    /// The built broker, relative to the checkout; `{target_dir}` is the shared target dir.
    pub binary: String,
    /// Start command; `{binary}`, `{port}` and `{data_dir}` are replaced.
    pub start: String,
    /// Start command of one broker of a cluster (workloads with `brokers` above 1):
    /// `{binary}`, `{broker_id}`, `{cluster_file}` and `{data_dir}` are replaced. The harness
    /// writes the cluster file: one `[[broker]]` table per broker with `id` (1, 2, ...) and
    /// `address` ("127.0.0.1:PORT"). Absent: the target cannot run cluster workloads.
    #[serde(default)]
    pub cluster_start: Option<String>,
    #[serde(default = "default_ready_timeout_s")]
    pub ready_timeout_s: u64,
    #[serde(default = "default_build_timeout_s")]
    pub build_timeout_s: u64,
    /// Paths (from the repository root) that decide the built binary. Commits that agree on
    /// all of them share one build, so a bisect over commits that only touch docs or other
    /// crates builds once. Empty: every commit is built.
    #[serde(default)]
    pub build_inputs: Vec<String>,
}

fn default_ready_timeout_s() -> u64 {
    30
}
fn default_build_timeout_s() -> u64 {
    3600
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            build: "cargo build --release --locked -p chronik-broker".into(),
            binary: "{target_dir}/release/chronik-broker".into(),
            start: "{binary} --listen 127.0.0.1:{port} --data-dir {data_dir} --log-level warn"
                .into(),
            cluster_start: Some(
                "{binary} --broker-id {broker_id} --cluster {cluster_file} --data-dir {data_dir} --log-level warn"
                    .into(),
            ),
            ready_timeout_s: default_ready_timeout_s(),
            build_timeout_s: default_build_timeout_s(),
            // What `cargo build -p chronik-broker` reads: the broker crate, the workspace
            // manifest and lock file, and cargo/toolchain settings. The other members'
            // manifests are read too (workspace resolution) but cannot change this binary
            // without changing Cargo.lock.
            build_inputs: [
                "broker-under-test",
                "Cargo.toml",
                "Cargo.lock",
                ".cargo",
                "rust-toolchain",
                "rust-toolchain.toml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl TargetConfig {
    /// `explicit` if given, else the repository's `.chronik-target.toml`, else the defaults.
    pub fn load(explicit: Option<&Path>, repo_root: &Path) -> Result<Self, HarnessError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let found = repo_root.join(TARGET_CONFIG_FILE);
                if !found.exists() {
                    return Ok(Self::default());
                }
                found
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| HarnessError::io(&path, e))?;
        let config: Self = toml::from_str(&text)
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))?;
        for (field, value, needed) in [(
            "start",
            &config.start,
            ["{binary}", "{port}", "{data_dir}"].as_slice(),
        )] {
            for placeholder in needed {
                if !value.contains(placeholder) {
                    return Err(HarnessError::Config(format!(
                        "{}: `{field}` must contain {placeholder}",
                        path.display()
                    )));
                }
            }
        }
        Ok(config)
    }

    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.ready_timeout_s)
    }

    pub fn build_timeout(&self) -> Duration {
        Duration::from_secs(self.build_timeout_s)
    }
}
