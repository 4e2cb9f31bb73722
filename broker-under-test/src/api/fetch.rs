//! Fetch (with long polling) and ListOffsets. A consumer reads below the high watermark and
//! waits on it; a follower (a fetch with a replica id) reads below the leader's durable end,
//! waits on that, and reports its own durable end with the offset it fetches from.
//!
//! A follower's fetch is checked first (`follower_check`): the replica id must be a replica
//! of the partition (and, under a controller quorum, a registered broker that is not fenced,
//! at the broker epoch of its current registration: a v15 fetch carries it), or nothing is
//! read and no position is taken; one that names another leader epoch is fenced, and one
//! whose last batch's epoch ends earlier in this log gets the diverging epoch instead of
//! records, and is not taken as a position (its log is not a prefix of ours).
//!
//! Topics are named up to v12 and given by id from v13 (brokers' replica fetches); a response
//! carries both, and each version encodes its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};

use super::{ApiContext, Listener};
use crate::partition::{FetchRead, Partition};

/// Upper bound on a fetch's long poll, whatever the client asks.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);
/// Kafka's replica id of a debugging client: ListOffsets from it is answered by any replica,
/// with that replica's own durable end and last epoch (`chronik-broker promote` uses it).
const DEBUGGING_REPLICA_ID: i32 = -2;
/// ListOffsets timestamps with special meaning.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

/// Who sends a replica fetch: its broker id, and from v15 its broker epoch (-1 when unknown).
#[derive(Debug, Clone, Copy)]
struct Follower {
    id: i32,
    broker_epoch: Option<i64>,
}

impl Follower {
    /// Kafka's consumers send -1; a broker id marks a follower (in `replica_state` from v15).
    fn of(req: &FetchRequest) -> Option<Self> {
        let state = &req.replica_state;
        if state.replica_id.0 >= 0 {
            return Some(Self {
                id: state.replica_id.0,
                broker_epoch: (state.replica_epoch >= 0).then_some(state.replica_epoch),
            });
        }
        (req.replica_id.0 >= 0).then_some(Self {
            id: req.replica_id.0,
            broker_epoch: None,
        })
    }
}

/// The partition a fetch names: by topic name up to v12, by topic id from v13.
fn lookup(ctx: &ApiContext, topic: &FetchTopic, index: i32) -> Option<Arc<Partition>> {
    if topic.topic.is_empty() && !topic.topic_id.is_nil() {
        ctx.topics.by_id(topic.topic_id.as_u128(), index)
    } else {
        ctx.topics.partition(&topic.topic, index)
    }
}

pub async fn fetch(ctx: &ApiContext, req: FetchRequest, listener: Listener) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    let follower = Follower::of(&req);
    if follower.is_some() && listener == Listener::Client {
        return refused(&req, ResponseError::ClusterAuthorizationFailed);
    }
    if let Some(follower) = follower {
        record_follower_positions(ctx, &req, follower);
    }
    loop {
        let (response, bytes, first_empty) = fetch_once(ctx, &req, follower);
        let now = tokio::time::Instant::now();
        if bytes >= req.min_bytes.max(1) as usize || now >= deadline {
            return response;
        }
        match first_empty {
            Some((partition, offset)) => {
                let watched = if follower.is_some() {
                    partition.durable_end()
                } else {
                    partition.high_watermark()
                };
                watched.wait_past(offset, deadline - now).await
            }
            None => return response,
        }
    }
}

type Waiter = (Arc<Partition>, i64);

/// `error` for every partition the fetch names: nothing read, no position taken.
fn refused(req: &FetchRequest, error: ResponseError) -> FetchResponse {
    // Per partition only: the top-level error code does not exist before v7.
    let mut response = FetchResponse::default();
    for topic in &req.topics {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        topic_response.topic_id = topic.topic_id;
        for wanted in &topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = wanted.partition;
            data.error_code = error.code();
            data.high_watermark = -1;
            data.log_start_offset = -1;
            topic_response.partitions.push(data);
        }
        response.responses.push(topic_response);
    }
    response
}

/// Why a follower's fetch of one partition gets no records.
enum FollowerRefusal {
    /// It names another leader epoch than this leader's.
    Fenced(ResponseError),
    /// Its log holds batches past where this log ends their epoch.
    Diverged(EpochEndOffset),
}

fn follower_check(
    ctx: &ApiContext,
    partition: &Partition,
    follower: Follower,
    wanted: &FetchPartition,
) -> Result<(), FollowerRefusal> {
    // Only a replica reads above the high watermark and moves it; under a quorum only one
    // the controller registered and has not fenced, at its current broker epoch (a client
    // posing as a follower, or a broker's earlier incarnation, is not).
    let replica = partition
        .replication()
        .is_some_and(|r| r.replicas().contains(&follower.id));
    if !replica || follower.id == ctx.topics.cluster().local_id() {
        return Err(FollowerRefusal::Fenced(ResponseError::ReplicaNotAvailable));
    }
    if let Some(metadata) = &ctx.metadata {
        metadata
            .may_replicate(follower.id, follower.broker_epoch)
            .map_err(FollowerRefusal::Fenced)?;
    }
    let epoch = partition.replication().map_or(0, |r| r.leader_epoch());
    if wanted.current_leader_epoch >= 0 && wanted.current_leader_epoch != epoch {
        return Err(FollowerRefusal::Fenced(
            if wanted.current_leader_epoch < epoch {
                ResponseError::FencedLeaderEpoch
            } else {
                ResponseError::UnknownLeaderEpoch
            },
        ));
    }
    if wanted.last_fetched_epoch < 0 {
        return Ok(());
    }
    let (found, end) = partition.end_offset_for_epoch(wanted.last_fetched_epoch);
    if found != wanted.last_fetched_epoch || end < wanted.fetch_offset {
        let mut diverging = EpochEndOffset::default();
        diverging.epoch = found;
        diverging.end_offset = end;
        return Err(FollowerRefusal::Diverged(diverging));
    }
    Ok(())
}

/// A follower's fetch offsets are its durable ends: the leader's in-sync set and high
/// watermark move with them. Recorded once per request, before the long poll.
fn record_follower_positions(ctx: &ApiContext, req: &FetchRequest, follower: Follower) {
    let now = std::time::Instant::now();
    for topic in &req.topics {
        for wanted in &topic.partitions {
            let Some(partition) = lookup(ctx, topic, wanted.partition) else {
                continue;
            };
            let Some(replication) = partition.replication().filter(|r| r.is_leader()) else {
                continue;
            };
            if follower_check(ctx, &partition, follower, wanted).is_err() {
                continue;
            }
            let change = replication.follower_fetched(
                follower.id,
                wanted.fetch_offset,
                partition.durable_end().get(),
                partition.high_watermark(),
                now,
            );
            if let Some(Some(change)) = change {
                tracing::info!("{}-{}: {change:?}", partition.topic, partition.index);
            }
        }
    }
}

/// Fills `data` with the refusal of a follower's fetch; false when it may read.
fn refuse_follower(
    ctx: &ApiContext,
    partition: &Partition,
    (follower, wanted): (Follower, &FetchPartition),
    data: &mut PartitionData,
) -> bool {
    let Err(refusal) = follower_check(ctx, partition, follower, wanted) else {
        return false;
    };
    data.high_watermark = partition.high_watermark().get();
    data.log_start_offset = partition.log_start();
    match refusal {
        FollowerRefusal::Fenced(error) => data.error_code = error.code(),
        FollowerRefusal::Diverged(diverging) => {
            data.diverging_epoch = diverging;
            data.records = Some(Bytes::new());
        }
    }
    true
}

fn fetch_once(
    ctx: &ApiContext,
    req: &FetchRequest,
    follower: Option<Follower>,
) -> (FetchResponse, usize, Option<Waiter>) {
    let for_follower = follower.is_some();
    let mut response = FetchResponse::default();
    // The broker's cap, not the client's wish, bounds what one response holds in memory.
    let mut budget = (req.max_bytes.max(0) as usize).min(ctx.config.fetch_bytes_max);
    let mut total = 0usize;
    let mut first_empty = None;
    for topic in &req.topics {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        topic_response.topic_id = topic.topic_id;
        let unknown = if topic.topic.is_empty() {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        for wanted in &topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = wanted.partition;
            data.aborted_transactions = Some(Vec::new());
            data.preferred_read_replica = (-1).into();
            match lookup(ctx, topic, wanted.partition) {
                None => data.error_code = unknown.code(),
                Some(partition) if !partition.leads() => {
                    data.error_code = ResponseError::NotLeaderOrFollower.code();
                    data.high_watermark = -1;
                    data.log_start_offset = -1;
                }
                Some(partition)
                    if follower.is_some_and(|id| {
                        refuse_follower(ctx, &partition, (id, wanted), &mut data)
                    }) => {}
                Some(partition) => {
                    let max = (wanted.partition_max_bytes.max(0) as usize).min(budget.max(1));
                    // KIP-74: only the first non-empty partition may exceed the request's byte
                    // limit (by its first batch); later partitions get only what still fits.
                    let spent = total > 0 && budget == 0;
                    let read = if spent {
                        Ok(FetchRead {
                            records: Bytes::new(),
                            high_watermark: partition.high_watermark().get(),
                            log_start: partition.log_start(),
                        })
                    } else if for_follower {
                        partition.read_for_follower(wanted.fetch_offset, max)
                    } else {
                        partition.read(wanted.fetch_offset, max)
                    };
                    match read {
                        Ok(mut read) => {
                            if total > 0 && read.records.len() > budget {
                                read.records = Bytes::new();
                            }
                            data.high_watermark = read.high_watermark;
                            data.last_stable_offset = read.high_watermark;
                            data.log_start_offset = read.log_start;
                            total += read.records.len();
                            budget = budget.saturating_sub(read.records.len());
                            if read.records.is_empty() && first_empty.is_none() {
                                first_empty = Some((partition.clone(), wanted.fetch_offset));
                            }
                            data.records = Some(read.records);
                        }
                        Err(error) => {
                            data.error_code = error.code();
                            data.high_watermark = partition.high_watermark().get();
                            data.log_start_offset = partition.log_start();
                        }
                    }
                }
            }
            topic_response.partitions.push(data);
        }
        response.responses.push(topic_response);
    }
    (response, total, first_empty)
}

pub fn list_offsets(ctx: &ApiContext, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in req.topics {
        let mut topic_response = ListOffsetsTopicResponse::default();
        for wanted in topic.partitions {
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = wanted.partition_index;
            out.timestamp = -1;
            match ctx.topics.partition(&topic.name, wanted.partition_index) {
                None => out.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(partition)
                    if req.replica_id.0 == DEBUGGING_REPLICA_ID
                        && wanted.timestamp == LATEST_TIMESTAMP =>
                {
                    let (_, last_epoch) = partition.log_end_and_epoch();
                    out.offset = partition.durable_end().get();
                    out.leader_epoch = last_epoch;
                }
                Some(partition) if !partition.leads() => {
                    out.error_code = ResponseError::NotLeaderOrFollower.code();
                    out.offset = -1;
                }
                Some(partition) => match wanted.timestamp {
                    LATEST_TIMESTAMP => out.offset = partition.high_watermark().get(),
                    EARLIEST_TIMESTAMP => out.offset = partition.log_start(),
                    // Lookup by time needs a time index this broker does not keep.
                    _ => {
                        out.error_code = ResponseError::UnsupportedForMessageFormat.code();
                        out.offset = -1;
                    }
                },
            }
            topic_response.partitions.push(out);
        }
        topic_response.name = topic.name;
        response.topics.push(topic_response);
    }
    response
}
