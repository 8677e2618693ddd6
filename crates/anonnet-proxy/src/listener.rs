//! The accept loop both front ends share: a loopback TCP listener serving at most
//! [`MAX_CONNECTIONS`](crate::MAX_CONNECTIONS) connections at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::{ProxyError, MAX_CONNECTIONS};

/// A bound listener.
#[derive(Debug)]
pub(crate) struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Listener {
    /// Bind `addr` (port 0 picks a free port) with an accept queue of
    /// [`MAX_CONNECTIONS`](crate::MAX_CONNECTIONS) (the kernel caps it at
    /// `net.core.somaxconn`), so a burst of connections that arrives faster than the accept
    /// loop runs waits in the kernel instead of having its SYNs dropped (a dropped SYN costs
    /// the browser a 1 s retransmission).
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Listener, ProxyError> {
        let bind_err = |source| ProxyError::Bind { addr, source };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(bind_err)?;
        // As std's and tokio's `TcpListener::bind` do on Unix.
        #[cfg(unix)]
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(addr).map_err(bind_err)?;
        let backlog = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        let listener = socket.listen(backlog).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Listener {
            listener,
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accept forever, running `serve` on each connection in its own task with a permit
    /// that counts against [`MAX_CONNECTIONS`](crate::MAX_CONNECTIONS) until `serve` drops
    /// it; `what` names the front end in logs.
    pub(crate) async fn run<F, Fut, E>(self, what: &'static str, serve: F)
    where
        F: Fn(TcpStream, OwnedSemaphorePermit) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    let served = serve(tcp, permit);
                    tokio::spawn(async move {
                        if let Err(e) = served.await {
                            debug!(%peer, "{what} connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
