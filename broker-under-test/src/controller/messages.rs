//! What brokers (and operators) ask the controller quorum, and its answers.

use serde::{Deserialize, Serialize};

use crate::controller::metadata::{MetadataImage, MetadataRecord};
use crate::controller::types::NodeId;

/// What a broker (or an operator) asks the controller quorum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BrokerRequest {
    /// A broker process starts: it gets a new broker epoch.
    Register { broker: i32, incarnation: u64 },
    /// The broker, at its current epoch, is alive.
    Heartbeat { broker: i32, broker_epoch: u64 },
    /// The image as this member applied it, and the active controller it knows.
    Describe,
    /// The active controller's image, unless its last applied entry is still `known`.
    Metadata { known: Option<u64> },
    /// A broker's record for the log: a topic it created, an in-sync change it leads, an
    /// operator's election. Registrations and fencing are the controller's own.
    Propose(MetadataRecord),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum BrokerAnswer {
    Registered {
        broker_epoch: u64,
    },
    Alive,
    /// Ask the active controller instead (when known).
    NotActive(Option<NodeId>),
    /// The epoch is not the broker's current one: register again.
    StaleEpoch,
    Image {
        active: Option<NodeId>,
        image: MetadataImage,
    },
    /// The image as of the log entry `applied`.
    Metadata {
        applied: u64,
        image: MetadataImage,
    },
    Unchanged,
    /// The record is committed and applied.
    Applied,
    /// The image refused the record (it changed nothing).
    Refused(String),
    Failed(String),
}
