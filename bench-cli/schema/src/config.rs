//! Command line -> one validated `BenchConfig`. Every client setting that changes results is
//! set explicitly here (never left to a librdkafka default) and recorded in the JSON output.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Produce,
    Consume,
    RoundTrip,
    Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all", alias = "-1")]
    All,
}

impl Acks {
    fn as_config(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyPattern {
    /// No key: the partitioner spreads messages.
    None,
    /// Key = message sequence number.
    Sequential,
    /// Key = random number.
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadPattern {
    /// Random bytes (incompressible).
    Random,
    /// All zeros (maximally compressible).
    Zeros,
    /// Repeating text (compresses like typical JSON).
    Text,
}

/// Upper bounds that keep every run finite.
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
const CONCURRENCY_MAX: usize = 1_000_000;
const MESSAGE_SIZE_MAX: usize = 16 << 20;
const PRODUCERS_MAX: usize = 64;

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30s, 500ms, 2m)"))
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chronik-bench",
    version,
    about = "Kafka load generator that records every delivery"
)]
pub struct BenchArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, short = 'b', default_value = "localhost:9092")]
    pub bootstrap_servers: String,
    #[arg(long, short = 't', default_value = "chronik-bench")]
    pub topic: String,
    #[arg(long, value_enum, default_value = "produce")]
    pub mode: Mode,
    /// Messages in flight (closed loop). With --rate, an upper bound on messages in flight.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: offer this many messages per second at fixed intervals; latency is measured
    /// from each message's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, short = 's', default_value_t = 256)]
    pub message_size: usize,
    /// Stop sending after this many messages (warm-up included).
    #[arg(long)]
    pub message_count: Option<u64>,
    /// Length of the measured window.
    #[arg(long, short = 'd', default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured window; excluded from the results, reported separately.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How long to wait for in-flight messages after the window closes.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Partitions when creating the topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    #[arg(long, value_enum, default_value = "1")]
    pub acks: Acks,
    /// Producer linger.ms. 0 by default: with a fixed number of messages in flight, any linger
    /// adds directly to every round trip (128 in flight / (linger + fsync) caps the rate).
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Producer batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "none")]
    pub compression: Compression,
    #[arg(long, value_enum, default_value = "none")]
    pub key_pattern: KeyPattern,
    #[arg(long, value_enum, default_value = "random")]
    pub payload_pattern: PayloadPattern,
    /// Enable the idempotent producer.
    #[arg(long)]
    pub idempotent: bool,
    /// Per-message delivery timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub message_timeout: Duration,
    /// Create the topic before the run (an existing topic is fine).
    #[arg(long)]
    pub create_topic: bool,
    /// Delete the topic after the run.
    #[arg(long)]
    pub delete_topic: bool,
    /// Separate client instances; concurrency and rate are split between them.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer group for consume mode (default: assign partitions without a group).
    #[arg(long)]
    pub group: Option<String>,
    /// Extra librdkafka properties, applied last: -X key=value (repeatable).
    #[arg(short = 'X', value_parser = parse_property)]
    pub property: Vec<(String, String)>,
    /// Progress line interval (0s: none).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub report_interval: Duration,
    /// How long to wait for the broker before giving up with exit code 3.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Write the full result (schema `chronik-bench/v1`) as JSON.
    #[arg(long)]
    pub json_output: Option<std::path::PathBuf>,
    /// Write the summary and per-second series as CSV.
    #[arg(long)]
    pub csv_output: Option<std::path::PathBuf>,
    /// No progress lines or console box (JSON/CSV only).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Produce mode: give every message a unique id, remember the offset each ack names, and
    /// read the topic back after the run. Every acknowledged message must be at its offset
    /// (exit 5 when one is not); the result also says how long the run went without an ack.
    /// Needs --message-size of at least 16.
    #[arg(long)]
    pub verify_acked: bool,
}

/// Validated run settings; serialised into every result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub mode: Mode,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub message_size: usize,
    pub message_count: Option<u64>,
    pub duration_ms: u64,
    pub warmup_ms: u64,
    pub drain_timeout_ms: u64,
    pub partitions: i32,
    pub replication_factor: i32,
    pub acks: Acks,
    pub compression: Compression,
    pub key_pattern: KeyPattern,
    pub payload_pattern: PayloadPattern,
    pub create_topic: bool,
    pub delete_topic: bool,
    pub producers: usize,
    pub group: Option<String>,
    pub report_interval_ms: u64,
    pub connect_timeout_ms: u64,
    /// Every librdkafka producer property the run set, after `-X` overrides.
    pub producer_properties: BTreeMap<String, String>,
    /// Acked messages checked against a read-back of the topic (`--verify-acked`).
    #[serde(default)]
    pub verify_acked: bool,
}

/// With `--verify-acked`, bytes 8..16 of a payload hold the message's id.
pub const VERIFIED_MESSAGE_SIZE_MIN: usize = 16;

impl BenchConfig {
    pub fn from_args(args: &BenchArgs) -> Result<Self, String> {
        if args.duration.is_zero() || args.duration > DURATION_MAX {
            return Err("--duration must be between 1ms and 24h".into());
        }
        if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
            return Err(format!(
                "--concurrency must be between 1 and {CONCURRENCY_MAX}"
            ));
        }
        if args.producers == 0
            || args.producers > PRODUCERS_MAX
            || args.producers > args.concurrency
        {
            return Err(format!(
                "--producers must be between 1 and min({PRODUCERS_MAX}, --concurrency)"
            ));
        }
        if args.message_size < 8 || args.message_size > MESSAGE_SIZE_MAX {
            return Err(format!(
                "--message-size must be between 8 (room for the send timestamp) and {MESSAGE_SIZE_MAX}"
            ));
        }
        if args.verify_acked
            && (args.mode != Mode::Produce || args.message_size < VERIFIED_MESSAGE_SIZE_MIN)
        {
            return Err(format!(
                "--verify-acked needs --mode produce and --message-size of at least {VERIFIED_MESSAGE_SIZE_MIN} (room for the id)"
            ));
        }
        if let Some(rate) = args.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of messages per second".into());
            }
        }
        if args.partitions < 1 || args.replication_factor < 1 {
            return Err("--partitions and --replication-factor must be at least 1".into());
        }
        if args.bootstrap_servers.trim().is_empty() {
            return Err("--bootstrap-servers must not be empty".into());
        }
        let mut props = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            props.insert(k.to_owned(), v);
        };
        set("bootstrap.servers", args.bootstrap_servers.clone());
        set("acks", args.acks.as_config().into());
        set("linger.ms", args.linger_ms.to_string());
        set("batch.size", args.batch_size.to_string());
        set("batch.num.messages", "10000".into());
        set(
            "compression.type",
            format!("{:?}", args.compression).to_lowercase(),
        );
        set("enable.idempotence", args.idempotent.to_string());
        set(
            "message.timeout.ms",
            args.message_timeout.as_millis().to_string(),
        );
        set("request.timeout.ms", "30000".into());
        set(
            "max.in.flight.requests.per.connection",
            if args.idempotent { "5" } else { "1000000" }.into(),
        );
        set("queue.buffering.max.messages", "1000000".into());
        set("queue.buffering.max.kbytes", "1048576".into());
        set(
            "message.max.bytes",
            (args.message_size.max(1_000_000) + 4096).to_string(),
        );
        set("socket.nagle.disable", "true".into());
        set("retries", "2147483647".into());
        for (key, value) in &args.property {
            props.insert(key.clone(), value.clone());
        }
        Ok(Self {
            bootstrap_servers: args.bootstrap_servers.clone(),
            topic: args.topic.clone(),
            mode: args.mode,
            concurrency: args.concurrency,
            rate: args.rate,
            message_size: args.message_size,
            message_count: args.message_count,
            duration_ms: args.duration.as_millis() as u64,
            warmup_ms: args.warmup.as_millis() as u64,
            drain_timeout_ms: args.drain_timeout.as_millis() as u64,
            partitions: args.partitions,
            replication_factor: args.replication_factor,
            acks: args.acks,
            compression: args.compression,
            key_pattern: args.key_pattern,
            payload_pattern: args.payload_pattern,
            create_topic: args.create_topic,
            delete_topic: args.delete_topic,
            producers: args.producers,
            group: args.group.clone(),
            report_interval_ms: args.report_interval.as_millis() as u64,
            connect_timeout_ms: args.connect_timeout.as_millis() as u64,
            producer_properties: props,
            verify_acked: args.verify_acked,
        })
    }

    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
    pub fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }
}
