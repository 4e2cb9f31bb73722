//! What a client can make the broker hold is bounded by what the broker chooses, not by what the
//! client declares: slow half-sent frames, idle connections, too many connections, a fetch that
//! names one partition thousands of times, and a fetch that asks for every byte stored.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::wire::{assert_healthy, closed, connect, frame, read_frame, rss_kib};
use common::Broker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};

/// Half-sent frames in the attack (fewer when this process may not open that many sockets).
const SLOW_FRAMES: usize = 2_000;
/// What each slow frame declares and what it really sends.
const DECLARED_BYTES: i32 = 1 << 20;
const SENT_BYTES: usize = 10;
/// The broker's resident set may not pass this during the attack (2,000 x 1 MiB declared would
/// be 2 GiB if frames were allocated from their header, as they once were).
const ATTACK_RSS_BOUND_KIB: u64 = 160 * 1024;
/// After the attackers leave, the broker is back near its idle size (about 10 MiB).
const AFTER_RSS_BOUND_KIB: u64 = 64 * 1024;

/// File descriptors this process may open (soft limit), from /proc.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

#[test]
fn slow_half_sent_frames_neither_starve_a_producer_nor_hold_memory() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let bootstrap = broker.bootstrap();
    // The healthy client connects first, as a running application would have.
    let producer = common::producer(&bootstrap, &[]);
    common::produce_all(&producer, "steady", None, &common::values("before", 100));

    // One whole frame of the declared size first: once the allocator has freed a block that
    // large, it serves the next ones from its heap (glibc raises its mmap threshold), where a
    // pre-allocated, zeroed frame buffer is resident memory.
    let mut whole = connect(broker.addr);
    let mut garbage = DECLARED_BYTES.to_be_bytes().to_vec();
    garbage.resize(4 + DECLARED_BYTES as usize, 0xee);
    whole.write_all(&garbage).unwrap();
    assert!(closed(&mut whole), "a garbage frame closes its connection");

    // Both this process and the broker (which inherits the limit) need a socket per frame.
    let attackers = SLOW_FRAMES.min(open_files_limit().saturating_sub(300));
    let mut slow = Vec::with_capacity(attackers);
    let mut prefix = DECLARED_BYTES.to_be_bytes().to_vec();
    prefix.extend_from_slice(&[0u8; SENT_BYTES]);
    for _ in 0..attackers {
        let mut s = connect(broker.addr);
        s.write_all(&prefix).unwrap();
        slow.push(s);
    }
    // The producer is served while every slow frame is held open.
    common::produce_all(&producer, "steady", None, &common::values("during", 500));
    assert_healthy(broker.addr);
    let (during, _) = rss_kib(broker.pid());
    eprintln!(
        "{attackers} slow frames of {DECLARED_BYTES} declared bytes: broker RSS {during} KiB"
    );
    assert!(
        during < ATTACK_RSS_BOUND_KIB,
        "RSS {during} KiB under {attackers} slow frames"
    );

    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let (rss, _) = rss_kib(broker.pid());
        if rss < AFTER_RSS_BOUND_KIB || Instant::now() > deadline {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("after the slow frames closed: broker RSS {after} KiB");
    assert!(
        after < AFTER_RSS_BOUND_KIB,
        "RSS {after} KiB after the attack"
    );
    let got = common::consume_partition(&bootstrap, "steady", 0, 600);
    assert_eq!(
        got.len(),
        600,
        "every message produced before and during the attack"
    );
}

#[test]
fn idle_connections_are_closed_and_the_connection_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &["--connections-max-idle-ms=500", "--max-connections=4"],
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect(broker.addr)).collect();
    // Accepted while four are open: closed at once, before it can send anything.
    let mut extra = connect(broker.addr);
    assert!(closed(&mut extra), "a fifth connection is refused");
    // Idle ones are closed after the idle limit (well within the 10 s read timeout).
    let started = Instant::now();
    for s in &mut held {
        let mut byte = [0u8; 1];
        assert!(matches!(s.read(&mut byte), Ok(0) | Err(_)));
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    // Their slots are free again.
    std::thread::sleep(Duration::from_millis(200));
    assert_healthy(broker.addr);
}

#[test]
fn a_fetch_naming_one_partition_many_times_stays_within_its_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let big = "x".repeat(100_000);
    let producer = common::producer(&broker.bootstrap(), &[]);
    common::produce_all(&producer, "wide", None, &[big.clone(), big.clone(), big]);

    const ENTRIES: usize = 20_000;
    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = 0;
    partition.partition_max_bytes = 1 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(StrBytes::from_static_str("wide"));
    topic.partitions = vec![partition; ENTRIES];
    let mut request = FetchRequest::default();
    request.replica_id = (-1).into();
    request.max_bytes = 1;
    request.min_bytes = 1;
    request.topics = vec![topic];
    let mut s = connect(broker.addr);
    s.write_all(&frame(ApiKey::Fetch, 11, 5, &request)).unwrap();
    let response = read_frame(&mut s).expect("fetch answered");
    // One batch (KIP-74: the first may exceed max_bytes) plus a header per entry (about 70
    // bytes in v11); once every entry got its own 100 KB batch: 2 GB.
    const ENTRY_HEADER_BYTES_MAX: usize = 128;
    let bound = 100_000 + 1_000 + ENTRIES * ENTRY_HEADER_BYTES_MAX;
    assert!(
        response.len() < bound,
        "response of {} bytes for max_bytes=1",
        response.len()
    );
}

/// Sockets on `port` (the broker's side) in CLOSE_WAIT: the client closed, the broker has not.
fn close_wait_sockets(port: u16) -> usize {
    const TCP_CLOSE_WAIT: &str = "08";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[1].ends_with(&format!(":{port:04X}"))
                && fields[3] == TCP_CLOSE_WAIT
        })
        .count()
}

#[test]
fn a_long_poll_whose_client_left_stops_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    common::wire::create_topic(broker.addr, "quiet", 1);
    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = 0;
    partition.partition_max_bytes = 1 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(StrBytes::from_static_str("quiet"));
    topic.partitions = vec![partition];
    let mut request = FetchRequest::default();
    request.replica_id = (-1).into();
    request.max_wait_ms = 30_000;
    request.min_bytes = 1;
    request.max_bytes = 1 << 20;
    request.topics = vec![topic];
    let mut s = connect(broker.addr);
    s.write_all(&frame(ApiKey::Fetch, 11, 9, &request)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    // The empty partition would hold the fetch for 30 s; the broker lets it go at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while close_wait_sockets(broker.addr.port()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the broker still holds the connection of a client that left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn topics_stop_at_the_partition_limit() {
    const POLICY_VIOLATION: i16 = 44;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--max-partitions=3"]);
    assert_eq!(common::wire::create_topic(broker.addr, "first", 2), 0);
    assert_eq!(
        common::wire::create_topic(broker.addr, "second", 2),
        POLICY_VIOLATION,
        "four partitions in all would pass the limit of three"
    );
    assert_eq!(common::wire::create_topic(broker.addr, "third", 1), 0);
}

/// A Fetch that asks for every byte (max_bytes and partition_max_bytes 2^31-1) gets at most the
/// broker's `--fetch-max-bytes` (plus the first batch, KIP-74): what one response holds in
/// memory is the broker's choice, not a function of the data stored.
#[test]
fn a_fetch_asking_for_everything_gets_at_most_the_brokers_cap() {
    const FETCH_CAP_BYTES: usize = 1 << 20;
    const BATCH_VALUES: usize = 100;
    const VALUE_BYTES: usize = 1_000;
    const BATCHES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &[
            "--batch-bytes-max=262144",
            &format!("--fetch-max-bytes={FETCH_CAP_BYTES}"),
        ],
    );
    assert_eq!(common::wire::create_topic(broker.addr, "everything", 1), 0);
    for _ in 0..BATCHES {
        let batch = common::wire::record_batch(BATCH_VALUES, VALUE_BYTES);
        assert_eq!(common::wire::produce(broker.addr, "everything", batch), 0);
    }
    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = 0;
    partition.partition_max_bytes = i32::MAX;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(StrBytes::from_static_str("everything"));
    topic.partitions = vec![partition];
    let mut request = FetchRequest::default();
    request.replica_id = (-1).into();
    request.max_bytes = i32::MAX;
    request.min_bytes = 1;
    request.topics = vec![topic];
    let mut s = connect(broker.addr);
    s.write_all(&frame(ApiKey::Fetch, 11, 7, &request)).unwrap();
    let mut body = read_frame(&mut s).expect("fetch answered");
    ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(11)).unwrap();
    let response = FetchResponse::decode(&mut body, 11).unwrap();
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.error_code, 0);
    let records = data.records.as_ref().map_or(0, |r| r.len());
    let stored = BATCHES * BATCH_VALUES * VALUE_BYTES;
    let one_batch = BATCH_VALUES * (VALUE_BYTES + 16) + 61;
    assert!(records > 0, "the fetch makes progress");
    assert!(
        records <= FETCH_CAP_BYTES + one_batch,
        "{records} record bytes in one response (cap {FETCH_CAP_BYTES}, {stored} stored)"
    );
}

/// JoinGroup v5 with `metadata_bytes` of protocol metadata, sent on a new connection whose
/// answer is not read (the join parks until the group's rebalance ends).
fn send_join(
    addr: std::net::SocketAddr,
    group: &str,
    session_timeout_ms: i32,
    metadata_bytes: usize,
) -> TcpStream {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::{GroupId, JoinGroupRequest};
    let mut protocol = JoinGroupRequestProtocol::default();
    protocol.name = StrBytes::from_static_str("range");
    protocol.metadata = vec![7u8; metadata_bytes].into();
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    join.session_timeout_ms = session_timeout_ms;
    join.rebalance_timeout_ms = session_timeout_ms;
    join.protocol_type = StrBytes::from_static_str("consumer");
    join.protocols = vec![protocol];
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::JoinGroup, 5, 1, &join)).unwrap();
    s
}

/// Joins that park waiting for a rebalance return their request bytes to the broker's budget
/// once they have copied their metadata: here 20 parked joins of 1 MB each, more than the whole
/// 16 MiB budget, and a producer is still served at once. Once, the budget stayed with each
/// join for its whole wait and every producer stalled until the rebalance ended (about 60 s
/// with nine 16 MB joins). A join with more than 1 MiB of metadata is refused outright.
#[test]
fn parked_joins_leave_the_request_budget_to_producers() {
    const JOINS: usize = 20;
    const METADATA_BYTES: usize = 1_000_000;
    const BUDGET_BYTES: usize = 16 << 20;
    /// The silent first member holds the rebalance open this long (its session timeout).
    const PARKED_MS: i32 = 40_000;
    const PRODUCE_BOUND: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &[&format!("--queued-max-request-bytes={BUDGET_BYTES}")],
    );
    assert_eq!(common::wire::create_topic(broker.addr, "steady", 1), 0);

    // The first member joins alone (its join completes at once), then never answers again.
    let mut first = send_join(broker.addr, "parked", PARKED_MS, 100);
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    read_frame(&mut first).expect("the first member's join is answered");

    let parked: Vec<TcpStream> = (0..JOINS)
        .map(|_| send_join(broker.addr, "parked", PARKED_MS, METADATA_BYTES))
        .collect();
    // Give the broker time to read them all (or to run out of budget trying).
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    let produced = common::wire::produce(broker.addr, "steady", common::wire::record_batch(1, 10));
    let took = started.elapsed();
    assert_eq!(produced, 0);
    assert!(
        took < PRODUCE_BOUND,
        "a produce behind {JOINS} parked joins of {METADATA_BYTES} bytes took {took:?}"
    );
    drop(parked);

    // Over the bound: refused at once with INVALID_REQUEST, never parked.
    const INVALID_REQUEST: i16 = 42;
    let mut big = send_join(broker.addr, "parked", PARKED_MS, (1 << 20) + 1);
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut body = read_frame(&mut big).expect("an oversized join is answered");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let answer = kafka_protocol::messages::JoinGroupResponse::decode(&mut body, 5).unwrap();
    assert_eq!(answer.error_code, INVALID_REQUEST);
}
