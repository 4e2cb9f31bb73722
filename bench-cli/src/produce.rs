//! Producer load: closed loop (`--concurrency` messages in flight, a new one sent when an ack
//! frees a slot) or open loop (`--rate`: messages scheduled at fixed intervals, latency from the
//! intended send time so a stall shows up in the percentiles).
//!
//! Every delivery report lands in the shared `Recorder`; nothing is sampled or dropped.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, RngCore, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::config::{BenchConfig, KeyPattern, PayloadPattern};
use crate::recorder::Recorder;

/// Bytes of random payload pre-generated; messages take slices of it at varying offsets.
const PAYLOAD_POOL_BYTES: usize = 1 << 16;
/// Back-off when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_micros(200);

/// The payload's first 8 bytes: wall-clock send time in ns since the Unix epoch (read by the
/// round-trip consumer).
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub struct DeliveryContext {
    start: Instant,
    recorder: Arc<Mutex<Recorder>>,
    slots: SyncSender<()>,
    /// `--verify-acked`: where each acked message landed.
    acked: Option<Arc<Mutex<Vec<AckedAt>>>>,
}

/// An acknowledged message: the partition and offset its ack named, and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AckedAt {
    pub partition: i32,
    pub offset: i64,
    pub id: u64,
}

/// With `--verify-acked`, a payload's id: its producer in the top 16 bits, its sequence
/// number in that producer below.
const ID_PRODUCER_SHIFT: u32 = 48;

/// The id in a verified payload (bytes 8..16), if it is long enough to hold one.
pub fn payload_id(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// Intended send time, ns since the run started.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, intended_ns: Box<u64>) {
        let now_ns = self.start.elapsed().as_nanos() as u64;
        {
            let mut recorder = self.recorder.lock().expect("recorder poisoned");
            match result {
                Ok(message) => {
                    recorder.record_ack(*intended_ns, now_ns, message.payload_len());
                    if let Some(acked) = &self.acked {
                        let id = message.payload().and_then(payload_id).unwrap_or(u64::MAX);
                        acked.lock().expect("acked poisoned").push(AckedAt {
                            partition: message.partition(),
                            offset: message.offset(),
                            id,
                        });
                    }
                }
                Err((err, _)) => {
                    // Purged after the drain timeout counts as timed out: the outcome is unknown.
                    let timed_out = matches!(
                        err,
                        KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageTimedOut
                                | RDKafkaErrorCode::PurgeQueue
                                | RDKafkaErrorCode::PurgeInflight
                        )
                    );
                    recorder.record_failure(now_ns, timed_out, &err.to_string());
                }
            }
        }
        // Free the slot; a full channel only happens after the sender stopped.
        let _ = self.slots.try_send(());
    }
}

pub type BenchProducer = ThreadedProducer<DeliveryContext>;

/// One producer instance and its sender loop's share of the load.
pub struct ProducerShare {
    pub producer: BenchProducer,
    /// Free in-flight slots; only this share's sender thread takes from it.
    slots: Mutex<Receiver<()>>,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub index: usize,
}

pub fn client_config(config: &BenchConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.producer_properties {
        client.set(key, value);
    }
    client
}

/// Creates `config.producers` producers, splitting concurrency and rate between them.
pub fn create_producers(
    config: &BenchConfig,
    start: Instant,
    recorder: &Arc<Mutex<Recorder>>,
    acked: Option<&Arc<Mutex<Vec<AckedAt>>>>,
) -> Result<Vec<ProducerShare>, KafkaError> {
    (0..config.producers)
        .map(|index| {
            let concurrency = config.concurrency / config.producers
                + usize::from(index < config.concurrency % config.producers);
            let (tx, rx) = mpsc::sync_channel(concurrency);
            for _ in 0..concurrency {
                tx.send(()).expect("capacity equals concurrency");
            }
            let producer = client_config(config).create_with_context(DeliveryContext {
                start,
                recorder: recorder.clone(),
                slots: tx,
                acked: acked.cloned(),
            })?;
            Ok(ProducerShare {
                producer,
                slots: Mutex::new(rx),
                concurrency,
                rate: config.rate.map(|r| r / config.producers as f64),
                index,
            })
        })
        .collect()
}

struct PayloadSource {
    pool: Vec<u8>,
    buf: Vec<u8>,
    size: usize,
    rng: rand::rngs::SmallRng,
    /// `--verify-acked`: the producer's part of every id it writes.
    id_base: Option<u64>,
}

impl PayloadSource {
    fn new(pattern: PayloadPattern, size: usize, seed: u64, id_base: Option<u64>) -> Self {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut pool = vec![0u8; PAYLOAD_POOL_BYTES + size];
        match pattern {
            PayloadPattern::Random => rng.fill_bytes(&mut pool),
            PayloadPattern::Zeros => {}
            PayloadPattern::Text => {
                let text = b"{\"event\":\"page_view\",\"user\":12345,\"path\":\"/products/42\",\"ok\":true} ";
                for (i, b) in pool.iter_mut().enumerate() {
                    *b = text[i % text.len()];
                }
            }
        }
        Self {
            pool,
            buf: vec![0; size],
            size,
            rng,
            id_base,
        }
    }

    fn next(&mut self, seq: u64) -> &[u8] {
        let at = (seq as usize * 61) % PAYLOAD_POOL_BYTES;
        self.buf.copy_from_slice(&self.pool[at..at + self.size]);
        self.buf[..8].copy_from_slice(&wall_clock_ns().to_be_bytes());
        if let Some(base) = self.id_base {
            self.buf[8..16].copy_from_slice(&(base | seq).to_be_bytes());
        }
        &self.buf
    }

    fn key(&mut self, pattern: KeyPattern, seq: u64) -> Option<String> {
        match pattern {
            KeyPattern::None => None,
            KeyPattern::Sequential => Some(seq.to_string()),
            KeyPattern::Random => Some(self.rng.random::<u32>().to_string()),
        }
    }
}

/// What one sender loop did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendStats {
    pub sent: u64,
    /// Open loop: messages scheduled inside the measured window.
    pub offered_in_window: u64,
}

/// Sends until the window ends or the message budget is spent. Runs on its own thread.
pub fn send_loop(
    share: &ProducerShare,
    config: &BenchConfig,
    start: Instant,
    recorder: &Arc<Mutex<Recorder>>,
    message_budget: Option<u64>,
) -> SendStats {
    let window_start = config.warmup();
    let window_end = window_start + config.duration();
    let mut payloads = PayloadSource::new(
        config.payload_pattern,
        config.message_size,
        0x5eed + share.index as u64,
        config
            .verify_acked
            .then_some((share.index as u64) << ID_PRODUCER_SHIFT),
    );
    let mut stats = SendStats::default();
    let interval_ns = share.rate.map(|r| (1e9 / r) as u64);
    loop {
        if message_budget.is_some_and(|b| stats.sent >= b) {
            break;
        }
        let intended_ns = match interval_ns {
            Some(step) => {
                let intended = Duration::from_nanos(stats.sent * step);
                if intended >= window_end {
                    break;
                }
                if let Some(wait) = intended.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                if intended >= window_start {
                    stats.offered_in_window += 1;
                }
                intended.as_nanos() as u64
            }
            None => 0,
        };
        let remaining = window_end.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            break;
        }
        match share
            .slots
            .lock()
            .expect("slots poisoned")
            .recv_timeout(remaining)
        {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
        let intended_ns = if interval_ns.is_some() {
            intended_ns
        } else {
            start.elapsed().as_nanos() as u64
        };
        let key = payloads.key(config.key_pattern, stats.sent);
        let payload = payloads.next(stats.sent);
        let mut record =
            BaseRecord::with_opaque_to(&config.topic, Box::new(intended_ns)).payload(payload);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        send(share, record, start, recorder);
        stats.sent += 1;
    }
    stats
}

/// Hands one record to rdkafka, waiting out a full queue; a record it refuses otherwise is
/// recorded as a failure and its in-flight slot freed.
fn send(
    share: &ProducerShare,
    mut record: BaseRecord<'_, str, [u8], Box<u64>>,
    start: Instant,
    recorder: &Arc<Mutex<Recorder>>,
) {
    loop {
        match share.producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
            Err((err, _)) => {
                let now_ns = start.elapsed().as_nanos() as u64;
                recorder.lock().expect("recorder poisoned").record_failure(
                    now_ns,
                    false,
                    &err.to_string(),
                );
                // The message never left; its slot is free again.
                let _ = share.producer.context().slots.try_send(());
                return;
            }
        }
    }
}

/// Waits for in-flight messages; whatever is still in flight after `timeout` is purged and
/// reported as timed out by librdkafka's delivery callbacks.
pub fn drain(share: &ProducerShare, timeout: Duration) {
    if share.producer.flush(timeout).is_err() {
        share
            .producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        let _ = share.producer.flush(Duration::from_secs(5));
    }
}

/// Messages still not answered (used to check that every send got an outcome).
pub fn in_flight(share: &ProducerShare) -> i32 {
    share.producer.in_flight_count()
}
