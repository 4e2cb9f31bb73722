//! The controller: the one place where leaders, leader epochs and in-sync sets change, as
//! records of a replicated metadata log (Kafka's KRaft, KIP-500/KIP-631). `metadata` holds
//! the records and the image they build; a quorum of controllers replicates the log with
//! openraft (docs/ARCHITECTURE.md, "Controller"): `log_store` and `state_machine` keep it on
//! disk, `network` carries its RPCs, `Controller` runs one member of the quorum and `quorum`
//! is what its parts share. The active member answers the brokers' `messages` and fences a
//! broker whose heartbeats stop (`liveness`). Every broker reaches the active member through
//! `client`, registers and heartbeats (`lifecycle`), and follows the image (`publisher`).

pub mod client;
pub mod lifecycle;
pub mod liveness;
pub mod log_store;
pub mod messages;
pub mod metadata;
pub mod network;
pub mod publisher;
pub mod quorum;
pub mod state_machine;
pub mod types;

pub use quorum::ControllerError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::controller::log_store::LogStore;
use crate::controller::metadata::{MetadataImage, MetadataRecord};
use crate::controller::quorum::Core;
use crate::controller::state_machine::StateMachine;
use crate::controller::types::NodeId;

/// Heartbeats from the active controller; a follower that hears none for an election timeout
/// (a random time in the range) starts an election. Sized for loopback and LAN round trips.
const HEARTBEAT_INTERVAL_MS: u64 = 100;
const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
const ELECTION_TIMEOUT_MAX_MS: u64 = 1_000;

/// One member of the controller quorum.
pub struct ControllerConfig {
    pub id: NodeId,
    /// Where this member serves the quorum's RPCs (its own entry in `voters`).
    pub listen: SocketAddr,
    /// Every voter of the quorum (Kafka's `controller.quorum.voters`), the same on each.
    pub voters: BTreeMap<NodeId, SocketAddr>,
    /// Its log, vote and snapshot.
    pub dir: PathBuf,
    /// A broker whose heartbeats stop this long is fenced.
    pub session_timeout: Duration,
}

pub struct Controller {
    core: Arc<Core>,
    server: JoinHandle<()>,
    fencer: JoinHandle<()>,
}

impl Controller {
    /// Opens the member's storage, serves the quorum's RPCs and joins the quorum. Every fresh
    /// voter initializes the quorum with the same voter set: openraft takes the first and
    /// refuses the others harmlessly.
    pub async fn start(config: ControllerConfig) -> Result<Self, ControllerError> {
        let log = LogStore::open(&config.dir)?;
        let machine = StateMachine::open(&config.dir)?;
        let state = machine.shared();
        let raft_config = openraft::Config {
            cluster_name: "chronik-controller".into(),
            heartbeat_interval: HEARTBEAT_INTERVAL_MS,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ControllerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network::Network {
                voters: config.voters.clone(),
            },
            log,
            machine,
        )
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
        let core = Arc::new(Core::new(
            config.id,
            raft.clone(),
            state,
            config.session_timeout,
        ));
        let server = tokio::spawn(network::serve(listener, core.clone()));
        let voters: BTreeMap<NodeId, BasicNode> = config
            .voters
            .iter()
            .map(|(&id, addr)| (id, BasicNode::new(addr.to_string())))
            .collect();
        // A member with a log (a restart, or one that heard from the others first) is
        // already part of the quorum; initializing it again is refused (and logged loudly).
        let initialized = raft.is_initialized().await.unwrap_or(true);
        let initialize = async {
            if initialized {
                Ok(())
            } else {
                raft.initialize(voters).await
            }
        };
        match initialize.await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => {
                server.abort();
                let _ = raft.shutdown().await;
                return Err(ControllerError::Raft(e.to_string()));
            }
        }
        let fencer = tokio::spawn(quorum::fence_expired_brokers(core.clone()));
        Ok(Self {
            core,
            server,
            fencer,
        })
    }

    /// Appends a record through this member (see `Core::propose`).
    pub async fn propose(&self, record: MetadataRecord) -> Result<(), ControllerError> {
        self.core.propose(record).await
    }

    /// The image as of the last entry applied here.
    pub fn image(&self) -> MetadataImage {
        self.core.image()
    }

    /// The active controller this member knows of.
    pub fn active(&self) -> Option<NodeId> {
        self.core.active()
    }

    /// Stops this member: its Raft core and every connection it serves.
    pub async fn shutdown(self) {
        self.server.abort();
        self.fencer.abort();
        let _ = self.core.raft().shutdown().await;
    }
}
