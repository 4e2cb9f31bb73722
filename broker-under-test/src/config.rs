//! One validated configuration, from flags and `CHRONIK_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::cluster::Cluster;
use crate::profile::{FlushProfileName, ProduceFlushProfile};
use crate::wal::group_commit::FsyncPolicy;

/// Kafka's default `message.max.bytes` (1 MiB + record batch overhead).
const BATCH_BYTES_MAX_DEFAULT: usize = 1_048_588;
/// The most record bytes one Fetch response carries (Kafka's `fetch.max.bytes`), whatever its
/// `max_bytes` and per-partition limits ask; one batch more when the first batch alone is
/// larger (KIP-74), and a batch is at most `--batch-bytes-max`. Kafka's default, 55 MiB, is
/// sized for its zero-copy sends; this broker reads a response into memory, so its default is
/// the largest frame it accepts: 16 partitions at the consumers' default 1 MiB each.
const FETCH_BYTES_MAX_DEFAULT: usize = FRAME_BYTES_MAX_DEFAULT;
/// Largest request frame accepted; a bigger length prefix closes the connection before any
/// allocation.
const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Requests one connection may have in flight (pipelined) before the reader stops reading.
const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = 32;
/// Request bytes held in memory across all connections (Kafka's `queued.max.request.bytes`):
/// a frame's body is read only as budget frees up, so clients cannot make the broker hold
/// more than this however many frames they declare. At least one largest frame.
const REQUEST_BYTES_IN_FLIGHT_MAX_DEFAULT: usize = 128 << 20;
/// Open client connections (Kafka's `max.connections`); a connection past it is closed at once.
const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Partitions the whole broker holds. Each keeps an open segment file and an in-memory index,
/// so clients that create topics (or auto-create them by naming them) must not be able to make
/// that unbounded; a create beyond it is refused with POLICY_VIOLATION.
const PARTITIONS_MAX_DEFAULT: usize = 4096;
/// A connection that sends nothing for this long is closed (Kafka's `connections.max.idle.ms`).
const CONNECTION_IDLE_MS_DEFAULT: u64 = 600_000;
const SEGMENT_BYTES_DEFAULT: u64 = 128 << 20;
const WAL_SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// A quiet fdatasync of a group commit on the project's 2-core VM (about 0.3 ms, 2026-12).
const SIMULATED_FSYNC_US_DEFAULT: u64 = 300;
/// Upper bound on bytes one group commit writes before syncing.
const GROUP_COMMIT_BYTES_MAX: usize = 8 << 20;
/// Bytes queued for the WAL writer across all connections; produce waits beyond it.
const WAL_QUEUED_BYTES_MAX: usize = 256 << 20;
const CHECKPOINT_INTERVAL_MS: u64 = 500;
/// Kafka's `replica.lag.time.max.ms` is 30 s; a loopback cluster notices a dead follower sooner.
const REPLICA_LAG_TIME_MAX_MS_DEFAULT: u64 = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "chronik-broker",
    version,
    about = "Reference Kafka-wire broker under test",
    after_help = "Failover: `chronik-broker promote --help`."
)]
pub struct BrokerArgs {
    /// Address to listen on (port 0 picks a free port, printed on stdout). Default
    /// 127.0.0.1:9092, or this broker's address in `--cluster`.
    #[arg(long, env = "CHRONIK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A second listener, for clients only (Kafka's separate client and inter-broker
    /// listeners): `--listen` (in a cluster, the broker's `address`) is then the brokers', and
    /// a replica fetch on this one is refused (CLUSTER_AUTHORIZATION_FAILED), so no client can
    /// pose as a follower. In a cluster, give the broker this `client_address` so clients are
    /// told it.
    #[arg(long, env = "CHRONIK_CLIENT_LISTEN")]
    pub client_listen: Option<SocketAddr>,
    /// Host clients are told to connect to (default: the listen IP).
    #[arg(long, env = "CHRONIK_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to (default: the bound port).
    #[arg(long, env = "CHRONIK_ADVERTISED_PORT")]
    pub advertised_port: Option<u16>,
    /// Directory for WAL, segments and group offsets.
    #[arg(long, env = "CHRONIK_DATA_DIR", default_value = "./chronik-data")]
    pub data_dir: PathBuf,
    #[arg(
        long,
        env = "CHRONIK_FLUSH_PROFILE",
        value_enum,
        default_value = "high-throughput"
    )]
    pub flush_profile: FlushProfileName,
    #[arg(long, env = "CHRONIK_FSYNC", value_enum, default_value = "group")]
    pub fsync: FsyncPolicy,
    /// How long each group commit waits instead of its fdatasync with `--fsync simulated`
    /// (the default: this host's quiet fdatasync of a group commit's size).
    #[arg(long, env = "CHRONIK_SIMULATED_FSYNC_US", default_value_t = SIMULATED_FSYNC_US_DEFAULT)]
    pub simulated_fsync_us: u64,
    /// Partition log segment size before rolling.
    #[arg(long, env = "CHRONIK_SEGMENT_BYTES", default_value_t = SEGMENT_BYTES_DEFAULT)]
    pub segment_bytes: u64,
    /// WAL segment size before rolling (closed segments are deleted at checkpoints).
    #[arg(long, env = "CHRONIK_WAL_SEGMENT_BYTES", default_value_t = WAL_SEGMENT_BYTES_DEFAULT)]
    pub wal_segment_bytes: u64,
    /// Per-partition size above which the oldest segments are deleted (unlimited if unset).
    #[arg(long, env = "CHRONIK_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Largest record batch accepted (MESSAGE_TOO_LARGE above).
    #[arg(long, env = "CHRONIK_BATCH_BYTES_MAX", default_value_t = BATCH_BYTES_MAX_DEFAULT)]
    pub batch_bytes_max: usize,
    /// Most record bytes in one Fetch response, for consumers and followers alike (Kafka's
    /// `fetch.max.bytes`): a request asking for more gets this much.
    #[arg(long, env = "CHRONIK_FETCH_MAX_BYTES", default_value_t = FETCH_BYTES_MAX_DEFAULT)]
    pub fetch_max_bytes: usize,
    /// Partitions of automatically created topics.
    #[arg(long, env = "CHRONIK_DEFAULT_PARTITIONS", default_value_t = 1)]
    pub default_partitions: i32,
    /// Create unknown topics when a client's Metadata request allows it.
    #[arg(long, env = "CHRONIK_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,
    /// Wait for more members before completing a new group's first rebalance.
    #[arg(
        long,
        env = "CHRONIK_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 0
    )]
    pub group_initial_rebalance_delay_ms: u64,
    /// Request bytes held in memory across all connections; reading waits beyond it.
    #[arg(long, env = "CHRONIK_QUEUED_MAX_REQUEST_BYTES", default_value_t = REQUEST_BYTES_IN_FLIGHT_MAX_DEFAULT)]
    pub queued_max_request_bytes: usize,
    /// Open client connections; a connection past the limit is closed when accepted.
    #[arg(long, env = "CHRONIK_MAX_CONNECTIONS", default_value_t = CONNECTIONS_MAX_DEFAULT)]
    pub max_connections: usize,
    /// Partitions the broker may hold in all; creating more is refused (POLICY_VIOLATION).
    #[arg(long, env = "CHRONIK_MAX_PARTITIONS", default_value_t = PARTITIONS_MAX_DEFAULT)]
    pub max_partitions: usize,
    /// Close a connection that sends nothing for this long (milliseconds).
    #[arg(long, env = "CHRONIK_CONNECTIONS_MAX_IDLE_MS", default_value_t = CONNECTION_IDLE_MS_DEFAULT)]
    pub connections_max_idle_ms: u64,
    /// This broker's id (its `[[broker]]` entry in the cluster file).
    #[arg(long, env = "CHRONIK_BROKER_ID", default_value_t = 1)]
    pub broker_id: i32,
    /// Cluster description (TOML, one `[[broker]]` table per broker with `id` and `address`).
    /// Without it the broker is a single-node cluster. With it, the broker listens on its
    /// entry's address unless `--listen` says otherwise, and advertises that address.
    #[arg(long, env = "CHRONIK_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Replicas of topics created without an explicit replication factor.
    #[arg(long, env = "CHRONIK_DEFAULT_REPLICATION_FACTOR", default_value_t = 1)]
    pub default_replication_factor: i16,
    /// acks=all succeeds only while at least this many replicas (leader included) are in sync;
    /// otherwise NOT_ENOUGH_REPLICAS (Kafka's `min.insync.replicas`).
    #[arg(long, env = "CHRONIK_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub min_insync_replicas: usize,
    /// A follower that has not caught up with the leader's durable end for this long leaves
    /// the in-sync set (Kafka's `replica.lag.time.max.ms`).
    #[arg(long, env = "CHRONIK_REPLICA_LAG_TIME_MAX_MS", default_value_t = REPLICA_LAG_TIME_MAX_MS_DEFAULT)]
    pub replica_lag_time_max_ms: u64,
    /// With controllers in the cluster file: a broker whose heartbeats stop this long is
    /// fenced (Kafka's `broker.session.timeout.ms`).
    #[arg(
        long,
        env = "CHRONIK_BROKER_SESSION_TIMEOUT_MS",
        default_value_t = 9_000
    )]
    pub broker_session_timeout_ms: u64,
    /// How often a broker heartbeats to the active controller (Kafka's
    /// `broker.heartbeat.interval.ms`).
    #[arg(
        long,
        env = "CHRONIK_BROKER_HEARTBEAT_INTERVAL_MS",
        default_value_t = 2_000
    )]
    pub broker_heartbeat_interval_ms: u64,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `chronik_broker=debug`.
    #[arg(long, env = "CHRONIK_LOG", default_value = "info")]
    pub log_level: String,
}

/// Validated settings the broker runs with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// The clients-only listener (`--client-listen`), if any.
    pub client_listen: Option<SocketAddr>,
    pub advertised_host: Option<String>,
    pub advertised_port: Option<u16>,
    pub data_dir: PathBuf,
    pub profile: ProduceFlushProfile,
    pub fsync: FsyncPolicy,
    pub simulated_fsync: Duration,
    pub segment_bytes: u64,
    pub wal_segment_bytes: u64,
    pub retention_bytes: Option<u64>,
    pub batch_bytes_max: usize,
    pub fetch_bytes_max: usize,
    pub frame_bytes_max: usize,
    pub connection_requests_in_flight_max: usize,
    pub request_bytes_in_flight_max: usize,
    pub connections_max: usize,
    pub connection_idle: Duration,
    pub partitions_max: usize,
    pub group_commit_bytes_max: usize,
    pub wal_queued_bytes_max: usize,
    pub checkpoint_interval: Duration,
    pub default_partitions: i32,
    pub auto_create_topics: bool,
    pub group_initial_rebalance_delay: Duration,
    /// The brokers and this broker's id in them (a single-node cluster without `--cluster`).
    pub cluster: Cluster,
    pub default_replication_factor: i16,
    pub min_insync_replicas: usize,
    pub replica_lag_time_max: Duration,
    pub broker_session_timeout: Duration,
    pub broker_heartbeat_interval: Duration,
}

impl BrokerConfig {
    /// Defaults for a broker on `listen` with data in `data_dir` (tests and embedding).
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self::from_args(BrokerArgs::parse_from([
            "chronik-broker".into(),
            format!("--listen={listen}"),
            format!("--data-dir={}", data_dir.display()),
        ]))
        .expect("defaults are valid")
    }

    pub fn from_args(args: BrokerArgs) -> Result<Self, String> {
        check_sizes(&args)?;
        let listen_default = SocketAddr::from(([127, 0, 0, 1], 9092));
        let cluster = match &args.cluster {
            Some(path) => Cluster::load(path, args.broker_id)?,
            None => Cluster::single(args.broker_id, args.listen.unwrap_or(listen_default)),
        };
        let own = cluster.broker(args.broker_id).expect("validated").address;
        let factor = usize::try_from(args.default_replication_factor).unwrap_or(0);
        if !(1..=cluster.size()).contains(&factor) {
            return Err(format!(
                "--default-replication-factor must be between 1 and the {} broker(s) of the cluster",
                cluster.size()
            ));
        }
        if !(1..=cluster.size()).contains(&args.min_insync_replicas) {
            return Err(format!(
                "--min-insync-replicas must be between 1 and the {} broker(s) of the cluster",
                cluster.size()
            ));
        }
        if args.broker_heartbeat_interval_ms == 0
            || args.broker_heartbeat_interval_ms >= args.broker_session_timeout_ms
        {
            return Err(
                "--broker-heartbeat-interval-ms must be positive and below --broker-session-timeout-ms"
                    .into(),
            );
        }
        if args.replica_lag_time_max_ms == 0 {
            return Err("--replica-lag-time-max-ms must be positive".into());
        }
        let in_cluster = args.cluster.is_some();
        Ok(Self {
            listen: args.listen.unwrap_or(own),
            client_listen: args.client_listen,
            // In a cluster every broker tells clients the addresses of the cluster file.
            advertised_host: args
                .advertised_host
                .or_else(|| in_cluster.then(|| own.ip().to_string())),
            advertised_port: args
                .advertised_port
                .or_else(|| in_cluster.then(|| own.port())),
            data_dir: args.data_dir,
            profile: ProduceFlushProfile::named(args.flush_profile),
            fsync: args.fsync,
            simulated_fsync: Duration::from_micros(args.simulated_fsync_us),
            segment_bytes: args.segment_bytes,
            wal_segment_bytes: args.wal_segment_bytes,
            retention_bytes: args.retention_bytes,
            batch_bytes_max: args.batch_bytes_max,
            fetch_bytes_max: args.fetch_max_bytes,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connection_requests_in_flight_max: CONNECTION_REQUESTS_IN_FLIGHT_MAX,
            request_bytes_in_flight_max: args.queued_max_request_bytes,
            connections_max: args.max_connections,
            connection_idle: Duration::from_millis(args.connections_max_idle_ms),
            partitions_max: args.max_partitions,
            group_commit_bytes_max: GROUP_COMMIT_BYTES_MAX,
            wal_queued_bytes_max: WAL_QUEUED_BYTES_MAX,
            checkpoint_interval: Duration::from_millis(CHECKPOINT_INTERVAL_MS),
            default_partitions: args.default_partitions,
            auto_create_topics: args.auto_create_topics,
            group_initial_rebalance_delay: Duration::from_millis(
                args.group_initial_rebalance_delay_ms,
            ),
            cluster,
            default_replication_factor: args.default_replication_factor,
            min_insync_replicas: args.min_insync_replicas,
            replica_lag_time_max: Duration::from_millis(args.replica_lag_time_max_ms),
            broker_session_timeout: Duration::from_millis(args.broker_session_timeout_ms),
            broker_heartbeat_interval: Duration::from_millis(args.broker_heartbeat_interval_ms),
        })
    }
}

/// The flags that need no cluster to check: sizes, limits and counts.
fn check_sizes(args: &BrokerArgs) -> Result<(), String> {
    if args.segment_bytes < 4096 || args.wal_segment_bytes < 4096 {
        return Err("--segment-bytes and --wal-segment-bytes must be at least 4096".into());
    }
    if args.batch_bytes_max < crate::batch::BATCH_HEADER_BYTES
        || args.batch_bytes_max >= FRAME_BYTES_MAX_DEFAULT
    {
        return Err(format!(
            "--batch-bytes-max must be between {} and {}",
            crate::batch::BATCH_HEADER_BYTES,
            FRAME_BYTES_MAX_DEFAULT - 1
        ));
    }
    if args.fetch_max_bytes < args.batch_bytes_max {
        return Err(format!(
            "--fetch-max-bytes must be at least --batch-bytes-max ({})",
            args.batch_bytes_max
        ));
    }
    if args.queued_max_request_bytes < FRAME_BYTES_MAX_DEFAULT {
        return Err(format!(
            "--queued-max-request-bytes must be at least the largest frame, {FRAME_BYTES_MAX_DEFAULT}"
        ));
    }
    if args.max_connections == 0 || args.connections_max_idle_ms == 0 {
        return Err("--max-connections and --connections-max-idle-ms must be positive".into());
    }
    if !(1..=crate::topics::PARTITIONS_PER_TOPIC_MAX).contains(&args.default_partitions) {
        return Err("--default-partitions must be between 1 and 1024".into());
    }
    Ok(())
}
