//! Every state a power cut may leave, enumerated from a recorded run of the real binary
//! (`common::power_cut`, in the manner of ALICE and CrashMonkey). The broker runs under strace
//! twice on one data directory: a first life acks one-record batches and is killed (kill -9
//! keeps the page cache), a second life recovers, acks more and retires WAL segments, and is
//! killed too. Every write, truncate, fsync, name change and directory fsync of both lives is
//! recorded in the order the calls returned. A crash state is the files a power cut after the
//! first k of them may leave (unsynced writes lost, kept or torn at pages; unsynced name changes
//! lost). Each state is written to a fresh directory and recovered by the real broker, which
//! must start (the disk of this model keeps everything synced, so a refusal is a failure) and
//! serve every write acked before the cut at its offset, once, with dense offsets from the log
//! start, and take a new write at the log end. Retention deletes the oldest segments as the run
//! goes, so of each partition's acked writes the newest `RETAINED_ACKS_MIN` must be there and
//! the older ones may be gone; every acked offset commit must survive, and no producer id may
//! be handed out twice.
//!
//! An ack counts for a cut after operation k when the client received it before strace saw
//! operation k + 1 return: strace stamps a call while the traced thread is stopped, so every
//! fsync an ack waited for was stamped before the ack was sent.
//!
//! CI checks `DEFAULT_STATES`; a long run is one command (the seed picks the states; the
//! recorded run itself differs from run to run, and a failure keeps its traces):
//! `CHRONIK_CRASH_STATES=3000 CHRONIK_CRASH_SEED=5 cargo test --release -p chronik-broker --test crash_states`
//! and `CHRONIK_TEST_BROKER_BIN=<an older chronik-broker>` checks another build.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::power_cut::{strace_args, Recording, Survival};
use common::strace::strace_works;
use common::wire::{
    commit_offset, committed_offset, create_topic, earliest_offset, fetch_from, init_producer_id,
    produce_to, record_batch_of, PLAIN,
};
use common::{env_u64, Broker, Rng};

const DEFAULT_STATES: u64 = 300;
const DEFAULT_SEED: u64 = 0x00c0_ffee;
const TOPIC: &str = "cut";
const PARTITIONS: i32 = 2;
const VALUE_BYTES: usize = 200;
const FIRST_LIFE_BATCHES: u64 = 300;
const SECOND_LIFE_BATCHES: u64 = 100;
/// 4 KiB partition segments, so a life rolls many; 16 KiB WAL segments, so checkpoints
/// retire several; the low-latency profile writes each batch to its segment at once, leaving
/// the segment's fsync to the checkpoint; 16 KiB of retention per partition, so the oldest
/// segments are deleted as the run goes.
const BROKER_ARGS: [&str; 4] = [
    "--segment-bytes=4096",
    "--wal-segment-bytes=16384",
    "--flush-profile=low-latency",
    "--retention-bytes=16384",
];
/// The newest acked writes of a partition that retention never deletes: it keeps at least
/// 16 KiB less one 4 KiB segment, about 45 of these batches (270 bytes stored); older acked
/// writes may be gone by retention, so a lost one of them is not told from a deleted one.
const RETAINED_ACKS_MIN: usize = 40;
/// A pause between produces, so a life spans several checkpoints (every 500 ms).
const PRODUCE_PAUSE: Duration = Duration::from_millis(3);
/// How long the second life may take to retire a WAL segment.
const RETIRE_DEADLINE: Duration = Duration::from_secs(30);
/// After the first retirement, time for a few more checkpoints before the kill.
const AFTER_RETIRE: Duration = Duration::from_millis(1200);
/// Every this many batches the run commits an offset and takes a producer id, so the offset
/// log and the producer-id file are in the recording too.
const SIDE_WRITES_EVERY: u64 = 20;
const GROUP: &str = "cut-readers";
/// Failures printed in full; the rest are counted.
const FAILURES_SHOWN: usize = 8;

/// A write the broker acknowledged, and when the client received the acknowledgement.
struct Ack {
    partition: i32,
    offset: i64,
    id: u64,
    at: f64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn value(id: u64) -> Bytes {
    let mut bytes = format!("{id:016}").into_bytes();
    bytes.resize(VALUE_BYTES, b'.');
    bytes.into()
}

fn id_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..16)?).ok()?.parse().ok()
}

/// An offset commit the broker acknowledged, and when.
struct Commit {
    partition: i32,
    offset: i64,
    at: f64,
}

/// What the broker acknowledged over the run.
#[derive(Default)]
struct Acked {
    writes: Vec<Ack>,
    commits: Vec<Commit>,
    /// Producer ids handed out, and when.
    producer_ids: Vec<(i64, f64)>,
}

/// The recorded run: both lives' operations and every ack.
struct Run {
    recording: Recording,
    acked: Acked,
    topic_created_at: f64,
}

fn produce_batches(broker: &Broker, ids: std::ops::Range<u64>, acked: &mut Acked) {
    for id in ids {
        let partition = (id % PARTITIONS as u64) as i32;
        let (error, offset) = produce_to(
            broker.addr,
            TOPIC,
            partition,
            record_batch_of(PLAIN, &[value(id)]),
        );
        let at = now();
        assert_eq!(error, 0, "batch {id} refused");
        acked.writes.push(Ack {
            partition,
            offset,
            id,
            at,
        });
        if id % SIDE_WRITES_EVERY == 0 {
            let error = commit_offset(broker.addr, GROUP, (TOPIC, partition), offset + 1);
            assert_eq!(error, 0, "offset commit refused");
            acked.commits.push(Commit {
                partition,
                offset: offset + 1,
                at: now(),
            });
            let producer_id = init_producer_id(broker.addr);
            acked.producer_ids.push((producer_id, now()));
        }
        std::thread::sleep(PRODUCE_PAUSE);
    }
}

/// The lowest WAL segment number in `data`, if any.
fn oldest_wal_segment(data: &Path) -> Option<u64> {
    std::fs::read_dir(data.join("wal"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(".wal")?.parse().ok()
        })
        .min()
}

/// One life of the broker on `data`, its file-system calls recorded in `trace`.
fn start_recorded(data: &Path, trace: &Path) -> Broker {
    let args = strace_args(trace);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start_traced(data, &BROKER_ARGS, &args)
}

fn record_run(dir: &Path) -> Run {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let traces = [
        dir.join("first-life.strace"),
        dir.join("second-life.strace"),
    ];
    let mut acked = Acked::default();

    let mut first = start_recorded(&data, &traces[0]);
    assert_eq!(create_topic(first.addr, TOPIC, PARTITIONS), 0);
    let topic_created_at = now();
    produce_batches(&first, 0..FIRST_LIFE_BATCHES, &mut acked);
    first.kill9();

    let oldest = oldest_wal_segment(&data).expect("the first life left WAL segments");
    let mut second = start_recorded(&data, &traces[1]);
    let total = FIRST_LIFE_BATCHES + SECOND_LIFE_BATCHES;
    produce_batches(&second, FIRST_LIFE_BATCHES..total, &mut acked);
    let deadline = Instant::now() + RETIRE_DEADLINE;
    while oldest_wal_segment(&data).is_some_and(|now_oldest| now_oldest <= oldest) {
        assert!(
            Instant::now() < deadline,
            "the second life retired no WAL segment within {RETIRE_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(AFTER_RETIRE);
    second.kill9();
    let first_segment = data
        .join("topics")
        .join(TOPIC)
        .join("0")
        .join(format!("{:020}.log", 0));
    assert!(
        !first_segment.exists(),
        "retention deleted no segment: the run does not cover deletes"
    );

    let mut recording = Recording::new(&data);
    for trace in &traces {
        recording.add_trace(&std::fs::read_to_string(trace).expect("trace written"));
    }
    Run {
        recording,
        acked,
        topic_created_at,
    }
}

/// What a crash state failed on: the kind (counted), and the details.
type Failure = (&'static str, String);

/// Recovers one crash state with the real broker and checks it; the failure, if any.
fn check_state(run: &Run, cut_before: f64, state_dir: &Path, log: &Path) -> Result<(), Failure> {
    let broker =
        Broker::try_start_logging_to(state_dir, &BROKER_ARGS, std::fs::File::create(log).unwrap())
            .map_err(|err| {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                ("refused to start", format!("{err}; log: {tail:?}"))
            })?;
    if cut_before <= run.topic_created_at {
        // The topic may be gone with the cut; nothing was acked yet.
        return Ok(());
    }
    let acked: Vec<&Ack> = run
        .acked
        .writes
        .iter()
        .filter(|a| a.at < cut_before)
        .collect();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut seen = HashSet::new();
        for partition in 0..PARTITIONS {
            let start = earliest_offset(broker.addr, TOPIC, partition);
            let records = fetch_from(broker.addr, (TOPIC, partition), start);
            for (i, (offset, value)) in records.iter().enumerate() {
                if *offset != start + i as i64 {
                    return Err((
                        "offsets not dense",
                        format!("{TOPIC}-{partition}: offset {offset} at position {i}"),
                    ));
                }
                let id = id_of(value).ok_or((
                    "a value never written",
                    format!("{TOPIC}-{partition}@{offset}"),
                ))?;
                if !seen.insert(id) {
                    return Err((
                        "a value stored twice",
                        format!("value {id}, again at {TOPIC}-{partition}@{offset}"),
                    ));
                }
            }
            let of_partition: Vec<&&Ack> =
                acked.iter().filter(|a| a.partition == partition).collect();
            let retained = of_partition.len().saturating_sub(RETAINED_ACKS_MIN);
            for (n, ack) in of_partition.iter().enumerate() {
                if ack.offset < start && n < retained {
                    continue; // deleted by retention
                }
                let found = usize::try_from(ack.offset - start)
                    .ok()
                    .and_then(|i| records.get(i))
                    .and_then(|(_, v)| id_of(v));
                if found != Some(ack.id) {
                    return Err((
                        "an acked write lost",
                        format!(
                            "value {} acked at {TOPIC}-{partition}@{} (there: {found:?}; the log \
                         holds {} records, {} acked before the cut)",
                            ack.id,
                            ack.offset,
                            records.len(),
                            acked.len()
                        ),
                    ));
                }
            }
            let (error, offset) = produce_to(
                broker.addr,
                TOPIC,
                partition,
                record_batch_of(PLAIN, &[value(u64::MAX / 2)]),
            );
            let end = start + records.len() as i64;
            if error != 0 || offset != end {
                return Err((
                    "a new write refused or misplaced",
                    format!("{TOPIC}-{partition}: error {error} at offset {offset}, log end {end}"),
                ));
            }
            let committed = committed_offset(broker.addr, GROUP, (TOPIC, partition));
            let last_acked = run
                .acked
                .commits
                .iter()
                .filter(|c| c.partition == partition && c.at < cut_before)
                .map(|c| c.offset)
                .max();
            // Commits only grow here: a later one may have survived too.
            if last_acked.is_some_and(|last| committed < last) {
                return Err((
                    "an acked offset commit lost",
                    format!("{TOPIC}-{partition}: committed {committed}, acked {last_acked:?}"),
                ));
            }
        }
        let issued = run
            .acked
            .producer_ids
            .iter()
            .filter(|(_, at)| *at < cut_before)
            .map(|(id, _)| *id)
            .max();
        let next = init_producer_id(broker.addr);
        if issued.is_some_and(|issued| next <= issued) {
            return Err((
                "a producer id handed out again",
                format!("{next} after {issued:?} was acknowledged"),
            ));
        }
        Ok(())
    }));
    checked.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(("the check failed", why))
    })
}

#[test]
fn every_crash_state_of_a_recorded_run_keeps_every_acked_write() {
    if !strace_works() {
        eprintln!("SKIPPED: strace cannot trace in this environment (ptrace not permitted)");
        return;
    }
    let states = env_u64("CHRONIK_CRASH_STATES", DEFAULT_STATES);
    let seed = env_u64("CHRONIK_CRASH_SEED", DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let run = record_run(dir.path());
    let operations = run.recording.len();
    assert!(operations > 0, "nothing recorded");
    let barriers: Vec<usize> = (0..operations)
        .filter(|&k| run.recording.is_barrier(k))
        .collect();

    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    let started = Instant::now();
    for i in 0..states {
        // Half the cuts right before or after a sync or name change, the rest anywhere.
        let k = if i % 2 == 0 {
            barriers[rng.below(barriers.len() as u64) as usize] + rng.below(2) as usize
        } else {
            rng.below(operations as u64 + 1) as usize
        };
        let survival = match i % 5 {
            0 => Survival::Synced,
            1 => Survival::Written,
            _ => Survival::Mixed,
        };
        let state_seed = rng.next();
        let image = run
            .recording
            .crash_state(k, survival, &mut Rng(state_seed | 1));
        let state_dir = dir.path().join("state");
        let _ = std::fs::remove_dir_all(&state_dir);
        image
            .materialize(&state_dir)
            .unwrap_or_else(|e| panic!("{e}: {:?}", image.paths()));
        let cut_before = if k < operations {
            run.recording.stamp(k)
        } else {
            f64::INFINITY
        };
        if let Err((kind, why)) =
            check_state(&run, cut_before, &state_dir, &dir.path().join("state.log"))
        {
            *kinds.entry(kind).or_insert(0) += 1;
            failures.push(format!(
                "state {i}: cut after operation {k} of {operations}, {survival:?}, state seed \
                 {state_seed:#x}, {} files: {kind}: {why}",
                image.files()
            ));
        }
    }
    eprintln!(
        "crash states: {states} checked, {} failed {kinds:?}; {operations} operations recorded ({} \
         syncs or name changes), {} acks; seed {seed:#x}; {:.0?}",
        failures.len(),
        barriers.len(),
        run.acked.writes.len(),
        started.elapsed()
    );
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!(
            "{} of {states} crash states failed (traces kept in {}):\n{}",
            failures.len(),
            kept.display(),
            failures
                .iter()
                .take(FAILURES_SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The model itself, on a hand-written trace: what a cut keeps of a synced and an unsynced
/// write, and of a name whose directory was or was not fsynced.
#[test]
fn the_model_keeps_what_was_synced_and_may_lose_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let root = root.display();
    let trace = format!(
        "1 1.000001 openat(AT_FDCWD, \"{root}/a\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3<{root}/a>\n\
         1 1.000002 write(3<{root}/a>, \"\\x61\\x62\", 2) = 2\n\
         1 1.000003 fsync(3<{root}/a>) = 0\n\
         1 1.000004 write(3<{root}/a>, \"\\x63\", 1) = 1\n\
         1 1.000005 openat(AT_FDCWD, \"{root}\", O_RDONLY|O_CLOEXEC) = 4<{root}>\n\
         1 1.000006 fsync(4<{root}>) = 0\n\
         1 1.000007 rename(\"{root}/a\", \"{root}/b\") = 0\n"
    );
    let mut recording = Recording::new(dir.path());
    recording.add_trace(&trace);
    assert_eq!(recording.len(), 6, "the root's open is no operation");
    let read = |k: usize, survival: Survival| {
        let out = tempfile::tempdir().unwrap();
        let state = out.path().join("s");
        recording
            .crash_state(k, survival, &mut Rng(1))
            .materialize(&state)
            .unwrap();
        let read = |name: &str| std::fs::read(state.join(name)).ok();
        (read("a"), read("b"))
    };
    // The name was never made durable before the directory's fsync.
    assert_eq!(read(4, Survival::Synced), (None, None));
    assert_eq!(read(4, Survival::Written), (Some(b"abc".to_vec()), None));
    // After it: the synced bytes, with or without the unsynced one.
    assert_eq!(read(5, Survival::Synced), (Some(b"ab".to_vec()), None));
    assert_eq!(read(5, Survival::Written), (Some(b"abc".to_vec()), None));
    // An unsynced rename may be lost or kept, never both names nor neither.
    assert_eq!(read(6, Survival::Synced), (Some(b"ab".to_vec()), None));
    assert_eq!(read(6, Survival::Written), (None, Some(b"abc".to_vec())));
}
