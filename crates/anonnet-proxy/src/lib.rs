#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod http;
mod listener;
pub mod pac;
pub mod socks4;

pub use http::HttpProxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonnet_client::{Client, ClientError, ErrorKind, IsolationKey};
use anonnet_wire::Target;
use fast_socks5::server::{
    AuthMethodSuccessState as _, Socks5ServerProtocol, StandardAuthentication,
    StandardAuthenticationStarted,
};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// How long a SOCKS client may take by default to finish its handshake and request
/// (counted from the accept), and an HTTP client to send a request head; config
/// `client.handshake_timeout_secs` changes it ([`SocksServer::with_handshake_timeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// SOCKS connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 4096;

/// Errors of the front ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listening socket could not be bound (typically: the port is taken).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The SOCKS5 reply code for a failure of this kind (RFC 1928 §6).
pub fn socks_reply(kind: ErrorKind) -> ReplyError {
    match kind {
        ErrorKind::ExitPolicy | ErrorKind::Disabled | ErrorKind::NotAllowed => {
            ReplyError::ConnectionNotAllowed
        }
        ErrorKind::ConnectionRefused => ReplyError::ConnectionRefused,
        ErrorKind::HostUnreachable => ReplyError::HostUnreachable,
        ErrorKind::Timeout => ReplyError::TtlExpired,
        _ => ReplyError::GeneralFailure,
    }
}

/// A bound SOCKS5 listener.
#[derive(Debug)]
pub struct SocksServer {
    listener: listener::Listener,
    handshake_timeout: Duration,
}

impl SocksServer {
    /// Bind `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`ProxyError::Bind`] naming the address when it cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<SocksServer, ProxyError> {
        Ok(SocksServer {
            listener: listener::Listener::bind(addr).await?,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Close connections that have not finished the SOCKS handshake and request this long
    /// after the accept (default [`HANDSHAKE_TIMEOUT`]).
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> SocksServer {
        self.handshake_timeout = timeout;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serve connections through `client` until this future is dropped. At most
    /// [`MAX_CONNECTIONS`] connections are served at once.
    pub async fn serve(self, client: Arc<Client>) {
        let timeout = self.handshake_timeout;
        self.listener
            .run("SOCKS", move |tcp, permit| {
                let client = client.clone();
                async move {
                    let served = serve_socks(tcp, client, timeout).await;
                    drop(permit);
                    served
                }
            })
            .await;
    }
}

/// Serve one SOCKS5 connection: handshake (no auth, or any username/password — later used
/// as the isolation key), `CONNECT` through the client, then copy bytes both ways. The
/// handshake and request must arrive within `handshake_timeout`.
///
/// # Errors
/// A description of why the connection ended early (already answered with a reply code
/// where the protocol allows one).
pub async fn serve_socks(
    tcp: TcpStream,
    client: Arc<Client>,
    handshake_timeout: Duration,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let started = Socks5ServerProtocol::start(tcp)
            .negotiate_auth(StandardAuthentication::allow_no_auth(true))
            .await
            .map_err(|e| e.to_string())?;
        let (proto, isolation) = match started {
            StandardAuthenticationStarted::NoAuthentication(a) => (
                Socks5ServerProtocol::finish_auth(a),
                IsolationKey::default(),
            ),
            StandardAuthenticationStarted::PasswordAuthentication(a) => {
                let (user, pass, a) = a
                    .read_username_password()
                    .await
                    .map_err(|e| e.to_string())?;
                let key = IsolationKey::from_credentials(user.as_bytes(), pass.as_bytes());
                (
                    a.accept().await.map_err(|e| e.to_string())?.finish_auth(),
                    key,
                )
            }
        };
        let (proto, cmd, target) = proto.read_command().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((proto, cmd, target, isolation))
    };
    let (proto, cmd, target, isolation) = tokio::time::timeout(handshake_timeout, handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())??;
    if cmd != Socks5Command::TCPConnect {
        proto
            .reply_error(&ReplyError::CommandNotSupported)
            .await
            .map_err(|e| e.to_string())?;
        return Err(format!("unsupported command {cmd:?}"));
    }
    let (target, port) = match target {
        TargetAddr::Ip(sa) => (Target::Ip(sa.ip()), sa.port()),
        // A literal IP sent as a domain name (`::1`, `[::1]`, `127.0.0.1`) is the IP;
        // any other name goes to the exit unresolved, as over the HTTP proxy.
        TargetAddr::Domain(host, port) => (crate::http::target_of(&host), port),
    };
    let stream = match client.connect_isolated(target, port, &isolation).await {
        Ok(s) => s,
        Err(e) => {
            let reply = socks_reply(e.kind());
            if e.kind() == ErrorKind::Disabled {
                warn!("refusing a SOCKS connection: proxying is off (`anonnet proxy on`)");
            }
            debug!("CONNECT failed: {e} → {reply:?}");
            proto.reply_error(&reply).await.map_err(|e| e.to_string())?;
            return Err(error_text(&e));
        }
    };
    let mut tcp = proto
        .reply_success(SocketAddr::from(([0, 0, 0, 0], 0)))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = stream;
    tokio::io::copy_bidirectional(&mut tcp, &mut stream)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn error_text(e: &ClientError) -> String {
    format!("{e} ({:?})", e.kind())
}
