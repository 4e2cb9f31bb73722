//! `GroupCommitWal`: one writer thread merges the appends of every concurrent produce request
//! into one write and one fdatasync, then releases each waiter. A waiter is released only when
//! its bytes are durable; a failed write or fsync is fail-stop (never retried: after a failed
//! fsync Linux may mark the dirty pages clean, so a retry would "succeed" and lie).
//!
//! The WAL knows a partition only as a `DurableLog`: told when its appends are durable, asked
//! how far its own files are synced. It owns the byte budget that bounds its queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::commit_times::CommitTimes;
use super::record;
use super::storage::WalStorage;
use crate::fail_stop::FailStop;
use crate::mutex::lock;

/// When the WAL calls fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// One fdatasync per group commit (default; every ack is durable).
    Group,
    /// One fdatasync per produce request, no merging (durable but slow: models a lost group commit).
    PerAppend,
    /// Never fsync (acks after write(2) only; unsafe, for comparison runs).
    Never,
    /// Instead of each group commit's fdatasync, wait `--simulated-fsync-us`: a disk whose
    /// sync always takes the same time. For comparisons of code that must not carry the
    /// disk's own variation (acks are not durable: never for data that matters).
    Simulated,
}

#[derive(Debug, Clone, Error)]
#[error("WAL failed and stopped accepting writes: {0}")]
pub struct WalFailed(pub Arc<str>);

/// A log whose appends the WAL makes durable (a partition): all the WAL knows of it.
pub trait DurableLog: Send + Sync {
    /// Everything appended below `end_offset` is durable (called by the writer thread, in
    /// order of the log's appends).
    fn on_durable(&self, end_offset: i64);
    /// The log's own files hold everything below this offset durably: a closed WAL segment
    /// may go once every log it holds is synced past what it wrote there.
    fn synced_end(&self) -> i64;
}

/// Bytes of the WAL's queue taken by one append until its bytes are durable.
pub struct WalReservation {
    /// Returned to the budget when the reservation is dropped.
    _permit: OwnedSemaphorePermit,
}

/// Settings of the writer thread.
#[derive(Debug, Clone)]
pub struct WalWriterConfig {
    pub fsync: FsyncPolicy,
    /// How long the writer waits for more appends after the first one of a group.
    pub group_commit_linger: Duration,
    /// A group stops growing once it holds this many bytes.
    pub group_commit_bytes_max: usize,
    /// The active segment rolls once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// Bytes queued for the writer across all appends; `reserve` waits beyond it.
    pub queued_bytes_max: usize,
    /// What a sync takes under `FsyncPolicy::Simulated`.
    pub simulated_fsync: Duration,
}

/// One produce request's frames for one partition.
pub struct WalAppend {
    pub frames: Vec<Bytes>,
    pub log: Arc<dyn DurableLog>,
    /// Offset after the last record of these frames.
    pub end_offset: i64,
    pub done: Option<oneshot::Sender<Result<(), WalFailed>>>,
    /// Held until the bytes are durable: bounds the bytes queued for the writer.
    pub reservation: Option<WalReservation>,
}

/// A closed WAL segment and, per log, the end offset of the last record it holds.
pub struct ClosedSegment {
    pub seq: u64,
    pub coverage: Vec<(Weak<dyn DurableLog>, i64)>,
}

/// Identity of a log for the coverage maps (its address; the data pointer, not the vtable).
pub fn log_key(log: &Arc<dyn DurableLog>) -> usize {
    Arc::as_ptr(log) as *const () as usize
}

/// State shared between the writer thread, the produce path and the checkpointer.
#[derive(Default)]
pub struct WalShared {
    failed: AtomicBool,
    /// Set by `GroupCommitWal::close`: the writer exits once its queue is empty.
    closing: AtomicBool,
    /// Closed segments, oldest first; the checkpointer removes entries (and their files).
    pub closed: Mutex<Vec<ClosedSegment>>,
    /// The active segment and how many of its bytes are fsynced (the checkpointer records it
    /// as the WAL's durable mark; see `wal::DurableMark`).
    pub synced: Mutex<(u64, u64)>,
    /// The durable mark last written to disk by the checkpointer.
    pub recorded: Mutex<(u64, u64)>,
}

impl WalShared {
    /// Whether closed segments wait to be retired (a checkpoint then syncs every log).
    pub fn has_closed_segments(&self) -> bool {
        !lock(&self.closed).is_empty()
    }
}

/// Group commits at least this slow are written to the `timeline` log target (debug level).
const SLOW_COMMIT_LOGGED: Duration = Duration::from_millis(1);

/// Handle to the WAL writer thread.
pub struct GroupCommitWal {
    tx: Sender<WalAppend>,
    shared: Arc<WalShared>,
    /// Bytes queued for the writer (`WalWriterConfig::queued_bytes_max`).
    budget: Arc<Semaphore>,
    queued_bytes_max: usize,
    /// Taken by `close`, never on the produce path.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How often an idle writer looks whether `close` was called.
const WRITER_CLOSE_POLL: Duration = Duration::from_millis(50);

impl GroupCommitWal {
    /// Starts the writer thread over `storage`. `closed` lists segments left by recovery.
    /// `fail_stop` is stopped, from the writer thread, when a write, fsync or roll fails.
    pub fn start(
        storage: Box<dyn WalStorage>,
        config: WalWriterConfig,
        closed: Vec<ClosedSegment>,
        fail_stop: FailStop,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(WalShared {
            closed: Mutex::new(closed),
            ..WalShared::default()
        });
        let budget = Arc::new(Semaphore::new(config.queued_bytes_max));
        let queued_bytes_max = config.queued_bytes_max;
        let writer = Writer {
            storage,
            config,
            shared: shared.clone(),
            coverage: HashMap::new(),
            buf: Vec::new(),
            commit_times: CommitTimes::when_logged(),
        };
        let writer = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx, fail_stop))?;
        Ok(Self {
            tx,
            shared,
            budget,
            queued_bytes_max,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Takes `bytes` of the writer's queue, waiting while the writer is that far behind; the
    /// reservation goes with an append and returns when its bytes are durable. An append
    /// larger than the whole queue takes all of it (and waits for an empty queue).
    pub async fn reserve(&self, bytes: usize) -> WalReservation {
        let bytes = u32::try_from(bytes.min(self.queued_bytes_max)).unwrap_or(u32::MAX);
        WalReservation {
            _permit: self
                .budget
                .clone()
                .acquire_many_owned(bytes)
                .await
                .expect("the WAL's budget is never closed"),
        }
    }

    /// Stops the writer once its queue is empty and waits until it and its storage (with any
    /// segment being prepared) are done: after this nothing of this broker touches the WAL
    /// directory, so a broker started on it next (in this process too) finds it still.
    /// Appends submitted later are answered with an error.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }

    /// Queues an append; never blocks (a produce append carries a `reserve`d share of the
    /// queue; replica appends and cuts carry none: a fetcher waits for one fetch's appends to be
    /// durable before the next).
    pub fn submit(&self, append: WalAppend) -> Result<(), WalFailed> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(WalFailed("an earlier write or fsync failed".into()));
        }
        self.tx
            .send(append)
            .map_err(|_| WalFailed("the WAL writer has stopped".into()))
    }

    pub fn shared(&self) -> &Arc<WalShared> {
        &self.shared
    }
}

struct Writer {
    storage: Box<dyn WalStorage>,
    config: WalWriterConfig,
    shared: Arc<WalShared>,
    /// Per log (`log_key`), the end offset written into the active segment.
    coverage: HashMap<usize, (Weak<dyn DurableLog>, i64)>,
    buf: Vec<u8>,
    /// Per-second commit summaries, when the `timeline` target is on.
    commit_times: Option<CommitTimes>,
}

impl Writer {
    fn run(mut self, rx: Receiver<WalAppend>, fail_stop: FailStop) {
        let mut group: Vec<WalAppend> = Vec::new();
        while let Some(first) = next_append(&rx, &self.shared) {
            let mut group_bytes = frames_len(&first);
            group.push(first);
            let deadline = Instant::now() + self.config.group_commit_linger;
            while group_bytes < self.config.group_commit_bytes_max {
                let next = if self.config.group_commit_linger.is_zero() {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok()
                };
                let Some(append) = next else { break };
                group_bytes += frames_len(&append);
                group.push(append);
            }
            let committed = self.commit(&group);
            if committed.is_ok() {
                self.acknowledge(&mut group);
            }
            // A failed roll is fail-stop too: the closed segment's coverage would be lost, and
            // a checkpoint could delete a segment whose partitions are not yet synced.
            let outcome = committed
                .map_err(|err| format!("WAL write/fsync failed: {err}"))
                .and_then(|()| {
                    self.maintain_segments()
                        .map_err(|err| format!("WAL segment roll failed: {err}"))
                });
            if let Err(reason) = outcome {
                let reason: Arc<str> = reason.into();
                self.shared.failed.store(true, Ordering::Release);
                for append in group.drain(..) {
                    fail(append, &reason);
                }
                fail_stop.stop(reason.to_string());
                // Fail-stop: answer every later append with the error, never write again.
                while let Some(append) = next_append(&rx, &self.shared) {
                    fail(append, &reason);
                }
                return;
            }
        }
    }

    /// Durable: advances each log's durable end and answers the waiting requests.
    fn acknowledge(&mut self, group: &mut Vec<WalAppend>) {
        for mut append in group.drain(..) {
            let entry = self
                .coverage
                .entry(log_key(&append.log))
                .or_insert_with(|| (Arc::downgrade(&append.log), append.end_offset));
            entry.1 = entry.1.max(append.end_offset);
            append.log.on_durable(append.end_offset);
            if let Some(done) = append.done.take() {
                let _ = done.send(Ok(()));
            }
        }
    }

    fn commit(&mut self, group: &[WalAppend]) -> std::io::Result<()> {
        match self.config.fsync {
            FsyncPolicy::PerAppend => group
                .iter()
                .try_for_each(|append| self.write_durably(std::slice::from_ref(append))),
            FsyncPolicy::Group => self.write_durably(group),
            FsyncPolicy::Never => self.write(group),
            FsyncPolicy::Simulated => {
                self.write(group)?;
                std::thread::sleep(self.config.simulated_fsync);
                Ok(())
            }
        }
    }

    /// One write and one fdatasync, timed for the `timeline` target.
    fn write_durably(&mut self, appends: &[WalAppend]) -> std::io::Result<()> {
        let started = Instant::now();
        self.write(appends)?;
        let written = Instant::now();
        self.sync()?;
        let synced = Instant::now();
        let total = synced - started;
        if total >= SLOW_COMMIT_LOGGED {
            tracing::debug!(target: "timeline", event = "wal_commit", appends = appends.len(), bytes = self.buf.len(), write_us = (written - started).as_micros() as u64, total_us = total.as_micros() as u64);
        }
        if let Some(times) = &mut self.commit_times {
            if let Some(summary) =
                times.record(appends.len(), self.buf.len(), synced - written, synced)
            {
                summary.log();
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.storage.sync()?;
        *lock(&self.shared.synced) = (self.storage.active_seq(), self.storage.active_len());
        Ok(())
    }

    /// Writes the group's frames, each stamped for the active segment (`record::SegmentStamp`).
    fn write(&mut self, group: &[WalAppend]) -> std::io::Result<()> {
        self.buf.clear();
        let stamp = record::SegmentStamp::of(self.storage.active_seq());
        for frame in group.iter().flat_map(|a| a.frames.iter()) {
            let start = self.buf.len();
            self.buf.extend_from_slice(frame);
            stamp.apply(&mut self.buf[start..]);
        }
        self.storage.append(&self.buf)
    }

    fn maintain_segments(&mut self) -> std::io::Result<()> {
        if self.storage.active_len() >= self.config.segment_bytes_max {
            let seq = self.storage.active_seq();
            let started = Instant::now();
            let next = self.storage.roll()?;
            tracing::debug!(target: "timeline", event = "wal_roll", seq = next, us = started.elapsed().as_micros() as u64);
            *lock(&self.shared.synced) = (next, 0);
            let coverage = self.coverage.drain().map(|(_, v)| v).collect();
            lock(&self.shared.closed).push(ClosedSegment { seq, coverage });
        }
        Ok(())
    }
}

/// The next queued append; `None` once every sender is gone, or once `close` was called and
/// the queue is empty.
fn next_append(rx: &Receiver<WalAppend>, shared: &WalShared) -> Option<WalAppend> {
    loop {
        match rx.recv_timeout(WRITER_CLOSE_POLL) {
            Ok(append) => return Some(append),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) if shared.closing.load(Ordering::Acquire) => {
                return None
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

fn frames_len(append: &WalAppend) -> usize {
    append.frames.iter().map(Bytes::len).sum()
}

fn fail(mut append: WalAppend, reason: &Arc<str>) {
    if let Some(done) = append.done.take() {
        let _ = done.send(Err(WalFailed(reason.clone())));
    }
}
