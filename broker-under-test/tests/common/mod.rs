//! Test support: the real `chronik-broker` binary on 127.0.0.1 with a free port, in its own
//! process group, always stopped (by pid) when the handle drops.
#![allow(dead_code)] // each test binary uses a different subset

pub mod power_cut;
pub mod proxy;
pub mod quorum;
pub mod strace;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long the broker may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for any single client operation in tests.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
    /// The child is strace, the broker its child.
    traced: bool,
}

/// Runs the broker under `prlimit` (util-linux) with `limits` (e.g. `--nofile=64`), through a
/// shell that ignores SIGXFSZ first, so a write past `--fsize` fails with EFBIG, the way a full
/// disk fails a write, instead of killing the process. Both `exec`, so the pid is the broker's.
fn command(limits: &[&str]) -> Command {
    let broker = broker_binary();
    if limits.is_empty() {
        return Command::new(broker);
    }
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"trap '' XFSZ; exec prlimit "$@""#, "sh"])
        .args(limits)
        .arg("--")
        .arg(broker);
    command
}

/// The broker binary the tests start: this build's, or the one `CHRONIK_TEST_BROKER_BIN`
/// names (to show that a test finds a hole in a build from before its fix).
pub fn broker_binary() -> PathBuf {
    std::env::var_os("CHRONIK_TEST_BROKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chronik-broker")))
}

fn spawn(
    data_dir: &Path,
    args: &[String],
    limits: &[&str],
    stderr: Stdio,
) -> std::io::Result<Child> {
    spawn_as(command(limits), data_dir, args, stderr)
}

/// Starts `command` (the broker, or a tracer that runs it) with the broker's arguments.
fn spawn_as(
    mut command: Command,
    data_dir: &Path,
    args: &[String],
    stderr: Stdio,
) -> std::io::Result<Child> {
    // A cluster member listens on its address in the cluster file.
    if !args.iter().any(|a| a.starts_with("--cluster")) {
        command.arg("--listen=127.0.0.1:0");
    }
    command
        .arg(format!("--data-dir={}", data_dir.display()))
        .args(args)
        .env(
            "CHRONIK_LOG",
            std::env::var("CHRONIK_TEST_BROKER_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
}

/// Reads the "listening on ADDR" line, with a timeout.
fn wait_listening(child: &mut Child) -> Result<SocketAddr, String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the broker never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| "broker did not report its address in time".to_owned())?;
    line.trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected first line from broker: {line:?}"))
}

impl Broker {
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_limited(data_dir, args, &[])
    }

    /// Starts the broker with resource limits (`prlimit` options); a restart drops them.
    pub fn start_limited(data_dir: &Path, args: &[&str], limits: &[&str]) -> Self {
        Self::start_with(data_dir, args, limits, Stdio::inherit())
    }

    /// Starts the broker with its log (stderr) written to `log`; a restart logs to the test's
    /// stderr again.
    pub fn start_logging_to(data_dir: &Path, args: &[&str], log: std::fs::File) -> Self {
        Self::start_with(data_dir, args, &[], Stdio::from(log))
    }

    /// Starts the broker with its log written to `log`; the reason when it does not come up
    /// (its exit status, or the wait timing out), instead of a panic.
    pub fn try_start_logging_to(
        data_dir: &Path,
        args: &[&str],
        log: std::fs::File,
    ) -> Result<Self, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = spawn(data_dir, &args, &[], Stdio::from(log)).map_err(|e| e.to_string())?;
        Self::come_up(child, data_dir, args, false)
    }

    /// Starts the broker under strace (`strace_args`, which name the trace file); stopping it
    /// kills the broker alone and waits for strace to finish writing the trace.
    pub fn start_traced(data_dir: &Path, args: &[&str], strace_args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut strace = Command::new("strace");
        strace.args(strace_args).arg("--").arg(broker_binary());
        let child = spawn_as(strace, data_dir, &args, Stdio::inherit()).expect("spawn strace");
        Self::come_up(child, data_dir, args, true).unwrap_or_else(|err| panic!("{err}"))
    }

    fn come_up(
        mut child: Child,
        data_dir: &Path,
        args: Vec<String>,
        traced: bool,
    ) -> Result<Self, String> {
        match wait_listening(&mut child) {
            Ok(addr) => Ok(Self {
                child: Some(child),
                addr,
                data_dir: data_dir.to_path_buf(),
                args,
                traced,
            }),
            Err(err) => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let status = child.wait();
                Err(format!("{err} (exit: {status:?})"))
            }
        }
    }

    /// Starts the broker with resource limits (`prlimit` options) and its log (stderr) to
    /// `stderr`.
    pub fn start_with(data_dir: &Path, args: &[&str], limits: &[&str], stderr: Stdio) -> Self {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = spawn(data_dir, &args, limits, stderr).expect("spawn chronik-broker");
        Self::come_up(child, data_dir, args, false).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Starts the broker expecting it to refuse; returns its exit status.
    pub fn start_expecting_failure(data_dir: &Path) -> ExitStatus {
        let mut child = spawn(data_dir, &[], &[], Stdio::inherit()).expect("spawn chronik-broker");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("broker did not exit on bad data");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Whether the process was started and not yet stopped by the test.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits up to `timeout` for the broker to exit on its own; its status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The exit status if the broker has died (it is reaped, so a crash is never missed).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait"))
    }

    /// SIGKILL, like a crash: nothing is flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.traced {
                // Killing strace too could lose the end of its trace: kill the broker, and
                // strace writes the rest and exits; the group goes if it does not.
                let id = child.id();
                let tracee = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                    .unwrap_or_default();
                for pid in tracee.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
                let deadline = Instant::now() + START_TIMEOUT;
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{id}")])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("broker did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same data dir (new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self = Broker::start(&self.data_dir.clone(), &args);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where each broker of a test cluster listens: its port, and a controller port for voters.
struct Layout {
    ports: Vec<u16>,
    controller_ports: Vec<Option<u16>>,
    /// Where clients reach each broker when that is not its own port (a proxy).
    client_addresses: Option<Vec<SocketAddr>>,
}

impl Layout {
    fn new(n: usize, voters: usize) -> Self {
        Self {
            ports: (0..n).map(|_| restartable_port()).collect(),
            controller_ports: (0..n)
                .map(|i| (i < voters).then(restartable_port))
                .collect(),
            client_addresses: None,
        }
    }

    /// The cluster file; with `(from, links)`, broker `from`'s own, in which every other
    /// broker is reached through a new proxy of `links`.
    fn file_text(&self, mut proxied: Option<(i32, &mut Links)>) -> String {
        let mut text = String::new();
        for (i, port) in self.ports.iter().enumerate() {
            let to = i as i32 + 1;
            let real: SocketAddr = ([127, 0, 0, 1], *port).into();
            let controller =
                self.controller_ports[i].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
            let mut route = |target: SocketAddr| match proxied.as_mut() {
                Some((from, links)) if *from != to => links.add(*from, to, target),
                _ => target,
            };
            let address = route(real);
            text += &format!("[[broker]]\nid = {to}\naddress = \"{address}\"\n");
            let client = self.client_addresses.as_ref().map_or(real, |c| c[i]);
            if address != client {
                text += &format!("client_address = \"{client}\"\n");
            }
            if let Some(controller) = controller {
                let controller = route(controller);
                text += &format!("controller_address = \"{controller}\"\n");
            }
        }
        text
    }
}

/// The proxies of a linked test cluster: for each ordered pair of brokers, those through which
/// the first reaches the second (its replication and its controller traffic); and for each
/// broker the one through which every client reaches it.
#[derive(Default)]
pub struct Links {
    proxies: std::collections::BTreeMap<(i32, i32), Vec<proxy::Proxy>>,
    clients: std::collections::BTreeMap<i32, proxy::Proxy>,
}

impl Links {
    fn add(&mut self, from: i32, to: i32, target: SocketAddr) -> SocketAddr {
        let proxy = proxy::Proxy::start(target);
        let addr = proxy.addr;
        self.proxies.entry((from, to)).or_default().push(proxy);
        addr
    }

    /// The links from `from` to `to` (connections `from` opens; `to`'s answers on them too).
    pub fn between(&self, from: i32, to: i32) -> &[proxy::Proxy] {
        self.proxies.get(&(from, to)).map_or(&[], Vec::as_slice)
    }

    /// Every link from or to `broker`.
    pub fn around(&self, broker: i32) -> impl Iterator<Item = &proxy::Proxy> {
        self.proxies
            .iter()
            .filter(move |((from, to), _)| *from == broker || *to == broker)
            .flat_map(|(_, p)| p)
    }

    /// The link every client takes to `broker`.
    pub fn client(&self, broker: i32) -> &proxy::Proxy {
        &self.clients[&broker]
    }

    /// Every broker through its client proxy: what clients bootstrap from.
    pub fn client_bootstrap(&self) -> String {
        self.clients
            .values()
            .map(|p| p.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn resume_all(&self) {
        self.proxies
            .values()
            .flatten()
            .chain(self.clients.values())
            .for_each(proxy::Proxy::resume);
    }
}

/// Brokers on loopback from one cluster file, each with its own data directory under `root`.
pub struct TestCluster {
    /// In id order: broker `i + 1` is `brokers[i]`.
    pub brokers: Vec<Broker>,
    /// The cluster file every broker was started with.
    pub file: PathBuf,
}

impl TestCluster {
    /// Starts brokers 1..=n with `args` each. Ports are picked free and released before the
    /// brokers bind them (another process could take one in between: the start then fails and
    /// says so).
    pub fn start(root: &Path, n: usize, args: &[&str]) -> Self {
        Self::start_with_voters(root, n, 0, args)
    }

    /// Like `start`, with every broker a voter of the controller quorum.
    pub fn start_with_controllers(root: &Path, n: usize, args: &[&str]) -> Self {
        Self::start_with_voters(root, n, n, args)
    }

    /// Like `start`, with brokers 1..=voters the voters of the controller quorum.
    pub fn start_with_voters(root: &Path, n: usize, voters: usize, args: &[&str]) -> Self {
        let layout = Layout::new(n, voters);
        let file = root.join("cluster.toml");
        std::fs::write(&file, layout.file_text(None)).expect("write cluster file");
        let cluster_files = vec![file.clone(); n];
        Self::start_brokers(root, file, &cluster_files, args)
    }

    /// Like `start_with_voters`, with every link from one broker to another through a proxy of
    /// its own (`Links`): replication and the controller quorum's traffic, each direction
    /// apart. Clients reach each broker through a proxy too (the address brokers advertise;
    /// bootstrap from `Links::client_bootstrap`); `file` is the cluster file without the
    /// proxies between brokers.
    pub fn start_linked(root: &Path, n: usize, voters: usize, args: &[&str]) -> (Self, Links) {
        let mut layout = Layout::new(n, voters);
        let mut links = Links::default();
        for (i, port) in layout.ports.iter().enumerate() {
            let proxy = proxy::Proxy::start(([127, 0, 0, 1], *port).into());
            links.clients.insert(i as i32 + 1, proxy);
        }
        layout.client_addresses = Some(links.clients.values().map(|p| p.addr).collect());
        let file = root.join("cluster.toml");
        std::fs::write(&file, layout.file_text(None)).expect("write cluster file");
        let cluster_files: Vec<PathBuf> = (1..=n as i32)
            .map(|from| {
                let own = root.join(format!("cluster-{from}.toml"));
                let text = layout.file_text(Some((from, &mut links)));
                std::fs::write(&own, text).expect("write cluster file");
                own
            })
            .collect();
        (Self::start_brokers(root, file, &cluster_files, args), links)
    }

    fn start_brokers(root: &Path, file: PathBuf, cluster_files: &[PathBuf], args: &[&str]) -> Self {
        let brokers = cluster_files
            .iter()
            .enumerate()
            .map(|(i, own)| {
                let id = i + 1;
                let mut all = vec![
                    format!("--broker-id={id}"),
                    format!("--cluster={}", own.display()),
                ];
                all.extend(args.iter().map(|a| a.to_string()));
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                Broker::start(&root.join(format!("broker-{id}")), &all)
            })
            .collect();
        Self { brokers, file }
    }

    /// Runs `chronik-broker promote` for `topic`.
    pub fn promote(&self, topic: &str) -> (bool, String) {
        promote(&self.file, topic)
    }

    pub fn broker(&mut self, id: i32) -> &mut Broker {
        &mut self.brokers[usize::try_from(id - 1).expect("ids start at 1")]
    }

    /// Every broker's address: clients find the leaders from any of them.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs `chronik-broker promote --cluster FILE --topic T`: whether it succeeded, and what it
/// printed.
pub fn promote(cluster_file: &Path, topic: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chronik-broker"))
        .args(["promote", "--cluster"])
        .arg(cluster_file)
        .args(["--topic", topic])
        .output()
        .expect("run chronik-broker promote");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The partition's leader and replicas as the brokers report them (Metadata through rdkafka).
pub fn placement(bootstrap: &str, topic: &str, partition: i32) -> (i32, Vec<i32>, Vec<i32>) {
    let client = producer(bootstrap, &[]);
    let metadata = client
        .client()
        .fetch_metadata(Some(topic), CLIENT_TIMEOUT)
        .expect("metadata");
    let p = metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .expect("partition in metadata");
    (p.leader(), p.replicas().to_vec(), p.isr().to_vec())
}

pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("create producer")
}

/// Queues `record`, polling while the client's queue is full; panics on any other error.
fn send_when_room<C: ProducerContext>(
    producer: &BaseProducer<C>,
    record: BaseRecord<'_, str, str, C::DeliveryOpaque>,
) {
    let mut record = Some(record);
    while let Some(r) = record.take() {
        if let Err((err, back)) = producer.send(r) {
            assert!(
                matches!(
                    err,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull
                    )
                ),
                "send failed: {err}"
            );
            producer.poll(Duration::from_millis(10));
            record = Some(back);
        }
    }
}

/// Produces `values` one by one and waits for every delivery; panics on any failure.
pub fn produce_all(
    producer: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    values: &[String],
) {
    for value in values {
        let mut record = BaseRecord::to(topic)
            .payload(value.as_str())
            .key(value.as_str());
        if let Some(p) = partition {
            record = record.partition(p);
        }
        send_when_room(producer, record);
    }
    producer
        .flush(CLIENT_TIMEOUT)
        .expect("all messages delivered");
}

/// Keeps the outcome of every delivery: the offset, or `None` when it failed.
#[derive(Default)]
struct DeliveryLog(std::sync::Mutex<Vec<Option<i64>>>);

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let offset = result.as_ref().ok().map(|m| m.offset());
        self.0.lock().unwrap().push(offset);
    }
}

/// Keeps the outcome of each message by its index: the offset, or `None` when it failed.
#[derive(Default)]
struct IndexedDeliveries(std::sync::Mutex<Vec<(usize, Option<i64>)>>);

impl ClientContext for IndexedDeliveries {}

impl ProducerContext for IndexedDeliveries {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        let offset = result.as_ref().ok().map(|m| m.offset());
        self.0.lock().unwrap().push((*index, offset));
    }
}

/// Produces each (key, value) to `topic` with the client settings `extra` (retries as the
/// client defaults them; one request in flight per connection, so retries keep the order) and
/// waits for every report; the acked offset of each, or `None` where its report was an error.
pub fn deliver(
    bootstrap: &str,
    topic: &str,
    keyed: &[(String, String)],
    extra: &[(&str, &str)],
) -> Vec<Option<i64>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let producer: BaseProducer<IndexedDeliveries> = config
        .create_with_context(IndexedDeliveries::default())
        .expect("create producer");
    for (index, (key, value)) in keyed.iter().enumerate() {
        send_when_room(
            &producer,
            BaseRecord::with_opaque_to(topic, Box::new(index))
                .key(key.as_str())
                .payload(value.as_str()),
        );
    }
    let _ = producer.flush(CLIENT_TIMEOUT);
    let mut log = producer.context().0.lock().unwrap().clone();
    assert_eq!(log.len(), keyed.len(), "one delivery report per message");
    log.sort_by_key(|(index, _)| *index);
    log.into_iter().map(|(_, offset)| offset).collect()
}

/// Produces `values` to partition 0 one request at a time (acks=1, no retries, each waited
/// for); the acked offset of each, or `None` where the broker did not ack it.
pub fn produce_acked(bootstrap: &str, topic: &str, values: &[String]) -> Vec<Option<i64>> {
    let producer: BaseProducer<DeliveryLog> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("retries", "0")
        .set("message.timeout.ms", "5000")
        .create_with_context(DeliveryLog::default())
        .expect("create producer");
    for value in values {
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(0)
                    .payload(value),
            )
            .map_err(|(err, _)| err)
            .expect("queued");
        // A failed delivery is an outcome here, not an error.
        let _ = producer.flush(CLIENT_TIMEOUT);
    }
    let log = producer.context().0.lock().unwrap().clone();
    assert_eq!(log.len(), values.len(), "one delivery report per message");
    log
}

/// Reads partition `partition` from offset 0 until `count` messages arrived (or times out).
pub fn consume_partition(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    count: usize,
) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = match message {
                Ok(message) => message,
                // A broker of the bootstrap list that is down (a failover test killed it).
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)) => {
                    continue
                }
                Err(e) => panic!("consume: {e}"),
            };
            let value =
                String::from_utf8(message.payload().unwrap_or_default().to_vec()).expect("utf8");
            out.push((message.offset(), value));
        }
    }
    out
}

pub fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:06}")).collect()
}

/// A number from the environment (long runs of the seeded tests), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, seeded, and the same on every machine, so a failing case replays.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index into something of length `len`.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// `chronik-broker controller-status --cluster FILE`: the active controller and its image as
/// JSON, when a member answers.
pub fn controller_status(cluster_file: &Path) -> Option<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_chronik-broker"))
        .args(["controller-status", "--cluster"])
        .arg(cluster_file)
        .output()
        .expect("run controller-status");
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).expect("status is JSON"))
}

/// Ports below the kernel's ephemeral range (Linux: 32768 and up) are never handed to an
/// outgoing connection, so a broker restarted on its port finds it free: a port from the
/// ephemeral range may meanwhile be the local end of some client's connection.
const RESTARTABLE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port a restarted broker can bind again (`RESTARTABLE_PORTS`), picked at
/// random so parallel tests rarely try the same one, and never one this process handed out
/// before: a port is free until its broker binds it, so two picks for one cluster could
/// otherwise be the same port (about one cluster in 500 with seven ports).
pub fn restartable_port() -> u16 {
    use std::hash::BuildHasher;
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let span = u64::from(RESTARTABLE_PORTS.end - RESTARTABLE_PORTS.start);
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let mut rng = Rng(seed | 1);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let port = RESTARTABLE_PORTS.start + rng.below(span) as u16;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in {RESTARTABLE_PORTS:?}");
}
