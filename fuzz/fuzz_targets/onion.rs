//! The onion layer open path (`docs/protocol.md` §7) with fixed keys, driven by a sequence
//! of cells:
//!
//! * a relay's `RelayOnion::forward.open_forward` on cells from the previous hop, and
//! * the client's `ClientOnion::open_backward` (three hops) on cells from its guard.
//!
//! Each cell is either `Raw` bytes (a peer without the keys: every open must fail cleanly)
//! or `Sealed`: a body and kind bytes sealed with the right keys, as a hop that holds them
//! would (so the kind-byte handling, the FORWARD/DELIVER walk and `RelayCell::decode` on the
//! opened message are reached). For sealed cells the outcome is predicted and checked while
//! the sealers and openers are known to be in step.
#![no_main]

use anonnet_crypto::onion::message_offset;
use anonnet_crypto::{ClientOnion, HopKeys, LayerSealer, OnionError, RelayOnion};
use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind};
use anonnet_wire::{RelayCell, LAYER_OVERHEAD};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const HOPS: usize = 3;
const MAX_CELLS: usize = 32;

#[derive(Arbitrary, Debug)]
enum Cell {
    /// Bytes from a peer that does not hold the keys.
    Raw(Vec<u8>),
    /// A body behind `kinds.len()` (at most 3) layers sealed with the right keys; `kinds[h]`
    /// is the kind byte of hop `h`'s layer.
    Sealed { kinds: Vec<u8>, body: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    to_relay: Vec<Cell>,
    to_client: Vec<Cell>,
}

fn keys(h: u8) -> HopKeys {
    HopKeys {
        forward: [h.wrapping_mul(2).wrapping_add(1); 32],
        backward: [h.wrapping_mul(2).wrapping_add(2); 32],
    }
}

fn decode_message(bytes: &[u8]) {
    let _ = RelayCell::decode(&Bytes::copy_from_slice(bytes));
}

fn relay_side(cells: &[Cell]) {
    let mut relay = RelayOnion::new(&keys(0));
    let mut client_sealer = LayerSealer::new(&keys(0).forward);
    let mut in_step = true;
    for cell in cells.iter().take(MAX_CELLS) {
        match cell {
            Cell::Raw(bytes) => {
                let mut c = bytes.clone();
                if let Ok(kind) = relay.forward.open_forward(&mut c) {
                    // Only possible with the key; from here the prediction is off.
                    in_step = false;
                    if kind == LayerKind::Deliver {
                        decode_message(c.get(relay_layout::INNER..).unwrap_or_default());
                    }
                }
            }
            Cell::Sealed { kinds, body } => {
                let kind = kinds.first().copied().unwrap_or(LayerKind::Deliver as u8);
                let mut c = vec![0u8; relay_layout::INNER];
                c[0] = CellCommand::Relay as u8;
                c[relay_layout::BODY] = kind;
                c.extend_from_slice(body);
                client_sealer
                    .seal(&mut c[relay_layout::SEQ..])
                    .expect("a region of 26+ bytes seals");
                let got = relay.forward.open_forward(&mut c);
                if in_step {
                    match LayerKind::from_byte(kind) {
                        Ok(k) => assert_eq!(got, Ok(k)),
                        Err(_) => assert_eq!(got, Err(OnionError::BadKind)),
                    }
                    assert_eq!(&c[relay_layout::INNER..], &body[..]);
                }
                if got == Ok(LayerKind::Deliver) {
                    decode_message(&c[relay_layout::INNER..]);
                }
            }
        }
    }
}

fn client_side(cells: &[Cell]) {
    let mut client = ClientOnion::new();
    let mut sealers = Vec::new();
    for h in 0..HOPS as u8 {
        client.push_hop(&keys(h));
        sealers.push(LayerSealer::new(&keys(h).backward));
    }
    let mut in_step = true;
    for cell in cells.iter().take(MAX_CELLS) {
        match cell {
            Cell::Raw(bytes) => {
                let mut c = bytes.clone();
                if let Ok((_, range)) = client.open_backward(&mut c) {
                    in_step = false;
                    decode_message(c.get(range).unwrap_or_default());
                }
            }
            Cell::Sealed { kinds, body } => {
                let layers = kinds.len().min(HOPS);
                if layers == 0 {
                    continue;
                }
                let mut c = vec![0u8; 1 + LAYER_OVERHEAD * layers];
                c[0] = CellCommand::Relay as u8;
                c.extend_from_slice(body);
                // Innermost layer first, as the hops do on the way back.
                for h in (0..layers).rev() {
                    c[relay_layout::BODY + LAYER_OVERHEAD * h] = kinds[h];
                    sealers[h]
                        .seal(&mut c[relay_layout::SEQ + LAYER_OVERHEAD * h..])
                        .expect("a region of 26+ bytes seals");
                }
                let got = client.open_backward(&mut c);
                let well_formed = kinds[..layers - 1]
                    .iter()
                    .all(|&k| k == LayerKind::Forward as u8)
                    && kinds[layers - 1] == LayerKind::Deliver as u8;
                if in_step && well_formed {
                    let last = layers - 1;
                    assert_eq!(got, Ok((last, message_offset(last)..c.len())));
                    assert_eq!(&c[message_offset(last)..], &body[..]);
                }
                // Any other outcome leaves some hop's opener behind its sealer.
                match &got {
                    Ok((h, _)) if *h == layers - 1 => {}
                    _ => in_step = false,
                }
                if let Ok((_, range)) = got {
                    decode_message(&c[range]);
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    relay_side(&input.to_relay);
    client_side(&input.to_client);
});
