//! A bounded, seeded fuzz loop against the real binary: for every (API, version) the broker
//! advertises, frames with random bodies and with lengths and counts mutated from valid
//! requests (i32::MAX, -2, the bytes remaining + 1, huge varints, truncations). The broker must
//! never die, a healthy client on its own connection must be served all along, and its memory
//! must stay bounded.
//!
//! The CI run tries `DEFAULT_FRAMES`; a night run is one command with more (and another seed):
//! `CHRONIK_FUZZ_FRAMES=200000 CHRONIK_FUZZ_SEED=7 cargo test --release -p chronik-broker --test hostile_frames`

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::wire::{api_versions, assert_healthy, raw_frame, read_frame, rss_kib};
use common::{env_u64, Broker, Rng};
use kafka_protocol::messages::*;

/// Frames tried in the CI run (spread over every advertised API version).
const DEFAULT_FRAMES: u64 = 6_000;
const DEFAULT_SEED: u64 = 0x5eed_f00d;
/// A hostile frame that is a valid request may be answered late (a long-poll fetch, a group
/// join): the loop does not wait longer than this for it.
const ANSWER_WAIT: Duration = Duration::from_millis(250);
/// The broker's peak resident set may not pass this during the loop. Its idle RSS is about
/// 12 MiB; hostile frames here are at most a few hundred bytes, so anything near this bound
/// means a count off the wire sized an allocation.
const PEAK_RSS_BOUND_KIB: u64 = 256 * 1024;
/// The healthy client's pause between round trips.
const HEALTHY_INTERVAL: Duration = Duration::from_millis(20);

/// A valid (default) request of `api`, the starting point for mutations.
fn default_request(api: ApiKey) -> Option<RequestKind> {
    Some(match api {
        ApiKey::Produce => RequestKind::Produce(Default::default()),
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        _ => return None,
    })
}

/// A request with one element in each array the mutations should reach (a topic, a partition,
/// a record batch), so counts inside nested arrays get mutated too.
fn populated_request(api: ApiKey) -> Option<RequestKind> {
    let topic =
        |name: &str| TopicName(kafka_protocol::protocol::StrBytes::from_string(name.into()));
    Some(match api {
        ApiKey::Produce => {
            let mut partition = produce_request::PartitionProduceData::default();
            partition.records = Some(bytes::Bytes::from_static(&[0u8; 70]));
            let mut t = produce_request::TopicProduceData::default();
            t.name = topic("fuzz");
            t.partition_data = vec![partition];
            let mut r = ProduceRequest::default();
            r.acks = 1;
            r.timeout_ms = 100;
            r.topic_data = vec![t];
            RequestKind::Produce(r)
        }
        ApiKey::Fetch => {
            let mut t = fetch_request::FetchTopic::default();
            t.topic = topic("fuzz");
            t.partitions = vec![fetch_request::FetchPartition::default()];
            let mut r = FetchRequest::default();
            r.max_wait_ms = 10;
            r.max_bytes = 1 << 20;
            r.topics = vec![t];
            RequestKind::Fetch(r)
        }
        ApiKey::Metadata => {
            let mut t = metadata_request::MetadataRequestTopic::default();
            t.name = Some(topic("fuzz"));
            let mut r = MetadataRequest::default();
            r.topics = Some(vec![t]);
            RequestKind::Metadata(r)
        }
        ApiKey::CreateTopics => {
            let mut t = create_topics_request::CreatableTopic::default();
            t.name = topic("fuzz");
            t.num_partitions = 1;
            t.replication_factor = 1;
            let mut r = CreateTopicsRequest::default();
            r.topics = vec![t];
            r.timeout_ms = 100;
            RequestKind::CreateTopics(r)
        }
        ApiKey::JoinGroup => {
            let mut p = join_group_request::JoinGroupRequestProtocol::default();
            p.name = kafka_protocol::protocol::StrBytes::from_static_str("range");
            p.metadata = bytes::Bytes::from_static(&[0, 1, 0, 0]);
            let mut r = JoinGroupRequest::default();
            r.group_id = GroupId(kafka_protocol::protocol::StrBytes::from_static_str("g"));
            r.session_timeout_ms = 100;
            r.rebalance_timeout_ms = 100;
            r.protocol_type = kafka_protocol::protocol::StrBytes::from_static_str("consumer");
            r.protocols = vec![p];
            RequestKind::JoinGroup(r)
        }
        _ => return default_request(api),
    })
}

fn encode(request: &RequestKind, version: i16) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    request.encode(&mut buf, version).ok()?;
    Some(buf.to_vec())
}

/// Unsigned varint encoding (the compact-array and compact-string length form).
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// One hostile body derived from `valid` (or pure noise when there is none).
fn mutate(valid: Option<&[u8]>, rng: &mut Rng) -> Vec<u8> {
    let Some(valid) = valid.filter(|v| !v.is_empty()) else {
        return (0..rng.index(300)).map(|_| rng.next() as u8).collect();
    };
    let mut body = valid.to_vec();
    let at = rng.index(body.len());
    let remaining = (body.len() - at) as i64;
    match rng.index(6) {
        // A 32-bit length or count overwritten with a value no honest peer sends.
        0 => {
            let hostile = [
                i32::MAX as i64,
                0x7fff_fff0,
                -2,
                -1,
                remaining + 1,
                remaining * 1000,
            ][rng.index(6)] as i32;
            let end = (at + 4).min(body.len());
            body.splice(at..end, hostile.to_be_bytes());
        }
        // A varint length or count (flexible versions) that claims far more than is there.
        1 => {
            let hostile =
                [u32::MAX as u64, 0x7fff_fff0, remaining as u64 + 2, 1 << 28][rng.index(4)];
            let end = (at + 1).min(body.len());
            body.splice(at..end, varint(hostile));
        }
        // A 16-bit string length.
        2 => {
            let hostile = [i16::MAX, -2, remaining as i16 + 1][rng.index(3)];
            let end = (at + 2).min(body.len());
            body.splice(at..end, hostile.to_be_bytes());
        }
        // A few random bytes.
        3 => {
            for _ in 0..1 + rng.index(4) {
                let i = rng.index(body.len());
                body[i] = rng.next() as u8;
            }
        }
        // Cut short.
        4 => body.truncate(at),
        // Noise of the same size.
        _ => body.iter_mut().for_each(|b| *b = rng.next() as u8),
    }
    body
}

/// A client that keeps doing ApiVersions round trips on fresh connections while the fuzz runs;
/// counts the ones that failed.
fn healthy_client(addr: SocketAddr, stop: Arc<AtomicBool>, failures: Arc<AtomicU64>) -> u64 {
    let mut served = 0;
    let mut correlation = 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        correlation += 1;
        let ok = std::panic::catch_unwind(|| api_versions(addr, correlation).error_code == 0);
        if ok.unwrap_or(false) {
            served += 1;
        } else {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(HEALTHY_INTERVAL);
    }
    served
}

#[test]
fn hostile_frames_for_every_advertised_api_never_take_the_broker_down() {
    let frames = env_u64("CHRONIK_FUZZ_FRAMES", DEFAULT_FRAMES);
    let seed = env_u64("CHRONIK_FUZZ_SEED", DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr;
    let advertised: Vec<(ApiKey, i16)> = api_versions(addr, 1)
        .api_keys
        .iter()
        .flat_map(|k| {
            let api = ApiKey::try_from(k.api_key).expect("a known API");
            (k.min_version..=k.max_version).map(move |v| (api, v))
        })
        .collect();
    assert!(advertised.len() > 50, "{advertised:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let healthy = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || healthy_client(addr, stop, failures))
    };

    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let (mut answered, mut refused) = (0u64, 0u64);
    for case in 0..frames {
        let (api, version) = advertised[case as usize % advertised.len()];
        let valid = match rng.index(2) {
            0 => default_request(api),
            _ => populated_request(api),
        }
        .and_then(|r| encode(&r, version));
        let body = mutate(valid.as_deref(), &mut rng);
        let raw = raw_frame(api, version, case as i32, &body);
        let died = |broker: &mut Broker| {
            broker.exited().map(|status| {
                format!("the broker died ({status}) at or before case {case} ({api:?} v{version}, seed {seed}): body {body:02x?}")
            })
        };
        let Ok(mut s) = TcpStream::connect(addr) else {
            panic!(
                "{}",
                died(&mut broker).unwrap_or_else(|| format!("connection refused at case {case}"))
            );
        };
        s.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
        let _ = s.write_all(&raw);
        match read_frame(&mut s) {
            Some(_) => answered += 1,
            None => refused += 1,
        }
        drop(s);
        if case % 100 == 0 || case + 1 == frames {
            if let Some(reason) = died(&mut broker) {
                panic!("{reason}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let served = healthy.join().unwrap();
    let (rss, peak) = rss_kib(broker.pid());
    eprintln!(
        "{frames} hostile frames (seed {seed}) over {} API versions in {:.1} s: {answered} answered, {refused} closed or unanswered; healthy client served {served} times; broker RSS {} KiB, peak {} KiB",
        advertised.len(),
        started.elapsed().as_secs_f64(),
        rss,
        peak
    );
    assert!(broker.exited().is_none(), "the broker died (seed {seed})");
    assert_healthy(addr);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the healthy client was refused"
    );
    assert!(served > 0);
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {peak} KiB passed the bound of {PEAK_RSS_BOUND_KIB} KiB (seed {seed})"
    );
}

/// The frame this loop was written for: Metadata v4 whose topic array claims 0x7ffffff0
/// elements in a 19-byte request. It once made the broker ask for 67 GB and abort.
#[test]
fn a_metadata_request_claiming_two_billion_topics_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let mut s = common::wire::connect(broker.addr);
    s.write_all(&raw_frame(
        ApiKey::Metadata,
        4,
        1,
        &[0x7f, 0xff, 0xff, 0xf0, 1],
    ))
    .unwrap();
    assert!(
        common::wire::closed(&mut s),
        "a malformed request closes its connection"
    );
    assert!(broker.exited().is_none());
    assert_healthy(broker.addr);
}
