//! One partition's replication state: its replicas and leader (fixed by the cluster's
//! assignment), and on the leader the followers' durable ends and the in-sync set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::partition::OffsetWatch;
use crate::wal::group_commit::lock;

/// What the leader knows of one follower.
#[derive(Debug, Clone)]
struct Follower {
    id: i32,
    /// The follower's durable end: the offset of its latest fetch (it fetches again only once
    /// what it appended is durable). -1 until it fetches.
    durable_end: i64,
    /// When it last fetched from at or past the leader's durable end.
    caught_up_at: Instant,
    in_sync: bool,
}

/// How a fetch changed the in-sync set, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsrChange {
    Joined(i32),
    Left(i32),
}

pub struct Replication {
    replicas: Vec<i32>,
    leader: i32,
    local: i32,
    lag_max: Duration,
    /// Leader only: one entry per follower. Taken by follower fetches and the keeper, never by
    /// a produce request.
    followers: Mutex<Vec<Follower>>,
    /// Replicas in sync, the leader included; read without a lock by acks=all.
    in_sync: AtomicUsize,
    /// Follower only: the in-sync set as the leader last reported it (for Metadata).
    reported_isr: Mutex<Vec<i32>>,
    /// The broker's keeper, woken when a local group commit made more of a leader's log durable.
    keeper: Arc<Notify>,
}

impl Replication {
    /// `replicas[0]` is the leader. The in-sync set starts as the leader alone: a follower
    /// joins once it has fetched up to the high watermark, so nothing is claimed of a follower
    /// the leader has not heard from since it started.
    pub fn new(replicas: Vec<i32>, local: i32, lag_max: Duration, keeper: Arc<Notify>) -> Self {
        let leader = replicas[0];
        let now = Instant::now();
        let followers = if local == leader {
            replicas[1..]
                .iter()
                .map(|&id| Follower {
                    id,
                    durable_end: -1,
                    caught_up_at: now,
                    in_sync: false,
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            leader,
            local,
            lag_max,
            followers: Mutex::new(followers),
            in_sync: AtomicUsize::new(1),
            reported_isr: Mutex::new(vec![leader]),
            keeper,
            replicas,
        }
    }

    /// The local WAL made more of this partition durable: on a leader the high watermark may
    /// move (the keeper moves it; this runs on the WAL writer thread and takes no lock).
    pub fn durable_advanced(&self) {
        if self.is_leader() {
            self.keeper.notify_one();
        }
    }

    pub fn replicas(&self) -> &[i32] {
        &self.replicas
    }

    pub fn leader(&self) -> i32 {
        self.leader
    }

    pub fn is_leader(&self) -> bool {
        self.local == self.leader
    }

    pub fn is_follower(&self) -> bool {
        !self.is_leader() && self.replicas.contains(&self.local)
    }

    /// Replicas in sync, the leader included.
    pub fn in_sync_count(&self) -> usize {
        self.in_sync.load(Ordering::Acquire)
    }

    /// The in-sync set: the leader's own, or on a follower what the leader last reported.
    pub fn isr(&self) -> Vec<i32> {
        if !self.is_leader() {
            return lock(&self.reported_isr).clone();
        }
        let followers = lock(&self.followers);
        std::iter::once(self.leader)
            .chain(followers.iter().filter(|f| f.in_sync).map(|f| f.id))
            .collect()
    }

    /// Follower: records the in-sync set the leader reports.
    pub fn set_reported_isr(&self, isr: Vec<i32>) {
        *lock(&self.reported_isr) = isr;
    }

    /// Leader: a follower fetched from `offset`, so everything before it is durable on it.
    /// Advances `high_watermark` and returns any change of the in-sync set; `None` when
    /// `follower` is not a follower of this partition.
    pub fn follower_fetched(
        &self,
        follower: i32,
        offset: i64,
        leader_durable_end: i64,
        high_watermark: &OffsetWatch,
        now: Instant,
    ) -> Option<Option<IsrChange>> {
        let mut followers = lock(&self.followers);
        let f = followers.iter_mut().find(|f| f.id == follower)?;
        f.durable_end = f.durable_end.max(offset);
        if offset >= leader_durable_end {
            f.caught_up_at = now;
        }
        // Read under the table's lock, which every advance of a replicated partition's high
        // watermark holds: a follower joins only if it has everything below the mark.
        let joined = !f.in_sync && f.durable_end >= high_watermark.get();
        if joined {
            f.in_sync = true;
        }
        let left = self.settle(&mut followers, leader_durable_end, high_watermark, now);
        Some(joined.then_some(IsrChange::Joined(follower)).or(left))
    }

    /// Leader: drops followers that lagged too long and advances `high_watermark` (after a
    /// local group commit, or on the keeper's tick).
    pub fn check(
        &self,
        leader_durable_end: i64,
        high_watermark: &OffsetWatch,
        now: Instant,
    ) -> Option<IsrChange> {
        let mut followers = lock(&self.followers);
        self.settle(&mut followers, leader_durable_end, high_watermark, now)
    }

    /// Shrinks the in-sync set by lag, publishes its size, and advances the high watermark to
    /// the smallest durable end among the in-sync replicas. Called with the table locked.
    fn settle(
        &self,
        followers: &mut [Follower],
        leader_durable_end: i64,
        high_watermark: &OffsetWatch,
        now: Instant,
    ) -> Option<IsrChange> {
        let mut left = None;
        for f in followers.iter_mut() {
            if f.in_sync && now.duration_since(f.caught_up_at) > self.lag_max {
                f.in_sync = false;
                left = Some(IsrChange::Left(f.id));
            }
        }
        let in_sync = followers.iter().filter(|f| f.in_sync);
        let target = in_sync
            .clone()
            .map(|f| f.durable_end)
            .fold(leader_durable_end, i64::min);
        self.in_sync.store(1 + in_sync.count(), Ordering::Release);
        high_watermark.advance(target);
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn keeper() -> Arc<Notify> {
        Arc::new(Notify::new())
    }

    #[test]
    fn roles_follow_the_assignment() {
        let leader = Replication::new(vec![1, 2, 3], 1, LAG, keeper());
        let follower = Replication::new(vec![1, 2, 3], 3, LAG, keeper());
        let outsider = Replication::new(vec![1, 2], 3, LAG, keeper());
        assert!(leader.is_leader() && !leader.is_follower());
        assert!(follower.is_follower() && !follower.is_leader());
        assert!(!outsider.is_follower() && !outsider.is_leader());
        assert_eq!(leader.isr(), [1]);
        assert_eq!(leader.in_sync_count(), 1);
    }

    #[test]
    fn the_high_watermark_is_the_slowest_in_sync_durable_end() {
        let r = Replication::new(vec![1, 2, 3], 1, LAG, keeper());
        let hw = OffsetWatch::default();
        let t = Instant::now();
        // Alone in sync: the leader's durable end.
        assert_eq!(r.check(100, &hw, t), None);
        assert_eq!(hw.get(), 100);
        // Follower 2 fetches from 0 while the high watermark is 100: not in sync yet, and the
        // high watermark does not wait for it.
        assert_eq!(r.follower_fetched(2, 0, 100, &hw, t), Some(None));
        assert_eq!(hw.get(), 100);
        // It reaches the high watermark: joins, and from now on holds it back.
        assert_eq!(
            r.follower_fetched(2, 100, 150, &hw, t),
            Some(Some(IsrChange::Joined(2)))
        );
        assert_eq!(hw.get(), 100);
        assert_eq!(r.isr(), [1, 2]);
        assert_eq!(r.in_sync_count(), 2);
        r.follower_fetched(2, 140, 150, &hw, t);
        assert_eq!(hw.get(), 140);
        r.follower_fetched(3, 150, 150, &hw, t);
        assert_eq!(hw.get(), 140, "3 joined at 150, 2 is still at 140");
        assert_eq!(r.isr(), [1, 2, 3]);
        assert_eq!(r.follower_fetched(9, 150, 150, &hw, t), None);
    }

    #[test]
    fn a_follower_that_stops_catching_up_leaves_after_the_lag_time() {
        let r = Replication::new(vec![1, 2], 1, LAG, keeper());
        let hw = OffsetWatch::default();
        let t = Instant::now();
        r.follower_fetched(2, 0, 0, &hw, t);
        assert_eq!(r.in_sync_count(), 2);
        // It keeps fetching, but never up to the leader's end: after the lag time it leaves,
        // however often it fetches.
        r.follower_fetched(2, 10, 50, &hw, t + Duration::from_secs(5));
        assert_eq!(r.check(60, &hw, t + Duration::from_secs(9)), None);
        assert_eq!(hw.get(), 10);
        assert_eq!(
            r.check(60, &hw, t + Duration::from_secs(11)),
            Some(IsrChange::Left(2))
        );
        assert_eq!(hw.get(), 60);
        assert_eq!(r.in_sync_count(), 1);
        assert_eq!(r.isr(), [1]);
    }
}
