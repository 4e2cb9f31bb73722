//! Where WAL bytes go. The group-commit writer talks to this trait only, so a test can put a
//! faulty implementation underneath (failing writes, failing fsync) without touching the writer.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;

use super::record;
use crate::durable_file::sync_dir;

/// Append-only segmented storage for WAL frames.
pub trait WalStorage: Send + 'static {
    /// Appends `bytes` to the active segment (not yet durable).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Bytes in the active segment.
    fn active_len(&self) -> u64;
    /// Sequence number of the active segment.
    fn active_seq(&self) -> u64;
    /// Closes the active segment (a durable segment-end frame) and opens the next one; returns
    /// the new sequence number.
    fn roll(&mut self) -> io::Result<u64>;
}

/// WAL segments as files `NNNNNNNNNNNNNNNNNNNN.wal` in one directory.
///
/// Once the active segment is half full, a thread prepares the next one: a retired segment
/// (`retire`), renamed as it is, or else a new file zero-filled to its full size and fsynced;
/// then its directory is fsynced. Writes into it then never change the file's size or block
/// map, so the commit path's fdatasync flushes data only (no filesystem journal commit, which
/// would wait for every other file's metadata), and a roll writes the segment-end frame and
/// swaps a handle instead of creating a file and fsyncing a directory. A retired file keeps
/// its old records: they were stamped for another segment (`record::SegmentStamp`) and read
/// as the end of this one's data, so reusing it writes nothing (zero-filling wrote as many
/// bytes as the WAL itself; BENCHMARKS.md, "Tail latency").
///
/// The first preparation also makes one spare file for the pool once the next segment is
/// ready, when the pool is empty. A fresh directory has no retired file, and the checkpoint that
/// retires segment *k* sometimes comes after segment *k* + 1 is half full: each such miss
/// zero-filled a new file in the middle of the workload, beside the commits. The spare is the
/// file that the first miss would have made, made before the load is steady.
pub struct FileWalStorage {
    dir: PathBuf,
    segment_bytes: u64,
    active: File,
    active_seq: u64,
    active_len: u64,
    /// The next segment, being prepared (or ready).
    next: Option<Receiver<io::Result<File>>>,
    /// Whether the next preparation makes a spare (only the first one does).
    spare_wanted: bool,
    /// The thread making the spare, joined on drop.
    spare_maker: Option<JoinHandle<()>>,
}

/// Zeros are written and fsynced this much at a time while a new segment file is prepared, so
/// the disk never holds more than this in front of the WAL's own fdatasync.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// Retired segments kept for reuse: overwriting a file's blocks needs no allocation, and not
/// deleting one spares the filesystem freeing (and, mounted with `discard`, trimming) 64 MiB
/// at once, which stalls every fsync behind it (BENCHMARKS.md, "Tail latency").
const RETIRED_SEGMENTS_KEPT: usize = 2;
const RETIRED_SUFFIX: &str = ".retired";
/// A spare is zero-filled under this name, where no preparation picks it up half-made, and then
/// renamed into the pool. One left by a crash is finished by the next spare made here, or
/// removed when the pool needs no spare.
const SPARE_PARTIAL_NAME: &str = "spare.partial";
const SPARE_RETIRED_NAME: &str = "spare.retired";

/// Retires segment `seq` once nothing needs it: kept for reuse (`RETIRED_SEGMENTS_KEPT`) or
/// deleted. The caller fsyncs the directory.
pub fn retire(dir: &Path, seq: u64) -> io::Result<()> {
    let path = segment_path(dir, seq);
    if list_retired(dir)?.len() < RETIRED_SEGMENTS_KEPT {
        fs::rename(&path, dir.join(format!("{seq:020}{RETIRED_SUFFIX}")))
    } else {
        fs::remove_file(&path)
    }
}

fn list_retired(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(RETIRED_SUFFIX) {
            found.push(path);
        }
    }
    Ok(found)
}

/// Path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Sequence numbers of the WAL segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(seq) = stem.parse::<u64>() {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

impl FileWalStorage {
    /// Opens segment `seq` in `dir` as the active one, appending after what it holds. Recovery
    /// passes a new number: then a retired file from the pool becomes the segment if there is
    /// one (as after most restarts), else an empty file. Later segments are preallocated at
    /// `segment_bytes`.
    pub fn create(dir: &Path, seq: u64, segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = segment_path(dir, seq);
        // A file that grows costs every fdatasync a filesystem journal commit (its size
        // changes); a preallocated one costs none, for the whole first segment.
        let (active, active_len) = if !path.exists() && !list_retired(dir)?.is_empty() {
            (prepare_segment(dir, seq, segment_bytes)?.file, 0)
        } else {
            let active = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            let active_len = active.metadata()?.len();
            sync_dir(dir)?;
            (active, active_len)
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            active,
            active_seq: seq,
            active_len,
            next: None,
            spare_wanted: true,
            spare_maker: None,
        })
    }

    fn start_preparing(&mut self) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (dir, seq, len) = (self.dir.clone(), self.active_seq + 1, self.segment_bytes);
        let spare_wanted = std::mem::take(&mut self.spare_wanted);
        let preparer = std::thread::Builder::new()
            .name("wal-prepare".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let prepared = prepare_segment(&dir, seq, len);
                if let Ok(prepared) = &prepared {
                    tracing::debug!(target: "timeline", event = "wal_prepare", seq, zeroed_bytes = prepared.zeroed_bytes, us = started.elapsed().as_micros() as u64);
                }
                let _ = tx.send(prepared.map(|prepared| prepared.file));
                if spare_wanted {
                    let started = std::time::Instant::now();
                    match make_spare(&dir, len) {
                        Ok(zeroed_bytes) => {
                            tracing::debug!(target: "timeline", event = "wal_spare", zeroed_bytes, us = started.elapsed().as_micros() as u64)
                        }
                        // The pool only saves work: without the spare, a later preparation
                        // zero-fills its own file.
                        Err(e) => tracing::warn!("WAL spare segment not made: {e}"),
                    }
                }
            })?;
        if spare_wanted {
            self.spare_maker = Some(preparer);
        }
        self.next = Some(rx);
        Ok(())
    }

    /// Waits until the spare (if one is being made) is in the pool.
    fn finish_spare(&mut self) {
        if let Some(maker) = self.spare_maker.take() {
            let _ = maker.join();
        }
    }
}

impl Drop for FileWalStorage {
    /// Waits for a segment and a spare being prepared: their renames must not land in a
    /// directory that a broker started after this one has recovered already.
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            let _ = next.recv();
        }
        self.finish_spare();
    }
}

/// A segment file ready to become the active one.
struct Prepared {
    file: File,
    /// Zeros written to make it (none when a retired file of full size was reused).
    zeroed_bytes: u64,
}

/// Makes segment `seq`, at least `len` bytes, durably (file and directory entry): a retired
/// segment under its new name, or a new file. Bytes past a file's old length are zero-filled
/// and fsynced, so every block is allocated before the WAL writes it. Recovery removes a
/// trailing segment that holds no record of its own yet, so one prepared and never used is
/// harmless.
fn prepare_segment(dir: &Path, seq: u64, len: u64) -> io::Result<Prepared> {
    // A new file is made under a retired name: one left half-made by a crash is reused.
    let source = list_retired(dir)?
        .pop()
        .unwrap_or_else(|| dir.join(format!("{seq:020}{RETIRED_SUFFIX}")));
    let (file, zeroed_bytes) = fill_and_rename(dir, &source, len, &segment_path(dir, seq))?;
    Ok(Prepared { file, zeroed_bytes })
}

/// Opens (or creates) `source`, zero-fills it from its length up to `len` bytes, and renames
/// it to `target`, all durably; returns the file and the zeros written.
fn fill_and_rename(dir: &Path, source: &Path, len: u64, target: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(source)?;
    let old_len = file.metadata()?.len();
    let zeroed_bytes = len.saturating_sub(old_len);
    if zeroed_bytes > 0 {
        let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES.min(zeroed_bytes as usize)];
        let mut pos = old_len;
        while pos < len {
            let chunk = (len - pos).min(ZERO_FILL_CHUNK_BYTES as u64);
            file.write_all_at(&zeros[..chunk as usize], pos)?;
            file.sync_data()?;
            pos += chunk;
        }
        file.sync_all()?;
    }
    fs::rename(source, target)?;
    sync_dir(dir)?;
    Ok((file, zeroed_bytes))
}

/// Puts one zero-filled file of `len` bytes into the pool of retired segments, durably, unless
/// the pool has a file already; returns the zeros written.
fn make_spare(dir: &Path, len: u64) -> io::Result<u64> {
    let partial = dir.join(SPARE_PARTIAL_NAME);
    if !list_retired(dir)?.is_empty() {
        // Not needed; one half-made by a crash goes.
        return match fs::remove_file(&partial) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(0),
        };
    }
    let (_, zeroed_bytes) = fill_and_rename(dir, &partial, len, &dir.join(SPARE_RETIRED_NAME))?;
    Ok(zeroed_bytes)
}

impl WalStorage for FileWalStorage {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.active.write_all_at(bytes, self.active_len)?;
        self.active_len += bytes.len() as u64;
        if self.next.is_none() && self.active_len >= self.segment_bytes / 2 {
            self.start_preparing()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()
    }

    fn active_len(&self) -> u64 {
        self.active_len
    }

    fn active_seq(&self) -> u64 {
        self.active_seq
    }

    fn roll(&mut self) -> io::Result<u64> {
        self.append(&record::encode_segment_end(self.active_seq))?;
        self.active.sync_data()?;
        if self.next.is_none() {
            self.start_preparing()?;
        }
        let next = self
            .next
            .take()
            .expect("started above")
            .recv()
            .map_err(|_| io::Error::other("the WAL segment preparer stopped"))??;
        self.active = next;
        self.active_seq += 1;
        self.active_len = 0;
        Ok(self.active_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT_BYTES: u64 = 4096;

    fn fill(storage: &mut FileWalStorage, byte: u8) {
        storage.append(&[byte; 3000]).unwrap();
        storage.sync().unwrap();
    }

    fn retired(dir: &Path) -> usize {
        list_retired(dir).unwrap().len()
    }

    fn all_zeros(path: &Path) -> bool {
        let bytes = fs::read(path).unwrap();
        bytes.len() as u64 == SEGMENT_BYTES && bytes.iter().all(|&b| b == 0)
    }

    #[test]
    fn rolls_into_zeroed_new_segments_and_reuses_retired_ones_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let mut storage = FileWalStorage::create(dir, 1, SEGMENT_BYTES).unwrap();
        fill(&mut storage, 0xaa);
        assert_eq!(storage.roll().unwrap(), 2);
        let closed = fs::read(segment_path(dir, 1)).unwrap();
        assert!(closed.ends_with(&record::encode_segment_end(1)));
        assert!(all_zeros(&segment_path(dir, 2)));

        // The first preparation found the pool empty and left a spare in it.
        storage.finish_spare();
        assert!(all_zeros(&dir.join(SPARE_RETIRED_NAME)));
        assert!(!dir.join(SPARE_PARTIAL_NAME).exists());
        fill(&mut storage, 0xbb);
        assert_eq!(storage.roll().unwrap(), 3);
        assert_eq!(retired(dir), 0, "the spare became segment 3");
        assert!(all_zeros(&segment_path(dir, 3)));

        retire(dir, 1).unwrap();
        assert_eq!(retired(dir), 1);
        fill(&mut storage, 0xbb);
        assert_eq!(storage.roll().unwrap(), 4);
        assert_eq!(retired(dir), 0, "segment 1's file became segment 4");
        assert!(!segment_path(dir, 1).exists());
        let reused = fs::read(segment_path(dir, 4)).unwrap();
        // Segment 1 was the file the storage started on, shorter than a segment: its old
        // bytes are kept, and it is zero-filled past them.
        assert_eq!(reused.len() as u64, SEGMENT_BYTES);
        assert!(
            reused.starts_with(&closed),
            "old bytes kept: nothing written"
        );
        assert!(reused[closed.len()..].iter().all(|&b| b == 0));
        let end = record::encode_segment_end(1);
        let end_at = closed.len() - end.len();
        assert_eq!(
            record::decode(&bytes::Bytes::from(reused).slice(end_at..), 4),
            record::Decoded::Invalid,
            "segment 1's frames are not segment 4's"
        );

        // A short retired file (a tail cut by recovery) is zero-filled to full size.
        let short = dir.join(format!("{:020}{RETIRED_SUFFIX}", 2));
        fs::rename(segment_path(dir, 2), &short).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&short)
            .unwrap()
            .set_len(100)
            .unwrap();
        fill(&mut storage, 0xcc);
        assert_eq!(storage.roll().unwrap(), 5);
        let grown = fs::read(segment_path(dir, 5)).unwrap();
        assert_eq!(grown.len() as u64, SEGMENT_BYTES);
        assert!(grown[100..].iter().all(|&b| b == 0));

        // Only a few are kept; the rest are deleted.
        for seq in 3..=5 {
            fill(&mut storage, 0xcc);
            storage.roll().unwrap();
            retire(dir, seq).unwrap();
        }
        fill(&mut storage, 0xdd);
        let next = storage.roll().unwrap();
        for seq in 6..next {
            retire(dir, seq).unwrap();
        }
        assert!(retired(dir) <= RETIRED_SEGMENTS_KEPT);
        assert_eq!(list_segments(dir).unwrap(), [next]);
    }

    #[test]
    fn a_restart_starts_on_a_file_from_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let mut storage = FileWalStorage::create(dir, 1, SEGMENT_BYTES).unwrap();
        fill(&mut storage, 0xaa);
        storage.roll().unwrap();
        drop(storage);
        retire(dir, 1).unwrap();
        let in_pool = retired(dir);

        let mut storage = FileWalStorage::create(dir, 3, SEGMENT_BYTES).unwrap();
        assert_eq!(retired(dir), in_pool - 1);
        assert_eq!(
            storage.active_len(),
            0,
            "its old bytes are not this segment's"
        );
        let file_len = || fs::metadata(segment_path(dir, 3)).unwrap().len();
        assert_eq!(file_len(), SEGMENT_BYTES);
        fill(&mut storage, 0xbb);
        assert_eq!(file_len(), SEGMENT_BYTES, "written in place, not grown");
        let data = fs::read(segment_path(dir, 3)).unwrap();
        assert!(
            data[..3000].iter().all(|&b| b == 0xbb),
            "appended at the start"
        );
    }

    #[test]
    fn a_spare_half_made_by_a_crash_is_finished_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let partial = dir.join(SPARE_PARTIAL_NAME);
        fs::write(&partial, [0u8; 100]).unwrap();
        assert_eq!(make_spare(dir, SEGMENT_BYTES).unwrap(), SEGMENT_BYTES - 100);
        assert!(all_zeros(&dir.join(SPARE_RETIRED_NAME)));
        assert!(!partial.exists());

        // With a file in the pool already, no spare is made and a half-made one goes.
        fs::write(&partial, [0u8; 100]).unwrap();
        assert_eq!(make_spare(dir, SEGMENT_BYTES).unwrap(), 0);
        assert!(!partial.exists());
        assert_eq!(retired(dir), 1);
    }
}
