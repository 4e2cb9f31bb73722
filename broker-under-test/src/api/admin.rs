//! Metadata, topic administration, coordinator lookup, producer ids, configs.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse, MetadataRequest,
    MetadataResponse, ProducerId, TopicName,
};
use uuid::Uuid;

use std::sync::Arc;

use kafka_protocol::messages::create_topics_request::CreatableTopic;

use super::{str_bytes, ApiContext};
use crate::controller::metadata::MetadataRecord;
use crate::controller::publisher::ProposeError;
use crate::replication::announce;
use crate::topics::{new_topic_id, Topic};

const CLUSTER_ID: &str = "chronik-under-test";
/// DescribeConfigs resource type of a topic.
const RESOURCE_TYPE_TOPIC: i8 = 2;

fn describe_topic(ctx: &ApiContext, topic: &Topic) -> MetadataResponseTopic {
    let local = BrokerId(ctx.topics.cluster().local_id());
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(str_bytes(&*topic.name)));
    out.topic_id = Uuid::from_u128(topic.id);
    out.partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let mut part = MetadataResponsePartition::default();
            part.partition_index = p.index;
            part.leader_epoch = 0;
            match p.replication() {
                None => {
                    part.leader_id = local;
                    part.replica_nodes = vec![local];
                    part.isr_nodes = vec![local];
                }
                Some(r) => {
                    let leadership = r.leadership();
                    part.leader_id = BrokerId(leadership.leader);
                    part.leader_epoch = leadership.epoch;
                    part.replica_nodes = r.replicas().iter().map(|&id| BrokerId(id)).collect();
                    part.isr_nodes = r.isr().into_iter().map(BrokerId).collect();
                }
            }
            part
        })
        .collect();
    out
}

pub async fn metadata(ctx: &ApiContext, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    let cluster = ctx.topics.cluster();
    response.brokers = cluster
        .brokers()
        .iter()
        .filter(|b| ctx.metadata.as_ref().is_none_or(|m| m.lists(b.id)))
        .map(|b| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(b.id);
            if b.id == cluster.local_id() {
                broker.host = str_bytes(&ctx.advertised_host);
                broker.port = ctx.advertised_port;
            } else {
                let address = b.client_address();
                broker.host = str_bytes(address.ip().to_string());
                broker.port = i32::from(address.port());
            }
            broker
        })
        .collect();
    response.cluster_id = Some(str_bytes(CLUSTER_ID));
    // Clients send admin requests to the "controller": any broker named above will do (as
    // under KRaft, whose controllers clients never reach): this one, unless it left itself out.
    let local = BrokerId(cluster.local_id());
    response.controller_id = if response.brokers.iter().any(|b| b.node_id == local) {
        local
    } else {
        response.brokers.first().map_or(BrokerId(-1), |b| b.node_id)
    };
    let wanted: Option<Vec<String>> =
        req.topics
            .filter(|t| !(version == 0 && t.is_empty()))
            .map(|topics| {
                topics
                    .into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.to_string()))
                    .collect()
            });
    match wanted {
        None => {
            let snapshot = ctx.topics.snapshot();
            let mut names: Vec<_> = snapshot.keys().cloned().collect();
            names.sort();
            response.topics = names
                .iter()
                .map(|n| describe_topic(ctx, &snapshot[n]))
                .collect();
        }
        Some(names) => {
            for name in names {
                let mut found = ctx.topics.get(&name);
                let mut error = None;
                if found.is_none() && req.allow_auto_topic_creation && ctx.config.auto_create_topics
                {
                    let size = (
                        ctx.config.default_partitions,
                        ctx.config.default_replication_factor,
                    );
                    match create_recorded(ctx, &name, size, false).await {
                        Ok(_) => found = ctx.topics.get(&name),
                        Err(e) => error = Some(e),
                    }
                }
                let topic = match found {
                    Some(topic) => describe_topic(ctx, &topic),
                    None => {
                        let mut missing = MetadataResponseTopic::default();
                        missing.name = Some(TopicName(str_bytes(name)));
                        missing.error_code = error
                            .unwrap_or(ResponseError::UnknownTopicOrPartition)
                            .code();
                        missing
                    }
                };
                response.topics.push(topic);
            }
        }
    }
    response
}

/// Creates a topic here with a new id and announces it to the other brokers.
/// A new topic: recorded by the quorum (if any), created here under the recorded id, and
/// announced to the other brokers.
async fn create_recorded(
    ctx: &ApiContext,
    name: &str,
    (partitions, factor): (i32, i16),
    unclean: bool,
) -> Result<Option<Arc<Topic>>, ResponseError> {
    let id = record_topic(ctx, name, partitions, (factor, unclean)).await?;
    create_with_id_and_announce(ctx, name, (partitions, factor), id).await
}

async fn create_with_id_and_announce(
    ctx: &ApiContext,
    name: &str,
    (partitions, factor): (i32, i16),
    id: u128,
) -> Result<Option<Arc<Topic>>, ResponseError> {
    let created = ctx.topics.create_with_id(name, partitions, factor, id)?;
    if let Some(topic) = &created {
        announce::announce(ctx.topics.cluster(), topic).await;
    }
    Ok(created)
}

/// Kafka's topic config that allows electing a replica outside the in-sync set.
const UNCLEAN_LEADER_ELECTION_CONFIG: &str = "unclean.leader.election.enable";

/// The topic's `unclean.leader.election.enable` (false unless set).
fn unclean_leader_election(topic: &CreatableTopic) -> Result<bool, ResponseError> {
    let Some(config) = topic
        .configs
        .iter()
        .find(|c| &*c.name == UNCLEAN_LEADER_ELECTION_CONFIG)
    else {
        return Ok(false);
    };
    match config.value.as_deref() {
        Some("true") => Ok(true),
        Some("false") | None => Ok(false),
        Some(_) => Err(ResponseError::InvalidConfig),
    }
}

/// Under a controller quorum, a replicated topic is recorded there before it is created
/// anywhere, with its id and `unclean.leader.election.enable` (Kafka's controller handles
/// CreateTopics the same way). A topic the quorum already has is created here too. Returns
/// the id to create it under: the one the quorum recorded (two brokers creating the same
/// topic at once end with one id), or a new one without a quorum.
async fn record_topic(
    ctx: &ApiContext,
    name: &str,
    partitions: i32,
    (factor, unclean): (i16, bool),
) -> Result<u128, ResponseError> {
    let id = new_topic_id();
    let Some(metadata) = ctx.metadata.as_ref().filter(|_| factor > 1) else {
        return Ok(id);
    };
    if !crate::topics::valid_topic_name(name) {
        return Err(ResponseError::InvalidTopicException);
    }
    let cluster = ctx.topics.cluster();
    let factor = usize::try_from(factor).unwrap_or(1);
    let record = MetadataRecord::CreateTopic {
        topic: name.to_owned(),
        topic_id: id,
        assignment: (0..partitions)
            .map(|i| cluster.replicas(name, i, factor))
            .collect(),
        unclean_leader_election: unclean,
    };
    // A cluster just started may not have elected its active controller yet.
    let deadline = tokio::time::Instant::now() + QUORUM_WAIT;
    loop {
        match metadata.propose(record.clone()).await {
            Ok(()) => return Ok(id),
            Err(ProposeError::Refused(why)) if why.contains("exists") => {
                return metadata
                    .recorded_topic_id(name, QUORUM_WAIT)
                    .await
                    // A log written before ids were recorded has none (0).
                    .map(|recorded| if recorded == 0 { id } else { recorded })
                    .ok_or(ResponseError::RequestTimedOut);
            }
            Err(ProposeError::Unreachable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(QUORUM_RETRY_PAUSE).await;
            }
            Err(why) => {
                tracing::warn!("topic {name} not recorded by the controller quorum: {why}");
                return Err(ResponseError::RequestTimedOut);
            }
        }
    }
}

/// How long CreateTopics waits for an active controller, and for a topic the quorum already
/// had to show up in this broker's copy of the image.
const QUORUM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause before proposing again when no active controller answered.
const QUORUM_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// A topic asked for by a client: recorded by the quorum (if any), created here, announced.
async fn create_new(
    ctx: &ApiContext,
    topic: &CreatableTopic,
    partitions: i32,
    factor: i16,
) -> Result<Option<Arc<Topic>>, ResponseError> {
    let unclean = unclean_leader_election(topic)?;
    create_recorded(ctx, &topic.name, (partitions, factor), unclean).await
}

pub async fn create_topics(ctx: &ApiContext, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in req.topics {
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        let partitions = if topic.num_partitions == -1 {
            ctx.config.default_partitions
        } else {
            topic.num_partitions
        };
        let factor = if topic.replication_factor == -1 {
            ctx.config.default_replication_factor
        } else {
            topic.replication_factor
        };
        result.num_partitions = partitions;
        result.replication_factor = factor;
        let cluster_size = ctx.topics.cluster().size();
        let outcome = if !(1..=cluster_size).contains(&usize::try_from(factor).unwrap_or(0)) {
            Err(ResponseError::InvalidReplicationFactor)
        } else if !topic.assignments.is_empty() {
            Err(ResponseError::InvalidReplicaAssignment)
        } else if req.validate_only {
            match ctx.topics.get(&topic.name) {
                Some(_) => Err(ResponseError::TopicAlreadyExists),
                None if crate::topics::valid_topic_name(&topic.name) => Ok(()),
                None => Err(ResponseError::InvalidTopicException),
            }
        } else {
            // An announcement from the broker that created the topic carries its id.
            let created = match announce::announced_id(&topic) {
                Some(id) => ctx
                    .topics
                    .create_with_id(&topic.name, partitions, factor, id),
                None => create_new(ctx, &topic, partitions, factor).await,
            };
            match created {
                Ok(Some(created)) => {
                    result.topic_id = Uuid::from_u128(created.id);
                    Ok(())
                }
                Ok(None) => Err(ResponseError::TopicAlreadyExists),
                Err(e) => Err(e),
            }
        };
        if let Err(error) = outcome {
            result.error_code = error.code();
            result.error_message = Some(str_bytes(error.to_string()));
        }
        response.topics.push(result);
    }
    response
}

pub fn delete_topics(ctx: &ApiContext, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let names = req
        .topic_names
        .into_iter()
        .chain(req.topics.into_iter().filter_map(|t| t.name));
    let mut response = DeleteTopicsResponse::default();
    for name in names {
        let mut result = DeletableTopicResult::default();
        let outcome = match ctx.topics.delete(&name) {
            Ok(true) => None,
            Ok(false) => Some(ResponseError::UnknownTopicOrPartition),
            Err(e) => Some(e),
        };
        result.error_code = outcome.map_or(0, |e| e.code());
        result.name = Some(name);
        response.responses.push(result);
    }
    response
}

/// FindCoordinator v4 introduced batched keys.
const FIND_COORDINATOR_BATCHED_VERSION: i16 = 4;

pub fn find_coordinator(
    ctx: &ApiContext,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    let node = BrokerId(ctx.topics.cluster().local_id());
    // This broker coordinates every group it is asked about. v0-3 carry one key and top-level fields; v4+ a list
    // of keys and only the list (the encoder rejects top-level values in v4+).
    if version < FIND_COORDINATOR_BATCHED_VERSION {
        response.node_id = node;
        response.host = str_bytes(&ctx.advertised_host);
        response.port = ctx.advertised_port;
        return response;
    }
    response.coordinators = req
        .coordinator_keys
        .into_iter()
        .map(|key| {
            let mut c = Coordinator::default();
            c.key = key;
            c.node_id = node;
            c.host = str_bytes(&ctx.advertised_host);
            c.port = ctx.advertised_port;
            c
        })
        .collect();
    response
}

pub fn init_producer_id(ctx: &ApiContext, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        // Transactions are out of scope; idempotence alone is supported.
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        return response;
    }
    match ctx.producer_ids.allocate() {
        Ok(id) => {
            // Each broker reserves ids on its own: in a cluster they are interleaved by broker
            // (id x brokers + position), so two brokers never hand out the same id.
            let cluster = ctx.topics.cluster();
            let position = cluster
                .brokers()
                .iter()
                .position(|b| b.id == cluster.local_id())
                .unwrap_or(0);
            response.producer_id = ProducerId(id * cluster.size() as i64 + position as i64);
            response.producer_epoch = 0;
        }
        Err(err) => {
            tracing::error!("reserving producer ids failed: {err}");
            response.error_code = ResponseError::KafkaStorageError.code();
            response.producer_id = ProducerId(-1);
            response.producer_epoch = -1;
        }
    }
    response
}

pub fn describe_configs(ctx: &ApiContext, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in req.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if resource.resource_type == RESOURCE_TYPE_TOPIC {
            if ctx.topics.get(&resource.resource_name).is_none() {
                result.error_code = ResponseError::UnknownTopicOrPartition.code();
            } else {
                let retention = ctx
                    .config
                    .retention_bytes
                    .map_or(-1, |b| b as i64)
                    .to_string();
                let configs = [
                    ("retention.bytes", retention),
                    ("segment.bytes", ctx.config.segment_bytes.to_string()),
                    ("max.message.bytes", ctx.config.batch_bytes_max.to_string()),
                    ("cleanup.policy", "delete".to_owned()),
                ];
                result.configs = configs
                    .into_iter()
                    .map(|(name, value)| {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = str_bytes(name);
                        c.value = Some(str_bytes(value));
                        c.read_only = true;
                        c
                    })
                    .collect();
            }
        }
        response.results.push(result);
    }
    response
}
