//! Brokers with a controller quorum: every broker registers and heartbeats; the active
//! controller fences a broker whose heartbeats stop, even when that broker ran the active
//! controller itself; a restarted broker registers in a new broker epoch and is unfenced.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::Value;

const SESSION_TIMEOUT_MS: u64 = 3_000;
/// Liveness bound for every wait: elections and sessions take seconds; a slow machine gets
/// far more.
const STATUS_WAIT: Duration = Duration::from_secs(60);

fn registration(status: &Value, broker: i64) -> Option<(u64, bool)> {
    let b = &status["image"]["brokers"][broker.to_string()];
    Some((b["broker_epoch"].as_u64()?, b["fenced"].as_bool()?))
}

fn wait_for(cluster_file: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STATUS_WAIT;
    loop {
        if let Some(s) = common::controller_status(cluster_file).filter(|s| done(s)) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_silent_broker_is_fenced_and_registers_again_when_it_restarts() {
    let root = tempfile::tempdir().unwrap();
    let session = format!("--broker-session-timeout-ms={SESSION_TIMEOUT_MS}");
    let mut cluster = TestCluster::start_with_controllers(
        root.path(),
        3,
        &[&session, "--broker-heartbeat-interval-ms=300"],
    );
    let all_alive = |s: &Value| {
        s["active"].is_i64() && (1..=3).all(|b| registration(s, b).is_some_and(|(_, f)| !f))
    };
    let up = wait_for(
        &cluster.file,
        "three registered, unfenced brokers",
        all_alive,
    );
    let active = up["active"].as_i64().expect("an active controller");
    let (epoch_before, _) = registration(&up, active).unwrap();

    // The broker that runs the active controller dies: the others elect a new active
    // controller, which fences the silent broker once its session has run out.
    let killed = Instant::now();
    cluster.broker(active as i32).kill9();
    wait_for(&cluster.file, "the silent broker fenced", |s| {
        s["active"].as_i64().is_some_and(|a| a != active)
            && registration(s, active).is_some_and(|(_, fenced)| fenced)
    });
    let fenced_after = killed.elapsed();
    eprintln!(
        "broker {active} (the active controller) fenced {:.1} s after kill -9 (session {} s)",
        fenced_after.as_secs_f64(),
        SESSION_TIMEOUT_MS / 1000
    );
    assert!(
        fenced_after >= Duration::from_millis(SESSION_TIMEOUT_MS),
        "fenced before its session ran out"
    );

    cluster.broker(active as i32).restart();
    wait_for(&cluster.file, "the restarted broker registered anew", |s| {
        registration(s, active).is_some_and(|(epoch, fenced)| epoch > epoch_before && !fenced)
            && all_alive(s)
    });
}

#[test]
fn a_controller_address_in_use_refuses_the_start_as_unavailable() {
    let root = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broker_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = root.path().join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "[[broker]]\nid = 1\naddress = \"127.0.0.1:{broker_port}\"\ncontroller_address = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_chronik-broker"))
        .args(["--broker-id=1", "--cluster"])
        .arg(&file)
        .arg(format!("--data-dir={}", root.path().join("data").display()))
        .output()
        .expect("run the broker");
    assert_eq!(status.status.code(), Some(69), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stderr).contains("controller cannot listen"));
}
