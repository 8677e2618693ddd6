//! One relay's entry in a vote or a consensus (`docs/protocol.md` §14.3).
//!
//! Layout: `identity [32] ‖ onion_key [32] ‖ handshakes u8 ‖ atype u8 (4|6) ‖ ip [4|16] ‖
//! port u16 ‖ flags u8 ‖ weight u32 ‖ n_ports u8 ‖ (lo u16 ‖ hi u16) × n_ports`: 82 bytes
//! for an IPv4 relay with one exit-port range, 78 for a non-exit. Everything a client needs
//! to build a circuit through the relay is here, so no per-relay descriptor fetch is needed.

use std::net::{IpAddr, SocketAddr};

use anonnet_crypto::{NodeId, VerifiedDescriptor};
use anonnet_wire::descriptor::{FLAG_EXIT as DESC_EXIT, FLAG_GUARD as DESC_GUARD, MAX_PORT_RANGES};
use anonnet_wire::{HandshakeSet, PortRange, Reader, RelayDescriptor, WireError, Writer};

use crate::invalid;

/// Flags an authority assigns to a relay (§14.4), one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct RelayFlags(pub u8);

impl RelayFlags {
    /// Reachable at its advertised address in the authority's last test.
    pub const RUNNING: RelayFlags = RelayFlags(0x01);
    /// Its descriptor verified and its identity proved over QUIC.
    pub const VALID: RelayFlags = RelayFlags(0x02);
    /// Mean time between failures at least the Stable threshold.
    pub const STABLE: RelayFlags = RelayFlags(0x04);
    /// Known long enough, with weighted uptime and bandwidth enough to be a guard.
    pub const GUARD: RelayFlags = RelayFlags(0x08);
    /// Its exit policy allows some port (from the descriptor's summary).
    pub const EXIT: RelayFlags = RelayFlags(0x10);
    /// Up long enough to store hidden-service descriptors and `.dark` names.
    pub const HSDIR: RelayFlags = RelayFlags(0x20);
    /// Every defined bit.
    pub const ALL: RelayFlags = RelayFlags(0x3f);

    /// True when every bit of `other` is set.
    pub fn contains(self, other: RelayFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Set the bits of `other`.
    pub fn insert(&mut self, other: RelayFlags) {
        self.0 |= other.0;
    }

    /// The flag names, in bit order (`Running Valid Stable Guard Exit HSDir`).
    pub fn names(self) -> Vec<&'static str> {
        const NAMES: [(RelayFlags, &str); 6] = [
            (RelayFlags::RUNNING, "Running"),
            (RelayFlags::VALID, "Valid"),
            (RelayFlags::STABLE, "Stable"),
            (RelayFlags::GUARD, "Guard"),
            (RelayFlags::EXIT, "Exit"),
            (RelayFlags::HSDIR, "HSDir"),
        ];
        NAMES
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// A relay's entry (§14.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEntry {
    /// Ed25519 identity public key; the NodeId is its BLAKE3 hash.
    pub identity: [u8; 32],
    /// X25519 onion key for the circuit handshake.
    pub onion_key: [u8; 32],
    /// The circuit handshake types the relay answers (§4.2), from its descriptor.
    pub handshakes: HandshakeSet,
    /// The QUIC address the authorities reached it at.
    pub address: SocketAddr,
    /// Flags.
    pub flags: RelayFlags,
    /// Path-selection weight: in a vote the measured bandwidth (bytes per second), in the
    /// consensus the median of the votes'.
    pub weight: u32,
    /// Destination ports its exit policy accepts (empty for non-exits),
    /// 0..=[`MAX_PORT_RANGES`] ranges.
    pub exit_ports: Vec<PortRange>,
}

impl RelayEntry {
    /// The relay's NodeId.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity(&self.identity)
    }

    /// Write the entry.
    ///
    /// # Errors
    /// [`WireError`] when there are more than [`MAX_PORT_RANGES`] ranges, or a range is
    /// empty or starts at 0.
    pub fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        if self.exit_ports.len() > MAX_PORT_RANGES {
            return Err(invalid("exit ports", "more than 64 ranges"));
        }
        if self.exit_ports.iter().any(|r| r.lo == 0 || r.lo > r.hi) {
            return Err(invalid("exit ports", "range empty or starting at 0"));
        }
        w.put(&self.identity);
        w.put(&self.onion_key);
        w.put_u8(self.handshakes.bits());
        match self.address.ip() {
            IpAddr::V4(ip) => {
                w.put_u8(4);
                w.put(&ip.octets());
            }
            IpAddr::V6(ip) => {
                w.put_u8(6);
                w.put(&ip.octets());
            }
        }
        w.put_u16(self.address.port());
        w.put_u8(self.flags.0);
        w.put_u32(self.weight);
        w.put_u8(self.exit_ports.len() as u8);
        for r in &self.exit_ports {
            w.put_u16(r.lo);
            w.put_u16(r.hi);
        }
        Ok(())
    }

    /// Read one entry.
    ///
    /// # Errors
    /// [`WireError`] on truncation, an empty or unknown handshake set, an unknown address
    /// type, unknown flag bits, too many or bad port ranges.
    pub fn decode(r: &mut Reader<'_>) -> Result<RelayEntry, WireError> {
        let identity = r.take_array()?;
        let onion_key = r.take_array()?;
        let handshakes = HandshakeSet::from_bits(r.take_u8()?)?;
        let ip = match r.take_u8()? {
            4 => IpAddr::from(r.take_array::<4>()?),
            6 => IpAddr::from(r.take_array::<16>()?),
            _ => return Err(invalid("address type", "not 4 or 6")),
        };
        let address = SocketAddr::new(ip, r.take_u16()?);
        let flags = RelayFlags(r.take_u8()?);
        if flags.0 & !RelayFlags::ALL.0 != 0 {
            return Err(invalid("relay flags", "unknown flag bits"));
        }
        let weight = r.take_u32()?;
        let n = usize::from(r.take_u8()?);
        if n > MAX_PORT_RANGES {
            return Err(invalid("exit ports", "more than 64 ranges"));
        }
        let mut exit_ports = Vec::with_capacity(n);
        for _ in 0..n {
            let range = PortRange {
                lo: r.take_u16()?,
                hi: r.take_u16()?,
            };
            if range.lo == 0 || range.lo > range.hi {
                return Err(invalid("exit ports", "range empty or starting at 0"));
            }
            exit_ports.push(range);
        }
        Ok(RelayEntry {
            identity,
            onion_key,
            handshakes,
            address,
            flags,
            weight,
            exit_ports,
        })
    }

    /// The entry as the client's path selection sees a relay: a descriptor whose guard bit
    /// is the consensus's Guard flag, exit bit the Exit flag, bandwidth the consensus weight
    /// and validity the consensus's (`valid_after`, `valid_until`); keys, handshake types
    /// and address are the entry's.
    pub fn to_verified(&self, valid_after: u64, valid_until: u64) -> VerifiedDescriptor {
        let mut flags = 0;
        if self.flags.contains(RelayFlags::GUARD) {
            flags |= DESC_GUARD;
        }
        let exit = self.flags.contains(RelayFlags::EXIT) && !self.exit_ports.is_empty();
        if exit {
            flags |= DESC_EXIT;
        }
        VerifiedDescriptor {
            node_id: self.node_id(),
            descriptor: RelayDescriptor {
                identity: self.identity,
                onion_key: self.onion_key,
                handshakes: self.handshakes,
                addresses: vec![self.address],
                flags,
                exit_ports: if exit {
                    self.exit_ports.clone()
                } else {
                    Vec::new()
                },
                bandwidth: self.weight,
                published: valid_after,
                expires: valid_until.max(valid_after.saturating_add(1)),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(n: u8) -> RelayEntry {
        RelayEntry {
            identity: [n; 32],
            onion_key: [n.wrapping_add(100); 32],
            handshakes: HandshakeSet::ALL,
            address: SocketAddr::from(([10, n, 0, 1], 7000 + u16::from(n))),
            flags: RelayFlags(RelayFlags::RUNNING.0 | RelayFlags::VALID.0),
            weight: 1000 * u32::from(n),
            exit_ports: vec![],
        }
    }

    #[test]
    fn entry_round_trips_v4_and_v6() {
        let mut e = entry(3);
        e.exit_ports = vec![PortRange { lo: 80, hi: 443 }];
        let mut w = Writer::new();
        e.encode(&mut w).unwrap();
        assert_eq!(w.len(), 82);
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(RelayEntry::decode(&mut r).unwrap(), e);
        r.finish().unwrap();

        e.address = "[2001:db8::1]:9".parse().unwrap();
        let mut w = Writer::new();
        e.encode(&mut w).unwrap();
        let bytes = w.into_vec();
        assert_eq!(RelayEntry::decode(&mut Reader::new(&bytes)).unwrap(), e);
    }

    #[test]
    fn entry_refuses_unknown_flags_and_bad_ranges() {
        let mut e = entry(1);
        e.flags = RelayFlags(0x80);
        let mut w = Writer::new();
        e.encode(&mut w).unwrap();
        let bytes = w.into_vec();
        assert!(RelayEntry::decode(&mut Reader::new(&bytes)).is_err());

        let mut e = entry(1);
        e.exit_ports = vec![PortRange { lo: 9, hi: 8 }];
        assert!(e.encode(&mut Writer::new()).is_err());
    }

    #[test]
    fn entry_carries_the_handshake_set_and_refuses_empty_or_unknown_ones() {
        for set in [HandshakeSet::NTOR, HandshakeSet::HYBRID, HandshakeSet::ALL] {
            let e = RelayEntry {
                handshakes: set,
                ..entry(4)
            };
            let mut w = Writer::new();
            e.encode(&mut w).unwrap();
            let bytes = w.into_vec();
            // identity ‖ onion_key ‖ handshakes
            assert_eq!(bytes[64], set.bits());
            assert_eq!(RelayEntry::decode(&mut Reader::new(&bytes)).unwrap(), e);
            assert_eq!(e.to_verified(10, 20).descriptor.handshakes, set);
        }
        let mut w = Writer::new();
        entry(4).encode(&mut w).unwrap();
        let bytes = w.into_vec();
        for bits in [0x00, 0x04, 0x80] {
            let mut bad = bytes.clone();
            bad[64] = bits;
            assert!(
                matches!(
                    RelayEntry::decode(&mut Reader::new(&bad)),
                    Err(WireError::Invalid {
                        field: "handshakes",
                        ..
                    })
                ),
                "{bits:#04x}"
            );
        }
    }

    #[test]
    fn verified_view_takes_flags_from_the_consensus() {
        let mut e = entry(2);
        e.flags.insert(RelayFlags::GUARD);
        e.exit_ports = vec![PortRange::ALL];
        // No Exit flag: the summary is dropped, the relay is no exit.
        let v = e.to_verified(10, 20);
        assert!(v.descriptor.is_guard());
        assert!(!v.descriptor.is_exit());
        e.flags.insert(RelayFlags::EXIT);
        let v = e.to_verified(10, 20);
        assert!(v.descriptor.exit_allows_port(80));
        assert_eq!(v.descriptor.bandwidth, 2000);
        assert_eq!(v.node_id, e.node_id());
    }
}
