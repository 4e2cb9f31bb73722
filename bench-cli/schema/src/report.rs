//! One result struct feeds every output: the console box, the progress line, JSON and CSV.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::BenchConfig;
use crate::cpu::CpuUsage;
use crate::provenance::Provenance;

/// Version of the JSON layout; bump on any incompatible change.
pub const SCHEMA: &str = "chronik-bench/v1";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Percentiles in milliseconds of a histogram recorded in microseconds.
    pub fn from_histogram_us(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean() / 1_000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Counts for one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub acked: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub bytes: u64,
}

/// Counts per phase of a run; `window` is the measured part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    pub window: Counts,
    pub warmup: Counts,
    pub drain: Counts,
}

impl Phases {
    pub fn total_acked(&self) -> u64 {
        self.warmup.acked + self.window.acked + self.drain.acked
    }

    pub fn total_failed(&self) -> u64 {
        [self.warmup, self.window, self.drain]
            .iter()
            .map(|c| c.failed + c.timed_out)
            .sum()
    }
}

/// Results of one stream of outcomes (producer acks, consumed messages, metadata calls).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseResults {
    pub window_s: f64,
    /// Outcomes per phase (`window`, `warmup`, `drain` in the JSON).
    #[serde(flatten)]
    pub phases: Phases,
    pub rate_msgs_per_s: f64,
    pub bandwidth_mb_per_s: f64,
    pub latency_ms: Percentiles,
    /// Acks per second through the window.
    pub per_second: Vec<u64>,
    /// The window's latency histogram (microseconds), V2 deflate, base64.
    pub histogram_us_b64: String,
    pub first_error: Option<String>,
}

impl PhaseResults {
    pub fn histogram(&self) -> Result<Histogram<u64>, String> {
        decode_histogram(&self.histogram_us_b64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    pub schema: String,
    pub started_at: String,
    pub config: BenchConfig,
    pub provenance: Provenance,
    /// The mode's main stream: producer acks (produce), consumed messages (consume),
    /// end-to-end arrivals (round-trip), metadata calls (metadata).
    pub results: PhaseResults,
    /// Round-trip only: the producer's acks.
    pub producer: Option<PhaseResults>,
    /// Open loop only: messages offered per second during the window.
    pub offered_rate_msgs_per_s: Option<f64>,
    pub cpu: CpuUsage,
    /// Why the run cannot be used as a measurement (empty when valid).
    pub invalid_reasons: Vec<String>,
    /// `--verify-acked`: the acknowledged messages checked against a read-back.
    #[serde(default)]
    pub verification: Option<Verification>,
}

/// What `--verify-acked` found.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Verification {
    /// Messages acknowledged during the run.
    pub acked: u64,
    /// Acknowledged messages not at their acknowledged offset in the read-back (missing, or
    /// another message there; two acks naming one offset count one lost).
    pub lost: u64,
    /// Messages read back.
    pub read_back: u64,
    /// The longest time between two acks while messages were being sent (a leader failover
    /// shows here), and when it started, in seconds since the run started.
    pub longest_ack_gap_ms: f64,
    pub longest_ack_gap_from_s: f64,
}

impl BenchReport {
    pub fn is_valid(&self) -> bool {
        self.invalid_reasons.is_empty()
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let raw = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let report: Self =
            serde_json::from_slice(&raw).map_err(|e| format!("parsing {}: {e}", path.display()))?;
        if report.schema != SCHEMA {
            return Err(format!(
                "{}: schema {} is not {SCHEMA}",
                path.display(),
                report.schema
            ));
        }
        Ok(report)
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json)
    }

    pub fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let r = &self.results;
        let l = &r.latency_ms;
        let mut out = String::from(
            "mode,messages,failed,timed_out,rate_msgs_per_s,bandwidth_mb_per_s,p50_ms,p90_ms,p95_ms,p99_ms,p999_ms,max_ms,valid\n",
        );
        let _ = writeln!(
            out,
            "{:?},{},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            self.config.mode,
            r.phases.window.acked,
            r.phases.window.failed,
            r.phases.window.timed_out,
            r.rate_msgs_per_s,
            r.bandwidth_mb_per_s,
            l.p50,
            l.p90,
            l.p95,
            l.p99,
            l.p999,
            l.max,
            self.is_valid()
        );
        std::fs::write(path, out)
    }

    /// The seed's console box.
    pub fn console_box(&self) -> String {
        let r = &self.results;
        let l = &r.latency_ms;
        let line = "═".repeat(62);
        let mut out = String::new();
        let _ = writeln!(out, "╔{line}╗");
        let _ = writeln!(
            out,
            "║ chronik-bench {:?} @ concurrency {}, {} B, {:.0} s window",
            self.config.mode, self.config.concurrency, self.config.message_size, r.window_s
        );
        let _ = writeln!(out, "╠{line}╣");
        let _ = writeln!(
            out,
            "║ Messages:        {:>14} total",
            group_digits(r.phases.window.acked)
        );
        let failed = r.phases.window.failed + r.phases.window.timed_out;
        let pct = if r.phases.window.acked + failed > 0 {
            100.0 * failed as f64 / (r.phases.window.acked + failed) as f64
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "║ Failed:          {:>14} ({pct:.2}%)",
            group_digits(failed)
        );
        let _ = writeln!(
            out,
            "║ Message rate:    {:>14} msg/s",
            group_digits(r.rate_msgs_per_s.round() as u64)
        );
        let _ = writeln!(
            out,
            "║ Bandwidth:       {:>14.2} MB/s",
            r.bandwidth_mb_per_s
        );
        if let Some(offered) = self.offered_rate_msgs_per_s {
            let _ = writeln!(
                out,
                "║ Offered rate:    {:>14} msg/s",
                group_digits(offered.round() as u64)
            );
        }
        let _ = writeln!(out, "╠{line}╣");
        for (name, v) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p95", l.p95),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            let _ = writeln!(out, "║ {:<6}           {:>14.2} ms", format!("{name}:"), v);
        }
        let _ = writeln!(out, "╠{line}╣");
        let busiest = self.cpu.busiest_thread.as_ref().map_or(String::new(), |t| {
            format!(" (busiest thread {} {:.2})", t.name, t.cores_used)
        });
        let _ = writeln!(
            out,
            "║ Warm-up acked: {}  drain acked: {}  generator CPU: {:.2} cores{busiest}",
            r.phases.warmup.acked, r.phases.drain.acked, self.cpu.cores_used
        );
        if let Some(v) = &self.verification {
            let _ = writeln!(
                out,
                "║ Verified: {} acked, {} lost, {} read back; longest without an ack {:.2} s (from {:.1} s)",
                v.acked,
                v.lost,
                v.read_back,
                v.longest_ack_gap_ms / 1000.0,
                v.longest_ack_gap_from_s
            );
        }
        if !self.invalid_reasons.is_empty() {
            let _ = writeln!(out, "║ INVALID RUN: {}", self.invalid_reasons.join("; "));
        }
        let _ = writeln!(out, "╚{line}╝");
        out
    }
}

fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serialising into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn decode_histogram(b64: &str) -> Result<Histogram<u64>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| format!("histogram does not decode: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trips_through_base64() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in [1u64, 10, 100, 1_000, 123_456] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(2_356_418), "2,356,418");
        assert_eq!(group_digits(999), "999");
    }
}
