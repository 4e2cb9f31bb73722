//! The controller quorum's RPCs over TCP: vote, append-entries and snapshot chunks, each a
//! length-prefixed JSON frame answered by one frame, on one connection per peer that is
//! opened again after any error. The server side hands each request to the local Raft.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::controller::messages::{BrokerAnswer, BrokerRequest};
use crate::controller::metadata::MetadataImage;
use crate::controller::quorum::Core;
use crate::controller::types::{ControllerRaft, NodeId};

/// Larger frames are refused: a snapshot travels in chunks far below this.
const RPC_FRAME_BYTES_MAX: usize = 16 << 20;
/// How long an idle server connection is kept (peers send heartbeats far more often).
const RPC_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
enum Request {
    Vote(VoteRequest<NodeId>),
    Append(AppendEntriesRequest<ControllerRaft>),
    Snapshot(InstallSnapshotRequest<ControllerRaft>),
    Broker(BrokerRequest),
}

/// Sends one broker request to the member at `addr` and reads its answer within `timeout`.
pub async fn ask(
    addr: SocketAddr,
    request: BrokerRequest,
    timeout: Duration,
) -> io::Result<BrokerAnswer> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        write_frame(&mut stream, &Request::Broker(request)).await?;
        read_frame(&mut stream).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "controller did not answer"))?
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> io::Result<()> {
    let json = serde_json::to_vec(value)?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    stream.write_all(&out).await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> io::Result<T> {
    let len = stream.read_u32().await? as usize;
    if len > RPC_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("controller RPC frame of {len} bytes"),
        ));
    }
    // Memory follows the bytes that arrive, not the length a peer declares.
    let mut body = Vec::new();
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Creates one client per peer. A peer is reached at the address this member's own cluster
/// file gives it (each node's own `controller.quorum.voters`, as in Kafka), not the one in the
/// membership entry, which is whatever the member that initialized the quorum saw: so one
/// broker may reach another through a route of its own (a proxy, in the tests).
pub struct Network {
    pub voters: std::collections::BTreeMap<NodeId, SocketAddr>,
}

impl RaftNetworkFactory<ControllerRaft> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: self
                .voters
                .get(&target)
                .copied()
                .or_else(|| node.addr.parse().ok()),
            stream: None,
        }
    }
}

pub struct Peer {
    target: NodeId,
    addr: Option<SocketAddr>,
    stream: Option<TcpStream>,
}

type RpcResult<R, E> = Result<R, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    /// Sends one request and reads its answer within the RPC's hard deadline; any failure
    /// drops the connection (the next call opens a new one) and reads as unreachable.
    async fn call<R, E>(&mut self, request: Request, option: &RPCOption) -> RpcResult<R, E>
    where
        R: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let exchange = async {
            let addr = self.addr.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "peer address is not ip:port")
            })?;
            if self.stream.is_none() {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().expect("connected above");
            write_frame(stream, &request).await?;
            read_frame::<Result<R, RaftError<NodeId, E>>>(stream).await
        };
        match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(remote))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, remote)))
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(RPCError::Unreachable(openraft::error::Unreachable::new(&e)))
            }
            Err(elapsed) => {
                self.stream = None;
                Err(RPCError::Network(NetworkError::new(&elapsed)))
            }
        }
    }
}

impl RaftNetwork<ControllerRaft> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ControllerRaft>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Request::Append(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<ControllerRaft>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Request::Snapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Request::Vote(rpc), &option).await
    }
}

/// Serves the quorum's RPCs and the brokers' requests on `listener` until the task is
/// aborted (which aborts every connection's task with it).
pub async fn serve(listener: TcpListener, core: Arc<Core>) {
    let mut peers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let core = core.clone();
                peers.spawn(async move {
                    if let Err(e) = serve_peer(stream, core).await {
                        tracing::debug!("controller peer connection ended: {e}");
                    }
                });
            }
            Some(_) = peers.join_next(), if !peers.is_empty() => {}
        }
    }
}

async fn serve_peer(mut stream: TcpStream, core: Arc<Core>) -> io::Result<()> {
    let raft = core.raft();
    stream.set_nodelay(true)?;
    loop {
        let request = tokio::time::timeout(RPC_IDLE_TIMEOUT, read_frame::<Request>(&mut stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        match request {
            Request::Vote(rpc) => write_frame(&mut stream, &raft.vote(rpc).await).await?,
            Request::Append(rpc) => {
                write_frame(&mut stream, &raft.append_entries(rpc).await).await?
            }
            Request::Snapshot(rpc) => {
                write_frame(&mut stream, &raft.install_snapshot(rpc).await).await?
            }
            Request::Broker(request) => {
                write_frame(&mut stream, &core.answer(request).await).await?
            }
        }
    }
}

/// The image as the active controller applied it (or, when no member knows an active one,
/// as the first answering member did), with the active member's id.
pub async fn describe(
    voters: &std::collections::BTreeMap<NodeId, SocketAddr>,
    timeout: Duration,
) -> Option<(Option<NodeId>, MetadataImage)> {
    let mut fallback = None;
    for (&id, &addr) in voters {
        let Ok(BrokerAnswer::Image { active, image }) =
            ask(addr, BrokerRequest::Describe, timeout).await
        else {
            continue;
        };
        if active == Some(id) {
            return Some((active, image));
        }
        if let Some(&active_addr) = active.and_then(|a| voters.get(&a)) {
            if let Ok(BrokerAnswer::Image { active, image }) =
                ask(active_addr, BrokerRequest::Describe, timeout).await
            {
                return Some((active, image));
            }
        }
        fallback.get_or_insert((active, image));
    }
    fallback
}
