//! Malformed input over raw sockets: each case costs at most its own connection, and a healthy
//! request on another connection still works afterwards. Requests are encoded with the
//! `kafka-protocol` crate, then damaged on purpose.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use common::wire::{assert_healthy, closed, connect, frame, read_frame};
use common::Broker;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, ProduceRequest,
    ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

const CORRUPT_MESSAGE: i16 = 2;
const MESSAGE_TOO_LARGE: i16 = 10;
const UNSUPPORTED_VERSION: i16 = 35;

fn record_batch(values: usize, value_bytes: usize) -> Bytes {
    let records: Vec<Record> = (0..values)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'x'; value_bytes])),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce(addr: SocketAddr, topic: &str, records: Bytes) -> i16 {
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(records);
    let mut topic_data = TopicProduceData::default();
    topic_data.name = TopicName(StrBytes::from_string(topic.to_owned()));
    topic_data.partition_data = vec![partition];
    let mut request = ProduceRequest::default();
    request.acks = 1;
    request.timeout_ms = 5000;
    request.topic_data = vec![topic_data];
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::Produce, 9, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("produce response");
    ResponseHeader::decode(&mut body, 1).unwrap();
    let response = ProduceResponse::decode(&mut body, 9).unwrap();
    response.responses[0].partition_responses[0].error_code
}

fn create(addr: SocketAddr, topic: &str) {
    let mut t = kafka_protocol::messages::create_topics_request::CreatableTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.num_partitions = 1;
    t.replication_factor = 1;
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![t];
    request.timeout_ms = 5000;
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::CreateTopics, 5, 1, &request))
        .unwrap();
    read_frame(&mut s).expect("create response");
}

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
    create(broker.addr, "strict");
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
