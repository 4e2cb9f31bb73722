//! The write-ahead log: framing (`record`), storage (`storage`), the group-commit writer
//! (`group_commit`), and here recovery on start and checkpointing while running.

pub mod group_commit;
pub mod record;
pub mod storage;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use thiserror::Error;

use crate::partition::Partition;
use crate::profile::ProduceFlushProfile;
use crate::topics::TopicRegistry;
use group_commit::{lock, ClosedSegment, WalShared};
use record::Decoded;

#[derive(Debug, Error)]
pub enum WalRecoveryError {
    #[error("I/O error reading WAL {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL segment {path} is corrupt at byte {position} and valid records follow: refusing to start (restore the data directory or remove the segment by hand knowing acked data may be lost)")]
    Corrupt { path: PathBuf, position: u64 },
    #[error("WAL replay failed: {0}")]
    Replay(String),
}

/// What recovery found, for the start-up log line.
#[derive(Debug, Default)]
pub struct WalRecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub torn_bytes_cut: u64,
}

/// Result of replaying the WAL directory into the partitions.
pub struct RecoveredWal {
    pub closed: Vec<ClosedSegment>,
    pub next_seq: u64,
    pub report: WalRecoveryReport,
}

/// Whether a valid record starts anywhere in `data` at or after `from`.
fn valid_record_after(data: &Bytes, from: usize) -> bool {
    (from..data.len()).any(|at| matches!(record::decode(&data.slice(at..)), Decoded::Record(..)))
}

/// Replays every WAL segment into the partitions of `topics`. A torn tail of the last segment
/// (nothing valid after the damage) is cut; damage with valid records after it is an error.
pub fn recover(dir: &Path, topics: &TopicRegistry) -> Result<RecoveredWal, WalRecoveryError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalRecoveryError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let seqs = storage::list_segments(dir).map_err(io_err(dir))?;
    let mut report = WalRecoveryReport {
        segments: seqs.len(),
        ..WalRecoveryReport::default()
    };
    let mut closed = Vec::with_capacity(seqs.len());
    for (i, &seq) in seqs.iter().enumerate() {
        let path = storage::segment_path(dir, seq);
        let data = Bytes::from(fs::read(&path).map_err(io_err(&path))?);
        let mut coverage: HashMap<usize, (Weak<Partition>, i64)> = HashMap::new();
        let mut pos = 0;
        while pos < data.len() {
            match record::decode(&data.slice(pos..)) {
                Decoded::Record(rec, used) => {
                    report.records += 1;
                    if let Some(partition) = topics.by_id(rec.topic_id, rec.partition) {
                        let end = crate::batch::last_offset(&rec.batch) + 1;
                        partition
                            .replay(rec.batch)
                            .map_err(WalRecoveryError::Replay)?;
                        let entry = coverage
                            .entry(Arc::as_ptr(&partition) as usize)
                            .or_insert_with(|| (Arc::downgrade(&partition), end));
                        entry.1 = entry.1.max(end);
                    }
                    pos += used;
                }
                Decoded::Incomplete | Decoded::Invalid => {
                    let is_last = i + 1 == seqs.len();
                    if !is_last || valid_record_after(&data, pos + 1) {
                        return Err(WalRecoveryError::Corrupt {
                            path,
                            position: pos as u64,
                        });
                    }
                    let cut = (data.len() - pos) as u64;
                    tracing::warn!(
                        "cut {cut} torn bytes at the tail of WAL segment {}",
                        path.display()
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    file.set_len(pos as u64).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                    report.torn_bytes_cut += cut;
                    break;
                }
            }
        }
        closed.push(ClosedSegment {
            seq,
            coverage: coverage.into_values().collect(),
        });
    }
    Ok(RecoveredWal {
        closed,
        next_seq: seqs.last().map_or(1, |s| s + 1),
        report,
    })
}

/// Periodic housekeeping: flushes aged `pending_batches` to the segment logs; when closed WAL
/// segments exist, flushes and fsyncs every log and deletes the segments they fully cover.
pub fn checkpoint(
    dir: &Path,
    shared: &WalShared,
    topics: &TopicRegistry,
    profile: &ProduceFlushProfile,
    retention_bytes: Option<u64>,
) -> std::io::Result<usize> {
    let partitions = topics.all_partitions();
    let have_closed = !lock(&shared.closed).is_empty();
    for partition in &partitions {
        partition.flush_if_needed(profile, have_closed, retention_bytes)?;
        if have_closed {
            partition.sync_log()?;
        }
    }
    if !have_closed {
        return Ok(0);
    }
    let mut closed = lock(&shared.closed);
    let mut deleted = 0;
    while let Some(oldest) = closed.first() {
        let covered = oldest
            .coverage
            .iter()
            .all(|(weak, end)| weak.upgrade().is_none_or(|p| p.synced_end() >= *end));
        if !covered {
            break;
        }
        fs::remove_file(storage::segment_path(dir, oldest.seq))?;
        closed.remove(0);
        deleted += 1;
    }
    if deleted > 0 {
        storage::sync_dir(dir)?;
    }
    Ok(deleted)
}
