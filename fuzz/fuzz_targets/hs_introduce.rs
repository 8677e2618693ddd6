//! Introductions (`docs/protocol.md` §12.4): the sealed bytes a service receives from any
//! client through an introduction point, and the plaintext inside.
//!
//! Ways in, none may panic:
//! 1. `open_introduce` with a fixed introduction key on the raw bytes (a seed is a valid
//!    sealed introduction; whatever opens has the input's length minus 48 and its `E`);
//! 2. `IntroducePlaintext::decode` (and round-trip through `encode`), `RelayLink` and
//!    `IntroPoint::decode_from` (the consumed prefix round-trips);
//! 3. the input sealed with `seal_introduce_with_secret` (ephemeral secret from the input)
//!    opens to the input again, and not under another `auth_key`.
#![no_main]

use std::sync::OnceLock;

use anonnet_crypto::hs::{open_introduce, seal_introduce_with_secret, HsError, IntroKey};
use anonnet_wire::hs::{IntroPoint, IntroducePlaintext, RelayLink};
use anonnet_wire::{Reader, Writer};
use libfuzzer_sys::fuzz_target;

const AUTH_KEY: [u8; 32] = [0x88; 32];

fn intro_key() -> &'static IntroKey {
    static KEY: OnceLock<IntroKey> = OnceLock::new();
    KEY.get_or_init(|| IntroKey::from_secret(&[0x55; 32]))
}

fuzz_target!(|data: &[u8]| {
    match open_introduce(intro_key(), &AUTH_KEY, data) {
        Ok((plain, e)) => {
            assert_eq!(plain.len() + 48, data.len());
            assert_eq!(&e[..], &data[..32]);
            if let Ok(p) = IntroducePlaintext::decode(&plain) {
                assert_eq!(p.encode().expect("re-encodes"), &plain[..]);
            }
        }
        Err(HsError::Truncated) => assert!(data.len() < 48),
        Err(_) => {}
    }

    if let Ok(p) = IntroducePlaintext::decode(data) {
        assert_eq!(
            p.encode().expect("a decoded plaintext re-encodes"),
            data,
            "IntroducePlaintext does not round-trip"
        );
    }
    let mut r = Reader::new(data);
    if let Ok(link) = RelayLink::decode_from(&mut r) {
        let mut w = Writer::new();
        link.encode_into(&mut w);
        assert_eq!(w.as_slice(), &data[..data.len() - r.remaining()]);
    }
    let mut r = Reader::new(data);
    if let Ok(ip) = IntroPoint::decode_from(&mut r) {
        let mut w = Writer::new();
        ip.encode_into(&mut w);
        assert_eq!(w.as_slice(), &data[..data.len() - r.remaining()]);
    }

    let mut e = [0x66u8; 32];
    for (dst, src) in e.iter_mut().zip(data) {
        *dst = *src;
    }
    let sealed = seal_introduce_with_secret(&e, &intro_key().public(), &AUTH_KEY, data)
        .expect("a valid enc_key seals");
    let (plain, _) = open_introduce(intro_key(), &AUTH_KEY, &sealed).expect("opens");
    assert_eq!(&plain[..], data);
    assert_eq!(
        open_introduce(intro_key(), &[0x89; 32], &sealed).unwrap_err(),
        HsError::Decrypt
    );
});
