//! Failover by the controller quorum, with real broker processes and rdkafka clients: a
//! killed leader is replaced by an in-sync follower with no person involved and no acked
//! write lost; after a double fault (the leader killed, then the follower that took over and
//! acked writes alone) the former leader restarted alone does not lead, and the partition
//! waits for the one broker that holds every acked write; a follower cut off from its leader
//! and then the leader killed: the follower is not elected; a client posing as a follower
//! (no replica, a fenced broker, a registered one without its current broker epoch) is
//! refused; a leader cut off from the quorum while clients still reach it acknowledges
//! nothing more at acks=all and serves nothing past what the quorum's in-sync set holds;
//! topics created at once through every broker end with one id everywhere.
//!
//! Four brokers, the first three voters: the double fault takes down two brokers of which at
//! most one is a voter, so the quorum survives it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::quorum::{image, placement, unfenced, wait_for, Placement, STATE_WAIT};
use common::wire::{connect, fetch_as, fetch_as_at_epoch};
use common::{values, TestCluster};
use kafka_protocol::error::ResponseError;

const SESSION_TIMEOUT_MS: u64 = 3_000;
const BROKERS: usize = 4;
const VOTERS: usize = 3;
/// The broker that is no voter.
const NOT_A_VOTER: i64 = 4;
const ACKS_ALL: [(&str, &str); 1] = [("acks", "all")];

fn start(root: &Path) -> TestCluster {
    let session = format!("--broker-session-timeout-ms={SESSION_TIMEOUT_MS}");
    TestCluster::start_with_voters(
        root,
        BROKERS,
        VOTERS,
        &[
            &session,
            "--broker-heartbeat-interval-ms=300",
            "--default-replication-factor=2",
        ],
    )
}

/// A topic name (from `prefix`) whose partition 0's two replicas (leader first) are `wanted`.
fn topic_where(cluster: &TestCluster, prefix: &str, wanted: impl Fn(&[i32]) -> bool) -> String {
    let text = std::fs::read_to_string(&cluster.file).expect("cluster file");
    let layout = chronik_broker::cluster::Cluster::parse(&text, 1).expect("cluster file");
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|t| wanted(&layout.replicas(t, 0, 2)))
        .expect("some name")
}

/// A topic whose replicas include the broker that is no voter: killing both replicas then
/// leaves a quorum of voters.
fn topic_beside_the_voters(cluster: &TestCluster, prefix: &str) -> String {
    topic_where(cluster, prefix, |r| r.contains(&(NOT_A_VOTER as i32)))
}

/// Creates `topic` (one partition, two replicas) through the first broker and waits until
/// the quorum has it with a leader.
fn create(cluster: &TestCluster, topic: &str) -> Placement {
    create_with(cluster, topic, &[])
}

fn create_with(cluster: &TestCluster, topic: &str, configs: &[(&str, &str)]) -> Placement {
    let error = common::wire::create_topic_with(cluster.brokers[0].addr, topic, (1, 2), configs);
    assert_eq!(error, 0, "create {topic}");
    wait_for(&cluster.file, "the topic in the image", |i| {
        placement(i, topic).filter(|p| p.leader > 0 && p.isr.len() == 2)
    })
}

/// Produces `n` values with acks=all through every broker; panics unless all are acked.
/// Returns value -> acked offset.
fn produce_acked(
    cluster: &TestCluster,
    topic: &str,
    prefix: &str,
    n: usize,
) -> BTreeMap<String, i64> {
    produce_acked_through(&cluster.bootstrap(), topic, prefix, n)
}

/// [`produce_acked`] by a client that knows only the brokers of `bootstrap`.
fn produce_acked_through(
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    n: usize,
) -> BTreeMap<String, i64> {
    let keyed: Vec<(String, String)> = values(prefix, n)
        .into_iter()
        .map(|v| (v.clone(), v))
        .collect();
    let offsets = common::deliver(bootstrap, topic, &keyed, &ACKS_ALL);
    keyed
        .into_iter()
        .zip(offsets)
        .map(|((_, v), o)| {
            let o = o.unwrap_or_else(|| panic!("{v} was not acked"));
            (v, o)
        })
        .collect()
}

/// Every acked value is read back once, at its acked offset, from the current leader.
fn assert_all_readable(cluster: &TestCluster, topic: &str, acked: &BTreeMap<String, i64>) {
    let read = common::consume_partition(&cluster.bootstrap(), topic, 0, acked.len());
    let mut at: BTreeMap<i64, String> = BTreeMap::new();
    for (offset, value) in read {
        assert!(
            at.insert(offset, value).is_none(),
            "offset {offset} read twice"
        );
    }
    for (value, offset) in acked {
        assert_eq!(
            at.get(offset),
            Some(value),
            "acked {value} missing at offset {offset}"
        );
    }
}

/// A topic the broker that is no voter leads at first.
fn topic_led_by_the_non_voter(cluster: &TestCluster, prefix: &str) -> String {
    topic_where(cluster, prefix, |r| r[0] == NOT_A_VOTER as i32)
}

fn others(p: &Placement) -> i64 {
    *p.replicas
        .iter()
        .find(|&&b| b != p.leader)
        .expect("two replicas")
}

#[test]
fn a_killed_leader_is_replaced_by_an_in_sync_follower_without_a_person() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path());
    let first = create(&cluster, "failover");
    let mut acked = produce_acked(&cluster, "failover", "before", 200);
    let follower = others(&first);
    cluster.broker(first.leader as i32).kill9();
    let killed = Instant::now();
    let next = wait_for(&cluster.file, "a new leader", |i| {
        placement(i, "failover").filter(|p| p.leader == follower)
    });
    eprintln!(
        "broker {} led in epoch {} {:.1} s after the kill (session {SESSION_TIMEOUT_MS} ms)",
        next.leader,
        next.epoch,
        killed.elapsed().as_secs_f64()
    );
    assert!(next.epoch > first.epoch);
    assert_eq!(
        next.isr,
        vec![follower],
        "the dead leader left the in-sync set"
    );
    acked.extend(produce_acked(&cluster, "failover", "after", 200));
    assert_all_readable(&cluster, "failover", &acked);
    // The former leader comes back as a follower and rejoins the in-sync set.
    cluster.broker(first.leader as i32).restart();
    wait_for(&cluster.file, "the former leader back in sync", |i| {
        placement(i, "failover").filter(|p| p.leader == follower && p.isr.len() == 2)
    });
}

#[test]
fn after_a_double_fault_the_former_leader_restarted_alone_does_not_lead() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path());
    let topic = topic_beside_the_voters(&cluster, "double");
    let topic = topic.as_str();
    let first = create(&cluster, topic);
    let (a, b) = (first.leader, others(&first));
    let file = cluster.file.clone();
    let broker_epoch = |broker: i64| {
        image(&file).expect("image")["brokers"][broker.to_string()]["broker_epoch"]
            .as_i64()
            .expect("a broker epoch")
    };
    let a_before = broker_epoch(a);
    let mut acked = produce_acked(&cluster, topic, "first", 100);
    // The leader dies; b takes over and acks 50 writes alone.
    cluster.broker(a as i32).kill9();
    wait_for(&cluster.file, "b leading alone", |i| {
        placement(i, topic).filter(|p| p.leader == b && p.isr == vec![b])
    });
    acked.extend(produce_acked(&cluster, topic, "second", 50));
    // A client posing as broker a (fenced) or as a broker that is no replica reads nothing.
    let mut s = connect(cluster.broker(b as i32).addr);
    for (posing, error) in [
        (a as i32, ResponseError::BrokerIdNotRegistered),
        (99, ResponseError::ReplicaNotAvailable),
    ] {
        let response = fetch_as(&mut s, posing, topic, 0, 0);
        let data = &response.responses[0].partitions[0];
        assert_eq!(data.error_code, error.code(), "fetch posing as {posing}");
        assert!(data.records.as_ref().is_none_or(|r| r.is_empty()));
    }
    // Then b dies too: no leader, b stays the one in-sync member.
    cluster.broker(b as i32).kill9();
    wait_for(&cluster.file, "no leader", |i| {
        placement(i, topic).filter(|p| p.leader == -1 && p.isr == vec![b])
    });
    // The former leader comes back alone: registered and unfenced, yet it must not lead.
    cluster.broker(a as i32).restart();
    wait_for(&cluster.file, "a registered again", |i| {
        unfenced(i, a).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let still = placement(&image(&cluster.file).expect("image"), topic).unwrap();
    assert_eq!(
        (still.leader, still.isr.clone()),
        (-1, vec![b]),
        "a lacks b's acked writes"
    );
    let keyed = vec![("late".to_owned(), "late".to_owned())];
    let late = common::deliver(
        &cluster.bootstrap(),
        topic,
        &keyed,
        &[("acks", "all"), ("message.timeout.ms", "3000")],
    );
    assert_eq!(
        late,
        vec![None],
        "nobody may ack while the partition has no leader"
    );
    // b returns: it leads again, every acked write is there, and a follows it.
    cluster.broker(b as i32).restart();
    wait_for(&cluster.file, "b leading again", |i| {
        placement(i, topic).filter(|p| p.leader == b)
    });
    assert_all_readable(&cluster, topic, &acked);
    // a is registered again, under a new broker epoch: a fetch with its id but without that
    // epoch (a client's v11, or a's incarnation from before the restart) reads nothing.
    let a_now = broker_epoch(a);
    assert_ne!(
        a_now, a_before,
        "a restart registers under a new broker epoch"
    );
    let leader = cluster.broker(b as i32).addr;
    let id = common::wire::topic_id(leader, topic);
    let mut s = connect(leader);
    let refusals = [
        fetch_as(&mut s, a as i32, topic, 0, 0),
        fetch_as_at_epoch(&mut s, (a as i32, a_before), id, 0, 0),
    ];
    for (i, response) in refusals.iter().enumerate() {
        let data = &response.responses[0].partitions[0];
        assert_eq!(
            data.error_code,
            ResponseError::StaleBrokerEpoch.code(),
            "fetch {i} posing as the registered broker {a}"
        );
        assert!(data.records.as_ref().is_none_or(|r| r.is_empty()));
    }
}

#[test]
fn a_leader_cut_off_from_the_quorum_acknowledges_nothing_more() {
    use common::proxy::Proxy;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path());
    // Broker 4 reaches the quorum only through proxies; brokers and clients reach it directly.
    let shared = std::fs::read_to_string(&cluster.file).expect("cluster file");
    let mut own = shared.clone();
    let mut proxies = Vec::new();
    for line in shared.lines() {
        if let Some(addr) = line.strip_prefix("controller_address = \"") {
            let addr: std::net::SocketAddr = addr.trim_end_matches('"').parse().unwrap();
            let proxy = Proxy::start(addr);
            own = own.replace(&addr.to_string(), &proxy.addr.to_string());
            proxies.push(proxy);
        }
    }
    let own_file = root.path().join("cluster-4.toml");
    std::fs::write(&own_file, own).expect("cluster file");
    let old = cluster.broker(NOT_A_VOTER as i32);
    old.terminate();
    let session = format!("--broker-session-timeout-ms={SESSION_TIMEOUT_MS}");
    let args = [
        format!("--broker-id={NOT_A_VOTER}"),
        format!("--cluster={}", own_file.display()),
        session,
        "--broker-heartbeat-interval-ms=300".into(),
        "--default-replication-factor=2".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    *cluster.broker(NOT_A_VOTER as i32) =
        common::Broker::start(&root.path().join("broker-4-proxied"), &args);
    let topic = topic_led_by_the_non_voter(&cluster, "cut");
    let topic = topic.as_str();
    let first = create(&cluster, topic);
    assert_eq!(first.leader, NOT_A_VOTER);
    let mut acked = produce_acked(&cluster, topic, "before", 50);
    // Cut off from the quorum: fenced after its session, the follower leads.
    proxies.iter().for_each(Proxy::cut);
    let follower = others(&first);
    wait_for(&cluster.file, "the follower leading", |i| {
        placement(i, topic).filter(|p| p.leader == follower)
    });
    // Until the follower itself learned it leads, it still copies broker 4's log, and what
    // broker 4 acks then is on the new leader too (and kept).
    let new_leader = cluster.broker(follower as i32).addr;
    let deadline = Instant::now() + STATE_WAIT;
    while common::wire::partition_view(new_leader, topic, 0).0 != follower as i32 {
        assert!(
            Instant::now() < deadline,
            "the new leader never learned it leads"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Clients that still reach broker 4 get no acks=all success from it (it may have taken
    // itself for fenced already and answer that it does not lead) ...
    let alone = cluster.broker(NOT_A_VOTER as i32).addr;
    for i in 0..3 {
        let value = bytes::Bytes::from(format!("cut-off-{i}"));
        let batch = common::wire::record_batch_of(common::wire::PLAIN, &[value]);
        let (error, _) = common::wire::produce_acks(alone, (topic, 0), batch, -1);
        assert_ne!(error, 0, "acked by a leader cut off from the quorum");
    }
    // ... and its consumers read nothing past the high watermark the in-sync set held.
    let mut s = connect(cluster.broker(NOT_A_VOTER as i32).addr);
    let response = common::wire::consumer_fetch(&mut s, topic, 0, 50);
    let data = &response.responses[0].partitions[0];
    assert!(
        data.records.as_ref().is_none_or(|r| r.is_empty()),
        "read past the mark"
    );
    // Past its session without a confirmed heartbeat, broker 4 takes itself for fenced: it
    // stops naming itself leader, and leaves itself out of the brokers it names, so even a
    // client that knows no other broker moves on to one that knows the new leader (a client
    // keeps asking a broker it is connected to while that one is listed).
    let deadline = Instant::now() + STATE_WAIT;
    while common::wire::partition_view(alone, topic, 0).0 != -1 {
        assert!(Instant::now() < deadline, "broker 4 kept leading");
        std::thread::sleep(Duration::from_millis(50));
    }
    let view = common::wire::metadata_of(alone, topic);
    let named: Vec<i32> = view.brokers.iter().map(|b| b.node_id.0).collect();
    assert!(
        !named.contains(&(NOT_A_VOTER as i32)),
        "still names itself: {named:?}"
    );
    assert!(
        named.contains(&view.controller_id.0),
        "sends admin requests to {} of {named:?}",
        view.controller_id.0
    );
    // The new leader takes writes; the cut heals and broker 4 follows it again.
    acked.extend(produce_acked_through(
        &alone.to_string(),
        topic,
        "after",
        50,
    ));
    proxies.iter().for_each(Proxy::resume);
    wait_for(&cluster.file, "broker 4 back in sync", |i| {
        placement(i, topic).filter(|p| p.leader == follower && p.isr.contains(&NOT_A_VOTER))
    });
    assert_all_readable(&cluster, topic, &acked);
    let read = common::consume_partition(&cluster.bootstrap(), topic, 0, acked.len());
    assert!(
        read.iter().all(|(_, v)| !v.starts_with("cut-off")),
        "an unacked write survived"
    );
}

#[test]
fn a_topic_that_allows_unclean_election_elects_outside_the_set_after_a_double_fault() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path());
    let topic = topic_beside_the_voters(&cluster, "unclean");
    let topic = topic.as_str();
    // A value the broker does not know is refused, and nothing is created.
    let error = common::wire::create_topic_with(
        cluster.brokers[0].addr,
        topic,
        (1, 2),
        &[("unclean.leader.election.enable", "maybe")],
    );
    assert_eq!(error, ResponseError::InvalidConfig.code());
    let first = create_with(
        &cluster,
        topic,
        &[("unclean.leader.election.enable", "true")],
    );
    let recorded = image(&cluster.file).expect("image");
    assert_eq!(recorded["topics"][topic]["unclean_leader_election"], true);
    let (a, b) = (first.leader, others(&first));
    produce_acked(&cluster, topic, "first", 20);
    cluster.broker(a as i32).kill9();
    wait_for(&cluster.file, "b leading alone", |i| {
        placement(i, topic).filter(|p| p.leader == b && p.isr == vec![b])
    });
    cluster.broker(b as i32).kill9();
    wait_for(&cluster.file, "no leader", |i| {
        placement(i, topic).filter(|p| p.leader == -1)
    });
    // The topic allows it: a, outside the set, leads again alone, and takes writes (what only
    // b had is lost, as the topic accepted).
    cluster.broker(a as i32).restart();
    let next = wait_for(&cluster.file, "a leading again", |i| {
        placement(i, topic).filter(|p| p.leader == a)
    });
    assert_eq!(next.isr, vec![a]);
    produce_acked(&cluster, topic, "after", 20);
}

/// Topics created at the same moment through every broker: the quorum records one creation
/// and its id, and every broker holds the topic under that id (replica fetches name topics by
/// id), so each topic replicates: acks=all writes go through on all of them.
#[test]
fn concurrent_creations_of_a_topic_end_with_one_id_on_every_broker() {
    const TOPICS: usize = 6;
    let root = tempfile::tempdir().unwrap();
    let cluster = start(root.path());
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("raced-{i}")).collect();
    std::thread::scope(|scope| {
        for broker in &cluster.brokers {
            let (addr, topics) = (broker.addr, &topics);
            scope.spawn(move || {
                for topic in topics {
                    let error = common::wire::create_replicated_topic(addr, topic, 1, 2);
                    let exists = ResponseError::TopicAlreadyExists.code();
                    assert!(error == 0 || error == exists, "create {topic}: {error}");
                }
            });
        }
    });
    for topic in &topics {
        let ids: Vec<uuid::Uuid> = cluster
            .brokers
            .iter()
            .map(|b| common::wire::topic_id(b.addr, topic))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{topic}: ids {ids:?}");
        wait_for(&cluster.file, "the topic led, both in sync", |i| {
            placement(i, topic).filter(|p| p.leader > 0 && p.isr.len() == 2)
        });
        produce_acked(&cluster, topic, "raced", 20);
    }
}

/// A follower cut off from its leader leaves the in-sync set (the removal committed by the
/// quorum); the leader acks alone (min.insync.replicas 1); then the leader is killed. The
/// cut-off follower, whatever it holds, is not elected even once its link heals: the
/// partition waits for the leader, and every write acked before and after the cut is there.
#[test]
fn a_follower_cut_off_then_the_leader_killed_elects_nobody_without_the_acked_writes() {
    let root = tempfile::tempdir().unwrap();
    let session = format!("--broker-session-timeout-ms={SESSION_TIMEOUT_MS}");
    let (mut cluster, links) = TestCluster::start_linked(
        root.path(),
        BROKERS,
        VOTERS,
        &[
            &session,
            "--broker-heartbeat-interval-ms=300",
            "--replica-lag-time-max-ms=1000",
        ],
    );
    // The follower is the broker that is no voter: the leader's death leaves two voters.
    let topic = topic_where(&cluster, "cutoff", |r| r[1] == NOT_A_VOTER as i32);
    let first = create(&cluster, &topic);
    let leader = first.leader;
    let mut acked = produce_acked(&cluster, &topic, "before", 50);
    // Every connection the follower opens to the leader (fetches, quorum traffic) is cut.
    links
        .between(NOT_A_VOTER as i32, leader as i32)
        .iter()
        .for_each(common::proxy::Proxy::cut);
    wait_for(&cluster.file, "the follower out of the set", |i| {
        placement(i, &topic).filter(|p| p.isr == vec![leader])
    });
    acked.extend(produce_acked(&cluster, &topic, "alone", 50));
    cluster.broker(leader as i32).kill9();
    links.resume_all();
    wait_for(&cluster.file, "the leader fenced", |i| {
        (!unfenced(i, leader)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let waiting = placement(&image(&cluster.file).expect("image"), &topic).unwrap();
    assert_eq!(
        (waiting.leader, waiting.isr.clone()),
        (-1, vec![leader]),
        "the cut-off follower lacks the writes acked alone"
    );
    cluster.broker(leader as i32).restart();
    wait_for(&cluster.file, "the leader back", |i| {
        placement(i, &topic).filter(|p| p.leader == leader)
    });
    assert_all_readable(&cluster, &topic, &acked);
}
