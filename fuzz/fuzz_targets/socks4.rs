//! The SOCKS4/4a request parser (`anonnet_proxy::socks4::parse`, docs/protocol.md §9.3),
//! fed the fuzz input as the bytes received so far.
//!
//! Nothing may panic, and the answers must be consistent with reading byte by byte: a
//! request found in the first `len` bytes is found, the same, in exactly those bytes and in
//! no shorter prefix (every shorter prefix is `Incomplete`); `len` stays within
//! `MAX_REQUEST_LEN`; host names and user ids stay within their bounds.
#![no_main]

use anonnet_proxy::socks4::{parse, Destination, Parsed, MAX_FIELD_LEN, MAX_REQUEST_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Request { request, len }) = parse(data) else {
        return;
    };
    assert!((9..=MAX_REQUEST_LEN).contains(&len) && len <= data.len(), "len {len}");
    assert!(request.user_id.len() <= MAX_FIELD_LEN);
    assert!(!request.user_id.contains(&0));
    if let Destination::Host(h) = &request.destination {
        assert!(!h.is_empty() && h.len() <= MAX_FIELD_LEN);
    }
    assert_eq!(
        parse(&data[..len]),
        Ok(Parsed::Request {
            request: request.clone(),
            len
        })
    );
    for short in 0..len {
        assert_eq!(parse(&data[..short]), Ok(Parsed::Incomplete), "prefix {short}");
    }
});
