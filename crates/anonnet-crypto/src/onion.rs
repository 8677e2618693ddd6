//! The onion of a circuit, protocol version 2: the client's view (one layer per hop) and a
//! relay's view (its own layer). Spec: `docs/protocol.md` §7.
//!
//! Every cell on every leg is [`CELL_LEN`] bytes, at every position, so no relay learns how
//! far it is from the client. The two directions differ:
//!
//! - **Forward** (towards the exit), each hop *authenticates* its layer: a `RELAY` cell is
//!   `0x03 ‖ seq u64 ‖ tag [16] ‖ ciphertext [999]`, the ciphertext opens to
//!   `kind (1) ‖ inner [998]`. A `FORWARD` hop sends `0x03 ‖ inner ‖ Z` on, where `Z` is 25
//!   bytes of its own pad keystream; the client, which knows every hop's keys, computes
//!   those pads in advance and seals the innermost layer so that every later tag covers them
//!   (the "filler" of Sphinx, Danezis & Goldberg 2009). A modified, replayed, dropped or
//!   reordered cell therefore fails the tag or the sequence check at the very next hop.
//! - **Backward** (towards the client), a hop that *originates* a message seals it with its
//!   backward AEAD key (same layout, kind `DELIVER`); then every hop on the way, the
//!   originator included, XORs the whole 1023-byte body with its own ChaCha20 wrap keystream.
//!   The client strips the wrap layers one by one and recognises the originating hop by the
//!   sequence number it expects from that hop, then opens the AEAD layer; a modified cell
//!   fails there and the client destroys the circuit.
//!
//! Layer keys come from a hop's handshake keys ([`HopKeys`]) through BLAKE3's key
//! derivation ([`LayerKeys::from_hop`]).

use std::ops::Range;

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use rand::Rng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind, SEQ_LEN, TAG_LEN};
use anonnet_wire::{CELL_LEN, FORWARD_MESSAGE_MAX, LAYER_OVERHEAD, MESSAGE_AREA};

use crate::handshake::HopKeys;
use crate::layer::{LayerError, LayerOpener, LayerSealer, LAYER_HEADER_LEN};

/// Bytes of a `RELAY` cell after the command byte: one layer region (1023).
const REGION: usize = CELL_LEN - 1;
/// Bytes of a layer's AEAD body: `kind ‖ inner` (999).
const BODY: usize = REGION - LAYER_HEADER_LEN;

/// Offset of hop `hop`'s layer region in the client's forward sealing buffer (1 + 25·hop).
pub fn layer_offset(hop: usize) -> usize {
    relay_layout::SEQ + LAYER_OVERHEAD * hop
}

/// Offset of the relay message for hop `hop` in the client's forward sealing buffer
/// (26 + 25·hop). Backward messages always start at 26 ([`relay_layout::INNER`]).
pub fn message_offset(hop: usize) -> usize {
    relay_layout::INNER + LAYER_OVERHEAD * hop
}

/// Length of the buffer [`ClientForward::seal_forward`] needs for a cell to hop `hop`:
/// `1024 + 25·hop` bytes; the cell sent is its first [`CELL_LEN`] bytes.
pub fn forward_buffer_len(hop: usize) -> usize {
    CELL_LEN + LAYER_OVERHEAD * hop
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
    /// A buffer has the wrong size, a message is too long, or a hop does not exist.
    #[error("cell or message of the wrong size, or hop out of range")]
    Size,
    /// A backward cell no hop of the circuit originated (wrong or modified cell).
    #[error("backward cell not recognised by any hop")]
    Unrecognised,
}

/// The four symmetric keys of one hop's layers (32 bytes each), zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq)]
pub struct LayerKeys {
    /// ChaCha20-Poly1305 key of forward layers (client → hop).
    pub forward: [u8; 32],
    /// ChaCha20 key of the 25-byte pad a forwarding hop appends (§7.3).
    pub forward_pad: [u8; 32],
    /// ChaCha20-Poly1305 key of messages the hop originates towards the client.
    pub backward: [u8; 32],
    /// ChaCha20 key of the wrap layer the hop XORs over every backward cell.
    pub backward_wrap: [u8; 32],
}

impl std::fmt::Debug for LayerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerKeys([scrubbed])")
    }
}

/// BLAKE3 key-derivation contexts of [`LayerKeys::from_hop`] (§7.1).
pub const KDF_FORWARD: &str = "anonnet v2 2026-12 forward layer key";
/// See [`KDF_FORWARD`].
pub const KDF_FORWARD_PAD: &str = "anonnet v2 2026-12 forward pad key";
/// See [`KDF_FORWARD`].
pub const KDF_BACKWARD: &str = "anonnet v2 2026-12 backward layer key";
/// See [`KDF_FORWARD`].
pub const KDF_BACKWARD_WRAP: &str = "anonnet v2 2026-12 backward wrap key";

impl LayerKeys {
    /// The layer keys of a hop whose handshake gave `keys`:
    /// `forward = BLAKE3-derive_key(KDF_FORWARD, Kf)`, `forward_pad = …(KDF_FORWARD_PAD, Kf)`,
    /// `backward = …(KDF_BACKWARD, Kb)`, `backward_wrap = …(KDF_BACKWARD_WRAP, Kb)`.
    pub fn from_hop(keys: &HopKeys) -> Self {
        LayerKeys {
            forward: blake3::derive_key(KDF_FORWARD, &keys.forward),
            forward_pad: blake3::derive_key(KDF_FORWARD_PAD, &keys.forward),
            backward: blake3::derive_key(KDF_BACKWARD, &keys.backward),
            backward_wrap: blake3::derive_key(KDF_BACKWARD_WRAP, &keys.backward),
        }
    }
}

/// The 12-byte nonce `0x00000000 ‖ seq` (as the AEAD layers use, §7.1).
fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// XOR `buf` with the ChaCha20 (RFC 8439) keystream of `key` and nonce(`seq`), starting at
/// keystream byte `offset`.
fn xor_keystream(key: &[u8; 32], seq: u64, offset: u64, buf: &mut [u8]) {
    let mut cipher = ChaCha20::new(key.into(), &nonce(seq).into());
    cipher.seek(offset);
    cipher.apply_keystream(buf);
}

/// XOR `buf` with the keystream ChaCha20-Poly1305 uses to encrypt plaintext byte
/// `body_offset` onward of the layer with sequence number `seq` (RFC 8439 §2.8: the
/// plaintext starts at block 1).
fn xor_aead_keystream(key: &[u8; 32], seq: u64, body_offset: usize, buf: &mut [u8]) {
    xor_keystream(key, seq, 64 + body_offset as u64, buf);
}

/// The 25-byte pad hop keys `pad_key` append to the cell with forward sequence number
/// `seq` when forwarding it (§7.3).
fn forward_pad(pad_key: &[u8; 32], seq: u64) -> [u8; LAYER_OVERHEAD] {
    let mut z = [0u8; LAYER_OVERHEAD];
    xor_keystream(pad_key, seq, 0, &mut z);
    z
}

/// Fill `buf` with unpredictable bytes (a thread-local CSPRNG seeded by the OS).
pub fn random_padding(buf: &mut [u8]) {
    rand::rng().fill_bytes(buf);
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

    /// Add the next relay hop, whose handshake gave `keys`.
    pub fn push_hop(&mut self, keys: &HopKeys) {
        let keys = LayerKeys::from_hop(keys);
        self.forward.push_hop(&keys);
        self.backward.push_hop(&keys);
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    /// True when no hop is set up.
    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// See [`ClientForward::seal_forward`].
    ///
    /// # Errors
    /// As [`ClientForward::seal_forward`].
    pub fn seal_forward(
        &mut self,
        buf: &mut [u8],
        hop: usize,
        msg_len: usize,
    ) -> Result<[u8; 16], OnionError> {
        self.forward.seal_forward(buf, hop, msg_len)
    }

    /// See [`ClientBackward::open_backward`].
    ///
    /// # Errors
    /// As [`ClientBackward::open_backward`].
    pub fn open_backward(
        &mut self,
        cell: &mut [u8],
    ) -> Result<(usize, Range<usize>, [u8; 16]), OnionError> {
        self.backward.open_backward(cell)
    }

    /// The two directions, for separate tasks.
    pub fn split(self) -> (ClientForward, ClientBackward) {
        (self.forward, self.backward)
    }
}

/// The keys of one end of the end-to-end hop of a rendezvous circuit (§13.5), zeroized on
/// drop. Both ends seal their cells as forward cells and wrap them once more, so that the
/// other end recognises them like any hop's (§7.3).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct EndToEndKeys {
    /// AEAD key this end seals with.
    pub seal: [u8; 32],
    /// Wrap key this end applies over what it sealed.
    pub seal_wrap: [u8; 32],
    /// AEAD key this end opens the other end's cells with.
    pub open: [u8; 32],
    /// Wrap key this end strips from the other end's cells.
    pub open_wrap: [u8; 32],
}

impl EndToEndKeys {
    /// The keys of the client (`client = true`) or of the service, from the end-to-end
    /// handshake's `keys`: client → service cells use the derived `forward` and
    /// `forward_pad` keys (as seal and wrap), service → client cells `backward` and
    /// `backward_wrap`.
    pub fn new(keys: &HopKeys, client: bool) -> Self {
        let k = LayerKeys::from_hop(keys);
        let (seal, seal_wrap, open, open_wrap) = if client {
            (k.forward, k.forward_pad, k.backward, k.backward_wrap)
        } else {
            (k.backward, k.backward_wrap, k.forward, k.forward_pad)
        };
        EndToEndKeys {
            seal,
            seal_wrap,
            open,
            open_wrap,
        }
    }
}

struct ForwardHop {
    sealer: LayerSealer,
    key: Zeroizing<[u8; 32]>,
    /// The relay's pad key; `None` for the end-to-end hop, which never forwards.
    pad_key: Option<Zeroizing<[u8; 32]>>,
    /// The end-to-end hop's wrap key and next wrap number; `None` for relays.
    wrap: Option<(Zeroizing<[u8; 32]>, u64)>,
}

/// The client's forward layers (one per hop, in path order).
#[derive(Default)]
pub struct ClientForward(Vec<ForwardHop>);

impl ClientForward {
    /// An onion with no hops.
    pub fn new() -> Self {
        ClientForward::default()
    }

    /// Add the next relay hop's forward layer.
    pub fn push_hop(&mut self, keys: &LayerKeys) {
        self.0.push(ForwardHop {
            sealer: LayerSealer::new(&keys.forward),
            key: Zeroizing::new(keys.forward),
            pad_key: Some(Zeroizing::new(keys.forward_pad)),
            wrap: None,
        });
    }

    /// Add the end-to-end hop of a rendezvous circuit (§13.5) after the relays: sealed with
    /// `keys.seal`, then wrapped with `keys.seal_wrap`. Cells can only be addressed to it,
    /// never forwarded beyond it.
    pub fn push_end_to_end(&mut self, keys: &EndToEndKeys) {
        self.0.push(ForwardHop {
            sealer: LayerSealer::new(&keys.seal),
            key: Zeroizing::new(keys.seal),
            pad_key: None,
            wrap: Some((Zeroizing::new(keys.seal_wrap), 0)),
        });
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no hop is set up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Seal a cell for hop `hop`, in place, with unpredictable padding. See
    /// [`ClientForward::seal_forward_with`].
    ///
    /// # Errors
    /// As [`ClientForward::seal_forward_with`].
    pub fn seal_forward(
        &mut self,
        buf: &mut [u8],
        hop: usize,
        msg_len: usize,
    ) -> Result<[u8; 16], OnionError> {
        self.seal_forward_with(buf, hop, msg_len, random_padding)
    }

    /// Seal a cell for hop `hop`, in place. `buf` is [`forward_buffer_len`]`(hop)` bytes
    /// long and holds the relay message (`msg_len` ≤ [`FORWARD_MESSAGE_MAX`] bytes) at
    /// [`message_offset`]`(hop)`; `fill` writes the padding after it. This writes the
    /// padding, the filler that the forwarding hops' pads will become, the kind bytes, the
    /// layers of hops `hop, hop−1, …, 0` and the command byte; the cell to send is
    /// `buf[..CELL_LEN]`. Returns the tag of hop `hop`'s own layer (what that hop's circuit
    /// `SENDME` echoes, §6.4).
    ///
    /// # Errors
    /// [`OnionError::Size`] when `hop` is not a built hop, `buf` has the wrong length or the
    /// message is too long; [`OnionError::Layer`] after 2^64 − 1 cells.
    pub fn seal_forward_with(
        &mut self,
        buf: &mut [u8],
        hop: usize,
        msg_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<[u8; 16], OnionError> {
        if hop >= self.0.len() || buf.len() != forward_buffer_len(hop) {
            return Err(OnionError::Size);
        }
        if msg_len > FORWARD_MESSAGE_MAX || msg_len + LAYER_OVERHEAD * hop > MESSAGE_AREA {
            return Err(OnionError::Size);
        }
        // The filler: what the last 25·hop bytes of hop `hop`'s ciphertext will be after
        // hops 0..hop each strip their layer and append their pad.
        let mut filler: Vec<u8> = Vec::with_capacity(LAYER_OVERHEAD * hop);
        for h in self.0.iter().take(hop) {
            let seq = h.sealer.next_seq();
            let pad_key = h.pad_key.as_ref().ok_or(OnionError::Size)?;
            xor_aead_keystream(&h.key, seq, BODY - filler.len(), &mut filler);
            filler.extend_from_slice(&forward_pad(pad_key, seq));
        }
        let area_start = message_offset(hop);
        let area = buf
            .get_mut(area_start..area_start + MESSAGE_AREA)
            .ok_or(OnionError::Size)?;
        let (message_and_padding, tail) = area.split_at_mut(MESSAGE_AREA - filler.len());
        fill(
            message_and_padding
                .get_mut(msg_len..)
                .ok_or(OnionError::Size)?,
        );
        // Choose the innermost plaintext tail so that its ciphertext (wrapped, for the
        // end-to-end hop) is the filler.
        let inner = self.0.get_mut(hop).ok_or(OnionError::Size)?;
        tail.copy_from_slice(&filler);
        if let Some((wrap_key, next)) = &inner.wrap {
            xor_keystream(wrap_key, *next, (REGION - filler.len()) as u64, tail);
        }
        xor_aead_keystream(
            &inner.key,
            inner.sealer.next_seq(),
            BODY - filler.len(),
            tail,
        );

        let mut hop_tag = [0u8; 16];
        for (h, layer) in self.0.iter_mut().enumerate().take(hop + 1).rev() {
            let region = buf
                .get_mut(layer_offset(h)..layer_offset(h) + REGION)
                .ok_or(OnionError::Size)?;
            region[LAYER_HEADER_LEN] = if h == hop {
                LayerKind::Deliver
            } else {
                LayerKind::Forward
            } as u8;
            layer.sealer.seal(region)?;
            if h == hop {
                hop_tag.copy_from_slice(&region[SEQ_LEN..SEQ_LEN + TAG_LEN]);
                if let Some((wrap_key, next)) = &mut layer.wrap {
                    xor_keystream(wrap_key, *next, 0, region);
                    *next = next.checked_add(1).ok_or(LayerError::Exhausted)?;
                }
            }
        }
        *buf.first_mut().ok_or(OnionError::Size)? = CellCommand::Relay as u8;
        Ok(hop_tag)
    }
}

struct BackwardHop {
    opener: LayerOpener,
    /// The wrap key and the next wrap sequence number.
    wrap_key: Zeroizing<[u8; 32]>,
    next_wrap: u64,
}

/// The client's backward layers (one per hop, in path order).
#[derive(Default)]
pub struct ClientBackward(Vec<BackwardHop>);

impl ClientBackward {
    /// An onion with no hops.
    pub fn new() -> Self {
        ClientBackward::default()
    }

    /// Add the next relay hop's backward layer.
    pub fn push_hop(&mut self, keys: &LayerKeys) {
        self.0.push(BackwardHop {
            opener: LayerOpener::new(&keys.backward),
            wrap_key: Zeroizing::new(keys.backward_wrap),
            next_wrap: 0,
        });
    }

    /// Add the end-to-end hop of a rendezvous circuit (§13.5): the other end seals its
    /// cells as forward cells with `keys.open` and wraps them with `keys.open_wrap`.
    pub fn push_end_to_end(&mut self, keys: &EndToEndKeys) {
        self.0.push(BackwardHop {
            opener: LayerOpener::new(&keys.open),
            wrap_key: Zeroizing::new(keys.open_wrap),
            next_wrap: 0,
        });
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no hop is set up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Open a whole cell that arrived from the guard, in place: strip hop 0's wrap layer,
    /// check whether hop 0 originated it (its sequence number is the next one expected from
    /// hop 0), else continue with hop 1, and so on. Returns the originating hop, the range
    /// of its relay message in `cell` (always `26..1024`) and the tag of its layer.
    ///
    /// # Errors
    /// [`OnionError::Layer`] when the originating hop's tag fails (the cell was modified;
    /// the circuit is then dead), [`OnionError::BadKind`] for a kind other than DELIVER,
    /// [`OnionError::Unrecognised`] when no hop originated it, [`OnionError::Size`] for a
    /// cell that is not [`CELL_LEN`] bytes.
    pub fn open_backward(
        &mut self,
        cell: &mut [u8],
    ) -> Result<(usize, Range<usize>, [u8; 16]), OnionError> {
        if cell.len() != CELL_LEN {
            return Err(OnionError::Size);
        }
        let region = &mut cell[relay_layout::SEQ..];
        for (h, hop) in self.0.iter_mut().enumerate() {
            xor_keystream(&hop.wrap_key, hop.next_wrap, 0, region);
            hop.next_wrap = hop.next_wrap.checked_add(1).ok_or(LayerError::Exhausted)?;
            if region[..SEQ_LEN] == hop.opener.expected().to_be_bytes() {
                hop.opener.open(region)?;
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&region[SEQ_LEN..SEQ_LEN + TAG_LEN]);
                return match LayerKind::from_byte(region[LAYER_HEADER_LEN]) {
                    Ok(LayerKind::Deliver) => Ok((h, relay_layout::INNER..CELL_LEN, tag)),
                    _ => Err(OnionError::BadKind),
                };
            }
        }
        Err(OnionError::Unrecognised)
    }
}

/// The 16-byte tag of a relay's own layer in a whole relay cell after
/// [`RelayForward::open_forward`] returned DELIVER.
pub fn relay_cell_tag(cell: &[u8]) -> Option<[u8; 16]> {
    cell.get(relay_layout::TAG..relay_layout::TAG + 16)?
        .try_into()
        .ok()
}

/// A relay's layer of one circuit: [`RelayForward`] opens cells from the client side,
/// [`RelayBackward`] seals and wraps cells towards it. The halves are independent, so the
/// two directions of a circuit can run in separate tasks.
pub struct RelayOnion {
    /// Opens cells travelling away from the client.
    pub forward: RelayForward,
    /// Seals cells travelling towards the client.
    pub backward: RelayBackward,
}

impl RelayOnion {
    /// The layer for the keys agreed in this hop's handshake.
    pub fn new(keys: &HopKeys) -> Self {
        let keys = LayerKeys::from_hop(keys);
        RelayOnion {
            forward: RelayForward {
                opener: LayerOpener::new(&keys.forward),
                pad_key: Zeroizing::new(keys.forward_pad),
            },
            backward: RelayBackward {
                sealer: LayerSealer::new(&keys.backward),
                wrap_key: Zeroizing::new(keys.backward_wrap),
                next_wrap: 0,
            },
        }
    }
}

/// The forward half of a relay's layer.
pub struct RelayForward {
    opener: LayerOpener,
    pad_key: Zeroizing<[u8; 32]>,
}

impl RelayForward {
    /// Open a whole [`CELL_LEN`]-byte `RELAY` cell from the previous hop in place and say
    /// what it holds. For [`LayerKind::Forward`] the cell has already been turned into the
    /// next leg's cell (`0x03 ‖ inner ‖ pad`, §7.3); for [`LayerKind::Deliver`] the relay
    /// message is `cell[26..]` and its layer tag [`relay_cell_tag`].
    ///
    /// # Errors
    /// [`OnionError::Layer`] for a bad tag or sequence number, [`OnionError::BadKind`],
    /// [`OnionError::Size`] for a cell that is not [`CELL_LEN`] bytes. The caller destroys
    /// the circuit on any of them.
    pub fn open_forward(&mut self, cell: &mut [u8]) -> Result<LayerKind, OnionError> {
        if cell.len() != CELL_LEN {
            return Err(OnionError::Size);
        }
        let seq = self.opener.expected();
        self.opener.open(&mut cell[relay_layout::SEQ..])?;
        let kind =
            LayerKind::from_byte(cell[relay_layout::BODY]).map_err(|_| OnionError::BadKind)?;
        if kind == LayerKind::Forward {
            cell.copy_within(relay_layout::INNER.., relay_layout::SEQ);
            cell[CELL_LEN - LAYER_OVERHEAD..].copy_from_slice(&forward_pad(&self.pad_key, seq));
            cell[0] = CellCommand::Relay as u8;
        }
        Ok(kind)
    }
}

/// The backward half of a relay's layer.
pub struct RelayBackward {
    sealer: LayerSealer,
    wrap_key: Zeroizing<[u8; 32]>,
    next_wrap: u64,
}

impl RelayBackward {
    /// Originate a message towards the client, in place, with unpredictable padding. See
    /// [`RelayBackward::originate_with`].
    ///
    /// # Errors
    /// As [`RelayBackward::originate_with`].
    pub fn originate(&mut self, cell: &mut [u8], msg_len: usize) -> Result<[u8; 16], OnionError> {
        self.originate_with(cell, msg_len, random_padding)
    }

    /// Originate a message towards the client, in place: `cell` is [`CELL_LEN`] bytes with
    /// the relay message (`msg_len` ≤ [`anonnet_wire::BACKWARD_MESSAGE_MAX`] bytes) at
    /// offset 26; `fill` writes the padding after it. Seals it with this hop's backward key
    /// (kind DELIVER), then wraps it (§7.3). Returns the tag of the sealed layer (what the
    /// client's circuit `SENDME` echoes).
    ///
    /// # Errors
    /// [`OnionError::Size`] for a wrong cell length or an overlong message,
    /// [`OnionError::Layer`] after 2^64 − 1 cells.
    pub fn originate_with(
        &mut self,
        cell: &mut [u8],
        msg_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<[u8; 16], OnionError> {
        if cell.len() != CELL_LEN || msg_len > anonnet_wire::BACKWARD_MESSAGE_MAX {
            return Err(OnionError::Size);
        }
        fill(&mut cell[relay_layout::INNER + msg_len..]);
        cell[relay_layout::BODY] = LayerKind::Deliver as u8;
        self.sealer.seal(&mut cell[relay_layout::SEQ..])?;
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&cell[relay_layout::TAG..relay_layout::TAG + TAG_LEN]);
        self.wrap(cell)?;
        Ok(tag)
    }

    /// Wrap a whole [`CELL_LEN`]-byte cell travelling towards the client (from the next hop,
    /// or crossing a rendezvous join) in place: XOR its 1023 bytes after the command byte
    /// with this hop's wrap keystream for the next wrap sequence number.
    ///
    /// # Errors
    /// [`OnionError::Size`] for a wrong cell length, [`OnionError::Layer`] after 2^64 − 1
    /// cells.
    pub fn wrap(&mut self, cell: &mut [u8]) -> Result<(), OnionError> {
        if cell.len() != CELL_LEN {
            return Err(OnionError::Size);
        }
        let seq = self.next_wrap;
        self.next_wrap = seq.checked_add(1).ok_or(LayerError::Exhausted)?;
        xor_keystream(&self.wrap_key, seq, 0, &mut cell[relay_layout::SEQ..]);
        cell[0] = CellCommand::Relay as u8;
        Ok(())
    }
}

impl anonnet_error::HasKind for OnionError {
    /// As [`LayerError`]'s kind for a layer failure; anything else about an onion cell
    /// is a peer's [`anonnet_error::ErrorKind::Protocol`] error.
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            OnionError::Layer(e) => anonnet_error::HasKind::kind(e),
            _ => anonnet_error::ErrorKind::Protocol,
        }
    }
}

#[cfg(test)]
mod tests;
