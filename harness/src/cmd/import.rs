//! `import`: load JSON trial files (exports, or results from before the database) into the
//! results database; trials already there are left as they are.

use std::path::PathBuf;

use clap::Args;

use crate::cmd::args::Common;
use crate::cmd::exit::EXIT_PASS;
use crate::error::HarnessError;
use crate::store::db::ResultsDb;

#[derive(Args)]
pub struct ImportArgs {
    /// Directory searched for trial JSON files, at any depth (default: --results-dir).
    from: Option<PathBuf>,
}

impl ImportArgs {
    pub fn run(&self, c: &Common) -> Result<u8, HarnessError> {
        let store = c.store();
        // Not `store.db()`, which imports the directory by itself when it creates the
        // database: the counts below would then say nothing was new.
        let mut db = ResultsDb::open(&store.db_path())?;
        let from = self.from.as_ref().unwrap_or(&c.results_dir);
        let (found, added) = store.import_json_into(&mut db, from)?;
        println!(
            "{found} trial(s) found under {}, {added} new, in {}",
            from.display(),
            store.db_path().display()
        );
        Ok(EXIT_PASS)
    }
}
