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

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_wire::descriptor::FLAG_EXIT;

    fn desc(identity: &IdentityKey) -> RelayDescriptor {
        RelayDescriptor {
            identity: identity.public(),
            onion_key: [9; 32],
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
