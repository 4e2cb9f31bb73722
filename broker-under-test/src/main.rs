//! `chronik-broker` binary: parse flags, start, run until SIGTERM/SIGINT or a storage failure.
//! `chronik-broker promote --cluster FILE --topic T` is the failover command (`promote`): exit 0
//! when every partition has an answering leader afterwards, 1 when one could not be failed over.
//! `chronik-broker controller-status --cluster FILE` prints the controller quorum's metadata
//! image as JSON (the active member's when one is known): exit 1 when no member answers.
//!
//! Exit codes: 0 clean shutdown; 2 bad arguments; 65 stored data corrupt (refused to start);
//! 69 address or data directory unavailable; 74 storage failure (write/fsync failed).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use chronik_broker::broker::EXIT_STORAGE_FAILED;
use chronik_broker::promote::PromoteArgs;
use chronik_broker::{BrokerArgs, BrokerConfig};
use clap::Parser;
use std::path::PathBuf;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("promote") {
        return promote(PromoteArgs::parse_from(std::env::args().skip(1)));
    }
    if std::env::args().nth(1).as_deref() == Some("controller-status") {
        return controller_status(ControllerStatusArgs::parse_from(std::env::args().skip(1)));
    }
    let args = BrokerArgs::parse();
    // openraft logs every failed RPC to a controller peer that is down at error level, twice
    // a second: off unless asked for by name (the broker logs the quorum's changes itself).
    let level = if args.log_level.contains("openraft") {
        args.log_level.clone()
    } else {
        format!("{},openraft=off", args.log_level)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    // Colours only on a terminal: a log written to a file (the harness keeps each trial's) is
    // read by scripts and tests.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match BrokerConfig::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("chronik-broker: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("chronik-broker: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut broker = match chronik_broker::start(config).await {
            Ok(broker) => broker,
            Err(err) => {
                eprintln!("chronik-broker: {err}");
                return ExitCode::from(err.exit_code());
            }
        };
        // The harness and tests read this line to learn the port when --listen uses port 0.
        println!("chronik-broker listening on {}", broker.local_addr);
        let _ = std::io::stdout().flush();
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("chronik-broker: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            reason = broker.fatal() => {
                eprintln!("chronik-broker: {reason}");
                return ExitCode::from(EXIT_STORAGE_FAILED);
            }
        }
        tracing::info!("shutting down");
        broker.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn promote(args: PromoteArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("chronik-broker promote: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chronik_broker::promote::run(&args)) {
        Ok(lines) => {
            lines.iter().for_each(|line| println!("{line}"));
            ExitCode::SUCCESS
        }
        Err(lines) => {
            lines
                .iter()
                .for_each(|line| eprintln!("chronik-broker promote: {line}"));
            ExitCode::FAILURE
        }
    }
}

/// `chronik-broker controller-status`: the controller quorum's view of the cluster.
#[derive(Parser)]
struct ControllerStatusArgs {
    /// The cluster file (its brokers with a `controller_address` are the quorum's voters).
    #[arg(long)]
    cluster: PathBuf,
}

/// How long each member of the quorum may take to answer `controller-status`.
const STATUS_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn controller_status(args: ControllerStatusArgs) -> ExitCode {
    let cluster = match chronik_broker::cluster::Cluster::load_any(&args.cluster) {
        Ok(cluster) => cluster,
        Err(err) => {
            eprintln!("chronik-broker controller-status: {err}");
            return ExitCode::from(2);
        }
    };
    let voters = cluster.voters();
    if voters.is_empty() {
        eprintln!("chronik-broker controller-status: no broker of the cluster file has a controller_address");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("chronik-broker controller-status: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let described = runtime.block_on(chronik_broker::controller::network::describe(
        &voters,
        STATUS_ANSWER_TIMEOUT,
    ));
    match described {
        Some((active, image)) => {
            let status = serde_json::json!({ "active": active, "image": image });
            println!("{status}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("chronik-broker controller-status: no controller answers");
            ExitCode::FAILURE
        }
    }
}
