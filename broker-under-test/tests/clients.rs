//! Other real clients: kcat (librdkafka's CLI, from Debian) lists metadata, produces and
//! consumes; kafka-python produces and consumes with a group. `.ci/run`
//! installs both; a missing client fails its test (it is never skipped).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Broker;

fn kcat_available() -> bool {
    Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn kcat_lists_produces_and_consumes() {
    // A missing client is a failure, not a skip: a skipped compatibility test reports success
    // for a promise nobody checked.
    assert!(
        kcat_available(),
        "kcat is not installed (apt-get install kcat; .ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.bootstrap();
    let mut producer = Command::new("timeout")
        .args(["30", "kcat", "-b", &b, "-P", "-t", "kc", "-p", "0"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    producer
        .stdin
        .take()
        .unwrap()
        .write_all(b"alpha\nbeta\ngamma\n")
        .unwrap();
    assert!(producer.wait().unwrap().success());
    let consumed = Command::new("timeout")
        .args([
            "30",
            "kcat",
            "-b",
            &b,
            "-C",
            "-t",
            "kc",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o:%s\n",
        ])
        .output()
        .unwrap();
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&consumed.stdout),
        "0:alpha\n1:beta\n2:gamma\n"
    );
    let listed = Command::new("timeout")
        .args(["30", "kcat", "-b", &b, "-L"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing.contains("topic \"kc\" with 1 partitions"),
        "{listing}"
    );
    assert!(listing.contains("1 brokers"), "{listing}");
}

/// kafka-python (from PyPI; `.ci/run` installs it) produces with acks=all and consumes with a
/// consumer group.
#[test]
fn kafka_python_produces_and_consumes() {
    let available = Command::new("python3")
        .args(["-c", "import kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        available,
        "kafka-python is not installed (pip install kafka-python; .ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/kafka_python_roundtrip.py"
    );
    let out = Command::new("timeout")
        .args([
            "120",
            "python3",
            script,
            &broker.bootstrap(),
            "py-topic",
            "200",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
