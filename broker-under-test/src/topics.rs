//! The topic registry. Readers (every produce and fetch) load an immutable snapshot through
//! `ArcSwap`, so looking a topic up takes no lock; creating or deleting a topic builds a new
//! snapshot under a mutex that only those admin operations take.
//!
//! On disk: `<data dir>/topics/<name>/topic.id` (the incarnation id, hex), `replication.factor`
//! (absent: 1) and one directory per partition, `<data dir>/topics/<name>/<index>/`, holding its
//! segment files. In a cluster every broker holds every topic (empty partitions where it is no
//! replica), with the same id, so any broker answers Metadata for all of them.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use arc_swap::ArcSwap;
use kafka_protocol::error::ResponseError;
use tokio::sync::Notify;

use crate::cluster::Cluster;
use crate::replica_state::{AlterIsrQueue, Quorum, Replication};

use crate::leader_epochs::EpochHistory;
use crate::log::{LogError, PartitionLog};
use crate::mutex::lock;
use crate::partition::Partition;
use crate::wal::{ReplayLog, ReplayLogs};

/// Kafka's limit on topic name length.
const TOPIC_NAME_CHARS_MAX: usize = 249;
/// Partitions one CreateTopics request may ask for per topic.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 1024;
const TOPIC_ID_FILE: &str = "topic.id";
const REPLICATION_FACTOR_FILE: &str = "replication.factor";

/// What a partition needs to know about the cluster when it is opened or created.
pub struct Placement {
    pub cluster: Cluster,
    pub replica_lag_time_max: Duration,
    /// Woken when a leader partition's durable end moves (`replication::keeper`).
    pub keeper: Arc<Notify>,
    /// With a controller quorum: where leaders ask for in-sync changes. Its partitions have
    /// no leader until the quorum's image names one.
    pub alter_isr: Option<Arc<AlterIsrQueue>>,
}

impl Placement {
    /// The replication state of `topic`-`index`, whose files are in `dir`; `None` when this
    /// broker is its only replica.
    fn replication(
        &self,
        topic: &str,
        index: i32,
        factor: i16,
        dir: &Path,
    ) -> io::Result<Option<Arc<Replication>>> {
        let replicas = self
            .cluster
            .replicas(topic, index, usize::try_from(factor).unwrap_or(1));
        let local = self.cluster.local_id();
        if replicas == [local] {
            return Ok(None);
        }
        Replication::new(
            replicas,
            local,
            self.replica_lag_time_max,
            self.keeper.clone(),
            dir.join(crate::replica_state::LEADER_EPOCH_FILE),
            self.alter_isr.as_ref().map(|requests| Quorum {
                requests: requests.clone(),
                topic: Arc::from(topic),
                partition: index,
            }),
        )
        .map(|r| Some(Arc::new(r)))
    }
}

pub struct Topic {
    pub name: Arc<str>,
    pub id: u128,
    pub replication_factor: i16,
    pub partitions: Vec<Arc<Partition>>,
}

type Snapshot = HashMap<Arc<str>, Arc<Topic>>;

pub struct TopicRegistry {
    topics: ArcSwap<Snapshot>,
    admin: Mutex<()>,
    root: PathBuf,
    segment_bytes_max: u64,
    /// Partitions the whole broker may hold (`--max-partitions`).
    partitions_max: usize,
    placement: Placement,
}

/// Kafka's legal topic names: `[a-zA-Z0-9._-]{1,249}`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_CHARS_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A fresh topic id: clock and counter, so brokers creating at the same time differ.
pub fn new_topic_id() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos << 20) ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)) | 1
}

impl TopicRegistry {
    /// Opens every topic under `<data_dir>/topics`. Creating topics stops at `partitions_max`
    /// partitions in all (topics already on disk are opened whatever their number).
    pub fn open(
        data_dir: &Path,
        segment_bytes_max: u64,
        partitions_max: usize,
        placement: Placement,
    ) -> Result<Self, LogError> {
        let root = data_dir.join("topics");
        let io_err = |source| LogError::Io {
            path: root.clone(),
            source,
        };
        fs::create_dir_all(&root).map_err(io_err)?;
        let mut snapshot = Snapshot::new();
        for entry in fs::read_dir(&root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let id_text = match fs::read_to_string(dir.join(TOPIC_ID_FILE)) {
                Ok(text) => text,
                // A topic whose creation did not finish: no acked data can be in it.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!("removing half-created topic directory {}", dir.display());
                    fs::remove_dir_all(&dir).map_err(io_err)?;
                    continue;
                }
                Err(err) => return Err(io_err(err)),
            };
            let id = u128::from_str_radix(id_text.trim(), 16).map_err(|_| LogError::Corrupt {
                path: dir.join(TOPIC_ID_FILE),
                position: 0,
                reason: "not a hex topic id".into(),
            })?;
            let replication_factor = match fs::read_to_string(dir.join(REPLICATION_FACTOR_FILE)) {
                Ok(text) => text.trim().parse().map_err(|_| LogError::Corrupt {
                    path: dir.join(REPLICATION_FACTOR_FILE),
                    position: 0,
                    reason: "not a replication factor".into(),
                })?,
                Err(err) if err.kind() == io::ErrorKind::NotFound => 1,
                Err(err) => return Err(io_err(err)),
            };
            let mut indexes: Vec<i32> = fs::read_dir(&dir)
                .map_err(io_err)?
                .filter_map(|e| e.ok()?.file_name().to_string_lossy().parse().ok())
                .collect();
            indexes.sort_unstable();
            let name: Arc<str> = name.into();
            let mut partitions = Vec::with_capacity(indexes.len());
            for index in indexes {
                partitions.push(Arc::new(open_partition(
                    &dir,
                    name.clone(),
                    id,
                    index,
                    segment_bytes_max,
                    (&placement, replication_factor),
                )?));
            }
            snapshot.insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    id,
                    replication_factor,
                    partitions,
                }),
            );
        }
        Ok(Self {
            topics: ArcSwap::from_pointee(snapshot),
            admin: Mutex::new(()),
            root,
            segment_bytes_max,
            partitions_max,
            placement,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.placement.cluster
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.load().get(name).cloned()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.topics.load_full()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let topic = self.topics.load().get(topic).cloned()?;
        usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .cloned()
    }

    /// Creates a topic under `topic_id` (a new one, the quorum's, or the one another broker of
    /// the cluster gave it); `Ok(None)` if it already exists.
    pub fn create_with_id(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        id: u128,
    ) -> Result<Option<Arc<Topic>>, ResponseError> {
        if !valid_topic_name(name) {
            return Err(ResponseError::InvalidTopicException);
        }
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
            return Err(ResponseError::InvalidPartitions);
        }
        if !(1..=self.placement.cluster.size())
            .contains(&usize::try_from(replication_factor).unwrap_or(0))
        {
            return Err(ResponseError::InvalidReplicationFactor);
        }
        let _admin = lock(&self.admin);
        let existing = self.topics.load();
        if existing.contains_key(name) {
            return Ok(None);
        }
        let held: usize = existing.values().map(|t| t.partitions.len()).sum();
        if held + partitions as usize > self.partitions_max {
            tracing::debug!("refusing topic {name}: {held} partitions held already");
            return Err(ResponseError::PolicyViolation);
        }
        let dir = self.root.join(name);
        let created = self.write_topic(&dir, name, partitions, replication_factor, id);
        let topic = match created {
            Ok(topic) => Arc::new(topic),
            Err(err) => {
                tracing::error!("creating topic {name} failed: {err}");
                let _ = fs::remove_dir_all(&dir);
                return Err(ResponseError::KafkaStorageError);
            }
        };
        let mut next = Snapshot::clone(&self.topics.load());
        next.insert(topic.name.clone(), topic.clone());
        self.topics.store(Arc::new(next));
        tracing::info!("created topic {name} with {partitions} partition(s)");
        Ok(Some(topic))
    }

    /// Creates a topic's directory and partitions, then its files, the id file last (its
    /// presence marks a complete topic), each durably.
    fn write_topic(
        &self,
        dir: &Path,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        id: u128,
    ) -> Result<Topic, LogError> {
        let io_err = |source| LogError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let name: Arc<str> = name.into();
        let parts = (0..partitions)
            .map(|i| {
                open_partition(
                    dir,
                    name.clone(),
                    id,
                    i,
                    self.segment_bytes_max,
                    (&self.placement, replication_factor),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if replication_factor != 1 {
            crate::durable_file::replace_file_durably(
                &dir.join(REPLICATION_FACTOR_FILE),
                replication_factor.to_string().as_bytes(),
            )
            .map_err(io_err)?;
        }
        // The id file is written last: its presence marks a complete topic.
        crate::durable_file::replace_file_durably(
            &dir.join(TOPIC_ID_FILE),
            format!("{id:032x}").as_bytes(),
        )
        .map_err(io_err)?;
        crate::durable_file::sync_dir(&self.root).map_err(io_err)?;
        Ok(Topic {
            name,
            id,
            replication_factor,
            partitions: parts,
        })
    }

    /// Deletes a topic and its files; `false` if it does not exist.
    pub fn delete(&self, name: &str) -> Result<bool, ResponseError> {
        let _admin = lock(&self.admin);
        let mut next = Snapshot::clone(&self.topics.load());
        let Some(topic) = next.remove(name) else {
            return Ok(false);
        };
        self.topics.store(Arc::new(next));
        // The id file goes first so a crash mid-delete leaves a half topic that start-up removes.
        let dir = self.root.join(name);
        let removed = fs::remove_file(dir.join(TOPIC_ID_FILE))
            .and_then(|()| fs::remove_dir_all(&dir))
            .and_then(|()| crate::durable_file::sync_dir(&self.root));
        if let Err(err) = removed {
            tracing::error!("deleting topic {name} files failed: {err}");
            return Err(ResponseError::KafkaStorageError);
        }
        tracing::info!(
            "deleted topic {name} ({} partition(s))",
            topic.partitions.len()
        );
        Ok(true)
    }

    /// Every partition of every topic.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics
            .load()
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// The partition with this topic id and index, if the topic still exists.
    pub fn by_id(&self, topic_id: u128, index: i32) -> Option<Arc<Partition>> {
        self.topics
            .load()
            .values()
            .find(|t| t.id == topic_id)
            .and_then(|t| {
                usize::try_from(index)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
            })
            .cloned()
    }
}

fn open_partition(
    topic_dir: &Path,
    topic: Arc<str>,
    topic_id: u128,
    index: i32,
    segment_bytes_max: u64,
    (placement, replication_factor): (&Placement, i16),
) -> Result<Partition, LogError> {
    let dir = topic_dir.join(index.to_string());
    let mut stored = Vec::new();
    let mut epochs = EpochHistory::default();
    let (log, recovery) = PartitionLog::open(&dir, segment_bytes_max, |b| {
        epochs.note(b);
        if crate::batch::header(b).producer_id >= 0 {
            stored.push(bytes::Bytes::copy_from_slice(
                &b[..crate::batch::BATCH_HEADER_BYTES],
            ));
        }
    })?;
    let replication = placement
        .replication(&topic, index, replication_factor, &dir)
        .map_err(|source| LogError::Io {
            path: dir.clone(),
            source,
        })?;
    if recovery.torn_bytes_cut > 0 {
        tracing::warn!(
            "{topic}-{index}: cut {} torn bytes from the segment tail",
            recovery.torn_bytes_cut
        );
    }
    let partition = Partition::new(topic, topic_id, index, log, epochs, replication);
    for header in stored {
        partition.remember_stored(&header);
    }
    Ok(partition)
}

impl ReplayLogs for TopicRegistry {
    fn log(&self, topic_id: u128, partition: i32) -> Option<Arc<dyn ReplayLog>> {
        self.by_id(topic_id, partition)
            .map(|p| p as Arc<dyn ReplayLog>)
    }
}
