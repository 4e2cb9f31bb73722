//! Which brokers are alive, as the active controller sees it: when each last heartbeated.
//! Kept in memory, not in the log: a newly active controller gives every broker a full
//! session from the moment it took over, as Kafka's does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mutex::lock;

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

    /// The term the sessions were last kept in.
    pub fn term(&self) -> Option<u64> {
        lock(&self.seen).term
    }

    /// Notes a heartbeat (or registration) of `broker` in `term`.
    pub fn heard(&self, term: u64, broker: i32) {
        let mut seen = lock(&self.seen);
        seen.reset_for(term);
        seen.last.insert(broker, Instant::now());
    }

    /// Whether `broker` has been silent past the session timeout in `term`.
    pub fn expired(&self, term: u64, broker: i32) -> bool {
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
