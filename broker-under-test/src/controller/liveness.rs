//! Which brokers are alive, as the active controller sees it: when each last heartbeated
//! (kept in memory, not in the log: a newly active controller gives every broker a full
//! session from the moment it took over, as Kafka's does), and the fencer that proposes
//! `FenceBroker` for a broker silent for longer than the session timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::controller::metadata::MetadataRecord;
use crate::controller::network::{BrokerAnswer, BrokerRequest};
use crate::controller::{ControllerError, Core};
use crate::mutex::lock;

/// How often the active controller looks for expired sessions.
const FENCER_PERIOD: Duration = Duration::from_millis(250);

pub struct Liveness {
    session_timeout: Duration,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The term these heartbeats were received in: they reset when this member becomes
    /// active in a new term.
    term: Option<u64>,
    since: Option<Instant>,
    last: HashMap<i32, Instant>,
}

impl Liveness {
    pub fn new(session_timeout: Duration) -> Self {
        Self {
            session_timeout,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Notes a heartbeat (or registration) of `broker` in `term`.
    fn heard(&self, term: u64, broker: i32) {
        let mut seen = lock(&self.seen);
        seen.reset_for(term);
        seen.last.insert(broker, Instant::now());
    }

    /// Whether `broker` has been silent past the session timeout in `term`.
    fn expired(&self, term: u64, broker: i32) -> bool {
        let mut seen = lock(&self.seen);
        seen.reset_for(term);
        let last = seen
            .last
            .get(&broker)
            .copied()
            .or(seen.since)
            .unwrap_or_else(Instant::now);
        last.elapsed() > self.session_timeout
    }
}

impl Seen {
    fn reset_for(&mut self, term: u64) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.since = Some(Instant::now());
            self.last.clear();
        }
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
            BrokerRequest::Describe => unreachable!("answered above"),
        };
        outcome.unwrap_or_else(|e| match e {
            ControllerError::NotActive(active) => BrokerAnswer::NotActive(active),
            other => BrokerAnswer::Failed(other.to_string()),
        })
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
        if lock(&self.liveness.seen).term != Some(term) {
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
