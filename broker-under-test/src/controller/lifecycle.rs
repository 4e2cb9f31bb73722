//! A broker's side of the controller quorum: register once per process (a new broker
//! epoch), then heartbeat at that epoch, always to the active controller (a member that is
//! not active names the one that is). A broker told its epoch is stale registers again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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

/// Registers `broker` and heartbeats every `interval` until the task is aborted.
pub async fn run(
    voters: BTreeMap<NodeId, SocketAddr>,
    broker: i32,
    incarnation: u64,
    interval: Duration,
) {
    let ids: Vec<NodeId> = voters.keys().copied().collect();
    if ids.is_empty() {
        return;
    }
    let mut target = 0;
    let mut epoch: Option<u64> = None;
    loop {
        let addr = voters[&ids[target % ids.len()]];
        let request = match epoch {
            None => BrokerRequest::Register {
                broker,
                incarnation,
            },
            Some(broker_epoch) => BrokerRequest::Heartbeat {
                broker,
                broker_epoch,
            },
        };
        let pause = match ask(addr, request, CONTROLLER_ANSWER_TIMEOUT).await {
            Ok(BrokerAnswer::Registered { broker_epoch }) => {
                tracing::info!("registered with the controller in broker epoch {broker_epoch}");
                epoch = Some(broker_epoch);
                interval
            }
            Ok(BrokerAnswer::Alive) => interval,
            Ok(BrokerAnswer::StaleEpoch) => {
                epoch = None;
                RETRY_PAUSE
            }
            Ok(BrokerAnswer::NotActive(Some(active))) if voters.contains_key(&active) => {
                target = ids.iter().position(|&id| id == active).unwrap_or(target);
                // Short: only an election in progress makes members name each other.
                REDIRECT_PAUSE
            }
            Ok(other) => {
                tracing::debug!("controller {addr}: {other:?}");
                target += 1;
                RETRY_PAUSE
            }
            Err(e) => {
                tracing::debug!("controller {addr}: {e}");
                target += 1;
                RETRY_PAUSE
            }
        };
        tokio::time::sleep(pause).await;
    }
}
