//! Fetch (with long polling) and ListOffsets. A consumer reads below the high watermark and
//! waits on it; a follower (a fetch with a replica id) reads below the leader's durable end,
//! waits on that, and reports its own durable end with the offset it fetches from.

use std::time::Duration;

use bytes::Bytes;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};

use super::ApiContext;
use crate::partition::FetchRead;

/// Upper bound on a fetch's long poll, whatever the client asks.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);
/// ListOffsets timestamps with special meaning.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

pub async fn fetch(ctx: &ApiContext, req: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    // Kafka's consumers send -1; a broker id marks a follower.
    let follower = (req.replica_id.0 >= 0).then_some(req.replica_id.0);
    if let Some(id) = follower {
        record_follower_positions(ctx, &req, id);
    }
    loop {
        let (response, bytes, first_empty) = fetch_once(ctx, &req, follower.is_some());
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

type Waiter = (std::sync::Arc<crate::partition::Partition>, i64);

/// A follower's fetch offsets are its durable ends: the leader's in-sync set and high
/// watermark move with them. Recorded once per request, before the long poll.
fn record_follower_positions(ctx: &ApiContext, req: &FetchRequest, follower: i32) {
    let now = std::time::Instant::now();
    for topic in &req.topics {
        for wanted in &topic.partitions {
            let Some(partition) = ctx.topics.partition(&topic.topic, wanted.partition) else {
                continue;
            };
            let Some(replication) = partition.replication().filter(|r| r.is_leader()) else {
                continue;
            };
            let change = replication.follower_fetched(
                follower,
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

fn fetch_once(
    ctx: &ApiContext,
    req: &FetchRequest,
    for_follower: bool,
) -> (FetchResponse, usize, Option<Waiter>) {
    let mut response = FetchResponse::default();
    let mut budget = req.max_bytes.max(0) as usize;
    let mut total = 0usize;
    let mut first_empty = None;
    for topic in &req.topics {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        for wanted in &topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = wanted.partition;
            data.aborted_transactions = Some(Vec::new());
            data.preferred_read_replica = (-1).into();
            match ctx.topics.partition(&topic.topic, wanted.partition) {
                None => data.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(partition) if !partition.leads() => {
                    data.error_code = ResponseError::NotLeaderOrFollower.code();
                    data.high_watermark = -1;
                    data.log_start_offset = -1;
                }
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
