//! `disk-probe`: the disk's own append + fdatasync latency with no broker, alone, then beside
//! a background writer, then in a closed loop: the floor under any broker's tail and flatness
//! on this host.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cmd::args::{write_json, Common};
use crate::cmd::exit::EXIT_PASS;
use crate::error::HarnessError;
use crate::trial::disk_probe::{self, ProbeSettings, PHASE_MAX};

#[derive(Args)]
pub struct DiskProbeArgs {
    /// A directory on the disk to probe (default: the work dir, where trials keep their
    /// broker's data).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Length of each phase.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 2000)]
    syncs_per_second: u32,
    #[arg(long, default_value_t = 16384)]
    append_bytes: usize,
    /// The second phase's background writer, fdatasynced after every MiB (0: no second
    /// phase).
    #[arg(long, default_value_t = 60)]
    background_mib_per_second: u32,
    /// The last phase: appends in a closed loop, alone, whose rate in the last third
    /// against the first is the floor under a closed-loop workload's flatness.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    closed_loop: bool,
    /// Write each phase's figures as JSON (an array, one per phase).
    #[arg(long)]
    json_output: Option<PathBuf>,
}

impl DiskProbeArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        if self.duration > PHASE_MAX || self.duration.is_zero() || self.syncs_per_second == 0 {
            return Err(HarnessError::Usage(format!(
                "--duration must be above 0 and at most {PHASE_MAX:?}, --syncs-per-second above 0"
            )));
        }
        let dir = self.dir.clone().unwrap_or_else(|| c.work_dir.clone());
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
        // Paced alone first, then beside the background writer, then in a closed loop alone
        // (each unless it is off).
        let paced = Some(self.syncs_per_second);
        let phases = std::iter::once((paced, 0))
            .chain(
                (self.background_mib_per_second > 0)
                    .then_some((paced, self.background_mib_per_second)),
            )
            .chain(self.closed_loop.then_some((None, 0)))
            .map(|(pace, background)| ProbeSettings {
                duration: self.duration,
                syncs_per_second: pace,
                append_bytes: self.append_bytes,
                background_mib_per_second: background,
            });
        let mut results = Vec::new();
        for settings in phases {
            if !c.quiet {
                eprintln!(
                    "probing {} for {:?}: {} B appends + fdatasync, {}, beside {} MiB/s of background writes",
                    dir.display(),
                    self.duration,
                    settings.append_bytes,
                    settings
                        .syncs_per_second
                        .map_or("in a closed loop".to_owned(), |rate| format!("{rate}/s")),
                    settings.background_mib_per_second
                );
            }
            results.push(
                disk_probe::run_phase(&dir, &settings).map_err(|e| HarnessError::io(&dir, e))?,
            );
        }
        println!("{}", disk_probe::table(&results));
        let summaries: Vec<_> = results
            .iter()
            .map(disk_probe::PhaseResult::summary)
            .collect();
        write_json(&self.json_output, &summaries)?;
        Ok(EXIT_PASS)
    }
}
