//! Storage that fails: the WAL's fsync returns EIO, a write finds the disk full (ENOSPC), or
//! the next segment cannot be made when the active one is full (ENOSPC at the roll).
//! The promise: no ack after the failure, fail-stop with a clear reason, and after a restart on
//! the same data directory every message that was acked is there, at its acked offset. The
//! broker runs in-process on a storage that wraps the real file storage and fails on cue.
//!
//! A follower whose WAL stalls (an fsync that takes longer than the follower waits for it)
//! never tells its leader it holds what is not durable: an acks=all write is not acked until
//! the follower's fsync returns.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronik_broker::config::BrokerArgs;
use chronik_broker::wal::storage::{FileWalStorage, WalStorage};
use chronik_broker::{BrokerConfig, RunningBroker};
use clap::Parser;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;
/// Messages produced (one request each) before the fault is armed.
const HEALTHY_MESSAGES: usize = 40;
/// Messages tried after the fault: each must fail.
const MESSAGES_AFTER_FAULT: usize = 3;
/// The smallest WAL segment, for the roll fault: the messages after it fill one.
const ROLL_SEGMENT_BYTES: u64 = 4096;
/// Messages tried after a roll fault is armed: more than one 4 KiB segment holds. Those acked
/// before the roll failed stay acked; none after.
const MESSAGES_AFTER_ROLL_FAULT: usize = 100;
const FATAL_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Fault {
    Sync(i32),
    Write(i32),
    Roll(i32),
}

/// The file storage, failing every call of one kind once `armed` is set.
struct Failing {
    inner: FileWalStorage,
    fault: Fault,
    armed: Arc<AtomicUsize>,
}

impl Failing {
    fn fails(&self) -> bool {
        self.armed.load(Ordering::Acquire) > 0
    }
}

impl WalStorage for Failing {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.fault {
            // A full disk may take part of the write first.
            Fault::Write(errno) if self.fails() => {
                self.inner.append(&bytes[..bytes.len() / 2])?;
                Err(io::Error::from_raw_os_error(errno))
            }
            _ => self.inner.append(bytes),
        }
    }
    fn sync(&mut self) -> io::Result<()> {
        match self.fault {
            Fault::Sync(errno) if self.fails() => Err(io::Error::from_raw_os_error(errno)),
            _ => self.inner.sync(),
        }
    }
    fn active_len(&self) -> u64 {
        self.inner.active_len()
    }
    fn active_seq(&self) -> u64 {
        self.inner.active_seq()
    }
    fn roll(&mut self) -> io::Result<u64> {
        match self.fault {
            Fault::Roll(errno) if self.fails() => Err(io::Error::from_raw_os_error(errno)),
            _ => self.inner.roll(),
        }
    }
}

fn config(dir: &Path, fault: Fault) -> BrokerConfig {
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    if let Fault::Roll(_) = fault {
        config.wal_segment_bytes = ROLL_SEGMENT_BYTES;
    }
    config
}

fn run_fault(fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let armed = Arc::new(AtomicUsize::new(0));
    let open = {
        let armed = armed.clone();
        Box::new(
            move |dir: &Path, seq: u64| -> io::Result<Box<dyn WalStorage>> {
                Ok(Box::new(Failing {
                    inner: FileWalStorage::create(dir, seq, config(dir, fault).wal_segment_bytes)?,
                    fault,
                    armed,
                }))
            },
        )
    };
    let mut broker: RunningBroker = runtime
        .block_on(chronik_broker::start_with_storage(
            config(dir.path(), fault),
            open,
        ))
        .expect("start");
    let bootstrap = broker.local_addr.to_string();
    let acked = common::produce_acked(
        &bootstrap,
        "faulty",
        &common::values("ok", HEALTHY_MESSAGES),
    );
    assert_eq!(
        acked.iter().flatten().count(),
        HEALTHY_MESSAGES,
        "all acked before the fault"
    );

    armed.store(1, Ordering::Release);
    let late = match fault {
        Fault::Roll(_) => MESSAGES_AFTER_ROLL_FAULT,
        _ => MESSAGES_AFTER_FAULT,
    };
    let after = common::produce_acked(&bootstrap, "faulty", &common::values("late", late));
    // A roll is tried after a group is durable and acked: what filled the segment is acked,
    // nothing after the failed roll.
    let acked_late = after.iter().take_while(|a| a.is_some()).count();
    assert!(
        after[acked_late..].iter().all(Option::is_none) && acked_late < late,
        "{fault:?}: acked after the storage failed: {after:?}"
    );
    if !matches!(fault, Fault::Roll(_)) {
        assert_eq!(acked_late, 0, "{fault:?}: acked after the storage failed");
    }
    let reason = runtime
        .block_on(async { tokio::time::timeout(FATAL_WAIT, broker.fatal()).await })
        .expect("the broker fail-stops");
    eprintln!("{fault:?}: fail-stop: {reason}");
    let errno = match fault {
        Fault::Sync(e) | Fault::Write(e) | Fault::Roll(e) => e,
    };
    assert!(
        reason.contains(&io::Error::from_raw_os_error(errno).to_string()),
        "the reason names the error: {reason}"
    );
    runtime.block_on(broker.shutdown());

    // Restart on the same directory with healthy storage: everything acked is there.
    let broker = runtime
        .block_on(chronik_broker::start(config(dir.path(), fault)))
        .expect("restart");
    let want: Vec<(i64, String)> = acked
        .iter()
        .zip(common::values("ok", HEALTHY_MESSAGES))
        .chain(
            after
                .iter()
                .zip(common::values("late", late))
                .take(acked_late),
        )
        .map(|(offset, value)| (offset.expect("acked"), value))
        .collect();
    let got = common::consume_partition(&broker.local_addr.to_string(), "faulty", 0, want.len());
    assert_eq!(
        got[..want.len().min(got.len())],
        want[..],
        "acked messages at their offsets"
    );
    runtime.block_on(broker.shutdown());
}

#[test]
fn a_failed_fsync_stops_the_broker_and_loses_nothing_acked() {
    run_fault(Fault::Sync(EIO));
}

#[test]
fn a_full_disk_stops_the_broker_and_loses_nothing_acked() {
    run_fault(Fault::Write(ENOSPC));
}

#[test]
fn a_failed_segment_roll_stops_the_broker_and_loses_nothing_acked() {
    run_fault(Fault::Roll(ENOSPC));
}

/// The file storage, whose fsync waits while `stalled` is set (a disk that takes seconds).
struct Stalling {
    inner: FileWalStorage,
    stalled: Arc<AtomicBool>,
}

impl WalStorage for Stalling {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        while self.stalled.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.inner.sync()
    }
    fn active_len(&self) -> u64 {
        self.inner.active_len()
    }
    fn active_seq(&self) -> u64 {
        self.inner.active_seq()
    }
    fn roll(&mut self) -> io::Result<u64> {
        self.inner.roll()
    }
}

/// Longer than a follower waits for its WAL before it fetches again (5 s).
const FOLLOWER_STALL: Duration = Duration::from_secs(12);

#[test]
fn a_follower_whose_fsync_stalls_never_claims_what_is_not_durable() {
    let root = tempfile::tempdir().unwrap();
    let ports = [common::restartable_port(), common::restartable_port()];
    let file = root.path().join("cluster.toml");
    let text: String = (1..=2)
        .map(|id| {
            format!(
                "[[broker]]\nid = {id}\naddress = \"127.0.0.1:{}\"\n",
                ports[id - 1]
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stalls = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let brokers: Vec<RunningBroker> = (1..=2)
        .map(|id| {
            let data = root.path().join(format!("broker-{id}"));
            let config = BrokerConfig::from_args(BrokerArgs::parse_from([
                "chronik-broker".to_owned(),
                format!("--broker-id={id}"),
                format!("--cluster={}", file.display()),
                format!("--data-dir={}", data.display()),
                "--min-insync-replicas=2".to_owned(),
                // The follower keeps its place while it stalls: only its own claims could ack.
                "--replica-lag-time-max-ms=60000".to_owned(),
            ]))
            .expect("config");
            let stalled = stalls[id - 1].clone();
            let segment_bytes = config.wal_segment_bytes;
            let open = Box::new(
                move |dir: &Path, seq: u64| -> io::Result<Box<dyn WalStorage>> {
                    Ok(Box::new(Stalling {
                        inner: FileWalStorage::create(dir, seq, segment_bytes)?,
                        stalled: stalled.clone(),
                    }))
                },
            );
            runtime
                .block_on(chronik_broker::start_with_storage(config, open))
                .expect("start")
        })
        .collect();
    let bootstrap = brokers
        .iter()
        .map(|b| b.local_addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let topic = "stalled-follower";
    assert_eq!(
        common::wire::create_replicated_topic(brokers[0].local_addr, topic, 1, 2),
        0
    );
    let acks_all = [("acks", "all")];
    let keyed = |prefix: &str, n| -> Vec<(String, String)> {
        common::values(prefix, n)
            .into_iter()
            .map(|v| (v.clone(), v))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::placement(&bootstrap, topic, 0).2.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the follower joins");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = common::deliver(&bootstrap, topic, &keyed("before", 20), &acks_all);
    assert!(before.iter().all(Option::is_some), "acked while healthy");

    let (leader, replicas, _) = common::placement(&bootstrap, topic, 0);
    let follower = *replicas.iter().find(|&&id| id != leader).unwrap();
    stalls[usize::try_from(follower - 1).unwrap()].store(true, Ordering::Release);
    let timeout_ms = FOLLOWER_STALL.as_millis().to_string();
    let during = common::deliver(
        &bootstrap,
        topic,
        &keyed("during", 1),
        &[("acks", "all"), ("message.timeout.ms", &timeout_ms)],
    );
    stalls[usize::try_from(follower - 1).unwrap()].store(false, Ordering::Release);
    assert_eq!(
        during,
        [None],
        "acked while the follower's fsync had not returned"
    );
    let after = common::deliver(&bootstrap, topic, &keyed("after", 20), &acks_all);
    assert!(
        after.iter().all(Option::is_some),
        "acked once the disk answers"
    );
    for broker in brokers {
        runtime.block_on(broker.shutdown());
    }
}
