//! `.anon` addresses and `.dark` names (`docs/protocol.md` §12.1, §12.5): host names an
//! application hands to the SOCKS or HTTP proxy, and names read from the address book.
//!
//! Ways in, none may panic:
//! 1. `HsAddress::parse` and `DarkName::parse` on the input as text; whatever parses
//!    prints and parses back to the same value;
//! 2. the first 35 bytes as `A ‖ checksum ‖ version` in base32 + `.anon` (so parsing gets
//!    past the length and alphabet checks), and with the right checksum and version (so
//!    the key check is reached): parses iff `HsAddress::from_public` accepts `A`.
#![no_main]

use anonnet_crypto::dark::{dark_key, DarkName};
use anonnet_crypto::hs::{AddressError, HsAddress, ADDRESS_CHECKSUM_PREFIX};
use data_encoding::BASE32_NOPAD;
use libfuzzer_sys::fuzz_target;

fn host_of(raw: &[u8]) -> String {
    format!("{}.anon", BASE32_NOPAD.encode(raw).to_ascii_lowercase())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(a) = HsAddress::parse(&text) {
        let host = a.to_host();
        assert_eq!(host.len(), 61);
        assert_eq!(HsAddress::parse(&host), Ok(a));
        assert!(text.to_ascii_lowercase().contains(&host[..56]));
    }
    if let Ok(n) = DarkName::parse(&text) {
        assert_eq!(DarkName::parse(n.as_str()).as_ref(), Ok(&n));
        assert_eq!(DarkName::parse(&n.to_string()).as_ref(), Ok(&n));
        let _ = dark_key(&n);
    }

    let Some(raw) = data.first_chunk::<35>() else {
        return;
    };
    match HsAddress::parse(&host_of(raw)) {
        Ok(a) => assert_eq!(&a.public()[..], &raw[..32]),
        Err(AddressError::Checksum | AddressError::Version(_) | AddressError::Key) => {}
        Err(e) => panic!("a 56-character base32 label failed with {e:?}"),
    }
    let mut pk = [0u8; 32];
    pk.copy_from_slice(&raw[..32]);
    let mut good = pk.to_vec();
    let mut h = blake3::Hasher::new();
    h.update(ADDRESS_CHECKSUM_PREFIX);
    h.update(&pk);
    h.update(&[1]);
    good.extend_from_slice(&h.finalize().as_bytes()[..2]);
    good.push(1);
    let parsed = HsAddress::parse(&host_of(&good));
    assert_eq!(parsed, HsAddress::from_public(pk));
    if let Ok(a) = parsed {
        assert_eq!(a.to_host(), host_of(&good));
    }
});
