//! Commits into binaries: revisions and trees (`git`), how the target builds and starts
//! (`target`), process groups with timeouts (`process`, which the trial layer uses too), one
//! build per distinct set of build inputs (`builder`), and the scripted history of
//! regression fixtures (`fixtures`).

pub mod builder;
pub mod fixtures;
pub mod git;
pub mod process;
pub mod target;
