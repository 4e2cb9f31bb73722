//! CPU time from /proc: the generator's own use (whole process and busiest thread), and any
//! process's total (the harness reads the broker's through `cpu_seconds_of`).
//!
//! The generator can saturate in two ways that the host's core count alone cannot show: the
//! whole process can use the cores it may run on, or one thread (librdkafka does all I/O to a
//! broker on one thread) can use a whole core while the process looks idle.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Linux reports /proc times in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// CPU time this process used over a wall-clock span.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuUsage {
    pub user_s: f64,
    pub system_s: f64,
    pub wall_s: f64,
    /// (user + system) / wall: 1.0 = one core busy the whole time.
    pub cores_used: f64,
    /// The thread that used the most CPU over the span (absent in reports written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busiest_thread: Option<ThreadUse>,
}

/// One thread's CPU over a span, as a share of one core.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadUse {
    /// The thread's name from /proc (`rdk:broker1`, `chronik-bench`, ...).
    pub name: String,
    pub cores_used: f64,
}

/// (user, system) CPU seconds of this process so far.
pub fn process_cpu_seconds() -> (f64, f64) {
    cpu_seconds_of("self").unwrap_or((0.0, 0.0))
}

/// (user, system) CPU seconds so far of the process `pid` (a number, or "self"), from
/// /proc/PID/stat; `None` when it cannot be read (the process is gone, or no /proc).
pub fn cpu_seconds_of(pid: &str) -> Option<(f64, f64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime and stime (fields 14 and 15) of a /proc stat line, in seconds.
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    // The command name in parentheses may contain spaces: count fields after its last ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| Some(fields.get(i)?.parse::<f64>().ok()? / USER_HZ);
    Some((tick(11)?, tick(12)?))
}

/// CPU seconds of each live thread of this process, by thread id, with its name.
#[derive(Debug, Clone, Default)]
pub struct ThreadSnapshot(HashMap<u32, (String, f64)>);

impl ThreadSnapshot {
    pub fn current() -> Self {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self::default();
        };
        let threads = tasks
            .flatten()
            .filter_map(|task| {
                let tid = task.file_name().to_str()?.parse().ok()?;
                let (user, system) =
                    parse_stat(&std::fs::read_to_string(task.path().join("stat")).ok()?)?;
                let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
                Some((tid, (name.trim().to_owned(), user + system)))
            })
            .collect();
        Self(threads)
    }

    /// The thread that used the most CPU between `start` and `self`. A thread born after
    /// `start` counts from zero; one that ended before `self` is not seen (its time is still in
    /// the process total).
    pub fn busiest_since(&self, start: &ThreadSnapshot, wall_s: f64) -> Option<ThreadUse> {
        if wall_s <= 0.0 {
            return None;
        }
        self.0
            .iter()
            .map(|(tid, (name, end_s))| {
                let start_s = start.0.get(tid).map_or(0.0, |(_, s)| *s);
                (name, (end_s - start_s).max(0.0))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, used_s)| ThreadUse {
                name: name.clone(),
                cores_used: used_s / wall_s,
            })
    }
}

impl CpuUsage {
    pub fn between(start: (f64, f64), end: (f64, f64), wall_s: f64) -> Self {
        let user_s = end.0 - start.0;
        let system_s = end.1 - start.1;
        Self {
            user_s,
            system_s,
            wall_s,
            cores_used: if wall_s > 0.0 {
                (user_s + system_s) / wall_s
            } else {
                0.0
            },
            busiest_thread: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (rdk:broker 1) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_stat(stat), Some((2.5, 0.5)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn busiest_thread_counts_new_threads_from_zero_and_a_reused_id_never_negative() {
        let start = ThreadSnapshot(HashMap::from([
            (1, ("main".to_owned(), 10.0)),
            (2, ("rdk:broker1".to_owned(), 5.0)),
        ]));
        let end = ThreadSnapshot(HashMap::from([
            (1, ("main".to_owned(), 12.0)),
            (2, ("rdk:broker1".to_owned(), 4.0)),
            (3, ("rdk:main".to_owned(), 3.0)),
        ]));
        let busiest = end.busiest_since(&start, 4.0).unwrap();
        assert_eq!(busiest.name, "rdk:main");
        assert!((busiest.cores_used - 0.75).abs() < 1e-9);
        assert!(end.busiest_since(&start, 0.0).is_none());
    }

    #[test]
    fn this_process_has_a_busiest_thread() {
        let start = ThreadSnapshot::current();
        let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while std::time::Instant::now() < spin_until {}
        let busiest = ThreadSnapshot::current().busiest_since(&start, 0.05);
        assert!(busiest.is_some_and(|t| t.cores_used >= 0.0 && !t.name.is_empty()));
    }
}
