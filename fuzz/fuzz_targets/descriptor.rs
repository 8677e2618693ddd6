//! Relay descriptors (`docs/protocol.md` §3): what a client reads from a directory file or
//! (later) the DHT, signed by whoever published it.
//!
//! Four ways in, none may panic:
//! 1. `SignedDescriptor::decode` on the raw bytes (and round-trip through `encode`);
//! 2. `SignedDescriptor::from_base64` on the bytes as text (the file form);
//! 3. `RelayDescriptor::decode_body` on the raw bytes (and round-trip through `encode_body`);
//! 4. `verify_descriptor` on whatever decoded, with a `now` taken from the input — and, so
//!    that the checks after the signature are reached too, on the decoded body re-signed
//!    with a fixed identity key (what a malicious relay can always do with its own key).
#![no_main]

use std::sync::OnceLock;

use anonnet_crypto::{sign_descriptor, verify_descriptor, IdentityKey};
use anonnet_wire::{RelayDescriptor, SignedDescriptor};
use libfuzzer_sys::fuzz_target;

fn identity() -> &'static IdentityKey {
    static KEY: OnceLock<IdentityKey> = OnceLock::new();
    KEY.get_or_init(|| IdentityKey::from_seed(&[0x42; 32]))
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

    if let Ok(signed) = SignedDescriptor::decode(data) {
        assert_eq!(
            signed.encode().expect("a decoded descriptor re-encodes"),
            data,
            "SignedDescriptor does not round-trip"
        );
        let _ = verify_descriptor(&signed, now);
        let b64 = signed.to_base64().expect("re-encodes as base64");
        assert_eq!(SignedDescriptor::from_base64(&b64).ok(), Some(signed));
    }

    let text = String::from_utf8_lossy(data);
    if let Ok(signed) = SignedDescriptor::from_base64(&text) {
        let _ = verify_descriptor(&signed, now);
    }

    if let Ok(desc) = RelayDescriptor::decode_body(data) {
        assert_eq!(
            desc.encode_body().expect("a decoded body re-encodes"),
            data,
            "RelayDescriptor body does not round-trip"
        );
        let _ = desc.exit_allows_port(now as u16);
        // The same fields under our own key: signature checks pass, the time checks run.
        let mine = RelayDescriptor {
            identity: identity().public(),
            ..desc
        };
        let signed = sign_descriptor(identity(), &mine).expect("a valid body signs");
        match verify_descriptor(&signed, now) {
            Ok(v) => {
                assert_eq!(v.descriptor, mine);
                assert!(mine.expires > now);
            }
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains("expired") || s.contains("future"), "{s}");
            }
        }
    }
});
