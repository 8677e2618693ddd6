//! The version-2 onion (`docs/protocol.md` §7) with fixed keys, driven by sequences of cells:
//!
//! * `to_relay`: a relay's `RelayForward::open_forward` (the relay is hop 0 of a 3-hop
//!   client) on cells from the client side;
//! * `to_client`: a 3-hop client's `ClientOnion::open_backward` on cells from its guard;
//! * `path`: a 3-hop forward path, the client sealing to hop `t` and the relays opening and
//!   forwarding, with an optional flipped byte in front of one hop.
//!
//! A cell is either `Raw` bytes (a peer without the keys: every open must fail cleanly) or
//! made with the right keys by the real sealing functions — `ClientForward::seal_forward_with`
//! towards the relays, `RelayBackward::originate_with` and `wrap` towards the client — with a
//! fuzz-chosen target or originating hop, message and padding. Keyed cells may also be lost
//! on the way, delivered again or late, or (`Crafted`) sealed by hand by a holder of the key
//! with any kind byte. The target keeps a model of every sequence and wrap number on both
//! sides, so the outcome of each keyed cell is predicted exactly and checked (in step:
//! DELIVER/FORWARD as addressed, the message, padding and tag; out of step: the sequence
//! error or an unrecognised backward cell). Every opened message goes through
//! `RelayCell::decode` (and, if it decodes, re-encodes to the same bytes).
#![no_main]

use anonnet_crypto::onion::{
    forward_buffer_len, message_offset, relay_cell_tag, ClientForward, LayerKeys,
};
use anonnet_crypto::{ClientOnion, HopKeys, LayerError, LayerSealer, OnionError, RelayOnion};
use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind};
use anonnet_wire::{
    RelayCell, BACKWARD_MESSAGE_MAX, CELL_LEN, FORWARD_MESSAGE_MAX, LAYER_OVERHEAD, MESSAGE_AREA,
};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const HOPS: usize = 3;
const MAX_CELLS: usize = 32;
const MAX_PATH_CELLS: usize = 16;
const INNER: usize = relay_layout::INNER;

/// A cell towards the relay (hop 0 of the client's 3-hop circuit).
#[derive(Arbitrary, Debug)]
enum Fwd {
    /// Bytes from a peer that does not hold the keys; with `whole`, cut or zero-filled to
    /// one cell (1024 bytes), so that the layer checks, not only the size check, are reached.
    Raw {
        bytes: Vec<u8>,
        whole: bool,
        /// With `whole`: the sequence number field set to the one the relay expects next
        /// (sequence numbers are no secret), so that the tag check is reached.
        next_seq: bool,
    },
    /// The client's next cell to hop `hop % 3`: `msg`, then `fill` repeated as padding.
    Sealed {
        hop: u8,
        msg: Vec<u8>,
        fill: Vec<u8>,
    },
    /// The client's next cell to hop `hop % 3`, lost on the way (the relay sees it only if
    /// an `Again` delivers it late).
    Lost { hop: u8 },
    /// The `back % n`-th last keyed cell (sent or lost) delivered again.
    Again { back: u8 },
    /// Hop 0's layer sealed by hand by a holder of its key, at the client's next sequence
    /// number: kind byte `kind`, then `inner` (998 bytes, zero-filled).
    Crafted { kind: u8, inner: Vec<u8> },
}

/// A cell towards the client, as its guard sends it.
#[derive(Arbitrary, Debug)]
enum Back {
    /// Bytes from a peer that does not hold the keys; with `whole`, cut or zero-filled to
    /// one cell (1024 bytes), so that the layer checks, not only the size check, are reached.
    Raw { bytes: Vec<u8>, whole: bool },
    /// Hop `from % 3` originates `msg` (padding: `fill` repeated); the hops before wrap it.
    Sealed {
        from: u8,
        msg: Vec<u8>,
        fill: Vec<u8>,
    },
    /// As `Sealed`, but the guard drops it (an `Again` may deliver it late).
    Lost { from: u8 },
    /// The `back % n`-th last keyed cell (sent or lost) delivered again.
    Again { back: u8 },
    /// Hop `from % 3`'s backward layer sealed by hand with its key (kind byte `kind`, then
    /// `inner`), wrapped by that hop and the hops before it.
    Crafted { from: u8, kind: u8, inner: Vec<u8> },
}

/// One cell along the forward path.
#[derive(Arbitrary, Debug)]
struct PathCell {
    hop: u8,
    msg: Vec<u8>,
    fill: Vec<u8>,
    tamper: Option<Tamper>,
}

/// XOR `xor` (0 counts as 1) into byte `1 + pos % 1023` of the cell just before hop
/// `before % 3` opens it (the command byte is not part of any layer, so it is left alone).
#[derive(Arbitrary, Debug)]
struct Tamper {
    before: u8,
    pos: u16,
    xor: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    to_relay: Vec<Fwd>,
    to_client: Vec<Back>,
    path: Vec<PathCell>,
}

fn keys(h: usize) -> HopKeys {
    let h = h as u8;
    HopKeys {
        forward: [h.wrapping_mul(2).wrapping_add(1); 32],
        backward: [h.wrapping_mul(2).wrapping_add(2); 32],
    }
}

/// Padding: `pattern` repeated (zeros if empty).
fn fill_pattern(pattern: &[u8], out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = if pattern.is_empty() {
            0
        } else {
            pattern[i % pattern.len()]
        };
    }
}

fn assert_padding(pattern: &[u8], got: &[u8]) {
    let mut want = vec![0u8; got.len()];
    fill_pattern(pattern, &mut want);
    assert_eq!(got, &want[..], "the padding is not what the sealer wrote");
}

fn seq_of(cell: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&cell[relay_layout::SEQ..relay_layout::TAG]);
    u64::from_be_bytes(b)
}

/// An opened message area (998 bytes): `RelayCell::decode`, and whatever decodes re-encodes
/// to the same message bytes (the padding after it is not part of the message).
fn decode_message(area: &[u8]) {
    if let Ok(cell) = RelayCell::decode(&Bytes::copy_from_slice(area)) {
        let mut again = vec![0xA5u8; area.len()];
        let n = cell
            .encode_into(&mut again)
            .expect("a decoded relay message re-encodes");
        assert_eq!(again[..n], area[..n], "relay message does not round-trip");
    }
}

/// A raw cell's bytes (see `Fwd::Raw`).
fn raw_cell(bytes: &[u8], whole: bool) -> Vec<u8> {
    if whole {
        sized(bytes, CELL_LEN)
    } else {
        bytes.to_vec()
    }
}

/// The inner bytes of a crafted layer: `inner`, cut or zero-filled to `len`.
fn sized(inner: &[u8], len: usize) -> Vec<u8> {
    let mut v = inner
        .get(..len.min(inner.len()))
        .unwrap_or_default()
        .to_vec();
    v.resize(len, 0);
    v
}

// ---------------------------------------------------------------------------------------
// A relay opening cells from the client side.

/// What hop 0 must find when it opens a keyed cell in step.
#[derive(Clone)]
enum FwdContent {
    /// DELIVER: the message, the padding pattern, the tag `seal_forward_with` returned.
    Deliver {
        msg: Vec<u8>,
        fill: Vec<u8>,
        tag: [u8; 16],
    },
    /// FORWARD: the next leg's cell carries hop 1's sequence number in the clear.
    Forward { next_seq: u64 },
    /// A hand-sealed layer: kind byte and 998 inner bytes.
    Crafted { kind: u8, inner: Vec<u8> },
}

#[derive(Clone)]
struct FwdKeyed {
    cell: Vec<u8>,
    seq: u64,
    content: FwdContent,
}

struct RelaySide {
    client: ClientForward,
    /// Next forward sequence number of each hop's sealer in `client`.
    client_seq: [u64; HOPS],
    relay: RelayOnion,
    /// Next sequence number the relay accepts.
    expected: u64,
    /// Seals hop 0's layer by hand (`Crafted`).
    crafter: LayerSealer,
    history: Vec<FwdKeyed>,
}

impl RelaySide {
    fn new() -> Self {
        let mut onion = ClientOnion::new();
        for h in 0..HOPS {
            onion.push_hop(&keys(h));
        }
        assert_eq!(onion.len(), HOPS);
        let (client, _) = onion.split();
        RelaySide {
            client,
            client_seq: [0; HOPS],
            relay: RelayOnion::new(&keys(0)),
            expected: 0,
            crafter: LayerSealer::new(&LayerKeys::from_hop(&keys(0)).forward),
            history: Vec::new(),
        }
    }

    /// The client's next cell to hop `t`, or `None` for an overlong message (refused with
    /// `Size`, nothing sealed).
    fn seal(&mut self, t: usize, msg: &[u8], fill: &[u8]) -> Option<FwdKeyed> {
        let mut buf = vec![0u8; forward_buffer_len(t)];
        let sealed = {
            let at = message_offset(t);
            let room = buf.len() - at;
            buf[at..at + msg.len().min(room)].copy_from_slice(&msg[..msg.len().min(room)]);
            self.client
                .seal_forward_with(&mut buf, t, msg.len(), |p| fill_pattern(fill, p))
        };
        if msg.len() > FORWARD_MESSAGE_MAX {
            assert_eq!(sealed, Err(OnionError::Size));
            return None;
        }
        let tag = sealed.expect("a message of at most FORWARD_MESSAGE_MAX bytes seals");
        buf.truncate(CELL_LEN);
        assert_eq!(buf[0], CellCommand::Relay as u8);
        let seq = self.client_seq[0];
        assert_eq!(seq_of(&buf), seq, "hop 0's sequence number in the clear");
        let content = if t == 0 {
            FwdContent::Deliver {
                msg: msg.to_vec(),
                fill: fill.to_vec(),
                tag,
            }
        } else {
            FwdContent::Forward {
                next_seq: self.client_seq[1],
            }
        };
        for s in &mut self.client_seq[..=t] {
            *s += 1;
        }
        Some(FwdKeyed {
            cell: buf,
            seq,
            content,
        })
    }

    fn craft(&mut self, kind: u8, inner: &[u8]) -> FwdKeyed {
        while self.crafter.next_seq() < self.client_seq[0] {
            self.crafter
                .seal(&mut [0u8; 24])
                .expect("a header-only region seals");
        }
        let seq = self.crafter.next_seq();
        let inner = sized(inner, MESSAGE_AREA);
        let mut cell = vec![0u8; CELL_LEN];
        cell[0] = CellCommand::Relay as u8;
        cell[relay_layout::BODY] = kind;
        cell[INNER..].copy_from_slice(&inner);
        self.crafter
            .seal(&mut cell[relay_layout::SEQ..])
            .expect("a 1023-byte region seals");
        FwdKeyed {
            cell,
            seq,
            content: FwdContent::Crafted { kind, inner },
        }
    }

    /// Deliver a keyed cell to the relay and check the predicted outcome.
    fn deliver(&mut self, k: &FwdKeyed) {
        let mut c = k.cell.clone();
        let got = self.relay.forward.open_forward(&mut c);
        if k.seq != self.expected {
            // A replay, a skip or a reordering: refused before decryption, relay unchanged.
            assert_eq!(
                got,
                Err(OnionError::Layer(LayerError::Sequence {
                    expected: self.expected,
                    got: k.seq,
                }))
            );
            return;
        }
        self.expected += 1;
        match &k.content {
            FwdContent::Deliver { msg, fill, tag } => {
                assert_eq!(got, Ok(LayerKind::Deliver));
                assert_eq!(&c[INNER..INNER + msg.len()], &msg[..]);
                assert_padding(fill, &c[INNER + msg.len()..]);
                assert_eq!(relay_cell_tag(&c), Some(*tag));
                decode_message(&c[INNER..]);
            }
            FwdContent::Forward { next_seq } => {
                assert_eq!(got, Ok(LayerKind::Forward));
                assert_eq!(c.len(), CELL_LEN, "the next leg's cell has the same size");
                assert_eq!(c[0], CellCommand::Relay as u8);
                assert_eq!(seq_of(&c), *next_seq, "hop 1's layer follows");
            }
            FwdContent::Crafted { kind, inner } => match LayerKind::from_byte(*kind) {
                Ok(LayerKind::Deliver) => {
                    assert_eq!(got, Ok(LayerKind::Deliver));
                    assert_eq!(&c[INNER..], &inner[..]);
                    decode_message(&c[INNER..]);
                }
                Ok(LayerKind::Forward) => {
                    assert_eq!(got, Ok(LayerKind::Forward));
                    assert_eq!(c.len(), CELL_LEN);
                    assert_eq!(c[0], CellCommand::Relay as u8);
                    assert_eq!(&c[1..CELL_LEN - LAYER_OVERHEAD], &inner[..]);
                }
                Err(_) => assert_eq!(got, Err(OnionError::BadKind)),
            },
        }
    }

    fn run(cells: &[Fwd]) {
        let mut s = RelaySide::new();
        for cell in cells.iter().take(MAX_CELLS) {
            match cell {
                Fwd::Raw {
                    bytes,
                    whole,
                    next_seq,
                } => {
                    let mut bytes = raw_cell(bytes, *whole);
                    if *whole && *next_seq {
                        bytes[relay_layout::SEQ..relay_layout::TAG]
                            .copy_from_slice(&s.expected.to_be_bytes());
                    }
                    let mut c = bytes.clone();
                    let got = s.relay.forward.open_forward(&mut c);
                    // Without the key nothing opens, and the relay's state does not move.
                    let want = if bytes.len() != CELL_LEN {
                        OnionError::Size
                    } else if seq_of(&bytes) != s.expected {
                        OnionError::Layer(LayerError::Sequence {
                            expected: s.expected,
                            got: seq_of(&bytes),
                        })
                    } else {
                        OnionError::Layer(LayerError::BadTag)
                    };
                    assert_eq!(got, Err(want));
                }
                Fwd::Sealed { hop, msg, fill } => {
                    if let Some(k) = s.seal(usize::from(*hop) % HOPS, msg, fill) {
                        s.deliver(&k);
                        s.history.push(k);
                    }
                }
                Fwd::Lost { hop } => {
                    if let Some(k) = s.seal(usize::from(*hop) % HOPS, b"lost", b"") {
                        s.history.push(k);
                    }
                }
                Fwd::Again { back } => {
                    if !s.history.is_empty() {
                        let i = s.history.len() - 1 - usize::from(*back) % s.history.len();
                        let k = s.history[i].clone();
                        s.deliver(&k);
                    }
                }
                Fwd::Crafted { kind, inner } => {
                    let k = s.craft(*kind, inner);
                    s.deliver(&k);
                    s.history.push(k);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client opening cells from its guard.

#[derive(Clone)]
enum BackContent {
    /// Originated by the relay: message, padding pattern, the tag `originate_with` returned.
    Message {
        msg: Vec<u8>,
        fill: Vec<u8>,
        tag: [u8; 16],
    },
    /// Sealed by hand: kind byte, 998 inner bytes, the layer's tag.
    Crafted {
        kind: u8,
        inner: Vec<u8>,
        tag: [u8; 16],
    },
}

#[derive(Clone)]
struct BackKeyed {
    cell: Vec<u8>,
    from: usize,
    /// The originator's sequence number.
    seq: u64,
    /// The wrap numbers of hops 0..=from.
    wraps: Vec<u64>,
    content: BackContent,
}

struct ClientSide {
    client: ClientOnion,
    /// The client's next wrap number and next expected sequence number per hop, while known.
    next_wrap: [u64; HOPS],
    expected: [u64; HOPS],
    /// False once a raw cell matched a sequence number by chance (its tag then failed, and
    /// the client's wrap numbers moved in a way the model does not follow).
    known: bool,
    relays: Vec<RelayOnion>,
    /// Each relay's next backward sequence number and next wrap number.
    relay_seq: [u64; HOPS],
    relay_wrap: [u64; HOPS],
    /// Hand sealers of each hop's backward layer, and their next sequence numbers.
    crafters: Vec<LayerSealer>,
    history: Vec<BackKeyed>,
}

impl ClientSide {
    fn new() -> Self {
        let mut client = ClientOnion::new();
        let mut relays = Vec::new();
        let mut crafters = Vec::new();
        for h in 0..HOPS {
            client.push_hop(&keys(h));
            relays.push(RelayOnion::new(&keys(h)));
            crafters.push(LayerSealer::new(&LayerKeys::from_hop(&keys(h)).backward));
        }
        ClientSide {
            client,
            next_wrap: [0; HOPS],
            expected: [0; HOPS],
            known: true,
            relays,
            relay_seq: [0; HOPS],
            relay_wrap: [0; HOPS],
            crafters,
            history: Vec::new(),
        }
    }

    /// Hops `from − 1 … 0` wrap a cell hop `from` has sealed and wrapped.
    fn wrap_down(&mut self, from: usize, cell: &mut [u8], wraps: &mut [u64]) {
        for h in (0..from).rev() {
            self.relays[h]
                .backward
                .wrap(cell)
                .expect("a 1024-byte cell wraps");
            wraps[h] = self.relay_wrap[h];
            self.relay_wrap[h] += 1;
        }
    }

    /// Hop `from` originates `msg`, or `None` for an overlong message (refused with `Size`).
    fn originate(&mut self, from: usize, msg: &[u8], fill: &[u8]) -> Option<BackKeyed> {
        let mut cell = vec![0u8; CELL_LEN];
        let room = CELL_LEN - INNER;
        cell[INNER..INNER + msg.len().min(room)].copy_from_slice(&msg[..msg.len().min(room)]);
        let sealed = self.relays[from]
            .backward
            .originate_with(&mut cell, msg.len(), |p| fill_pattern(fill, p));
        if msg.len() > BACKWARD_MESSAGE_MAX {
            assert_eq!(sealed, Err(OnionError::Size));
            return None;
        }
        let tag = sealed.expect("a message of at most BACKWARD_MESSAGE_MAX bytes seals");
        assert_eq!(cell.len(), CELL_LEN);
        assert_eq!(cell[0], CellCommand::Relay as u8);
        let seq = self.relay_seq[from];
        self.relay_seq[from] += 1;
        let mut wraps = vec![0; from + 1];
        wraps[from] = self.relay_wrap[from];
        self.relay_wrap[from] += 1;
        self.wrap_down(from, &mut cell, &mut wraps);
        Some(BackKeyed {
            cell,
            from,
            seq,
            wraps,
            content: BackContent::Message {
                msg: msg.to_vec(),
                fill: fill.to_vec(),
                tag,
            },
        })
    }

    /// A holder of hop `from`'s backward key seals a layer by hand, at that hop's next
    /// sequence number (the real relay's sealer does not advance: its next message reuses
    /// the number and is not recognised); the hop and those before it wrap it.
    fn craft(&mut self, from: usize, kind: u8, inner: &[u8]) -> BackKeyed {
        let crafter = &mut self.crafters[from];
        while crafter.next_seq() < self.relay_seq[from] {
            crafter
                .seal(&mut [0u8; 24])
                .expect("a header-only region seals");
        }
        let seq = crafter.next_seq();
        let inner = sized(inner, MESSAGE_AREA);
        let mut cell = vec![0u8; CELL_LEN];
        cell[relay_layout::BODY] = kind;
        cell[INNER..].copy_from_slice(&inner);
        crafter
            .seal(&mut cell[relay_layout::SEQ..])
            .expect("a 1023-byte region seals");
        let tag = relay_cell_tag(&cell).expect("a whole cell has a tag");
        let mut wraps = vec![0; from + 1];
        self.relays[from]
            .backward
            .wrap(&mut cell)
            .expect("a 1024-byte cell wraps");
        assert_eq!(cell[0], CellCommand::Relay as u8);
        wraps[from] = self.relay_wrap[from];
        self.relay_wrap[from] += 1;
        self.wrap_down(from, &mut cell, &mut wraps);
        BackKeyed {
            cell,
            from,
            seq,
            wraps,
            content: BackContent::Crafted { kind, inner, tag },
        }
    }

    /// The client opens a keyed cell; check the outcome the model predicts.
    fn deliver(&mut self, k: &BackKeyed) {
        let mut c = k.cell.clone();
        let got = self.client.open_backward(&mut c);
        if !self.known {
            if let Ok((_, range, _)) = &got {
                assert_eq!(*range, INNER..CELL_LEN);
                decode_message(&c[range.clone()]);
            }
            return;
        }
        // The client strips the right wrap layers only if its wrap numbers agree with the
        // ones used, and recognises the originator only by its next expected number.
        let unwrapped = (0..=k.from).all(|j| self.next_wrap[j] == k.wraps[j]);
        if !(unwrapped && k.seq == self.expected[k.from]) {
            assert_eq!(got, Err(OnionError::Unrecognised));
            for w in &mut self.next_wrap {
                *w += 1;
            }
            return;
        }
        for w in &mut self.next_wrap[..=k.from] {
            *w += 1;
        }
        self.expected[k.from] += 1;
        match &k.content {
            BackContent::Message { msg, fill, tag } => {
                assert_eq!(got, Ok((k.from, INNER..CELL_LEN, *tag)));
                assert_eq!(&c[INNER..INNER + msg.len()], &msg[..]);
                assert_padding(fill, &c[INNER + msg.len()..]);
                decode_message(&c[INNER..]);
            }
            BackContent::Crafted { kind, inner, tag } => {
                if *kind == LayerKind::Deliver as u8 {
                    assert_eq!(got, Ok((k.from, INNER..CELL_LEN, *tag)));
                    assert_eq!(&c[INNER..], &inner[..]);
                    decode_message(&c[INNER..]);
                } else {
                    // FORWARD included: a backward layer is always DELIVER.
                    assert_eq!(got, Err(OnionError::BadKind));
                }
            }
        }
    }

    fn run(cells: &[Back]) {
        let mut s = ClientSide::new();
        for cell in cells.iter().take(MAX_CELLS) {
            match cell {
                Back::Raw { bytes, whole } => {
                    let bytes = raw_cell(bytes, *whole);
                    let mut c = bytes.clone();
                    let got = s.client.open_backward(&mut c);
                    if bytes.len() != CELL_LEN {
                        assert_eq!(got, Err(OnionError::Size));
                        continue;
                    }
                    match got {
                        // Every hop's wrap layer stripped, nothing recognised.
                        Err(OnionError::Unrecognised) => {
                            for w in &mut s.next_wrap {
                                *w += 1;
                            }
                        }
                        // A sequence number matched after unwrapping: the tag must fail.
                        Err(OnionError::Layer(LayerError::BadTag)) => s.known = false,
                        other => panic!("a cell made without the keys gave {other:?}"),
                    }
                }
                Back::Sealed { from, msg, fill } => {
                    if let Some(k) = s.originate(usize::from(*from) % HOPS, msg, fill) {
                        s.deliver(&k);
                        s.history.push(k);
                    }
                }
                Back::Lost { from } => {
                    if let Some(k) = s.originate(usize::from(*from) % HOPS, b"lost", b"") {
                        s.history.push(k);
                    }
                }
                Back::Again { back } => {
                    if !s.history.is_empty() {
                        let i = s.history.len() - 1 - usize::from(*back) % s.history.len();
                        let k = s.history[i].clone();
                        s.deliver(&k);
                    }
                }
                Back::Crafted { from, kind, inner } => {
                    let k = s.craft(usize::from(*from) % HOPS, *kind, inner);
                    s.deliver(&k);
                    s.history.push(k);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A forward path through three relays.

fn path(cells: &[PathCell]) {
    let mut onion = ClientOnion::new();
    let mut relays = Vec::new();
    for h in 0..HOPS {
        onion.push_hop(&keys(h));
        relays.push(RelayOnion::new(&keys(h)));
    }
    let (mut client, _) = onion.split();
    let mut client_seq = [0u64; HOPS];
    let mut expected = [0u64; HOPS];
    for pc in cells.iter().take(MAX_PATH_CELLS) {
        let t = usize::from(pc.hop) % HOPS;
        let mut c = vec![0u8; forward_buffer_len(t)];
        let at = message_offset(t);
        let n = pc.msg.len().min(c.len() - at);
        c[at..at + n].copy_from_slice(&pc.msg[..n]);
        let sealed =
            client.seal_forward_with(&mut c, t, pc.msg.len(), |p| fill_pattern(&pc.fill, p));
        if pc.msg.len() > FORWARD_MESSAGE_MAX {
            assert_eq!(sealed, Err(OnionError::Size));
            continue;
        }
        let tag = sealed.expect("a message of at most FORWARD_MESSAGE_MAX bytes seals");
        c.truncate(CELL_LEN);
        // The sequence number each hop's layer carries.
        let sealed_seq = client_seq;
        for s in &mut client_seq[..=t] {
            *s += 1;
        }
        let tamper = pc.tamper.as_ref().map(|x| {
            (
                usize::from(x.before) % HOPS,
                1 + usize::from(x.pos) % (CELL_LEN - 1),
                x.xor.max(1),
            )
        });
        let mut tampered = false;
        for h in 0..=t {
            assert_eq!(c.len(), CELL_LEN, "one cell size at every position");
            assert_eq!(c[0], CellCommand::Relay as u8);
            if let Some((before, pos, xor)) = tamper {
                if before == h {
                    c[pos] ^= xor;
                    tampered = true;
                }
            }
            let seq = seq_of(&c);
            if !tampered {
                assert_eq!(seq, sealed_seq[h], "hop {h}'s layer is next in the cell");
            }
            let got = relays[h].forward.open_forward(&mut c);
            if seq != expected[h] {
                // Out of step since an earlier rejection, or the flip hit the number.
                assert_eq!(
                    got,
                    Err(OnionError::Layer(LayerError::Sequence {
                        expected: expected[h],
                        got: seq,
                    })),
                    "hop {h}"
                );
                break;
            }
            if tampered {
                // Rejected by the hop that received it: the tag covers every byte after
                // the number, the client's filler included.
                assert_eq!(got, Err(OnionError::Layer(LayerError::BadTag)), "hop {h}");
                break;
            }
            expected[h] += 1;
            if h < t {
                assert_eq!(got, Ok(LayerKind::Forward), "hop {h} forwards");
                continue;
            }
            assert_eq!(got, Ok(LayerKind::Deliver), "the cell reaches hop {t}");
            let area = &c[INNER..];
            assert_eq!(&area[..pc.msg.len()], &pc.msg[..]);
            // Then the client's padding; the last 25·t bytes are the filler's plaintext.
            assert_padding(
                &pc.fill,
                &area[pc.msg.len()..MESSAGE_AREA - LAYER_OVERHEAD * t],
            );
            assert_eq!(relay_cell_tag(&c), Some(tag));
            decode_message(area);
        }
    }
}

fuzz_target!(|input: Input| {
    RelaySide::run(&input.to_relay);
    ClientSide::run(&input.to_client);
    path(&input.path);
});
