//! Simulated power loss, many seeded cases in-process. The broker runs on a WAL storage that
//! remembers how much of each segment was fsynced and, at a seeded write or fsync, loses power:
//! that call and everything after it fail. The test then does what the power cut does to the
//! disk: each WAL segment keeps what was fsynced plus a seeded prefix of what was not (a torn
//! tail), or all of it but one lost page (pages of an unsynced write persist in any order).
//! Where a write is lost, the file shows what it held before: zeros in a new segment, the
//! records of an earlier segment in a reused one. And
//! each partition's active segment keeps what lies below its recovery point plus a seeded
//! part of the rest. After a restart every acked record must be at its acked offset, and no
//! offset may hold two values. A third of the cases end the first life with a process crash
//! (page cache kept) and cut the power only after the recovery; of the rest, half cut it a
//! second time right after the recovery, while new records are acked.
//!
//! CI runs `DEFAULT_CASES`; a longer run is one command:
//! `CHRONIK_POWER_CASES=5000 CHRONIK_POWER_SEED=11 cargo test --release -p chronik-broker --test power_loss`

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chronik_broker::profile::{FlushProfileName, ProduceFlushProfile};
use chronik_broker::wal::record::SEGMENT_END_BYTES;
use chronik_broker::wal::storage::{segment_path, FileWalStorage, WalStorage};
use chronik_broker::BrokerConfig;
use common::wire::{create_topic, fetch_all, record_batch_of, PLAIN};
use common::{env_u64, Rng};

const DEFAULT_CASES: u64 = 150;
const DEFAULT_SEED: u64 = 0x0b1a_c0ff;
const TOPIC: &str = "power";
const PARTITIONS: i32 = 2;
/// Small WAL segments, so cases roll them and checkpoints delete closed ones.
const WAL_SEGMENT_BYTES: u64 = 4096;
/// Frequent checkpoints, so segment flushes, syncs and recovery points happen within a case.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(15);
/// The unit in which a power cut loses unsynced data out of order (a disk sector).
const LOST_PAGE_BYTES: u64 = 512;
/// After a recovery, time for a few checkpoints before the next writes.
const RECOVERED_CHECKPOINTS_WAIT: Duration = Duration::from_millis(60);
/// How long a restart may wait for the previous broker's data-dir lock to be released.
const START_RETRY: Duration = Duration::from_secs(5);

/// What the disk holds of one WAL segment for sure.
#[derive(Default)]
struct SegmentOnDisk {
    /// The file's bytes when it became the active segment (a reused file holds an earlier
    /// segment's records): a lost write shows these again.
    before: Vec<u8>,
    /// How many bytes written since are fsynced.
    durable: u64,
}

/// The WAL segments this life of the broker wrote, by sequence number.
type Synced = Arc<Mutex<HashMap<u64, SegmentOnDisk>>>;

/// Records segment `seq` of `dir` as it is before the broker writes into it.
fn track(synced: &Synced, dir: &Path, seq: u64, durable: u64) -> io::Result<()> {
    let before = std::fs::read(segment_path(dir, seq))?;
    synced
        .lock()
        .unwrap()
        .insert(seq, SegmentOnDisk { before, durable });
    Ok(())
}

/// The file storage until the power goes: the `calls_left`-th append or fsync from now fails,
/// and so does everything after.
struct PowerCut {
    inner: FileWalStorage,
    dir: std::path::PathBuf,
    calls_left: u64,
    off: bool,
    synced: Synced,
}

impl PowerCut {
    /// Counts one call; false once the power is gone.
    fn powered(&mut self) -> bool {
        if self.calls_left == 0 {
            self.off = true;
        }
        self.calls_left = self.calls_left.saturating_sub(1);
        !self.off
    }
}

fn power_off() -> io::Error {
    io::Error::other("power lost")
}

impl WalStorage for PowerCut {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.powered() {
            return Err(power_off());
        }
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        if !self.powered() {
            return Err(power_off());
        }
        self.inner.sync()?;
        let (seq, len) = (self.inner.active_seq(), self.inner.active_len());
        if let Some(segment) = self.synced.lock().unwrap().get_mut(&seq) {
            segment.durable = len;
        }
        Ok(())
    }
    fn active_len(&self) -> u64 {
        self.inner.active_len()
    }
    fn active_seq(&self) -> u64 {
        self.inner.active_seq()
    }
    fn roll(&mut self) -> io::Result<u64> {
        if self.off {
            return Err(power_off());
        }
        let (old, len) = (self.inner.active_seq(), self.inner.active_len());
        let next = self.inner.roll()?; // closes the old segment durably first
        if let Some(segment) = self.synced.lock().unwrap().get_mut(&old) {
            segment.durable = len + SEGMENT_END_BYTES as u64;
        }
        track(&self.synced, &self.dir, next, 0)?;
        Ok(next)
    }
}

/// Flush profiles a case may run under: each moves batches to segment files at other moments.
const PROFILES: [FlushProfileName; 3] = [
    FlushProfileName::LowLatency,
    FlushProfileName::Balanced,
    FlushProfileName::HighThroughput,
];

fn config(dir: &Path, profile: FlushProfileName) -> BrokerConfig {
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.wal_segment_bytes = WAL_SEGMENT_BYTES;
    config.checkpoint_interval = CHECKPOINT_INTERVAL;
    config.profile = ProduceFlushProfile::named(profile);
    config
}

/// Starts the broker on `dir`, with the power-cut storage when `cut` is given.
fn start(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    profile: FlushProfileName,
    cut: Option<(u64, Synced)>,
) -> chronik_broker::RunningBroker {
    let deadline = Instant::now() + START_RETRY;
    loop {
        let cut = cut.clone();
        let open: chronik_broker::OpenWalStorage = Box::new(move |wal_dir, seq| {
            let inner = FileWalStorage::create(wal_dir, seq, WAL_SEGMENT_BYTES)?;
            Ok(match cut {
                None => Box::new(inner),
                Some((calls_left, synced)) => {
                    track(&synced, wal_dir, seq, inner.active_len())?;
                    Box::new(PowerCut {
                        inner,
                        dir: wal_dir.to_path_buf(),
                        calls_left,
                        off: false,
                        synced,
                    })
                }
            })
        });
        match runtime.block_on(chronik_broker::start_with_storage(
            config(dir, profile),
            open,
        )) {
            Ok(broker) => return broker,
            // The previous broker's tasks may still hold the data-dir lock for a moment.
            Err(chronik_broker::StartError::DataDirLocked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("start on {}: {err}", dir.display()),
        }
    }
}

/// What the power cut leaves on disk: WAL segments keep their fsynced bytes plus a seeded
/// prefix of the rest, or lose one page of the rest, and show their old bytes where a write
/// was lost; each partition's active segment keeps everything below its recovery point plus a
/// seeded prefix of the rest.
fn cut_power(dir: &Path, synced: &Synced, rng: &mut Rng) {
    let wal_dir = dir.join("wal");
    for (&seq, segment) in synced.lock().unwrap().iter() {
        let path = segment_path(&wal_dir, seq);
        let Ok(mut data) = std::fs::read(&path) else {
            continue; // retired by a checkpoint (after the logs it covered were synced)
        };
        let (durable, len) = (segment.durable, data.len() as u64);
        if durable >= len {
            continue;
        }
        let lost = if rng.below(4) == 0 {
            // Pages of an unsynced write reach the disk in any order: one in the middle of
            // the unsynced part is lost while the pages after it persist.
            let page = durable / LOST_PAGE_BYTES * LOST_PAGE_BYTES
                + rng.below((len - durable) / LOST_PAGE_BYTES + 1) * LOST_PAGE_BYTES;
            page.max(durable)..(page + LOST_PAGE_BYTES).min(len)
        } else {
            durable + rng.below(len - durable + 1)..len
        };
        for at in lost.clone() {
            data[at as usize] = segment.before.get(at as usize).copied().unwrap_or(0);
        }
        if lost.end == len {
            // A file the writes made longer is as long as its persisted part.
            data.truncate(lost.start.max(segment.before.len() as u64) as usize);
        }
        std::fs::write(&path, data).unwrap();
    }
    for p in 0..PARTITIONS {
        let part = dir.join("topics").join(TOPIC).join(p.to_string());
        let recovery_point: i64 = std::fs::read_to_string(part.join("recovery-point"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let Some(active) = std::fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
        else {
            continue;
        };
        let data = std::fs::read(&active).unwrap();
        // The byte where the first batch at or past the recovery point starts.
        let mut pos = 0;
        while pos < data.len() {
            let Some(len) = chronik_broker::batch::framed_len(&data[pos..]) else {
                break;
            };
            if chronik_broker::batch::base_offset(&data[pos..]) >= recovery_point {
                break;
            }
            pos += len;
        }
        let durable = pos as u64;
        let len = data.len() as u64;
        truncate(&active, durable + rng.below(len - durable + 1));
    }
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Produces `requests` requests of 1-3 records each to seeded partitions; the acked records.
fn produce_some(
    addr: std::net::SocketAddr,
    requests: u64,
    label: &str,
    rng: &mut Rng,
    acked: &mut BTreeMap<(i32, i64), Bytes>,
) {
    for r in 0..requests {
        // Some requests write both partitions: one group commit of several WAL records, long
        // enough for a power cut to lose a sector in its middle.
        let partitions: Vec<i32> = if rng.below(3) == 0 {
            (0..PARTITIONS).collect()
        } else {
            vec![rng.below(PARTITIONS as u64) as i32]
        };
        let batches: Vec<(i32, Vec<Bytes>)> = partitions
            .into_iter()
            .map(|p| {
                let values = (0..1 + rng.below(3))
                    .map(|i| {
                        let pad = "v".repeat(rng.below(400) as usize);
                        Bytes::from(format!("{label}-{r}-{p}-{i}-{pad}"))
                    })
                    .collect();
                (p, values)
            })
            .collect();
        let answers = produce_many(addr, &batches);
        for ((partition, values), (error, base)) in batches.into_iter().zip(answers) {
            if error == 0 {
                for (i, v) in values.into_iter().enumerate() {
                    acked.insert((partition, base + i as i64), v);
                }
            }
        }
    }
}

/// One Produce v9 request (acks=1) with a batch per listed partition; each one's error code and
/// base offset, in the same order.
fn produce_many(addr: std::net::SocketAddr, batches: &[(i32, Vec<Bytes>)]) -> Vec<(i16, i64)> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use std::io::Write;
    let mut topic = TopicProduceData::default();
    topic.name = TopicName(StrBytes::from_static_str(TOPIC));
    topic.partition_data = batches
        .iter()
        .map(|(p, values)| {
            let mut data = PartitionProduceData::default();
            data.index = *p;
            data.records = Some(record_batch_of(PLAIN, values));
            data
        })
        .collect();
    let mut request = ProduceRequest::default();
    request.acks = 1;
    request.timeout_ms = 5000;
    request.topic_data = vec![topic];
    let mut s = common::wire::connect(addr);
    s.write_all(&common::wire::frame(ApiKey::Produce, 9, 1, &request))
        .unwrap();
    let mut body = common::wire::read_frame(&mut s).expect("produce response");
    ResponseHeader::decode(&mut body, 1).unwrap();
    let response = ProduceResponse::decode(&mut body, 9).unwrap();
    batches
        .iter()
        .map(|(p, _)| {
            let answer = response.responses[0]
                .partition_responses
                .iter()
                .find(|r| r.index == *p)
                .expect("an answer per partition");
            (answer.error_code, answer.base_offset)
        })
        .collect()
}

/// Every acked record is stored at its acked offset; offsets are dense and each holds one value.
fn check(addr: std::net::SocketAddr, acked: &BTreeMap<(i32, i64), Bytes>, case: u64, seed: u64) {
    for p in 0..PARTITIONS {
        let stored = fetch_all(addr, TOPIC, p);
        for (i, (offset, _)) in stored.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "case {case} (seed {seed}): offsets of partition {p} not dense"
            );
        }
        for ((ap, offset), value) in acked.range((p, i64::MIN)..(p + 1, i64::MIN)) {
            let got = stored.get(*offset as usize).map(|(_, v)| v);
            assert_eq!(
                got,
                Some(value),
                "case {case} (seed {seed}): acked record {ap}-{offset} lost or changed"
            );
        }
    }
}

#[test]
fn acked_records_survive_seeded_power_cuts_and_no_offset_holds_two_values() {
    let cases = env_u64("CHRONIK_POWER_CASES", DEFAULT_CASES);
    let seed = env_u64("CHRONIK_POWER_SEED", DEFAULT_SEED);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let (mut acked_total, mut second_cuts) = (0usize, 0u64);
    for case in 0..cases {
        let mut rng = Rng((seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        let dir = tempfile::tempdir().unwrap();
        let profile = PROFILES[rng.below(PROFILES.len() as u64) as usize];
        // A healthy first life creates the topic, so every case cuts into produce traffic.
        let broker = start(&runtime, dir.path(), profile, None);
        create_topic(broker.local_addr, TOPIC, PARTITIONS);
        runtime.block_on(broker.shutdown());

        let mut acked = BTreeMap::new();
        let synced: Synced = Arc::default();
        let broker = start(
            &runtime,
            dir.path(),
            profile,
            Some((1 + rng.below(80), synced.clone())),
        );
        produce_some(
            broker.local_addr,
            5 + rng.below(50),
            "a",
            &mut rng,
            &mut acked,
        );
        runtime.block_on(broker.shutdown());
        // A third of the cases end the first life with a process crash instead: the page
        // cache survives (nothing is cut), and the power fails only after the recovery, which
        // must not have relied on bytes it never made durable.
        let process_crash = rng.below(3) == 0;
        if !process_crash {
            cut_power(dir.path(), &synced, &mut rng);
        }

        if process_crash || rng.below(2) == 0 {
            // Power fails (again) soon after the recovery.
            second_cuts += 1;
            let synced: Synced = Arc::default();
            let broker = start(
                &runtime,
                dir.path(),
                profile,
                Some((1 + rng.below(20), synced.clone())),
            );
            check(broker.local_addr, &acked, case, seed);
            // Let checkpoints run first: they may delete the recovered WAL segments, which is
            // safe only if what they covered is durable in the partition logs by then.
            std::thread::sleep(RECOVERED_CHECKPOINTS_WAIT);
            produce_some(
                broker.local_addr,
                3 + rng.below(20),
                "b",
                &mut rng,
                &mut acked,
            );
            runtime.block_on(broker.shutdown());
            cut_power(dir.path(), &synced, &mut rng);
        }
        let broker = start(&runtime, dir.path(), profile, None);
        check(broker.local_addr, &acked, case, seed);
        runtime.block_on(broker.shutdown());
        acked_total += acked.len();
    }
    eprintln!(
        "{cases} power-cut cases (seed {seed}, {second_cuts} cut right after a recovery): {acked_total} acked records, none lost, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
