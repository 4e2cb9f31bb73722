//! Results history and baselines. A trial is recorded in the results database
//! (`results_db`) as soon as it ends, and exported as one JSON file (temp file + rename), so an
//! interrupted session loses nothing. Baselines are JSON files (reviewed in pull requests).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::build::git::CommitInfo;
use crate::error::HarnessError;
use crate::store::db::{ResultsDb, DB_FILE};
use crate::store::record::{TrialRecord, TRIAL_SCHEMA};
use crate::trial::summary::TrialSummary;

pub const BASELINE_SCHEMA: &str = "chronik-harness/baseline/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    pub schema: String,
    pub workload: String,
    pub workload_hash: String,
    pub commit: CommitInfo,
    pub host_fingerprint: String,
    pub bench_version: String,
    pub librdkafka_version: String,
    pub recorded_at: String,
    pub median_throughput: f64,
    pub median_p99_ms: f64,
    /// Every trial's raw numbers.
    pub trials: Vec<TrialSummary>,
}

/// Now, as records store it (RFC 3339, UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HarnessError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
    }
    let tmp = path.with_extension("json.partial");
    fs::write(&tmp, bytes).map_err(|e| HarnessError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| HarnessError::io(path, e))
}

pub struct ResultStore {
    pub dir: PathBuf,
}

impl ResultStore {
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// The database, created on first use; a new database first takes in the JSON trials
    /// already in the directory (results of builds from before it existed).
    pub fn db(&self) -> Result<ResultsDb, HarnessError> {
        let path = self.db_path();
        let fresh = !path.exists();
        let mut db = ResultsDb::open(&path)?;
        if fresh {
            self.import_json_into(&mut db, &self.dir)?;
        }
        Ok(db)
    }

    /// Loads every JSON trial under `from` (any depth) into `db`: (found, newly added).
    pub fn import_json_into(
        &self,
        db: &mut ResultsDb,
        from: &Path,
    ) -> Result<(usize, usize), HarnessError> {
        let mut found = Vec::new();
        let mut dirs = vec![from.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.filter_map(|e| Some(e.ok()?.path())) {
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    let record = fs::read(&path)
                        .ok()
                        .and_then(|raw| serde_json::from_slice::<TrialRecord>(&raw).ok());
                    found.extend(record.filter(|r| r.schema == TRIAL_SCHEMA));
                }
            }
        }
        found.sort_by(|a, b| (&a.recorded_at, &a.id).cmp(&(&b.recorded_at, &b.id)));
        let added = db.insert(&found)?;
        Ok((found.len(), added))
    }

    /// Records the trial in the database, then writes its JSON export.
    pub fn save(&self, record: &TrialRecord) -> Result<PathBuf, HarnessError> {
        self.db()?.insert(std::slice::from_ref(record))?;
        let path = self
            .dir
            .join(&record.workload)
            .join(format!("{}.json", record.id));
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| HarnessError::Infra(e.to_string()))?;
        write_atomically(&path, &json)?;
        Ok(path)
    }

    /// Every stored trial of `workload`, in the order they were recorded.
    pub fn load_workload(&self, workload: &str) -> Result<Vec<TrialRecord>, HarnessError> {
        self.db()?.trials(workload)
    }
}

pub fn baseline_path(dir: &Path, workload: &str) -> PathBuf {
    dir.join(format!("{workload}.json"))
}

pub fn load_baseline(dir: &Path, workload: &str) -> Result<Option<Baseline>, HarnessError> {
    let path = baseline_path(dir, workload);
    match fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HarnessError::io(&path, e)),
    }
}

pub fn save_baseline(dir: &Path, baseline: &Baseline) -> Result<PathBuf, HarnessError> {
    let path = baseline_path(dir, &baseline.workload);
    let json =
        serde_json::to_vec_pretty(baseline).map_err(|e| HarnessError::Infra(e.to_string()))?;
    write_atomically(&path, &json)?;
    Ok(path)
}
