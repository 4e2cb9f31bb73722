//! One member of the controller quorum as its RPC server, its fencer and `Controller` share
//! it: the Raft handle, the applied state, and the brokers' sessions. Registrations and
//! heartbeats are answered only by the active member; the fencer, on the active member only,
//! fences a broker silent past its session.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};

use crate::controller::liveness::Liveness;
use crate::controller::messages::{BrokerAnswer, BrokerRequest};
use crate::controller::metadata::{MetadataImage, MetadataRecord};
use crate::controller::state_machine::MachineState;
use crate::controller::types::{ControllerRaft, NodeId};
use crate::mutex::lock;

/// How often the active controller looks for expired sessions.
const FENCER_PERIOD: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller storage: {0}")]
    Io(#[from] io::Error),
    #[error("controller cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("controller quorum: {0}")]
    Raft(String),
    #[error("not the active controller (the active one: {0:?})")]
    NotActive(Option<NodeId>),
    #[error("the metadata refused the record: {0}")]
    Refused(String),
}

/// What the RPC server, the fencer and the `Controller` handle share.
pub struct Core {
    id: NodeId,
    raft: Raft<ControllerRaft>,
    state: Arc<Mutex<MachineState>>,
    liveness: Liveness,
}

impl Core {
    pub fn new(
        id: NodeId,
        raft: Raft<ControllerRaft>,
        state: Arc<Mutex<MachineState>>,
        session_timeout: Duration,
    ) -> Self {
        Self {
            id,
            raft,
            state,
            liveness: Liveness::new(session_timeout),
        }
    }

    pub fn raft(&self) -> &Raft<ControllerRaft> {
        &self.raft
    }

    /// Appends a record through this member, which must be the active controller; returns
    /// once a quorum holds it durably and it has been applied here.
    pub async fn propose(&self, record: MetadataRecord) -> Result<(), ControllerError> {
        match self.raft.client_write(record).await {
            Ok(written) => match written.data.refused {
                None => Ok(()),
                Some(why) => Err(ControllerError::Refused(why)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                Err(ControllerError::NotActive(to.leader_id))
            }
            Err(e) => Err(ControllerError::Raft(e.to_string())),
        }
    }

    pub fn image(&self) -> MetadataImage {
        lock(&self.state).image.clone()
    }

    pub fn active(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The term in which this member is the active controller, if it is.
    fn active_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id))
            .then_some(m.current_term)
    }
}

impl Core {
    /// Answers a broker's request: registrations and heartbeats only on the active member.
    pub async fn answer(&self, request: BrokerRequest) -> BrokerAnswer {
        if let BrokerRequest::Describe = request {
            return BrokerAnswer::Image {
                active: self.active(),
                image: self.image(),
            };
        }
        let Some(term) = self.active_term() else {
            return BrokerAnswer::NotActive(self.active());
        };
        let outcome = match request {
            BrokerRequest::Register {
                broker,
                incarnation,
            } => self.register(term, broker, incarnation).await,
            BrokerRequest::Heartbeat {
                broker,
                broker_epoch,
            } => self.heartbeat(term, broker, broker_epoch).await,
            BrokerRequest::Metadata { known } => Ok(self.metadata(known)),
            BrokerRequest::Propose(record) => self.propose_for_broker(record).await,
            BrokerRequest::Describe => unreachable!("answered above"),
        };
        outcome.unwrap_or_else(|e| match e {
            ControllerError::NotActive(active) => BrokerAnswer::NotActive(active),
            other => BrokerAnswer::Failed(other.to_string()),
        })
    }

    fn metadata(&self, known: Option<u64>) -> BrokerAnswer {
        let state = lock(&self.state);
        let applied = state.last_applied.map_or(0, |l| l.index);
        if known == Some(applied) {
            return BrokerAnswer::Unchanged;
        }
        BrokerAnswer::Metadata {
            applied,
            image: state.image.clone(),
        }
    }

    async fn propose_for_broker(
        &self,
        record: MetadataRecord,
    ) -> Result<BrokerAnswer, ControllerError> {
        let from_a_broker = matches!(
            record,
            MetadataRecord::CreateTopic { .. }
                | MetadataRecord::AlterIsr { .. }
                | MetadataRecord::ElectLeader { .. }
        );
        if !from_a_broker {
            return Ok(BrokerAnswer::Refused(
                "registrations and fencing are the controller's own records".into(),
            ));
        }
        match self.propose(record).await {
            Ok(()) => Ok(BrokerAnswer::Applied),
            Err(ControllerError::Refused(why)) => Ok(BrokerAnswer::Refused(why)),
            Err(e) => Err(e),
        }
    }

    async fn register(
        &self,
        term: u64,
        broker: i32,
        incarnation: u64,
    ) -> Result<BrokerAnswer, ControllerError> {
        self.propose(MetadataRecord::RegisterBroker {
            broker,
            incarnation,
        })
        .await?;
        self.liveness.heard(term, broker);
        let registration = self.image().broker(broker).cloned();
        Ok(match registration {
            Some(r) if r.incarnation == incarnation => BrokerAnswer::Registered {
                broker_epoch: r.broker_epoch,
            },
            // Another incarnation registered right after: this one must try again.
            _ => BrokerAnswer::StaleEpoch,
        })
    }

    /// A heartbeat at the broker's current epoch keeps its session; a fenced broker that
    /// heartbeats again is unfenced (it has nothing to catch up on in the metadata yet).
    async fn heartbeat(
        &self,
        term: u64,
        broker: i32,
        broker_epoch: u64,
    ) -> Result<BrokerAnswer, ControllerError> {
        let Some(registration) = self.image().broker(broker).cloned() else {
            return Ok(BrokerAnswer::StaleEpoch);
        };
        if registration.broker_epoch != broker_epoch {
            return Ok(BrokerAnswer::StaleEpoch);
        }
        self.liveness.heard(term, broker);
        if registration.fenced {
            self.propose(MetadataRecord::UnfenceBroker {
                broker,
                broker_epoch,
            })
            .await?;
        }
        Ok(BrokerAnswer::Alive)
    }

    /// One pass of the fencer: every unfenced broker silent past its session is fenced.
    async fn fence_expired(&self) {
        let Some(term) = self.active_term() else {
            return;
        };
        if self.liveness.term() != Some(term) {
            tracing::info!("this broker's controller is active in term {term}");
        }
        let image = self.image();
        for (broker, registration) in image.brokers() {
            if registration.fenced || !self.liveness.expired(term, broker) {
                continue;
            }
            tracing::info!("fencing broker {broker}: no heartbeat within its session");
            let fence = MetadataRecord::FenceBroker {
                broker,
                broker_epoch: registration.broker_epoch,
            };
            if let Err(e) = self.propose(fence).await {
                tracing::debug!("fencing broker {broker}: {e}");
            }
        }
    }
}

/// Runs the fencer until the task is aborted.
pub async fn fence_expired_brokers(core: Arc<Core>) {
    let mut ticker = tokio::time::interval(FENCER_PERIOD);
    loop {
        ticker.tick().await;
        core.fence_expired().await;
    }
}
