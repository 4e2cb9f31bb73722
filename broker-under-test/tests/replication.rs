//! Replication with real broker processes on loopback and real rdkafka clients: every acked
//! message is on every in-sync replica byte for byte, acks=all never claims a success the
//! in-sync set cannot back, consumers never read past the high watermark, a follower that was
//! killed catches up to a byte-identical log, a leader-follower link that stalls or is cut
//! costs the follower its place in the in-sync set, not the leader its progress; after a
//! leader stops, `chronik-broker promote` elects an in-sync follower that holds every acks=all
//! message and clients continue on it; a former leader that comes back cuts what the new
//! leader never had (leader-epoch truncation, also after a restart replays the cut) and ends
//! byte-identical; and leaders and followers killed with SIGKILL at seeded moments, with a
//! promotion whenever the leader died, lose nothing acked (longer runs:
//! `CHRONIK_REPLICATION_KILL_CYCLES`, `CHRONIK_REPLICATION_KILL_SEED`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{placement, producer, values, Rng, TestCluster, CLIENT_TIMEOUT};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long the tests wait for the cluster to reach a state (in-sync set, catch-up).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

fn create_topic(bootstrap: &str, topic: &str, partitions: i32, factor: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(factor),
            )],
            &AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT)),
        ))
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

/// Waits until `check` holds, polling; panics with `what` after `SETTLE_TIMEOUT`.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces every (key, value), one at a time (keyed: a seeded spread over partitions), and
/// returns whether each delivery report was a success.
fn produce(
    bootstrap: &str,
    topic: &str,
    keyed: &[(String, String)],
    extra: &[(&str, &str)],
) -> Vec<bool> {
    common::deliver(bootstrap, topic, keyed, extra)
        .iter()
        .map(Option::is_some)
        .collect()
}

/// `n` distinct values, each its own key.
fn keyed(prefix: &str, n: usize) -> Vec<(String, String)> {
    values(prefix, n)
        .into_iter()
        .map(|v| (v.clone(), v))
        .collect()
}

/// Produces with acks=all and panics unless every message was acknowledged.
fn produce_all_acked(bootstrap: &str, topic: &str, keyed: &[(String, String)]) {
    let acked = produce(bootstrap, topic, keyed, &[("acks", "all")]);
    assert!(
        acked.iter().all(|&a| a),
        "every acks=all message acknowledged"
    );
}

/// Every value in `partition` of `topic`, read by a consumer from the start until the partition
/// end the brokers report (consumers only ever see the high watermark).
fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "replication-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    // Right after a failover, on two cores busy with three brokers and a producer, one
    // metadata round can miss its timeout: ask again until a bounded deadline.
    let watermarks_deadline = Instant::now() + 3 * CLIENT_TIMEOUT;
    let (_, end) = loop {
        match consumer.fetch_watermarks(topic, partition, CLIENT_TIMEOUT) {
            Ok(marks) => break marks,
            Err(e) if Instant::now() < watermarks_deadline => {
                eprintln!("watermarks of {topic}-{partition}: {e}; asking again");
            }
            Err(e) => panic!("watermarks of {topic}-{partition}: {e}"),
        }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut out = Vec::new();
    let mut next = 0;
    while next < end && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            // A broker of the bootstrap list that is down (a killed leader) is reported as a
            // transport failure; the read goes on with the others.
            let message = match message {
                Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
                )) => continue,
                other => other.expect("consume"),
            };
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into();
            next = message.offset() + 1;
            out.push((message.offset(), value));
        }
    }
    out
}

/// The partition's segment files, concatenated in offset order.
fn segment_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string());
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Delivers `batch` with acks=all on a thread (so the test can kill brokers meanwhile); the
/// handle yields each message's acked offset, as `common::deliver` does.
fn deliver_acks_all_in_background(
    bootstrap: &str,
    topic: &'static str,
    batch: &[(String, String)],
    message_timeout_ms: &'static str,
) -> std::thread::JoinHandle<Vec<Option<i64>>> {
    let (bootstrap, batch) = (bootstrap.to_owned(), batch.to_vec());
    std::thread::spawn(move || {
        common::deliver(
            &bootstrap,
            topic,
            &batch,
            &[("acks", "all"), ("message.timeout.ms", message_timeout_ms)],
        )
    })
}

/// Stops every broker cleanly and tells whether their copies of `topic`-0 are byte-identical.
fn stopped_logs_identical(brokers: &mut [common::Broker], topic: &str) -> bool {
    for broker in brokers.iter_mut() {
        assert!(broker.terminate().success());
    }
    let logs: Vec<Vec<u8>> = brokers
        .iter()
        .map(|b| segment_bytes(&b.data_dir, topic, 0))
        .collect();
    logs.windows(2).all(|w| w[0] == w[1])
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Error code of a consumer's Fetch of `topic`-`partition` at `addr`.
fn fetch_error(addr: std::net::SocketAddr, topic: &str, partition: i32) -> i16 {
    let mut s = common::wire::connect(addr);
    common::wire::consumer_fetch(&mut s, topic, partition, 0).responses[0].partitions[0].error_code
}

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const ELECTION_NOT_NEEDED: i16 = 84;

#[test]
fn every_acked_message_is_on_every_replica_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(root.path(), 3, &["--min-insync-replicas=2"]);
    let bootstrap = cluster.bootstrap();
    let topic = "replicated";
    let partitions = 6;
    create_topic(&bootstrap, topic, partitions, 3);
    // Seeded sizes from 1 byte to 4 KiB and seeded keys: batches of every shape, spread over
    // partitions whose leaders are spread over the three brokers.
    let mut rng = Rng(0x5eed_0001);
    let sent: Vec<(String, String)> = (0..1_500)
        .map(|i| {
            let len = 1 + rng.index(4096);
            let key = format!("k{}", rng.below(1_000));
            (key, format!("{i:06}-{}", "x".repeat(len)))
        })
        .collect();
    produce_all_acked(&bootstrap, topic, &sent);
    // A last acks=all message per partition, then all three replicas in sync: a replica in
    // sync now either was when that message was acked, or joined later holding at least the
    // high watermark; either way it holds everything.
    let markers = producer(&bootstrap, &[("acks", "all")]);
    for partition in 0..partitions {
        markers
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(partition)
                    .payload("marker"),
            )
            .map_err(|(err, _)| err)
            .expect("queued");
    }
    markers.flush(CLIENT_TIMEOUT).expect("markers acked");
    for partition in 0..partitions {
        wait_for("every replica in sync", || {
            placement(&bootstrap, topic, partition).2.len() == 3
        });
    }
    let mut leaders = std::collections::HashSet::new();
    let mut read = Vec::new();
    for partition in 0..partitions {
        let (leader, replicas, isr) = placement(&bootstrap, topic, partition);
        assert_eq!(replicas.len(), 3);
        assert!(isr.len() >= 2, "{topic}-{partition}: in sync {isr:?}");
        leaders.insert(leader);
        // Another broker refuses clients for a partition it does not lead.
        for follower in replicas.iter().filter(|&&id| id != leader) {
            let addr = cluster.broker(*follower).addr;
            assert_eq!(fetch_error(addr, topic, partition), NOT_LEADER_OR_FOLLOWER);
        }
        let messages = read_partition(&bootstrap, topic, partition);
        for pair in messages.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "dense offsets");
        }
        read.extend(messages.into_iter().map(|(_, v)| v));
    }
    assert!(leaders.len() >= 2, "leaders spread: {leaders:?}");
    let mut expected: Vec<String> = sent.into_iter().map(|(_, v)| v).collect();
    expected.extend((0..partitions).map(|_| "marker".to_owned()));
    expected.sort();
    read.sort();
    assert_eq!(read, expected, "every acked message read exactly once");
    for broker in &mut cluster.brokers {
        assert!(broker.terminate().success());
    }
    for partition in 0..partitions {
        let logs: Vec<Vec<u8>> = cluster
            .brokers
            .iter()
            .map(|b| segment_bytes(&b.data_dir, topic, partition))
            .collect();
        assert!(!logs[0].is_empty());
        assert!(
            logs.iter().all(|l| l == &logs[0]),
            "{topic}-{partition}: the three logs differ ({:?} bytes)",
            logs.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

#[test]
fn acks_all_is_never_a_success_without_enough_in_sync_replicas_and_a_killed_follower_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(
        root.path(),
        2,
        &["--min-insync-replicas=2", "--replica-lag-time-max-ms=1000"],
    );
    let bootstrap = cluster.bootstrap();
    let topic = "guarded";
    create_topic(&bootstrap, topic, 1, 2);
    let before = keyed("before", 200);
    produce_all_acked(&bootstrap, topic, &before);
    let (leader, replicas, _) = placement(&bootstrap, topic, 0);
    let follower = *replicas.iter().find(|&&id| id != leader).unwrap();
    let leader_addr = cluster.broker(leader).addr.to_string();
    cluster.broker(follower).kill9();
    wait_for("the killed follower to leave the in-sync set", || {
        placement(&leader_addr, topic, 0).2 == [leader]
    });
    // Retries allowed, as a real client would: NOT_ENOUGH_REPLICAS is retriable, and still no
    // delivery may be reported as a success.
    let refused = keyed("refused", 5);
    let outcomes = produce(
        &leader_addr,
        topic,
        &refused,
        &[("acks", "all"), ("message.timeout.ms", "1500")],
    );
    assert!(
        outcomes.iter().all(|&a| !a),
        "acks=all reported a success with one replica in sync"
    );
    // acks=1 does not wait for followers.
    let alone = keyed("alone", 50);
    assert!(produce(&leader_addr, topic, &alone, &[("acks", "1")])
        .iter()
        .all(|&a| a));
    cluster.broker(follower).restart();
    wait_for("the restarted follower to rejoin", || {
        placement(&leader_addr, topic, 0).2.len() == 2
    });
    let after = keyed("after", 200);
    produce_all_acked(&bootstrap, topic, &after);
    let read: Vec<String> = read_partition(&bootstrap, topic, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<String> = before
        .iter()
        .chain(&alone)
        .chain(&after)
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(read, expected, "acked in order; refused ones never visible");
    for broker in &mut cluster.brokers {
        assert!(broker.terminate().success());
    }
    let leader_log = segment_bytes(&cluster.broker(leader).data_dir, topic, 0);
    let follower_log = segment_bytes(&cluster.broker(follower).data_dir, topic, 0);
    assert_eq!(
        leader_log.len(),
        follower_log.len(),
        "the follower caught up"
    );
    assert!(leader_log == follower_log, "byte-identical logs");
}

#[test]
fn consumers_never_read_past_what_the_in_sync_replicas_hold() {
    let root = tempfile::tempdir().unwrap();
    // A long lag time: the stopped follower stays in sync, so the high watermark must wait.
    let mut cluster = TestCluster::start(root.path(), 2, &["--replica-lag-time-max-ms=600000"]);
    let bootstrap = cluster.bootstrap();
    let topic = "watermarked";
    create_topic(&bootstrap, topic, 1, 2);
    let replicated = keyed("replicated", 20);
    produce_all_acked(&bootstrap, topic, &replicated);
    wait_for("the follower to join the in-sync set", || {
        placement(&bootstrap, topic, 0).2.len() == 2
    });
    let (leader, replicas, _) = placement(&bootstrap, topic, 0);
    let follower = *replicas.iter().find(|&&id| id != leader).unwrap();
    let leader_addr = cluster.broker(leader).addr;
    signal(cluster.broker(follower).pid(), "-STOP");
    // acks=1: durable on the leader, acknowledged without the follower.
    let unreplicated = keyed("unreplicated", 30);
    assert!(
        produce(
            &leader_addr.to_string(),
            topic,
            &unreplicated,
            &[("acks", "1")]
        )
        .iter()
        .all(|&a| a),
        "acks=1 waits for no follower"
    );
    // acks=all cannot complete while an in-sync follower does not have the batch.
    let waiting = keyed("waiting", 1);
    let outcome = produce(
        &leader_addr.to_string(),
        topic,
        &waiting,
        &[("acks", "all"), ("message.timeout.ms", "1500")],
    );
    assert_eq!(outcome, [false], "acks=all succeeded without the follower");
    assert_eq!(
        common::wire::latest_offset(leader_addr, topic, 0),
        20,
        "the high watermark stays at what the follower holds"
    );
    let seen = read_partition(&leader_addr.to_string(), topic, 0);
    assert_eq!(
        seen.len(),
        20,
        "a consumer sees only the replicated messages"
    );
    signal(cluster.broker(follower).pid(), "-CONT");
    // The acks=all message timed out on the client, but it was appended: a timeout is an
    // unknown outcome (docs/RELIABILITY.md, promise 3), so it may appear once.
    wait_for(
        "the high watermark to pass the unreplicated messages",
        || common::wire::latest_offset(leader_addr, topic, 0) >= 51,
    );
    let read: Vec<String> = read_partition(&bootstrap, topic, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<String> = replicated
        .iter()
        .chain(&unreplicated)
        .chain(&waiting)
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(read, expected);
}

/// Writes a cluster file in which `local` reaches every other broker through `via` (its
/// proxy), and itself at its real address; clients are told the real addresses.
fn cluster_file(
    path: &Path,
    real: &[(i32, std::net::SocketAddr)],
    via: &[(i32, std::net::SocketAddr)],
    local: i32,
) {
    let text: String = real
        .iter()
        .map(|(id, addr)| {
            let route = if *id == local {
                *addr
            } else {
                via.iter().find(|(v, _)| v == id).expect("a proxy").1
            };
            format!("[[broker]]\nid = {id}\naddress = \"{route}\"\nclient_address = \"{addr}\"\n")
        })
        .collect();
    std::fs::write(path, text).expect("cluster file");
}

/// Two brokers whose links to each other go through proxies (clients use the real
/// addresses): the brokers, each broker's proxy, and a cluster file with the real addresses.
fn proxied_pair(
    root: &Path,
    extra: &[&str],
) -> (
    Vec<common::Broker>,
    Vec<(i32, common::proxy::Proxy)>,
    std::path::PathBuf,
) {
    use common::proxy::Proxy;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let real = [(1, free()), (2, free())];
    let proxies: Vec<(i32, Proxy)> = real.iter().map(|(id, a)| (*id, Proxy::start(*a))).collect();
    let via: Vec<(i32, std::net::SocketAddr)> =
        proxies.iter().map(|(id, p)| (*id, p.addr)).collect();
    let brokers = real
        .iter()
        .map(|(id, _)| {
            let file = root.join(format!("cluster-{id}.toml"));
            cluster_file(&file, &real, &via, *id);
            let mut args = vec![
                format!("--broker-id={id}"),
                format!("--cluster={}", file.display()),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::Broker::start(&root.join(format!("broker-{id}")), &args)
        })
        .collect();
    let direct = root.join("cluster.toml");
    cluster_file(&direct, &real, &real, 0);
    (brokers, proxies, direct)
}

#[test]
fn a_stalled_or_cut_link_costs_the_follower_its_place_not_the_leader_its_progress() {
    let root = tempfile::tempdir().unwrap();
    let (mut brokers, proxies, _) = proxied_pair(root.path(), &["--replica-lag-time-max-ms=1000"]);
    let topic = "linked";
    create_topic(&brokers[0].bootstrap(), topic, 1, 2);
    let (leader, replicas, _) = placement(&brokers[0].bootstrap(), topic, 0);
    let follower = *replicas.iter().find(|&&id| id != leader).unwrap();
    let leader_addr = brokers[usize::try_from(leader - 1).unwrap()].bootstrap();
    // The follower reaches the leader through the leader's proxy.
    let link = &proxies.iter().find(|(id, _)| *id == leader).unwrap().1;
    let isr = || placement(&leader_addr, topic, 0).2;
    let mut expected = Vec::new();
    let mut send = |prefix: &str| {
        let batch = keyed(prefix, 100);
        produce_all_acked(&leader_addr, topic, &batch);
        expected.extend(batch.into_iter().map(|(_, v)| v));
    };
    send("linked");
    wait_for("the follower to join", || isr().len() == 2);
    for fault in ["stalled", "cut"] {
        if fault == "stalled" {
            link.stall();
        } else {
            link.cut();
        }
        // With min.insync.replicas=1 the leader goes on once the follower has left the set.
        send(fault);
        wait_for("the follower to leave", || isr() == [leader]);
        link.resume();
        wait_for("the follower to catch up and rejoin", || isr().len() == 2);
        send(&format!("after-{fault}"));
    }
    let read: Vec<String> = read_partition(&leader_addr, topic, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(read, expected, "every acked message, in order");
    wait_for("the follower to hold everything", || isr().len() == 2);
    for broker in &mut brokers {
        assert!(broker.terminate().success());
    }
    let logs: Vec<Vec<u8>> = [leader, follower]
        .iter()
        .map(|id| {
            segment_bytes(
                &brokers[usize::try_from(id - 1).unwrap()].data_dir,
                topic,
                0,
            )
        })
        .collect();
    assert!(logs[0] == logs[1], "byte-identical logs after the faults");
}

#[test]
fn brokers_killed_at_random_moments_lose_nothing_acked_and_keep_identical_logs() {
    let cycles = common::env_u64("CHRONIK_REPLICATION_KILL_CYCLES", 6);
    let seed = common::env_u64("CHRONIK_REPLICATION_KILL_SEED", 17);
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    // min.insync.replicas = 2: an acks=all message is on both replicas, so whichever survives
    // can be elected without losing one.
    let mut cluster = TestCluster::start(root.path(), 2, &["--min-insync-replicas=2"]);
    let bootstrap = cluster.bootstrap();
    let topic = "killed";
    let mut promotions = 0;
    create_topic(&bootstrap, topic, 1, 2);
    wait_for_isr_seen_by_all(&cluster, topic, 2);
    // Offset -> value of every acknowledged message: an offset never holds two values.
    let mut acked: std::collections::BTreeMap<i64, String> = Default::default();
    let mut killed_in_flight = 0;
    for cycle in 0..cycles {
        let victim = 1 + i32::try_from(rng.below(2)).unwrap();
        let delay = Duration::from_millis(rng.below(150));
        // Enough messages that the kill lands while they are in flight.
        let batch = keyed(&format!("cycle{cycle}"), 50_000);
        let producing = deliver_acks_all_in_background(&bootstrap, topic, &batch, "20000");
        std::thread::sleep(delay);
        if !producing.is_finished() {
            killed_in_flight += 1;
        }
        let (leader, _, _) = leader_view(&cluster, topic);
        cluster.broker(victim).kill9();
        if victim == leader {
            let (promoted, said) = cluster.promote(topic);
            assert!(
                promoted,
                "seed {seed} cycle {cycle}: promote failed: {said}"
            );
            promotions += 1;
        }
        cluster.broker(victim).restart();
        let outcomes = producing.join().expect("producer thread");
        for ((_, value), offset) in batch.iter().zip(outcomes) {
            if let Some(offset) = offset {
                if let Some(other) = acked.insert(offset, value.clone()) {
                    panic!(
                        "seed {seed} cycle {cycle}: offset {offset} acked for {other} and {value}"
                    );
                }
            }
        }
        wait_for_isr_seen_by_all(&cluster, topic, 2);
    }
    assert!(
        killed_in_flight * 2 >= cycles,
        "only {killed_in_flight} of {cycles} kills landed while messages were in flight"
    );
    assert!(promotions > 0, "seed {seed}: no cycle killed the leader");
    produce_all_acked(&bootstrap, topic, &keyed("final", 1));
    wait_for("both replicas in sync at the end", || {
        placement(&bootstrap, topic, 0).2.len() == 2
    });
    let read: std::collections::BTreeMap<i64, String> =
        read_partition(&bootstrap, topic, 0).into_iter().collect();
    for (offset, value) in &acked {
        assert_eq!(
            read.get(offset),
            Some(value),
            "seed {seed}: acked {value} at {offset} is not there"
        );
    }
    let offsets: Vec<i64> = read.keys().copied().collect();
    assert_eq!(
        offsets,
        (0..offsets.len() as i64).collect::<Vec<_>>(),
        "dense"
    );
    assert!(
        stopped_logs_identical(&mut cluster.brokers, topic),
        "seed {seed}: the logs differ after the kills"
    );
}

/// (leader, epoch, in-sync set) as the brokers report it: the newest epoch among the views of
/// the running brokers.
fn leader_view(cluster: &TestCluster, topic: &str) -> (i32, i32, Vec<i32>) {
    cluster
        .brokers
        .iter()
        .filter(|b| b.running())
        .map(|b| common::wire::partition_view(b.addr, topic, 0))
        .max_by_key(|(_, epoch, _)| *epoch)
        .expect("a running broker")
}

/// Waits until every running broker reports the same leader and epoch and `size` replicas in
/// sync: then a follower's view of the in-sync set (what `promote` trusts) is current.
fn wait_for_isr_seen_by_all(cluster: &TestCluster, topic: &str, size: usize) {
    wait_for("every broker to see the whole in-sync set", || {
        let views: Vec<_> = cluster
            .brokers
            .iter()
            .filter(|b| b.running())
            .map(|b| common::wire::partition_view(b.addr, topic, 0))
            .collect();
        views
            .iter()
            .all(|v| v.2.len() == size && (v.0, v.1) == (views[0].0, views[0].1))
    });
}

#[test]
fn a_promoted_follower_holds_every_acks_all_message_and_clients_continue_on_it() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(root.path(), 3, &["--min-insync-replicas=2"]);
    let bootstrap = cluster.bootstrap();
    let topic = "failover";
    create_topic(&bootstrap, topic, 1, 3);
    wait_for_isr_seen_by_all(&cluster, topic, 3);
    let (old_leader, epoch, _) = leader_view(&cluster, topic);
    assert_eq!(epoch, 0);
    // Nobody takes over a leader that answers, whatever the election type.
    let follower = cluster
        .brokers
        .iter()
        .enumerate()
        .find(|(i, _)| *i + 1 != usize::try_from(old_leader).unwrap())
        .map(|(_, b)| b.addr)
        .unwrap();
    for election_type in [0, 1] {
        assert_eq!(
            common::wire::elect_leaders(follower, topic, 0, election_type),
            ELECTION_NOT_NEEDED
        );
    }
    let (leader, epoch, _) = leader_view(&cluster, topic);
    assert_eq!(
        (leader, epoch),
        (old_leader, 0),
        "refused elections change nothing"
    );
    // Enough messages that the leader dies in the middle of them.
    let batch = keyed("failover", 200_000);
    let producing = deliver_acks_all_in_background(&bootstrap, topic, &batch, "60000");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!producing.is_finished(), "the leader must die mid-stream");
    cluster.broker(old_leader).kill9();
    let (promoted, said) = cluster.promote(topic);
    assert!(promoted, "promote: {said}");
    let (new_leader, new_epoch, _) = leader_view(&cluster, topic);
    assert_ne!(new_leader, old_leader, "{said}");
    assert_eq!(new_epoch, 1, "{said}");
    let outcomes = producing.join().expect("producer thread");
    // The producer went on: everything after the failover was acknowledged too.
    assert!(
        outcomes.iter().rev().take(1000).all(Option::is_some),
        "the producer continued on the new leader"
    );
    let read: std::collections::BTreeMap<i64, String> =
        read_partition(&bootstrap, topic, 0).into_iter().collect();
    let mut acked = 0;
    for ((_, value), offset) in batch.iter().zip(&outcomes) {
        if let Some(offset) = offset {
            assert_eq!(read.get(offset), Some(value), "acked {value} at {offset}");
            acked += 1;
        }
    }
    assert!(acked > batch.len() / 2, "{acked} of {} acked", batch.len());
    // The old leader comes back as a follower of the new one and ends with the same log.
    cluster.broker(old_leader).restart();
    wait_for_isr_seen_by_all(&cluster, topic, 3);
    produce_all_acked(&bootstrap, topic, &keyed("after", 1));
    wait_for_isr_seen_by_all(&cluster, topic, 3);
    assert!(
        stopped_logs_identical(&mut cluster.brokers, topic),
        "byte-identical logs"
    );
}

#[test]
fn a_former_leader_cuts_what_the_new_leader_never_had_even_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    // A long lag time: the cut-off follower stays in the in-sync set the leader reports, so it
    // may be promoted while the old leader holds acks=1 messages it never got.
    let (mut brokers, proxies, direct) =
        proxied_pair(root.path(), &["--replica-lag-time-max-ms=60000"]);
    let index = |id: i32| usize::try_from(id - 1).unwrap();
    let bootstrap = format!("{},{}", brokers[0].bootstrap(), brokers[1].bootstrap());
    let topic = "diverged";
    create_topic(&bootstrap, topic, 1, 2);
    let views = |brokers: &[common::Broker]| -> Vec<(i32, i32, Vec<i32>)> {
        brokers
            .iter()
            .filter(|b| b.running())
            .map(|b| common::wire::partition_view(b.addr, topic, 0))
            .collect()
    };
    wait_for("both brokers to see both in sync", || {
        views(&brokers).iter().all(|v| v.2.len() == 2)
    });
    produce_all_acked(&bootstrap, topic, &keyed("before", 20));
    let (old_leader, _, _) = views(&brokers)[0].clone();
    // The follower reaches the leader through the leader's proxy: cut it, so nothing the
    // leader takes from now on can reach the follower, not even a fetch answer in flight.
    proxies[index(old_leader)].1.cut();
    let stalled = produce(&bootstrap, topic, &keyed("stalled", 10), &[("acks", "1")]);
    assert!(stalled.iter().all(|&a| a), "acks=1 needs only the leader");
    brokers[index(old_leader)].kill9();
    proxies[index(old_leader)].1.resume();
    let (promoted, said) = common::promote(&direct, topic);
    assert!(promoted, "promote: {said}");
    let after = keyed("after", 5);
    assert!(produce(&bootstrap, topic, &after, &[("acks", "1")])
        .iter()
        .all(|&a| a));
    // Back, the old leader learns the election before it serves anyone, cuts the ten
    // messages the new leader never had, and copies the new leader's instead.
    brokers[index(old_leader)].restart();
    let all_in_sync = |brokers: &[common::Broker]| {
        let v = views(brokers);
        v.len() == 2 && v.iter().all(|v| v.1 == 1 && v.2.len() == 2)
    };
    wait_for("the old leader to follow and rejoin", || {
        all_in_sync(&brokers)
    });
    let expected: Vec<String> = keyed("before", 20)
        .into_iter()
        .chain(after)
        .map(|(_, v)| v)
        .collect();
    let read: Vec<String> = read_partition(&bootstrap, topic, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        read, expected,
        "the stalled acks=1 messages are gone, nothing else"
    );
    // A crash right after: the WAL still holds the cut batches, then the cut, then the new
    // ones, and replay must end where the leader's log does.
    brokers[index(old_leader)].kill9();
    brokers[index(old_leader)].restart();
    wait_for("the old leader to rejoin after its replay", || {
        all_in_sync(&brokers)
    });
    assert!(
        stopped_logs_identical(&mut brokers, topic),
        "byte-identical logs after the cut and the replay"
    );
}

/// Brokers with a listener for clients beside the one the brokers use (`--client-listen`):
/// clients are told the client listener and produce through it, replication runs on the other,
/// and a client posing as a follower on the client listener reads nothing.
#[test]
fn a_replica_fetch_on_the_client_listener_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..2)
        .map(|_| (common::restartable_port(), common::restartable_port()))
        .collect();
    let file = root.path().join("cluster.toml");
    let text: String = ports
        .iter()
        .enumerate()
        .map(|(i, (brokers, clients))| {
            format!(
                "[[broker]]\nid = {}\naddress = \"127.0.0.1:{brokers}\"\nclient_address = \"127.0.0.1:{clients}\"\n",
                i + 1
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let mut brokers: Vec<common::Broker> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, clients))| {
            let args = [
                format!("--broker-id={}", i + 1),
                format!("--cluster={}", file.display()),
                format!("--client-listen=127.0.0.1:{clients}"),
                "--min-insync-replicas=2".to_owned(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::Broker::start(&root.path().join(format!("broker-{}", i + 1)), &args)
        })
        .collect();
    let client_addr = |id: i32| -> std::net::SocketAddr {
        ([127, 0, 0, 1], ports[usize::try_from(id - 1).unwrap()].1).into()
    };
    let bootstrap = format!("{},{}", client_addr(1), client_addr(2));
    let topic = "listeners";
    create_topic(&bootstrap, topic, 1, 2);
    wait_for("the follower to join", || {
        placement(&bootstrap, topic, 0).2.len() == 2
    });
    // Replication runs on the brokers' listener: acks=all with min.insync.replicas=2 acks.
    produce_all_acked(&bootstrap, topic, &keyed("through-clients", 50));
    let (leader, replicas, _) = placement(&bootstrap, topic, 0);
    let follower = *replicas.iter().find(|&&id| id != leader).unwrap();
    let posing = |addr| {
        let mut s = common::wire::connect(addr);
        common::wire::fetch_as(&mut s, follower, topic, 0, 0).responses[0].partitions[0].clone()
    };
    let on_client_listener = posing(client_addr(leader));
    assert_eq!(
        on_client_listener.error_code,
        kafka_protocol::error::ResponseError::ClusterAuthorizationFailed.code()
    );
    assert!(on_client_listener
        .records
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    // The brokers' listener takes it (a static cluster has no broker epochs to check).
    let leader_broker = &brokers[usize::try_from(leader - 1).unwrap()];
    assert_eq!(posing(leader_broker.addr).error_code, 0);
    for broker in &mut brokers {
        assert!(broker.terminate().success());
    }
}
