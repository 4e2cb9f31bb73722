//! What a restart after an unclean exit makes durable before it lets the WAL go, read from the
//! real binary's system calls (strace). kill -9 keeps the page cache, so the first run's
//! unsynced segment writes are still readable after it, and recovery finds nothing missing;
//! a power cut after the restart would drop them. Before any WAL segment that covers them is
//! retired (renamed for reuse or deleted), every partition segment holding offsets at or above
//! the recovery point the first run left must be fsynced, and so must the directory naming
//! them.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::strace::{self, calls, strace_works, Call};
use common::wire::{create_topic, produce_at, record_batch};
use common::Broker;

/// One-record batches produced and acked before the kill; with 4 KiB segments about 20
/// partition segments hold them, all unsynced (the low-latency profile writes them, the WAL
/// covers them, and only a WAL checkpoint would fsync them).
const BATCHES: usize = 300;
const VALUE_BYTES: usize = 200;
const TOPIC: &str = "restart";
/// How long the restarted broker may take to retire its first WAL segment (a checkpoint runs
/// every 500 ms; the unclean-restart case took under 3 s).
const RETIRE_DEADLINE: Duration = Duration::from_secs(30);
const SYSCALLS: &str = "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat";

/// The calls before the first retirement of a WAL segment (a successful rename or unlink of a
/// `.wal` file), if one happened.
fn before_first_retirement(calls: &[Call]) -> Option<&[Call]> {
    let retired = calls.iter().position(|c| {
        c.ok()
            && (c.name.starts_with("rename") || c.name.starts_with("unlink"))
            && c.text.contains(".wal\"")
    })?;
    Some(&calls[..retired])
}

/// Paths that an fsync or fdatasync succeeded on (strace -y prints `fsync(7</path>) = 0`).
fn synced_paths(calls: &[Call]) -> BTreeSet<PathBuf> {
    calls
        .iter()
        .filter(|c| c.ok() && (c.name == "fsync" || c.name == "fdatasync"))
        .filter_map(|c| Some(PathBuf::from(strace::fd_path(c.args().first()?)?)))
        .collect()
}

/// Segment files of the partition directory holding any offset at or above `recovery_point`.
fn segments_at_or_above(part: &Path, recovery_point: i64) -> Vec<PathBuf> {
    let mut bases: Vec<(i64, PathBuf)> = std::fs::read_dir(part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            let base = p.file_stem().unwrap().to_string_lossy().parse().unwrap();
            (base, p)
        })
        .collect();
    bases.sort();
    let mut out = Vec::new();
    for (i, (_, path)) in bases.iter().enumerate() {
        // A segment holds [its base, the next segment's base).
        let next_base = bases.get(i + 1).map_or(i64::MAX, |(b, _)| *b);
        if next_base > recovery_point {
            out.push(path.clone());
        }
    }
    out
}

#[test]
fn a_restart_fsyncs_every_unsynced_segment_before_it_retires_the_wal() {
    if !strace_works() {
        eprintln!("SKIPPED: strace cannot trace in this environment (ptrace not permitted)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--segment-bytes=4096", "--flush-profile=low-latency"];
    let mut first = Broker::start(&data, &args);
    assert_eq!(create_topic(first.addr, TOPIC, 1), 0);
    for _ in 0..BATCHES {
        let (error, _) = produce_at(first.addr, TOPIC, record_batch(1, VALUE_BYTES));
        assert_eq!(error, 0, "every batch is acked before the kill");
    }
    first.kill9();

    let part = data.join("topics").join(TOPIC).join("0");
    let recovery_point: i64 = std::fs::read_to_string(part.join("recovery-point"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let exposed = segments_at_or_above(&part, recovery_point);
    assert!(
        exposed.len() > 1,
        "the first run left {} segment(s) above its recovery point {recovery_point}; the test \
         needs several",
        exposed.len()
    );

    let trace_path = dir.path().join("restart.strace");
    let trace_arg = trace_path.display().to_string();
    let mut traced = Broker::start_traced(
        &data,
        &args,
        &["-f", "-qq", "-y", "-e", SYSCALLS, "-o", &trace_arg],
    );
    let deadline = Instant::now() + RETIRE_DEADLINE;
    let synced = loop {
        let trace = calls(&std::fs::read_to_string(&trace_path).unwrap_or_default());
        if let Some(before) = before_first_retirement(&trace) {
            break synced_paths(before);
        }
        assert!(
            Instant::now() < deadline,
            "the restarted broker retired no WAL segment within {RETIRE_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    traced.kill9();

    let part = part.canonicalize().unwrap();
    let unsynced: Vec<String> = exposed
        .iter()
        .map(|p| p.canonicalize().unwrap())
        .filter(|p| !synced.contains(p))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        unsynced.is_empty(),
        "{} of {} segments holding offsets >= {recovery_point} were not fsynced before the first \
         WAL retirement: {unsynced:?}",
        unsynced.len(),
        exposed.len()
    );
    assert!(
        synced.contains(&part),
        "the partition directory was not fsynced before the first WAL retirement"
    );
}
