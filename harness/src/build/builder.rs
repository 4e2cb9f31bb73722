//! Builds a commit at most once: the commit's tree is synced into one checkout directory with
//! git2 (only changed files are rewritten, so cargo rebuilds only what changed), the build runs
//! with a shared `CARGO_TARGET_DIR`, and the resulting binary is copied into a cache keyed by
//! the commit's build inputs (`TargetConfig::build_inputs`), so commits that do not touch them
//! reuse it. A failing build is recorded (with its log tail) and never retried for the same
//! inputs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::build::git::{CommitInfo, TargetRepo};
use crate::build::process::{tail, GroupChild};
use crate::build::target::TargetConfig;
use crate::error::HarnessError;

/// Lines of build log kept in a `build_failed` record.
const BUILD_LOG_TAIL_LINES: usize = 40;
const BUILT_BINARY: &str = "broker";
const FAILED_MARKER: &str = "BUILD_FAILED";
/// Under `<work dir>/checkouts/`: the one source directory builds run in, and its lock.
const CHECKOUT_DIR: &str = "src";
const CHECKOUT_LOCK: &str = "src.lock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    Built { binary: PathBuf, cached: bool },
    Failed { log_tail: String },
}

pub struct Builder<'a> {
    pub repo: &'a TargetRepo,
    pub target: &'a TargetConfig,
    /// `<work dir>`: holds `checkouts/src`, `bin/<build key>/` and the shared `target/`.
    pub work_dir: PathBuf,
}

impl Builder<'_> {
    fn cache_dir(&self, commit: &CommitInfo) -> Result<PathBuf, HarnessError> {
        let key = self.repo.build_key(commit, &self.target.build_inputs)?;
        Ok(self.work_dir.join("bin").join(key))
    }

    pub fn shared_target_dir(&self) -> PathBuf {
        self.work_dir.join("target")
    }

    /// Returns the commit's broker binary, building it if it is not cached.
    pub fn build(&self, commit: &CommitInfo) -> Result<BuildOutcome, HarnessError> {
        let cache = self.cache_dir(commit)?;
        let cached = cache.join(BUILT_BINARY);
        if cached.exists() {
            return Ok(BuildOutcome::Built {
                binary: cached,
                cached: true,
            });
        }
        if let Ok(log_tail) = fs::read_to_string(cache.join(FAILED_MARKER)) {
            return Ok(BuildOutcome::Failed { log_tail });
        }
        fs::create_dir_all(&cache).map_err(|e| HarnessError::io(&cache, e))?;
        // One checkout directory, synced file by file, so cargo sees the same path for every
        // commit and rebuilds only what changed (per-commit directories made every path
        // dependency a new package, compiled from scratch). The lock keeps two harness runs
        // on one work dir from building in it at once.
        let checkouts = self.work_dir.join("checkouts");
        fs::create_dir_all(&checkouts).map_err(|e| HarnessError::io(&checkouts, e))?;
        let lock_path = checkouts.join(CHECKOUT_LOCK);
        let lock = fs::File::create(&lock_path).map_err(|e| HarnessError::io(&lock_path, e))?;
        lock.lock().map_err(|e| HarnessError::io(&lock_path, e))?;
        let checkout = checkouts.join(CHECKOUT_DIR);
        fs::create_dir_all(&checkout).map_err(|e| HarnessError::io(&checkout, e))?;
        self.repo.sync_tree(commit, &checkout)?;
        let log_path = cache.join("build.log");
        let log = fs::File::create(&log_path).map_err(|e| HarnessError::io(&log_path, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io(&log_path, e))?;
        let target_dir = self.shared_target_dir();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.target.build)
            .current_dir(&checkout)
            .env("CARGO_TARGET_DIR", &target_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = GroupChild::spawn(command)
            .map_err(|e| HarnessError::Infra(format!("starting the build: {e}")))?;
        let status = child.wait_timeout(self.target.build_timeout());
        let failure = match status {
            None => {
                child.stop();
                Some(format!(
                    "build timed out after {} s",
                    self.target.build_timeout_s
                ))
            }
            Some(s) if !s.success() => Some(format!("build exited with {s}")),
            Some(_) => None,
        };
        let binary = checkout.join(
            self.target
                .binary
                .replace("{target_dir}", &target_dir.display().to_string()),
        );
        let failure = failure.or_else(|| {
            (!binary.exists())
                .then(|| format!("build succeeded but {} does not exist", binary.display()))
        });
        if let Some(reason) = failure {
            let log_tail = format!("{reason}\n{}", tail(&log_path, BUILD_LOG_TAIL_LINES));
            fs::write(cache.join(FAILED_MARKER), &log_tail)
                .map_err(|e| HarnessError::io(&cache, e))?;
            return Ok(BuildOutcome::Failed { log_tail });
        }
        let staging = cache.join("broker.partial");
        fs::copy(&binary, &staging).map_err(|e| HarnessError::io(&binary, e))?;
        fs::rename(&staging, &cached).map_err(|e| HarnessError::io(&cached, e))?;
        Ok(BuildOutcome::Built {
            binary: cached,
            cached: false,
        })
    }
}

/// Path of a built binary in the cache, for display.
pub fn describe(outcome: &BuildOutcome) -> String {
    match outcome {
        BuildOutcome::Built { binary, cached } => {
            format!(
                "{} ({})",
                binary.display(),
                if *cached { "cached" } else { "built" }
            )
        }
        BuildOutcome::Failed { .. } => "build failed".into(),
    }
}

pub fn is_built(outcome: &BuildOutcome) -> Option<&Path> {
    match outcome {
        BuildOutcome::Built { binary, .. } => Some(binary),
        BuildOutcome::Failed { .. } => None,
    }
}
