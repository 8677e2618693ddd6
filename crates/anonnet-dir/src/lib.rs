#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod consensus;
pub mod document;
pub mod entry;
pub mod flags;
pub mod hsdir;
pub mod msg;
pub mod network;
pub mod srv;

pub use consensus::compute_consensus;
pub use document::{
    Consensus, ConsensusSignature, SignedConsensus, SignedVote, Vote, MAX_CONSENSUS_LEN,
};
pub use entry::{RelayEntry, RelayFlags};
pub use flags::{FlagThresholds, RelayHistory};
pub use hsdir::{HsDirPlacement, HsDirRing};
pub use msg::{DirMessage, UploadStatus, DIR_STREAM_TAG};
pub use network::{AuthorityEntry, Network, NetworkError};

/// Errors from decoding or checking directory documents. A client that gets one keeps the
/// consensus it had; an authority drops the vote or upload.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirError {
    /// The bytes are malformed (truncated, bad field, trailing bytes, too long).
    #[error("malformed directory document: {0}")]
    Wire(#[from] anonnet_wire::WireError),
    /// The document names another network (its `network_id` differs from ours).
    #[error("document is for another network")]
    WrongNetwork,
    /// A vote's signer, or a signature's authority, is not one of the network's
    /// authorities.
    #[error("signer {0} is not an authority of this network")]
    UnknownAuthority(String),
    /// A signature did not verify.
    #[error("bad signature by {0}")]
    BadSignature(String),
    /// Fewer valid signatures from distinct authorities than the network's majority.
    #[error("consensus signed by {valid} of {authorities} authorities; more than half needed")]
    TooFewSignatures {
        /// Valid signatures from distinct authorities of the network.
        valid: usize,
        /// The network's authorities.
        authorities: usize,
    },
    /// Outside its validity window: `now` is before `valid_after` (beyond the allowed clock
    /// skew) or at or after `valid_until`.
    #[error("consensus not valid now ({now}): valid {valid_after}..{valid_until}")]
    NotValidNow {
        /// The time checked (Unix seconds).
        now: u64,
        /// Start of validity (Unix seconds).
        valid_after: u64,
        /// End of validity (Unix seconds).
        valid_until: u64,
    },
    /// The votes given to [`compute_consensus`] disagree on the period, or there are none.
    #[error("votes disagree: {0}")]
    Votes(&'static str),
}

/// Seconds a consensus may be dated ahead of the checker's clock and still be accepted.
pub const MAX_CLOCK_SKEW: u64 = 300;

fn invalid(field: &'static str, why: &'static str) -> anonnet_wire::WireError {
    anonnet_wire::WireError::Invalid { field, why }
}

impl anonnet_error::HasKind for DirError {
    /// A directory document that does not verify came from an authority, a relay or a
    /// damaged cache file: [`anonnet_error::ErrorKind::Protocol`]; one not valid now
    /// (often this machine's clock) is [`anonnet_error::ErrorKind::NotReady`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            DirError::NotValidNow { .. } => anonnet_error::ErrorKind::NotReady,
            _ => anonnet_error::ErrorKind::Protocol,
        }
    }
}
