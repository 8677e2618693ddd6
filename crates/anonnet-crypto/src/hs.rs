//! Hidden services: `.anon` addresses, time periods, blinded keys, descriptor encryption and
//! signing, and introduction encryption. Spec: `docs/protocol.md` §12.
//!
//! A service is named by its Ed25519 public key `A` (§12.1). For each daily time period it
//! derives a blinded key `A' = h·A` (§12.2) that nobody can link to `A` without knowing
//! `A`; its descriptor is signed by the blinded key, encrypted with a key derived from `A`,
//! and stored in the DHT under an index derived from `A'` (§12.3). So a DHT node can check
//! a descriptor's signature, but can neither read it nor tell which service it belongs to.
//! A client that knows the address seals its introduction to the X25519 key the service
//! holds for the introduction point it goes through (`enc_key`, one per point, §12.4).

use std::fmt;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use data_encoding::BASE32_NOPAD;
use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::VerifyingKey;
use ring::aead::{Aad, Nonce};
use sha2::Sha512;
use zeroize::{Zeroize, Zeroizing};

use anonnet_wire::cell::TAG_LEN;
use anonnet_wire::hs::{HsDescriptor, HsDescriptorBody, HS_SALT_LEN};
use anonnet_wire::WireError;

use crate::identity::{random_bytes, verify_signature, NodeId, KEY_LEN, SIGNATURE_LEN};
use crate::CryptoError;

/// Version byte of `.anon` addresses (the last byte before base32).
pub const ADDRESS_VERSION: u8 = 1;
/// Prefix hashed with the key and version into the address checksum (§12.1).
pub const ADDRESS_CHECKSUM_PREFIX: &[u8] = b"anonnet .anon checksum";
/// Characters of the base32 label of an address: 35 bytes → 56 characters.
pub const ADDRESS_LABEL_LEN: usize = 56;
/// The top-level domain of hidden-service addresses, with its dot.
pub const ANON_SUFFIX: &str = ".anon";
/// Length of a time period (seconds): one day (§12.2).
pub const PERIOD_SECS: u64 = 86_400;
/// How close to a period boundary (seconds) a service also publishes for the neighbouring
/// period, so that clients whose clocks are off by up to an hour still find it (§12.2).
pub const PERIOD_OVERLAP_SECS: u64 = 3600;
/// BLAKE3 `derive_key` context of the blinding factor `h` (§12.2).
pub const BLINDING_FACTOR_CONTEXT: &str = "anonnet 2026 hs blinding factor";
/// BLAKE3 `derive_key` context of the blinded key's nonce prefix (§12.2).
pub const BLINDED_PREFIX_CONTEXT: &str = "anonnet 2026 hs blinded nonce prefix";
/// BLAKE3 `derive_key` context of the descriptor index (§12.3).
pub const DESCRIPTOR_INDEX_CONTEXT: &str = "anonnet 2026 hs descriptor index";
/// BLAKE3 `derive_key` context of the descriptor body key (§12.3).
pub const DESCRIPTOR_BODY_KEY_CONTEXT: &str = "anonnet 2026 hs descriptor body key";
/// BLAKE3 `derive_key` context of the introduction key (§12.4).
pub const INTRODUCE_KEY_CONTEXT: &str = "anonnet 2026 hs introduce key";
/// Prefix of the message a blinded key signs for a descriptor (§12.3).
pub const DESCRIPTOR_SIGNING_CONTEXT: &[u8] = b"anonnet-hs-descriptor-v1";
/// Bytes a sealed introduction adds to its plaintext: `E [32]` and the tag `[16]`.
pub const INTRODUCE_OVERHEAD: usize = KEY_LEN + TAG_LEN;

/// Why a `.anon` host name was refused. Each message is written for the person who typed
/// the address.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// The host does not end in `.anon`.
    #[error("not a .anon address")]
    NotAnon,
    /// The label before `.anon` is not 56 characters long.
    #[error("a .anon address has 56 characters before .anon, this one has {len}")]
    Length {
        /// Length of the label (bytes).
        len: usize,
    },
    /// The label holds characters outside base32 (`a-z`, `2-7`).
    #[error("a .anon address holds only the letters a-z and the digits 2-7")]
    Base32,
    /// The checksum does not match: a typo.
    #[error("mistyped address: checksum does not match")]
    Checksum,
    /// The address is of a version this software does not know.
    #[error("unsupported .anon address version {0} (this software knows version 1)")]
    Version(u8),
    /// The checksum matches but the bytes are not a valid Ed25519 public key.
    #[error("the address does not hold a valid public key")]
    Key,
}

/// Errors of hidden-service key, descriptor and introduction operations.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HsError {
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Rng,
    /// A key is not a valid Ed25519 point of the prime-order subgroup, or blinding gave the
    /// identity (probability 2^-252).
    #[error("invalid hidden-service key")]
    BadKey,
    /// Bytes do not parse (or do not encode) as the layout requires.
    #[error("malformed hidden-service data: {0}")]
    Malformed(#[from] WireError),
    /// The descriptor's signature does not verify under its blinded key.
    #[error("descriptor signature: {0}")]
    Signature(#[from] CryptoError),
    /// The descriptor's `expires` is not after the time of the check.
    #[error("descriptor expired at {expires} (now {now})")]
    Expired {
        /// Its `expires` field (Unix seconds).
        expires: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
    /// The descriptor is signed by a blinded key that is not this address's for its period.
    #[error("descriptor does not belong to this address")]
    WrongAddress,
    /// An AEAD ciphertext did not decrypt: wrong key, or modified.
    #[error("ciphertext does not decrypt (wrong key or modified)")]
    Decrypt,
    /// A peer's X25519 key gave an all-zero shared secret (a small-order point).
    #[error("non-contributory X25519 key")]
    NonContributory,
    /// A sealed introduction is shorter than its 48 bytes of overhead.
    #[error("sealed introduction too short")]
    Truncated,
}

/// A hidden service's address: its Ed25519 public key `A` (32 bytes, §12.1).
///
/// Text form (the host name): `base32(A ‖ checksum[2] ‖ version[1]) ‖ ".anon"`, base32 of
/// RFC 4648 in lower case without padding (56 characters), where
/// `checksum = BLAKE3("anonnet .anon checksum" ‖ A ‖ version)[0..2]` and version = 1.
/// Only keys that are canonical encodings of points of the prime-order subgroup (not the
/// identity) are addresses, so every service has exactly one address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HsAddress([u8; KEY_LEN]);

fn prime_order_point(public: &[u8; KEY_LEN]) -> Option<EdwardsPoint> {
    let point = CompressedEdwardsY(*public).decompress()?;
    let canonical = point.compress().to_bytes() == *public;
    (canonical && point.is_torsion_free() && !point.is_small_order()).then_some(point)
}

fn checksum(public: &[u8; KEY_LEN], version: u8) -> [u8; 2] {
    let mut h = blake3::Hasher::new();
    h.update(ADDRESS_CHECKSUM_PREFIX);
    h.update(public);
    h.update(&[version]);
    let digest = h.finalize();
    let mut out = [0u8; 2];
    out.copy_from_slice(&digest.as_bytes()[..2]);
    out
}

impl HsAddress {
    /// The address of the Ed25519 public key `public`.
    ///
    /// # Errors
    /// [`AddressError::Key`] unless `public` is the canonical encoding of a point of the
    /// prime-order subgroup other than the identity.
    pub fn from_public(public: [u8; KEY_LEN]) -> Result<Self, AddressError> {
        prime_order_point(&public).ok_or(AddressError::Key)?;
        Ok(HsAddress(public))
    }

    /// Parse a host name `[labels.]<56 characters>.anon` (ASCII case-insensitive; labels
    /// before the address, as in `www.<address>.anon`, are ignored; one trailing `.` is
    /// allowed).
    ///
    /// # Errors
    /// [`AddressError::NotAnon`] without the `.anon` suffix; [`AddressError::Length`] when
    /// the address label is not 56 characters; [`AddressError::Base32`] for characters
    /// outside `a-z2-7`; [`AddressError::Checksum`] for a typo; [`AddressError::Version`]
    /// for a version other than 1 (with a valid checksum); [`AddressError::Key`] when the
    /// key is not a valid point.
    pub fn parse(host: &str) -> Result<Self, AddressError> {
        let lower = host.to_ascii_lowercase();
        let host = lower.strip_suffix('.').unwrap_or(&lower);
        let rest = host
            .strip_suffix(ANON_SUFFIX)
            .ok_or(AddressError::NotAnon)?;
        let label = rest.rsplit('.').next().unwrap_or(rest);
        if label.len() != ADDRESS_LABEL_LEN {
            return Err(AddressError::Length { len: label.len() });
        }
        let raw = BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .map_err(|_| AddressError::Base32)?;
        let raw: [u8; KEY_LEN + 3] = raw.try_into().map_err(|_| AddressError::Base32)?;
        let (public, tail) = raw.split_at(KEY_LEN);
        let public: [u8; KEY_LEN] = public.try_into().map_err(|_| AddressError::Base32)?;
        let [c0, c1, version] = <[u8; 3]>::try_from(tail).map_err(|_| AddressError::Base32)?;
        if checksum(&public, version) != [c0, c1] {
            return Err(AddressError::Checksum);
        }
        if version != ADDRESS_VERSION {
            return Err(AddressError::Version(version));
        }
        Self::from_public(public)
    }

    /// The service's Ed25519 public key `A`.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The host name: 56 lower-case base32 characters followed by `.anon` (61 characters).
    pub fn to_host(&self) -> String {
        let mut raw = [0u8; KEY_LEN + 3];
        raw[..KEY_LEN].copy_from_slice(&self.0);
        raw[KEY_LEN..KEY_LEN + 2].copy_from_slice(&checksum(&self.0, ADDRESS_VERSION));
        raw[KEY_LEN + 2] = ADDRESS_VERSION;
        let mut host = BASE32_NOPAD.encode(&raw).to_ascii_lowercase();
        host.push_str(ANON_SUFFIX);
        host
    }

    /// `NodeId::from_identity(A)`: the node id the service answers to in the end-to-end
    /// ntor handshake.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity(&self.0)
    }
}

impl fmt::Display for HsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_host())
    }
}

impl fmt::Debug for HsAddress {
    /// Only the first 8 characters, so that a stray `{:?}` in a log does not write the
    /// whole address (use `Display` where the full address is meant).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.to_host();
        write!(f, "HsAddress({}…)", host.get(..8).unwrap_or(&host))
    }
}

/// A hidden service's long-term Ed25519 key; its public half is the address. The secret is
/// zeroized on drop (ed25519-dalek's `zeroize` feature).
pub struct ServiceKey {
    signing: ed25519_dalek::SigningKey,
}

impl ServiceKey {
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
        ServiceKey {
            signing: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed, for the service's key file.
    pub fn seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The service's address (its public key `A`).
    pub fn address(&self) -> HsAddress {
        // A = a·B for a scalar a: always a canonical point of the prime-order subgroup.
        HsAddress(self.signing.verifying_key().to_bytes())
    }

    /// The blinded signing key for time period `period` (§12.2).
    ///
    /// # Errors
    /// [`HsError::BadKey`] when the blinding factor is zero (probability 2^-252).
    pub fn blinded(&self, period: u64) -> Result<BlindedKey, HsError> {
        let public = self.signing.verifying_key().to_bytes();
        let h = blinding_factor(&public, period);
        if h == Scalar::ZERO {
            return Err(HsError::BadKey);
        }
        let seed = Zeroizing::new(self.signing.to_bytes());
        let expanded = ExpandedSecretKey::from(&*seed);
        // The period is part of the nonce prefix: with one prefix for all periods, the same
        // message signed under two periods' keys would share its nonce r while the secret
        // scalars differ by a public factor, and the two signatures would give away `a`.
        let mut hasher = blake3::Hasher::new_derive_key(BLINDED_PREFIX_CONTEXT);
        hasher.update(&expanded.hash_prefix);
        hasher.update(&period.to_be_bytes());
        let mut hash_prefix = *hasher.finalize().as_bytes();
        hasher.zeroize();
        let esk = ExpandedSecretKey {
            scalar: h * expanded.scalar,
            hash_prefix,
        };
        hash_prefix.zeroize();
        let verifying = VerifyingKey::from(&esk);
        Ok(BlindedKey {
            esk,
            verifying,
            period,
        })
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceKey([scrubbed])")
    }
}

/// `h = Scalar::from_bytes_mod_order_wide(BLAKE3-XOF(derive_key(BLINDING_FACTOR_CONTEXT),
/// A ‖ period u64)[0..64])` (§12.2).
fn blinding_factor(public: &[u8; KEY_LEN], period: u64) -> Scalar {
    let mut hasher = blake3::Hasher::new_derive_key(BLINDING_FACTOR_CONTEXT);
    hasher.update(public);
    hasher.update(&period.to_be_bytes());
    let mut wide = [0u8; 64];
    hasher.finalize_xof().fill(&mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// A service's signing key blinded for one time period (§12.2): secret scalar `a' = h·a`
/// and nonce prefix `BLAKE3-derive_key("anonnet 2026 hs blinded nonce prefix", prefix ‖
/// period u64)`, zeroized on drop. Its signatures are ordinary Ed25519 signatures under
/// [`BlindedKey::public`] `= h·A`.
pub struct BlindedKey {
    esk: ExpandedSecretKey,
    verifying: VerifyingKey,
    period: u64,
}

impl BlindedKey {
    /// The blinded public key `A'` (32 bytes), equal to [`blind_public`] of the address.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.verifying.to_bytes()
    }

    /// The time period it is blinded for.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// An Ed25519 signature (64 bytes, RFC 8032 with SHA-512) of `msg` under `A'`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        raw_sign::<Sha512>(&self.esk, msg, &self.verifying).to_bytes()
    }
}

impl fmt::Debug for BlindedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindedKey([scrubbed])")
    }
}

/// The time period of `now_unix` (Unix seconds): `now_unix / 86400`, days since the epoch.
pub fn time_period(now_unix: u64) -> u64 {
    now_unix / PERIOD_SECS
}

/// The periods a service publishes descriptors for at `now_unix` (Unix seconds), ascending:
/// its own period, plus the previous one during the first hour of a period, plus the next
/// one during the last hour (§12.2), so that clients whose clocks are off by up to an hour
/// still find a descriptor.
pub fn periods_to_publish(now_unix: u64) -> Vec<u64> {
    let period = time_period(now_unix);
    let into = now_unix % PERIOD_SECS;
    let mut out = Vec::with_capacity(2);
    if into < PERIOD_OVERLAP_SECS && period > 0 {
        out.push(period - 1);
    }
    out.push(period);
    if into >= PERIOD_SECS - PERIOD_OVERLAP_SECS {
        out.push(period.saturating_add(1));
    }
    out
}

/// The blinded public key `A' = h·A` of `address` for `period` (§12.2), 32 bytes.
///
/// # Errors
/// [`HsError::BadKey`] when the blinding factor is zero (probability 2^-252).
pub fn blind_public(address: &HsAddress, period: u64) -> Result<[u8; KEY_LEN], HsError> {
    let point = prime_order_point(address.public()).ok_or(HsError::BadKey)?;
    let h = blinding_factor(address.public(), period);
    if h == Scalar::ZERO {
        return Err(HsError::BadKey);
    }
    Ok((h * point).compress().to_bytes())
}

/// The DHT key of a descriptor: `BLAKE3-derive_key("anonnet 2026 hs descriptor index",
/// A' ‖ period u64)` (32 bytes, §12.3). It changes every period and, without the address,
/// cannot be linked to the service.
pub fn descriptor_index(blinded: &[u8; KEY_LEN], period: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DESCRIPTOR_INDEX_CONTEXT);
    h.update(blinded);
    h.update(&period.to_be_bytes());
    *h.finalize().as_bytes()
}

fn body_key(
    public: &[u8; KEY_LEN],
    blinded: &[u8; KEY_LEN],
    period: u64,
    salt: &[u8; HS_SALT_LEN],
) -> Zeroizing<[u8; 32]> {
    let mut h = blake3::Hasher::new_derive_key(DESCRIPTOR_BODY_KEY_CONTEXT);
    h.update(public);
    h.update(blinded);
    h.update(&period.to_be_bytes());
    h.update(salt);
    let key = Zeroizing::new(*h.finalize().as_bytes());
    h.zeroize();
    key
}

fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// Encrypt and sign a descriptor for `period` (§12.3), with a fresh random salt.
///
/// `revision`: larger replaces smaller at storage nodes (e.g. the Unix time of signing);
/// `expires`: end of validity (Unix seconds; storage nodes refuse more than 3 days ahead).
///
/// # Errors
/// [`HsError::Rng`] when no randomness is available; [`HsError::Malformed`] when `body` has
/// more than 3 introduction points; [`HsError::BadKey`] as [`ServiceKey::blinded`].
pub fn seal_descriptor(
    key: &ServiceKey,
    period: u64,
    revision: u64,
    expires: u64,
    body: &HsDescriptorBody,
) -> Result<HsDescriptor, HsError> {
    let salt = random_bytes::<HS_SALT_LEN>().map_err(|_| HsError::Rng)?;
    seal_descriptor_with_salt(key, period, revision, expires, &salt, body)
}

/// As [`seal_descriptor`] with a given salt (test vectors only: a salt must never repeat
/// for one key and period).
///
/// # Errors
/// As [`seal_descriptor`], without [`HsError::Rng`].
pub fn seal_descriptor_with_salt(
    key: &ServiceKey,
    period: u64,
    revision: u64,
    expires: u64,
    salt: &[u8; HS_SALT_LEN],
    body: &HsDescriptorBody,
) -> Result<HsDescriptor, HsError> {
    let blinded = key.blinded(period)?;
    let mut desc = HsDescriptor {
        blinded_key: blinded.public(),
        period,
        revision,
        expires,
        salt: *salt,
        ciphertext: Vec::new(),
        signature: [0; SIGNATURE_LEN],
    };
    let mut ct = Zeroizing::new(body.encode()?);
    let k = body_key(key.address().public(), &desc.blinded_key, period, salt);
    crate::layer::key(&k)
        .seal_in_place_append_tag(zero_nonce(), Aad::from(desc.header_bytes()), &mut *ct)
        .map_err(|_| HsError::Decrypt)?;
    desc.ciphertext = ct.to_vec();
    let msg = [DESCRIPTOR_SIGNING_CONTEXT, &desc.signed_bytes()?].concat();
    desc.signature = blinded.sign(&msg);
    Ok(desc)
}

/// What a storage node learns from a descriptor that verifies (§12.3): no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedHsDescriptor {
    /// The blinded key `A'` that signed it.
    pub blinded_key: [u8; KEY_LEN],
    /// Its time period.
    pub period: u64,
    /// Its revision counter.
    pub revision: u64,
    /// End of validity (Unix seconds).
    pub expires: u64,
    /// The DHT key it belongs under: [`descriptor_index`]`(blinded_key, period)`.
    pub index: [u8; 32],
}

/// Check a descriptor without knowing the address, at `now_unix` (Unix seconds), as a DHT
/// storage node does (§12.3): the signature verifies (strictly) under `d.blinded_key` over
/// `"anonnet-hs-descriptor-v1" ‖ signed bytes`, and `expires > now`. The upper bound on
/// `expires` is the DHT's (§12.6).
///
/// # Errors
/// [`HsError::Malformed`] when the ciphertext has the wrong length, [`HsError::Signature`],
/// [`HsError::Expired`].
pub fn verify_descriptor(d: &HsDescriptor, now_unix: u64) -> Result<VerifiedHsDescriptor, HsError> {
    let msg = [DESCRIPTOR_SIGNING_CONTEXT, &d.signed_bytes()?].concat();
    verify_signature(&d.blinded_key, &msg, &d.signature)?;
    if d.expires <= now_unix {
        return Err(HsError::Expired {
            expires: d.expires,
            now: now_unix,
        });
    }
    Ok(VerifiedHsDescriptor {
        blinded_key: d.blinded_key,
        period: d.period,
        revision: d.revision,
        expires: d.expires,
        index: descriptor_index(&d.blinded_key, d.period),
    })
}

/// Verify and decrypt a descriptor of `address` at `now_unix` (Unix seconds), as a client
/// does (§12.3): [`verify_descriptor`], then `d.blinded_key == blind_public(address,
/// d.period)`, then decrypt and decode the body.
///
/// # Errors
/// As [`verify_descriptor`]; [`HsError::WrongAddress`] when the descriptor is another
/// service's; [`HsError::Decrypt`] when the body does not decrypt; [`HsError::Malformed`]
/// when the plaintext does not decode.
pub fn open_descriptor(
    d: &HsDescriptor,
    address: &HsAddress,
    now_unix: u64,
) -> Result<HsDescriptorBody, HsError> {
    verify_descriptor(d, now_unix)?;
    if blind_public(address, d.period)? != d.blinded_key {
        return Err(HsError::WrongAddress);
    }
    let k = body_key(address.public(), &d.blinded_key, d.period, &d.salt);
    let mut buf = Zeroizing::new(d.ciphertext.clone());
    let plain = crate::layer::key(&k)
        .open_in_place(zero_nonce(), Aad::from(d.header_bytes()), &mut buf)
        .map_err(|_| HsError::Decrypt)?;
    Ok(HsDescriptorBody::decode(plain)?)
}

/// An X25519 introduction-encryption key: the service holds a fresh one for each of its
/// introduction points (its public half is that point's `enc_key` in the descriptor,
/// §12.3, §12.4, §13.1). The secret is zeroized on drop (x25519-dalek's `zeroize`
/// feature).
pub struct IntroKey {
    secret: x25519_dalek::StaticSecret,
}

impl IntroKey {
    /// A fresh key from the OS CSPRNG.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] when no randomness is available.
    pub fn generate() -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(random_bytes::<KEY_LEN>()?);
        Ok(Self::from_secret(&bytes))
    }

    /// The key whose 32-byte X25519 secret is `secret` (clamped on use).
    pub fn from_secret(secret: &[u8; KEY_LEN]) -> Self {
        IntroKey {
            secret: x25519_dalek::StaticSecret::from(*secret),
        }
    }

    /// The 32 secret bytes (zeroized on drop), e.g. to build the matching end-to-end
    /// handshake key (`OnionKey::from_secret`, §13.4).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The 32-byte X25519 public key (`enc_key`).
    pub fn public(&self) -> [u8; KEY_LEN] {
        x25519_dalek::PublicKey::from(&self.secret).to_bytes()
    }
}

impl fmt::Debug for IntroKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntroKey([scrubbed])")
    }
}

fn introduce_key(
    shared: &[u8; 32],
    ephemeral: &[u8; KEY_LEN],
    enc_key: &[u8; KEY_LEN],
    auth_key: &[u8; KEY_LEN],
) -> Zeroizing<[u8; 32]> {
    let mut h = blake3::Hasher::new_derive_key(INTRODUCE_KEY_CONTEXT);
    h.update(shared);
    h.update(ephemeral);
    h.update(enc_key);
    h.update(auth_key);
    let key = Zeroizing::new(*h.finalize().as_bytes());
    h.zeroize();
    key
}

/// Seal an introduction `plaintext` to the `enc_key` of the introduction point whose
/// authentication key is `auth_key` (both from the descriptor, §12.3, §12.4). Output `E [32] ‖ ciphertext ‖ tag [16]`
/// (`plaintext.len() + 48` bytes), with a fresh ephemeral key `E`.
///
/// # Errors
/// [`HsError::Rng`]; [`HsError::NonContributory`] when `enc_key` is a small-order point.
pub fn seal_introduce(
    enc_key: &[u8; KEY_LEN],
    auth_key: &[u8; KEY_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, HsError> {
    let e = Zeroizing::new(random_bytes::<KEY_LEN>().map_err(|_| HsError::Rng)?);
    seal_introduce_with_secret(&e, enc_key, auth_key, plaintext)
}

/// As [`seal_introduce`] with a given ephemeral secret `e` (test vectors only: `e` must
/// never be reused).
///
/// # Errors
/// [`HsError::NonContributory`] when `enc_key` is a small-order point.
pub fn seal_introduce_with_secret(
    e: &[u8; KEY_LEN],
    enc_key: &[u8; KEY_LEN],
    auth_key: &[u8; KEY_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, HsError> {
    let secret = x25519_dalek::StaticSecret::from(*e);
    let ephemeral = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*enc_key));
    if !shared.was_contributory() {
        return Err(HsError::NonContributory);
    }
    let k = introduce_key(shared.as_bytes(), &ephemeral, enc_key, auth_key);
    let mut out = Vec::with_capacity(plaintext.len() + INTRODUCE_OVERHEAD);
    out.extend_from_slice(&ephemeral);
    out.extend_from_slice(plaintext);
    let tag = crate::layer::key(&k)
        .seal_in_place_separate_tag(
            zero_nonce(),
            Aad::from(auth_key),
            out.get_mut(KEY_LEN..).unwrap_or_default(),
        )
        .map_err(|_| HsError::Decrypt)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Open an introduction sealed by [`seal_introduce`] to `key`, for the introduction point
/// `auth_key` (§12.4). Returns the plaintext (zeroized on drop) and the sender's ephemeral
/// key `E`, which the service remembers to refuse replays.
///
/// # Errors
/// [`HsError::Truncated`] when `sealed` is shorter than 48 bytes;
/// [`HsError::NonContributory`] for a small-order `E`; [`HsError::Decrypt`] when the tag
/// fails (another key or `auth_key`, or modified bytes).
pub fn open_introduce(
    key: &IntroKey,
    auth_key: &[u8; KEY_LEN],
    sealed: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, [u8; KEY_LEN]), HsError> {
    if sealed.len() < INTRODUCE_OVERHEAD {
        return Err(HsError::Truncated);
    }
    let (ephemeral, ct) = sealed.split_at(KEY_LEN);
    let ephemeral: [u8; KEY_LEN] = ephemeral.try_into().map_err(|_| HsError::Truncated)?;
    let shared = key
        .secret
        .diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(HsError::NonContributory);
    }
    let k = introduce_key(shared.as_bytes(), &ephemeral, &key.public(), auth_key);
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = crate::layer::key(&k)
        .open_in_place(zero_nonce(), Aad::from(auth_key), &mut buf)
        .map_err(|_| HsError::Decrypt)?
        .len();
    buf.truncate(len);
    Ok((buf, ephemeral))
}

impl anonnet_error::HasKind for AddressError {
    /// A `.anon` address that does not parse was typed or pasted by someone:
    /// [`anonnet_error::ErrorKind::BadRequest`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::BadRequest
    }
}

impl anonnet_error::HasKind for HsError {
    /// A descriptor or introduction that does not open or verify came from a peer:
    /// [`anonnet_error::ErrorKind::Protocol`]; no randomness or an unusable own key is
    /// [`anonnet_error::ErrorKind::LocalResource`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            HsError::Rng | HsError::BadKey => anonnet_error::ErrorKind::LocalResource,
            HsError::Signature(e) => anonnet_error::HasKind::kind(e),
            _ => anonnet_error::ErrorKind::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_wire::hs::{IntroPoint, RelayLink, HS_DESCRIPTOR_LEN};

    const NOW: u64 = 1_800_000_000;

    fn body() -> HsDescriptorBody {
        HsDescriptorBody {
            pow: None,
            intro_points: vec![IntroPoint {
                relay: RelayLink {
                    node_id: [1; 32],
                    onion_key: [2; 32],
                    addr: "127.0.0.1:7001".parse().unwrap(),
                },
                auth_key: [3; 32],
                enc_key: IntroKey::from_secret(&[0x55; 32]).public(),
            }],
        }
    }

    #[test]
    fn address_round_trips_through_its_host_name() {
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let addr = key.address();
        let host = addr.to_host();
        assert_eq!(host.len(), 61);
        assert!(host.ends_with(".anon"));
        assert_eq!(host, host.to_ascii_lowercase());
        assert_eq!(HsAddress::parse(&host).unwrap(), addr);
        assert_eq!(HsAddress::parse(&host.to_ascii_uppercase()).unwrap(), addr);
        assert_eq!(HsAddress::parse(&format!("www.{host}")).unwrap(), addr);
        assert_eq!(HsAddress::parse(&format!("a.b.{host}.")).unwrap(), addr);
        assert_eq!(addr.to_string(), host);
        assert_eq!(addr.node_id(), NodeId::from_identity(addr.public()));
        assert!(!format!("{addr:?}").contains(&host[8..]));
        assert_eq!(HsAddress::from_public(*addr.public()).unwrap(), addr);
    }

    #[test]
    fn address_parse_reports_each_mistake_distinctly() {
        let host = ServiceKey::from_seed(&[0x61; 32]).address().to_host();
        let label = &host[..56];
        assert_eq!(HsAddress::parse(label), Err(AddressError::NotAnon));
        assert_eq!(
            HsAddress::parse(&format!("{label}.onion")),
            Err(AddressError::NotAnon)
        );
        assert_eq!(
            HsAddress::parse(&format!("{}.anon", &label[1..])),
            Err(AddressError::Length { len: 55 })
        );
        assert_eq!(
            HsAddress::parse(".anon"),
            Err(AddressError::Length { len: 0 })
        );
        let mut bad = label.to_string();
        bad.replace_range(0..1, "1");
        assert_eq!(
            HsAddress::parse(&format!("{bad}.anon")),
            Err(AddressError::Base32)
        );
        // One character changed: a typo.
        let typo: String = label
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 10 {
                    if c == 'a' {
                        'b'
                    } else {
                        'a'
                    }
                } else {
                    c
                }
            })
            .collect();
        let err = HsAddress::parse(&format!("{typo}.anon")).unwrap_err();
        assert_eq!(err, AddressError::Checksum);
        assert_eq!(err.to_string(), "mistyped address: checksum does not match");
        // A valid checksum over another version.
        let pk = *ServiceKey::from_seed(&[0x61; 32]).address().public();
        let encode = |pk: &[u8; 32], version: u8| {
            let mut raw = pk.to_vec();
            raw.extend_from_slice(&checksum(pk, version));
            raw.push(version);
            format!("{}.anon", BASE32_NOPAD.encode(&raw).to_ascii_lowercase())
        };
        assert_eq!(
            HsAddress::parse(&encode(&pk, 2)),
            Err(AddressError::Version(2))
        );
        // A valid checksum over bytes that are not a usable key: the identity (small
        // order), and a y coordinate that is not on the curve.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            HsAddress::parse(&encode(&identity, 1)),
            Err(AddressError::Key)
        );
        let off_curve = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| CompressedEdwardsY(*k).decompress().is_none())
            .unwrap();
        assert_eq!(
            HsAddress::parse(&encode(&off_curve, 1)),
            Err(AddressError::Key)
        );
        assert_eq!(HsAddress::from_public(identity), Err(AddressError::Key));
    }

    #[test]
    fn periods_to_publish_cover_an_hour_either_side() {
        let day = PERIOD_SECS;
        assert_eq!(time_period(0), 0);
        assert_eq!(time_period(day * 20_000 + 5), 20_000);
        assert_eq!(periods_to_publish(day * 100 + 12 * 3600), vec![100]);
        assert_eq!(periods_to_publish(day * 100), vec![99, 100]);
        assert_eq!(periods_to_publish(day * 100 + 3599), vec![99, 100]);
        assert_eq!(periods_to_publish(day * 100 + 3600), vec![100]);
        assert_eq!(periods_to_publish(day * 101 - 3601), vec![100]);
        assert_eq!(periods_to_publish(day * 101 - 3600), vec![100, 101]);
        assert_eq!(periods_to_publish(day * 101 - 1), vec![100, 101]);
        assert_eq!(periods_to_publish(5), vec![0]);
        // Two clocks an hour apart share a period they both publish or look up.
        for t in (day * 100..day * 102).step_by(600) {
            let late = t + 3600;
            assert!(periods_to_publish(t).contains(&time_period(late)), "{t}");
            assert!(periods_to_publish(late).contains(&time_period(t)), "{t}");
        }
    }

    #[test]
    fn blinded_signatures_verify_under_blind_public() {
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let addr = key.address();
        let mut seen = vec![*addr.public()];
        for period in [0, 1, 20_000, u64::MAX] {
            let b = key.blinded(period).unwrap();
            assert_eq!(b.period(), period);
            assert_eq!(b.public(), blind_public(&addr, period).unwrap());
            let sig = b.sign(b"hello");
            verify_signature(&b.public(), b"hello", &sig).unwrap();
            assert!(verify_signature(&b.public(), b"hellO", &sig).is_err());
            assert!(verify_signature(addr.public(), b"hello", &sig).is_err());
            assert!(!seen.contains(&b.public()), "period {period}");
            seen.push(b.public());
            // Blinded keys are valid addresses' keys too: prime order, canonical.
            HsAddress::from_public(b.public()).unwrap();
        }
    }

    #[test]
    fn one_message_signed_in_two_periods_uses_two_nonces() {
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let s1 = key.blinded(1).unwrap().sign(b"same message");
        let s2 = key.blinded(2).unwrap().sign(b"same message");
        assert_ne!(
            s1[..32],
            s2[..32],
            "R must differ, or the two S values reveal a"
        );
    }

    #[test]
    fn descriptor_index_changes_every_period() {
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let b = key.blinded(20_000).unwrap().public();
        let i0 = descriptor_index(&b, 20_000);
        assert_ne!(i0, descriptor_index(&b, 20_001));
        let b1 = key.blinded(20_001).unwrap().public();
        assert_ne!(i0, descriptor_index(&b1, 20_001));
        assert_ne!(i0, b);
    }

    #[test]
    fn descriptor_round_trips_for_its_address_only() {
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let period = time_period(NOW);
        let d = seal_descriptor(&key, period, 7, NOW + 3600, &body()).unwrap();
        let bytes = d.encode().unwrap();
        assert_eq!(bytes.len(), HS_DESCRIPTOR_LEN);
        let d = HsDescriptor::decode(&bytes).unwrap();
        let v = verify_descriptor(&d, NOW).unwrap();
        assert_eq!(v.blinded_key, key.blinded(period).unwrap().public());
        assert_eq!((v.period, v.revision, v.expires), (period, 7, NOW + 3600));
        assert_eq!(v.index, descriptor_index(&v.blinded_key, period));
        assert_eq!(open_descriptor(&d, &key.address(), NOW).unwrap(), body());
        // Two seals differ (fresh salt) but both open.
        let d2 = seal_descriptor(&key, period, 7, NOW + 3600, &body()).unwrap();
        assert_ne!(d2.ciphertext, d.ciphertext);
        assert_eq!(open_descriptor(&d2, &key.address(), NOW).unwrap(), body());

        let other = ServiceKey::from_seed(&[0x62; 32]).address();
        assert_eq!(open_descriptor(&d, &other, NOW), Err(HsError::WrongAddress));
    }

    #[test]
    fn modified_or_expired_descriptors_are_refused() {
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let addr = key.address();
        let period = time_period(NOW);
        let d = seal_descriptor(&key, period, 1, NOW + 3600, &body()).unwrap();
        let bytes = d.encode().unwrap();
        // Any flipped byte fails: in the header, the ciphertext or the signature.
        for pos in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            let mut b = bytes.clone();
            b[pos] ^= 0x01;
            let Ok(m) = HsDescriptor::decode(&b) else {
                continue; // version or ct_len: refused by the decoder
            };
            assert!(verify_descriptor(&m, NOW).is_err(), "byte {pos}");
            assert!(open_descriptor(&m, &addr, NOW).is_err(), "byte {pos}");
        }
        assert_eq!(
            verify_descriptor(&d, NOW + 3600),
            Err(HsError::Expired {
                expires: NOW + 3600,
                now: NOW + 3600
            })
        );
        assert!(open_descriptor(&d, &addr, NOW + 7200).is_err());
        // A correctly signed descriptor whose body does not decrypt (here: encrypted for
        // another salt) is refused after the signature check.
        let mut wrong_salt = d.clone();
        wrong_salt.salt[0] ^= 1;
        let msg = [
            DESCRIPTOR_SIGNING_CONTEXT,
            &wrong_salt.signed_bytes().unwrap(),
        ]
        .concat();
        wrong_salt.signature = key.blinded(period).unwrap().sign(&msg);
        verify_descriptor(&wrong_salt, NOW).unwrap();
        assert_eq!(
            open_descriptor(&wrong_salt, &addr, NOW),
            Err(HsError::Decrypt)
        );
    }

    #[test]
    fn introduce_round_trips_and_binds_key_and_auth_key() {
        let service = IntroKey::from_secret(&[0x77; 32]);
        let auth = [0x88; 32];
        let sealed = seal_introduce(&service.public(), &auth, b"meet me").unwrap();
        assert_eq!(sealed.len(), 7 + INTRODUCE_OVERHEAD);
        let (plain, e) = open_introduce(&service, &auth, &sealed).unwrap();
        assert_eq!(&plain[..], b"meet me");
        assert_eq!(&e[..], &sealed[..32]);
        // Each seal has its own ephemeral key.
        let again = seal_introduce(&service.public(), &auth, b"meet me").unwrap();
        assert_ne!(again[..32], sealed[..32]);

        assert_eq!(
            open_introduce(&service, &[0x89; 32], &sealed).unwrap_err(),
            HsError::Decrypt
        );
        let other = IntroKey::from_secret(&[0x78; 32]);
        assert_eq!(
            open_introduce(&other, &auth, &sealed).unwrap_err(),
            HsError::Decrypt
        );
        for pos in 0..sealed.len() {
            let mut b = sealed.clone();
            b[pos] ^= 0x40;
            assert!(open_introduce(&service, &auth, &b).is_err(), "byte {pos}");
        }
        assert_eq!(
            open_introduce(&service, &auth, &sealed[..47]).unwrap_err(),
            HsError::Truncated
        );
        let mut zero_e = sealed.clone();
        zero_e[..32].fill(0);
        assert_eq!(
            open_introduce(&service, &auth, &zero_e).unwrap_err(),
            HsError::NonContributory
        );
        assert_eq!(
            seal_introduce(&[0; 32], &auth, b"x").unwrap_err(),
            HsError::NonContributory
        );
        // An empty plaintext is fine.
        let empty = seal_introduce(&service.public(), &auth, b"").unwrap();
        assert!(open_introduce(&service, &auth, &empty)
            .unwrap()
            .0
            .is_empty());
    }

    /// The test vectors printed in docs/protocol.md §12.1–§12.4 (and re-derived by
    /// docs/vectors/verify_vectors.py).
    #[test]
    fn hs_test_vectors() {
        use anonnet_wire::hs::IntroducePlaintext;
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let addr = key.address();
        let period = 20_000;
        let blinded = key.blinded(period).unwrap();
        let intro_key = IntroKey::from_secret(&[0x55; 32]);
        let body = HsDescriptorBody {
            pow: None,
            intro_points: vec![IntroPoint {
                relay: RelayLink {
                    node_id: [0x01; 32],
                    onion_key: [0x02; 32],
                    addr: "127.0.0.1:7001".parse().unwrap(),
                },
                auth_key: [0x88; 32],
                enc_key: intro_key.public(),
            }],
        };
        let expires = (period + 1) * PERIOD_SECS + 3600;
        let d = seal_descriptor_with_salt(&key, period, 1, expires, &[0x5a; 16], &body).unwrap();
        let bytes = d.encode().unwrap();
        assert_eq!(open_descriptor(&d, &addr, expires - 1).unwrap(), body);
        let plaintext = IntroducePlaintext {
            pow: None,
            cookie: [0xc0; 20],
            rendezvous: RelayLink {
                node_id: [0x03; 32],
                onion_key: [0x04; 32],
                addr: "127.0.0.1:7002".parse().unwrap(),
            },
            client_pk: [0x33; 32],
        }
        .encode()
        .unwrap();
        let sealed =
            seal_introduce_with_secret(&[0x66; 32], &intro_key.public(), &[0x88; 32], &plaintext)
                .unwrap();
        let (opened, _) = open_introduce(&intro_key, &[0x88; 32], &sealed).unwrap();
        assert_eq!(&opened[..], &plaintext[..]);
        let got = [
            hex::encode(addr.public()),
            addr.to_host(),
            hex::encode(blinding_factor(addr.public(), period).to_bytes()),
            hex::encode(blinded.public()),
            hex::encode(descriptor_index(&blinded.public(), period)),
            hex::encode(body_key(
                addr.public(),
                &blinded.public(),
                period,
                &[0x5a; 16],
            )),
            hex::encode(&bytes[..96]),
            hex::encode(d.signature),
            blake3::hash(&bytes).to_hex().to_string(),
            hex::encode(intro_key.public()),
            hex::encode(&sealed),
        ];
        assert_eq!(got, HS_VECTOR, "{got:#?}");
    }

    /// A, host, h, A', index, body key, descriptor[0..96], descriptor signature,
    /// BLAKE3(descriptor), enc_key, sealed introduction for: service seed 0x61×32;
    /// period 20 000; descriptor (version 2) revision 1, expires 1 728 090 000 (an hour
    /// after period 20 001 starts), salt 0x5a×16, body: one intro point (node 0x01×32,
    /// onion key 0x02×32, 127.0.0.1:7001, auth key 0x88×32, enc_key from X25519 secret
    /// 0x55×32); introduce: ephemeral secret 0x66×32, auth key 0x88×32, plaintext
    /// cookie 0xc0×20, rendezvous (0x03×32, 0x04×32, 127.0.0.1:7002), client_pk 0x33×32.
    const HS_VECTOR: [&str; 11] = [
        "af06a3e3291714e4f356c19c9b15cd1951ec6e6662aa77be07547f289383341d",
        "v4dkhyzjc4koj42wygojwfondfi6y3tgmkvhppqhkr7sre4dgqoupmqb.anon",
        "a8812f05b7018eb0ca0dbd99c36c4722687b6dc5f7f2e70fb3fd01396297df0d",
        "7356a87765446b94193b791ea15a08326a46aea9629a3586638dad7cc65bea5d",
        "bf25e51582839ef05e7e70f730a85d566b6ab6c0e7c136eb4e76b8e4a35ef008",
        "a9955d8889165a6ac19598469ace0047a99fd4d5701b6c68d4652a3ef60ba865",
        concat!(
            "037356a87765446b94193b791ea15a08326a46aea9629a3586638dad7cc65bea",
            "5d0000000000004e2000000000000000010000000067008f905a5a5a5a5a5a5a",
            "5a5a5a5a5a5a5a5a5a01f7853115c7442e280912145193125120febed492ea46",
        ),
        concat!(
            "a19bb7afa220a8131af283e4ca9d4a39753acbf48f948102872b6aac956ae0ea",
            "465e091ec047b9240e0a0d9e403f36f22664194be8fb63102796c31b9acbb30f",
        ),
        "b64b8795bf4fd464c5fc0dab07c7e5ce118138cc5ac3efa22e337ddb716cf2cb",
        "38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67",
        concat!(
            "219e4d800da968d2a5fcb009c784f4746c7138edb9ee4844b739e830b05cf424",
            "e2a95abe0d7a6268cbbcfaabf65a4ac170025b381dd3fa937499b72d729411fb",
            "2e52f5e88130144b9709ce1bcfb727eae9b1cac7e06ef547ccc8f371016c2acd",
            "f8a604f491ed5be57216d1d89abf27225cc54f3256e2bf4501f239cbefbe430f",
            "607462a2cd362a33828d432b1e4f7e6699d930026a0cd96942a74f7125a8e684",
            "47e53b3ba260f87694960087cb231eb3348428ce4d1bab906ba0e1a62c6d0b1f",
            "e53df5fc206621fd4eb1e3d50d41cc51b69a2ab60f1f190320661ab0807f9314",
        ),
    ];

    #[test]
    fn keys_round_trip_through_their_secret_bytes() {
        let s = ServiceKey::generate().unwrap();
        assert_eq!(ServiceKey::from_seed(&s.seed()).address(), s.address());
        let i = IntroKey::generate().unwrap();
        assert_eq!(
            IntroKey::from_secret(&i.secret_bytes()).public(),
            i.public()
        );
        assert_eq!(format!("{s:?}"), "ServiceKey([scrubbed])");
    }
}
