//! The testnet's demo web site: one HTML page at `/` saying it was reached through
//! anonnet, served with hyper on loopback. It exists so a newcomer's first `curl` has a
//! destination the testnet exits are allowed to reach.
//!
//! `GET /bytes/N` answers N bytes (at most [`MAX_BYTES`]) of a fixed pattern, byte `i`
//! being `i mod 251`, streamed in [`CHUNK`]-byte pieces: downloads of a known size and
//! content for speed tests and for checking that a transfer arrived intact.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// A bound demo site, not yet serving.
pub struct DemoSite {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl DemoSite {
    /// Bind the TCP listener (port 0 picks a free port).
    ///
    /// # Errors
    /// The I/O error from binding.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<DemoSite> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(DemoSite {
            listener,
            local_addr,
        })
    }

    /// Serve on a listener bound elsewhere (in another network namespace, for the WAN
    /// testnet); it must be in non-blocking mode.
    ///
    /// # Errors
    /// The I/O error from registering it with the runtime or reading its address.
    pub fn from_std(listener: std::net::TcpListener) -> std::io::Result<DemoSite> {
        let listener = TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        Ok(DemoSite {
            listener,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve HTTP/1.1 until the task is dropped; each connection runs in its own task.
    pub async fn serve(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    debug!("demo site accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let service = service_fn(move |req| page(req, peer));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!("demo site connection: {e}");
                }
            });
        }
    }
}

/// Largest `/bytes/N` (bytes): 1 GiB.
pub const MAX_BYTES: u64 = 1 << 30;
/// Size of each piece of a `/bytes/N` body (bytes).
pub const CHUNK: usize = 64 * 1024;
/// The pattern's period: byte `i` of `/bytes/N` is `i mod PATTERN_PERIOD`.
pub const PATTERN_PERIOD: u64 = 251;

/// Byte `offset` of every `/bytes/N` body.
pub fn pattern_byte(offset: u64) -> u8 {
    u8::try_from(offset % PATTERN_PERIOD).unwrap_or(0)
}

/// A `/bytes/N` body: the pattern from `sent` up to `len`, generated piece by piece.
struct PatternBody {
    sent: u64,
    len: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.len - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let start = self.sent;
        let piece: Vec<u8> = (start..start + n as u64).map(pattern_byte).collect();
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(piece)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

type SiteBody = Either<Full<Bytes>, PatternBody>;

async fn page(req: Request<Incoming>, peer: SocketAddr) -> Result<Response<SiteBody>, Infallible> {
    if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
        if let Some(len) = n.parse::<u64>().ok().filter(|&len| len <= MAX_BYTES) {
            let mut resp = Response::new(Either::Right(PatternBody { sent: 0, len }));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Ok(resp);
        }
    }
    let (status, body) = if req.uri().path() == "/" {
        (StatusCode::OK, home(peer))
    } else {
        (
            StatusCode::NOT_FOUND,
            "<!doctype html><title>Not found</title><p>Not found. Try <a href=\"/\">/</a>.</p>\n"
                .to_owned(),
        )
    };
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(resp)
}

fn home(peer: SocketAddr) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>anonnet testnet</title></head>\n\
         <body>\n<h1>Hello from the anonnet testnet</h1>\n\
         <p>You reached this page through anonnet: your request travelled over a 3-hop onion \
         circuit (guard, middle, exit) of relay processes on this machine.</p>\n\
         <p>This site saw the connection come from {peer}, which is the exit relay, not your \
         browser.</p>\n</body></html>\n"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn site_serves_the_home_page_and_404s_elsewhere() {
        let site = DemoSite::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = site.local_addr();
        let task = tokio::spawn(site.serve());
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let home = get("/").await;
        assert!(home.starts_with("HTTP/1.1 200"), "{home}");
        assert!(home.contains("through anonnet"), "{home}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        assert!(get("/bytes/x").await.starts_with("HTTP/1.1 404"));
        let too_big = format!("/bytes/{}", MAX_BYTES + 1);
        let too_big: &'static str = Box::leak(too_big.into_boxed_str());
        assert!(get(too_big).await.starts_with("HTTP/1.1 404"));
        // 200 000 bytes: several pieces, the last one short, each byte the pattern's.
        let raw = {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /bytes/200000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            out
        };
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&raw[..split]);
        assert!(head.contains("content-length: 200000"), "{head}");
        let body = &raw[split..];
        assert_eq!(body.len(), 200_000);
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)));
        task.abort();
    }
}
