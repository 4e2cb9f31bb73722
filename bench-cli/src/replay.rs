//! A fixed request stream replayed one request at a time, for the deterministic tier.
//!
//! The wall-clock tier measures what a client sees and is as noisy as the machine. This stream
//! exists so a broker can be measured in instructions instead: every request's bytes are fixed
//! (no timestamps, no random ids, no client-side batching decisions) and the next request is
//! sent only after the previous response arrived, so the broker does the same work in the same
//! order on every run. The harness runs the broker under Valgrind while this stream plays.
//!
//! The stream follows the seed workload's shape: a topic is created and described, then
//! produce requests (acks=1) of fixed 256 B records, with a fetch of what was just written
//! after every few produces and a metadata refresh now and then, as a consumer and a client
//! would send them. Every response is decoded and checked; a stream that met an error is not a
//! measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sha2::{Digest, Sha256};

pub use crate::schema::replay::{ReplaySummary, StreamShape};

/// How long one response may take. The broker runs under Valgrind (tens of times slower than
/// native), so this is generous; a broker that stops answering still fails the replay.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The topic the stream writes to; the data directory is fresh for every replay.
pub const REPLAY_TOPIC: &str = "chronik-replay";

/// Versions the stream is encoded at: fixed, so the bytes never depend on what a broker
/// advertises. The ApiVersions answer is checked against them before anything else is sent.
const API_VERSIONS_VERSION: i16 = 3;
const CREATE_TOPICS_VERSION: i16 = 5;
const METADATA_VERSION: i16 = 9;
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 11;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("request {index} ({api:?}): {source}")]
    Io {
        index: u64,
        api: ApiKey,
        source: std::io::Error,
    },
    #[error("request {index} ({api:?}): cannot decode the response: {detail}")]
    Decode {
        index: u64,
        api: ApiKey,
        detail: String,
    },
    #[error("request {index} ({api:?}): the broker answered error code {code}")]
    Refused { index: u64, api: ApiKey, code: i16 },
    #[error("the broker does not support {api:?} v{version}, which the replay stream uses")]
    Unsupported { api: ApiKey, version: i16 },
}

/// Sends the stream to `addr`, one request at a time, checking every response.
pub fn replay(addr: SocketAddr, shape: StreamShape) -> Result<ReplaySummary, ReplayError> {
    let mut conn = Connection::open(addr)?;
    let versions = conn.api_versions()?;
    for (api, version) in [
        (ApiKey::CreateTopics, CREATE_TOPICS_VERSION),
        (ApiKey::Metadata, METADATA_VERSION),
        (ApiKey::Produce, PRODUCE_VERSION),
        (ApiKey::Fetch, FETCH_VERSION),
    ] {
        let supported = versions.api_keys.iter().any(|k| {
            k.api_key == api as i16 && k.min_version <= version && version <= k.max_version
        });
        if !supported {
            return Err(ReplayError::Unsupported { api, version });
        }
    }
    conn.create_topic()?;
    conn.metadata()?;
    let batch = record_batch(shape);
    let mut records_fetched = 0;
    for i in 1..=u64::from(shape.produce_requests) {
        let base_offset = conn.produce(batch.clone())?;
        if i % u64::from(shape.fetch_every.max(1)) == 0 {
            records_fetched += conn.fetch(base_offset)?;
        }
        if i % u64::from(shape.metadata_every.max(1)) == 0 {
            conn.metadata()?;
        }
    }
    Ok(ReplaySummary {
        shape,
        requests: conn.sent,
        messages: shape.messages(),
        request_bytes: conn.bytes,
        stream_sha256: format!("{:x}", conn.digest.finalize()),
        records_fetched,
    })
}

/// One record batch of the shape's records: fixed values, timestamp 0, no producer id, so
/// every produce request carries the same bytes.
fn record_batch(shape: StreamShape) -> Bytes {
    let records: Vec<Record> = (0..shape.records_per_batch)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(value(i, shape.value_bytes)),
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
    .expect("a v2 batch of plain records always encodes");
    buf.freeze()
}

/// A value that is not all one byte (a broker that compresses or dedupes must not be flattered).
fn value(record: u32, bytes: u32) -> Bytes {
    (0..bytes)
        .map(|j| (record.wrapping_mul(31).wrapping_add(j) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(REPLAY_TOPIC))
}

struct Connection {
    stream: TcpStream,
    sent: u64,
    bytes: u64,
    digest: Sha256,
}

impl Connection {
    fn open(addr: SocketAddr) -> Result<Self, ReplayError> {
        let stream = TcpStream::connect_timeout(&addr, RESPONSE_TIMEOUT)
            .map_err(|source| ReplayError::Connect { addr, source })?;
        let timeouts = stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(RESPONSE_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true));
        timeouts.map_err(|source| ReplayError::Connect { addr, source })?;
        Ok(Self {
            stream,
            sent: 0,
            bytes: 0,
            digest: Sha256::new(),
        })
    }

    /// Sends one request and returns the response body after its header.
    fn call<R: Encodable + HeaderVersion>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> Result<Bytes, ReplayError> {
        let index = self.sent;
        // Correlation ids wrap at i32 like a client's; streams are far shorter.
        let correlation_id = (index % i32::MAX as u64) as i32;
        let frame = frame(api, version, correlation_id, body);
        self.digest.update(&frame);
        self.sent += 1;
        self.bytes += frame.len() as u64;
        let io = |source| ReplayError::Io { index, api, source };
        self.stream.write_all(&frame).map_err(io)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(io)?;
        let len = usize::try_from(i32::from_be_bytes(len)).unwrap_or(0);
        let mut response = vec![0u8; len];
        self.stream.read_exact(&mut response).map_err(io)?;
        let mut response = Bytes::from(response);
        let decode = |detail: String| ReplayError::Decode { index, api, detail };
        let header = ResponseHeader::decode(&mut response, api.response_header_version(version))
            .map_err(|e| decode(e.to_string()))?;
        if header.correlation_id != correlation_id {
            return Err(decode(format!(
                "correlation id {} answers request {correlation_id}",
                header.correlation_id
            )));
        }
        Ok(response)
    }

    fn decode<T: Decodable>(
        &self,
        api: ApiKey,
        version: i16,
        mut body: Bytes,
    ) -> Result<T, ReplayError> {
        T::decode(&mut body, version).map_err(|e| ReplayError::Decode {
            index: self.sent - 1,
            api,
            detail: e.to_string(),
        })
    }

    fn check(&self, api: ApiKey, code: i16) -> Result<(), ReplayError> {
        if code == 0 {
            Ok(())
        } else {
            Err(ReplayError::Refused {
                index: self.sent - 1,
                api,
                code,
            })
        }
    }

    fn api_versions(&mut self) -> Result<ApiVersionsResponse, ReplayError> {
        let (api, v) = (ApiKey::ApiVersions, API_VERSIONS_VERSION);
        let body = self.call(api, v, &ApiVersionsRequest::default())?;
        let response: ApiVersionsResponse = self.decode(api, v, body)?;
        self.check(api, response.error_code)?;
        Ok(response)
    }

    fn create_topic(&mut self) -> Result<(), ReplayError> {
        let (api, v) = (ApiKey::CreateTopics, CREATE_TOPICS_VERSION);
        let mut topic = CreatableTopic::default();
        topic.name = topic_name();
        topic.num_partitions = 1;
        topic.replication_factor = 1;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 30_000;
        let body = self.call(api, v, &request)?;
        let response: CreateTopicsResponse = self.decode(api, v, body)?;
        let code = response.topics.first().map_or(-1, |t| t.error_code);
        self.check(api, code)
    }

    fn metadata(&mut self) -> Result<(), ReplayError> {
        let (api, v) = (ApiKey::Metadata, METADATA_VERSION);
        let mut topic = MetadataRequestTopic::default();
        topic.name = Some(topic_name());
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![topic]);
        let body = self.call(api, v, &request)?;
        let response: MetadataResponse = self.decode(api, v, body)?;
        let code = response.topics.first().map_or(-1, |t| t.error_code);
        self.check(api, code)
    }

    /// Produces one batch (acks=1) and returns its base offset.
    fn produce(&mut self, records: Bytes) -> Result<i64, ReplayError> {
        let (api, v) = (ApiKey::Produce, PRODUCE_VERSION);
        let mut partition = PartitionProduceData::default();
        partition.index = 0;
        partition.records = Some(records);
        let mut topic = TopicProduceData::default();
        topic.name = topic_name();
        topic.partition_data = vec![partition];
        let mut request = ProduceRequest::default();
        request.acks = 1;
        request.timeout_ms = 30_000;
        request.topic_data = vec![topic];
        let body = self.call(api, v, &request)?;
        let response: ProduceResponse = self.decode(api, v, body)?;
        let answer = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first());
        let Some(answer) = answer else {
            return self.check(api, -1).map(|()| 0);
        };
        self.check(api, answer.error_code)?;
        Ok(answer.base_offset)
    }

    /// Fetches from `offset` without waiting; returns how many records came back.
    fn fetch(&mut self, offset: i64) -> Result<u64, ReplayError> {
        let (api, v) = (ApiKey::Fetch, FETCH_VERSION);
        let mut partition = FetchPartition::default();
        partition.partition = 0;
        partition.fetch_offset = offset;
        partition.partition_max_bytes = 1 << 20;
        let mut topic = FetchTopic::default();
        topic.topic = topic_name();
        topic.partitions = vec![partition];
        let mut request = FetchRequest::default();
        request.replica_id = (-1).into();
        request.max_wait_ms = 0;
        request.min_bytes = 1;
        request.max_bytes = 1 << 20;
        request.topics = vec![topic];
        let body = self.call(api, v, &request)?;
        let response: FetchResponse = self.decode(api, v, body)?;
        let Some(data) = response
            .responses
            .first()
            .and_then(|t| t.partitions.first())
        else {
            return self.check(api, -1).map(|()| 0);
        };
        self.check(api, data.error_code)?;
        let mut records = data.records.clone().unwrap_or_default();
        let mut count = 0;
        while !records.is_empty() {
            let batch =
                kafka_protocol::records::RecordBatchDecoder::decode(&mut records).map_err(|e| {
                    ReplayError::Decode {
                        index: self.sent - 1,
                        api,
                        detail: format!("record batch: {e}"),
                    }
                })?;
            count += batch.records.len() as u64;
        }
        Ok(count)
    }
}

fn frame<R: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = api as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("chronik-replay"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, R::header_version(version))
        .expect("request headers always encode");
    body.encode(&mut buf, version)
        .expect("the stream's requests always encode");
    let mut framed = Vec::with_capacity(4 + buf.len());
    framed.put_i32(buf.len() as i32);
    framed.extend_from_slice(&buf);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_count_counts_every_request() {
        let shape = StreamShape::seed(128);
        assert_eq!(shape.request_count(), 3 + 128 + 32 + 2);
        assert_eq!(shape.messages(), 128 * 16);
    }

    #[test]
    fn the_same_shape_encodes_the_same_bytes() {
        // Built twice from scratch: nothing in a request may depend on when it was made.
        let encode = || {
            let mut p = PartitionProduceData::default();
            p.records = Some(record_batch(StreamShape::seed(1)));
            let mut t = TopicProduceData::default();
            t.partition_data = vec![p];
            let mut r = ProduceRequest::default();
            r.topic_data = vec![t];
            frame(ApiKey::Produce, PRODUCE_VERSION, 7, &r)
        };
        let (a, b) = (encode(), encode());
        assert_eq!(a, b);
        assert!(a.len() > 16 * 256, "16 records of 256 B: {} B", a.len());
    }
}
