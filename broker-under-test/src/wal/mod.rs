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
use record::{Decoded, WalEntry};

#[derive(Debug, Error)]
pub enum WalRecoveryError {
    #[error("I/O error reading WAL {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL segment {path} is corrupt at byte {position}, inside data already fsynced (acked records may be damaged): refusing to start; restore the data directory from a backup")]
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

/// `<wal dir>/durable`: "SEQ LEN", a segment and how many of its bytes were fsynced when a
/// checkpoint last looked. Recovery needs it to tell a torn tail from damaged durable data
/// without reading what follows the damage (those are bytes a client chose, and after a power
/// cut a page in the middle of the last unsynced write may be lost while later ones persist).
const DURABLE_MARK_FILE: &str = "durable";

/// A position in the WAL: (segment sequence number, byte in that segment).
pub type DurableMark = (u64, u64);

fn read_durable_mark(dir: &Path) -> Result<DurableMark, WalRecoveryError> {
    let path = dir.join(DURABLE_MARK_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(source) => return Err(WalRecoveryError::Io { path, source }),
    };
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(seq)), Some(Ok(len))) => Ok((seq, len)),
        _ => Err(WalRecoveryError::Replay(format!(
            "{}: unreadable durable mark {text:?}",
            path.display()
        ))),
    }
}

fn write_durable_mark(dir: &Path, mark: DurableMark) -> std::io::Result<()> {
    storage::replace_file_durably(
        &dir.join(DURABLE_MARK_FILE),
        format!("{} {}", mark.0, mark.1).as_bytes(),
    )
}

/// Replays every WAL segment into the partitions of `topics`. Damage past the durable mark in
/// the last segment is a torn tail (never acked) and is cut; damage in fsynced data (any
/// earlier segment, or before the mark) refuses the start.
pub fn recover(dir: &Path, topics: &TopicRegistry) -> Result<RecoveredWal, WalRecoveryError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalRecoveryError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let seqs = storage::list_segments(dir).map_err(io_err(dir))?;
    let mark = read_durable_mark(dir)?;
    let mut report = WalRecoveryReport {
        segments: seqs.len(),
        ..WalRecoveryReport::default()
    };
    // A follower that cut its log wrote the cut to the WAL between the batches it cut and
    // the ones that replaced them, and the segment files may hold either. Cutting each log at
    // its earliest recorded cut first makes the segments agree with the WAL from there on;
    // the replay below then appends the old batches, cuts again, and appends the new ones.
    let mut earliest_cut: HashMap<(u128, i32), i64> = HashMap::new();
    for &seq in &seqs {
        let path = storage::segment_path(dir, seq);
        let data = Bytes::from(fs::read(&path).map_err(io_err(&path))?);
        for (topic_id, partition, end) in record::truncations(&data) {
            let cut = earliest_cut.entry((topic_id, partition)).or_insert(end);
            *cut = (*cut).min(end);
        }
    }
    for ((topic_id, index), end) in earliest_cut {
        if let Some(partition) = topics.by_id(topic_id, index) {
            partition
                .replay_truncation(end)
                .map_err(WalRecoveryError::Replay)?;
        }
    }
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
                        let end = match rec.entry {
                            WalEntry::Batch(batch) => {
                                let end = crate::batch::last_offset(&batch) + 1;
                                partition.replay(batch).map_err(WalRecoveryError::Replay)?;
                                end
                            }
                            WalEntry::Truncation(end) => {
                                partition
                                    .replay_truncation(end)
                                    .map_err(WalRecoveryError::Replay)?;
                                end
                            }
                        };
                        let entry = coverage
                            .entry(Arc::as_ptr(&partition) as usize)
                            .or_insert_with(|| (Arc::downgrade(&partition), end));
                        entry.1 = entry.1.max(end);
                    }
                    pos += used;
                }
                Decoded::Incomplete | Decoded::Invalid => {
                    let is_last = i + 1 == seqs.len();
                    // Earlier segments were fsynced whole before the next one was created.
                    if !is_last || (seq, pos as u64) < mark {
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

/// Periodic housekeeping: records the WAL's durable mark; flushes aged `pending_batches` to the
/// segment logs; when closed WAL segments exist, flushes and fsyncs every log and deletes the
/// segments they fully cover.
pub fn checkpoint(
    dir: &Path,
    shared: &WalShared,
    topics: &TopicRegistry,
    profile: &ProduceFlushProfile,
    retention_bytes: Option<u64>,
) -> std::io::Result<usize> {
    let synced = *lock(&shared.synced);
    let mut recorded = lock(&shared.recorded);
    if synced > *recorded {
        write_durable_mark(dir, synced)?;
        *recorded = synced;
    }
    drop(recorded);
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
