//! QUIC endpoints (one UDP socket each) and the links they make.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anonnet_crypto::{IdentityKey, NodeId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

use crate::tls::{self, OptionalEd25519Client, PinnedServer};
use crate::{
    dial_transport_config, transport_config, NetError, ALPN, ALPN_V1, PROTOCOL_VERSION,
    UDP_SOCKET_BUFFER, VERSION_CLOSE_CODE,
};

/// Inbound handshakes a relay endpoint runs at once; further peers wait in quinn's queue
/// of incoming connections until one finishes and is taken by [`Endpoint::accept`].
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Completed inbound links buffered for [`Endpoint::accept`].
const ACCEPT_QUEUE: usize = 64;

/// Application close code sent by [`Endpoint::close`] and [`Link::close`].
const CLOSE_CODE: u32 = 0;

/// Bounds on the inbound links of a relay endpoint (`docs/protocol.md` §8.4). A link
/// counts from the moment its first packet is taken (handshake included) until the last
/// clone of its [`Link`] is dropped; a connection beyond either bound is refused before
/// any handshake work (QUIC `CONNECTION_REFUSED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Inbound links at once, from everyone. Default 4096.
    pub max_links: usize,
    /// Inbound links at once from one IP address. Default 64.
    pub max_links_per_ip: usize,
    /// Once this many handshakes are pending, a connection attempt whose source address
    /// is not yet validated gets a QUIC Retry (RFC 9000 §8.1.2) before any slot or
    /// handshake work: a sender with a spoofed address never sees the token, so it can
    /// neither hold a slot nor cost a signature. A real peer pays one round trip. 0: always
    /// Retry. Default 64 (of [`MAX_PENDING_HANDSHAKES`]).
    pub retry_at_pending: usize,
}

impl Default for InboundLimits {
    fn default() -> Self {
        InboundLimits {
            max_links: 4096,
            max_links_per_ip: 64,
            retry_at_pending: 64,
        }
    }
}

/// Counts inbound links per IP address against [`InboundLimits`].
#[derive(Debug)]
struct InboundCount {
    limits: InboundLimits,
    per_ip: std::sync::Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    retried: AtomicU64,
}

impl InboundCount {
    /// A slot for a link from `ip`, or `None` (counted as refused) when a bound is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<InboundSlot> {
        let Ok(mut map) = self.per_ip.lock() else {
            return None;
        };
        let total: usize = map.values().sum();
        let here = map.get(&ip).copied().unwrap_or(0);
        if total >= self.limits.max_links || here >= self.limits.max_links_per_ip {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *map.entry(ip).or_insert(0) += 1;
        Some(InboundSlot {
            count: self.clone(),
            ip,
        })
    }

    fn total(&self) -> usize {
        self.per_ip.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// One inbound link's place in [`InboundCount`], given back on drop.
#[derive(Debug)]
struct InboundSlot {
    count: Arc<InboundCount>,
    ip: IpAddr,
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.count.per_ip.lock() {
            if let Some(n) = map.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}

/// A QUIC endpoint: one UDP socket that dials links and, for relays, accepts them.
///
/// Cheap to clone; all clones share the socket. The accept machinery stops when the last
/// clone is dropped, but links already made stay up until they close or are dropped.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    quic: quinn::Endpoint,
    provider: Arc<CryptoProvider>,
    /// Transport of the links this endpoint dials ([`dial_transport_config`]).
    dial_transport: Arc<quinn::TransportConfig>,
    /// Relays: the certificate presented to peers (also when dialing). Clients: None.
    cert: Option<Arc<CertifiedKey>>,
    node_id: Option<NodeId>,
    /// Relays: finished inbound handshakes. Clients: None (they never accept).
    incoming: Option<Mutex<mpsc::Receiver<Result<Link, NetError>>>>,
    /// Relays: the inbound link count. Clients: None.
    inbound: Option<Arc<InboundCount>>,
    /// Dropping this stops the accept task (it holds a handle to `quic`).
    _stop_accepting: Option<oneshot::Sender<()>>,
    /// Tests only: dial as a version-1 node would ([`Endpoint::act_as_version_1`]).
    act_as_v1: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.inner.quic.local_addr().ok())
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

impl Endpoint {
    /// Relay endpoint: a QUIC server bound to `bind` that presents a self-signed certificate
    /// made from `identity` (DESIGN §4 "Links").
    ///
    /// Client certificates are offered but optional: a relay dialing in presents its own
    /// (its [`Link::peer_node_id`] is then known), a client presents none. The same
    /// endpoint also dials out with [`Endpoint::connect`], presenting its certificate, so a
    /// relay needs one UDP socket. Inbound handshakes run in the background (at most
    /// [`MAX_PENDING_HANDSHAKES`] at once); take the results with [`Endpoint::accept`].
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`NetError::NoRuntime`] outside a tokio runtime, [`NetError::Certificate`] or
    /// [`NetError::TlsConfig`] if the TLS setup fails, [`NetError::Bind`] (naming `bind`)
    /// when the UDP socket cannot be bound, e.g. the port is taken.
    pub fn relay(identity: &IdentityKey, bind: SocketAddr) -> Result<Self, NetError> {
        Self::relay_with_limits(identity, bind, InboundLimits::default())
    }

    /// [`Endpoint::relay`] with explicit bounds on inbound links: a connection beyond
    /// them is refused before its handshake (see [`InboundLimits`]).
    ///
    /// # Errors
    /// As [`Endpoint::relay`].
    pub fn relay_with_limits(
        identity: &IdentityKey,
        bind: SocketAddr,
        limits: InboundLimits,
    ) -> Result<Self, NetError> {
        Self::relay_with_provider(identity, bind, limits, tls::provider())
    }

    /// [`Endpoint::relay_with_limits`] with the given rustls provider instead of
    /// [`tls::provider`]: tests use it to stand in for a peer with other key exchange groups.
    pub(crate) fn relay_with_provider(
        identity: &IdentityKey,
        bind: SocketAddr,
        limits: InboundLimits,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let cert = tls::certified_key(identity, &provider)?;

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(OptionalEd25519Client::new(provider.clone())))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(cert.clone())));
        // Version 2 first: rustls picks the first of ours that the client offers.
        server_tls.alpn_protocols = vec![ALPN.to_vec(), ALPN_V1.to_vec()];
        // Clients never resume (see `client_tls`), so tickets would be wasted bytes.
        server_tls.send_tls13_tickets = 0;
        let server_crypto = QuicServerConfig::try_from(server_tls)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(Arc::new(transport_config()));

        let quic = quic_endpoint(bind, Some(server_config))
            .map_err(|source| NetError::Bind { addr: bind, source })?;

        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let inbound = Arc::new(InboundCount {
            limits,
            per_ip: std::sync::Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        });
        runtime.spawn(accept_loop(quic.clone(), tx, stop_rx, inbound.clone()));

        Ok(Endpoint {
            inner: Arc::new(Inner {
                quic,
                provider,
                dial_transport: Arc::new(dial_transport_config()),
                cert: Some(cert),
                node_id: Some(identity.node_id()),
                incoming: Some(Mutex::new(rx)),
                inbound: Some(inbound),
                _stop_accepting: Some(stop_tx),
                act_as_v1: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Client endpoint: dials only and presents no certificate, so relays cannot tell who
    /// the client is. Bound to `bind` (e.g. `127.0.0.1:0` or `0.0.0.0:0`).
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`NetError::NoRuntime`] outside a tokio runtime, [`NetError::Bind`] (naming `bind`)
    /// when the UDP socket cannot be bound.
    pub fn client(bind: SocketAddr) -> Result<Self, NetError> {
        Self::client_with_provider(bind, tls::provider())
    }

    /// [`Endpoint::client`] with the given rustls provider instead of [`tls::provider`]
    /// (see [`Endpoint::relay_with_provider`]).
    pub(crate) fn client_with_provider(
        bind: SocketAddr,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, NetError> {
        tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let quic =
            quic_endpoint(bind, None).map_err(|source| NetError::Bind { addr: bind, source })?;
        Ok(Endpoint {
            inner: Arc::new(Inner {
                quic,
                provider,
                dial_transport: Arc::new(dial_transport_config()),
                cert: None,
                node_id: None,
                incoming: None,
                inbound: None,
                _stop_accepting: None,
                act_as_v1: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The UDP address actually bound (useful after binding port 0).
    ///
    /// # Errors
    /// [`NetError::LocalAddr`] when the OS cannot report it.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.inner.quic.local_addr().map_err(NetError::LocalAddr)
    }

    /// The NodeId this endpoint proves to its peers: `Some` for relay endpoints, `None` for
    /// anonymous client endpoints.
    pub fn node_id(&self) -> Option<NodeId> {
        self.inner.node_id
    }

    /// Inbound links open now (handshakes in progress included); 0 for clients.
    pub fn inbound_links(&self) -> usize {
        self.inner.inbound.as_ref().map_or(0, |c| c.total())
    }

    /// Inbound connections refused so far by the [`InboundLimits`]; 0 for clients.
    pub fn inbound_refused(&self) -> u64 {
        self.inner
            .inbound
            .as_ref()
            .map_or(0, |c| c.refused.load(Ordering::Relaxed))
    }

    /// Inbound connection attempts answered with a QUIC Retry so far
    /// ([`InboundLimits::retry_at_pending`]); 0 for clients.
    pub fn inbound_retried(&self) -> u64 {
        self.inner
            .inbound
            .as_ref()
            .map_or(0, |c| c.retried.load(Ordering::Relaxed))
    }

    fn client_tls(&self, verifier: Arc<PinnedServer>) -> Result<quinn::ClientConfig, NetError> {
        let builder = rustls::ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut tls = match &self.inner.cert {
            Some(cert) => {
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(cert.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = if self.inner.act_as_v1.load(Ordering::Relaxed) {
            vec![ALPN_V1.to_vec()]
        } else {
            vec![ALPN.to_vec(), ALPN_V1.to_vec()]
        };
        // The name is meaningless with pinned keys; don't put one on the wire.
        tls.enable_sni = false;
        // A resumption ticket would let a relay link two of our connections.
        tls.resumption = rustls::client::Resumption::disabled();
        let crypto = QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.inner.dial_transport.clone());
        Ok(config)
    }

    /// Dial the node at `addr` and check that its certificate's Ed25519 key hashes
    /// (BLAKE3) to `expected`; the handshake is aborted otherwise. The TLS 1.3 signature
    /// check proves the peer holds that key. Relay endpoints present their certificate,
    /// client endpoints none.
    ///
    /// There is no timeout here besides QUIC's idle timeout (6 s, see
    /// [`dial_transport_config`]); callers wrap this in their own deadline.
    ///
    /// # Errors
    /// [`NetError::IdentityMismatch`] when the peer proves another identity (or a non-Ed25519
    /// key), [`NetError::Handshake`] when the handshake fails or times out,
    /// [`NetError::Connect`] when the dial cannot start (e.g. unroutable address),
    /// [`NetError::Closed`] after [`Endpoint::close`], [`NetError::TlsConfig`] if the
    /// TLS configuration cannot be built.
    pub async fn connect(&self, addr: SocketAddr, expected: NodeId) -> Result<Link, NetError> {
        let verifier = Arc::new(PinnedServer::new(expected, self.inner.provider.clone()));
        let config = self.client_tls(verifier.clone())?;
        let connecting = self
            .inner
            .quic
            .connect_with(config, addr, tls::CERT_NAME)
            .map_err(|source| match source {
                quinn::ConnectError::EndpointStopping => NetError::Closed,
                source => NetError::Connect { addr, source },
            })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(source) => {
                return Err(match verifier.refused() {
                    Some(actual) => NetError::IdentityMismatch {
                        addr,
                        expected,
                        actual,
                    },
                    None => NetError::Handshake { addr, source },
                })
            }
        };
        let ours = if self.inner.act_as_v1.load(Ordering::Relaxed) {
            1
        } else {
            PROTOCOL_VERSION
        };
        check_version(&conn, addr, ours)?;
        let link = Link::new(conn, None);
        // The verifier already enforced this; checked again so a Link from `connect` always
        // carries the identity it was asked for.
        let actual = link.peer_node_id();
        if actual != Some(expected) {
            link.close();
            return Err(NetError::IdentityMismatch {
                addr,
                expected,
                actual,
            });
        }
        Ok(link)
    }

    /// Tests only: from now on dial as a protocol-version-1 node would (offer only the
    /// version-1 ALPN and accept only version 1), to check how version 2 refuses it.
    #[doc(hidden)]
    pub fn act_as_version_1(&self) {
        self.inner.act_as_v1.store(true, Ordering::Relaxed);
    }

    /// The next inbound link whose handshake has completed.
    ///
    /// Returns `None` once the endpoint is closed, and at once for client endpoints (they
    /// never accept). A peer whose handshake failed comes back as `Some(Err(..))`
    /// ([`NetError::Handshake`]); the caller should log it and keep accepting.
    /// Several tasks may call this at once; each link goes to one of them.
    pub async fn accept(&self) -> Option<Result<Link, NetError>> {
        let incoming = self.inner.incoming.as_ref()?;
        incoming.lock().await.recv().await
    }

    /// Close every link of this endpoint at once and stop accepting. Dials after this fail
    /// with [`NetError::Closed`]; [`Endpoint::accept`] returns `None` once the handshakes
    /// in flight are drained.
    pub fn close(&self) {
        self.inner
            .quic
            .close(quinn::VarInt::from_u32(CLOSE_CODE), b"endpoint closed");
    }

    /// Wait until every connection has sent its close and drained (after
    /// [`Endpoint::close`]), so peers learn of the shutdown at once instead of by their idle
    /// timeout. Callers bound it with a timeout.
    pub async fn wait_idle(&self) {
        self.inner.quic.wait_idle().await;
    }
}

/// Takes inbound connections and runs their handshakes concurrently, so that one slow
/// peer never holds up the others.
async fn accept_loop(
    quic: quinn::Endpoint,
    tx: mpsc::Sender<Result<Link, NetError>>,
    mut stop: oneshot::Receiver<()>,
    inbound: Arc<InboundCount>,
) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let incoming = tokio::select! {
            _ = &mut stop => return,
            incoming = quic.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let addr = incoming.remote_address();
        // Handshakes pending besides this one.
        let pending = MAX_PENDING_HANDSHAKES.saturating_sub(permits.available_permits() + 1);
        if pending >= inbound.limits.retry_at_pending
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            inbound.retried.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Some(slot) = inbound.admit(addr.ip()) else {
            tracing::debug!("inbound link limit reached; refusing a connection");
            incoming.refuse();
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = match incoming.await {
                Ok(conn) => check_version(&conn, addr, PROTOCOL_VERSION)
                    .map(|()| Link::new(conn, Some(Arc::new(slot)))),
                Err(source) => {
                    tracing::debug!(error = %source, "inbound handshake failed");
                    Err(NetError::Handshake { addr, source })
                }
            };
            // Fails only when the endpoint is gone; the link is then dropped, which closes it.
            let _ = tx.send(result).await;
            drop(permit);
        });
    }
}

/// The protocol version `conn` negotiated through ALPN: 2, 1, or 0 for none.
fn negotiated_version(conn: &quinn::Connection) -> u8 {
    let protocol = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match protocol.as_deref() {
        Some(p) if p == ALPN => 2,
        Some(p) if p == ALPN_V1 => 1,
        _ => 0,
    }
}

/// Refuse a link whose negotiated version is not `ours` (§8.1): close it with
/// [`VERSION_CLOSE_CODE`] and a reason naming both versions, so the peer's operator reads
/// the same thing this side logs.
fn check_version(conn: &quinn::Connection, addr: SocketAddr, ours: u8) -> Result<(), NetError> {
    let peer = negotiated_version(conn);
    if peer == ours {
        return Ok(());
    }
    let reason = format!(
        "anonnet protocol version {peer} is not supported: this node speaks version {ours}"
    );
    conn.close(VarInt::from_u32(VERSION_CLOSE_CODE), reason.as_bytes());
    Err(NetError::Version { addr, peer, ours })
}

/// One QUIC connection to a peer, with the peer identity its certificate proved.
///
/// Cheap to clone. The connection closes when [`Link::close`] is called or when the last
/// clone (and every stream of it) is dropped.
#[derive(Clone, Debug)]
pub struct Link {
    conn: quinn::Connection,
    peer: Option<[u8; 32]>,
    /// Inbound links: the place counted against [`InboundLimits`] until the last clone goes.
    _slot: Option<Arc<InboundSlot>>,
}

impl Link {
    fn new(conn: quinn::Connection, slot: Option<Arc<InboundSlot>>) -> Self {
        let peer = tls::peer_key_of(&conn);
        Link {
            conn,
            peer,
            _slot: slot,
        }
    }

    /// The peer's 32-byte Ed25519 identity key, proved by its certificate. Always `Some`
    /// for links made with [`Endpoint::connect`]; on accepted links only when the peer
    /// presented a certificate (relays do, clients don't).
    pub fn peer_identity(&self) -> Option<[u8; 32]> {
        self.peer
    }

    /// `BLAKE3(peer_identity)`: the peer's NodeId, when it proved one.
    pub fn peer_node_id(&self) -> Option<NodeId> {
        self.peer.as_ref().map(NodeId::from_identity)
    }

    /// The peer's current UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The underlying quinn connection (stats, RTT, datagrams, close reason).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Open a bidirectional stream (one circuit leg, or one RPC). The peer learns of it
    /// only when the first bytes are written. Waits while the peer's stream limit
    /// ([`crate::MAX_BIDI_STREAMS`]) is reached.
    ///
    /// # Errors
    /// [`NetError::Connection`] when the link is closed or lost.
    pub async fn open_bi(&self) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        Ok(self.conn.open_bi().await?)
    }

    /// The next bidirectional stream the peer opened.
    ///
    /// # Errors
    /// [`NetError::Connection`] when the link is closed or lost.
    pub async fn accept_bi(&self) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        Ok(self.conn.accept_bi().await?)
    }

    /// Whether the link is closed (by either side, by an error or by the idle timeout).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Close the link at once for every clone; unsent and unread data is discarded.
    pub fn close(&self) {
        self.conn
            .close(quinn::VarInt::from_u32(CLOSE_CODE), b"link closed");
    }
}

/// The quinn endpoint of a node on the socket [`udp_socket`] binds at `bind`: accepting
/// with `server` if given (a relay), dialing only if not (a client, whose IPv6 socket also
/// takes IPv4, as quinn's `Endpoint::client` makes it). Must be called inside a tokio
/// runtime.
///
/// # Errors
/// The socket's creation or `bind` error (address in use, not local, no permission).
fn quic_endpoint(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let dual_stack = server.is_none();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        udp_socket(bind, dual_stack)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A UDP socket bound at `bind` for which the kernel was asked for [`UDP_SOCKET_BUFFER`]
/// bytes of receive and send buffer (docs/protocol.md §8.1, "Socket buffers"); with
/// `dual_stack`, an IPv6 socket also takes IPv4 where the system allows it. The kernel
/// caps the buffers at `net.core.rmem_max` / `wmem_max`; a smaller grant is logged once
/// per process at `info` and is not an error.
///
/// # Errors
/// The socket's creation or `bind` error (address in use, not local, no permission).
fn udp_socket(bind: SocketAddr, dual_stack: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() && dual_stack {
        // Best effort, as quinn does: a v6-only socket still dials IPv6 relays.
        let _ = sock.set_only_v6(false);
    }
    // Best effort: a refused size leaves the kernel's default, what quinn would use.
    let _ = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_SOCKET_BUFFER);
    sock.bind(&bind.into())?;
    // Linux reports twice what it grants (it counts its own bookkeeping in), so a grant
    // below the size asked for is at most half of it.
    let granted = sock.recv_buffer_size().unwrap_or(0);
    if granted < UDP_SOCKET_BUFFER {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing::info!(
                "UDP receive buffer is {granted} bytes, less than the {UDP_SOCKET_BUFFER} \
                 asked for: bursts of packets may be dropped before anonnet reads them; \
                 raise net.core.rmem_max (Linux) to at least {UDP_SOCKET_BUFFER}"
            );
        });
    }
    Ok(sock.into())
}

#[cfg(all(test, target_os = "linux"))]
mod socket_tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_socket_gets_the_larger_buffer_the_kernel_allows() {
        let sock = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let granted = socket2::SockRef::from(&sock).recv_buffer_size().unwrap();
        // Linux grants min(asked, rmem_max) and reports twice that.
        let expected = 2 * UDP_SOCKET_BUFFER.min(sysctl("rmem_max"));
        assert_eq!(granted, expected);
    }

    #[test]
    fn an_ipv6_client_socket_also_takes_ipv4() {
        // The wildcard: Linux makes a socket bound to one IPv6 address v6-only anyway.
        let Ok(sock) = udp_socket("[::]:0".parse().unwrap(), true) else {
            return; // no IPv6 on this machine
        };
        assert!(!socket2::SockRef::from(&sock).only_v6().unwrap());
    }
}
