//! Helpers shared by the harness's integration tests.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use git2::{Repository, Signature};

/// `target/release`, where cargo put this workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Writes `files` into the work tree and commits everything on HEAD; returns the sha.
pub fn commit(repo: &Repository, files: &[(&str, &str)], message: &str) -> String {
    let root = repo.workdir().unwrap();
    for (name, content) in files {
        fs::write(root.join(name), content).unwrap();
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("e2e", "e2e@example.invalid").unwrap();
    let parents: Vec<git2::Commit> = repo
        .head()
        .ok()
        .map(|h| h.peel_to_commit().unwrap())
        .into_iter()
        .collect();
    let parent_refs: Vec<&git2::Commit> = parents.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parent_refs)
        .unwrap()
        .to_string()
}

/// Runs the harness command, echoing what it said (shown when a test fails).
pub fn run_logged(command: &mut Command, args: &[&str]) -> Output {
    let output = command.args(args).output().unwrap();
    eprintln!(
        "$ chronik-harness {}\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
