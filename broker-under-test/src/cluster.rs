//! The static cluster: which brokers exist (`--cluster FILE`, TOML with one `[[broker]]` table
//! per broker: `id` and `address`), which one this process is (`--broker-id`), and where each
//! partition's replicas live. The assignment is a pure function of the topic name, the
//! partition and the replication factor, so every broker computes the same one without talking
//! to the others; the first replica is the partition's leader.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Brokers one cluster file may list.
pub const CLUSTER_BROKERS_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClusterBroker {
    pub id: i32,
    /// Where the other brokers reach this one (and clients, unless `client_address` is set).
    pub address: SocketAddr,
    /// Where clients are told to reach it, when they take another route than the brokers
    /// (Kafka's separate inter-broker listener; tests put a proxy between brokers only).
    #[serde(default)]
    pub client_address: Option<SocketAddr>,
    /// Where this broker's member of the controller quorum listens; brokers without one are
    /// not voters (Kafka's `controller.quorum.voters`).
    #[serde(default)]
    pub controller_address: Option<SocketAddr>,
}

impl ClusterBroker {
    /// The address Metadata advertises to clients.
    pub fn client_address(&self) -> SocketAddr {
        self.client_address.unwrap_or(self.address)
    }
}

#[derive(Debug, Deserialize)]
struct ClusterFile {
    broker: Vec<ClusterBroker>,
}

/// Every broker of the cluster, sorted by id, and the local one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    brokers: Vec<ClusterBroker>,
    local_id: i32,
}

impl Cluster {
    /// The single-broker cluster of a broker started without `--cluster`.
    pub fn single(local_id: i32, address: SocketAddr) -> Self {
        Self {
            brokers: vec![ClusterBroker {
                id: local_id,
                address,
                client_address: None,
                controller_address: None,
            }],
            local_id,
        }
    }

    /// Reads and validates a cluster file.
    pub fn load(path: &Path, local_id: i32) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read cluster file {}: {e}", path.display()))?;
        Self::parse(&text, local_id).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a cluster file without being one of its brokers (an admin command).
    pub fn load_any(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read cluster file {}: {e}", path.display()))?;
        let file: ClusterFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let first = file.broker.first().map_or(0, |b| b.id);
        Self::parse(&text, first).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, local_id: i32) -> Result<Self, String> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut brokers = file.broker;
        if brokers.is_empty() || brokers.len() > CLUSTER_BROKERS_MAX {
            return Err(format!(
                "a cluster has 1 to {CLUSTER_BROKERS_MAX} brokers, this one {}",
                brokers.len()
            ));
        }
        brokers.sort_by_key(|b| b.id);
        if let Some(pair) = brokers.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(format!("broker id {} is listed twice", pair[0].id));
        }
        if brokers.iter().any(|b| b.id < 0) {
            return Err("broker ids are not negative".into());
        }
        if !brokers.iter().any(|b| b.id == local_id) {
            return Err(format!("--broker-id {local_id} is not in the cluster file"));
        }
        Ok(Self { brokers, local_id })
    }

    pub fn local_id(&self) -> i32 {
        self.local_id
    }

    pub fn brokers(&self) -> &[ClusterBroker] {
        &self.brokers
    }

    pub fn size(&self) -> usize {
        self.brokers.len()
    }

    pub fn broker(&self, id: i32) -> Option<&ClusterBroker> {
        self.brokers.iter().find(|b| b.id == id)
    }

    /// The controller quorum's voters: id and address of every broker with a
    /// `controller_address`.
    pub fn voters(&self) -> std::collections::BTreeMap<u64, SocketAddr> {
        self.brokers
            .iter()
            .filter_map(|b| Some((u64::try_from(b.id).ok()?, b.controller_address?)))
            .collect()
    }

    /// The other brokers.
    pub fn peers(&self) -> impl Iterator<Item = &ClusterBroker> {
        self.brokers.iter().filter(move |b| b.id != self.local_id)
    }

    /// The replicas of `topic`-`partition`: `factor` consecutive brokers (by id, wrapping),
    /// starting at an offset from the topic name's CRC plus the partition, so the partitions
    /// of a topic spread their leaders over the brokers (Kafka's round-robin assignment,
    /// without its random start, which every broker would have to agree on).
    pub fn replicas(&self, topic: &str, partition: i32, factor: usize) -> Vec<i32> {
        let n = self.brokers.len();
        let start = crc32c::crc32c(topic.as_bytes()) as usize + partition.max(0) as usize;
        (0..factor.min(n))
            .map(|i| self.brokers[(start + i) % n].id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
        [[broker]]
        id = 3
        address = "127.0.0.1:9094"
        [[broker]]
        id = 1
        address = "127.0.0.1:9092"
        [[broker]]
        id = 2
        address = "127.0.0.1:9093"
    "#;

    #[test]
    fn parses_sorts_and_finds_peers() {
        let c = Cluster::parse(THREE, 2).unwrap();
        assert_eq!(
            c.brokers().iter().map(|b| b.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(c.peers().map(|b| b.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(c.broker(3).unwrap().address.port(), 9094);
    }

    #[test]
    fn refuses_bad_files() {
        assert!(Cluster::parse(THREE, 7)
            .unwrap_err()
            .contains("not in the cluster"));
        let twice = "[[broker]]\nid = 1\naddress = \"127.0.0.1:1\"\n[[broker]]\nid = 1\naddress = \"127.0.0.1:2\"\n";
        assert!(Cluster::parse(twice, 1).unwrap_err().contains("twice"));
        assert!(Cluster::parse("[[broker]]\nid = 1\naddress = \"nowhere\"\n", 1).is_err());
        assert!(Cluster::parse("broker = []\n", 1).is_err());
    }

    #[test]
    fn every_broker_computes_the_same_spread_assignment() {
        let seen_from = |id| Cluster::parse(THREE, id).unwrap();
        let mut leaders = std::collections::HashSet::new();
        for partition in 0..12 {
            let replicas = seen_from(1).replicas("orders", partition, 2);
            assert_eq!(replicas.len(), 2);
            assert_ne!(replicas[0], replicas[1]);
            assert_eq!(replicas, seen_from(3).replicas("orders", partition, 2));
            leaders.insert(replicas[0]);
        }
        assert_eq!(leaders.len(), 3, "leaders spread over every broker");
        // A factor above the cluster size is capped (CreateTopics refuses it before).
        assert_eq!(seen_from(1).replicas("t", 0, 5).len(), 3);
    }
}
