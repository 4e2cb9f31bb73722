//! A broker's way to the active controller: requests go to the member it last found active;
//! a member that is not active names the one that is (or the next member is tried), so an
//! election costs a redirect, not a failed request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::controller::messages::{BrokerAnswer, BrokerRequest};
use crate::controller::network::ask;
use crate::controller::types::NodeId;

/// How long one request to a controller may take.
const CONTROLLER_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before asking another member after one failed or did not know the active one.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause before asking the member another one named as active.
const REDIRECT_PAUSE: Duration = Duration::from_millis(20);

pub struct ControllerClient {
    voters: BTreeMap<NodeId, SocketAddr>,
    ids: Vec<NodeId>,
    /// Index into `ids` of the member to ask first.
    target: AtomicUsize,
}

impl ControllerClient {
    pub fn new(voters: BTreeMap<NodeId, SocketAddr>) -> Self {
        Self {
            ids: voters.keys().copied().collect(),
            voters,
            target: AtomicUsize::new(0),
        }
    }

    pub fn voters(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.voters
    }

    /// Asks the active controller, following redirects, at most twice round the voters.
    /// The error says what the last member answered.
    pub async fn ask_active(&self, request: &BrokerRequest) -> Result<BrokerAnswer, String> {
        if self.ids.is_empty() {
            return Err("no controller voters".into());
        }
        let mut last = String::new();
        for _ in 0..2 * self.ids.len() + 1 {
            let index = self.target.load(Ordering::Relaxed) % self.ids.len();
            let addr = self.voters[&self.ids[index]];
            let answer = ask(addr, request.clone(), CONTROLLER_ANSWER_TIMEOUT).await;
            let pause = match answer {
                Ok(BrokerAnswer::NotActive(Some(active))) if self.voters.contains_key(&active) => {
                    let at = self
                        .ids
                        .iter()
                        .position(|&id| id == active)
                        .unwrap_or(index);
                    self.target.store(at, Ordering::Relaxed);
                    last = format!("controller {addr} named {active} as active");
                    // Short: only an election in progress makes members name each other.
                    REDIRECT_PAUSE
                }
                Ok(BrokerAnswer::NotActive(None)) => {
                    last = format!("controller {addr} knows no active member");
                    self.target.store(index + 1, Ordering::Relaxed);
                    RETRY_PAUSE
                }
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    last = format!("controller {addr}: {e}");
                    self.target.store(index + 1, Ordering::Relaxed);
                    RETRY_PAUSE
                }
            };
            tokio::time::sleep(pause).await;
        }
        Err(last)
    }
}
