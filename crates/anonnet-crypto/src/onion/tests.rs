//! Unit tests of the version-2 onion (§7): sizes at every position, re-padding, tamper,
//! replay and skip, backward recognition, rendezvous joins, unforgeable SENDME tags, and the
//! test vectors printed in docs/protocol.md §7.4.

use super::*;
use anonnet_wire::{BACKWARD_MESSAGE_MAX, MAX_LAYERS};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

fn hop_keys(i: u8) -> HopKeys {
    HopKeys {
        forward: [i; 32],
        backward: [i + 100; 32],
    }
}

struct Net {
    client: ClientOnion,
    relays: Vec<RelayOnion>,
}

fn net(hops: u8) -> Net {
    let mut client = ClientOnion::new();
    let mut relays = Vec::new();
    for i in 1..=hops {
        client.push_hop(&hop_keys(i));
        relays.push(RelayOnion::new(&hop_keys(i)));
    }
    Net { client, relays }
}

/// A client cell to `hop` carrying `msg`, padded with `pad` bytes.
fn client_cell_with(c: &mut ClientOnion, hop: usize, msg: &[u8], pad: u8) -> Vec<u8> {
    let mut buf = vec![0u8; forward_buffer_len(hop)];
    buf[message_offset(hop)..message_offset(hop) + msg.len()].copy_from_slice(msg);
    c.forward
        .seal_forward_with(&mut buf, hop, msg.len(), |p| p.fill(pad))
        .unwrap();
    buf.truncate(CELL_LEN);
    buf
}

fn client_cell(c: &mut ClientOnion, hop: usize, msg: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; forward_buffer_len(hop)];
    buf[message_offset(hop)..message_offset(hop) + msg.len()].copy_from_slice(msg);
    c.seal_forward(&mut buf, hop, msg.len()).unwrap();
    buf.truncate(CELL_LEN);
    buf
}

/// Carry a client cell hop by hop as relays would, calling `tamper(h, cell)` before hop `h`
/// opens it; returns the hop that got a DELIVER and its message area, or the error of the
/// hop that rejected it.
fn forward_through(
    relays: &mut [RelayOnion],
    mut cell: Vec<u8>,
    mut tamper: impl FnMut(usize, &mut Vec<u8>),
) -> Result<(usize, Vec<u8>), (usize, OnionError)> {
    for (h, relay) in relays.iter_mut().enumerate() {
        tamper(h, &mut cell);
        match relay.forward.open_forward(&mut cell).map_err(|e| (h, e))? {
            LayerKind::Deliver => return Ok((h, cell[relay_layout::INNER..].to_vec())),
            LayerKind::Forward => {}
        }
    }
    Err((99, OnionError::BadKind))
}

/// Hop `from` originates `msg`; the hops before it wrap it; returns the client's cell.
fn backward_from(relays: &mut [RelayOnion], from: usize, msg: &[u8]) -> (Vec<u8>, [u8; 16]) {
    let mut cell = vec![0u8; CELL_LEN];
    cell[relay_layout::INNER..relay_layout::INNER + msg.len()].copy_from_slice(msg);
    let tag = relays[from]
        .backward
        .originate(&mut cell, msg.len())
        .unwrap();
    for h in (0..from).rev() {
        relays[h].backward.wrap(&mut cell).unwrap();
    }
    (cell, tag)
}

#[test]
fn aead_keystream_is_the_one_chacha20_poly1305_encrypts_with() {
    let key = [9u8; 32];
    let mut zeros = vec![0u8; BODY];
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let _tag = ring_key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce(7)),
            Aad::empty(),
            &mut zeros,
        )
        .unwrap();
    for offset in [0, 63, 64, 500, BODY - 25] {
        let mut ours = vec![0u8; BODY - offset];
        xor_aead_keystream(&key, 7, offset, &mut ours);
        assert_eq!(ours, zeros[offset..], "offset {offset}");
    }
}

#[test]
fn every_leg_carries_cells_of_one_size_and_each_reaches_its_hop() {
    for hops in [1u8, 3, 4, MAX_LAYERS as u8] {
        let mut n = net(hops);
        for target in 0..usize::from(hops) {
            let cell = client_cell(&mut n.client, target, b"for you");
            let (got, msg) = forward_through(&mut n.relays, cell, |_, c| {
                assert_eq!(c.len(), CELL_LEN, "same size at every position");
                assert_eq!(c[0], CellCommand::Relay as u8);
            })
            .unwrap();
            assert_eq!(got, target);
            assert_eq!(&msg[..7], b"for you");
            assert_eq!(msg.len(), MESSAGE_AREA);
        }
    }
}

#[test]
fn a_hop_sees_unpredictable_bytes_after_the_message_wherever_it_sits() {
    // The exit of a 3-hop and a 4-hop circuit: after the message, nothing is constant
    // (no zero padding, no recognisable filler), so the area does not tell the position.
    for hops in [3u8, 4] {
        let mut n = net(hops);
        let exit = usize::from(hops) - 1;
        let mut tails = Vec::new();
        for _ in 0..2 {
            let cell = client_cell(&mut n.client, exit, b"m");
            let (_, area) = forward_through(&mut n.relays, cell, |_, _| {}).unwrap();
            let tail = area[1..].to_vec();
            assert!(tail.iter().filter(|b| **b == 0).count() < 40);
            tails.push(tail);
        }
        assert_ne!(tails[0], tails[1]);
    }
}

#[test]
fn overlong_forward_messages_and_wrong_buffers_are_refused() {
    let mut n = net(3);
    let mut buf = vec![0u8; forward_buffer_len(2)];
    assert_eq!(
        n.client.seal_forward(&mut buf, 2, FORWARD_MESSAGE_MAX + 1),
        Err(OnionError::Size)
    );
    let mut short = vec![0u8; CELL_LEN];
    assert_eq!(
        n.client.seal_forward(&mut short, 2, 10),
        Err(OnionError::Size)
    );
    let mut buf = vec![0u8; forward_buffer_len(3)];
    assert_eq!(
        n.client.seal_forward(&mut buf, 3, 10),
        Err(OnionError::Size)
    );
    let mut cell = vec![0u8; CELL_LEN - 1];
    assert_eq!(
        n.relays[0].forward.open_forward(&mut cell),
        Err(OnionError::Size)
    );
}

#[test]
fn a_flipped_bit_anywhere_dies_at_the_next_hop() {
    for hops in [3u8, 4] {
        for tamper_hop in 0..usize::from(hops) {
            for pos in [1, 5, 9, 30, 500, 998, 1000, 1023] {
                let mut n = net(hops);
                let cell = client_cell(&mut n.client, usize::from(hops) - 1, b"x");
                let err = forward_through(&mut n.relays, cell, |h, c| {
                    if h == tamper_hop {
                        c[pos] ^= 1;
                    }
                })
                .unwrap_err();
                assert_eq!(err.0, tamper_hop, "rejected by the hop that received it");
                assert!(matches!(err.1, OnionError::Layer(_)), "{err:?}");
            }
        }
    }
}

#[test]
fn replayed_and_skipped_cells_are_rejected_by_the_next_hop() {
    let mut n = net(3);
    let first = client_cell(&mut n.client, 2, b"1");
    let _second = client_cell(&mut n.client, 2, b"2");
    let third = client_cell(&mut n.client, 2, b"3");
    // The guard forwards cell 1; a malicious guard then replays its output to the middle.
    let mut to_middle = first.clone();
    assert_eq!(
        n.relays[0].forward.open_forward(&mut to_middle),
        Ok(LayerKind::Forward)
    );
    let mut replay = to_middle.clone();
    n.relays[1].forward.open_forward(&mut to_middle).unwrap();
    assert!(matches!(
        n.relays[1].forward.open_forward(&mut replay),
        Err(OnionError::Layer(LayerError::Sequence {
            expected: 1,
            got: 0
        }))
    ));
    // The guard gets cell 3 before cell 2: a skip.
    let mut skipped = third;
    assert!(matches!(
        n.relays[0].forward.open_forward(&mut skipped),
        Err(OnionError::Layer(LayerError::Sequence {
            expected: 1,
            got: 2
        }))
    ));
}

#[test]
fn backward_cells_from_any_hop_are_recognised_by_the_client() {
    let mut n = net(4);
    for from in [3, 0, 2, 2, 1, 3, 0] {
        let (mut cell, sent_tag) = backward_from(&mut n.relays, from, b"reply");
        assert_eq!(cell.len(), CELL_LEN);
        let (hop, range, tag) = n.client.open_backward(&mut cell).unwrap();
        assert_eq!((hop, &cell[range][..5]), (from, &b"reply"[..]));
        assert_eq!(tag, sent_tag);
    }
}

#[test]
fn a_modified_dropped_or_reordered_backward_cell_kills_the_circuit_at_the_client() {
    // Modified by the guard.
    let mut n = net(3);
    let (mut cell, _) = backward_from(&mut n.relays, 2, b"r");
    cell[700] ^= 0x40;
    assert!(n.client.open_backward(&mut cell).is_err());
    // A cell dropped by the middle: the next one no longer strips to anything known.
    let mut n = net(3);
    let _lost = backward_from(&mut n.relays, 2, b"1");
    let (mut second, _) = backward_from(&mut n.relays, 2, b"2");
    // The middle wrapped `_lost`, so the client's wrap counters are now behind.
    assert!(n.client.open_backward(&mut second).is_err());
    // Two cells swapped by the guard.
    let mut n = net(3);
    let (mut a, _) = backward_from(&mut n.relays, 2, b"a");
    let (mut b, _) = backward_from(&mut n.relays, 2, b"b");
    assert!(n.client.open_backward(&mut b).is_err());
    let _ = n.client.open_backward(&mut a);
}

#[test]
fn a_relay_between_cannot_see_who_originated_a_backward_cell() {
    // What the guard receives from the middle is the same kind of bytes whether the middle
    // or the exit originated it: the originator's sequence number is under a wrap layer.
    let mut n = net(3);
    let mut from_exit = vec![0u8; CELL_LEN];
    n.relays[2].backward.originate(&mut from_exit, 5).unwrap();
    n.relays[1].backward.wrap(&mut from_exit).unwrap();
    assert_ne!(&from_exit[1..9], &0u64.to_be_bytes());
    let mut exit_raw = vec![0u8; CELL_LEN];
    n.relays[2].backward.originate(&mut exit_raw, 5).unwrap();
    // Even the hop next to the originator sees a wrapped sequence number.
    assert_ne!(&exit_raw[1..9], &1u64.to_be_bytes());
}

#[test]
fn a_sendme_tag_forged_from_known_plaintext_does_not_match() {
    // The client downloads known content: it knows the exit's keys, the sequence number
    // and the message. Without the cell it still cannot know the padding, so its forged
    // tag differs from the one the exit recorded.
    let mut n = net(3);
    let msg = [2u8, 0, 1, 0, 2, b'h', b'i'];
    let (_, real) = backward_from(&mut n.relays, 2, &msg);
    let mut forger = RelayOnion::new(&hop_keys(3));
    let mut guess = vec![0u8; CELL_LEN];
    guess[relay_layout::INNER..relay_layout::INNER + msg.len()].copy_from_slice(&msg);
    let forged = forger
        .backward
        .originate_with(&mut guess, msg.len(), |p| p.fill(0))
        .unwrap();
    assert_ne!(forged, real);
    // A full cell still leaves MIN_PADDING unpredictable bytes.
    const { assert!(BACKWARD_MESSAGE_MAX + anonnet_wire::MIN_PADDING <= MESSAGE_AREA) };
    let mut cell = vec![0u8; CELL_LEN];
    assert_eq!(
        n.relays[2]
            .backward
            .originate(&mut cell, BACKWARD_MESSAGE_MAX + 1),
        Err(OnionError::Size)
    );
}

/// A rendezvous join (§13.5): the client's 3-hop circuit and the service's 4-hop circuit
/// meet at the rendezvous point, the last hop of each; the end-to-end hop sits on top.
#[test]
fn a_joined_rendezvous_circuit_carries_both_directions_at_one_cell_size() {
    let mut client = ClientOnion::new();
    let mut client_relays = Vec::new();
    for i in 1..=3 {
        client.push_hop(&hop_keys(i));
        client_relays.push(RelayOnion::new(&hop_keys(i)));
    }
    let mut service = ClientOnion::new();
    let mut service_relays = Vec::new();
    for i in 11..=14 {
        service.push_hop(&hop_keys(i));
        service_relays.push(RelayOnion::new(&hop_keys(i)));
    }
    let e2e = hop_keys(50);
    let keys = EndToEndKeys::new(&e2e, true);
    client.forward.push_end_to_end(&keys);
    client.backward.push_end_to_end(&keys);
    let keys = EndToEndKeys::new(&e2e, false);
    service.forward.push_end_to_end(&keys);
    service.backward.push_end_to_end(&keys);

    for round in 0..3u8 {
        // Client → service.
        let cell = client_cell(&mut client, 3, &[round; 9]);
        let mut cell = cell;
        for relay in client_relays.iter_mut() {
            assert_eq!(
                relay.forward.open_forward(&mut cell),
                Ok(LayerKind::Forward)
            );
        }
        // The rendezvous point (service hop 3) crosses the join by wrapping.
        for relay in service_relays.iter_mut().rev() {
            relay.backward.wrap(&mut cell).unwrap();
        }
        assert_eq!(cell.len(), CELL_LEN);
        let (hop, range, _) = service.open_backward(&mut cell).unwrap();
        assert_eq!((hop, &cell[range][..9]), (4, &[round; 9][..]));

        // Service → client.
        let mut cell = client_cell(&mut service, 4, &[round + 100; 9]);
        for relay in service_relays.iter_mut() {
            assert_eq!(
                relay.forward.open_forward(&mut cell),
                Ok(LayerKind::Forward)
            );
        }
        for relay in client_relays.iter_mut().rev() {
            relay.backward.wrap(&mut cell).unwrap();
        }
        let (hop, range, _) = client.open_backward(&mut cell).unwrap();
        assert_eq!((hop, &cell[range][..9]), (3, &[round + 100; 9][..]));
    }
}

/// Test vectors printed in docs/protocol.md §7.4 and re-derived by
/// docs/vectors/verify_vectors.py: hop keys `Kf = i×32`, `Kb = (i+100)×32` for hops
/// i = 1, 2, 3; padding is 0xAA bytes. Forward: the client's first cell to hop index 2
/// carrying `02 0001 0002 6869` (DATA "hi" on stream 1). Backward: hop index 2 originates
/// the same message as its first backward cell, hops 1 and 0 wrap it.
#[test]
fn onion_test_vectors() {
    let mut n = net(3);
    let msg = [2u8, 0, 1, 0, 2, b'h', b'i'];
    let forward = client_cell_with(&mut n.client, 2, &msg, 0xAA);
    let mut backward = vec![0u8; CELL_LEN];
    backward[relay_layout::INNER..relay_layout::INNER + msg.len()].copy_from_slice(&msg);
    n.relays[2]
        .backward
        .originate_with(&mut backward, msg.len(), |p| p.fill(0xAA))
        .unwrap();
    n.relays[1].backward.wrap(&mut backward).unwrap();
    n.relays[0].backward.wrap(&mut backward).unwrap();
    let got = [
        hex::encode(&forward[..48]),
        blake3::hash(&forward).to_hex().to_string(),
        hex::encode(&backward[..48]),
        blake3::hash(&backward).to_hex().to_string(),
    ];
    println!("{got:#?}");
    assert_eq!(got, VECTORS);
    // And they open.
    let (hop, _) = forward_through(&mut n.relays, forward, |_, _| {}).unwrap();
    assert_eq!(hop, 2);
    let (hop, range, _) = n.client.open_backward(&mut backward).unwrap();
    assert_eq!((hop, &backward[range][..7]), (2, &msg[..]));
}

const VECTORS: [&str; 4] = [
    "030000000000000000c5cfcf3abdc376c976ee1ff2624ad34e57c4f789c8a23b5ebcaaa362001529819eea129d163838",
    "152778b24d74bf67a5c92fe19d97d92cd283b86d48985fddfced13d8fe65dd15",
    "03af2f0f73770dc02d23bf0e0ad2e6a2a6c879c1f3c263105a8af7aa5d19b1d36e554c410447ada60f91df7ea1f5c192",
    "54bf1301c22e4e2e4bac879b17d106352b39c85268edfd295587d0ebf1c24e08",
];
