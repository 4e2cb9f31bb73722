//! Where a trial's processes run. `shared` (the default, and how the seed's figures were
//! taken): the broker and the load generator may use every CPU the harness may, and the
//! scheduler moves them about; each steals the other's cycles mid-run. `disjoint`: the
//! brokers on one half of those CPUs, the generator on the other, so neither waits for a CPU
//! the other holds, at the price of each side having fewer. On 2 cores that halved the
//! broker's CPU per message but did not make trials less noisy (BENCHMARKS.md, "What buys
//! power per minute"); the fixed-latency sync did.

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use serde::{Deserialize, Serialize};

/// The fewest CPUs two disjoint halves can be made of.
const DISJOINT_CPUS_MIN: usize = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cores {
    #[default]
    Shared,
    Disjoint,
}

impl Cores {
    pub fn is_shared(&self) -> bool {
        *self == Self::Shared
    }

    /// The CPUs of each side, from the CPUs this process may use: none for `shared`; for
    /// `disjoint`, the brokers get the first half (the larger, with an odd count: they are
    /// what is measured), the generator the rest. An error when there are too few CPUs.
    pub fn placement(self) -> Result<Option<Placement>, String> {
        if self.is_shared() {
            return Ok(None);
        }
        let allowed =
            sched_getaffinity(None).map_err(|e| format!("reading this process's CPUs: {e}"))?;
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
            .filter(|&c| allowed.is_set(c))
            .collect();
        if cpus.len() < DISJOINT_CPUS_MIN {
            return Err(format!(
                "disjoint cores need at least {DISJOINT_CPUS_MIN} CPUs; this process may use {}",
                cpus.len()
            ));
        }
        let (brokers, generator) = cpus.split_at(cpus.len().div_ceil(2));
        Ok(Some(Placement {
            brokers: set_of(brokers),
            generator: set_of(generator),
        }))
    }
}

/// The CPUs of the two sides of a disjoint trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub brokers: CpuSet,
    pub generator: CpuSet,
}

fn set_of(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    cpus.iter().for_each(|&c| set.set(c));
    set
}

/// Runs `spawn` with the calling thread limited to `cpus` (none: unchanged), then gives the
/// thread its CPUs back. A child inherits the affinity of the thread that forks it, and so
/// does every thread and process it starts, from its first instruction on: no window in
/// which the child runs elsewhere, and no code between fork and exec.
pub fn spawn_on<T>(
    cpus: Option<&CpuSet>,
    spawn: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let Some(cpus) = cpus else {
        return spawn();
    };
    let own = sched_getaffinity(None)?;
    sched_setaffinity(None, cpus)?;
    let spawned = spawn();
    sched_setaffinity(None, &own)?;
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn cpus_of(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
    }

    #[test]
    fn disjoint_halves_cover_every_allowed_cpu_once() {
        let allowed = cpus_of(&sched_getaffinity(None).unwrap());
        match Cores::Disjoint.placement() {
            Ok(Some(p)) => {
                let (b, g) = (cpus_of(&p.brokers), cpus_of(&p.generator));
                assert!(!b.is_empty() && !g.is_empty());
                assert!(b.len() >= g.len());
                assert!(b.iter().all(|c| !g.contains(c)));
                let mut both = [b, g].concat();
                both.sort_unstable();
                assert_eq!(both, allowed);
            }
            Ok(None) => panic!("disjoint gave no placement"),
            Err(e) => assert!(allowed.len() < DISJOINT_CPUS_MIN, "{e}"),
        }
        assert_eq!(Cores::Shared.placement(), Ok(None));
    }

    #[test]
    fn a_child_started_on_a_set_runs_there_and_the_caller_keeps_its_own() {
        let own = sched_getaffinity(None).unwrap();
        let first = cpus_of(&own)[0];
        let child = spawn_on(Some(&set_of(&[first])), || {
            Command::new("sh")
                .args(["-c", "grep Cpus_allowed_list /proc/self/status"])
                .stdout(Stdio::piped())
                .spawn()
        })
        .unwrap();
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(
            out.split_whitespace().last(),
            Some(first.to_string().as_str())
        );
        assert_eq!(sched_getaffinity(None).unwrap(), own);
    }
}
