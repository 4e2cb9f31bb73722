//! Where a produce request's time goes inside the broker, split as Apache Kafka's request
//! metrics split it: local (decode, offsets, WAL append), remote (the wait for durability, and
//! for the followers with acks=all), response queue (a finished response waiting for the
//! connection's earlier ones), send (the socket write) and total (frame read to response
//! written). A client's latency minus the broker's total is time spent outside the broker: in
//! the client, in the network stack, or waiting for a CPU the broker did not get.
//!
//! Measured only when the `timeline` log target is on at debug level (no clock is read
//! otherwise), and written there once a second. A connection records into its own histograms
//! and adds them to the broker's window at most once a second, so no lock is taken per request:
//! a busy connection's times reach the window within a second, an idle one's when it sends its
//! next request or closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::mutex::lock;

/// How often a connection adds its histograms to the broker's window, and how often the window
/// is written to the log.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest time a histogram tells apart; a longer one counts as this.
const TIME_RECORDED_MAX_US: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// When a timed request passed each point, in order.
#[derive(Clone, Copy)]
pub struct Marks {
    /// Its frame was read in full.
    pub read: Instant,
    /// Its ordered part (for Produce: the WAL append) was done.
    pub started: Instant,
    /// Its response was ready (for Produce: durable).
    pub finished: Instant,
}

#[derive(Clone)]
struct Stages {
    local: Histogram<u64>,
    remote: Histogram<u64>,
    response_queue: Histogram<u64>,
    send: Histogram<u64>,
    total: Histogram<u64>,
}

impl Stages {
    fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, TIME_RECORDED_MAX_US, SIGNIFICANT_DIGITS)
            .expect("valid histogram bounds");
        Self {
            local: histogram.clone(),
            remote: histogram.clone(),
            response_queue: histogram.clone(),
            send: histogram.clone(),
            total: histogram,
        }
    }

    fn all_mut(&mut self) -> [&mut Histogram<u64>; 5] {
        [
            &mut self.local,
            &mut self.remote,
            &mut self.response_queue,
            &mut self.send,
            &mut self.total,
        ]
    }

    fn add(&mut self, other: &Stages) {
        let others = [
            &other.local,
            &other.remote,
            &other.response_queue,
            &other.send,
            &other.total,
        ];
        for (mine, theirs) in self.all_mut().into_iter().zip(others) {
            mine.add(theirs).expect("histograms with the same bounds");
        }
    }

    fn reset(&mut self) {
        self.all_mut().into_iter().for_each(|h| h.reset());
    }
}

fn record(histogram: &mut Histogram<u64>, from: Instant, to: Instant) {
    let us = u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.max(1));
}

/// The broker's window: every connection's produce timings since it was last written.
pub struct RequestTimes {
    window: Mutex<Stages>,
}

impl RequestTimes {
    /// `Some` when the `timeline` target is on at debug level: only then is anything measured.
    pub fn when_logged() -> Option<Arc<Self>> {
        tracing::enabled!(target: "timeline", tracing::Level::DEBUG).then(|| {
            Arc::new(Self {
                window: Mutex::new(Stages::new()),
            })
        })
    }

    /// Writes the window to the `timeline` target once a second, until aborted.
    pub async fn report(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(REPORT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut taken = Stages::new();
        loop {
            ticker.tick().await;
            taken.reset();
            std::mem::swap(&mut taken, &mut lock(&self.window));
            if taken.total.is_empty() {
                continue;
            }
            let q = |h: &Histogram<u64>, quantile| h.value_at_quantile(quantile);
            let s = &taken;
            tracing::debug!(target: "timeline", event = "produce_times", requests = s.total.len(),
                total_p50_us = q(&s.total, 0.5), total_p99_us = q(&s.total, 0.99),
                total_p999_us = q(&s.total, 0.999), total_max_us = s.total.max(),
                local_p99_us = q(&s.local, 0.99), local_max_us = s.local.max(),
                remote_p99_us = q(&s.remote, 0.99), remote_max_us = s.remote.max(),
                queue_p99_us = q(&s.response_queue, 0.99), queue_max_us = s.response_queue.max(),
                send_p99_us = q(&s.send, 0.99), send_max_us = s.send.max());
        }
    }
}

/// One connection's timings since they were last added to the broker's window.
pub struct ConnectionTimes {
    broker: Arc<RequestTimes>,
    stages: Stages,
    added_at: Instant,
}

impl ConnectionTimes {
    pub fn new(broker: Arc<RequestTimes>) -> Self {
        Self {
            broker,
            stages: Stages::new(),
            added_at: Instant::now(),
        }
    }

    /// Records one request whose response the connection's writer took at `dequeued` and
    /// finished writing at `sent`.
    pub fn record(&mut self, marks: Marks, dequeued: Instant, sent: Instant) {
        let s = &mut self.stages;
        record(&mut s.local, marks.read, marks.started);
        record(&mut s.remote, marks.started, marks.finished);
        record(&mut s.response_queue, marks.finished, dequeued);
        record(&mut s.send, dequeued, sent);
        record(&mut s.total, marks.read, sent);
        if sent.saturating_duration_since(self.added_at) >= REPORT_INTERVAL {
            self.add_to_broker();
            self.added_at = sent;
        }
    }

    fn add_to_broker(&mut self) {
        lock(&self.broker.window).add(&self.stages);
        self.stages.reset();
    }
}

impl Drop for ConnectionTimes {
    fn drop(&mut self) {
        self.add_to_broker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Arc<RequestTimes> {
        Arc::new(RequestTimes {
            window: Mutex::new(Stages::new()),
        })
    }

    #[test]
    fn a_request_splits_into_stages_that_sum_to_its_total() {
        let broker = window();
        let read = Instant::now();
        let ms = |n| read + Duration::from_millis(n);
        let marks = Marks {
            read,
            started: ms(1),
            finished: ms(4),
        };
        {
            let mut connection = ConnectionTimes::new(broker.clone());
            connection.record(marks, ms(6), ms(10));
        }
        let s = lock(&broker.window);
        let near = |h: &Histogram<u64>, us: u64| h.equivalent(h.max(), us) && h.len() == 1;
        assert!(near(&s.local, 1_000));
        assert!(near(&s.remote, 3_000));
        assert!(near(&s.response_queue, 2_000));
        assert!(near(&s.send, 4_000));
        assert!(near(&s.total, 10_000));
    }

    #[test]
    fn a_connection_adds_to_the_window_once_an_interval_and_when_it_closes() {
        let broker = window();
        let mut connection = ConnectionTimes::new(broker.clone());
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let marks = |ms| Marks {
            read: at(ms),
            started: at(ms),
            finished: at(ms),
        };
        connection.record(marks(0), at(0), at(1));
        assert_eq!(
            lock(&broker.window).total.len(),
            0,
            "kept until an interval passed"
        );
        connection.record(marks(1_000), at(1_000), at(1_001));
        assert_eq!(lock(&broker.window).total.len(), 2);
        connection.record(marks(1_002), at(1_002), at(1_003));
        drop(connection);
        assert_eq!(
            lock(&broker.window).total.len(),
            3,
            "the rest added on close"
        );
    }
}
