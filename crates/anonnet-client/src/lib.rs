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

pub use circuit::{
    Circuit, CircuitError, CircuitPrefix, DataStream, HandshakeFailure, StreamError,
};
pub use directory::{Directory, PathError, PathRequest};
pub use host::{HostedService, ServiceConfig, ServiceError};
pub use hs::{HsFailure, HsStep};
pub use pool::{Client, ClientConfig, IsolationKey};
pub use status::{Bootstrap, CircuitInfo, ClientEvent, ClientStatus, Counters};

/// The error vocabulary shared by every crate (`anonnet-error`): front ends choose the
/// SOCKS reply code, HTTP status, exit status and the words shown to people from the
/// kind, never from a message string.
pub use anonnet_error::{ErrorKind, HasKind};

/// Errors of the client API.
#[derive(Debug, thiserror::Error, Clone)]
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
    /// The QUIC endpoint could not be created (the UDP socket could not be bound, say).
    #[error("client endpoint: {0}")]
    Endpoint(#[source] std::sync::Arc<anonnet_net::NetError>),
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

impl HasKind for ClientError {
    /// Not ready (no consensus, too few relays), the endpoint's, path's, circuit's,
    /// stream's or hidden service's own kind, [`ErrorKind::BadRequest`] for a malformed
    /// destination, [`ErrorKind::Disabled`] while proxying is off.
    fn kind(&self) -> ErrorKind {
        match self {
            ClientError::NotEnoughRelays { .. } | ClientError::NoConsensus => ErrorKind::NotReady,
            ClientError::Endpoint(e) => e.as_ref().kind(),
            ClientError::Path(e) => e.kind(),
            ClientError::Circuit(e) => e.kind(),
            ClientError::Stream(e) => e.kind(),
            ClientError::BadTarget(_) => ErrorKind::BadRequest,
            ClientError::Disabled => ErrorKind::Disabled,
            ClientError::HiddenService(f) => f.kind(),
        }
    }
}

impl HasKind for PathError {
    /// [`ErrorKind::ExitPolicy`] when no exit allows the port, else
    /// [`ErrorKind::NotReady`] (too few relays to choose from).
    fn kind(&self) -> ErrorKind {
        match self {
            PathError::NoExitForPort(_) => ErrorKind::ExitPolicy,
            _ => ErrorKind::NotReady,
        }
    }
}

impl HasKind for CircuitError {
    /// [`ErrorKind::Timeout`] for a build that took too long, [`ErrorKind::Protocol`]
    /// for a hop that broke the protocol, [`ErrorKind::Busy`] for a circuit out of
    /// stream ids, else [`ErrorKind::CircuitFailed`].
    fn kind(&self) -> ErrorKind {
        match self {
            CircuitError::Timeout => ErrorKind::Timeout,
            CircuitError::Protocol(_)
            | CircuitError::Unrecognised(_)
            | CircuitError::Malformed(_) => ErrorKind::Protocol,
            CircuitError::TooManyStreams => ErrorKind::Busy,
            _ => ErrorKind::CircuitFailed,
        }
    }
}

impl HasKind for StreamError {
    /// The exit's `END` reason (§7.3: policy, refused, unresolvable or unreachable,
    /// timeout), [`ErrorKind::Timeout`] for no answer, else the circuit's kind.
    fn kind(&self) -> ErrorKind {
        match self {
            StreamError::Timeout => ErrorKind::Timeout,
            StreamError::Circuit(e) => e.kind(),
            StreamError::Refused(reason) => match reason {
                EndReason::ExitPolicy => ErrorKind::ExitPolicy,
                EndReason::ConnectRefused => ErrorKind::ConnectionRefused,
                EndReason::ResolveFailed | EndReason::NoRoute => ErrorKind::HostUnreachable,
                EndReason::Timeout => ErrorKind::Timeout,
                EndReason::ResourceLimit => ErrorKind::Busy,
                _ => ErrorKind::CircuitFailed,
            },
        }
    }
}

impl HasKind for HsFailure {
    /// A malformed address or name is [`ErrorKind::BadRequest`]; no descriptor, no
    /// believable name record or no answering introduction point
    /// [`ErrorKind::HostUnreachable`]; a service that never came to the rendezvous
    /// [`ErrorKind::Timeout`]; a changed owner key [`ErrorKind::NotAllowed`].
    fn kind(&self) -> ErrorKind {
        match self {
            HsFailure::BadAddress(_) | HsFailure::BadName(_) => ErrorKind::BadRequest,
            HsFailure::NoDescriptor(_) | HsFailure::UnknownName(_) | HsFailure::Introduction(_) => {
                ErrorKind::HostUnreachable
            }
            HsFailure::Rendezvous(_) => ErrorKind::Timeout,
            HsFailure::OwnerChanged { .. } => ErrorKind::NotAllowed,
        }
    }
}

impl HasKind for ServiceError {
    /// A key file that cannot be read or written: the I/O error's kind; not private:
    /// [`ErrorKind::Permission`]; of the wrong size or with no randomness for a new one:
    /// [`ErrorKind::LocalResource`]; a name that is not allowed [`ErrorKind::Config`].
    fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::KeyIo { source, .. } => HasKind::kind(source),
            ServiceError::KeyUntrusted { source, .. } => source.kind(),
            ServiceError::KeySize { .. } | ServiceError::KeyGenerate { .. } => {
                ErrorKind::LocalResource
            }
            ServiceError::Name { .. } => ErrorKind::Config,
        }
    }
}
