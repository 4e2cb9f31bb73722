//! `chronik-bench` binary. Exit codes: 0 valid run; 1 setup failure; 2 bad arguments;
//! 3 broker unreachable; 4 run invalid (errors, lost delivery reports, rate not achieved);
//! 5 acknowledged messages missing from the read-back (`--verify-acked`).

use std::process::ExitCode;

use chronik_bench::exit::{EXIT_ACKED_LOST, EXIT_FAILURE, EXIT_INVALID_RUN, EXIT_OK, EXIT_USAGE};
use chronik_bench::run;
use chronik_bench::{BenchArgs, BenchConfig};
use clap::Parser;

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let config = match BenchConfig::from_args(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("chronik-bench: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let report = match run::run(&config, !args.quiet) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("chronik-bench: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    if !args.quiet {
        print!("{}", report.console_box());
    }
    for (path, write) in [
        (&args.json_output, BenchReportWriter::Json),
        (&args.csv_output, BenchReportWriter::Csv),
    ] {
        if let Some(path) = path {
            let written = match write {
                BenchReportWriter::Json => report.write_json(path),
                BenchReportWriter::Csv => report.write_csv(path),
            };
            if let Err(err) = written {
                eprintln!("chronik-bench: writing {}: {err}", path.display());
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    if let Some(v) = report.verification.filter(|v| v.lost > 0) {
        eprintln!(
            "chronik-bench: {} of {} acknowledged messages are not at their offsets",
            v.lost, v.acked
        );
        return ExitCode::from(EXIT_ACKED_LOST);
    }
    if report.is_valid() {
        ExitCode::from(EXIT_OK)
    } else {
        eprintln!(
            "chronik-bench: run invalid: {}",
            report.invalid_reasons.join("; ")
        );
        ExitCode::from(EXIT_INVALID_RUN)
    }
}

enum BenchReportWriter {
    Json,
    Csv,
}
