//! `chronik-bench`: a Kafka load generator built as a measuring instrument.
//!
//! - `recorder`: assigns each outcome to warm-up / window / drain; HDR histogram; per second.
//! - `produce`: closed- and open-loop producer loops over librdkafka delivery reports.
//! - `run`: reachability, topic setup, each mode, validity checks, exit codes.
//! - `verify`: `--verify-acked`, every acked message read back at its offset.
//! - `replay`: a fixed request stream sent one request at a time (the deterministic tier).
//! - `config`, `report`, `provenance`, `cpu`, `exit`: from `chronik-bench-schema` (the
//!   command line, the result schema, versions and host, CPU from /proc, exit codes).

pub mod produce;
pub mod recorder;
pub mod replay;
pub mod run;
pub mod verify;

// The types the harness reads live in their own crate (no Kafka client there); they keep
// their paths here.
pub use chronik_bench_schema as schema;
pub use chronik_bench_schema::{config, cpu, exit, provenance, report};
pub use chronik_bench_schema::{BenchArgs, BenchConfig, BenchReport};
