//! Fail-stop: the one way any layer stops the broker after a storage failure. A failed write or
//! fsync is never retried (after a failed fsync the kernel may have dropped the dirty pages, so
//! a retry that succeeds proves nothing); the broker answers no more acks and exits with
//! `EXIT_STORAGE_FAILED`, and recovery on the next start works from what is durable.

use std::sync::Arc;

use tokio::sync::watch;

/// Cloned into every layer that writes storage; `stop` records the first reason only.
#[derive(Clone)]
pub struct FailStop(Arc<watch::Sender<Option<String>>>);

impl FailStop {
    /// A fail-stop switch and the receiver the broker's main task watches.
    pub fn new() -> (Self, watch::Receiver<Option<String>>) {
        let (tx, rx) = watch::channel(None);
        (Self(Arc::new(tx)), rx)
    }

    pub fn stop(&self, reason: String) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            tracing::error!("{reason}; stopping the broker");
            *current = Some(reason);
            true
        });
    }

    pub fn stopped(&self) -> bool {
        self.0.borrow().is_some()
    }
}
