//! What a client can make the broker hold is bounded by what the broker chooses, not by what the
//! client declares: slow half-sent frames, idle connections, too many connections, and a fetch
//! that names one partition thousands of times.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::wire::{assert_healthy, closed, connect, frame, read_frame, rss_kib};
use common::Broker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

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
