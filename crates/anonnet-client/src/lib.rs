#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod circuit;
pub mod consensus;
pub mod directory;
pub mod guards;
pub mod host;
pub mod hs;
pub mod hs_pow;
mod hsdir;
mod pool;
pub mod presence;
#[cfg(test)]
mod sim_days;
pub mod status;
pub mod vanguards;

use anonnet_wire::EndReason;

pub use circuit::{Circuit, CircuitError, CircuitPrefix, DataStream, StreamError};
pub use directory::{Directory, PathError, PathRequest};
pub use host::{HostedService, ServiceConfig, ServiceError};
pub use hs::HsFailure;
pub use pool::{Client, ClientConfig, IsolationKey};
pub use status::{Bootstrap, CircuitInfo, ClientEvent, ClientStatus, Counters};

/// What kind of failure an error is, whatever its source. Front ends choose the SOCKS reply
/// code, HTTP status and the words shown to people from this, never from a message string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The exit policy does not allow the destination.
    ExitPolicy,
    /// The destination refused the connection.
    ConnectionRefused,
    /// The exit could not resolve or reach the host.
    HostUnreachable,
    /// A step timed out (building, connecting).
    Timeout,
    /// No circuit could be built or the circuit failed.
    CircuitFailed,
    /// The client has no usable relays yet.
    NotReady,
    /// The destination or request is malformed.
    BadRequest,
    /// Proxying is switched off ("proxy off"): nothing is sent anywhere.
    Disabled,
    /// The request is refused here on purpose (a `.dark` name whose owner key changed).
    NotAllowed,
    /// Something else went wrong at the exit or here.
    Other,
}

/// Errors of the client API.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// Too few usable relay descriptors to build a circuit.
    #[error("only {usable} usable relay descriptor(s); at least 3 are needed")]
    NotEnoughRelays {
        /// How many verified.
        usable: usize,
    },
    /// No path could be chosen.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Building a circuit failed every attempt.
    #[error("could not build a circuit: {0}")]
    Circuit(#[from] CircuitError),
    /// The stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The QUIC endpoint could not be created.
    #[error("client endpoint: {0}")]
    Endpoint(String),
    /// The destination is malformed.
    #[error("bad destination: {0}")]
    BadTarget(String),
    /// Proxying is switched off.
    #[error("proxying is switched off (anonnet proxy on)")]
    Disabled,
    /// No valid consensus: none fetched yet, or the last one passed its `valid_until` and
    /// no authority, guard or fallback gave a newer one (§14.6). The client keeps asking.
    #[error("no valid consensus yet: the client is still fetching one from the directory authorities (bootstrapping)")]
    NoConsensus,
    /// A hidden-service connection failed (§13).
    #[error(transparent)]
    HiddenService(#[from] HsFailure),
}

impl ClientError {
    /// The kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::NotEnoughRelays { .. }
            | ClientError::Endpoint(_)
            | ClientError::NoConsensus => ErrorKind::NotReady,
            ClientError::Path(PathError::NoExitForPort(_)) => ErrorKind::ExitPolicy,
            ClientError::Path(_) => ErrorKind::NotReady,
            ClientError::Circuit(CircuitError::Timeout) => ErrorKind::Timeout,
            ClientError::Circuit(_) => ErrorKind::CircuitFailed,
            ClientError::Stream(StreamError::Timeout) => ErrorKind::Timeout,
            ClientError::Stream(StreamError::Circuit(_)) => ErrorKind::CircuitFailed,
            ClientError::Stream(StreamError::Refused(reason)) => match reason {
                EndReason::ExitPolicy => ErrorKind::ExitPolicy,
                EndReason::ConnectRefused => ErrorKind::ConnectionRefused,
                EndReason::ResolveFailed | EndReason::NoRoute => ErrorKind::HostUnreachable,
                EndReason::Timeout => ErrorKind::Timeout,
                _ => ErrorKind::Other,
            },
            ClientError::BadTarget(_) => ErrorKind::BadRequest,
            ClientError::Disabled => ErrorKind::Disabled,
            ClientError::HiddenService(f) => match f {
                HsFailure::BadAddress(_) | HsFailure::BadName(_) => ErrorKind::BadRequest,
                HsFailure::NoDescriptor(_)
                | HsFailure::UnknownName(_)
                | HsFailure::Introduction(_) => ErrorKind::HostUnreachable,
                HsFailure::Rendezvous(_) => ErrorKind::Timeout,
                HsFailure::OwnerChanged { .. } => ErrorKind::NotAllowed,
            },
        }
    }
}
