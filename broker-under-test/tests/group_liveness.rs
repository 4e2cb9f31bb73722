//! A member that goes away without LeaveGroup (kill -9, a lost host) must not hold its group:
//! the coordinator expires it after its session timeout, also in the middle of a rebalance, and
//! the rebalance completes without it. The departed member speaks the protocol over a raw socket
//! (join, sync, then silence, as a killed process leaves it); the survivors are rdkafka consumers.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::wire::{connect, frame, read_frame};
use common::Broker;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, GroupId, JoinGroupRequest, JoinGroupResponse, ResponseHeader, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// The departed member's session timeout, as a client that set `session.timeout.ms=6000` sends.
const SESSION_TIMEOUT_MS: i32 = 6_000;
/// Its rebalance timeout: librdkafka's default `max.poll.interval.ms`. The coordinator once
/// waited this long (or longer) for a dead member.
const REBALANCE_TIMEOUT_MS: i32 = 300_000;
/// Session timeout plus time for a heartbeat to notice and a rebalance to complete.
const TAKEOVER_BOUND: Duration = Duration::from_secs(16);
const PARTITIONS: i32 = 4;
const JOIN_GROUP_VERSION: i16 = 5;
const SYNC_GROUP_VERSION: i16 = 3;

/// ConsumerProtocolSubscription v0 for one topic (what the leader's assignor reads).
fn subscription(topic: &str) -> Bytes {
    let mut b = vec![0, 0, 0, 0, 0, 1];
    b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(b)
}

/// A member that joins and syncs over a raw connection, then goes silent (its socket stays
/// open, as a killed process's may until the kernel notices). Blocks until its sync completes.
fn join_then_go_silent(addr: SocketAddr, group: &str, topic: &str) -> TcpStream {
    join_and_sync(addr, group, topic).0
}

/// Joins and syncs over a raw connection: the connection, the member id and the generation.
fn join_and_sync(addr: SocketAddr, group: &str, topic: &str) -> (TcpStream, String, i32) {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut protocol = JoinGroupRequestProtocol::default();
    protocol.name = StrBytes::from_static_str("range");
    protocol.metadata = subscription(topic);
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    join.session_timeout_ms = SESSION_TIMEOUT_MS;
    join.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
    join.protocol_type = StrBytes::from_static_str("consumer");
    join.protocols = vec![protocol];
    s.write_all(&frame(ApiKey::JoinGroup, JOIN_GROUP_VERSION, 1, &join))
        .unwrap();
    let mut body = read_frame(&mut s).expect("join answered");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let joined = JoinGroupResponse::decode(&mut body, JOIN_GROUP_VERSION).unwrap();
    assert_eq!(joined.error_code, 0, "join");
    let mut sync = SyncGroupRequest::default();
    sync.group_id = join.group_id.clone();
    sync.generation_id = joined.generation_id;
    sync.member_id = joined.member_id.clone();
    if joined.leader == joined.member_id {
        // Alone in the group: the leader assigns itself nothing, which is enough to hold it.
        let mut mine = SyncGroupRequestAssignment::default();
        mine.member_id = joined.member_id.clone();
        sync.assignments = vec![mine];
    }
    s.write_all(&frame(ApiKey::SyncGroup, SYNC_GROUP_VERSION, 2, &sync))
        .unwrap();
    let mut body = read_frame(&mut s).expect("sync answered");
    ResponseHeader::decode(&mut body, 0).unwrap();
    let synced = SyncGroupResponse::decode(&mut body, SYNC_GROUP_VERSION).unwrap();
    assert_eq!(synced.error_code, 0, "sync");
    (s, joined.member_id.to_string(), joined.generation_id)
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "500")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

/// Polls until the consumer owns `want` partitions; returns how long that took.
fn wait_for_partitions(consumer: &BaseConsumer, want: usize, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let owned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if owned == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "owns {owned} of {want} partitions after {:?}",
            started.elapsed()
        );
    }
}

/// Creates the topic (auto-created with `--default-partitions`) with a few messages in it.
fn create_topic(broker: &Broker, topic: &str) {
    let producer = common::producer(&broker.bootstrap(), &[]);
    common::produce_all(&producer, topic, Some(0), &common::values("m", 10));
}

fn commit(consumer: &BaseConsumer, topic: &str, partition: i32, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

fn committed(consumer: &BaseConsumer, topic: &str, partition: i32) -> Offset {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, common::CLIENT_TIMEOUT)
        .expect("committed offsets");
    got.find_partition(topic, partition).unwrap().offset()
}

#[test]
fn a_killed_members_partitions_go_to_the_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let partitions = PARTITIONS.to_string();
    let broker = Broker::start(dir.path(), &["--default-partitions", &partitions]);
    let (topic, group) = ("liveness", "survivors");
    create_topic(&broker, topic);
    let survivor = consumer(&broker.bootstrap(), group);
    survivor.subscribe(&[topic]).unwrap();
    wait_for_partitions(&survivor, PARTITIONS as usize, Duration::from_secs(30));
    commit(&survivor, topic, 0, 7);

    // A second member joins (the survivor rejoins for it, keeps half), then dies.
    let addr = broker.addr;
    let joining = std::thread::spawn(move || join_then_go_silent(addr, group, topic));
    while !joining.is_finished() {
        let _ = survivor.poll(Duration::from_millis(100));
    }
    let _silent = joining.join().unwrap();
    wait_for_partitions(&survivor, PARTITIONS as usize / 2, Duration::from_secs(30));

    let took = wait_for_partitions(&survivor, PARTITIONS as usize, TAKEOVER_BOUND);
    eprintln!("the survivor owned every partition {took:?} after the other member went silent");
    assert_eq!(committed(&survivor, topic, 0), Offset::Offset(7));
}

#[test]
fn a_new_member_joins_a_group_whose_only_member_was_killed() {
    let dir = tempfile::tempdir().unwrap();
    let partitions = PARTITIONS.to_string();
    let broker = Broker::start(dir.path(), &["--default-partitions", &partitions]);
    let (topic, group) = ("liveness", "orphaned");
    create_topic(&broker, topic);
    // A standalone commit before any member (generation -1), then the member that dies.
    let setup = consumer(&broker.bootstrap(), group);
    commit(&setup, topic, 1, 3);
    drop(setup);
    let _silent = join_then_go_silent(broker.addr, group, topic);

    let newcomer = consumer(&broker.bootstrap(), group);
    newcomer.subscribe(&[topic]).unwrap();
    let took = wait_for_partitions(&newcomer, PARTITIONS as usize, TAKEOVER_BOUND);
    eprintln!("the new member owned every partition after {took:?}");
    assert_eq!(committed(&newcomer, topic, 1), Offset::Offset(3));
}

/// OffsetCommit v2 of one offset; the partition's error code.
fn raw_commit(addr: SocketAddr, group: &str, member: &str, generation: i32, offset: i64) -> i16 {
    common::wire::commit_offset_as(addr, (group, member, generation), ("liveness", 0), offset)
}

#[test]
fn offset_commits_from_outside_the_current_generation_are_refused() {
    const ILLEGAL_GENERATION: i16 = 22;
    const UNKNOWN_MEMBER_ID: i16 = 25;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let (topic, group) = ("liveness", "strict");
    create_topic(&broker, topic);
    let (_member, id, generation) = join_and_sync(broker.addr, group, topic);
    assert_eq!(
        raw_commit(broker.addr, group, &id, generation + 1, 5),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        raw_commit(broker.addr, group, "nobody", generation, 5),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        raw_commit(broker.addr, group, "", -1, 5),
        UNKNOWN_MEMBER_ID,
        "a standalone commit while the group has members"
    );
    assert_eq!(raw_commit(broker.addr, group, &id, generation, 9), 0);
    let reader = consumer(&broker.bootstrap(), group);
    assert_eq!(
        committed(&reader, topic, 0),
        Offset::Offset(9),
        "only the member's commit stored"
    );
}

/// A member from before a broker restart cannot commit as the member that joins after it: its
/// member id is unknown to the new broker process, though the new member's generation may be
/// the same number (generations restart with the group).
#[test]
fn a_member_from_before_a_restart_cannot_commit_after_it() {
    const UNKNOWN_MEMBER_ID: i16 = 25;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let (topic, group) = ("liveness", "restarted");
    create_topic(&broker, topic);
    let (_old, old_id, old_generation) = join_and_sync(broker.addr, group, topic);
    broker.kill9();
    broker.restart();
    let (_new, new_id, new_generation) = join_and_sync(broker.addr, group, topic);
    assert_ne!(old_id, new_id, "member ids are not reused across a restart");
    assert_eq!(
        raw_commit(broker.addr, group, &old_id, old_generation, 5),
        UNKNOWN_MEMBER_ID,
        "the old member (generation {old_generation}; the new one has {new_generation})"
    );
    assert_eq!(
        raw_commit(broker.addr, group, &new_id, new_generation, 7),
        0
    );
}
