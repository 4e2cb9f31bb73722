//! The results database: every trial in one SQLite file (`results.sqlite` in the results
//! directory), the history `history`, `dashboard` and the nightly report read.
//!
//! A trial is one row, written in its own transaction the moment the trial ends, so a crash
//! loses nothing already recorded (rollback journal, `synchronous = FULL`). The rollback
//! journal rather than WAL mode: at rest the database is this one file, which CI copies
//! between nights. The columns hold
//! what series are drawn from; `record` holds the whole trial as JSON (client settings,
//! per-second series, latency histogram), so nothing the JSON export has is lost either.
//!
//! The schema is versioned with SQLite's `user_version`: `MIGRATIONS[i]` takes a database from
//! version i to i + 1, each in one transaction. A database newer than this binary is refused,
//! never written.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::HarnessError;
use crate::store::record::{TrialRecord, TRIAL_SCHEMA};

pub const DB_FILE: &str = "results.sqlite";

/// Another harness process may hold the write lock for one trial's insert.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const MIGRATIONS: &[&str] = &[
    // 1: trials.
    "CREATE TABLE trials (
        id TEXT PRIMARY KEY,
        recorded_at TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        commit_summary TEXT NOT NULL,
        workload TEXT NOT NULL,
        workload_hash TEXT NOT NULL,
        host TEXT NOT NULL,
        role TEXT NOT NULL,
        status TEXT NOT NULL,
        throughput REAL,
        p99_ms REAL,
        p999_ms REAL,
        peak_rss_mib REAL,
        cpu_us_per_msg REAL,
        record TEXT NOT NULL
    );
    CREATE INDEX trials_by_series ON trials (workload, host, recorded_at);",
    // 2: change points already reported, so the nightly report can say which are new.
    "CREATE TABLE change_points (
        workload TEXT NOT NULL,
        host TEXT NOT NULL,
        metric TEXT NOT NULL,
        after_sha TEXT NOT NULL,
        first_reported_at TEXT NOT NULL,
        PRIMARY KEY (workload, host, metric, after_sha)
    );",
    // 3: gate verdicts, drawn on the dashboard, with the report each belongs to.
    "CREATE TABLE gates (
        decided_at TEXT NOT NULL,
        workload TEXT NOT NULL,
        host TEXT NOT NULL,
        head_sha TEXT NOT NULL,
        base_sha TEXT,
        verdict TEXT NOT NULL,
        report TEXT,
        result TEXT NOT NULL
    );
    CREATE INDEX gates_by_workload ON gates (workload, host, decided_at);",
    // 4: regressions accepted on purpose: later gates of the workload measure against the
    // accepted commit.
    "CREATE TABLE acceptances (
        accepted_at TEXT NOT NULL,
        workload TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        metric TEXT NOT NULL,
        reason TEXT NOT NULL,
        accepted_by TEXT NOT NULL,
        PRIMARY KEY (workload, commit_sha, metric)
    );",
    // 5: real A/A comparisons (a commit against itself), the rule's false-regression rate is
    // bounded from: comparisons of one workload, host and rule count together across runs.
    "CREATE TABLE aa_comparisons (
        decided_at TEXT NOT NULL,
        workload TEXT NOT NULL,
        workload_hash TEXT NOT NULL,
        host TEXT NOT NULL,
        rule TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        seed TEXT NOT NULL,
        verdict TEXT NOT NULL,
        pairs INTEGER NOT NULL,
        throughput_ratio REAL NOT NULL
    );
    CREATE INDEX aa_by_rule ON aa_comparisons (workload, workload_hash, host, rule);",
];

/// A regression accepted on purpose: who, what, why and when.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AcceptanceRow {
    pub accepted_at: String,
    pub workload: String,
    pub commit_sha: String,
    /// The metric's name as `accept --metric` takes it (`throughput`, `instructions`, ...).
    pub metric: String,
    pub reason: String,
    pub accepted_by: String,
}

/// One real A/A comparison: a commit measured against itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AaRow {
    pub decided_at: String,
    pub workload: String,
    pub workload_hash: String,
    /// The host's fingerprint.
    pub host: String,
    /// The rule the verdict was reached with, without its seed (comparisons under another
    /// rule say nothing about this one).
    pub rule: String,
    pub commit_sha: String,
    /// The seed its A/B order was drawn from (text: SQLite's integers are signed).
    pub seed: String,
    /// `pass`, `regression` or `inconclusive`.
    pub verdict: String,
    pub pairs: usize,
    pub throughput_ratio: f64,
}

/// A recorded gate verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRow {
    pub decided_at: String,
    pub host: String,
    pub head_sha: String,
    pub base_sha: Option<String>,
    /// `pass`, `regression`, `inconclusive` or `failed` (a side did not build or run).
    pub verdict: String,
    /// Where its report is (a link, as given to `gate --report-link`).
    pub report: Option<String>,
}

pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub struct ResultsDb {
    conn: Connection,
    path: PathBuf,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> HarnessError + '_ {
    move |e| HarnessError::Infra(format!("results database {}: {e}", path.display()))
}

impl ResultsDb {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, HarnessError> {
        Self::open_at_version(path, SCHEMA_VERSION)
    }

    /// Opens and migrates up to `version` (tests build old databases with it).
    pub fn open_at_version(path: &Path, version: u32) -> Result<Self, HarnessError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
        }
        let err = db_err(path);
        let conn = Connection::open(path).map_err(&err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(&err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(&err)?;
        let mut db = Self {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate(version)?;
        Ok(db)
    }

    pub fn schema_version(&self) -> Result<u32, HarnessError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db_err(&self.path))
    }

    fn migrate(&mut self, to: u32) -> Result<(), HarnessError> {
        let err = db_err(&self.path);
        let from = self.schema_version()?;
        if from > SCHEMA_VERSION {
            return Err(HarnessError::Config(format!(
                "results database {} has schema version {from}; this chronik-harness knows up to {SCHEMA_VERSION} (use a newer build)",
                self.path.display()
            )));
        }
        for version in from..to {
            let tx = self.conn.transaction().map_err(&err)?;
            tx.execute_batch(MIGRATIONS[version as usize])
                .map_err(&err)?;
            tx.pragma_update(None, "user_version", version + 1)
                .map_err(&err)?;
            tx.commit().map_err(&err)?;
        }
        Ok(())
    }

    /// Records trials (one transaction); a trial already there (same id) is left as it is.
    /// Returns how many were new.
    pub fn insert(&mut self, records: &[TrialRecord]) -> Result<usize, HarnessError> {
        let err = db_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        let mut added = 0;
        {
            let mut insert = tx
                .prepare(
                    "INSERT OR IGNORE INTO trials (id, recorded_at, commit_sha, commit_summary,
                     workload, workload_hash, host, role, status, throughput, p99_ms, p999_ms,
                     peak_rss_mib, cpu_us_per_msg, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(&err)?;
            for r in records {
                let json =
                    serde_json::to_string(r).map_err(|e| HarnessError::Infra(e.to_string()))?;
                let status = serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let s = r.summary.as_ref();
                added += insert
                    .execute(params![
                        r.id,
                        r.recorded_at,
                        r.commit.sha,
                        r.commit.summary,
                        r.workload,
                        r.workload_hash,
                        r.host_fingerprint,
                        r.role,
                        status,
                        s.map(|s| s.throughput),
                        s.map(|s| s.p99_ms),
                        s.and_then(|s| s.p999_ms),
                        s.and_then(|s| s.peak_rss_mib),
                        s.and_then(|s| s.broker_cpu_us_per_msg),
                        json,
                    ])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(added)
    }

    /// Every trial of `workload`, in the order they were recorded.
    pub fn trials(&self, workload: &str) -> Result<Vec<TrialRecord>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare("SELECT record FROM trials WHERE workload = ?1 ORDER BY recorded_at, id")
            .map_err(&err)?;
        let rows = query
            .query_map([workload], |row| row.get::<_, String>(0))
            .map_err(&err)?;
        let mut out = Vec::new();
        for json in rows {
            let json = json.map_err(&err)?;
            match serde_json::from_str::<TrialRecord>(&json) {
                Ok(r) if r.schema == TRIAL_SCHEMA => out.push(r),
                _ => {} // a record of a schema this build does not read
            }
        }
        Ok(out)
    }

    /// The workloads with at least one trial.
    pub fn workloads(&self) -> Result<Vec<String>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare("SELECT DISTINCT workload FROM trials ORDER BY workload")
            .map_err(&err)?;
        let rows = query.query_map([], |row| row.get(0)).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Change points reported before (by the commit after the change).
    pub fn reported_change_points(
        &self,
        workload: &str,
        host: &str,
        metric: &str,
    ) -> Result<HashSet<String>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare(
                "SELECT after_sha FROM change_points WHERE workload = ?1 AND host = ?2 AND metric = ?3",
            )
            .map_err(&err)?;
        let rows = query
            .query_map([workload, host, metric], |row| row.get(0))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Notes a change point as reported; returns whether it was new.
    pub fn mark_reported(
        &mut self,
        workload: &str,
        host: &str,
        metric: &str,
        after_sha: &str,
        now: &str,
    ) -> Result<bool, HarnessError> {
        let added = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO change_points VALUES (?1, ?2, ?3, ?4, ?5)",
                params![workload, host, metric, after_sha, now],
            )
            .map_err(db_err(&self.path))?;
        Ok(added == 1)
    }

    /// Records a gate verdict; `result` is the gate's whole JSON result.
    pub fn insert_gate(
        &mut self,
        row: &GateRow,
        workload: &str,
        result: &str,
    ) -> Result<(), HarnessError> {
        self.conn
            .execute(
                "INSERT INTO gates VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    row.decided_at,
                    workload,
                    row.host,
                    row.head_sha,
                    row.base_sha,
                    row.verdict,
                    row.report,
                    result
                ],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    /// Gate verdicts of `workload`, oldest first.
    pub fn gates(&self, workload: &str) -> Result<Vec<GateRow>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare(
                "SELECT decided_at, host, head_sha, base_sha, verdict, report FROM gates
                 WHERE workload = ?1 ORDER BY decided_at",
            )
            .map_err(&err)?;
        let rows = query
            .query_map([workload], |row| {
                Ok(GateRow {
                    decided_at: row.get(0)?,
                    host: row.get(1)?,
                    head_sha: row.get(2)?,
                    base_sha: row.get(3)?,
                    verdict: row.get(4)?,
                    report: row.get(5)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// The whole JSON results of the gates of `workload` whose head was `head_sha`, oldest
    /// first.
    pub fn gate_results(
        &self,
        workload: &str,
        head_sha: &str,
    ) -> Result<Vec<String>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare(
                "SELECT result FROM gates WHERE workload = ?1 AND head_sha = ?2
                 ORDER BY decided_at",
            )
            .map_err(&err)?;
        let rows = query
            .query_map([workload, head_sha], |row| row.get(0))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Records an acceptance; accepting the same metric of the same commit again replaces
    /// the reason, the person and the time.
    pub fn insert_acceptance(&mut self, row: &AcceptanceRow) -> Result<(), HarnessError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO acceptances VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.accepted_at,
                    row.workload,
                    row.commit_sha,
                    row.metric,
                    row.reason,
                    row.accepted_by
                ],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    /// Acceptances of `workload`, oldest first.
    pub fn acceptances(&self, workload: &str) -> Result<Vec<AcceptanceRow>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare(
                "SELECT accepted_at, workload, commit_sha, metric, reason, accepted_by
                 FROM acceptances WHERE workload = ?1 ORDER BY accepted_at",
            )
            .map_err(&err)?;
        let rows = query
            .query_map([workload], |row| {
                Ok(AcceptanceRow {
                    accepted_at: row.get(0)?,
                    workload: row.get(1)?,
                    commit_sha: row.get(2)?,
                    metric: row.get(3)?,
                    reason: row.get(4)?,
                    accepted_by: row.get(5)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Records a real A/A comparison the moment it is decided.
    pub fn insert_aa(&mut self, row: &AaRow) -> Result<(), HarnessError> {
        self.conn
            .execute(
                "INSERT INTO aa_comparisons VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    row.decided_at,
                    row.workload,
                    row.workload_hash,
                    row.host,
                    row.rule,
                    row.commit_sha,
                    row.seed,
                    row.verdict,
                    row.pairs as i64,
                    row.throughput_ratio
                ],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    /// The real A/A comparisons of one workload definition on one host under one rule,
    /// oldest first.
    pub fn aa_comparisons(
        &self,
        workload: &str,
        workload_hash: &str,
        host: &str,
        rule: &str,
    ) -> Result<Vec<AaRow>, HarnessError> {
        let err = db_err(&self.path);
        let mut query = self
            .conn
            .prepare(
                "SELECT decided_at, workload, workload_hash, host, rule, commit_sha, seed,
                        verdict, pairs, throughput_ratio
                 FROM aa_comparisons
                 WHERE workload = ?1 AND workload_hash = ?2 AND host = ?3 AND rule = ?4
                 ORDER BY decided_at",
            )
            .map_err(&err)?;
        let rows = query
            .query_map([workload, workload_hash, host, rule], |row| {
                Ok(AaRow {
                    decided_at: row.get(0)?,
                    workload: row.get(1)?,
                    workload_hash: row.get(2)?,
                    host: row.get(3)?,
                    rule: row.get(4)?,
                    commit_sha: row.get(5)?,
                    seed: row.get(6)?,
                    verdict: row.get(7)?,
                    pairs: row.get::<_, i64>(8)? as usize,
                    throughput_ratio: row.get(9)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Whether a trial with this id is stored.
    pub fn contains(&self, id: &str) -> Result<bool, HarnessError> {
        self.conn
            .query_row("SELECT 1 FROM trials WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .map_err(db_err(&self.path))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::build::git::CommitInfo;
    use crate::trial::runner::TrialStatus;
    use crate::trial::summary::TrialSummary;

    pub(crate) fn trial(id: &str, sha: &str, throughput: f64) -> TrialRecord {
        TrialRecord {
            schema: TRIAL_SCHEMA.into(),
            id: id.into(),
            recorded_at: format!("2026-11-27T00:00:{id:0>2}Z"),
            commit: CommitInfo {
                sha: sha.into(),
                summary: format!("commit {sha}"),
            },
            workload: "w".into(),
            workload_hash: "h".into(),
            host_fingerprint: "host".into(),
            role: "head".into(),
            status: TrialStatus::Ok,
            detail: None,
            summary: Some(TrialSummary {
                throughput,
                p99_ms: 1.5,
                p999_ms: Some(3.0),
                per_second: vec![throughput as u64; 3],
                peak_rss_mib: None,
                broker_cpu_us_per_msg: None,
                failover: None,
            }),
            broker_peak_rss_kib: None,
            report: None,
        }
    }

    #[test]
    fn a_version_1_database_migrates_and_keeps_its_trials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let mut old = ResultsDb::open_at_version(&path, 1).unwrap();
            assert_eq!(old.schema_version().unwrap(), 1);
            assert_eq!(old.insert(&[trial("1", "aaa", 100.0)]).unwrap(), 1);
        }
        let mut db = ResultsDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let trials = db.trials("w").unwrap();
        assert_eq!(trials.len(), 1);
        assert_eq!(trials[0].summary.as_ref().unwrap().per_second, vec![100; 3]);
        assert!(db
            .mark_reported("w", "host", "throughput", "aaa", "now")
            .unwrap());
        assert!(!db
            .mark_reported("w", "host", "throughput", "aaa", "later")
            .unwrap());
        let gate = GateRow {
            decided_at: "now".into(),
            host: "host".into(),
            head_sha: "aaa".into(),
            base_sha: None,
            verdict: "pass".into(),
            report: Some("reports/x/report.md".into()),
        };
        db.insert_gate(&gate, "w", "{}").unwrap();
        assert_eq!(db.gates("w").unwrap(), vec![gate]);
        assert_eq!(db.gate_results("w", "aaa").unwrap(), vec!["{}".to_owned()]);
        assert!(db.gate_results("w", "bbb").unwrap().is_empty());
    }

    #[test]
    fn real_aa_comparisons_are_read_back_per_workload_host_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ResultsDb::open(&dir.path().join(DB_FILE)).unwrap();
        let row = |at: &str, rule: &str, seed: u64, verdict: &str| AaRow {
            decided_at: at.into(),
            workload: "w".into(),
            workload_hash: "h".into(),
            host: "host".into(),
            rule: rule.into(),
            commit_sha: "aaa".into(),
            seed: seed.to_string(),
            verdict: verdict.into(),
            pairs: 30,
            throughput_ratio: 0.99,
        };
        let second = row("2026-12-04T01:00:00Z", "r", u64::MAX, "inconclusive");
        let first = row("2026-12-04T00:00:00Z", "r", 7, "pass");
        db.insert_aa(&second).unwrap();
        db.insert_aa(&first).unwrap();
        db.insert_aa(&row("2026-12-04T02:00:00Z", "other rule", 8, "pass"))
            .unwrap();
        assert_eq!(
            db.aa_comparisons("w", "h", "host", "r").unwrap(),
            vec![first, second]
        );
        assert!(db
            .aa_comparisons("w", "h", "another host", "r")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_acceptance_is_recorded_and_accepting_again_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ResultsDb::open(&dir.path().join(DB_FILE)).unwrap();
        let mut row = AcceptanceRow {
            accepted_at: "2026-12-03T00:00:00Z".into(),
            workload: "w".into(),
            commit_sha: "aaa".into(),
            metric: "instructions".into(),
            reason: "CRC checks on produce".into(),
            accepted_by: "dev".into(),
        };
        db.insert_acceptance(&row).unwrap();
        row.reason = "CRC checks on produce, measured".into();
        db.insert_acceptance(&row).unwrap();
        assert_eq!(db.acceptances("w").unwrap(), vec![row]);
        assert!(db.acceptances("other").unwrap().is_empty());
    }

    #[test]
    fn a_newer_database_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let db = ResultsDb::open(&path).unwrap();
        db.conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(db);
        let err = ResultsDb::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer build"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION + 1);
    }

    #[test]
    fn a_recorded_trial_survives_a_process_that_never_closes_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut db = ResultsDb::open(&path).unwrap();
        db.insert(&[trial("1", "aaa", 100.0)]).unwrap();
        // What a killed process leaves: no close.
        std::mem::forget(db);
        let reopened = ResultsDb::open(&path).unwrap();
        assert_eq!(reopened.trials("w").unwrap().len(), 1);
    }

    #[test]
    fn a_trial_is_recorded_once_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ResultsDb::open(&dir.path().join(DB_FILE)).unwrap();
        let records = [trial("2", "bbb", 90.0), trial("1", "aaa", 100.0)];
        assert_eq!(db.insert(&records).unwrap(), 2);
        assert_eq!(db.insert(&records).unwrap(), 0, "ids are unique");
        let back = db.trials("w").unwrap();
        let ids: Vec<&str> = back.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"], "in recorded order");
        assert!(db.contains("1").unwrap());
        assert_eq!(db.workloads().unwrap(), ["w"]);
    }
}
