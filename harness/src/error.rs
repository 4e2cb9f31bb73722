//! Harness errors (the exit codes they map to are in `decision`).

use std::path::Path;

use thiserror::Error;

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
