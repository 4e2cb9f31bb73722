//! The follower side: one task per other broker. It learns the topics that broker knows
//! (Metadata, so every broker holds every topic under the same id) and, for the partitions
//! that broker leads and this one follows, fetches from the leader (Fetch with this broker's id
//! as the replica id), appends what comes back at the leader's offsets, waits until that is
//! durable in the local WAL, and fetches again from the new end: that next fetch is how the
//! leader learns the follower's durable position.
//!
//! Each fetch carries the epoch of the follower's last batch. When the leader's log ends that
//! epoch earlier (the follower holds batches a former leader wrote and this leader never had),
//! it answers with a diverging epoch instead of records, and the follower cuts its log there
//! before it fetches again (Kafka's leader-epoch truncation, KIP-101/KIP-595).
//!
//! Without a controller quorum, elections reach a broker here too: the Metadata of every peer
//! is read each second, and a partition's leader in a newer epoch than the local one is
//! adopted (under a quorum only the controller's image moves leaders).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::peer::{Peer, PeerError};
use crate::batch;
use crate::cluster::ClusterBroker;
use crate::controller::publisher::BrokerMetadata;
use crate::partition::Partition;
use crate::replica_state::Leadership;
use crate::topics::TopicRegistry;
use crate::wal::group_commit::{GroupCommitWal, WalFailed};

/// Under a controller quorum, Fetch v15: topics by the id the quorum recorded, and this
/// broker's id with the broker epoch of its registration in `replica_state`, so the leader can
/// tell this incarnation from an earlier one (or from a client using its id).
const QUORUM_FETCH_VERSION: i16 = super::REPLICA_FETCH_VERSION;
/// Without a quorum, Fetch v12: the newest version that names topics (nothing assigns ids
/// cluster-wide there: two brokers auto-creating one topic at once may choose two) and
/// carries the replica id in the request body. There are no broker epochs to send.
const STATIC_FETCH_VERSION: i16 = 12;
/// Metadata v12 carries topic ids.
const METADATA_VERSION: i16 = 12;
/// How long the leader may hold a follower's fetch when it has nothing new (long poll; the
/// leader answers as soon as its durable end moves).
const FOLLOWER_FETCH_WAIT: Duration = Duration::from_millis(500);
/// A peer that does not answer within the fetch wait plus this is treated as unreachable.
const PEER_ANSWER_SLACK: Duration = Duration::from_secs(5);
/// Bytes one follower fetch asks for, in all and per partition.
const FETCH_RESPONSE_BYTES_MAX: i32 = 16 << 20;
const FETCH_PARTITION_BYTES_MAX: i32 = 4 << 20;
/// How often the peer's topics are read (and how long an idle fetcher sleeps).
const METADATA_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a failed request before the next one.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long one fetch waits for the local WAL to make what it appended durable before the
/// fetcher goes on. A partition whose appends are still not durable is left out of the fetches
/// after it until they are (`Partition::durable_fetch_position`): its fetch offset would tell
/// the leader it holds them.
const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// A partition a fetch appended to, the leader's high watermark in the same answer, and the
/// signal that the appended batches are durable (none when nothing came back).
type Appended = (
    Arc<Partition>,
    i64,
    Option<oneshot::Receiver<Result<(), WalFailed>>>,
);

pub struct Fetcher {
    topics: Arc<TopicRegistry>,
    wal: Arc<GroupCommitWal>,
    leader: ClusterBroker,
    local_id: i32,
    peer: Peer,
    /// With a controller quorum: this broker's registration (its broker epoch).
    metadata: Option<Arc<BrokerMetadata>>,
    /// Whether the last request failed (warn once per episode, not per retry).
    failing: bool,
}

impl Fetcher {
    pub fn new(
        topics: Arc<TopicRegistry>,
        wal: Arc<GroupCommitWal>,
        leader: ClusterBroker,
        local_id: i32,
        metadata: Option<Arc<BrokerMetadata>>,
    ) -> Self {
        Self {
            peer: Peer::new(leader.address, local_id),
            topics,
            wal,
            leader,
            local_id,
            metadata,
            failing: false,
        }
    }

    /// Reads the peer's topics and elections once, bounded by `timeout` (a starting broker
    /// does this before it serves clients, so a former leader learns that it was replaced
    /// before anyone can produce to it). Returns whether the peer answered.
    pub async fn learn_once(&mut self, timeout: Duration) -> bool {
        let learned = tokio::time::timeout(timeout, self.learn_topics()).await;
        matches!(learned, Ok(Ok(())))
    }

    /// Runs until the broker aborts the task (at shutdown): no lock is held across an await,
    /// and a batch appended but not yet durable is the WAL's to finish.
    pub async fn run(mut self) {
        let mut next_metadata = Instant::now();
        loop {
            if Instant::now() >= next_metadata {
                let learned = self.learn_topics().await;
                self.note(learned);
                next_metadata = Instant::now() + METADATA_INTERVAL;
            }
            let followed = self.followed();
            if followed.is_empty() {
                tokio::time::sleep(METADATA_INTERVAL).await;
                continue;
            }
            let fetched = self.fetch_once(&followed).await;
            let failed = fetched.is_err();
            self.note(fetched);
            if failed {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Logs a failure once per episode, and the recovery.
    fn note(&mut self, result: Result<(), String>) {
        match result {
            Err(err) if !self.failing => {
                self.failing = true;
                tracing::warn!("replication from broker {}: {err}", self.leader.id);
            }
            Err(err) => tracing::debug!("replication from broker {}: {err}", self.leader.id),
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("replication from broker {} resumed", self.leader.id);
            }
            Ok(()) => {}
        }
    }

    /// The partitions this broker follows whose leader is this fetcher's broker.
    fn followed(&self) -> Vec<Arc<Partition>> {
        self.topics
            .all_partitions()
            .into_iter()
            .filter(|p| {
                p.replication()
                    .is_some_and(|r| r.is_follower() && r.leader() == self.leader.id)
            })
            .collect()
    }

    /// Creates the topics the peer knows and this broker does not, with the peer's id, and
    /// takes the in-sync sets of the partitions the peer leads.
    async fn learn_topics(&mut self) -> Result<(), String> {
        let mut request = MetadataRequest::default();
        request.topics = None;
        request.allow_auto_topic_creation = false;
        let response = self
            .peer
            .request(METADATA_VERSION, &request, PEER_ANSWER_SLACK)
            .await
            .map_err(|e: PeerError| e.to_string())?;
        for topic in response.topics {
            let (Some(name), true) = (topic.name, topic.error_code == 0) else {
                continue;
            };
            let partitions = i32::try_from(topic.partitions.len()).unwrap_or(0);
            let factor = topic
                .partitions
                .first()
                .map_or(1, |p| i16::try_from(p.replica_nodes.len()).unwrap_or(1));
            let local = match self.topics.get(&name) {
                Some(local) => local,
                None => {
                    let id = topic.topic_id.as_u128();
                    match self.topics.create_with_id(&name, partitions, factor, id) {
                        Ok(_) => tracing::info!(
                            "learned topic {} ({partitions} partition(s), replication factor {factor}) from broker {}",
                            &*name,
                            self.leader.id
                        ),
                        Err(err) => tracing::warn!(
                            "cannot create topic {} learned from broker {}: {err}",
                            &*name,
                            self.leader.id
                        ),
                    }
                    continue;
                }
            };
            for reported in topic.partitions {
                let Some(partition) = usize::try_from(reported.partition_index)
                    .ok()
                    .and_then(|i| local.partitions.get(i))
                else {
                    continue;
                };
                let Some(r) = partition.replication() else {
                    continue;
                };
                // Under a controller quorum only its image moves leaders and in-sync sets.
                if r.controlled() {
                    continue;
                }
                // A newer election than this broker knows, whoever it made the leader.
                let reported_leadership = Leadership {
                    epoch: reported.leader_epoch,
                    leader: reported.leader_id.0,
                };
                if reported_leadership.epoch > r.leader_epoch() {
                    match r.elect(reported_leadership) {
                        Ok(()) => tracing::info!(
                            "{}-{}: broker {} leads in epoch {} (learned from broker {})",
                            partition.topic,
                            partition.index,
                            reported_leadership.leader,
                            reported_leadership.epoch,
                            self.leader.id
                        ),
                        Err(err) => tracing::warn!(
                            "{}-{}: cannot adopt epoch {} from broker {}: {err:?}",
                            partition.topic,
                            partition.index,
                            reported_leadership.epoch,
                            self.leader.id
                        ),
                    }
                }
                if r.is_follower() && r.leader() == self.leader.id {
                    r.set_reported_isr(reported.isr_nodes.iter().map(|b| b.0).collect());
                }
            }
        }
        Ok(())
    }

    /// One fetch from the leader for every followed partition; appends what comes back and
    /// waits until it is durable.
    async fn fetch_once(&mut self, followed: &[Arc<Partition>]) -> Result<(), String> {
        let Some(request) = self.fetch_request(followed) else {
            return Err("appends from the last fetch are not durable yet".into());
        };
        let response = self
            .peer
            .request(
                self.fetch_version(),
                &request,
                FOLLOWER_FETCH_WAIT + PEER_ANSWER_SLACK,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut appended: Vec<Appended> = Vec::new();
        let mut refused = None;
        for topic in response.responses {
            for data in topic.partitions {
                let partition = if topic.topic_id.is_nil() {
                    self.topics.partition(&topic.topic, data.partition_index)
                } else {
                    self.topics
                        .by_id(topic.topic_id.as_u128(), data.partition_index)
                };
                let Some(partition) = partition else {
                    continue;
                };
                if data.error_code != 0 {
                    refused.get_or_insert_with(|| {
                        format!(
                            "{}-{}: the leader answered {:?}",
                            partition.topic,
                            data.partition_index,
                            ResponseError::try_from_code(data.error_code)
                        )
                    });
                    continue;
                }
                if data.diverging_epoch.end_offset >= 0 {
                    if let Err(err) = self
                        .truncate(
                            &partition,
                            data.diverging_epoch.epoch,
                            data.diverging_epoch.end_offset,
                        )
                        .await
                    {
                        refused.get_or_insert(err);
                    }
                    continue;
                }
                let records = data.records.unwrap_or_default();
                let durable = if records.is_empty() {
                    None
                } else {
                    // A partition whose log does not continue the leader's is reported and
                    // retried; it never holds up the other partitions of the fetch.
                    let appended = batch::parse_produce_records(&records, records.len())
                        .map_err(|e| format!("{}-{}: {e}", partition.topic, partition.index))
                        .and_then(|batches| {
                            partition.append_replica(&batches, self.leader.id, &self.wal)
                        });
                    match appended {
                        Ok(durable) => Some(durable),
                        Err(err) => {
                            refused.get_or_insert(err);
                            continue;
                        }
                    }
                };
                appended.push((partition, data.high_watermark, durable));
            }
        }
        Self::settle(appended).await?;
        refused.map_or(Ok(()), Err)
    }

    fn fetch_version(&self) -> i16 {
        if self.metadata.is_some() {
            QUORUM_FETCH_VERSION
        } else {
            STATIC_FETCH_VERSION
        }
    }

    /// A replica fetch of every followed partition whose log is durable to its end, from that
    /// end, in its last epoch; `None` when no partition is.
    fn fetch_request(&self, followed: &[Arc<Partition>]) -> Option<FetchRequest> {
        let mut by_topic: BTreeMap<(u128, &str), Vec<FetchPartition>> = BTreeMap::new();
        for p in followed {
            let Some((log_end, last_epoch)) = p.durable_fetch_position() else {
                continue;
            };
            let mut wanted = FetchPartition::default();
            wanted.partition = p.index;
            wanted.current_leader_epoch = p.replication().map_or(-1, |r| r.leader_epoch());
            wanted.fetch_offset = log_end;
            wanted.last_fetched_epoch = last_epoch;
            wanted.log_start_offset = -1;
            wanted.partition_max_bytes = FETCH_PARTITION_BYTES_MAX;
            by_topic
                .entry((p.topic_id, &p.topic))
                .or_default()
                .push(wanted);
        }
        if by_topic.is_empty() {
            return None;
        }
        let mut request = FetchRequest::default();
        // Each version encodes only its own fields, and refuses a set one it lacks.
        let by_id = self.metadata.is_some();
        if let Some(metadata) = &self.metadata {
            request.replica_state.replica_id = BrokerId(self.local_id);
            request.replica_state.replica_epoch = metadata
                .broker_epoch()
                .and_then(|e| i64::try_from(e).ok())
                .unwrap_or(-1);
        } else {
            request.replica_id = BrokerId(self.local_id);
        }
        request.max_wait_ms = i32::try_from(FOLLOWER_FETCH_WAIT.as_millis()).unwrap_or(500);
        request.min_bytes = 1;
        request.max_bytes = FETCH_RESPONSE_BYTES_MAX;
        request.session_id = 0;
        request.session_epoch = -1;
        request.topics = by_topic
            .into_iter()
            .map(|((id, name), partitions)| {
                let mut topic = FetchTopic::default();
                if by_id {
                    topic.topic_id = Uuid::from_u128(id);
                } else {
                    topic.topic = TopicName(StrBytes::from_string(name.to_owned()));
                }
                topic.partitions = partitions;
                topic
            })
            .collect();
        Some(request)
    }

    /// Waits until each appended batch is durable, then lets the partition's high watermark
    /// follow the leader's, never past what it holds durably itself.
    async fn settle(appended: Vec<Appended>) -> Result<(), String> {
        for (partition, leader_high_watermark, durable) in appended {
            if let Some(durable) = durable {
                match tokio::time::timeout(DURABLE_WAIT, durable).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(WalFailed(reason)))) => return Err(reason.to_string()),
                    Ok(Err(_)) => return Err("WAL writer stopped".into()),
                    Err(_) => return Err(format!("WAL not durable within {DURABLE_WAIT:?}")),
                }
            }
            // A follower's consumers do not read here, but a follower that is promoted starts
            // from this mark: never past what it holds itself.
            partition
                .high_watermark()
                .advance(leader_high_watermark.min(partition.durable_end().get()));
        }
        Ok(())
    }

    /// The leader's log ends `epoch` at `leader_end`: cut the local log where the two agree,
    /// at most at the leader's end and at the local end of the same epoch (with no such epoch
    /// on the leader, at the start of its earliest one).
    async fn truncate(
        &self,
        partition: &Arc<Partition>,
        epoch: i32,
        leader_end: i64,
    ) -> Result<(), String> {
        let (_, local_end) = partition.end_offset_for_epoch(epoch);
        let target = leader_end.min(local_end);
        let before = partition.log_end();
        let end = partition
            .truncate(target, self.leader.id, &self.wal)
            .await?;
        tracing::warn!(
            "{}-{}: log diverged from leader {} (its epoch {epoch} ends at {leader_end}): cut {} offset(s), the log now ends at {end}",
            partition.topic,
            partition.index,
            self.leader.id,
            before - end
        );
        Ok(())
    }
}
