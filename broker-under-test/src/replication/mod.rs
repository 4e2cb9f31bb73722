//! Replication, the Kafka way (each partition's replicas, roles, follower positions and
//! in-sync set are its `replica_state::Replication`): followers pull from the leader with Fetch requests that carry
//! their broker id, append the leader's batches at the same offsets to their own WAL, and report
//! how far they have made the log durable through the offset of their next fetch. The leader
//! keeps the in-sync set (`replica.lag.time.max.ms` semantics) and the high watermark: the
//! offset every in-sync replica has made durable. Consumers read below it; acks=all waits for it.
//!
//! What the produce path sees: acks=0/1 wait only for the local WAL, and the WAL writer only
//! advances the partition's durable end (an atomic) and wakes the keeper. The high watermark of
//! a replicated partition moves in exactly two places, both under that partition's follower
//! table: a follower's fetch, and the keeper after a local group commit or a lag check. No lock
//! here is ever taken by a produce request.
//!
//! - `announce`: a created topic is sent to every other broker with its id.
//! - `peer`: a Kafka-protocol client connection to another broker (kafka-protocol codecs).
//! - `fetcher`: the follower side, one task per leader broker; also learns topics from peers.
//! - `keeper`: the leader side's periodic work (high watermark after local commits, lag).

/// Fetch v15: topics by id and the follower's broker epoch beside its id (`replica_state`,
/// KIP-903). Brokers under a quorum send it as their replica fetch, so the leader can tell a
/// broker at its current registration from one that restarted since, or from a client using
/// its id; the leader's `api` accepts it without advertising it.
pub const REPLICA_FETCH_VERSION: i16 = 15;

pub mod announce;
pub mod fetcher;
pub mod keeper;
pub mod peer;
