//! A broker's copy of the controller's image and what it does with it (Kafka's broker
//! metadata publisher). Every broker follows the active controller's image
//! (`METADATA_POLL_INTERVAL`) and hands each partition it holds the leader, leader epoch and
//! committed in-sync set the image names (`Replication::adopt`); that is the only way a
//! partition's leader changes under a quorum. A replicated topic this broker holds and the
//! image lacks is proposed to the quorum (its creation is recorded there); the in-sync
//! changes its leaders ask for go to the quorum as `AlterIsr` records.
//!
//! Nothing here is on the produce path: produce and fetch read the leadership each partition
//! keeps in one atomic; the image's copy here is read only by replica fetches, to check who
//! fetches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use kafka_protocol::error::ResponseError;
use tokio::sync::Notify;

use crate::controller::client::ControllerClient;
use crate::controller::messages::{BrokerAnswer, BrokerRequest};
use crate::controller::metadata::{MetadataImage, MetadataRecord};
use crate::mutex::lock;
use crate::replica_state::{AlterIsrQueue, AlterIsrRequest, Leadership};
use crate::topics::TopicRegistry;

/// How often a broker asks the active controller whether the image moved (an unchanged
/// image costs a few bytes). Failover takes at least this long on top of the session.
const METADATA_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a topic missing from the image is proposed again.
const CREATE_TOPIC_RETRY: Duration = Duration::from_secs(1);

/// This broker's registration as its heartbeats last confirmed it.
#[derive(Debug, Clone, Copy)]
struct Session {
    broker_epoch: u64,
    confirmed_at: Instant,
}

/// Why a proposal was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The active controller refused the record (the image is unchanged).
    #[error("{0}")]
    Refused(String),
    /// No active controller answered: none elected yet (a cluster just started), or none
    /// reachable. Worth trying again.
    #[error("{0}")]
    Unreachable(String),
}

pub struct BrokerMetadata {
    client: Arc<ControllerClient>,
    local: i32,
    /// The controller fences a broker silent this long; a broker that has not been heard
    /// this long must take itself for fenced.
    session_timeout: Duration,
    session: std::sync::Mutex<Option<Session>>,
    image: ArcSwapOption<MetadataImage>,
    alter_isr: Arc<AlterIsrQueue>,
    /// Woken when a proposal was committed, so the image is read at once.
    committed: Notify,
    /// When each missing topic was last proposed.
    proposed: std::sync::Mutex<HashMap<String, Instant>>,
}

impl BrokerMetadata {
    pub fn new(client: Arc<ControllerClient>, local: i32, session_timeout: Duration) -> Self {
        Self {
            client,
            local,
            session_timeout,
            session: std::sync::Mutex::new(None),
            image: ArcSwapOption::empty(),
            alter_isr: Arc::new(AlterIsrQueue::default()),
            committed: Notify::new(),
            proposed: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Arc<ControllerClient> {
        &self.client
    }

    /// Where this broker's leaders put their in-sync requests.
    pub fn alter_isr(&self) -> &Arc<AlterIsrQueue> {
        &self.alter_isr
    }

    /// The active controller confirmed this broker's registration at `broker_epoch` (a
    /// registration or a heartbeat answered).
    pub fn confirmed(&self, broker_epoch: u64) {
        *lock(&self.session) = Some(Session {
            broker_epoch,
            confirmed_at: Instant::now(),
        });
    }

    /// Whether this process may lead: `image` has it registered at the epoch its heartbeats
    /// use and not fenced, and the last heartbeat was answered within the session. A broker
    /// cut off from the quorum stops leading once the controller must have fenced it, so
    /// clients go to the leader elected instead; a restarted broker does not lead on the
    /// image of its previous incarnation.
    fn may_lead(&self, image: &MetadataImage) -> bool {
        let Some(session) = *lock(&self.session) else {
            return false;
        };
        let current = image
            .broker(self.local)
            .is_some_and(|b| b.broker_epoch == session.broker_epoch && !b.fenced);
        current && session.confirmed_at.elapsed() < self.session_timeout
    }

    /// Whether Metadata answers name `broker` among the cluster's brokers. As in Kafka, only
    /// registered, unfenced ones; and this broker leaves itself out while it may not lead (a
    /// registration unconfirmed past its session: cut off from the quorum, it has nothing
    /// current to tell). A client keeps asking a broker it is connected to while that broker
    /// is listed; one left out is dropped, and the client asks a broker that knows the
    /// current leaders. With no image yet, every broker is named.
    pub fn lists(&self, broker: i32) -> bool {
        let Some(image) = self.image.load_full() else {
            return true;
        };
        if broker == self.local {
            self.may_lead(&image)
        } else {
            image.broker(broker).is_some_and(|b| !b.fenced)
        }
    }

    /// Whether `broker` may fetch as a replica: registered and not fenced in the newest image
    /// this broker has (with none yet, nobody may), and fetching at the broker epoch of that
    /// registration (a fetch without one, v14 or older, is refused too: only a client or a
    /// broker from before the quorum sends it).
    pub fn may_replicate(
        &self,
        broker: i32,
        broker_epoch: Option<i64>,
    ) -> Result<(), ResponseError> {
        let image = self.image.load();
        let registered = image
            .as_ref()
            .and_then(|image| image.broker(broker))
            .filter(|b| !b.fenced)
            .ok_or(ResponseError::BrokerIdNotRegistered)?;
        match broker_epoch.and_then(|e| u64::try_from(e).ok()) {
            Some(epoch) if epoch == registered.broker_epoch => Ok(()),
            _ => Err(ResponseError::StaleBrokerEpoch),
        }
    }

    /// The broker epoch of this broker's registration as its heartbeats last confirmed it.
    pub fn broker_epoch(&self) -> Option<u64> {
        lock(&self.session).map(|s| s.broker_epoch)
    }

    /// Follows the active controller's image until the task is aborted.
    pub async fn follow(self: Arc<Self>, topics: Arc<TopicRegistry>) {
        let mut known = None;
        loop {
            let request = BrokerRequest::Metadata { known };
            match self.client.ask_active(&request).await {
                Ok(BrokerAnswer::Metadata { applied, image }) => {
                    known = Some(applied);
                    self.image.store(Some(Arc::new(image)));
                }
                Ok(BrokerAnswer::Unchanged) => {}
                Ok(other) => tracing::debug!("controller answered {other:?}"),
                Err(e) => tracing::debug!("{e}"),
            }
            // Also when unchanged: a topic created here since the last image may be in it.
            if let Some(image) = self.image.load_full() {
                self.publish(&image, &topics);
                self.propose_missing_topics(&image, &topics).await;
            }
            tokio::select! {
                () = tokio::time::sleep(METADATA_POLL_INTERVAL) => {}
                () = self.committed.notified() => {}
            }
        }
    }

    /// Hands every local replicated partition its leadership and in-sync set from `image`;
    /// while this broker may not lead, a partition the image has it lead is left without a
    /// leader here.
    fn publish(&self, image: &MetadataImage, topics: &TopicRegistry) {
        let may_lead = self.may_lead(image);
        for (name, topic) in image.topics() {
            let Some(local) = topics.get(name) else {
                continue;
            };
            for (p, partition) in topic.partitions.iter().zip(&local.partitions) {
                let Some(r) = partition.replication() else {
                    continue;
                };
                let next = Leadership {
                    epoch: p.leader_epoch,
                    leader: p.leader,
                };
                if p.leader == self.local && !may_lead {
                    if r.step_down() {
                        tracing::warn!(
                            "{name}-{}: not leading in epoch {}: this broker's registration is not confirmed",
                            partition.index,
                            p.leader_epoch
                        );
                    }
                    continue;
                }
                match r.adopt(next, &p.isr, p.partition_epoch) {
                    Ok(false) => {}
                    Ok(true) if p.leader == self.local => tracing::info!(
                        "{name}-{}: this broker leads in epoch {} (in sync: {:?})",
                        partition.index,
                        p.leader_epoch,
                        p.isr
                    ),
                    Ok(true) => tracing::info!(
                        "{name}-{}: leader {} in epoch {}",
                        partition.index,
                        p.leader,
                        p.leader_epoch
                    ),
                    Err(e) => tracing::warn!(
                        "{name}-{}: cannot take epoch {} from the controller: {e:?}",
                        partition.index,
                        p.leader_epoch
                    ),
                }
            }
        }
    }

    /// Proposes the replicated topics this broker holds and the image lacks.
    async fn propose_missing_topics(&self, image: &MetadataImage, topics: &TopicRegistry) {
        let cluster = topics.cluster();
        let now = Instant::now();
        for topic in topics.snapshot().values() {
            if topic.replication_factor <= 1 || image.topic(&topic.name).is_some() {
                continue;
            }
            {
                let mut proposed = lock(&self.proposed);
                let recent = proposed
                    .get(&*topic.name)
                    .is_some_and(|at| now.duration_since(*at) < CREATE_TOPIC_RETRY);
                if recent {
                    continue;
                }
                proposed.insert(topic.name.to_string(), now);
            }
            let factor = usize::try_from(topic.replication_factor).unwrap_or(1);
            let record = MetadataRecord::CreateTopic {
                topic: topic.name.to_string(),
                topic_id: topic.id,
                assignment: (0..topic.partitions.len())
                    .map(|i| cluster.replicas(&topic.name, i as i32, factor))
                    .collect(),
                unclean_leader_election: false,
            };
            let _ = self.propose(record).await;
        }
    }

    /// Sends the leaders' in-sync requests to the quorum until the task is aborted.
    pub async fn send_alter_isr(self: Arc<Self>) {
        loop {
            for request in self.alter_isr.take().await {
                let AlterIsrRequest {
                    topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr,
                } = request;
                let _ = self
                    .propose(MetadataRecord::AlterIsr {
                        topic: topic.to_string(),
                        partition,
                        leader,
                        leader_epoch,
                        partition_epoch,
                        isr,
                    })
                    .await;
            }
        }
    }

    /// The id the quorum recorded for `topic`, once this broker's copy of the image has it
    /// (polled: the image follows the active controller's every `METADATA_POLL_INTERVAL`).
    pub async fn recorded_topic_id(&self, topic: &str, timeout: Duration) -> Option<u128> {
        let deadline = Instant::now() + timeout;
        loop {
            let image = self.image.load_full();
            if let Some(recorded) = image.as_ref().and_then(|i| i.topic(topic)) {
                return Some(recorded.topic_id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.committed.notify_one();
            tokio::time::sleep(METADATA_POLL_INTERVAL / 4).await;
        }
    }

    /// Sends one record to the active controller; a committed one wakes the image follower.
    pub async fn propose(&self, record: MetadataRecord) -> Result<(), ProposeError> {
        let described = format!("{record:?}");
        let outcome = match self
            .client
            .ask_active(&BrokerRequest::Propose(record))
            .await
        {
            Ok(BrokerAnswer::Applied) => {
                self.committed.notify_one();
                Ok(())
            }
            Ok(BrokerAnswer::Refused(why)) => Err(ProposeError::Refused(why)),
            Ok(other) => Err(ProposeError::Unreachable(format!(
                "controller answered {other:?}"
            ))),
            Err(e) => Err(ProposeError::Unreachable(e)),
        };
        match &outcome {
            Ok(()) => tracing::debug!("committed {described}"),
            Err(why) => tracing::debug!("not committed: {described}: {why}"),
        }
        outcome
    }
}
