//! Making file-system changes survive a power cut: the directory fsync a new or removed file
//! needs, and the atomic replacement every small state file uses (topic ids, recovery points,
//! producer ids, the WAL's durable mark). The WAL, the partition logs, topics and groups all
//! use these; none of them owns them.

use std::fs::{self, File};
use std::io;
use std::path::Path;

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
