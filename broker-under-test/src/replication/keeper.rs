//! The leader side's background work: after a local group commit, and on a tick, move each led
//! replicated partition's high watermark and shrink its in-sync set by lag. One task per
//! broker, woken by the WAL writer through a `Notify` (so the writer never takes the follower
//! tables' locks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::replica_state::IsrChange;
use crate::topics::TopicRegistry;

/// How often the in-sync sets are checked for lagging followers when nothing is committed.
pub fn tick(lag_max: Duration) -> Duration {
    (lag_max / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Runs until the broker aborts the task.
pub async fn run(topics: Arc<TopicRegistry>, wake: Arc<Notify>, lag_max: Duration) {
    let tick = tick(lag_max);
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        for partition in topics.all_partitions() {
            let Some(replication) = partition.replication().filter(|r| r.is_leader()) else {
                continue;
            };
            let change = replication.check(
                partition.durable_end().get(),
                partition.high_watermark(),
                now,
            );
            if let Some(IsrChange::Left(follower)) = change {
                tracing::warn!(
                    "{}-{}: follower {follower} left the in-sync set (no catch-up for {lag_max:?})",
                    partition.topic,
                    partition.index
                );
            }
        }
    }
}
