//! Exit codes of `chronik-bench` and `chronik-replay`, read by the harness to classify a trial.

/// A valid run (`chronik-replay`: every response without an error).
pub const EXIT_OK: u8 = 0;
/// The run could not be set up, or its output not written.
pub const EXIT_FAILURE: u8 = 1;
/// Bad arguments (clap's own code for usage errors).
pub const EXIT_USAGE: u8 = 2;
/// The broker could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// The run finished but is not a measurement (`invalid_reasons` says why; `chronik-replay`: an
/// error response or one that does not decode).
pub const EXIT_INVALID_RUN: u8 = 4;
/// `--verify-acked`: an acknowledged message was not at its offset when the topic was read
/// back (the broker lost or overwrote an acked write).
pub const EXIT_ACKED_LOST: u8 = 5;
