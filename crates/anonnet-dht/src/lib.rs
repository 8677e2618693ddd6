#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod lookup;
pub mod routing;
pub mod storage;

use std::net::SocketAddr;

use anonnet_crypto::{verify_descriptor, DescriptorError, NodeId};
use anonnet_wire::{RelayDescriptor, SignedDescriptor, WireError};

pub use lookup::{Lookup, LookupKind, LookupResult};
pub use routing::{bucket_index, id_in_bucket, Insert, RoutingTable, BUCKETS};
pub use storage::{
    decode_persisted, verify_record, verify_record_for, verify_record_with_work, LoadReport,
    PersistedRecord, RecordError, Storage, StorageCounters, StorageLimits, StoreError,
    VerifiedRecord, MAX_PERSISTED_RECORDS, MAX_RATE_PEERS, MAX_RECORD_TTL, PERSISTED_MAGIC,
};

/// Bucket size and replication factor: contacts per k-bucket, contacts per answer, nodes a
/// record is stored on (§11.4).
pub const K: usize = 20;
/// Parallelism of an iterative lookup: queries in flight at once (§11.6).
pub const ALPHA: usize = 3;
/// BLAKE3 `derive_key` context of [`descriptor_key`] (§11.3).
pub const DESCRIPTOR_KEY_CONTEXT: &str = "anonnet 2026 relay descriptor key";

/// The DHT key under which a relay's descriptor is stored:
/// `BLAKE3-derive_key("anonnet 2026 relay descriptor key", NodeId)` (32 bytes, §11.3).
///
/// It differs from the NodeId so that the nodes storing a relay's descriptor are not the
/// relay's own neighbours in the key space.
pub fn descriptor_key(node_id: &NodeId) -> [u8; 32] {
    blake3::derive_key(DESCRIPTOR_KEY_CONTEXT, node_id.as_bytes())
}

/// Kademlia's XOR distance between two 256-bit points; compare results as big-endian
/// integers (byte arrays compare that way).
pub fn distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
        *d = a ^ b;
    }
    d
}

/// Errors of this crate outside storage (see [`StoreError`] for those).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DhtError {
    /// A contact's descriptor is malformed, forged, expired or from the future.
    #[error("contact refused: {0}")]
    Descriptor(#[from] DescriptorError),
    /// A descriptor without an address (the encoding forbids it; kept so that no code path
    /// has to panic).
    #[error("contact has no address")]
    NoAddress,
}

/// A DHT contact: a relay known by its verified, signed descriptor (§11.4). What a node
/// sends in `NODES` is exactly [`Contact::descriptor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// `BLAKE3(identity)` of the descriptor.
    pub node_id: NodeId,
    /// The descriptor's first address: where the relay's QUIC endpoint listens.
    pub addr: SocketAddr,
    /// The signed descriptor the contact was made from.
    pub descriptor: SignedDescriptor,
    /// The descriptor's `published` time (Unix seconds): of two descriptors of one node the
    /// larger wins.
    pub published: u64,
}

impl Contact {
    /// Verify `d` at `now_unix` (Unix seconds) with `anonnet_crypto::verify_descriptor` —
    /// signature, `expires > now`, `published ≤ now + 3600` — and make a contact of it.
    ///
    /// # Errors
    /// [`DhtError::Descriptor`] for a malformed, forged, expired or future descriptor.
    pub fn from_descriptor(d: &SignedDescriptor, now_unix: u64) -> Result<Contact, DhtError> {
        let v = verify_descriptor(d, now_unix)?;
        let addr = *v.descriptor.addresses.first().ok_or(DhtError::NoAddress)?;
        Ok(Contact {
            node_id: v.node_id,
            addr,
            descriptor: d.clone(),
            published: v.descriptor.published,
        })
    }

    /// The contacts of an answer's list (`NODES`, `VALUE`): each verified at `now_unix`;
    /// invalid ones and repeated NodeIds are dropped, at most [`K`] are kept.
    pub fn from_answer(nodes: &[SignedDescriptor], now_unix: u64) -> Vec<Contact> {
        let mut out: Vec<Contact> = Vec::with_capacity(nodes.len().min(K));
        for d in nodes {
            if out.len() == K {
                break;
            }
            if let Ok(c) = Contact::from_descriptor(d, now_unix) {
                if !out.iter().any(|o| o.node_id == c.node_id) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The descriptor's fields (flags, exit ports, bandwidth, expiry…), decoded again from
    /// the signed body (no signature check: that was done when the contact was made).
    ///
    /// # Errors
    /// [`WireError`] if the body does not parse (only for a contact built by hand).
    pub fn relay_descriptor(&self) -> Result<RelayDescriptor, WireError> {
        RelayDescriptor::decode_body(&self.descriptor.body)
    }

    /// The descriptor's `expires` time (Unix seconds), or `None` if the body does not parse.
    pub fn expires(&self) -> Option<u64> {
        self.relay_descriptor().ok().map(|d| d.expires)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Deterministic relays for the unit tests.

    use anonnet_crypto::{sign_descriptor, IdentityKey};
    use anonnet_wire::{RelayDescriptor, SignedDescriptor};

    use crate::Contact;

    /// "Now" of the tests (Unix seconds).
    pub const NOW: u64 = 1_800_000_000;

    /// The identity key of test relay `n`.
    pub fn identity(n: u32) -> IdentityKey {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&n.to_be_bytes());
        seed[4] = 0x5e;
        IdentityKey::from_seed(&seed)
    }

    /// Test relay `n`'s descriptor, published at `published`, valid for a day.
    pub fn descriptor_at(n: u32, published: u64) -> SignedDescriptor {
        let id = identity(n);
        let d = RelayDescriptor {
            identity: id.public(),
            onion_key: [7; 32],
            handshakes: anonnet_wire::HandshakeSet::ALL,
            addresses: vec![std::net::SocketAddr::from((
                [10, (n >> 16) as u8, (n >> 8) as u8, n as u8],
                7000,
            ))],
            flags: 0,
            exit_ports: vec![],
            bandwidth: 1000,
            published,
            expires: published + 86_400,
        };
        sign_descriptor(&id, &d).unwrap()
    }

    /// Test relay `n`'s contact, published an hour before [`NOW`].
    pub fn contact(n: u32) -> Contact {
        Contact::from_descriptor(&descriptor_at(n, NOW - 3600), NOW).unwrap()
    }
}

impl anonnet_error::HasKind for DhtError {
    /// As the descriptor's kind; no address to announce is
    /// [`anonnet_error::ErrorKind::Config`] (set `advertise`).
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            DhtError::Descriptor(e) => anonnet_error::HasKind::kind(e),
            DhtError::NoAddress => anonnet_error::ErrorKind::Config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn descriptor_key_is_keyed_blake3_of_the_node_id() {
        // NodeId of the §3.3 test vector.
        let id = NodeId(hex_to_32(
            "4a78877c4a0926fc5d5cb282bb45c11c8489b202fe1890fa0c6593e6192b9f75",
        ));
        assert_eq!(
            descriptor_key(&id),
            hex_to_32("4aff750237d32a2c09d4c9603cb3be82a6a53a018999fee39013a2c23a2055af")
        );
        assert_ne!(descriptor_key(&id), id.0);
    }

    fn hex_to_32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn xor_distance_is_symmetric_and_zero_to_itself() {
        let a = [0x0f; 32];
        let b = [0xf0; 32];
        assert_eq!(distance(&a, &b), [0xff; 32]);
        assert_eq!(distance(&a, &b), distance(&b, &a));
        assert_eq!(distance(&a, &a), [0; 32]);
    }

    #[test]
    fn contact_refuses_forged_expired_and_future_descriptors() {
        let good = descriptor_at(1, NOW - 10);
        let c = Contact::from_descriptor(&good, NOW).unwrap();
        assert_eq!(c.node_id, identity(1).node_id());
        assert_eq!(c.addr, "10.0.0.1:7000".parse().unwrap());
        assert_eq!(c.published, NOW - 10);
        assert_eq!(c.expires(), Some(NOW - 10 + 86_400));

        let mut forged = good.clone();
        forged.signature[0] ^= 1;
        assert!(matches!(
            Contact::from_descriptor(&forged, NOW),
            Err(DhtError::Descriptor(DescriptorError::Signature(_)))
        ));
        // Relay 2's key over relay 1's body: the identity in the body does not sign it.
        let mut stolen = good.clone();
        stolen.signature = descriptor_at(2, NOW - 10).signature;
        assert!(Contact::from_descriptor(&stolen, NOW).is_err());
        assert!(matches!(
            Contact::from_descriptor(&good, NOW - 10 + 86_400),
            Err(DhtError::Descriptor(DescriptorError::Expired { .. }))
        ));
        assert!(matches!(
            Contact::from_descriptor(&descriptor_at(3, NOW + 7200), NOW),
            Err(DhtError::Descriptor(DescriptorError::FromTheFuture { .. }))
        ));
    }

    #[test]
    fn answer_contacts_drop_forged_and_repeated_entries() {
        let mut forged = descriptor_at(2, NOW - 10);
        forged.signature[5] ^= 0x80;
        let list = vec![
            descriptor_at(1, NOW - 10),
            forged,
            descriptor_at(1, NOW - 10),
            descriptor_at(3, NOW - 10),
        ];
        let got = Contact::from_answer(&list, NOW);
        let ids: Vec<_> = got.iter().map(|c| c.node_id).collect();
        assert_eq!(ids, vec![identity(1).node_id(), identity(3).node_id()]);
    }
}
