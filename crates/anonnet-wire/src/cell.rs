//! Link cells: the fixed-size units carried on one leg of a circuit (one QUIC bidirectional
//! stream between two adjacent nodes). Spec: `docs/protocol.md` §4 "Cells".
//!
//! Every cell on a leg has the same length, `cell_len`, fixed by the `CREATE` cell that
//! opens the leg: `command (1) ‖ body (cell_len − 1)`. A leg one hop further from the client
//! carries cells [`LAYER_OVERHEAD`] bytes shorter, because each hop removes its onion layer.

use crate::{invalid, Reader, WireError, Writer};

/// Length in bytes of the cells on the first leg (client → guard).
///
/// 1024 bytes: one cell always fits a QUIC packet at the minimum 1200-byte MTU, and the
/// per-call cost of ChaCha20-Poly1305 (ring: ~830 MB/s at 512 bytes, ~1.4 GB/s at 16 KiB on
/// the reference machine) is amortised over twice Tor's 509-byte payload.
pub const CELL_LEN: usize = 1024;
/// Smallest `cell_len` a relay accepts in `CREATE` (bytes). Room for a `CREATE` and an
/// `EXTEND` relay message behind one onion layer.
pub const MIN_CELL_LEN: usize = 256;
/// Largest `cell_len` a relay accepts in `CREATE` (bytes).
pub const MAX_CELL_LEN: usize = CELL_LEN;
/// Bytes one onion layer adds to a `RELAY` cell: sequence number (8) ‖ tag (16) ‖ kind (1).
pub const LAYER_OVERHEAD: usize = SEQ_LEN + TAG_LEN + 1;
/// Length of the explicit per-layer sequence number (bytes, big-endian `u64`).
pub const SEQ_LEN: usize = 8;
/// Length of the ChaCha20-Poly1305 tag (bytes).
pub const TAG_LEN: usize = 16;
/// Length of an X25519 public key or a node identity digest in the handshake (bytes).
pub const KEY_LEN: usize = 32;
/// Handshake type number of the ntor-style X25519 + HKDF-SHA256 handshake (§5).
pub const HANDSHAKE_NTOR_V1: u16 = 1;

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
        Err(invalid("cell_len", "outside 256..=1024"))
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
            cell_len: 999,
            node_id: [1; 32],
            onion_key: [2; 32],
            client_pk: [3; 32],
        }
    }

    #[test]
    fn create_round_trips_and_fills_the_cell() {
        let bytes = create().encode().unwrap();
        assert_eq!(bytes.len(), 999);
        let prefix: [u8; 3] = bytes[..3].try_into().unwrap();
        assert_eq!(Create::peek_cell_len(&prefix).unwrap(), 999);
        assert_eq!(Create::decode(&bytes).unwrap(), create());
    }

    #[test]
    fn create_rejects_truncated_oversized_and_dirty_input() {
        let bytes = create().encode().unwrap();
        assert!(Create::decode(&bytes[..998]).is_err());
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
