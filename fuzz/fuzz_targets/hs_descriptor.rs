//! Hidden-service descriptors (`docs/protocol.md` §12.3): what a DHT storage node reads from
//! any peer's `STORE`, and what a client reads from a `VALUE` answer.
//!
//! Ways in, none may panic:
//! 1. `HsDescriptor::decode` on the raw bytes (and round-trip through `encode`), then
//!    `verify_descriptor` and `open_descriptor` for a fixed address, with `now` from the
//!    input;
//! 2. the decoded descriptor re-signed by the fixed service's blinded key for its period
//!    (what a service can always do with its own key), so the checks after the signature
//!    run: it verifies unless expired, and the fuzzer's ciphertext never decrypts;
//! 3. `HsDescriptorBody::decode` on the raw bytes (and round-trip through `encode`), then
//!    the body sealed by the fixed service with fuzz-chosen period, revision, expiry and
//!    salt: it opens to the same body unless expired.
#![no_main]

use std::sync::OnceLock;

use anonnet_crypto::hs::{
    descriptor_index, open_descriptor, seal_descriptor_with_salt, verify_descriptor, HsError,
    ServiceKey, DESCRIPTOR_SIGNING_CONTEXT,
};
use anonnet_wire::hs::{HsDescriptor, HsDescriptorBody};
use libfuzzer_sys::fuzz_target;

fn service() -> &'static ServiceKey {
    static KEY: OnceLock<ServiceKey> = OnceLock::new();
    KEY.get_or_init(|| ServiceKey::from_seed(&[0x61; 32]))
}

/// Eight bytes from the end of the input, little-endian (zero-padded when shorter).
fn u64_from_end(data: &[u8], skip: usize) -> u64 {
    let mut b = [0u8; 8];
    for (dst, src) in b.iter_mut().zip(data.iter().rev().skip(skip)) {
        *dst = *src;
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let now = u64_from_end(data, 0);
    let address = service().address();

    if let Ok(d) = HsDescriptor::decode(data) {
        assert_eq!(
            d.encode().expect("a decoded descriptor re-encodes"),
            data,
            "HsDescriptor does not round-trip"
        );
        assert_eq!(&d.header_bytes()[..], &data[..73]);
        let _ = verify_descriptor(&d, now);
        let _ = open_descriptor(&d, &address, now);

        if let Ok(blinded) = service().blinded(d.period) {
            let mut mine = HsDescriptor {
                blinded_key: blinded.public(),
                ..d
            };
            let signed = mine.signed_bytes().expect("re-encodes");
            mine.signature = blinded.sign(&[DESCRIPTOR_SIGNING_CONTEXT, &signed].concat());
            match verify_descriptor(&mine, now) {
                Ok(v) => {
                    assert!(mine.expires > now);
                    assert_eq!(v.index, descriptor_index(&mine.blinded_key, mine.period));
                    assert_eq!(v.revision, mine.revision);
                    // The input's ciphertext under our key and header: Poly1305 refuses
                    // it, unless it was sealed by this service with these very fields
                    // (a seed is).
                    match open_descriptor(&mine, &address, now) {
                        Ok(_) | Err(HsError::Decrypt) => {}
                        Err(e) => panic!("a re-signed descriptor failed with {e}"),
                    }
                }
                Err(e) => assert!(matches!(e, HsError::Expired { .. }), "{e}"),
            }
        }
    }

    if let Ok(body) = HsDescriptorBody::decode(data) {
        assert_eq!(
            body.encode().expect("a decoded body re-encodes"),
            data,
            "HsDescriptorBody does not round-trip"
        );
        let period = u64_from_end(data, 8) >> 40;
        let revision = u64_from_end(data, 16);
        let expires = u64_from_end(data, 24);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&data[33..49]);
        if let Ok(d) = seal_descriptor_with_salt(service(), period, revision, expires, &salt, &body)
        {
            let bytes = d.encode().expect("a sealed descriptor encodes");
            assert_eq!(HsDescriptor::decode(&bytes).as_ref(), Ok(&d));
            match open_descriptor(&d, &address, now) {
                Ok(opened) => {
                    assert_eq!(opened, body);
                    assert!(expires > now);
                }
                Err(e) => {
                    assert!(matches!(e, HsError::Expired { .. }), "{e}");
                    assert!(expires <= now);
                }
            }
        }
    }
});
