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

use anonnet_client::{Client, ClientError, DataStream, ErrorKind, HasKind, IsolationKey};
use anonnet_wire::ResolvedAnswer;
use anonnet_wire::Target;
use fast_socks5::server::{
    Socks5ServerProtocol, StandardAuthentication, StandardAuthenticationStarted,
};
use fast_socks5::util::target_addr::{read_address, AddrError, TargetAddr};
use fast_socks5::ReplyError;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

impl anonnet_error::HasKind for ProxyError {
    /// A listener that cannot be bound: the I/O error's kind (a port in use is
    /// [`ErrorKind::LocalResource`]).
    fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::Bind { source, .. } => anonnet_error::HasKind::kind(source),
        }
    }
}

/// Why one SOCKS connection ended early. The client was answered with a reply code where
/// the protocol allows one; the accept loop logs this at debug level only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The handshake and request did not arrive within the handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The connection closed before its first byte.
    #[error("closed before the handshake")]
    ClosedEarly,
    /// The first byte (or a SOCKS5 request's version byte) is neither 4 nor 5.
    #[error("not SOCKS4 or SOCKS5 (version byte {0:#04x})")]
    UnknownVersion(u8),
    /// The SOCKS5 method negotiation or password sub-negotiation failed (fast-socks5).
    #[error("SOCKS5 handshake: {0}")]
    Socks5(#[from] fast_socks5::server::SocksServerError),
    /// A SOCKS5 address that cannot be read or written (unknown `ATYP`, a name that is
    /// not UTF-8).
    #[error("SOCKS5 address: {0}")]
    Address(#[from] AddrError),
    /// A SOCKS5 command other than `CONNECT`, `RESOLVE` and `RESOLVE_PTR`.
    #[error("unsupported SOCKS5 command {0:#04x}")]
    Command(u8),
    /// A SOCKS4 request that does not parse ([`socks4::Socks4Error`]).
    #[error("SOCKS4 request: {0}")]
    Socks4(#[from] socks4::Socks4Error),
    /// A `RESOLVE` that asked for, or got, the wrong kind of answer.
    #[error("{0}")]
    ResolveKind(&'static str),
    /// The client could not open the stream or resolve the name (answered with the
    /// reply of its kind, [`socks_reply`]).
    #[error("{0}")]
    Client(#[from] ClientError),
    /// Reading from or writing to either side failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

impl anonnet_error::HasKind for SessionError {
    /// The client's kind for a failed stream or resolve, the I/O error's kind, else
    /// [`ErrorKind::BadRequest`] (the application spoke SOCKS wrongly) or
    /// [`ErrorKind::Timeout`] (it was too slow).
    fn kind(&self) -> ErrorKind {
        match self {
            SessionError::HandshakeTimeout => ErrorKind::Timeout,
            SessionError::Client(e) => e.kind(),
            SessionError::Io(e) => anonnet_error::HasKind::kind(e),
            SessionError::ResolveKind(_) => ErrorKind::HostUnreachable,
            _ => ErrorKind::BadRequest,
        }
    }
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

/// A bound SOCKS listener: SOCKS5, SOCKS4 and SOCKS4a on one port.
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

/// Serve one connection on the SOCKS port, choosing the protocol by its first byte: `5`
/// SOCKS5, `4` SOCKS4 or SOCKS4a ([`socks4`]), anything else is closed without a reply. The
/// handshake and request must arrive within `handshake_timeout` of the call.
///
/// # Errors
/// [`SessionError`]: why the connection ended early (already answered with a reply code
/// where the protocol allows one).
pub async fn serve_socks(
    tcp: TcpStream,
    client: Arc<Client>,
    handshake_timeout: Duration,
) -> Result<(), SessionError> {
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)??;
    if peeked == 0 {
        return Err(SessionError::ClosedEarly);
    }
    match first[0] {
        5 => serve_socks5(tcp, client, deadline).await,
        socks4::VERSION => serve_socks4(tcp, client, deadline).await,
        // Closed; the accept loop logs the error at debug level.
        other => Err(SessionError::UnknownVersion(other)),
    }
}

/// SOCKS5 command `RESOLVE` (Tor's extension, socks-extensions.txt §2): the name's address
/// in the reply's BND.ADDR, no connection.
pub const SOCKS5_CMD_RESOLVE: u8 = 0xF0;
/// SOCKS5 command `RESOLVE_PTR` (Tor's extension): the address's name in the reply's
/// BND.ADDR (ATYP 3), no connection.
pub const SOCKS5_CMD_RESOLVE_PTR: u8 = 0xF1;

/// Serve one SOCKS5 connection: handshake (no auth, or any username/password — later used
/// as the isolation key), then `CONNECT` through the client and copy bytes both ways, or
/// `RESOLVE`/`RESOLVE_PTR` answered by an exit (docs/protocol.md §9.3). The handshake and
/// request must arrive before `deadline`.
///
/// fast-socks5 negotiates the method and reads the address; the 4-byte request header is
/// read here because fast-socks5 refuses the two Tor commands before returning them.
///
/// # Errors
/// [`SessionError`]: why the connection ended early (already answered with a reply code
/// where the protocol allows one).
async fn serve_socks5(
    mut tcp: TcpStream,
    client: Arc<Client>,
    deadline: tokio::time::Instant,
) -> Result<(), SessionError> {
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let started = Socks5ServerProtocol::start(&mut tcp)
            .negotiate_auth(StandardAuthentication::allow_no_auth(true))
            .await?;
        let isolation = match started {
            StandardAuthenticationStarted::NoAuthentication(_) => IsolationKey::default(),
            StandardAuthenticationStarted::PasswordAuthentication(a) => {
                let (user, pass, a) = a.read_username_password().await?;
                let key = IsolationKey::from_credentials(user.as_bytes(), pass.as_bytes());
                a.accept().await?;
                key
            }
        };
        let mut header = [0u8; 4];
        tcp.read_exact(&mut header).await?;
        let [version, cmd, _reserved, atyp] = header;
        if version != fast_socks5::consts::SOCKS5_VERSION {
            return Err(SessionError::UnknownVersion(version));
        }
        let target = read_address(&mut tcp, atyp).await;
        Ok::<_, SessionError>((cmd, target, isolation))
    };
    let (cmd, target, isolation) = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| SessionError::HandshakeTimeout)??;
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            // An address type we do not know, or a host name that is not UTF-8.
            let reply = match e {
                AddrError::IncorrectAddressType => ReplyError::AddressTypeNotSupported,
                _ => ReplyError::GeneralFailure,
            };
            let _ = write_socks5_reply(&mut tcp, reply, None).await;
            return Err(SessionError::Address(e));
        }
    };
    let (target, port) = match target {
        TargetAddr::Ip(sa) => (Target::Ip(sa.ip()), sa.port()),
        // A literal IP sent as a domain name (`::1`, `[::1]`, `127.0.0.1`) is the IP;
        // any other name goes to the exit unresolved, as over the HTTP proxy.
        TargetAddr::Domain(host, port) => (crate::http::target_of(&host), port),
    };
    match cmd {
        fast_socks5::consts::SOCKS5_CMD_TCP_CONNECT => {}
        SOCKS5_CMD_RESOLVE | SOCKS5_CMD_RESOLVE_PTR => {
            return socks5_resolve(tcp, &client, cmd, target, &isolation).await;
        }
        other => {
            write_socks5_reply(&mut tcp, ReplyError::CommandNotSupported, None).await?;
            return Err(SessionError::Command(other));
        }
    }
    let early = early_data(&tcp);
    let stream = match open_stream(&client, target, port, &isolation, &early).await {
        Ok(s) => s,
        Err(e) => {
            let reply = socks_reply(e.kind());
            debug!("SOCKS5 reply {reply:?}");
            write_socks5_reply(&mut tcp, reply, None).await?;
            return Err(SessionError::Client(e));
        }
    };
    drop(early);
    write_socks5_reply(&mut tcp, ReplyError::Succeeded, None).await?;
    relay(tcp, stream).await
}

/// Most bytes a SOCKS client may have sent behind its request that go optimistically
/// with `BEGIN` (§6.5): 16 KiB, 17 `DATA` cells, well inside a new stream's window of 500.
pub const EARLY_DATA_MAX: usize = 16 * 1024;

/// What the client already sent behind its request (at most [`EARLY_DATA_MAX`] bytes),
/// without waiting: a client that pipelines (sends its first bytes before our reply, as
/// Tor Browser does) has them travel right behind `BEGIN`. Bytes that arrive later, and
/// every byte of a client that waits for the reply, go once the stream is open.
///
/// The buffer shrinks to what was read (none at all for a client that waits), so an open
/// SOCKS connection holds no 16 KiB for the early bytes it did not send.
fn early_data(tcp: &TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; EARLY_DATA_MAX];
    match tcp.try_read(&mut buf) {
        Ok(n) => buf.truncate(n),
        // Nothing queued (WouldBlock), or an error the copy loop will meet again.
        Err(_) => buf.clear(),
    }
    buf.shrink_to_fit();
    buf
}

/// Answer `RESOLVE` (a name's first address, IPv4 preferred, in BND.ADDR) or `RESOLVE_PTR`
/// (an address's name, ATYP 3) through an exit, then close: Tor's SOCKS extension
/// (socks-extensions.txt §2). Failures get the reply of their [`ErrorKind`]
/// ([`socks_reply`]): 0x04 for a name that does not resolve, 0x02 for a `.anon`/`.dark`
/// name or an exit that may not answer, 0x06 when the exit's lookup timed out.
///
/// # Errors
/// [`SessionError`]: why the request failed (already answered).
async fn socks5_resolve(
    mut tcp: TcpStream,
    client: &Client,
    cmd: u8,
    target: Target,
    isolation: &IsolationKey,
) -> Result<(), SessionError> {
    let wrong_kind = match (&target, cmd) {
        (Target::Host(_), SOCKS5_CMD_RESOLVE_PTR) => Some("RESOLVE_PTR of a host name"),
        (Target::Ip(_), SOCKS5_CMD_RESOLVE) => Some("RESOLVE of an address"),
        _ => None,
    };
    if let Some(why) = wrong_kind {
        // Tor answers RESOLVE of an address with the address itself; RESOLVE_PTR needs one.
        if let (Target::Ip(ip), SOCKS5_CMD_RESOLVE) = (&target, cmd) {
            let answer = TargetAddr::Ip(SocketAddr::new(*ip, 0));
            return write_socks5_reply(&mut tcp, ReplyError::Succeeded, Some(answer)).await;
        }
        write_socks5_reply(&mut tcp, ReplyError::AddressTypeNotSupported, None).await?;
        return Err(SessionError::ResolveKind(why));
    }
    let answers = match client.resolve_isolated(target, isolation).await {
        Ok(a) => a,
        Err(e) => {
            let reply = match e.kind() {
                ErrorKind::BadRequest => ReplyError::ConnectionNotAllowed,
                kind => socks_reply(kind),
            };
            debug!("SOCKS5 RESOLVE reply {reply:?}");
            write_socks5_reply(&mut tcp, reply, None).await?;
            return Err(SessionError::Client(e));
        }
    };
    let first_ip = |v4: bool| {
        answers.iter().find_map(|a| match a {
            ResolvedAnswer::Ip(ip) if ip.is_ipv4() == v4 => Some(*ip),
            _ => None,
        })
    };
    let answer = if cmd == SOCKS5_CMD_RESOLVE {
        first_ip(true)
            .or_else(|| first_ip(false))
            .map(|ip| TargetAddr::Ip(SocketAddr::new(ip, 0)))
    } else {
        answers.iter().find_map(|a| match a {
            ResolvedAnswer::Host(h) => Some(TargetAddr::Domain(h.clone(), 0)),
            _ => None,
        })
    };
    match answer {
        Some(a) => write_socks5_reply(&mut tcp, ReplyError::Succeeded, Some(a)).await,
        // The exit answered with the other kind of answer than the one asked for.
        None => {
            write_socks5_reply(&mut tcp, ReplyError::HostUnreachable, None).await?;
            Err(SessionError::ResolveKind(
                "the exit's answer had nothing of the kind asked for",
            ))
        }
    }
}

/// Write a SOCKS5 reply (RFC 1928 §6): `VER 5 ‖ REP ‖ RSV 0 ‖ ATYP ‖ BND.ADDR ‖
/// BND.PORT`, with `bound` as the address (0.0.0.0:0 when `None`; we never tell the
/// client the exit's address).
///
/// # Errors
/// [`SessionError::Address`] for an address that cannot be encoded,
/// [`SessionError::Io`] for the write.
async fn write_socks5_reply(
    tcp: &mut TcpStream,
    reply: ReplyError,
    bound: Option<TargetAddr>,
) -> Result<(), SessionError> {
    let bound = bound.unwrap_or(TargetAddr::Ip(SocketAddr::from(([0, 0, 0, 0], 0))));
    let mut bytes = vec![fast_socks5::consts::SOCKS5_VERSION, reply.as_u8(), 0];
    bytes.extend(bound.to_be_bytes()?);
    Ok(tcp.write_all(&bytes).await?)
}

/// Serve one SOCKS4 or SOCKS4a connection ([`socks4`]): the request (before `deadline`),
/// `CONNECT` through the client with the user id as the isolation key, reply 90 or 91, then
/// copy bytes both ways.
async fn serve_socks4(
    mut tcp: TcpStream,
    client: Arc<Client>,
    deadline: tokio::time::Instant,
) -> Result<(), SessionError> {
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::with_capacity(64);
    let parsed = tokio::time::timeout_at(deadline, read_socks4_request(&mut tcp, &mut buf))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)?;
    let (request, len) = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            tcp.write_all(&socks4::reply(false)).await?;
            return Err(SessionError::Socks4(e));
        }
        Err(e) => return Err(SessionError::Io(e)),
    };
    let isolation = if request.user_id.is_empty() {
        IsolationKey::default()
    } else {
        IsolationKey::from_credentials(&request.user_id, b"")
    };
    let target = match &request.destination {
        socks4::Destination::Ip(ip) => Target::Ip((*ip).into()),
        // A literal IP sent as a host name is the IP; any other name goes to the exit
        // unresolved, as with SOCKS5.
        socks4::Destination::Host(host) => crate::http::target_of(host),
    };
    if request.command == socks4::CMD_RESOLVE {
        return socks4_resolve(tcp, &client, target, &isolation).await;
    }
    // Data the client sent right behind its request goes with BEGIN (§6.5).
    let early = buf.get(len..).unwrap_or_default();
    let stream = match open_stream(&client, target, request.port, &isolation, early).await {
        Ok(s) => s,
        Err(e) => {
            tcp.write_all(&socks4::reply(false)).await?;
            return Err(SessionError::Client(e));
        }
    };
    tcp.write_all(&socks4::reply(true)).await?;
    relay(tcp, stream).await
}

/// Answer a SOCKS4a `RESOLVE` (Tor's extension): the first IPv4 answer of an exit's
/// lookup in the reply's `DSTIP` (an IPv4 address asked about is answered as it is), or
/// reply 91 when the name does not resolve, has no IPv4 address, or cannot be asked (a
/// `.anon`/`.dark` name; the proxy off). Then close.
///
/// # Errors
/// [`SessionError`]: why the request failed (already answered).
async fn socks4_resolve(
    mut tcp: TcpStream,
    client: &Client,
    target: Target,
    isolation: &IsolationKey,
) -> Result<(), SessionError> {
    let answer = match target {
        Target::Ip(std::net::IpAddr::V4(ip)) => Ok(Some(ip)),
        Target::Ip(std::net::IpAddr::V6(_)) => Ok(None),
        host => client
            .resolve_isolated(host, isolation)
            .await
            .map(|answers| {
                answers.iter().find_map(|a| match a {
                    ResolvedAnswer::Ip(std::net::IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            })
            .map_err(SessionError::Client),
    };
    let bytes = match &answer {
        Ok(Some(ip)) => socks4::resolved(*ip),
        _ => socks4::reply(false),
    };
    tcp.write_all(&bytes).await?;
    match answer {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(SessionError::ResolveKind(
            "RESOLVE over SOCKS4a: no IPv4 answer",
        )),
        Err(e) => Err(e),
    }
}

/// Read from `tcp` into `buf` until it holds a whole SOCKS4 request or an invalid one.
/// Outer error: the connection failed or closed first; inner: the request is refused.
async fn read_socks4_request(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<(socks4::Request, usize), socks4::Socks4Error>> {
    let mut chunk = [0u8; socks4::MAX_REQUEST_LEN];
    loop {
        match socks4::parse(buf) {
            Ok(socks4::Parsed::Request { request, len }) => return Ok(Ok((request, len))),
            Ok(socks4::Parsed::Incomplete) => {}
            Err(e) => return Ok(Err(e)),
        }
        // `parse` refuses a request before it outgrows MAX_REQUEST_LEN, so `buf` stays
        // under twice that.
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Open a stream to `target:port` for a SOCKS `CONNECT` on a circuit of the `isolation`
/// group, with `early` (what the client sent behind its request) right behind `BEGIN`
/// ([`Client::connect_isolated_with_early_data`]). A failure is logged at debug level only (logs never name the destination), and
/// with a warning when proxying is switched off.
///
/// # Errors
/// The client's [`ClientError`]; its [`ClientError::kind`] chooses the reply.
async fn open_stream(
    client: &Client,
    target: Target,
    port: u16,
    isolation: &IsolationKey,
    early: &[u8],
) -> Result<DataStream, ClientError> {
    client
        .connect_isolated_with_early_data(target, port, isolation, early)
        .await
        .inspect_err(|e| {
            if e.kind() == ErrorKind::Disabled {
                warn!("refusing a SOCKS connection: proxying is off (`anonnet proxy on`)");
            }
            debug!("CONNECT failed: {e}");
        })
}

/// Copy bytes both ways between the SOCKS client and its stream until both directions
/// have closed.
async fn relay(mut tcp: TcpStream, mut stream: DataStream) -> Result<(), SessionError> {
    tokio::io::copy_bidirectional(&mut tcp, &mut stream).await?;
    Ok(())
}
