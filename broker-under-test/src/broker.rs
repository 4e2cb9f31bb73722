//! Assembles the broker: recovery, WAL writer, handlers, listener, checkpointer, shutdown.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::ApiContext;
use crate::config::BrokerConfig;
use crate::fail_stop::FailStop;
use crate::flush::Flusher;
use crate::groups::GroupCoordinator;
use crate::log::LogError;
use crate::produce::ProduceHandler;
use crate::producer_ids::ProducerIds;
use crate::replication::fetcher::Fetcher;
use crate::request_times::RequestTimes;
use crate::server::RequestBudget;
use crate::topics::{Placement, TopicRegistry};
use crate::wal::group_commit::{GroupCommitWal, WalWriterConfig};
use crate::wal::storage::{FileWalStorage, WalStorage};
use crate::wal::{self, WalRecoveryError};

/// Exit code when stored data is damaged beyond a torn tail (the broker refuses to start).
pub const EXIT_DATA_CORRUPT: u8 = 65;
/// Exit code when storage fails (a failed write or fsync while running, or at start).
pub const EXIT_STORAGE_FAILED: u8 = 74;
/// Exit code when the listen address cannot be bound or the data dir is in use.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// How long the listener rests after a failed accept (EMFILE) before it tries again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Connections may hold at most this fraction (1/N) of the process's open files limit; the
/// rest stays for segment and WAL files, so a flood of connections cannot starve storage.
const OPEN_FILES_PER_CONNECTION_SLOT: usize = 2;

/// `--max-connections`, lowered to a share of the open files limit when that is smaller.
/// How long a starting broker waits for each peer's topics and elections.
const PEER_LEARN_AT_START_MAX: std::time::Duration = std::time::Duration::from_secs(2);

fn connections_max(configured: usize) -> usize {
    let Some(open_files) = open_files_soft_limit() else {
        return configured;
    };
    let share = usize::try_from(open_files / OPEN_FILES_PER_CONNECTION_SLOT as u64)
        .unwrap_or(usize::MAX)
        .max(1);
    if share < configured {
        tracing::warn!(
            "at most {share} connections (half the open files limit of {open_files}; \
             --max-connections is {configured}): raise the limit (ulimit -n) for more"
        );
    }
    configured.min(share)
}

/// The soft limit on open files (RLIMIT_NOFILE) from /proc/self/limits, if it is finite.
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Wal(#[from] WalRecoveryError),
    #[error("storage error in {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another broker")]
    DataDirLocked(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Log(LogError::Corrupt { .. })
            | StartError::Wal(
                WalRecoveryError::Corrupt { .. }
                | WalRecoveryError::Replay(_)
                | WalRecoveryError::Format { .. },
            ) => EXIT_DATA_CORRUPT,
            StartError::Log(_) | StartError::Wal(_) | StartError::Storage { .. } => {
                EXIT_STORAGE_FAILED
            }
            StartError::DataDirLocked(_) | StartError::Bind { .. } => EXIT_UNAVAILABLE,
        }
    }
}

/// A started broker. Dropping it without `shutdown` leaves its tasks running until the runtime
/// ends (as a crash would).
pub struct RunningBroker {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    fatal: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl RunningBroker {
    /// Stops accepting, closes connections, writes pending batches to segments and fsyncs them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Resolves with the reason when storage failed (the broker is then fail-stopped).
    pub async fn fatal(&mut self) -> String {
        loop {
            if let Some(reason) = self.fatal.borrow().clone() {
                return reason;
            }
            if self.fatal.changed().await.is_err() {
                return "broker stopped".into();
            }
        }
    }
}

/// How often partitions are asked to move written segment data to disk, and how much must
/// have been written for one to do it: small steps, so no fsync of many megabytes ever sits in
/// the disk's queue in front of the WAL's fdatasync (measured in BENCHMARKS.md, "Tail latency").
const LOG_WRITEBACK_INTERVAL: Duration = Duration::from_millis(20);
const LOG_WRITEBACK_BYTES_MIN: u64 = 1 << 20;
/// After a write-back step, a partition's segment data leaves the page cache but for this many
/// of its newest bytes, which consumers reading the tail still find in memory. On this host a
/// page cache grown by a few GiB made every fdatasync slower, the WAL's with them, for the rest
/// of the run (BENCHMARKS.md, "Tail latency", 2026-11-28). PostgreSQL drops its closed WAL files the same way.
const LOG_CACHE_KEPT_BYTES: u64 = 8 << 20;

/// Runs until aborted: `Partition::write_back` of every partition, every
/// `LOG_WRITEBACK_INTERVAL`. A failed fdatasync is fail-stop, as everywhere.
async fn write_back_logs(topics: Arc<TopicRegistry>, fail_stop: FailStop) {
    let mut ticker = tokio::time::interval(LOG_WRITEBACK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let topics = topics.clone();
        let result = tokio::task::spawn_blocking(move || {
            for partition in topics.all_partitions() {
                partition.write_back(LOG_WRITEBACK_BYTES_MIN, LOG_CACHE_KEPT_BYTES)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let reason = match result {
            Ok(Ok(())) => continue,
            Ok(Err(err)) => format!("segment write-back failed: {err}"),
            Err(panicked) => format!("segment write-back panicked: {panicked}"),
        };
        fail_stop.stop(reason);
        return;
    }
}

/// Opens the WAL's storage once recovery knows the next segment number: the WAL directory and
/// that number. `start` uses the file storage; tests wrap it to inject faults.
pub type OpenWalStorage =
    Box<dyn FnOnce(&Path, u64) -> std::io::Result<Box<dyn WalStorage>> + Send>;

/// Starts the broker on the file storage under `config.data_dir`.
pub async fn start(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    let segment_bytes = config.wal_segment_bytes;
    start_with_storage(
        config,
        Box::new(move |dir, seq| Ok(Box::new(FileWalStorage::create(dir, seq, segment_bytes)?))),
    )
    .await
}

/// Starts the broker with the WAL on the storage `open_wal` returns.
pub async fn start_with_storage(
    config: BrokerConfig,
    open_wal: OpenWalStorage,
) -> Result<RunningBroker, StartError> {
    let storage_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StartError::Storage { path, source }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(storage_err(&config.data_dir))?;
    let lock_path = config.data_dir.join(".lock");
    let lock_file = File::create(&lock_path).map_err(storage_err(&lock_path))?;
    if lock_file.try_lock().is_err() {
        return Err(StartError::DataDirLocked(config.data_dir.clone()));
    }
    let started = std::time::Instant::now();
    let keeper_wake = Arc::new(tokio::sync::Notify::new());
    let topics = Arc::new(TopicRegistry::open(
        &config.data_dir,
        config.segment_bytes,
        config.partitions_max,
        Placement {
            cluster: config.cluster.clone(),
            replica_lag_time_max: config.replica_lag_time_max,
            keeper: keeper_wake.clone(),
        },
    )?);
    let wal_dir = config.data_dir.join("wal");
    let recovered = wal::recover(&wal_dir, topics.as_ref())?;
    tracing::info!(
        "recovered {} topic(s); WAL: {} segment(s), {} record(s), {} torn byte(s) cut, in {:?}",
        topics.snapshot().len(),
        recovered.report.segments,
        recovered.report.records,
        recovered.report.torn_bytes_cut,
        started.elapsed()
    );
    let storage = open_wal(&wal_dir, recovered.next_seq).map_err(storage_err(&wal_dir))?;
    let (fail_stop, fatal_rx) = FailStop::new();
    let wal = Arc::new(
        GroupCommitWal::start(
            storage,
            WalWriterConfig {
                fsync: config.fsync,
                group_commit_linger: config.profile.group_commit_linger,
                group_commit_bytes_max: config.group_commit_bytes_max,
                segment_bytes_max: config.wal_segment_bytes,
                queued_bytes_max: config.wal_queued_bytes_max,
            },
            recovered.closed,
            fail_stop.clone(),
        )
        .map_err(storage_err(&wal_dir))?,
    );
    let flusher = Arc::new(Flusher::new(topics.clone(), &config, fail_stop.clone()));
    let produce = ProduceHandler::new(topics.clone(), wal.clone(), flusher.clone(), &config);
    let groups = Arc::new(
        GroupCoordinator::open(
            &config.data_dir,
            config.group_initial_rebalance_delay,
            fail_stop.clone(),
        )
        .map_err(storage_err(&config.data_dir))?,
    );
    let producer_ids =
        ProducerIds::open(&config.data_dir).map_err(storage_err(&config.data_dir))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let advertised_host = config.advertised_host.clone().unwrap_or_else(|| {
        if local_addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local_addr.ip().to_string()
        }
    });
    let advertised_port = i32::from(config.advertised_port.unwrap_or(local_addr.port()));
    let config = Arc::new(config);
    let ctx = Arc::new(ApiContext::new(
        config.clone(),
        advertised_host,
        advertised_port,
        topics.clone(),
        produce,
        groups,
        producer_ids,
    ));
    // Replication: the keeper (leader side) and one fetcher per other broker (follower side).
    // Aborted at shutdown, before the final flush.
    let mut replication = JoinSet::new();
    if config.cluster.size() > 1 {
        replication.spawn(crate::replication::keeper::run(
            topics.clone(),
            keeper_wake,
            config.replica_lag_time_max,
        ));
        for leader in config.cluster.peers() {
            let mut fetcher = Fetcher::new(
                topics.clone(),
                wal.clone(),
                leader.clone(),
                config.cluster.local_id(),
            );
            // Before the first connection is accepted: a broker that led before a failover
            // learns the newer election from its peers instead of taking produce requests as
            // the leader it was (a peer that is down answers at once with a refused connect).
            if !fetcher.learn_once(PEER_LEARN_AT_START_MAX).await {
                tracing::info!("broker {} did not answer at start", leader.id);
            }
            replication.spawn(fetcher.run());
        }
    }
    let budget = RequestBudget::new(config.request_bytes_in_flight_max);
    let connections_max = connections_max(config.connections_max);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let writeback = tokio::spawn(write_back_logs(topics.clone(), fail_stop.clone()));
    let times = RequestTimes::when_logged();
    let times_report = times.clone().map(|times| tokio::spawn(times.report()));
    let task = tokio::spawn(async move {
        let _lock = lock_file;
        let mut connections = JoinSet::new();
        let mut accept_failing = false;
        let mut ticker = tokio::time::interval(config.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) if connections.len() >= connections_max => {
                        tracing::debug!("refusing {peer}: {} connections open", connections.len());
                        drop(stream);
                    }
                    Ok((stream, _)) => {
                        if accept_failing {
                            accept_failing = false;
                            tracing::info!("accepting connections again");
                        }
                        connections.spawn(crate::server::serve_connection(stream, ctx.clone(), budget.clone(), times.clone()));
                    }
                    Err(err) => {
                        // Out of file descriptors, typically: accepting again at once would spin.
                        // Warned once per episode, not ten times a second.
                        if accept_failing {
                            tracing::debug!("accept failed: {err}");
                        } else {
                            accept_failing = true;
                            tracing::warn!("accept failed: {err}; retrying every {ACCEPT_ERROR_PAUSE:?}");
                        }
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
                _ = ticker.tick() => {
                    let (flusher, wal, dir) = (flusher.clone(), wal.clone(), wal_dir.clone());
                    let result = tokio::task::spawn_blocking(move || {
                        flusher.checkpoint(&dir, wal.shared())
                    }).await;
                    // Fail-stop, as for the WAL: a failed fsync is never retried, and a
                    // checkpoint that panicked left its partition in an unknown state. Out of
                    // file descriptors nothing was written: the next tick tries again.
                    let failed = match result {
                        Ok(Ok(_)) => None,
                        Ok(Err(err)) if crate::fail_stop::out_of_descriptors(&err) => {
                            tracing::warn!("WAL checkpoint postponed: {err}");
                            None
                        }
                        Ok(Err(err)) => Some(format!("WAL checkpoint failed: {err}")),
                        Err(panicked) => Some(format!("WAL checkpoint panicked: {panicked}")),
                    };
                    if let Some(reason) = failed {
                        fail_stop.stop(reason);
                        break;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {},
                _ = shutdown_rx.changed() => break,
            }
        }
        connections.shutdown().await;
        replication.shutdown().await;
        writeback.abort();
        times_report.iter().for_each(JoinHandle::abort);
        // After a fail-stop nothing more is written: recovery starts from what is durable.
        if !fail_stop.stopped() {
            let _ = tokio::task::spawn_blocking(move || flusher.final_flush()).await;
        }
        // Before the data-dir lock goes with this task: the WAL writer and its storage stop.
        let _ = tokio::task::spawn_blocking(move || wal.close()).await;
        tracing::info!("broker stopped");
    });
    Ok(RunningBroker {
        local_addr,
        shutdown: shutdown_tx,
        fatal: fatal_rx,
        task,
    })
}
