//! Per-partition log: segment files of stored record batches plus a sparse in-memory offset
//! index. Batches arrive here from `pending_batches` when the flush profile says so; the WAL
//! already made them durable, so segments are fsynced only at WAL checkpoints.

mod segment;

pub use segment::{read_batches, ReadPlan};

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::batch;
use segment::Segment;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("I/O error in partition log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("partition log {path} is corrupt at byte {position}: {reason} (valid data follows, refusing to cut it)")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
}

/// Segments of one partition, oldest first; the last one is active.
pub struct PartitionLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes_max: u64,
    /// Bytes appended since the last `sync`.
    dirty: bool,
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
        let mut recovery = LogRecovery::default();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let (segment, cut) = Segment::recover(dir, base, is_last, &mut on_batch)?;
            recovery.torn_bytes_cut += cut;
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0).map_err(io_err)?);
            // The new file's directory entry must survive a power cut like its contents.
            crate::wal::storage::sync_dir(dir).map_err(io_err)?;
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
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segments,
                segment_bytes_max,
                dirty: false,
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

    /// Appends stored batches (base offsets assigned, dense and in order).
    pub fn append(&mut self, batches: &[Bytes]) -> io::Result<()> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        assert_eq!(
            batch::base_offset(first),
            self.end_offset(),
            "log append must continue at the log end offset"
        );
        if self.active().size >= self.segment_bytes_max {
            let base = self.end_offset();
            let old = self.segments.last_mut().expect("active");
            old.sync()?;
            self.segments.push(Segment::create(&self.dir, base)?);
            crate::wal::storage::sync_dir(&self.dir)?;
        }
        self.segments.last_mut().expect("active").append(batches)?;
        self.dirty = true;
        Ok(())
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

    /// The active segment's file and end offset if anything was appended since the last call;
    /// the caller fsyncs it outside the partition lock (an fsync can take many milliseconds).
    pub fn take_unsynced(&mut self) -> Option<(Arc<File>, i64)> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some((self.active().file(), self.end_offset()))
    }

    /// Removes the whole log directory (topic deletion).
    pub fn destroy(self) -> io::Result<()> {
        fs::remove_dir_all(&self.dir)
    }
}
