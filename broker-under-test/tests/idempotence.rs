//! The idempotent producer's promise, exercised with the retries a client library hides: the
//! same batch sent again (a retry after a lost response) is answered with its first offset and
//! stored once, and a request that carries one batch twice stores nothing twice.

mod common;

use common::wire::{create_topic, produce_at, record_batch_by, Writer};
use common::Broker;

const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const RECORDS_PER_BATCH: usize = 3;

fn writer(first_sequence: i32) -> Writer {
    Writer {
        producer_id: 4242,
        epoch: 0,
        first_sequence,
    }
}

#[test]
fn a_retried_batch_is_answered_with_its_first_offset_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(broker.addr, "retried", 1);
    let batch = record_batch_by(writer(0), RECORDS_PER_BATCH, 8);
    assert_eq!(produce_at(broker.addr, "retried", batch.clone()), (0, 0));
    // The retry: same producer, epoch and sequences.
    assert_eq!(produce_at(broker.addr, "retried", batch), (0, 0));
    let next = record_batch_by(writer(RECORDS_PER_BATCH as i32), RECORDS_PER_BATCH, 8);
    assert_eq!(
        produce_at(broker.addr, "retried", next),
        (0, RECORDS_PER_BATCH as i64),
        "the next batch follows the first one directly"
    );
    // The offsets above prove the retry took none; the log holds exactly the two batches.
    let got = common::consume_partition(&broker.bootstrap(), "retried", 0, 2 * RECORDS_PER_BATCH);
    let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..2 * RECORDS_PER_BATCH as i64).collect::<Vec<_>>()
    );
}

#[test]
fn one_request_carrying_a_batch_twice_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(broker.addr, "doubled", 1);
    let batch = record_batch_by(writer(0), RECORDS_PER_BATCH, 8);
    let twice = [batch.clone(), batch].concat();
    let (error, _) = produce_at(broker.addr, "doubled", twice.into());
    assert_eq!(error, DUPLICATE_SEQUENCE_NUMBER);
    // Nothing of the refused request is stored; the producer starts again at sequence 0.
    let first = record_batch_by(writer(0), RECORDS_PER_BATCH, 8);
    assert_eq!(produce_at(broker.addr, "doubled", first), (0, 0));
    let got = common::consume_partition(&broker.bootstrap(), "doubled", 0, RECORDS_PER_BATCH);
    let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..RECORDS_PER_BATCH as i64).collect::<Vec<_>>());
}

#[test]
fn producer_ids_never_repeat_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let before: Vec<i64> = (0..5)
        .map(|_| common::wire::init_producer_id(broker.addr))
        .collect();
    broker.kill9();
    broker.restart();
    let after = common::wire::init_producer_id(broker.addr);
    assert!(
        before.iter().all(|&id| id < after),
        "{after} reissued or below {before:?}"
    );
}

/// A producer whose acks were lost to a broker's crash sends its last batches again to the
/// restarted broker: each is answered with the offset it was first stored at and stored once
/// (the restarted broker rebuilds each producer's last batches from the log it recovers).
#[test]
fn batches_retried_after_a_crash_are_answered_with_their_first_offsets_and_stored_once() {
    const BATCHES: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create_topic(broker.addr, "crash-retried", 1);
    let batches: Vec<_> = (0..BATCHES)
        .map(|i| record_batch_by(writer((i * RECORDS_PER_BATCH) as i32), RECORDS_PER_BATCH, 8))
        .collect();
    let first_offset = |i: usize| (i * RECORDS_PER_BATCH) as i64;
    for (i, batch) in batches.iter().enumerate() {
        assert_eq!(
            produce_at(broker.addr, "crash-retried", batch.clone()),
            (0, first_offset(i))
        );
    }
    broker.kill9();
    broker.restart();
    for (i, batch) in batches.iter().enumerate().rev() {
        assert_eq!(
            produce_at(broker.addr, "crash-retried", batch.clone()),
            (0, first_offset(i)),
            "batch {i} retried after the restart"
        );
    }
    let next = record_batch_by(
        writer((BATCHES * RECORDS_PER_BATCH) as i32),
        RECORDS_PER_BATCH,
        8,
    );
    assert_eq!(
        produce_at(broker.addr, "crash-retried", next),
        (0, first_offset(BATCHES)),
        "the producer's next batch follows the last one directly"
    );
    let all = (BATCHES + 1) * RECORDS_PER_BATCH;
    let got = common::consume_partition(&broker.bootstrap(), "crash-retried", 0, all);
    let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..all as i64).collect::<Vec<_>>());
}
