//! Random, seeded fault schedules against a cluster with a controller quorum, in the manner
//! of Jepsen: while a producer writes with acks=all and a consumer reads, brokers are killed
//! with SIGKILL and restarted, paused with SIGSTOP and resumed, and the links between them
//! (replication and the quorum's traffic, each direction through a proxy of its own) are cut
//! one way, cut around one broker, made to drop or to delay, and so are the clients' links to
//! a broker (every client reaches each broker through a proxy), at seeded moments, with no
//! person electing anything. The checker, per schedule:
//!
//! - every acknowledged write is in the final log at the offset it was acknowledged at (no
//!   acks=all write lost: min.insync.replicas = 2 of 3, and one broker faulty at a time);
//! - no offset is acknowledged for two values, and no offset a consumer read during the run
//!   holds another value at the end (nobody read above the committed high watermark);
//! - after the faults heal the partition has a leader and a full in-sync set, and takes writes.
//!
//! A schedule is replayed from its seed. CI runs `CHRONIK_FAULT_SCHEDULES` (default 2) from
//! `CHRONIK_FAULT_SEED` (default 1); a long run sets more. Four brokers, three of them voters:
//! the broker that is no voter may fail too.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::quorum::{placement, wait_for};
use common::{env_u64, Links, Rng, TestCluster};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

const BROKERS: usize = 4;
const VOTERS: usize = 3;
const TOPIC: &str = "faults";
const STEPS_PER_SCHEDULE: u64 = 4;
/// Messages one step's producer sends: a few seconds of acks=all writes, so the fault lands
/// while they are in flight.
const MESSAGES_PER_STEP: usize = 40_000;

/// One fault of a schedule, healed before the next fault.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then a restart after the pause.
    Kill { broker: i32, down: Duration },
    /// SIGSTOP, then SIGCONT after the pause (longer than a session: it may be fenced).
    Pause { broker: i32, stopped: Duration },
    /// Connections `from` opens to `to` are closed and refused (one way: `to` still reaches
    /// `from`).
    Cut {
        from: i32,
        to: i32,
        lasting: Duration,
    },
    /// Every link from and to the broker cut: partitioned away, while clients still reach it.
    Isolate { broker: i32, lasting: Duration },
    /// The link from `from` to `to` holds every byte still (packets dropped, connections up).
    Drop {
        from: i32,
        to: i32,
        lasting: Duration,
    },
    /// The link forwards each chunk late.
    Delay {
        from: i32,
        to: i32,
        by: Duration,
        lasting: Duration,
    },
    /// Clients' connections to the broker closed and refused; the brokers still reach it.
    ClientCut { broker: i32, lasting: Duration },
    /// Clients' links to the broker hold every byte still.
    ClientDrop { broker: i32, lasting: Duration },
    /// Clients' links to the broker forward each chunk late.
    ClientDelay {
        broker: i32,
        by: Duration,
        lasting: Duration,
    },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Cut { .. } => "one-way cut",
            Fault::Isolate { .. } => "isolation",
            Fault::Drop { .. } => "drop",
            Fault::Delay { .. } => "delay",
            Fault::ClientCut { .. } => "client cut",
            Fault::ClientDrop { .. } => "client drop",
            Fault::ClientDelay { .. } => "client delay",
        }
    }
}

/// A fault around the current leader half of the time (failover is what matters most), else
/// around any broker.
fn random_fault(rng: &mut Rng, leader: i32) -> Fault {
    let broker = if rng.below(2) == 0 {
        leader
    } else {
        1 + rng.below(BROKERS as u64) as i32
    };
    let other = {
        let pick = 1 + rng.below(BROKERS as u64 - 1) as i32;
        if pick >= broker {
            pick + 1
        } else {
            pick
        }
    };
    let (from, to) = if rng.below(2) == 0 {
        (broker, other)
    } else {
        (other, broker)
    };
    let lasting = Duration::from_millis(300 + rng.below(3_700));
    let by = Duration::from_millis(5 + rng.below(195));
    match rng.below(9) {
        0 => Fault::Kill {
            broker,
            down: lasting,
        },
        1 => Fault::Pause {
            broker,
            stopped: lasting,
        },
        2 => Fault::Cut { from, to, lasting },
        3 => Fault::Isolate { broker, lasting },
        4 => Fault::Drop { from, to, lasting },
        5 => Fault::Delay {
            from,
            to,
            by,
            lasting,
        },
        6 => Fault::ClientCut { broker, lasting },
        7 => Fault::ClientDrop { broker, lasting },
        _ => Fault::ClientDelay {
            broker,
            by,
            lasting,
        },
    }
}

fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} {pid}");
}

fn apply(cluster: &mut TestCluster, links: &Links, fault: Fault) {
    match fault {
        Fault::Kill { broker, down } => {
            cluster.broker(broker).kill9();
            std::thread::sleep(down);
            cluster.broker(broker).restart();
        }
        Fault::Pause { broker, stopped } => {
            let pid = cluster.broker(broker).pid();
            signal(pid, "STOP");
            std::thread::sleep(stopped);
            signal(pid, "CONT");
        }
        Fault::Cut { from, to, lasting } => {
            links.between(from, to).iter().for_each(Proxy::cut);
            std::thread::sleep(lasting);
        }
        Fault::Isolate { broker, lasting } => {
            links.around(broker).for_each(Proxy::cut);
            std::thread::sleep(lasting);
        }
        Fault::Drop { from, to, lasting } => {
            links.between(from, to).iter().for_each(Proxy::stall);
            std::thread::sleep(lasting);
        }
        Fault::Delay {
            from,
            to,
            by,
            lasting,
        } => {
            links.between(from, to).iter().for_each(|p| p.delay(by));
            std::thread::sleep(lasting);
        }
        Fault::ClientCut { broker, lasting } => {
            links.client(broker).cut();
            std::thread::sleep(lasting);
        }
        Fault::ClientDrop { broker, lasting } => {
            links.client(broker).stall();
            std::thread::sleep(lasting);
        }
        Fault::ClientDelay {
            broker,
            by,
            lasting,
        } => {
            links.client(broker).delay(by);
            std::thread::sleep(lasting);
        }
    }
    links.resume_all();
}

/// A consumer reading the partition from the start until stopped: (offset, value) as served.
fn reader(bootstrap: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(i64, String)>> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "fault-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut read = Vec::new();
        while !stop.load(Ordering::Acquire) {
            // Errors (a broker down, a leader moving) are the faults themselves.
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                read.push((m.offset(), value));
            }
        }
        read
    })
}

/// What one schedule did.
struct Outcome {
    acked: usize,
    faults: Vec<Fault>,
    /// Leader epochs the partition went through (elections by the controller).
    elections: i64,
}

/// Runs one schedule and checks it.
fn run_schedule(seed: u64) -> Outcome {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let root = tempfile::tempdir().unwrap();
    let (mut cluster, links) = TestCluster::start_linked(
        root.path(),
        BROKERS,
        VOTERS,
        &[
            "--broker-session-timeout-ms=2000",
            "--broker-heartbeat-interval-ms=200",
            "--min-insync-replicas=2",
            "--replica-lag-time-max-ms=3000",
        ],
    );
    let error = common::wire::create_replicated_topic(cluster.brokers[0].addr, TOPIC, 1, 3);
    assert_eq!(error, 0, "create");
    let first = wait_for(&cluster.file, "the topic led, all in sync", |i| {
        placement(i, TOPIC).filter(|p| p.leader > 0 && p.isr.len() == 3)
    });
    let bootstrap = links.client_bootstrap();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = reader(bootstrap.clone(), stop.clone());
    let acked: Arc<Mutex<BTreeMap<i64, String>>> = Arc::default();
    let mut faults = Vec::new();
    for step in 0..STEPS_PER_SCHEDULE {
        let keyed: Vec<(String, String)> =
            common::values(&format!("s{seed}-{step}"), MESSAGES_PER_STEP)
                .into_iter()
                .map(|v| (v.clone(), v))
                .collect();
        let producing = {
            let (bootstrap, acked) = (bootstrap.clone(), acked.clone());
            std::thread::spawn(move || {
                let outcomes = common::deliver(
                    &bootstrap,
                    TOPIC,
                    &keyed,
                    &[("acks", "all"), ("message.timeout.ms", "20000")],
                );
                let mut acked = acked.lock().unwrap();
                for ((_, value), offset) in keyed.into_iter().zip(outcomes) {
                    let Some(offset) = offset else { continue };
                    if let Some(other) = acked.insert(offset, value.clone()) {
                        panic!("seed {seed}: offset {offset} acked for {other} and {value}");
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        // One fault, or two back to back: the second lands while the broker the first one
        // hit is still catching up (a follower restarted, then the leader killed).
        for _ in 0..1 + rng.below(2) {
            let leader = wait_for(&cluster.file, "a leader", |i| {
                placement(i, TOPIC).filter(|p| p.leader > 0)
            })
            .leader;
            let fault = random_fault(&mut rng, leader as i32);
            apply(&mut cluster, &links, fault);
            faults.push(fault);
        }
        producing.join().expect("producer");
    }
    // Healed: a leader with every replica in sync, and writes go through.
    let healed = Instant::now();
    let end = wait_for(&cluster.file, "a full in-sync set after the faults", |i| {
        placement(i, TOPIC).filter(|p| p.leader > 0 && p.isr.len() == 3)
    });
    let last = common::deliver(
        &bootstrap,
        TOPIC,
        &[("last".into(), "last".into())],
        &[("acks", "all")],
    );
    let last = last[0].unwrap_or_else(|| panic!("seed {seed}: no progress after the faults heal"));
    let acked = {
        let mut acked = acked.lock().unwrap().clone();
        acked.insert(last, "last".into());
        acked
    };
    let final_log: BTreeMap<i64, String> =
        common::consume_partition(&bootstrap, TOPIC, 0, (last + 1) as usize)
            .into_iter()
            .collect();
    stop.store(true, Ordering::Release);
    let served = consumer.join().expect("reader");
    for (offset, value) in &acked {
        assert_eq!(
            final_log.get(offset),
            Some(value),
            "seed {seed} {faults:?}: acked {value} lost at offset {offset}"
        );
    }
    for (offset, value) in &served {
        assert_eq!(
            final_log.get(offset),
            Some(value),
            "seed {seed} {faults:?}: offset {offset} was served as {value}, holds {:?} at the end",
            final_log.get(offset)
        );
    }
    let elections = end.epoch - first.epoch;
    eprintln!(
        "seed {seed}: {} acked, {} served during the run, {elections} election(s), healed in {:.1} s, faults {faults:?}",
        acked.len(),
        served.len(),
        healed.elapsed().as_secs_f64()
    );
    Outcome {
        acked: acked.len(),
        faults,
        elections,
    }
}

#[test]
fn random_fault_schedules_lose_no_acked_write_and_serve_no_offset_twice() {
    let schedules = env_u64("CHRONIK_FAULT_SCHEDULES", 2);
    let first = env_u64("CHRONIK_FAULT_SEED", 1);
    let (mut acked, mut elections) = (0, 0);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in first..first + schedules {
        let outcome = run_schedule(seed);
        acked += outcome.acked;
        elections += outcome.elections;
        for f in outcome.faults {
            *kinds.entry(f.kind()).or_default() += 1;
        }
    }
    eprintln!(
        "{schedules} schedule(s): {acked} acked writes checked, {elections} elections, faults {kinds:?}"
    );
    assert!(acked > 0);
    assert!(
        elections > 0,
        "no fault moved a leader: the schedules test nothing"
    );
}
