//! The write-ahead log: framing (`record`), storage (`storage`), the group-commit writer
//! (`group_commit`) and its per-second commit times (`commit_times`), and here recovery on
//! start and the WAL's part of a checkpoint (its durable mark, retiring segments every log has
//! synced past; the rest is `flush`).

mod commit_times;
pub mod group_commit;
pub mod record;
pub mod storage;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use thiserror::Error;

use crate::mutex::lock;
use group_commit::{log_key, ClosedSegment, DurableLog, WalShared};
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
    #[error("WAL directory {} holds segments of format {found}, and this broker reads format {FORMAT} only (each record's CRC includes its segment's number): start the broker version that wrote them, or move the data directory away", dir.display())]
    Format { dir: PathBuf, found: String },
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

/// `<wal dir>/format`: how the segments are written. Format 2 stamps every frame's CRC with
/// its segment's number (`record::SegmentStamp`), so segment files are reused without zeroing. A
/// directory written before (format 1, no file) would read as damaged data, so a broker
/// refuses it by name instead.
const FORMAT_FILE: &str = "format";
const FORMAT: &str = "2";

/// Checks the directory's format, and records it in a directory without segments.
fn check_format(dir: &Path, has_segments: bool) -> Result<(), WalRecoveryError> {
    let path = dir.join(FORMAT_FILE);
    let io_err = |source| WalRecoveryError::Io {
        path: path.clone(),
        source,
    };
    let found = match fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !has_segments => {
            return crate::durable_file::replace_file_durably(&path, FORMAT.as_bytes())
                .map_err(io_err);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "1".to_string(),
        Err(source) => return Err(io_err(source)),
    };
    if found == FORMAT {
        Ok(())
    } else {
        Err(WalRecoveryError::Format {
            dir: dir.to_path_buf(),
            found,
        })
    }
}

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
    crate::durable_file::replace_file_durably(
        &dir.join(DURABLE_MARK_FILE),
        format!("{} {}", mark.0, mark.1).as_bytes(),
    )
}

/// A log the WAL replays into on start: each of its records in the WAL is appended again, or
/// cut there for a recorded truncation, in WAL order.
pub trait ReplayLog: DurableLog {
    fn replay(&self, batch: Bytes) -> Result<(), String>;
    fn replay_truncation(&self, end_offset: i64) -> Result<(), String>;
}

/// Where recovery finds the log of a WAL record (the topics known at start). The WAL knows
/// the logs it replays into only through this, as it knows them only as `DurableLog`s while
/// it writes.
pub trait ReplayLogs {
    fn log(&self, topic_id: u128, partition: i32) -> Option<Arc<dyn ReplayLog>>;
}

/// Replays every WAL segment into the logs of `logs`. Damage past the durable mark in the last
/// segment is a torn tail (never acked) and is cut; damage in fsynced data (any earlier
/// segment, or before the mark) refuses the start.
pub fn recover(dir: &Path, logs: &dyn ReplayLogs) -> Result<RecoveredWal, WalRecoveryError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalRecoveryError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut seqs = storage::list_segments(dir).map_err(io_err(dir))?;
    check_format(dir, !seqs.is_empty())?;
    let mark = read_durable_mark(dir)?;
    // Sequence numbers only grow, whatever is removed below: the durable mark and the
    // retired files name segments of earlier lives.
    let next_seq = seqs.last().map_or(1, |s| s + 1).max(mark.0 + 1);
    remove_unused_segments(dir, &mut seqs, mark)?;
    let mut report = WalRecoveryReport {
        segments: seqs.len(),
        ..WalRecoveryReport::default()
    };
    cut_at_earliest_truncations(dir, &seqs, logs)?;
    let mut closed = Vec::with_capacity(seqs.len());
    for (i, &seq) in seqs.iter().enumerate() {
        let path = storage::segment_path(dir, seq);
        let data = Bytes::from(fs::read(&path).map_err(io_err(&path))?);
        let mut coverage: HashMap<usize, (Weak<dyn DurableLog>, i64)> = HashMap::new();
        let mut pos = 0;
        while pos < data.len() {
            match record::decode(&data.slice(pos..), seq) {
                Decoded::Record(rec, used) => {
                    report.records += 1;
                    if let Some(partition) = logs.log(rec.topic_id, rec.partition) {
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
                        let log: Arc<dyn DurableLog> = partition;
                        let entry = coverage
                            .entry(log_key(&log))
                            .or_insert_with(|| (Arc::downgrade(&log), end));
                        entry.1 = entry.1.max(end);
                    }
                    pos += used;
                }
                Decoded::SegmentEnd => break,
                Decoded::Incomplete | Decoded::Invalid => {
                    let is_last = i + 1 == seqs.len();
                    // Earlier segments were closed by a durable segment-end frame (or, as
                    // written before segments were preallocated, end exactly at a frame).
                    if !is_last || (seq, pos as u64) < mark {
                        return Err(WalRecoveryError::Corrupt {
                            path,
                            position: pos as u64,
                        });
                    }
                    report.torn_bytes_cut += cut_torn_tail(&path, data.len(), pos)?;
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
        next_seq,
        report,
    })
}

/// A follower that cut its log wrote the cut to the WAL between the batches it cut and the
/// ones that replaced them, and the segment files may hold either. Cutting each log at its
/// earliest recorded cut first makes the segments agree with the WAL from there on; the replay
/// then appends the old batches, cuts again, and appends the new ones.
fn cut_at_earliest_truncations(
    dir: &Path,
    seqs: &[u64],
    logs: &dyn ReplayLogs,
) -> Result<(), WalRecoveryError> {
    let mut earliest_cut: HashMap<(u128, i32), i64> = HashMap::new();
    for &seq in seqs {
        let path = storage::segment_path(dir, seq);
        let data = fs::read(&path).map_err(|source| WalRecoveryError::Io {
            path: path.clone(),
            source,
        })?;
        for (topic_id, partition, end) in record::truncations(&Bytes::from(data), seq) {
            let cut = earliest_cut.entry((topic_id, partition)).or_insert(end);
            *cut = (*cut).min(end);
        }
    }
    for ((topic_id, index), end) in earliest_cut {
        if let Some(partition) = logs.log(topic_id, index) {
            partition
                .replay_truncation(end)
                .map_err(WalRecoveryError::Replay)?;
        }
    }
    Ok(())
}

/// Cuts the torn tail of the last WAL segment (`len` bytes long) at `pos`, durably; the bytes
/// cut.
fn cut_torn_tail(path: &Path, len: usize, pos: usize) -> Result<u64, WalRecoveryError> {
    let io_err = |source| WalRecoveryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let cut = (len - pos) as u64;
    tracing::warn!(
        "cut {cut} torn bytes at the tail of WAL segment {}",
        path.display()
    );
    let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    file.set_len(pos as u64).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(cut)
}

/// Removes trailing segments that hold no record of their own and no durable byte: prepared
/// in advance (`storage::FileWalStorage`, maybe from a file that holds records of an earlier
/// segment) and never written, or torn in their first write.
fn remove_unused_segments(
    dir: &Path,
    seqs: &mut Vec<u64>,
    mark: DurableMark,
) -> Result<(), WalRecoveryError> {
    let mut removed = false;
    while let Some(&seq) = seqs.last() {
        let path = storage::segment_path(dir, seq);
        let io_err = |source| WalRecoveryError::Io {
            path: path.clone(),
            source,
        };
        let data = Bytes::from(fs::read(&path).map_err(io_err)?);
        let written = matches!(
            record::decode(&data, seq),
            Decoded::Record(..) | Decoded::SegmentEnd
        );
        let durable = mark.0 == seq && mark.1 > 0;
        if written || durable {
            break;
        }
        fs::remove_file(&path).map_err(io_err)?;
        seqs.pop();
        removed = true;
    }
    if removed {
        crate::durable_file::sync_dir(dir).map_err(|source| WalRecoveryError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Writes the WAL's durable mark (what the writer last fsynced) if it moved since the last
/// call: recovery reads it to tell a torn tail from damaged durable data. Part of every
/// checkpoint (`flush::Flusher::checkpoint`).
pub fn record_durable_mark(dir: &Path, shared: &WalShared) -> std::io::Result<()> {
    let synced = *lock(&shared.synced);
    let mut recorded = lock(&shared.recorded);
    if synced > *recorded {
        write_durable_mark(dir, synced)?;
        *recorded = synced;
    }
    Ok(())
}

/// Retires the oldest closed segments whose logs are each synced past what the segment holds
/// of them (`DurableLog::synced_end`); returns how many went.
pub fn retire_covered_segments(dir: &Path, shared: &WalShared) -> std::io::Result<usize> {
    let mut closed = lock(&shared.closed);
    let mut retired = 0;
    while let Some(oldest) = closed.first() {
        let covered = oldest
            .coverage
            .iter()
            .all(|(weak, end)| weak.upgrade().is_none_or(|log| log.synced_end() >= *end));
        if !covered {
            break;
        }
        storage::retire(dir, oldest.seq)?;
        closed.remove(0);
        retired += 1;
    }
    if retired > 0 {
        crate::durable_file::sync_dir(dir)?;
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cluster::Cluster;
    use crate::topics::{Placement, TopicRegistry};

    /// Records of a topic no broker has, as written into segment `seq`: recovery checks and
    /// counts them, replays nothing.
    fn frames(count: usize, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..count {
            let start = out.len();
            out.extend_from_slice(&record::encode(7, 0, &[1u8; 70], i as i64, 0).0);
            record::SegmentStamp::of(seq).apply(&mut out[start..]);
        }
        out
    }

    fn recover_in(dir: &Path) -> Result<RecoveredWal, WalRecoveryError> {
        let topics = TopicRegistry::open(
            dir,
            1 << 20,
            16,
            Placement {
                cluster: Cluster::single(1, "127.0.0.1:9092".parse().unwrap()),
                replica_lag_time_max: Duration::from_secs(10),
                keeper: Arc::new(tokio::sync::Notify::new()),
                alter_isr: None,
            },
        )
        .unwrap();
        recover(&dir.join("wal"), &topics)
    }

    /// Writes segment `seq`: `data`, then zeros up to `preallocated` bytes.
    fn segment(dir: &Path, seq: u64, data: &[u8], preallocated: usize) {
        segment_over(dir, seq, data, &vec![0; preallocated]);
    }

    /// Writes segment `seq` as a reused file whose old bytes were `old`: `data`, then the rest
    /// of `old`.
    fn segment_over(dir: &Path, seq: u64, data: &[u8], old: &[u8]) {
        let wal = dir.join("wal");
        fs::create_dir_all(&wal).unwrap();
        fs::write(wal.join(FORMAT_FILE), FORMAT).unwrap();
        let mut bytes = data.to_vec();
        if old.len() > data.len() {
            bytes.extend_from_slice(&old[data.len()..]);
        }
        fs::write(storage::segment_path(&wal, seq), bytes).unwrap();
    }

    fn closed(count: usize, seq: u64) -> Vec<u8> {
        let mut data = frames(count, seq);
        data.extend_from_slice(&record::encode_segment_end(seq));
        data
    }

    #[test]
    fn closed_active_and_prepared_segments_recover() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &closed(3, 1), 4096);
        segment(dir.path(), 2, &frames(2, 2), 4096);
        segment(dir.path(), 3, &[], 4096); // prepared, never written
        let recovered = recover_in(dir.path()).unwrap();
        assert_eq!(recovered.report.records, 5);
        assert_eq!(recovered.next_seq, 4, "numbers are not reused");
        assert!(!storage::segment_path(&dir.path().join("wal"), 3).exists());
        // The active segment's zero tail was past the durable mark (none recorded): cut.
        let active = fs::metadata(storage::segment_path(&dir.path().join("wal"), 2)).unwrap();
        assert_eq!(active.len(), frames(2, 2).len() as u64);
    }

    #[test]
    fn a_closed_segment_that_ends_exactly_at_a_frame_recovers() {
        // As written before segments were preallocated: no end frame, no zeros.
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &frames(3, 1), 0);
        segment(dir.path(), 2, &frames(1, 2), 0);
        assert_eq!(recover_in(dir.path()).unwrap().report.records, 4);
    }

    #[test]
    fn a_closed_segment_without_its_end_frame_refuses_to_start() {
        // Its tail was lost: zeros where the end frame (and maybe records) were.
        for lost in [1, record::SEGMENT_END_BYTES, record::SEGMENT_END_BYTES + 40] {
            let dir = tempfile::tempdir().unwrap();
            let data = closed(3, 1);
            segment(dir.path(), 1, &data[..data.len() - lost], 4096);
            segment(dir.path(), 2, &frames(1, 2), 4096);
            match recover_in(dir.path()) {
                Err(WalRecoveryError::Corrupt { path, .. }) => {
                    assert_eq!(path, storage::segment_path(&dir.path().join("wal"), 1))
                }
                Err(other) => panic!("lost {lost}: {other}"),
                Ok(_) => panic!("lost {lost}: recovered"),
            }
        }
    }

    #[test]
    fn a_zeroed_last_segment_with_durable_bytes_refuses_to_start() {
        // The durable mark says bytes of segment 2 were fsynced: zeros there are damage, not a
        // prepared segment.
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &closed(2, 1), 4096);
        segment(dir.path(), 2, &[], 4096);
        write_durable_mark(&dir.path().join("wal"), (2, 200)).unwrap();
        assert!(matches!(
            recover_in(dir.path()),
            Err(WalRecoveryError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_reused_file_shows_only_the_records_of_its_new_segment() {
        // Segments 1 and 2 are files of earlier segments 5 and 6, reused as they were.
        // Segment 1 ended; 2 is the active one, 3 was prepared and never written.
        let dir = tempfile::tempdir().unwrap();
        let old = [closed(40, 5), closed(40, 6), closed(40, 7)];
        segment_over(dir.path(), 1, &closed(3, 1), &old[0]);
        segment_over(dir.path(), 2, &frames(2, 2), &old[1]);
        segment_over(dir.path(), 3, &[], &old[2]);
        let recovered = recover_in(dir.path()).unwrap();
        assert_eq!(recovered.report.records, 5, "no record of segments 5-7");
        assert!(!storage::segment_path(&dir.path().join("wal"), 3).exists());
        let active = fs::metadata(storage::segment_path(&dir.path().join("wal"), 2)).unwrap();
        assert_eq!(active.len(), frames(2, 2).len() as u64, "old records cut");
        assert_eq!(
            recovered.report.torn_bytes_cut,
            (old[1].len() - frames(2, 2).len()) as u64
        );
    }

    #[test]
    fn a_reused_closed_segment_that_lost_its_end_refuses_to_start() {
        // Old records follow where the end frame was: they are not the segment's.
        let dir = tempfile::tempdir().unwrap();
        let data = closed(3, 1);
        let end = data.len() - record::SEGMENT_END_BYTES;
        segment_over(dir.path(), 1, &data[..end], &closed(40, 9));
        segment(dir.path(), 2, &frames(1, 2), 4096);
        assert!(matches!(
            recover_in(dir.path()),
            Err(WalRecoveryError::Corrupt { position, .. }) if position == end as u64
        ));
    }

    #[test]
    fn a_directory_of_another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        recover_in(dir.path()).unwrap();
        let format = dir.path().join("wal").join(FORMAT_FILE);
        assert_eq!(
            fs::read_to_string(&format).unwrap(),
            FORMAT,
            "a new WAL says its format"
        );
        segment(dir.path(), 1, &frames(2, 1), 4096);
        assert_eq!(recover_in(dir.path()).unwrap().report.records, 2);
        fs::remove_file(&format).unwrap();
        match recover_in(dir.path()) {
            Err(WalRecoveryError::Format { found, .. }) => assert_eq!(found, "1"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("recovered a WAL of format 1"),
        }
    }
}
