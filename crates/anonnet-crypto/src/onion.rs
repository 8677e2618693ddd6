//! The nested onion of a circuit: the client's view (one layer per hop) and a relay's view
//! (its own layer). Spec: `docs/protocol.md` §7.
//!
//! A `RELAY` cell on a leg of length `L` is `0x03 ‖ seq ‖ tag ‖ body (L − 25)`; the body opens
//! to `kind (1) ‖ inner (L − 26)`. With kind `FORWARD` the inner bytes are the next hop's
//! layer (the next leg's cell is `0x03 ‖ inner`, `L − 25` bytes); with kind `DELIVER` they
//! are a relay message. Hop `h` (0 = guard) therefore finds its layer at offset `1 + 25·h`
//! of the client's cell and its relay message at `26 + 25·h`.

use std::ops::Range;

use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind};
use anonnet_wire::LAYER_OVERHEAD;

use crate::handshake::HopKeys;
use crate::layer::{LayerError, LayerOpener, LayerSealer};

/// Offset of hop `hop`'s layer region in a cell the client sends or receives.
pub fn layer_offset(hop: usize) -> usize {
    relay_layout::SEQ + LAYER_OVERHEAD * hop
}

/// Offset of the relay message for hop `hop` in a client cell (26 + 25·hop).
pub fn message_offset(hop: usize) -> usize {
    relay_layout::INNER + LAYER_OVERHEAD * hop
}

/// Errors of the onion. Any of them destroys the circuit.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnionError {
    /// A layer failed to open or seal.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The kind byte is neither FORWARD nor DELIVER, or FORWARD came from the last hop.
    #[error("bad layer kind")]
    BadKind,
    /// The cell is too short for the number of layers, or names a hop that does not exist.
    #[error("cell too short for its layers or hop out of range")]
    Size,
}

/// The client's onion: a forward sealer and a backward opener per hop, in path order.
/// [`ClientOnion::split`] separates the directions for the two tasks of a built circuit.
#[derive(Default)]
pub struct ClientOnion {
    forward: ClientForward,
    backward: ClientBackward,
}

impl ClientOnion {
    /// An onion with no hops yet.
    pub fn new() -> Self {
        ClientOnion::default()
    }

    /// Add the next hop's keys (after its handshake completed).
    pub fn push_hop(&mut self, keys: &HopKeys) {
        self.forward.0.push(LayerSealer::new(&keys.forward));
        self.backward.0.push(LayerOpener::new(&keys.backward));
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.forward.0.len()
    }

    /// True when no hop is set up.
    pub fn is_empty(&self) -> bool {
        self.forward.0.is_empty()
    }

    /// See [`ClientForward::seal_forward`].
    ///
    /// # Errors
    /// As [`ClientForward::seal_forward`].
    pub fn seal_forward(&mut self, cell: &mut [u8], hop: usize) -> Result<[u8; 16], OnionError> {
        self.forward.seal_forward(cell, hop)
    }

    /// See [`ClientBackward::open_backward`].
    ///
    /// # Errors
    /// As [`ClientBackward::open_backward`].
    pub fn open_backward(&mut self, cell: &mut [u8]) -> Result<(usize, Range<usize>), OnionError> {
        self.backward.open_backward(cell)
    }

    /// The two directions, for separate tasks.
    pub fn split(self) -> (ClientForward, ClientBackward) {
        (self.forward, self.backward)
    }
}

/// The client's forward layers (one sealer per hop).
#[derive(Default)]
pub struct ClientForward(Vec<LayerSealer>);

impl ClientForward {
    /// Add a hop sealed with `key` after the existing ones (the end-to-end hop of a
    /// rendezvous circuit, §13.5).
    pub fn push_key(&mut self, key: &[u8; 32]) {
        self.0.push(LayerSealer::new(key));
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no hop is set up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Seal a cell for hop `hop`, in place. `cell` is a whole first-leg cell whose relay
    /// message is already at [`message_offset`]`(hop)`; this writes the command byte, the kind
    /// bytes and the layers of hops `hop, hop−1, …, 0`. Returns the tag of hop `hop`'s own
    /// layer (what that hop's circuit `SENDME` will echo, §6.4).
    ///
    /// # Errors
    /// [`OnionError::Size`] when `hop` is not a built hop or the cell is too short.
    pub fn seal_forward(&mut self, cell: &mut [u8], hop: usize) -> Result<[u8; 16], OnionError> {
        if hop >= self.0.len() || cell.len() <= message_offset(hop) {
            return Err(OnionError::Size);
        }
        let mut hop_tag = [0u8; 16];
        for (h, sealer) in self.0.iter_mut().enumerate().take(hop + 1).rev() {
            let kind = if h == hop {
                LayerKind::Deliver
            } else {
                LayerKind::Forward
            };
            let region = cell.get_mut(layer_offset(h)..).ok_or(OnionError::Size)?;
            *region
                .get_mut(relay_layout::BODY - relay_layout::SEQ)
                .ok_or(OnionError::Size)? = kind as u8;
            sealer.seal(region)?;
            if h == hop {
                hop_tag = layer_tag(cell, h).ok_or(OnionError::Size)?;
            }
        }
        *cell.first_mut().ok_or(OnionError::Size)? = CellCommand::Relay as u8;
        Ok(hop_tag)
    }
}

/// The 16-byte tag of hop `hop`'s layer in a client cell (sealed, or just opened by
/// [`ClientBackward::open_backward`]).
pub fn layer_tag(cell: &[u8], hop: usize) -> Option<[u8; 16]> {
    let start = layer_offset(hop) + anonnet_wire::cell::SEQ_LEN;
    cell.get(start..start + 16)?.try_into().ok()
}

/// The 16-byte tag of a relay's own layer in a whole relay cell (after
/// [`RelayForward::open_forward`] or [`RelayBackward::seal_backward`]).
pub fn relay_cell_tag(cell: &[u8]) -> Option<[u8; 16]> {
    cell.get(relay_layout::TAG..relay_layout::TAG + 16)?
        .try_into()
        .ok()
}

/// The client's backward layers (one opener per hop).
#[derive(Default)]
pub struct ClientBackward(Vec<LayerOpener>);

impl ClientBackward {
    /// Add a hop opened with `key` after the existing ones (the end-to-end hop of a
    /// rendezvous circuit, §13.5).
    pub fn push_key(&mut self, key: &[u8; 32]) {
        self.0.push(LayerOpener::new(key));
    }

    /// Open a cell that arrived from the guard, in place, peeling layers until one says
    /// `DELIVER`. Returns the hop the message came from and the range of its relay message
    /// in `cell`.
    ///
    /// # Errors
    /// [`OnionError::Layer`] when a tag or sequence number is wrong (the circuit is then
    /// dead), [`OnionError::BadKind`] for a bad kind or a FORWARD from the last hop,
    /// [`OnionError::Size`] when the cell is too short.
    pub fn open_backward(&mut self, cell: &mut [u8]) -> Result<(usize, Range<usize>), OnionError> {
        let n = self.0.len();
        for (h, opener) in self.0.iter_mut().enumerate() {
            let region = cell.get_mut(layer_offset(h)..).ok_or(OnionError::Size)?;
            opener.open(region)?;
            let kind_byte = *cell
                .get(relay_layout::BODY + LAYER_OVERHEAD * h)
                .ok_or(OnionError::Size)?;
            match LayerKind::from_byte(kind_byte).map_err(|_| OnionError::BadKind)? {
                LayerKind::Deliver => return Ok((h, message_offset(h)..cell.len())),
                LayerKind::Forward if h + 1 == n => return Err(OnionError::BadKind),
                LayerKind::Forward => {}
            }
        }
        Err(OnionError::Size)
    }
}

/// A relay's layer of one circuit: [`RelayForward`] opens cells from the client side,
/// [`RelayBackward`] seals cells towards it. The halves are independent, so the two
/// directions of a circuit can run in separate tasks.
pub struct RelayOnion {
    /// Opens cells travelling away from the client.
    pub forward: RelayForward,
    /// Seals cells travelling towards the client.
    pub backward: RelayBackward,
}

impl RelayOnion {
    /// The layer for the keys agreed in this hop's handshake.
    pub fn new(keys: &HopKeys) -> Self {
        RelayOnion {
            forward: RelayForward(LayerOpener::new(&keys.forward)),
            backward: RelayBackward(LayerSealer::new(&keys.backward)),
        }
    }
}

/// The forward half of a relay's layer.
pub struct RelayForward(LayerOpener);

impl RelayForward {
    /// Open a whole `RELAY` cell from the previous hop in place and say what it holds: for
    /// [`LayerKind::Forward`] the next leg's cell is `cell[BODY..]` once its first byte is set
    /// to `0x03`; for [`LayerKind::Deliver`] the relay message is `cell[INNER..]`.
    ///
    /// # Errors
    /// [`OnionError::Layer`] for a bad tag or sequence number, [`OnionError::BadKind`],
    /// [`OnionError::Size`]. The caller destroys the circuit on any of them.
    pub fn open_forward(&mut self, cell: &mut [u8]) -> Result<LayerKind, OnionError> {
        let region = cell.get_mut(relay_layout::SEQ..).ok_or(OnionError::Size)?;
        self.0.open(region)?;
        let kind = *cell.get(relay_layout::BODY).ok_or(OnionError::Size)?;
        LayerKind::from_byte(kind).map_err(|_| OnionError::BadKind)
    }
}

/// The backward half of a relay's layer.
pub struct RelayBackward(LayerSealer);

impl RelayBackward {
    /// Seal a whole cell travelling towards the client in place. `cell[INNER..]` already
    /// holds either the next hop's cell without its command byte (`kind` = FORWARD) or a
    /// relay message from this hop (`kind` = DELIVER).
    ///
    /// # Errors
    /// [`OnionError::Size`] when the cell is shorter than a layer, [`OnionError::Layer`].
    pub fn seal_backward(&mut self, cell: &mut [u8], kind: LayerKind) -> Result<(), OnionError> {
        *cell.get_mut(relay_layout::BODY).ok_or(OnionError::Size)? = kind as u8;
        let region = cell.get_mut(relay_layout::SEQ..).ok_or(OnionError::Size)?;
        self.0.seal(region)?;
        *cell.first_mut().ok_or(OnionError::Size)? = CellCommand::Relay as u8;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_wire::CELL_LEN;

    fn keys(i: u8) -> HopKeys {
        HopKeys {
            forward: [i; 32],
            backward: [i + 100; 32],
        }
    }

    struct Net {
        client: ClientOnion,
        relays: Vec<RelayOnion>,
    }

    fn net() -> Net {
        let mut client = ClientOnion::new();
        let mut relays = Vec::new();
        for i in 1..=3 {
            client.push_hop(&keys(i));
            relays.push(RelayOnion::new(&keys(i)));
        }
        Net { client, relays }
    }

    /// Carry a client cell hop by hop as relays would; returns the hop that got a DELIVER
    /// and its message, or the error of the hop that rejected it.
    fn forward_through(
        relays: &mut [RelayOnion],
        mut cell: Vec<u8>,
        tamper: impl Fn(usize, &mut Vec<u8>),
    ) -> Result<(usize, Vec<u8>), (usize, OnionError)> {
        for (h, relay) in relays.iter_mut().enumerate() {
            tamper(h, &mut cell);
            match relay.forward.open_forward(&mut cell).map_err(|e| (h, e))? {
                LayerKind::Deliver => return Ok((h, cell[relay_layout::INNER..].to_vec())),
                LayerKind::Forward => {
                    cell = cell[relay_layout::BODY..].to_vec();
                    cell[0] = CellCommand::Relay as u8;
                }
            }
        }
        Err((9, OnionError::BadKind))
    }

    fn client_cell(c: &mut ClientOnion, hop: usize, msg: &[u8]) -> Vec<u8> {
        let mut cell = vec![0u8; CELL_LEN];
        cell[message_offset(hop)..message_offset(hop) + msg.len()].copy_from_slice(msg);
        c.seal_forward(&mut cell, hop).unwrap();
        cell
    }

    #[test]
    fn cells_reach_exactly_the_addressed_hop_and_shrink_per_leg() {
        let mut n = net();
        for hop in 0..3 {
            let cell = client_cell(&mut n.client, hop, b"for you");
            let (got, msg) = forward_through(&mut n.relays, cell, |h, c| {
                assert_eq!(c.len(), CELL_LEN - LAYER_OVERHEAD * h);
            })
            .unwrap();
            assert_eq!(got, hop);
            assert_eq!(&msg[..7], b"for you");
        }
    }

    #[test]
    fn backward_cells_are_wrapped_by_each_hop_and_peeled_by_the_client() {
        let mut n = net();
        // The exit originates a message, the middle and guard wrap it.
        let exit_len = CELL_LEN - 2 * LAYER_OVERHEAD;
        let mut cell = vec![0u8; exit_len];
        cell[relay_layout::INNER..relay_layout::INNER + 5].copy_from_slice(b"reply");
        n.relays[2]
            .backward
            .seal_backward(&mut cell, LayerKind::Deliver)
            .unwrap();
        for h in [1, 0] {
            let mut outer = vec![0u8; LAYER_OVERHEAD];
            outer.extend_from_slice(&cell[1..]);
            outer.insert(0, 0);
            cell = outer;
            assert_eq!(cell.len(), CELL_LEN - LAYER_OVERHEAD * h);
            n.relays[h]
                .backward
                .seal_backward(&mut cell, LayerKind::Forward)
                .unwrap();
        }
        let (hop, range) = n.client.open_backward(&mut cell).unwrap();
        assert_eq!(hop, 2);
        assert_eq!(&cell[range][..5], b"reply");
    }

    #[test]
    fn a_flipped_bit_in_any_layer_dies_at_the_next_hop() {
        // Tamper at the guard's output (before the middle opens): the middle rejects it.
        for (tamper_hop, pos) in [(1, 30), (1, 500), (2, 60), (2, 900), (0, 5), (0, 1000)] {
            let mut n = net();
            let cell = client_cell(&mut n.client, 2, b"x");
            let err = forward_through(&mut n.relays, cell, |h, c| {
                if h == tamper_hop {
                    c[pos] ^= 1;
                }
            })
            .unwrap_err();
            assert_eq!(err.0, tamper_hop, "rejected by the hop that received it");
            assert!(matches!(err.1, OnionError::Layer(_)));
        }
    }

    #[test]
    fn replayed_and_skipped_cells_are_rejected_by_the_next_hop() {
        let mut n = net();
        let first = client_cell(&mut n.client, 2, b"1");
        let second = client_cell(&mut n.client, 2, b"2");
        let third = client_cell(&mut n.client, 2, b"3");
        // The guard forwards cell 1; a malicious guard then replays its output to the middle.
        let mut guard_out = first.clone();
        n.relays[0].forward.open_forward(&mut guard_out).unwrap();
        let mut to_middle = guard_out[relay_layout::BODY..].to_vec();
        to_middle[0] = 3;
        let replay = to_middle.clone();
        n.relays[1].forward.open_forward(&mut to_middle).unwrap();
        let mut replay = replay;
        assert!(matches!(
            n.relays[1].forward.open_forward(&mut replay),
            Err(OnionError::Layer(LayerError::Sequence {
                expected: 1,
                got: 0
            }))
        ));
        // The guard gets cell 3 before cell 2: a skip.
        let mut skipped = third.clone();
        assert!(matches!(
            n.relays[0].forward.open_forward(&mut skipped),
            Err(OnionError::Layer(LayerError::Sequence {
                expected: 1,
                got: 2
            }))
        ));
        drop(second);
    }

    /// Test vector printed in docs/protocol.md §7.4: hop keys Kf = i×32, Kb = (i+100)×32 for
    /// hops i = 1, 2, 3; the first cell to hop 3 (index 2) carrying relay message bytes
    /// `02 0001 0002 6869` (DATA "hi" on stream 1) in a 1024-byte cell.
    #[test]
    fn onion_test_vector() {
        let mut n = net();
        let cell = client_cell(&mut n.client, 2, &[2, 0, 1, 0, 2, b'h', b'i']);
        let digest = blake3::hash(&cell);
        assert_eq!(
            (hex::encode(&cell[..80]), digest.to_hex().to_string()),
            (VECTOR_PREFIX.to_string(), VECTOR_BLAKE3.to_string())
        );
    }

    const VECTOR_PREFIX: &str = "030000000000000000e63b2e1802ae49bbb497c1783049770600274dd1ee5216c2044252d97fd5253e953dc4ac26ebee4faacd7134ef7b646ff5103dd47d465ab4137afdeaa36bc03496c79b6ec23b6f";
    const VECTOR_BLAKE3: &str = "1a885e8ca9e1759080340aa9b25de909a7a2b2f8c2657da93dd939f64733ff94";
}
