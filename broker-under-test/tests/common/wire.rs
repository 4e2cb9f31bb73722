//! Raw Kafka frames over plain sockets, for tests that must send what no client library would:
//! requests are encoded with the `kafka-protocol` crate, then damaged on purpose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// The request header for `api` at `version`, encoded the way that version expects.
pub fn header_bytes(api: ApiKey, version: i16, correlation_id: i32) -> BytesMut {
    let mut header = RequestHeader::default();
    header.request_api_key = api as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("wire-test"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    buf
}

/// Length prefix + header + `body` (any bytes, valid or not).
pub fn raw_frame(api: ApiKey, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let header = header_bytes(api, version, correlation_id);
    let mut buf = BytesMut::with_capacity(4 + header.len() + body.len());
    buf.put_i32((header.len() + body.len()) as i32);
    buf.put_slice(&header);
    buf.put_slice(body);
    buf.to_vec()
}

pub fn frame<R: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    let mut encoded = BytesMut::new();
    body.encode(&mut encoded, version).unwrap();
    assert_eq!(
        R::header_version(version),
        api.request_header_version(version)
    );
    raw_frame(api, version, correlation_id, &encoded)
}

/// Reads one response frame; `None` if the broker closed the connection (or it timed out).
pub fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

pub fn closed(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0) | Err(_))
}

/// ApiVersions v3 on a fresh connection: the broker's answer.
pub fn api_versions(addr: SocketAddr, correlation_id: i32) -> ApiVersionsResponse {
    let mut s = connect(addr);
    s.write_all(&frame(
        ApiKey::ApiVersions,
        3,
        correlation_id,
        &ApiVersionsRequest::default(),
    ))
    .unwrap();
    let mut body = read_frame(&mut s).expect("ApiVersions response");
    let header = ResponseHeader::decode(&mut body, 0).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    ApiVersionsResponse::decode(&mut body, 3).unwrap()
}

/// A healthy ApiVersions v3 round trip on a fresh connection.
pub fn assert_healthy(addr: SocketAddr) {
    let response = api_versions(addr, 7);
    assert_eq!(response.error_code, 0);
    assert!(response
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

/// The broker's resident set now and at its peak (VmRSS, VmHWM), in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("field in /proc status")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Who wrote a batch: an idempotent producer's id, epoch and first sequence, or nobody (-1).
#[derive(Clone, Copy)]
pub struct Writer {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
}

pub const PLAIN: Writer = Writer {
    producer_id: -1,
    epoch: -1,
    first_sequence: -1,
};

/// One v2 record batch of `values` records of `value_bytes` each.
pub fn record_batch(values: usize, value_bytes: usize) -> Bytes {
    record_batch_by(PLAIN, values, value_bytes)
}

pub fn record_batch_by(writer: Writer, values: usize, value_bytes: usize) -> Bytes {
    let values: Vec<Bytes> = (0..values)
        .map(|_| Bytes::from(vec![b'x'; value_bytes]))
        .collect();
    record_batch_of(writer, &values)
}

/// One v2 record batch holding `values`, in order.
pub fn record_batch_of(writer: Writer, values: &[Bytes]) -> Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: writer.producer_id,
            producer_epoch: writer.epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if writer.producer_id < 0 {
                -1
            } else {
                writer.first_sequence + i as i32
            },
            timestamp: 0,
            key: None,
            value: Some(value.clone()),
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

/// Produce v9 (acks=1) of `records` to partition 0; the partition's error code and base offset.
pub fn produce_at(addr: SocketAddr, topic: &str, records: Bytes) -> (i16, i64) {
    produce_to(addr, topic, 0, records)
}

/// Produce v9 (acks=1) of `records` to `partition`; its error code and base offset.
pub fn produce_to(addr: SocketAddr, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    produce_acks(addr, (topic, partition), records, 1)
}

/// Produce v9 of `records` to the partition with `acks` (the broker waits up to 5 s); its
/// error code and base offset.
pub fn produce_acks(
    addr: SocketAddr,
    (topic, partition): (&str, i32),
    records: Bytes,
    acks: i16,
) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = Some(records);
    let mut topic_data = TopicProduceData::default();
    topic_data.name = TopicName(StrBytes::from_string(topic.to_owned()));
    topic_data.partition_data = vec![data];
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 5000;
    request.topic_data = vec![topic_data];
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::Produce, 9, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("produce response");
    ResponseHeader::decode(&mut body, 1).unwrap();
    let response = ProduceResponse::decode(&mut body, 9).unwrap();
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// The partition's error code of a Produce v9 (acks=1) of `records` to partition 0.
pub fn produce(addr: SocketAddr, topic: &str, records: Bytes) -> i16 {
    produce_at(addr, topic, records).0
}

/// CreateTopics v5 for one topic; the topic's error code.
pub fn create_topic(addr: SocketAddr, topic: &str, partitions: i32) -> i16 {
    create_replicated_topic(addr, topic, partitions, 1)
}

/// CreateTopics v5 of one topic with `factor` replicas per partition: its error code.
pub fn create_replicated_topic(addr: SocketAddr, topic: &str, partitions: i32, factor: i16) -> i16 {
    create_topic_with(addr, topic, (partitions, factor), &[])
}

/// CreateTopics v5 of one topic with `(partitions, factor)` and topic `configs`: its error
/// code.
pub fn create_topic_with(
    addr: SocketAddr,
    topic: &str,
    (partitions, factor): (i32, i16),
    configs: &[(&str, &str)],
) -> i16 {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
    let mut t = CreatableTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.num_partitions = partitions;
    t.replication_factor = factor;
    t.configs = configs
        .iter()
        .map(|(name, value)| {
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_string((*name).to_owned());
            c.value = Some(StrBytes::from_string((*value).to_owned()));
            c
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![t];
    request.timeout_ms = 5000;
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::CreateTopics, 5, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("create response");
    ResponseHeader::decode(&mut body, 1).unwrap();
    CreateTopicsResponse::decode(&mut body, 5).unwrap().topics[0].error_code
}

/// The partition's latest offset (ListOffsets v1, timestamp -1): its end, the high watermark.
pub fn latest_offset(addr: SocketAddr, topic: &str, partition: i32) -> i64 {
    list_offset(addr, (topic, partition), -1)
}

/// The partition's log start offset (ListOffsets v1, earliest).
pub fn earliest_offset(addr: SocketAddr, topic: &str, partition: i32) -> i64 {
    list_offset(addr, (topic, partition), -2)
}

/// ListOffsets v1 of one partition at `timestamp` (-1 latest, -2 earliest).
fn list_offset(addr: SocketAddr, (topic, partition): (&str, i32), timestamp: i64) -> i64 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, TopicName};
    let mut p = ListOffsetsPartition::default();
    p.partition_index = partition;
    p.timestamp = timestamp;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partitions = vec![p];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = (-1).into();
    request.topics = vec![t];
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::ListOffsets, 1, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("ListOffsets response");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let response = ListOffsetsResponse::decode(&mut body, 1).unwrap();
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "ListOffsets {topic}-{partition}");
    p.offset
}

/// One consumer Fetch (v11, replica id -1, no wait) of `topic`-`partition` from `offset`.
pub fn consumer_fetch(
    s: &mut TcpStream,
    topic: &str,
    partition: i32,
    offset: i64,
) -> kafka_protocol::messages::FetchResponse {
    fetch_as(s, -1, topic, partition, offset)
}

/// A Fetch v11 of one partition from `offset` with `replica_id` (-1: a consumer; a broker id:
/// a follower, or a client posing as one).
pub fn fetch_as(
    s: &mut TcpStream,
    replica_id: i32,
    topic: &str,
    partition: i32,
    offset: i64,
) -> kafka_protocol::messages::FetchResponse {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.replica_id = replica_id.into();
    request.max_bytes = 1 << 20;
    request.topics = vec![t];
    s.write_all(&frame(ApiKey::Fetch, 11, 1, &request)).unwrap();
    let mut body = read_frame(s).expect("fetch response");
    ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(11)).unwrap();
    FetchResponse::decode(&mut body, 11).unwrap()
}

/// A Fetch v15 as brokers send it under a quorum: `topic_id`-`partition` from `offset`, as
/// broker `replica_id` at `broker_epoch` (`replica_state`).
pub fn fetch_as_at_epoch(
    s: &mut TcpStream,
    (replica_id, broker_epoch): (i32, i64),
    topic_id: uuid::Uuid,
    partition: i32,
    offset: i64,
) -> kafka_protocol::messages::FetchResponse {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    const VERSION: i16 = 15;
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic_id = topic_id;
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.replica_state.replica_id = replica_id.into();
    request.replica_state.replica_epoch = broker_epoch;
    request.max_bytes = 1 << 20;
    request.topics = vec![t];
    s.write_all(&frame(ApiKey::Fetch, VERSION, 1, &request))
        .unwrap();
    let mut body = read_frame(s).expect("fetch response");
    ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(VERSION)).unwrap();
    FetchResponse::decode(&mut body, VERSION).unwrap()
}

/// The id of `topic` at the broker at `addr` (Metadata v12).
pub fn topic_id(addr: SocketAddr, topic: &str) -> uuid::Uuid {
    metadata_of(addr, topic).topics[0].topic_id
}

/// Metadata v12 of `topic`, asked of the broker at `addr` alone.
pub fn metadata_of(addr: SocketAddr, topic: &str) -> kafka_protocol::messages::MetadataResponse {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![t]);
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::Metadata, 12, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("Metadata response");
    ResponseHeader::decode(&mut body, 1).unwrap();
    MetadataResponse::decode(&mut body, 12).unwrap()
}

/// Every record of `partition` from offset 0 to its end, with raw Fetch v11 requests: (offset,
/// value) in log order.
pub fn fetch_all(addr: SocketAddr, topic: &str, partition: i32) -> Vec<(i64, Bytes)> {
    fetch_from(addr, (topic, partition), 0)
}

/// Every record of the partition from offset `from` to its end, in log order.
pub fn fetch_from(
    addr: SocketAddr,
    (topic, partition): (&str, i32),
    from: i64,
) -> Vec<(i64, Bytes)> {
    use kafka_protocol::records::RecordBatchDecoder;
    let end = latest_offset(addr, topic, partition);
    let mut out: Vec<(i64, Bytes)> = Vec::new();
    let mut s = connect(addr);
    let mut next = from;
    while next < end {
        let response = consumer_fetch(&mut s, topic, partition, next);
        let data = &response.responses[0].partitions[0];
        assert_eq!(data.error_code, 0, "fetch {topic}-{partition} at {next}");
        let mut records = data.records.clone().unwrap_or_default();
        let before = next;
        while !records.is_empty() {
            let set = RecordBatchDecoder::decode(&mut records).expect("a valid batch");
            for r in set.records {
                if r.offset >= next {
                    out.push((r.offset, r.value.unwrap_or_default()));
                    next = r.offset + 1;
                }
            }
        }
        assert!(
            next > before,
            "fetch at {before} made no progress (end {end})"
        );
    }
    out
}

/// `topic`-`partition` as the broker at `addr` sees it (Metadata v12 to that broker alone):
/// (leader, leader epoch, in-sync replicas).
pub fn partition_view(addr: SocketAddr, topic: &str, partition: i32) -> (i32, i32, Vec<i32>) {
    let response = metadata_of(addr, topic);
    let p = response.topics[0]
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .expect("partition in metadata");
    (
        p.leader_id.0,
        p.leader_epoch,
        p.isr_nodes.iter().map(|b| b.0).collect(),
    )
}

/// ElectLeaders v1 (`election_type` 0 in sync, 1 unclean) of `topic`-`partition` sent to the
/// broker at `addr`: the partition's error code.
pub fn elect_leaders(addr: SocketAddr, topic: &str, partition: i32, election_type: i8) -> i16 {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
    let mut wanted = TopicPartitions::default();
    wanted.topic = TopicName(StrBytes::from_string(topic.to_owned()));
    wanted.partitions = vec![partition];
    let mut request = ElectLeadersRequest::default();
    request.election_type = election_type;
    request.topic_partitions = Some(vec![wanted]);
    request.timeout_ms = 5000;
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::ElectLeaders, 1, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("ElectLeaders response");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let response = ElectLeadersResponse::decode(&mut body, 1).unwrap();
    response.replica_election_results[0].partition_result[0].error_code
}

/// InitProducerId v1 without a transactional id: the producer id the broker hands out.
pub fn init_producer_id(addr: SocketAddr) -> i64 {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.transaction_timeout_ms = 60_000;
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::InitProducerId, 1, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("InitProducerId response");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let response = InitProducerIdResponse::decode(&mut body, 1).unwrap();
    assert_eq!(response.error_code, 0);
    response.producer_id.0
}

/// OffsetCommit v2 of a standalone consumer (no member, generation -1); the partition's error
/// code.
pub fn commit_offset(addr: SocketAddr, group: &str, at: (&str, i32), offset: i64) -> i16 {
    commit_offset_as(addr, (group, "", -1), at, offset)
}

/// OffsetCommit v2 as `member` of `group` in `generation`; the partition's error code.
pub fn commit_offset_as(
    addr: SocketAddr,
    (group, member, generation): (&str, &str, i32),
    (topic, partition): (&str, i32),
    offset: i64,
) -> i16 {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName};
    const VERSION: i16 = 2;
    let mut p = OffsetCommitRequestPartition::default();
    p.partition_index = partition;
    p.committed_offset = offset;
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partitions = vec![p];
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    request.member_id = StrBytes::from_string(member.to_owned());
    request.generation_id_or_member_epoch = generation;
    request.retention_time_ms = -1;
    request.topics = vec![t];
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::OffsetCommit, VERSION, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("OffsetCommit response");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let response = OffsetCommitResponse::decode(&mut body, VERSION).unwrap();
    response.topics[0].partitions[0].error_code
}

/// OffsetFetch v2 of one partition: the group's committed offset (-1 when none).
pub fn committed_offset(addr: SocketAddr, group: &str, (topic, partition): (&str, i32)) -> i64 {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
    const VERSION: i16 = 2;
    let mut t = OffsetFetchRequestTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partition_indexes = vec![partition];
    let mut request = OffsetFetchRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    request.topics = Some(vec![t]);
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::OffsetFetch, VERSION, 1, &request))
        .unwrap();
    let mut body = read_frame(&mut s).expect("OffsetFetch response");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let response = OffsetFetchResponse::decode(&mut body, VERSION).unwrap();
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "OffsetFetch {group} {topic}-{partition}");
    p.committed_offset
}
