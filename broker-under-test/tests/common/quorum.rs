//! The controller quorum as tests see it: the active controller's image (through
//! `chronik-broker controller-status`), a partition's placement in it, and waiting for a state.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Liveness bound for every wait on the quorum: elections and sessions take seconds; a slow
/// machine gets far more.
pub const STATE_WAIT: Duration = Duration::from_secs(60);

/// The active controller's image, when one answers.
pub fn image(cluster_file: &Path) -> Option<Value> {
    super::controller_status(cluster_file)
        .filter(|s| s["active"].is_i64())
        .map(|s| s["image"].clone())
}

/// Partition 0 of a topic in the image: leader, leader epoch, in-sync set, replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub leader: i64,
    pub epoch: i64,
    pub isr: Vec<i64>,
    pub replicas: Vec<i64>,
}

pub fn placement(image: &Value, topic: &str) -> Option<Placement> {
    let p = &image["topics"][topic]["partitions"][0];
    let ids = |v: &Value| -> Option<Vec<i64>> { v.as_array()?.iter().map(Value::as_i64).collect() };
    Some(Placement {
        leader: p["leader"].as_i64()?,
        epoch: p["leader_epoch"].as_i64()?,
        isr: ids(&p["isr"])?,
        replicas: ids(&p["replicas"])?,
    })
}

pub fn unfenced(image: &Value, broker: i64) -> bool {
    image["brokers"][broker.to_string()]["fenced"].as_bool() == Some(false)
}

/// Polls the image until `found` gives a value; panics with `what` after `STATE_WAIT`.
pub fn wait_for<T>(cluster_file: &Path, what: &str, found: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        if let Some(found) = image(cluster_file).and_then(|i| found(&i)) {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
