//! chronik-bench's measurement rules, each checked against the real broker (started in-process
//! from its library on 127.0.0.1, free port) with real librdkafka clients.

use std::process::Command;
use std::time::{Duration, Instant};

use chronik_bench::config::Mode;
use chronik_bench::run::{run, BenchError};
use chronik_bench::{BenchArgs, BenchConfig};
use chronik_broker::{BrokerConfig, RunningBroker};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

struct Broker {
    runtime: tokio::runtime::Runtime,
    running: Option<RunningBroker>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(auto_create: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut config =
            BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
        config.auto_create_topics = auto_create;
        let running = runtime.block_on(chronik_broker::start(config)).unwrap();
        Self {
            runtime,
            running: Some(running),
            _dir: dir,
        }
    }

    fn bootstrap(&self) -> String {
        self.running.as_ref().unwrap().local_addr.to_string()
    }

    fn end_offset(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "offset-check")
            .create()
            .unwrap();
        consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap()
            .1
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown());
        }
    }
}

fn config(args: &[&str]) -> BenchConfig {
    let args =
        BenchArgs::try_parse_from(std::iter::once("chronik-bench").chain(args.iter().copied()))
            .unwrap();
    BenchConfig::from_args(&args).unwrap()
}

#[test]
fn end_offset_grows_by_exactly_the_acked_count_and_every_delivery_is_recorded() {
    let broker = Broker::start(true);
    let b = broker.bootstrap();
    let cfg = config(&[
        "-b",
        &b,
        "-t",
        "exact",
        "--concurrency=64",
        "--duration=2s",
        "--warmup=1s",
        "--create-topic",
        "-q",
    ]);
    let report = run(&cfg, false).unwrap();
    assert!(report.is_valid(), "{:?}", report.invalid_reasons);
    let r = &report.results;
    // Every ack (warm-up and drain included) is a record at the broker, and nothing else is.
    assert_eq!(broker.end_offset("exact") as u64, r.phases.total_acked());
    // No sample dropped: the histogram holds exactly the window's acks; so does the series.
    assert_eq!(r.latency_ms.count, r.phases.window.acked);
    assert_eq!(r.histogram().unwrap().len(), r.phases.window.acked);
    assert_eq!(r.per_second.iter().sum::<u64>(), r.phases.window.acked);
    // Throughput is the window's acks over the window's length, nothing else.
    assert_eq!(r.window_s, 2.0);
    assert!((r.rate_msgs_per_s - r.phases.window.acked as f64 / 2.0).abs() < 1e-6);
    assert!(r.phases.warmup.acked > 0, "warm-up is reported separately");
    assert_eq!(
        report.config.producer_properties["linger.ms"], "0",
        "client settings are recorded"
    );
}

#[test]
fn an_unreachable_broker_fails_fast_with_its_own_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(&[
        "-b",
        &format!("127.0.0.1:{port}"),
        "--connect-timeout=2s",
        "--duration=1s",
        "-q",
    ]);
    let started = Instant::now();
    let err = run(&cfg, false).unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err}");
    assert_eq!(err.exit_code(), chronik_bench::exit::EXIT_UNREACHABLE);
    assert!(started.elapsed() < Duration::from_secs(15), "no hang");
}

#[test]
fn failed_messages_are_counted_and_make_the_run_invalid() {
    // No auto-creation and no --create-topic: every message times out on an unknown topic.
    let broker = Broker::start(false);
    let cfg = config(&[
        "-b",
        &broker.bootstrap(),
        "-t",
        "missing",
        "--concurrency=8",
        "--duration=1s",
        "--warmup=0s",
        "--message-timeout=1500ms",
        "--drain-timeout=10s",
        "-q",
    ]);
    let report = run(&cfg, false).unwrap();
    assert!(!report.is_valid());
    assert!(report.results.phases.total_failed() > 0);
    assert_eq!(report.results.phases.total_acked(), 0);
    assert!(
        report
            .invalid_reasons
            .iter()
            .any(|r| r.contains("failed or timed out")),
        "{:?}",
        report.invalid_reasons
    );
}

#[test]
fn open_loop_offers_the_requested_rate_and_measures_from_intended_send_times() {
    let broker = Broker::start(true);
    let cfg = config(&[
        "-b",
        &broker.bootstrap(),
        "-t",
        "paced",
        "--rate=2000",
        "--duration=2s",
        "--warmup=1s",
        "--create-topic",
        "-q",
    ]);
    let report = run(&cfg, false).unwrap();
    assert!(report.is_valid(), "{:?}", report.invalid_reasons);
    let offered = report.offered_rate_msgs_per_s.unwrap();
    assert!((offered - 2000.0).abs() < 20.0, "offered {offered}");
    assert!(report.results.rate_msgs_per_s >= 0.99 * offered);
    assert_eq!(
        broker.end_offset("paced") as u64,
        report.results.phases.total_acked()
    );
}

#[test]
fn round_trip_counts_every_produced_message_at_the_consumer() {
    let broker = Broker::start(true);
    let cfg = config(&[
        "-b",
        &broker.bootstrap(),
        "-t",
        "rt",
        "--mode=round-trip",
        "--concurrency=16",
        "--duration=2s",
        "--warmup=1s",
        "--create-topic",
        "-q",
    ]);
    assert_eq!(cfg.mode, Mode::RoundTrip);
    let report = run(&cfg, false).unwrap();
    assert!(report.is_valid(), "{:?}", report.invalid_reasons);
    let produced = report.producer.as_ref().unwrap();
    assert!(report.results.phases.window.acked > 0);
    assert_eq!(
        report.results.phases.total_acked(),
        produced.phases.total_acked(),
        "every produced message arrived once"
    );
}

#[test]
fn bad_arguments_exit_with_the_usage_code() {
    let out = Command::new(env!("CARGO_BIN_EXE_chronik-bench"))
        .args(["--message-size=1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(i32::from(chronik_bench::exit::EXIT_USAGE))
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--message-size"));
}

#[test]
fn verify_acked_reads_every_acked_message_back_at_its_offset_and_counts_what_is_not() {
    use chronik_bench::produce::AckedAt;
    use chronik_bench::verify::{read_back, Expected};
    let broker = Broker::start(true);
    let b = broker.bootstrap();
    let cfg = config(&[
        "-b",
        &b,
        "-t",
        "verified",
        "--concurrency=16",
        "--producers=2",
        "--partitions=2",
        "--duration=2s",
        "--warmup=0s",
        "--message-size=32",
        "--create-topic",
        "--verify-acked",
        "-q",
    ]);
    let report = run(&cfg, false).unwrap();
    let v = report.verification.expect("a verification");
    assert_eq!(v.lost, 0);
    assert_eq!(v.acked, report.results.phases.total_acked());
    assert_eq!(v.read_back, v.acked, "read to the end, nothing else there");
    assert!(v.longest_ack_gap_ms > 0.0);
    // The same log against acks it does not hold: ids that are not the ones written at those
    // offsets, and offsets past the partition's end. Each is lost, and the read-back ends at
    // the high watermark instead of waiting for offsets that will never come.
    let end = broker.end_offset("verified");
    let claimed = vec![
        AckedAt {
            partition: 0,
            offset: 0,
            id: u64::MAX - 1,
        },
        AckedAt {
            partition: 0,
            offset: end + 10,
            id: 1,
        },
    ];
    let mut expected = Expected::new(claimed);
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &b)
        .set("group.id", "read-back-check");
    let started = Instant::now();
    read_back(&client, "verified", &mut expected, Duration::from_secs(30)).unwrap();
    assert_eq!(expected.lost(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no wait for offsets past the end"
    );
    // A size without room for the id is refused up front.
    let too_small = BenchArgs::try_parse_from([
        "chronik-bench",
        "-b",
        &b,
        "-t",
        "x",
        "--message-size=12",
        "--verify-acked",
    ])
    .unwrap();
    assert!(BenchConfig::from_args(&too_small).is_err());
}
