//! Child processes in their own process group, stopped by group id (SIGTERM, then SIGKILL),
//! never by name. Every wait here has a timeout.
//!
//! A child in its own group does not get the terminal's Ctrl-C, and a harness killed by a
//! signal runs no destructor: without `stop_children_on_signal` an interrupted compare left
//! its broker running, holding its port and waking every 20 ms on the cores the next
//! measurement uses. Every group started is registered until it is stopped and reaped.

use std::collections::BTreeSet;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use std::os::unix::process::CommandExt;

/// How long a process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Groups started and not yet reaped: what a signal to the harness kills before it exits. A
/// group leaves the set once its leader is reaped, when its id may be reused.
static LIVE_GROUPS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live_groups() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    // A panic elsewhere while holding it leaves the set itself intact.
    LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// On SIGINT, SIGTERM or SIGHUP: kill every group this process started, then exit with
/// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), which `git bisect run` reads as "abort".
/// SIGKILL, not SIGTERM then a grace: whoever interrupted wants the harness gone now, and a
/// trial's data is scratch.
pub fn stop_children_on_signal() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                for pgid in live_groups().iter() {
                    signal_group(*pgid, "KILL");
                }
                eprintln!(
                    "chronik-harness: interrupted (signal {signal}); its processes were stopped"
                );
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// A child that leads its own process group; dropping it kills the whole group.
pub struct GroupChild {
    child: Option<Child>,
    pub pgid: u32,
}

impl GroupChild {
    pub fn spawn(mut command: Command) -> std::io::Result<Self> {
        // Registered before the spawn returns, under the lock the signal thread takes, so a
        // signal between the two cannot miss it.
        let mut live = live_groups();
        let child = command.process_group(0).spawn()?;
        let pgid = child.id();
        live.insert(pgid);
        Ok(Self {
            child: Some(child),
            pgid,
        })
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        // Kill what the leader left behind, once: a later call returns the same status, when
        // the group id may already be another's.
        if status.is_some() && live_groups().remove(&self.pgid) {
            signal_group(self.pgid, "KILL");
        }
        status
    }

    /// Waits up to `timeout` for the leader to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM to the group, then SIGKILL after `TERM_GRACE`; returns the leader's status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        signal_group(self.pgid, "TERM");
        if let Some(status) = self.wait_timeout(TERM_GRACE) {
            return Some(status);
        }
        if live_groups().remove(&self.pgid) {
            signal_group(self.pgid, "KILL");
        }
        self.child.as_mut().and_then(|c| c.wait().ok())
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if live_groups().remove(&self.pgid) {
                signal_group(self.pgid, "KILL");
                let _ = child.wait();
            }
        }
    }
}

/// Sends a signal to every process of the group (via kill(1): the workspace forbids unsafe).
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether any process of the group is still alive.
pub fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last `lines` lines of a text file (for build logs and broker stderr).
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
