//! One trial as it is stored: in the results database and as its JSON export.

use chronik_bench_schema::BenchReport;
use serde::{Deserialize, Serialize};

use crate::build::git::CommitInfo;
use crate::trial::runner::TrialStatus;
use crate::trial::summary::TrialSummary;

pub const TRIAL_SCHEMA: &str = "chronik-harness/trial/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialRecord {
    pub schema: String,
    pub id: String,
    pub recorded_at: String,
    pub commit: CommitInfo,
    pub workload: String,
    pub workload_hash: String,
    pub host_fingerprint: String,
    /// What the trial was for: `run`, `base`, `head`, `baseline`, `bisect`, `calibrate`.
    pub role: String,
    pub status: TrialStatus,
    pub detail: Option<String>,
    pub summary: Option<TrialSummary>,
    /// The broker's peak resident memory during the trial (compared like p99, margin +50%).
    #[serde(default)]
    pub broker_peak_rss_kib: Option<u64>,
    pub report: Option<BenchReport>,
}
