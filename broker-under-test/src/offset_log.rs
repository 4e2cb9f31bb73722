//! Committed consumer-group offsets: an append-only log `<data dir>/group-offsets.log` with group
//! commit, compacted into a snapshot of the latest offsets when it grows.
//!
//! A commit appends one record (`u32` length, `u32` CRC-32C of the payload, JSON payload, both
//! integers little-endian) and waits for one `fdatasync` that covers every record appended
//! before it, so concurrent commits share a sync and the cost of a commit does not grow with the
//! number of groups. Readers see a commit only after it is durable, in append order.
//!
//! Recovery keeps the records up to the first one that does not check out and cuts the rest: a
//! record is acknowledged only after its sync, and every record after an unsynced one is unsynced
//! too, so only unacknowledged commits are cut. A failed write or sync stops the broker
//! (`FailStop`): after a failed fsync the kernel may have dropped the dirty pages, and appending
//! after a half-written record would hide every later record from recovery.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::durable_file::{replace_file_durably, sync_dir};
use crate::fail_stop::FailStop;
use crate::mutex::lock;

/// The log is rewritten as a snapshot once it is this large and at least
/// `COMPACT_GROWTH_FACTOR` times the size of the snapshot it would become.
const COMPACT_AFTER_BYTES: u64 = 4 * 1024 * 1024;
const COMPACT_GROWTH_FACTOR: u64 = 4;
/// Length and CRC in front of every payload.
const RECORD_HEADER_BYTES: usize = 8;
/// Where offsets lived before the log (one JSON file rewritten per commit); read once at open,
/// folded into the log's first snapshot and removed.
const LEGACY_FILE_NAME: &str = "group-offsets.json";
const LOG_FILE_NAME: &str = "group-offsets.log";

/// One partition's committed position: (topic, partition, offset, metadata).
pub type CommittedOffset = (String, i32, i64, Option<String>);

/// group -> (topic, partition) -> (offset, metadata)
type Offsets = BTreeMap<String, BTreeMap<(String, i32), (i64, Option<String>)>>;

#[derive(Serialize, Deserialize)]
struct Record {
    group: String,
    offsets: Vec<CommittedOffset>,
}

#[derive(Deserialize)]
struct LegacyFile {
    /// group -> "topic/partition" -> (offset, metadata)
    groups: BTreeMap<String, BTreeMap<String, (i64, Option<String>)>>,
}

struct Appender {
    file: File,
    len_bytes: u64,
    /// Sequence number of the next record appended.
    next_seq: u64,
    /// Appended, not yet synced: applied to the visible offsets in order once synced.
    unsynced: VecDeque<(u64, Record)>,
    /// A write or sync failed: the file's state is unknown, nothing more is appended.
    broken: bool,
}

pub struct OffsetLog {
    path: PathBuf,
    appender: Mutex<Appender>,
    /// Records up to this sequence number are durable. Held across the `fdatasync`, so one
    /// commit syncs while later ones wait and are covered by the next sync.
    synced_seq: Mutex<u64>,
    /// What readers see: only durable commits.
    visible: Mutex<Offsets>,
    fail_stop: FailStop,
}

/// What recovery found in the log file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OffsetLogRecovery {
    pub records: u64,
    pub torn_bytes_cut: u64,
}

impl OffsetLog {
    /// Opens (or creates) the log in `data_dir`, replays it and cuts an unsynced torn tail.
    pub fn open(data_dir: &Path, fail_stop: FailStop) -> io::Result<(Self, OffsetLogRecovery)> {
        let path = data_dir.join(LOG_FILE_NAME);
        let mut offsets = Offsets::new();
        let legacy_path = data_dir.join(LEGACY_FILE_NAME);
        let legacy = match fs::read(&legacy_path) {
            Ok(raw) => Some(serde_json::from_slice::<LegacyFile>(&raw).map_err(io::Error::other)?),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        if let Some(legacy) = &legacy {
            for (group, entries) in &legacy.groups {
                let target = offsets.entry(group.clone()).or_default();
                for (key, value) in entries {
                    if let Some((topic, partition)) = key.rsplit_once('/') {
                        if let Ok(partition) = partition.parse() {
                            target.insert((topic.to_owned(), partition), value.clone());
                        }
                    }
                }
            }
        }
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        let (records, valid_len) = decode_records(&raw);
        let recovery = OffsetLogRecovery {
            records: records.len() as u64,
            torn_bytes_cut: (raw.len() - valid_len) as u64,
        };
        for record in records {
            apply(&mut offsets, record);
        }
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if recovery.torn_bytes_cut > 0 {
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        if !existed {
            sync_dir(data_dir)?;
        }
        let log = Self {
            path,
            appender: Mutex::new(Appender {
                file,
                len_bytes: valid_len as u64,
                next_seq: 1,
                unsynced: VecDeque::new(),
                broken: false,
            }),
            synced_seq: Mutex::new(0),
            visible: Mutex::new(offsets),
            fail_stop,
        };
        if legacy.is_some() {
            // Forced: the legacy file is removed next, so its offsets must be in the log.
            log.compact(&mut lock(&log.appender), true)?;
            fs::remove_file(&legacy_path)?;
            sync_dir(data_dir)?;
        }
        Ok((log, recovery))
    }

    /// Appends a commit and returns once it is durable and visible. Blocking (write and
    /// `fdatasync`): call it off the async runtime's threads.
    pub fn commit(&self, group: &str, offsets: Vec<CommittedOffset>) -> io::Result<()> {
        let record = Record {
            group: group.to_owned(),
            offsets,
        };
        let seq = {
            let mut appender = lock(&self.appender);
            if appender.broken {
                return Err(io::Error::other("the offset log failed earlier"));
            }
            let framed = encode_record(&record)?;
            if let Err(err) = appender.file.write_all(&framed) {
                return Err(self.broke(&mut appender, "write", err));
            }
            appender.len_bytes += framed.len() as u64;
            let seq = appender.next_seq;
            appender.next_seq += 1;
            appender.unsynced.push_back((seq, record));
            seq
        };
        let mut synced_seq = lock(&self.synced_seq);
        if *synced_seq >= seq {
            return Ok(());
        }
        let (file, upto) = {
            let appender = lock(&self.appender);
            if appender.broken {
                return Err(io::Error::other("the offset log failed earlier"));
            }
            (appender.file.try_clone()?, appender.next_seq - 1)
        };
        // Outside the appender's lock: commits arriving during the sync append and then wait
        // here, and the next sync covers all of them.
        if let Err(err) = file.sync_data() {
            return Err(self.broke(&mut lock(&self.appender), "fdatasync", err));
        }
        let mut appender = lock(&self.appender);
        {
            let mut visible = lock(&self.visible);
            while appender.unsynced.front().is_some_and(|(s, _)| *s <= upto) {
                if let Some((_, record)) = appender.unsynced.pop_front() {
                    apply(&mut visible, record);
                }
            }
        }
        *synced_seq = upto;
        if appender.unsynced.is_empty() && appender.len_bytes >= COMPACT_AFTER_BYTES {
            self.compact(&mut appender, false)?;
        }
        Ok(())
    }

    /// Committed offset and metadata, or `(-1, None)` when none was committed.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> (i64, Option<String>) {
        lock(&self.visible)
            .get(group)
            .and_then(|g| g.get(&(topic.to_owned(), partition)).cloned())
            .unwrap_or((-1, None))
    }

    /// Topics and partitions with a committed offset in the group.
    pub fn committed_partitions(&self, group: &str) -> Vec<(String, i32)> {
        lock(&self.visible)
            .get(group)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len_bytes(&self) -> u64 {
        lock(&self.appender).len_bytes
    }

    /// Rewrites the log as one record per group holding its latest offsets, when that shrinks
    /// it enough or when `forced`. Called with every appended record synced and visible.
    fn compact(&self, appender: &mut Appender, forced: bool) -> io::Result<()> {
        let mut snapshot = Vec::new();
        for (group, entries) in lock(&self.visible).iter() {
            let record = Record {
                group: group.clone(),
                offsets: entries
                    .iter()
                    .map(|((t, p), (o, m))| (t.clone(), *p, *o, m.clone()))
                    .collect(),
            };
            snapshot.extend(encode_record(&record)?);
        }
        let snapshot_len = snapshot.len() as u64;
        if !forced && snapshot_len.saturating_mul(COMPACT_GROWTH_FACTOR) > appender.len_bytes {
            return Ok(());
        }
        let replaced = replace_file_durably(&self.path, &snapshot)
            .and_then(|()| OpenOptions::new().append(true).open(&self.path));
        match replaced {
            Ok(file) => {
                appender.file = file;
                appender.len_bytes = snapshot_len;
                Ok(())
            }
            Err(err) => Err(self.broke(appender, "compaction", err)),
        }
    }

    fn broke(&self, appender: &mut Appender, what: &str, err: io::Error) -> io::Error {
        appender.broken = true;
        self.fail_stop.stop(format!(
            "offset log {}: {what} failed: {err}",
            self.path.display()
        ));
        err
    }
}

fn apply(offsets: &mut Offsets, record: Record) {
    let target = offsets.entry(record.group).or_default();
    for (topic, partition, offset, metadata) in record.offsets {
        target.insert((topic, partition), (offset, metadata));
    }
}

fn encode_record(record: &Record) -> io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(record).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    framed.extend_from_slice(&payload);
    Ok(framed)
}

/// The records up to the first one that is short, fails its CRC or does not parse, and the
/// length of the bytes they cover.
fn decode_records(raw: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = raw.get(at..at + RECORD_HEADER_BYTES) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + RECORD_HEADER_BYTES;
        let Some(payload) = start.checked_add(len).and_then(|end| raw.get(start..end)) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(record) = serde_json::from_slice(payload) else {
            break;
        };
        records.push(record);
        at = start + len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn open(dir: &Path) -> OffsetLog {
        OffsetLog::open(dir, FailStop::new().0).unwrap().0
    }

    fn one(topic: &str, partition: i32, offset: i64) -> Vec<CommittedOffset> {
        vec![(topic.to_owned(), partition, offset, None)]
    }

    #[test]
    fn a_commit_appends_one_small_record_however_many_groups_exist() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        for g in 0..2_000 {
            log.commit(&format!("group-{g}"), one("t", 0, g)).unwrap();
        }
        let before = log.len_bytes();
        log.commit("group-7", one("t", 0, 99)).unwrap();
        let appended = log.len_bytes() - before;
        assert!(appended < 100, "one commit appended {appended} bytes");
        assert_eq!(log.committed("group-7", "t", 0), (99, None));
    }

    #[test]
    fn latest_commit_wins_after_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let metadata = "m".repeat(1_000);
        // Enough rewrites of the same four partitions (about 4 KB each) to pass the compaction
        // size.
        let rounds = (COMPACT_AFTER_BYTES / 4_000 + 10) as i64;
        for round in 0..rounds {
            let offsets = (0..4)
                .map(|p| {
                    (
                        "topic".to_owned(),
                        p,
                        round * 10 + i64::from(p),
                        Some(metadata.clone()),
                    )
                })
                .collect();
            log.commit("g", offsets).unwrap();
        }
        assert!(log.len_bytes() < COMPACT_AFTER_BYTES, "never compacted");
        let last_round = rounds - 1;
        drop(log);
        let log = open(dir.path());
        for p in 0..4 {
            assert_eq!(
                log.committed("g", "topic", p),
                (last_round * 10 + i64::from(p), Some(metadata.clone()))
            );
        }
        assert_eq!(log.committed_partitions("g").len(), 4);
        assert_eq!(log.committed("other", "topic", 0), (-1, None));
    }

    #[test]
    fn every_cut_of_the_tail_keeps_each_whole_record_and_cuts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        for offset in 0..20 {
            log.commit("g", one("t", 0, offset)).unwrap();
        }
        drop(log);
        let path = dir.path().join(LOG_FILE_NAME);
        let whole = fs::read(&path).unwrap();
        let (records, _) = decode_records(&whole);
        let mut ends = Vec::new();
        let mut at = 0;
        for record in &records {
            at += encode_record(record).unwrap().len();
            ends.push(at);
        }
        for cut in 0..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let (log, recovery) = OffsetLog::open(dir.path(), FailStop::new().0).unwrap();
            let kept = ends.iter().filter(|end| **end <= cut).count();
            let expected = if kept == 0 { -1 } else { kept as i64 - 1 };
            assert_eq!(log.committed("g", "t", 0).0, expected, "cut at {cut}");
            assert_eq!(recovery.records, kept as u64);
            // The cut tail is gone from the file, so a later append is not hidden behind it.
            log.commit("g", one("t", 0, 1_000)).unwrap();
            drop(log);
            assert_eq!(
                open(dir.path()).committed("g", "t", 0).0,
                1_000,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_cuts_the_log_at_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        for offset in 0..3 {
            log.commit("g", one("t", 0, offset)).unwrap();
        }
        drop(log);
        let path = dir.path().join(LOG_FILE_NAME);
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 2;
        raw[last] ^= 0x40;
        fs::write(&path, &raw).unwrap();
        let (log, recovery) = OffsetLog::open(dir.path(), FailStop::new().0).unwrap();
        assert_eq!(log.committed("g", "t", 0).0, 1);
        assert_eq!(recovery.records, 2);
        assert!(recovery.torn_bytes_cut > 0);
    }

    #[test]
    fn concurrent_commits_are_all_durable_and_each_partition_ends_at_its_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open(dir.path()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for offset in 0..200 {
                        log.commit("g", one("t", t, offset)).unwrap();
                        // Visible as soon as commit returns, never older than what it committed.
                        assert!(log.committed("g", "t", t).0 >= offset);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(log);
        let log = open(dir.path());
        for t in 0..8 {
            assert_eq!(log.committed("g", "t", t).0, 199);
        }
    }

    #[test]
    fn offsets_of_the_json_file_move_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LEGACY_FILE_NAME),
            r#"{"groups":{"g":{"a/b/3":[42,"meta"]}}}"#,
        )
        .unwrap();
        let log = open(dir.path());
        assert_eq!(log.committed("g", "a/b", 3), (42, Some("meta".to_owned())));
        assert!(!dir.path().join(LEGACY_FILE_NAME).exists());
        drop(log);
        assert_eq!(open(dir.path()).committed("g", "a/b", 3).0, 42);
    }
}
