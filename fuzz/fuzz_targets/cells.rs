//! Link cells (`docs/protocol.md` §4): the first bytes a relay reads from any peer.
//!
//! Every decoder must return `Ok` or `Err` for any input, never panic, and whatever decodes
//! must re-encode to exactly the same bytes (the formats have no slack: fixed padding,
//! explicit lengths). This covers the one-cell handshake of type 1 (`CREATE`, `CREATED`),
//! the two-cell handshake of type 2 (`CreateHybrid`, `CreatedHybrid`: a first cell and a
//! `CONTINUE` cell, §4.2–§4.3) and `create_handshake_type`, which tells a relay whether a
//! second cell follows.
//!
//! The two-cell formats are 2048 bytes of which only the hello or reply is free, so besides
//! the raw input the target also builds a valid pair from the input and changes one byte
//! of it at a position the input chooses: the pair must decode to the changed hello or
//! reply if the byte lies inside it, and be refused anywhere else (command, `cell_len`,
//! handshake type, `CONTINUE`, padding).
#![no_main]

use anonnet_wire::cell::{check_cell_len, LayerKind};
use anonnet_wire::{
    create_handshake_type, CellCommand, Create, CreateHybrid, Created, CreatedHybrid, Destroy,
    DestroyReason, CELL_LEN, HANDSHAKE_HYBRID_V2, HANDSHAKE_NTOR_V1, HYBRID_CELLS_LEN,
    HYBRID_HELLO_LEN, HYBRID_REPLY_LEN,
};
use libfuzzer_sys::fuzz_target;

/// `len` bytes: `src` first, then a fixed pattern.
fn bytes_from(src: &[u8], len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| src.get(i).copied().unwrap_or((i as u8) ^ 0x5c))
        .collect()
}

/// Where byte `pos` of a two-cell handshake lies in its data, when the data's first part
/// starts at `header` in the first cell and the rest at byte 1 of the `CONTINUE` cell.
fn data_index(pos: usize, header: usize, data_len: usize) -> Option<usize> {
    let in_first = CELL_LEN - header;
    if (header..CELL_LEN).contains(&pos) {
        Some(pos - header)
    } else if (CELL_LEN + 1..CELL_LEN + 1 + (data_len - in_first)).contains(&pos) {
        Some(in_first + pos - CELL_LEN - 1)
    } else {
        None
    }
}

fn two_cell_handshakes(data: &[u8]) {
    let Some((&[p0, p1, x], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let pos = usize::from(u16::from_le_bytes([p0, p1])) % HYBRID_CELLS_LEN;

    // CREATE, type 2: 0x01 ‖ cell_len ‖ 0x0002 ‖ hello[..1019], then 0x05 ‖ hello[1019..] ‖ 0…
    assert_eq!(
        CreateHybrid {
            hello: rest.to_vec()
        }
        .encode()
        .is_ok(),
        rest.len() == HYBRID_HELLO_LEN
    );
    let hello = bytes_from(rest, HYBRID_HELLO_LEN);
    let mut cells = CreateHybrid {
        hello: hello.clone(),
    }
    .encode()
    .expect("a 1280-byte hello encodes");
    assert_eq!(cells.len(), HYBRID_CELLS_LEN);
    assert_eq!(create_handshake_type(&cells), Some(HANDSHAKE_HYBRID_V2));
    assert!(Create::decode(&cells[..CELL_LEN]).is_err());
    assert_eq!(cells[CELL_LEN], CellCommand::Continue as u8);
    cells[pos] ^= x;
    let got = CreateHybrid::decode(&cells);
    match (x, data_index(pos, 5, HYBRID_HELLO_LEN)) {
        (0, _) => assert_eq!(got.map(|c| c.hello), Ok(hello)),
        (_, Some(i)) => {
            let mut want = hello;
            want[i] ^= x;
            assert_eq!(got.map(|c| c.hello), Ok(want));
        }
        (_, None) => assert!(got.is_err(), "byte {pos} of a type-2 CREATE is not checked"),
    }

    // CREATED, type 2: 0x02 ‖ reply[..1023], then 0x05 ‖ reply[1023..] ‖ 0…
    assert_eq!(
        CreatedHybrid {
            reply: rest.to_vec()
        }
        .encode()
        .is_ok(),
        rest.len() == HYBRID_REPLY_LEN
    );
    let reply = bytes_from(rest, HYBRID_REPLY_LEN);
    let mut cells = CreatedHybrid {
        reply: reply.clone(),
    }
    .encode()
    .expect("a 1152-byte reply encodes");
    assert_eq!(cells.len(), HYBRID_CELLS_LEN);
    assert_eq!(cells[CELL_LEN], CellCommand::Continue as u8);
    cells[pos] ^= x;
    let got = CreatedHybrid::decode(&cells);
    match (x, data_index(pos, 1, HYBRID_REPLY_LEN)) {
        (0, _) => assert_eq!(got.map(|c| c.reply), Ok(reply)),
        (_, Some(i)) => {
            let mut want = reply;
            want[i] ^= x;
            assert_eq!(got.map(|c| c.reply), Ok(want));
        }
        (_, None) => assert!(
            got.is_err(),
            "byte {pos} of a type-2 CREATED is not checked"
        ),
    }
}

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
    let handshake_type = create_handshake_type(data);
    match data.get(3..5) {
        Some(t) => assert_eq!(handshake_type, Some(u16::from_be_bytes([t[0], t[1]]))),
        None => assert_eq!(handshake_type, None),
    }

    if let Ok(create) = Create::decode(data) {
        assert_eq!(usize::from(create.cell_len), data.len());
        assert_eq!(handshake_type, Some(HANDSHAKE_NTOR_V1));
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
    if let Ok(create) = CreateHybrid::decode(data) {
        assert_eq!(data.len(), HYBRID_CELLS_LEN);
        assert_eq!(create.hello.len(), HYBRID_HELLO_LEN);
        assert_eq!(handshake_type, Some(HANDSHAKE_HYBRID_V2));
        let again = create.encode().expect("a decoded type-2 CREATE re-encodes");
        assert_eq!(again, data, "type-2 CREATE does not round-trip");
    }
    if let Ok(created) = CreatedHybrid::decode(data) {
        assert_eq!(data.len(), HYBRID_CELLS_LEN);
        assert_eq!(created.reply.len(), HYBRID_REPLY_LEN);
        let again = created
            .encode()
            .expect("a decoded type-2 CREATED re-encodes");
        assert_eq!(again, data, "type-2 CREATED does not round-trip");
    }

    two_cell_handshakes(data);
});
