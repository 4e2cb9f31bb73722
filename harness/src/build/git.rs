//! The target repository through git2: resolve revisions, write a commit's tree into a
//! directory of the harness's (the user's working tree and index are never touched), walk
//! first-parent history.

use std::path::{Path, PathBuf};

use git2::{build::CheckoutBuilder, Oid, Repository};
use sha2::{Digest, Sha256};

use crate::error::HarnessError;

pub struct TargetRepo {
    repo: Repository,
    pub path: PathBuf,
}

/// A resolved commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CommitInfo {
    pub sha: String,
    pub summary: String,
}

impl CommitInfo {
    pub fn short(&self) -> &str {
        &self.sha[..self.sha.len().min(10)]
    }
}

impl TargetRepo {
    pub fn open(path: &Path) -> Result<Self, HarnessError> {
        let repo = Repository::discover(path).map_err(|e| {
            HarnessError::Git(format!("opening {}: {}", path.display(), e.message()))
        })?;
        let path = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();
        Ok(Self { repo, path })
    }

    /// Resolves any revision git understands (sha, tag, branch, `HEAD~3`) to a commit.
    pub fn resolve(&self, rev: &str) -> Result<CommitInfo, HarnessError> {
        let object = self
            .repo
            .revparse_single(rev)
            .map_err(|e| HarnessError::UnknownRev(rev.to_owned(), e.message().to_owned()))?;
        let commit = object
            .peel_to_commit()
            .map_err(|e| HarnessError::UnknownRev(rev.to_owned(), e.message().to_owned()))?;
        Ok(CommitInfo {
            sha: commit.id().to_string(),
            summary: commit.summary().unwrap_or("").to_owned(),
        })
    }

    /// The repository's `user.name` (its config, then the user's and the system's).
    pub fn user_name(&self) -> Option<String> {
        self.repo.config().ok()?.get_string("user.name").ok()
    }

    /// Writes the commit's tree into `dir` (created fresh).
    pub fn export(&self, commit: &CommitInfo, dir: &Path) -> Result<(), HarnessError> {
        let git_err = |e: git2::Error| {
            HarnessError::Git(format!("exporting {}: {}", commit.short(), e.message()))
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
        let tree = self.tree(commit).map_err(git_err)?;
        let mut checkout = CheckoutBuilder::new();
        checkout
            .target_dir(dir)
            .force()
            .update_index(false)
            .recreate_missing(true);
        self.repo
            .checkout_tree(tree.as_object(), Some(&mut checkout))
            .map_err(git_err)
    }

    /// Makes `dir` hold exactly the commit's tree. A file whose content is already right is
    /// left alone, modification time included: cargo decides whether a path dependency (such
    /// as the vendored kafka-protocol) is fresh by comparing mtimes, so a build in the same
    /// directory recompiles only what this commit changed.
    pub fn sync_tree(&self, commit: &CommitInfo, dir: &Path) -> Result<(), HarnessError> {
        let git_err = |e: git2::Error| {
            HarnessError::Git(format!("checking out {}: {}", commit.short(), e.message()))
        };
        let tree = self.tree(commit).map_err(git_err)?;
        let mut wanted = std::collections::HashSet::new();
        let mut failed: Option<HarnessError> = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
            if entry.kind() != Some(git2::ObjectType::Blob) {
                return git2::TreeWalkResult::Ok;
            }
            let rel = Path::new(root).join(String::from_utf8_lossy(entry.name_bytes()).as_ref());
            let written = entry
                .to_object(&self.repo)
                .and_then(|o| o.peel_to_blob())
                .map_err(git_err)
                .and_then(|blob| {
                    write_if_changed(&dir.join(&rel), blob.content(), entry.filemode())
                });
            match written {
                Ok(()) => {
                    wanted.insert(dir.join(rel));
                    git2::TreeWalkResult::Ok
                }
                Err(e) => {
                    failed = Some(e);
                    git2::TreeWalkResult::Abort
                }
            }
        })
        .map_err(git_err)?;
        if let Some(e) = failed {
            return Err(e);
        }
        remove_others(dir, &wanted)
    }

    fn tree(&self, commit: &CommitInfo) -> Result<git2::Tree<'_>, git2::Error> {
        self.repo.find_commit(Oid::from_str(&commit.sha)?)?.tree()
    }

    /// A name for what a build of `commit` depends on: the commit itself when `inputs` is
    /// empty, else a digest of the git object ids of those paths (absent paths count too), so
    /// commits that agree on every input share one build.
    pub fn build_key(
        &self,
        commit: &CommitInfo,
        inputs: &[String],
    ) -> Result<String, HarnessError> {
        if inputs.is_empty() {
            return Ok(commit.sha.clone());
        }
        let git_err = |e: git2::Error| {
            HarnessError::Git(format!(
                "reading the tree of {}: {}",
                commit.short(),
                e.message()
            ))
        };
        let tree = self.tree(commit).map_err(git_err)?;
        let mut digest = Sha256::new();
        for input in inputs {
            let id = tree
                .get_path(Path::new(input))
                .map_or_else(|_| "absent".to_owned(), |entry| entry.id().to_string());
            digest.update(format!("{input}\0{id}\n"));
        }
        let hex: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(format!("inputs-{}", &hex[..40]))
    }

    /// Every commit reachable from HEAD with its position, oldest first (topological).
    pub fn history_positions(
        &self,
    ) -> Result<std::collections::HashMap<String, usize>, HarnessError> {
        let git_err = |e: git2::Error| HarnessError::Git(e.message().to_owned());
        let mut walk = self.repo.revwalk().map_err(git_err)?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
            .map_err(git_err)?;
        walk.push_head().map_err(git_err)?;
        walk.enumerate()
            .map(|(i, oid)| Ok((oid.map_err(git_err)?.to_string(), i)))
            .collect()
    }

    /// Whether `ancestor` is an ancestor of (or equal to) `descendant`.
    pub fn is_ancestor(
        &self,
        ancestor: &CommitInfo,
        descendant: &CommitInfo,
    ) -> Result<bool, HarnessError> {
        let a =
            Oid::from_str(&ancestor.sha).map_err(|e| HarnessError::Git(e.message().to_owned()))?;
        let d = Oid::from_str(&descendant.sha)
            .map_err(|e| HarnessError::Git(e.message().to_owned()))?;
        Ok(a == d
            || self
                .repo
                .graph_descendant_of(d, a)
                .map_err(|e| HarnessError::Git(e.message().to_owned()))?)
    }

    /// First-parent commits after `good` up to and including `bad`, oldest first.
    pub fn first_parent_range(
        &self,
        good: &CommitInfo,
        bad: &CommitInfo,
    ) -> Result<Vec<CommitInfo>, HarnessError> {
        let git_err = |e: git2::Error| HarnessError::Git(e.message().to_owned());
        let mut walk = self.repo.revwalk().map_err(git_err)?;
        walk.simplify_first_parent().map_err(git_err)?;
        walk.push(Oid::from_str(&bad.sha).map_err(git_err)?)
            .map_err(git_err)?;
        let good_oid = Oid::from_str(&good.sha).map_err(git_err)?;
        let mut out = Vec::new();
        for oid in walk {
            let oid = oid.map_err(git_err)?;
            if oid == good_oid {
                out.reverse();
                return Ok(out);
            }
            let commit = self.repo.find_commit(oid).map_err(git_err)?;
            out.push(CommitInfo {
                sha: oid.to_string(),
                summary: commit.summary().unwrap_or("").to_owned(),
            });
        }
        Err(HarnessError::Usage(format!(
            "{} is not on the first-parent history of {}",
            good.short(),
            bad.short()
        )))
    }
}

/// git's mode of an executable file and of a symbolic link.
const FILEMODE_EXECUTABLE: i32 = 0o100755;
const FILEMODE_LINK: i32 = 0o120000;

fn write_if_changed(path: &Path, content: &[u8], filemode: i32) -> Result<(), HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e| HarnessError::io(path, e);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    if filemode == FILEMODE_LINK {
        let target = Path::new(std::str::from_utf8(content).unwrap_or_default());
        if std::fs::read_link(path).ok().as_deref() != Some(target) {
            let _ = std::fs::remove_file(path);
            std::os::unix::fs::symlink(target, path).map_err(io)?;
        }
        return Ok(());
    }
    let same = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
        && std::fs::read(path).is_ok_and(|old| old == content);
    if !same {
        let _ = std::fs::remove_file(path);
        std::fs::write(path, content).map_err(io)?;
    }
    let mode = if filemode == FILEMODE_EXECUTABLE {
        0o755
    } else {
        0o644
    };
    if std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// Removes every file under `dir` that is not in `wanted` (and the folders left empty).
fn remove_others(
    dir: &Path,
    wanted: &std::collections::HashSet<PathBuf>,
) -> Result<(), HarnessError> {
    let io = |e| HarnessError::io(dir, e);
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let kind = std::fs::symlink_metadata(&path).map_err(io)?.file_type();
        if kind.is_dir() {
            remove_others(&path, wanted)?;
            if std::fs::read_dir(&path).map_err(io)?.next().is_none() {
                std::fs::remove_dir(&path).map_err(io)?;
            }
        } else if !wanted.contains(&path) {
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_file(repo: &Repository, root: &Path, file: &str, text: &str) -> CommitInfo {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new(file)).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = repo
            .commit(Some("HEAD"), &sig, &sig, file, &tree, &parents)
            .unwrap();
        CommitInfo {
            sha: oid.to_string(),
            summary: file.into(),
        }
    }

    #[test]
    fn commits_that_leave_the_build_inputs_alone_share_a_build_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw = Repository::init(dir.path()).unwrap();
        let first = commit_file(&raw, dir.path(), "broker/src/lib.rs", "fn a() {}");
        let docs = commit_file(&raw, dir.path(), "NOTES.md", "notes");
        let code = commit_file(&raw, dir.path(), "broker/src/lib.rs", "fn b() {}");
        let repo = TargetRepo::open(dir.path()).unwrap();
        let inputs = ["broker".to_owned(), "Cargo.lock".to_owned()];
        let key = |c: &CommitInfo| repo.build_key(c, &inputs).unwrap();
        assert_eq!(key(&first), key(&docs));
        assert_ne!(key(&docs), key(&code));
        assert_eq!(
            repo.build_key(&docs, &[]).unwrap(),
            docs.sha,
            "no inputs: per commit"
        );
    }

    #[test]
    fn syncing_a_checkout_rewrites_only_what_the_commit_changed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = Repository::init(dir.path()).unwrap();
        let first = commit_file(&raw, dir.path(), "vendor/big.rs", "fn kept() {}");
        let second = commit_file(&raw, dir.path(), "src/main.rs", "fn main() {}");
        let repo = TargetRepo::open(dir.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        repo.sync_tree(&second, out.path()).unwrap();
        let kept = out.path().join("vendor/big.rs");
        let mtime = || std::fs::metadata(&kept).unwrap().modified().unwrap();
        let before = mtime();
        std::fs::write(out.path().join("stray.txt"), "left by a build").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        repo.sync_tree(&first, out.path()).unwrap();
        assert_eq!(mtime(), before, "an unchanged file keeps its mtime");
        assert!(
            !out.path().join("src/main.rs").exists(),
            "a file the commit lacks is removed"
        );
        assert!(!out.path().join("src").exists(), "and its empty folder");
        assert!(!out.path().join("stray.txt").exists());
        repo.sync_tree(&second, out.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("src/main.rs")).unwrap(),
            "fn main() {}"
        );
    }
}
