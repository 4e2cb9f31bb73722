//! Consumer-group coordinator: JoinGroup / SyncGroup / Heartbeat / LeaveGroup with the classic
//! rebalance protocol; committed offsets live in `offset_log`.
//!
//! Group state lives behind one mutex per group (never on the produce path).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::fail_stop::FailStop;
use crate::mutex::lock;
use crate::offset_log::{CommittedOffset, OffsetLog};

/// Upper bound on how long a JoinGroup or SyncGroup waits for the rest of the group.
const GROUP_WAIT_MAX: Duration = Duration::from_secs(300);
/// Members per group; a join beyond it fails with GROUP_MAX_SIZE_REACHED.
const GROUP_MEMBERS_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

struct Member {
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    rejoined: bool,
    assignment: Bytes,
}

struct GroupState {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Instant,
}

struct Group {
    state: Mutex<GroupState>,
    changed: Notify,
}

pub struct JoinOutcome {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member's id and metadata for the chosen protocol.
    pub members: Vec<(String, Bytes)>,
}

pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub client_id: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Arc<Group>>>,
    offsets: OffsetLog,
    initial_rebalance_delay: Duration,
    next_member: AtomicU64,
    /// Random per broker process and part of every member id, so that a member from before a
    /// restart is unknown after it (UNKNOWN_MEMBER_ID) instead of matching a new member that
    /// got the same counter value, and so committing offsets in a generation it never joined.
    incarnation: u64,
}

impl GroupCoordinator {
    pub fn open(
        data_dir: &std::path::Path,
        initial_rebalance_delay: Duration,
        fail_stop: FailStop,
    ) -> std::io::Result<Self> {
        let (offsets, recovery) = OffsetLog::open(data_dir, fail_stop)?;
        if recovery.torn_bytes_cut > 0 {
            tracing::warn!(
                "offset log: {} record(s) recovered, {} unsynced byte(s) cut",
                recovery.records,
                recovery.torn_bytes_cut
            );
        }
        Ok(Self {
            groups: Mutex::new(HashMap::new()),
            offsets,
            initial_rebalance_delay,
            next_member: AtomicU64::new(1),
            // The standard library seeds each `RandomState` from the OS's randomness.
            incarnation: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8),
        })
    }

    fn group(&self, id: &str) -> Arc<Group> {
        lock(&self.groups)
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(Group {
                    state: Mutex::new(GroupState {
                        phase: Phase::Empty,
                        generation: 0,
                        protocol_type: String::new(),
                        protocol_name: None,
                        leader: None,
                        members: BTreeMap::new(),
                        rebalance_deadline: Instant::now(),
                    }),
                    changed: Notify::new(),
                })
            })
            .clone()
    }

    fn existing(&self, id: &str) -> Option<Arc<Group>> {
        lock(&self.groups).get(id).cloned()
    }

    pub async fn join(&self, req: JoinRequest) -> JoinOutcome {
        let group = self.group(&req.group_id);
        let member_id = if req.member_id.is_empty() {
            format!(
                "{}-{:016x}-{}",
                req.client_id,
                self.incarnation,
                self.next_member.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            req.member_id.clone()
        };
        let give_up = Instant::now() + req.rebalance_timeout.min(GROUP_WAIT_MAX);
        if let Err(error) = self.admit(&group, &member_id, req) {
            return join_error(error, member_id);
        }
        loop {
            let notified = group.changed.notified();
            {
                let mut state = lock(&group.state);
                if let Some(me) = state.members.get_mut(&member_id) {
                    me.last_seen = Instant::now();
                }
                let members_before = state.members.len();
                expire_members(&mut state);
                if state.members.len() != members_before {
                    group.changed.notify_waiters();
                }
                if state.phase == Phase::PreparingRebalance {
                    let all_in = state.members.values().all(|m| m.rejoined);
                    // A new group waits out the initial delay for company; a known group
                    // completes as soon as every member rejoined.
                    if Instant::now() >= state.rebalance_deadline
                        || (all_in && state.generation > 0)
                    {
                        complete_join(&mut state);
                        group.changed.notify_waiters();
                    }
                }
                if state.phase != Phase::PreparingRebalance {
                    let Some(_member) = state.members.get(&member_id) else {
                        return join_error(ResponseError::UnknownMemberId, member_id);
                    };
                    return join_outcome(&state, member_id);
                }
                if Instant::now() >= give_up {
                    return join_error(ResponseError::RebalanceInProgress, member_id);
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// JoinGroup's first step under the group's lock: a known member, or a new one while
    /// the group has room and speaks its protocol, is (re)entered and a rebalance begins.
    fn admit(&self, group: &Group, member_id: &str, req: JoinRequest) -> Result<(), ResponseError> {
        let known = !req.member_id.is_empty();
        let mut state = lock(&group.state);
        expire_members(&mut state);
        if known && !state.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if state.members.len() >= GROUP_MEMBERS_MAX && !state.members.contains_key(member_id) {
            return Err(ResponseError::GroupMaxSizeReached);
        }
        if !state.members.is_empty() && state.protocol_type != req.protocol_type {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        let was_empty = state.members.is_empty();
        state.protocol_type = req.protocol_type.clone();
        state.members.insert(
            member_id.to_owned(),
            Member {
                protocols: req.protocols,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                last_seen: Instant::now(),
                rejoined: true,
                assignment: Bytes::new(),
            },
        );
        if state.phase != Phase::PreparingRebalance {
            let wait = if was_empty {
                self.initial_rebalance_delay
            } else {
                longest_rebalance_timeout(&state)
            };
            begin_rebalance(&mut state, wait, Some(member_id));
        }
        drop(state);
        group.changed.notify_waiters();
        Ok(())
    }

    /// SyncGroup: the leader's assignments are stored and end the rebalance; every member
    /// waits (bounded by its rebalance timeout) for the group to be stable and gets its own.
    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncAssignment, ResponseError> {
        let group = self
            .existing(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        let give_up = submit_assignments(&group, generation, member_id, assignments)?;
        loop {
            let notified = group.changed.notified();
            {
                let mut state = lock(&group.state);
                if let Some(me) = state.members.get_mut(member_id) {
                    me.last_seen = Instant::now();
                }
                let members_before = state.members.len();
                expire_members(&mut state);
                if state.members.len() != members_before {
                    group.changed.notify_waiters();
                }
                if state.generation != generation || state.phase == Phase::PreparingRebalance {
                    return Err(ResponseError::RebalanceInProgress);
                }
                if state.phase == Phase::Stable {
                    return Ok(SyncAssignment {
                        protocol_type: state.protocol_type.clone(),
                        protocol_name: state.protocol_name.clone(),
                        assignment: state
                            .members
                            .get(member_id)
                            .map(|m| m.assignment.clone())
                            .unwrap_or_default(),
                    });
                }
                if Instant::now() >= give_up {
                    return Err(ResponseError::RebalanceInProgress);
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
    ) -> Option<ResponseError> {
        let Some(group) = self.existing(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let mut state = lock(&group.state);
        expire_members(&mut state);
        let phase = state.phase;
        let current = state.generation;
        let Some(member) = state.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        member.last_seen = Instant::now();
        if phase == Phase::PreparingRebalance {
            return Some(ResponseError::RebalanceInProgress);
        }
        (generation != current).then_some(ResponseError::IllegalGeneration)
    }

    pub fn leave(&self, group_id: &str, member_ids: &[String]) -> Vec<Option<ResponseError>> {
        let Some(group) = self.existing(group_id) else {
            return member_ids
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect();
        };
        let mut state = lock(&group.state);
        let results: Vec<_> = member_ids
            .iter()
            .map(|id| {
                state
                    .members
                    .remove(id)
                    .is_none()
                    .then_some(ResponseError::UnknownMemberId)
            })
            .collect();
        after_members_left(&mut state);
        drop(state);
        group.changed.notify_waiters();
        results
    }

    /// Whether `member_id` of generation `generation` may commit offsets for the group now
    /// (Kafka's rules): a negative generation is a standalone consumer, allowed while the group
    /// has no members; otherwise the member must belong to the group's current generation and
    /// the group must not be waiting for its assignment.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Option<ResponseError> {
        let Some(group) = self.existing(group_id) else {
            return (generation >= 0).then_some(ResponseError::UnknownMemberId);
        };
        let mut state = lock(&group.state);
        expire_members(&mut state);
        if generation < 0 && state.members.is_empty() {
            return None;
        }
        if state.phase == Phase::CompletingRebalance {
            return Some(ResponseError::RebalanceInProgress);
        }
        let Some(member) = state.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        member.last_seen = Instant::now();
        (generation != state.generation).then_some(ResponseError::IllegalGeneration)
    }

    /// Stores committed offsets; readers see them only once they are durable. Blocking (append
    /// and `fdatasync`): call it off the async runtime's threads.
    pub fn commit_offsets(
        &self,
        group_id: &str,
        offsets: Vec<CommittedOffset>,
    ) -> std::io::Result<()> {
        self.offsets.commit(group_id, offsets)
    }

    /// Committed offset and metadata, or `(-1, None)` when none was committed.
    pub fn committed(&self, group_id: &str, topic: &str, partition: i32) -> (i64, Option<String>) {
        self.offsets.committed(group_id, topic, partition)
    }

    /// Topics and partitions with a committed offset in the group (OffsetFetch of all topics).
    pub fn committed_partitions(&self, group_id: &str) -> Vec<(String, i32)> {
        self.offsets.committed_partitions(group_id)
    }
}

/// Starts a rebalance: every member but `joining` must rejoin before `wait` runs out.
fn begin_rebalance(state: &mut GroupState, wait: Duration, joining: Option<&str>) {
    state.phase = Phase::PreparingRebalance;
    state.rebalance_deadline = Instant::now() + wait;
    for (id, member) in state.members.iter_mut() {
        member.rejoined = Some(id.as_str()) == joining;
    }
}

/// After members left (or expired): an empty group goes idle, the rest must rejoin.
fn after_members_left(state: &mut GroupState) {
    if state.members.is_empty() {
        state.phase = Phase::Empty;
        state.leader = None;
    } else if state.phase != Phase::PreparingRebalance {
        let wait = longest_rebalance_timeout(state);
        begin_rebalance(state, wait, None);
    }
}

/// How long a rebalance waits for members to rejoin (Kafka: the longest rebalance timeout).
fn longest_rebalance_timeout(state: &GroupState) -> Duration {
    state
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or_default()
}

fn complete_join(state: &mut GroupState) {
    state.members.retain(|_, m| m.rejoined);
    if state.members.is_empty() {
        state.phase = Phase::Empty;
        return;
    }
    state.generation += 1;
    // The protocol: the leader's first choice that every member supports.
    if !state
        .leader
        .as_ref()
        .is_some_and(|l| state.members.contains_key(l))
    {
        state.leader = state.members.keys().next().cloned();
    }
    let leader = state.leader.clone().expect("set above");
    let candidates: Vec<String> = state.members[&leader]
        .protocols
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    state.protocol_name = candidates.into_iter().find(|name| {
        state
            .members
            .values()
            .all(|m| m.protocols.iter().any(|(n, _)| n == name))
    });
    for member in state.members.values_mut() {
        member.assignment = Bytes::new();
        member.last_seen = Instant::now();
    }
    state.phase = Phase::CompletingRebalance;
}

/// What SyncGroup gives a member of a stable group: the protocol and its assignment.
pub struct SyncAssignment {
    pub protocol_type: String,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// SyncGroup's first step under the group's lock: the member is seen, its generation
/// checked; from the leader of a completing rebalance, the assignments are stored and the
/// group is stable. Returns until when the member may wait for the group to be stable.
fn submit_assignments(
    group: &Group,
    generation: i32,
    member_id: &str,
    assignments: Vec<(String, Bytes)>,
) -> Result<Instant, ResponseError> {
    let mut state = lock(&group.state);
    let member = state
        .members
        .get_mut(member_id)
        .ok_or(ResponseError::UnknownMemberId)?;
    member.last_seen = Instant::now();
    let give_up = Instant::now() + member.rebalance_timeout.min(GROUP_WAIT_MAX);
    if generation != state.generation {
        return Err(ResponseError::IllegalGeneration);
    }
    if state.phase == Phase::CompletingRebalance && state.leader.as_deref() == Some(member_id) {
        for (id, assignment) in assignments {
            if let Some(m) = state.members.get_mut(&id) {
                m.assignment = assignment;
            }
        }
        state.phase = Phase::Stable;
        group.changed.notify_waiters();
    }
    Ok(give_up)
}

/// Removes members whose session ran out (Kafka's heartbeat expiry): no heartbeat, join or
/// sync for `session_timeout`. A member waiting inside a join or sync call is alive (its call
/// refreshes `last_seen`), so only members that went away expire, in any phase, and a
/// rebalance no longer waits for a dead member until its rebalance timeout.
fn expire_members(state: &mut GroupState) {
    let now = Instant::now();
    let before = state.members.len();
    state
        .members
        .retain(|_, m| now.duration_since(m.last_seen) <= m.session_timeout);
    if state.members.len() != before {
        after_members_left(state);
    }
}

fn join_error(error: ResponseError, member_id: String) -> JoinOutcome {
    JoinOutcome {
        error: Some(error),
        generation: -1,
        protocol_type: String::new(),
        protocol_name: None,
        leader: String::new(),
        member_id,
        members: Vec::new(),
    }
}

fn join_outcome(state: &GroupState, member_id: String) -> JoinOutcome {
    let leader = state.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        let protocol = state.protocol_name.clone().unwrap_or_default();
        state
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), metadata)
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinOutcome {
        error: state
            .protocol_name
            .is_none()
            .then_some(ResponseError::InconsistentGroupProtocol),
        generation: state.generation,
        protocol_type: state.protocol_type.clone(),
        protocol_name: state.protocol_name.clone(),
        leader,
        member_id,
        members,
    }
}
