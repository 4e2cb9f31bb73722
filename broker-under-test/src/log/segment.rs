//! One segment file `<base offset>.log`: stored batches back to back, and a sparse index of
//! (batch base offset, file position) taken every `INDEX_INTERVAL_BYTES`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::error::LogError;
use crate::batch;

/// One index entry per this many bytes of log: a read scans at most this far.
const INDEX_INTERVAL_BYTES: u64 = 4096;

pub struct Segment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    path: PathBuf,
    file: Arc<File>,
    index: Vec<(i64, u64)>,
    last_indexed_pos: Option<u64>,
}

/// A read of one segment, planned under the partition lock and executed outside it: the bytes
/// below `end_pos` never change once written.
pub struct ReadPlan {
    file: Arc<File>,
    start_pos: u64,
    end_pos: u64,
}

pub(super) fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

impl Segment {
    pub fn create(dir: &Path, base_offset: i64) -> io::Result<Self> {
        let path = segment_path(dir, base_offset);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        Ok(Self {
            base_offset,
            next_offset: base_offset,
            size: 0,
            path,
            file: Arc::new(file),
            index: Vec::new(),
            last_indexed_pos: None,
        })
    }

    /// Scans an existing segment, rebuilding the index. Damage at or past `recovery_point` is
    /// a torn tail (never fsynced; the WAL still holds it) and is cut, in any segment (the
    /// caller drops the later ones); damage below it refuses the start.
    pub fn recover(
        dir: &Path,
        base_offset: i64,
        recovery_point: i64,
        on_batch: &mut impl FnMut(&[u8]),
    ) -> Result<(Self, u64), LogError> {
        let path = segment_path(dir, base_offset);
        let io_err = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let data = fs::read(&path).map_err(io_err)?;
        let mut segment = Self::create(dir, base_offset).map_err(io_err)?;
        let mut pos = 0usize;
        let mut reason = None;
        while pos < data.len() {
            let rest = &data[pos..];
            if let Err(err) = batch::check_stored(rest) {
                reason = Some(err.to_string());
                break;
            }
            let len = batch::framed_len(rest).expect("checked");
            let stored = &rest[..len];
            if batch::base_offset(stored) != segment.next_offset {
                reason = Some(format!(
                    "batch base offset {} where {} was expected",
                    batch::base_offset(stored),
                    segment.next_offset
                ));
                break;
            }
            on_batch(stored);
            segment.note_appended(stored, pos as u64);
            pos += len;
        }
        let cut = (data.len() - pos) as u64;
        if let Some(reason) = reason {
            if segment.next_offset < recovery_point {
                return Err(LogError::Corrupt {
                    path,
                    position: pos as u64,
                    reason,
                });
            }
            tracing::warn!(
                "cut {cut} torn bytes at the tail of {} ({reason})",
                path.display()
            );
            segment.file.set_len(pos as u64).map_err(io_err)?;
            segment.file.sync_all().map_err(io_err)?;
        }
        Ok((segment, cut))
    }

    fn note_appended(&mut self, stored: &[u8], pos: u64) {
        if self
            .last_indexed_pos
            .is_none_or(|last| pos - last >= INDEX_INTERVAL_BYTES)
        {
            self.index.push((batch::base_offset(stored), pos));
            self.last_indexed_pos = Some(pos);
        }
        self.next_offset = batch::last_offset(stored) + 1;
        self.size = pos + stored.len() as u64;
    }

    /// Records batches just written at the end of the file (`write_all`).
    pub fn note_written(&mut self, batches: &[Bytes]) {
        let mut pos = self.size;
        for stored in batches {
            self.note_appended(stored, pos);
            pos += stored.len() as u64;
        }
    }

    pub fn plan_read(&self, offset: i64) -> ReadPlan {
        let idx = self.index.partition_point(|&(base, _)| base <= offset);
        let start_pos = if idx == 0 { 0 } else { self.index[idx - 1].1 };
        ReadPlan {
            file: self.file.clone(),
            start_pos,
            end_pos: self.size,
        }
    }

    /// Cuts the file before the first batch that holds `offset` or a later one, fsyncs it,
    /// and returns the new next offset.
    pub fn truncate(&mut self, offset: i64) -> io::Result<i64> {
        let idx = self.index.partition_point(|&(base, _)| base <= offset);
        let (mut next_offset, mut pos) = match idx.checked_sub(1) {
            Some(i) => self.index[i],
            None => (self.base_offset, 0),
        };
        let mut header = [0u8; batch::BATCH_HEADER_BYTES];
        while pos < self.size {
            self.file.read_exact_at(&mut header, pos)?;
            if batch::last_offset(&header) >= offset {
                break;
            }
            next_offset = batch::last_offset(&header) + 1;
            pos += batch::framed_len(&header)
                .filter(|&len| len >= batch::BATCH_HEADER_BYTES)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "bad batch length at position {pos} of {}",
                            self.path.display()
                        ),
                    )
                })? as u64;
        }
        if pos < self.size {
            next_offset = batch::base_offset(&header);
        }
        self.file.set_len(pos)?;
        self.file.sync_all()?;
        self.size = pos;
        self.next_offset = next_offset;
        self.index.retain(|&(_, at)| at < pos);
        self.last_indexed_pos = self.index.last().map(|&(_, at)| at);
        Ok(next_offset)
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn delete(self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }
}

/// Appends `batches` to `file` (opened for appending) with vectored writes: the batches are
/// written from where they are, not copied into one buffer first.
pub fn write_all(file: &File, batches: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batches.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match (&*file).write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut rest, written),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Reads whole batches from `plan`, starting with the batch that holds `offset`, up to
/// `max_bytes` (but always at least that first batch, so a large batch cannot stall a consumer),
/// and only batches that end below `end_offset` (the reader's bound: the high watermark for a
/// consumer, while the segment may already hold what followers have not copied yet).
pub fn read_batches(
    plan: &ReadPlan,
    offset: i64,
    max_bytes: usize,
    end_offset: i64,
) -> io::Result<Bytes> {
    let mut header = [0u8; batch::BATCH_HEADER_BYTES];
    let mut pos = plan.start_pos;
    let first_len = loop {
        if pos + header.len() as u64 > plan.end_pos {
            return Ok(Bytes::new());
        }
        plan.file.read_exact_at(&mut header, pos)?;
        let len = batch::framed_len(&header).unwrap_or(0) as u64;
        if len == 0 || pos + len > plan.end_pos {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad batch length at position {pos}"),
            ));
        }
        if batch::last_offset(&header) >= offset {
            break len;
        }
        pos += len;
    };
    let want = (max_bytes as u64).max(first_len).min(plan.end_pos - pos);
    let mut buf = BytesMut::zeroed(want as usize);
    plan.file.read_exact_at(&mut buf, pos)?;
    // Keep whole batches below the bound only.
    let mut keep = 0usize;
    while let Some(len) = batch::framed_len(&buf[keep..]) {
        if len < batch::BATCH_HEADER_BYTES
            || keep + len > buf.len()
            || batch::last_offset(&buf[keep..]) >= end_offset
        {
            break;
        }
        keep += len;
    }
    buf.truncate(keep);
    Ok(buf.freeze())
}
