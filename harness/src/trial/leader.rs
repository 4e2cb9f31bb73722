//! Which broker leads a partition, asked with a Metadata request over the Kafka protocol, so a
//! failover workload can kill the leader of any Kafka-compatible broker under test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

/// Metadata v4: leader ids per partition, and a version every Kafka-compatible broker speaks.
const METADATA_VERSION: i16 = 4;
/// A Metadata answer larger than this is not one (a topic of a few partitions).
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// The broker id leading `topic`-`partition`, as the first of `brokers` that answers within
/// `timeout` reports it.
pub fn leader_of(
    brokers: &[SocketAddr],
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<i32, String> {
    let mut errors = Vec::new();
    for addr in brokers {
        match ask(*addr, topic, partition, timeout) {
            Ok(leader) if leader >= 0 => return Ok(leader),
            Ok(_) => errors.push(format!("{addr}: no leader")),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "no broker named the leader of {topic}-{partition}: {}",
        errors.join("; ")
    ))
}

fn ask(addr: SocketAddr, topic: &str, partition: i32, timeout: Duration) -> Result<i32, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(&request(topic)?).map_err(io)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io)?;
    let len = usize::try_from(i32::from_be_bytes(len)).map_err(|e| e.to_string())?;
    if len > RESPONSE_BYTES_MAX {
        return Err(format!("a {len}-byte Metadata response"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(io)?;
    let mut body = Bytes::from(body);
    ResponseHeader::decode(
        &mut body,
        MetadataResponse::header_version(METADATA_VERSION),
    )
    .map_err(|e| e.to_string())?;
    let response =
        MetadataResponse::decode(&mut body, METADATA_VERSION).map_err(|e| e.to_string())?;
    response
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition)
        .map(|p| p.leader_id.0)
        .ok_or_else(|| format!("{topic}-{partition} is not in its metadata"))
}

/// A length-prefixed Metadata request for one topic.
fn request(topic: &str) -> Result<Vec<u8>, String> {
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Metadata as i16;
    header.request_api_version = METADATA_VERSION;
    header.correlation_id = 1;
    header.client_id = Some(StrBytes::from_static_str("chronik-harness"));
    let mut wanted = MetadataRequestTopic::default();
    wanted.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![wanted]);
    request.allow_auto_topic_creation = false;
    let mut encoded = BytesMut::new();
    header
        .encode(
            &mut encoded,
            MetadataRequest::header_version(METADATA_VERSION),
        )
        .map_err(|e| e.to_string())?;
    request
        .encode(&mut encoded, METADATA_VERSION)
        .map_err(|e| e.to_string())?;
    let mut framed = BytesMut::with_capacity(4 + encoded.len());
    framed.put_u32(u32::try_from(encoded.len()).map_err(|e| e.to_string())?);
    framed.put_slice(&encoded);
    Ok(framed.to_vec())
}
