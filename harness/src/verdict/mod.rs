//! Measurements into verdicts: the three states (`state`), paired statistics (`stats`),
//! interleaved A/B scheduling over a trial source (`compare`), the deterministic tier
//! (`instructions`), limits and gate verdicts (`decision`), and margins calibrated on the
//! noise bank (`noise_bank`, `calibration`), the false-regression rate bounded from real A/A
//! comparisons (`aa_ledger`), and regressions accepted on purpose (`acceptance`).

pub mod aa_ledger;
pub mod acceptance;
pub mod calibration;
pub mod compare;
pub mod decision;
pub mod instructions;
pub mod noise_bank;
pub mod state;
pub mod stats;
