//! Assembles the broker: recovery and the WAL writer (`recover`), the handlers
//! (`api_context`), replication, then `serve`: connections (`server::Connections`), the
//! checkpoint ticker (`flush::checkpoint_tick`) and shutdown in order.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::ApiContext;
use crate::config::BrokerConfig;
use crate::controller::client::ControllerClient;
use crate::controller::publisher::BrokerMetadata;
use crate::controller::{lifecycle, Controller, ControllerConfig, ControllerError};
use crate::fail_stop::FailStop;
use crate::flush::{checkpoint_tick, write_back_logs, Flusher};
use crate::groups::GroupCoordinator;
use crate::log::LogError;
use crate::produce::ProduceHandler;
use crate::producer_ids::ProducerIds;
use crate::replication::fetcher::Fetcher;
use crate::request_times::RequestTimes;
use crate::server::{Connections, RequestBudget};
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
/// How long a starting broker waits for each peer's topics and elections.
const PEER_LEARN_AT_START_MAX: std::time::Duration = std::time::Duration::from_secs(2);

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
    #[error(transparent)]
    Controller(#[from] ControllerError),
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
            StartError::Controller(ControllerError::Io(_)) => EXIT_STORAGE_FAILED,
            StartError::Controller(_) => EXIT_UNAVAILABLE,
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

/// What recovery hands to the running broker: the data directory's lock, the topics with
/// every partition replayed, and the WAL writer started after the last recovered segment.
struct Recovered {
    lock_file: File,
    topics: Arc<TopicRegistry>,
    wal: Arc<GroupCommitWal>,
    wal_dir: PathBuf,
    keeper_wake: Arc<tokio::sync::Notify>,
    fail_stop: FailStop,
    fatal: watch::Receiver<Option<String>>,
}

/// Starts the broker with the WAL on the storage `open_wal` returns.
pub async fn start_with_storage(
    config: BrokerConfig,
    open_wal: OpenWalStorage,
) -> Result<RunningBroker, StartError> {
    // With controller voters, the broker follows the quorum's image from the start: its
    // replicated partitions have no leader until the image names one.
    let voters = config.cluster.voters();
    let metadata = (!voters.is_empty()).then(|| {
        Arc::new(BrokerMetadata::new(
            Arc::new(ControllerClient::new(voters)),
            config.cluster.local_id(),
            config.broker_session_timeout,
        ))
    });
    let Recovered {
        lock_file,
        topics,
        wal,
        wal_dir,
        keeper_wake,
        fail_stop,
        fatal,
    } = recover(&config, open_wal, metadata.as_ref())?;
    let flusher = Arc::new(Flusher::new(topics.clone(), &config, fail_stop.clone()));
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
    let client_listener = match config.client_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    // Clients are told the clients' listener when there is one.
    let advertised = match &client_listener {
        Some(listener) => listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?,
        None => local_addr,
    };
    let config = Arc::new(config);
    let ctx = api_context(
        &config,
        advertised,
        (&topics, &wal, &flusher),
        &fail_stop,
        metadata.clone(),
    )?;
    // Replication: the keeper (leader side) and one fetcher per other broker (follower side).
    // Aborted at shutdown, before the final flush.
    let replication =
        start_replication(&config, &topics, &wal, keeper_wake, metadata.clone()).await;
    let (controller, lifecycle) = start_controller(&config, &topics, metadata).await?;
    let times = RequestTimes::when_logged();
    let connections = Connections::new(
        (listener, client_listener),
        config.connections_max,
        ctx,
        RequestBudget::new(config.request_bytes_in_flight_max),
        times.clone(),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let background = Background {
        writeback: tokio::spawn(write_back_logs(topics.clone(), fail_stop.clone())),
        times_report: times.map(|times| tokio::spawn(times.report())),
        replication,
        controller,
        lifecycle,
    };
    let task = tokio::spawn(serve(
        config,
        connections,
        Storage {
            lock_file,
            flusher,
            wal,
            wal_dir,
        },
        background,
        fail_stop,
        shutdown_rx,
    ));
    Ok(RunningBroker {
        local_addr,
        shutdown: shutdown_tx,
        fatal,
        task,
    })
}

/// Locks the data directory, opens the topics, replays the WAL into them and starts the WAL
/// writer after the last recovered segment.
fn recover(
    config: &BrokerConfig,
    open_wal: OpenWalStorage,
    metadata: Option<&Arc<BrokerMetadata>>,
) -> Result<Recovered, StartError> {
    let storage_err = |path: &Path| {
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
            alter_isr: metadata.map(|m| m.alter_isr().clone()),
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
    let (fail_stop, fatal) = FailStop::new();
    let wal = Arc::new(
        GroupCommitWal::start(
            storage,
            WalWriterConfig {
                fsync: config.fsync,
                group_commit_linger: config.profile.group_commit_linger,
                group_commit_bytes_max: config.group_commit_bytes_max,
                segment_bytes_max: config.wal_segment_bytes,
                queued_bytes_max: config.wal_queued_bytes_max,
                simulated_fsync: config.simulated_fsync,
            },
            recovered.closed,
            fail_stop.clone(),
        )
        .map_err(storage_err(&wal_dir))?,
    );
    Ok(Recovered {
        lock_file,
        topics,
        wal,
        wal_dir,
        keeper_wake,
        fail_stop,
        fatal,
    })
}

/// The request handlers and what they share, advertising the address clients reach.
fn api_context(
    config: &Arc<BrokerConfig>,
    local_addr: SocketAddr,
    (topics, wal, flusher): (&Arc<TopicRegistry>, &Arc<GroupCommitWal>, &Arc<Flusher>),
    fail_stop: &FailStop,
    metadata: Option<Arc<BrokerMetadata>>,
) -> Result<Arc<ApiContext>, StartError> {
    let storage_err = |source| StartError::Storage {
        path: config.data_dir.clone(),
        source,
    };
    let produce = ProduceHandler::new(topics.clone(), wal.clone(), flusher.clone(), config);
    let groups = Arc::new(
        GroupCoordinator::open(
            &config.data_dir,
            config.group_initial_rebalance_delay,
            fail_stop.clone(),
        )
        .map_err(storage_err)?,
    );
    let producer_ids = ProducerIds::open(&config.data_dir).map_err(storage_err)?;
    let advertised_host = config.advertised_host.clone().unwrap_or_else(|| {
        if local_addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local_addr.ip().to_string()
        }
    });
    let advertised_port = i32::from(config.advertised_port.unwrap_or(local_addr.port()));
    Ok(Arc::new(ApiContext {
        config: config.clone(),
        advertised_host,
        advertised_port,
        topics: topics.clone(),
        produce,
        groups,
        producer_ids,
        metadata,
    }))
}

/// The keeper (leader side) and one fetcher per other broker (follower side); nothing on a
/// single broker.
async fn start_replication(
    config: &BrokerConfig,
    topics: &Arc<TopicRegistry>,
    wal: &Arc<GroupCommitWal>,
    keeper_wake: Arc<tokio::sync::Notify>,
    metadata: Option<Arc<BrokerMetadata>>,
) -> JoinSet<()> {
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
                metadata.clone(),
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
    replication
}

/// With voters in the cluster file: this broker's member of the controller quorum (when it
/// is a voter), its registration and heartbeats, and the tasks that follow the image and send
/// its leaders' in-sync requests (every broker).
async fn start_controller(
    config: &BrokerConfig,
    topics: &Arc<TopicRegistry>,
    metadata: Option<Arc<BrokerMetadata>>,
) -> Result<(Option<Controller>, Vec<JoinHandle<()>>), StartError> {
    let Some(metadata) = metadata else {
        return Ok((None, Vec::new()));
    };
    let local = config.cluster.local_id();
    let listen = config
        .cluster
        .broker(local)
        .and_then(|b| b.controller_address);
    let controller = match listen {
        Some(listen) => Some(
            Controller::start(ControllerConfig {
                id: u64::try_from(local).expect("cluster ids are not negative"),
                listen,
                voters: metadata.client().voters().clone(),
                dir: config.data_dir.join("controller"),
                session_timeout: config.broker_session_timeout,
            })
            .await?,
        ),
        None => None,
    };
    // Random per process, so the controller tells a restart from a late heartbeat.
    let incarnation = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), local);
    let tasks = vec![
        tokio::spawn(lifecycle::run(
            metadata.clone(),
            local,
            incarnation,
            config.broker_heartbeat_interval,
        )),
        tokio::spawn(metadata.clone().follow(topics.clone())),
        tokio::spawn(metadata.send_alter_isr()),
    ];
    Ok((controller, tasks))
}

/// What the running broker writes to, and what must stop last.
struct Storage {
    /// Held until the WAL is closed: no second broker on this directory before then.
    lock_file: File,
    flusher: Arc<Flusher>,
    wal: Arc<GroupCommitWal>,
    wal_dir: PathBuf,
}

/// Tasks beside the connections, stopped at shutdown before the final flush.
struct Background {
    writeback: JoinHandle<()>,
    times_report: Option<JoinHandle<()>>,
    replication: JoinSet<()>,
    controller: Option<Controller>,
    lifecycle: Vec<JoinHandle<()>>,
}

/// Runs until shutdown or a fail-stop: connections, and a checkpoint every
/// `checkpoint_interval`; then stops in order (connections, replication, background tasks,
/// the final flush unless storage failed, the WAL, the data directory's lock).
async fn serve(
    config: Arc<BrokerConfig>,
    mut connections: Connections,
    storage: Storage,
    mut background: Background,
    fail_stop: FailStop,
    mut shutdown: watch::Receiver<bool>,
) {
    let Storage {
        lock_file: _lock,
        flusher,
        wal,
        wal_dir,
    } = storage;
    let mut ticker = tokio::time::interval(config.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = connections.next() => {},
            _ = ticker.tick() => {
                if let Some(reason) = checkpoint_tick(&flusher, &wal, &wal_dir).await {
                    fail_stop.stop(reason);
                    break;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    connections.shutdown().await;
    background.replication.shutdown().await;
    background.lifecycle.iter().for_each(JoinHandle::abort);
    if let Some(controller) = background.controller {
        controller.shutdown().await;
    }
    background.writeback.abort();
    background.times_report.iter().for_each(JoinHandle::abort);
    // After a fail-stop nothing more is written: recovery starts from what is durable.
    if !fail_stop.stopped() {
        let _ = tokio::task::spawn_blocking(move || flusher.final_flush()).await;
    }
    // Before the data-dir lock goes with this task: the WAL writer and its storage stop.
    let _ = tokio::task::spawn_blocking(move || wal.close()).await;
    tracing::info!("broker stopped");
}
