//! Runs one benchmark: reachability check, topic setup, the mode's load, drain, validity checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::{BenchConfig, Mode};
use crate::cpu::{process_cpu_seconds, CpuUsage, ThreadSnapshot, ThreadUse};
use crate::exit::{EXIT_FAILURE, EXIT_UNREACHABLE};
use crate::produce::{self, wall_clock_ns, AckedAt, ProducerShare, SendStats};
use crate::provenance::Provenance;
use crate::recorder::Recorder;
use crate::report::{BenchReport, PhaseResults, Verification, SCHEMA};
use crate::verify::{self, Expected};

/// Open-loop runs must achieve this share of the offered rate to count.
const OPEN_LOOP_ACHIEVED_RATIO_MIN: f64 = 0.99;
/// A generator using more than this share of the cores it may run on may be measuring itself.
const GENERATOR_CPU_SHARE_MAX: f64 = 0.9;
/// A generator thread busier than this share of one core is the bottleneck: librdkafka does all
/// I/O to a broker on one thread, so the process can saturate while using well under its cores.
/// Measured: at produce-c128-s256-30s (143K msg/s, 2 cores shared with the broker) the busiest
/// thread, `rdk:broker1`, used 0.27 of a core and the process 0.45.
const GENERATOR_THREAD_SHARE_MAX: f64 = 0.9;
/// How long to wait for a topic to be created (retriable errors retried) and show up in
/// metadata.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before creating the topic again after a retriable error.
const TOPIC_CREATE_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Consumer poll timeout: bounds how late the loop notices the window's end.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// `--verify-acked`: the read-back gets at least this long (a failover may still be settling).
const READ_BACK_TIMEOUT_MIN: Duration = Duration::from_secs(60);
/// Metadata mode: at most this many threads issue requests concurrently.
const METADATA_THREADS_MAX: usize = 64;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot reach the broker at {servers} within {timeout_ms} ms: {reason}")]
    Unreachable {
        servers: String,
        timeout_ms: u64,
        reason: String,
    },
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Unreachable { .. } => EXIT_UNREACHABLE,
            BenchError::Setup(_) => EXIT_FAILURE,
        }
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

fn admin_runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(setup("starting the admin runtime"))
}

/// Fails fast (within the connect timeout) when no broker answers.
fn check_reachable(config: &BenchConfig) -> Result<(), BenchError> {
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let probe: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("log_level", "0")
        .create()
        .map_err(setup("creating the probe client"))?;
    probe
        .client()
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|e| BenchError::Unreachable {
            servers: config.bootstrap_servers.clone(),
            timeout_ms: config.connect_timeout_ms,
            reason: e.to_string(),
        })
}

fn admin(config: &BenchConfig) -> Result<AdminClient<DefaultClientContext>, BenchError> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .map_err(setup("creating the admin client"))
}

fn create_topic(config: &BenchConfig) -> Result<(), BenchError> {
    let admin = admin(config)?;
    let topic = NewTopic::new(
        &config.topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    let runtime = admin_runtime()?;
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    // A cluster just started may not have its controller yet: Kafka answers a retriable error
    // (timed out, not the controller), and so does the broker here. Set-up, not measurement:
    // try again until the deadline.
    loop {
        let results = runtime
            .block_on(admin.create_topics([&topic], &AdminOptions::new()))
            .map_err(setup("creating the topic"))?;
        let failed = results.into_iter().find_map(|r| {
            r.err()
                .filter(|(_, code)| *code != RDKafkaErrorCode::TopicAlreadyExists)
        });
        match failed {
            None => break,
            Some((_, code)) if retriable(code) && Instant::now() < deadline => {
                std::thread::sleep(TOPIC_CREATE_RETRY_PAUSE);
            }
            Some((name, code)) => {
                return Err(BenchError::Setup(format!("creating topic {name}: {code}")));
            }
        }
    }
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&config.topic), Duration::from_secs(2))
            .map_err(setup("reading metadata"))?;
        if metadata
            .topics()
            .iter()
            .any(|t| t.name() == config.topic && t.error().is_none() && !t.partitions().is_empty())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "topic {} did not appear in metadata",
                config.topic
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CreateTopics errors a client may retry (Kafka's retriable ones that creation meets).
fn retriable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
    )
}

fn delete_topic(config: &BenchConfig) -> Result<(), BenchError> {
    let admin = admin(config)?;
    admin_runtime()?
        .block_on(admin.delete_topics(&[&config.topic], &AdminOptions::new()))
        .map_err(setup("deleting the topic"))?;
    Ok(())
}

/// Prints a progress line every interval until `stop` is set.
fn progress_loop(
    recorder: &Mutex<Recorder>,
    interval: Duration,
    start: Instant,
    stop: &AtomicBool,
    label: &str,
) {
    let mut next = interval;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50).min(interval));
        if start.elapsed() < next {
            continue;
        }
        let mut r = recorder.lock().expect("recorder poisoned");
        let phase = r.phase(start.elapsed().as_nanos() as u64);
        let rate = r.interval_acked as f64 / interval.as_secs_f64();
        let p99 = if r.interval_latency_us.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.2} ms",
                r.interval_latency_us.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        eprintln!(
            "[{:>6.1}s {:?}] {label}: {:>10.0} msg/s  p99 {p99}  (failed so far: {})",
            start.elapsed().as_secs_f64(),
            phase,
            rate,
            r.phases.total_failed()
        );
        r.interval_acked = 0;
        r.interval_latency_us.reset();
        next += interval;
    }
}

/// Starts the progress printer (when progress is on and the interval is not zero).
fn spawn_progress<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    progress: bool,
    config: &BenchConfig,
    recorder: &'scope Mutex<Recorder>,
    start: Instant,
    stop: &'scope AtomicBool,
    label: &'static str,
) -> Option<std::thread::ScopedJoinHandle<'scope, ()>> {
    let interval = Duration::from_millis(config.report_interval_ms);
    (progress && !interval.is_zero())
        .then(|| scope.spawn(move || progress_loop(recorder, interval, start, stop, label)))
}

/// Runs the configured benchmark and returns its report (valid or not).
pub fn run(config: &BenchConfig, progress: bool) -> Result<BenchReport, BenchError> {
    check_reachable(config)?;
    if config.create_topic {
        create_topic(config)?;
    }
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let outcome = match config.mode {
        Mode::Produce => run_produce(config, start, progress, false),
        Mode::RoundTrip => run_produce(config, start, progress, true),
        Mode::Consume => run_consume(config, start, progress),
        Mode::Metadata => run_metadata(config, start, progress),
    }?;
    let wall_s = start.elapsed().as_secs_f64();
    let mut cpu = CpuUsage::between(cpu_start, process_cpu_seconds(), wall_s);
    cpu.busiest_thread = outcome.busiest_thread;
    if config.delete_topic {
        delete_topic(config)?;
    }
    let provenance = Provenance::new(rdkafka::util::get_rdkafka_version().1);
    let mut invalid_reasons = outcome.invalid_reasons;
    invalid_reasons.extend(saturation(&cpu, provenance.host.cores));
    Ok(BenchReport {
        schema: SCHEMA.to_owned(),
        started_at,
        config: config.clone(),
        provenance,
        results: outcome.results,
        producer: outcome.producer,
        offered_rate_msgs_per_s: outcome.offered_rate,
        cpu,
        invalid_reasons,
        verification: outcome.verification,
    })
}

struct ModeOutcome {
    results: PhaseResults,
    producer: Option<PhaseResults>,
    offered_rate: Option<f64>,
    invalid_reasons: Vec<String>,
    /// The generator's busiest thread over the measured window.
    busiest_thread: Option<ThreadUse>,
    /// `--verify-acked`: the acked messages read back.
    verification: Option<Verification>,
}

/// Generator saturation, judged against what it can use: the cores this process may run on
/// (affinity and cgroup limits, as `available_parallelism` reports them) and one core per thread.
fn saturation(cpu: &CpuUsage, usable_cores: usize) -> Vec<String> {
    let mut reasons = Vec::new();
    if cpu.cores_used > GENERATOR_CPU_SHARE_MAX * usable_cores as f64 {
        reasons.push(format!(
            "the load generator used {:.2} of the {usable_cores} cores it may run on: it may be measuring itself",
            cpu.cores_used
        ));
    }
    if let Some(thread) = cpu
        .busiest_thread
        .as_ref()
        .filter(|t| t.cores_used > GENERATOR_THREAD_SHARE_MAX)
    {
        reasons.push(format!(
            "the load generator's thread {} used {:.2} of one core: it is the bottleneck, not the broker",
            thread.name, thread.cores_used
        ));
    }
    reasons
}

/// Samples the generator's threads at the start and the end of the measured window (or when
/// `stop` is set first) and returns the busiest. Sampling inside the window, while the clients
/// and workers live, sees the threads that do the work; they are gone by the time `run` returns.
fn spawn_thread_sampler<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    config: &BenchConfig,
    start: Instant,
    stop: &'scope AtomicBool,
) -> std::thread::ScopedJoinHandle<'scope, Option<ThreadUse>> {
    let window_start = start + config.warmup();
    let window_end = window_start + config.duration();
    scope.spawn(move || {
        let wait_until = |deadline: Instant| {
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep((deadline - Instant::now()).min(POLL_TIMEOUT));
            }
        };
        wait_until(window_start);
        let (first, from) = (ThreadSnapshot::current(), Instant::now());
        wait_until(window_end);
        ThreadSnapshot::current().busiest_since(&first, from.elapsed().as_secs_f64())
    })
}

fn window_seconds(config: &BenchConfig, start: Instant, sending_done: Instant) -> f64 {
    // With --message-count the load may end before the window does: measure what ran.
    let ran = sending_done.saturating_duration_since(start + config.warmup());
    ran.min(config.duration()).as_secs_f64().max(1e-3)
}

fn common_checks(results: &PhaseResults, reasons: &mut Vec<String>, what: &str) {
    let failed = results.phases.total_failed();
    if failed > 0 {
        reasons.push(format!(
            "{failed} {what} failed or timed out (first error: {})",
            results.first_error.as_deref().unwrap_or("unknown")
        ));
    }
    if results.latency_ms.count != 0 && results.latency_ms.count != results.phases.window.acked {
        reasons.push(format!(
            "histogram holds {} samples but {} {what} were counted in the window",
            results.latency_ms.count, results.phases.window.acked
        ));
    }
    if results.phases.window.acked == 0 {
        reasons.push(format!("no {what} completed inside the measured window"));
    }
}

fn run_produce(
    config: &BenchConfig,
    start: Instant,
    progress: bool,
    round_trip: bool,
) -> Result<ModeOutcome, BenchError> {
    let recorder = Arc::new(Mutex::new(Recorder::new(
        config.warmup(),
        config.duration(),
    )));
    let arrivals = Arc::new(Mutex::new(Recorder::new(
        config.warmup(),
        config.duration(),
    )));
    let consumer = if round_trip {
        Some(tail_consumer(config)?)
    } else {
        None
    };
    let acked = config
        .verify_acked
        .then(|| Arc::new(Mutex::new(Vec::new())));
    let shares = produce::create_producers(config, start, &recorder, acked.as_ref())
        .map_err(setup("creating producers"))?;
    let Driven {
        stats,
        sending_done,
        consumed,
        busiest_thread,
    } = drive(
        config,
        start,
        progress,
        &shares,
        &recorder,
        consumer.as_ref().map(|c| (c, &arrivals)),
    );
    let window_s = window_seconds(config, start, sending_done);
    let producer_results = recorder.lock().expect("poisoned").results(window_s);
    let sent: u64 = stats.iter().map(|s| s.sent).sum();
    let mut reasons = Vec::new();
    common_checks(&producer_results, &mut reasons, "messages");
    let answered = producer_results.phases.total_acked() + producer_results.phases.total_failed();
    let still_in_flight: i32 = shares.iter().map(produce::in_flight).sum();
    if answered != sent || still_in_flight != 0 {
        reasons.push(format!(
            "{sent} messages sent but {answered} delivery reports received ({still_in_flight} still in flight)"
        ));
    }
    let offered_rate = config
        .rate
        .map(|_| stats.iter().map(|s| s.offered_in_window).sum::<u64>() as f64 / window_s);
    open_loop_checks(
        producer_results.rate_msgs_per_s,
        config.rate,
        offered_rate,
        &mut reasons,
    );
    // In round-trip mode the figures are the consumer's arrivals; the producer's are kept.
    let (results, producer) = match consumed {
        Some(consumed) => {
            let end_to_end = arrivals.lock().expect("poisoned").results(window_s);
            common_checks(&end_to_end, &mut reasons, "round trips");
            if let Err(err) = consumed {
                reasons.push(err);
            }
            (end_to_end, Some(producer_results))
        }
        None => (producer_results, None),
    };
    let verification = match acked {
        Some(acked) => {
            let acked = std::mem::take(&mut *acked.lock().expect("poisoned"));
            let gap = recorder.lock().expect("poisoned").longest_ack_gap_ns;
            Some(verify_acked(config, acked, gap)?)
        }
        None => None,
    };
    Ok(ModeOutcome {
        results,
        producer,
        offered_rate,
        invalid_reasons: reasons,
        busiest_thread,
        verification,
    })
}

/// Reads the topic back and checks every acked message (`--verify-acked`).
fn verify_acked(
    config: &BenchConfig,
    acked: Vec<AckedAt>,
    (gap_from_ns, gap_ns): (u64, u64),
) -> Result<Verification, BenchError> {
    let mut expected = Expected::new(acked);
    let timeout = Duration::from_millis(config.drain_timeout_ms).max(READ_BACK_TIMEOUT_MIN);
    let read_back = verify::read_back(
        &consumer_config(config),
        &config.topic,
        &mut expected,
        timeout,
    )
    .map_err(BenchError::Setup)?;
    Ok(Verification {
        acked: expected.acked(),
        lost: expected.lost(),
        read_back,
        longest_ack_gap_ms: gap_ns as f64 / 1e6,
        longest_ack_gap_from_s: gap_from_ns as f64 / 1e9,
    })
}

/// What the producers' threads did: each sender's counts, when sending ended, the consumer's
/// end (in round-trip mode) and the busiest thread's CPU share.
struct Driven {
    stats: Vec<SendStats>,
    sending_done: Instant,
    consumed: Option<Result<(), String>>,
    busiest_thread: Option<ThreadUse>,
}

/// Runs the senders (each with its share of the message budget) to their end, drains them,
/// and, in round-trip mode, waits for the consumer to see what was acked.
fn drive(
    config: &BenchConfig,
    start: Instant,
    progress: bool,
    shares: &[ProducerShare],
    recorder: &Arc<Mutex<Recorder>>,
    consumer: Option<(&BaseConsumer, &Arc<Mutex<Recorder>>)>,
) -> Driven {
    let start_wall_ns = wall_clock_ns().saturating_sub(start.elapsed().as_nanos() as u64);
    let budgets = message_budgets(config.message_count, shares.len());
    let stop = AtomicBool::new(false);
    let stop_consumer = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = spawn_progress(scope, progress, config, recorder, start, &stop, "acked");
        let sampler = spawn_thread_sampler(scope, config, start, &stop);
        let consumer_thread = consumer.map(|(c, arrivals)| {
            let stop_consumer = &stop_consumer;
            let thread = scope
                .spawn(move || consume_arrivals(c, arrivals, start, start_wall_ns, stop_consumer));
            (arrivals, thread)
        });
        let senders: Vec<_> = shares
            .iter()
            .zip(&budgets)
            .map(|(share, budget)| {
                scope.spawn(move || produce::send_loop(share, config, start, recorder, *budget))
            })
            .collect();
        let stats: Vec<_> = senders
            .into_iter()
            .map(|h| h.join().expect("sender panicked"))
            .collect();
        let sending_done = Instant::now();
        for share in shares {
            produce::drain(share, Duration::from_millis(config.drain_timeout_ms));
        }
        stop.store(true, Ordering::Release);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        let consumed = consumer_thread.map(|(arrivals, t)| {
            let produced: u64 = recorder.lock().expect("poisoned").phases.total_acked();
            wait_for_arrivals(
                arrivals,
                produced,
                Duration::from_millis(config.drain_timeout_ms),
            );
            stop_consumer.store(true, Ordering::Release);
            t.join().expect("consumer panicked")
        });
        let busiest_thread = sampler.join().expect("thread sampler panicked");
        Driven {
            stats,
            sending_done,
            consumed,
            busiest_thread,
        }
    })
}

/// Each producer's share of `--message-count` (the first `count % producers` one more), or
/// no bound.
fn message_budgets(count: Option<u64>, producers: usize) -> Vec<Option<u64>> {
    (0..producers)
        .map(|i| count.map(|n| n / producers as u64 + u64::from((i as u64) < n % producers as u64)))
        .collect()
}

/// An open-loop run is invalid when the achieved rate fell short of the configured rate, or
/// of what the senders offered.
fn open_loop_checks(
    achieved: f64,
    configured: Option<f64>,
    offered: Option<f64>,
    reasons: &mut Vec<String>,
) {
    // Against the configured rate, not only against what the sender managed to offer: a
    // sender that fell behind offers less, and its achieved rate would still look complete.
    if let Some(configured) = configured {
        if achieved < OPEN_LOOP_ACHIEVED_RATIO_MIN * configured {
            reasons.push(format!(
                "achieved {achieved:.0} msg/s, below {:.0}% of the configured {configured:.0} msg/s",
                OPEN_LOOP_ACHIEVED_RATIO_MIN * 100.0
            ));
        }
    }
    if let Some(offered) = offered {
        if achieved < OPEN_LOOP_ACHIEVED_RATIO_MIN * offered {
            reasons.push(format!(
                "achieved {achieved:.0} msg/s, below {:.0}% of the offered {offered:.0} msg/s: the broker (or generator) could not keep up",
                OPEN_LOOP_ACHIEVED_RATIO_MIN * 100.0
            ));
        }
    }
}

fn consumer_config(config: &BenchConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set(
            "group.id",
            config
                .group
                .clone()
                .unwrap_or_else(|| format!("chronik-bench-{}", std::process::id())),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.min.bytes", "1")
        .set("auto.offset.reset", "earliest");
    client
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, BenchError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(setup("reading topic metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(BenchError::Setup(format!(
            "topic {topic} has no partitions (does it exist?)"
        )));
    }
    Ok(partitions)
}

/// A consumer assigned to every partition at its current end (round trip).
fn tail_consumer(config: &BenchConfig) -> Result<BaseConsumer, BenchError> {
    let consumer: BaseConsumer = consumer_config(config)
        .create()
        .map_err(setup("creating the consumer"))?;
    let mut assignment = TopicPartitionList::new();
    for p in partitions_of(&consumer, &config.topic)? {
        let (_, high) = consumer
            .fetch_watermarks(&config.topic, p, Duration::from_secs(5))
            .map_err(setup("reading the partition end"))?;
        assignment
            .add_partition_offset(&config.topic, p, Offset::Offset(high))
            .map_err(setup("building the assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(setup("assigning partitions"))?;
    Ok(consumer)
}

fn consume_arrivals(
    consumer: &BaseConsumer,
    arrivals: &Mutex<Recorder>,
    start: Instant,
    start_wall_ns: u64,
    stop: &AtomicBool,
) -> Result<(), String> {
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                let now_ns = start.elapsed().as_nanos() as u64;
                let payload = message.payload().unwrap_or_default();
                let sent_wall = payload
                    .get(..8)
                    .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8")));
                let intended_ns = sent_wall.saturating_sub(start_wall_ns);
                arrivals
                    .lock()
                    .expect("poisoned")
                    .record_ack(intended_ns, now_ns, payload.len());
            }
            Some(Err(err)) => return Err(format!("consumer error: {err}")),
            None => {}
        }
    }
    Ok(())
}

fn wait_for_arrivals(arrivals: &Mutex<Recorder>, expected: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while arrivals.lock().expect("poisoned").phases.total_acked() < expected
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_consume(
    config: &BenchConfig,
    start: Instant,
    progress: bool,
) -> Result<ModeOutcome, BenchError> {
    let consumer: BaseConsumer = consumer_config(config)
        .create()
        .map_err(setup("creating the consumer"))?;
    let mut assignment = TopicPartitionList::new();
    for p in partitions_of(&consumer, &config.topic)? {
        assignment
            .add_partition_offset(&config.topic, p, Offset::Beginning)
            .map_err(setup("building the assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(setup("assigning partitions"))?;
    let recorder = Mutex::new(Recorder::new(config.warmup(), config.duration()));
    let stop = AtomicBool::new(false);
    let end = config.warmup() + config.duration();
    let mut reasons = Vec::new();
    let (done, busiest_thread) = std::thread::scope(|scope| {
        let watcher = spawn_progress(scope, progress, config, &recorder, start, &stop, "consumed");
        let sampler = spawn_thread_sampler(scope, config, start, &stop);
        let mut count = 0u64;
        while start.elapsed() < end && config.message_count.is_none_or(|n| count < n) {
            match consumer.poll(POLL_TIMEOUT) {
                Some(Ok(message)) => {
                    count += 1;
                    let now_ns = start.elapsed().as_nanos() as u64;
                    recorder
                        .lock()
                        .expect("poisoned")
                        .record_arrival(now_ns, message.payload_len());
                }
                Some(Err(err)) => {
                    reasons.push(format!("consumer error: {err}"));
                    break;
                }
                None => {}
            }
        }
        let done = Instant::now();
        stop.store(true, Ordering::Release);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        (done, sampler.join().expect("thread sampler panicked"))
    });
    let results = recorder
        .lock()
        .expect("poisoned")
        .results(window_seconds(config, start, done));
    if results.phases.window.acked == 0 {
        reasons.push("no messages consumed inside the measured window".into());
    }
    Ok(ModeOutcome {
        results,
        producer: None,
        offered_rate: None,
        invalid_reasons: reasons,
        busiest_thread,
        verification: None,
    })
}

fn run_metadata(
    config: &BenchConfig,
    start: Instant,
    progress: bool,
) -> Result<ModeOutcome, BenchError> {
    let client: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .map_err(setup("creating the client"))?;
    let recorder = Mutex::new(Recorder::new(config.warmup(), config.duration()));
    let stop = AtomicBool::new(false);
    let end = config.warmup() + config.duration();
    let threads = config.concurrency.min(METADATA_THREADS_MAX);
    let (done, busiest_thread) = std::thread::scope(|scope| {
        let watcher = spawn_progress(
            scope,
            progress,
            config,
            &recorder,
            start,
            &stop,
            "metadata calls",
        );
        let sampler = spawn_thread_sampler(scope, config, start, &stop);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    while start.elapsed() < end {
                        let sent_ns = start.elapsed().as_nanos() as u64;
                        let outcome = client
                            .client()
                            .fetch_metadata(Some(&config.topic), Duration::from_secs(10));
                        let now_ns = start.elapsed().as_nanos() as u64;
                        let mut r = recorder.lock().expect("poisoned");
                        match outcome {
                            Ok(_) => r.record_ack(sent_ns, now_ns, 0),
                            Err(err) => r.record_failure(now_ns, false, &err.to_string()),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let done = Instant::now();
        stop.store(true, Ordering::Release);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        (done, sampler.join().expect("thread sampler panicked"))
    });
    let results = recorder
        .lock()
        .expect("poisoned")
        .results(window_seconds(config, start, done));
    let mut reasons = Vec::new();
    common_checks(&results, &mut reasons, "metadata requests");
    Ok(ModeOutcome {
        results,
        producer: None,
        offered_rate: None,
        invalid_reasons: reasons,
        busiest_thread,
        verification: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(process_cores: f64, busiest: Option<f64>) -> CpuUsage {
        CpuUsage {
            cores_used: process_cores,
            busiest_thread: busiest.map(|cores_used| ThreadUse {
                name: "rdk:broker1".into(),
                cores_used,
            }),
            ..CpuUsage::default()
        }
    }

    #[test]
    fn one_saturated_thread_invalidates_a_run_that_uses_few_cores() {
        assert!(saturation(&usage(0.95, Some(0.89)), 2).is_empty());
        let reasons = saturation(&usage(0.95, Some(0.91)), 2);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("rdk:broker1 used 0.91 of one core"));
        assert!(saturation(&usage(0.5, None), 2).is_empty());
    }

    #[test]
    fn the_process_is_judged_against_the_cores_it_may_run_on() {
        assert!(saturation(&usage(1.79, Some(0.5)), 2).is_empty());
        assert_eq!(saturation(&usage(1.81, Some(0.5)), 2).len(), 1);
        // Pinned to one core, the same use is saturation.
        assert_eq!(saturation(&usage(0.95, Some(0.5)), 1).len(), 1);
    }
}
