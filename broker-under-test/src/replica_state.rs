//! One partition's replication state: its replicas, its leader and leader epoch, and on the
//! leader the followers' durable ends and the in-sync set.
//!
//! The leader starts as the cluster's assignment (the first replica, epoch 0) and changes only
//! by an election (`elect`): an operator's `chronik-broker promote`, or a higher epoch learned
//! from a peer. Each change is written to `<partition dir>/leader-epoch` before it takes effect,
//! so a restarted broker never goes back to an older leader than it knew.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::mutex::lock;
use crate::offset_watch::OffsetWatch;

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

/// `<partition dir>/leader-epoch`: "EPOCH LEADER", the newest election this broker knows.
pub const LEADER_EPOCH_FILE: &str = "leader-epoch";

/// A leader and the epoch it was elected in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    pub epoch: i32,
    pub leader: i32,
}

impl Leadership {
    fn pack(self) -> u64 {
        (u64::from(self.epoch as u32) << 32) | u64::from(self.leader as u32)
    }

    fn unpack(packed: u64) -> Self {
        Self {
            epoch: (packed >> 32) as u32 as i32,
            leader: packed as u32 as i32,
        }
    }

    /// Reads the stored election; `None` when none was ever stored.
    pub fn load(path: &std::path::Path) -> io::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut fields = text.split_whitespace().map(str::parse::<i32>);
        match (fields.next(), fields.next()) {
            (Some(Ok(epoch)), Some(Ok(leader))) if epoch >= 0 => Ok(Some(Self { epoch, leader })),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unreadable leader epoch {text:?}", path.display()),
            )),
        }
    }
}

/// Why an election was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectError {
    NotAReplica,
    AlreadyLeader,
    Stale,
    Io(String),
}

pub struct Replication {
    replicas: Vec<i32>,
    local: i32,
    /// The current `Leadership`, packed: read lock-free by every produce and fetch.
    leadership: AtomicU64,
    /// Serializes elections (writing the file, then switching); never taken by a request that
    /// reads or writes records.
    electing: Mutex<()>,
    state_file: PathBuf,
    lag_max: Duration,
    /// One entry per other replica, used while this broker leads. Taken by follower fetches,
    /// the keeper and elections, never by a produce request.
    followers: Mutex<Vec<Follower>>,
    /// Replicas in sync, the leader included; read without a lock by acks=all.
    in_sync: AtomicUsize,
    /// Follower only: the in-sync set as the leader last reported it (for Metadata).
    reported_isr: Mutex<Vec<i32>>,
    /// The broker's keeper, woken when a local group commit made more of a leader's log durable.
    keeper: Arc<Notify>,
}

impl Replication {
    /// The leader is the stored election in `state_file`, or `replicas[0]` at epoch 0. The
    /// in-sync set starts as the leader alone: a follower joins once it has fetched up to the
    /// high watermark, so nothing is claimed of a follower the leader has not heard from since
    /// it started.
    pub fn new(
        replicas: Vec<i32>,
        local: i32,
        lag_max: Duration,
        keeper: Arc<Notify>,
        state_file: PathBuf,
    ) -> io::Result<Self> {
        let leadership = Leadership::load(&state_file)?
            .filter(|stored| replicas.contains(&stored.leader))
            .unwrap_or(Leadership {
                epoch: 0,
                leader: replicas[0],
            });
        Ok(Self {
            local,
            leadership: AtomicU64::new(leadership.pack()),
            electing: Mutex::new(()),
            state_file,
            lag_max,
            followers: Mutex::new(fresh_followers(&replicas, local)),
            in_sync: AtomicUsize::new(1),
            reported_isr: Mutex::new(vec![leadership.leader]),
            keeper,
            replicas,
        })
    }

    pub fn leadership(&self) -> Leadership {
        Leadership::unpack(self.leadership.load(Ordering::Acquire))
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leadership().epoch
    }

    /// The epoch this broker leads in, or `None` when it does not lead: one atomic load, so
    /// the epoch and the leader belong to the same election.
    pub fn leading_epoch(&self) -> Option<i32> {
        let leadership = self.leadership();
        (leadership.leader == self.local).then_some(leadership.epoch)
    }

    /// Makes `leader` the leader in `epoch`, which must be newer than the current one. The
    /// election is durable before it takes effect. A broker that becomes the leader starts
    /// with an in-sync set of itself alone (its followers join as they catch up).
    pub fn elect(&self, next: Leadership) -> Result<(), ElectError> {
        if !self.replicas.contains(&next.leader) {
            return Err(ElectError::NotAReplica);
        }
        let _electing = lock(&self.electing);
        let current = self.leadership();
        if next.epoch <= current.epoch {
            return Err(if current.leader == next.leader {
                ElectError::AlreadyLeader
            } else {
                ElectError::Stale
            });
        }
        crate::durable_file::replace_file_durably(
            &self.state_file,
            format!("{} {}", next.epoch, next.leader).as_bytes(),
        )
        .map_err(|e| ElectError::Io(format!("{}: {e}", self.state_file.display())))?;
        if next.leader == self.local {
            *lock(&self.followers) = fresh_followers(&self.replicas, self.local);
            self.in_sync.store(1, Ordering::Release);
        }
        *lock(&self.reported_isr) = vec![next.leader];
        self.leadership.store(next.pack(), Ordering::Release);
        if next.leader == self.local {
            self.keeper.notify_one();
        }
        Ok(())
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
        self.leadership().leader
    }

    pub fn is_leader(&self) -> bool {
        self.local == self.leader()
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
        std::iter::once(self.local)
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

/// The follower table of a leader that has heard from nobody yet.
fn fresh_followers(replicas: &[i32], local: i32) -> Vec<Follower> {
    let now = Instant::now();
    replicas
        .iter()
        .filter(|&&id| id != local)
        .map(|&id| Follower {
            id,
            durable_end: -1,
            caught_up_at: now,
            in_sync: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn replication(replicas: &[i32], local: i32, dir: &tempfile::TempDir) -> Replication {
        let file = dir.path().join(format!("{LEADER_EPOCH_FILE}-{local}"));
        Replication::new(replicas.to_vec(), local, LAG, Arc::new(Notify::new()), file).expect("new")
    }

    #[test]
    fn roles_follow_the_assignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader = replication(&[1, 2, 3], 1, &dir);
        let follower = replication(&[1, 2, 3], 3, &dir);
        let outsider = replication(&[1, 2], 3, &dir);
        assert!(leader.is_leader() && !leader.is_follower());
        assert!(follower.is_follower() && !follower.is_leader());
        assert!(!outsider.is_follower() && !outsider.is_leader());
        assert_eq!(leader.isr(), [1]);
        assert_eq!(leader.in_sync_count(), 1);
    }

    #[test]
    fn the_high_watermark_is_the_slowest_in_sync_durable_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replication(&[1, 2, 3], 1, &dir);
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
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replication(&[1, 2], 1, &dir);
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

    #[test]
    fn an_election_is_newer_durable_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replication(&[1, 2, 3], 2, &dir);
        assert_eq!(
            r.leadership(),
            Leadership {
                epoch: 0,
                leader: 1
            }
        );
        let hw = OffsetWatch::default();
        // Broker 2 is elected in epoch 1: it leads, alone in sync, with a fresh follower table.
        r.elect(Leadership {
            epoch: 1,
            leader: 2,
        })
        .expect("elect");
        assert!(r.is_leader());
        assert_eq!(r.isr(), [2]);
        assert_eq!(r.in_sync_count(), 1);
        assert_eq!(
            r.follower_fetched(1, 0, 0, &hw, Instant::now()),
            Some(Some(IsrChange::Joined(1)))
        );
        // Older or equal epochs are refused; someone outside the replicas too.
        assert_eq!(
            r.elect(Leadership {
                epoch: 1,
                leader: 3
            }),
            Err(ElectError::Stale)
        );
        assert_eq!(
            r.elect(Leadership {
                epoch: 1,
                leader: 2
            }),
            Err(ElectError::AlreadyLeader)
        );
        assert_eq!(
            r.elect(Leadership {
                epoch: 9,
                leader: 4
            }),
            Err(ElectError::NotAReplica)
        );
        // Epoch 2 makes 3 the leader; after a restart broker 2 still knows it.
        r.elect(Leadership {
            epoch: 2,
            leader: 3,
        })
        .expect("elect");
        assert!(r.is_follower() && r.leader() == 3);
        let restarted = replication(&[1, 2, 3], 2, &dir);
        assert_eq!(
            restarted.leadership(),
            Leadership {
                epoch: 2,
                leader: 3
            }
        );
    }
}
