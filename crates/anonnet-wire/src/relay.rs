//! Relay messages: what travels inside the onion layers, end to end between the client and
//! one hop. Spec: `docs/protocol.md` §6 "Relay messages".
//!
//! Layout inside the opened layer (the `inner` bytes of a `DELIVER` layer):
//! `relay_cmd (1) ‖ stream_id u16 ‖ len u16 ‖ payload [len] ‖ padding`. The padding is
//! unpredictable bytes in protocol version 2 (§6.1, §7), never checked by the receiver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;

use crate::cell::KEY_LEN;
use crate::hs::NameReceipt;
use crate::{invalid, DestroyReason, Reader, WireError, Writer};

/// Most receipts one `NAME_RECEIPTS` carries (11 × 80 bytes fit a backward message).
pub const MAX_NAME_RECEIPTS: usize = 11;
/// Bytes of the relay message header: command (1) ‖ stream id (2) ‖ length (2).
pub const RELAY_HEADER_LEN: usize = 5;
/// Version byte of an authenticated circuit-level SENDME.
pub const SENDME_VERSION: u8 = 1;

/// A stream's number within its circuit. 0 means "the circuit itself" (EXTEND, EXTENDED,
/// TRUNCATED, DROP); streams use 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u16);

impl StreamId {
    /// The circuit-level id 0.
    pub const CIRCUIT: StreamId = StreamId(0);
}

/// Where a `BEGIN` asks the exit to connect. Host names travel unresolved: the exit
/// resolves them, never the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DNS name, 1..=255 bytes of printable ASCII without spaces.
    Host(String),
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Host(h) => f.write_str(h),
            Target::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Target::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// Most answers one `RESOLVED` carries (§6.2).
pub const MAX_RESOLVED_ANSWERS: usize = 16;

/// One answer of a `RESOLVED` (§6.2): `type u8 ‖ len u8 ‖ value [len]`, Tor's answer types
/// without the TTL (the exit's resolver gives none, and a cache age would tell the client
/// what other users of the exit looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedAnswer {
    /// Type 0x04 (len 4) or 0x06 (len 16): an address the name resolved to.
    Ip(IpAddr),
    /// Type 0x00 (len 1..=255, printable ASCII): the name an address resolved to.
    Host(String),
    /// Type 0xF0 (len 0): the lookup failed for a reason that may pass (a timeout, the
    /// exit's lookup limit); worth asking again later.
    TransientError,
    /// Type 0xF1 (len 0): the name or address does not resolve.
    Error,
}

impl ResolvedAnswer {
    const HOST: u8 = 0x00;
    const IPV4: u8 = 0x04;
    const IPV6: u8 = 0x06;
    const TRANSIENT: u8 = 0xF0;
    const ERROR: u8 = 0xF1;

    fn put(&self, w: &mut Writer) -> Result<(), WireError> {
        match self {
            ResolvedAnswer::Ip(IpAddr::V4(a)) => {
                w.put(&[Self::IPV4, 4]);
                w.put(&a.octets());
            }
            ResolvedAnswer::Ip(IpAddr::V6(a)) => {
                w.put(&[Self::IPV6, 16]);
                w.put(&a.octets());
            }
            ResolvedAnswer::Host(h) => {
                check_host(h)?;
                w.put(&[Self::HOST, h.len() as u8]);
                w.put(h.as_bytes());
            }
            ResolvedAnswer::TransientError => w.put(&[Self::TRANSIENT, 0]),
            ResolvedAnswer::Error => w.put(&[Self::ERROR, 0]),
        }
        Ok(())
    }

    fn take(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let kind = r.take_u8()?;
        let len = usize::from(r.take_u8()?);
        let value = r.take(len)?;
        let mut v = Reader::new(value);
        let answer = match (kind, len) {
            (Self::IPV4, 4) => ResolvedAnswer::Ip(IpAddr::V4(Ipv4Addr::from(v.take_array::<4>()?))),
            (Self::IPV6, 16) => {
                ResolvedAnswer::Ip(IpAddr::V6(Ipv6Addr::from(v.take_array::<16>()?)))
            }
            (Self::HOST, _) => {
                let host = std::str::from_utf8(v.take_rest())
                    .map_err(|_| invalid("resolved host name", "not ASCII"))?;
                check_host(host)?;
                ResolvedAnswer::Host(host.to_owned())
            }
            (Self::TRANSIENT, 0) => ResolvedAnswer::TransientError,
            (Self::ERROR, 0) => ResolvedAnswer::Error,
            _ => return Err(invalid("resolved answer", "unknown type or wrong length")),
        };
        v.finish()?;
        Ok(answer)
    }

    /// True for the two error types.
    pub fn is_error(&self) -> bool {
        matches!(self, ResolvedAnswer::TransientError | ResolvedAnswer::Error)
    }
}

/// Check the answers of a `RESOLVED` (§6.2): 1..=[`MAX_RESOLVED_ANSWERS`], at most one
/// host name, and an error type only as the single answer.
///
/// # Errors
/// [`WireError::Invalid`] naming the rule broken.
pub fn check_resolved(answers: &[ResolvedAnswer]) -> Result<(), WireError> {
    if answers.is_empty() || answers.len() > MAX_RESOLVED_ANSWERS {
        return Err(invalid("RESOLVED", "answers not in 1..=16"));
    }
    let hosts = answers
        .iter()
        .filter(|a| matches!(a, ResolvedAnswer::Host(_)))
        .count();
    if hosts > 1 {
        return Err(invalid("RESOLVED", "more than one host name"));
    }
    if answers.len() > 1 && answers.iter().any(ResolvedAnswer::is_error) {
        return Err(invalid("RESOLVED", "an error beside other answers"));
    }
    Ok(())
}

/// Why a stream ended (the one-byte reason of `END`, Tor's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Unspecified failure.
    Misc,
    /// The exit could not resolve the host name.
    ResolveFailed,
    /// The destination refused the connection.
    ConnectRefused,
    /// The exit policy does not allow the destination.
    ExitPolicy,
    /// The circuit is being destroyed.
    Destroy,
    /// The stream closed normally.
    Done,
    /// Connecting timed out.
    Timeout,
    /// No route to the destination (network or host unreachable).
    NoRoute,
    /// The exit had an internal error.
    Internal,
    /// The exit is out of resources (stream limit).
    ResourceLimit,
    /// The destination reset the connection.
    ConnReset,
    /// The other side broke the protocol.
    Protocol,
    /// Some other code, kept as received.
    Other(u8),
}

impl EndReason {
    /// The reason byte.
    pub fn to_byte(self) -> u8 {
        match self {
            EndReason::Misc => 1,
            EndReason::ResolveFailed => 2,
            EndReason::ConnectRefused => 3,
            EndReason::ExitPolicy => 4,
            EndReason::Destroy => 5,
            EndReason::Done => 6,
            EndReason::Timeout => 7,
            EndReason::NoRoute => 8,
            EndReason::Internal => 10,
            EndReason::ResourceLimit => 11,
            EndReason::ConnReset => 12,
            EndReason::Protocol => 13,
            EndReason::Other(b) => b,
        }
    }

    /// The reason for a byte; unknown codes are kept as [`EndReason::Other`].
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => EndReason::Misc,
            2 => EndReason::ResolveFailed,
            3 => EndReason::ConnectRefused,
            4 => EndReason::ExitPolicy,
            5 => EndReason::Destroy,
            6 => EndReason::Done,
            7 => EndReason::Timeout,
            8 => EndReason::NoRoute,
            10 => EndReason::Internal,
            11 => EndReason::ResourceLimit,
            12 => EndReason::ConnReset,
            13 => EndReason::Protocol,
            other => EndReason::Other(other),
        }
    }
}

/// One relay message (§6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMsg {
    /// Open a stream at the exit: `atype u8 ‖ address ‖ port u16`, atype 1 = host name
    /// (`len u8 ‖ bytes`), 4 = IPv4 (4 bytes), 6 = IPv6 (16 bytes).
    Begin {
        /// The destination host.
        target: Target,
        /// The destination TCP port (1..=65535).
        port: u16,
    },
    /// Ask the exit to resolve (§6.2, §8.3): `atype u8 ‖ address`, as in `BEGIN` without
    /// the port. A host name (atype 1) asks for its addresses; an IPv4 or IPv6 address
    /// (atype 4, 6) for its name (a reverse lookup). The stream id is used for this one
    /// question and is done when `RESOLVED` or `END` comes back.
    Resolve(Target),
    /// The exit's answer to `RESOLVE` (§6.2): `n u8 ‖ n × answer`, 1..=16 answers
    /// ([`ResolvedAnswer`], [`check_resolved`]). It ends the stream.
    Resolved(Vec<ResolvedAnswer>),
    /// Stream bytes, 1..=`max_data` bytes.
    Data(Bytes),
    /// The stream is closed: `reason u8`.
    End(EndReason),
    /// The exit connected the stream. Empty payload.
    Connected,
    /// Extend the circuit to another relay: `node_id [32] ‖ atype u8 (4|6) ‖ ip ‖ port u16 ‖
    /// onion_key [32] ‖ client_pk [32]`.
    Extend {
        /// NodeId of the next relay (pinned when dialing it).
        node_id: [u8; KEY_LEN],
        /// Its QUIC address.
        addr: SocketAddr,
        /// Its onion key `B`.
        onion_key: [u8; KEY_LEN],
        /// The client's ephemeral key `X` for the new hop.
        client_pk: [u8; KEY_LEN],
    },
    /// The new hop's `CREATED`, passed back: `server_pk [32] ‖ auth [32]`.
    Extended {
        /// The new hop's ephemeral key `Y`.
        server_pk: [u8; KEY_LEN],
        /// The new hop's handshake MAC.
        auth: [u8; KEY_LEN],
    },
    /// Extend the circuit with the hybrid handshake (§5.4, §6.2): `atype u8 (4|6) ‖ ip ‖
    /// port u16 ‖ handshake_type u16 (= 2) ‖ part`, `part` being the first bytes of the
    /// 1280-byte hello; the rest follows in [`RelayMsg::HandshakeCont`] messages. The next
    /// relay's NodeId is the hello's first 32 bytes.
    Extend2 {
        /// The next relay's QUIC address.
        addr: SocketAddr,
        /// The handshake type (2).
        handshake_type: u16,
        /// The first part of the hello.
        part: Bytes,
    },
    /// The new hop's type-2 reply, passed back (§6.2): `part` is its first bytes, the rest
    /// follows in [`RelayMsg::HandshakeCont`] messages.
    Extended2(Bytes),
    /// More bytes of the hello of an [`RelayMsg::Extend2`] (forward) or of the reply of an
    /// [`RelayMsg::Extended2`] (backward), in order (§6.2).
    HandshakeCont(Bytes),
    /// Extending failed, or the rest of the circuit went away: `reason u8`.
    Truncated(DestroyReason),
    /// Long-range padding; dropped by the hop it reaches. Empty payload.
    Drop,
    /// Flow-control acknowledgement (§6.4). On stream 0 (circuit level) the payload is
    /// `version u8 (= 1) ‖ tag [16]`: the onion-layer tag of the DATA cell that completed
    /// the acknowledged increment, which only a receiver of that cell can know. On a stream
    /// the payload is empty.
    Sendme(Option<[u8; 16]>),
    /// Service → introduction point (§13.2): `auth_key [32] ‖ signature [64]`, the
    /// Ed25519 signature by `auth_key` over `"anonnet-hs-establish-intro-v1" ‖ auth_key ‖ Y`
    /// where `Y` is the introduction point's handshake key of this circuit.
    EstablishIntro {
        /// The introduction point's authentication key (Ed25519, per service and relay).
        auth_key: [u8; KEY_LEN],
        /// Signature binding the key to this circuit.
        signature: [u8; 64],
    },
    /// Client → rendezvous point (§13.3): `cookie [20]`.
    EstablishRendezvous {
        /// Random rendezvous cookie.
        cookie: [u8; COOKIE_LEN],
    },
    /// Client → introduction point (§13.4): `auth_key [32] ‖ sealed [..]`.
    Introduce1 {
        /// Which service registration at this relay to introduce to.
        auth_key: [u8; KEY_LEN],
        /// The introduction sealed to the service's encryption key (§12.4).
        sealed: Bytes,
    },
    /// Introduction point → service (§13.4): the `INTRODUCE1` payload unchanged.
    Introduce2 {
        /// The registration it arrived for.
        auth_key: [u8; KEY_LEN],
        /// The sealed introduction.
        sealed: Bytes,
    },
    /// Service → rendezvous point (§13.5): `cookie [20] ‖ Y [32] ‖ AUTH [32]`.
    Rendezvous1 {
        /// The client's rendezvous cookie.
        cookie: [u8; COOKIE_LEN],
        /// The service's ephemeral key `Y` of the end-to-end handshake.
        server_pk: [u8; KEY_LEN],
        /// The service's handshake MAC.
        auth: [u8; KEY_LEN],
    },
    /// Rendezvous point → client (§13.5): `Y [32] ‖ AUTH [32]`.
    Rendezvous2 {
        /// The service's ephemeral key `Y`.
        server_pk: [u8; KEY_LEN],
        /// The service's handshake MAC.
        auth: [u8; KEY_LEN],
    },
    /// Introduction point → service: the registration is active. Empty payload.
    IntroEstablished,
    /// Rendezvous point → client: the cookie is registered. Empty payload.
    RendezvousEstablished,
    /// Introduction point → client: `status u8` ([`INTRODUCE_OK`], [`INTRODUCE_UNKNOWN`],
    /// [`INTRODUCE_BUSY`]).
    IntroduceAck(u8),
    /// Client → last hop (§13.6): fetch DHT records on the client's behalf, `key [32] ‖
    /// kind u8`.
    DhtFetch {
        /// The DHT key.
        key: [u8; KEY_LEN],
        /// The record kind wanted (§11.3, §12.6).
        kind: u8,
    },
    /// Client → last hop (§13.6): store a DHT record on the client's behalf, `key [32] ‖
    /// kind u8 ‖ body [..]`.
    DhtStore {
        /// The DHT key.
        key: [u8; KEY_LEN],
        /// The record kind.
        kind: u8,
        /// The record body.
        body: Bytes,
    },
    /// Client → last hop (§12.5, §13.6): register a `.dark` name with the network's
    /// authorities on the client's behalf. `record [..]`: a kind-3 record (§12.5) without
    /// receipts.
    NameRegister {
        /// The encoded record.
        record: Bytes,
    },
    /// Last hop → client (§12.5, §13.6): `asked u8 ‖ refused u8 ‖ n u8 ‖ n × receipt
    /// [80]`: how many authorities were asked, how many refused (the name is another
    /// owner's there, or the record did not verify), and the receipts of the others
    /// (`n ≤` [`MAX_NAME_RECEIPTS`]).
    NameReceipts {
        /// Authorities the relay asked.
        asked: u8,
        /// Authorities that refused.
        refused: u8,
        /// Their receipts, unchecked (the client verifies them).
        receipts: Vec<NameReceipt>,
    },
    /// Last hop → client (§13.6): `status u8 ‖ index u8 ‖ count u8 ‖ kind u8 ‖ body [..]`.
    /// A fetch answers with `count` cells (`index` 0..count), one record each, or one
    /// cell with `count = 0`; a store answers with one cell whose `count` is the number of
    /// storage nodes that accepted the record.
    DhtResult {
        /// [`DHT_OK`], [`DHT_NOT_FOUND`], [`DHT_REFUSED`] or [`DHT_UNAVAILABLE`].
        status: u8,
        /// Position of this record in the answer.
        index: u8,
        /// Records in the answer (fetch) or nodes that stored (store).
        count: u8,
        /// Record kind (0 when no record).
        kind: u8,
        /// Record body (empty when no record).
        body: Bytes,
    },
}

/// What an `ESTABLISH_INTRO` signature covers, before `auth_key ‖ Y` (§13.2).
pub const ESTABLISH_INTRO_CONTEXT: &[u8] = b"anonnet-hs-establish-intro-v1";
/// Bytes of a rendezvous cookie.
pub const COOKIE_LEN: usize = 20;
/// `INTRODUCE_ACK` status: the introduction was passed to the service.
pub const INTRODUCE_OK: u8 = 0;
/// `INTRODUCE_ACK` status: no service is registered under that key here.
pub const INTRODUCE_UNKNOWN: u8 = 1;
/// `INTRODUCE_ACK` status: the service's circuit is congested or over its rate.
pub const INTRODUCE_BUSY: u8 = 2;
/// `DHT_RESULT` status: records found / record stored.
pub const DHT_OK: u8 = 0;
/// `DHT_RESULT` status: no record under the key.
pub const DHT_NOT_FOUND: u8 = 1;
/// `DHT_RESULT` status: no storage node accepted the record.
pub const DHT_REFUSED: u8 = 2;
/// `DHT_RESULT` status: the relay runs no DHT, or is over its limit of DHT requests.
pub const DHT_UNAVAILABLE: u8 = 3;

impl RelayMsg {
    fn command(&self) -> u8 {
        match self {
            RelayMsg::Begin { .. } => 1,
            RelayMsg::Data(_) => 2,
            RelayMsg::End(_) => 3,
            RelayMsg::Connected => 4,
            RelayMsg::Extend { .. } => 6,
            RelayMsg::Extended { .. } => 7,
            RelayMsg::Extend2 { .. } => 11,
            RelayMsg::Extended2(_) => 12,
            RelayMsg::HandshakeCont(_) => 13,
            RelayMsg::Resolve(_) => 14,
            RelayMsg::Resolved(_) => 15,
            RelayMsg::Truncated(_) => 9,
            RelayMsg::Drop => 10,
            RelayMsg::Sendme(_) => 5,
            RelayMsg::EstablishIntro { .. } => 32,
            RelayMsg::EstablishRendezvous { .. } => 33,
            RelayMsg::Introduce1 { .. } => 34,
            RelayMsg::Introduce2 { .. } => 35,
            RelayMsg::Rendezvous1 { .. } => 36,
            RelayMsg::Rendezvous2 { .. } => 37,
            RelayMsg::IntroEstablished => 38,
            RelayMsg::RendezvousEstablished => 39,
            RelayMsg::IntroduceAck(_) => 40,
            RelayMsg::DhtFetch { .. } => 48,
            RelayMsg::DhtStore { .. } => 49,
            RelayMsg::DhtResult { .. } => 50,
            RelayMsg::NameRegister { .. } => 51,
            RelayMsg::NameReceipts { .. } => 52,
        }
    }

    /// True for the hidden-service and DHT messages of §13 (all on stream 0).
    pub fn is_hs(&self) -> bool {
        self.command() >= 32
    }

    /// `Some(true)` for messages that must use stream 0, `Some(false)` for messages that
    /// must use a stream, `None` for SENDME (either; its payload says which).
    fn is_circuit_level(&self) -> Option<bool> {
        match self {
            RelayMsg::Extend { .. }
            | RelayMsg::Extended { .. }
            | RelayMsg::Extend2 { .. }
            | RelayMsg::Extended2(_)
            | RelayMsg::HandshakeCont(_)
            | RelayMsg::Truncated(_)
            | RelayMsg::Drop => Some(true),
            m if m.is_hs() => Some(true),
            RelayMsg::Sendme(tag) => Some(tag.is_some()),
            _ => Some(false),
        }
    }
}

/// A relay message with the stream it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayCell {
    /// The stream, or [`StreamId::CIRCUIT`] for circuit-level messages.
    pub stream_id: StreamId,
    /// The message.
    pub msg: RelayMsg,
}

pub(crate) fn put_ip(w: &mut Writer, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            w.put_u8(4);
            w.put(&a.octets());
        }
        IpAddr::V6(a) => {
            w.put_u8(6);
            w.put(&a.octets());
        }
    }
}

pub(crate) fn take_ip(r: &mut Reader<'_>, atype: u8) -> Result<IpAddr, WireError> {
    match atype {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(r.take_array::<4>()?))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(r.take_array::<16>()?))),
        _ => Err(invalid("address type", "not 4 or 6")),
    }
}

/// Write a `BEGIN`/`RESOLVE` address: `atype u8 ‖ address` (§6.2).
fn put_target(w: &mut Writer, target: &Target) -> Result<(), WireError> {
    match target {
        Target::Host(h) => {
            check_host(h)?;
            w.put_u8(1);
            w.put_u8(h.len() as u8);
            w.put(h.as_bytes());
        }
        Target::Ip(ip) => put_ip(w, *ip),
    }
    Ok(())
}

/// Read a `BEGIN`/`RESOLVE` address: `atype u8 ‖ address` (§6.2).
fn take_target(p: &mut Reader<'_>) -> Result<Target, WireError> {
    let atype = p.take_u8()?;
    if atype == 1 {
        let n = usize::from(p.take_u8()?);
        let host =
            std::str::from_utf8(p.take(n)?).map_err(|_| invalid("host name", "not ASCII"))?;
        check_host(host)?;
        Ok(Target::Host(host.to_owned()))
    } else {
        Ok(Target::Ip(take_ip(p, atype)?))
    }
}

/// Check a host name for `BEGIN`: 1..=255 bytes of printable ASCII, no spaces.
///
/// # Errors
/// [`WireError::Invalid`] otherwise.
pub fn check_host(host: &str) -> Result<(), WireError> {
    if host.is_empty() || host.len() > 255 {
        return Err(invalid("host name", "length not in 1..=255"));
    }
    if !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("host name", "not printable ASCII"));
    }
    Ok(())
}

impl RelayCell {
    /// A cell for `msg` on `stream_id`.
    pub fn new(stream_id: StreamId, msg: RelayMsg) -> Self {
        RelayCell { stream_id, msg }
    }

    /// The most payload bytes that fit in an inner area of `inner_len` bytes.
    pub fn max_payload(inner_len: usize) -> usize {
        inner_len.saturating_sub(RELAY_HEADER_LEN)
    }

    /// Write the message into `out` (the whole inner area), zero-filling the rest, and
    /// return the message's length in bytes (header and payload); the sealer fills what
    /// follows with unpredictable padding (§7).
    ///
    /// # Errors
    /// [`WireError::TooLong`] when the payload does not fit, [`WireError::Invalid`] when
    /// the stream id does not suit the command or a host name is invalid.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, WireError> {
        let circuit_level = self.msg.is_circuit_level();
        if circuit_level != Some(self.stream_id == StreamId::CIRCUIT) {
            return Err(invalid("stream id", "0 exactly for circuit-level messages"));
        }
        let room = Self::max_payload(out.len());
        let out_len = out.len();
        let (header, rest) =
            out.split_at_mut_checked(RELAY_HEADER_LEN)
                .ok_or(WireError::TooLong {
                    what: "relay header",
                    len: RELAY_HEADER_LEN,
                    room: out_len,
                })?;
        let payload_len = match &self.msg {
            RelayMsg::Data(data) => {
                if data.is_empty() {
                    return Err(invalid("DATA", "empty"));
                }
                let dst = rest.get_mut(..data.len()).ok_or(WireError::TooLong {
                    what: "DATA",
                    len: data.len(),
                    room,
                })?;
                dst.copy_from_slice(data);
                data.len()
            }
            other => {
                let payload = Self::encode_payload(other)?;
                let dst = rest.get_mut(..payload.len()).ok_or(WireError::TooLong {
                    what: "relay payload",
                    len: payload.len(),
                    room,
                })?;
                dst.copy_from_slice(&payload);
                payload.len()
            }
        };
        let len = u16::try_from(payload_len).map_err(|_| WireError::TooLong {
            what: "relay payload",
            len: payload_len,
            room: usize::from(u16::MAX),
        })?;
        header.copy_from_slice(&[
            self.msg.command(),
            self.stream_id.0.to_be_bytes()[0],
            self.stream_id.0.to_be_bytes()[1],
            len.to_be_bytes()[0],
            len.to_be_bytes()[1],
        ]);
        if let Some(pad) = rest.get_mut(payload_len..) {
            pad.fill(0);
        }
        Ok(RELAY_HEADER_LEN + payload_len)
    }

    fn encode_payload(msg: &RelayMsg) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::new();
        match msg {
            RelayMsg::Begin { target, port } => {
                if *port == 0 {
                    return Err(invalid("BEGIN port", "0"));
                }
                put_target(&mut w, target)?;
                w.put_u16(*port);
            }
            RelayMsg::Resolve(target) => put_target(&mut w, target)?,
            RelayMsg::Resolved(answers) => {
                check_resolved(answers)?;
                w.put_u8(answers.len() as u8);
                for a in answers {
                    a.put(&mut w)?;
                }
            }
            RelayMsg::End(reason) => w.put_u8(reason.to_byte()),
            RelayMsg::Connected | RelayMsg::Drop | RelayMsg::Data(_) => {}
            RelayMsg::Extend {
                node_id,
                addr,
                onion_key,
                client_pk,
            } => {
                w.put(node_id);
                put_ip(&mut w, addr.ip());
                w.put_u16(addr.port());
                w.put(onion_key);
                w.put(client_pk);
            }
            RelayMsg::Extended { server_pk, auth } => {
                w.put(server_pk);
                w.put(auth);
            }
            RelayMsg::Extend2 {
                addr,
                handshake_type,
                part,
            } => {
                put_ip(&mut w, addr.ip());
                w.put_u16(addr.port());
                w.put_u16(*handshake_type);
                w.put(part);
            }
            RelayMsg::Extended2(part) | RelayMsg::HandshakeCont(part) => {
                if part.is_empty() {
                    return Err(invalid("handshake part", "empty"));
                }
                w.put(part);
            }
            RelayMsg::Truncated(reason) => w.put_u8(reason.to_byte()),
            RelayMsg::Sendme(Some(tag)) => {
                w.put_u8(SENDME_VERSION);
                w.put(tag);
            }
            RelayMsg::Sendme(None) => {}
            RelayMsg::EstablishIntro {
                auth_key,
                signature,
            } => {
                w.put(auth_key);
                w.put(signature);
            }
            RelayMsg::EstablishRendezvous { cookie } => w.put(cookie),
            RelayMsg::Introduce1 { auth_key, sealed }
            | RelayMsg::Introduce2 { auth_key, sealed } => {
                w.put(auth_key);
                w.put(sealed);
            }
            RelayMsg::Rendezvous1 {
                cookie,
                server_pk,
                auth,
            } => {
                w.put(cookie);
                w.put(server_pk);
                w.put(auth);
            }
            RelayMsg::Rendezvous2 { server_pk, auth } => {
                w.put(server_pk);
                w.put(auth);
            }
            RelayMsg::IntroEstablished | RelayMsg::RendezvousEstablished => {}
            RelayMsg::IntroduceAck(status) => w.put_u8(*status),
            RelayMsg::DhtFetch { key, kind } => {
                w.put(key);
                w.put_u8(*kind);
            }
            RelayMsg::DhtStore { key, kind, body } => {
                w.put(key);
                w.put_u8(*kind);
                w.put(body);
            }
            RelayMsg::DhtResult {
                status,
                index,
                count,
                kind,
                body,
            } => {
                w.put_u8(*status);
                w.put_u8(*index);
                w.put_u8(*count);
                w.put_u8(*kind);
                w.put(body);
            }
            RelayMsg::NameRegister { record } => w.put(record),
            RelayMsg::NameReceipts {
                asked,
                refused,
                receipts,
            } => {
                if receipts.len() > MAX_NAME_RECEIPTS {
                    return Err(invalid("name receipts", "more than 11"));
                }
                w.put_u8(*asked);
                w.put_u8(*refused);
                w.put_u8(receipts.len() as u8);
                for r in receipts {
                    r.put(&mut w);
                }
            }
        }
        Ok(w.into_vec())
    }

    /// Decode the inner area of a `DELIVER` layer. `DATA` payloads are slices of `inner`
    /// (no copy).
    ///
    /// # Errors
    /// [`WireError`] for an unknown command, a length beyond the area, a stream id that
    /// does not suit the command or a malformed payload. The bytes after the payload are
    /// padding and are not read.
    pub fn decode(inner: &Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(inner);
        let cmd = r.take_u8()?;
        let stream_id = StreamId(r.take_u16()?);
        let len = usize::from(r.take_u16()?);
        let payload = r.take(len)?;
        let mut p = Reader::new(payload);
        let msg = match cmd {
            1 => {
                let target = take_target(&mut p)?;
                let port = p.take_u16()?;
                if port == 0 {
                    return Err(invalid("BEGIN port", "0"));
                }
                RelayMsg::Begin { target, port }
            }
            2 => {
                if len == 0 {
                    return Err(invalid("DATA", "empty"));
                }
                let start = RELAY_HEADER_LEN;
                p.take_rest();
                RelayMsg::Data(inner.slice(start..start + len))
            }
            14 => RelayMsg::Resolve(take_target(&mut p)?),
            15 => {
                let n = usize::from(p.take_u8()?);
                let answers = (0..n)
                    .map(|_| ResolvedAnswer::take(&mut p))
                    .collect::<Result<Vec<_>, _>>()?;
                check_resolved(&answers)?;
                RelayMsg::Resolved(answers)
            }
            3 => RelayMsg::End(EndReason::from_byte(p.take_u8()?)),
            4 => RelayMsg::Connected,
            6 => {
                let node_id = p.take_array()?;
                let atype = p.take_u8()?;
                let ip = take_ip(&mut p, atype)?;
                let port = p.take_u16()?;
                RelayMsg::Extend {
                    node_id,
                    addr: SocketAddr::new(ip, port),
                    onion_key: p.take_array()?,
                    client_pk: p.take_array()?,
                }
            }
            7 => RelayMsg::Extended {
                server_pk: p.take_array()?,
                auth: p.take_array()?,
            },
            11 => {
                let atype = p.take_u8()?;
                let ip = take_ip(&mut p, atype)?;
                let port = p.take_u16()?;
                let handshake_type = p.take_u16()?;
                let part = p.take_rest();
                if part.is_empty() {
                    return Err(invalid("EXTEND2", "no hello bytes"));
                }
                RelayMsg::Extend2 {
                    addr: SocketAddr::new(ip, port),
                    handshake_type,
                    part: inner.slice_ref(part),
                }
            }
            12 | 13 => {
                let part = p.take_rest();
                if part.is_empty() {
                    return Err(invalid("handshake part", "empty"));
                }
                let part = inner.slice_ref(part);
                if cmd == 12 {
                    RelayMsg::Extended2(part)
                } else {
                    RelayMsg::HandshakeCont(part)
                }
            }
            9 => RelayMsg::Truncated(DestroyReason::from_byte(p.take_u8()?)),
            10 => RelayMsg::Drop,
            5 if stream_id == StreamId::CIRCUIT => {
                if p.take_u8()? != SENDME_VERSION {
                    return Err(invalid("SENDME version", "not 1"));
                }
                RelayMsg::Sendme(Some(p.take_array()?))
            }
            5 => RelayMsg::Sendme(None),
            32 => RelayMsg::EstablishIntro {
                auth_key: p.take_array()?,
                signature: p.take_array()?,
            },
            33 => RelayMsg::EstablishRendezvous {
                cookie: p.take_array()?,
            },
            34 | 35 => {
                let auth_key = p.take_array()?;
                let sealed = Bytes::copy_from_slice(p.take_rest());
                if sealed.is_empty() {
                    return Err(invalid("INTRODUCE", "empty introduction"));
                }
                if cmd == 34 {
                    RelayMsg::Introduce1 { auth_key, sealed }
                } else {
                    RelayMsg::Introduce2 { auth_key, sealed }
                }
            }
            36 => RelayMsg::Rendezvous1 {
                cookie: p.take_array()?,
                server_pk: p.take_array()?,
                auth: p.take_array()?,
            },
            37 => RelayMsg::Rendezvous2 {
                server_pk: p.take_array()?,
                auth: p.take_array()?,
            },
            38 => RelayMsg::IntroEstablished,
            39 => RelayMsg::RendezvousEstablished,
            40 => RelayMsg::IntroduceAck(p.take_u8()?),
            48 => RelayMsg::DhtFetch {
                key: p.take_array()?,
                kind: p.take_u8()?,
            },
            49 => RelayMsg::DhtStore {
                key: p.take_array()?,
                kind: p.take_u8()?,
                body: Bytes::copy_from_slice(p.take_rest()),
            },
            50 => RelayMsg::DhtResult {
                status: p.take_u8()?,
                index: p.take_u8()?,
                count: p.take_u8()?,
                kind: p.take_u8()?,
                body: Bytes::copy_from_slice(p.take_rest()),
            },
            51 => RelayMsg::NameRegister {
                record: Bytes::copy_from_slice(p.take_rest()),
            },
            52 => {
                let asked = p.take_u8()?;
                let refused = p.take_u8()?;
                let n = usize::from(p.take_u8()?);
                if n > MAX_NAME_RECEIPTS {
                    return Err(invalid("name receipts", "more than 11"));
                }
                let receipts = (0..n)
                    .map(|_| NameReceipt::take(&mut p))
                    .collect::<Result<Vec<_>, _>>()?;
                RelayMsg::NameReceipts {
                    asked,
                    refused,
                    receipts,
                }
            }
            _ => return Err(invalid("relay command", "unknown command")),
        };
        p.finish()?;
        if msg.is_circuit_level() != Some(stream_id == StreamId::CIRCUIT) {
            return Err(invalid("stream id", "0 exactly for circuit-level messages"));
        }
        Ok(RelayCell { stream_id, msg })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(cell: RelayCell) {
        let mut area = vec![0xAA; 1000];
        cell.encode_into(&mut area).unwrap();
        let back = RelayCell::decode(&Bytes::from(area.clone())).unwrap();
        assert_eq!(back, cell);
        // Every truncation is an error, never a panic.
        for n in 0..area.len() {
            let _ = RelayCell::decode(&Bytes::copy_from_slice(&area[..n]));
        }
    }

    #[test]
    fn hidden_service_messages_round_trip() {
        let c = StreamId::CIRCUIT;
        for msg in [
            RelayMsg::EstablishIntro {
                auth_key: [1; 32],
                signature: [2; 64],
            },
            RelayMsg::EstablishRendezvous { cookie: [3; 20] },
            RelayMsg::Introduce1 {
                auth_key: [4; 32],
                sealed: Bytes::from_static(b"sealed"),
            },
            RelayMsg::Introduce2 {
                auth_key: [5; 32],
                sealed: Bytes::from_static(b"x"),
            },
            RelayMsg::Rendezvous1 {
                cookie: [6; 20],
                server_pk: [7; 32],
                auth: [8; 32],
            },
            RelayMsg::Rendezvous2 {
                server_pk: [9; 32],
                auth: [10; 32],
            },
            RelayMsg::IntroEstablished,
            RelayMsg::RendezvousEstablished,
            RelayMsg::IntroduceAck(INTRODUCE_UNKNOWN),
            RelayMsg::DhtFetch {
                key: [11; 32],
                kind: 2,
            },
            RelayMsg::DhtStore {
                key: [12; 32],
                kind: 3,
                body: Bytes::from_static(b"record"),
            },
            RelayMsg::DhtResult {
                status: DHT_OK,
                index: 1,
                count: 2,
                kind: 2,
                body: Bytes::from_static(b"body"),
            },
            RelayMsg::NameRegister {
                record: Bytes::from_static(b"record"),
            },
            RelayMsg::NameReceipts {
                asked: 3,
                refused: 1,
                receipts: vec![
                    crate::hs::NameReceipt {
                        authority: [13; 8],
                        expires: 14,
                        signature: [15; 64],
                    };
                    MAX_NAME_RECEIPTS
                ],
            },
        ] {
            round_trip(RelayCell::new(c, msg.clone()));
            // Never on a stream.
            let mut area = vec![0; 200];
            assert!(RelayCell::new(StreamId(1), msg)
                .encode_into(&mut area)
                .is_err());
        }
        // An empty introduction is refused.
        let mut area = vec![0; 64];
        area[..5].copy_from_slice(&[34, 0, 0, 0, 32]);
        assert!(RelayCell::decode(&Bytes::from(area)).is_err());
    }

    #[test]
    fn resolve_and_resolved_round_trip_with_fixed_bytes() {
        let s = StreamId(9);
        // RESOLVE of a name: cmd 14, stream 9, len 11, atype 1, "localhost".
        let cell = RelayCell::new(s, RelayMsg::Resolve(Target::Host("localhost".into())));
        let mut area = vec![0; 100];
        let n = cell.encode_into(&mut area).unwrap();
        assert_eq!(hex::encode(&area[..n]), "0e0009000b01096c6f63616c686f7374");
        round_trip(cell);
        // RESOLVE of an address (a reverse lookup): atype 4.
        let cell = RelayCell::new(
            s,
            RelayMsg::Resolve(Target::Ip("127.0.0.1".parse().unwrap())),
        );
        let n = cell.encode_into(&mut area).unwrap();
        assert_eq!(hex::encode(&area[..n]), "0e00090005047f000001");
        round_trip(cell);
        // RESOLVED with an IPv4 and an IPv6 answer: cmd 15, n 2, (4, 4, ip), (6, 16, ip).
        let cell = RelayCell::new(
            s,
            RelayMsg::Resolved(vec![
                ResolvedAnswer::Ip("127.0.0.1".parse().unwrap()),
                ResolvedAnswer::Ip("::1".parse().unwrap()),
            ]),
        );
        let n = cell.encode_into(&mut area).unwrap();
        assert_eq!(
            hex::encode(&area[..n]),
            "0f000900190204047f000001061000000000000000000000000000000001"
        );
        round_trip(cell);
        // RESOLVED with a name, and with an error.
        let cell = RelayCell::new(
            s,
            RelayMsg::Resolved(vec![ResolvedAnswer::Host("localhost".into())]),
        );
        let n = cell.encode_into(&mut area).unwrap();
        assert_eq!(
            hex::encode(&area[..n]),
            "0f0009000c0100096c6f63616c686f7374"
        );
        round_trip(cell);
        for err in [ResolvedAnswer::Error, ResolvedAnswer::TransientError] {
            round_trip(RelayCell::new(s, RelayMsg::Resolved(vec![err])));
        }
        // Refused: no answer, 17 answers, two names, an error beside an address, an
        // unknown type, a wrong length, RESOLVE on stream 0.
        let bad: [&[u8]; 6] = [
            &[15, 0, 9, 0, 1, 0],
            &[15, 0, 9, 0, 5, 2, 0, 1, b'a', 0, 1, b'b'][..],
            &[15, 0, 9, 0, 7, 2, 0xF1, 0, 4, 4, 1, 2, 3, 4][..7 + 5],
            &[15, 0, 9, 0, 3, 1, 0x07, 0],
            &[15, 0, 9, 0, 5, 1, 4, 3, 1, 2, 3],
            &[14, 0, 0, 0, 3, 4, 1, 2],
        ];
        for b in bad {
            let mut area = b.to_vec();
            area.resize(100, 0);
            assert!(RelayCell::decode(&Bytes::from(area)).is_err(), "{b:?}");
        }
        let many = vec![ResolvedAnswer::Ip("10.0.0.1".parse().unwrap()); MAX_RESOLVED_ANSWERS + 1];
        assert!(RelayCell::new(s, RelayMsg::Resolved(many))
            .encode_into(&mut vec![0; 900])
            .is_err());
        assert!(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Resolve(Target::Host("a".into()))
        )
        .encode_into(&mut [0; 100])
        .is_err());
    }

    #[test]
    fn every_relay_message_round_trips() {
        let s = StreamId(7);
        round_trip(RelayCell::new(
            s,
            RelayMsg::Begin {
                target: Target::Host("example.com".into()),
                port: 443,
            },
        ));
        round_trip(RelayCell::new(
            s,
            RelayMsg::Begin {
                target: Target::Ip("::1".parse().unwrap()),
                port: 80,
            },
        ));
        round_trip(RelayCell::new(
            s,
            RelayMsg::Begin {
                target: Target::Ip("10.1.2.3".parse().unwrap()),
                port: 80,
            },
        ));
        round_trip(RelayCell::new(
            s,
            RelayMsg::Data(Bytes::from_static(b"hello")),
        ));
        round_trip(RelayCell::new(s, RelayMsg::End(EndReason::ExitPolicy)));
        round_trip(RelayCell::new(s, RelayMsg::Connected));
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Extend {
                node_id: [1; 32],
                addr: "127.0.0.1:4000".parse().unwrap(),
                onion_key: [2; 32],
                client_pk: [3; 32],
            },
        ));
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Extended {
                server_pk: [4; 32],
                auth: [5; 32],
            },
        ));
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Extend2 {
                addr: "[::1]:4000".parse().unwrap(),
                handshake_type: 2,
                part: Bytes::from(vec![7; 700]),
            },
        ));
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Extended2(Bytes::from(vec![8; 900])),
        ));
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::HandshakeCont(Bytes::from(vec![9; 3])),
        ));
        assert!(
            RelayCell::new(StreamId::CIRCUIT, RelayMsg::HandshakeCont(Bytes::new()))
                .encode_into(&mut [0; 50])
                .is_err()
        );
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Truncated(DestroyReason::ConnectFailed),
        ));
        round_trip(RelayCell::new(StreamId::CIRCUIT, RelayMsg::Drop));
        round_trip(RelayCell::new(
            StreamId::CIRCUIT,
            RelayMsg::Sendme(Some([9; 16])),
        ));
        round_trip(RelayCell::new(StreamId(4), RelayMsg::Sendme(None)));
        // A circuit SENDME without its tag, or a stream SENDME with one, is refused.
        assert!(RelayCell::new(StreamId::CIRCUIT, RelayMsg::Sendme(None))
            .encode_into(&mut [0; 50])
            .is_err());
        assert!(RelayCell::decode(&Bytes::from_static(&[5, 0, 0, 0, 1, 2])).is_err());
    }

    #[test]
    fn relay_cell_rejects_bad_input() {
        // Oversized DATA.
        let big = RelayCell::new(StreamId(1), RelayMsg::Data(Bytes::from(vec![1; 196])));
        assert!(big.encode_into(&mut [0; 200]).is_err());
        // Stream id 0 on a stream message, and a stream id on a circuit message.
        assert!(RelayCell::new(StreamId(0), RelayMsg::Connected)
            .encode_into(&mut [0; 50])
            .is_err());
        assert!(RelayCell::new(StreamId(3), RelayMsg::Drop)
            .encode_into(&mut [0; 50])
            .is_err());
        // Length beyond the area.
        assert!(RelayCell::decode(&Bytes::from_static(&[2, 0, 1, 0, 9, 1, 2])).is_err());
        // Unknown command, bad host; padding is not checked.
        assert!(RelayCell::decode(&Bytes::from_static(&[99, 0, 1, 0, 0])).is_err());
        assert!(RelayCell::decode(&Bytes::from_static(&[4, 0, 1, 0, 0, 1])).is_ok());
        assert!(RelayCell::decode(&Bytes::from_static(&[
            1, 0, 1, 0, 6, 1, 2, b'a', b' ', 0, 80
        ]))
        .is_err());
    }
}
