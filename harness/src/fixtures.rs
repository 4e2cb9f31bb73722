//! Regression fixtures: a small git history built from this repository's broker in which
//! single commits reintroduce each root cause of the seed's regression, plus one that adds a
//! small fixed slowdown, each followed by its revert. Patches are exact text substitutions
//! that fail loudly when the broker's code no longer matches, so a fixture never silently
//! tests nothing.

use std::path::Path;

use git2::{IndexAddOption, Repository, Signature};
use serde::Serialize;

use crate::error::HarnessError;
use crate::git::{CommitInfo, TargetRepo};

struct Patch {
    file: &'static str,
    find: &'static str,
    replace: &'static str,
}

pub struct Fixture {
    pub name: &'static str,
    pub message: &'static str,
    patches: &'static [Patch],
}

const APPEND_START: &str =
    "    pub async fn append(&self, request: ProduceRequest) -> AppendedProduce {\n        let acks = request.acks;\n";

/// A graded fixture: deterministic CPU work per produce request, proportional to its record
/// bytes (so it costs the same share per message whatever the batching): `percent` times
/// `ROUNDS_PER_KIB_PER_PERCENT` hash rounds per KiB. No clock in it, so the deterministic tier
/// counts it exactly, unlike the busy loop of `fixed-slowdown`.
macro_rules! cpu_fixture {
    ($name:literal, $message:literal, $percent:literal) => {
        Fixture {
            name: $name,
            message: $message,
            patches: &[Patch {
                file: "broker-under-test/src/produce.rs",
                find: APPEND_START,
                replace: concat!(
                    "    pub async fn append(&self, request: ProduceRequest) -> AppendedProduce {\n",
                    "        let record_bytes: u64 = request.topic_data.iter().flat_map(|t| t.partition_data.iter()).map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64)).sum();\n",
                    "        let mut hash = 0xcbf2_9ce4_8422_2325u64;\n",
                    "        for i in 0..record_bytes * ",
                    $percent,
                    " * {ROUNDS_PER_KIB} / 1024 {\n",
                    "            hash = (hash ^ i).wrapping_mul(0x100_0000_01b3);\n",
                    "        }\n",
                    "        std::hint::black_box(hash);\n",
                    "        let acks = request.acks;\n"
                ),
            }],
        }
    };
}

pub const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "produce-lock",
        message: "perf(produce): guard produce with a broker-wide lock (fixture: the seed's RwLock)",
        // The write guard is taken before the append and released after the response, so
        // every produce request in the broker waits for the previous one's fsync.
        patches: &[
            Patch {
                file: "broker-under-test/src/produce.rs",
                find: "pub struct AppendedProduce {\n    acks: i16,",
                replace: "pub struct AppendedProduce {\n    _serialized: tokio::sync::OwnedRwLockWriteGuard<()>,\n    acks: i16,",
            },
            Patch {
                file: "broker-under-test/src/produce.rs",
                find: APPEND_START,
                replace: "    pub async fn append(&self, request: ProduceRequest) -> AppendedProduce {\n        static PRODUCE_LOCK: std::sync::LazyLock<Arc<tokio::sync::RwLock<()>>> =\n            std::sync::LazyLock::new(|| Arc::new(tokio::sync::RwLock::new(())));\n        let _serialized = PRODUCE_LOCK.clone().write_owned().await;\n        let acks = request.acks;\n",
            },
            Patch {
                file: "broker-under-test/src/produce.rs",
                find: "        AppendedProduce {\n            acks,\n",
                replace: "        AppendedProduce {\n            _serialized,\n            acks,\n",
            },
            Patch {
                file: "broker-under-test/src/produce.rs",
                find: "        let AppendedProduce {\n            acks,\n",
                replace: "        let AppendedProduce {\n            _serialized,\n            acks,\n",
            },
        ],
    },
    Fixture {
        name: "early-return",
        message: "feat(wal): write the WAL directly and return early (fixture: skips pending_batches)",
        patches: &[
            Patch {
                file: "broker-under-test/src/log/mod.rs",
                find: "    pub fn start_offset(&self) -> i64 {",
                replace: "    pub fn dir(&self) -> &Path {\n        &self.dir\n    }\n\n    pub fn start_offset(&self) -> i64 {",
            },
            Patch {
                file: "broker-under-test/src/partition.rs",
                // The produce path's append (the follower's has no budget).
                find: "        let durable = self\n            .enqueue(&mut state, wal, frames, stored_batches, next, Some(budget))\n",
                replace: "        {\n            use std::io::Write as _;\n            let storage = |_| AppendError::Kafka(ResponseError::KafkaStorageError);\n            let path = state.log.dir().join(\"direct.wal\");\n            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(storage)?;\n            for frame in &frames {\n                file.write_all(frame).map_err(storage)?;\n            }\n            file.sync_data().map_err(storage)?;\n            state.next_offset = next;\n            self.on_durable(next);\n            if next > 0 {\n                return Ok(Appended { base_offset: first_base.expect(\"one batch\"), end_offset: next, leader_epoch, durable: None });\n            }\n        }\n        let durable = self\n            .enqueue(&mut state, wal, frames, stored_batches, next, Some(budget))\n",
            },
        ],
    },
    Fixture {
        name: "no-flush",
        message: "refactor(produce): drop the flush call (fixture: flush_partition_if_needed never called)",
        patches: &[
            Patch {
                file: "broker-under-test/src/produce.rs",
                find: "        self.flush_partition_if_needed(partition);\n        response.log_start_offset",
                replace: "        response.log_start_offset",
            },
            Patch {
                file: "broker-under-test/src/wal/mod.rs",
                find: "        partition.flush_if_needed(profile, have_closed, retention_bytes)?;\n        if have_closed {",
                replace: "        if have_closed {",
            },
        ],
    },
    Fixture {
        name: "fixed-slowdown",
        message: "chore(produce): extra validation pass (fixture: {SLOWDOWN_US} us of CPU per produce request)",
        patches: &[Patch {
            file: "broker-under-test/src/produce.rs",
            find: APPEND_START,
            replace: "    pub async fn append(&self, request: ProduceRequest) -> AppendedProduce {\n        let busy_until = std::time::Instant::now() + std::time::Duration::from_micros({SLOWDOWN_US});\n        while std::time::Instant::now() < busy_until {\n            std::hint::spin_loop();\n        }\n        let acks = request.acks;\n",
        }],
    },
    cpu_fixture!(
        "cpu-2pct",
        "perf(produce): checksum records once more (fixture: ~2% more CPU per message)",
        "2"
    ),
    cpu_fixture!(
        "cpu-5pct",
        "perf(produce): checksum records with a slower hash (fixture: ~5% more CPU per message)",
        "5"
    ),
    cpu_fixture!(
        "cpu-10pct",
        "perf(produce): validate every record twice (fixture: ~10% more CPU per message)",
        "10"
    ),
    Fixture {
        name: "replication-on-acks1",
        message: "feat(replication): acknowledge once the followers have the batch (fixture: acks=1 waits for replication)",
        // The seed's mistake in this design: replication awaited on the acks=1 path. Only a
        // replicated workload (a cluster) can show it; a single broker has no followers.
        patches: &[Patch {
            file: "broker-under-test/src/produce.rs",
            find: "        if acks == ACKS_ALL {\n            if let Some(replication) = partition.replication() {",
            replace: "        if acks != 0 {\n            if let Some(replication) = partition.replication() {",
        }],
    },
];

/// Hash rounds per KiB of record data that cost about 1% of the broker's work per message
/// (calibrated with the deterministic tier at the fixture base, BENCHMARKS.md).
pub const ROUNDS_PER_KIB_PER_PERCENT: u64 = 70;

/// The generated history: for each fixture, the commit before it, the culprit and the revert.
#[derive(Debug, Clone, Serialize)]
pub struct FixtureHistory {
    pub base: String,
    pub fixtures: Vec<FixtureCommits>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FixtureCommits {
    pub name: String,
    /// Last commit without the fault (bisect --good).
    pub good: String,
    /// The commit that introduces the fault.
    pub culprit: String,
    /// A later commit that still has the fault (bisect --bad).
    pub bad: String,
}

fn commit_all(repo: &Repository, message: &str) -> Result<String, HarnessError> {
    let git = |e: git2::Error| HarnessError::Git(e.message().to_owned());
    let mut index = repo.index().map_err(git)?;
    index
        .add_all(["*"], IndexAddOption::DEFAULT, None)
        .map_err(git)?;
    index.update_all(["*"], None).map_err(git)?;
    index.write().map_err(git)?;
    let tree = repo
        .find_tree(index.write_tree().map_err(git)?)
        .map_err(git)?;
    let sig = Signature::now("chronik-fixtures", "fixtures@chronik.invalid").map_err(git)?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    Ok(repo
        .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .map_err(git)?
        .to_string())
}

/// Placeholder in the graded fixtures for `ROUNDS_PER_KIB_PER_PERCENT`.
const ROUNDS_PER_KIB: &str = "{ROUNDS_PER_KIB}";

/// Placeholder in fixture text for `FixtureOptions::slowdown_us`.
const SLOWDOWN_US: &str = "{SLOWDOWN_US}";

/// Knobs of the generated history.
#[derive(Debug, Clone, Copy)]
pub struct FixtureOptions {
    /// CPU time the fixed-slowdown fixture spends per produce request, in microseconds (a
    /// busy loop: a sleep that short would last the timer slack, about 50 us, instead).
    pub slowdown_us: u64,
}

impl FixtureOptions {
    fn fill(&self, text: &str) -> String {
        text.replace(SLOWDOWN_US, &self.slowdown_us.to_string())
            .replace(ROUNDS_PER_KIB, &ROUNDS_PER_KIB_PER_PERCENT.to_string())
    }
}

fn apply(
    root: &Path,
    patches: &[Patch],
    reverse: bool,
    options: &FixtureOptions,
) -> Result<(), HarnessError> {
    for p in patches {
        let path = root.join(p.file);
        let text = std::fs::read_to_string(&path).map_err(|e| HarnessError::io(&path, e))?;
        let (patched, original) = (options.fill(p.replace), p.find.to_owned());
        let (find, replace) = if reverse {
            (patched.as_str(), original.as_str())
        } else {
            (original.as_str(), patched.as_str())
        };
        if find.is_empty() || text.matches(find).count() != 1 {
            return Err(HarnessError::Config(format!(
                "fixture patch does not apply to {}: the broker code changed; update harness/src/fixtures.rs",
                p.file
            )));
        }
        std::fs::write(&path, text.replacen(find, replace, 1))
            .map_err(|e| HarnessError::io(&path, e))?;
    }
    Ok(())
}

/// Appends a comment to the broker's source: a different build, the same behaviour.
fn touch_broker(root: &Path, note: &str) -> Result<(), HarnessError> {
    let path = root.join(BENIGN_BROKER_FILE);
    let mut text = std::fs::read_to_string(&path).map_err(|e| HarnessError::io(&path, e))?;
    text.push_str(&format!("// fixture note: {note}\n"));
    std::fs::write(&path, text).map_err(|e| HarnessError::io(&path, e))
}

/// The broker file the benign fixture commits add comments to.
const BENIGN_BROKER_FILE: &str = "broker-under-test/src/lib.rs";

/// Builds the fixture repository in `out` from `from` (a commit of `source`).
/// History per fixture: benign, benign, FAULT, benign, revert; good..bad spans 4 commits.
/// Every benign commit changes the broker's source (a comment), so each builds a new broker.
pub fn generate(
    source: &TargetRepo,
    from: &CommitInfo,
    out: &Path,
    only: &[String],
    options: &FixtureOptions,
) -> Result<FixtureHistory, HarnessError> {
    if out.exists() {
        return Err(HarnessError::Usage(format!(
            "{} exists; choose a new directory",
            out.display()
        )));
    }
    source.export(from, out)?;
    let repo = Repository::init(out).map_err(|e| HarnessError::Git(e.message().to_owned()))?;
    let base = commit_all(
        &repo,
        &format!("fixture base: broker at {} {}", from.short(), from.summary),
    )?;
    let mut fixtures = Vec::new();
    for (i, f) in FIXTURES.iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| o == f.name) {
            continue;
        }
        let good = repo
            .head()
            .and_then(|h| h.peel_to_commit())
            .map_err(|e| HarnessError::Git(e.message().to_owned()))?
            .id()
            .to_string();
        // Benign commits around the fault change the broker's source (a comment), so bisect
        // must measure every one of them, the culprit included: none shares a build with an
        // endpoint.
        touch_broker(out, &format!("{}: preparing", f.name))?;
        commit_all(&repo, &format!("refactor: comment before {}", f.name))?;
        touch_broker(out, &format!("{}: more notes", f.name))?;
        commit_all(
            &repo,
            &format!("refactor: another comment before {}", f.name),
        )?;
        apply(out, f.patches, false, options)?;
        let culprit = commit_all(&repo, &options.fill(f.message))?;
        touch_broker(out, &format!("{}: after", f.name))?;
        let bad = commit_all(&repo, &format!("refactor: comment after {}", f.name))?;
        apply(out, f.patches, true, options)?;
        commit_all(&repo, &format!("revert: {} (fixture {i})", f.name))?;
        fixtures.push(FixtureCommits {
            name: f.name.to_owned(),
            good,
            culprit,
            bad,
        });
    }
    Ok(FixtureHistory { base, fixtures })
}
