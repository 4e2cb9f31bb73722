//! `chronik-broker`: the reference Kafka-wire broker every benchmark in this project measures.
//!
//! Map of the modules, in the order a produce request meets them:
//! - `server`: the accept loop and connection limit, connection tasks (framing limits,
//!   ordered pipelined responses).
//! - `request_times`: where a produce request's time goes in the broker (timeline log only).
//! - `api`: the handler table (`SUPPORTED_APIS`) and one function per Kafka API.
//! - `batch`: record batch v2 header view: CRC-32C, size limits, base-offset patching.
//! - `produce`: `ProduceHandler` (validate, append, wait durable, `Flusher::after_produce`).
//! - `partition`: offsets, `pending_batches`, idempotent-producer state, high watermark.
//! - `wal`: record framing, storage trait, `GroupCommitWal` (knows a partition only as a
//!   `DurableLog`; owns the byte budget of its queue), recovery, its durable mark.
//! - `flush`: `Flusher`, the one place that moves pending batches to segment logs and fsyncs
//!   them: after a produce response, at each checkpoint, at shutdown; and the write-back and
//!   checkpoint timers.
//! - `log`: per-partition segment files with a sparse offset index.
//! - `profile`: `ProduceFlushProfile` and its named constants.
//! - `topics`: lock-free topic registry (`ArcSwap` snapshots).
//! - `cluster`: the static cluster file and the deterministic replica assignment.
//! - `controller`: the metadata log's records and image (KRaft): leaders, leader epochs and
//!   in-sync sets changed only by applying a record; elections by one rule.
//! - `offset_watch`: an offset that only grows, with waiters (durable end, high watermark).
//! - `replica_state`: one partition's replicas, leader and epoch, followers' durable ends and
//!   in-sync set, elections (leader epochs) learned from peers.
//! - `replication`: followers fetching from leaders, the leader's keeper (high watermark after
//!   local commits, lag), topics announced to peers.
//! - `leader_epochs`: where each leader epoch starts in a partition's log (truncation on fetch).
//! - `promote`: the `chronik-broker promote` failover command.
//! - `groups`: consumer-group coordinator (membership, rebalances, commit rules).
//! - `offset_log`: committed offsets, an append-only log with group commit and compaction.
//! - `producer_ids`: idempotent-producer ids from durably reserved blocks.
//! - `fail_stop`: the one switch every layer uses to stop the broker after a storage failure.
//! - `durable_file`, `mutex`: directory fsyncs and atomic file replacement; the one way to
//!   take a mutex. Every layer uses them; none owns them.
//! - `config`, `broker`: validated configuration; assembly, start-up and shutdown.

pub mod api;
pub mod batch;
pub mod broker;
pub mod cluster;
mod compression;
pub mod config;
pub mod controller;
pub mod durable_file;
pub mod fail_stop;
pub mod flush;
pub mod groups;
pub mod leader_epochs;
pub mod log;
pub mod mutex;
pub mod offset_log;
pub mod offset_watch;
pub mod partition;
pub mod produce;
pub mod producer_ids;
pub mod profile;
pub mod promote;
pub mod replica_state;
pub mod replication;
pub mod request_times;
pub mod server;
#[cfg(test)]
mod test_rng;
pub mod topics;
pub mod wal;

pub use broker::{start, start_with_storage, OpenWalStorage, RunningBroker, StartError};
pub use config::{BrokerArgs, BrokerConfig};
