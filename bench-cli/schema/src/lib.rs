//! `chronik-bench-schema`: what `chronik-bench` and `chronik-replay` write and the harness
//! reads, without the Kafka client. The harness depends on this crate alone, so it neither
//! links librdkafka nor keeps a second copy of the result types or the exit codes.
//!
//! - `config`: command line -> validated `BenchConfig` (every client setting explicit).
//! - `report`: the result schema (`chronik-bench/v1`): console box, JSON, CSV, histogram codec.
//! - `provenance`: versions and host fingerprint.
//! - `cpu`: CPU time from /proc: the generator's (process and busiest thread), any process's.
//! - `replay`: the shape and summary of the deterministic tier's fixed request stream.
//! - `exit`: the exit codes of `chronik-bench` and `chronik-replay`.

pub mod config;
pub mod cpu;
pub mod exit;
pub mod provenance;
pub mod replay;
pub mod report;

pub use config::{BenchArgs, BenchConfig};
pub use report::BenchReport;
