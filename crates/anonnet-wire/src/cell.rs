//! Link cells: the fixed-size units carried on one leg of a circuit (one QUIC bidirectional
//! stream between two adjacent nodes). Spec: `docs/protocol.md` §4 "Cells".
//!
//! Protocol version 2: every cell on every leg, at every position of every circuit, is
//! [`CELL_LEN`] bytes: `command (1) ‖ body (1023)`. Each hop re-pads what it forwards
//! (§7), so no relay learns its distance from the client from the cell size.

use crate::{invalid, Reader, WireError, Writer};

/// Length in bytes of every cell on every leg (§4.1).
///
/// 1024 bytes: one cell always fits a QUIC packet at the minimum 1200-byte MTU, and the
/// per-call cost of ChaCha20-Poly1305 (ring: ~830 MB/s at 512 bytes, ~1.4 GB/s at 16 KiB on
/// the reference machine) is amortised over twice Tor's 509-byte payload.
pub const CELL_LEN: usize = 1024;
/// Smallest `cell_len` a relay accepts in `CREATE` (bytes). Version 2 has one cell size:
/// equal to [`CELL_LEN`].
pub const MIN_CELL_LEN: usize = CELL_LEN;
/// Largest `cell_len` a relay accepts in `CREATE` (bytes).
pub const MAX_CELL_LEN: usize = CELL_LEN;
/// Bytes one onion layer takes in front of what it carries: sequence number (8) ‖ tag (16)
/// ‖ kind (1). In version 2 a forwarding hop re-pads the cell by the same amount (§7.3).
pub const LAYER_OVERHEAD: usize = SEQ_LEN + TAG_LEN + 1;
/// Most onion layers a version-2 sender ever puts on one cell (relays plus the end-to-end
/// hop of a rendezvous circuit): the forward message size is fixed for this many, whatever
/// the real path length, so a hop cannot learn its position from it (§7.2).
pub const MAX_LAYERS: usize = 8;
/// Bytes after a hop's kind byte in an opened layer: `CELL_LEN − 26` = 998 (§4.4).
pub const MESSAGE_AREA: usize = CELL_LEN - relay_layout::INNER;
/// Unpredictable padding bytes every sealed relay message carries at least, so the tag a
/// circuit `SENDME` echoes cannot be computed without the cell (§6.4, Tor prop 289).
pub const MIN_PADDING: usize = 16;
/// Largest relay message (header included) a client seals towards a hop, and an end of a
/// rendezvous circuit towards the other: 998 − 25·7 − 16 = 807 bytes (§7.2).
pub const FORWARD_MESSAGE_MAX: usize =
    MESSAGE_AREA - LAYER_OVERHEAD * (MAX_LAYERS - 1) - MIN_PADDING;
/// Largest relay message (header included) a relay originates towards the client:
/// 998 − 16 = 982 bytes (§7.3).
pub const BACKWARD_MESSAGE_MAX: usize = MESSAGE_AREA - MIN_PADDING;
/// Length of the explicit per-layer sequence number (bytes, big-endian `u64`).
pub const SEQ_LEN: usize = 8;
/// Length of the ChaCha20-Poly1305 tag (bytes).
pub const TAG_LEN: usize = 16;
/// Length of an X25519 public key or a node identity digest in the handshake (bytes).
pub const KEY_LEN: usize = 32;
/// Handshake type number of the ntor-style X25519 + HKDF-SHA256 handshake (§5).
pub const HANDSHAKE_NTOR_V1: u16 = 1;
/// Handshake type number of the hybrid X25519 + ML-KEM-768 handshake (§5.4).
pub const HANDSHAKE_HYBRID_V2: u16 = 2;
/// Bytes of a type-2 hello: `NODE_ID [32] ‖ B [32] ‖ X [32] ‖ EK [1184]` (§5.4).
pub const HYBRID_HELLO_LEN: usize = 1280;
/// Bytes of a type-2 reply: `Y [32] ‖ CT [1088] ‖ AUTH [32]` (§5.4).
pub const HYBRID_REPLY_LEN: usize = 1152;
/// Bytes a type-2 `CREATE` or `CREATED` takes on a leg: two cells (§4.2, §4.3).
pub const HYBRID_CELLS_LEN: usize = 2 * CELL_LEN;

/// The command byte that starts every cell (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CellCommand {
    /// Link padding; the body is ignored.
    Padding = 0,
    /// Opens a leg and starts the per-hop handshake.
    Create = 1,
    /// The relay's half of the handshake.
    Created = 2,
    /// An onion-encrypted relay cell.
    Relay = 3,
    /// Tears the circuit down.
    Destroy = 4,
    /// The second cell of a type-2 `CREATE` or `CREATED` (§4.2, §4.3); anywhere else a
    /// protocol violation.
    Continue = 5,
}

impl CellCommand {
    /// The command for a command byte.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for an unknown command.
    pub fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0 => CellCommand::Padding,
            1 => CellCommand::Create,
            2 => CellCommand::Created,
            3 => CellCommand::Relay,
            4 => CellCommand::Destroy,
            5 => CellCommand::Continue,
            _ => return Err(invalid("cell command", "unknown command")),
        })
    }
}

/// Check that a leg cell length is within [`MIN_CELL_LEN`]..=[`MAX_CELL_LEN`].
///
/// # Errors
/// [`WireError::Invalid`] when it is not.
pub fn check_cell_len(cell_len: usize) -> Result<(), WireError> {
    if (MIN_CELL_LEN..=MAX_CELL_LEN).contains(&cell_len) {
        Ok(())
    } else {
        Err(invalid(
            "cell_len",
            "not 1024 (protocol version 2 has one cell size)",
        ))
    }
}

/// `CREATE` (§4.2): `0x01 ‖ cell_len u16 ‖ handshake_type u16 ‖ node_id [32] ‖
/// onion_key [32] ‖ client_pk [32] ‖ zero padding` — exactly `cell_len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    /// Length of every cell on this leg, both directions (bytes, 256..=1024).
    pub cell_len: u16,
    /// The NodeId the client expects the relay to have.
    pub node_id: [u8; KEY_LEN],
    /// The relay onion key (X25519 public, `B`) the client used.
    pub onion_key: [u8; KEY_LEN],
    /// The client's ephemeral X25519 public key `X`.
    pub client_pk: [u8; KEY_LEN],
}

impl Create {
    /// Bytes of the fixed prefix a reader needs to learn `cell_len`: command ‖ cell_len.
    pub const PREFIX_LEN: usize = 3;

    /// Encode as a full cell of `cell_len` bytes.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when `cell_len` is out of range.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let len = usize::from(self.cell_len);
        check_cell_len(len)?;
        let mut w = Writer::with_capacity(len);
        w.put_u8(CellCommand::Create as u8);
        w.put_u16(self.cell_len);
        w.put_u16(HANDSHAKE_NTOR_V1);
        w.put(&self.node_id);
        w.put(&self.onion_key);
        w.put(&self.client_pk);
        w.pad_to(len, "CREATE")?;
        Ok(w.into_vec())
    }

    /// Read `cell_len` from the first [`Create::PREFIX_LEN`] bytes of a leg.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the command is not `CREATE` or the length is out of range.
    pub fn peek_cell_len(prefix: &[u8; Self::PREFIX_LEN]) -> Result<usize, WireError> {
        let [cmd, hi, lo] = *prefix;
        if cmd != CellCommand::Create as u8 {
            return Err(invalid("cell command", "a leg must start with CREATE"));
        }
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        check_cell_len(len)?;
        Ok(len)
    }

    /// Decode a full `CREATE` cell (all `cell_len` bytes).
    ///
    /// # Errors
    /// [`WireError`] when truncated, the length field disagrees with the input, the
    /// handshake type is unknown or the padding is not zero.
    pub fn decode(cell: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(cell);
        if r.take_u8()? != CellCommand::Create as u8 {
            return Err(invalid("cell command", "expected CREATE"));
        }
        let cell_len = r.take_u16()?;
        check_cell_len(usize::from(cell_len))?;
        if usize::from(cell_len) != cell.len() {
            return Err(invalid("cell_len", "does not match the cell"));
        }
        if r.take_u16()? != HANDSHAKE_NTOR_V1 {
            return Err(invalid("handshake_type", "unknown handshake"));
        }
        let create = Create {
            cell_len,
            node_id: r.take_array()?,
            onion_key: r.take_array()?,
            client_pk: r.take_array()?,
        };
        r.finish_zero_padding("CREATE")?;
        Ok(create)
    }
}

/// The handshake type of a leg's first cell (bytes 3..5 of a `CREATE`), or `None` when
/// the cell is too short. Tells a relay whether a second cell (`CONTINUE`) follows.
pub fn create_handshake_type(cell: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*cell.get(3)?, *cell.get(4)?]))
}

/// Split `data` over a first cell `first ‖ data[..] ‖ zeros` and a `CONTINUE` cell
/// `0x05 ‖ rest ‖ zeros`, [`HYBRID_CELLS_LEN`] bytes in all.
fn two_cells(first: &[u8], data: &[u8]) -> Result<Vec<u8>, WireError> {
    let room = CELL_LEN - first.len();
    let (a, b) = data.split_at(room.min(data.len()));
    let mut w = Writer::with_capacity(HYBRID_CELLS_LEN);
    w.put(first);
    w.put(a);
    w.pad_to(CELL_LEN, "first cell")?;
    w.put_u8(CellCommand::Continue as u8);
    w.put(b);
    w.pad_to(HYBRID_CELLS_LEN, "CONTINUE")?;
    Ok(w.into_vec())
}

/// Read `len` bytes of handshake data from the two cells of [`two_cells`], the first
/// after `header` bytes; checks the `CONTINUE` command and the zero padding.
fn from_two_cells(cells: &[u8], header: usize, len: usize) -> Result<Vec<u8>, WireError> {
    if cells.len() != HYBRID_CELLS_LEN {
        return Err(invalid("two-cell handshake", "not exactly two cells"));
    }
    let (one, two) = cells.split_at(CELL_LEN);
    let in_first = (CELL_LEN - header).min(len);
    let mut data = one
        .get(header..header + in_first)
        .ok_or(invalid("two-cell handshake", "truncated"))?
        .to_vec();
    let mut r = Reader::new(two);
    if r.take_u8()? != CellCommand::Continue as u8 {
        return Err(invalid("cell command", "expected CONTINUE"));
    }
    data.extend_from_slice(r.take(len - in_first)?);
    r.finish_zero_padding("CONTINUE")?;
    let mut r1 = Reader::new(one.get(header + in_first..).unwrap_or_default());
    r1.finish_zero_padding("first cell")?;
    Ok(data)
}

/// A type-2 `CREATE` (§4.2): two cells, `0x01 ‖ cell_len u16 (1024) ‖ 0x0002 ‖ hello[..1019]`
/// then `0x05 ‖ hello[1019..] ‖ zero padding`, the hello being [`HYBRID_HELLO_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateHybrid {
    /// The client's hello (§5.4): `NODE_ID ‖ B ‖ X ‖ EK`.
    pub hello: Vec<u8>,
}

impl CreateHybrid {
    /// Encode as [`HYBRID_CELLS_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the hello is not [`HYBRID_HELLO_LEN`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.hello.len() != HYBRID_HELLO_LEN {
            return Err(invalid("hybrid hello", "not 1280 bytes"));
        }
        let mut head = vec![CellCommand::Create as u8];
        head.extend_from_slice(&(CELL_LEN as u16).to_be_bytes());
        head.extend_from_slice(&HANDSHAKE_HYBRID_V2.to_be_bytes());
        two_cells(&head, &self.hello)
    }

    /// Decode the two cells ([`HYBRID_CELLS_LEN`] bytes).
    ///
    /// # Errors
    /// [`WireError`] when the length, command, `cell_len`, handshake type, the `CONTINUE`
    /// command or the zero padding is wrong.
    pub fn decode(cells: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(cells);
        if r.take_u8()? != CellCommand::Create as u8 {
            return Err(invalid("cell command", "expected CREATE"));
        }
        check_cell_len(usize::from(r.take_u16()?))?;
        if r.take_u16()? != HANDSHAKE_HYBRID_V2 {
            return Err(invalid("handshake_type", "not the hybrid handshake"));
        }
        Ok(CreateHybrid {
            hello: from_two_cells(cells, 5, HYBRID_HELLO_LEN)?,
        })
    }
}

/// A type-2 `CREATED` (§4.3): two cells, `0x02 ‖ reply[..1023]` then
/// `0x05 ‖ reply[1023..] ‖ zero padding`, the reply being [`HYBRID_REPLY_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedHybrid {
    /// The relay's reply (§5.4): `Y ‖ CT ‖ AUTH`.
    pub reply: Vec<u8>,
}

impl CreatedHybrid {
    /// Encode as [`HYBRID_CELLS_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the reply is not [`HYBRID_REPLY_LEN`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.reply.len() != HYBRID_REPLY_LEN {
            return Err(invalid("hybrid reply", "not 1152 bytes"));
        }
        two_cells(&[CellCommand::Created as u8], &self.reply)
    }

    /// Decode the two cells ([`HYBRID_CELLS_LEN`] bytes).
    ///
    /// # Errors
    /// [`WireError`] when the length, a command or the zero padding is wrong.
    pub fn decode(cells: &[u8]) -> Result<Self, WireError> {
        if cells.first() != Some(&(CellCommand::Created as u8)) {
            return Err(invalid("cell command", "expected CREATED"));
        }
        Ok(CreatedHybrid {
            reply: from_two_cells(cells, 1, HYBRID_REPLY_LEN)?,
        })
    }
}

/// `CREATED` (§4.3): `0x02 ‖ server_pk [32] ‖ auth [32] ‖ zero padding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The relay's ephemeral X25519 public key `Y`.
    pub server_pk: [u8; KEY_LEN],
    /// The relay's proof that it holds the onion key (HMAC-SHA256, 32 bytes).
    pub auth: [u8; KEY_LEN],
}

impl Created {
    /// Encode as a cell of `cell_len` bytes.
    ///
    /// # Errors
    /// [`WireError::TooLong`] when `cell_len` < 65.
    pub fn encode(&self, cell_len: usize) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(cell_len);
        w.put_u8(CellCommand::Created as u8);
        w.put(&self.server_pk);
        w.put(&self.auth);
        w.pad_to(cell_len, "CREATED")?;
        Ok(w.into_vec())
    }

    /// Decode a full `CREATED` cell.
    ///
    /// # Errors
    /// [`WireError`] when truncated, of another command or badly padded.
    pub fn decode(cell: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(cell);
        if r.take_u8()? != CellCommand::Created as u8 {
            return Err(invalid("cell command", "expected CREATED"));
        }
        let created = Created {
            server_pk: r.take_array()?,
            auth: r.take_array()?,
        };
        r.finish_zero_padding("CREATED")?;
        Ok(created)
    }
}

/// Why a circuit is destroyed (the one-byte reason of `DESTROY`, Tor's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyReason {
    /// No reason given.
    None,
    /// A protocol violation: bad tag, wrong sequence number, malformed cell.
    Protocol,
    /// An internal error.
    Internal,
    /// The client asked for it.
    Requested,
    /// The relay is out of some resource (circuit or stream limit).
    ResourceLimit,
    /// The relay could not connect to the next hop.
    ConnectFailed,
    /// The next hop's identity did not match.
    OrIdentity,
    /// The link to a neighbour closed.
    ChannelClosed,
    /// The circuit finished normally.
    Finished,
    /// The circuit timed out.
    Timeout,
    /// Some other code, kept as received.
    Other(u8),
}

impl DestroyReason {
    /// The reason byte.
    pub fn to_byte(self) -> u8 {
        match self {
            DestroyReason::None => 0,
            DestroyReason::Protocol => 1,
            DestroyReason::Internal => 2,
            DestroyReason::Requested => 3,
            DestroyReason::ResourceLimit => 5,
            DestroyReason::ConnectFailed => 6,
            DestroyReason::OrIdentity => 7,
            DestroyReason::ChannelClosed => 8,
            DestroyReason::Finished => 9,
            DestroyReason::Timeout => 10,
            DestroyReason::Other(b) => b,
        }
    }

    /// The reason for a reason byte; unknown codes are kept as [`DestroyReason::Other`].
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => DestroyReason::None,
            1 => DestroyReason::Protocol,
            2 => DestroyReason::Internal,
            3 => DestroyReason::Requested,
            5 => DestroyReason::ResourceLimit,
            6 => DestroyReason::ConnectFailed,
            7 => DestroyReason::OrIdentity,
            8 => DestroyReason::ChannelClosed,
            9 => DestroyReason::Finished,
            10 => DestroyReason::Timeout,
            other => DestroyReason::Other(other),
        }
    }
}

/// `DESTROY` (§4.5): `0x04 ‖ reason u8 ‖ zero padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destroy {
    /// Why.
    pub reason: DestroyReason,
}

impl Destroy {
    /// Encode as a cell of `cell_len` bytes.
    ///
    /// # Errors
    /// [`WireError::TooLong`] when `cell_len` < 2.
    pub fn encode(&self, cell_len: usize) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(cell_len);
        w.put_u8(CellCommand::Destroy as u8);
        w.put_u8(self.reason.to_byte());
        w.pad_to(cell_len, "DESTROY")?;
        Ok(w.into_vec())
    }

    /// Decode a full `DESTROY` cell. Padding is not checked: a destroyed circuit is gone
    /// whatever the padding says.
    ///
    /// # Errors
    /// [`WireError`] when truncated or of another command.
    pub fn decode(cell: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(cell);
        if r.take_u8()? != CellCommand::Destroy as u8 {
            return Err(invalid("cell command", "expected DESTROY"));
        }
        Ok(Destroy {
            reason: DestroyReason::from_byte(r.take_u8()?),
        })
    }
}

/// Offsets inside a `RELAY` cell of length `cell_len` (§4.4):
/// `0x03 ‖ seq u64 ‖ tag [16] ‖ ciphertext (cell_len − 25)`, and the ciphertext decrypts to
/// `kind (1) ‖ inner (cell_len − 26)`.
pub mod relay_layout {
    use super::{SEQ_LEN, TAG_LEN};

    /// Offset of the sequence number.
    pub const SEQ: usize = 1;
    /// Offset of the tag.
    pub const TAG: usize = SEQ + SEQ_LEN;
    /// Offset of the ciphertext (and, once opened, of the kind byte).
    pub const BODY: usize = TAG + TAG_LEN;
    /// Offset of the inner bytes after the kind byte. For a `FORWARD` kind the next leg's cell
    /// is `[RELAY] ‖ cell[INNER..]`, i.e. `cell[BODY..]` with its first byte set to `0x03`.
    pub const INNER: usize = BODY + 1;
}

/// The kind byte that starts each opened onion layer (§4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LayerKind {
    /// The inner bytes are the next hop's layer: pass them on.
    Forward = 1,
    /// The inner bytes are a relay message for this hop (or, backward, from this hop).
    Deliver = 2,
}

impl LayerKind {
    /// The kind for a kind byte.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for any other byte.
    pub fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(LayerKind::Forward),
            2 => Ok(LayerKind::Deliver),
            _ => Err(invalid("layer kind", "neither FORWARD nor DELIVER")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> Create {
        Create {
            cell_len: 1024,
            node_id: [1; 32],
            onion_key: [2; 32],
            client_pk: [3; 32],
        }
    }

    #[test]
    fn create_round_trips_and_fills_the_cell() {
        let bytes = create().encode().unwrap();
        assert_eq!(bytes.len(), 1024);
        let prefix: [u8; 3] = bytes[..3].try_into().unwrap();
        assert_eq!(Create::peek_cell_len(&prefix).unwrap(), 1024);
        // Version 2 has one cell size: the version-1 lengths of later legs are refused.
        let mut v1 = create();
        v1.cell_len = 999;
        assert!(v1.encode().is_err());
        assert!(Create::peek_cell_len(&[1, 0x03, 0xe7]).is_err());
        assert_eq!(Create::decode(&bytes).unwrap(), create());
    }

    #[test]
    fn create_rejects_truncated_oversized_and_dirty_input() {
        let bytes = create().encode().unwrap();
        assert!(Create::decode(&bytes[..1023]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(Create::decode(&long).is_err());
        let mut dirty = bytes.clone();
        dirty[500] = 1;
        assert!(Create::decode(&dirty).is_err());
        assert!(Create::peek_cell_len(&[1, 0x04, 0x01]).is_err()); // 1025
        assert!(Create::peek_cell_len(&[1, 0, 255]).is_err());
        assert!(Create::peek_cell_len(&[3, 0x04, 0x00]).is_err());
        for n in 0..bytes.len() {
            let _ = Create::decode(&bytes[..n]);
        }
    }

    #[test]
    fn hybrid_create_and_created_take_two_cells_and_round_trip() {
        let hello: Vec<u8> = (0..HYBRID_HELLO_LEN).map(|i| (i % 251) as u8 + 1).collect();
        let c = CreateHybrid {
            hello: hello.clone(),
        };
        let cells = c.encode().unwrap();
        assert_eq!(cells.len(), 2 * CELL_LEN);
        assert_eq!(create_handshake_type(&cells), Some(HANDSHAKE_HYBRID_V2));
        assert_eq!(cells[CELL_LEN], CellCommand::Continue as u8);
        assert_eq!(CreateHybrid::decode(&cells).unwrap(), c);
        let reply: Vec<u8> = (0..HYBRID_REPLY_LEN).map(|i| (i % 13) as u8 + 1).collect();
        let d = CreatedHybrid { reply };
        let cells2 = d.encode().unwrap();
        assert_eq!(cells2.len(), 2 * CELL_LEN);
        assert_eq!(CreatedHybrid::decode(&cells2).unwrap(), d);
        // Wrong lengths, a missing CONTINUE, dirty padding: errors, never panics.
        assert!(CreateHybrid { hello: vec![1; 10] }.encode().is_err());
        let mut bad = cells.clone();
        bad[CELL_LEN] = CellCommand::Relay as u8;
        assert!(CreateHybrid::decode(&bad).is_err());
        let mut dirty = cells.clone();
        dirty[2 * CELL_LEN - 1] = 1;
        assert!(CreateHybrid::decode(&dirty).is_err());
        let mut dirty2 = cells2.clone();
        dirty2[2 * CELL_LEN - 1] = 1;
        assert!(CreatedHybrid::decode(&dirty2).is_err());
        for n in (0..cells.len()).step_by(97) {
            let _ = CreateHybrid::decode(&cells[..n]);
            let _ = CreatedHybrid::decode(&cells2[..n]);
        }
        assert!(Create::decode(&cells[..CELL_LEN]).is_err());
    }

    #[test]
    fn created_and_destroy_round_trip() {
        let c = Created {
            server_pk: [9; 32],
            auth: [8; 32],
        };
        let bytes = c.encode(256).unwrap();
        assert_eq!(bytes.len(), 256);
        assert_eq!(Created::decode(&bytes).unwrap(), c);
        assert!(Created::decode(&bytes[..40]).is_err());
        let d = Destroy {
            reason: DestroyReason::Protocol,
        };
        assert_eq!(Destroy::decode(&d.encode(256).unwrap()).unwrap(), d);
        assert_eq!(DestroyReason::from_byte(77), DestroyReason::Other(77));
    }
}
