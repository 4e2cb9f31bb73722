//! The real binary at the operating system's limits. A file-size limit (RLIMIT_FSIZE) makes a
//! storage write fail the way a full disk does, with no test seam in the broker: it must stop
//! with its documented exit code and lose nothing it acked. Out of file descriptors, `accept`
//! fails at once on every call: the listener must rest instead of spinning on a core.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Broker;

/// Largest file the broker may write in the fail-stop test: reached after about 250 of the
/// messages below, by the WAL segment or the partition segment, whichever grows first.
const FILE_SIZE_LIMIT_BYTES: u64 = 256 * 1024;
const MESSAGE_BYTES: usize = 1_000;
/// Produced per round (one producer each); rounds stop at the first message the broker does
/// not ack, since each later one would wait out its delivery timeout.
const MESSAGES_PER_ROUND: usize = 2;
/// Enough rounds to pass the file size limit twice over.
const ROUNDS_MAX: usize = 2 * FILE_SIZE_LIMIT_BYTES as usize / (MESSAGE_BYTES * MESSAGES_PER_ROUND);
/// `EXIT_STORAGE_FAILED` of the broker (sysexits EX_IOERR).
const EXIT_STORAGE_FAILED: i32 = 74;
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Open files the broker may have in the descriptor tests.
const OPEN_FILES_LIMIT: usize = 128;
/// Partitions whose segment files (one descriptor each, at least) leave fewer descriptors than
/// the connection cap (half the limit), so connections run the broker out of descriptors.
const PARTITIONS_HOLDING_FILES: i32 = 80;
const CONNECTIONS_OPENED: usize = 200;
const BACKLOG_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// CPU time the broker may use over `SPIN_WINDOW` while it cannot accept; a listener that
/// retried at once would use all of it. The window spans several checkpoints, which must not
/// stop the broker for want of a descriptor.
const SPIN_WINDOW: Duration = Duration::from_secs(3);
const CPU_ALLOWED_SECS: f64 = 0.6;

#[test]
fn a_write_past_the_file_size_limit_stops_the_binary_with_exit_74_and_loses_no_ack() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!("--fsize={FILE_SIZE_LIMIT_BYTES}");
    let broker = Broker::start_limited(dir.path(), &[], &[&limit]);
    stops_with_exit_74_and_loses_no_ack(broker);
}

/// WAL segments well under the file size limit (each is made at its full size), partition
/// segments far over it, and each batch written to its segment right after its ack: the first
/// write that fails is a partition segment's, after the WAL made the batch durable.
#[test]
fn a_failed_partition_segment_write_stops_the_binary_and_loses_no_ack() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!("--fsize={FILE_SIZE_LIMIT_BYTES}");
    let wal_segment = format!("--wal-segment-bytes={}", FILE_SIZE_LIMIT_BYTES / 4);
    let segment = format!("--segment-bytes={}", FILE_SIZE_LIMIT_BYTES * 16);
    let log_path = dir.path().join("broker.log");
    let data = dir.path().join("data");
    let broker = Broker::start_with(
        &data,
        &[&wal_segment, &segment, "--flush-profile=low-latency"],
        &[&limit],
        std::process::Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    stops_with_exit_74_and_loses_no_ack(broker);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("flush to segments failed:"),
        "the broker stopped for another reason: {log}"
    );
}

/// Produces until the broker refuses, then checks it exits 74 and that every acked message is
/// read back after a restart without the limit.
fn stops_with_exit_74_and_loses_no_ack(mut broker: Broker) {
    let mut acked = Vec::new();
    let mut refused = 0;
    for round in 0..ROUNDS_MAX {
        let values: Vec<String> = (0..MESSAGES_PER_ROUND)
            .map(|i| {
                let id = format!("{:06}-", round * MESSAGES_PER_ROUND + i);
                id.clone() + &"x".repeat(MESSAGE_BYTES - id.len())
            })
            .collect();
        let outcomes = common::produce_acked(&broker.bootstrap(), "limited", &values);
        for (value, outcome) in values.into_iter().zip(outcomes) {
            match outcome {
                Some(offset) => {
                    assert_eq!(refused, 0, "{value:.7} acked after an earlier refusal");
                    acked.push((offset, value));
                }
                None => refused += 1,
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "every write fit under the limit: raise ROUNDS_MAX"
    );
    assert!(!acked.is_empty(), "nothing was acked before the limit");
    let status = broker
        .wait_exit(EXIT_WAIT)
        .expect("the broker kept running after a failed write");
    assert_eq!(
        status.code(),
        Some(EXIT_STORAGE_FAILED),
        "exit status {status}"
    );

    broker.restart();
    let read = common::consume_partition(&broker.bootstrap(), "limited", 0, acked.len());
    for (offset, value) in &acked {
        assert!(
            read.iter().any(|(o, v)| o == offset && v == value),
            "acked message {value:.7} at offset {offset} lost ({} read back)",
            read.len()
        );
    }
}

#[test]
fn a_flood_of_connections_gets_half_the_open_files_limit_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!("--nofile={OPEN_FILES_LIMIT}");
    let mut broker = Broker::start_limited(dir.path(), &[], &[&limit]);
    common::produce_acked(&broker.bootstrap(), "before", &common::values("b", 1));
    let idle_files = open_files(broker.pid());

    let connections = connect_many(broker.addr);
    std::thread::sleep(Duration::from_secs(1));
    let flooded_files = open_files(broker.pid());
    assert!(
        flooded_files <= idle_files + OPEN_FILES_LIMIT / 2,
        "{flooded_files} files open under the flood, {idle_files} before"
    );
    assert!(broker.exited().is_none(), "the broker died under the flood");

    drop(connections);
    let acked = common::produce_acked(&broker.bootstrap(), "after", &common::values("a", 5));
    assert!(
        acked.iter().all(Option::is_some),
        "not served after the flood: {acked:?}"
    );
}

#[test]
fn out_of_file_descriptors_the_broker_rests_lives_and_serves_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!("--nofile={OPEN_FILES_LIMIT}");
    let mut broker = Broker::start_limited(dir.path(), &[], &[&limit]);
    assert_eq!(
        common::wire::create_topic(broker.addr, "wide", PARTITIONS_HOLDING_FILES),
        0
    );
    // Unsynced WAL data, so the checkpoints during the window have files to write.
    common::produce_acked(&broker.bootstrap(), "before", &common::values("b", 3));

    let connections = connect_many(broker.addr);
    std::thread::sleep(Duration::from_secs(1));
    let files = open_files(broker.pid());
    assert!(
        files >= OPEN_FILES_LIMIT - 2,
        "the broker never ran out of descriptors ({files} open)"
    );
    let cpu_before = cpu_secs(broker.pid());
    let started = Instant::now();
    std::thread::sleep(SPIN_WINDOW);
    let cpu_used = cpu_secs(broker.pid()) - cpu_before;
    assert!(
        cpu_used < CPU_ALLOWED_SECS,
        "the broker used {cpu_used:.2} s of CPU in {:?} while out of descriptors",
        started.elapsed()
    );
    assert!(
        broker.exited().is_none(),
        "the broker stopped for want of a descriptor"
    );

    drop(connections);
    let acked = common::produce_acked(&broker.bootstrap(), "after", &common::values("a", 5));
    assert!(
        acked.iter().all(Option::is_some),
        "not served after descriptors came back: {acked:?}"
    );
}

/// Connections the kernel completes into the listener's backlog, whether or not the broker
/// accepts them; up to `CONNECTIONS_OPENED`, or until the backlog is full (a connect that is
/// not completed within `BACKLOG_CONNECT_TIMEOUT`).
fn connect_many(addr: std::net::SocketAddr) -> Vec<TcpStream> {
    let mut connections = Vec::new();
    while connections.len() < CONNECTIONS_OPENED {
        match TcpStream::connect_timeout(&addr, BACKLOG_CONNECT_TIMEOUT) {
            Ok(stream) => connections.push(stream),
            Err(_) => break,
        }
    }
    connections
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// User plus system CPU time of a process, in seconds (/proc/PID/stat, clock ticks of 1/100 s
/// on Linux).
fn cpu_secs(pid: u32) -> f64 {
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / TICKS_PER_SEC
}
