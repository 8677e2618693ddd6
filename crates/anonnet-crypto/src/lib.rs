#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod dark;
pub mod descriptor;
pub mod handshake;
pub mod hs;
pub mod hs_pow;
pub mod hybrid;
pub mod identity;
pub mod layer;
pub mod onion;

pub use descriptor::{sign_descriptor, verify_descriptor, DescriptorError, VerifiedDescriptor};
pub use handshake::{ClientHandshake, ClientHello, HandshakeError, HopKeys, Protoid, ServerReply};
pub use hybrid::{
    hello_names, server_hybrid_handshake, HybridClientHandshake, HYBRID_HELLO_LEN, HYBRID_REPLY_LEN,
};
pub use identity::{random_bytes, verify_signature, IdentityKey, NodeId, OnionKey};
pub use layer::{LayerError, LayerOpener, LayerSealer};
pub use onion::{
    ClientBackward, ClientForward, ClientOnion, OnionError, RelayBackward, RelayForward, RelayOnion,
};

/// Errors from the cryptographic layer. Every one is fatal for the circuit or record it
/// concerns, never for the process.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Rng,
    /// A public key is not a valid curve point (or is of small order).
    #[error("invalid public key")]
    BadKey,
    /// A signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

impl anonnet_error::HasKind for CryptoError {
    /// No randomness is [`anonnet_error::ErrorKind::LocalResource`]; a bad key or
    /// signature came from a peer or a file: [`anonnet_error::ErrorKind::Protocol`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            CryptoError::Rng => anonnet_error::ErrorKind::LocalResource,
            CryptoError::BadKey | CryptoError::BadSignature => anonnet_error::ErrorKind::Protocol,
        }
    }
}
