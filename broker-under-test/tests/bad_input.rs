//! Malformed input over raw sockets: each case costs at most its own connection, and a healthy
//! request on another connection still works afterwards. Requests are encoded with the
//! `kafka-protocol` crate, then damaged on purpose.

mod common;

use std::io::Write;

use bytes::Bytes;
use common::wire::{
    assert_healthy, closed, connect, create_topic, frame, produce, read_frame, record_batch,
};
use common::Broker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ProduceRequest, ResponseHeader,
};
use kafka_protocol::protocol::Decodable;

const CORRUPT_MESSAGE: i16 = 2;
const INVALID_RECORD: i16 = 87;
const MESSAGE_TOO_LARGE: i16 = 10;
const UNSUPPORTED_VERSION: i16 = 35;

#[test]
fn bad_length_prefixes_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    for prefix in [-1i32, 0, i32::MAX, 1 << 30] {
        let mut s = connect(broker.addr);
        s.write_all(&prefix.to_be_bytes()).unwrap();
        assert!(closed(&mut s), "length {prefix} closes the connection");
        assert_healthy(broker.addr);
    }
    // A tiny frame (too short for a header) and a truncated frame followed by EOF.
    let mut s = connect(broker.addr);
    s.write_all(&[0, 0, 0, 2, 0, 18]).unwrap();
    assert!(closed(&mut s));
    let mut s = connect(broker.addr);
    s.write_all(&[0, 0, 0, 100, 0, 18, 0, 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut s));
    assert_healthy(broker.addr);
}

#[test]
fn unknown_apis_and_versions_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    // Unknown API key 9999.
    let mut raw = frame(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    raw[4..6].copy_from_slice(&9999i16.to_be_bytes());
    let mut s = connect(broker.addr);
    s.write_all(&raw).unwrap();
    assert!(closed(&mut s));
    // Produce at a version outside our range.
    let mut raw = frame(ApiKey::Produce, 9, 1, &ProduceRequest::default());
    raw[6..8].copy_from_slice(&99i16.to_be_bytes());
    let mut s = connect(broker.addr);
    s.write_all(&raw).unwrap();
    assert!(closed(&mut s));
    // ApiVersions too new: answered in v0 with UNSUPPORTED_VERSION and our ranges (KIP-511).
    let mut raw = frame(ApiKey::ApiVersions, 0, 42, &ApiVersionsRequest::default());
    raw[6..8].copy_from_slice(&99i16.to_be_bytes());
    let mut s = connect(broker.addr);
    s.write_all(&raw).unwrap();
    let mut body = read_frame(&mut s).expect("answered");
    assert_eq!(
        ResponseHeader::decode(&mut body, 0).unwrap().correlation_id,
        42
    );
    let response = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(response.error_code, UNSUPPORTED_VERSION);
    assert!(!response.api_keys.is_empty());
    // A body that lies about a string length past the end of the frame.
    let mut raw = frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    let last = raw.len() - 3;
    raw[last] = 0x7f;
    let mut s = connect(broker.addr);
    s.write_all(&raw).unwrap();
    assert!(closed(&mut s));
    assert_healthy(broker.addr);
}

#[test]
fn bad_crc_and_oversize_batches_are_rejected_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--batch-bytes-max=4096"]);
    create_topic(broker.addr, "strict", 1);
    let mut corrupt = record_batch(3, 10).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce(broker.addr, "strict", Bytes::from(corrupt)),
        CORRUPT_MESSAGE
    );
    let big = record_batch(1, 5000);
    assert_eq!(produce(broker.addr, "strict", big), MESSAGE_TOO_LARGE);
    assert_eq!(produce(broker.addr, "strict", record_batch(2, 10)), 0);
    // Only the valid batch is visible, at offset 0.
    let got = common::consume_partition(&broker.bootstrap(), "strict", 0, 3);
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![0, 1]);
}

/// A batch whose CRC is valid but whose records are malformed (here: its record claims more
/// bytes than its fields hold) is refused with INVALID_RECORD and never stored, compressed or
/// not: stored, it would break every consumer that reads past it.
#[test]
fn a_valid_crc_over_malformed_records_is_refused_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(broker.addr, "records", 1);
    let mut bad = record_batch(1, 10).to_vec();
    // The record's length varint sits right after the 61-byte batch header; one more (zigzag:
    // +2) makes it claim a byte past its fields. The CRC is then made valid again.
    const RECORD_LENGTH_AT: usize = 61;
    bad[RECORD_LENGTH_AT] += 2;
    let crc = crc32c::crc32c(&bad[21..]);
    bad[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce(broker.addr, "records", Bytes::from(bad.clone())),
        INVALID_RECORD
    );
    // The same records gzip-compressed (the CRC covers only the compressed bytes), and a
    // "gzip" batch whose records do not decompress.
    let gzipped = with_gzip(&bad[..RECORD_LENGTH_AT], &bad[RECORD_LENGTH_AT..]);
    assert_eq!(produce(broker.addr, "records", gzipped), INVALID_RECORD);
    let garbage = with_gzip(&bad[..RECORD_LENGTH_AT], &[]).slice(..RECORD_LENGTH_AT + 4);
    assert_eq!(
        produce(broker.addr, "records", reseal(garbage.to_vec())),
        CORRUPT_MESSAGE
    );
    assert_eq!(produce(broker.addr, "records", record_batch(2, 10)), 0);
    let got = common::consume_partition(&broker.bootstrap(), "records", 0, 2);
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![0, 1]);
}

/// A batch of `header` (61 bytes) and `records` gzip-compressed, with its length and CRC valid.
fn with_gzip(header: &[u8], records: &[u8]) -> Bytes {
    use std::io::Write;
    const GZIP: u8 = 1;
    let mut batch = header.to_vec();
    batch[22] |= GZIP; // the low byte of the attributes
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(records).unwrap();
    batch.extend(encoder.finish().unwrap());
    reseal(batch)
}

fn reseal(mut batch: Vec<u8>) -> Bytes {
    let len = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}
