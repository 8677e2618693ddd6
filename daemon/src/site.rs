//! The testnet's demo web site: one HTML page at `/` saying it was reached through
//! anonnet, served with hyper on loopback. It exists so a newcomer's first `curl` has a
//! destination the testnet exits are allowed to reach.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
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

async fn page(
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if req.uri().path() == "/" {
        (StatusCode::OK, home(peer))
    } else {
        (
            StatusCode::NOT_FOUND,
            "<!doctype html><title>Not found</title><p>Not found. Try <a href=\"/\">/</a>.</p>\n"
                .to_owned(),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
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
        task.abort();
    }
}
