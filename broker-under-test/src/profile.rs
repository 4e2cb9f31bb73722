//! `ProduceFlushProfile`: when batches leave `pending_batches` for the partition's segment
//! files, and how long the WAL writer lingers to merge more appends into one fsync. Each
//! parameter of each profile is a named constant so a change to one shows up in review.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlushProfileName {
    LowLatency,
    Balanced,
    HighThroughput,
    Extreme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceFlushProfile {
    pub name: FlushProfileName,
    /// Flush once this many durable batches are pending.
    pub flush_batches_max: usize,
    /// Flush once pending batches hold this many bytes.
    pub flush_bytes_max: usize,
    /// Flush once the oldest pending batch is this old.
    pub flush_age_max: Duration,
    /// How long the WAL writer waits for more appends after the first of a group commit.
    pub group_commit_linger: Duration,
}

const LOW_LATENCY_FLUSH_BATCHES_MAX: usize = 1;
const LOW_LATENCY_FLUSH_BYTES_MAX: usize = 64 << 10;
const LOW_LATENCY_FLUSH_AGE_MAX_MS: u64 = 1;
const LOW_LATENCY_GROUP_COMMIT_LINGER_US: u64 = 0;

const BALANCED_FLUSH_BATCHES_MAX: usize = 10;
const BALANCED_FLUSH_BYTES_MAX: usize = 1 << 20;
const BALANCED_FLUSH_AGE_MAX_MS: u64 = 10;
const BALANCED_GROUP_COMMIT_LINGER_US: u64 = 0;

/// The seed's HighThroughput profile: 100 batches per flush.
const HIGH_THROUGHPUT_FLUSH_BATCHES_MAX: usize = 100;
const HIGH_THROUGHPUT_FLUSH_BYTES_MAX: usize = 8 << 20;
const HIGH_THROUGHPUT_FLUSH_AGE_MAX_MS: u64 = 100;
const HIGH_THROUGHPUT_GROUP_COMMIT_LINGER_US: u64 = 0;

const EXTREME_FLUSH_BATCHES_MAX: usize = 500;
const EXTREME_FLUSH_BYTES_MAX: usize = 32 << 20;
const EXTREME_FLUSH_AGE_MAX_MS: u64 = 500;
/// Trades latency for fewer fsyncs: every group waits this long for company.
const EXTREME_GROUP_COMMIT_LINGER_US: u64 = 2_000;

impl ProduceFlushProfile {
    pub fn named(name: FlushProfileName) -> Self {
        let (batches, bytes, age_ms, linger_us) = match name {
            FlushProfileName::LowLatency => (
                LOW_LATENCY_FLUSH_BATCHES_MAX,
                LOW_LATENCY_FLUSH_BYTES_MAX,
                LOW_LATENCY_FLUSH_AGE_MAX_MS,
                LOW_LATENCY_GROUP_COMMIT_LINGER_US,
            ),
            FlushProfileName::Balanced => (
                BALANCED_FLUSH_BATCHES_MAX,
                BALANCED_FLUSH_BYTES_MAX,
                BALANCED_FLUSH_AGE_MAX_MS,
                BALANCED_GROUP_COMMIT_LINGER_US,
            ),
            FlushProfileName::HighThroughput => (
                HIGH_THROUGHPUT_FLUSH_BATCHES_MAX,
                HIGH_THROUGHPUT_FLUSH_BYTES_MAX,
                HIGH_THROUGHPUT_FLUSH_AGE_MAX_MS,
                HIGH_THROUGHPUT_GROUP_COMMIT_LINGER_US,
            ),
            FlushProfileName::Extreme => (
                EXTREME_FLUSH_BATCHES_MAX,
                EXTREME_FLUSH_BYTES_MAX,
                EXTREME_FLUSH_AGE_MAX_MS,
                EXTREME_GROUP_COMMIT_LINGER_US,
            ),
        };
        Self {
            name,
            flush_batches_max: batches,
            flush_bytes_max: bytes,
            flush_age_max: Duration::from_millis(age_ms),
            group_commit_linger: Duration::from_micros(linger_us),
        }
    }
}
