//! The controller's Raft types: the metadata records are the log's data; applying one answers
//! whether the image took it.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::controller::metadata::MetadataRecord;

/// What applying a committed record did: `refused` says why the image did not take it (a
/// record made against an epoch that moved on between proposal and commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub refused: Option<String>,
}

openraft::declare_raft_types!(
    /// The type configuration of the controller quorum's Raft group.
    pub ControllerRaft:
        D = MetadataRecord,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<ControllerRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<ControllerRaft>;
pub type StorageError = openraft::StorageError<NodeId>;
