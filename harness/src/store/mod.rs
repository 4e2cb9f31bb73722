//! What was measured, kept: a trial as stored (`record`), every trial and gate verdict in
//! SQLite (`db`), and the result directory's files and baselines (`files`).

pub mod db;
pub mod files;
pub mod record;
