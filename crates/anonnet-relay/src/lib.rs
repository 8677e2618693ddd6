#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod circuit;
pub mod directory;
pub mod exit_policy;
mod hs;
pub mod keystore;
pub mod onion_keys;
mod records;
mod squat;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anonnet_crypto::{IdentityKey, NodeId, OnionKey};
use anonnet_dht::{Contact, RoutingTable, StorageLimits};
use anonnet_dht_node::DhtNode;
use anonnet_net::{Endpoint, InboundLimits, Link, LinkManager};
use anonnet_wire::descriptor::{FLAG_EXIT, FLAG_GUARD};
use anonnet_wire::dht::DHT_STREAM_TAG;
use anonnet_wire::{HandshakeSet, RelayDescriptor, SignedDescriptor};
use onion_keys::{OnionKeyConfig, OnionKeyRing};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

pub use exit_policy::{Action, ExitPolicy, ExitRule};
pub use records::{DHT_RECORDS_FILE, HSDIR_RECORDS_FILE, RECORDS_SAVE_EVERY};

/// How long a relay does not dial again a neighbour (at the same address) whose dial
/// failed or whose link timed out: `EXTEND`s towards it are answered `TRUNCATED`
/// (`ConnectFailed`) at once meanwhile (docs/protocol.md §10, "Unreachable peers"), 10 s.
pub const UNREACHABLE_MEMORY: Duration = Duration::from_secs(10);
/// How long a relay descriptor is valid (seconds): 24 hours.
pub const DESCRIPTOR_LIFETIME: u64 = 24 * 3600;
/// When the descriptor is signed again with fresh times, rewritten and published (§15):
/// when 23 of its 24 hours of validity are left by the wall clock or by the monotonic
/// time since it was signed (hourly while the clocks agree). Checked every second, so a
/// wall-clock jump is repaired at once.
pub const DESCRIPTOR_REFRESH: anonnet_clock::Refresh = anonnet_clock::Refresh::new(
    Duration::from_secs(DESCRIPTOR_LIFETIME),
    Duration::from_secs(23 * 3600),
);
/// Longest time between two checks whether the onion key is due for rotation or the
/// previous one's grace has ended: 1 hour (sooner when the rotation is due sooner).
pub const ONION_KEY_CHECK: Duration = Duration::from_secs(3600);

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A key file or the data directory is unusable.
    #[error("key store {path}: {why}")]
    Keys {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The QUIC endpoint could not be set up (e.g. the port is taken).
    #[error(transparent)]
    Net(#[from] anonnet_net::NetError),
    /// A key file or the data directory is not private enough (fs-mistrust's verdict).
    #[error("key store {path}: {source}")]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// Why it is refused.
        source: anonnet_state::PrivateError,
    },
    /// The listen address is unspecified (`0.0.0.0`/`::`) and no `advertise` is set:
    /// other relays could not dial what the descriptor would say.
    #[error("listen address {listen} is unspecified; set `advertise` to a reachable address")]
    Unadvertised {
        /// The bound address.
        listen: SocketAddr,
    },
    /// The descriptor could not be signed (§4.2).
    #[error("relay descriptor: {0}")]
    Descriptor(#[from] anonnet_crypto::descriptor::DescriptorError),
    /// The descriptor could not be encoded (a field too long for §4.2).
    #[error("relay descriptor: {0}")]
    DescriptorEncoding(#[from] anonnet_wire::WireError),
    /// Saving a state file (descriptor, stats, DHT table, cached consensus) failed; the
    /// old file is left whole.
    #[error("cannot save {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl anonnet_error::HasKind for RelayError {
    /// Key files: [`anonnet_error::ErrorKind::Permission`] when not private,
    /// [`anonnet_error::ErrorKind::LocalResource`] when unreadable or unwritable; the
    /// endpoint by its own kind; no address to advertise
    /// [`anonnet_error::ErrorKind::Config`]; a descriptor by its kind; a state file by
    /// its I/O kind.
    fn kind(&self) -> anonnet_error::ErrorKind {
        use anonnet_error::HasKind;
        match self {
            RelayError::Keys { .. } => anonnet_error::ErrorKind::LocalResource,
            RelayError::Untrusted { source, .. } => source.kind(),
            RelayError::Net(e) => e.kind(),
            RelayError::Unadvertised { .. } => anonnet_error::ErrorKind::Config,
            RelayError::Descriptor(e) => e.kind(),
            RelayError::DescriptorEncoding(e) => e.kind(),
            RelayError::Write { source, .. } => HasKind::kind(source),
        }
    }
}

/// Resource limits and timers of a relay (`docs/protocol.md` §8.4).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Circuits open at once through this relay; further `CREATE`s get `DESTROY`
    /// (RESOURCELIMIT).
    pub max_circuits: usize,
    /// Exit streams open at once on one circuit; further `BEGIN`s get `END` (RESOURCELIMIT).
    pub max_streams_per_circuit: usize,
    /// Time an exit may spend resolving and connecting a stream.
    pub connect_timeout: Duration,
    /// QUIC links kept to other relays.
    pub max_links: usize,
    /// Introduction-point registrations held at once (§13.2); further `ESTABLISH_INTRO`s
    /// lose their circuit (RESOURCELIMIT).
    pub max_intro_points: usize,
    /// Client circuits waiting at this rendezvous point at once (§13.3).
    pub max_pending_rendezvous: usize,
    /// DHT requests run at once on behalf of circuits (§13.6); more get
    /// `DHT_RESULT` UNAVAILABLE.
    pub max_dht_requests: usize,
    /// Inbound QUIC links at once; further connections are refused before their
    /// handshake (§8.4).
    pub max_inbound_links: usize,
    /// Inbound QUIC links at once from one IP address; further connections from it are
    /// refused before their handshake.
    pub max_inbound_links_per_ip: usize,
    /// Circuits open at once whose previous hop is one relay (the NodeId its link
    /// certificate proves); further `CREATE`s on its links get `DESTROY` (RESOURCELIMIT).
    pub max_circuits_per_relay: usize,
    /// Circuits open at once whose previous hop is a client (no certificate) at one IP
    /// address; further `CREATE`s get `DESTROY` (RESOURCELIMIT).
    pub max_circuits_per_client_ip: usize,
    /// Streams of one link that have not yet become a circuit (no whole `CREATE` yet) or
    /// are serving a DHT request; a stream beyond it is reset at once.
    pub max_pending_streams_per_link: usize,
    /// Time a new stream has to send its first byte before it is dropped.
    pub first_byte_timeout: Duration,
    /// Host-name lookups (`getaddrinfo`, each on a thread of tokio's blocking pool) an exit
    /// runs at once. A `BEGIN` for a host name waits for a slot within
    /// [`connect_timeout`](Limits::connect_timeout), else it gets `END` RESOLVEFAILED. A
    /// slot is held until the lookup returns, also when its stream gave up, so slow DNS
    /// cannot pile up threads.
    pub max_exit_dns_lookups: usize,
    /// Onion key lifetime (default 28 days) and the grace during which the replaced key is
    /// still answered (default 7 days); see [`onion_keys`].
    pub onion_keys: OnionKeyConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_circuits: 8192,
            max_streams_per_circuit: 512,
            connect_timeout: Duration::from_secs(15),
            max_links: 1024,
            max_intro_points: 1024,
            max_pending_rendezvous: 4096,
            max_dht_requests: 32,
            max_inbound_links: 4096,
            max_inbound_links_per_ip: 64,
            max_circuits_per_relay: 4096,
            max_circuits_per_client_ip: 256,
            max_pending_streams_per_link: 256,
            first_byte_timeout: Duration::from_secs(10),
            max_exit_dns_lookups: 64,
            onion_keys: OnionKeyConfig::default(),
        }
    }
}

/// What the relay needs to start.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where keys, the descriptor and `stats.json` live.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC listener (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address written in the descriptor; `None` uses the bound address (which must then
    /// not be unspecified).
    pub advertise: Option<SocketAddr>,
    /// Offer the exit role with this policy; `None` for a non-exit relay.
    pub exit_policy: Option<ExitPolicy>,
    /// Offer the guard role.
    pub guard: bool,
    /// The circuit handshake types this relay answers and advertises in its descriptor
    /// (`docs/protocol.md` §3.1, §4.2): both by default ([`HandshakeSet::ALL`]); type 1
    /// only ([`HandshakeSet::NTOR`]) makes a classical-only relay for measurement. A
    /// `CREATE` of another type is refused with `DESTROY` (PROTOCOL).
    pub circuit_handshakes: HandshakeSet,
    /// Advertised bandwidth (bytes per second).
    pub bandwidth: u32,
    /// Where to write the signed descriptor (base64, one line); default
    /// `data_dir/descriptor`.
    pub descriptor_file: Option<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Relays to join the DHT through (their signed descriptors). Empty for the first
    /// relay of a network; the persisted routing table is used as well.
    pub dht_bootstrap: Vec<SignedDescriptor>,
    /// The network this relay belongs to (`docs/protocol.md` §14): it uploads its
    /// descriptor to these authorities, caches their consensus and serves it to clients.
    /// `None`: no authorities (a relay for the DHT-only tests of this crate).
    pub network: Option<anonnet_dir::Network>,
    /// How this relay behaves as an HSDir (§12.7): [`HsDirBehaviour::Honest`] except in
    /// tests of what clients do against hostile HSDirs.
    pub hsdir_behaviour: HsDirBehaviour,
    /// `Some(name)` only in tests: a hostile relay that claims the `.dark` name `name`
    /// with a back-dated record of its own and sets no name authorities (so its own
    /// storage takes and serves that record); see the `squat` module. `None`: honest.
    pub squat_dark_name: Option<String>,
}

/// How a relay serves hidden-service descriptors as an HSDir (§12.7). Anything but
/// `Honest` is a deliberately hostile relay, for tests (`anonnet testnet
/// --withholding-hsdirs`, `--stale-hsdirs`): it shows what a relay operator who changed
/// the code could do, and gives no one a capability a modified relay would not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HsDirBehaviour {
    /// Store what it is responsible for; serve the newest revision.
    #[default]
    Honest,
    /// Accept descriptors (answer "stored") but answer every fetch with "not found".
    Withhold,
    /// Keep the first revision of each descriptor and serve it for as long as it is
    /// valid, answering "stored" to newer ones without keeping them.
    Stale,
}

/// Counters of what this relay did, readable while it runs and written to
/// `data_dir/stats.json` every second when they change.
#[derive(Debug, Default)]
pub struct Stats {
    /// Circuits created here (successful `CREATE`).
    pub circuits_created: AtomicU64,
    /// Of those, circuits whose previous hop was a client (no relay certificate): this
    /// relay was their guard.
    pub circuits_from_clients: AtomicU64,
    /// Circuits this relay extended to a next hop.
    pub circuits_extended: AtomicU64,
    /// Circuits open now.
    pub circuits_open: AtomicUsize,
    /// Relay cells opened from the client side.
    pub cells_forward: AtomicU64,
    /// Relay cells sent towards the client (wrapped from the next hop or originated here).
    pub cells_backward: AtomicU64,
    /// Cells whose tag or sequence number failed (each destroyed its circuit).
    pub cells_rejected: AtomicU64,
    /// Cells this relay did not expect — a `DROP`, or `DATA`/`END`/`SENDME` for a stream
    /// it never had or beyond the tolerance for one it closed (§6.6); each destroyed its
    /// circuit.
    pub cells_unexpected: AtomicU64,
    /// Exit streams connected.
    pub exit_streams: AtomicU64,
    /// `RESOLVE`s this exit answered (§8.3), with `RESOLVED` or `END`.
    pub exit_resolves: AtomicU64,
    /// Bytes read from exit TCP connections.
    pub exit_bytes: AtomicU64,
    /// Introduction-point registrations held now (§13.2).
    pub intro_points: AtomicUsize,
    /// `INTRODUCE2`s passed to services.
    pub introductions: AtomicU64,
    /// Circuit pairs joined at this rendezvous point.
    pub rendezvous_joined: AtomicU64,
    /// `DHT_FETCH` requests served for circuits (§13.6).
    pub dht_fetches: AtomicU64,
    /// `DHT_STORE` requests served for circuits (§13.6).
    pub dht_stores: AtomicU64,
    /// Hidden-service descriptors accepted as an HSDir (§12.7).
    pub hsdir_stored: AtomicU64,
    /// `NAME_REGISTER`s this relay passed on to the authorities (§12.5).
    pub names_forwarded: AtomicU64,
    /// Test squatter only ([`RelayConfig::squat_dark_name`]): `STORE`s of its claim sent.
    pub squat_stores_sent: AtomicU64,
    /// Test squatter only: of those, `STORE`s another node accepted.
    pub squat_stores_accepted: AtomicU64,
    /// Hidden-service descriptors refused because this relay is not responsible for them
    /// under the consensus it holds (or holds none), §12.7.
    pub hsdir_not_responsible: AtomicU64,
    /// `CREATE`s refused by the relay-wide circuit limit ([`Limits::max_circuits`]).
    pub circuits_refused_total_limit: AtomicU64,
    /// `CREATE`s refused by a per-peer circuit limit ([`Limits::max_circuits_per_relay`],
    /// [`Limits::max_circuits_per_client_ip`]).
    pub circuits_refused_peer_limit: AtomicU64,
    /// New streams reset because their link had [`Limits::max_pending_streams_per_link`]
    /// streams not yet past `CREATE`.
    pub streams_refused: AtomicU64,
    /// New streams dropped for sending no byte within [`Limits::first_byte_timeout`].
    pub streams_timed_out: AtomicU64,
    /// Woken whenever a circuit closes (for graceful shutdown).
    pub circuit_closed: tokio::sync::Notify,
}

impl Stats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "circuits_created": g(&self.circuits_created),
            "circuits_from_clients": g(&self.circuits_from_clients),
            "circuits_extended": g(&self.circuits_extended),
            "circuits_open": self.circuits_open.load(Ordering::Relaxed),
            "cells_forward": g(&self.cells_forward),
            "cells_backward": g(&self.cells_backward),
            "cells_rejected": g(&self.cells_rejected),
            "cells_unexpected": g(&self.cells_unexpected),
            "exit_streams": g(&self.exit_streams),
            "exit_resolves": g(&self.exit_resolves),
            "exit_bytes": g(&self.exit_bytes),
            "intro_points": self.intro_points.load(Ordering::Relaxed),
            "introductions": g(&self.introductions),
            "rendezvous_joined": g(&self.rendezvous_joined),
            "dht_fetches_for_circuits": g(&self.dht_fetches),
            "dht_stores_for_circuits": g(&self.dht_stores),
            "hsdir_stored": g(&self.hsdir_stored),
            "names_forwarded": g(&self.names_forwarded),
            "squat_stores_sent": g(&self.squat_stores_sent),
            "squat_stores_accepted": g(&self.squat_stores_accepted),
            "hsdir_not_responsible": g(&self.hsdir_not_responsible),
            "circuits_refused_total_limit": g(&self.circuits_refused_total_limit),
            "circuits_refused_peer_limit": g(&self.circuits_refused_peer_limit),
            "streams_refused": g(&self.streams_refused),
            "streams_timed_out": g(&self.streams_timed_out),
        })
    }
}

pub(crate) struct RelayShared {
    pub(crate) node_id: NodeId,
    /// The circuit handshake types answered ([`RelayConfig::circuit_handshakes`]).
    pub(crate) handshakes: HandshakeSet,
    /// The current onion key and the previous one during its grace (§5.2). Handshakes
    /// take the read lock; only the maintenance task writes, once per rotation.
    pub(crate) onion_keys: RwLock<OnionKeyRing>,
    pub(crate) links: Arc<LinkManager>,
    pub(crate) exit_policy: Option<Arc<ExitPolicy>>,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) dht: Arc<DhtNode>,
    pub(crate) hs: hs::HsRegistry,
    pub(crate) dht_requests: Arc<tokio::sync::Semaphore>,
    /// Slots for exit host-name lookups ([`Limits::max_exit_dns_lookups`]).
    pub(crate) dns_lookups: Arc<tokio::sync::Semaphore>,
    /// Circuits open per previous hop, for the per-peer limits.
    pub(crate) circuits_per_peer: Arc<CircuitsPerPeer>,
    /// The newest consensus, served to clients (§14.2).
    pub(crate) consensus: Arc<directory::ConsensusCache>,
    /// The hidden-service descriptors this relay holds as an HSDir (§12.7): kind-2
    /// records only, stored through circuits, never through the Kademlia DHT.
    pub(crate) hsdir: Mutex<anonnet_dht::storage::Storage>,
    /// [`RelayConfig::hsdir_behaviour`].
    pub(crate) hsdir_behaviour: HsDirBehaviour,
    /// [`RelayConfig::network`]: whose authorities `NAME_REGISTER` asks (§12.5).
    pub(crate) network: Option<anonnet_dir::Network>,
}

/// Bounds of an HSDir's descriptor store (§12.7): every descriptor arrives through a
/// circuit and is attributed to the relay itself, so the per-peer bound is the total.
const HSDIR_STORAGE: StorageLimits = StorageLimits {
    per_key: 4,
    per_peer: 10_000,
    total: 10_000,
    requests_per_peer_per_sec: 20,
    burst: 40,
};

/// Circuits open per previous hop.
pub(crate) type CircuitsPerPeer = Mutex<HashMap<PeerKey, usize>>;

/// Who a circuit's previous hop is, for the per-peer circuit limits: a relay by the
/// NodeId its link proved, a client (no certificate) by its IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    Relay(NodeId),
    Client(IpAddr),
}

impl PeerKey {
    fn of(peer: Option<NodeId>, remote: SocketAddr) -> PeerKey {
        peer.map_or(PeerKey::Client(remote.ip()), PeerKey::Relay)
    }

    pub(crate) fn is_relay(&self) -> bool {
        matches!(self, PeerKey::Relay(_))
    }
}

/// Holds one slot of the circuit limits (relay-wide and per peer) while a circuit lives.
pub(crate) struct CircuitPermit {
    stats: Arc<Stats>,
    per_peer: Option<(Arc<CircuitsPerPeer>, PeerKey)>,
}

impl Drop for CircuitPermit {
    fn drop(&mut self) {
        if let Some((map, key)) = &self.per_peer {
            if let Ok(mut map) = map.lock() {
                if let Some(n) = map.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(key);
                    }
                }
            }
        }
        self.stats.circuits_open.fetch_sub(1, Ordering::Relaxed);
        self.stats.circuit_closed.notify_waiters();
    }
}

impl RelayShared {
    /// The onion key a `CREATE` naming `public` is answered with now: the current key, or
    /// the previous one during its grace; `None` when this relay must refuse it (§5.2).
    /// A copy, so the lock is not held during the handshake; it is zeroized on drop.
    pub(crate) fn onion_key_for(&self, public: &[u8; 32]) -> Option<OnionKey> {
        let ring = self
            .onion_keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.find(public, SystemTime::now())
            .map(|k| OnionKey::from_secret(&k.secret_bytes()))
    }

    /// The current onion public key `B` (32 bytes), the one the descriptor advertises.
    pub(crate) fn current_onion_public(&self) -> [u8; 32] {
        self.onion_keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current_public()
    }

    /// A slot for a new circuit from `peer`, or `None` when the relay-wide or that peer's
    /// limit is reached (each refusal is counted in [`Stats`]).
    pub(crate) fn circuit_permit(&self, peer: PeerKey) -> Option<CircuitPermit> {
        let open = self.stats.circuits_open.fetch_add(1, Ordering::Relaxed);
        let mut permit = CircuitPermit {
            stats: self.stats.clone(),
            per_peer: None,
        };
        if open >= self.limits.max_circuits {
            self.stats
                .circuits_refused_total_limit
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let cap = match peer {
            PeerKey::Relay(_) => self.limits.max_circuits_per_relay,
            PeerKey::Client(_) => self.limits.max_circuits_per_client_ip,
        };
        let Ok(mut map) = self.circuits_per_peer.lock() else {
            return None;
        };
        let n = map.entry(peer).or_insert(0);
        if *n >= cap {
            drop(map);
            self.stats
                .circuits_refused_peer_limit
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        permit.per_peer = Some((self.circuits_per_peer.clone(), peer));
        Some(permit)
    }
}

/// A running relay.
pub struct Relay {
    node_id: NodeId,
    local_addr: SocketAddr,
    descriptor: SignedDescriptor,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    endpoint: Endpoint,
    /// The accept loop, the DHT task and the maintenance task: awaited by
    /// [`Relay::shutdown_gracefully`] so the last `dht-table` and `stats.json` are written.
    tasks: TaskTracker,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Relay {
    /// Load or create the keys, bind the QUIC listener, write the descriptor and start
    /// serving. Returns once the listener is bound.
    ///
    /// # Errors
    /// [`RelayError`] when keys, binding or the descriptor fail.
    pub async fn start(config: RelayConfig) -> Result<Relay, RelayError> {
        let identity = keystore::load_identity(&config.data_dir)?;
        let onion_keys = start_onion_keys(&config)?;
        let node_id = identity.node_id();
        let endpoint = Endpoint::relay_with_limits(
            &identity,
            config.listen,
            InboundLimits {
                max_links: config.limits.max_inbound_links,
                max_links_per_ip: config.limits.max_inbound_links_per_ip,
                ..InboundLimits::default()
            },
        )?;
        let local_addr = endpoint.local_addr()?;
        let advertise = config.advertise.unwrap_or(local_addr);
        if advertise.ip().is_unspecified() {
            return Err(RelayError::Unadvertised { listen: local_addr });
        }
        let exit_policy = config.exit_policy.clone().map(Arc::new);
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let descriptor =
            make_descriptor(&identity, onion_keys.current_public(), &config, advertise)?;
        let descriptor_file = config
            .descriptor_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("descriptor"));
        write_atomically(&descriptor_file, descriptor_text(&descriptor)?.as_bytes())?;
        let links = Arc::new(
            LinkManager::new(endpoint.clone(), config.limits.max_links)
                .remember_unreachable(UNREACHABLE_MEMORY),
        );
        let table_file = config.data_dir.join(DHT_TABLE_FILE);
        let table = load_dht_table(&table_file, node_id);
        let dht = DhtNode::relay(
            descriptor.clone(),
            node_id,
            table,
            links.clone(),
            StorageLimits::default(),
        );
        let tasks = TaskTracker::new();
        let shared = Arc::new(RelayShared {
            node_id,
            handshakes: config.circuit_handshakes,
            onion_keys: RwLock::new(onion_keys),
            links: links.clone(),
            exit_policy,
            limits: config.limits.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            dht: dht.clone(),
            hs: hs::HsRegistry::new(
                config.limits.max_intro_points,
                config.limits.max_pending_rendezvous,
            ),
            dht_requests: Arc::new(tokio::sync::Semaphore::new(config.limits.max_dht_requests)),
            dns_lookups: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_exit_dns_lookups,
            )),
            circuits_per_peer: Arc::new(Mutex::new(HashMap::new())),
            consensus: Arc::new(directory::ConsensusCache::default()),
            hsdir: Mutex::new(anonnet_dht::storage::Storage::new(HSDIR_STORAGE)),
            hsdir_behaviour: config.hsdir_behaviour,
            network: config.network.clone(),
        });
        if let Some(network) = &config.network {
            // A squatting test relay plays a modified relay: it checks no receipts.
            if config.squat_dark_name.is_none() {
                shared.dht.set_name_authorities(network.name_authorities());
            }
        }
        // After the name authorities: loaded `.dark` records must carry their receipts.
        records::load_dht_records(&shared, &config.data_dir);
        let (descriptor_tx, descriptor_rx) = tokio::sync::watch::channel(descriptor.clone());
        if let Some(network) = &config.network {
            tasks.spawn(directory::upload_descriptors(
                links.clone(),
                network.clone(),
                descriptor_rx,
                shutdown.clone(),
            ));
            tasks.spawn(directory::fetch_consensus(
                links.clone(),
                network.clone(),
                shared.consensus.clone(),
                config.data_dir.clone(),
                config.limits.onion_keys.grace,
                shutdown.clone(),
            ));
        }
        info!(%node_id, %local_addr, exit = config.exit_policy.is_some(), "relay listening");
        tasks.spawn(accept_loop(endpoint.clone(), shared.clone()));
        let seeds: Vec<Contact> = config
            .dht_bootstrap
            .iter()
            .filter_map(|d| match Contact::from_descriptor(d, now_unix()) {
                Ok(c) if c.node_id != node_id => Some(c),
                Ok(_) => None,
                Err(e) => {
                    warn!("ignoring a DHT bootstrap descriptor: {e}");
                    None
                }
            })
            .collect();
        if let Some(name) = &config.squat_dark_name {
            tasks.spawn(squat::squat(
                dht.clone(),
                name.clone(),
                shared.stats.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(run_dht(dht, seeds, table_file, shutdown.clone()));
        tasks.spawn(maintenance(
            identity,
            shared,
            endpoint.clone(),
            config.clone(),
            advertise,
            descriptor_file,
            descriptor_tx,
        ));
        Ok(Relay {
            node_id,
            local_addr,
            descriptor,
            stats,
            shutdown,
            endpoint,
            tasks,
        })
    }

    /// This relay's NodeId.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The descriptor written at start.
    pub fn descriptor(&self) -> &SignedDescriptor {
        &self.descriptor
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stop accepting, destroy every circuit and close the endpoint.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.endpoint.close();
    }

    /// Shut down and give the goodbyes time to leave, at most `within`: circuits send
    /// `DESTROY` to both neighbours, then the QUIC endpoint closes every link and drains, so
    /// neighbours and clients fail their circuits at once rather than after the idle
    /// timeout. Last, the relay's own tasks end, having saved the DHT routing table
    /// (`dht-table`); they get at least [`TASKS_GRACE`] even when `within` is spent.
    pub async fn shutdown_gracefully(&self, within: Duration) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + within;
        // Circuit tasks end after their DESTROY writes (each bounded by 2 s).
        loop {
            let closed = self.stats.circuit_closed.notified();
            if self.stats.circuits_open.load(Ordering::Relaxed) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                break;
            }
        }
        self.endpoint.close();
        let _ = tokio::time::timeout_at(deadline, self.endpoint.wait_idle()).await;
        self.tasks.close();
        let grace = deadline.max(tokio::time::Instant::now() + TASKS_GRACE);
        let _ = tokio::time::timeout_at(grace, self.tasks.wait()).await;
    }
}

/// A dropped relay stops as [`Relay::shutdown`] does: its tasks end and its endpoint closes.
impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn descriptor_text(d: &SignedDescriptor) -> Result<String, RelayError> {
    Ok(d.to_base64()? + "\n")
}

/// Load the onion keys, drop an expired previous key, rotate a due current one and store
/// the result (which also records the creation time of a key that had none).
fn start_onion_keys(config: &RelayConfig) -> Result<OnionKeyRing, RelayError> {
    let now = SystemTime::now();
    let dir = &config.data_dir;
    let mut ring = keystore::load_onion_keys(dir, config.limits.onion_keys, now)?;
    let dropped = ring.drop_expired(now);
    let rotated = ring.rotate_if_due(now).map_err(|e| RelayError::Keys {
        path: dir.join(keystore::ONION_FILE),
        why: format!("cannot make a new onion key: {e}"),
    })?;
    keystore::save_onion_keys(dir, &ring)?;
    log_onion_keys(&ring, rotated, dropped, now);
    Ok(ring)
}

/// Log a rotation or a dropped previous key (public parts only, as short hex).
fn log_onion_keys(ring: &OnionKeyRing, rotated: bool, dropped: bool, now: SystemTime) {
    let short = |k: [u8; 32]| hex::encode(k.get(..4).unwrap_or_default());
    let next_days = ring.next_rotation(now).as_secs() / 86_400;
    if rotated {
        info!(
            new = %short(ring.current_public()),
            previous = %ring.previous().map(|(k, _)| short(k.public())).unwrap_or_default(),
            grace_days = ring.config().grace.as_secs() / 86_400,
            next_rotation_days = next_days,
            "onion key rotated; the previous key is still answered during its grace"
        );
    }
    if dropped {
        info!("previous onion key's grace ended; key forgotten");
    }
}

fn make_descriptor(
    identity: &IdentityKey,
    onion_public: [u8; 32],
    config: &RelayConfig,
    advertise: SocketAddr,
) -> Result<SignedDescriptor, RelayError> {
    let published = now_unix();
    let mut flags = 0;
    if config.exit_policy.is_some() {
        flags |= FLAG_EXIT;
    }
    if config.guard {
        flags |= FLAG_GUARD;
    }
    let desc = RelayDescriptor {
        identity: identity.public(),
        onion_key: onion_public,
        handshakes: config.circuit_handshakes,
        addresses: vec![advertise],
        flags,
        exit_ports: config
            .exit_policy
            .as_ref()
            .map(ExitPolicy::port_summary)
            .unwrap_or_default(),
        bandwidth: config.bandwidth,
        published,
        expires: published + DESCRIPTOR_LIFETIME,
    };
    Ok(anonnet_crypto::sign_descriptor(identity, &desc)?)
}

/// The routing table saved in `file` ([`DHT_TABLE_FILE`]), or an empty one. A file that
/// cannot be read, or with lines that are not descriptors, is moved aside to
/// `dht-table.bad` ([`anonnet_state::set_aside`]) and the contacts that could be read are
/// kept; the next save writes only those.
fn load_dht_table(file: &std::path::Path, node_id: NodeId) -> RoutingTable {
    let table = anonnet_state::load(file, |bytes| {
        let table = RoutingTable::from_persisted(node_id, bytes, now_unix(), Instant::now());
        Ok::<_, std::convert::Infallible>((table, RoutingTable::malformed_persisted_lines(bytes)))
    });
    match table {
        None => RoutingTable::new(node_id),
        Some((table, 0)) => table,
        Some((table, malformed)) => {
            anonnet_state::set_aside(
                file,
                &format!("has {malformed} lines that are not relay descriptors"),
                &format!("{} contacts kept", table.len()),
            );
            table
        }
    }
}

/// Replace `path` by `bytes` ([`anonnet_state::write_atomically`]: fsynced, renamed; a
/// failure leaves the old file and no temporary one), the error naming the file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), RelayError> {
    anonnet_state::write_atomically(path, bytes).map_err(|source| RelayError::Write {
        path: path.to_path_buf(),
        source,
    })
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<RelayShared>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = shared.shutdown.cancelled() => break,
        };
        match incoming {
            None => break,
            Some(Err(e)) => debug!("link handshake failed: {e}"),
            Some(Ok(link)) => {
                tokio::spawn(serve_link(shared.clone(), link));
            }
        }
    }
}

/// Take the streams of one inbound link until it closes. At most
/// [`Limits::max_pending_streams_per_link`] of them may be before their circuit exists
/// (or serving a DHT request); a stream beyond that is reset at once.
async fn serve_link(shared: Arc<RelayShared>, link: Link) {
    let peer = link.peer_node_id();
    let remote = link.remote_addr();
    let pending = Arc::new(tokio::sync::Semaphore::new(
        shared.limits.max_pending_streams_per_link,
    ));
    loop {
        let stream = tokio::select! {
            s = link.accept_bi() => s,
            () = shared.shutdown.cancelled() => break,
        };
        let Ok((mut send, mut recv)) = stream else {
            break;
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            shared.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            let _ = send.reset(quinn::VarInt::from_u32(0));
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            continue;
        };
        // A debug log can follow one leg (a circuit here, or a DHT/directory request).
        let span = tracing::debug_span!("leg", stream = send.id().index());
        tokio::spawn(
            serve_stream(shared.clone(), send, recv, peer, remote, permit).instrument(span),
        );
    }
}

/// File in the data directory holding the DHT routing table (§11.5).
pub const DHT_TABLE_FILE: &str = "dht-table";

/// How long [`Relay::shutdown_gracefully`] waits for the relay's own tasks after the
/// endpoint has closed, however little of its `within` is left: 250 ms.
pub const TASKS_GRACE: Duration = Duration::from_millis(250);
/// How often the relay refreshes its buckets and saves its routing table.
pub const DHT_MAINTENANCE: Duration = Duration::from_secs(60);

/// Read a stream's first byte and hand it to the circuit code (`CREATE`, §4.2) or the DHT
/// service (`0x10`, §11.2).
async fn serve_stream(
    shared: Arc<RelayShared>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: Option<NodeId>,
    remote: SocketAddr,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(
        shared.limits.first_byte_timeout,
        recv.read_exact(&mut first),
    )
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            shared
                .stats
                .streams_timed_out
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    match first {
        [DHT_STREAM_TAG] => {
            shared.dht.serve_stream(peer, remote, send, recv).await;
            drop(pending);
        }
        [anonnet_dir::DIR_STREAM_TAG] => {
            directory::serve_dir_stream(&shared.consensus, send, recv).await;
            drop(pending);
        }
        [b] => {
            let key = PeerKey::of(peer, remote);
            circuit::serve_leg(shared, send, recv, b, key, pending).await;
        }
    }
}

/// Join the DHT, publish the descriptor, then keep buckets fresh and the table saved.
async fn run_dht(
    dht: Arc<DhtNode>,
    seeds: Vec<Contact>,
    table_file: PathBuf,
    shutdown: CancellationToken,
) {
    // Every step, a join, a publish or a refresh that waits on slow peers, gives way to
    // shutdown at once, so `Relay::shutdown_gracefully` sees this task end in time.
    let work = async {
        let joined = dht.join(&seeds).await;
        let stored = dht.publish_descriptor().await;
        info!(
            contacts = joined,
            stored, "joined the DHT and published the descriptor"
        );
        let mut tick = tokio::time::interval(DHT_MAINTENANCE);
        loop {
            if let Err(e) = write_atomically(&table_file, &dht.persisted()) {
                anonnet_net::warn_limited!("{e}");
            }
            tick.tick().await;
            dht.refresh().await;
        }
    };
    tokio::select! {
        () = work => {}
        () = shutdown.cancelled() => {}
    }
    if let Err(e) = write_atomically(&table_file, &dht.persisted()) {
        warn!("{e}");
    }
}

/// Rewrite `stats.json` when counters change; sign, rewrite and publish the descriptor
/// again when [`DESCRIPTOR_REFRESH`] says so (asked every second, with a log line when
/// the wall clock jumped); rotate the onion key when due (checked at least every
/// [`ONION_KEY_CHECK`]), store it, and publish a descriptor with the new key at once.
async fn maintenance(
    identity: IdentityKey,
    shared: Arc<RelayShared>,
    endpoint: Endpoint,
    config: RelayConfig,
    advertise: SocketAddr,
    descriptor_file: PathBuf,
    descriptor_tx: tokio::sync::watch::Sender<SignedDescriptor>,
) {
    let stats_file = config.data_dir.join("stats.json");
    let mut records = records::RecordKeeper::new(&config.data_dir);
    let mut last = serde_json::Value::Null;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let clock = anonnet_clock::Clock::real();
    let mut jumps = anonnet_clock::JumpDetector::new(clock.mono_now(), clock.wall_now());
    let mut published = descriptor_published(&descriptor_tx.borrow(), clock.mono_now());
    let onion_check = tokio::time::sleep(next_onion_check(&shared));
    tokio::pin!(onion_check);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                records.tick(&shared, true);
                break;
            }
            _ = tick.tick() => {
                if let Some(jump) = jumps.tick(clock.mono_now(), clock.wall_now()) {
                    info!(?jump, "the wall clock jumped; checking the descriptor's validity now");
                }
                if DESCRIPTOR_REFRESH.due(published.as_ref(), clock.unix_now(), clock.mono_now()) {
                    // A failure is retried at the next tick (its warning is rate-limited).
                    if let Some(d) = publish_descriptor(&identity, &shared, &config, advertise,
                        &descriptor_file, &descriptor_tx) {
                        published = descriptor_published(&d, clock.mono_now());
                    }
                }
                records.tick(&shared, false);
                let mut now = shared.stats.to_json();
                now["links_inbound"] = endpoint.inbound_links().into();
                now["links_refused"] = endpoint.inbound_refused().into();
                now["links_retried"] = endpoint.inbound_retried().into();
                let dht = &shared.dht;
                let c = dht.storage_counters();
                now["dht"] = serde_json::json!({
                    "contacts": dht.len(),
                    "records": dht.stored_records(),
                    "stored": c.stored,
                    "rejected_invalid": c.rejected_invalid,
                    "rejected_stale": c.rejected_stale,
                    "rejected_full": c.rejected_full,
                    "rejected_taken": c.rejected_taken,
                    "rate_limited": c.rate_limited,
                    "expired": c.expired,
                });
                if now != last {
                    if let Err(e) = write_atomically(&stats_file, now.to_string().as_bytes()) {
                        // Every second while the disk is full: one line per 10 s.
                        anonnet_net::warn_limited!("{e}");
                    }
                    last = now;
                }
            }
            () = &mut onion_check => {
                if check_onion_keys(&shared, &config.data_dir) {
                    if let Some(d) = publish_descriptor(&identity, &shared, &config, advertise,
                        &descriptor_file, &descriptor_tx) {
                        published = descriptor_published(&d, clock.mono_now());
                    }
                }
                onion_check
                    .as_mut()
                    .reset(tokio::time::Instant::now() + next_onion_check(&shared));
            }
        }
    }
}

/// Time until the next onion key check: [`ONION_KEY_CHECK`], or less when the rotation is
/// due sooner (at least one second, so a failing rotation cannot spin).
fn next_onion_check(shared: &RelayShared) -> Duration {
    let ring = shared
        .onion_keys
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ring.next_rotation(SystemTime::now())
        .clamp(Duration::from_secs(1), ONION_KEY_CHECK)
}

/// Drop an expired previous onion key and rotate a due current one. The changed keys are
/// stored before the relay uses them, so a restart never loses a key that a descriptor
/// named; when storing fails nothing changes and the next check tries again. Returns
/// whether the current key changed (the descriptor must then be republished).
fn check_onion_keys(shared: &RelayShared, data_dir: &std::path::Path) -> bool {
    let now = SystemTime::now();
    let mut next = shared
        .onion_keys
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .duplicate();
    let dropped = next.drop_expired(now);
    let rotated = next.rotate_if_due(now).unwrap_or_else(|e| {
        warn!("cannot make a new onion key, keeping the current one: {e}");
        false
    });
    if !dropped && !rotated {
        return false;
    }
    if let Err(e) = keystore::save_onion_keys(data_dir, &next) {
        warn!("onion key rotation postponed: storing the keys failed: {e}");
        return false;
    }
    log_onion_keys(&next, rotated, dropped, now);
    // Only this task writes the ring, so nothing changed it since it was copied.
    *shared
        .onion_keys
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
    rotated
}

/// When `d` was signed and until when it is valid, as [`DESCRIPTOR_REFRESH`] needs it
/// (`at`: the monotonic time it was signed); `None` when its body does not decode (then
/// a new one is due at once).
fn descriptor_published(d: &SignedDescriptor, at: Instant) -> Option<anonnet_clock::Published> {
    RelayDescriptor::decode_body(&d.body)
        .ok()
        .map(|b| anonnet_clock::Published {
            published: b.published,
            expires: b.expires,
            at,
        })
}

/// Sign a descriptor with the current onion key, write it to `descriptor_file`, and hand
/// it to the authority upload task and the DHT. Returns it, or `None` when it could not
/// be made (logged).
fn publish_descriptor(
    identity: &IdentityKey,
    shared: &RelayShared,
    config: &RelayConfig,
    advertise: SocketAddr,
    descriptor_file: &std::path::Path,
    descriptor_tx: &tokio::sync::watch::Sender<SignedDescriptor>,
) -> Option<SignedDescriptor> {
    let fresh = make_descriptor(identity, shared.current_onion_public(), config, advertise);
    let written = match &fresh {
        Ok(d) => descriptor_text(d).and_then(|t| write_atomically(descriptor_file, t.as_bytes())),
        Err(e) => {
            anonnet_net::warn_limited!("refreshing descriptor: {e}");
            Ok(())
        }
    };
    if let Err(e) = written {
        anonnet_net::warn_limited!("refreshing descriptor: {e}");
    }
    if let Ok(d) = fresh {
        // Upload the re-signed descriptor to the authorities and republish it in the DHT.
        descriptor_tx.send_replace(d.clone());
        shared.dht.set_descriptor(d.clone());
        let dht = shared.dht.clone();
        tokio::spawn(async move { dht.publish_descriptor().await });
        return Some(d);
    }
    None
}
