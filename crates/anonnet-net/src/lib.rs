#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod congestion;
mod endpoint;
pub mod logging;
mod manager;
pub mod rpc;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use anonnet_crypto::NodeId;
use quinn::VarInt;

pub use endpoint::{Endpoint, InboundLimits, Link, MAX_PENDING_HANDSHAKES};
pub use manager::LinkManager;

/// The anonnet protocol version this code speaks (docs/protocol.md §1, §8.1).
pub const PROTOCOL_VERSION: u8 = 2;
/// ALPN protocol name of version-2 anonnet links.
pub const ALPN: &[u8] = b"anonnet/2";
/// ALPN protocol name of version 1. Still offered, so that a version-1 peer completes the
/// TLS handshake and is then refused with an error naming both versions
/// ([`NetError::Version`]) rather than a bare TLS alert; nothing is ever spoken over it.
pub const ALPN_V1: &[u8] = b"anonnet/1";
/// QUIC application close code of a link refused for its protocol version.
pub const VERSION_CLOSE_CODE: u32 = 2;

/// Bidirectional streams a peer may have open towards us at once (circuit legs plus RPCs).
/// Past it, the peer's `open_bi` waits silently, so it is set high.
pub const MAX_BIDI_STREAMS: u32 = 4096;
/// Receive window per stream, in bytes (2 MiB).
pub const STREAM_RECEIVE_WINDOW: u32 = 2 << 20;
/// Receive window per connection, in bytes (16 MiB): bounds what one peer can make us buffer.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;
/// Send window per connection, in bytes (16 MiB).
pub const CONNECTION_SEND_WINDOW: u64 = 16 << 20;
/// Receive and send buffer asked of the kernel for each endpoint's UDP socket (bytes,
/// 4 MiB; docs/protocol.md §8.1, "Socket buffers"). Linux's default of 208 KiB holds
/// about 90 full packets: on the `broadband` WAN testnet relays dropped 0.3–0.6 % of the
/// datagrams they received there, each a loss that stalls a circuit's ordered stream.
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;
/// Keep-alive interval: an idle link sends a PING this often (2 s), so NAT bindings and the
/// idle timeout never expire a link that is wanted.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Ack-eliciting packets a peer may receive before it must acknowledge (QUIC ACK
/// frequency extension, draft-ietf-quic-ack-frequency): 9, i.e. one ACK per 10 packets
/// instead of one per 2. In a bulk transfer every leg's receiver otherwise sends (and its
/// sender processes) an ACK datagram for every other data packet.
pub const ACK_ELICITING_THRESHOLD: u32 = 9;
/// Longest a peer may hold back an ACK below that threshold (5 ms; QUIC's default is
/// 25 ms), so the tail of a burst is acknowledged promptly.
pub const ACK_DELAY: Duration = Duration::from_millis(5);
/// Idle timeout in milliseconds (6 s): a link with no packets from the peer for this long
/// is closed, and its circuits with it. This is how a crashed neighbour is noticed (a
/// relay that stops cleanly closes its links at once): short enough that a download
/// through a dead relay fails, and the next request gets a new circuit, within seconds
/// (DESIGN §6). It also bounds how long a handshake can hang.
pub const MAX_IDLE_TIMEOUT_MS: u32 = 6_000;

/// Errors of the link layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// An endpoint was created outside a tokio runtime.
    #[error("anonnet-net endpoints must be created inside a tokio runtime")]
    NoRuntime,
    /// The UDP socket could not be bound (address in use, not permitted, not local).
    #[error("cannot bind UDP socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Building the self-signed certificate from the identity key failed at `step`
    /// (PKCS#8 encoding, rcgen loading or signing, rustls accepting the key).
    #[error("cannot build the TLS certificate from the identity key ({step}): {source}")]
    Certificate {
        /// Which step failed.
        step: &'static str,
        /// The library's error (ed25519-dalek's PKCS#8, rcgen or rustls).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rustls refused the TLS configuration (a bug, not a network event).
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// quinn found no TLS 1.3 cipher suite it can use for QUIC's initial packets in the
    /// configuration (a bug, not a network event).
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A dial could not even start (e.g. an unusable address).
    #[error("cannot dial {addr}: {source}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC/TLS handshake failed or timed out (peer unreachable, wrong protocol,
    /// refused certificate, ...).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The peer speaks another protocol version (§8.1): the link was closed at once,
    /// with a close reason naming both versions. There is no downgrade.
    #[error("peer at {addr} speaks anonnet protocol version {peer}, this node speaks version {ours}: the older side must be upgraded")]
    Version {
        /// The peer's address.
        addr: SocketAddr,
        /// The version the peer negotiated.
        peer: u8,
        /// The version this node speaks.
        ours: u8,
    },
    /// The peer proved a different identity than the one dialed: the handshake was aborted.
    #[error("peer at {addr} is not {expected}: its certificate proves {}", actual.map_or_else(|| "a non-Ed25519 key".to_string(), |id| id.to_string()))]
    IdentityMismatch {
        /// The address dialed.
        addr: SocketAddr,
        /// The NodeId the caller asked for.
        expected: NodeId,
        /// The NodeId the certificate proves; None when its key is not Ed25519.
        actual: Option<NodeId>,
    },
    /// The endpoint was closed with [`Endpoint::close`].
    #[error("endpoint closed")]
    Closed,
    /// Not dialed: this peer, at this address, failed a dial or let its link time out
    /// `ago` (less than the memory of [`LinkManager::remember_unreachable`]).
    #[error("peer at {addr} was unreachable {ago:?} ago; not dialed again yet")]
    RecentlyUnreachable {
        /// The address that was not dialed.
        addr: SocketAddr,
        /// How long ago it was found unreachable.
        ago: std::time::Duration,
    },
    /// The link was closed or lost while opening or accepting a stream.
    #[error("link lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The OS could not report the socket's local address.
    #[error("cannot read the local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Open (or, for a negative `delta`, close) a package window kept as `semaphore`
/// permits by `delta` cells: a circuit `SENDME` opens it by
/// `anonnet_wire::flow::SendmeTags::on_sendme`'s answer (docs/protocol.md §6.4). A
/// shrink takes what permits are free now; permits held by cells being sent are simply
/// not returned later, as `forget` drops them.
pub fn open_window(semaphore: &tokio::sync::Semaphore, delta: i64) {
    let n = usize::try_from(delta.unsigned_abs()).unwrap_or(usize::MAX);
    if delta >= 0 {
        semaphore.add_permits(n);
    } else {
        semaphore.forget_permits(n);
    }
}

/// Whether links pad every QUIC datagram to the path MTU (see [`transport_config`]).
pub const PAD_TO_MTU: bool = false;

/// Transport tuning shared by both sides of every link.
///
/// [`MAX_BIDI_STREAMS`] bidirectional streams, no unidirectional streams, no datagrams,
/// windows [`STREAM_RECEIVE_WINDOW`] / [`CONNECTION_RECEIVE_WINDOW`] /
/// [`CONNECTION_SEND_WINDOW`], keep-alive [`KEEP_ALIVE_INTERVAL`], idle timeout
/// [`MAX_IDLE_TIMEOUT_MS`], ACK frequency [`ACK_ELICITING_THRESHOLD`] / [`ACK_DELAY`],
/// congestion control BBR with its window capped at [`congestion::CAP_GAIN_PCT`] % of what
/// the link has in flight and losses passed on only above 2 %
/// ([`congestion::CappedBbrConfig`]; quinn marks its BBR
/// experimental; CUBIC collapses under the loss of real paths, see the body). quinn's
/// default fair queuing of streams of equal priority stays on: circuits sharing a link
/// are sent in turn.
///
/// `pad_to_mtu` is OFF, against DESIGN §4 "Circuits", because it breaks bulk transfers in
/// quinn-proto 0.11.19: `PacketBuilder::finish_and_track` counts a *padded* ACK-only packet
/// as bytes in flight, and nothing ever acknowledges an ACK-only packet, so the receiving
/// side of a one-way transfer fills its congestion window with ACKs and the transfer stalls
/// after 0.5–2 MiB (reproduced by `anonnet-client`'s `bulk_download_does_not_stall` test
/// when this is switched on). See `docs/protocol.md` §10.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(CONNECTION_SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(VarInt::from_u32(MAX_IDLE_TIMEOUT_MS).into()))
        .pad_to_mtu(PAD_TO_MTU);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    // BBR, not quinn's default CUBIC: on the WAN testnet's broadband profile (0.1 % loss
    // per link direction) CUBIC held a 3-hop download to 0.35 MB/s and BBR to 1.0 MB/s
    // (docs/performance.md); loopback throughput was the same. Its window is capped to
    // what the link uses, which keeps quinn's pacing on (crate::congestion).
    t.congestion_controller_factory(std::sync::Arc::new(congestion::CappedBbrConfig::default()));
    t
}

/// [`transport_config`] for links we dial: the same, except that the peer may open no
/// stream towards us. In anonnet only the dialing side opens streams (circuit legs,
/// directory and DHT requests, authority tests; docs/protocol.md §10), and quinn-proto
/// sets up per-stream-id state for every stream the peer is allowed at connection start
/// (about 0.3 MiB for [`MAX_BIDI_STREAMS`]), so allowing none saves that on every link a
/// node dials (docs/performance.md, "A network at scale"). A peer that opens a stream
/// anyway waits on flow control for ever; nothing of ours does.
pub fn dial_transport_config() -> quinn::TransportConfig {
    let mut t = transport_config();
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t
}

impl anonnet_error::HasKind for NetError {
    /// A port that cannot be bound or no runtime is
    /// [`anonnet_error::ErrorKind::LocalResource`]; a dial or handshake that fails,
    /// a lost link or a closed endpoint [`anonnet_error::ErrorKind::CircuitFailed`] (the
    /// relay is unreachable); a peer of another protocol version or identity
    /// [`anonnet_error::ErrorKind::Protocol`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        use anonnet_error::ErrorKind as K;
        match self {
            NetError::NoRuntime
            | NetError::Bind { .. }
            | NetError::LocalAddr(_)
            | NetError::Certificate { .. }
            | NetError::TlsConfig(_)
            | NetError::QuicCrypto(_) => K::LocalResource,
            NetError::Connect { .. }
            | NetError::Handshake { .. }
            | NetError::RecentlyUnreachable { .. }
            | NetError::Closed
            | NetError::Connection(_) => K::CircuitFailed,
            NetError::Version { .. } | NetError::IdentityMismatch { .. } => K::Protocol,
        }
    }
}

#[cfg(test)]
mod tests;
