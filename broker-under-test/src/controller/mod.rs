//! The controller: the one place where leaders, leader epochs and in-sync sets change, as
//! records of a replicated metadata log (Kafka's KRaft, KIP-500/KIP-631). `metadata` holds
//! the records and the image they build; the Raft group that replicates the log is chosen in
//! docs/ARCHITECTURE.md ("Controller").

pub mod metadata;
