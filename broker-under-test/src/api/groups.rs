//! Group APIs: thin translation between the wire types and `GroupCoordinator`.

use std::time::Duration;

use bytes::Bytes;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};

use super::{str_bytes, ApiContext};
use crate::groups::JoinRequest;

fn millis(ms: i32) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

fn code(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |e| e.code())
}

/// Protocol metadata one JoinGroup may carry, all protocols together. The group keeps a copy
/// per member for as long as the member stays (outside the request budget, which a parked join
/// returns), so it is bounded here; a consumer's subscription of 30,000 topics fits.
const JOIN_GROUP_METADATA_BYTES_MAX: usize = 1 << 20;

/// Joins, then waits for the rebalance. `frame_budget` (the request's share of the broker's
/// request budget) is returned once the metadata is copied out of the frame, before the wait:
/// a join may park for its whole rebalance timeout, and parked joins must not starve every
/// other client of the budget.
pub async fn join<B>(
    ctx: &ApiContext,
    req: JoinGroupRequest,
    client_id: String,
    frame_budget: B,
) -> JoinGroupResponse {
    let metadata_bytes: usize = req.protocols.iter().map(|p| p.metadata.len()).sum();
    if metadata_bytes > JOIN_GROUP_METADATA_BYTES_MAX {
        let mut response = JoinGroupResponse::default();
        response.error_code = ResponseError::InvalidRequest.code();
        response.generation_id = -1;
        response.member_id = req.member_id;
        return response;
    }
    // v0 has no rebalance timeout: Kafka uses the session timeout then.
    let rebalance = if req.rebalance_timeout_ms > 0 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    // Built in a block that consumes the request: every field of it is a slice of the frame,
    // which must be gone before the wait.
    let request = {
        let req = req;
        JoinRequest {
            group_id: req.group_id.to_string(),
            member_id: req.member_id.to_string(),
            client_id,
            protocol_type: req.protocol_type.to_string(),
            // Copied: the decoded metadata is a slice of the whole request frame, which the
            // group would otherwise keep alive for as long as the member stays.
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), Bytes::copy_from_slice(&p.metadata)))
                .collect(),
            session_timeout: millis(req.session_timeout_ms),
            rebalance_timeout: millis(rebalance),
        }
    };
    drop(frame_budget);
    let outcome = ctx.groups.join(request).await;
    let mut response = JoinGroupResponse::default();
    response.error_code = code(outcome.error);
    response.generation_id = outcome.generation;
    response.protocol_type = Some(str_bytes(outcome.protocol_type));
    response.protocol_name = outcome.protocol_name.map(str_bytes);
    response.leader = str_bytes(outcome.leader);
    response.member_id = str_bytes(outcome.member_id);
    response.members = outcome
        .members
        .into_iter()
        .map(|(id, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str_bytes(id);
            m.metadata = metadata;
            m
        })
        .collect();
    response
}

/// Syncs, waiting for the leader's assignment; `frame_budget` is returned before the wait, as
/// in `join`.
pub async fn sync<B>(
    ctx: &ApiContext,
    req: SyncGroupRequest,
    frame_budget: B,
) -> SyncGroupResponse {
    let (group_id, generation, member_id, assignments) = {
        let req = req;
        let assignments: Vec<(String, Bytes)> = req
            .assignments
            .into_iter()
            .map(|a| {
                (
                    a.member_id.to_string(),
                    Bytes::copy_from_slice(&a.assignment),
                )
            })
            .collect();
        (
            req.group_id.to_string(),
            req.generation_id,
            req.member_id.to_string(),
            assignments,
        )
    };
    drop(frame_budget);
    let mut response = SyncGroupResponse::default();
    match ctx
        .groups
        .sync(&group_id, generation, &member_id, assignments)
        .await
    {
        Ok(synced) => {
            response.protocol_type = Some(str_bytes(synced.protocol_type));
            response.protocol_name = synced.protocol_name.map(str_bytes);
            response.assignment = synced.assignment;
        }
        Err(error) => response.error_code = code(Some(error)),
    }
    response
}

pub fn heartbeat(ctx: &ApiContext, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut response = HeartbeatResponse::default();
    response.error_code = code(ctx.groups.heartbeat(
        &req.group_id,
        req.generation_id,
        &req.member_id,
    ));
    response
}

pub fn leave(ctx: &ApiContext, req: LeaveGroupRequest) -> LeaveGroupResponse {
    // v0-2 name one member; v3+ a list.
    let ids: Vec<String> = if req.members.is_empty() {
        vec![req.member_id.to_string()]
    } else {
        req.members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    };
    let results = ctx.groups.leave(&req.group_id, &ids);
    let mut response = LeaveGroupResponse::default();
    if req.members.is_empty() {
        response.error_code = code(results[0]);
    } else {
        response.members = ids
            .into_iter()
            .zip(results)
            .map(|(id, error)| {
                let mut m = MemberResponse::default();
                m.member_id = str_bytes(id);
                m.error_code = code(error);
                m
            })
            .collect();
    }
    response
}

/// Runs on the connection's reader, in arrival order (a later OffsetFetch sees this commit);
/// the append and its fdatasync run on a blocking thread, not a runtime worker.
pub async fn offset_commit(ctx: &ApiContext, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    for topic in &req.topics {
        for p in &topic.partitions {
            offsets.push((
                topic.name.to_string(),
                p.partition_index,
                p.committed_offset,
                p.committed_metadata.as_ref().map(|m| m.to_string()),
            ));
        }
    }
    let group_id = req.group_id.to_string();
    let error =
        match ctx
            .groups
            .check_commit(&group_id, &req.member_id, req.generation_id_or_member_epoch)
        {
            Some(refused) => Some(refused),
            None => {
                let groups = ctx.groups.clone();
                let written =
                    tokio::task::spawn_blocking(move || groups.commit_offsets(&group_id, offsets))
                        .await
                        .unwrap_or_else(|panicked| {
                            Err(std::io::Error::other(panicked.to_string()))
                        });
                match written {
                    Ok(()) => None,
                    Err(err) => {
                        tracing::error!(
                            "committing offsets of group {} failed: {err}",
                            &*req.group_id
                        );
                        Some(ResponseError::KafkaStorageError)
                    }
                }
            }
        };
    let mut response = OffsetCommitResponse::default();
    response.topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let mut t = OffsetCommitResponseTopic::default();
            t.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let mut out = OffsetCommitResponsePartition::default();
                    out.partition_index = p.partition_index;
                    out.error_code = code(error);
                    out
                })
                .collect();
            t.name = topic.name;
            t
        })
        .collect();
    response
}

pub fn offset_fetch(ctx: &ApiContext, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = req.group_id.to_string();
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
            for (topic, partition) in ctx.groups.committed_partitions(&group) {
                by_topic.entry(topic).or_default().push(partition);
            }
            by_topic.into_iter().collect()
        }
    };
    let mut response = OffsetFetchResponse::default();
    response.topics = wanted
        .into_iter()
        .map(|(topic, partitions)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.partitions = partitions
                .into_iter()
                .map(|index| {
                    let (offset, metadata) = ctx.groups.committed(&group, &topic, index);
                    let mut p = OffsetFetchResponsePartition::default();
                    p.partition_index = index;
                    p.committed_offset = offset;
                    p.committed_leader_epoch = -1;
                    p.metadata = Some(str_bytes(metadata.unwrap_or_default()));
                    p
                })
                .collect();
            t.name = TopicName(str_bytes(topic));
            t
        })
        .collect();
    response
}
