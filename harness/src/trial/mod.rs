//! One measurement: workload files (`workload`), a fresh broker and one chronik-bench run
//! (`runner`; in a failover workload, the partition's leader found (`leader`) and killed),
//! what a trial gives the statistics (`summary`), and the disk's own fdatasync floor with no
//! broker (`disk_probe`).

pub mod cores;
pub mod disk_probe;
pub mod leader;
pub mod runner;
pub mod summary;
pub mod workload;
