//! A Kafka-protocol client connection to another broker of the cluster: one request at a time,
//! frames encoded and decoded with `kafka-protocol`, every wait bounded, responses bounded in
//! size. A failed request drops the connection; the next request opens a new one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Responses larger than this close the connection (a fetch asks for at most
/// `FETCH_RESPONSE_BYTES_MAX` in the fetcher, plus headers).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0}: {1}")]
    Protocol(SocketAddr, String),
}

pub struct Peer {
    addr: SocketAddr,
    client_id: StrBytes,
    stream: Option<TcpStream>,
    correlation_id: i32,
}

impl Peer {
    pub fn new(addr: SocketAddr, local_id: i32) -> Self {
        Self {
            addr,
            client_id: StrBytes::from_string(format!("chronik-broker-{local_id}")),
            stream: None,
            correlation_id: 0,
        }
    }

    /// Sends `request` at `version` and waits up to `timeout` for its response.
    pub async fn request<R: Request>(
        &mut self,
        version: i16,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Response, PeerError> {
        let result = tokio::time::timeout(timeout, self.exchange(version, request))
            .await
            .unwrap_or(Err(PeerError::Timeout(self.addr, timeout)));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<R::Response, PeerError> {
        let addr = self.addr;
        let io = move |e| PeerError::Io(addr, e);
        let protocol = move |e: anyhow::Error| PeerError::Protocol(addr, e.to_string());
        if self.stream.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| PeerError::Timeout(addr, CONNECT_TIMEOUT))?
                .map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            self.stream = Some(stream);
        }
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(self.client_id.clone());
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0);
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(protocol)?;
        request.encode(&mut frame, version).map_err(protocol)?;
        let len = i32::try_from(frame.len() - 4).map_err(|e| protocol(e.into()))?;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(&frame).await.map_err(io)?;
        let len = stream.read_i32().await.map_err(io)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| (4..=RESPONSE_BYTES_MAX).contains(&l))
            .ok_or_else(|| PeerError::Protocol(addr, format!("response length {len}")))?;
        let mut body = BytesMut::zeroed(len);
        stream.read_exact(&mut body).await.map_err(io)?;
        let mut body = body.freeze();
        let header = ResponseHeader::decode(
            &mut body,
            <R::Response as HeaderVersion>::header_version(version),
        )
        .map_err(protocol)?;
        if header.correlation_id != self.correlation_id {
            return Err(PeerError::Protocol(
                addr,
                format!(
                    "correlation id {} answers request {}",
                    header.correlation_id, self.correlation_id
                ),
            ));
        }
        let response = R::Response::decode(&mut body, version).map_err(protocol)?;
        if body.has_remaining() {
            return Err(PeerError::Protocol(
                addr,
                format!("{} bytes after the response", body.remaining()),
            ));
        }
        Ok(response)
    }
}
