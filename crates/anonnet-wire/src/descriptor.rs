//! The relay descriptor: what a relay tells clients about itself, signed with its identity
//! key. Spec: `docs/protocol.md` §3 "Relay descriptors". Signing and verification live in
//! `anonnet-crypto`; this module only fixes the bytes.

use std::net::SocketAddr;

use crate::cell::KEY_LEN;
use crate::{invalid, Reader, WireError, Writer};

/// Descriptor format version.
pub const DESCRIPTOR_VERSION: u8 = 1;
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
/// `version u8 ‖ identity [32] ‖ onion_key [32] ‖ n_addrs u8 ‖ (atype u8 ‖ ip ‖ port u16)* ‖
/// flags u8 ‖ n_ports u8 ‖ (lo u16 ‖ hi u16)* ‖ bandwidth u32 ‖ published u64 ‖ expires u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDescriptor {
    /// Ed25519 identity public key.
    pub identity: [u8; KEY_LEN],
    /// X25519 onion public key `B`.
    pub onion_key: [u8; KEY_LEN],
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
    /// [`WireError`] for a wrong version, truncation, trailing bytes or any field that
    /// [`RelayDescriptor::encode_body`] would refuse.
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
}
