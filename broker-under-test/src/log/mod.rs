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
    /// Segments removed after a gap or damage above the recovery point (the WAL replays them).
    pub segments_dropped: usize,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, cutting a torn tail (damage above the recovery
    /// point) and removing the segments after a gap or a cut above it.
    /// `on_batch` sees every stored batch, oldest first (to rebuild producer state).
    pub fn open(
        dir: &Path,
        segment_bytes_max: u64,
        on_batch: impl FnMut(&[u8]),
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
        let mut segments = recover_segments(dir, &bases, recovery_point, &mut recovery, on_batch)?;
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0).map_err(io_err)?);
            // The new file's directory entry must survive a power cut like its contents.
            crate::durable_file::sync_dir(dir).map_err(io_err)?;
        } else {
            sync_unsynced(
                dir,
                &mut segments,
                recovery_point,
                recovery.segments_dropped > 0,
            )
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
                // Until the directory is fsynced, a power cut may bring the segment back.
                self.dir_unsynced = true;
            }
        }
        Ok(self.start_offset())
    }

    /// What to fsync (see `Unsynced`) if anything was appended since the last call; the caller
    /// fsyncs it outside the partition lock.
    pub fn take_unsynced(&mut self) -> Option<Unsynced> {
        if !self.dirty && self.closed_unsynced.is_empty() && !self.dir_unsynced {
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

/// Recovers the segments at `bases` (offset order) in turn. A gap, or damage cut short of a
/// segment's end, above the recovery point ends the log there: the WAL holds every batch from
/// there on and its replay writes them again, so the later segments are removed (kept, they
/// would hide the missing batches from the replay). Below the recovery point either refuses.
fn recover_segments(
    dir: &Path,
    bases: &[i64],
    recovery_point: i64,
    recovery: &mut LogRecovery,
    mut on_batch: impl FnMut(&[u8]),
) -> Result<Vec<Segment>, LogError> {
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
    // Segments from this index on are removed.
    let mut kept = bases.len();
    for (i, &base) in bases.iter().enumerate() {
        if let Some(expected) = segments.last().map(|s| s.next_offset) {
            if base != expected {
                if expected < recovery_point {
                    return Err(LogError::Corrupt {
                        path: segment::segment_path(dir, base),
                        position: 0,
                        reason: format!(
                            "the segment starts at offset {base} where the one before ends at {expected}, below the recovery point {recovery_point}: fsynced data is missing"
                        ),
                    });
                }
                kept = i;
                break;
            }
        }
        let (segment, cut) = Segment::recover(dir, base, recovery_point, &mut on_batch)?;
        recovery.torn_bytes_cut += cut;
        segments.push(segment);
        if cut > 0 {
            kept = i + 1;
            break;
        }
    }
    for &gone in &bases[kept..] {
        let path = segment::segment_path(dir, gone);
        fs::remove_file(&path).map_err(|source| LogError::Io { path, source })?;
    }
    recovery.segments_dropped = bases.len() - kept;
    if recovery.segments_dropped > 0 {
        tracing::warn!(
            "{}: {} segment(s) after a gap or damage above the recovery point {recovery_point} removed; the WAL replays their batches",
            dir.display(),
            recovery.segments_dropped
        );
    }
    Ok(segments)
}

/// After an unclean exit every segment above the recovery point may exist only in the page
/// cache (the run before relied on the WAL and fsynced none of them; kill -9 keeps the cache,
/// a power cut does not), and so may their directory entries. The partition counts its whole
/// log as synced (so checkpoints may retire the WAL that covers it): this makes that true
/// before anyone relies on it. The active segment is always synced (a torn tail was cut); the
/// directory too when segments were removed.
fn sync_unsynced(
    dir: &Path,
    segments: &mut [Segment],
    recovery_point: i64,
    segments_removed: bool,
) -> io::Result<()> {
    let last = segments.len() - 1;
    let mut above_recovery_point = false;
    for (i, segment) in segments.iter_mut().enumerate() {
        if segment.next_offset > recovery_point || i == last {
            segment.sync()?;
            above_recovery_point |= segment.next_offset > recovery_point;
        }
    }
    if above_recovery_point || segments_removed {
        crate::durable_file::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::sample_batch;
    use crate::test_rng::Rng;

    /// Small segments: a log of a few dozen batches spans many of them.
    const SEGMENT_BYTES: u64 = 200;

    fn batch_at(base: i64, count: i32) -> Bytes {
        let mut raw = sample_batch(count, -1, -1).to_vec();
        raw[..8].copy_from_slice(&base.to_be_bytes()); // outside the CRC
        Bytes::from(raw)
    }

    /// A log of random batches in `dir`, with its recovery point at a random batch boundary;
    /// the batches, and the recovery point.
    fn written_log(dir: &Path, rng: &mut Rng) -> (Vec<Bytes>, i64) {
        let (mut log, _) = PartitionLog::open(dir, SEGMENT_BYTES, |_| {}).unwrap();
        let mut batches = Vec::new();
        let mut next = 0;
        for _ in 0..10 + rng.below(30) {
            let count = 1 + rng.below(4) as i32;
            let batch = batch_at(next, count);
            next += i64::from(count);
            log.append(std::slice::from_ref(&batch)).unwrap();
            batches.push(batch);
        }
        let boundary = rng.below(batches.len() as u64 + 1) as usize;
        let recovery_point = batches
            .get(boundary)
            .map_or(next, |b| batch::base_offset(b));
        write_recovery_point(dir, recovery_point).unwrap();
        (batches, recovery_point)
    }

    /// The segment files of `dir` in offset order: (base offset, path).
    fn segment_files(dir: &Path) -> Vec<(i64, PathBuf)> {
        let mut files: Vec<(i64, PathBuf)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| (p.file_stem().unwrap().to_str().unwrap().parse().unwrap(), p))
            .collect();
        files.sort();
        files
    }

    /// A batch's partition leader epoch: neither the CRC nor any check covers it (Kafka's
    /// format), so a garbled byte there is not damage anyone can see.
    const UNCHECKED_BYTES: std::ops::Range<usize> = 12..16;

    /// Every byte position of the log's files whose batch holds offsets in `offsets`, but for
    /// the unchecked ones: (file, position within it).
    fn positions(dir: &Path, offsets: std::ops::Range<i64>) -> Vec<(PathBuf, usize)> {
        let mut out = Vec::new();
        for (_, path) in segment_files(dir) {
            let data = fs::read(&path).unwrap();
            let mut pos = 0;
            while let Some(len) = batch::framed_len(&data[pos..]) {
                let batch = &data[pos..];
                if batch::last_offset(batch) >= offsets.start
                    && batch::base_offset(batch) < offsets.end
                {
                    out.extend(
                        (pos..pos + len)
                            .filter(|p| !UNCHECKED_BYTES.contains(&(p - pos)))
                            .map(|p| (path.clone(), p)),
                    );
                }
                pos += len;
            }
        }
        out
    }

    /// What a power cut may leave above the recovery point: a segment's tail lost (a page or
    /// more), a whole segment lost (its unsynced directory entry), a byte garbled.
    fn damage_above(dir: &Path, recovery_point: i64, rng: &mut Rng) {
        let exposed = positions(dir, recovery_point..i64::MAX);
        if exposed.is_empty() {
            return;
        }
        let (path, at) = exposed[rng.below(exposed.len() as u64) as usize].clone();
        let mut data = fs::read(&path).unwrap();
        match rng.below(3) {
            0 => data.truncate(at),
            1 => {
                // Not the first segment: its directory entry is made durable when it is
                // created, and no later one names where the log starts.
                let whole = segment_files(dir)
                    .into_iter()
                    .skip(1)
                    .filter(|(base, _)| *base >= recovery_point)
                    .map(|(_, p)| p)
                    .collect::<Vec<_>>();
                if let Some(gone) = whole.get(rng.below(whole.len() as u64) as usize) {
                    fs::remove_file(gone).unwrap();
                    return;
                }
                data.truncate(at);
            }
            _ => data[at] ^= 1 << rng.below(8),
        }
        fs::write(&path, data).unwrap();
    }

    /// A segment that retention deleted stays deleted after a power cut only once its
    /// directory is fsynced: the next checkpoint's `take_unsynced` must ask for that.
    #[test]
    fn a_retention_delete_is_made_durable_by_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        for i in 0..40 {
            log.append(std::slice::from_ref(&batch_at(i, 1))).unwrap();
        }
        assert!(segment_files(dir.path()).len() >= 3);
        while log.take_unsynced().is_some() {}
        let start = log.enforce_retention(Some(1)).unwrap();
        assert!(start > 0, "retention deleted nothing");
        let unsynced = log.take_unsynced().expect("the deletion is left to sync");
        assert!(
            unsynced.sync_dir,
            "the directory is not fsynced after a delete"
        );
    }

    /// Whatever a power cut leaves above the recovery point, the log opens and the WAL's
    /// replay (each batch from the log's end on, as `Partition::replay` does) restores exactly
    /// the batches that were written. Once, a lost segment in the middle was taken as the log
    /// (its gap hid the missing batches from the replay) and a cut in any but the last segment
    /// refused the start.
    #[test]
    fn damage_above_the_recovery_point_is_rebuilt_from_the_wal() {
        let mut rng = Rng(0x5eed_1065);
        for case in 0..400 {
            let dir = tempfile::tempdir().unwrap();
            let (batches, recovery_point) = written_log(dir.path(), &mut rng);
            damage_above(dir.path(), recovery_point, &mut rng);
            let (mut log, _) = PartitionLog::open(dir.path(), SEGMENT_BYTES, |_| {})
                .unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert!(log.end_offset() >= recovery_point, "case {case}");
            let end = log.end_offset();
            for b in batches.iter().filter(|b| batch::last_offset(b) >= end) {
                assert_eq!(
                    batch::base_offset(b),
                    log.end_offset(),
                    "case {case}: a gap"
                );
                log.append(std::slice::from_ref(b)).unwrap();
            }
            drop(log);
            let stored: Vec<u8> = segment_files(dir.path())
                .iter()
                .flat_map(|(_, p)| fs::read(p).unwrap())
                .collect();
            assert_eq!(
                stored,
                batches.concat(),
                "case {case}: the rebuilt log differs"
            );
        }
    }

    /// Below the recovery point the WAL no longer holds the batches: a lost segment or a
    /// garbled byte there refuses the start, never a log with a hole.
    #[test]
    fn damage_below_the_recovery_point_refuses_the_start() {
        let mut rng = Rng(0x5eed_1066);
        let mut refused = 0;
        for case in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let (batches, _) = written_log(dir.path(), &mut rng);
            let end = batch::last_offset(batches.last().unwrap()) + 1;
            write_recovery_point(dir.path(), end).unwrap();
            let files = segment_files(dir.path());
            if files.len() < 3 {
                continue;
            }
            // A middle segment lost, or a byte of the first segment garbled.
            if rng.below(2) == 0 {
                fs::remove_file(&files[1 + rng.below(files.len() as u64 - 2) as usize].1).unwrap();
            } else {
                let below = positions(dir.path(), 0..files[1].0);
                let (path, at) = below[rng.below(below.len() as u64) as usize].clone();
                let mut data = fs::read(&path).unwrap();
                data[at] ^= 1 << rng.below(8);
                fs::write(&path, data).unwrap();
            }
            let opened = PartitionLog::open(dir.path(), SEGMENT_BYTES, |_| {});
            assert!(
                matches!(opened, Err(LogError::Corrupt { .. })),
                "case {case}: damage below the recovery point was accepted"
            );
            refused += 1;
        }
        assert!(refused > 100, "{refused} cases ran");
    }
}
