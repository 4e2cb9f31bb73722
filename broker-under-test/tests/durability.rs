//! Crash and damaged-storage behaviour of the real binary: acked data survives `kill -9`, a
//! torn WAL tail is cut, damage in data already fsynced refuses the start (exit code 65).

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{consume_partition, produce_all, producer, values, Broker};

const EXIT_DATA_CORRUPT: i32 = 65;

fn wal_segments(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments
}

/// The sequence number a WAL segment's frames are stamped with: its file name.
fn segment_seq(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

fn newest_nonempty_wal(data_dir: &Path) -> std::path::PathBuf {
    wal_segments(data_dir)
        .into_iter()
        .rev()
        .find(|p| fs::metadata(p).unwrap().len() > 0)
        .expect("a WAL segment with data")
}

/// Removes segment files so that recovery has to come from the WAL alone.
fn drop_segment_files(data_dir: &Path, topic: &str) {
    let dir = data_dir.join("topics").join(topic).join("0");
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            fs::remove_file(path).unwrap();
        }
    }
}

/// kill -9 cycles in the CI run; `CHRONIK_KILL9_CYCLES=200` for a long one. kill -9 keeps the
/// page cache, so this holds the process-crash promise only; `power_loss` holds the rest.
const KILL9_CYCLES_DEFAULT: usize = 3;

#[test]
fn acked_messages_survive_kill_9_in_order_without_gaps_or_duplicates() {
    let cycles = std::env::var("CHRONIK_KILL9_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILL9_CYCLES_DEFAULT);
    kill9_cycles(&[], cycles, |_| {}, |_| {});
}

#[test]
fn restarts_on_files_from_the_pool_keep_every_acked_message() {
    // Small WAL segments: every round rolls many, and checkpoints retire them into the pool.
    // Each restart then starts its first segment on a retired file holding older records.
    const SEGMENT_BYTES: u64 = 4096;
    let retired_files = |data_dir: &Path| {
        fs::read_dir(data_dir.join("wal"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".retired")
            })
            .count()
    };
    let segment_arg = format!("--wal-segment-bytes={SEGMENT_BYTES}");
    kill9_cycles(
        &[&segment_arg],
        KILL9_CYCLES_DEFAULT,
        |data_dir| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while retired_files(data_dir) == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no checkpoint retired a WAL segment"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        },
        |data_dir| {
            // A file from the pool is at least a segment long (longer when a batch larger than
            // the space left ran past its end); a new one would be empty.
            let first = wal_segments(data_dir).pop().unwrap();
            let len = fs::metadata(&first).unwrap().len();
            assert!(
                len >= SEGMENT_BYTES,
                "the restarted broker's first segment is a file from the pool: {len} bytes"
            );
        },
    );
}

/// Rounds of 700 acked messages, each followed by `before_kill`, kill -9, a restart and
/// `after_restart`; then every acked message is read back once, in order, at dense offsets.
fn kill9_cycles(
    args: &[&str],
    cycles: usize,
    before_kill: impl Fn(&Path),
    after_restart: impl Fn(&Path),
) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), args);
    let mut all = Vec::new();
    for round in 0..cycles {
        let batch = values(&format!("crash{round}"), 700);
        produce_all(
            &producer(&broker.bootstrap(), &[("acks", "all")]),
            "crash",
            Some(0),
            &batch,
        );
        all.extend(batch);
        before_kill(dir.path());
        broker.kill9();
        broker.restart();
        after_restart(dir.path());
    }
    // The end offset says no record beyond the acked ones exists; then read exactly those.
    assert_eq!(
        common::wire::latest_offset(broker.addr, "crash", 0),
        all.len() as i64
    );
    let got = consume_partition(&broker.bootstrap(), "crash", 0, all.len());
    let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..all.len() as i64).collect::<Vec<_>>(),
        "dense, no gaps"
    );
    assert_eq!(
        got.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        all,
        "every acked message, once, in order"
    );
    eprintln!(
        "{cycles} kill -9 cycles: {} acked messages, none lost",
        all.len()
    );
}

#[test]
fn torn_wal_tail_is_cut_and_everything_before_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let sent = values("torn", 200);
    produce_all(&producer(&broker.bootstrap(), &[]), "torn", Some(0), &sent);
    broker.kill9();
    drop_segment_files(dir.path(), "torn");
    // A partial record at the tail: a plausible length prefix, then nothing more.
    let wal = newest_nonempty_wal(dir.path());
    OpenOptions::new()
        .append(true)
        .open(&wal)
        .unwrap()
        .write_all(&[0, 0, 1, 0, 0xde, 0xad])
        .unwrap();
    let before = fs::metadata(&wal).unwrap().len();
    broker.restart();
    assert_eq!(
        fs::metadata(&wal).unwrap().len(),
        before - 6,
        "the 6 torn bytes were cut"
    );
    let got: Vec<String> = consume_partition(&broker.bootstrap(), "torn", 0, sent.len())
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(got, sent);
}

/// A copy of the data directory `snapshot` whose WAL segment `wal` (relative) is cut at `cut`.
fn truncated_copy(snapshot: &Path, wal: &Path, cut: usize) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    copy_dir(snapshot, work.path());
    OpenOptions::new()
        .write(true)
        .open(work.path().join(wal))
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    work
}

/// Records in the test's WAL: one message each, so a cut between two record boundaries must
/// recover exactly the records wholly before it.
const TRUNCATION_RECORDS: usize = 25;
/// Cut points tried besides every byte of the last record and both sides of every boundary.
const TRUNCATION_RANDOM_CUTS: usize = 120;

#[test]
fn every_truncation_of_the_wal_recovers_exactly_the_whole_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let sent = values("cut", TRUNCATION_RECORDS);
    let p = producer(&broker.bootstrap(), &[]);
    for v in &sent {
        // One record per WAL frame, so truncation points fall inside single records.
        produce_all(&p, "cut", Some(0), std::slice::from_ref(v));
    }
    drop(p);
    broker.kill9();
    drop_segment_files(dir.path(), "cut");
    let wal = newest_nonempty_wal(dir.path());
    let full = bytes::Bytes::from(fs::read(&wal).unwrap());
    let seq = segment_seq(&wal);
    // Where each record ends, read with the broker's own decoder.
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos < full.len() {
        match chronik_broker::wal::record::decode(&full.slice(pos..), seq) {
            chronik_broker::wal::record::Decoded::Record(_, used) => {
                pos += used;
                ends.push(pos);
            }
            other => panic!("the test's own WAL does not decode at {pos}: {other:?}"),
        }
    }
    assert_eq!(ends.len(), TRUNCATION_RECORDS);
    let last_start = ends[ends.len() - 2];
    let mut cuts: Vec<usize> = (last_start..full.len()).collect();
    cuts.extend(ends.iter().flat_map(|&e| [e - 1, e, e + 1]));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..TRUNCATION_RANDOM_CUTS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        cuts.push(state as usize % full.len());
    }
    cuts.retain(|&c| c <= full.len());
    cuts.sort_unstable();
    cuts.dedup();
    let snapshot = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), snapshot.path());
    // A torn write lies past the WAL's durable mark (cutting below it is damage to fsynced
    // data: `damage_in_fsynced_wal_data_refuses_to_start`). Without a mark, as after a crash
    // before the first checkpoint, every cut point is such a tail.
    let _ = fs::remove_file(snapshot.path().join("wal/durable"));
    let wal_in_dir = wal.strip_prefix(dir.path()).unwrap();
    for &cut in &cuts {
        let work = truncated_copy(snapshot.path(), wal_in_dir, cut);
        let b = Broker::start(work.path(), &[]);
        let whole = ends.iter().filter(|&&e| e <= cut).count() as i64;
        assert_eq!(
            common::wire::latest_offset(b.addr, "cut", 0),
            whole,
            "cut at byte {cut} of {}",
            full.len()
        );
    }
    // Content, not only the count, at a cut in the middle of the log.
    let work = truncated_copy(
        snapshot.path(),
        wal_in_dir,
        ends[TRUNCATION_RECORDS / 2] + 3,
    );
    let b = Broker::start(work.path(), &[]);
    let keep = TRUNCATION_RECORDS / 2 + 1;
    let got: Vec<String> = consume_partition(&b.bootstrap(), "cut", 0, keep)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(got, sent[..keep]);
    eprintln!(
        "{} cut points over a {}-byte WAL: each recovered exactly its whole records",
        cuts.len(),
        full.len()
    );
}

#[test]
fn damage_in_fsynced_wal_data_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let p = producer(&broker.bootstrap(), &[]);
    for v in values("mid", 5) {
        produce_all(&p, "mid", Some(0), std::slice::from_ref(&v));
    }
    drop(p);
    // A checkpoint records how much of the WAL is fsynced (every 500 ms); wait for it to cover
    // the whole segment, so the damage below lies in data known to be durable.
    let wal = newest_nonempty_wal(dir.path());
    let seq = segment_seq(&wal);
    let len = fs::metadata(&wal).unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_to_string(dir.path().join("wal/durable")).ok() != Some(format!("{seq} {len}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no durable mark for {seq} {len}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    broker.kill9();
    let mut raw = fs::read(&wal).unwrap();
    // Flip a bit inside the first record's payload (past the 8-byte frame header).
    raw[30] ^= 0x10;
    fs::write(&wal, &raw).unwrap();
    let status = Broker::start_expecting_failure(dir.path());
    assert_eq!(status.code(), Some(EXIT_DATA_CORRUPT), "{status:?}");
    // Nothing was cut: the damaged file is left for a human to inspect.
    assert_eq!(fs::read(&wal).unwrap(), raw);
}

/// Whether any WAL segment still holds a record of the topic whose id is in `topic_dir`.
fn wal_holds_topic(data_dir: &Path, topic: &str) -> bool {
    let id_hex = fs::read_to_string(data_dir.join("topics").join(topic).join("topic.id")).unwrap();
    let id = u128::from_str_radix(id_hex.trim(), 16).unwrap();
    wal_segments(data_dir).into_iter().any(|path| {
        let data = bytes::Bytes::from(fs::read(&path).unwrap_or_default());
        let seq = segment_seq(&path);
        let mut pos = 0;
        while pos < data.len() {
            match chronik_broker::wal::record::decode(&data.slice(pos..), seq) {
                chronik_broker::wal::record::Decoded::Record(rec, used) => {
                    if rec.topic_id == id {
                        return true;
                    }
                    pos += used;
                }
                _ => break,
            }
        }
        false
    })
}

#[test]
fn damage_in_the_durable_part_of_the_active_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // Small WAL segments: other traffic rolls them, and checkpoints delete the closed ones once
    // the logs they cover are synced. Then only the segment file holds this partition's data.
    let mut broker = Broker::start(dir.path(), &["--wal-segment-bytes=4096"]);
    let p = producer(&broker.bootstrap(), &[]);
    produce_all(&p, "rot", Some(0), &values("rot", 50));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut round = 0;
    while wal_holds_topic(dir.path(), "rot") {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never let go of the topic"
        );
        produce_all(&p, "filler", Some(0), &values(&format!("fill{round}"), 100));
        round += 1;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    drop(p);
    assert!(broker.terminate().success());
    // Bit rot inside the first batch of the partition's only (active) segment.
    let segment = dir.path().join("topics/rot/0/00000000000000000000.log");
    let mut data = fs::read(&segment).unwrap();
    data[30] ^= 0xff;
    fs::write(&segment, data).unwrap();
    // Cutting it would restart the partition at offset 0 and hand its offsets out again.
    let status = Broker::start_expecting_failure(dir.path());
    assert_eq!(status.code(), Some(EXIT_DATA_CORRUPT), "{status}");
}

#[test]
fn sigterm_flushes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let sent = values("term", 50);
    produce_all(&producer(&broker.bootstrap(), &[]), "term", Some(0), &sent);
    let status = broker.terminate();
    assert!(status.success(), "{status:?}");
    broker.restart();
    assert_eq!(
        consume_partition(&broker.bootstrap(), "term", 0, sent.len()).len(),
        sent.len()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != ".lock" {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}
