//! A small TCP proxy for link faults between brokers: it forwards, delays (every chunk waits),
//! stalls (stops moving bytes but keeps the connections, like a hung peer or a full network
//! queue: packets dropped), or cuts (closes every connection and refuses new ones), and
//! resumes. Threads only; every blocking call has a
//! timeout, and dropping the proxy stops all of them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const FORWARD: u8 = 0;
const STALL: u8 = 1;
const CUT: u8 = 2;
const DELAY: u8 = 3;
/// How often blocked threads look at the mode and the stop flag.
const POLL: Duration = Duration::from_millis(20);

struct Shared {
    mode: AtomicU8,
    /// In `DELAY`: how long each chunk waits before it is forwarded.
    delay_ms: AtomicU64,
    stop: AtomicBool,
    /// Every open connection (both sides), so a cut can close them.
    open: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(FORWARD),
            delay_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, target, shared))
        };
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Stops moving bytes; connections stay open.
    pub fn stall(&self) {
        self.shared.mode.store(STALL, Ordering::Release);
    }

    /// Closes every connection and refuses new ones until `resume`.
    pub fn cut(&self) {
        self.shared.mode.store(CUT, Ordering::Release);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Forwards every chunk of bytes `by` late (a slow or congested link).
    pub fn delay(&self, by: Duration) {
        self.shared
            .delay_ms
            .store(by.as_millis() as u64, Ordering::Release);
        self.shared.mode.store(DELAY, Ordering::Release);
    }

    pub fn resume(&self) {
        self.shared.mode.store(FORWARD, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.cut();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut pumps = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => break,
        };
        if shared.mode.load(Ordering::Acquire) == CUT {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        {
            let mut open = shared.open.lock().unwrap();
            for s in [&client, &server] {
                if let Ok(clone) = s.try_clone() {
                    open.push(clone);
                }
            }
        }
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let shared = shared.clone();
            pumps.push(std::thread::spawn(move || pump(from, to, shared)));
        }
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Copies bytes from `from` to `to` while forwarding; holds still while stalled; ends on a
/// cut, on either side closing, or when the proxy stops.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        match shared.mode.load(Ordering::Acquire) {
            CUT => break,
            STALL => {
                std::thread::sleep(POLL);
                continue;
            }
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if shared.mode.load(Ordering::Acquire) == DELAY {
                    let ms = shared.delay_ms.load(Ordering::Acquire);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
