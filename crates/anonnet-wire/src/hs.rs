//! Hidden-service encodings: relay links, introduction points, the descriptor (outer signed
//! envelope and inner encrypted body), the introduction plaintext and the `.dark` name
//! record. Spec: `docs/protocol.md` §12. Signing, encryption and key blinding live in
//! `anonnet-crypto::hs` and `anonnet-crypto::dark`; this module only fixes the bytes.
//!
//! Every decoder returns a [`WireError`] for any malformed input and never panics; every
//! count and length is checked before anything is allocated.

use std::net::SocketAddr;

use crate::cell::{KEY_LEN, TAG_LEN};
use crate::relay::{put_ip, take_ip};
use crate::{invalid, Reader, WireError, Writer};

/// Bytes of a [`RelayLink`] with an IPv4 address: `32 + 32 + 1 + 4 + 2`.
pub const RELAY_LINK_V4_LEN: usize = 71;
/// Bytes of a [`RelayLink`] with an IPv6 address: `32 + 32 + 1 + 16 + 2` (the largest).
pub const RELAY_LINK_V6_LEN: usize = 83;
/// Bytes of an [`IntroPoint`] with an IPv4 relay: `71 + 32 + 32`.
pub const INTRO_POINT_V4_LEN: usize = RELAY_LINK_V4_LEN + 2 * KEY_LEN;
/// Largest encoded [`IntroPoint`] (IPv6 relay): `83 + 32 + 32` = 147 bytes.
pub const MAX_INTRO_POINT_LEN: usize = RELAY_LINK_V6_LEN + 2 * KEY_LEN;
/// Most introduction points in one descriptor.
pub const MAX_INTRO_POINTS: usize = 3;
/// Bytes of a proof-of-work seed (§12.3, §13.9).
pub const POW_SEED_LEN: usize = 32;
/// Bytes of the seed head a proof of work names its seed by (§13.9).
pub const POW_SEED_HEAD_LEN: usize = 4;
/// Bytes of a proof-of-work nonce (§13.9).
pub const POW_NONCE_LEN: usize = 16;
/// Bytes of an Equi-X solution (§13.9).
pub const POW_SOLUTION_LEN: usize = 16;
/// Bytes of the descriptor's proof-of-work parameters `pow u8 ‖ seed [32] ‖
/// suggested_effort u32 ‖ seed_expires u64` = 45 (§12.3).
pub const POW_PARAMS_LEN: usize = 1 + POW_SEED_LEN + 4 + 8;
/// Bytes of an encoded [`PowSolution`]: `nonce [16] ‖ effort u32 ‖ seed_head [4] ‖
/// solution [16]` = 40 (§12.4, §13.9).
pub const POW_SOLUTION_BLOCK_LEN: usize = POW_NONCE_LEN + 4 + POW_SEED_HEAD_LEN + POW_SOLUTION_LEN;
/// Length of every encoded [`HsDescriptorBody`] (bytes): the proof-of-work parameters and
/// the largest possible list of points, `45 ‖ n u8 ‖ 3 × 147` = 487, so that the
/// ciphertext length says nothing about the number or address families of the
/// introduction points, nor whether proof of work is on (§12.3).
pub const HS_BODY_LEN: usize = POW_PARAMS_LEN + 1 + MAX_INTRO_POINTS * MAX_INTRO_POINT_LEN;
/// Length of a descriptor's ciphertext: the body plus the 16-byte Poly1305 tag (503 bytes).
pub const HS_CIPHERTEXT_LEN: usize = HS_BODY_LEN + TAG_LEN;
/// Descriptor format version (first byte of the outer layout, §12.3). Version 3 carries the
/// proof-of-work parameters (§13.9); versions 1 and 2 are refused.
pub const HS_DESCRIPTOR_VERSION: u8 = 3;
/// Bytes of a descriptor salt.
pub const HS_SALT_LEN: usize = 16;
/// Bytes of the descriptor header `version ‖ blinded_key ‖ period ‖ revision ‖ expires ‖
/// salt` = `1 + 32 + 8 + 8 + 8 + 16`: the AEAD associated data (§12.3).
pub const HS_HEADER_LEN: usize = 1 + KEY_LEN + 8 + 8 + 8 + HS_SALT_LEN;
/// Length of every encoded [`HsDescriptor`]: header ‖ `ct_len u16` ‖ ciphertext ‖
/// signature = `73 + 2 + 503 + 64` = 642 bytes, well under the 900 a DHT record in one
/// relay cell allows.
pub const HS_DESCRIPTOR_LEN: usize = HS_HEADER_LEN + 2 + HS_CIPHERTEXT_LEN + SIGNATURE_LEN;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a rendezvous cookie.
pub const COOKIE_LEN: usize = 20;
/// Length of every encoded [`IntroducePlaintext`]: `cookie [20] ‖ pow u8 ‖ pow solution
/// [40] ‖ relay link ‖ client_pk [32]`, zero-padded to the IPv6 size, `20 + 1 + 40 + 83 +
/// 32` = 176 bytes.
pub const INTRODUCE_PLAINTEXT_LEN: usize =
    COOKIE_LEN + 1 + POW_SOLUTION_BLOCK_LEN + RELAY_LINK_V6_LEN + KEY_LEN;
/// `.dark` record format version: 2 carries the authorities' registration receipts
/// (§12.5).
pub const DARK_RECORD_VERSION: u8 = 2;
/// Longest `.dark` name (bytes, without `.dark`): one DNS label.
pub const MAX_DARK_NAME_LEN: usize = 63;
/// Bytes of an encoded [`NameReceipt`]: `authority [8] ‖ expires u64 ‖ signature [64]`.
pub const NAME_RECEIPT_LEN: usize = 8 + 8 + SIGNATURE_LEN;
/// Most receipts a [`DarkRecord`] carries: a majority of a network of up to 11
/// authorities, so that the largest record still fits one `DHT_STORE` a client seals
/// (§6.2, §12.5).
pub const MAX_RECORD_RECEIPTS: usize = 6;
/// Largest encoded [`DarkRecord`]: `1 + 1 + 63 + 32 + 32 + 8 + 8 + 8 + 64` = 217 bytes of
/// signed record, `1 + 6 × 80` of receipts: 698 bytes.
pub const MAX_DARK_RECORD_LEN: usize = 2
    + MAX_DARK_NAME_LEN
    + 2 * KEY_LEN
    + 3 * 8
    + SIGNATURE_LEN
    + 1
    + MAX_RECORD_RECEIPTS * NAME_RECEIPT_LEN;

/// One directory authority's statement that a name belongs to an owner until `expires`
/// (§12.5 "Registration"): `authority [8] ‖ expires u64 ‖ signature [64]`, 80 bytes. The
/// signature is checked by `anonnet_crypto::dark::valid_receipts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameReceipt {
    /// The first 8 bytes of the authority's Ed25519 identity key.
    pub authority: [u8; 8],
    /// End of the registration at that authority (Unix seconds).
    pub expires: u64,
    /// Ed25519 by the authority over the receipt message (§12.5).
    pub signature: [u8; SIGNATURE_LEN],
}

impl NameReceipt {
    /// Append the 80-byte encoding.
    pub fn put(&self, w: &mut Writer) {
        w.put(&self.authority);
        w.put_u64(self.expires);
        w.put(&self.signature);
    }

    /// Take one 80-byte receipt.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than 80 bytes are left.
    pub fn take(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(NameReceipt {
            authority: r.take_array()?,
            expires: r.take_u64()?,
            signature: r.take_array()?,
        })
    }
}

/// How to reach a relay: its NodeId, onion key and QUIC address (§12.3). Encoded
/// `node_id [32] ‖ onion_key [32] ‖ atype u8 ‖ ip ‖ port u16`, `atype` 4 (4-byte IPv4) or
/// 6 (16-byte IPv6), as in `EXTEND` (§6.2): 71 or 83 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayLink {
    /// The relay's NodeId (pinned when dialing or extending to it).
    pub node_id: [u8; KEY_LEN],
    /// The relay's X25519 onion key `B`.
    pub onion_key: [u8; KEY_LEN],
    /// The relay's QUIC address.
    pub addr: SocketAddr,
}

impl RelayLink {
    /// Append the encoding (71 or 83 bytes) to `w`.
    pub fn encode_into(&self, w: &mut Writer) {
        w.put(&self.node_id);
        w.put(&self.onion_key);
        put_ip(w, self.addr.ip());
        w.put_u16(self.addr.port());
    }

    /// Read one relay link from `r`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when the input ends early, [`WireError::Invalid`] for an
    /// `atype` other than 4 or 6.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let node_id = r.take_array()?;
        let onion_key = r.take_array()?;
        let atype = r.take_u8()?;
        let ip = take_ip(r, atype)?;
        let port = r.take_u16()?;
        Ok(RelayLink {
            node_id,
            onion_key,
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// One introduction point of a descriptor (§12.3): the relay and the service's
/// per-introduction-point authentication and encryption keys. Encoded `relay ‖ auth_key
/// [32] ‖ enc_key [32]` (135 or 147 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntroPoint {
    /// The introduction point relay.
    pub relay: RelayLink,
    /// The Ed25519 public key the service's circuit to this relay is established with;
    /// clients address introductions to it and it is the associated data of the sealed
    /// introduction (§12.4).
    pub auth_key: [u8; KEY_LEN],
    /// The X25519 public key the service holds for this introduction point only: clients
    /// seal introductions through this point to it (§12.4) and use it as `B` of the
    /// end-to-end handshake (§5.5, §13.4). Fresh for every introduction point (§13.1).
    pub enc_key: [u8; KEY_LEN],
}

impl IntroPoint {
    /// Append the encoding (135 or 147 bytes) to `w`.
    pub fn encode_into(&self, w: &mut Writer) {
        self.relay.encode_into(w);
        w.put(&self.auth_key);
        w.put(&self.enc_key);
    }

    /// Read one introduction point from `r`.
    ///
    /// # Errors
    /// As [`RelayLink::decode_from`].
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(IntroPoint {
            relay: RelayLink::decode_from(r)?,
            auth_key: r.take_array()?,
            enc_key: r.take_array()?,
        })
    }
}

/// A service's proof-of-work parameters in its descriptor (§12.3, §13.9). Encoded
/// `pow u8 (= 1) ‖ seed [32] ‖ suggested_effort u32 ‖ seed_expires u64` (45 bytes); a
/// service without proof of work writes 45 zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowParams {
    /// The current seed: every solution is bound to it (its first 4 bytes name it).
    pub seed: [u8; POW_SEED_LEN],
    /// The effort the service suggests now (0 = none needed yet).
    pub suggested_effort: u32,
    /// When the service stops accepting solutions for this seed (Unix seconds).
    pub seed_expires: u64,
}

impl PowParams {
    /// Append the 45-byte encoding of `params` (45 zero bytes for `None`) to `w`.
    pub fn encode_into(params: Option<&Self>, w: &mut Writer) {
        match params {
            Some(p) => {
                w.put_u8(1);
                w.put(&p.seed);
                w.put_u32(p.suggested_effort);
                w.put_u64(p.seed_expires);
            }
            None => w.put(&[0u8; POW_PARAMS_LEN]),
        }
    }

    /// Read 45 bytes of parameters: `None` when `pow` is 0 (the rest must then be zero).
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than 45 bytes remain; [`WireError::Invalid`] for
    /// a `pow` byte other than 0 or 1, or non-zero bytes after `pow = 0`.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Option<Self>, WireError> {
        let flag = r.take_u8()?;
        let seed = r.take_array()?;
        let suggested_effort = r.take_u32()?;
        let seed_expires = r.take_u64()?;
        match flag {
            0 if seed == [0; POW_SEED_LEN] && suggested_effort == 0 && seed_expires == 0 => {
                Ok(None)
            }
            0 => Err(invalid("proof-of-work parameters", "not zero with pow = 0")),
            1 => Ok(Some(PowParams {
                seed,
                suggested_effort,
                seed_expires,
            })),
            _ => Err(invalid("proof-of-work parameters", "pow not 0 or 1")),
        }
    }
}

/// A proof of work for an introduction (§12.4, §13.9). Encoded `nonce [16] ‖ effort u32 ‖
/// seed_head [4] ‖ solution [16]` (40 bytes). The bytes are only checked by
/// `anonnet_crypto::hs_pow::verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PowSolution {
    /// The client's nonce.
    pub nonce: [u8; POW_NONCE_LEN],
    /// The effort the client claims (and the solution must meet).
    pub effort: u32,
    /// The first 4 bytes of the seed the solution is for.
    pub seed_head: [u8; POW_SEED_HEAD_LEN],
    /// The Equi-X solution.
    pub solution: [u8; POW_SOLUTION_LEN],
}

impl PowSolution {
    /// Append the 41-byte `pow u8 ‖ solution [40]` block (41 zero bytes for `None`) to `w`.
    pub fn encode_into(proof: Option<&Self>, w: &mut Writer) {
        match proof {
            Some(p) => {
                w.put_u8(1);
                w.put(&p.nonce);
                w.put_u32(p.effort);
                w.put(&p.seed_head);
                w.put(&p.solution);
            }
            None => w.put(&[0u8; 1 + POW_SOLUTION_BLOCK_LEN]),
        }
    }

    /// Read the 41-byte block: `None` when `pow` is 0 (the rest must then be zero).
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than 41 bytes remain; [`WireError::Invalid`] for
    /// a `pow` byte other than 0 or 1, or non-zero bytes after `pow = 0`.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Option<Self>, WireError> {
        let flag = r.take_u8()?;
        let p = PowSolution {
            nonce: r.take_array()?,
            effort: r.take_u32()?,
            seed_head: r.take_array()?,
            solution: r.take_array()?,
        };
        let zero = PowSolution {
            nonce: [0; POW_NONCE_LEN],
            effort: 0,
            seed_head: [0; POW_SEED_HEAD_LEN],
            solution: [0; POW_SOLUTION_LEN],
        };
        match flag {
            0 if p == zero => Ok(None),
            0 => Err(invalid("proof of work", "not zero with pow = 0")),
            1 => Ok(Some(p)),
            _ => Err(invalid("proof of work", "pow not 0 or 1")),
        }
    }
}

/// The plaintext of a descriptor (§12.3, inner layout): `pow params (45) ‖ n u8 ‖ n ×
/// IntroPoint ‖ zero padding`, always exactly [`HS_BODY_LEN`] (487) bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDescriptorBody {
    /// The service's proof-of-work parameters, when it has proof of work on (§13.9).
    pub pow: Option<PowParams>,
    /// The introduction points, 0..=[`MAX_INTRO_POINTS`], each with its own keys.
    pub intro_points: Vec<IntroPoint>,
}

impl HsDescriptorBody {
    /// Encode to exactly [`HS_BODY_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::TooLong`] with more than [`MAX_INTRO_POINTS`] introduction points.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.intro_points.len() > MAX_INTRO_POINTS {
            return Err(WireError::TooLong {
                what: "introduction points",
                len: self.intro_points.len(),
                room: MAX_INTRO_POINTS,
            });
        }
        let mut w = Writer::with_capacity(HS_BODY_LEN);
        PowParams::encode_into(self.pow.as_ref(), &mut w);
        w.put_u8(self.intro_points.len() as u8);
        for ip in &self.intro_points {
            ip.encode_into(&mut w);
        }
        w.pad_to(HS_BODY_LEN, "descriptor body")?;
        Ok(w.into_vec())
    }

    /// Decode a body of exactly [`HS_BODY_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the length is not 487, the proof-of-work parameters are
    /// malformed ([`PowParams::decode_from`]), `n > 3`, an `atype` is unknown or the padding
    /// is not all zero; [`WireError::Truncated`] when the points overrun.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != HS_BODY_LEN {
            return Err(invalid("descriptor body", "not 487 bytes"));
        }
        let mut r = Reader::new(bytes);
        let pow = PowParams::decode_from(&mut r)?;
        let n = usize::from(r.take_u8()?);
        if n > MAX_INTRO_POINTS {
            return Err(invalid("introduction points", "more than 3"));
        }
        let mut intro_points = Vec::with_capacity(n);
        for _ in 0..n {
            intro_points.push(IntroPoint::decode_from(&mut r)?);
        }
        r.finish_zero_padding("descriptor body")?;
        Ok(HsDescriptorBody { pow, intro_points })
    }
}

/// A hidden-service descriptor as stored in the DHT (§12.3, outer layout), exactly
/// [`HS_DESCRIPTOR_LEN`] (642) bytes:
///
/// ```text
/// version u8 (= 3) ‖ blinded_key [32] ‖ period u64 ‖ revision u64 ‖ expires u64 ‖
/// salt [16] ‖ ct_len u16 (= 503) ‖ ciphertext [503] ‖ signature [64]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDescriptor {
    /// The service's blinded Ed25519 public key for `period`; the signature verifies under
    /// it.
    pub blinded_key: [u8; KEY_LEN],
    /// The time period (days since the Unix epoch, §12.2).
    pub period: u64,
    /// Revision counter: larger replaces smaller at storage nodes.
    pub revision: u64,
    /// End of validity (Unix seconds).
    pub expires: u64,
    /// Random salt of the body key.
    pub salt: [u8; HS_SALT_LEN],
    /// The encrypted [`HsDescriptorBody`] with its tag, [`HS_CIPHERTEXT_LEN`] bytes.
    pub ciphertext: Vec<u8>,
    /// Ed25519 signature by the blinded key over `"anonnet-hs-descriptor-v1" ‖
    /// signed_bytes()`.
    pub signature: [u8; SIGNATURE_LEN],
}

impl HsDescriptor {
    /// The header `version ‖ blinded_key ‖ period ‖ revision ‖ expires ‖ salt`
    /// ([`HS_HEADER_LEN`] = 73 bytes): the AEAD associated data of the body.
    pub fn header_bytes(&self) -> [u8; HS_HEADER_LEN] {
        let mut w = Writer::with_capacity(HS_HEADER_LEN);
        self.put_header(&mut w);
        let mut out = [0u8; HS_HEADER_LEN];
        out.copy_from_slice(w.as_slice());
        out
    }

    fn put_header(&self, w: &mut Writer) {
        w.put_u8(HS_DESCRIPTOR_VERSION);
        w.put(&self.blinded_key);
        w.put_u64(self.period);
        w.put_u64(self.revision);
        w.put_u64(self.expires);
        w.put(&self.salt);
    }

    fn put_unsigned(&self, w: &mut Writer) -> Result<(), WireError> {
        if self.ciphertext.len() != HS_CIPHERTEXT_LEN {
            return Err(WireError::TooLong {
                what: "descriptor ciphertext (must be exactly 503 bytes)",
                len: self.ciphertext.len(),
                room: HS_CIPHERTEXT_LEN,
            });
        }
        self.put_header(w);
        w.put_u16(HS_CIPHERTEXT_LEN as u16);
        w.put(&self.ciphertext);
        Ok(())
    }

    /// Every byte of the encoding before the signature (578 bytes); the signature covers
    /// `"anonnet-hs-descriptor-v1" ‖ signed_bytes()`.
    ///
    /// # Errors
    /// [`WireError::TooLong`] when the ciphertext is not exactly [`HS_CIPHERTEXT_LEN`] bytes.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(HS_DESCRIPTOR_LEN);
        self.put_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// Encode ([`HS_DESCRIPTOR_LEN`] bytes).
    ///
    /// # Errors
    /// As [`HsDescriptor::signed_bytes`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(HS_DESCRIPTOR_LEN);
        self.put_unsigned(&mut w)?;
        w.put(&self.signature);
        Ok(w.into_vec())
    }

    /// Decode a whole descriptor. The signature is not checked here
    /// (`anonnet_crypto::hs::verify_descriptor` does).
    ///
    /// # Errors
    /// [`WireError::Invalid`] for a version other than 3 (versions 1 and 2, the layouts
    /// without proof-of-work parameters, are refused with their own message) or `ct_len ≠
    /// 503`; [`WireError::Truncated`] / [`WireError::Trailing`] when the length is not 642.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        match r.take_u8()? {
            HS_DESCRIPTOR_VERSION => {}
            1 | 2 => {
                return Err(invalid(
                    "descriptor version",
                    "1 or 2 (no proof-of-work parameters) is no longer accepted; version 3 is",
                ))
            }
            _ => {
                return Err(invalid(
                    "descriptor version",
                    "unknown (version 3 is accepted)",
                ))
            }
        }
        let blinded_key = r.take_array()?;
        let period = r.take_u64()?;
        let revision = r.take_u64()?;
        let expires = r.take_u64()?;
        let salt = r.take_array()?;
        if usize::from(r.take_u16()?) != HS_CIPHERTEXT_LEN {
            return Err(invalid("descriptor ciphertext length", "not 503"));
        }
        let ciphertext = r.take(HS_CIPHERTEXT_LEN)?.to_vec();
        let signature = r.take_array()?;
        r.finish()?;
        Ok(HsDescriptor {
            blinded_key,
            period,
            revision,
            expires,
            salt,
            ciphertext,
            signature,
        })
    }
}

/// What a client seals to a service in an introduction (§12.4): where to meet it, the
/// client's end-to-end handshake key and an optional proof of work. Encoded `cookie [20] ‖
/// pow u8 ‖ pow solution [40] ‖ rendezvous (relay link) ‖ client_pk [32] ‖ zero padding`,
/// always [`INTRODUCE_PLAINTEXT_LEN`] (176) bytes, so the sealed length reveals neither
/// the rendezvous point's address family nor whether a proof of work is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntroducePlaintext {
    /// The rendezvous cookie the client registered at the rendezvous point.
    pub cookie: [u8; COOKIE_LEN],
    /// The client's proof of work for the service's current or previous seed (§13.9).
    pub pow: Option<PowSolution>,
    /// The rendezvous point to meet at.
    pub rendezvous: RelayLink,
    /// The client's ephemeral X25519 key `X` for the end-to-end ntor handshake.
    pub client_pk: [u8; KEY_LEN],
}

impl IntroducePlaintext {
    /// Encode to exactly [`INTRODUCE_PLAINTEXT_LEN`] bytes.
    ///
    /// # Errors
    /// None in practice (the padded length is the largest possible); the `Result` keeps the
    /// encoder honest if a field grows.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(INTRODUCE_PLAINTEXT_LEN);
        w.put(&self.cookie);
        PowSolution::encode_into(self.pow.as_ref(), &mut w);
        self.rendezvous.encode_into(&mut w);
        w.put(&self.client_pk);
        w.pad_to(INTRODUCE_PLAINTEXT_LEN, "introduce plaintext")?;
        Ok(w.into_vec())
    }

    /// Decode exactly [`INTRODUCE_PLAINTEXT_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the length is not 176, the proof-of-work block is
    /// malformed ([`PowSolution::decode_from`]), the `atype` is unknown or the padding is not
    /// zero.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != INTRODUCE_PLAINTEXT_LEN {
            return Err(invalid("introduce plaintext", "not 176 bytes"));
        }
        let mut r = Reader::new(bytes);
        let cookie = r.take_array()?;
        let pow = PowSolution::decode_from(&mut r)?;
        let rendezvous = RelayLink::decode_from(&mut r)?;
        let client_pk = r.take_array()?;
        r.finish_zero_padding("introduce plaintext")?;
        Ok(IntroducePlaintext {
            cookie,
            pow,
            rendezvous,
            client_pk,
        })
    }
}

/// Check a `.dark` name as it is written in a record (§12.5): 1..=63 bytes of `a-z`,
/// `0-9` and `-`, not starting or ending with `-` (no `.dark` suffix, lower case only).
///
/// # Errors
/// [`WireError::Invalid`] naming the rule that fails.
pub fn check_dark_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > MAX_DARK_NAME_LEN {
        return Err(invalid("dark name", "length not in 1..=63"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("dark name", "not only a-z, 0-9 and '-'"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("dark name", "starts or ends with '-'"));
    }
    Ok(())
}

/// A `.dark` name record (§12.5), 155..=217 bytes:
///
/// ```text
/// version u8 (= 1) ‖ name_len u8 ‖ name [name_len] ‖ address [32] ‖ owner [32] ‖
/// published u64 ‖ expires u64 ‖ pow_nonce u64 ‖ signature [64]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DarkRecord {
    /// The name without `.dark`, checked by [`check_dark_name`].
    pub name: String,
    /// The `.anon` service's Ed25519 public key.
    pub address: [u8; KEY_LEN],
    /// The name owner's Ed25519 public key; the signature verifies under it.
    pub owner: [u8; KEY_LEN],
    /// When the record was made (Unix seconds); larger replaces smaller for one owner.
    pub published: u64,
    /// End of validity (Unix seconds).
    pub expires: u64,
    /// Proof-of-work nonce (§12.5).
    pub pow_nonce: u64,
    /// Ed25519 signature by `owner` over `"anonnet-dark-record-v1" ‖ signed_bytes()`.
    pub signature: [u8; SIGNATURE_LEN],
    /// The authorities' registration receipts, at most [`MAX_RECORD_RECEIPTS`], after the
    /// signature and not covered by it (§12.5); empty in a registration request.
    pub receipts: Vec<NameReceipt>,
}

impl DarkRecord {
    fn put_unsigned(&self, w: &mut Writer) -> Result<(), WireError> {
        check_dark_name(&self.name)?;
        w.put_u8(DARK_RECORD_VERSION);
        w.put_u8(self.name.len() as u8);
        w.put(self.name.as_bytes());
        w.put(&self.address);
        w.put(&self.owner);
        w.put_u64(self.published);
        w.put_u64(self.expires);
        w.put_u64(self.pow_nonce);
        Ok(())
    }

    /// The encoding without the signature: what the owner signs (after the context).
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the name fails [`check_dark_name`].
    pub fn signed_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(MAX_DARK_RECORD_LEN);
        self.put_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// Encode (156..=698 bytes: the signed record, `n u8`, `n` receipts).
    ///
    /// # Errors
    /// As [`DarkRecord::signed_bytes`]; [`WireError::Invalid`] with more than
    /// [`MAX_RECORD_RECEIPTS`] receipts.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.receipts.len() > MAX_RECORD_RECEIPTS {
            return Err(invalid("dark record receipts", "more than 6"));
        }
        let mut w = Writer::with_capacity(MAX_DARK_RECORD_LEN);
        self.put_unsigned(&mut w)?;
        w.put(&self.signature);
        w.put_u8(self.receipts.len() as u8);
        for receipt in &self.receipts {
            receipt.put(&mut w);
        }
        Ok(w.into_vec())
    }

    /// Decode a whole record. Neither the signature nor the proof of work is checked here
    /// (`anonnet_crypto::dark::verify_dark_record` does).
    ///
    /// # Errors
    /// [`WireError::Invalid`] for a version other than 2, a name that fails
    /// [`check_dark_name`] or more than [`MAX_RECORD_RECEIPTS`] receipts;
    /// [`WireError::Truncated`] / [`WireError::Trailing`] for a wrong length.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        if r.take_u8()? != DARK_RECORD_VERSION {
            return Err(invalid("dark record version", "not 2"));
        }
        let name_len = usize::from(r.take_u8()?);
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| invalid("dark name", "not ASCII"))?;
        check_dark_name(name)?;
        let record = DarkRecord {
            name: name.to_owned(),
            address: r.take_array()?,
            owner: r.take_array()?,
            published: r.take_u64()?,
            expires: r.take_u64()?,
            pow_nonce: r.take_u64()?,
            signature: r.take_array()?,
            receipts: Vec::new(),
        };
        let n = usize::from(r.take_u8()?);
        if n > MAX_RECORD_RECEIPTS {
            return Err(invalid("dark record receipts", "more than 6"));
        }
        let receipts = (0..n)
            .map(|_| NameReceipt::take(&mut r))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(DarkRecord { receipts, ..record })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(v6: bool, n: u8) -> RelayLink {
        RelayLink {
            node_id: [n; 32],
            onion_key: [n + 1; 32],
            addr: if v6 {
                "[2001:db8::7]:7001".parse().unwrap()
            } else {
                "192.0.2.7:7001".parse().unwrap()
            },
        }
    }

    fn intro(v6: bool, n: u8) -> IntroPoint {
        IntroPoint {
            relay: link(v6, n),
            auth_key: [n + 2; 32],
            enc_key: [n + 3; 32],
        }
    }

    fn body(points: Vec<IntroPoint>) -> HsDescriptorBody {
        HsDescriptorBody {
            pow: None,
            intro_points: points,
        }
    }

    fn proof() -> PowSolution {
        PowSolution {
            nonce: [0x4e; 16],
            effort: 0x0102_0304,
            seed_head: [0x5e; 4],
            solution: [0x50; 16],
        }
    }

    fn descriptor() -> HsDescriptor {
        HsDescriptor {
            blinded_key: [1; 32],
            period: 20_000,
            revision: 7,
            expires: 1_700_000_000,
            salt: [2; 16],
            ciphertext: vec![3; HS_CIPHERTEXT_LEN],
            signature: [4; 64],
        }
    }

    fn dark() -> DarkRecord {
        DarkRecord {
            name: "my-site2".into(),
            address: [5; 32],
            owner: [6; 32],
            published: 10,
            expires: 20,
            pow_nonce: 99,
            signature: [7; 64],
            receipts: vec![
                NameReceipt {
                    authority: [8; 8],
                    expires: 30,
                    signature: [9; 64],
                };
                2
            ],
        }
    }

    #[test]
    fn layout_sizes_are_as_specified() {
        assert_eq!(INTRO_POINT_V4_LEN, 135);
        assert_eq!(MAX_INTRO_POINT_LEN, 147);
        assert_eq!(POW_PARAMS_LEN, 45);
        assert_eq!(POW_SOLUTION_BLOCK_LEN, 40);
        assert_eq!(HS_BODY_LEN, 487);
        assert_eq!(HS_CIPHERTEXT_LEN, 503);
        assert_eq!(HS_HEADER_LEN, 73);
        assert_eq!(HS_DESCRIPTOR_LEN, 642);
        assert_eq!(INTRODUCE_PLAINTEXT_LEN, 176);
        assert_eq!(MAX_DARK_RECORD_LEN, 698);
        for v6 in [false, true] {
            let mut w = Writer::new();
            link(v6, 1).encode_into(&mut w);
            let want = if v6 {
                RELAY_LINK_V6_LEN
            } else {
                RELAY_LINK_V4_LEN
            };
            assert_eq!(w.len(), want);
        }
    }

    #[test]
    fn hs_descriptor_fits_one_relay_cell_record() {
        let bytes = descriptor().encode().unwrap();
        assert_eq!(bytes.len(), HS_DESCRIPTOR_LEN);
        assert!(bytes.len() <= 900, "{} bytes", bytes.len());
    }

    #[test]
    fn relay_links_and_intro_points_round_trip() {
        for v6 in [false, true] {
            let ip = intro(v6, 9);
            let mut w = Writer::new();
            ip.encode_into(&mut w);
            let bytes = w.into_vec();
            let want = if v6 {
                MAX_INTRO_POINT_LEN
            } else {
                INTRO_POINT_V4_LEN
            };
            assert_eq!(bytes.len(), want);
            // relay link ‖ auth_key ‖ enc_key, in that order.
            assert_eq!(&bytes[want - 64..want - 32], &ip.auth_key);
            assert_eq!(&bytes[want - 32..], &ip.enc_key);
            let mut r = Reader::new(&bytes);
            assert_eq!(IntroPoint::decode_from(&mut r).unwrap(), ip);
            r.finish().unwrap();
            for n in 0..bytes.len() {
                assert!(IntroPoint::decode_from(&mut Reader::new(&bytes[..n])).is_err());
            }
        }
        let mut bad = Writer::new();
        link(false, 1).encode_into(&mut bad);
        let mut bytes = bad.into_vec();
        bytes[64] = 5; // atype
        assert!(RelayLink::decode_from(&mut Reader::new(&bytes)).is_err());
    }

    #[test]
    fn descriptor_body_has_fixed_length_and_checks_count_and_padding() {
        for points in [
            vec![],
            vec![intro(false, 1)],
            vec![intro(true, 1), intro(false, 2), intro(true, 3)],
        ] {
            let b = body(points);
            let bytes = b.encode().unwrap();
            assert_eq!(bytes.len(), HS_BODY_LEN);
            assert_eq!(HsDescriptorBody::decode(&bytes).unwrap(), b);
        }
        let four = body(vec![intro(false, 1); 4]);
        assert!(four.encode().is_err());
        let mut bytes = body(vec![intro(false, 1)]).encode().unwrap();
        // 45 zero bytes (no proof of work) ‖ n ‖ the point ‖ zeros to the end.
        let n_at = POW_PARAMS_LEN;
        assert!(bytes[..n_at].iter().all(|&b| b == 0));
        assert_eq!(bytes[n_at], 1);
        assert!(bytes[n_at + 1 + INTRO_POINT_V4_LEN..]
            .iter()
            .all(|&b| b == 0));
        bytes[n_at] = 4;
        assert!(HsDescriptorBody::decode(&bytes).is_err(), "n = 4");
        // n = 3 with only one point's bytes: the zero padding does not parse as points
        // (atype 0).
        bytes[n_at] = 3;
        assert!(HsDescriptorBody::decode(&bytes).is_err(), "n = 3");
        bytes[n_at] = 1;
        bytes[HS_BODY_LEN - 1] = 1;
        assert!(
            HsDescriptorBody::decode(&bytes).is_err(),
            "non-zero padding"
        );
        bytes[HS_BODY_LEN - 1] = 0;
        assert!(HsDescriptorBody::decode(&bytes[..HS_BODY_LEN - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(HsDescriptorBody::decode(&long).is_err());
    }

    #[test]
    fn descriptor_body_carries_pow_parameters_and_refuses_malformed_ones() {
        let params = PowParams {
            seed: [0x5e; 32],
            suggested_effort: 77,
            seed_expires: 1_700_007_200,
        };
        let b = HsDescriptorBody {
            pow: Some(params),
            intro_points: vec![intro(true, 1)],
        };
        let bytes = b.encode().unwrap();
        assert_eq!(bytes.len(), HS_BODY_LEN);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &[0x5e; 32]);
        assert_eq!(&bytes[33..37], &77u32.to_be_bytes());
        assert_eq!(&bytes[37..45], &1_700_007_200u64.to_be_bytes());
        assert_eq!(HsDescriptorBody::decode(&bytes).unwrap(), b);
        let mut flag = bytes.clone();
        flag[0] = 2;
        assert!(HsDescriptorBody::decode(&flag).is_err(), "pow = 2");
        flag[0] = 0;
        assert!(
            HsDescriptorBody::decode(&flag).is_err(),
            "pow = 0 with a seed"
        );
    }

    #[test]
    fn hs_descriptor_round_trips_and_refuses_bad_lengths_and_versions() {
        let d = descriptor();
        let bytes = d.encode().unwrap();
        assert_eq!(HsDescriptor::decode(&bytes).unwrap(), d);
        assert_eq!(&bytes[..HS_HEADER_LEN], &d.header_bytes());
        assert_eq!(d.signed_bytes().unwrap(), &bytes[..bytes.len() - 64]);
        for n in 0..bytes.len() {
            assert!(HsDescriptor::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(HsDescriptor::decode(&long), Err(WireError::Trailing(1)));
        assert_eq!(bytes[0], 3);
        for old in [1, 2] {
            let mut v = bytes.clone();
            v[0] = old;
            let err = HsDescriptor::decode(&v).unwrap_err().to_string();
            assert!(err.contains("no longer accepted"), "{err}");
        }
        for version in [0, 4, 255] {
            let mut v = bytes.clone();
            v[0] = version;
            let err = HsDescriptor::decode(&v).unwrap_err().to_string();
            assert!(err.contains("unknown"), "{err}");
        }
        // A version-1 descriptor (533 bytes, ct_len 394) is refused for its version.
        let mut old = vec![1u8];
        old.extend_from_slice(&bytes[1..HS_HEADER_LEN]);
        old.extend_from_slice(&394u16.to_be_bytes());
        old.extend_from_slice(&[0; 394 + 64]);
        assert_eq!(old.len(), 533);
        assert!(matches!(
            HsDescriptor::decode(&old),
            Err(WireError::Invalid {
                field: "descriptor version",
                ..
            })
        ));
        let mut ct_len = bytes.clone();
        ct_len[HS_HEADER_LEN + 1] ^= 1;
        assert!(HsDescriptor::decode(&ct_len).is_err());
        let short = HsDescriptor {
            ciphertext: vec![0; 10],
            ..descriptor()
        };
        assert!(short.encode().is_err());
    }

    #[test]
    fn introduce_plaintext_is_padded_to_one_length() {
        for (v6, pow) in [
            (false, None),
            (true, None),
            (false, Some(proof())),
            (true, Some(proof())),
        ] {
            let p = IntroducePlaintext {
                cookie: [0xc0; 20],
                pow,
                rendezvous: link(v6, 3),
                client_pk: [0xcc; 32],
            };
            let bytes = p.encode().unwrap();
            assert_eq!(bytes.len(), INTRODUCE_PLAINTEXT_LEN);
            assert_eq!(IntroducePlaintext::decode(&bytes).unwrap(), p);
            // cookie ‖ pow u8 ‖ nonce ‖ effort ‖ seed_head ‖ solution ‖ relay link.
            assert_eq!(bytes[20], u8::from(pow.is_some()));
            if pow.is_some() {
                assert_eq!(&bytes[21..37], &[0x4e; 16]);
                assert_eq!(&bytes[37..41], &0x0102_0304u32.to_be_bytes());
                let mut flag = bytes.clone();
                flag[20] = 0;
                assert!(
                    IntroducePlaintext::decode(&flag).is_err(),
                    "pow = 0, not zero"
                );
                flag[20] = 7;
                assert!(IntroducePlaintext::decode(&flag).is_err(), "pow = 7");
            }
            let mut pad = bytes.clone();
            if !v6 {
                pad[INTRODUCE_PLAINTEXT_LEN - 1] = 1;
                assert!(IntroducePlaintext::decode(&pad).is_err());
            }
            assert!(IntroducePlaintext::decode(&bytes[..100]).is_err());
        }
    }

    #[test]
    fn dark_record_round_trips_and_checks_its_name() {
        let d = dark();
        let bytes = d.encode().unwrap();
        assert_eq!(
            bytes.len(),
            2 + 8 + 32 + 32 + 24 + 64 + 1 + 2 * NAME_RECEIPT_LEN
        );
        assert_eq!(DarkRecord::decode(&bytes).unwrap(), d);
        let signed = 2 + 8 + 32 + 32 + 24;
        assert_eq!(d.signed_bytes().unwrap(), &bytes[..signed]);
        let seven = DarkRecord {
            receipts: vec![d.receipts[0]; MAX_RECORD_RECEIPTS + 1],
            ..dark()
        };
        assert!(seven.encode().is_err());
        let mut too_many = bytes[..signed + 64].to_vec();
        too_many.push(7);
        too_many.extend(std::iter::repeat_n(0u8, 7 * NAME_RECEIPT_LEN));
        assert!(DarkRecord::decode(&too_many).is_err());
        let six = DarkRecord {
            name: "z".repeat(63),
            receipts: vec![d.receipts[0]; MAX_RECORD_RECEIPTS],
            ..dark()
        };
        assert_eq!(six.encode().unwrap().len(), MAX_DARK_RECORD_LEN);
        for n in 0..bytes.len() {
            assert!(DarkRecord::decode(&bytes[..n]).is_err());
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "é", &"a".repeat(64)] {
            assert!(check_dark_name(bad).is_err(), "{bad:?}");
            let r = DarkRecord {
                name: bad.into(),
                ..dark()
            };
            assert!(r.encode().is_err());
        }
        for good in ["a", "0", "a-b", &"z".repeat(63)] {
            check_dark_name(good).unwrap();
        }
        let mut upper = bytes.clone();
        upper[2] = b'M';
        assert!(DarkRecord::decode(&upper).is_err());
        let mut v0 = bytes;
        v0[0] = 0;
        assert!(DarkRecord::decode(&v0).is_err());
    }
}
