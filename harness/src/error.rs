//! Harness errors and exit codes.

use std::path::Path;

use thiserror::Error;

/// `gate` and `compare` exit codes (documented in the README).
pub const EXIT_PASS: u8 = 0;
pub const EXIT_REGRESSION: u8 = 1;
pub const EXIT_INCONCLUSIVE: u8 = 2;
pub const EXIT_INFRA: u8 = 3;
/// `gate` found no baseline for a workload: only its absolute limits were checked, so a
/// relative regression could not have been seen. Never a silent pass.
pub const EXIT_NO_BASELINE: u8 = 4;
/// `git bisect run` convention: this commit cannot be tested.
pub const EXIT_BISECT_SKIP: u8 = 125;
/// `git bisect run` aborts on codes >= 128: an infrastructure failure must never read as "bad".
pub const EXIT_BISECT_ABORT: u8 = 128;

#[derive(Debug, Error)]
pub enum HarnessError {
    #[error("unknown revision {0:?}: {1}")]
    UnknownRev(String, String),
    #[error("git: {0}")]
    Git(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Infra(String),
}

impl HarnessError {
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        HarnessError::Io {
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }
}
