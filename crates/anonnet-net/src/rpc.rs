//! One request and one answer on one QUIC bidirectional stream, framed as
//! `tag u8 ‖ len u32 ‖ body` (request) and `len u32 ‖ body` (answer), with every length
//! bounded by the caller. The directory protocol (`docs/protocol.md` §14.2) uses it; the
//! bytes inside are the caller's to decode.

use std::time::Duration;

use quinn::{RecvStream, SendStream};

use crate::{Link, NetError};

/// Why a framed exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// Opening the stream failed (link lost).
    #[error(transparent)]
    Link(#[from] NetError),
    /// Writing the stream failed (the peer stopped it, or the link is gone).
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading the stream failed (it ended early, was reset, or the link is gone).
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The answer's length prefix exceeds the caller's bound (bytes).
    #[error("answer of {len} bytes exceeds {max}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// No answer within the caller's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Send `tag ‖ len ‖ body` on a new stream of `link` and read the framed answer (at most
/// `max_answer` bytes), all within `timeout`.
///
/// # Errors
/// [`RpcError`] when the link, the stream or the bound fails, or time runs out.
pub async fn request(
    link: &Link,
    tag: u8,
    body: &[u8],
    max_answer: usize,
    timeout: Duration,
) -> Result<Vec<u8>, RpcError> {
    let exchange = async {
        let (mut send, mut recv) = link.open_bi().await?;
        send.write_all(&[tag]).await?;
        write_frame(&mut send, body).await?;
        read_frame(&mut recv, max_answer).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(RpcError::Timeout(timeout)))
}

/// Read `len u32 ‖ body` (the tag, if any, already read), refusing `len > max`.
///
/// # Errors
/// [`RpcError::Read`] on a read failure, [`RpcError::TooLong`] past the bound.
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, RpcError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(RpcError::TooLong { len, max });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

/// Write `len u32 ‖ body` and finish the stream.
///
/// # Errors
/// [`RpcError::Write`] when the peer stopped reading or the link is gone.
pub async fn write_frame(send: &mut SendStream, body: &[u8]) -> Result<(), RpcError> {
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(body);
    send.write_all(&framed).await?;
    let _ = send.finish();
    Ok(())
}

impl anonnet_error::HasKind for RpcError {
    /// The link's kind, [`anonnet_error::ErrorKind::Timeout`] for no answer in time,
    /// [`anonnet_error::ErrorKind::Protocol`] for an answer too long, and
    /// [`anonnet_error::ErrorKind::CircuitFailed`] for a stream that broke.
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            RpcError::Link(e) => anonnet_error::HasKind::kind(e),
            RpcError::Write(_) | RpcError::Read(_) => anonnet_error::ErrorKind::CircuitFailed,
            RpcError::TooLong { .. } => anonnet_error::ErrorKind::Protocol,
            RpcError::Timeout(_) => anonnet_error::ErrorKind::Timeout,
        }
    }
}
