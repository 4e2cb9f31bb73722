//! `chronik-harness`: the command layer is `chronik_harness::cmd`; exit codes are in
//! `chronik_harness::cmd::exit` and the README's table.

fn main() -> std::process::ExitCode {
    chronik_harness::cmd::main(std::env::args_os().collect())
}
