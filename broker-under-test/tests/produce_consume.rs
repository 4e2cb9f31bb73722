//! Real rdkafka clients against the real broker binary: produce with every acks setting,
//! compression, idempotence, consumer groups with committed offsets, auto-created topics.

mod common;

use std::time::{Duration, Instant};

use common::{consume_partition, produce_all, producer, values, Broker, CLIENT_TIMEOUT};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message;

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            [&NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("create topics");
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

#[test]
fn every_acks_setting_stores_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    for acks in ["0", "1", "all"] {
        let topic = format!("acks-{acks}");
        create_topic(&broker.bootstrap(), &topic, 1);
        let p = producer(&broker.bootstrap(), &[("acks", acks)]);
        let sent = values(&topic, 500);
        produce_all(&p, &topic, Some(0), &sent);
        let got = consume_partition(&broker.bootstrap(), &topic, 0, sent.len());
        let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..sent.len() as i64).collect::<Vec<_>>(),
            "dense offsets for acks={acks}"
        );
        let got_values: Vec<String> = got.into_iter().map(|(_, v)| v).collect();
        assert_eq!(got_values, sent, "acks={acks}");
    }
}

/// librdkafka pipelines many produce requests on one connection; the broker must give them
/// offsets in the order they were sent, as Kafka does. Tiny batches make many requests.
/// With the `timeline` log target on, the broker writes where its produce requests' time went
/// (`request_times`); the stages of a window never exceed its total.
#[test]
fn produce_and_wal_commit_times_reach_the_timeline_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("broker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start_logging_to(&data, &["--log-level=warn,timeline=debug"], log);
    let started = Instant::now();
    let topic = "timed";
    let p = producer(&broker.bootstrap(), &[("acks", "1")]);
    produce_all(&p, topic, Some(0), &values(topic, 200));
    // The WAL writer sums up its commits at its first commit a second after the last summary
    // (or its start).
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    produce_all(&p, topic, Some(0), &values(topic, 10));
    // A connection adds its times to the broker's window once a second while it is busy, and
    // when it closes.
    drop(p);
    let line_of = |event: &str| {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap();
            let tag = format!("event=\"{event}\"");
            if let Some(line) = text.lines().find(|l| l.contains(&tag)) {
                break line.to_owned();
            }
            assert!(Instant::now() < deadline, "no {event} event in the log");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let field = |line: &str, name: &str| -> u64 {
        let start = line
            .find(&format!(" {name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"));
        let value = &line[start + name.len() + 2..];
        let end = value.find(' ').unwrap_or(value.len());
        value[..end]
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap()
    };
    let produce = line_of("produce_times");
    assert!(field(&produce, "requests") >= 1);
    let total = field(&produce, "total_max_us");
    for stage in [
        "local_max_us",
        "remote_max_us",
        "queue_max_us",
        "send_max_us",
    ] {
        assert!(
            field(&produce, stage) <= total,
            "{stage} above the total in {produce}"
        );
    }
    let wal = line_of("wal_times");
    assert!(field(&wal, "window_ms") >= 1_000, "{wal}");
    let commits = field(&wal, "commits");
    assert!(commits >= 1 && field(&wal, "appends") >= commits, "{wal}");
    assert!(field(&wal, "bytes") > 0, "{wal}");
    assert!(
        field(&wal, "sync_p50_us") <= field(&wal, "sync_max_us"),
        "{wal}"
    );
}

#[test]
fn pipelined_requests_on_one_connection_keep_send_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    for acks in ["0", "1"] {
        let topic = format!("pipelined-{acks}");
        create_topic(&broker.bootstrap(), &topic, 1);
        let p = producer(
            &broker.bootstrap(),
            &[("acks", acks), ("batch.num.messages", "3")],
        );
        let sent = values(&topic, 3000);
        produce_all(&p, &topic, Some(0), &sent);
        let got: Vec<String> = consume_partition(&broker.bootstrap(), &topic, 0, sent.len())
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert!(got == sent, "acks={acks}: messages out of send order");
    }
}

#[test]
fn compressed_batches_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let p = producer(
            &broker.bootstrap(),
            &[("compression.type", codec), ("linger.ms", "5")],
        );
        let sent = values(&topic, 300);
        produce_all(&p, &topic, Some(0), &sent);
        let got: Vec<String> = consume_partition(&broker.bootstrap(), &topic, 0, sent.len())
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, sent, "codec {codec}");
    }
}

#[test]
fn two_partitions_keep_separate_dense_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.bootstrap(), "two", 2);
    let p = producer(&broker.bootstrap(), &[]);
    let a = values("p0", 200);
    let b = values("p1", 150);
    produce_all(&p, "two", Some(0), &a);
    produce_all(&p, "two", Some(1), &b);
    let got_a = consume_partition(&broker.bootstrap(), "two", 0, a.len());
    let got_b = consume_partition(&broker.bootstrap(), "two", 1, b.len());
    assert_eq!(got_a.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), a);
    assert_eq!(got_b.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), b);
    assert_eq!(got_b.last().unwrap().0, 149);
}

#[test]
fn idempotent_producer_appends_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let p = producer(
        &broker.bootstrap(),
        &[("enable.idempotence", "true"), ("acks", "all")],
    );
    let sent = values("idem", 1000);
    produce_all(&p, "idem", Some(0), &sent);
    let got = consume_partition(&broker.bootstrap(), "idem", 0, sent.len() + 1);
    assert_eq!(got.len(), sent.len(), "no duplicates");
    assert_eq!(got.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), sent);
}

#[test]
fn auto_created_topic_appears_in_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--default-partitions=3"]);
    let p = producer(&broker.bootstrap(), &[]);
    produce_all(&p, "auto-topic", None, &values("auto", 10));
    let metadata = rdkafka::producer::Producer::client(&p)
        .fetch_metadata(Some("auto-topic"), CLIENT_TIMEOUT)
        .unwrap();
    let topic = &metadata.topics()[0];
    assert_eq!(topic.name(), "auto-topic");
    assert!(topic.error().is_none());
    assert_eq!(topic.partitions().len(), 3);
}

#[test]
fn consumer_group_resumes_from_committed_offset_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let sent = values("grp", 100);
    produce_all(&producer(&broker.bootstrap(), &[]), "grp", Some(0), &sent);
    let group_consumer = |bootstrap: &str| -> BaseConsumer {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "g1")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        c.subscribe(&["grp"]).unwrap();
        c
    };
    let read = |c: &BaseConsumer, n: usize| -> Vec<String> {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.expect("message");
                out.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
            }
        }
        out
    };
    let first = group_consumer(&broker.bootstrap());
    let got = read(&first, 40);
    assert_eq!(got, sent[..40]);
    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    drop(first);
    broker.terminate();
    broker.restart();
    let second = group_consumer(&broker.bootstrap());
    let rest = read(&second, 60);
    assert_eq!(rest, sent[40..], "resumed right after the committed offset");
}

/// `--fsync simulated` holds each group commit for its fixed latency in place of the
/// fdatasync (a disk whose sync always takes the same time): requests sent one after the
/// other are each acknowledged no sooner.
#[test]
fn a_simulated_fsync_holds_every_ack_for_its_latency() {
    const LATENCY: Duration = Duration::from_millis(50);
    const REQUESTS: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let latency = format!("--simulated-fsync-us={}", LATENCY.as_micros());
    let broker = Broker::start(dir.path(), &["--fsync=simulated", &latency]);
    assert_eq!(common::wire::create_topic(broker.addr, "simulated", 1), 0);
    let started = Instant::now();
    for i in 0..REQUESTS {
        let batch = common::wire::record_batch(1, 100);
        let acked = common::wire::produce_at(broker.addr, "simulated", batch);
        assert_eq!(acked, (0, i64::from(i)));
    }
    let took = started.elapsed();
    assert!(
        took >= LATENCY * REQUESTS,
        "{REQUESTS} acks one after the other in {took:?}"
    );
}
