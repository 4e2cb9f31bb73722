//! One partition's replication state: its replicas, its leader and leader epoch, and on the
//! leader the followers' durable ends and the in-sync set.
//!
//! Without a controller quorum the leader starts as the cluster's assignment (the first
//! replica, epoch 0) and changes only by an election (`elect`): an operator's `chronik-broker
//! promote`, or a higher epoch learned from a peer. With a quorum (`Quorum`) the partition has
//! no leader until the controller's image names one (`adopt`), and its in-sync set is the one
//! the metadata log committed: the leader asks for changes (`AlterIsrQueue`, Kafka's
//! AlterPartition) and they count only once committed. Each change of leader is written to
//! `<partition dir>/leader-epoch` before it takes effect, so a restarted broker never goes back
//! to an older leader than it knew.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::mutex::lock;
use crate::offset_watch::OffsetWatch;

/// The leader of a partition that has none (as the controller's image says), or whose
/// leader this broker has not learned yet.
pub const NO_LEADER: i32 = -1;
/// A change of the in-sync set not yet committed is asked for again after this long (the
/// first request may have been refused against a partition epoch that moved on).
const ISR_REQUEST_RETRY: Duration = Duration::from_secs(1);

/// A leader's request to change a partition's in-sync set, made against the epochs it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterIsrRequest {
    pub topic: Arc<str>,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// The requests waiting for the controller: the newest per partition (an older one is
/// superseded by it), drained by the broker's metadata task.
#[derive(Default)]
pub struct AlterIsrQueue {
    waiting: Mutex<std::collections::BTreeMap<(Arc<str>, i32), AlterIsrRequest>>,
    wake: Notify,
}

impl AlterIsrQueue {
    fn push(&self, request: AlterIsrRequest) {
        lock(&self.waiting).insert((request.topic.clone(), request.partition), request);
        self.wake.notify_one();
    }

    /// Waits until at least one request waits, and takes them all.
    pub async fn take(&self) -> Vec<AlterIsrRequest> {
        loop {
            let taken: Vec<AlterIsrRequest> = std::mem::take(&mut *lock(&self.waiting))
                .into_values()
                .collect();
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }
}

/// A partition whose leadership and in-sync set the controller quorum decides.
pub struct Quorum {
    pub requests: Arc<AlterIsrQueue>,
    pub topic: Arc<str>,
    pub partition: i32,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone)]
struct Follower {
    id: i32,
    /// The follower's durable end: the offset of its latest fetch (it fetches again only once
    /// what it appended is durable). -1 until it fetches.
    durable_end: i64,
    /// When it last fetched from at or past the leader's durable end.
    caught_up_at: Instant,
    /// In the in-sync set (under a quorum: the committed one).
    in_sync: bool,
    /// Under a quorum: the membership the leader asked for and the quorum has not committed
    /// yet. A follower asked into the set holds the high watermark back from the moment of
    /// the request; one asked out holds it until the removal is committed (Kafka's "maximal"
    /// in-sync set, KIP-497/KIP-841).
    wanted: Option<bool>,
}

/// The leader's view of its followers, and under a quorum what it asked for.
struct Table {
    followers: Vec<Follower>,
    /// The partition epoch of the committed in-sync set (quorum only).
    partition_epoch: i32,
    /// The last in-sync set asked for and when, so a request is not repeated on every fetch.
    requested: Option<(Vec<i32>, Instant)>,
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
    table: Mutex<Table>,
    /// Replicas in sync, the leader included; read without a lock by acks=all.
    in_sync: AtomicUsize,
    /// Follower only: the in-sync set as the leader last reported it (for Metadata).
    reported_isr: Mutex<Vec<i32>>,
    /// The broker's keeper, woken when a local group commit made more of a leader's log durable.
    keeper: Arc<Notify>,
    quorum: Option<Quorum>,
}

impl Replication {
    /// Without a quorum the leader is the stored election in `state_file`, or `replicas[0]`
    /// at epoch 0, and the in-sync set starts as the leader alone: a follower joins once it
    /// has fetched up to the high watermark, so nothing is claimed of a follower the leader
    /// has not heard from since it started. Under a quorum nobody leads until the
    /// controller's image says who does, in the stored epoch or a newer one.
    pub fn new(
        replicas: Vec<i32>,
        local: i32,
        lag_max: Duration,
        keeper: Arc<Notify>,
        state_file: PathBuf,
        quorum: Option<Quorum>,
    ) -> io::Result<Self> {
        let stored = Leadership::load(&state_file)?;
        let leadership = match &quorum {
            Some(_) => Leadership {
                epoch: stored.map_or(0, |s| s.epoch),
                leader: NO_LEADER,
            },
            None => stored
                .filter(|stored| replicas.contains(&stored.leader))
                .unwrap_or(Leadership {
                    epoch: 0,
                    leader: replicas[0],
                }),
        };
        Ok(Self {
            local,
            leadership: AtomicU64::new(leadership.pack()),
            electing: Mutex::new(()),
            state_file,
            lag_max,
            table: Mutex::new(Table {
                followers: fresh_followers(&replicas, local, &[]),
                partition_epoch: 0,
                requested: None,
            }),
            in_sync: AtomicUsize::new(1),
            reported_isr: Mutex::new(
                std::iter::once(leadership.leader)
                    .filter(|&l| l != NO_LEADER)
                    .collect(),
            ),
            keeper,
            quorum,
            replicas,
        })
    }

    /// Whether the controller quorum decides this partition's leader and in-sync set.
    pub fn controlled(&self) -> bool {
        self.quorum.is_some()
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
        self.store_durably(next)?;
        if next.leader == self.local {
            lock(&self.table).followers = fresh_followers(&self.replicas, self.local, &[]);
            self.in_sync.store(1, Ordering::Release);
        }
        *lock(&self.reported_isr) = vec![next.leader];
        self.leadership.store(next.pack(), Ordering::Release);
        if next.leader == self.local {
            self.keeper.notify_one();
        }
        Ok(())
    }

    fn store_durably(&self, next: Leadership) -> Result<(), ElectError> {
        crate::durable_file::replace_file_durably(
            &self.state_file,
            format!("{} {}", next.epoch, next.leader).as_bytes(),
        )
        .map_err(|e| ElectError::Io(format!("{}: {e}", self.state_file.display())))
    }

    /// Under a quorum: takes the controller's image of this partition (its leader, leader
    /// epoch, committed in-sync set and partition epoch). A newer leader epoch is written
    /// durably before it takes effect; in the same epoch only the in-sync set moves. Returns
    /// whether the leader changed.
    pub fn adopt(
        &self,
        next: Leadership,
        isr: &[i32],
        partition_epoch: i32,
    ) -> Result<bool, ElectError> {
        if next.leader != NO_LEADER && !self.replicas.contains(&next.leader) {
            return Err(ElectError::NotAReplica);
        }
        let _electing = lock(&self.electing);
        let current = self.leadership();
        // Equal epochs differ only at start, before this broker learned its leader, or after
        // it stepped down.
        let learned =
            next.epoch == current.epoch && current.leader == NO_LEADER && next.leader != NO_LEADER;
        if next.epoch < current.epoch || (next.epoch == current.epoch && !learned) {
            if next == current {
                self.committed(isr, partition_epoch);
            }
            return Ok(false);
        }
        if next.epoch > current.epoch {
            self.store_durably(next)?;
        }
        if next.leader == self.local {
            let mut table = lock(&self.table);
            table.followers = fresh_followers(&self.replicas, self.local, isr);
            table.partition_epoch = partition_epoch;
            table.requested = None;
            let members = table.followers.iter().filter(|f| f.in_sync).count();
            self.in_sync.store(1 + members, Ordering::Release);
        }
        *lock(&self.reported_isr) = isr.to_vec();
        self.leadership.store(next.pack(), Ordering::Release);
        if next.leader == self.local {
            self.keeper.notify_one();
        }
        Ok(true)
    }

    /// Under a quorum: stops leading without a new epoch (this broker cannot be sure it still
    /// leads); the image makes it leader again in this epoch or names another in a newer one.
    /// Returns whether it led.
    pub fn step_down(&self) -> bool {
        let _electing = lock(&self.electing);
        let current = self.leadership();
        if current.leader != self.local {
            return false;
        }
        let stepped = Leadership {
            epoch: current.epoch,
            leader: NO_LEADER,
        };
        self.leadership.store(stepped.pack(), Ordering::Release);
        true
    }

    /// The quorum committed `isr` at `partition_epoch` for the current leadership.
    fn committed(&self, isr: &[i32], partition_epoch: i32) {
        *lock(&self.reported_isr) = isr.to_vec();
        if !self.is_leader() {
            return;
        }
        let mut table = lock(&self.table);
        if partition_epoch <= table.partition_epoch {
            return;
        }
        table.partition_epoch = partition_epoch;
        for f in &mut table.followers {
            f.in_sync = isr.contains(&f.id);
            if f.wanted == Some(f.in_sync) {
                f.wanted = None;
            }
        }
        table.requested = None;
        let members = table.followers.iter().filter(|f| f.in_sync).count();
        self.in_sync.store(1 + members, Ordering::Release);
        // The high watermark may move now (a member left) or wait for a new one.
        self.keeper.notify_one();
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

    /// The in-sync set: the leader's own (under a quorum, the committed one), or on a
    /// follower what the leader (or the quorum) last reported.
    pub fn isr(&self) -> Vec<i32> {
        if !self.is_leader() {
            return lock(&self.reported_isr).clone();
        }
        let table = lock(&self.table);
        std::iter::once(self.local)
            .chain(table.followers.iter().filter(|f| f.in_sync).map(|f| f.id))
            .collect()
    }

    /// Follower without a quorum: records the in-sync set the leader reports.
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
        let mut table = lock(&self.table);
        let f = table.followers.iter_mut().find(|f| f.id == follower)?;
        f.durable_end = f.durable_end.max(offset);
        if offset >= leader_durable_end {
            f.caught_up_at = now;
        }
        // Read under the table's lock, which every advance of a replicated partition's high
        // watermark holds: a follower joins only if it has everything below the mark.
        let joined = !f.in_sync && f.durable_end >= high_watermark.get();
        if joined {
            if self.quorum.is_some() {
                f.wanted = Some(true);
            } else {
                f.in_sync = true;
            }
        }
        let left = self.settle(&mut table, leader_durable_end, high_watermark, now);
        let joined = joined && self.quorum.is_none();
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
        let mut table = lock(&self.table);
        self.settle(&mut table, leader_durable_end, high_watermark, now)
    }

    /// Shrinks the in-sync set by lag (under a quorum: asks for it), publishes its size, and
    /// advances the high watermark to the smallest durable end among the in-sync replicas
    /// (under a quorum: those committed or asked into the set). Called with the table locked.
    fn settle(
        &self,
        table: &mut Table,
        leader_durable_end: i64,
        high_watermark: &OffsetWatch,
        now: Instant,
    ) -> Option<IsrChange> {
        let mut left = None;
        for f in table.followers.iter_mut() {
            let lagging = now.duration_since(f.caught_up_at) > self.lag_max;
            match (&self.quorum, f.in_sync, lagging) {
                (None, true, true) => {
                    f.in_sync = false;
                    left = Some(IsrChange::Left(f.id));
                }
                (Some(_), true, true) if f.wanted.is_none() => {
                    f.wanted = Some(false);
                    left = Some(IsrChange::Left(f.id));
                }
                // Caught up again before the removal was committed, or fell behind before
                // it was asked in: the request is withdrawn.
                (Some(_), true, false) if f.wanted == Some(false) => f.wanted = None,
                (Some(_), false, true) if f.wanted == Some(true) => f.wanted = None,
                _ => {}
            }
        }
        let counted = table
            .followers
            .iter()
            .filter(|f| f.in_sync || f.wanted == Some(true));
        let target = counted
            .map(|f| f.durable_end)
            .fold(leader_durable_end, i64::min);
        let members = table.followers.iter().filter(|f| f.in_sync).count();
        self.in_sync.store(1 + members, Ordering::Release);
        high_watermark.advance(target);
        if let Some(quorum) = &self.quorum {
            self.request_isr(quorum, table, now);
        }
        left
    }

    /// Asks the quorum for the in-sync set the leader wants, unless nothing is to change or
    /// the same request went out recently.
    fn request_isr(&self, quorum: &Quorum, table: &mut Table, now: Instant) {
        if table.followers.iter().all(|f| f.wanted.is_none()) {
            return;
        }
        let isr: Vec<i32> = std::iter::once(self.local)
            .chain(
                table
                    .followers
                    .iter()
                    .filter(|f| f.wanted.unwrap_or(f.in_sync))
                    .map(|f| f.id),
            )
            .collect();
        if let Some((asked, at)) = &table.requested {
            if *asked == isr && now.duration_since(*at) < ISR_REQUEST_RETRY {
                return;
            }
        }
        let leadership = self.leadership();
        quorum.requests.push(AlterIsrRequest {
            topic: quorum.topic.clone(),
            partition: quorum.partition,
            leader: leadership.leader,
            leader_epoch: leadership.epoch,
            partition_epoch: table.partition_epoch,
            isr: isr.clone(),
        });
        table.requested = Some((isr, now));
    }
}

/// The follower table of a leader that has heard from nobody yet; `isr` names those in sync
/// (under a quorum, as committed; without one, nobody).
fn fresh_followers(replicas: &[i32], local: i32, isr: &[i32]) -> Vec<Follower> {
    let now = Instant::now();
    replicas
        .iter()
        .filter(|&&id| id != local)
        .map(|&id| Follower {
            id,
            durable_end: -1,
            caught_up_at: now,
            in_sync: isr.contains(&id),
            wanted: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn replication(replicas: &[i32], local: i32, dir: &tempfile::TempDir) -> Replication {
        let file = dir.path().join(format!("{LEADER_EPOCH_FILE}-{local}"));
        Replication::new(
            replicas.to_vec(),
            local,
            LAG,
            Arc::new(Notify::new()),
            file,
            None,
        )
        .expect("new")
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

    fn controlled(
        replicas: &[i32],
        local: i32,
        dir: &tempfile::TempDir,
    ) -> (Replication, Arc<AlterIsrQueue>) {
        let file = dir.path().join(format!("{LEADER_EPOCH_FILE}-{local}"));
        let requests = Arc::new(AlterIsrQueue::default());
        let quorum = Quorum {
            requests: requests.clone(),
            topic: Arc::from("t"),
            partition: 0,
        };
        let r = Replication::new(
            replicas.to_vec(),
            local,
            LAG,
            Arc::new(Notify::new()),
            file,
            Some(quorum),
        )
        .expect("new");
        (r, requests)
    }

    fn taken(requests: &AlterIsrQueue) -> Vec<AlterIsrRequest> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_millis(10), requests.take())
                    .await
                    .unwrap_or_default()
            })
    }

    const LEADS_1: Leadership = Leadership {
        epoch: 0,
        leader: 1,
    };

    #[test]
    fn under_a_quorum_nobody_leads_until_the_image_names_a_leader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, _) = controlled(&[1, 2], 1, &dir);
        assert!(!r.is_leader() && r.leader() == NO_LEADER && r.isr().is_empty());
        assert_eq!(r.adopt(LEADS_1, &[1, 2], 0), Ok(true));
        assert!(r.is_leader());
        assert_eq!((r.isr(), r.in_sync_count()), (vec![1, 2], 2));
        // A broker unsure of its session steps down in the same epoch, and leads again when
        // the image still says so.
        assert!(r.step_down() && !r.is_leader() && !r.step_down());
        assert_eq!(r.leadership().epoch, 0);
        assert_eq!(r.adopt(LEADS_1, &[1, 2], 0), Ok(true));
        assert!(r.is_leader());
        // The committed member holds the high watermark back until it fetches.
        let hw = OffsetWatch::default();
        let t = Instant::now();
        r.check(100, &hw, t);
        assert_eq!(hw.get(), 0);
        r.follower_fetched(2, 100, 100, &hw, t);
        assert_eq!(hw.get(), 100);
        // An older epoch changes nothing; a newer one without a leader stops the leading.
        let lost = Leadership {
            epoch: 1,
            leader: NO_LEADER,
        };
        assert_eq!(r.adopt(lost, &[2], 1), Ok(true));
        assert!(!r.is_leader() && r.leading_epoch().is_none());
        assert_eq!(r.adopt(LEADS_1, &[1, 2], 0), Ok(false));
        assert_eq!(r.leader(), NO_LEADER);
        // A restart knows the stored epoch and waits for the image again.
        let (restarted, _) = controlled(&[1, 2], 1, &dir);
        assert_eq!(restarted.leadership(), lost);
        assert_eq!(restarted.adopt(lost, &[2], 1), Ok(false));
        assert_eq!(restarted.adopt(LEADS_1, &[1, 2], 0), Ok(false));
    }

    #[test]
    fn a_follower_leaves_the_set_only_once_the_quorum_commits_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, requests) = controlled(&[1, 2, 3], 1, &dir);
        r.adopt(LEADS_1, &[1, 2, 3], 4).unwrap();
        let hw = OffsetWatch::default();
        let t = Instant::now();
        r.follower_fetched(2, 50, 100, &hw, t);
        r.follower_fetched(3, 100, 100, &hw, t);
        assert_eq!(hw.get(), 50);
        // 3 keeps up, 2 stops: after the lag time the leader asks for [1, 3] ...
        r.follower_fetched(3, 200, 200, &hw, t + LAG);
        r.check(200, &hw, t + LAG + Duration::from_secs(1));
        let asked = taken(&requests);
        assert_eq!(asked.len(), 1);
        assert_eq!(
            (asked[0].isr.clone(), asked[0].partition_epoch),
            (vec![1, 3], 4)
        );
        // ... but until the quorum commits it, 2 counts: no ack past what 2 holds.
        assert_eq!(
            (hw.get(), r.in_sync_count(), r.isr()),
            (50, 3, vec![1, 2, 3])
        );
        // The same request is not repeated on every fetch, only after the retry time.
        let after = |ms| t + LAG + Duration::from_millis(ms);
        r.follower_fetched(3, 200, 200, &hw, after(1_100));
        r.check(200, &hw, after(1_200));
        assert!(taken(&requests).is_empty());
        r.check(200, &hw, after(2_100));
        assert_eq!(
            taken(&requests).len(),
            1,
            "asked again after the retry time"
        );
        // Committed: 2 is out and the mark moves on.
        assert_eq!(r.adopt(LEADS_1, &[1, 3], 5), Ok(false));
        r.check(200, &hw, after(2_200));
        assert_eq!((hw.get(), r.in_sync_count(), r.isr()), (200, 2, vec![1, 3]));
    }

    #[test]
    fn a_follower_asked_into_the_set_holds_the_mark_at_once_and_counts_for_acks_once_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, requests) = controlled(&[1, 2], 1, &dir);
        r.adopt(LEADS_1, &[1], 0).unwrap();
        let hw = OffsetWatch::default();
        let t = Instant::now();
        r.check(100, &hw, t);
        assert_eq!(hw.get(), 100);
        assert_eq!(r.follower_fetched(2, 100, 120, &hw, t), Some(None));
        let asked = taken(&requests);
        assert_eq!(asked[0].isr, vec![1, 2]);
        assert_eq!(r.in_sync_count(), 1, "not a member before the commit");
        r.check(120, &hw, t);
        assert_eq!(hw.get(), 100, "the member asked in holds the mark");
        r.adopt(LEADS_1, &[1, 2], 1).unwrap();
        assert_eq!((r.in_sync_count(), r.isr()), (2, vec![1, 2]));
    }
}
