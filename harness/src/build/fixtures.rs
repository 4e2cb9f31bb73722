//! Regression fixtures: a small git history built from this repository's broker in which
//! single commits reintroduce each root cause of the seed's regression, plus ones that add a
//! small fixed slowdown, graded CPU work or graded waiting, each followed by its revert.
//!
//! Each fault is a unified diff in `broker-under-test/fixtures/<name>.patch`, next to the code
//! it patches (parsed with libgit2, each hunk's text matched exactly once): a broker change
//! that breaks a patch fails `every_patch_applies_to_this_tree` (a unit test, in review)
//! instead of silently testing nothing. `{SLOWDOWN_US}`, `{ROUNDS_PER_KIB}` and a fixture's own
//! parameters in a patch are filled in first.

use std::path::{Path, PathBuf};

use git2::{Diff, IndexAddOption, Repository, Signature};
use serde::Serialize;

use crate::build::git::{CommitInfo, TargetRepo};
use crate::error::HarnessError;

pub struct Fixture {
    pub name: &'static str,
    pub message: &'static str,
    /// The fault, a unified diff against the repository root.
    patch: &'static str,
    /// Placeholders of `patch` and `message` this fixture fills in, with their values (one
    /// patch, several grades).
    parameters: &'static [(&'static str, &'static str)],
}

/// The patch of fixture `$name`, compiled in (so an older commit gets today's faults).
macro_rules! fixture {
    ($name:literal, $message:literal) => {
        fixture!($name, $message, patch = $name, [])
    };
    ($name:literal, $message:literal, patch = $patch:literal, [$(($key:literal, $value:literal)),*]) => {
        Fixture {
            name: $name,
            message: $message,
            patch: include_str!(concat!(
                "../../../broker-under-test/fixtures/",
                $patch,
                ".patch"
            )),
            parameters: &[$(($key, $value)),*],
        }
    };
}

pub const FIXTURES: &[Fixture] = &[
    // The write guard is taken before the append and released after the response, so every
    // produce request in the broker waits for the previous one's fsync.
    fixture!(
        "produce-lock",
        "perf(produce): guard produce with a broker-wide lock (fixture: the seed's RwLock)"
    ),
    fixture!(
        "early-return",
        "feat(wal): write the WAL directly and return early (fixture: skips pending_batches)"
    ),
    fixture!(
        "no-flush",
        "refactor(produce): drop the flush call (fixture: flush_partition_if_needed never called)"
    ),
    // A busy loop: a sleep that short would last the timer slack (about 50 us) instead.
    fixture!(
        "fixed-slowdown",
        "chore(produce): extra validation pass (fixture: {SLOWDOWN_US} us of CPU per produce request)"
    ),
    // The graded fixtures: deterministic CPU work per produce request, proportional to its
    // record bytes (the same share per message whatever the batching): percent times
    // `ROUNDS_PER_KIB_PER_PERCENT` hash rounds per KiB. No clock in it, so the deterministic
    // tier counts it exactly, unlike the busy loop of `fixed-slowdown`.
    fixture!(
        "cpu-2pct",
        "perf(produce): checksum records once more (fixture: ~2% more CPU per message)"
    ),
    fixture!(
        "cpu-5pct",
        "perf(produce): checksum records with a slower hash (fixture: ~5% more CPU per message)"
    ),
    fixture!(
        "cpu-10pct",
        "perf(produce): validate every record twice (fixture: ~10% more CPU per message)"
    ),
    // The graded waiting fixtures: every produce request takes a broker-wide lock, and every
    // Nth one holds it across a 1 ms timer wait, so the produce path stalls for a share of
    // the time while the CPU idles (the seed's kind of regression: a lock held across a wait).
    // Almost no instructions are added, so only the wall-clock metrics can see them. N was
    // chosen for about -3/-5/-10/-20% throughput on `produce-c128-s256-10s` (BENCHMARKS.md).
    fixture!(
        "wait-3pct",
        "perf(produce): count produce requests under a lock, pausing every {WAIT_EVERY_REQUESTS}th (fixture: a lock held across a wait, ~3% less throughput)",
        patch = "produce-wait",
        [("{WAIT_EVERY_REQUESTS}", "900")]
    ),
    fixture!(
        "wait-5pct",
        "perf(produce): count produce requests under a lock, pausing every {WAIT_EVERY_REQUESTS}th (fixture: a lock held across a wait, ~5% less throughput)",
        patch = "produce-wait",
        [("{WAIT_EVERY_REQUESTS}", "500")]
    ),
    fixture!(
        "wait-10pct",
        "perf(produce): count produce requests under a lock, pausing every {WAIT_EVERY_REQUESTS}th (fixture: a lock held across a wait, ~10% less throughput)",
        patch = "produce-wait",
        [("{WAIT_EVERY_REQUESTS}", "200")]
    ),
    fixture!(
        "wait-20pct",
        "perf(produce): count produce requests under a lock, pausing every {WAIT_EVERY_REQUESTS}th (fixture: a lock held across a wait, ~20% less throughput)",
        patch = "produce-wait",
        [("{WAIT_EVERY_REQUESTS}", "100")]
    ),
    // The seed's mistake in this design: replication awaited on the acks=1 path. Only a
    // replicated workload (a cluster) can show it; a single broker has no followers.
    fixture!(
        "replication-on-acks1",
        "feat(replication): acknowledge once the followers have the batch (fixture: acks=1 waits for replication)"
    ),
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

fn git(e: git2::Error) -> HarnessError {
    HarnessError::Git(e.message().to_owned())
}

fn commit_all(repo: &Repository, message: &str) -> Result<String, HarnessError> {
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
    /// `text` (a patch or a commit message of `f`) with every placeholder filled in.
    fn fill(&self, f: &Fixture, text: &str) -> String {
        let text = text
            .replace(SLOWDOWN_US, &self.slowdown_us.to_string())
            .replace(ROUNDS_PER_KIB, &ROUNDS_PER_KIB_PER_PERCENT.to_string());
        f.parameters
            .iter()
            .fold(text, |text, (key, value)| text.replace(key, value))
    }
}

/// Applies the fixture's patch to the files under `root`; returns the files it changed. Each
/// hunk's old text (its context and removed lines) must occur exactly once in its file and
/// becomes the hunk's new text: as strict as `git apply` without fuzz, but a hunk may have
/// moved (libgit2's own apply insists on the recorded line numbers, so every edit above a
/// hunk would break a fixture that still means the same).
fn apply(root: &Path, f: &Fixture, options: &FixtureOptions) -> Result<Vec<PathBuf>, HarnessError> {
    let stale = |what: String| {
        HarnessError::Config(format!(
            "fixture {} does not apply: {what}; the broker code changed: update broker-under-test/fixtures/{}.patch",
            f.name, f.name
        ))
    };
    let diff = Diff::from_buffer(options.fill(f, f.patch).as_bytes()).map_err(git)?;
    let mut changed = Vec::new();
    for (index, delta) in diff.deltas().enumerate() {
        let path = delta
            .new_file()
            .path()
            .ok_or_else(|| stale("a file without a path".into()))?
            .to_owned();
        let patch = git2::Patch::from_diff(&diff, index)
            .map_err(git)?
            .ok_or_else(|| stale(format!("{} has no text hunks", path.display())))?;
        let file = root.join(&path);
        let mut text = std::fs::read_to_string(&file).map_err(|e| HarnessError::io(&file, e))?;
        for hunk in 0..patch.num_hunks() {
            let (mut old, mut new) = (String::new(), String::new());
            for line in 0..patch.num_lines_in_hunk(hunk).map_err(git)? {
                let line = patch.line_in_hunk(hunk, line).map_err(git)?;
                let content = String::from_utf8_lossy(line.content());
                match line.origin() {
                    ' ' => {
                        old.push_str(&content);
                        new.push_str(&content);
                    }
                    '-' => old.push_str(&content),
                    '+' => new.push_str(&content),
                    // End-of-file newline markers: every patched file ends with a newline.
                    _ => {}
                }
            }
            let found = text.matches(old.as_str()).count();
            if found != 1 {
                return Err(stale(format!(
                    "hunk {} of {} found {found} times, not once",
                    hunk + 1,
                    path.display()
                )));
            }
            text = text.replacen(old.as_str(), &new, 1);
        }
        std::fs::write(&file, text).map_err(|e| HarnessError::io(&file, e))?;
        changed.push(path);
    }
    Ok(changed)
}

/// Puts `paths` back as they are in `commit` (the revert of a fixture's patch).
fn restore(repo: &Repository, commit: &str, paths: &[PathBuf]) -> Result<(), HarnessError> {
    let root = repo
        .workdir()
        .ok_or_else(|| HarnessError::Git("the fixture repository has no work tree".into()))?;
    let tree = repo
        .find_commit(git2::Oid::from_str(commit).map_err(git)?)
        .and_then(|c| c.tree())
        .map_err(git)?;
    for path in paths {
        let blob = tree
            .get_path(path)
            .and_then(|entry| entry.to_object(repo))
            .and_then(|object| object.peel_to_blob())
            .map_err(git)?;
        let file = root.join(path);
        std::fs::write(&file, blob.content()).map_err(|e| HarnessError::io(&file, e))?;
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
    let repo = Repository::init(out).map_err(git)?;
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
            .map_err(git)?
            .id()
            .to_string();
        // Benign commits around the fault change the broker's source (a comment), so bisect
        // must measure every one of them, the culprit included: none shares a build with an
        // endpoint.
        touch_broker(out, &format!("{}: preparing", f.name))?;
        commit_all(&repo, &format!("refactor: comment before {}", f.name))?;
        touch_broker(out, &format!("{}: more notes", f.name))?;
        let before = commit_all(
            &repo,
            &format!("refactor: another comment before {}", f.name),
        )?;
        let changed = apply(out, f, options)?;
        let culprit = commit_all(&repo, &options.fill(f, f.message))?;
        touch_broker(out, &format!("{}: after", f.name))?;
        let bad = commit_all(&repo, &format!("refactor: comment after {}", f.name))?;
        restore(&repo, &before, &changed)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixture's patch applies, with strict context, to the broker in this work tree: a
    /// broker change that breaks one fails here, in seconds, not in the fixture bisects.
    #[test]
    fn every_patch_applies_to_this_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let options = FixtureOptions { slowdown_us: 150 };
        for f in FIXTURES {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repository::init(dir.path()).unwrap();
            let diff = Diff::from_buffer(options.fill(f, f.patch).as_bytes()).unwrap();
            let files: Vec<PathBuf> = diff
                .deltas()
                .filter_map(|d| d.old_file().path().map(Path::to_owned))
                .collect();
            assert!(!files.is_empty(), "{}: the patch changes no file", f.name);
            for file in &files {
                let to = dir.path().join(file);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(root.join(file), &to).unwrap();
            }
            let base = commit_all(&repo, "the broker files this patch changes").unwrap();
            let changed = apply(dir.path(), f, &options).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(changed, files, "{}", f.name);
            for file in &files {
                assert_ne!(
                    std::fs::read(dir.path().join(file)).unwrap(),
                    std::fs::read(root.join(file)).unwrap(),
                    "{}: the patch changes {}",
                    f.name,
                    file.display()
                );
            }
            restore(&repo, &base, &changed).unwrap();
            for file in &files {
                assert_eq!(
                    std::fs::read(dir.path().join(file)).unwrap(),
                    std::fs::read(root.join(file)).unwrap(),
                    "{}: the revert restores {}",
                    f.name,
                    file.display()
                );
            }
        }
    }

    /// No placeholder is left in any fixture's patch or message once filled: a grade that
    /// forgot its parameter would not even compile, or would name the wrong fault.
    #[test]
    fn every_placeholder_is_filled() {
        let options = FixtureOptions { slowdown_us: 150 };
        let placeholder = |text: &str| {
            text.split('{').skip(1).any(|rest| {
                let name = rest.split('}').next().unwrap_or("");
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
        };
        for f in FIXTURES {
            assert!(!placeholder(&options.fill(f, f.patch)), "{}: patch", f.name);
            assert!(
                !placeholder(&options.fill(f, f.message)),
                "{}: message",
                f.name
            );
        }
        let grade = FIXTURES.iter().find(|f| f.name == "wait-5pct").unwrap();
        assert!(options.fill(grade, grade.patch).contains("% 500 == 0"));
    }

    /// A patch whose code is gone says so and names its file; it never half-applies silently.
    #[test]
    fn a_stale_patch_is_refused() {
        let options = FixtureOptions { slowdown_us: 150 };
        let f = &FIXTURES[0];
        let dir = tempfile::tempdir().unwrap();
        let diff = Diff::from_buffer(options.fill(f, f.patch).as_bytes()).unwrap();
        for delta in diff.deltas() {
            let to = dir.path().join(delta.old_file().path().unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(&to, "fn main() {}\n").unwrap();
        }
        let err = apply(dir.path(), f, &options).unwrap_err().to_string();
        assert!(
            err.contains("does not apply") && err.contains(&format!("fixtures/{}.patch", f.name)),
            "{err}"
        );
    }
}
