//! ElectLeaders, the failover step. This broker has no controller: an ElectLeaders request is
//! sent to the replica that is to lead (`chronik-broker promote` picks it), and that broker
//! elects itself in the next leader epoch, durably, and starts leading. The other brokers learn
//! the election from its Metadata within a second (`replication::fetcher`); a former leader
//! that comes back learns it before it serves clients, and cuts what the new leader lacks.
//!
//! Election type 0 ("preferred" in Kafka; here: in sync) refuses a broker that was not in the
//! in-sync set the leader last reported to it; type 1 (unclean) elects it anyway, and what it
//! lacks of the old leader's log is lost.
//!
//! There is no authorization on this wire, so the broker guards the request itself: it is a
//! failover, and it is refused while the current leader still answers this broker.
//!
//! Under a controller quorum the controller elects by itself; an ElectLeaders request is the
//! operator's override and becomes an `ElectLeader` record for this broker: in sync (type 0)
//! or unclean (type 1), checked by the quorum against its own in-sync set.

use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ApiVersionsRequest, ElectLeadersRequest, ElectLeadersResponse};

use super::{str_bytes, ApiContext};
use crate::controller::metadata::MetadataRecord;
use crate::replica_state::{ElectError, Leadership};
use crate::replication::peer::Peer;

/// Kafka's election types.
const ELECTION_IN_SYNC: i8 = 0;
/// How long the current leader may take to answer before it counts as down (on loopback a
/// stopped broker refuses the connection at once).
const LEADER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether broker `leader` answers an ApiVersions request from this one.
async fn answers(ctx: &ApiContext, leader: i32) -> bool {
    let cluster = ctx.topics.cluster();
    let Some(broker) = cluster.broker(leader) else {
        return false;
    };
    Peer::new(broker.address, cluster.local_id())
        .request(0, &ApiVersionsRequest::default(), LEADER_PROBE_TIMEOUT)
        .await
        .is_ok()
}

/// Under a quorum: asks the controller to elect this broker.
async fn propose(
    ctx: &ApiContext,
    topic: &str,
    partition: i32,
    election_type: i8,
) -> Option<(ResponseError, String)> {
    let metadata = ctx.metadata.as_ref()?;
    let record = MetadataRecord::ElectLeader {
        topic: topic.to_owned(),
        partition,
        leader: ctx.topics.cluster().local_id(),
        unclean: election_type != ELECTION_IN_SYNC,
    };
    match metadata.propose(record).await {
        Ok(()) => {
            tracing::warn!(
                "{topic}-{partition}: the controller elected this broker (type {election_type})"
            );
            None
        }
        Err(why) => Some((ResponseError::EligibleLeadersNotAvailable, why.to_string())),
    }
}

pub async fn elect_leaders(ctx: &ApiContext, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let mut response = ElectLeadersResponse::default();
    let Some(wanted) = req.topic_partitions else {
        // Kafka elects every partition then; a broker electing itself for all of them is not
        // a failover anyone means.
        response.error_code = ResponseError::InvalidRequest.code();
        return response;
    };
    let local = ctx.topics.cluster().local_id();
    for topic in wanted {
        let mut out = ReplicaElectionResult::default();
        for index in topic.partitions {
            let mut result = PartitionResult::default();
            result.partition_id = index;
            let refused = match ctx.topics.partition(&topic.topic, index) {
                None => Some((ResponseError::UnknownTopicOrPartition, String::new())),
                Some(_) if ctx.metadata.is_some() => {
                    propose(ctx, &topic.topic, index, req.election_type).await
                }
                Some(partition) => match partition.replication() {
                    None => Some((
                        ResponseError::ElectionNotNeeded,
                        "the partition has one replica".into(),
                    )),
                    Some(r) if r.leader() != local && answers(ctx, r.leader()).await => Some((
                        ResponseError::ElectionNotNeeded,
                        format!("leader {} answers", r.leader()),
                    )),
                    Some(r) if req.election_type == ELECTION_IN_SYNC && !r.isr().contains(&local) => {
                        Some((
                            ResponseError::EligibleLeadersNotAvailable,
                            format!("broker {local} is not in the in-sync set {:?} the leader last reported", r.isr()),
                        ))
                    }
                    Some(r) => {
                        let next = Leadership {
                            epoch: r.leader_epoch() + 1,
                            leader: local,
                        };
                        match r.elect(next) {
                            Ok(()) => {
                                tracing::warn!(
                                    "{}-{index}: elected leader in epoch {} (type {})",
                                    &*topic.topic,
                                    next.epoch,
                                    req.election_type
                                );
                                None
                            }
                            Err(ElectError::NotAReplica) => Some((
                                ResponseError::EligibleLeadersNotAvailable,
                                format!("broker {local} is not a replica"),
                            )),
                            Err(ElectError::AlreadyLeader | ElectError::Stale) => {
                                Some((ResponseError::ElectionNotNeeded, String::new()))
                            }
                            Err(ElectError::Io(reason)) => {
                                Some((ResponseError::KafkaStorageError, reason))
                            }
                        }
                    }
                },
            };
            if let Some((error, message)) = refused {
                result.error_code = error.code();
                result.error_message = (!message.is_empty()).then(|| str_bytes(message));
            }
            out.partition_result.push(result);
        }
        out.topic = topic.topic;
        response.replica_election_results.push(out);
    }
    response
}
