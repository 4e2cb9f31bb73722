//! `chronik-broker promote`: the failover step an operator (or a test) runs after a partition's
//! leader stopped. It asks every broker of the cluster file for its view of the topic
//! (Metadata: the newest leader epoch wins), skips partitions whose leader still answers, asks
//! each answering replica for its durable end and last epoch (ListOffsets with Kafka's
//! debugging replica id), and sends ElectLeaders to the best one: in the last reported in-sync
//! set, then the newest last epoch, then the longest log. Every acks=all write is on each
//! in-sync replica (the high watermark waits for them), and replicas of one leader hold
//! prefixes of its log, so the longest such log holds every acknowledged write.
//!
//! The in-sync set it trusts is the one the leader last reported, up to a second old: a
//! follower dropped in that second still counts. With `--unclean` a replica outside the set may
//! be elected when no in-sync one answers; whatever it lacks is lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, ElectLeadersRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{Cluster, ClusterBroker};
use crate::replication::peer::Peer;

/// How long each broker may take to answer one request.
const BROKER_ANSWER_MAX: Duration = Duration::from_secs(3);
const METADATA_VERSION: i16 = 12;
/// v4 is the first that answers with a leader epoch.
const LIST_OFFSETS_VERSION: i16 = 4;
/// v1 is the first with an election type.
const ELECT_LEADERS_VERSION: i16 = 1;
const DEBUGGING_REPLICA_ID: i32 = -2;
const ELECTION_IN_SYNC: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "chronik-broker promote",
    about = "Fail over a topic's partitions whose leader stopped: elect the in-sync replica with the longest log"
)]
pub struct PromoteArgs {
    /// The cluster file the brokers were started with.
    #[arg(long)]
    pub cluster: PathBuf,
    #[arg(long)]
    pub topic: String,
    /// Partitions to fail over (repeatable; default: every partition of the topic).
    #[arg(long)]
    pub partition: Vec<i32>,
    /// When no in-sync replica answers, elect the longest log outside the in-sync set
    /// (what it lacks of the old leader's log is lost).
    #[arg(long)]
    pub unclean: bool,
}

/// One replica's answer: its durable end and the epoch of its last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLog {
    pub broker: i32,
    pub in_sync: bool,
    pub last_epoch: i32,
    pub end_offset: i64,
}

/// The replica to elect: in sync first (unless none is and `unclean`), then the newest last
/// epoch, then the longest log, then the lowest id.
pub fn choose(candidates: &[ReplicaLog], unclean: bool) -> Option<ReplicaLog> {
    let in_sync = candidates.iter().filter(|c| c.in_sync);
    let pool: Vec<&ReplicaLog> = if in_sync.clone().next().is_some() || !unclean {
        in_sync.collect()
    } else {
        candidates.iter().collect()
    };
    pool.into_iter()
        .max_by_key(|c| (c.last_epoch, c.end_offset, -c.broker))
        .copied()
}

/// Runs the promotion; returns one line per partition, or the lines with an error when a
/// partition could not be failed over.
pub async fn run(args: &PromoteArgs) -> Result<Vec<String>, Vec<String>> {
    let cluster = Cluster::load_any(&args.cluster).map_err(|e| vec![e])?;
    let mut views: BTreeMap<i32, MetadataResponse> = BTreeMap::new();
    for broker in cluster.brokers() {
        if let Ok(view) = metadata(broker, &args.topic).await {
            views.insert(broker.id, view);
        }
    }
    if views.is_empty() {
        return Err(vec!["no broker of the cluster answers".into()]);
    }
    let partitions = newest_views(&views);
    if partitions.is_empty() {
        return Err(vec![format!("no broker knows topic {}", args.topic)]);
    }
    let wanted: Vec<i32> = if args.partition.is_empty() {
        partitions.keys().copied().collect()
    } else {
        args.partition.clone()
    };
    let mut lines = Vec::new();
    let mut failed = false;
    for index in wanted {
        let name = format!("{}-{index}", args.topic);
        let Some(view) = partitions.get(&index) else {
            lines.push(format!("{name}: unknown partition"));
            failed = true;
            continue;
        };
        if views.contains_key(&view.leader) {
            lines.push(format!(
                "{name}: leader {} (epoch {}) answers, nothing to do",
                view.leader, view.epoch
            ));
            continue;
        }
        let (line, ok) = fail_over(&cluster, args, index, view).await;
        lines.push(format!("{name}: {line}"));
        failed |= !ok;
    }
    if failed {
        Err(lines)
    } else {
        Ok(lines)
    }
}

/// A partition as the broker with the newest leader epoch for it sees it.
struct PartitionView {
    epoch: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

/// Per partition, the view with the newest leader epoch among the brokers' answers.
fn newest_views(views: &BTreeMap<i32, MetadataResponse>) -> BTreeMap<i32, PartitionView> {
    let mut partitions: BTreeMap<i32, PartitionView> = BTreeMap::new();
    for view in views.values() {
        for topic in view.topics.iter().filter(|t| t.error_code == 0) {
            for p in &topic.partitions {
                let known = partitions.get(&p.partition_index).map_or(-1, |k| k.epoch);
                if p.leader_epoch > known {
                    partitions.insert(
                        p.partition_index,
                        PartitionView {
                            epoch: p.leader_epoch,
                            leader: p.leader_id.0,
                            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        },
                    );
                }
            }
        }
    }
    partitions
}

/// Elects a new leader for a partition whose leader does not answer: the replica `choose`
/// picks among those that answer; the line to print and whether it worked.
async fn fail_over(
    cluster: &Cluster,
    args: &PromoteArgs,
    index: i32,
    view: &PartitionView,
) -> (String, bool) {
    let (leader, isr) = (view.leader, &view.isr);
    let mut candidates = Vec::new();
    for &replica in view.replicas.iter().filter(|&&r| r != leader) {
        let Some(broker) = cluster.broker(replica) else {
            continue;
        };
        if let Ok((end_offset, last_epoch)) = replica_log(broker, &args.topic, index).await {
            candidates.push(ReplicaLog {
                broker: replica,
                in_sync: isr.contains(&replica),
                last_epoch,
                end_offset,
            });
        }
    }
    let Some(chosen) = choose(&candidates, args.unclean) else {
        let line = format!(
            "leader {leader} is down and no {}replica answers (in sync: {isr:?}){}",
            if args.unclean { "" } else { "in-sync " },
            if args.unclean {
                ""
            } else {
                "; --unclean elects one outside the set"
            }
        );
        return (line, false);
    };
    let broker = cluster
        .broker(chosen.broker)
        .expect("a replica of the cluster");
    let election = if chosen.in_sync {
        ELECTION_IN_SYNC
    } else {
        ELECTION_UNCLEAN
    };
    match elect(broker, &args.topic, index, election).await {
        Ok(()) => (
            format!(
                "broker {} elected in epoch {} (log end {}, last epoch {}{}); leader {leader} was down",
                chosen.broker,
                view.epoch + 1,
                chosen.end_offset,
                chosen.last_epoch,
                if chosen.in_sync { "" } else { ", UNCLEAN: not in sync" }
            ),
            true,
        ),
        Err(err) => (format!("broker {} refused: {err}", chosen.broker), false),
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

async fn metadata(broker: &ClusterBroker, topic: &str) -> Result<MetadataResponse, String> {
    let mut wanted = MetadataRequestTopic::default();
    wanted.name = Some(topic_name(topic));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![wanted]);
    request.allow_auto_topic_creation = false;
    Peer::new(broker.address, -1)
        .request(METADATA_VERSION, &request, BROKER_ANSWER_MAX)
        .await
        .map_err(|e| e.to_string())
}

async fn replica_log(
    broker: &ClusterBroker,
    topic: &str,
    index: i32,
) -> Result<(i64, i32), String> {
    let mut partition = ListOffsetsPartition::default();
    partition.partition_index = index;
    partition.current_leader_epoch = -1;
    partition.timestamp = -1;
    let mut wanted = ListOffsetsTopic::default();
    wanted.name = topic_name(topic);
    wanted.partitions = vec![partition];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(DEBUGGING_REPLICA_ID);
    request.topics = vec![wanted];
    let response = Peer::new(broker.address, -1)
        .request(LIST_OFFSETS_VERSION, &request, BROKER_ANSWER_MAX)
        .await
        .map_err(|e| e.to_string())?;
    let answer = response
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("empty ListOffsets answer")?;
    if answer.error_code != 0 {
        return Err(format!(
            "{:?}",
            ResponseError::try_from_code(answer.error_code)
        ));
    }
    Ok((answer.offset, answer.leader_epoch))
}

async fn elect(
    broker: &ClusterBroker,
    topic: &str,
    index: i32,
    election: i8,
) -> Result<(), String> {
    let mut partitions = TopicPartitions::default();
    partitions.topic = topic_name(topic);
    partitions.partitions = vec![index];
    let mut request = ElectLeadersRequest::default();
    request.election_type = election;
    request.topic_partitions = Some(vec![partitions]);
    request.timeout_ms = i32::try_from(BROKER_ANSWER_MAX.as_millis()).unwrap_or(i32::MAX);
    let response = Peer::new(broker.address, -1)
        .request(ELECT_LEADERS_VERSION, &request, BROKER_ANSWER_MAX)
        .await
        .map_err(|e| e.to_string())?;
    if response.error_code != 0 {
        return Err(format!(
            "{:?}",
            ResponseError::try_from_code(response.error_code)
        ));
    }
    let result = response
        .replica_election_results
        .first()
        .and_then(|t| t.partition_result.first())
        .ok_or("empty ElectLeaders answer")?;
    if result.error_code != 0 {
        return Err(format!(
            "{:?} {}",
            ResponseError::try_from_code(result.error_code),
            result.error_message.as_deref().unwrap_or("")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(broker: i32, in_sync: bool, last_epoch: i32, end_offset: i64) -> ReplicaLog {
        ReplicaLog {
            broker,
            in_sync,
            last_epoch,
            end_offset,
        }
    }

    #[test]
    fn the_in_sync_replica_with_the_newest_longest_log_is_chosen() {
        let a = log(2, true, 3, 100);
        let b = log(3, true, 3, 120);
        let c = log(4, false, 3, 500);
        let d = log(5, true, 4, 90);
        assert_eq!(choose(&[a, b, c], false), Some(b));
        assert_eq!(choose(&[a, b, c, d], false), Some(d), "a newer epoch wins");
        assert_eq!(choose(&[c], false), None, "never outside the set unasked");
        assert_eq!(choose(&[c], true), Some(c));
        assert_eq!(
            choose(&[a, c], true),
            Some(a),
            "in sync first even when unclean"
        );
        assert_eq!(
            choose(&[log(3, true, 1, 5), log(2, true, 1, 5)], false).map(|c| c.broker),
            Some(2)
        );
        assert_eq!(choose(&[], true), None);
    }
}
