//! The deterministic tier's fixed request stream: its shape and what one replay sent and got
//! back. `chronik-replay` (in `chronik-bench`) sends it; the harness reads the summary.

use serde::{Deserialize, Serialize};

/// The stream's shape. `seed(n)` is the one the harness uses; the fields are public so a test
/// can build a tiny one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamShape {
    /// Produce requests (acks=1), each one record batch.
    pub produce_requests: u32,
    pub records_per_batch: u32,
    pub value_bytes: u32,
    /// A fetch of the batch just written after every this many produce requests.
    pub fetch_every: u32,
    /// A metadata request after every this many produce requests.
    pub metadata_every: u32,
}

impl StreamShape {
    /// The seed workload's messages (256 B, acks=1) in batches like the ones librdkafka sends
    /// at 128 in flight, with a consumer fetching behind the producer.
    pub fn seed(produce_requests: u32) -> Self {
        Self {
            produce_requests,
            records_per_batch: 16,
            value_bytes: 256,
            fetch_every: 4,
            metadata_every: 64,
        }
    }

    /// Every request the stream sends, in order: 3 setup requests, then the produce requests
    /// with their fetches and metadata refreshes.
    pub fn request_count(&self) -> u64 {
        let n = u64::from(self.produce_requests);
        3 + n + n / u64::from(self.fetch_every.max(1)) + n / u64::from(self.metadata_every.max(1))
    }

    pub fn messages(&self) -> u64 {
        u64::from(self.produce_requests) * u64::from(self.records_per_batch)
    }
}

/// What one replay sent and got back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub shape: StreamShape,
    pub requests: u64,
    pub messages: u64,
    pub request_bytes: u64,
    /// SHA-256 of every request frame in order: two replays with the same digest sent the same
    /// bytes.
    pub stream_sha256: String,
    /// Records the fetches returned; the same on every run of a correct broker.
    pub records_fetched: u64,
}
