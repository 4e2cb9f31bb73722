//! An offset that only grows, with waiters: what a partition's durable end and high watermark
//! are, shared by the partition and its replication state.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// An offset that only grows, with waiters: a partition's durable end and its high watermark.
#[derive(Default)]
pub struct OffsetWatch {
    offset: AtomicI64,
    advanced: Notify,
}

impl OffsetWatch {
    pub fn get(&self) -> i64 {
        self.offset.load(Ordering::Acquire)
    }

    pub fn advance(&self, end_offset: i64) {
        if self.offset.fetch_max(end_offset, Ordering::AcqRel) < end_offset {
            self.advanced.notify_waiters();
        }
    }

    /// Moves the offset back to at most `end_offset`: only when the log is cut there.
    pub(crate) fn cut(&self, end_offset: i64) {
        self.offset.fetch_min(end_offset, Ordering::AcqRel);
    }

    /// Waits until the offset passes `offset`, or `timeout` elapses.
    pub async fn wait_past(&self, offset: i64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.advanced.notified();
            if self.get() > offset {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}
