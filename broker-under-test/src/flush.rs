//! When durable batches move from a partition's `pending_batches` to its segment log, and when
//! the logs are fsynced so that the WAL may let go of what they hold. Three moments, one home:
//! - after a produce response: when the flush profile says one is due (`after_produce`);
//! - at each checkpoint: batches older than the profile allows, and, while closed WAL segments
//!   wait to be retired, every log flushed and fsynced so they can go (`checkpoint`);
//! - at shutdown: everything, fsynced (`final_flush`).
//!
//! And the two timers that drive the background part: segment write-back in small steps
//! (`write_back_logs`) and the checkpoint (`checkpoint_tick`, on the broker's ticker).
//!
//! Nothing here is on the WAL's commit path: an ack waits only for the WAL's fdatasync.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::BrokerConfig;
use crate::fail_stop::FailStop;
use crate::partition::Partition;
use crate::profile::ProduceFlushProfile;
use crate::topics::TopicRegistry;
use crate::wal::{
    self,
    group_commit::{GroupCommitWal, WalShared},
};

pub struct Flusher {
    topics: Arc<TopicRegistry>,
    profile: ProduceFlushProfile,
    retention_bytes: Option<u64>,
    fail_stop: FailStop,
}

impl Flusher {
    pub fn new(topics: Arc<TopicRegistry>, config: &BrokerConfig, fail_stop: FailStop) -> Self {
        Self {
            topics,
            profile: config.profile,
            retention_bytes: config.retention_bytes,
            fail_stop,
        }
    }

    /// After a produce response: moves the partition's pending batches to its segment log when
    /// the profile says so, on the blocking pool. The write may take milliseconds, which would
    /// hold up every request on this async worker, and the response need not wait for it (the
    /// WAL made the batches durable). One flush per partition is queued or running at a time.
    /// A failed write is fail-stop like the WAL's: the batches stay pending (and in the WAL,
    /// which no checkpoint retires before the segment is synced), and recovery rebuilds the
    /// segment. Out of file descriptors, nothing was written: the batches stay pending for a
    /// later flush.
    pub fn after_produce(&self, partition: &Arc<Partition>) {
        if !partition.claim_flush(&self.profile) {
            return;
        }
        let partition = partition.clone();
        let (profile, retention_bytes) = (self.profile, self.retention_bytes);
        let fail_stop = self.fail_stop.clone();
        tokio::task::spawn_blocking(move || {
            let flushed = partition.flush_if_needed(&profile, false, retention_bytes);
            partition.release_flush();
            match flushed {
                Ok(()) => {}
                Err(err) if crate::fail_stop::out_of_descriptors(&err) => tracing::warn!(
                    "{}-{}: flush to segments postponed: {err}",
                    partition.topic,
                    partition.index
                ),
                Err(err) => fail_stop.stop(format!(
                    "{}-{}: flush to segments failed: {err}",
                    partition.topic, partition.index
                )),
            }
        });
    }

    /// Periodic housekeeping (blocking; the caller runs it on the blocking pool): records the
    /// WAL's durable mark, flushes aged pending batches, and while closed WAL segments exist
    /// flushes and fsyncs every log, then retires the segments they cover. Returns how many
    /// segments were retired. No partition lock is held across an fsync.
    pub fn checkpoint(&self, wal_dir: &Path, wal: &WalShared) -> io::Result<usize> {
        let started = Instant::now();
        wal::record_durable_mark(wal_dir, wal)?;
        let marked = started.elapsed();
        let have_closed = wal.has_closed_segments();
        for partition in self.topics.all_partitions() {
            partition.flush_if_needed(&self.profile, have_closed, self.retention_bytes)?;
            if have_closed {
                partition.sync_log()?;
            }
        }
        tracing::debug!(target: "timeline", event = "checkpoint", mark_us = marked.as_micros() as u64, logs_us = started.elapsed().as_micros() as u64, synced_logs = have_closed);
        if !have_closed {
            return Ok(0);
        }
        wal::retire_covered_segments(wal_dir, wal)
    }

    /// At shutdown (blocking): every pending batch to its segment log, every log fsynced. A
    /// failure is logged; the WAL still holds the batches, and recovery replays them.
    pub fn final_flush(&self) {
        for partition in self.topics.all_partitions() {
            if let Err(err) = partition
                .flush_if_needed(&self.profile, true, self.retention_bytes)
                .and_then(|()| partition.sync_log())
            {
                tracing::error!(
                    "final flush of {}-{} failed: {err}",
                    partition.topic,
                    partition.index
                );
            }
        }
    }
}
/// How often partitions are asked to move written segment data to disk, and how much must
/// have been written for one to do it: small steps, so no fsync of many megabytes ever sits in
/// the disk's queue in front of the WAL's fdatasync (measured in BENCHMARKS.md, "Tail latency").
const LOG_WRITEBACK_INTERVAL: Duration = Duration::from_millis(20);
const LOG_WRITEBACK_BYTES_MIN: u64 = 1 << 20;
/// After a write-back step, a partition's segment data leaves the page cache but for this many
/// of its newest bytes, which consumers reading the tail still find in memory. On this host a
/// page cache grown by a few GiB made every fdatasync slower, the WAL's with them, for the rest
/// of the run (BENCHMARKS.md, "Tail latency", 2026-11-28). PostgreSQL drops its closed WAL files the same way.
const LOG_CACHE_KEPT_BYTES: u64 = 8 << 20;

/// Runs until aborted: `Partition::write_back` of every partition, every
/// `LOG_WRITEBACK_INTERVAL`. A failed fdatasync is fail-stop, as everywhere.
pub async fn write_back_logs(topics: Arc<TopicRegistry>, fail_stop: FailStop) {
    let mut ticker = tokio::time::interval(LOG_WRITEBACK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let topics = topics.clone();
        let result = tokio::task::spawn_blocking(move || {
            for partition in topics.all_partitions() {
                partition.write_back(LOG_WRITEBACK_BYTES_MIN, LOG_CACHE_KEPT_BYTES)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let reason = match result {
            Ok(Ok(())) => continue,
            Ok(Err(err)) => format!("segment write-back failed: {err}"),
            Err(panicked) => format!("segment write-back panicked: {panicked}"),
        };
        fail_stop.stop(reason);
        return;
    }
}

/// One checkpoint, on the blocking pool (`Flusher::checkpoint`). Returns why the broker must
/// stop, if it must: a failed fsync is never retried and a checkpoint that panicked left its
/// partition in an unknown state (fail-stop, as for the WAL); out of file descriptors nothing
/// was written, and the next tick tries again.
pub async fn checkpoint_tick(
    flusher: &Arc<Flusher>,
    wal: &Arc<GroupCommitWal>,
    wal_dir: &Path,
) -> Option<String> {
    let (flusher, wal, dir) = (flusher.clone(), wal.clone(), wal_dir.to_path_buf());
    let result = tokio::task::spawn_blocking(move || flusher.checkpoint(&dir, wal.shared())).await;
    match result {
        Ok(Ok(_)) => None,
        Ok(Err(err)) if crate::fail_stop::out_of_descriptors(&err) => {
            tracing::warn!("WAL checkpoint postponed: {err}");
            None
        }
        Ok(Err(err)) => Some(format!("WAL checkpoint failed: {err}")),
        Err(panicked) => Some(format!("WAL checkpoint panicked: {panicked}")),
    }
}
