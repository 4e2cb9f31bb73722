//! The controller's Raft log on disk: one append-only file of framed entries (length,
//! CRC-32C, JSON), fdatasynced before openraft is told an append is durable; the vote and the
//! purge point in small files replaced atomically. Every entry is also held in memory: the
//! metadata log is small, and purging rewrites the file without what a snapshot covers.
//!
//! Recovery reads frames until the first one that is short or fails its CRC and cuts the
//! file there: such a frame is the torn tail of an append that never completed, so it was
//! never reported durable, never voted on, never committed.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote};
use tokio::sync::Mutex;

use crate::controller::types::{ControllerRaft, Entry, LogId, NodeId, StorageError};
use crate::durable_file::{replace_file_durably, sync_dir};

const LOG_FILE: &str = "raft-log";
const VOTE_FILE: &str = "raft-vote";
const PURGED_FILE: &str = "raft-purged";
/// Length and CRC-32C before each entry's JSON.
const FRAME_HEADER_BYTES: usize = 8;
/// No metadata entry comes near this; a larger length is damage.
const ENTRY_BYTES_MAX: usize = 64 << 20;

/// The log, shared by openraft's writer and its readers.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogFile>>,
}

struct LogFile {
    dir: PathBuf,
    file: File,
    /// Entries by index, with the file offset where each one's frame starts.
    entries: BTreeMap<u64, (Entry, u64)>,
    len: u64,
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId>,
}

fn io_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn frame(entry: &Entry) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(entry)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + json.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// The whole frames at the start of `bytes` (entry and offset), and where they end.
fn whole_frames(bytes: &[u8]) -> (Vec<(Entry, u64)>, u64) {
    let mut at = 0;
    let mut out = Vec::new();
    while bytes.len() - at >= FRAME_HEADER_BYTES {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let body = at + FRAME_HEADER_BYTES;
        if len > ENTRY_BYTES_MAX || bytes.len() - body < len {
            break;
        }
        let json = &bytes[body..body + len];
        let Some(entry) = (crc32c::crc32c(json) == crc)
            .then(|| serde_json::from_slice::<Entry>(json).ok())
            .flatten()
        else {
            break;
        };
        out.push((entry, at as u64));
        at = body + len;
    }
    (out, at as u64)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let bytes = if existed {
            fs::read(&path)?
        } else {
            Vec::new()
        };
        let (frames, len) = whole_frames(&bytes);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if len < bytes.len() as u64 {
            tracing::warn!(
                "controller log {}: cut a torn tail of {} bytes",
                path.display(),
                bytes.len() as u64 - len
            );
            file.set_len(len)?;
            file.sync_data()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        let last_purged: Option<LogId> = read_json(&dir.join(PURGED_FILE))?;
        let floor = last_purged.map_or(0, |p| p.index + 1);
        let entries = frames
            .into_iter()
            .filter(|(e, _)| e.log_id.index >= floor)
            .map(|(e, at)| (e.log_id.index, (e, at)))
            .collect();
        Ok(Self {
            inner: Arc::new(Mutex::new(LogFile {
                dir: dir.to_owned(),
                file,
                entries,
                len,
                vote: read_json(&dir.join(VOTE_FILE))?,
                last_purged,
            })),
        })
    }
}

impl LogFile {
    /// Writes the remaining entries to a new file and puts it in place of the old one.
    fn rewrite(&mut self) -> io::Result<()> {
        let path = self.dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        for (entry, at) in self.entries.values_mut() {
            *at = bytes.len() as u64;
            bytes.extend_from_slice(&frame(entry)?);
        }
        replace_file_durably(&path, &bytes)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

impl RaftLogReader<ControllerRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.inner.lock().await;
        Ok(log
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<ControllerRaft> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<ControllerRaft>, StorageError> {
        let log = self.inner.lock().await;
        let last = log
            .entries
            .values()
            .next_back()
            .map(|(e, _)| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last.or(log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut log = self.inner.lock().await;
        let json = serde_json::to_vec(vote).map_err(io_err)?;
        replace_file_durably(&log.dir.join(VOTE_FILE), &json).map_err(io_err)?;
        log.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.lock().await.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<ControllerRaft>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut log = self.inner.lock().await;
        let mut bytes = Vec::new();
        let mut added = Vec::new();
        for entry in entries {
            let at = log.len + bytes.len() as u64;
            bytes.extend_from_slice(&frame(&entry).map_err(io_err)?);
            added.push((entry, at));
        }
        // Durable before openraft counts it: a vote or a commit may rest on it.
        let written = log
            .file
            .write_all(&bytes)
            .and_then(|()| log.file.sync_data());
        if let Err(e) = written {
            callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(io_err(e));
        }
        log.len += bytes.len() as u64;
        for (entry, at) in added {
            log.entries.insert(entry.log_id.index, (entry, at));
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.inner.lock().await;
        let Some(&(_, at)) = log.entries.get(&log_id.index) else {
            return Ok(());
        };
        log.file.set_len(at).map_err(io_err)?;
        log.file.sync_data().map_err(io_err)?;
        log.len = at;
        log.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.inner.lock().await;
        let json = serde_json::to_vec(&log_id).map_err(io_err)?;
        // The purge point first: after a crash between the two files, recovery skips the
        // purged entries the old file still holds.
        replace_file_durably(&log.dir.join(PURGED_FILE), &json).map_err(io_err)?;
        log.last_purged = Some(log_id);
        log.entries = log.entries.split_off(&(log_id.index + 1));
        log.rewrite().map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::controller::state_machine::StateMachine;

    struct OnDisk;

    impl StoreBuilder<ControllerRaft, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(io_err)?;
            let log = LogStore::open(dir.path()).map_err(io_err)?;
            let machine = StateMachine::open(dir.path()).map_err(io_err)?;
            Ok((dir, log, machine))
        }
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_entry() {
        let mut rng = crate::test_rng::Rng(11);
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let frames: Vec<Vec<u8>> = (1..=20).map(|i| frame(&blank(i)).unwrap()).collect();
            let bytes: Vec<u8> = frames.concat();
            let cut = rng.below(bytes.len() as u64 + 1) as usize;
            let mut torn = bytes[..cut].to_vec();
            // A torn append may also leave garbage where its frame should be.
            torn.extend((0..rng.below(12)).map(|_| rng.next() as u8));
            fs::write(dir.path().join(LOG_FILE), &torn).unwrap();
            let whole = frames
                .iter()
                .scan(0, |end, f| {
                    *end += f.len();
                    Some(*end)
                })
                .take_while(|&end| end <= cut)
                .count();
            let store = LogStore::open(dir.path()).unwrap();
            let log = store.inner.try_lock().unwrap();
            assert_eq!(log.entries.len(), whole, "cut at {cut}");
            assert_eq!(
                log.entries.keys().next_back().copied(),
                (whole > 0).then_some(whole as u64)
            );
            let kept: usize = frames[..whole].iter().map(Vec::len).sum();
            assert_eq!(
                fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
                kept as u64
            );
        }
    }

    #[test]
    fn the_stores_pass_openrafts_storage_suite() {
        Suite::test_all(OnDisk).expect("openraft's storage suite");
    }
}
