//! Per-partition log: segment files of stored record batches plus a sparse in-memory offset
//! index. Batches arrive here from `pending_batches` when the flush profile says so; the WAL
//! already made them durable, so segments are fsynced only at WAL checkpoints.

mod error;
mod segment;

pub use error::LogError;
pub use segment::{read_batches, ReadPlan};

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch;
use segment::Segment;

/// Segments of one partition, oldest first; the last one is active.
pub struct PartitionLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes_max: u64,
    /// Bytes appended since the last `sync`.
    dirty: bool,
    /// Segments closed by a roll since the last `sync`, not yet fsynced: the roll happens on
    /// the produce path under the partition lock, and their fsync waits for the next `sync`.
    closed_unsynced: Vec<Arc<File>>,
    /// A segment file was created since the last `sync`: the directory needs an fsync.
    dir_unsynced: bool,
    /// Bytes appended since the last `take_writeback`.
    unwritten_bytes: u64,
}

/// `<partition dir>/recovery-point`: the offset below which the log is known durable (Kafka's
/// recovery-point checkpoint). Written after each fsync of the log, before any WAL segment that
/// covers those offsets may be deleted, so on start damage below it is corruption (the WAL no
/// longer holds that data) and damage above it is a torn tail the WAL replays.
const RECOVERY_POINT_FILE: &str = "recovery-point";

/// The segment files to fsync (closed ones, then the active one), whether the directory needs
/// one too, the log end they cover, and where to record it after.
pub struct Unsynced {
    files: Vec<Arc<File>>,
    sync_dir: bool,
    pub end: i64,
    dir: PathBuf,
}

impl Unsynced {
    /// fsyncs the files and, when a segment was created, the directory. Call it outside the
    /// partition lock: it may take many milliseconds.
    pub fn sync(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if self.sync_dir {
            crate::durable_file::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Records `end` as the recovery point, durably (call it after `sync`).
    pub fn record_recovery_point(&self) -> io::Result<()> {
        write_recovery_point(&self.dir, self.end)
    }
}

fn read_recovery_point(dir: &Path) -> Result<i64, LogError> {
    let path = dir.join(RECOVERY_POINT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| LogError::Corrupt {
            path,
            position: 0,
            reason: format!("recovery point {text:?}: {e}"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(LogError::Io { path, source }),
    }
}

fn write_recovery_point(dir: &Path, offset: i64) -> io::Result<()> {
    crate::durable_file::replace_file_durably(
        &dir.join(RECOVERY_POINT_FILE),
        offset.to_string().as_bytes(),
    )
}

/// The active segment's file, for one flush's write outside the partition lock.
pub struct AppendTarget {
    file: Arc<File>,
    end_offset: i64,
}

impl AppendTarget {
    /// Writes `batches` (which must start at the log end) at the end of the file, without
    /// copying them into one buffer.
    pub fn write(&self, batches: &[Bytes]) -> io::Result<()> {
        if let Some(first) = batches.first() {
            assert_eq!(
                batch::base_offset(first),
                self.end_offset,
                "log append must continue at the log end offset"
            );
        }
        segment::write_all(&self.file, batches)
    }
}

/// What opening an existing log found.
#[derive(Debug, Default)]
pub struct LogRecovery {
    pub torn_bytes_cut: u64,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, cutting a torn tail of the active segment.
    /// `on_batch` sees every stored batch, oldest first (to rebuild producer state).
    pub fn open(
        dir: &Path,
        segment_bytes_max: u64,
        mut on_batch: impl FnMut(&[u8]),
    ) -> Result<(Self, LogRecovery), LogError> {
        let io_err = |source| LogError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name
                .strip_suffix(".log")
                .and_then(|s| s.parse::<i64>().ok())
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let recovery_point = read_recovery_point(dir)?;
        let mut recovery = LogRecovery::default();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let (segment, cut) =
                Segment::recover(dir, base, is_last, recovery_point, &mut on_batch)?;
            recovery.torn_bytes_cut += cut;
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0).map_err(io_err)?);
            // The new file's directory entry must survive a power cut like its contents.
            crate::durable_file::sync_dir(dir).map_err(io_err)?;
        } else {
            // After an unclean exit the active segment's tail may exist only in the page
            // cache. The partition counts its whole log as synced (so checkpoints may delete
            // the WAL that covers it): make that true before anyone relies on it.
            segments
                .last_mut()
                .expect("not empty")
                .sync()
                .map_err(io_err)?;
        }
        let end = segments
            .last()
            .expect("a log has an active segment")
            .next_offset;
        if end != recovery_point {
            write_recovery_point(dir, end).map_err(io_err)?;
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segments,
                segment_bytes_max,
                dirty: false,
                closed_unsynced: Vec::new(),
                dir_unsynced: false,
                unwritten_bytes: 0,
            },
            recovery,
        ))
    }

    pub fn start_offset(&self) -> i64 {
        self.segments[0].base_offset
    }

    pub fn end_offset(&self) -> i64 {
        self.active().next_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    /// Where the next batches go, rolling to a new segment first when the active one is full.
    /// The caller writes them outside the partition lock, then calls `appended`; nothing else
    /// appends in between (the partition's flush lock).
    pub fn append_target(&mut self) -> io::Result<AppendTarget> {
        if self.active().size >= self.segment_bytes_max {
            let base = self.end_offset();
            let segment = Segment::create(&self.dir, base)?;
            // The old segment and the new directory entry are fsynced by the next `sync`,
            // before the WAL that covers them may go.
            self.closed_unsynced.push(self.active().file());
            self.dir_unsynced = true;
            self.segments.push(segment);
            tracing::debug!(target: "timeline", event = "segment_roll", base);
        }
        Ok(AppendTarget {
            file: self.active().file(),
            end_offset: self.end_offset(),
        })
    }

    /// Appends stored batches under the caller's lock (replay on start).
    pub fn append(&mut self, batches: &[Bytes]) -> io::Result<()> {
        self.append_target()?.write(batches)?;
        self.appended(batches);
        Ok(())
    }

    /// Records stored batches written through `append_target`.
    pub fn appended(&mut self, batches: &[Bytes]) {
        self.segments
            .last_mut()
            .expect("active")
            .note_written(batches);
        self.dirty = true;
        self.unwritten_bytes += batches.iter().map(|b| b.len() as u64).sum::<u64>();
    }

    /// Cuts the log at the first batch holding `offset` or a later one (batches are never
    /// split) and returns the new end. The files are cut and fsynced and the recovery point
    /// lowered before this returns. A cut below the log start empties the first segment.
    pub fn truncate(&mut self, offset: i64) -> io::Result<i64> {
        if offset >= self.end_offset() {
            return Ok(self.end_offset());
        }
        // The recovery point written below covers the segments kept: closed ones first.
        for file in self.closed_unsynced.drain(..) {
            file.sync_data()?;
        }
        let mut removed = std::mem::take(&mut self.dir_unsynced);
        while self.segments.len() > 1 && self.active().base_offset >= offset {
            self.segments.pop().expect("more than one").delete()?;
            removed = true;
        }
        let end = self
            .segments
            .last_mut()
            .expect("a log always has an active segment")
            .truncate(offset)?;
        if removed {
            crate::durable_file::sync_dir(&self.dir)?;
        }
        write_recovery_point(&self.dir, end)?;
        self.dirty = false;
        Ok(end)
    }

    /// Where to read `offset` from, if the log holds it.
    pub fn plan_read(&self, offset: i64) -> Option<ReadPlan> {
        if offset < self.start_offset() || offset >= self.end_offset() {
            return None;
        }
        let idx = match self
            .segments
            .binary_search_by_key(&offset, |s| s.base_offset)
        {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        Some(self.segments[idx].plan_read(offset))
    }

    /// Deletes the oldest segments while the log is larger than `retention_bytes`.
    /// Returns the new start offset.
    pub fn enforce_retention(&mut self, retention_bytes: Option<u64>) -> io::Result<i64> {
        if let Some(limit) = retention_bytes {
            while self.segments.len() > 1 && self.size_bytes() > limit {
                let oldest = self.segments.remove(0);
                oldest.delete()?;
            }
        }
        Ok(self.start_offset())
    }

    /// What to fsync (see `Unsynced`) if anything was appended since the last call; the caller
    /// fsyncs it outside the partition lock.
    pub fn take_unsynced(&mut self) -> Option<Unsynced> {
        if !self.dirty && self.closed_unsynced.is_empty() {
            return None;
        }
        self.dirty = false;
        let mut files = std::mem::take(&mut self.closed_unsynced);
        files.push(self.active().file());
        Some(Unsynced {
            files,
            sync_dir: std::mem::take(&mut self.dir_unsynced),
            end: self.end_offset(),
            dir: self.dir.clone(),
        })
    }

    /// The files written since the last call once at least `min_bytes` were appended: the
    /// caller fdatasyncs them outside the partition lock so that segment data reaches the disk
    /// a little at a time, not all at once at the checkpoint's fsync, where the burst would
    /// sit in the disk's queue in front of the WAL's fdatasync. With each file, the end of
    /// what may then leave the page cache (`None`: all of it): closed segments whole, the
    /// active one but for its newest `cache_kept_bytes`.
    pub fn take_writeback(
        &mut self,
        min_bytes: u64,
        cache_kept_bytes: u64,
    ) -> Option<Vec<(Arc<File>, Option<u64>)>> {
        if self.unwritten_bytes < min_bytes {
            return None;
        }
        self.unwritten_bytes = 0;
        let mut files: Vec<_> = self
            .closed_unsynced
            .iter()
            .map(|f| (f.clone(), None))
            .collect();
        let active = self.active();
        files.push((
            active.file(),
            Some(active.size.saturating_sub(cache_kept_bytes)),
        ));
        Some(files)
    }

    /// Removes the whole log directory (topic deletion).
    pub fn destroy(self) -> io::Result<()> {
        fs::remove_dir_all(&self.dir)
    }
}
