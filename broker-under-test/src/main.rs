//! `chronik-broker` binary: parse flags, start, run until SIGTERM/SIGINT or a storage failure.
//! `chronik-broker promote --cluster FILE --topic T` is the failover command (`promote`): exit 0
//! when every partition has an answering leader afterwards, 1 when one could not be failed over.
//!
//! Exit codes: 0 clean shutdown; 2 bad arguments; 65 stored data corrupt (refused to start);
//! 69 address or data directory unavailable; 74 storage failure (write/fsync failed).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use chronik_broker::broker::EXIT_STORAGE_FAILED;
use chronik_broker::promote::PromoteArgs;
use chronik_broker::{BrokerArgs, BrokerConfig};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("promote") {
        return promote(PromoteArgs::parse_from(std::env::args().skip(1)));
    }
    let args = BrokerArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
