//! `ProduceHandler`: the produce path of docs/ARCHITECTURE.md, in order, with no layer skipped:
//! validate -> assign offsets + append to the WAL + push onto `pending_batches` -> wait until
//! durable (acks != 0) -> with acks=all on a replicated partition, wait until the high watermark
//! passes the batch -> `Flusher::after_produce` -> respond. acks=0/1 never wait for
//! followers and touch no replication state beyond one atomic load (the leader check).
//!
//! The path has two halves. `append` assigns offsets and queues the WAL write; a connection
//! runs it for its requests one at a time, in arrival order, so batches pipelined on one
//! connection get offsets in the order they were sent (Kafka's per-connection ordering).
//! `respond` waits for durability and may overlap with later requests, so pipelined requests
//! share group commits.
//!
//! Dependencies are fixed at construction; nothing here takes a broker-wide lock.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use crate::batch::{self, BatchError};
use crate::config::BrokerConfig;
use crate::flush::Flusher;
use crate::partition::{AppendError, Appended, Partition};
use crate::topics::TopicRegistry;
use crate::wal::group_commit::GroupCommitWal;

pub struct ProduceHandler {
    topics: Arc<TopicRegistry>,
    wal: Arc<GroupCommitWal>,
    flusher: Arc<Flusher>,
    batch_bytes_max: usize,
    /// acks=all succeeds only with at least this many in-sync replicas.
    min_insync_replicas: usize,
}

enum Slot {
    Done(PartitionProduceResponse),
    Waiting(Arc<Partition>, Appended),
}

/// A produce request whose batches are appended (offsets assigned, WAL write queued) and
/// whose response still waits for durability.
pub struct AppendedProduce {
    acks: i16,
    /// The request's timeout: how long acks=all may wait for the followers.
    timeout: std::time::Duration,
    topics: Vec<(TopicName, Vec<Slot>)>,
}

fn partition_error(index: i32, error: ResponseError) -> PartitionProduceResponse {
    let mut response = PartitionProduceResponse::default();
    response.index = index;
    response.error_code = error.code();
    response.base_offset = -1;
    response
}

fn batch_error_code(err: &BatchError) -> ResponseError {
    match err {
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
        BatchError::Transactional => ResponseError::TransactionalIdAuthorizationFailed,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        // Kafka answers a malformed record under a valid CRC with INVALID_RECORD.
        BatchError::MalformedRecord { .. } => ResponseError::InvalidRecord,
        _ => ResponseError::CorruptMessage,
    }
}

impl ProduceHandler {
    /// The handler with the produce settings of `config`.
    pub fn new(
        topics: Arc<TopicRegistry>,
        wal: Arc<GroupCommitWal>,
        flusher: Arc<Flusher>,
        config: &BrokerConfig,
    ) -> Self {
        Self {
            topics,
            wal,
            flusher,
            batch_bytes_max: config.batch_bytes_max,
            min_insync_replicas: config.min_insync_replicas,
        }
    }

    /// First half of a Produce request: validates and appends every partition. Nothing waits
    /// for durability here, so all partitions of the request share one group commit.
    pub async fn append(&self, request: ProduceRequest) -> AppendedProduce {
        let acks = request.acks;
        let timeout =
            std::time::Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
        let mut topics = Vec::with_capacity(request.topic_data.len());
        for topic_data in request.topic_data {
            let mut slots = Vec::with_capacity(topic_data.partition_data.len());
            for data in topic_data.partition_data {
                let slot = if !matches!(acks, -1..=1) {
                    Slot::Done(partition_error(
                        data.index,
                        ResponseError::InvalidRequiredAcks,
                    ))
                } else {
                    self.append_partition(&topic_data.name, data.index, data.records, acks)
                        .await
                };
                slots.push(slot);
            }
            topics.push((topic_data.name, slots));
        }
        AppendedProduce {
            acks,
            timeout,
            topics,
        }
    }

    /// Second half: waits for durability, then flushes; the response reports each partition.
    /// `None` for acks=0 (Kafka sends no response then).
    pub async fn respond(&self, appended: AppendedProduce) -> Option<ProduceResponse> {
        let AppendedProduce {
            acks,
            timeout,
            topics,
        } = appended;
        let mut response = ProduceResponse::default();
        for (name, slots) in topics {
            let mut topic_response = TopicProduceResponse::default();
            topic_response.name = name;
            for slot in slots {
                let partition_response = match slot {
                    Slot::Done(done) => done,
                    Slot::Waiting(partition, appended) => {
                        self.complete_partition(&partition, appended, acks, timeout)
                            .await
                    }
                };
                topic_response.partition_responses.push(partition_response);
            }
            response.responses.push(topic_response);
        }
        (acks != 0).then_some(response)
    }

    async fn append_partition(
        &self,
        topic: &str,
        index: i32,
        records: Option<bytes::Bytes>,
        acks: i16,
    ) -> Slot {
        let Some(partition) = self.topics.partition(topic, index) else {
            return Slot::Done(partition_error(
                index,
                ResponseError::UnknownTopicOrPartition,
            ));
        };
        if !partition.leads() {
            return Slot::Done(partition_error(index, ResponseError::NotLeaderOrFollower));
        }
        // Kafka's check before the append: with too few replicas in sync, acks=all is refused
        // and nothing is written (NOT_ENOUGH_REPLICAS is retriable).
        if acks == ACKS_ALL
            && partition.replication().map_or(1, |r| r.in_sync_count()) < self.min_insync_replicas
        {
            return Slot::Done(partition_error(index, ResponseError::NotEnoughReplicas));
        }
        let records = records.unwrap_or_default();
        let batches = match batch::parse_produce_records(&records, self.batch_bytes_max) {
            Ok(batches) => batches,
            Err(err) => {
                tracing::debug!("{topic}-{index}: rejected produce: {err}");
                return Slot::Done(partition_error(index, batch_error_code(&err)));
            }
        };
        let reservation = self.wal.reserve(records.len()).await;
        let started = std::time::Instant::now();
        let appended = partition.append(&batches, &self.wal, reservation);
        if started.elapsed() >= SLOW_STEP_LOGGED {
            tracing::debug!(target: "timeline", event = "slow_append", us = started.elapsed().as_micros() as u64);
        }
        match appended {
            Ok(appended) => Slot::Waiting(partition, appended),
            Err(AppendError::Kafka(error)) => Slot::Done(partition_error(index, error)),
            Err(AppendError::Wal(err)) => {
                tracing::debug!("{topic}-{index}: {err}");
                Slot::Done(partition_error(index, ResponseError::KafkaStorageError))
            }
        }
    }

    async fn complete_partition(
        &self,
        partition: &Arc<Partition>,
        appended: Appended,
        acks: i16,
        timeout: std::time::Duration,
    ) -> PartitionProduceResponse {
        let mut response = PartitionProduceResponse::default();
        response.index = partition.index;
        response.base_offset = appended.base_offset;
        response.log_append_time_ms = -1;
        if acks != 0 {
            let durable = match appended.durable {
                Some(done) => done.await.unwrap_or_else(|_| {
                    Err(crate::wal::group_commit::WalFailed(
                        "WAL writer stopped".into(),
                    ))
                }),
                // A duplicate of an earlier batch: acknowledged once the original is durable.
                None => {
                    let durable_end = partition.durable_end();
                    durable_end
                        .wait_past(appended.end_offset - 1, DUPLICATE_WAIT)
                        .await;
                    if durable_end.get() >= appended.end_offset {
                        Ok(())
                    } else {
                        return partition_error(partition.index, ResponseError::RequestTimedOut);
                    }
                }
            };
            if durable.is_err() {
                return partition_error(partition.index, ResponseError::KafkaStorageError);
            }
            // Promise 1 of docs/RELIABILITY.md: never ack past the durable offset.
            assert!(
                appended.end_offset <= partition.durable_end().get(),
                "acked end offset beyond the durable offset"
            );
        }
        if acks == ACKS_ALL {
            if let Some(replication) = partition.replication() {
                let high_watermark = partition.high_watermark();
                high_watermark
                    .wait_past(appended.end_offset - 1, timeout)
                    .await;
                if high_watermark.get() < appended.end_offset {
                    return partition_error(partition.index, ResponseError::RequestTimedOut);
                }
                // Another broker was elected meanwhile: the mark may have moved on its log,
                // which need not hold this batch (Kafka fails the request the same way).
                if replication.leading_epoch() != Some(appended.leader_epoch) {
                    return partition_error(partition.index, ResponseError::NotLeaderOrFollower);
                }
                // The followers that hold the batch may have left the in-sync set since: then
                // it is not on min.insync.replicas replicas that would be elected, and the
                // client must not take it for a success (Kafka's error for this case).
                if replication.in_sync_count() < self.min_insync_replicas {
                    return partition_error(
                        partition.index,
                        ResponseError::NotEnoughReplicasAfterAppend,
                    );
                }
            }
        }
        self.flusher.after_produce(partition);
        response.log_start_offset = partition.log_start();
        response
    }
}

/// An append (under the partition lock) at least this slow is written to the `timeline` log
/// target (debug level).
const SLOW_STEP_LOGGED: std::time::Duration = std::time::Duration::from_millis(1);

/// Kafka's acks=all (`-1`): the response waits for the in-sync replicas.
const ACKS_ALL: i16 = -1;
/// How long a retried batch waits for its original to become durable.
const DUPLICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
