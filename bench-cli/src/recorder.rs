//! Records every outcome of a run: which phase it fell in (warm-up, measured window, drain),
//! its latency in the window histogram, and the per-second rate of the window.
//!
//! A phase is decided by the time the outcome arrived (the ack), so throughput is exactly the
//! messages acknowledged inside the window divided by the window length.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::report::{encode_histogram, Counts, Percentiles, PhaseResults, Phases};

/// Latencies are recorded in microseconds, from 1 µs up to this bound (larger are clamped).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Window,
    Drain,
}

fn counts_mut(phases: &mut Phases, phase: Phase) -> &mut Counts {
    match phase {
        Phase::Warmup => &mut phases.warmup,
        Phase::Window => &mut phases.window,
        Phase::Drain => &mut phases.drain,
    }
}

pub struct Recorder {
    warmup_end_ns: u64,
    window_end_ns: u64,
    pub window_latency_us: Histogram<u64>,
    /// Latencies since the last progress line.
    pub interval_latency_us: Histogram<u64>,
    pub interval_acked: u64,
    /// Acks per whole second of the window (the last entry may cover a partial second).
    pub per_second: Vec<u64>,
    pub phases: Phases,
    pub first_error: Option<String>,
    /// When the last ack arrived, and the longest time between two acks: (start, length) in
    /// ns since the run started.
    last_ack_ns: Option<u64>,
    pub longest_ack_gap_ns: (u64, u64),
}

impl Recorder {
    pub fn new(warmup: Duration, window: Duration) -> Self {
        let warmup_end_ns = warmup.as_nanos() as u64;
        let window_end_ns = warmup_end_ns + window.as_nanos() as u64;
        let seconds = window.as_secs() as usize + usize::from(window.subsec_nanos() > 0);
        Self {
            warmup_end_ns,
            window_end_ns,
            window_latency_us: new_histogram(),
            interval_latency_us: new_histogram(),
            interval_acked: 0,
            per_second: vec![0; seconds],
            phases: Phases::default(),
            first_error: None,
            last_ack_ns: None,
            longest_ack_gap_ns: (0, 0),
        }
    }

    /// What the run's result says about this stream of outcomes.
    pub fn results(&self, window_s: f64) -> PhaseResults {
        PhaseResults {
            window_s,
            phases: self.phases,
            rate_msgs_per_s: self.phases.window.acked as f64 / window_s,
            bandwidth_mb_per_s: self.phases.window.bytes as f64 / window_s / 1_000_000.0,
            latency_ms: Percentiles::from_histogram_us(&self.window_latency_us),
            per_second: self.per_second.clone(),
            histogram_us_b64: encode_histogram(&self.window_latency_us),
            first_error: self.first_error.clone(),
        }
    }

    pub fn phase(&self, at_ns: u64) -> Phase {
        if at_ns < self.warmup_end_ns {
            Phase::Warmup
        } else if at_ns < self.window_end_ns {
            Phase::Window
        } else {
            Phase::Drain
        }
    }

    /// A successful outcome: `intended_ns` is when the message was (meant to be) sent,
    /// `acked_ns` when its ack arrived, both since the run started.
    pub fn record_ack(&mut self, intended_ns: u64, acked_ns: u64, bytes: usize) {
        if let Some(last) = self.last_ack_ns {
            let gap = acked_ns.saturating_sub(last);
            if gap > self.longest_ack_gap_ns.1 {
                self.longest_ack_gap_ns = (last, gap);
            }
        }
        self.last_ack_ns = Some(self.last_ack_ns.map_or(acked_ns, |l| l.max(acked_ns)));
        let phase = self.phase(acked_ns);
        let counts = counts_mut(&mut self.phases, phase);
        counts.acked += 1;
        counts.bytes += bytes as u64;
        if phase == Phase::Window {
            let latency_us =
                (acked_ns.saturating_sub(intended_ns) / 1_000).clamp(1, LATENCY_US_MAX);
            self.window_latency_us
                .record(latency_us)
                .expect("clamped into range");
            self.interval_latency_us
                .record(latency_us)
                .expect("clamped into range");
            let second = ((acked_ns - self.warmup_end_ns) / 1_000_000_000) as usize;
            if let Some(slot) = self.per_second.get_mut(second) {
                *slot += 1;
            }
        }
        self.interval_acked += 1;
    }

    /// An arrival without a meaningful latency (consuming data produced earlier).
    pub fn record_arrival(&mut self, at_ns: u64, bytes: usize) {
        let phase = self.phase(at_ns);
        let counts = counts_mut(&mut self.phases, phase);
        counts.acked += 1;
        counts.bytes += bytes as u64;
        if phase == Phase::Window {
            let second = ((at_ns - self.warmup_end_ns) / 1_000_000_000) as usize;
            if let Some(slot) = self.per_second.get_mut(second) {
                *slot += 1;
            }
        }
        self.interval_acked += 1;
    }

    /// A failed outcome (error or delivery timeout) arriving at `at_ns`.
    pub fn record_failure(&mut self, at_ns: u64, timed_out: bool, error: &str) {
        let phase = self.phase(at_ns);
        let counts = counts_mut(&mut self.phases, phase);
        if timed_out {
            counts.timed_out += 1;
        } else {
            counts.failed += 1;
        }
        self.first_error.get_or_insert_with(|| error.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn acks_are_assigned_to_phases_by_arrival_time() {
        let mut r = Recorder::new(Duration::from_secs(1), Duration::from_secs(2));
        r.record_ack(0, S / 2, 10); // warm-up
        r.record_ack(S / 2, S + 1, 10); // sent in warm-up, acked in the window: counts
        r.record_ack(S, 2 * S + 5, 10); // window, second 1
        r.record_ack(2 * S, 3 * S, 10); // exactly at the window end: drain
        r.record_failure(3 * S + 1, true, "timed out");
        assert_eq!(r.phases.warmup.acked, 1);
        assert_eq!(r.phases.window.acked, 2);
        assert_eq!(r.phases.drain.acked, 1);
        assert_eq!(r.phases.drain.timed_out, 1);
        assert_eq!(r.per_second, vec![1, 1]);
        assert_eq!(r.window_latency_us.len(), r.phases.window.acked);
        assert_eq!(r.phases.total_acked(), 4);
        assert_eq!(r.phases.total_failed(), 1);
    }

    #[test]
    fn latency_is_measured_from_the_intended_send_time() {
        let mut r = Recorder::new(Duration::ZERO, Duration::from_secs(10));
        r.record_ack(1_000_000, 6_000_000, 1); // 5 ms
        assert_eq!(
            r.window_latency_us.max(),
            r.window_latency_us.highest_equivalent(5_000)
        );
    }

    #[test]
    fn the_longest_time_without_an_ack_is_kept_with_its_start() {
        let mut r = Recorder::new(Duration::ZERO, Duration::from_secs(10));
        for acked in [S, S + 10, 3 * S, 3 * S + 5, 4 * S] {
            r.record_ack(0, acked, 1);
        }
        assert_eq!(r.longest_ack_gap_ns, (S + 10, 2 * S - 10));
    }

    #[test]
    fn partial_last_second_gets_a_slot() {
        let r = Recorder::new(Duration::ZERO, Duration::from_millis(2500));
        assert_eq!(r.per_second.len(), 3);
    }
}
