//! What the client reports about itself: bootstrap progress, circuits, counters, events.
//! These are the shapes the control API serves (`docs/control-api.md`).

use serde::Serialize;

/// Bootstrap progress: a percentage and the name of the phase.
///
/// Phases: 0 `starting`, 5 `fetching consensus` (none saved, or the last one expired),
/// 20 `consensus loaded` (or `directory loaded` without a network), 40 `building first
/// circuit`, 100 `ready` (a circuit is built; SOCKS requests are served); back to 40
/// `not ready: N of M relays unreachable` when, after being ready, pool circuits keep
/// failing (`docs/protocol.md` §9.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bootstrap {
    /// 0..=100.
    pub percent: u8,
    /// Phase name.
    pub phase: String,
}

impl Bootstrap {
    pub(crate) fn new(percent: u8, phase: &str) -> Self {
        Bootstrap {
            percent,
            phase: phase.to_owned(),
        }
    }
}

/// One circuit as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitInfo {
    /// Local circuit number.
    pub id: u64,
    /// NodeIds (hex) of guard, middle, exit.
    pub path: Vec<String>,
    /// The relays' QUIC addresses (`IP:PORT`), in path order.
    pub addresses: Vec<String>,
    /// Seconds since it was built.
    pub age_secs: f64,
    /// Build time (milliseconds).
    pub build_ms: f64,
    /// Streams open on it.
    pub streams: usize,
    /// `clean` (pre-built, unused), `in use`, or `retired` (takes no new streams: too old,
    /// or a new identity was asked for).
    pub state: String,
    /// The circuit handshake of each hop, in path order: `"x25519+mlkem768"` (hybrid,
    /// protocol §5.4) or `"x25519"` (classical, §5.1).
    pub handshakes: Vec<String>,
    /// The anonnet protocol version the circuit speaks (2).
    pub protocol: u8,
}

/// A snapshot of the client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    /// Whether the proxy forwards requests (false after "proxy off").
    pub enabled: bool,
    /// Bootstrap progress.
    pub bootstrap: Bootstrap,
    /// Relays in the directory.
    pub relays: usize,
    /// Open circuits.
    pub circuits: Vec<CircuitInfo>,
    /// Streams open now.
    pub streams: usize,
    /// The persistent guard set (NodeIds, hex): first hops of every circuit.
    pub guards: Vec<String>,
    /// The vanguards (§9.4): second hops of every hidden-service
    /// circuit, with when each is replaced (Unix seconds). Empty until the first such
    /// circuit.
    pub vanguards: Vec<crate::vanguards::VanguardInfo>,
    /// Relays avoided after repeated failures, with their backoff.
    pub avoided_relays: Vec<crate::guards::AvoidedRelay>,
    /// Counters since start.
    pub counters: Counters,
    /// The consensus in use (`None` before the first one, or without a network).
    pub consensus: Option<crate::consensus::ConsensusStatus>,
}

/// Counters since the client started.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Circuits built (pool and on demand).
    pub circuits_built: u64,
    /// Of those, built because a request found no usable circuit (the request waited).
    pub circuits_built_on_demand: u64,
    /// Circuit builds that failed.
    pub circuit_build_failures: u64,
    /// Streams opened.
    pub streams_opened: u64,
    /// Stream requests refused or failed.
    pub stream_failures: u64,
    /// `RESOLVE` requests sent to exits (§6.2), answered or not.
    pub resolves: u64,
    /// Of the streams opened, those opened optimistically (request sent right behind
    /// `BEGIN`, §6.5).
    pub optimistic_streams: u64,
    /// Guard → vanguard prefixes pre-built for hidden-service circuits (§9.4).
    pub hs_prefixes_built: u64,
    /// Of those, extended to a named relay (a descriptor fetch, an introduction, a
    /// service's rendezvous) instead of building a circuit from scratch.
    pub hs_prefixes_used: u64,
    /// Bytes sent to destinations.
    pub bytes_sent: u64,
    /// Bytes received from destinations.
    pub bytes_received: u64,
    /// Bytes received but not yet read by the application (all streams).
    pub buffered_bytes: u64,
    /// Hidden-service descriptor lookups, each through a circuit (§13.6).
    pub hs_descriptor_fetches: u64,
    /// Connections to hidden services attempted.
    pub hs_connects: u64,
    /// Circuits closed because a relay sent a cell this client did not expect (an
    /// unnegotiated DROP, a cell for an unknown stream: docs/protocol.md §6.6).
    pub unexpected_cells: u64,
}

/// Something that happened, for the control API's event stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientEvent {
    /// Bootstrap progress changed.
    Bootstrap(Bootstrap),
    /// A circuit was built.
    CircuitBuilt {
        /// Local circuit number.
        id: u64,
        /// NodeIds (hex), guard first.
        path: Vec<String>,
        /// Build time (milliseconds).
        build_ms: f64,
    },
    /// A circuit closed.
    CircuitClosed {
        /// Local circuit number.
        id: u64,
    },
    /// Proxying was switched on or off.
    ProxyEnabled {
        /// The new state.
        enabled: bool,
    },
    /// All circuits were retired.
    NewIdentity,
    /// Something failed.
    Error {
        /// What.
        message: String,
    },
}
