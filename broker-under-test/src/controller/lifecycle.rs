//! A broker's side of the controller quorum: register once per process (a new broker
//! epoch), then heartbeat at that epoch, always to the active controller. A broker told its
//! epoch is stale registers again.

use std::sync::Arc;
use std::time::Duration;

use crate::controller::messages::{BrokerAnswer, BrokerRequest};
use crate::controller::publisher::BrokerMetadata;

/// Pause before registering again, or after the quorum could not be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Registers `broker` and heartbeats every `interval` until the task is aborted; each
/// answered one confirms the session to `metadata`.
pub async fn run(metadata: Arc<BrokerMetadata>, broker: i32, incarnation: u64, interval: Duration) {
    let mut epoch: Option<u64> = None;
    loop {
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
        let pause = match metadata.client().ask_active(&request).await {
            Ok(BrokerAnswer::Registered { broker_epoch }) => {
                tracing::info!("registered with the controller in broker epoch {broker_epoch}");
                epoch = Some(broker_epoch);
                metadata.confirmed(broker_epoch);
                interval
            }
            Ok(BrokerAnswer::Alive) => {
                if let Some(broker_epoch) = epoch {
                    metadata.confirmed(broker_epoch);
                }
                interval
            }
            Ok(BrokerAnswer::StaleEpoch) => {
                epoch = None;
                RETRY_PAUSE
            }
            Ok(other) => {
                tracing::debug!("controller answered {other:?}");
                RETRY_PAUSE
            }
            Err(e) => {
                tracing::debug!("{e}");
                RETRY_PAUSE
            }
        };
        tokio::time::sleep(pause).await;
    }
}
