//! How a partition log fails: I/O, or damage in data already durable.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("I/O error in partition log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("partition log {path} is corrupt at byte {position}: {reason} (the damage is in data already durable, which the WAL no longer holds: cutting it would lose acked records and hand their offsets out again; restore the data directory)")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
}
