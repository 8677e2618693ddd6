//! Long-term keys: the Ed25519 identity key, the X25519 onion key and the NodeId.
//!
//! Spec: `docs/protocol.md` §2 "Identities".

use std::fmt;

use ed25519_dalek::Signer;
use zeroize::Zeroizing;

use crate::CryptoError;

/// Length in bytes of an Ed25519 public identity key, a NodeId and an X25519 key.
pub const KEY_LEN: usize = 32;
/// Length in bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A node's 256-bit identifier: `BLAKE3(identity public key)` (32 bytes).
///
/// This is the key space of the DHT and the name a client pins when it dials a relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; KEY_LEN]);

impl NodeId {
    /// The NodeId of an Ed25519 identity public key (32 bytes).
    pub fn from_identity(identity: &[u8; KEY_LEN]) -> Self {
        NodeId(*blake3::hash(identity).as_bytes())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Lower-case hex of the 32 bytes (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters: enough to tell relays apart in logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Fill `N` bytes from the operating system's CSPRNG.
///
/// # Errors
/// [`CryptoError::Rng`] when the OS refuses to give randomness.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| CryptoError::Rng)?;
    Ok(out)
}

/// A node's long-term Ed25519 identity key pair. The secret half is zeroized on drop
/// (ed25519-dalek's `zeroize` feature).
pub struct IdentityKey {
    signing: ed25519_dalek::SigningKey,
}

impl IdentityKey {
    /// A fresh key from the OS CSPRNG.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] when no randomness is available.
    pub fn generate() -> Result<Self, CryptoError> {
        let seed = Zeroizing::new(random_bytes::<KEY_LEN>()?);
        Ok(Self::from_seed(&seed))
    }

    /// The key whose 32-byte Ed25519 secret seed is `seed` (RFC 8032 §5.1.5).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        IdentityKey {
            signing: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed, for storing in the data directory.
    pub fn seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The 32-byte Ed25519 public key.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// `BLAKE3(public key)`.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity(&self.public())
    }

    /// Ed25519 signature (64 bytes) of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(msg).to_bytes()
    }

    /// The dalek key, for building the TLS certificate in `anonnet-net`.
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.signing
    }
}

/// Check an Ed25519 signature (strict verification: rejects small-order keys and
/// non-canonical signatures).
///
/// # Errors
/// [`CryptoError::BadKey`] when `public` is not a valid point, [`CryptoError::BadSignature`]
/// when the signature does not verify.
pub fn verify_signature(
    public: &[u8; KEY_LEN],
    msg: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), CryptoError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public).map_err(|_| CryptoError::BadKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(msg, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// A relay's X25519 onion key pair (the `b`, `B` of the circuit handshake). The secret is
/// zeroized on drop (x25519-dalek's `zeroize` feature).
pub struct OnionKey {
    secret: x25519_dalek::StaticSecret,
}

impl OnionKey {
    /// A fresh key from the OS CSPRNG.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] when no randomness is available.
    pub fn generate() -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(random_bytes::<KEY_LEN>()?);
        Ok(Self::from_secret(&bytes))
    }

    /// The key whose 32-byte X25519 secret scalar is `secret` (RFC 7748 §5, clamped on use).
    pub fn from_secret(secret: &[u8; KEY_LEN]) -> Self {
        OnionKey {
            secret: x25519_dalek::StaticSecret::from(*secret),
        }
    }

    /// The 32 secret bytes, for storing in the data directory.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The 32-byte X25519 public key `B`.
    pub fn public(&self) -> [u8; KEY_LEN] {
        x25519_dalek::PublicKey::from(&self.secret).to_bytes()
    }

    pub(crate) fn secret(&self) -> &x25519_dalek::StaticSecret {
        &self.secret
    }
}
