//! `chronik-bench`: a Kafka load generator built as a measuring instrument.
//!
//! - `config`: command line -> validated `BenchConfig` (every client setting explicit).
//! - `recorder`: assigns each outcome to warm-up / window / drain; HDR histogram; per second.
//! - `produce`: closed- and open-loop producer loops over librdkafka delivery reports.
//! - `run`: reachability, topic setup, each mode, validity checks, exit codes.
//! - `report`: the result schema (`chronik-bench/v1`), console box, JSON, CSV, histogram codec.
//! - `provenance`: versions and host fingerprint.
//! - `cpu`: CPU time from /proc: the generator's (process and busiest thread), any process's.
//! - `replay`: a fixed request stream sent one request at a time (the deterministic tier).

pub mod config;
pub mod cpu;
pub mod produce;
pub mod provenance;
pub mod recorder;
pub mod replay;
pub mod report;
pub mod run;

pub use config::{BenchArgs, BenchConfig};
pub use report::BenchReport;
