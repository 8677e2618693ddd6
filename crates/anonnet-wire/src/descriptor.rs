//! The relay descriptor: what a relay tells clients about itself, signed with its identity
//! key. Spec: `docs/protocol.md` §3 "Relay descriptors". Signing and verification live in
//! `anonnet-crypto`; this module only fixes the bytes.

use std::net::SocketAddr;

use crate::cell::{HANDSHAKE_HYBRID_V2, HANDSHAKE_NTOR_V1, KEY_LEN};
use crate::{invalid, Reader, WireError, Writer};

/// Descriptor format version (§3.1). Version 2 added `handshakes`; a version-1 body is
/// refused as an unknown version rather than misread.
pub const DESCRIPTOR_VERSION: u8 = 2;
/// Most addresses a descriptor may list.
pub const MAX_ADDRESSES: usize = 4;
/// Most exit port ranges a descriptor may list.
pub const MAX_PORT_RANGES: usize = 64;
/// Largest encoded descriptor body accepted (bytes).
pub const MAX_BODY_LEN: usize = 1024;
/// Flag bit: the relay is willing to be an exit.
pub const FLAG_EXIT: u8 = 0x01;
/// Flag bit: the relay is willing to be a guard.
pub const FLAG_GUARD: u8 = 0x02;

/// The circuit handshake types a relay answers (§3.1, §14.3; the types are those of
/// `CREATE`, §4.2): one byte on the wire, bit `1 << (t − 1)` set for type `t` —
/// `0x01` type 1 (X25519, §5.1), `0x02` type 2 (X25519 + ML-KEM-768, §5.4). A value is
/// never empty and has no unknown bit: [`HandshakeSet::from_bits`] refuses both, so every
/// set has exactly one encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandshakeSet(u8);

impl HandshakeSet {
    /// Type 1 only (X25519, §5.1).
    pub const NTOR: HandshakeSet = HandshakeSet(0x01);
    /// Type 2 only (X25519 + ML-KEM-768, §5.4).
    pub const HYBRID: HandshakeSet = HandshakeSet(0x02);
    /// Types 1 and 2: what a relay answers and advertises by default.
    pub const ALL: HandshakeSet = HandshakeSet(0x03);

    /// The set encoded as `bits`.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for 0 (no type) or a bit of an unknown type (`0x04..`).
    pub fn from_bits(bits: u8) -> Result<HandshakeSet, WireError> {
        if bits == 0 {
            return Err(invalid("handshakes", "no handshake type"));
        }
        if bits & !HandshakeSet::ALL.0 != 0 {
            return Err(invalid("handshakes", "unknown handshake type"));
        }
        Ok(HandshakeSet(bits))
    }

    /// The one-byte encoding.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set of the one type `handshake_type` (`CREATE`'s number, §4.2); `None` for a
    /// type this code does not know.
    pub fn of(handshake_type: u16) -> Option<HandshakeSet> {
        match handshake_type {
            HANDSHAKE_NTOR_V1 => Some(HandshakeSet::NTOR),
            HANDSHAKE_HYBRID_V2 => Some(HandshakeSet::HYBRID),
            _ => None,
        }
    }

    /// True when type `handshake_type` is in the set.
    pub fn contains(self, handshake_type: u16) -> bool {
        HandshakeSet::of(handshake_type).is_some_and(|t| self.0 & t.0 != 0)
    }

    /// Both sets' types.
    pub fn union(self, other: HandshakeSet) -> HandshakeSet {
        HandshakeSet(self.0 | other.0)
    }

    /// True when the sets share a type.
    pub fn intersects(self, other: HandshakeSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The type numbers in the set, ascending.
    pub fn types(self) -> Vec<u16> {
        [HANDSHAKE_NTOR_V1, HANDSHAKE_HYBRID_V2]
            .into_iter()
            .filter(|t| self.contains(*t))
            .collect()
    }
}

impl Default for HandshakeSet {
    /// [`HandshakeSet::ALL`].
    fn default() -> Self {
        HandshakeSet::ALL
    }
}

/// An inclusive range of TCP ports, `lo..=hi`, 1 ≤ lo ≤ hi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    /// Every port, 1..=65535.
    pub const ALL: PortRange = PortRange { lo: 1, hi: 65535 };

    /// True when `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// A relay descriptor's fields (§3.1). Body layout:
/// `version u8 (2) ‖ identity [32] ‖ onion_key [32] ‖ handshakes u8 ‖ n_addrs u8 ‖
/// (atype u8 ‖ ip ‖ port u16)* ‖ flags u8 ‖ n_ports u8 ‖ (lo u16 ‖ hi u16)* ‖
/// bandwidth u32 ‖ published u64 ‖ expires u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDescriptor {
    /// Ed25519 identity public key.
    pub identity: [u8; KEY_LEN],
    /// X25519 onion public key `B`.
    pub onion_key: [u8; KEY_LEN],
    /// The circuit handshake types the relay answers with that key (§4.2, §5).
    pub handshakes: HandshakeSet,
    /// QUIC addresses, 1..=[`MAX_ADDRESSES`].
    pub addresses: Vec<SocketAddr>,
    /// [`FLAG_EXIT`] | [`FLAG_GUARD`].
    pub flags: u8,
    /// Exit policy summary: destination ports the exit accepts (empty for non-exits).
    pub exit_ports: Vec<PortRange>,
    /// Advertised bandwidth (bytes per second).
    pub bandwidth: u32,
    /// When it was made (seconds since the Unix epoch).
    pub published: u64,
    /// When it stops being valid (seconds since the Unix epoch), after `published`.
    pub expires: u64,
}

impl RelayDescriptor {
    /// True when the relay offers to be an exit.
    pub fn is_exit(&self) -> bool {
        self.flags & FLAG_EXIT != 0
    }

    /// True when the relay offers to be a guard.
    pub fn is_guard(&self) -> bool {
        self.flags & FLAG_GUARD != 0
    }

    /// True when the relay is an exit whose summary accepts `port`.
    pub fn exit_allows_port(&self, port: u16) -> bool {
        self.is_exit() && self.exit_ports.iter().any(|r| r.contains(port))
    }

    /// Encode the body (the bytes that are signed).
    ///
    /// # Errors
    /// [`WireError`] when a list is empty or too long, or a port range is inverted.
    pub fn encode_body(&self) -> Result<Vec<u8>, WireError> {
        self.check()?;
        let mut w = Writer::with_capacity(128);
        w.put_u8(DESCRIPTOR_VERSION);
        w.put(&self.identity);
        w.put(&self.onion_key);
        w.put_u8(self.handshakes.bits());
        w.put_u8(self.addresses.len() as u8);
        for a in &self.addresses {
            match a.ip() {
                std::net::IpAddr::V4(ip) => {
                    w.put_u8(4);
                    w.put(&ip.octets());
                }
                std::net::IpAddr::V6(ip) => {
                    w.put_u8(6);
                    w.put(&ip.octets());
                }
            }
            w.put_u16(a.port());
        }
        w.put_u8(self.flags);
        w.put_u8(self.exit_ports.len() as u8);
        for r in &self.exit_ports {
            w.put_u16(r.lo);
            w.put_u16(r.hi);
        }
        w.put_u32(self.bandwidth);
        w.put_u64(self.published);
        w.put_u64(self.expires);
        Ok(w.into_vec())
    }

    fn check(&self) -> Result<(), WireError> {
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(invalid("addresses", "count not in 1..=4"));
        }
        if self.exit_ports.len() > MAX_PORT_RANGES {
            return Err(invalid("exit ports", "more than 64 ranges"));
        }
        if self.exit_ports.iter().any(|r| r.lo == 0 || r.lo > r.hi) {
            return Err(invalid("exit ports", "range empty or starting at 0"));
        }
        if self.flags & !(FLAG_EXIT | FLAG_GUARD) != 0 {
            return Err(invalid("flags", "unknown flag bits"));
        }
        if self.expires <= self.published {
            return Err(invalid("expires", "not after published"));
        }
        Ok(())
    }

    /// Decode a body.
    ///
    /// # Errors
    /// [`WireError`] for a wrong version, truncation, trailing bytes, an empty or unknown
    /// `handshakes` set, or any field that [`RelayDescriptor::encode_body`] would refuse.
    pub fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        if body.len() > MAX_BODY_LEN {
            return Err(invalid("descriptor", "body too long"));
        }
        let mut r = Reader::new(body);
        if r.take_u8()? != DESCRIPTOR_VERSION {
            return Err(invalid("descriptor version", "unknown version"));
        }
        let identity = r.take_array()?;
        let onion_key = r.take_array()?;
        let handshakes = HandshakeSet::from_bits(r.take_u8()?)?;
        let n_addrs = usize::from(r.take_u8()?);
        let mut addresses = Vec::with_capacity(n_addrs.min(MAX_ADDRESSES));
        for _ in 0..n_addrs.min(MAX_ADDRESSES + 1) {
            let ip = match r.take_u8()? {
                4 => std::net::IpAddr::from(r.take_array::<4>()?),
                6 => std::net::IpAddr::from(r.take_array::<16>()?),
                _ => return Err(invalid("address type", "not 4 or 6")),
            };
            addresses.push(SocketAddr::new(ip, r.take_u16()?));
        }
        let flags = r.take_u8()?;
        let n_ports = usize::from(r.take_u8()?);
        let mut exit_ports = Vec::with_capacity(n_ports.min(MAX_PORT_RANGES));
        for _ in 0..n_ports.min(MAX_PORT_RANGES + 1) {
            exit_ports.push(PortRange {
                lo: r.take_u16()?,
                hi: r.take_u16()?,
            });
        }
        let d = RelayDescriptor {
            identity,
            onion_key,
            handshakes,
            addresses,
            flags,
            exit_ports,
            bandwidth: r.take_u32()?,
            published: r.take_u64()?,
            expires: r.take_u64()?,
        };
        r.finish()?;
        d.check()?;
        Ok(d)
    }
}

/// A descriptor body with its Ed25519 signature (§3.2):
/// `body_len u16 ‖ body ‖ signature [64]`. Files hold it as one line of standard base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDescriptor {
    /// The encoded [`RelayDescriptor`] body.
    pub body: Vec<u8>,
    /// Signature over `"anonnet relay descriptor v1\0" ‖ body` by the body's identity key.
    pub signature: [u8; 64],
}

impl SignedDescriptor {
    /// Encode.
    ///
    /// # Errors
    /// [`WireError::TooLong`] when the body is longer than [`MAX_BODY_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.body.len() > MAX_BODY_LEN {
            return Err(WireError::TooLong {
                what: "descriptor body",
                len: self.body.len(),
                room: MAX_BODY_LEN,
            });
        }
        let mut w = Writer::with_capacity(self.body.len() + 66);
        w.put_u16(self.body.len() as u16);
        w.put(&self.body);
        w.put(&self.signature);
        Ok(w.into_vec())
    }

    /// Decode (the signature is not checked here: see `anonnet_crypto::descriptor`).
    ///
    /// # Errors
    /// [`WireError`] when truncated, too long or followed by trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let len = usize::from(r.take_u16()?);
        if len > MAX_BODY_LEN {
            return Err(invalid("descriptor", "body too long"));
        }
        let body = r.take(len)?.to_vec();
        let signature = r.take_array()?;
        r.finish()?;
        Ok(SignedDescriptor { body, signature })
    }
}

impl SignedDescriptor {
    /// The text form: one line of standard base64 (RFC 4648 §4) of [`SignedDescriptor::encode`].
    ///
    /// # Errors
    /// As [`SignedDescriptor::encode`].
    pub fn to_base64(&self) -> Result<String, WireError> {
        use base64::Engine as _;
        Ok(base64::engine::general_purpose::STANDARD.encode(self.encode()?))
    }

    /// Parse the text form; surrounding whitespace is ignored.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for bad base64 or text over 4 KiB, else as
    /// [`SignedDescriptor::decode`].
    pub fn from_base64(text: &str) -> Result<Self, WireError> {
        use base64::Engine as _;
        let text = text.trim();
        if text.len() > 4096 {
            return Err(invalid("descriptor", "text too long"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| invalid("descriptor", "not base64"))?;
        Self::decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> RelayDescriptor {
        RelayDescriptor {
            identity: [1; 32],
            onion_key: [2; 32],
            handshakes: HandshakeSet::ALL,
            addresses: vec![
                "127.0.0.1:5000".parse().unwrap(),
                "[::1]:5001".parse().unwrap(),
            ],
            flags: FLAG_EXIT | FLAG_GUARD,
            exit_ports: vec![
                PortRange { lo: 80, hi: 80 },
                PortRange { lo: 443, hi: 8080 },
            ],
            bandwidth: 1_000_000,
            published: 1000,
            expires: 2000,
        }
    }

    #[test]
    fn descriptor_round_trips() {
        let body = desc().encode_body().unwrap();
        assert_eq!(RelayDescriptor::decode_body(&body).unwrap(), desc());
        let signed = SignedDescriptor {
            body,
            signature: [7; 64],
        };
        assert_eq!(
            SignedDescriptor::decode(&signed.encode().unwrap()).unwrap(),
            signed
        );
        assert!(desc().exit_allows_port(443) && !desc().exit_allows_port(22));
    }

    #[test]
    fn descriptor_rejects_truncated_trailing_and_bad_fields() {
        let body = desc().encode_body().unwrap();
        for n in 0..body.len() {
            assert!(RelayDescriptor::decode_body(&body[..n]).is_err());
        }
        let mut long = body.clone();
        long.push(0);
        assert!(RelayDescriptor::decode_body(&long).is_err());
        let mut bad = desc();
        bad.expires = bad.published;
        assert!(bad.encode_body().is_err());
        let mut bad = desc();
        bad.exit_ports = vec![PortRange { lo: 9, hi: 8 }];
        assert!(bad.encode_body().is_err());
        let mut bad = desc();
        bad.addresses.clear();
        assert!(bad.encode_body().is_err());
    }

    #[test]
    fn descriptor_carries_the_handshake_set_and_refuses_empty_or_unknown_ones() {
        for set in [HandshakeSet::NTOR, HandshakeSet::HYBRID, HandshakeSet::ALL] {
            let d = RelayDescriptor {
                handshakes: set,
                ..desc()
            };
            let body = d.encode_body().unwrap();
            // version ‖ identity ‖ onion_key ‖ handshakes
            assert_eq!(body[65], set.bits());
            assert_eq!(RelayDescriptor::decode_body(&body).unwrap(), d);
        }
        let body = desc().encode_body().unwrap();
        for bits in [0x00, 0x04, 0x07, 0x80, 0xff] {
            let mut bad = body.clone();
            bad[65] = bits;
            assert!(
                matches!(
                    RelayDescriptor::decode_body(&bad),
                    Err(WireError::Invalid {
                        field: "handshakes",
                        ..
                    })
                ),
                "{bits:#04x}"
            );
        }
        // A version-1 body (no handshakes byte) is an unknown version, not a misreading.
        let mut old = body.clone();
        old.remove(65);
        old[0] = 1;
        assert!(matches!(
            RelayDescriptor::decode_body(&old),
            Err(WireError::Invalid {
                field: "descriptor version",
                ..
            })
        ));
    }

    #[test]
    fn handshake_sets_name_their_types() {
        assert_eq!(HandshakeSet::default(), HandshakeSet::ALL);
        assert_eq!(HandshakeSet::ALL.types(), vec![1, 2]);
        assert_eq!(HandshakeSet::NTOR.types(), vec![1]);
        assert!(HandshakeSet::HYBRID.contains(2) && !HandshakeSet::HYBRID.contains(1));
        assert!(!HandshakeSet::ALL.contains(3) && !HandshakeSet::ALL.contains(0));
        assert_eq!(HandshakeSet::of(3), None);
        assert_eq!(
            HandshakeSet::NTOR.union(HandshakeSet::HYBRID),
            HandshakeSet::ALL
        );
        assert!(!HandshakeSet::NTOR.intersects(HandshakeSet::HYBRID));
        assert_eq!(HandshakeSet::from_bits(0x02).unwrap(), HandshakeSet::HYBRID);
    }
}
