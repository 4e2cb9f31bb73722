//! Producer ids that never repeat, across restarts and clock steps. Ids are handed out from
//! blocks whose end is recorded durably in `<data dir>/producer-ids` before the first id of the
//! block is used (Kafka hands out producer id blocks the same way), so a restart continues past
//! every id it could have issued. The first start on a data directory without the file begins
//! at the clock (milliseconds << 10), which is above the ids of earlier versions.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::mutex::lock;

/// Ids reserved per durable write of the file.
const PRODUCER_ID_BLOCK: i64 = 1000;
const PRODUCER_IDS_FILE: &str = "producer-ids";

pub struct ProducerIds {
    /// (next id to hand out, end of the reserved block).
    range: Mutex<(i64, i64)>,
    path: PathBuf,
}

impl ProducerIds {
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let path = data_dir.join(PRODUCER_IDS_FILE);
        let stored = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<i64>().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64)
            << 10;
        let start = stored.max(clock);
        // Nothing is reserved yet: the first allocation writes the first block's end.
        Ok(Self {
            range: Mutex::new((start, start)),
            path,
        })
    }

    /// The next id. Every `PRODUCER_ID_BLOCK` ids this writes and fsyncs the file.
    pub fn allocate(&self) -> io::Result<i64> {
        let mut range = lock(&self.range);
        if range.0 >= range.1 {
            let end = range.0 + PRODUCER_ID_BLOCK;
            crate::durable_file::replace_file_durably(&self.path, end.to_string().as_bytes())?;
            range.1 = end;
        }
        let id = range.0;
        range.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_continue_past_every_reserved_block_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProducerIds::open(dir.path()).unwrap();
        let a = first.allocate().unwrap();
        let b = first.allocate().unwrap();
        assert_eq!(b, a + 1);
        drop(first);
        // A restart, even with the clock stepped back: the file is ahead of the clock.
        fs::write(
            dir.path().join(PRODUCER_IDS_FILE),
            (i64::MAX / 2).to_string(),
        )
        .unwrap();
        let second = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(second.allocate().unwrap(), i64::MAX / 2);
        let third = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(
            third.allocate().unwrap(),
            i64::MAX / 2 + PRODUCER_ID_BLOCK,
            "a restart skips the rest of the reserved block"
        );
    }
}
