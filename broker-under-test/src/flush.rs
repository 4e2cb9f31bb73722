//! When durable batches move from a partition's `pending_batches` to its segment log, and when
//! the logs are fsynced so that the WAL may let go of what they hold. Three moments, one home:
//! - after a produce response: when the flush profile says one is due (`after_produce`);
//! - at each checkpoint: batches older than the profile allows, and, while closed WAL segments
//!   wait to be retired, every log flushed and fsynced so they can go (`checkpoint`);
//! - at shutdown: everything, fsynced (`final_flush`).
//!
//! Nothing here is on the WAL's commit path: an ack waits only for the WAL's fdatasync.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::BrokerConfig;
use crate::fail_stop::FailStop;
use crate::partition::Partition;
use crate::profile::ProduceFlushProfile;
use crate::topics::TopicRegistry;
use crate::wal::{self, group_commit::WalShared};

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
