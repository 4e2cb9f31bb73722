//! `chronik-replay` binary: sends the fixed request stream of the deterministic tier to a broker
//! and prints (or writes) what it sent. Exit codes as `chronik-bench`: 0 the stream was answered
//! without an error; 2 bad arguments; 3 broker unreachable; 4 an answer was an error or did not
//! decode (the replay is not a measurement).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use chronik_bench::exit::{EXIT_FAILURE, EXIT_INVALID_RUN, EXIT_OK, EXIT_UNREACHABLE};
use chronik_bench::replay::{self, ReplayError, StreamShape};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "chronik-replay",
    about = "Replay the fixed request stream of the deterministic tier"
)]
struct Args {
    /// The broker's address (an IP address and port: the stream is for local measurement).
    #[arg(long)]
    bootstrap: SocketAddr,
    /// Produce requests in the stream (16 records of 256 B each, acks=1).
    #[arg(long, default_value_t = 1000)]
    produce_requests: u32,
    /// Write the summary here as JSON.
    #[arg(long)]
    json_output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let summary = match replay::replay(args.bootstrap, StreamShape::seed(args.produce_requests)) {
        Ok(summary) => summary,
        Err(err) => {
            eprintln!("chronik-replay: {err}");
            return ExitCode::from(match err {
                ReplayError::Connect { .. } => EXIT_UNREACHABLE,
                _ => EXIT_INVALID_RUN,
            });
        }
    };
    let json = serde_json::to_string_pretty(&summary).expect("the summary serializes");
    match &args.json_output {
        Some(path) => {
            if let Err(err) = std::fs::write(path, json + "\n") {
                eprintln!("chronik-replay: writing {}: {err}", path.display());
                return ExitCode::from(EXIT_FAILURE);
            }
        }
        None => println!("{json}"),
    }
    ExitCode::from(EXIT_OK)
}
