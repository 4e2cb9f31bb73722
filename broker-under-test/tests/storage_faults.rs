//! Storage that fails: the WAL's fsync returns EIO, a write finds the disk full (ENOSPC), or
//! the next segment cannot be made when the active one is full (ENOSPC at the roll).
//! The promise: no ack after the failure, fail-stop with a clear reason, and after a restart on
//! the same data directory every message that was acked is there, at its acked offset. The
//! broker runs in-process on a storage that wraps the real file storage and fails on cue.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronik_broker::wal::storage::{FileWalStorage, WalStorage};
use chronik_broker::{BrokerConfig, RunningBroker};

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
