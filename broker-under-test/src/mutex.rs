//! The broker's one way to take a `std::sync::Mutex`. Its locks guard short, in-memory
//! updates (no I/O, no await under them); a poisoned one means a thread panicked mid-update,
//! an impossible state, so it stops the broker instead of limping on.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex; a poisoned lock means a thread panicked mid-update, an impossible state.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("mutex poisoned: a thread panicked while holding it")
}
