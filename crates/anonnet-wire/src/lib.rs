#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod cell;
pub mod descriptor;
pub mod dht;
pub mod flow;
pub mod hs;
pub mod reader;
pub mod relay;

pub use cell::{
    create_handshake_type, CellCommand, Create, CreateHybrid, Created, CreatedHybrid, Destroy,
    DestroyReason, BACKWARD_MESSAGE_MAX, CELL_LEN, FORWARD_MESSAGE_MAX, HANDSHAKE_HYBRID_V2,
    HANDSHAKE_NTOR_V1, HYBRID_CELLS_LEN, HYBRID_HELLO_LEN, HYBRID_REPLY_LEN, LAYER_OVERHEAD,
    MAX_CELL_LEN, MAX_LAYERS, MESSAGE_AREA, MIN_CELL_LEN, MIN_PADDING,
};
pub use descriptor::{HandshakeSet, PortRange, RelayDescriptor, SignedDescriptor};
pub use reader::{Reader, Writer};
pub use relay::{
    EndReason, RelayCell, RelayMsg, ResolvedAnswer, StreamId, Target, RELAY_HEADER_LEN,
};

/// Errors from decoding (or, rarely, encoding) wire data. Returned for any malformed input;
/// the caller drops the circuit or record, nothing else.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before the field that was being read (`needed` more bytes).
    #[error("truncated input: {needed} more byte(s) needed")]
    Truncated {
        /// How many more bytes the field needed.
        needed: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Input was longer than the layout allows (trailing bytes that must not be there).
    #[error("{0} trailing byte(s)")]
    Trailing(usize),
    /// An encoder was given more data than fits in the space it must fill.
    #[error("{what} does not fit: {len} bytes into {room}")]
    TooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The room available in bytes.
        room: usize,
    },
}

pub(crate) fn invalid(field: &'static str, why: &'static str) -> WireError {
    WireError::Invalid { field, why }
}

impl anonnet_error::HasKind for WireError {
    /// Bytes that do not decode come from a peer (or a damaged file): always
    /// [`anonnet_error::ErrorKind::Protocol`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::Protocol
    }
}
