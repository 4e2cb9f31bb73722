//! Listener and connection tasks. A connection reads length-prefixed frames and starts each
//! request in arrival order (a produce request gets its offsets before the next frame is
//! read), then finishes each in its own task (so pipelined requests share group commits) and
//! writes responses back in request order. Anything wrong with a frame costs that connection
//! only.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::api::{ApiContext, RequestError};

/// A client that started a frame must finish it within this time.
const FRAME_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A response that cannot be written within this time closes the connection.
const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

type Pending = JoinHandle<Result<Option<Bytes>, RequestError>>;

/// Serves one client connection until it closes or misbehaves.
pub async fn serve_connection(stream: TcpStream, ctx: Arc<ApiContext>) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let frame_bytes_max = ctx.config.frame_bytes_max;
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(ctx.config.connection_requests_in_flight_max);
    let write_loop = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            let outcome = match pending.await {
                Ok(outcome) => outcome,
                Err(join_err) => {
                    tracing::error!("request handler panicked: {join_err}");
                    return;
                }
            };
            match outcome {
                Ok(Some(frame)) => {
                    let write =
                        tokio::time::timeout(RESPONSE_WRITE_TIMEOUT, writer.write_all(&frame))
                            .await;
                    if !matches!(write, Ok(Ok(()))) {
                        return;
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!("closing connection from {peer:?}: {err}");
                    return;
                }
            }
        }
    });
    loop {
        let mut len_buf = [0u8; 4];
        if reader.read_exact(&mut len_buf).await.is_err() {
            break;
        }
        let len = i32::from_be_bytes(len_buf);
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0 && l <= frame_bytes_max)
        else {
            tracing::debug!("closing connection from {peer:?}: frame length {len} outside 1..={frame_bytes_max}");
            break;
        };
        let mut body = BytesMut::zeroed(len);
        match tokio::time::timeout(FRAME_BODY_READ_TIMEOUT, reader.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let started = ctx.start(body.freeze()).await;
        let failed = started.is_err();
        let ctx = ctx.clone();
        let handle = tokio::spawn(async move { started?.finish(&ctx).await });
        // After a bad frame the writer sends the earlier responses, then closes.
        if tx.send(handle).await.is_err() || failed {
            break; // the writer stopped: a bad request or a dead socket
        }
    }
    drop(tx);
    let _ = write_loop.await;
}
