//! Listener and connection tasks. A connection reads length-prefixed frames and starts each
//! request in arrival order (a produce request gets its offsets before the next frame is
//! read), then finishes each in its own task (so pipelined requests share group commits) and
//! writes responses back in request order. Anything wrong with a frame costs that connection
//! only.
//!
//! Memory a client can make the broker hold is bounded by what it really sends, not by what it
//! declares: a frame's body is read in chunks, each taken from the broker-wide request budget
//! before it is read, and the budget returns when the request has finished, or when a group
//! request parks to wait for other members (it copied what it keeps out of the frame first).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::api::{ApiContext, Listener, RequestError};
use crate::request_times::{ConnectionTimes, Marks, RequestTimes};

/// A client that started a frame must finish it within this time.
const FRAME_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Body bytes granted (and reserved) at a time: a client that declares a large frame and then
/// sends a few bytes holds at most this much of the budget and of memory.
const BODY_READ_CHUNK_BYTES: usize = 16 << 10;
/// A response that cannot be written within this time closes the connection.
const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request's response and, when the request is timed, when it passed each point before the
/// connection's writer took it.
type Pending = JoinHandle<(Result<Option<Bytes>, RequestError>, Option<Marks>)>;

/// Request bytes held in memory across every connection (Kafka's `queued.max.request.bytes`).
#[derive(Clone)]
pub struct RequestBudget(Arc<Semaphore>);

impl RequestBudget {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes)))
    }

    async fn take(&self, bytes: usize) -> OwnedSemaphorePermit {
        let bytes = u32::try_from(bytes).expect("a chunk fits in u32");
        self.0
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("the budget is never closed")
    }
}

/// Reads a frame body of `len` bytes, taking budget for each chunk before reading it. The
/// permit covers the whole body and is released when dropped.
async fn read_body(
    reader: &mut OwnedReadHalf,
    len: usize,
    budget: &RequestBudget,
) -> std::io::Result<(Bytes, OwnedSemaphorePermit)> {
    let mut body = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut granted = 0;
    while body.len() < len {
        if body.len() == granted {
            let chunk = (len - granted).min(BODY_READ_CHUNK_BYTES);
            let permit = budget.take(chunk).await;
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            granted += chunk;
            body.reserve(chunk);
        }
        let room = (granted - body.len()) as u64;
        if (&mut *reader).take(room).read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok((body.freeze(), held.expect("a frame has at least one byte")))
}

/// How long the listener rests after a failed accept (EMFILE) before it tries again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Connections may hold at most this fraction (1/N) of the process's open files limit; the
/// rest stays for segment and WAL files, so a flood of connections cannot starve storage.
const OPEN_FILES_PER_CONNECTION_SLOT: usize = 2;

/// `--max-connections`, lowered to a share of the open files limit when that is smaller.
fn connections_max(configured: usize) -> usize {
    let Some(open_files) = open_files_soft_limit() else {
        return configured;
    };
    let share = usize::try_from(open_files / OPEN_FILES_PER_CONNECTION_SLOT as u64)
        .unwrap_or(usize::MAX)
        .max(1);
    if share < configured {
        tracing::warn!(
            "at most {share} connections (half the open files limit of {open_files}; \
             --max-connections is {configured}): raise the limit (ulimit -n) for more"
        );
    }
    configured.min(share)
}

/// The soft limit on open files (RLIMIT_NOFILE) from /proc/self/limits, if it is finite.
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The listener's side of the broker: accepts connections up to a limit and serves each in a
/// task of its own, which ends with its connection.
pub struct Connections {
    listener: TcpListener,
    /// With `--client-listen`: the listener for clients only (`listener` is then the
    /// brokers').
    client_listener: Option<TcpListener>,
    open: JoinSet<()>,
    max: usize,
    /// Accepting fails (out of file descriptors, typically): warned once per episode.
    accept_failing: bool,
    ctx: Arc<ApiContext>,
    budget: RequestBudget,
    times: Option<Arc<RequestTimes>>,
}

impl Connections {
    /// At most `configured` connections, or fewer when the open files limit needs it.
    pub fn new(
        (listener, client_listener): (TcpListener, Option<TcpListener>),
        configured: usize,
        ctx: Arc<ApiContext>,
        budget: RequestBudget,
        times: Option<Arc<RequestTimes>>,
    ) -> Self {
        Self {
            listener,
            client_listener,
            open: JoinSet::new(),
            max: connections_max(configured),
            accept_failing: false,
            ctx,
            budget,
            times,
        }
    }

    /// Accepts the next connection (refused at the limit), or reaps one that ended. Both waits
    /// are cancel-safe: the broker's loop selects this against its other timers.
    pub async fn next(&mut self) {
        let client_accept = async {
            match &self.client_listener {
                Some(listener) => listener.accept().await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            accepted = self.listener.accept() => (accepted, Listener::InterBroker),
            accepted = client_accept => (accepted, Listener::Client),
            Some(_) = self.open.join_next(), if !self.open.is_empty() => return,
        };
        self.accepted(accepted.0, accepted.1).await;
    }

    async fn accepted(
        &mut self,
        accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
        listener: Listener,
    ) {
        match accepted {
            Ok((stream, peer)) if self.open.len() >= self.max => {
                tracing::debug!("refusing {peer}: {} connections open", self.open.len());
                drop(stream);
            }
            Ok((stream, _)) => {
                if self.accept_failing {
                    self.accept_failing = false;
                    tracing::info!("accepting connections again");
                }
                self.open.spawn(serve_connection(
                    stream,
                    (self.ctx.clone(), listener),
                    self.budget.clone(),
                    self.times.clone(),
                ));
            }
            Err(err) => {
                // Accepting again at once would spin. Warned once per episode, not ten times
                // a second.
                if self.accept_failing {
                    tracing::debug!("accept failed: {err}");
                } else {
                    self.accept_failing = true;
                    tracing::warn!("accept failed: {err}; retrying every {ACCEPT_ERROR_PAUSE:?}");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }

    /// Stops accepting and ends every connection task.
    pub async fn shutdown(mut self) {
        self.open.shutdown().await;
    }
}

/// The connection's writer: sends each request's response in request order, until a request
/// fails, the client goes away or a write times out.
async fn write_responses(
    mut rx: mpsc::Receiver<Pending>,
    mut writer: OwnedWriteHalf,
    times: Option<Arc<RequestTimes>>,
    peer: Option<SocketAddr>,
) {
    let mut times = times.map(ConnectionTimes::new);
    while let Some(pending) = rx.recv().await {
        let (outcome, marks) = match pending.await {
            Ok(outcome) => outcome,
            Err(join_err) if join_err.is_cancelled() => return, // the client went away
            Err(join_err) => {
                tracing::error!("request handler panicked: {join_err}");
                return;
            }
        };
        let dequeued = marks.map(|_| Instant::now());
        match outcome {
            Ok(Some(frame)) => {
                let write =
                    tokio::time::timeout(RESPONSE_WRITE_TIMEOUT, writer.write_all(&frame)).await;
                if !matches!(write, Ok(Ok(()))) {
                    return;
                }
                if let (Some(times), Some(marks), Some(dequeued)) =
                    (times.as_mut(), marks, dequeued)
                {
                    times.record(marks, dequeued, Instant::now());
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::debug!("closing connection from {peer:?}: {err}");
                return;
            }
        }
    }
}

/// Why a connection reads no further frame.
enum FrameEnd {
    /// Closed, failed, or idle for longer than the limit: nobody reads the answers.
    ClientGone,
    /// A length outside 1..=the frame limit: the earlier answers are still sent.
    BadLength,
}

/// Reads one size-prefixed frame within the connection's idle limit and the frame-body
/// timeout, holding its bytes against the broker's request budget.
async fn read_frame(
    reader: &mut OwnedReadHalf,
    budget: &RequestBudget,
    ctx: &ApiContext,
    peer: Option<SocketAddr>,
) -> Result<(Bytes, OwnedSemaphorePermit), FrameEnd> {
    let frame_bytes_max = ctx.config.frame_bytes_max;
    let mut len_buf = [0u8; 4];
    let idle = ctx.config.connection_idle;
    if !matches!(
        tokio::time::timeout(idle, reader.read_exact(&mut len_buf)).await,
        Ok(Ok(_))
    ) {
        return Err(FrameEnd::ClientGone);
    }
    let len = i32::from_be_bytes(len_buf);
    let Some(len) = usize::try_from(len)
        .ok()
        .filter(|&l| l > 0 && l <= frame_bytes_max)
    else {
        tracing::debug!(
            "closing connection from {peer:?}: frame length {len} outside 1..={frame_bytes_max}"
        );
        return Err(FrameEnd::BadLength);
    };
    let read = tokio::time::timeout(FRAME_BODY_READ_TIMEOUT, read_body(reader, len, budget));
    match read.await {
        Ok(Ok(frame)) => Ok(frame),
        _ => Err(FrameEnd::ClientGone),
    }
}

/// Serves one client connection until it closes, misbehaves or stays idle too long. With
/// `times`, its produce requests are timed (see `request_times`).
pub async fn serve_connection(
    stream: TcpStream,
    (ctx, listener): (Arc<ApiContext>, Listener),
    budget: RequestBudget,
    times: Option<Arc<RequestTimes>>,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(ctx.config.connection_requests_in_flight_max);
    let timed = times.is_some();
    let write_loop = tokio::spawn(write_responses(rx, writer, times, peer));
    // Requests still running, so that they can be stopped when the client goes away: a
    // long-poll fetch or a group join would otherwise run on for its full timeout.
    let mut in_flight: VecDeque<AbortHandle> = VecDeque::new();
    let mut client_gone = false;
    loop {
        let (body, held) = match read_frame(&mut reader, &budget, &ctx, peer).await {
            Ok(frame) => frame,
            Err(FrameEnd::ClientGone) => {
                client_gone = true;
                break;
            }
            Err(FrameEnd::BadLength) => break,
        };
        let read_at = timed.then(Instant::now);
        let started = ctx.start(body, listener).await;
        let failed = started.is_err();
        // Only produce requests are timed: a fetch's long poll is not a delay.
        let read_and_started = read_at
            .filter(|_| matches!(&started, Ok(s) if s.api() == ApiKey::Produce))
            .map(|read_at| (read_at, Instant::now()));
        let ctx = ctx.clone();
        let handle = tokio::spawn(async move {
            // The request's bytes count until it has finished (a group request returns them
            // before it parks).
            let outcome = match started {
                Ok(started) => started.finish(&ctx, held).await,
                Err(err) => Err(err),
            };
            let marks = read_and_started.map(|(read, started)| Marks {
                read,
                started,
                finished: Instant::now(),
            });
            (outcome, marks)
        });
        in_flight.retain(|h| !h.is_finished());
        in_flight.push_back(handle.abort_handle());
        // After a bad frame the writer sends the earlier responses, then closes.
        if tx.send(handle).await.is_err() || failed {
            break; // the writer stopped: a bad request or a dead socket
        }
    }
    if client_gone {
        // Nobody will read the answers. A produce request is already appended (its durability
        // wait and flush are all that is stopped; checkpoints flush), a fetch or group wait
        // just ends, and the request's memory budget returns with it.
        in_flight.iter().for_each(AbortHandle::abort);
    }
    drop(tx);
    let _ = write_loop.await;
}
