//! The target repository through git2: resolve revisions, export a commit's tree into its own
//! directory (the user's working tree and index are never touched), walk first-parent history.

use std::path::{Path, PathBuf};

use git2::{build::CheckoutBuilder, Oid, Repository};

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

    /// Writes the commit's tree into `dir` (created fresh).
    pub fn export(&self, commit: &CommitInfo, dir: &Path) -> Result<(), HarnessError> {
        let git_err = |e: git2::Error| {
            HarnessError::Git(format!("exporting {}: {}", commit.short(), e.message()))
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
        let oid = Oid::from_str(&commit.sha).map_err(git_err)?;
        let tree = self
            .repo
            .find_commit(oid)
            .map_err(git_err)?
            .tree()
            .map_err(git_err)?;
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
