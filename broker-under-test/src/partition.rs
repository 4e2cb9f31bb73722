//! One partition: offset assignment, `pending_batches` (recent durable data served from memory),
//! the segment log, idempotent-producer state, its durable end and its high watermark. Without
//! replication the two are one offset; with it the high watermark is what every in-sync replica
//! has made durable (`replication`).
//!
//! The only lock is per partition and is held for offset assignment and queueing, never across
//! an await or an fsync.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use crate::batch::{self, BatchHeader, BatchView};
use crate::leader_epochs::EpochHistory;
use crate::log::{read_batches, PartitionLog, ReadPlan};
use crate::mutex::lock;
use crate::offset_watch::OffsetWatch;
use crate::profile::ProduceFlushProfile;
use crate::replica_state::Replication;
use crate::wal::group_commit::{DurableLog, GroupCommitWal, WalAppend, WalFailed, WalReservation};
use crate::wal::record;
use crate::wal::ReplayLog;

/// Batches remembered per producer for duplicate detection (Kafka keeps the last five).
const PRODUCER_RECENT_BATCHES_MAX: usize = 5;
/// How long a truncation waits for appends already queued to become durable first.
const TRUNCATION_DURABLE_WAIT: Duration = Duration::from_secs(30);
/// Idempotent producers one partition remembers; past it the least recently active one is
/// forgotten (Kafka expires producer state by age; a client inventing producer ids must not
/// grow this map without bound).
const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

#[derive(Clone)]
struct RecentBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    end_offset: i64,
}

#[derive(Clone)]
struct ProducerState {
    epoch: i16,
    last_seq: i32,
    recent: VecDeque<RecentBatch>,
}

enum SequenceCheck {
    Fresh,
    Duplicate { base_offset: i64, end_offset: i64 },
}

struct PartitionState {
    next_offset: i64,
    /// Appended batches not yet in the segment log, oldest first.
    pending_batches: VecDeque<Bytes>,
    pending_bytes: usize,
    oldest_pending: Option<Instant>,
    log: PartitionLog,
    producers: HashMap<i64, ProducerState>,
    epochs: EpochHistory,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: u128,
    pub index: i32,
    state: Mutex<PartitionState>,
    /// End of what this broker's WAL has made durable.
    durable_end: OffsetWatch,
    /// End of what consumers may read: the durable end, or with replication what every
    /// in-sync replica has made durable.
    high_watermark: OffsetWatch,
    /// Set when the partition has more than one replica, or its only replica is elsewhere.
    replication: Option<Arc<Replication>>,
    log_start: AtomicI64,
    /// End offset known durable in segment files (the WAL may be checkpointed up to here).
    synced_end: AtomicI64,
    /// Held by `sync_log` across its fsync and by a truncation, so a sync that began before a
    /// cut never records an end past it. Never taken by a produce request.
    syncing: Mutex<()>,
    /// Held by the one flush writing to the segment files (outside the state lock, so appends
    /// never wait for a segment write) and by a truncation, which must not cut a file being
    /// written.
    flushing: Mutex<()>,
    /// Set while a flush the produce path started is queued or running (`claim_flush`).
    flush_claimed: AtomicBool,
}

/// What an append queued; `durable` resolves when the WAL has synced it.
pub struct Appended {
    pub base_offset: i64,
    pub end_offset: i64,
    /// The leader epoch the batches were appended in.
    pub leader_epoch: i32,
    pub durable: Option<oneshot::Receiver<Result<(), WalFailed>>>,
}

/// Why an append was refused before anything was stored.
#[derive(Debug)]
pub enum AppendError {
    Kafka(ResponseError),
    Wal(WalFailed),
}

/// Records read for a fetch plus the partition's bounds at that moment.
pub struct FetchRead {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start: i64,
}

impl PartitionState {
    fn flush_due(&self, profile: &ProduceFlushProfile) -> bool {
        self.pending_batches.len() >= profile.flush_batches_max
            || self.pending_bytes >= profile.flush_bytes_max
            || self
                .oldest_pending
                .is_some_and(|t| t.elapsed() >= profile.flush_age_max)
    }
}

impl Partition {
    /// Wraps an opened log. `on_stored` already fed every stored batch to `rebuild_producers`.
    pub fn new(
        topic: Arc<str>,
        topic_id: u128,
        index: i32,
        log: PartitionLog,
        epochs: EpochHistory,
        replication: Option<Arc<Replication>>,
    ) -> Self {
        let end = log.end_offset();
        let start = log.start_offset();
        let partition = Self {
            topic,
            topic_id,
            index,
            state: Mutex::new(PartitionState {
                next_offset: end,
                pending_batches: VecDeque::new(),
                pending_bytes: 0,
                oldest_pending: None,
                log,
                producers: HashMap::new(),
                epochs,
            }),
            durable_end: OffsetWatch::default(),
            high_watermark: OffsetWatch::default(),
            replication,
            log_start: AtomicI64::new(start),
            synced_end: AtomicI64::new(end),
            syncing: Mutex::new(()),
            flushing: Mutex::new(()),
            flush_claimed: AtomicBool::new(false),
        };
        partition.durable_end.advance(end);
        // What is on disk at start counts as replicated: the in-sync set of before the restart
        // is not recorded, and consumers could read it before the restart too.
        partition.high_watermark.advance(end);
        partition
    }

    pub fn high_watermark(&self) -> &OffsetWatch {
        &self.high_watermark
    }

    pub fn durable_end(&self) -> &OffsetWatch {
        &self.durable_end
    }

    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.replication.as_ref()
    }

    /// Whether this broker leads the partition (clients produce and fetch here).
    pub fn leads(&self) -> bool {
        self.replication.as_ref().is_none_or(|r| r.is_leader())
    }

    pub fn log_start(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }

    /// Feeds a stored batch to the idempotence table (recovery and replay).
    pub fn remember_stored(&self, stored: &[u8]) {
        let mut state = lock(&self.state);
        remember_producer_batch(&mut state.producers, stored);
        forget_idle_producers(&mut state.producers);
    }

    /// Appends a batch found in the WAL on start (already durable there).
    pub fn replay(&self, stored: Bytes) -> Result<(), String> {
        let mut state = lock(&self.state);
        let base = batch::base_offset(&stored);
        let end = batch::last_offset(&stored) + 1;
        if end <= state.next_offset {
            return Ok(()); // already in the segment log
        }
        if base != state.next_offset {
            return Err(format!(
                "{}-{}: WAL batch at offset {base} but the log ends at {}",
                self.topic, self.index, state.next_offset
            ));
        }
        remember_producer_batch(&mut state.producers, &stored);
        forget_idle_producers(&mut state.producers);
        state
            .log
            .append(std::slice::from_ref(&stored))
            .map_err(|e| e.to_string())?;
        state.epochs.note(&stored);
        state.next_offset = end;
        drop(state);
        self.durable_end.advance(end);
        self.high_watermark.advance(end);
        Ok(())
    }

    /// Assigns offsets to validated batches, queues them on the WAL and on `pending_batches`.
    pub fn append(
        self: &Arc<Self>,
        batches: &[BatchView],
        wal: &GroupCommitWal,
        reservation: WalReservation,
    ) -> Result<Appended, AppendError> {
        let mut state = lock(&self.state);
        // Read under the partition lock, which a truncation holds: an append that passes here
        // is in the log before any cut that follows an election.
        let leader_epoch = match &self.replication {
            None => 0,
            Some(r) => r
                .leading_epoch()
                .ok_or(AppendError::Kafka(ResponseError::NotLeaderOrFollower))?,
        };
        let mut frames = Vec::with_capacity(batches.len());
        let mut stored_batches = Vec::with_capacity(batches.len());
        let mut first_base = None;
        let mut next = state.next_offset;
        // Producers this request's batches advanced: a later batch of the same request is
        // checked against what the earlier ones leave (batch A twice is a duplicate, not two
        // fresh batches), and the table changes only once the request is queued on the WAL.
        let mut staged: HashMap<i64, ProducerState> = HashMap::new();
        for view in batches {
            let producer_id = view.header.producer_id;
            if producer_id >= 0 {
                if let Some((base_offset, end_offset)) =
                    retried_batch(&state.producers, &staged, view, batches.len())?
                {
                    // A retry of a batch already appended: answer with its original offset.
                    return Ok(Appended {
                        base_offset,
                        end_offset,
                        leader_epoch,
                        durable: None,
                    });
                }
            }
            let (frame, stored) =
                record::encode(self.topic_id, self.index, &view.bytes, next, leader_epoch);
            if producer_id >= 0 {
                if let Some(known) = state.producers.get(&producer_id) {
                    staged.entry(producer_id).or_insert_with(|| known.clone());
                }
                remember_producer_batch(&mut staged, &stored);
            }
            frames.push(frame);
            first_base.get_or_insert(next);
            next += view.offset_count();
            stored_batches.push(stored);
        }
        let durable = self
            .enqueue(
                &mut state,
                wal,
                frames,
                stored_batches,
                next,
                Some(reservation),
            )
            .map_err(AppendError::Wal)?;
        if !staged.is_empty() {
            state.producers.extend(staged);
            forget_idle_producers(&mut state.producers);
        }
        Ok(Appended {
            base_offset: first_base.expect("at least one batch"),
            end_offset: next,
            leader_epoch,
            durable: Some(durable),
        })
    }

    /// Queues encoded batches on the WAL and on `pending_batches` (the caller holds the
    /// partition lock). From here the offsets below `end_offset` are taken, whatever happens
    /// next; the receiver resolves when the WAL has made them durable.
    fn enqueue(
        self: &Arc<Self>,
        state: &mut PartitionState,
        wal: &GroupCommitWal,
        frames: Vec<Bytes>,
        stored_batches: Vec<Bytes>,
        end_offset: i64,
        reservation: Option<WalReservation>,
    ) -> Result<oneshot::Receiver<Result<(), WalFailed>>, WalFailed> {
        let (done_tx, done_rx) = oneshot::channel();
        wal.submit(WalAppend {
            frames,
            log: self.clone(),
            end_offset,
            done: Some(done_tx),
            reservation,
        })?;
        state.next_offset = end_offset;
        for stored in stored_batches {
            state.epochs.note(&stored);
            state.pending_bytes += stored.len();
            state.pending_batches.push_back(stored);
        }
        state.oldest_pending.get_or_insert_with(Instant::now);
        Ok(done_rx)
    }

    /// Follower: appends the leader's batches at the offsets the leader gave them (the bytes
    /// are the leader's, so the logs stay byte-identical) and queues them on the WAL. The
    /// receiver resolves when they are durable. Batches must continue the log exactly: the
    /// first base offset is the log's end, and each batch follows the one before.
    pub fn append_replica(
        self: &Arc<Self>,
        batches: &[BatchView],
        leader: i32,
        wal: &GroupCommitWal,
    ) -> Result<oneshot::Receiver<Result<(), WalFailed>>, String> {
        let mut state = lock(&self.state);
        // An election may have happened while the fetch was in flight.
        self.check_follows(leader)?;
        let mut next = state.next_offset;
        let mut frames = Vec::with_capacity(batches.len());
        let mut stored_batches = Vec::with_capacity(batches.len());
        for view in batches {
            let base = batch::base_offset(&view.bytes);
            if base != next {
                return Err(format!(
                    "{}-{}: the leader sent a batch at offset {base}, the log ends at {next}",
                    self.topic, self.index
                ));
            }
            let epoch = batch::leader_epoch(&view.bytes);
            let (frame, stored) =
                record::encode(self.topic_id, self.index, &view.bytes, base, epoch);
            next = batch::last_offset(&stored) + 1;
            frames.push(frame);
            stored_batches.push(stored);
        }
        // Cheap clones (shared buffers): the idempotence table follows the log once queued, so
        // a follower that becomes the leader recognises a retried batch.
        let appended = stored_batches.clone();
        let durable = self
            .enqueue(&mut state, wal, frames, stored_batches, next, None)
            .map_err(|e| e.to_string())?;
        for stored in &appended {
            remember_producer_batch(&mut state.producers, stored);
        }
        forget_idle_producers(&mut state.producers);
        Ok(durable)
    }

    /// The offset the next appended batch gets (a follower fetches from here).
    pub fn log_end(&self) -> i64 {
        lock(&self.state).next_offset
    }

    /// The log end and the epoch of the last batch (-1 for none): what a follower fetches with.
    pub fn log_end_and_epoch(&self) -> (i64, i32) {
        let state = lock(&self.state);
        (state.next_offset, state.epochs.latest())
    }

    /// Where a follower may fetch from: its log end and the epoch of its last batch, but only
    /// once everything below that end is durable here. A replica fetch tells the leader that
    /// the follower holds everything below its offset (the leader moves the high watermark
    /// and acks=all writes on it), so an append still waiting for the local WAL must not be
    /// claimed; `None` until it is durable.
    pub fn durable_fetch_position(&self) -> Option<(i64, i32)> {
        let state = lock(&self.state);
        (self.durable_end.get() >= state.next_offset)
            .then(|| (state.next_offset, state.epochs.latest()))
    }

    /// The largest epoch not above `epoch` in this log, and the offset where it ends.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let state = lock(&self.state);
        state.epochs.end_offset_for(epoch, state.next_offset)
    }

    /// Follower of `leader`: cuts the log at the first batch that holds `offset` or a later
    /// one, so it ends at or below `offset` (batches are never split). Appends already queued
    /// are made durable first; the cut is written to the WAL, durably, before the files
    /// change, so a restart replays it in order. Returns the new log end. Refused once this
    /// broker no longer follows `leader` (an election while the fetch was in flight): a leader
    /// never cuts its log.
    pub async fn truncate(
        self: &Arc<Self>,
        offset: i64,
        leader: i32,
        wal: &GroupCommitWal,
    ) -> Result<i64, String> {
        self.check_follows(leader)?;
        let queued_end = self.log_end();
        if offset >= queued_end {
            return Ok(queued_end);
        }
        self.durable_end
            .wait_past(queued_end - 1, TRUNCATION_DURABLE_WAIT)
            .await;
        if self.durable_end.get() < queued_end {
            return Err(format!(
                "{}-{}: appends not durable within {TRUNCATION_DURABLE_WAIT:?}",
                self.topic, self.index
            ));
        }
        let (done_tx, done_rx) = oneshot::channel();
        wal.submit(WalAppend {
            frames: vec![record::encode_truncation(self.topic_id, self.index, offset)],
            log: self.clone(),
            end_offset: offset,
            done: Some(done_tx),
            reservation: None,
        })
        .map_err(|e| e.to_string())?;
        match tokio::time::timeout(TRUNCATION_DURABLE_WAIT, done_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(WalFailed(reason)))) => return Err(reason.to_string()),
            Ok(Err(_)) => return Err("WAL writer stopped".into()),
            Err(_) => {
                return Err(format!(
                    "WAL not durable within {TRUNCATION_DURABLE_WAIT:?}"
                ))
            }
        }
        self.cut(offset, Some(leader))
    }

    fn check_follows(&self, leader: i32) -> Result<(), String> {
        match &self.replication {
            Some(r) if r.is_follower() && r.leader() == leader => Ok(()),
            _ => Err(format!(
                "{}-{}: no longer a follower of broker {leader}",
                self.topic, self.index
            )),
        }
    }

    /// Replays a truncation found in the WAL on start.
    pub fn replay_truncation(&self, offset: i64) -> Result<(), String> {
        self.cut(offset, None).map(|_| ())
    }

    /// Cuts the log; with `leader`, only while this broker follows it (checked under the
    /// partition lock, which the produce path's leader check also holds).
    fn cut(&self, offset: i64, leader: Option<i32>) -> Result<i64, String> {
        let _syncing = lock(&self.syncing);
        let _flushing = lock(&self.flushing);
        let mut state = lock(&self.state);
        if let Some(leader) = leader {
            self.check_follows(leader)?;
        }
        if offset >= state.next_offset {
            return Ok(state.next_offset);
        }
        let end = if offset >= state.log.end_offset() {
            let keep = state
                .pending_batches
                .iter()
                .take_while(|b| batch::last_offset(b) < offset)
                .count();
            let end = state
                .pending_batches
                .get(keep)
                .map_or(state.next_offset, |b| batch::base_offset(b));
            let dropped: usize = state.pending_batches.drain(keep..).map(|b| b.len()).sum();
            state.pending_bytes -= dropped;
            end
        } else {
            state.pending_batches.clear();
            state.pending_bytes = 0;
            state
                .log
                .truncate(offset)
                .map_err(|e| format!("{}-{}: {e}", self.topic, self.index))?
        };
        if state.pending_batches.is_empty() {
            state.oldest_pending = None;
        }
        state.next_offset = end;
        state.epochs.truncate(end);
        forget_producer_batches_from(&mut state.producers, end);
        self.synced_end.fetch_min(end, Ordering::AcqRel);
        self.durable_end.cut(end);
        self.high_watermark.cut(end);
        Ok(end)
    }

    /// Moves durable pending batches to the segment log when `profile` says so (or always when
    /// `force`), then applies retention. The batches stay pending (and readable) while they
    /// are written, outside the state lock; without `force`, a flush already writing makes
    /// this one a no-op (it moves them next time).
    pub fn flush_if_needed(
        &self,
        profile: &ProduceFlushProfile,
        force: bool,
        retention_bytes: Option<u64>,
    ) -> io::Result<()> {
        let _flushing = if force {
            lock(&self.flushing)
        } else {
            match self.flushing.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
                Err(std::sync::TryLockError::Poisoned(_)) => {
                    panic!("mutex poisoned: a thread panicked while holding it")
                }
            }
        };
        let durable_end = self.durable_end.get();
        let (moving, target) = {
            let mut state = lock(&self.state);
            if !(force || state.flush_due(profile)) || state.pending_batches.is_empty() {
                return Ok(());
            }
            let durable = state
                .pending_batches
                .iter()
                .take_while(|b| batch::last_offset(b) < durable_end)
                .count();
            if durable == 0 {
                return Ok(());
            }
            let moving: Vec<Bytes> = state.pending_batches.range(..durable).cloned().collect();
            let target = state.log.append_target()?;
            (moving, target)
        };
        // Written first, drained after: a failed write leaves the batches pending (and
        // readable), never lost from both places.
        target.write(&moving)?;
        let mut state = lock(&self.state);
        state.log.appended(&moving);
        state.pending_batches.drain(..moving.len());
        state.pending_bytes -= moving.iter().map(Bytes::len).sum::<usize>();
        state.oldest_pending = if state.pending_batches.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        let start = state.log.enforce_retention(retention_bytes)?;
        self.log_start.store(start, Ordering::Release);
        Ok(())
    }

    /// Whether the caller should start a flush now: `profile` says one is due and none the
    /// caller started is queued or running. The caller runs `flush_if_needed`, then
    /// `release_flush`.
    pub fn claim_flush(&self, profile: &ProduceFlushProfile) -> bool {
        if self.flush_claimed.load(Ordering::Acquire) {
            return false;
        }
        let due = lock(&self.state).flush_due(profile);
        due && !self.flush_claimed.swap(true, Ordering::AcqRel)
    }

    pub fn release_flush(&self) {
        self.flush_claimed.store(false, Ordering::Release);
    }

    /// fsyncs the segment log; afterwards the WAL is no longer needed below `synced_end`.
    pub fn sync_log(&self) -> io::Result<()> {
        let _syncing = lock(&self.syncing);
        let unsynced = lock(&self.state).log.take_unsynced();
        if let Some(unsynced) = unsynced {
            // Outside the lock: producers keep appending while the segments are fsynced. A
            // roll in between leaves the old segment for the next sync, and `end` is in the
            // files taken here either way.
            // A failure is returned, never retried: the caller fail-stops the broker.
            unsynced.sync()?;
            // Durable before the WAL covering these offsets may go (it goes by `synced_end`).
            unsynced.record_recovery_point()?;
            self.synced_end.fetch_max(unsynced.end, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Starts moving segment data to disk once `min_bytes` were written since the last call
    /// (`PartitionLog::take_writeback`), then lets the page cache drop what is on disk but the
    /// newest `cache_kept_bytes`. Nothing is recorded: `sync_log` still decides what the WAL
    /// may drop, and finds less to do.
    pub fn write_back(&self, min_bytes: u64, cache_kept_bytes: u64) -> io::Result<()> {
        let Some(files) = lock(&self.state)
            .log
            .take_writeback(min_bytes, cache_kept_bytes)
        else {
            return Ok(());
        };
        let started = Instant::now();
        for (file, uncached_end) in files {
            // A failure is returned, never retried (the caller fail-stops): after a failed
            // fsync the kernel may have marked the pages clean.
            file.sync_data()?;
            drop_from_page_cache(&file, uncached_end);
        }
        tracing::debug!(target: "timeline", event = "writeback", us = started.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Reads batches below the high watermark from `offset`, up to `max_bytes` (at least one
    /// batch): what a consumer may see.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<FetchRead, ResponseError> {
        self.read_below(offset, max_bytes, self.high_watermark.get())
    }

    /// Reads durable batches from `offset` for a follower: below the durable end, which may be
    /// past the high watermark (the follower's copy is what moves the mark).
    pub fn read_for_follower(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<FetchRead, ResponseError> {
        let mut read = self.read_below(offset, max_bytes, self.durable_end.get())?;
        read.high_watermark = self.high_watermark.get();
        Ok(read)
    }

    fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        high_watermark: i64,
    ) -> Result<FetchRead, ResponseError> {
        let (plan, pending): (Option<ReadPlan>, Vec<Bytes>) = {
            let state = lock(&self.state);
            let log_start = state.log.start_offset();
            if offset < log_start || offset > high_watermark {
                return Err(ResponseError::OffsetOutOfRange);
            }
            if offset < state.log.end_offset() {
                (state.log.plan_read(offset), Vec::new())
            } else {
                let mut taken = Vec::new();
                let mut bytes = 0;
                for stored in &state.pending_batches {
                    let last = batch::last_offset(stored);
                    if last < offset {
                        continue;
                    }
                    if last >= high_watermark
                        || (bytes + stored.len() > max_bytes && !taken.is_empty())
                    {
                        break;
                    }
                    bytes += stored.len();
                    taken.push(stored.clone());
                }
                (None, taken)
            }
        };
        let records = match plan {
            Some(plan) => read_batches(&plan, offset, max_bytes, high_watermark)
                .map_err(|_| ResponseError::KafkaStorageError)?,
            None if pending.len() == 1 => pending.into_iter().next().expect("one"),
            None => pending.concat().into(),
        };
        Ok(FetchRead {
            records,
            high_watermark,
            log_start: self.log_start(),
        })
    }

    /// Deletes the partition's files (topic deletion).
    pub fn destroy(self) -> io::Result<()> {
        let state = self.state.into_inner().expect("poisoned");
        state.log.destroy()
    }
}

fn check_sequence(
    producers: &HashMap<i64, ProducerState>,
    view: &BatchHeader,
) -> Result<SequenceCheck, ResponseError> {
    let Some(producer) = producers.get(&view.producer_id) else {
        return Ok(SequenceCheck::Fresh);
    };
    if view.producer_epoch < producer.epoch {
        return Err(ResponseError::InvalidProducerEpoch);
    }
    if view.producer_epoch > producer.epoch {
        return Ok(SequenceCheck::Fresh);
    }
    let last_seq = view.base_sequence.wrapping_add(view.record_count - 1);
    if let Some(dup) = producer
        .recent
        .iter()
        .find(|r| r.first_seq == view.base_sequence && r.last_seq == last_seq)
    {
        return Ok(SequenceCheck::Duplicate {
            base_offset: dup.base_offset,
            end_offset: dup.end_offset,
        });
    }
    if view.base_sequence != producer.last_seq.wrapping_add(1) {
        return Err(ResponseError::OutOfOrderSequenceNumber);
    }
    Ok(SequenceCheck::Fresh)
}

/// Drops the least recently active producers (their latest batch is the oldest) while the
/// table is over `PRODUCERS_PER_PARTITION_MAX`.
fn forget_idle_producers(producers: &mut HashMap<i64, ProducerState>) {
    while producers.len() > PRODUCERS_PER_PARTITION_MAX {
        let idle = producers
            .iter()
            .min_by_key(|(_, p)| p.recent.back().map_or(i64::MIN, |r| r.end_offset))
            .map(|(&id, _)| id)
            .expect("not empty");
        producers.remove(&idle);
    }
}

/// Forgets what producers appended at or past `end` (the log was cut there): a producer whose
/// remembered batches all went is forgotten, so its next batch is taken as it comes.
fn forget_producer_batches_from(producers: &mut HashMap<i64, ProducerState>, end: i64) {
    producers.retain(|_, producer| {
        producer.recent.retain(|r| r.end_offset <= end);
        match producer.recent.back() {
            Some(last) => {
                producer.last_seq = last.last_seq;
                true
            }
            None => false,
        }
    });
}

/// Checks an idempotent producer's batch against what its earlier batches left: the
/// producers `staged` by this request's earlier batches first, else the partition's table.
/// A request of one batch that repeats an appended batch is a retry: its original offsets.
/// A duplicate inside a request of several batches is refused.
#[inline]
fn retried_batch(
    producers: &HashMap<i64, ProducerState>,
    staged: &HashMap<i64, ProducerState>,
    view: &BatchView,
    batches_in_request: usize,
) -> Result<Option<(i64, i64)>, AppendError> {
    let table = if staged.contains_key(&view.header.producer_id) {
        staged
    } else {
        producers
    };
    match check_sequence(table, &view.header).map_err(AppendError::Kafka)? {
        SequenceCheck::Duplicate {
            base_offset,
            end_offset,
        } if batches_in_request == 1 => Ok(Some((base_offset, end_offset))),
        SequenceCheck::Duplicate { .. } => {
            Err(AppendError::Kafka(ResponseError::DuplicateSequenceNumber))
        }
        SequenceCheck::Fresh => Ok(None),
    }
}

fn remember_producer_batch(producers: &mut HashMap<i64, ProducerState>, stored: &[u8]) {
    let header = batch::header(stored);
    if header.producer_id < 0 {
        return;
    }
    let producer = producers
        .entry(header.producer_id)
        .or_insert_with(|| ProducerState {
            epoch: header.producer_epoch,
            last_seq: -1,
            recent: VecDeque::new(),
        });
    if header.producer_epoch > producer.epoch {
        producer.epoch = header.producer_epoch;
        producer.recent.clear();
    }
    let last_seq = header.base_sequence.wrapping_add(header.record_count - 1);
    producer.last_seq = last_seq;
    if producer.recent.len() == PRODUCER_RECENT_BATCHES_MAX {
        producer.recent.pop_front();
    }
    producer.recent.push_back(RecentBatch {
        first_seq: header.base_sequence,
        last_seq,
        base_offset: batch::base_offset(stored),
        end_offset: batch::last_offset(stored) + 1,
    });
}

impl DurableLog for Partition {
    /// Without replication the durable end is the high watermark too; with it, the keeper is
    /// woken to advance the high watermark under the follower table, off the WAL's thread.
    fn on_durable(&self, end_offset: i64) {
        self.durable_end.advance(end_offset);
        match &self.replication {
            None => self.high_watermark.advance(end_offset),
            Some(replication) => replication.durable_advanced(),
        }
    }

    fn synced_end(&self) -> i64 {
        self.synced_end.load(Ordering::Acquire)
    }
}

/// Advises the kernel to drop `file`'s cached pages below `end` (`None`: all of them). Only
/// clean pages go; it is advice, so a refusal changes nothing but the cache and is not an
/// error.
fn drop_from_page_cache(file: &std::fs::File, end: Option<u64>) {
    let len = match end {
        Some(0) => return,
        Some(end) => std::num::NonZeroU64::new(end),
        None => None,
    };
    if let Err(err) = rustix::fs::fadvise(file, 0, len, rustix::fs::Advice::DontNeed) {
        tracing::debug!("page cache advice refused: {err}");
    }
}
impl ReplayLog for Partition {
    fn replay(&self, batch: Bytes) -> Result<(), String> {
        Partition::replay(self, batch)
    }

    fn replay_truncation(&self, end_offset: i64) -> Result<(), String> {
        Partition::replay_truncation(self, end_offset)
    }
}
