//! What one trial gives the statistics: its numbers when it was valid, or why a side could not
//! give any. The scheduler (`compare`), the store, the noise bank and bisect all speak these.

use serde::{Deserialize, Serialize};

use crate::trial::runner::TrialStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Base,
    Head,
}

/// What a gate's trials are recorded for (`gate-base`, `gate-head`): `history` finds each
/// night's pairs by it.
pub const GATE: &str = "gate";

impl Side {
    /// The role a trial of this side is recorded under when a comparison runs for `purpose`
    /// (`gate`, `bisect`, ...): `<purpose>-base` or `<purpose>-head`.
    pub fn role(self, purpose: &str) -> String {
        match self {
            Side::Base => format!("{purpose}-base"),
            Side::Head => format!("{purpose}-head"),
        }
    }
}

/// The numbers of one valid trial that the statistics use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialSummary {
    pub throughput: f64,
    pub p99_ms: f64,
    /// Absent in trials recorded before it was kept.
    #[serde(default)]
    pub p999_ms: Option<f64>,
    pub per_second: Vec<u64>,
    /// The broker's peak resident set, when the platform reports it.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// The broker's CPU time (user + system) while the load ran, per message of the run
    /// (warm-up included), in microseconds. Far less sensitive to fsync and neighbour noise
    /// than wall-clock throughput.
    #[serde(default)]
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Failover workloads: what the read-back of the acknowledged messages found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSummary>,
}

/// A failover trial's outcome: acknowledged messages not at their offsets afterwards, and the
/// longest time without an ack (how long the partition had no leader clients could use).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailoverSummary {
    pub acked_lost: u64,
    pub longest_ack_gap_s: f64,
}

/// Why a side could not produce a valid trial (no numbers; the comparison stops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialFailure {
    pub side: Side,
    pub status: TrialStatus,
    pub detail: String,
}
