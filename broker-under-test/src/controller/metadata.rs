//! The controller's metadata in the manner of Kafka's KRaft: the records of the replicated
//! metadata log and the image they build. Leaders, leader epochs and in-sync sets change only
//! here, by applying a record; every controller that applies the same records in the same
//! order holds the same image, so an election made by one is the election of all.
//!
//! Applying is all-or-nothing: a record that no longer fits the image (a broker epoch from an
//! earlier incarnation, a leader or partition epoch that moved on, an in-sync set that names a
//! fenced broker) is refused whole and changes nothing. Elections happen inside `apply`, as a
//! consequence of fencing and unfencing, by one rule (`elect`):
//!
//! - a new leader comes from the in-sync set, among registered brokers that are not fenced;
//! - with none, the partition has no leader, and the last in-sync member stays in the set:
//!   only it holds every acknowledged write, so only it may lead again;
//! - outside the set only where the topic allows unclean election, and then the set restarts
//!   with the new leader alone;
//! - every change of leader takes a new leader epoch, one more than the partition's last: no
//!   two leaders of a partition ever hold the same epoch.
//!
//! What is time-based (session timeouts, when to fence) is the active controller's decision
//! and arrives here as a record; the image itself reads no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The leader of a partition none of whose in-sync replicas is available.
pub const NO_LEADER: i32 = -1;

/// One entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker process starts (`incarnation`: random per process). It gets a new broker
    /// epoch and stays fenced until `UnfenceBroker`; the previous incarnation is fenced.
    RegisterBroker { broker: i32, incarnation: u64 },
    /// The broker caught up and may lead and follow.
    UnfenceBroker { broker: i32, broker_epoch: u64 },
    /// Its heartbeats stopped for the session timeout, or it shut down: it leaves every
    /// in-sync set it is not the last member of, and the partitions it led elect again.
    FenceBroker { broker: i32, broker_epoch: u64 },
    /// A topic with one replica list per partition (the first replica leads when it can),
    /// and its id: every broker creates the topic under this id, so replica fetches name it
    /// by id (0 in logs written before ids were recorded).
    CreateTopic {
        topic: String,
        #[serde(default, with = "topic_id_hex")]
        topic_id: u128,
        assignment: Vec<Vec<i32>>,
        unclean_leader_election: bool,
    },
    /// The leader's proposal of a new in-sync set (Kafka's AlterPartition), made against the
    /// epochs it knows.
    AlterIsr {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// An operator's election (ElectLeaders, `chronik-broker promote`): `leader` must be an
    /// available in-sync member, or with `unclean` any available replica, which then leads
    /// alone (what it lacks of the acknowledged writes is lost).
    ElectLeader {
        topic: String,
        partition: i32,
        leader: i32,
        unclean: bool,
    },
}

/// A broker as the metadata log knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub incarnation: u64,
    /// Given at registration, never given twice: fences requests of an earlier incarnation.
    pub broker_epoch: u64,
    pub fenced: bool,
}

/// One partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub replicas: Vec<i32>,
    pub leader: i32,
    /// Rises with every change of leader (`NO_LEADER` included).
    pub leader_epoch: i32,
    /// Rises with every change of leader or in-sync set: an `AlterIsr` made against an older
    /// one is refused.
    pub partition_epoch: i32,
    /// In the order of `replicas`; never empty.
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    #[serde(default, with = "topic_id_hex")]
    pub topic_id: u128,
    pub unclean_leader_election: bool,
    pub partitions: Vec<PartitionImage>,
}

/// A topic id as 32 hex digits: JSON numbers and serde's buffered enums (openraft's entries)
/// stop at 64 bits.
mod topic_id_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let hex = String::deserialize(d)?;
        u128::from_str_radix(&hex, 16).map_err(serde::de::Error::custom)
    }
}

/// Everything the metadata log says, as of its last applied record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    brokers: BTreeMap<i32, BrokerRegistration>,
    topics: BTreeMap<String, TopicImage>,
    next_broker_epoch: u64,
}

/// Why a record was refused (the image is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("broker {0} is not registered")]
    UnknownBroker(i32),
    #[error("broker {broker}: epoch {given} is not its current epoch {current}")]
    StaleBrokerEpoch {
        broker: i32,
        given: u64,
        current: u64,
    },
    #[error("topic {0} exists")]
    TopicExists(String),
    #[error("no partition {1} of topic {0}")]
    UnknownPartition(String, i32),
    #[error("not the leader in its epoch (leader {leader}, epoch {leader_epoch})")]
    NotLeader { leader: i32, leader_epoch: i32 },
    #[error("partition epoch {given} is not the current {current}")]
    StalePartitionEpoch { given: i32, current: i32 },
    #[error("invalid in-sync set: {0}")]
    InvalidIsr(&'static str),
    #[error("invalid assignment: {0}")]
    InvalidAssignment(&'static str),
    #[error("broker {0} cannot be elected: {1}")]
    NotEligible(i32, &'static str),
}

/// Which brokers may be elected: registered and not fenced.
fn available(brokers: &BTreeMap<i32, BrokerRegistration>, broker: i32) -> bool {
    brokers.get(&broker).is_some_and(|b| !b.fenced)
}

/// No broker listed twice.
fn distinct(ids: &[i32]) -> bool {
    ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id))
}

impl PartitionImage {
    /// Elects a leader by the rule of this module (see the module comment): from the
    /// available in-sync members, else (unclean only) any available replica with the set
    /// restarted, else none. A change of leader takes the next leader epoch.
    fn elect(&mut self, brokers: &BTreeMap<i32, BrokerRegistration>, unclean: bool) {
        let clean = self.isr.iter().copied().find(|&b| available(brokers, b));
        let chosen = match clean {
            Some(b) => Some(b),
            None if unclean => {
                let outside = self
                    .replicas
                    .iter()
                    .copied()
                    .find(|&b| available(brokers, b));
                if let Some(b) = outside {
                    self.isr = vec![b];
                }
                outside
            }
            None => None,
        };
        let leader = chosen.unwrap_or(NO_LEADER);
        if leader != self.leader {
            self.leader = leader;
            self.leader_epoch += 1;
            self.partition_epoch += 1;
        }
    }

    /// `broker` stopped: it leaves the in-sync set unless it is the last member, and a
    /// partition it led elects again.
    fn fence(&mut self, broker: i32, brokers: &BTreeMap<i32, BrokerRegistration>, unclean: bool) {
        if self.isr.len() > 1 && self.isr.contains(&broker) {
            self.isr.retain(|&b| b != broker);
            self.partition_epoch += 1;
        }
        if self.leader == broker {
            self.elect(brokers, unclean);
        }
    }

    /// `broker` became available: a partition without a leader elects again.
    fn unfence(&mut self, brokers: &BTreeMap<i32, BrokerRegistration>, unclean: bool) {
        if self.leader == NO_LEADER {
            self.elect(brokers, unclean);
        }
    }
}

impl MetadataImage {
    pub fn broker(&self, id: i32) -> Option<&BrokerRegistration> {
        self.brokers.get(&id)
    }

    pub fn brokers(&self) -> impl Iterator<Item = (i32, &BrokerRegistration)> {
        self.brokers.iter().map(|(&id, b)| (id, b))
    }

    pub fn topics(&self) -> impl Iterator<Item = (&str, &TopicImage)> {
        self.topics.iter().map(|(name, t)| (name.as_str(), t))
    }

    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    fn partition_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionImage> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get_mut(topic)?.partitions.get_mut(index)
    }

    /// Applies one record, or refuses it whole.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), Refused> {
        match record {
            MetadataRecord::RegisterBroker {
                broker,
                incarnation,
            } => {
                self.register(*broker, *incarnation);
                Ok(())
            }
            MetadataRecord::UnfenceBroker {
                broker,
                broker_epoch,
            } => self.set_fenced(*broker, *broker_epoch, false),
            MetadataRecord::FenceBroker {
                broker,
                broker_epoch,
            } => self.set_fenced(*broker, *broker_epoch, true),
            MetadataRecord::CreateTopic {
                topic,
                topic_id,
                assignment,
                unclean_leader_election,
            } => self.create_topic(topic, *topic_id, assignment, *unclean_leader_election),
            MetadataRecord::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_isr(
                topic,
                *partition,
                (*leader, *leader_epoch, *partition_epoch),
                isr,
            ),
            MetadataRecord::ElectLeader {
                topic,
                partition,
                leader,
                unclean,
            } => self.elect_leader(topic, *partition, *leader, *unclean),
        }
    }

    fn elect_leader(
        &mut self,
        topic: &str,
        partition: i32,
        leader: i32,
        unclean: bool,
    ) -> Result<(), Refused> {
        let p = self
            .partition(topic, partition)
            .ok_or_else(|| Refused::UnknownPartition(topic.to_owned(), partition))?;
        if !p.replicas.contains(&leader) {
            return Err(Refused::NotEligible(leader, "not a replica"));
        }
        if !available(&self.brokers, leader) {
            return Err(Refused::NotEligible(leader, "fenced or not registered"));
        }
        if !unclean && !p.isr.contains(&leader) {
            return Err(Refused::NotEligible(leader, "not in the in-sync set"));
        }
        if p.leader == leader {
            return Err(Refused::NotEligible(leader, "already the leader"));
        }
        let p = self.partition_mut(topic, partition).expect("checked above");
        if !p.isr.contains(&leader) {
            p.isr = vec![leader];
        }
        p.leader = leader;
        p.leader_epoch += 1;
        p.partition_epoch += 1;
        Ok(())
    }

    fn register(&mut self, broker: i32, incarnation: u64) {
        // The previous incarnation is gone: fenced first, so its partitions elect again.
        if self.brokers.get(&broker).is_some_and(|b| !b.fenced) {
            self.fence_effects(broker);
        }
        let broker_epoch = self.next_broker_epoch;
        self.next_broker_epoch += 1;
        self.brokers.insert(
            broker,
            BrokerRegistration {
                incarnation,
                broker_epoch,
                fenced: true,
            },
        );
    }

    fn set_fenced(&mut self, broker: i32, broker_epoch: u64, fenced: bool) -> Result<(), Refused> {
        let registration = self
            .brokers
            .get_mut(&broker)
            .ok_or(Refused::UnknownBroker(broker))?;
        if registration.broker_epoch != broker_epoch {
            return Err(Refused::StaleBrokerEpoch {
                broker,
                given: broker_epoch,
                current: registration.broker_epoch,
            });
        }
        if registration.fenced == fenced {
            return Ok(());
        }
        registration.fenced = fenced;
        if fenced {
            self.fence_effects(broker);
        } else {
            for topic in self.topics.values_mut() {
                let unclean = topic.unclean_leader_election;
                for p in topic
                    .partitions
                    .iter_mut()
                    .filter(|p| p.replicas.contains(&broker))
                {
                    p.unfence(&self.brokers, unclean);
                }
            }
        }
        Ok(())
    }

    /// Marks `broker` fenced and applies it to every partition it is a replica of.
    fn fence_effects(&mut self, broker: i32) {
        if let Some(b) = self.brokers.get_mut(&broker) {
            b.fenced = true;
        }
        for topic in self.topics.values_mut() {
            let unclean = topic.unclean_leader_election;
            for p in topic
                .partitions
                .iter_mut()
                .filter(|p| p.replicas.contains(&broker))
            {
                p.fence(broker, &self.brokers, unclean);
            }
        }
    }

    fn create_topic(
        &mut self,
        topic: &str,
        topic_id: u128,
        assignment: &[Vec<i32>],
        unclean: bool,
    ) -> Result<(), Refused> {
        if self.topics.contains_key(topic) {
            return Err(Refused::TopicExists(topic.to_owned()));
        }
        if assignment.is_empty() {
            return Err(Refused::InvalidAssignment("no partitions"));
        }
        for replicas in assignment {
            if replicas.is_empty() || !distinct(replicas) {
                return Err(Refused::InvalidAssignment(
                    "a partition without replicas, or a replica twice",
                ));
            }
        }
        let brokers = &self.brokers;
        let partitions = assignment
            .iter()
            .map(|replicas| {
                let live: Vec<i32> = replicas
                    .iter()
                    .copied()
                    .filter(|&b| available(brokers, b))
                    .collect();
                // Epoch 0 is the first replica's on every broker (a broker that has not heard
                // from the controller yet assumes no other); when it is down (or not
                // registered yet: a cluster just started), the first election moves on at
                // once. Nothing is written yet: every live replica is in sync, the others join
                // as they catch up.
                let mut p = PartitionImage {
                    replicas: replicas.clone(),
                    leader: replicas[0],
                    leader_epoch: 0,
                    partition_epoch: 0,
                    isr: if live.is_empty() {
                        replicas.clone()
                    } else {
                        live
                    },
                };
                if !available(brokers, replicas[0]) {
                    p.elect(brokers, unclean);
                }
                p
            })
            .collect();
        self.topics.insert(
            topic.to_owned(),
            TopicImage {
                topic_id,
                unclean_leader_election: unclean,
                partitions,
            },
        );
        Ok(())
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        partition: i32,
        (leader, leader_epoch, partition_epoch): (i32, i32, i32),
        isr: &[i32],
    ) -> Result<(), Refused> {
        let p = self
            .partition(topic, partition)
            .ok_or_else(|| Refused::UnknownPartition(topic.to_owned(), partition))?;
        if p.leader == NO_LEADER || p.leader != leader || p.leader_epoch != leader_epoch {
            return Err(Refused::NotLeader {
                leader: p.leader,
                leader_epoch: p.leader_epoch,
            });
        }
        if p.partition_epoch != partition_epoch {
            return Err(Refused::StalePartitionEpoch {
                given: partition_epoch,
                current: p.partition_epoch,
            });
        }
        if !isr.contains(&leader) {
            return Err(Refused::InvalidIsr("the leader must stay in it"));
        }
        if !distinct(isr) || isr.iter().any(|b| !p.replicas.contains(b)) {
            return Err(Refused::InvalidIsr("a broker twice, or one not a replica"));
        }
        if isr
            .iter()
            .any(|b| !p.isr.contains(b) && !available(&self.brokers, *b))
        {
            return Err(Refused::InvalidIsr("a fenced broker cannot join"));
        }
        let ordered: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|b| isr.contains(b))
            .collect();
        let p = self.partition_mut(topic, partition).expect("checked above");
        p.isr = ordered;
        p.partition_epoch += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::test_rng::Rng;

    const BROKERS: [i32; 4] = [1, 2, 3, 4];
    const CLEAN: &str = "clean";
    const UNCLEAN: &str = "unclean";

    fn epoch_of(image: &MetadataImage, broker: i32) -> u64 {
        image.broker(broker).expect("registered").broker_epoch
    }

    /// Registers and unfences every broker, then creates a 3-partition clean topic and a
    /// 1-partition unclean one, replication factor 3.
    fn started() -> (MetadataImage, Vec<MetadataRecord>) {
        let mut image = MetadataImage::default();
        let mut log = Vec::new();
        let mut run = |image: &mut MetadataImage, r: MetadataRecord| {
            image.apply(&r).expect("setup applies");
            log.push(r);
        };
        for b in BROKERS {
            run(
                &mut image,
                MetadataRecord::RegisterBroker {
                    broker: b,
                    incarnation: b as u64,
                },
            );
            let broker_epoch = epoch_of(&image, b);
            run(
                &mut image,
                MetadataRecord::UnfenceBroker {
                    broker: b,
                    broker_epoch,
                },
            );
        }
        let rotate = |i: usize| (0..3).map(|k| BROKERS[(i + k) % 4]).collect::<Vec<_>>();
        run(
            &mut image,
            MetadataRecord::CreateTopic {
                topic: CLEAN.into(),
                topic_id: 7,
                assignment: (0..3).map(rotate).collect(),
                unclean_leader_election: false,
            },
        );
        run(
            &mut image,
            MetadataRecord::CreateTopic {
                topic: UNCLEAN.into(),
                topic_id: 7,
                assignment: vec![rotate(1)],
                unclean_leader_election: true,
            },
        );
        (image, log)
    }

    /// The checker's model of the data: which acknowledged writes each broker's log holds.
    /// A write is acknowledged (acks=all) once every member of the recorded in-sync set has
    /// it; a broker joins the set only after it copied the leader's log; a restart keeps
    /// the log.
    #[derive(Default)]
    struct Model {
        logs: BTreeMap<(String, i32, i32), BTreeSet<u64>>,
        acked: BTreeMap<(String, i32), BTreeSet<u64>>,
        next_write: u64,
        /// (topic, partition, leader epoch) -> the one leader it ever had.
        leaders: BTreeMap<(String, i32, i32), i32>,
        unclean_elections: usize,
    }

    impl Model {
        fn ack(&mut self, image: &MetadataImage, topic: &str, partition: i32) {
            let p = image.partition(topic, partition).expect("exists");
            if p.leader == NO_LEADER {
                return;
            }
            self.next_write += 1;
            for &b in &p.isr {
                self.logs
                    .entry((topic.into(), partition, b))
                    .or_default()
                    .insert(self.next_write);
            }
            self.acked
                .entry((topic.into(), partition))
                .or_default()
                .insert(self.next_write);
        }

        fn catch_up(&mut self, topic: &str, partition: i32, leader: i32, follower: i32) {
            let log = self
                .logs
                .get(&(topic.into(), partition, leader))
                .cloned()
                .unwrap_or_default();
            self.logs.insert((topic.into(), partition, follower), log);
        }

        /// Every invariant of the image and of the data, after each record.
        fn check(&mut self, image: &MetadataImage, before: &MetadataImage, step: &str) {
            for (name, topic) in &image.topics {
                for (i, p) in topic.partitions.iter().enumerate() {
                    let index = i as i32;
                    let old = before.partition(name, index);
                    assert!(!p.isr.is_empty(), "{step}: {name}-{i} empty in-sync set");
                    assert!(
                        p.isr.iter().all(|b| p.replicas.contains(b)),
                        "{step}: {name}-{i} in-sync member not a replica"
                    );
                    if p.leader == NO_LEADER {
                        assert!(
                            p.isr.iter().all(|&b| !available(&image.brokers, b)),
                            "{step}: {name}-{i} has no leader while an in-sync member is available"
                        );
                    } else {
                        assert!(p.isr.contains(&p.leader), "{step}: leader outside the set");
                        assert!(
                            available(&image.brokers, p.leader),
                            "{step}: {name}-{i} led by a fenced broker"
                        );
                    }
                    if let Some(old) = old {
                        assert!(
                            p.leader_epoch >= old.leader_epoch,
                            "{step}: epoch went back"
                        );
                        assert!(p.partition_epoch >= old.partition_epoch);
                        if p.leader != old.leader {
                            assert!(p.leader_epoch > old.leader_epoch, "{step}: same epoch");
                            if !old.isr.contains(&p.leader) && p.leader != NO_LEADER {
                                assert!(topic.unclean_leader_election, "{step}: unclean");
                                self.unclean_elections += 1;
                            }
                        }
                    }
                    let first = *self
                        .leaders
                        .entry((name.clone(), index, p.leader_epoch))
                        .or_insert(p.leader);
                    assert_eq!(first, p.leader, "{step}: two leaders in one epoch");
                    if !topic.unclean_leader_election && p.leader != NO_LEADER {
                        let held = self
                            .logs
                            .get(&(name.clone(), index, p.leader))
                            .cloned()
                            .unwrap_or_default();
                        let acked = self
                            .acked
                            .get(&(name.clone(), index))
                            .cloned()
                            .unwrap_or_default();
                        let lost: Vec<_> = acked.difference(&held).collect();
                        assert!(
                            lost.is_empty(),
                            "{step}: leader {} of {name}-{i} lacks acked writes {lost:?}",
                            p.leader
                        );
                    }
                }
            }
        }
    }

    /// A random record against the current image: mostly current epochs, some stale ones.
    fn random_record(
        rng: &mut Rng,
        image: &MetadataImage,
        model: &mut Model,
    ) -> Option<MetadataRecord> {
        let broker = BROKERS[rng.below(4) as usize];
        let current = epoch_of(image, broker);
        let epoch = if rng.below(10) == 0 {
            current.saturating_sub(1 + rng.below(3))
        } else {
            current
        };
        let (topic, partition) = if rng.below(4) == 0 {
            (UNCLEAN, 0)
        } else {
            (CLEAN, rng.below(3) as i32)
        };
        match rng.below(100) {
            0..=29 => {
                model.ack(image, topic, partition);
                None
            }
            30..=44 => Some(MetadataRecord::FenceBroker {
                broker,
                broker_epoch: epoch,
            }),
            45..=54 => Some(MetadataRecord::RegisterBroker {
                broker,
                incarnation: rng.next(),
            }),
            55..=69 => Some(MetadataRecord::UnfenceBroker {
                broker,
                broker_epoch: epoch,
            }),
            // An operator's election: unclean only where the topic allows it, as the
            // checker holds clean topics to every acknowledged write.
            70..=74 => Some(MetadataRecord::ElectLeader {
                topic: topic.into(),
                partition,
                leader: broker,
                unclean: topic == UNCLEAN && rng.below(2) == 0,
            }),
            _ => {
                let p = image.partition(topic, partition).expect("exists");
                if p.leader == NO_LEADER {
                    return None;
                }
                let mut isr = vec![p.leader];
                for &b in &p.replicas {
                    if b != p.leader && rng.below(2) == 0 {
                        if !p.isr.contains(&b) {
                            // A follower joins only once it holds the leader's log.
                            model.catch_up(topic, partition, p.leader, b);
                        }
                        isr.push(b);
                    }
                }
                let stale = rng.below(8) == 0;
                Some(MetadataRecord::AlterIsr {
                    topic: topic.into(),
                    partition,
                    leader: p.leader,
                    leader_epoch: p.leader_epoch - i32::from(stale && rng.below(2) == 0),
                    partition_epoch: p.partition_epoch - i32::from(stale),
                    isr,
                })
            }
        }
    }

    #[test]
    fn random_faults_never_lose_an_acked_write_nor_reuse_an_epoch() {
        let histories: u64 = std::env::var("CHRONIK_METADATA_HISTORIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        const RECORDS_PER_HISTORY: usize = 300;
        let (mut applied, mut refused, mut unclean, mut offline) = (0, 0, 0, 0);
        for seed in 1..=histories {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let (mut image, mut log) = started();
            let mut model = Model::default();
            for step in 0..RECORDS_PER_HISTORY {
                let Some(record) = random_record(&mut rng, &image, &mut model) else {
                    continue;
                };
                let before = image.clone();
                match image.apply(&record) {
                    Ok(()) => {
                        applied += 1;
                        log.push(record.clone());
                    }
                    Err(_) => {
                        refused += 1;
                        assert_eq!(
                            image, before,
                            "seed {seed}: a refused record changed the image"
                        );
                    }
                }
                let label = format!("seed {seed} step {step} {record:?}");
                model.check(&image, &before, &label);
                offline += usize::from(image.partition(CLEAN, 0).unwrap().leader == NO_LEADER);
            }
            unclean += model.unclean_elections;
            // The log rebuilds the same image, from the start or from a snapshot on the way.
            let cut = rng.below(log.len() as u64) as usize;
            let mut replayed = MetadataImage::default();
            for r in &log[..cut] {
                replayed.apply(r).expect("an applied record applies again");
            }
            let snapshot = serde_json::to_vec(&replayed).unwrap();
            let mut restored: MetadataImage = serde_json::from_slice(&snapshot).unwrap();
            for r in &log[cut..] {
                restored.apply(r).expect("an applied record applies again");
            }
            assert_eq!(restored, image, "seed {seed}: replay differs");
        }
        // The histories reach the cases that matter, not only the happy path.
        assert!(
            refused > 0 && applied > refused,
            "{applied} applied, {refused} refused"
        );
        assert!(unclean > 0, "no unclean election was exercised");
        assert!(
            offline > 0,
            "no clean partition was ever left without a leader"
        );
    }

    fn fence(image: &mut MetadataImage, broker: i32) {
        let broker_epoch = epoch_of(image, broker);
        image
            .apply(&MetadataRecord::FenceBroker {
                broker,
                broker_epoch,
            })
            .unwrap();
    }

    fn restart(image: &mut MetadataImage, broker: i32) {
        image
            .apply(&MetadataRecord::RegisterBroker {
                broker,
                incarnation: 99,
            })
            .unwrap();
        let broker_epoch = epoch_of(image, broker);
        image
            .apply(&MetadataRecord::UnfenceBroker {
                broker,
                broker_epoch,
            })
            .unwrap();
    }

    #[test]
    fn the_former_leader_restarted_alone_does_not_lead_after_a_double_fault() {
        // Two replicas: the leader dies, the follower leads in a new epoch and acks writes
        // alone, then dies too. The former leader comes back: not in the recorded in-sync
        // set, it must not lead (it lacks those writes); the partition waits for the other.
        let mut image = MetadataImage::default();
        for b in [1, 2] {
            restart(&mut image, b);
        }
        image
            .apply(&MetadataRecord::CreateTopic {
                topic: "t".into(),
                topic_id: 7,
                assignment: vec![vec![1, 2]],
                unclean_leader_election: false,
            })
            .unwrap();
        fence(&mut image, 1);
        let p = image.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (2, 1, vec![2]));
        fence(&mut image, 2);
        assert_eq!(image.partition("t", 0).unwrap().leader, NO_LEADER);
        restart(&mut image, 1);
        let p = image.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.isr.clone()), (NO_LEADER, vec![2]));
        restart(&mut image, 2);
        let p = image.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch), (2, 3));
    }

    #[test]
    fn epoch_zero_is_the_first_replicas_and_a_fenced_one_is_replaced_at_once() {
        let mut image = MetadataImage::default();
        for b in [1, 2, 3] {
            restart(&mut image, b);
        }
        fence(&mut image, 1);
        let create = |topic: &str, assignment: Vec<Vec<i32>>| MetadataRecord::CreateTopic {
            topic: topic.into(),
            topic_id: 7,
            assignment,
            unclean_leader_election: false,
        };
        image.apply(&create("a", vec![vec![2, 1]])).unwrap();
        image.apply(&create("b", vec![vec![1, 3]])).unwrap();
        let a = image.partition("a", 0).unwrap();
        assert_eq!((a.leader, a.leader_epoch, a.isr.clone()), (2, 0, vec![2]));
        let b = image.partition("b", 0).unwrap();
        assert_eq!((b.leader, b.leader_epoch, b.isr.clone()), (3, 1, vec![3]));
    }

    #[test]
    fn an_operators_election_is_clean_unless_it_says_unclean() {
        let mut image = MetadataImage::default();
        for b in [1, 2, 3] {
            restart(&mut image, b);
        }
        image
            .apply(&MetadataRecord::CreateTopic {
                topic: "t".into(),
                topic_id: 7,
                assignment: vec![vec![1, 2, 3]],
                unclean_leader_election: false,
            })
            .unwrap();
        let isr = |image: &mut MetadataImage, isr: Vec<i32>| {
            let p = image.partition("t", 0).unwrap().clone();
            image.apply(&MetadataRecord::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr,
            })
        };
        isr(&mut image, vec![1, 2]).unwrap();
        let elect = |leader, unclean| MetadataRecord::ElectLeader {
            topic: "t".into(),
            partition: 0,
            leader,
            unclean,
        };
        let before = image.clone();
        assert_eq!(
            image.apply(&elect(3, false)),
            Err(Refused::NotEligible(3, "not in the in-sync set"))
        );
        assert_eq!(image, before);
        image.apply(&elect(2, false)).unwrap();
        let p = image.partition("t", 0).unwrap();
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (2, 1, vec![1, 2])
        );
        fence(&mut image, 1);
        assert_eq!(
            image.apply(&elect(1, true)),
            Err(Refused::NotEligible(1, "fenced or not registered"))
        );
        // The operator's override: 3 leads alone in a new epoch.
        image.apply(&elect(3, true)).unwrap();
        let p = image.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (3, 2, vec![3]));
    }

    #[test]
    fn a_proposal_from_a_superseded_leader_is_refused() {
        let (mut image, _) = started();
        let p = image.partition(CLEAN, 0).unwrap().clone();
        fence(&mut image, p.leader);
        let stale = MetadataRecord::AlterIsr {
            topic: CLEAN.into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: p.isr.clone(),
        };
        assert!(matches!(
            image.apply(&stale),
            Err(Refused::NotLeader { .. })
        ));
        let unknown = MetadataRecord::UnfenceBroker {
            broker: 9,
            broker_epoch: 0,
        };
        assert_eq!(image.apply(&unknown), Err(Refused::UnknownBroker(9)));
    }
}
