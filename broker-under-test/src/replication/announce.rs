//! Telling the other brokers about a topic this one created, so every broker holds it under
//! the same id before clients look for its leaders. A CreateTopics request carries the id in a
//! topic config (`TOPIC_ID_CONFIG`); a broker that receives it creates the topic with that id
//! and announces nothing further. A broker that is down then learns the topic from its peers'
//! Metadata when it starts (`fetcher`).

use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::peer::Peer;
use crate::cluster::Cluster;
use crate::topics::Topic;

/// The topic config that carries a topic's id (hex) from the broker that created it.
pub const TOPIC_ID_CONFIG: &str = "chronik.topic.id";
/// CreateTopics v5: configs in the request, error messages in the response.
const CREATE_TOPICS_VERSION: i16 = 5;
/// How long one peer may take to create an announced topic.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The id a CreateTopics request assigns, when it is an announcement.
pub fn announced_id(topic: &CreatableTopic) -> Option<u128> {
    topic
        .configs
        .iter()
        .find(|c| &*c.name == TOPIC_ID_CONFIG)
        .and_then(|c| c.value.as_deref())
        .and_then(|hex| u128::from_str_radix(hex, 16).ok())
}

/// Sends the topic to every other broker, one after the other; a broker that cannot be
/// reached is logged (it learns the topic when it is back).
pub async fn announce(cluster: &Cluster, topic: &Topic) {
    let mut config = CreatableTopicConfig::default();
    config.name = StrBytes::from_static_str(TOPIC_ID_CONFIG);
    config.value = Some(StrBytes::from_string(format!("{:032x}", topic.id)));
    let mut creatable = CreatableTopic::default();
    creatable.name = TopicName(StrBytes::from_string(topic.name.to_string()));
    creatable.num_partitions = i32::try_from(topic.partitions.len()).unwrap_or(1);
    creatable.replication_factor = topic.replication_factor;
    creatable.configs = vec![config];
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![creatable];
    request.timeout_ms = i32::try_from(ANNOUNCE_TIMEOUT.as_millis()).unwrap_or(5000);
    for broker in cluster.peers() {
        let mut peer = Peer::new(broker.address, cluster.local_id());
        match peer
            .request(CREATE_TOPICS_VERSION, &request, ANNOUNCE_TIMEOUT)
            .await
        {
            Ok(response) => {
                let exists = ResponseError::TopicAlreadyExists.code();
                for result in response
                    .topics
                    .iter()
                    .filter(|r| r.error_code != 0 && r.error_code != exists)
                {
                    tracing::warn!(
                        "broker {} did not create topic {}: error {}",
                        broker.id,
                        &*result.name,
                        result.error_code
                    );
                }
            }
            Err(err) => tracing::warn!(
                "topic {} not announced to broker {}: {err}; it learns the topic from Metadata",
                &*topic.name,
                broker.id
            ),
        }
    }
}
