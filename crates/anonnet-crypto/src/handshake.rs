//! The per-hop circuit handshake: ntor-style, X25519 + HKDF-SHA256 + HMAC-SHA256.
//! Spec: `docs/protocol.md` §5 "Circuit handshake".
//!
//! The client sends `(NODE_ID, B, X)` in `CREATE` (or `EXTEND`); the relay answers
//! `(Y, AUTH)` in `CREATED` (or `EXTENDED`). Both derive
//!
//! ```text
//! secret_input = X25519(x|y, Y|X) ‖ X25519(x|b, B|X) ‖ NODE_ID ‖ B ‖ X ‖ Y ‖ PROTOID
//! prk          = HKDF-Extract(salt = PROTOID ‖ ":extract", ikm = secret_input)
//! okm (96)     = HKDF-Expand(prk, info = PROTOID ‖ ":expand", 96)
//! auth_key ‖ Kf ‖ Kb = okm[0..32] ‖ okm[32..64] ‖ okm[64..96]
//! AUTH         = HMAC-SHA256(auth_key, NODE_ID ‖ B ‖ Y ‖ X ‖ PROTOID ‖ "Server")
//! ```
//!
//! The ephemeral–ephemeral term gives forward secrecy; the ephemeral–onion-key term and
//! `AUTH` prove the relay holds the onion key `b`. Kf seals client→exit layers, Kb
//! exit→client layers.
//!
//! The same handshake runs end to end between a client and a hidden service (§13.4), with
//! its own [`Protoid::HiddenService`] (§5.5) so that a transcript of one can never be
//! taken for the other. The hybrid post-quantum handshake (type 2) is in
//! [`crate::hybrid`].

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::identity::{random_bytes, NodeId, OnionKey, KEY_LEN};

/// The protocol identifier of the relay handshake (§5.2), mixed into every derivation: the
/// 28 ASCII bytes `anonnet-ntor-x25519-sha256-1`.
pub const PROTOID: &[u8] = b"anonnet-ntor-x25519-sha256-1";

/// The protocol identifier of the client↔hidden-service end-to-end handshake (§5.5): the
/// 31 ASCII bytes `anonnet-hs-ntor-x25519-sha256-1`.
pub const HS_PROTOID: &[u8] = b"anonnet-hs-ntor-x25519-sha256-1";

/// Which use of the ntor handshake a transcript belongs to. The identifier is mixed into
/// `secret_input`, the HKDF salt and info, and `AUTH`, so the two never agree on keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protoid {
    /// A circuit hop with a relay ([`PROTOID`], §5.2).
    Relay,
    /// The end-to-end hop with a hidden service ([`HS_PROTOID`], §5.5).
    HiddenService,
}

impl Protoid {
    /// The identifier's bytes: [`PROTOID`] (28) or [`HS_PROTOID`] (31).
    pub const fn bytes(self) -> &'static [u8] {
        match self {
            Protoid::Relay => PROTOID,
            Protoid::HiddenService => HS_PROTOID,
        }
    }
}

/// Errors of the circuit handshake. Each one ends the circuit being built.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// `CREATE` named a NodeId or onion key that is not this relay's.
    #[error("CREATE is addressed to another relay or an old onion key")]
    WrongRelay,
    /// A Diffie-Hellman result was all zeros (a small-order public key).
    #[error("peer sent a non-contributory X25519 key")]
    NonContributory,
    /// The relay's `AUTH` did not verify: it does not hold the onion key.
    #[error("relay failed to prove its onion key")]
    BadAuth,
    /// A handshake message had the wrong length or an invalid encoding (for example an
    /// ML-KEM encapsulation key that fails the FIPS 203 modulus check).
    #[error("malformed handshake message")]
    Malformed,
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Rng,
    /// `CREATE` asked for a handshake type the relay does not answer: one its descriptor
    /// does not list (`docs/protocol.md` §3.1, §4.2).
    #[error("CREATE asks for a handshake type this relay does not answer")]
    NotAnswered,
}

/// The symmetric keys of one hop (32 bytes each), zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq)]
pub struct HopKeys {
    /// ChaCha20-Poly1305 key for layers travelling away from the client.
    pub forward: [u8; 32],
    /// ChaCha20-Poly1305 key for layers travelling towards the client.
    pub backward: [u8; 32],
}

impl std::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKeys([scrubbed])")
    }
}

/// What the client sends to open a hop (goes into `CREATE` or `EXTEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello {
    /// The relay's NodeId.
    pub node_id: [u8; KEY_LEN],
    /// The relay's onion key `B`.
    pub onion_key: [u8; KEY_LEN],
    /// The client's ephemeral key `X`.
    pub client_pk: [u8; KEY_LEN],
}

/// What the relay answers (goes into `CREATED` or `EXTENDED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerReply {
    /// The relay's ephemeral key `Y`.
    pub server_pk: [u8; KEY_LEN],
    /// `AUTH` (HMAC-SHA256, 32 bytes).
    pub auth: [u8; KEY_LEN],
}

/// The client's half-finished handshake: holds the ephemeral secret `x` until `CREATED`
/// arrives. The secret is zeroized on drop.
pub struct ClientHandshake {
    secret: x25519_dalek::StaticSecret,
    hello: ClientHello,
    protoid: Protoid,
}

impl ClientHandshake {
    /// Start a handshake with the relay `node_id` whose onion key is `onion_key`.
    ///
    /// # Errors
    /// [`HandshakeError::Rng`] when no randomness is available.
    pub fn start(node_id: NodeId, onion_key: [u8; KEY_LEN]) -> Result<Self, HandshakeError> {
        Self::start_random(Protoid::Relay, node_id, onion_key)
    }

    /// Start the end-to-end handshake with a hidden service (§13.4, PROTOID of §5.5):
    /// `service_id` is `BLAKE3(A)` of the service's address, `enc_key` the X25519 key (32
    /// bytes) the descriptor lists for the introduction point the client introduces
    /// through (§12.3). Answered by [`server_handshake_hs`].
    ///
    /// # Errors
    /// [`HandshakeError::Rng`] when no randomness is available.
    pub fn start_hs(service_id: NodeId, enc_key: [u8; KEY_LEN]) -> Result<Self, HandshakeError> {
        Self::start_random(Protoid::HiddenService, service_id, enc_key)
    }

    fn start_random(
        protoid: Protoid,
        node_id: NodeId,
        onion_key: [u8; KEY_LEN],
    ) -> Result<Self, HandshakeError> {
        let x = Zeroizing::new(random_bytes::<KEY_LEN>().map_err(|_| HandshakeError::Rng)?);
        Ok(Self::start_with_protoid(protoid, &x, node_id, onion_key))
    }

    /// As [`ClientHandshake::start`] with a given ephemeral secret (test vectors only).
    pub fn start_with_secret(x: &[u8; KEY_LEN], node_id: NodeId, onion_key: [u8; KEY_LEN]) -> Self {
        Self::start_with_protoid(Protoid::Relay, x, node_id, onion_key)
    }

    /// As [`ClientHandshake::start`] or [`ClientHandshake::start_hs`] with a given ephemeral
    /// secret `x` (32 bytes, clamped by X25519) and protocol identifier (test vectors only).
    pub fn start_with_protoid(
        protoid: Protoid,
        x: &[u8; KEY_LEN],
        node_id: NodeId,
        onion_key: [u8; KEY_LEN],
    ) -> Self {
        let secret = x25519_dalek::StaticSecret::from(*x);
        let client_pk = x25519_dalek::PublicKey::from(&secret).to_bytes();
        ClientHandshake {
            secret,
            hello: ClientHello {
                node_id: node_id.0,
                onion_key,
                client_pk,
            },
            protoid,
        }
    }

    /// The message to send.
    pub fn hello(&self) -> ClientHello {
        self.hello
    }

    /// Check the relay's reply and derive the hop keys.
    ///
    /// # Errors
    /// [`HandshakeError::NonContributory`] for a small-order `Y`, [`HandshakeError::BadAuth`]
    /// when `AUTH` does not verify (compared in constant time).
    pub fn finish(self, reply: &ServerReply) -> Result<HopKeys, HandshakeError> {
        let y = x25519_dalek::PublicKey::from(reply.server_pk);
        let b = x25519_dalek::PublicKey::from(self.hello.onion_key);
        let xy = self.secret.diffie_hellman(&y);
        let xb = self.secret.diffie_hellman(&b);
        if !xy.was_contributory() || !xb.was_contributory() {
            return Err(HandshakeError::NonContributory);
        }
        let (keys, auth) = derive(
            self.protoid,
            xy.as_bytes(),
            xb.as_bytes(),
            &self.hello,
            &reply.server_pk,
        );
        if bool::from(auth.ct_eq(&reply.auth)) {
            Ok(keys)
        } else {
            Err(HandshakeError::BadAuth)
        }
    }
}

/// The relay's side: answer a [`ClientHello`] with a fresh ephemeral key.
///
/// # Errors
/// [`HandshakeError::WrongRelay`] when the hello names another NodeId or onion key,
/// [`HandshakeError::NonContributory`] for a small-order `X`, [`HandshakeError::Rng`].
pub fn server_handshake(
    node_id: NodeId,
    onion_key: &OnionKey,
    hello: &ClientHello,
) -> Result<(ServerReply, HopKeys), HandshakeError> {
    let y = Zeroizing::new(random_bytes::<KEY_LEN>().map_err(|_| HandshakeError::Rng)?);
    server_handshake_with_protoid(Protoid::Relay, &y, node_id, onion_key, hello)
}

/// The hidden service's side of the end-to-end handshake (§13.4, PROTOID of §5.5):
/// `service_id` is `BLAKE3(A)`, `enc_key` the secret of the introduction point the
/// introduction arrived through (its public half is that point's `enc_key` in the
/// descriptor, §12.3, §13.1). Answers a hello from [`ClientHandshake::start_hs`]; a hello made
/// for a relay ([`ClientHandshake::start`]) yields keys the client rejects with
/// [`HandshakeError::BadAuth`].
///
/// # Errors
/// As [`server_handshake`].
pub fn server_handshake_hs(
    service_id: NodeId,
    enc_key: &OnionKey,
    hello: &ClientHello,
) -> Result<(ServerReply, HopKeys), HandshakeError> {
    let y = Zeroizing::new(random_bytes::<KEY_LEN>().map_err(|_| HandshakeError::Rng)?);
    server_handshake_with_protoid(Protoid::HiddenService, &y, service_id, enc_key, hello)
}

/// As [`server_handshake`] with a given ephemeral secret (test vectors only).
///
/// # Errors
/// As [`server_handshake`].
pub fn server_handshake_with_secret(
    y: &[u8; KEY_LEN],
    node_id: NodeId,
    onion_key: &OnionKey,
    hello: &ClientHello,
) -> Result<(ServerReply, HopKeys), HandshakeError> {
    server_handshake_with_protoid(Protoid::Relay, y, node_id, onion_key, hello)
}

/// As [`server_handshake`] or [`server_handshake_hs`] with a given ephemeral secret `y`
/// (32 bytes, clamped by X25519) and protocol identifier (test vectors only).
///
/// # Errors
/// As [`server_handshake`].
pub fn server_handshake_with_protoid(
    protoid: Protoid,
    y: &[u8; KEY_LEN],
    node_id: NodeId,
    onion_key: &OnionKey,
    hello: &ClientHello,
) -> Result<(ServerReply, HopKeys), HandshakeError> {
    let names_us = bool::from(hello.node_id.ct_eq(&node_id.0))
        && bool::from(hello.onion_key.ct_eq(&onion_key.public()));
    if !names_us {
        return Err(HandshakeError::WrongRelay);
    }
    let eph = x25519_dalek::StaticSecret::from(*y);
    let server_pk = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let x = x25519_dalek::PublicKey::from(hello.client_pk);
    let xy = eph.diffie_hellman(&x);
    let xb = onion_key.secret().diffie_hellman(&x);
    if !xy.was_contributory() || !xb.was_contributory() {
        return Err(HandshakeError::NonContributory);
    }
    let (keys, auth) = derive(protoid, xy.as_bytes(), xb.as_bytes(), hello, &server_pk);
    Ok((ServerReply { server_pk, auth }, keys))
}

fn derive(
    protoid: Protoid,
    xy: &[u8; 32],
    xb: &[u8; 32],
    hello: &ClientHello,
    server_pk: &[u8; KEY_LEN],
) -> (HopKeys, [u8; 32]) {
    let protoid = protoid.bytes();
    let mut secret_input = Zeroizing::new(Vec::with_capacity(6 * 32 + protoid.len()));
    for part in [
        &xy[..],
        &xb[..],
        &hello.node_id,
        &hello.onion_key,
        &hello.client_pk,
        server_pk,
        protoid,
    ] {
        secret_input.extend_from_slice(part);
    }
    let auth_input = [
        &hello.node_id[..],
        &hello.onion_key,
        server_pk,
        &hello.client_pk,
        protoid,
        b"Server",
    ];
    key_schedule(protoid, &secret_input, &auth_input)
}

/// The §5.2 key schedule shared by the ntor and the hybrid handshakes: HKDF-SHA256 of
/// `secret_input` with salt `protoid ‖ ":extract"` and info `protoid ‖ ":expand"` into
/// `auth_key ‖ Kf ‖ Kb` (96 bytes), then `AUTH = HMAC-SHA256(auth_key, auth_input…)`.
pub(crate) fn key_schedule(
    protoid: &[u8],
    secret_input: &[u8],
    auth_input: &[&[u8]],
) -> (HopKeys, [u8; 32]) {
    let salt = [protoid, b":extract"].concat();
    let info = [protoid, b":expand"].concat();
    let hk = Hkdf::<Sha256>::new(Some(&salt), secret_input);
    let mut okm = Zeroizing::new([0u8; 96]);
    // 96 bytes is far below HKDF-SHA256's 255 × 32 limit, so expand cannot fail.
    let _ = hk.expand(&info, okm.as_mut_slice());
    let (auth_key, rest) = okm.split_at(32);
    let (kf, kb) = rest.split_at(32);
    let mut keys = HopKeys {
        forward: [0; 32],
        backward: [0; 32],
    };
    keys.forward.copy_from_slice(kf);
    keys.backward.copy_from_slice(kb);
    // HMAC zero-pads keys shorter than the 64-byte block (RFC 2104 §2), so padding the
    // 32-byte key ourselves is the same HMAC and needs no fallible constructor.
    let mut block_key = Zeroizing::new([0u8; 64]);
    block_key[..32].copy_from_slice(auth_key);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&(*block_key).into());
    for part in auth_input {
        mac.update(part);
    }
    let auth: [u8; 32] = mac.finalize().into_bytes().into();
    (keys, auth)
}

impl anonnet_error::HasKind for HandshakeError {
    /// A handshake a peer got wrong is [`anonnet_error::ErrorKind::Protocol`]; no
    /// randomness is [`anonnet_error::ErrorKind::LocalResource`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            HandshakeError::Rng => anonnet_error::ErrorKind::LocalResource,
            _ => anonnet_error::ErrorKind::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vector printed in docs/protocol.md §5.3.
    #[test]
    fn handshake_test_vector() {
        let relay_identity = crate::IdentityKey::from_seed(&[0x11; 32]);
        let node_id = relay_identity.node_id();
        let onion = OnionKey::from_secret(&[0x22; 32]);
        let client = ClientHandshake::start_with_secret(&[0x33; 32], node_id, onion.public());
        let hello = client.hello();
        let (reply, relay_keys) =
            server_handshake_with_secret(&[0x44; 32], node_id, &onion, &hello).unwrap();
        let client_keys = client.finish(&reply).unwrap();
        assert_eq!(client_keys, relay_keys);
        let got = [
            hex::encode(node_id.0),
            hex::encode(onion.public()),
            hex::encode(hello.client_pk),
            hex::encode(reply.server_pk),
            hex::encode(reply.auth),
            hex::encode(client_keys.forward),
            hex::encode(client_keys.backward),
        ];
        let expected = VECTOR;
        assert_eq!(got, expected, "{got:#?}");
    }

    /// NODE_ID, B, X, Y, AUTH, Kf, Kb for identity seed 0x11×32, onion secret 0x22×32,
    /// client secret x = 0x33×32, relay ephemeral y = 0x44×32.
    const VECTOR: [&str; 7] = [
        "4a78877c4a0926fc5d5cb282bb45c11c8489b202fe1890fa0c6593e6192b9f75",
        "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20",
        "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14",
        "ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b",
        "392d5208cd14de179610df8fddb2336c9513176f2d1e0349738ac0d36175c7c4",
        "a7889429bd08d5fefc8ceed501b97de0336b69d3fdfaf57b040009fcbfcbb0ec",
        "5a3aa3d199a8aa5b4d6a1734537e1e3ef83f42054dfa57b432ab6c78eb96247a",
    ];

    #[test]
    fn handshake_rejects_wrong_relay_and_forged_auth() {
        let id = crate::IdentityKey::from_seed(&[1; 32]).node_id();
        let other = crate::IdentityKey::from_seed(&[2; 32]).node_id();
        let onion = OnionKey::from_secret(&[3; 32]);
        let client = ClientHandshake::start(other, onion.public()).unwrap();
        assert_eq!(
            server_handshake(id, &onion, &client.hello()).unwrap_err(),
            HandshakeError::WrongRelay
        );
        let client = ClientHandshake::start(id, onion.public()).unwrap();
        let (mut reply, _) = server_handshake(id, &onion, &client.hello()).unwrap();
        reply.auth[0] ^= 1;
        assert_eq!(client.finish(&reply).unwrap_err(), HandshakeError::BadAuth);
        // A relay without the onion key cannot answer.
        let impostor = OnionKey::from_secret(&[4; 32]);
        let client = ClientHandshake::start(id, onion.public()).unwrap();
        let mut hello = client.hello();
        hello.onion_key = impostor.public();
        let (reply, _) = server_handshake(id, &impostor, &hello).unwrap();
        assert_eq!(client.finish(&reply).unwrap_err(), HandshakeError::BadAuth);
    }

    /// The hidden-service PROTOID (§5.5) with the inputs of §5.3: `AUTH`, `Kf`, `Kb`
    /// (`NODE_ID`, `B`, `X`, `Y` are those of [`VECTOR`]).
    #[test]
    fn hs_handshake_test_vector() {
        let node_id = crate::IdentityKey::from_seed(&[0x11; 32]).node_id();
        let enc = OnionKey::from_secret(&[0x22; 32]);
        let client = ClientHandshake::start_with_protoid(
            Protoid::HiddenService,
            &[0x33; 32],
            node_id,
            enc.public(),
        );
        let hello = client.hello();
        let (reply, service_keys) = server_handshake_with_protoid(
            Protoid::HiddenService,
            &[0x44; 32],
            node_id,
            &enc,
            &hello,
        )
        .unwrap();
        let client_keys = client.finish(&reply).unwrap();
        assert_eq!(client_keys, service_keys);
        assert_eq!(hex::encode(hello.client_pk), VECTOR[2]);
        assert_eq!(hex::encode(reply.server_pk), VECTOR[3]);
        let got = [
            hex::encode(reply.auth),
            hex::encode(client_keys.forward),
            hex::encode(client_keys.backward),
        ];
        assert_eq!(got, HS_VECTOR, "{got:#?}");
    }

    /// AUTH, Kf, Kb of the §5.3 inputs under [`HS_PROTOID`].
    const HS_VECTOR: [&str; 3] = [
        "2137cd7e5b33c362e6351a13ec8f90bd12f1c4e0cabc3164af57348758995bbf",
        "8cbcd44fce73c16a89c3c7b58890567c98c75ad423638528db5d5999cc0c39cb",
        "65cb053dbdcd8c9a1521a7f37987ef299639fd575b9fdc2135c3e28b5beee58e",
    ];

    #[test]
    fn hs_handshake_completes_between_client_and_service() {
        let service_id = crate::IdentityKey::from_seed(&[7; 32]).node_id();
        let enc = OnionKey::from_secret(&[8; 32]);
        let client = ClientHandshake::start_hs(service_id, enc.public()).unwrap();
        let (reply, service_keys) = server_handshake_hs(service_id, &enc, &client.hello()).unwrap();
        assert_eq!(client.finish(&reply).unwrap(), service_keys);
    }

    #[test]
    fn relay_protoid_hello_does_not_complete_against_hs_service() {
        let service_id = crate::IdentityKey::from_seed(&[7; 32]).node_id();
        let enc = OnionKey::from_secret(&[8; 32]);
        // A relay-handshake hello answered by the hidden-service function: AUTH mismatch.
        let client = ClientHandshake::start(service_id, enc.public()).unwrap();
        let (reply, _) = server_handshake_hs(service_id, &enc, &client.hello()).unwrap();
        assert_eq!(client.finish(&reply).unwrap_err(), HandshakeError::BadAuth);
        // And the other way round: a hidden-service hello answered as a relay.
        let client = ClientHandshake::start_hs(service_id, enc.public()).unwrap();
        let (reply, _) = server_handshake(service_id, &enc, &client.hello()).unwrap();
        assert_eq!(client.finish(&reply).unwrap_err(), HandshakeError::BadAuth);
    }

    #[test]
    fn handshake_rejects_small_order_keys() {
        let id = crate::IdentityKey::from_seed(&[1; 32]).node_id();
        let onion = OnionKey::from_secret(&[3; 32]);
        let hello = ClientHello {
            node_id: id.0,
            onion_key: onion.public(),
            client_pk: [0; 32],
        };
        assert_eq!(
            server_handshake(id, &onion, &hello).unwrap_err(),
            HandshakeError::NonContributory
        );
    }
}
