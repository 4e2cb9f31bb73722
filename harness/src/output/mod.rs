//! What a person reads: console tables and summary lines (`render`), markdown reports
//! (`report`), SVG figures (`plots`) and the static dashboard (`dashboard`).

pub mod dashboard;
pub mod plots;
pub mod render;
pub mod report;
