//! Relay messages (`docs/protocol.md` §6): the inner area of a `DELIVER` layer, as a relay
//! or the client decodes it after opening its onion layer. Any bytes a circuit peer chooses
//! can land here (the layer only proves who sent them).
//!
//! `RelayCell::decode` must never panic, and a decoded message must re-encode into an area
//! of the same size to exactly the input (the padding must be zero, lengths are explicit).
#![no_main]

use anonnet_wire::RelayCell;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let inner = Bytes::copy_from_slice(data);
    if let Ok(cell) = RelayCell::decode(&inner) {
        let mut again = vec![0xA5u8; data.len()];
        let n = cell
            .encode_into(&mut again)
            .expect("a decoded relay message re-encodes");
        // Version 2: what follows the message is padding, never read (protocol §6.1).
        assert_eq!(again[..n], data[..n], "relay message does not round-trip: {cell:?}");
        assert!(RelayCell::max_payload(data.len()) <= data.len());
    }
});
