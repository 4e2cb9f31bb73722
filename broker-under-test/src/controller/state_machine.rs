//! The controller's state machine: the metadata image, the last entry applied to it and the
//! quorum's membership. Snapshots are the three serialized, written durably to one file, so a
//! restart starts from the newest snapshot and applies the log after it.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::controller::metadata::MetadataImage;
use crate::controller::types::{Applied, ControllerRaft, Entry, LogId, NodeId, StorageError};
use crate::durable_file::replace_file_durably;
use crate::mutex::lock;

const SNAPSHOT_FILE: &str = "raft-snapshot";

/// What the state machine holds; shared with the controller's readers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub image: MetadataImage,
}

/// A snapshot on disk: its metadata and the state it captured.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: MachineState,
}

#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    state: Arc<Mutex<MachineState>>,
}

fn sm_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn read_snapshot(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl StateMachine {
    /// Starts from the newest snapshot in `dir`, if any.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let state = read_snapshot(dir)?.map(|s| s.state).unwrap_or_default();
        Ok(Self {
            dir: dir.to_owned(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The state as of the last applied entry (for readers; never for the produce path).
    pub fn shared(&self) -> Arc<Mutex<MachineState>> {
        self.state.clone()
    }

    fn save(&self, stored: &StoredSnapshot) -> io::Result<()> {
        let json = serde_json::to_vec(stored)?;
        replace_file_durably(&self.dir.join(SNAPSHOT_FILE), &json)
    }
}

impl RaftSnapshotBuilder<ControllerRaft> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ControllerRaft>, StorageError> {
        let state = lock(&self.state).clone();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: state.last_applied.map_or("empty".to_owned(), |l| {
                format!("{}-{}", l.leader_id, l.index)
            }),
        };
        let data = serde_json::to_vec(&state).map_err(sm_err)?;
        self.save(&StoredSnapshot {
            meta: meta.clone(),
            state,
        })
        .map_err(sm_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<ControllerRaft> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let state = lock(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = lock(&self.state);
        let mut answers = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let refused = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(record) => state.image.apply(&record).err(),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            answers.push(Applied {
                refused: refused.map(|r| r.to_string()),
            });
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut state: MachineState = serde_json::from_slice(snapshot.get_ref()).map_err(sm_err)?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.save(&StoredSnapshot {
            meta: meta.clone(),
            state: state.clone(),
        })
        .map_err(sm_err)?;
        *lock(&self.state) = state;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ControllerRaft>>, StorageError> {
        let Some(stored) = read_snapshot(&self.dir).map_err(sm_err)? else {
            return Ok(None);
        };
        let data = serde_json::to_vec(&stored.state).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
