//! The JSON shapes of the control API (`docs/control-api.md`).
//!
//! They mirror what `anonnet_client` reports (its `ClientStatus` and `ClientEvent`) without
//! depending on it, so the tray can use them alone. Deserialization is lenient in the
//! direction that keeps old readers working: unknown fields are ignored, missing ones take
//! their defaults, and an unknown event becomes [`Event::Unknown`].

use serde::{Deserialize, Serialize};

/// Bootstrap progress: a percentage and the name of the phase.
///
/// Phases reported by the client: 0 `starting`, 5 `fetching consensus`, 20 `consensus
/// loaded`, 40 `building first circuit`, 100 `ready`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bootstrap {
    /// 0..=100.
    pub percent: u8,
    /// Phase name.
    pub phase: String,
}

/// One circuit of the client (`GET /v1/circuits`, and inside [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitInfo {
    /// Local circuit number (unique while the daemon runs; never reused).
    pub id: u64,
    /// NodeIds (64 hex digits each) of guard, middle, exit.
    pub path: Vec<String>,
    /// Each relay's QUIC address (`IP:PORT`), in path order (empty from daemons older
    /// than this field).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Seconds since it was built.
    pub age_secs: f64,
    /// Build time in milliseconds.
    pub build_ms: f64,
    /// Streams open on it now.
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

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
    /// `RESOLVE` requests sent to exits (docs/protocol.md §6.2), answered or not; 0 from a
    /// daemon older than the field.
    #[serde(default)]
    pub resolves: u64,
    /// Of `streams_opened`, those opened optimistically: the request sent right behind
    /// `BEGIN` (docs/protocol.md §6.5); 0 from a daemon older than the field.
    #[serde(default)]
    pub optimistic_streams: u64,
    /// Guard → vanguard prefixes pre-built for hidden-service circuits (docs/protocol.md
    /// §9.4).
    #[serde(default)]
    pub hs_prefixes_built: u64,
    /// Of those, extended to a named relay instead of building a circuit from scratch.
    #[serde(default)]
    pub hs_prefixes_used: u64,
    /// Bytes sent to destinations.
    pub bytes_sent: u64,
    /// Bytes received from destinations.
    pub bytes_received: u64,
    /// Bytes received but not yet read by the application (all streams).
    pub buffered_bytes: u64,
    /// Hidden-service descriptor lookups, each through a circuit.
    pub hs_descriptor_fetches: u64,
    /// Connections to hidden services attempted.
    pub hs_connects: u64,
    /// Circuits closed because a relay sent a cell the client did not expect (an
    /// unnegotiated DROP, a cell for an unknown stream).
    pub unexpected_cells: u64,
}

/// A snapshot of the daemon (`GET /v1/status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Whether the proxies forward requests (`false` after `anonnet proxy off`).
    pub enabled: bool,
    /// Bootstrap progress.
    pub bootstrap: Bootstrap,
    /// Relays in the client's directory.
    pub relays: usize,
    /// Open circuits.
    pub circuits: Vec<CircuitInfo>,
    /// Streams open now.
    pub streams: usize,
    /// The persistent guard set (NodeIds, hex): first hops of every circuit.
    pub guards: Vec<String>,
    /// The vanguards: second hops of every hidden-service circuit (docs/protocol.md §9.4,
    /// "Vanguards-lite"); empty until the first such circuit.
    pub vanguards: Vec<Vanguard>,
    /// Relays avoided after repeated circuit failures.
    pub avoided_relays: Vec<AvoidedRelay>,
    /// Counters since start.
    pub counters: Counters,
    /// The consensus in use; `None` before the first one (docs/protocol.md §14.6).
    pub consensus: Option<ConsensusInfo>,
    /// Proof of work on introductions, one entry per hosted service that has it on
    /// (docs/protocol.md §13.9); empty without such services.
    pub hs_pow: Vec<HsPowInfo>,
}

/// Proof-of-work counters of one hosted service (inside [`Status`], protocol §13.9).
/// Counters are since the service started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HsPowInfo {
    /// The service's `.anon` address.
    pub address: String,
    /// The effort its descriptor suggests now.
    pub suggested_effort: u32,
    /// Introductions waiting in its queue now.
    pub queued: u64,
    /// Introductions taken from the queue to a rendezvous.
    pub served: u64,
    /// Introductions dropped, by reason: `queue_full` (lowest effort of a full queue),
    /// `timeout` (waited too long), `invalid` (the proof did not verify).
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Solutions seen before for the same seed (served as effort 0).
    pub replayed_solutions: u64,
    /// Served introductions by effort bucket: `"0"`, `"1-9"`, `"10-99"`, `"100-999"`,
    /// `"1000+"`.
    pub served_by_effort: std::collections::BTreeMap<String, u64>,
}

/// The consensus the client uses (inside [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsensusInfo {
    /// Start of validity (Unix seconds).
    pub valid_after: u64,
    /// The client fetches a newer one after this (Unix seconds).
    pub fresh_until: u64,
    /// The client refuses it at and after this (Unix seconds).
    pub valid_until: u64,
    /// Relays listed.
    pub relays: usize,
    /// Valid signatures by distinct authorities of the network.
    pub signatures: usize,
    /// The network's authorities.
    pub authorities: usize,
    /// `BLAKE3` of the consensus body, 64 hex digits: the same on every client that holds
    /// this consensus.
    pub digest: String,
}

/// A vanguard of the client (inside [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Vanguard {
    /// NodeId (hex).
    pub node_id: String,
    /// When it is replaced, unless it leaves the directory first (Unix seconds).
    pub expires: u64,
}

/// A relay the client avoids for a while after repeated failures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AvoidedRelay {
    /// NodeId (hex).
    pub node_id: String,
    /// Failures in a row.
    pub failures: u32,
    /// Seconds until it is tried again.
    pub retry_in_secs: f64,
}

/// Body of `POST /v1/proxy`, and its answer (the state after the call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRequest {
    /// `true` to forward requests, `false` to refuse every new one.
    pub enabled: bool,
}

/// Answer of an action that has nothing else to say (`POST /v1/new-identity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ack {
    /// Always `true` in a 200 answer.
    pub ok: bool,
}

/// One hidden service of the daemon (`GET /v1/services`).
///
/// Provisional: hidden services arrive with a later release and may add fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceInfo {
    /// The `.anon` address (56 base32 characters + `.anon`).
    pub address: String,
    /// Port on the `.anon` address.
    pub port: u16,
    /// The local server it forwards to, `IP:PORT`.
    pub target: String,
    /// Whether its descriptor is published.
    pub published: bool,
    /// Its `.dark` name (`name.dark`), empty when it has none.
    pub name: String,
    /// Introductions answered since it was started (protocol §13.4).
    pub introductions: u64,
    /// `INTRODUCE2`s refused as replays: their `E` was already accepted through the same
    /// introduction point (protocol §13.4).
    pub introductions_refused_replayed: u64,
    /// `INTRODUCE2`s refused because their `auth_key` was not that of the introduction
    /// circuit they arrived on (protocol §13.4).
    pub introductions_refused_wrong_auth_key: u64,
}

/// Body of `POST /v1/services/publish`.
///
/// Provisional: hidden services arrive with a later release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The local server to publish, `IP:PORT` (loopback), e.g. `127.0.0.1:8080`.
    pub target: String,
    /// Port on the `.anon` address; default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Body of `POST /v1/services/unpublish`.
///
/// Provisional: hidden services arrive with a later release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpublishRequest {
    /// The `.anon` address to take down.
    pub address: String,
}

/// Body of every error answer (4xx, 5xx).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    /// What went wrong, one line, for people.
    pub error: String,
    /// The kind of failure, for programs: an `anonnet_error::ErrorKind` name
    /// (`"bad_request"`, `"not_found"`, `"not_implemented"`, …; empty from a daemon older
    /// than the field). Front ends decide from this, never from `error`'s words.
    pub kind: String,
}

/// One line of the event stream (`GET /v1/events`): a JSON object tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Bootstrap progress changed: `{"event":"bootstrap","percent":40,"phase":"…"}`.
    Bootstrap(Bootstrap),
    /// A circuit was built.
    CircuitBuilt {
        /// Local circuit number.
        id: u64,
        /// NodeIds (hex), guard first.
        path: Vec<String>,
        /// Build time in milliseconds.
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
    /// "New identity": every circuit was retired.
    NewIdentity,
    /// Something failed.
    Error {
        /// What, one line.
        message: String,
    },
    /// This reader fell behind and `missed` events were dropped for it (the daemon never
    /// waits for a slow reader). Re-read `GET /v1/status` to resynchronise.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
    /// An event this version does not know (a newer daemon). Ignore it.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_json_round_trips_with_the_documented_field_names() {
        let status = Status {
            enabled: true,
            bootstrap: Bootstrap {
                percent: 100,
                phase: "ready".into(),
            },
            relays: 5,
            circuits: vec![CircuitInfo {
                id: 7,
                path: vec!["aa".repeat(32), "bb".repeat(32), "cc".repeat(32)],
                addresses: vec![
                    "10.1.0.1:4000".into(),
                    "10.2.0.1:4000".into(),
                    "10.3.0.1:4000".into(),
                ],
                age_secs: 12.5,
                build_ms: 3.25,
                streams: 1,
                state: "in use".into(),
                handshakes: vec!["x25519+mlkem768".into(); 3],
                protocol: 2,
            }],
            streams: 1,
            guards: vec!["ab".repeat(32)],
            vanguards: vec![Vanguard {
                node_id: "ef".repeat(32),
                expires: 1_000_000,
            }],
            avoided_relays: Vec::new(),
            counters: Counters {
                circuits_built: 4,
                streams_opened: 2,
                bytes_received: 1024,
                ..Counters::default()
            },
            hs_pow: Vec::new(),
            consensus: Some(ConsensusInfo {
                valid_after: 100,
                fresh_until: 104,
                valid_until: 112,
                relays: 5,
                signatures: 3,
                authorities: 3,
                digest: "cd".repeat(32),
            }),
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["consensus"]["signatures"], 3);
        assert_eq!(v["consensus"]["valid_until"], 112);
        assert_eq!(v["bootstrap"], json!({"percent": 100, "phase": "ready"}));
        assert_eq!(v["circuits"][0]["state"], "in use");
        assert_eq!(v["counters"]["bytes_received"], 1024);
        assert_eq!(v["counters"]["circuits_built_on_demand"], 0);
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn status_from_an_older_or_newer_daemon_still_parses() {
        let s: Status = serde_json::from_str(
            r#"{"enabled":false,"bootstrap":{"percent":40,"phase":"building first circuit"},
                "some_future_field":[1,2]}"#,
        )
        .unwrap();
        assert!(!s.enabled);
        assert_eq!(s.bootstrap.percent, 40);
        assert!(s.circuits.is_empty());
        assert_eq!(s.counters, Counters::default());
    }

    #[test]
    fn events_are_tagged_by_event() {
        let cases = [
            (
                Event::Bootstrap(Bootstrap {
                    percent: 40,
                    phase: "building first circuit".into(),
                }),
                json!({"event": "bootstrap", "percent": 40, "phase": "building first circuit"}),
            ),
            (
                Event::CircuitBuilt {
                    id: 3,
                    path: vec!["ab".into()],
                    build_ms: 2.5,
                },
                json!({"event": "circuit_built", "id": 3, "path": ["ab"], "build_ms": 2.5}),
            ),
            (
                Event::CircuitClosed { id: 3 },
                json!({"event": "circuit_closed", "id": 3}),
            ),
            (
                Event::ProxyEnabled { enabled: false },
                json!({"event": "proxy_enabled", "enabled": false}),
            ),
            (Event::NewIdentity, json!({"event": "new_identity"})),
            (
                Event::Error {
                    message: "x".into(),
                },
                json!({"event": "error", "message": "x"}),
            ),
            (
                Event::Lagged { missed: 9 },
                json!({"event": "lagged", "missed": 9}),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(serde_json::to_value(&event).unwrap(), expected);
            let back: Event = serde_json::from_value(expected).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn unknown_event_is_tolerated() {
        let e: Event =
            serde_json::from_str(r#"{"event":"service_published","address":"x.anon"}"#).unwrap();
        assert_eq!(e, Event::Unknown);
    }

    #[test]
    fn request_bodies_reject_unknown_fields() {
        assert!(
            serde_json::from_str::<ProxyRequest>(r#"{"enabled":true}"#)
                .unwrap()
                .enabled
        );
        assert!(serde_json::from_str::<ProxyRequest>(r#"{"enable":true}"#).is_err());
        assert!(serde_json::from_str::<ProxyRequest>(r#"{}"#).is_err());
        let p: PublishRequest = serde_json::from_str(r#"{"target":"127.0.0.1:8080"}"#).unwrap();
        assert_eq!(p.port, None);
    }
}
