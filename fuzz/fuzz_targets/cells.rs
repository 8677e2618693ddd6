//! Link cells (`docs/protocol.md` §4): the first bytes a relay reads from any peer.
//!
//! Every decoder must return `Ok` or `Err` for any input, never panic, and whatever decodes
//! must re-encode to exactly the same bytes (the formats have no slack: fixed padding,
//! explicit lengths).
#![no_main]

use anonnet_wire::cell::{check_cell_len, LayerKind};
use anonnet_wire::{CellCommand, Create, Created, Destroy, DestroyReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(&b) = data.first() {
        let _ = CellCommand::from_byte(b);
        let _ = LayerKind::from_byte(b);
        assert_eq!(DestroyReason::from_byte(b).to_byte(), b);
    }
    if let Some(prefix) = data.first_chunk::<{ Create::PREFIX_LEN }>() {
        if let Ok(len) = Create::peek_cell_len(prefix) {
            assert!(check_cell_len(len).is_ok());
        }
    }

    if let Ok(create) = Create::decode(data) {
        assert_eq!(usize::from(create.cell_len), data.len());
        let again = create.encode().expect("a decoded CREATE re-encodes");
        assert_eq!(again, data, "CREATE does not round-trip");
    }
    if let Ok(created) = Created::decode(data) {
        let again = created
            .encode(data.len())
            .expect("a decoded CREATED re-encodes");
        assert_eq!(again, data, "CREATED does not round-trip");
    }
    if let Ok(destroy) = Destroy::decode(data) {
        // DESTROY ignores its padding by design, so only the first two bytes must agree.
        let again = destroy
            .encode(data.len())
            .expect("a decoded DESTROY re-encodes");
        assert_eq!(again.get(..2), data.get(..2), "DESTROY does not round-trip");
    }
});
