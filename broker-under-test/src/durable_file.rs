//! Making file-system changes survive a power cut: the directory fsync a new or removed file
//! needs, and the atomic replacement every small state file uses (topic ids, recovery points,
//! producer ids, the WAL's durable mark). The WAL, the partition logs, topics and groups all
//! use these; none of them owns them. And the one step of write-back that is not about
//! durability at all (`write_out`).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
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

/// Writes `file`'s dirty pages to the disk and waits until they are written, with no cache
/// flush and no metadata: sync_file_range(2) with WAIT_BEFORE | WRITE | WAIT_AFTER. For
/// spreading segment data over time, never for durability (`sync_all` still makes it durable
/// at the checkpoint). An fdatasync here would send the disk a cache flush at every step,
/// queued beside the WAL's own (BENCHMARKS.md §9: a loop like the WAL's reached a 5.0 ms max
/// beside this, against 9.6–12.4 ms beside fdatasync steps in the broker).
///
/// The project denies `unsafe` code; this is its one exception, because no well-kept crate
/// wraps the call (nix 0.32 and rustix 1.1 do not; libc only declares it).
#[allow(unsafe_code)]
pub fn write_out(file: &File) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is `file`'s, open for the whole call (the borrow keeps it);
    // the call takes no pointer. Offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
