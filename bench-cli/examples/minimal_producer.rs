//! A deliberately minimal closed-loop producer, independent of chronik-bench's machinery:
//! N tokio tasks, each awaiting one FutureProducer send at a time, for a fixed window. Used to
//! cross-check chronik-bench's throughput figure on the same broker (they must agree within 5%).
//!
//! With RATE, each task instead sends at RATE/CONCURRENCY messages per second (open loop), so
//! both tools can be checked against the same offered load.
//!
//! usage: minimal_producer BOOTSTRAP TOPIC CONCURRENCY SECONDS [MESSAGE_SIZE [RATE]]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Excluded from the count, like chronik-bench's warm-up.
const WARMUP: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: minimal_producer BOOTSTRAP TOPIC CONCURRENCY SECONDS [MESSAGE_SIZE [RATE]]"
        );
        std::process::exit(2);
    }
    let (bootstrap, topic) = (args[1].clone(), args[2].clone());
    let concurrency: usize = args[3].parse().expect("concurrency");
    let window = Duration::from_secs(args[4].parse().expect("seconds"));
    let size: usize = args.get(5).map_or(256, |s| s.parse().expect("size"));
    let rate: Option<f64> = args.get(6).map(|s| s.parse().expect("rate"));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "1")
        .set("linger.ms", "0")
        .set("compression.type", "none")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = vec![b'x'; size];
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
        let (acked, failed, counting, stop) = (
            acked.clone(),
            failed.clone(),
            counting.clone(),
            stop.clone(),
        );
        let mut pace = rate.map(|r| {
            let mut i = tokio::time::interval(Duration::from_secs_f64(concurrency as f64 / r));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            i
        });
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let record: FutureRecord<'_, (), [u8]> =
                    FutureRecord::to(&topic).payload(&payload[..]);
                let ok = producer.send(record, Duration::from_secs(30)).await.is_ok();
                if counting.load(Ordering::Relaxed) {
                    if ok { &acked } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let n = acked.load(Ordering::Relaxed);
    println!(
        "minimal_producer: {n} acked, {} failed in {elapsed:.2} s = {:.0} msg/s",
        failed.load(Ordering::Relaxed),
        n as f64 / elapsed
    );
}
