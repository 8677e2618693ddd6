//! The hybrid post-quantum circuit handshake (handshake type 2): X25519 + ML-KEM-768
//! (FIPS 203), sans-IO. Spec: `docs/protocol.md` §5.4.
//!
//! The client sends `NODE_ID ‖ B ‖ X ‖ EK` (1280 bytes), where `EK` is a fresh ML-KEM-768
//! encapsulation key made for this hop alone; the relay answers `Y ‖ CT ‖ AUTH` (1152
//! bytes), `CT` encapsulating a 32-byte secret `SS` to `EK`. Both derive
//!
//! ```text
//! secret_input = EXP_xy ‖ EXP_xb ‖ SS ‖ NODE_ID ‖ B ‖ X ‖ Y ‖ SHA256(EK) ‖ SHA256(CT) ‖ PROTOID_HYBRID
//! auth_key ‖ Kf ‖ Kb = HKDF-SHA256(salt = PROTOID_HYBRID ‖ ":extract",
//!                                  info = PROTOID_HYBRID ‖ ":expand", L = 96)
//! AUTH = HMAC-SHA256(auth_key, NODE_ID ‖ B ‖ Y ‖ X ‖ SHA256(EK) ‖ SHA256(CT) ‖ PROTOID_HYBRID ‖ "Server")
//! ```
//!
//! The KEM is ephemeral on both sides, so the hop keys stay secret against an adversary who
//! records the circuit today and has a quantum computer later, as long as either X25519 or
//! ML-KEM-768 holds. The relay still authenticates classically, with `EXP_xb` and `AUTH`
//! over its X25519 onion key, exactly as in the ntor handshake of [`crate::handshake`]:
//! forging a relay needs a quantum computer *during* the handshake.

use ml_kem::kem::{Decapsulate, KeyExport};
use ml_kem::{DecapsulationKey768, EncapsulationKey768, MlKem768, Seed, B32};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::handshake::{key_schedule, HandshakeError, HopKeys};
use crate::identity::{random_bytes, NodeId, OnionKey, KEY_LEN};

/// The protocol identifier of the hybrid handshake: the 39 ASCII bytes
/// `anonnet-hybrid-x25519-mlkem768-sha256-2`.
pub const PROTOID_HYBRID: &[u8] = b"anonnet-hybrid-x25519-mlkem768-sha256-2";

/// Length in bytes of an ML-KEM-768 encapsulation key `EK` (FIPS 203, 384·k + 32, k = 3).
pub const MLKEM768_EK_LEN: usize = 1184;
/// Length in bytes of an ML-KEM-768 ciphertext `CT` (FIPS 203, 32·(du·k + dv)).
pub const MLKEM768_CT_LEN: usize = 1088;
/// Length in bytes of an ML-KEM key-generation seed `d ‖ z` (FIPS 203 §7.1).
pub const KEM_SEED_LEN: usize = 64;

/// Length in bytes of the client's hello: `NODE_ID[32] ‖ B[32] ‖ X[32] ‖ EK[1184]`.
pub const HYBRID_HELLO_LEN: usize = 3 * KEY_LEN + MLKEM768_EK_LEN;
/// Length in bytes of the relay's reply: `Y[32] ‖ CT[1088] ‖ AUTH[32]`.
pub const HYBRID_REPLY_LEN: usize = KEY_LEN + MLKEM768_CT_LEN + KEY_LEN;

/// The client's half-finished hybrid handshake with one hop: holds the ephemeral X25519
/// secret `x` and the ML-KEM decapsulation key until the reply arrives. Both are zeroized
/// on drop (x25519-dalek's and ml-kem's `zeroize` features).
pub struct HybridClientHandshake {
    x: x25519_dalek::StaticSecret,
    dk: DecapsulationKey768,
    node_id: [u8; KEY_LEN],
    onion_key: [u8; KEY_LEN],
    client_pk: [u8; KEY_LEN],
    ek_hash: [u8; 32],
    hello: Vec<u8>,
}

impl HybridClientHandshake {
    /// Start a hybrid handshake with the relay `node_id` whose X25519 onion key is
    /// `onion_key` (32 bytes): a fresh `x` and a fresh ML-KEM-768 key pair.
    ///
    /// # Errors
    /// [`HandshakeError::Rng`] when no randomness is available.
    pub fn start(node_id: NodeId, onion_key: [u8; KEY_LEN]) -> Result<Self, HandshakeError> {
        let x = Zeroizing::new(random_bytes::<KEY_LEN>().map_err(|_| HandshakeError::Rng)?);
        let kem_seed =
            Zeroizing::new(random_bytes::<KEM_SEED_LEN>().map_err(|_| HandshakeError::Rng)?);
        Ok(Self::start_with_seeds(&x, &kem_seed, node_id, onion_key))
    }

    /// As [`HybridClientHandshake::start`] with a given X25519 secret `x` (32 bytes, clamped
    /// by X25519) and ML-KEM key-generation seed `kem_seed = d ‖ z` (64 bytes, FIPS 203
    /// `ML-KEM.KeyGen_internal(d, z)`). Test vectors only.
    pub fn start_with_seeds(
        x: &[u8; KEY_LEN],
        kem_seed: &[u8; KEM_SEED_LEN],
        node_id: NodeId,
        onion_key: [u8; KEY_LEN],
    ) -> Self {
        let x = x25519_dalek::StaticSecret::from(*x);
        let client_pk = x25519_dalek::PublicKey::from(&x).to_bytes();
        let mut seed = Seed::from(*kem_seed);
        let dk = DecapsulationKey768::from_seed(seed);
        seed.as_mut_slice().zeroize();
        let ek = dk.encapsulation_key().to_bytes();
        let mut hello = Vec::with_capacity(HYBRID_HELLO_LEN);
        for part in [&node_id.0[..], &onion_key, &client_pk, ek.as_slice()] {
            hello.extend_from_slice(part);
        }
        HybridClientHandshake {
            x,
            dk,
            node_id: node_id.0,
            onion_key,
            client_pk,
            ek_hash: Sha256::digest(ek.as_slice()).into(),
            hello,
        }
    }

    /// The hello to send ([`HYBRID_HELLO_LEN`] = 1280 bytes):
    /// `NODE_ID[32] ‖ B[32] ‖ X[32] ‖ EK[1184]`.
    pub fn hello_bytes(&self) -> Vec<u8> {
        self.hello.clone()
    }

    /// Check the relay's reply `Y[32] ‖ CT[1088] ‖ AUTH[32]` and derive the hop keys.
    ///
    /// A corrupted `CT` decapsulates to an unrelated secret (FIPS 203 implicit rejection),
    /// so it shows up as [`HandshakeError::BadAuth`].
    ///
    /// # Errors
    /// [`HandshakeError::Malformed`] when `reply` is not [`HYBRID_REPLY_LEN`] (1152) bytes,
    /// [`HandshakeError::NonContributory`] for a small-order `Y`, [`HandshakeError::BadAuth`]
    /// when `AUTH` does not verify (compared in constant time).
    pub fn finish(self, reply: &[u8]) -> Result<HopKeys, HandshakeError> {
        let (server_pk, ct, auth) = split_reply(reply).ok_or(HandshakeError::Malformed)?;
        let ct =
            ml_kem::Ciphertext::<MlKem768>::try_from(ct).map_err(|_| HandshakeError::Malformed)?;
        let y = x25519_dalek::PublicKey::from(*server_pk);
        let b = x25519_dalek::PublicKey::from(self.onion_key);
        let xy = self.x.diffie_hellman(&y);
        let xb = self.x.diffie_hellman(&b);
        if !xy.was_contributory() || !xb.was_contributory() {
            return Err(HandshakeError::NonContributory);
        }
        let mut ss = self.dk.decapsulate(&ct);
        let shared = Zeroizing::new(<[u8; 32]>::from(ss));
        ss.as_mut_slice().zeroize();
        let (keys, expected) = derive(&Transcript {
            xy: xy.as_bytes(),
            xb: xb.as_bytes(),
            ss: &shared,
            node_id: &self.node_id,
            onion_key: &self.onion_key,
            client_pk: &self.client_pk,
            server_pk,
            ek_hash: &self.ek_hash,
            ct_hash: &Sha256::digest(ct.as_slice()).into(),
        });
        if bool::from(expected.ct_eq(auth)) {
            Ok(keys)
        } else {
            Err(HandshakeError::BadAuth)
        }
    }
}

/// `(NODE_ID, B)` of a hybrid hello, so that a relay holding more than one onion key (the
/// current and the previous one, during a rotation) can pick the one named by `B` before
/// answering with [`server_hybrid_handshake`]. `None` unless `hello` is
/// [`HYBRID_HELLO_LEN`] (1280) bytes.
pub fn hello_names(hello: &[u8]) -> Option<([u8; KEY_LEN], [u8; KEY_LEN])> {
    split_hello(hello).map(|(node_id, onion_key, _, _)| (*node_id, *onion_key))
}

/// The relay's side: answer a 1280-byte hybrid hello with `Y[32] ‖ CT[1088] ‖ AUTH[32]`
/// ([`HYBRID_REPLY_LEN`] = 1152 bytes) and the hop keys, using a fresh `y` and fresh
/// encapsulation randomness.
///
/// # Errors
/// [`HandshakeError::Malformed`] when `hello` is not 1280 bytes or `EK` fails the FIPS 203
/// modulus check, [`HandshakeError::WrongRelay`] when it names another NodeId or onion key
/// (compared in constant time), [`HandshakeError::NonContributory`] for a small-order `X`,
/// [`HandshakeError::Rng`].
pub fn server_hybrid_handshake(
    node_id: NodeId,
    onion_key: &OnionKey,
    hello: &[u8],
) -> Result<(Vec<u8>, HopKeys), HandshakeError> {
    let y = Zeroizing::new(random_bytes::<KEY_LEN>().map_err(|_| HandshakeError::Rng)?);
    let m = Zeroizing::new(random_bytes::<32>().map_err(|_| HandshakeError::Rng)?);
    server_hybrid_handshake_with_seeds(&y, &m, node_id, onion_key, hello)
}

/// As [`server_hybrid_handshake`] with a given X25519 secret `y` (32 bytes, clamped by
/// X25519) and encapsulation randomness `encaps_seed` (the 32-byte message `m` of FIPS 203
/// `ML-KEM.Encaps_internal(ek, m)`). Test vectors only.
///
/// # Errors
/// As [`server_hybrid_handshake`], without [`HandshakeError::Rng`].
pub fn server_hybrid_handshake_with_seeds(
    y: &[u8; KEY_LEN],
    encaps_seed: &[u8; 32],
    node_id: NodeId,
    onion_key: &OnionKey,
    hello: &[u8],
) -> Result<(Vec<u8>, HopKeys), HandshakeError> {
    let (hello_node_id, hello_onion_key, client_pk, ek_bytes) =
        split_hello(hello).ok_or(HandshakeError::Malformed)?;
    let names_us = bool::from(hello_node_id.ct_eq(&node_id.0))
        && bool::from(hello_onion_key.ct_eq(&onion_key.public()));
    if !names_us {
        return Err(HandshakeError::WrongRelay);
    }
    let ek_array = ml_kem::Key::<EncapsulationKey768>::try_from(ek_bytes)
        .map_err(|_| HandshakeError::Malformed)?;
    let ek = EncapsulationKey768::new(&ek_array).map_err(|_| HandshakeError::Malformed)?;
    let eph = x25519_dalek::StaticSecret::from(*y);
    let server_pk = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let x = x25519_dalek::PublicKey::from(*client_pk);
    let xy = eph.diffie_hellman(&x);
    let xb = onion_key.secret().diffie_hellman(&x);
    if !xy.was_contributory() || !xb.was_contributory() {
        return Err(HandshakeError::NonContributory);
    }
    let mut m = B32::from(*encaps_seed);
    let (ct, mut ss) = ek.encapsulate_deterministic(&m);
    m.as_mut_slice().zeroize();
    let shared = Zeroizing::new(<[u8; 32]>::from(ss));
    ss.as_mut_slice().zeroize();
    let (keys, auth) = derive(&Transcript {
        xy: xy.as_bytes(),
        xb: xb.as_bytes(),
        ss: &shared,
        node_id: hello_node_id,
        onion_key: hello_onion_key,
        client_pk,
        server_pk: &server_pk,
        ek_hash: &Sha256::digest(ek_bytes).into(),
        ct_hash: &Sha256::digest(ct.as_slice()).into(),
    });
    let mut reply = Vec::with_capacity(HYBRID_REPLY_LEN);
    for part in [&server_pk[..], ct.as_slice(), &auth] {
        reply.extend_from_slice(part);
    }
    Ok((reply, keys))
}

/// `NODE_ID, B, X, EK` of a hello of exactly [`HYBRID_HELLO_LEN`] bytes.
#[allow(clippy::type_complexity)]
fn split_hello(hello: &[u8]) -> Option<(&[u8; 32], &[u8; 32], &[u8; 32], &[u8])> {
    if hello.len() != HYBRID_HELLO_LEN {
        return None;
    }
    let (node_id, rest) = hello.split_first_chunk::<KEY_LEN>()?;
    let (onion_key, rest) = rest.split_first_chunk::<KEY_LEN>()?;
    let (client_pk, ek) = rest.split_first_chunk::<KEY_LEN>()?;
    Some((node_id, onion_key, client_pk, ek))
}

/// `Y, CT, AUTH` of a reply of exactly [`HYBRID_REPLY_LEN`] bytes.
fn split_reply(reply: &[u8]) -> Option<(&[u8; 32], &[u8], &[u8; 32])> {
    if reply.len() != HYBRID_REPLY_LEN {
        return None;
    }
    let (server_pk, rest) = reply.split_first_chunk::<KEY_LEN>()?;
    let (ct, auth) = rest.split_last_chunk::<KEY_LEN>()?;
    Some((server_pk, ct, auth))
}

/// Everything both sides feed into the §5.4 key schedule.
struct Transcript<'a> {
    xy: &'a [u8; 32],
    xb: &'a [u8; 32],
    ss: &'a [u8; 32],
    node_id: &'a [u8; KEY_LEN],
    onion_key: &'a [u8; KEY_LEN],
    client_pk: &'a [u8; KEY_LEN],
    server_pk: &'a [u8; KEY_LEN],
    ek_hash: &'a [u8; 32],
    ct_hash: &'a [u8; 32],
}

fn derive(t: &Transcript<'_>) -> (HopKeys, [u8; 32]) {
    let mut secret_input = Zeroizing::new(Vec::with_capacity(9 * 32 + PROTOID_HYBRID.len()));
    for part in [
        &t.xy[..],
        t.xb,
        t.ss,
        t.node_id,
        t.onion_key,
        t.client_pk,
        t.server_pk,
        t.ek_hash,
        t.ct_hash,
        PROTOID_HYBRID,
    ] {
        secret_input.extend_from_slice(part);
    }
    let auth_input = [
        &t.node_id[..],
        t.onion_key,
        t.server_pk,
        t.client_pk,
        t.ek_hash,
        t.ct_hash,
        PROTOID_HYBRID,
        b"Server",
    ];
    key_schedule(PROTOID_HYBRID, &secret_input, &auth_input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (NodeId, OnionKey) {
        let node_id = crate::IdentityKey::from_seed(&[0x11; 32]).node_id();
        (node_id, OnionKey::from_secret(&[0x22; 32]))
    }

    #[test]
    fn hybrid_handshake_round_trip() {
        let (node_id, onion) = relay();
        let client = HybridClientHandshake::start(node_id, onion.public()).unwrap();
        let hello = client.hello_bytes();
        assert_eq!(hello.len(), HYBRID_HELLO_LEN);
        assert_eq!(hello_names(&hello), Some((node_id.0, onion.public())));
        let (reply, relay_keys) = server_hybrid_handshake(node_id, &onion, &hello).unwrap();
        assert_eq!(reply.len(), HYBRID_REPLY_LEN);
        let client_keys = client.finish(&reply).unwrap();
        assert_eq!(client_keys, relay_keys);
        assert_ne!(client_keys.forward, client_keys.backward);
    }

    #[test]
    fn hybrid_lengths_match_fips_203() {
        assert_eq!(HYBRID_HELLO_LEN, 1280);
        assert_eq!(HYBRID_REPLY_LEN, 1152);
        assert_eq!(PROTOID_HYBRID.len(), 39);
    }

    /// Flip one bit at `offset` of an honest reply: the client must refuse it.
    fn tampered_reply_fails(offset: usize) -> HandshakeError {
        let (node_id, onion) = relay();
        let client = HybridClientHandshake::start(node_id, onion.public()).unwrap();
        let (mut reply, _) =
            server_hybrid_handshake(node_id, &onion, &client.hello_bytes()).unwrap();
        reply[offset] ^= 1;
        client.finish(&reply).unwrap_err()
    }

    #[test]
    fn client_rejects_tampered_y_ct_or_auth() {
        // Y: the DH terms change; CT: implicit rejection gives another SS; AUTH itself.
        for offset in [
            0,
            31,
            32,
            600,
            32 + MLKEM768_CT_LEN - 1,
            HYBRID_REPLY_LEN - 1,
        ] {
            assert_eq!(
                tampered_reply_fails(offset),
                HandshakeError::BadAuth,
                "{offset}"
            );
        }
    }

    #[test]
    fn relay_without_the_onion_key_cannot_answer() {
        let (node_id, onion) = relay();
        let impostor = OnionKey::from_secret(&[0x23; 32]);
        let client = HybridClientHandshake::start(node_id, onion.public()).unwrap();
        let mut hello = client.hello_bytes();
        hello[32..64].copy_from_slice(&impostor.public());
        let (reply, _) = server_hybrid_handshake(node_id, &impostor, &hello).unwrap();
        assert_eq!(client.finish(&reply).unwrap_err(), HandshakeError::BadAuth);
    }

    #[test]
    fn relay_refuses_hello_for_another_relay_or_key() {
        let (node_id, onion) = relay();
        let other = crate::IdentityKey::from_seed(&[0x12; 32]).node_id();
        let hello = HybridClientHandshake::start(other, onion.public())
            .unwrap()
            .hello_bytes();
        assert_eq!(
            server_hybrid_handshake(node_id, &onion, &hello).unwrap_err(),
            HandshakeError::WrongRelay
        );
        let old = OnionKey::from_secret(&[0x21; 32]);
        let hello = HybridClientHandshake::start(node_id, old.public())
            .unwrap()
            .hello_bytes();
        assert_eq!(
            server_hybrid_handshake(node_id, &onion, &hello).unwrap_err(),
            HandshakeError::WrongRelay
        );
        // During a rotation the relay picks the key named by B and answers with it.
        assert_eq!(hello_names(&hello), Some((node_id.0, old.public())));
        assert!(server_hybrid_handshake(node_id, &old, &hello).is_ok());
    }

    #[test]
    fn wrong_lengths_are_malformed_not_panics() {
        let (node_id, onion) = relay();
        let client = HybridClientHandshake::start(node_id, onion.public()).unwrap();
        let hello = client.hello_bytes();
        let (reply, _) = server_hybrid_handshake(node_id, &onion, &hello).unwrap();
        for len in [0, 1, 31, 32, 96, HYBRID_HELLO_LEN - 1, HYBRID_HELLO_LEN + 1] {
            let mut h = hello.clone();
            h.resize(len, 0);
            assert_eq!(hello_names(&h), None);
            assert_eq!(
                server_hybrid_handshake(node_id, &onion, &h).unwrap_err(),
                HandshakeError::Malformed
            );
        }
        for len in [
            0,
            1,
            32,
            HYBRID_REPLY_LEN - 1,
            HYBRID_REPLY_LEN + 1,
            HYBRID_HELLO_LEN,
        ] {
            let mut r = reply.clone();
            r.resize(len, 0);
            let client = HybridClientHandshake::start(node_id, onion.public()).unwrap();
            assert_eq!(client.finish(&r).unwrap_err(), HandshakeError::Malformed);
        }
    }

    #[test]
    fn relay_refuses_out_of_range_ek_and_small_order_x() {
        let (node_id, onion) = relay();
        let hello = HybridClientHandshake::start(node_id, onion.public())
            .unwrap()
            .hello_bytes();
        // EK coefficient 0xfff ≥ q = 3329 fails the FIPS 203 §7.2 modulus check.
        let mut bad_ek = hello.clone();
        bad_ek[96] = 0xff;
        bad_ek[97] |= 0x0f;
        assert_eq!(
            server_hybrid_handshake(node_id, &onion, &bad_ek).unwrap_err(),
            HandshakeError::Malformed
        );
        let mut zero_x = hello;
        zero_x[64..96].fill(0);
        assert_eq!(
            server_hybrid_handshake(node_id, &onion, &zero_x).unwrap_err(),
            HandshakeError::NonContributory
        );
    }

    #[test]
    fn client_rejects_small_order_y() {
        let (node_id, onion) = relay();
        let client = HybridClientHandshake::start(node_id, onion.public()).unwrap();
        let (mut reply, _) =
            server_hybrid_handshake(node_id, &onion, &client.hello_bytes()).unwrap();
        reply[..32].fill(0);
        assert_eq!(
            client.finish(&reply).unwrap_err(),
            HandshakeError::NonContributory
        );
    }

    /// Test vector printed in docs/protocol.md §5.4: identity seed 0x11×32, onion secret
    /// 0x22×32, x = 0x33×32, kem_seed = d ‖ z = 0x55×64, y = 0x44×32, m = 0x66×32.
    #[test]
    fn hybrid_handshake_test_vector() {
        let (node_id, onion) = relay();
        let client = HybridClientHandshake::start_with_seeds(
            &[0x33; 32],
            &[0x55; 64],
            node_id,
            onion.public(),
        );
        let hello = client.hello_bytes();
        let (reply, relay_keys) =
            server_hybrid_handshake_with_seeds(&[0x44; 32], &[0x66; 32], node_id, &onion, &hello)
                .unwrap();
        let client_keys = client.finish(&reply).unwrap();
        assert_eq!(client_keys, relay_keys);
        // SS on its own, to check an ML-KEM implementation apart from the key schedule.
        let dk = DecapsulationKey768::from_seed(Seed::from([0x55; 64]));
        let ct =
            ml_kem::Ciphertext::<MlKem768>::try_from(&reply[32..32 + MLKEM768_CT_LEN]).unwrap();
        let ss = dk.decapsulate(&ct);
        let got = [
            hex::encode(&hello[64..96]),
            hex::encode(Sha256::digest(&hello[96..])),
            hex::encode(blake3::hash(&hello).as_bytes()),
            hex::encode(&reply[..32]),
            hex::encode(Sha256::digest(&reply[32..32 + MLKEM768_CT_LEN])),
            hex::encode(ss.as_slice()),
            hex::encode(&reply[32 + MLKEM768_CT_LEN..]),
            hex::encode(blake3::hash(&reply).as_bytes()),
            hex::encode(client_keys.forward),
            hex::encode(client_keys.backward),
        ];
        assert_eq!(got, HYBRID_VECTOR, "{got:#?}");
    }

    /// X, SHA256(EK), BLAKE3(hello), Y, SHA256(CT), SS, AUTH, BLAKE3(reply), Kf, Kb.
    const HYBRID_VECTOR: [&str; 10] = [
        "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14",
        "bd38559a78dc6960bd9edeb1c689a0ec80ba99f2ce5486f7921a4d3d4d213cd0",
        "e4ae497bd000aaa251f30db685a8bfd85eaf830d71116044c11a2e3285344eac",
        "ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b",
        "3f860aa85069aa8b22a6c44a75eb2047274ee5106e6fc72c538cf4faa20720a6",
        "d2e9d0f741e00b984bdeac447881f70775d741fe835d6b239ac80bd4d0b02bb3",
        "5667c3b7fc4c7e9d2e9aa849bdb52b48035ba9eef1753e767cf1cac20f34050d",
        "cb5610aabb29bfc908027874205966e06145574fe621dbed0b903042fd786ff6",
        "dfd736337e5558e78ee3fb2538f1a6064b476c8f71d320172ab92107db2273b0",
        "57d27d0b6a2416e458b69c1f1b20abee6969bde9485f8eb2ee80709c1f210db9",
    ];
}
