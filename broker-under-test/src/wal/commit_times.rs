//! The WAL writer's commits, summed up once a second on the `timeline` log target (debug
//! level): how many group commits, appends and bytes, and what their fdatasync took (p50, p99,
//! max). A closed-loop producer's rate is about its messages in flight over its latency, and
//! the durability wait is most of a produce request's time in the broker (`request_times`), so
//! these lines say whether a slower second was the disk's.
//!
//! Kept by the writer thread itself (no lock, no channel), and only when the target is on: no
//! clock is read for it otherwise.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How often the summary is written (at the first commit after the interval: an idle writer
/// writes none).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest fdatasync a histogram tells apart; a longer one counts as this.
const SYNC_RECORDED_MAX_US: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

pub struct CommitTimes {
    window_started: Instant,
    commits: u64,
    appends: u64,
    bytes: u64,
    sync_us: Histogram<u64>,
}

impl CommitTimes {
    /// `Some` only when the `timeline` target is on at debug level.
    pub fn when_logged() -> Option<Self> {
        tracing::enabled!(target: "timeline", tracing::Level::DEBUG).then(|| Self {
            window_started: Instant::now(),
            commits: 0,
            appends: 0,
            bytes: 0,
            sync_us: Histogram::new_with_bounds(1, SYNC_RECORDED_MAX_US, SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds"),
        })
    }

    /// Counts one commit; returns the window's summary, and starts a new window, once the
    /// interval has passed.
    pub fn record(
        &mut self,
        appends: usize,
        bytes: usize,
        sync: Duration,
        now: Instant,
    ) -> Option<CommitSummary> {
        self.commits += 1;
        self.appends += appends as u64;
        self.bytes += bytes as u64;
        let sync_us = u64::try_from(sync.as_micros()).unwrap_or(u64::MAX);
        self.sync_us.saturating_record(sync_us.max(1));
        let window = now.saturating_duration_since(self.window_started);
        if window < REPORT_INTERVAL {
            return None;
        }
        let summary = CommitSummary {
            window_ms: window.as_millis() as u64,
            commits: self.commits,
            appends: self.appends,
            bytes: self.bytes,
            sync_p50_us: self.sync_us.value_at_quantile(0.5),
            sync_p99_us: self.sync_us.value_at_quantile(0.99),
            sync_max_us: self.sync_us.max(),
        };
        self.window_started = now;
        (self.commits, self.appends, self.bytes) = (0, 0, 0);
        self.sync_us.reset();
        Some(summary)
    }
}

#[derive(Debug, PartialEq)]
pub struct CommitSummary {
    pub window_ms: u64,
    pub commits: u64,
    pub appends: u64,
    pub bytes: u64,
    pub sync_p50_us: u64,
    pub sync_p99_us: u64,
    pub sync_max_us: u64,
}

impl CommitSummary {
    pub fn log(&self) {
        tracing::debug!(target: "timeline", event = "wal_times", window_ms = self.window_ms, commits = self.commits, appends = self.appends, bytes = self.bytes, sync_p50_us = self.sync_p50_us, sync_p99_us = self.sync_p99_us, sync_max_us = self.sync_max_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(started: Instant) -> CommitTimes {
        CommitTimes {
            window_started: started,
            commits: 0,
            appends: 0,
            bytes: 0,
            sync_us: Histogram::new_with_bounds(1, SYNC_RECORDED_MAX_US, SIGNIFICANT_DIGITS)
                .unwrap(),
        }
    }

    #[test]
    fn a_window_is_summed_up_once_its_interval_passed_and_then_starts_empty() {
        let t0 = Instant::now();
        let mut times = times(t0);
        let ms = Duration::from_millis;
        for i in 1..=99u64 {
            assert_eq!(times.record(2, 100, ms(1), t0 + ms(i * 10 - 9)), None);
        }
        let summary = times.record(3, 50, ms(40), t0 + ms(1_000)).unwrap();
        assert_eq!(
            (
                summary.window_ms,
                summary.commits,
                summary.appends,
                summary.bytes
            ),
            (1_000, 100, 201, 9_950)
        );
        // 99 of 100 took 1 ms: the p50 and p99 say so, the max is the slow one.
        let within = |us: u64, expected: u64| us.abs_diff(expected) * 100 <= expected;
        assert!(within(summary.sync_p50_us, 1_000), "{summary:?}");
        assert!(within(summary.sync_p99_us, 1_000), "{summary:?}");
        assert!(within(summary.sync_max_us, 40_000), "{summary:?}");

        let next = times.record(1, 10, ms(2), t0 + ms(2_500)).unwrap();
        assert_eq!((next.window_ms, next.commits, next.bytes), (1_500, 1, 10));
        assert!(within(next.sync_max_us, 2_000), "{next:?}");
    }
}
