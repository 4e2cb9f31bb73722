//! Where WAL bytes go. The group-commit writer talks to this trait only, so a test can put a
//! faulty implementation underneath (failing writes, failing fsync) without touching the writer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
    /// Closes the active segment and opens the next one; returns the new sequence number.
    fn roll(&mut self) -> io::Result<u64>;
}

/// WAL segments as files `NNNNNNNNNNNNNNNNNNNN.wal` in one directory.
pub struct FileWalStorage {
    dir: PathBuf,
    active: File,
    active_seq: u64,
    active_len: u64,
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

/// fsyncs a directory so that a file created or removed in it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the file at `path` with `contents` so that after a power cut it holds either the
/// old or the new contents, durably: write a sibling `.tmp`, fsync it, rename it over `path`,
/// fsync the directory.
pub fn replace_file_durably(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, contents)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl FileWalStorage {
    /// Opens a fresh active segment numbered `seq` in `dir`.
    pub fn create(dir: &Path, seq: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))?;
        let active_len = active.metadata()?.len();
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            active,
            active_seq: seq,
            active_len,
        })
    }
}

impl WalStorage for FileWalStorage {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.active.write_all(bytes)?;
        self.active_len += bytes.len() as u64;
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
        self.active.sync_data()?;
        let next = Self::create(&self.dir, self.active_seq + 1)?;
        *self = next;
        Ok(self.active_seq)
    }
}
