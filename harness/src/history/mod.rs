//! Results over commits: E-divisive change points (`changepoint`) and each metric's series per
//! host with its change points (`series`).

pub mod changepoint;
pub mod series;
