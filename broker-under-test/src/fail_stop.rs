//! Fail-stop: the one way any layer stops the broker after a storage failure. A failed write or
//! fsync is never retried (after a failed fsync the kernel may have dropped the dirty pages, so
//! a retry that succeeds proves nothing); the broker answers no more acks and exits with
//! `EXIT_STORAGE_FAILED`, and recovery on the next start works from what is durable.

use std::error::Error;
use std::io;
use std::sync::Arc;

use tokio::sync::watch;

/// Linux's "too many open files" for the process (EMFILE) and for the system (ENFILE).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Whether `err` (or an error it wraps) is running out of file descriptors. That is raised when
/// a file is opened, never by a write or an fsync, so nothing was written or dropped and trying
/// again later is safe: it is no reason to stop the broker.
pub fn out_of_descriptors(err: &io::Error) -> bool {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(EMFILE | ENFILE)) {
                return true;
            }
            // An io::Error made from another error holds it as its inner error.
            if let Some(inner) = io.get_ref() {
                current = Some(inner);
                continue;
            }
        }
        current = e.source();
    }
    false
}

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
