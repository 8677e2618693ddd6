//! `.dark` name records (`docs/protocol.md` §12.5): what a DHT storage node reads from any
//! peer's `STORE`, and what a client reads from a `VALUE` answer.
//!
//! Ways in, none may panic:
//! 1. `DarkRecord::decode` on the raw bytes (and round-trip through `encode`), then
//!    `verify_dark_record` at the network's work bound and at 0, `pow_bits`, with `now`
//!    from the input;
//! 2. `verify_name_record` against a fixed set of two name authorities: never more
//!    vouching authorities than there are (receipts from strangers or repeated
//!    authorities do not count), and a record accepted there is accepted without them;
//! 3. the decoded record re-signed by a fixed owner (what anyone can do with their own
//!    key) and checked with no work required: the outcome is predicted from the times and
//!    the address and must match.
#![no_main]

use std::sync::OnceLock;

use anonnet_crypto::dark::{
    dark_key, pow_bits, verify_dark_record, verify_name_record, vouching_authorities, DarkName,
    NameAuthorities, DARK_POW_BITS, DARK_SIGNING_CONTEXT,
};
use anonnet_crypto::hs::HsAddress;
use anonnet_crypto::IdentityKey;
use anonnet_wire::hs::DarkRecord;
use libfuzzer_sys::fuzz_target;

fn owner() -> &'static IdentityKey {
    static KEY: OnceLock<IdentityKey> = OnceLock::new();
    KEY.get_or_init(|| IdentityKey::from_seed(&[0x41; 32]))
}

fn authorities() -> &'static NameAuthorities {
    static A: OnceLock<NameAuthorities> = OnceLock::new();
    A.get_or_init(|| NameAuthorities {
        network_id: [0x33; 32],
        identities: vec![
            IdentityKey::from_seed(&[0x51; 32]).public(),
            IdentityKey::from_seed(&[0x52; 32]).public(),
        ],
        needed: 2,
    })
}

fn now_from(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (dst, src) in b.iter_mut().zip(data.iter().rev()) {
        *dst = *src;
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let now = now_from(data);
    let Ok(r) = DarkRecord::decode(data) else {
        return;
    };
    assert_eq!(
        r.encode().expect("a decoded record re-encodes"),
        data,
        "DarkRecord does not round-trip"
    );
    let name = DarkName::parse(&r.name).expect("a decoded record's name is valid");
    assert_eq!(name.as_str(), r.name);
    let _ = dark_key(&name);
    let bits = pow_bits(&r);
    assert!(bits <= 256);
    if let Ok(v) = verify_dark_record(&r, now, DARK_POW_BITS) {
        assert!(bits >= DARK_POW_BITS);
        assert_eq!(v.owner, r.owner);
    }
    let _ = verify_dark_record(&r, now, 0);
    assert!(vouching_authorities(&r, authorities(), now) <= authorities().identities.len());
    if verify_name_record(&r, now, 0, Some(authorities())).is_ok() {
        assert!(verify_name_record(&r, now, 0, None).is_ok());
    }

    let mut mine = DarkRecord {
        owner: owner().public(),
        ..r
    };
    let signed = mine.signed_bytes().expect("re-encodes");
    mine.signature = owner().sign(&[DARK_SIGNING_CONTEXT, &signed].concat());
    let expected = mine.expires > now
        && mine.published <= now.saturating_add(3600)
        && HsAddress::from_public(mine.address).is_ok();
    let got = verify_dark_record(&mine, now, 0);
    assert_eq!(got.is_ok(), expected, "{got:?}");
});
