//! `.dark` names: human-readable names for `.anon` addresses, published in the DHT as
//! records signed by the name's owner, with a proof of work as registration cost and an
//! expiry. Spec: `docs/protocol.md` §12.5.
//!
//! Pinning the first owner key a client sees for a name, and the local address book, are
//! the client's business (`anonnet-client`); storage nodes enforce first come, first
//! served per name (§12.6, `anonnet-dht`).

use std::fmt;

use anonnet_wire::hs::{check_dark_name, DarkRecord, NameReceipt};
use anonnet_wire::WireError;

use crate::descriptor::MAX_CLOCK_SKEW;
use crate::hs::{AddressError, HsAddress};
use crate::identity::{verify_signature, IdentityKey, KEY_LEN};
use crate::CryptoError;

/// The top-level domain of names, with its dot.
pub const DARK_SUFFIX: &str = ".dark";
/// BLAKE3 `derive_key` context of a name's DHT key (§12.5).
pub const DARK_NAME_KEY_CONTEXT: &str = "anonnet 2026 dark name key";
/// Prefix of the proof-of-work hash input (§12.5).
pub const DARK_POW_PREFIX: &[u8] = b"anonnet-dark-pow-v1";
/// Prefix of the message an owner signs (§12.5).
pub const DARK_SIGNING_CONTEXT: &[u8] = b"anonnet-dark-record-v1";
/// Leading zero bits of work that storage nodes and clients require: about 4 million
/// BLAKE3 hashes to make a record, one to check it.
pub const DARK_POW_BITS: u32 = 22;

/// Prefix of the message an authority signs in a registration receipt (§12.5).
pub const NAME_RECEIPT_CONTEXT: &[u8] = b"anonnet-dark-receipt-v1";
/// How long a name stays registered at an authority after its last renewal (seconds):
/// 30 days. Owners renew with every record (every 12 hours).
pub const NAME_REGISTRATION_SECS: u64 = 30 * 86_400;

/// The authorities whose receipts make a name record believable (§12.5): the network id
/// the receipts are bound to, every authority's Ed25519 identity key, and how many distinct
/// authorities must vouch for the owner (a majority of the network's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAuthorities {
    /// `Network::id` of the network (32 bytes).
    pub network_id: [u8; 32],
    /// The authorities' identity keys.
    pub identities: Vec<[u8; KEY_LEN]>,
    /// Distinct valid receipts required.
    pub needed: usize,
}

/// The message an authority signs to say that `name` belongs to `owner` until `expires`
/// (Unix seconds) in the network `network_id`: `"anonnet-dark-receipt-v1" ‖ network_id
/// [32] ‖ name_len u8 ‖ name ‖ owner [32] ‖ expires u64` (§12.5).
pub fn receipt_message(
    network_id: &[u8; 32],
    name: &str,
    owner: &[u8; KEY_LEN],
    expires: u64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(NAME_RECEIPT_CONTEXT.len() + 32 + 1 + name.len() + 40);
    m.extend_from_slice(NAME_RECEIPT_CONTEXT);
    m.extend_from_slice(network_id);
    m.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(owner);
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

/// The receipt of `authority` for `name` (without `.dark`) owned by `owner`, valid until
/// `expires` (Unix seconds), in the network `network_id` (§12.5).
pub fn sign_receipt(
    authority: &IdentityKey,
    network_id: &[u8; 32],
    name: &str,
    owner: &[u8; KEY_LEN],
    expires: u64,
) -> NameReceipt {
    let public = authority.public();
    let mut hint = [0u8; 8];
    hint.copy_from_slice(&public[..8]);
    NameReceipt {
        authority: hint,
        expires,
        signature: authority.sign(&receipt_message(network_id, name, owner, expires)),
    }
}

/// The receipts of `r` that count at `now_unix` (§12.5), one per authority: those whose
/// `authority` names one of `authorities` (first 8 bytes of its key), that have not
/// expired, do not run more than [`NAME_REGISTRATION_SECS`] plus an hour past
/// `now_unix`, and whose signature verifies.
pub fn valid_receipts(
    r: &DarkRecord,
    authorities: &NameAuthorities,
    now_unix: u64,
) -> Vec<NameReceipt> {
    let latest = now_unix
        .saturating_add(NAME_REGISTRATION_SECS)
        .saturating_add(MAX_CLOCK_SKEW);
    let mut vouched: Vec<&[u8; KEY_LEN]> = Vec::new();
    let mut valid = Vec::new();
    for receipt in &r.receipts {
        if receipt.expires <= now_unix || receipt.expires > latest {
            continue;
        }
        let message = receipt_message(&authorities.network_id, &r.name, &r.owner, receipt.expires);
        let by = authorities.identities.iter().find(|id| {
            id[..8] == receipt.authority
                && !vouched.contains(id)
                && verify_signature(id, &message, &receipt.signature).is_ok()
        });
        if let Some(id) = by {
            vouched.push(id);
            valid.push(*receipt);
        }
    }
    valid
}

/// How many distinct authorities of `authorities` vouch at `now_unix` for `r`'s owner
/// holding its name: the number of [`valid_receipts`].
pub fn vouching_authorities(r: &DarkRecord, authorities: &NameAuthorities, now_unix: u64) -> usize {
    valid_receipts(r, authorities, now_unix).len()
}

/// [`verify_dark_record`], and with `authorities` also at least `authorities.needed`
/// distinct receipts ([`vouching_authorities`]): the check storage nodes and clients of a
/// network with authorities make (§12.5, §12.6). Without authorities (a network-less
/// test setup) only the record's own checks apply.
///
/// # Errors
/// As [`verify_dark_record`]; [`DarkError::NotRegistered`] with too few receipts.
pub fn verify_name_record(
    r: &DarkRecord,
    now_unix: u64,
    min_pow_bits: u32,
    authorities: Option<&NameAuthorities>,
) -> Result<VerifiedDarkRecord, DarkError> {
    let mut v = verify_dark_record(r, now_unix, min_pow_bits)?;
    if let Some(a) = authorities {
        let mut until: Vec<u64> = valid_receipts(r, a, now_unix)
            .iter()
            .map(|receipt| receipt.expires)
            .collect();
        if until.len() < a.needed {
            return Err(DarkError::NotRegistered {
                vouched: until.len(),
                needed: a.needed,
            });
        }
        // The record verifies while `needed` receipts do: until the `needed`-th latest
        // receipt expiry.
        until.sort_unstable_by(|x, y| y.cmp(x));
        if let Some(last) = a.needed.checked_sub(1).and_then(|i| until.get(i)) {
            v.expires = v.expires.min(*last);
        }
    }
    Ok(v)
}

/// Why a `.dark` name or record was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DarkError {
    /// The name breaks a rule: 1..=63 characters of `a-z`, `0-9`, `-`, not starting or
    /// ending with `-`.
    #[error("invalid .dark name: {0}")]
    Name(&'static str),
    /// The record does not parse (or encode).
    #[error("malformed .dark record: {0}")]
    Malformed(#[from] WireError),
    /// The record's address is not a valid `.anon` key.
    #[error(".dark record address: {0}")]
    Address(#[from] AddressError),
    /// The owner's signature does not verify.
    #[error(".dark record signature: {0}")]
    Signature(#[from] CryptoError),
    /// The proof of work is too small.
    #[error(".dark record has {bits} bits of work, {needed} needed")]
    NotEnoughWork {
        /// Leading zero bits of the record's work hash.
        bits: u32,
        /// Bits required.
        needed: u32,
    },
    /// `expires` is not after the time of the check.
    #[error(".dark record expired at {expires} (now {now})")]
    Expired {
        /// Its `expires` field (Unix seconds).
        expires: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
    /// Fewer authorities than a majority vouch for the record's owner (§12.5).
    #[error(".dark record registered by {vouched} authorities, {needed} needed")]
    NotRegistered {
        /// Distinct authorities with a valid receipt.
        vouched: usize,
        /// How many are required.
        needed: usize,
    },
    /// `published` is more than an hour ahead of the time of the check.
    #[error(".dark record published in the future ({published}, now {now})")]
    FromTheFuture {
        /// Its `published` field (Unix seconds).
        published: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
}

fn name_error(e: WireError) -> DarkError {
    match e {
        WireError::Invalid { why, .. } => DarkError::Name(why),
        other => DarkError::Malformed(other),
    }
}

/// A valid `.dark` name, lower case, without the `.dark` suffix: 1..=63 bytes of `a-z`,
/// `0-9` and `-`, not starting or ending with `-` (one DNS label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DarkName(String);

impl DarkName {
    /// Parse `name` or `name.dark` (ASCII case-insensitive, normalised to lower case).
    /// With the `.dark` suffix, labels before the name are ignored (`www.name.dark` is
    /// `name`) and one trailing `.` is allowed.
    ///
    /// # Errors
    /// [`DarkError::Name`] naming the rule the name breaks.
    pub fn parse(s: &str) -> Result<Self, DarkError> {
        let lower = s.to_ascii_lowercase();
        let label = match lower
            .strip_suffix('.')
            .unwrap_or(&lower)
            .strip_suffix(DARK_SUFFIX)
        {
            Some(rest) => rest.rsplit('.').next().unwrap_or(rest),
            None => lower.as_str(),
        };
        check_dark_name(label).map_err(name_error)?;
        Ok(DarkName(label.to_owned()))
    }

    /// The name without `.dark`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DarkName {
    /// `name.dark`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{DARK_SUFFIX}", self.0)
    }
}

/// The DHT key of a name's records: `BLAKE3-derive_key("anonnet 2026 dark name key", name)`
/// (32 bytes, the name's bytes without `.dark`, §12.5).
pub fn dark_key(name: &DarkName) -> [u8; 32] {
    blake3::derive_key(DARK_NAME_KEY_CONTEXT, name.0.as_bytes())
}

fn pow_hasher(
    name: &str,
    address: &[u8; KEY_LEN],
    owner: &[u8; KEY_LEN],
    published: u64,
    expires: u64,
) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(DARK_POW_PREFIX);
    // Names are at most 63 bytes (checked before any record is hashed); saturate anyway.
    h.update(&[u8::try_from(name.len()).unwrap_or(u8::MAX)]);
    h.update(name.as_bytes());
    h.update(address);
    h.update(owner);
    h.update(&published.to_be_bytes());
    h.update(&expires.to_be_bytes());
    h
}

fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for b in hash {
        bits += b.leading_zeros();
        if *b != 0 {
            break;
        }
    }
    bits
}

/// Leading zero bits (0..=256) of a record's work hash `BLAKE3("anonnet-dark-pow-v1" ‖
/// name_len u8 ‖ name ‖ address ‖ owner ‖ published u64 ‖ expires u64 ‖ pow_nonce u64)`,
/// counted from the most significant bit of the first byte (§12.5).
pub fn pow_bits(r: &DarkRecord) -> u32 {
    let mut h = pow_hasher(&r.name, &r.address, &r.owner, r.published, r.expires);
    h.update(&r.pow_nonce.to_be_bytes());
    leading_zero_bits(h.finalize().as_bytes())
}

/// Make a record naming `address` `name`, owned by `owner`, valid from `published` to
/// `expires` (Unix seconds): mine `pow_nonce` from 0 upward until the work hash has at
/// least `pow_bits` leading zero bits (about 2^pow_bits hashes; [`DARK_POW_BITS`] is what
/// the network requires), then sign it (§12.5).
pub fn make_dark_record(
    owner: &IdentityKey,
    name: &DarkName,
    address: &HsAddress,
    published: u64,
    expires: u64,
    pow_bits: u32,
) -> DarkRecord {
    let owner_pk = owner.public();
    let base = pow_hasher(&name.0, address.public(), &owner_pk, published, expires);
    let need = pow_bits.min(256);
    let pow_nonce = (0..=u64::MAX)
        .find(|nonce| {
            let mut h = base.clone();
            h.update(&nonce.to_be_bytes());
            leading_zero_bits(h.finalize().as_bytes()) >= need
        })
        .unwrap_or(u64::MAX);
    let mut record = DarkRecord {
        name: name.0.clone(),
        address: *address.public(),
        owner: owner_pk,
        published,
        expires,
        pow_nonce,
        signature: [0; 64],
        receipts: Vec::new(),
    };
    // A `DarkName` always encodes, so `signed_bytes` cannot fail; if it ever did, the
    // signature would be over the context alone and the record would not verify.
    let body = record.signed_bytes().unwrap_or_default();
    record.signature = owner.sign(&[DARK_SIGNING_CONTEXT, &body].concat());
    record
}

/// A record that passed [`verify_dark_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDarkRecord {
    /// The name.
    pub name: DarkName,
    /// The `.anon` address it names.
    pub address: HsAddress,
    /// The owner's Ed25519 public key (what clients pin).
    pub owner: [u8; KEY_LEN],
    /// When it was made (Unix seconds).
    pub published: u64,
    /// End of validity (Unix seconds): the record's `expires`; from
    /// [`verify_name_record`] with authorities, earlier when fewer than the needed
    /// receipts would still be valid then.
    pub expires: u64,
}

/// Check a record at `now_unix` (Unix seconds), requiring `min_pow_bits` of work (the
/// network uses [`DARK_POW_BITS`]), §12.5. Cheap checks first: `expires > now`,
/// `published ≤ now + 3600`, the name, the address, the work, and last the signature by
/// `owner` over `"anonnet-dark-record-v1" ‖ record without signature`.
///
/// # Errors
/// [`DarkError::Expired`], [`DarkError::FromTheFuture`], [`DarkError::Name`],
/// [`DarkError::Address`], [`DarkError::NotEnoughWork`], [`DarkError::Signature`].
pub fn verify_dark_record(
    r: &DarkRecord,
    now_unix: u64,
    min_pow_bits: u32,
) -> Result<VerifiedDarkRecord, DarkError> {
    if r.expires <= now_unix {
        return Err(DarkError::Expired {
            expires: r.expires,
            now: now_unix,
        });
    }
    if r.published > now_unix.saturating_add(MAX_CLOCK_SKEW) {
        return Err(DarkError::FromTheFuture {
            published: r.published,
            now: now_unix,
        });
    }
    check_dark_name(&r.name).map_err(name_error)?;
    let address = HsAddress::from_public(r.address)?;
    let bits = pow_bits(r);
    if bits < min_pow_bits {
        return Err(DarkError::NotEnoughWork {
            bits,
            needed: min_pow_bits,
        });
    }
    let body = r.signed_bytes()?;
    verify_signature(
        &r.owner,
        &[DARK_SIGNING_CONTEXT, &body].concat(),
        &r.signature,
    )?;
    Ok(VerifiedDarkRecord {
        name: DarkName(r.name.clone()),
        address,
        owner: r.owner,
        published: r.published,
        expires: r.expires,
    })
}

impl anonnet_error::HasKind for DarkError {
    /// A malformed name or address typed by a person is
    /// [`anonnet_error::ErrorKind::BadRequest`]; a record that does not verify came from
    /// the DHT: [`anonnet_error::ErrorKind::Protocol`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            DarkError::Name(_) | DarkError::Address(_) => anonnet_error::ErrorKind::BadRequest,
            DarkError::Signature(e) => anonnet_error::HasKind::kind(e),
            _ => anonnet_error::ErrorKind::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hs::ServiceKey;

    const NOW: u64 = 1_800_000_000;

    fn record(bits: u32) -> DarkRecord {
        make_dark_record(
            &IdentityKey::from_seed(&[0x41; 32]),
            &DarkName::parse("example").unwrap(),
            &ServiceKey::from_seed(&[0x61; 32]).address(),
            NOW - 60,
            NOW + 86_400,
            bits,
        )
    }

    #[test]
    fn dark_names_parse_and_normalise() {
        for (input, name) in [
            ("example", "example"),
            ("Example.DARK", "example"),
            ("www.example.dark", "example"),
            ("example.dark.", "example"),
            ("a-1", "a-1"),
            ("7", "7"),
        ] {
            let n = DarkName::parse(input).unwrap();
            assert_eq!(n.as_str(), name, "{input}");
            assert_eq!(n.to_string(), format!("{name}.dark"));
        }
        let long = "x".repeat(63);
        assert_eq!(DarkName::parse(&long).unwrap().as_str(), long);
        for bad in [
            "",
            ".dark",
            "-a",
            "a-.dark",
            "a_b",
            "a.b",
            "é",
            "exa mple",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(DarkName::parse(bad), Err(DarkError::Name(_))),
                "{bad:?}"
            );
        }
        assert_ne!(
            dark_key(&DarkName::parse("a").unwrap()),
            dark_key(&DarkName::parse("b").unwrap())
        );
        assert_eq!(
            dark_key(&DarkName::parse("A.dark").unwrap()),
            dark_key(&DarkName::parse("a").unwrap())
        );
    }

    #[test]
    fn valid_dark_record_verifies() {
        let r = record(8);
        assert!(pow_bits(&r) >= 8);
        let bytes = r.encode().unwrap();
        let r = DarkRecord::decode(&bytes).unwrap();
        let v = verify_dark_record(&r, NOW, 8).unwrap();
        assert_eq!(v.name.as_str(), "example");
        assert_eq!(v.address, ServiceKey::from_seed(&[0x61; 32]).address());
        assert_eq!(v.owner, IdentityKey::from_seed(&[0x41; 32]).public());
        assert_eq!((v.published, v.expires), (NOW - 60, NOW + 86_400));
    }

    #[test]
    fn bad_signature_is_refused() {
        let mut r = record(8);
        r.signature[10] ^= 1;
        assert!(matches!(
            verify_dark_record(&r, NOW, 8),
            Err(DarkError::Signature(_))
        ));
        // Someone else's signature over the same record.
        let mut stolen = record(8);
        let body = stolen.signed_bytes().unwrap();
        stolen.signature =
            IdentityKey::from_seed(&[0x42; 32]).sign(&[DARK_SIGNING_CONTEXT, &body].concat());
        assert!(matches!(
            verify_dark_record(&stolen, NOW, 8),
            Err(DarkError::Signature(CryptoError::BadSignature))
        ));
    }

    #[test]
    fn too_little_work_is_refused() {
        let r = record(4);
        let bits = pow_bits(&r);
        assert!(bits >= 4);
        let needed = bits + 1;
        assert_eq!(
            verify_dark_record(&r, NOW, needed),
            Err(DarkError::NotEnoughWork { bits, needed })
        );
        verify_dark_record(&r, NOW, bits).unwrap();
    }

    #[test]
    fn tampered_address_is_refused() {
        // Replaced by another service's address: the work and signature no longer match.
        let mut r = record(0);
        r.address = *ServiceKey::from_seed(&[0x62; 32]).address().public();
        assert!(matches!(
            verify_dark_record(&r, NOW, 0),
            Err(DarkError::Signature(CryptoError::BadSignature))
        ));
        let mut r = record(8);
        r.address[0] ^= 1;
        assert!(verify_dark_record(&r, NOW, 8).is_err());
        // Replaced by bytes that are no key at all.
        let mut r = record(8);
        r.address = [0; 32];
        r.address[0] = 1; // the identity point
        assert_eq!(
            verify_dark_record(&r, NOW, 8),
            Err(DarkError::Address(AddressError::Key))
        );
    }

    #[test]
    fn expired_and_future_records_are_refused() {
        let r = record(8);
        assert_eq!(
            verify_dark_record(&r, NOW + 86_400, 8),
            Err(DarkError::Expired {
                expires: NOW + 86_400,
                now: NOW + 86_400
            })
        );
        let early = NOW - 60 - MAX_CLOCK_SKEW - 1;
        assert_eq!(
            verify_dark_record(&r, early, 8),
            Err(DarkError::FromTheFuture {
                published: NOW - 60,
                now: early
            })
        );
        verify_dark_record(&r, NOW - 60 - MAX_CLOCK_SKEW, 8).unwrap();
    }

    #[test]
    fn bad_name_in_record_is_refused() {
        let mut r = record(0);
        r.name = "Example".into();
        assert!(matches!(
            verify_dark_record(&r, NOW, 0),
            Err(DarkError::Name(_))
        ));
    }

    /// The test vector printed in docs/protocol.md §12.5 (and re-derived by
    /// docs/vectors/verify_vectors.py): owner seed 0x41×32, name "example", the address of
    /// service seed 0x61×32, published 1 800 000 000, expires 1 800 086 400, 8 bits of work,
    /// one receipt by the authority of seed 0x51×32 in network id 0x33×32, expires
    /// 1 802 592 000.
    #[test]
    fn dark_test_vector() {
        let name = DarkName::parse("example").unwrap();
        let mut r = make_dark_record(
            &IdentityKey::from_seed(&[0x41; 32]),
            &name,
            &ServiceKey::from_seed(&[0x61; 32]).address(),
            1_800_000_000,
            1_800_086_400,
            8,
        );
        let authority = IdentityKey::from_seed(&[0x51; 32]);
        let network_id = [0x33; 32];
        r.receipts = vec![sign_receipt(
            &authority,
            &network_id,
            &r.name,
            &r.owner,
            1_802_592_000,
        )];
        let mut h = pow_hasher(&r.name, &r.address, &r.owner, r.published, r.expires);
        h.update(&r.pow_nonce.to_be_bytes());
        let got = [
            hex::encode(dark_key(&name)),
            r.pow_nonce.to_string(),
            h.finalize().to_hex().to_string(),
            hex::encode(r.encode().unwrap()),
        ];
        assert_eq!(got, DARK_VECTOR, "{got:#?}");
        let authorities = NameAuthorities {
            network_id,
            identities: vec![authority.public()],
            needed: 1,
        };
        verify_name_record(&r, 1_800_000_000, 8, Some(&authorities)).unwrap();
    }

    /// dark_key("example"), pow_nonce, work hash, record.
    const DARK_VECTOR: [&str; 4] = [
        "4fbc98964b960102bdd39ec72b2f09b0b81bfe54ab4e9019c9b29959b6d9666a",
        "5",
        "0008f6b6de3298f6928102960eff2219927c28c0b46f1a9b1b215aa84abe20d1",
        concat!(
            "02076578616d706c65af06a3e3291714e4f356c19c9b15cd1951ec6e6662aa77",
            "be07547f289383341ddb995fe25169d141cab9bbba92baa01f9f2e1ece7df4cb",
            "2ac05190f37fcc1f9d000000006b49d200000000006b4b238000000000000000",
            "055d1b69ba21d433517d6801e0d7d04fe34f43a2292fb4eceeed14de7048670b",
            "63d5c18ccc8b1a145019843a33cb0957b7cfc37b6ea12bf16ba36472a7c12b2e",
            "0b01c050c5637a44fa86000000006b715f007d9637653b7451a90b88318135e2",
            "674ac771207b35125d005556559c004b4c7d5ad2341c4db8469cb38d7f797464",
            "f5fe238429de4361722726cecd6d0892c201",
        ),
    ];

    #[test]
    fn full_difficulty_record_is_made_and_checked() {
        // ~4 million hashes in expectation; BLAKE3 is built optimised (profile.dev.package).
        let t = std::time::Instant::now();
        let r = record(DARK_POW_BITS);
        verify_dark_record(&r, NOW, DARK_POW_BITS).unwrap();
        assert!(pow_bits(&r) >= DARK_POW_BITS);
        eprintln!(
            "mined {} bits in {:?} (nonce {})",
            DARK_POW_BITS,
            t.elapsed(),
            r.pow_nonce
        );
    }

    #[test]
    fn receipts_of_a_majority_make_a_record_believable() {
        let keys: Vec<IdentityKey> = (1..=3u8)
            .map(|i| IdentityKey::from_seed(&[i; 32]))
            .collect();
        let authorities = NameAuthorities {
            network_id: [0x33; 32],
            identities: keys.iter().map(IdentityKey::public).collect(),
            needed: 2,
        };
        let mut r = record(8);
        let receipt = |k: &IdentityKey, expires: u64| {
            sign_receipt(k, &authorities.network_id, &r.name, &r.owner, expires)
        };
        let later = NOW + 86_400;
        let one = receipt(&keys[0], later);
        let two = receipt(&keys[1], later);
        // No receipt, one, the same one twice: not enough.
        assert!(matches!(
            verify_name_record(&r, NOW, 8, Some(&authorities)),
            Err(DarkError::NotRegistered {
                vouched: 0,
                needed: 2
            })
        ));
        verify_name_record(&r, NOW, 8, None).unwrap();
        r.receipts = vec![one, one];
        assert_eq!(vouching_authorities(&r, &authorities, NOW), 1);
        r.receipts = vec![one, two];
        assert_eq!(vouching_authorities(&r, &authorities, NOW), 2);
        verify_name_record(&r, NOW, 8, Some(&authorities)).unwrap();
        // Expired, too far ahead, another network, another owner, another name: worthless.
        assert_eq!(vouching_authorities(&r, &authorities, later), 0);
        let far = NOW + NAME_REGISTRATION_SECS + 2 * 3600;
        r.receipts = vec![receipt(&keys[0], far), two];
        assert_eq!(vouching_authorities(&r, &authorities, NOW), 1);
        let elsewhere = NameAuthorities {
            network_id: [0x34; 32],
            ..authorities.clone()
        };
        r.receipts = vec![one, two];
        assert_eq!(vouching_authorities(&r, &elsewhere, NOW), 0);
        let mut stolen = r.clone();
        stolen.owner = IdentityKey::from_seed(&[0x42; 32]).public();
        assert_eq!(vouching_authorities(&stolen, &authorities, NOW), 0);
        let mut renamed = r.clone();
        renamed.name = "exampl".into();
        assert_eq!(vouching_authorities(&renamed, &authorities, NOW), 0);
        // A key outside the network signs nothing that counts, even with a matching hint.
        let outsider = IdentityKey::from_seed(&[9; 32]);
        let mut forged = receipt(&outsider, later);
        forged.authority = one.authority;
        r.receipts = vec![one, forged];
        assert_eq!(vouching_authorities(&r, &authorities, NOW), 1);
    }

    #[test]
    fn name_record_is_valid_only_while_a_majority_of_receipts_is() {
        let keys: Vec<IdentityKey> = (1..=3u8)
            .map(|i| IdentityKey::from_seed(&[i; 32]))
            .collect();
        let authorities = NameAuthorities {
            network_id: [0x33; 32],
            identities: keys.iter().map(IdentityKey::public).collect(),
            needed: 2,
        };
        let mut r = record(8);
        let own_expires = verify_dark_record(&r, NOW, 8).unwrap().expires;
        r.receipts = [100, 300, 200]
            .iter()
            .zip(&keys)
            .map(|(secs, k)| {
                sign_receipt(k, &authorities.network_id, &r.name, &r.owner, NOW + secs)
            })
            .collect();
        // Two receipts remain valid until NOW + 200.
        let v = verify_name_record(&r, NOW, 8, Some(&authorities)).unwrap();
        assert_eq!(v.expires, NOW + 200);
        assert!(verify_name_record(&r, NOW + 200, 8, Some(&authorities)).is_err());
        // Without authorities, the record's own expiry.
        assert_eq!(
            verify_name_record(&r, NOW, 8, None).unwrap().expires,
            own_expires
        );
    }
}
