//! Child processes in their own process group, stopped by group id (SIGTERM, then SIGKILL),
//! never by name. Every wait here has a timeout.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// How long a process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A child that leads its own process group; dropping it kills the whole group.
pub struct GroupChild {
    child: Option<Child>,
    pub pgid: u32,
}

impl GroupChild {
    pub fn spawn(mut command: Command) -> std::io::Result<Self> {
        let child = command.process_group(0).spawn()?;
        let pgid = child.id();
        Ok(Self {
            child: Some(child),
            pgid,
        })
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
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
            signal_group(self.pgid, "KILL"); // reap anything the leader left behind
            return Some(status);
        }
        signal_group(self.pgid, "TERM");
        let status = self.wait_timeout(TERM_GRACE);
        signal_group(self.pgid, "KILL");
        status.or_else(|| self.child.as_mut().and_then(|c| c.wait().ok()))
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if self.child.is_some() {
            signal_group(self.pgid, "KILL");
            if let Some(mut child) = self.child.take() {
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
