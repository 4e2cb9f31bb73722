//! The data disk's own latency floor, without any broker: what an append + fdatasync costs on
//! this host, alone and beside a background writer that fdatasyncs every MiB it writes (a WAL
//! beside its broker's segment write-back). A broker that acks after fdatasync cannot have a
//! shorter tail than its disk, so a latency limit below the probe's figures is a limit on the
//! machine, not on the broker; the probe says which one a missed limit is.
//!
//! A closed-loop phase (each append right after the last one's fdatasync) gives the same floor
//! for flatness: a closed-loop producer's rate follows its commit time, so if the disk's own
//! rate differs between a window's first and last third, a broker's cannot be flatter.
//!
//! Like fio's `--fdatasync=1` job, but paced at a broker's commit rate and with the numbers a
//! latency limit is written in (p99, p99.9, max over a workload's window).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use comfy_table::{presets::ASCII_MARKDOWN, Table};
use hdrhistogram::Histogram;
use serde::Serialize;

/// The appended file is this long and written round and round: its blocks are allocated once,
/// so an fdatasync flushes data only (as the broker's reused WAL segments do).
const APPEND_FILE_BYTES: u64 = 64 << 20;
/// The background writer's step: it fdatasyncs after each (the broker's write-back does so
/// after about 1 MiB, `LOG_WRITEBACK_BYTES_MIN`).
const BACKGROUND_CHUNK_BYTES: usize = 1 << 20;
/// The background writer starts a new file after this many bytes and removes the old one, so
/// the probe holds at most two such files.
const BACKGROUND_FILE_BYTES: u64 = 256 << 20;
/// The longest probe phase the command accepts.
pub const PHASE_MAX: Duration = Duration::from_secs(600);
const LATENCY_RECORDED_MAX_US: u64 = 60_000_000;

/// One probe phase: paced appends, with or without the background writer.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub duration: Duration,
    /// None: a closed loop, each append right after the last one's fdatasync.
    pub syncs_per_second: Option<u32>,
    pub append_bytes: usize,
    /// 0: no background writer.
    pub background_mib_per_second: u32,
}

/// Append + fdatasync latencies of one phase, in microseconds.
pub struct PhaseResult {
    pub settings: ProbeSettings,
    pub latencies_us: Histogram<u64>,
    /// p99 of the first and of the last third of the phase: whether the disk itself slows down
    /// over a workload's window.
    pub p99_first_third_us: u64,
    pub p99_last_third_us: u64,
    /// Appends started in the first and in the last third: a closed loop's rate in each.
    pub appends_first_third: u64,
    pub appends_last_third: u64,
    pub background_written_bytes: u64,
}

/// A phase's figures as `disk-probe --json-output` writes them.
#[derive(Debug, Serialize)]
pub struct PhaseSummary {
    pub duration_s: f64,
    /// None: a closed loop.
    pub syncs_per_second: Option<u32>,
    pub append_bytes: usize,
    pub background_mib_per_second: u32,
    pub appends: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub p99_first_third_us: u64,
    pub p99_last_third_us: u64,
    pub appends_first_third: u64,
    pub appends_last_third: u64,
    pub background_written_bytes: u64,
}

impl PhaseResult {
    pub fn summary(&self) -> PhaseSummary {
        let h = &self.latencies_us;
        PhaseSummary {
            duration_s: self.settings.duration.as_secs_f64(),
            syncs_per_second: self.settings.syncs_per_second,
            append_bytes: self.settings.append_bytes,
            background_mib_per_second: self.settings.background_mib_per_second,
            appends: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            p99_first_third_us: self.p99_first_third_us,
            p99_last_third_us: self.p99_last_third_us,
            appends_first_third: self.appends_first_third,
            appends_last_third: self.appends_last_third,
            background_written_bytes: self.background_written_bytes,
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_RECORDED_MAX_US, 3).expect("valid histogram bounds")
}

/// Runs one phase in a fresh directory under `dir` (removed afterwards).
pub fn run_phase(dir: &Path, settings: &ProbeSettings) -> std::io::Result<PhaseResult> {
    let scratch = tempfile::Builder::new()
        .prefix("disk-probe.")
        .tempdir_in(dir)?;
    let appended = scratch.path().join("append");
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&appended)?;
    preallocate(&file)?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let background = (settings.background_mib_per_second > 0).then(|| {
            let (stop, dir) = (&stop, scratch.path());
            let rate = settings.background_mib_per_second;
            scope.spawn(move || write_in_background(dir, rate, stop))
        });
        let appends = timed_appends(&file, settings);
        stop.store(true, Ordering::Relaxed);
        let background_written_bytes = match background {
            Some(handle) => handle.join().expect("the background writer panicked")?,
            None => 0,
        };
        let Thirds { all, first, last } = appends?;
        Ok(PhaseResult {
            settings: settings.clone(),
            latencies_us: all,
            p99_first_third_us: first.value_at_quantile(0.99),
            p99_last_third_us: last.value_at_quantile(0.99),
            appends_first_third: first.len(),
            appends_last_third: last.len(),
            background_written_bytes,
        })
    })
}

fn preallocate(file: &File) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut writer = file;
    for _ in 0..APPEND_FILE_BYTES / zeros.len() as u64 {
        writer.write_all(&zeros)?;
    }
    file.sync_all()
}

/// Latencies of a whole phase and of its first and last thirds (by when an append started).
struct Thirds {
    all: Histogram<u64>,
    first: Histogram<u64>,
    last: Histogram<u64>,
}

/// Appends at the settings' pace (a late append does not make the next one early), or in a
/// closed loop.
fn timed_appends(file: &File, settings: &ProbeSettings) -> std::io::Result<Thirds> {
    let data: Vec<u8> = (0..settings.append_bytes).map(|i| i as u8).collect();
    let interval = settings
        .syncs_per_second
        .map_or(Duration::ZERO, |rate| Duration::from_secs(1) / rate.max(1));
    let third = settings.duration / 3;
    let (mut all, mut first, mut last) = (histogram(), histogram(), histogram());
    let started = Instant::now();
    let mut next = started;
    let mut offset = 0u64;
    while started.elapsed() < settings.duration {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let before = Instant::now();
        file.write_all_at(&data, offset)?;
        file.sync_data()?;
        let after = Instant::now();
        let us = u64::try_from((after - before).as_micros()).unwrap_or(u64::MAX);
        all.saturating_record(us.max(1));
        let at = before - started;
        if at < third {
            first.saturating_record(us.max(1));
        } else if at >= settings.duration - third {
            last.saturating_record(us.max(1));
        }
        offset = (offset + data.len() as u64) % (APPEND_FILE_BYTES - data.len() as u64);
        next = (next + interval).max(after);
    }
    Ok(Thirds { all, first, last })
}

/// Appends `mib_per_second` in 1 MiB steps, each fdatasynced, until `stop`; new files as it
/// goes. Returns the bytes written.
fn write_in_background(dir: &Path, mib_per_second: u32, stop: &AtomicBool) -> std::io::Result<u64> {
    let chunk: Vec<u8> = (0..BACKGROUND_CHUNK_BYTES).map(|i| (i * 7) as u8).collect();
    let interval = Duration::from_secs(1) / mib_per_second;
    let mut written = 0u64;
    let mut file_index = 0u64;
    let path = |index: u64| dir.join(format!("background-{index}"));
    let mut file = File::create(path(file_index))?;
    let mut in_file = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if in_file >= BACKGROUND_FILE_BYTES {
            file_index += 1;
            file = File::create(path(file_index))?;
            std::fs::remove_file(path(file_index - 1))?;
            in_file = 0;
        }
        file.write_all(&chunk)?;
        file.sync_data()?;
        in_file += chunk.len() as u64;
        written += chunk.len() as u64;
        next = (next + interval).max(Instant::now());
    }
    Ok(written)
}

/// The phases as a markdown table, in milliseconds.
pub fn table(results: &[PhaseResult]) -> String {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(vec![
        "phase",
        "appends",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "p99 first third ms",
        "p99 last third ms",
        "appends, last third vs first",
    ]);
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    for r in results {
        let s = &r.settings;
        let h = &r.latencies_us;
        let background = match s.background_mib_per_second {
            0 => "alone".to_owned(),
            rate => format!("beside {rate} MiB/s fdatasynced per MiB"),
        };
        let pace = match s.syncs_per_second {
            Some(rate) => format!("x {rate}/s"),
            None => "closed loop".to_owned(),
        };
        let rate_change = match r.appends_first_third {
            0 => "-".to_owned(),
            first => format!(
                "{:+.1}%",
                (r.appends_last_third as f64 / first as f64 - 1.0) * 100.0
            ),
        };
        table.add_row(vec![
            format!("{} B {pace}, {background}", s.append_bytes),
            h.len().to_string(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            ms(r.p99_first_third_us),
            ms(r.p99_last_third_us),
            rate_change,
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_phase_with_a_background_writer_measures_every_append() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ProbeSettings {
            duration: Duration::from_millis(300),
            syncs_per_second: Some(100),
            append_bytes: 4096,
            background_mib_per_second: 20,
        };
        let result = run_phase(dir.path(), &settings).unwrap();
        // Paced at 100/s for 0.3 s: at most 31 appends, however slow the disk; at least one.
        let appends = result.latencies_us.len();
        assert!((1..=31).contains(&appends), "{appends} appends");
        assert!(result.background_written_bytes >= BACKGROUND_CHUNK_BYTES as u64);
        assert!(result.latencies_us.max() >= result.p99_first_third_us);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe removes its files"
        );
    }

    #[test]
    fn a_closed_loop_phase_counts_its_thirds_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ProbeSettings {
            duration: Duration::from_millis(300),
            syncs_per_second: None,
            append_bytes: 4096,
            background_mib_per_second: 0,
        };
        let result = run_phase(dir.path(), &settings).unwrap();
        let appends = result.latencies_us.len();
        assert!(appends >= 1);
        assert!(result.appends_first_third + result.appends_last_third <= appends);
        assert_eq!(result.background_written_bytes, 0);
        let table = table(&[result]);
        assert!(table.contains("4096 B closed loop, alone"), "{table}");
    }
}
