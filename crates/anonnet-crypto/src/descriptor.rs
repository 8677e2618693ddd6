//! Signing and verifying relay descriptors. Spec: `docs/protocol.md` §3.2.
//!
//! The signature is Ed25519 over `"anonnet relay descriptor v1\0" ‖ body`, by the identity
//! key written in the body itself; the relay's NodeId is `BLAKE3(identity)`.

use anonnet_wire::{RelayDescriptor, SignedDescriptor, WireError};

use crate::identity::{verify_signature, IdentityKey, NodeId};
use crate::CryptoError;

/// Domain separator prefixed to the body before signing.
pub const DESCRIPTOR_SIGNING_CONTEXT: &[u8] = b"anonnet relay descriptor v1\0";
/// How far in the future `published` may be before a descriptor is refused (seconds):
/// tolerated clock skew.
pub const MAX_CLOCK_SKEW: u64 = 3600;

/// Why a descriptor was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DescriptorError {
    /// The bytes do not parse.
    #[error("malformed descriptor: {0}")]
    Malformed(#[from] WireError),
    /// The signature does not verify with the identity key in the body.
    #[error("descriptor signature: {0}")]
    Signature(#[from] CryptoError),
    /// `expires` is in the past.
    #[error("descriptor expired at {expires} (now {now})")]
    Expired {
        /// Its `expires` field (Unix seconds).
        expires: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
    /// `published` is further in the future than the allowed clock skew.
    #[error("descriptor published in the future ({published}, now {now})")]
    FromTheFuture {
        /// Its `published` field (Unix seconds).
        published: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [DESCRIPTOR_SIGNING_CONTEXT, body].concat()
}

/// Sign `desc` with `identity`.
///
/// # Errors
/// [`DescriptorError::Malformed`] when `desc` is not encodable;
/// [`DescriptorError::Signature`] with [`CryptoError::BadKey`] when `desc.identity` is not
/// `identity`'s public key.
pub fn sign_descriptor(
    identity: &IdentityKey,
    desc: &RelayDescriptor,
) -> Result<SignedDescriptor, DescriptorError> {
    if desc.identity != identity.public() {
        return Err(DescriptorError::Signature(CryptoError::BadKey));
    }
    let body = desc.encode_body()?;
    let signature = identity.sign(&signed_message(&body));
    Ok(SignedDescriptor { body, signature })
}

/// A descriptor whose signature and validity period were checked, with its NodeId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDescriptor {
    /// The relay's NodeId, `BLAKE3(identity)`.
    pub node_id: NodeId,
    /// The checked fields.
    pub descriptor: RelayDescriptor,
}

/// Parse and check a signed descriptor at time `now` (Unix seconds).
///
/// # Errors
/// [`DescriptorError`]: malformed, bad signature, expired, or published more than
/// [`MAX_CLOCK_SKEW`] seconds ahead of `now`.
pub fn verify_descriptor(
    signed: &SignedDescriptor,
    now: u64,
) -> Result<VerifiedDescriptor, DescriptorError> {
    let descriptor = RelayDescriptor::decode_body(&signed.body)?;
    verify_signature(
        &descriptor.identity,
        &signed_message(&signed.body),
        &signed.signature,
    )?;
    if descriptor.expires <= now {
        return Err(DescriptorError::Expired {
            expires: descriptor.expires,
            now,
        });
    }
    if descriptor.published > now.saturating_add(MAX_CLOCK_SKEW) {
        return Err(DescriptorError::FromTheFuture {
            published: descriptor.published,
            now,
        });
    }
    Ok(VerifiedDescriptor {
        node_id: NodeId::from_identity(&descriptor.identity),
        descriptor,
    })
}

impl anonnet_error::HasKind for DescriptorError {
    /// A descriptor that does not verify: [`anonnet_error::ErrorKind::Protocol`] (no
    /// randomness while signing one: [`anonnet_error::ErrorKind::LocalResource`]).
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            DescriptorError::Signature(e) => anonnet_error::HasKind::kind(e),
            _ => anonnet_error::ErrorKind::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_wire::descriptor::FLAG_EXIT;

    fn desc(identity: &IdentityKey) -> RelayDescriptor {
        RelayDescriptor {
            identity: identity.public(),
            onion_key: [9; 32],
            handshakes: anonnet_wire::HandshakeSet::ALL,
            addresses: vec!["127.0.0.1:7000".parse().unwrap()],
            flags: FLAG_EXIT,
            exit_ports: vec![anonnet_wire::PortRange::ALL],
            bandwidth: 10,
            published: 10_000,
            expires: 50_000,
        }
    }

    #[test]
    fn signed_descriptor_verifies_and_names_its_node() {
        let id = IdentityKey::from_seed(&[5; 32]);
        let signed = sign_descriptor(&id, &desc(&id)).unwrap();
        let text = signed.to_base64().unwrap();
        let parsed = SignedDescriptor::from_base64(&format!("  {text}\n")).unwrap();
        let v = verify_descriptor(&parsed, 20_000).unwrap();
        assert_eq!(v.node_id, id.node_id());
        assert_eq!(v.descriptor, desc(&id));
    }

    /// The descriptor test vector of `docs/protocol.md` §3.3 (also recomputed from the
    /// text by `docs/vectors/verify_vectors.py`).
    #[test]
    fn descriptor_test_vector() {
        use anonnet_wire::descriptor::FLAG_GUARD;
        use anonnet_wire::PortRange;
        let id = IdentityKey::from_seed(&[0x11; 32]);
        let d = RelayDescriptor {
            identity: id.public(),
            onion_key: crate::OnionKey::from_secret(&[0x22; 32]).public(),
            handshakes: anonnet_wire::HandshakeSet::ALL,
            addresses: vec!["127.0.0.1:7001".parse().unwrap()],
            flags: FLAG_EXIT | FLAG_GUARD,
            exit_ports: vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 443, hi: 443 }],
            bandwidth: 1_000_000,
            published: 1_700_000_000,
            expires: 1_700_086_400,
        };
        let signed = sign_descriptor(&id, &d).unwrap();
        assert_eq!(signed.body.len(), 104);
        assert_eq!(
            hex::encode(&signed.body),
            concat!(
                "02d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c97787",
                "370faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f",
                "200301047f0000011b5903020050005001bb01bb000f4240000000006553f100",
                "0000000065554280",
            )
        );
        assert_eq!(
            hex::encode(signed.signature),
            concat!(
                "7954e3355f3f0fb164f218cc254b8f4e9e4fc6ac3da6ccbfcd98083c4a095336",
                "9d43e18211c214041ef8ba066d1a0bf589ba8ce1be92e7bb449b72c87a4a7601",
            )
        );
        assert_eq!(
            signed.to_base64().unwrap(),
            concat!(
                "AGgC0EqyMnQrtKs6E2i9RhXk5tAiSrcaAWuvhSCjMsl3hzcPqmhO0ohnuX9Kai3uXfjO",
                "l052twGOPyKhxM8meFcPIAMBBH8AAAEbWQMCAFAAUAG7AbsAD0JAAAAAAGVT8QAAAAAA",
                "ZVVCgHlU4zVfPw+xZPIYzCVLj06eT8asPabMv82YCDxKCVM2nUPhghHCFAQe+LoGbRoL",
                "9Ym6jOG+kue7RJtyyHpKdgE=",
            )
        );
        let v = verify_descriptor(&signed, 1_700_000_000).unwrap();
        assert_eq!(
            v.node_id.to_hex(),
            "4a78877c4a0926fc5d5cb282bb45c11c8489b202fe1890fa0c6593e6192b9f75"
        );
    }

    #[test]
    fn forged_expired_and_future_descriptors_are_refused() {
        let id = IdentityKey::from_seed(&[5; 32]);
        let mut signed = sign_descriptor(&id, &desc(&id)).unwrap();
        assert!(matches!(
            verify_descriptor(&signed, 50_000),
            Err(DescriptorError::Expired { .. })
        ));
        assert!(matches!(
            verify_descriptor(&signed, 10_000 - MAX_CLOCK_SKEW - 1),
            Err(DescriptorError::FromTheFuture { .. })
        ));
        // A body changed after signing (another onion key) fails.
        let last = signed.body.len() - 30;
        signed.body[last] ^= 1;
        assert!(matches!(
            verify_descriptor(&signed, 20_000),
            Err(DescriptorError::Signature(_) | DescriptorError::Malformed(_))
        ));
        // Someone else's key cannot sign for this identity.
        let other = IdentityKey::from_seed(&[6; 32]);
        assert!(sign_descriptor(&other, &desc(&id)).is_err());
        let mut stolen = sign_descriptor(&id, &desc(&id)).unwrap();
        stolen.signature = other.sign(&signed_message(&stolen.body));
        assert!(matches!(
            verify_descriptor(&stolen, 20_000),
            Err(DescriptorError::Signature(CryptoError::BadSignature))
        ));
    }
}
