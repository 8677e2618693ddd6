//! The client proper: a pool of pre-built circuits, stream isolation, circuit rotation,
//! "new identity", retries, bootstrap progress and counters. Spec: `docs/protocol.md` §9.
//!
//! Circuits in the pool are *clean* until a stream is attached; the first stream gives a
//! clean circuit its isolation key, and from then on only streams with the same key use it
//! (Tor's IsolateSOCKSAuth). A circuit takes no new streams once it has been in use for
//! `max_dirtiness` (10 minutes by default) or after "new identity"; its open streams go on.
//! A background task keeps `pool_size` clean circuits ready, so a new connection does not
//! wait for a build.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anonnet_clock::Backoff;
use anonnet_net::{Endpoint, LinkManager};
use anonnet_wire::{EndReason, ResolvedAnswer, SignedDescriptor, Target};
use tokio::sync::{broadcast, watch, Notify};
use tracing::{info, warn};

use std::collections::HashMap;

use anonnet_crypto::dark::{DarkName, DARK_SUFFIX};
use anonnet_crypto::hs::{HsAddress, ANON_SUFFIX};
use anonnet_dir::hsdir::HSDIR_SPREAD_FETCH;
use anonnet_wire::dht::RecordKind;
use anonnet_wire::hs::HsDescriptorBody;
use anonnet_wire::relay::COOKIE_LEN;
use anonnet_wire::RelayMsg;
use rand::seq::SliceRandom;
use tracing::debug;

use crate::circuit::{
    Circuit, CircuitError, CircuitPrefix, DataStream, HopSpec, StreamCounters, StreamError,
};
use crate::consensus::{self as dir, Checked, ConsensusStatus};
use crate::directory::{Directory, PathRequest};
use crate::guards::{GuardSet, RelayScores};
use crate::host::{self, HostedService, ServiceConfig, ServiceError};
use crate::hs::{self, dht_fetch, HsCache, HsFailure, HsStep, Introduction};
use crate::status::{Bootstrap, CircuitInfo, ClientEvent, ClientStatus, Counters};
use crate::ClientError;

/// Attempts at building a circuit for one request before giving up.
const BUILD_ATTEMPTS: usize = 3;
/// Attempts at opening one stream (each on a fresh circuit after a circuit failure).
const STREAM_ATTEMPTS: u32 = 3;
/// First pause before retrying a stream on another circuit; doubles per attempt, with
/// jitter ([`Backoff`]).
const STREAM_RETRY: Duration = Duration::from_millis(100);
/// First pause after a failed pool build; doubles up to [`MAX_POOL_RETRY`], with jitter
/// ([`Backoff`]).
const POOL_RETRY: Duration = Duration::from_millis(500);
/// Longest pause between pool builds while builds fail.
const MAX_POOL_RETRY: Duration = Duration::from_secs(30);
/// How often the pool looks for circuits past their dirtiness limit.
const POOL_TICK: Duration = Duration::from_secs(5);
/// Events kept for slow event-stream readers.
const EVENT_QUEUE: usize = 256;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The network (its directory authorities, §14.1). The client builds paths only from
    /// the consensus they sign, fetched from them or the fallbacks at first start and then
    /// from its guards. `None`: no network; the directory is `bootstrap` as given, fixed
    /// (in-process tests without authorities).
    pub network: Option<anonnet_dir::Network>,
    /// Relay descriptors: with a network, fallback directory caches asked for the
    /// consensus when no authority answers; without one, the whole directory.
    pub bootstrap: Vec<SignedDescriptor>,
    /// UDP address of the client's QUIC endpoint (it only dials).
    pub quic_bind: SocketAddr,
    /// Longest time one circuit build may take.
    pub circuit_build_timeout: Duration,
    /// Longest time the exit may take to answer `BEGIN`.
    pub stream_timeout: Duration,
    /// Clean exit circuits kept ready (at least 1).
    pub pool_size: usize,
    /// Where the guard set is kept (`guards.json`); `None` keeps it in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// Let relays of one /16 or /32 share a path: for test networks on one machine only.
    pub allow_same_subnet: bool,
    /// A circuit takes no new streams after it has been in use this long (Tor's
    /// MaxCircuitDirtiness, 10 minutes).
    pub max_dirtiness: Duration,
    /// Pool circuits get exits that allow this port (443 by default).
    pub pool_port: u16,
    /// Local address book: `.dark` names (without the suffix) that resolve here without
    /// the DHT and override it.
    pub address_book: HashMap<String, HsAddress>,
    /// Guard lifetimes (rotation and removal when unlisted).
    pub guard_lifetimes: crate::guards::GuardLifetimes,
    /// The circuit handshake setting (§5.4, §9.2): hybrid X25519 + ML-KEM-768 by default,
    /// run with every relay that advertises it (classical X25519 with the others);
    /// classical X25519 with every relay, for measurement. Relays advertising no type the
    /// setting can run are left out of the directory.
    pub circuit_handshake: crate::circuit::HandshakeKind,
    /// The most proof-of-work effort spent on one introduction (§13.9): a service that
    /// suggests more gets this much. Default [`crate::hs::CLIENT_MAX_EFFORT`].
    pub hs_pow_max_effort: u32,
    /// Guard → vanguard circuit prefixes kept built for hidden-service circuits (§9.4):
    /// a descriptor fetch, an introduction or a service's rendezvous circuit extends one
    /// to its named relay instead of building three hops. 0 turns them off; default 3.
    pub hs_prefixes: usize,
    /// Where the client, its hidden-service caches and the services it hosts read the
    /// time (§15): the system's clocks, or a test's driven clock.
    pub clock: anonnet_clock::Clock,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            network: None,
            bootstrap: Vec::new(),
            quic_bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            circuit_build_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(30),
            pool_size: 3,
            state_dir: None,
            allow_same_subnet: false,
            max_dirtiness: Duration::from_secs(600),
            pool_port: 443,
            address_book: HashMap::new(),
            guard_lifetimes: crate::guards::GuardLifetimes::default(),
            circuit_handshake: crate::circuit::HandshakeKind::default(),
            hs_pow_max_effort: crate::hs::CLIENT_MAX_EFFORT,
            hs_prefixes: 3,
            clock: anonnet_clock::Clock::real(),
        }
    }
}

/// Streams with different keys never share a circuit; streams with the same key may. The
/// SOCKS front end derives it from the username/password pair, the HTTP front end from
/// `Proxy-Authorization`. The default key (no credentials) is a group of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IsolationKey(Vec<u8>);

impl IsolationKey {
    /// The key for a username/password pair (RFC 1929 credentials).
    pub fn from_credentials(user: &[u8], password: &[u8]) -> Self {
        let mut k = Vec::with_capacity(user.len() + password.len() + 5);
        k.push(1);
        k.extend_from_slice(&(user.len() as u32).to_be_bytes());
        k.extend_from_slice(user);
        k.extend_from_slice(password);
        IsolationKey(k)
    }
}

struct Slot {
    circuit: Arc<Circuit>,
    /// `None` while clean.
    isolation: Option<IsolationKey>,
    first_used: Option<Instant>,
    retired: bool,
}

impl Slot {
    fn state(&self) -> &'static str {
        if self.retired {
            "retired"
        } else if self.isolation.is_some() {
            "in use"
        } else {
            "clean"
        }
    }
}

#[derive(Default)]
struct CounterAtomics {
    circuits_built: AtomicU64,
    circuits_built_on_demand: AtomicU64,
    hs_descriptor_fetches: AtomicU64,
    hs_connects: AtomicU64,
    circuit_build_failures: AtomicU64,
    streams_opened: AtomicU64,
    stream_failures: AtomicU64,
    resolves: AtomicU64,
    optimistic_streams: AtomicU64,
    hs_prefixes_built: AtomicU64,
    hs_prefixes_used: AtomicU64,
}

/// The client: keeps circuits ready and opens streams through them.
pub struct Client {
    pub(crate) config: ClientConfig,
    links: Arc<LinkManager>,
    /// Fallback directory caches (verified bootstrap descriptors).
    fallbacks: Vec<anonnet_crypto::VerifiedDescriptor>,
    directory: RwLock<Directory>,
    /// The consensus the directory comes from (with a network).
    consensus: RwLock<Option<Checked>>,
    pool: Mutex<Vec<Slot>>,
    refill: Arc<Notify>,
    /// Pre-built guard → vanguard prefixes for hidden-service circuits (§9.4), at most
    /// `config.hs_prefixes`; [`Client::take_prefix`] hands one out.
    prefixes: Mutex<Vec<CircuitPrefix>>,
    prefix_refill: Arc<Notify>,
    enabled: AtomicBool,
    /// Set by [`Client::shutdown`]: links closing now are our doing, not the guards', so
    /// no relay is blamed, the guard set is left as it is and no circuit is built.
    stopping: AtomicBool,
    bootstrap: watch::Sender<Bootstrap>,
    ready: watch::Sender<Option<Result<(), ClientError>>>,
    events: broadcast::Sender<ClientEvent>,
    counters: CounterAtomics,
    stream_counters: Arc<StreamCounters>,
    guards: Mutex<GuardSet>,
    /// Second hops of hidden-service circuits (§9.4, vanguards-lite).
    vanguards: Mutex<crate::vanguards::VanguardSet>,
    scores: Mutex<RelayScores>,
    /// Set once the directory holds the network: a verified consensus (or, without a
    /// network, the fixed bootstrap list). Guards are chosen only after that.
    discovered: watch::Sender<bool>,
    /// Hidden-service caches (descriptors, names, pins, rendezvous circuits).
    hs: HsCache,
    /// Hidden services this daemon hosts.
    services: Mutex<Vec<Arc<HostedService>>>,
    /// Whether this client itself was away (suspend, SIGSTOP): then no relay is blamed.
    presence: Mutex<crate::presence::Presence>,
    /// Wall-clock jumps seen (§15): the count goes up at each; the services' publishers
    /// look at their deadlines again at once.
    clock_jumps: watch::Sender<u64>,
    jump_detector: Mutex<anonnet_clock::JumpDetector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// Circuits (each to another random last relay) a `.dark` lookup tries before it gives up
/// (§13.7).
const NAME_LOOKUP_ATTEMPTS: usize = 3;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn path_hex(c: &Circuit) -> Vec<String> {
    c.path().iter().map(|id| id.to_hex()).collect()
}

impl Client {
    /// Verify the bootstrap descriptors, load the saved consensus (with a network), open
    /// the QUIC endpoint and start fetching the consensus and filling the circuit pool in
    /// the background.
    ///
    /// # Errors
    /// [`ClientError::NotEnoughRelays`] without a network when no bootstrap descriptor
    /// verifies, [`ClientError::Endpoint`] when the endpoint cannot be bound.
    pub async fn start(mut config: ClientConfig) -> Result<Arc<Client>, ClientError> {
        config.pool_size = config.pool_size.max(1);
        let now = now_unix();
        let mut fallbacks = Vec::new();
        for d in &config.bootstrap {
            match anonnet_crypto::verify_descriptor(d, now) {
                Ok(v) => fallbacks.push(v),
                Err(e) => warn!("ignoring a bootstrap descriptor: {e}"),
            }
        }
        let mut directory = Directory::new();
        let mut consensus = None;
        match &config.network {
            None => {
                for v in &fallbacks {
                    directory.insert_verified(v.clone());
                }
                directory = directory.usable_with(config.circuit_handshake.usable());
                if directory.is_empty() {
                    return Err(ClientError::NotEnoughRelays { usable: 0 });
                }
            }
            Some(network) => {
                if let Some(c) = config
                    .state_dir
                    .as_deref()
                    .and_then(|d| dir::load(d, network, now))
                {
                    directory = Directory::from_consensus(&c.consensus)
                        .usable_with(config.circuit_handshake.usable());
                    consensus = Some(c);
                }
            }
        }
        let ready_now = config.network.is_none() || consensus.is_some();
        let endpoint = Endpoint::client(config.quic_bind)
            .map_err(|e| ClientError::Endpoint(std::sync::Arc::new(e)))?;
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let links = Arc::new(LinkManager::new(endpoint, 256));
        let client = Arc::new(Client {
            fallbacks,
            links,
            directory: RwLock::new(directory),
            consensus: RwLock::new(consensus),
            pool: Mutex::new(Vec::new()),
            refill: Arc::new(Notify::new()),
            prefixes: Mutex::new(Vec::new()),
            prefix_refill: Arc::new(Notify::new()),
            enabled: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            bootstrap: watch::channel(Bootstrap::new(0, "starting")).0,
            ready: watch::channel(None).0,
            events,
            counters: CounterAtomics::default(),
            stream_counters: Arc::new(StreamCounters::default()),
            guards: Mutex::new(GuardSet::load_with(
                config.state_dir.as_deref(),
                config.guard_lifetimes,
            )),
            vanguards: Mutex::new(crate::vanguards::VanguardSet::load(
                config.state_dir.as_deref(),
            )),
            scores: Mutex::new(RelayScores::default()),
            discovered: watch::channel(ready_now).0,
            hs: HsCache::new(config.state_dir.as_deref(), config.address_book.clone()),
            services: Mutex::new(Vec::new()),
            presence: Mutex::new(crate::presence::Presence::new(
                config.clock.mono_now(),
                config.clock.wall_now(),
            )),
            clock_jumps: watch::channel(0).0,
            jump_detector: Mutex::new(anonnet_clock::JumpDetector::new(
                config.clock.mono_now(),
                config.clock.wall_now(),
            )),
            config,
        });
        if ready_now && client.config.network.is_some() {
            client.set_bootstrap(20, "consensus loaded");
        } else if ready_now {
            client.set_bootstrap(20, "directory loaded");
        } else {
            client.set_bootstrap(5, "fetching consensus");
        }
        info!(relays = client.relay_count(), "client starting");
        if client.config.network.is_some() {
            tokio::spawn(maintain_consensus(Arc::downgrade(&client)));
        }
        tokio::spawn(maintain_pool(Arc::downgrade(&client)));
        if client.config.hs_prefixes > 0 {
            tokio::spawn(maintain_prefixes(Arc::downgrade(&client)));
        }
        tokio::spawn(watch_presence(Arc::downgrade(&client)));
        Ok(client)
    }

    /// The consensus in use, for the status (`None` without a network or before the
    /// first one).
    pub fn consensus_status(&self) -> Option<ConsensusStatus> {
        self.consensus
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.status.clone()))
    }

    /// The consensus in use, decoded (`None` without a network or before the first one).
    pub fn consensus(&self) -> Option<anonnet_dir::Consensus> {
        self.consensus
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.consensus.clone()))
    }

    /// Make `c` the consensus in use: the directory is rebuilt from it alone, it is
    /// saved, and the pool is told.
    fn install_consensus(&self, c: Checked) {
        if let Some(d) = &self.config.state_dir {
            if let Err(e) = dir::save(d, &c.signed) {
                anonnet_net::warn_limited!(
                    "cannot save {}: {e}",
                    d.join(dir::CONSENSUS_FILE).display()
                );
            }
        }
        let first = self.consensus_status().is_none();
        let directory = Directory::from_consensus(&c.consensus)
            .usable_with(self.config.circuit_handshake.usable());
        let status = c.status.clone();
        if let Ok(mut dir) = self.directory.write() {
            // A relay listed at another address than before has moved (restarted on
            // another port, say): its failures were at the old address, so it is tried
            // again at once (§9.1).
            let moved: Vec<anonnet_crypto::NodeId> = directory
                .relays()
                .filter(|r| {
                    dir.get(&r.node_id)
                        .is_some_and(|old| old.descriptor.addresses != r.descriptor.addresses)
                })
                .map(|r| r.node_id)
                .collect();
            if !moved.is_empty() {
                let mut scores = self.scores();
                for id in &moved {
                    scores.success(*id);
                }
                drop(scores);
                info!(
                    relays = moved.len(),
                    "relays moved to new addresses; trying them there"
                );
            }
            *dir = directory;
        }
        if let Ok(mut slot) = self.consensus.write() {
            *slot = Some(c);
        }
        if first {
            info!(
                relays = status.relays,
                signatures = status.signatures,
                authorities = status.authorities,
                "consensus loaded"
            );
        } else {
            debug!(
                relays = status.relays,
                valid_after = status.valid_after,
                "newer consensus"
            );
        }
        if self.bootstrap.borrow().percent < 20 {
            // First start, or back from an expired consensus: the pool's next circuit
            // takes the progress on to 100 %.
            self.set_bootstrap(20, "consensus loaded");
        }
        // A set not yet full is topped up from this consensus now, not at the next circuit
        // build: in a young network relays earn the Guard flag one consensus after
        // another, and a client whose pool is full builds nothing for a long time, so its
        // set would stay smaller than NUM_GUARDS (§9.1) however many guards the network
        // has by then. A full set is left to path selection: a guard missing from one
        // consensus (its relay restarting, say) must not bring in a new guard for good.
        if self.guards().len() < crate::guards::NUM_GUARDS && !self.is_stopping() {
            let _ = self.guard_ids(&[]);
        }
        self.discovered.send_replace(true);
        self.refill.notify_one();
    }

    /// Forget a consensus past its `valid_until`: no circuit is built from it any more.
    fn expire_consensus(&self, now: u64) {
        let expired = self
            .consensus
            .read()
            .ok()
            .is_some_and(|c| c.as_ref().is_some_and(|c| c.status.valid_until <= now));
        if !expired {
            return;
        }
        if let Ok(mut slot) = self.consensus.write() {
            *slot = None;
        }
        if let Ok(mut dir) = self.directory.write() {
            *dir = Directory::new();
        }
        warn!(
            "the consensus expired and no newer one could be fetched; no new circuits until one is"
        );
        self.set_bootstrap(5, "fetching consensus");
    }

    /// Where to ask for a consensus, in order: the guards (directory guards, one hop) not
    /// avoided now (a guard whose link just died has likely moved or gone, §9.1), then the
    /// authorities and the fallbacks in random order.
    fn consensus_sources(
        &self,
        network: &anonnet_dir::Network,
    ) -> Vec<(SocketAddr, anonnet_crypto::NodeId)> {
        let mut out = Vec::new();
        let avoided = self.scores().avoided(Instant::now());
        if let Ok(dir) = self.directory.read() {
            for g in self.guards() {
                if avoided.contains(&g) {
                    continue;
                }
                if let Some(r) = dir.get(&g) {
                    if let Some(a) = r.descriptor.addresses.first() {
                        out.push((*a, g));
                    }
                }
            }
        }
        let mut rest: Vec<(SocketAddr, anonnet_crypto::NodeId)> = network
            .authorities
            .iter()
            .map(|a| (a.address, a.node_id()))
            .chain(
                self.fallbacks
                    .iter()
                    .filter_map(|f| f.descriptor.addresses.first().map(|a| (*a, f.node_id))),
            )
            .collect();
        rest.shuffle(&mut rand::rng());
        out.extend(rest);
        out
    }

    fn relay_count(&self) -> usize {
        self.directory.read().map(|d| d.len()).unwrap_or(0)
    }

    /// A receiver that sees every change of the bootstrap state (a consensus lost or loaded
    /// again, circuits failing or built again): the service's introduction-point loop
    /// retries at once when the client becomes ready instead of finishing its backoff.
    pub(crate) fn bootstrap_changes(&self) -> watch::Receiver<crate::status::Bootstrap> {
        self.bootstrap.subscribe()
    }

    fn set_bootstrap(&self, percent: u8, phase: &str) {
        let b = Bootstrap::new(percent, phase);
        info!(percent, phase, "bootstrap");
        self.bootstrap.send_replace(b.clone());
        let _ = self.events.send(ClientEvent::Bootstrap(b));
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Wait until bootstrapping reached 100 % (a first circuit is built).
    ///
    /// # Errors
    /// The error that stopped bootstrapping (no usable path at all).
    pub async fn wait_ready(&self) -> Result<(), ClientError> {
        let mut rx = self.ready.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(ClientError::NotEnoughRelays { usable: 0 });
            }
        }
    }

    /// Switch proxying on or off. While off, every new stream is refused with
    /// [`ClientError::Disabled`] before anything is sent; open streams go on.
    pub fn set_enabled(&self, enabled: bool) {
        if self.enabled.swap(enabled, Ordering::SeqCst) != enabled {
            info!(enabled, "proxying switched");
            self.emit(ClientEvent::ProxyEnabled { enabled });
        }
    }

    /// Whether proxying is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// "New identity": every current circuit stops taking new streams (open streams go
    /// on); new requests use fresh circuits.
    pub fn new_identity(&self) {
        if let Ok(mut pool) = self.pool.lock() {
            for slot in pool.iter_mut() {
                slot.retired = true;
            }
        }
        self.hs.clear_circuits();
        self.take_prefixes();
        info!("new identity: all circuits retired");
        self.emit(ClientEvent::NewIdentity);
        self.refill.notify_one();
    }

    /// Subscribe to events (bootstrap, circuits built and closed, errors). A reader that
    /// falls more than 256 events behind misses the oldest.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// A snapshot for the status display.
    pub fn status(&self) -> ClientStatus {
        let circuits: Vec<CircuitInfo> = self
            .pool
            .lock()
            .map(|p| {
                p.iter()
                    .filter(|s| !s.circuit.is_closed())
                    .map(|s| CircuitInfo {
                        id: s.circuit.id(),
                        path: path_hex(&s.circuit),
                        addresses: s
                            .circuit
                            .addresses()
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                        age_secs: s.circuit.created().elapsed().as_secs_f64(),
                        build_ms: s.circuit.build_time().as_secs_f64() * 1000.0,
                        streams: s.circuit.stream_count(),
                        state: s.state().to_owned(),
                        handshakes: s
                            .circuit
                            .handshakes()
                            .iter()
                            .map(|k| k.name().to_owned())
                            .collect(),
                        protocol: anonnet_net::PROTOCOL_VERSION,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let streams = circuits.iter().map(|c| c.streams).sum();
        let sc = &self.stream_counters;
        let c = &self.counters;
        ClientStatus {
            enabled: self.is_enabled(),
            bootstrap: self.bootstrap.borrow().clone(),
            relays: self.relay_count(),
            circuits,
            streams,
            guards: self.guards().iter().map(|g| g.to_hex()).collect(),
            vanguards: self
                .vanguards
                .lock()
                .map(|v| v.report())
                .unwrap_or_default(),
            avoided_relays: self.scores().report(Instant::now()),
            counters: Counters {
                circuits_built: c.circuits_built.load(Ordering::Relaxed),
                circuits_built_on_demand: c.circuits_built_on_demand.load(Ordering::Relaxed),
                circuit_build_failures: c.circuit_build_failures.load(Ordering::Relaxed),
                streams_opened: c.streams_opened.load(Ordering::Relaxed),
                stream_failures: c.stream_failures.load(Ordering::Relaxed),
                resolves: c.resolves.load(Ordering::Relaxed),
                optimistic_streams: c.optimistic_streams.load(Ordering::Relaxed),
                hs_prefixes_built: c.hs_prefixes_built.load(Ordering::Relaxed),
                hs_prefixes_used: c.hs_prefixes_used.load(Ordering::Relaxed),
                bytes_sent: sc.bytes_sent.load(Ordering::Relaxed),
                bytes_received: sc.bytes_received.load(Ordering::Relaxed),
                buffered_bytes: sc.buffered.load(Ordering::Relaxed),
                hs_descriptor_fetches: c.hs_descriptor_fetches.load(Ordering::Relaxed),
                hs_connects: c.hs_connects.load(Ordering::Relaxed),
                unexpected_cells: sc.unexpected_cells.load(Ordering::Relaxed),
            },
            consensus: self.consensus_status(),
        }
    }

    /// The circuits open now (clean, in use and retired).
    pub fn circuits(&self) -> Vec<Arc<Circuit>> {
        self.with_pool(|pool| pool.iter().map(|s| s.circuit.clone()).collect())
    }

    /// Run `f` on the pool after dropping closed circuits, retiring those past their
    /// dirtiness limit and closing retired ones that carry no stream.
    fn with_pool<T>(&self, f: impl FnOnce(&mut Vec<Slot>) -> T) -> T {
        let mut closed = Vec::new();
        let mut lost_guards = Vec::new();
        let out = {
            let mut guard = match self.pool.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let max_dirty = self.config.max_dirtiness;
            for slot in guard.iter_mut() {
                if slot.first_used.is_some_and(|t| t.elapsed() >= max_dirty) {
                    slot.retired = true;
                }
                if slot.retired && slot.circuit.stream_count() == 0 {
                    slot.circuit.close();
                }
            }
            guard.retain(|s| {
                let keep = !s.circuit.is_closed();
                if !keep {
                    closed.push(s.circuit.id());
                    if s.circuit.lost_its_guard() {
                        lost_guards.extend(s.circuit.path().first().copied());
                    }
                }
                keep
            });
            f(&mut guard)
        };
        for id in closed {
            self.emit(ClientEvent::CircuitClosed { id });
        }
        if !lost_guards.is_empty() && !self.is_stopping() && !self.excused() {
            let now = Instant::now();
            let mut scores = self.scores();
            for g in lost_guards {
                warn!(
                    guard = %anonnet_net::logging::sensitive(g.short()),
                    "link to the guard died; avoiding it for now"
                );
                scores.down(g, now);
            }
        }
        out
    }

    fn scores(&self) -> std::sync::MutexGuard<'_, RelayScores> {
        match self.scores.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The guard set's members usable now (not in `avoided`); the set is topped up and
    /// saved when members are missing from the directory or avoided, but an avoided member
    /// counts as missing only once it failed again after its first backoff
    /// ([`RelayScores::avoided_after_retry`]), so guards whose links all died at once (every
    /// relay restarted elsewhere) are not replaced before the next consensus shows where
    /// they went.
    fn guard_ids(&self, avoided: &[anonnet_crypto::NodeId]) -> Vec<anonnet_crypto::NodeId> {
        let failing: Vec<anonnet_crypto::NodeId> = if avoided.is_empty() {
            Vec::new()
        } else {
            let again = self.scores().avoided_after_retry(Instant::now());
            avoided
                .iter()
                .copied()
                .filter(|id| again.contains(id))
                .collect()
        };
        // A guard left out of the consensus keeps its place for two consensus periods
        // (two hours on a real network): a relay that restarts is listed again once the
        // authorities have tested it (protocol §9.1).
        let grace = self
            .consensus_status()
            .map_or(0, |c| 2 * c.fresh_until.saturating_sub(c.valid_after));
        let mut guards = match self.guards.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Ok(dir) = self.directory.read() {
            if !self.is_stopping()
                && guards.ensure(&dir, &failing, now_unix(), grace, &mut rand::rng())
            {
                if let Err(e) = guards.save() {
                    anonnet_net::warn_limited!(
                        "cannot save the guard set ({} in the state directory): {e}",
                        crate::guards::GUARD_FILE
                    );
                }
                info!(
                    guards = %anonnet_net::logging::sensitive(
                        guards.ids().iter().map(|g| g.short()).collect::<Vec<_>>().join(",")
                    ),
                    "guard set"
                );
            }
            return guards
                .ids()
                .into_iter()
                .filter(|g| dir.get(g).is_some() && !avoided.contains(g))
                .collect();
        }
        guards.ids()
    }

    /// Before any circuit build: wait, at most [`DISCOVERY_WAIT`] and only until it has
    /// happened once, for the first DHT discovery round (a circuit built earlier, for a
    /// hidden service restored at start say, would check the saved guards against the
    /// bootstrap relays alone, find some missing and add new guards for good).
    ///
    /// # Errors
    /// [`CircuitError::Closed`] once [`Client::shutdown`] has begun.
    async fn ready_to_build(&self) -> Result<(), ClientError> {
        let mut discovered = self.discovered.subscribe();
        let _ = tokio::time::timeout(DISCOVERY_WAIT, discovered.wait_for(|d| *d)).await;
        if self.is_stopping() {
            return Err(ClientError::Circuit(CircuitError::Closed));
        }
        if self.config.network.is_some() {
            let now = now_unix();
            self.expire_consensus(now);
            if self.consensus_status().is_none() {
                return Err(ClientError::NoConsensus);
            }
        }
        Ok(())
    }

    /// True while this client's own recent absence (suspend, SIGSTOP) excuses failures:
    /// no relay is blamed then (§9.1). Ticks the detector first, so the first failure
    /// after a resume already sees the gap.
    fn excused(&self) -> bool {
        let mut p = match self.presence.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = self.config.clock.mono_now();
        if let Some(gap) = p.tick(now, self.config.clock.wall_now()) {
            info!(
                away_secs = gap.as_secs(),
                "this client was away (suspended or stopped); links lost meanwhile blame no relay"
            );
        }
        p.excuses(now)
    }

    /// The clock the client reads (§15).
    pub fn clock(&self) -> &anonnet_clock::Clock {
        &self.config.clock
    }

    /// Wall-clock jumps seen since the start (§15): `changed()` on the receiver wakes a
    /// task at the next one.
    pub fn clock_jumps(&self) -> watch::Receiver<u64> {
        self.clock_jumps.subscribe()
    }

    /// Compare the wall clock with the monotonic one; on a jump, log it and wake the
    /// tasks that wait on [`Client::clock_jumps`].
    fn tick_jump_detector(&self) {
        let jump = match self.jump_detector.lock() {
            Ok(mut d) => d.tick(self.config.clock.mono_now(), self.config.clock.wall_now()),
            Err(poisoned) => poisoned
                .into_inner()
                .tick(self.config.clock.mono_now(), self.config.clock.wall_now()),
        };
        if let Some(jump) = jump {
            info!(
                ?jump,
                "the wall clock jumped; checking publication deadlines now"
            );
            self.clock_jumps.send_modify(|n| *n += 1);
        }
    }

    /// True once [`Client::shutdown`] has begun.
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The persistent guard set (NodeIds, in the order chosen).
    pub fn guards(&self) -> Vec<anonnet_crypto::NodeId> {
        self.guards.lock().map(|g| g.ids()).unwrap_or_default()
    }

    /// Let `circuit` take no new streams.
    fn retire(&self, circuit: &Arc<Circuit>) {
        self.with_pool(|pool| {
            for s in pool.iter_mut().filter(|s| Arc::ptr_eq(&s.circuit, circuit)) {
                s.retired = true;
            }
        });
        self.refill.notify_one();
    }

    /// Clean circuits ready in the pool now.
    fn clean_count(&self) -> usize {
        let port = self.config.pool_port;
        self.with_pool(|pool| {
            pool.iter()
                .filter(|s| !s.retired && s.isolation.is_none() && s.circuit.exit_allows_port(port))
                .count()
        })
    }

    /// Exits of live circuits that do not belong to `owner`: a clean pool circuit is built
    /// away from every other circuit's exit, a group's circuit away from other groups'.
    fn exits_not_of(&self, owner: Option<&IsolationKey>) -> Vec<anonnet_crypto::NodeId> {
        self.with_pool(|pool| {
            pool.iter()
                .filter(|s| !s.retired && (owner.is_none() || s.isolation.as_ref() != owner))
                .filter_map(|s| s.circuit.path().last().copied())
                .collect()
        })
    }

    /// Take a circuit for a stream to `port` with `isolation`: one already used by the same
    /// key, else a clean one from the pool (which then belongs to the key), preferring a
    /// clean circuit whose exit no other group uses.
    fn pick(&self, port: u16, isolation: &IsolationKey) -> Option<Arc<Circuit>> {
        let picked = self.with_pool(|pool| {
            let usable = |s: &Slot| {
                !s.retired && s.circuit.exit_allows_port(port) && s.circuit.has_stream_capacity()
            };
            if let Some(s) = pool
                .iter()
                .rev()
                .find(|s| usable(s) && s.isolation.as_ref() == Some(isolation))
            {
                return Some((s.circuit.clone(), false));
            }
            let taken: Vec<_> = pool
                .iter()
                .filter(|s| !s.retired && s.isolation.as_ref().is_some_and(|k| k != isolation))
                .filter_map(|s| s.circuit.path().last().copied())
                .collect();
            let fresh_exit = |s: &Slot| s.circuit.path().last().is_some_and(|e| !taken.contains(e));
            let index = pool
                .iter()
                .position(|s| usable(s) && s.isolation.is_none() && fresh_exit(s))
                .or_else(|| pool.iter().position(|s| usable(s) && s.isolation.is_none()))?;
            let s = pool.get_mut(index)?;
            s.isolation = Some(isolation.clone());
            s.first_used = Some(Instant::now());
            Some((s.circuit.clone(), true))
        });
        let (circuit, took_clean) = picked?;
        if took_clean {
            self.refill.notify_one();
        }
        Some(circuit)
    }

    /// Build a new circuit whose exit allows `port`, retrying other paths up to 3 times.
    /// It joins the pool clean, or already owned by `owner`.
    ///
    /// # Errors
    /// [`ClientError::Path`] when no path exists, else the last build failure.
    async fn build_circuit(
        &self,
        port: u16,
        owner: Option<&IsolationKey>,
    ) -> Result<Arc<Circuit>, ClientError> {
        self.ready_to_build().await?;
        let mut last = ClientError::Circuit(CircuitError::Closed);
        let mut avoid = Vec::new();
        for _ in 0..BUILD_ATTEMPTS {
            let other_exits = self.exits_not_of(owner);
            let req = PathRequest {
                other_exits: &other_exits,
                ..PathRequest::port(port)
            };
            let path = match self.select_path(req, &avoid, false) {
                Ok(p) => p,
                // The relays we avoid may be all there is: try them again.
                Err(_)
                    if !avoid.is_empty() || !self.scores().avoided(Instant::now()).is_empty() =>
                {
                    avoid.clear();
                    self.select_path_ignoring_scores(req, &[], false)?
                }
                Err(e) => return Err(e),
            };
            let ids: Vec<_> = path.iter().map(|r| r.node_id).collect();
            let built = tokio::time::timeout(
                self.config.circuit_build_timeout,
                Circuit::build(
                    &self.links,
                    path,
                    self.stream_counters.clone(),
                    self.config.circuit_handshake,
                ),
            )
            .await
            .unwrap_or(Err(CircuitError::Timeout));
            match built {
                Ok(c) => {
                    self.counters.circuits_built.fetch_add(1, Ordering::Relaxed);
                    for id in &ids {
                        self.scores().success(*id);
                    }
                    self.emit(ClientEvent::CircuitBuilt {
                        id: c.id(),
                        path: path_hex(&c),
                        build_ms: c.build_time().as_secs_f64() * 1000.0,
                    });
                    self.with_pool(|pool| {
                        pool.push(Slot {
                            circuit: c.clone(),
                            isolation: owner.cloned(),
                            first_used: owner.map(|_| Instant::now()),
                            retired: false,
                        })
                    });
                    return Ok(c);
                }
                Err(e) => {
                    self.counters
                        .circuit_build_failures
                        .fetch_add(1, Ordering::Relaxed);
                    anonnet_net::warn_limited!("circuit build failed: {e}");
                    self.emit(ClientEvent::Error {
                        message: format!("circuit build failed: {e}"),
                    });
                    // Avoid the relay that failed: the one a hop could not extend to, the
                    // hop whose handshake failed, or the guard whose link failed.
                    let blamed = blamed_relay(&e, &ids);
                    if let Some(id) = blamed {
                        avoid.push(id);
                        if !self.excused() {
                            self.scores().failure(id, Instant::now());
                        }
                    }
                    last = e.into();
                }
            }
        }
        Err(last)
    }

    /// Open a stream to `target:port` with the default isolation key.
    ///
    /// # Errors
    /// As [`Client::connect_isolated`].
    pub async fn connect(&self, target: Target, port: u16) -> Result<DataStream, ClientError> {
        self.connect_isolated(target, port, &IsolationKey::default())
            .await
    }

    /// Open a stream to `target:port` on a circuit of the `isolation` group: one it already
    /// uses, else a clean pre-built one, else a new one. A circuit that fails under the
    /// stream is closed and the stream retried on another after a short backoff (50–100 ms,
    /// doubling, with jitter; 3 attempts). Host names go to the exit unresolved.
    ///
    /// # Errors
    /// [`ClientError`]; its kind ([`anonnet_error::HasKind::kind`]) says which reply a
    /// front end should give.
    /// [`ClientError::Disabled`] while proxying is off.
    pub async fn connect_isolated(
        &self,
        target: Target,
        port: u16,
        isolation: &IsolationKey,
    ) -> Result<DataStream, ClientError> {
        self.connect_with(target, port, isolation, &[]).await
    }

    /// [`Client::connect_isolated`], with `early` sent optimistically behind `BEGIN` when
    /// the destination is a hidden service (see [`Client::connect_isolated_with_early_data`]).
    async fn connect_with(
        &self,
        target: Target,
        port: u16,
        isolation: &IsolationKey,
        early: &[u8],
    ) -> Result<DataStream, ClientError> {
        if !self.is_enabled() {
            return Err(ClientError::Disabled);
        }
        if port == 0 {
            return Err(ClientError::BadTarget("port 0".into()));
        }
        if let Target::Host(h) = &target {
            anonnet_wire::relay::check_host(h)
                .map_err(|e| ClientError::BadTarget(e.to_string()))?;
        }
        let result = match &target {
            Target::Host(h) if is_hidden(&target) => {
                self.connect_hidden(h, port, isolation, early).await
            }
            _ => self.open_stream(target, port, isolation).await,
        };
        match &result {
            Ok(_) => self.counters.streams_opened.fetch_add(1, Ordering::Relaxed),
            Err(_) => self
                .counters
                .stream_failures
                .fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// As [`Client::connect_isolated`], but *optimistic* (§6.5): the stream is returned as
    /// soon as `BEGIN` is on its way, so the request the caller writes at once costs no
    /// extra round trip. A refusal by the exit (or the hidden service) then shows as a
    /// read error carrying [`StreamError::Refused`] (see [`Circuit::begin_optimistic`]),
    /// and no other exit is tried. A `.anon`/`.dark` destination goes optimistically on
    /// the group's cached rendezvous circuit to it (§13.5); without one the stream waits
    /// for `CONNECTED` on the circuit built for it, as by [`Client::connect_isolated`].
    /// Use it for requests that are safe to send again (HTTP `GET`, `HEAD`).
    ///
    /// # Errors
    /// As [`Client::connect_isolated`], for what fails before `BEGIN` is sent.
    pub async fn connect_optimistic_isolated(
        &self,
        target: Target,
        port: u16,
        isolation: &IsolationKey,
    ) -> Result<DataStream, ClientError> {
        if !self.is_enabled() || port == 0 {
            return self.connect_isolated(target, port, isolation).await;
        }
        if let Target::Host(h) = &target {
            if is_hidden(&target) {
                if let Some(s) = self.hs_begin_cached_optimistic(h, port, isolation).await? {
                    return Ok(s);
                }
                return self.connect_isolated(target, port, isolation).await;
            }
        }
        if let Target::Host(h) = &target {
            anonnet_wire::relay::check_host(h)
                .map_err(|e| ClientError::BadTarget(e.to_string()))?;
        }
        let result = self
            .on_exit_circuit(port, isolation, |circuit| {
                let target = target.clone();
                async move { circuit.begin_optimistic(target, port).await }
            })
            .await;
        let counter = if result.is_ok() {
            &self.counters.streams_opened
        } else {
            &self.counters.stream_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters
            .optimistic_streams
            .fetch_add(u64::from(result.is_ok()), Ordering::Relaxed);
        result
    }

    /// As [`Client::connect_isolated`] for a caller that already holds the first bytes
    /// of the stream (`early`: what a SOCKS client sent right behind its request, before
    /// our reply), which go optimistically right behind `BEGIN` (§6.5, as
    /// [`Client::connect_optimistic_isolated`]); returns once the exit answered
    /// `CONNECTED`, so the caller can still tell its application whether the stream
    /// opened. With `early` empty it is [`Client::connect_isolated`]. When the exit
    /// refuses, the bytes were not delivered and no other exit is tried: the caller
    /// answers with the refusal, as the application asked for this destination only.
    /// To a hidden service the bytes go the same way on the rendezvous circuit; when a
    /// cached one fails under them they are sent again on a fresh one (§6.5).
    ///
    /// # Errors
    /// As [`Client::connect_optimistic_isolated`]; then [`ClientError::Stream`] with
    /// [`StreamError::Refused`] (the exit's `END` reason) or [`StreamError::Timeout`]
    /// when no answer came within the stream timeout (30 s by default), or
    /// [`StreamError::Circuit`] when the circuit closed meanwhile.
    pub async fn connect_isolated_with_early_data(
        &self,
        target: Target,
        port: u16,
        isolation: &IsolationKey,
        early: &[u8],
    ) -> Result<DataStream, ClientError> {
        if early.is_empty() || is_hidden(&target) {
            return self.connect_with(target, port, isolation, early).await;
        }
        let mut stream = self
            .connect_optimistic_isolated(target, port, isolation)
            .await?;
        self.send_early(&mut stream, early).await?;
        Ok(stream)
    }

    /// Write `early` on an optimistic `stream` and wait for its `CONNECTED`, at most the
    /// stream timeout.
    ///
    /// # Errors
    /// [`StreamError::Refused`] (the far end's `END`), [`StreamError::Timeout`],
    /// [`StreamError::Circuit`] (the circuit closed, or broke the protocol).
    async fn send_early(&self, stream: &mut DataStream, early: &[u8]) -> Result<(), StreamError> {
        use tokio::io::AsyncWriteExt;
        let closed = || StreamError::Circuit(CircuitError::Closed);
        tokio::time::timeout(self.config.stream_timeout, async {
            stream.write_all(early).await.map_err(|_| closed())?;
            stream.flush().await.map_err(|_| closed())?;
            stream.connected().await
        })
        .await
        .unwrap_or(Err(StreamError::Timeout))
    }

    /// An optimistic stream (§6.5) to the hidden service `host` on the group's cached
    /// rendezvous circuit to it, counted as opened; `None` when there is no such circuit
    /// or it can take no new stream (the caller then connects as for any stream).
    ///
    /// # Errors
    /// As [`Client::hidden_address`].
    async fn hs_begin_cached_optimistic(
        &self,
        host: &str,
        port: u16,
        isolation: &IsolationKey,
    ) -> Result<Option<DataStream>, ClientError> {
        let started = Instant::now();
        let address = self.hidden_address(host).await?;
        let Some(c) = self
            .hs
            .rendezvous_circuit(&address, &isolation.0, Instant::now())
        else {
            return Ok(None);
        };
        match c.begin_optimistic(hs::begin_target(&address), port).await {
            Ok(s) => {
                for counter in [
                    &self.counters.hs_connects,
                    &self.counters.streams_opened,
                    &self.counters.optimistic_streams,
                ] {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                hs::log_connected(&address, started, true);
                Ok(Some(s))
            }
            Err(e) => {
                debug!("cached rendezvous circuit failed: {e}");
                c.close();
                Ok(None)
            }
        }
    }

    /// The address of the hidden service `host`: a `.anon` address parsed, a `.dark` name
    /// resolved ([`Client::resolve_name`]).
    ///
    /// # Errors
    /// [`ClientError::HiddenService`] for a malformed address, or as
    /// [`Client::resolve_name`].
    async fn hidden_address(&self, host: &str) -> Result<HsAddress, ClientError> {
        if is_suffix(host, DARK_SUFFIX) {
            self.resolve_name(host).await
        } else {
            HsAddress::parse(host).map_err(|e| HsFailure::BadAddress(e.to_string()).into())
        }
    }

    /// A stream to a hidden service's `port` on a rendezvous circuit, with `early` (when
    /// not empty) sent right behind `BEGIN` and `CONNECTED` awaited as for any stream.
    ///
    /// # Errors
    /// As [`Circuit::begin`]; with `early`, as [`Client::send_early`].
    async fn hs_begin(
        &self,
        circuit: &Arc<Circuit>,
        address: &HsAddress,
        port: u16,
        early: &[u8],
    ) -> Result<DataStream, StreamError> {
        let target = hs::begin_target(address);
        if early.is_empty() {
            return circuit
                .begin(target, port, self.config.stream_timeout)
                .await;
        }
        let mut stream = circuit.begin_optimistic(target, port).await?;
        self.send_early(&mut stream, early).await?;
        self.counters
            .optimistic_streams
            .fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    }

    async fn open_stream(
        &self,
        target: Target,
        port: u16,
        isolation: &IsolationKey,
    ) -> Result<DataStream, ClientError> {
        let timeout = self.config.stream_timeout;
        self.on_exit_circuit(port, isolation, |circuit| {
            let target = target.clone();
            async move { circuit.begin(target, port, timeout).await }
        })
        .await
    }

    /// Resolve `target` through the network with the default isolation key.
    ///
    /// # Errors
    /// As [`Client::resolve_isolated`].
    pub async fn resolve(&self, target: Target) -> Result<Vec<ResolvedAnswer>, ClientError> {
        self.resolve_isolated(target, &IsolationKey::default())
            .await
    }

    /// Ask an exit to resolve `target` (§6.2, §8.3) on a circuit of the `isolation` group
    /// (one that can carry port-80 streams, `RESOLVE_PORT`, picked or built as for a
    /// stream, with the same retries): a host name gives its addresses (1..=16, IPv4
    /// first), an address its name. Nothing is resolved locally.
    ///
    /// # Errors
    /// [`ClientError::Disabled`] while proxying is off; [`ClientError::BadTarget`] for a
    /// malformed name or a `.anon`/`.dark` name (those have no address: connect to them);
    /// [`ClientError::Stream`] with [`StreamError::Refused`]: RESOLVEFAILED when the name
    /// or address does not resolve, TIMEOUT when the exit's lookup failed for now,
    /// EXITPOLICY when the exit may not answer; else as [`Client::connect_isolated`].
    pub async fn resolve_isolated(
        &self,
        target: Target,
        isolation: &IsolationKey,
    ) -> Result<Vec<ResolvedAnswer>, ClientError> {
        if !self.is_enabled() {
            return Err(ClientError::Disabled);
        }
        if let Target::Host(h) = &target {
            anonnet_wire::relay::check_host(h)
                .map_err(|e| ClientError::BadTarget(e.to_string()))?;
            if is_suffix(h, ANON_SUFFIX) || is_suffix(h, DARK_SUFFIX) {
                return Err(ClientError::BadTarget(
                    "a hidden-service name has no address to resolve; connect to it instead".into(),
                ));
            }
        }
        let timeout = self.config.stream_timeout;
        let answers = self
            .on_exit_circuit(RESOLVE_PORT, isolation, |circuit| {
                let target = target.clone();
                async move { circuit.resolve(target, timeout).await }
            })
            .await;
        self.counters.resolves.fetch_add(1, Ordering::Relaxed);
        match answers?.as_slice() {
            [ResolvedAnswer::Error] => Err(StreamError::Refused(EndReason::ResolveFailed).into()),
            [ResolvedAnswer::TransientError] => {
                Err(StreamError::Refused(EndReason::Timeout).into())
            }
            answers => Ok(answers.to_vec()),
        }
    }

    /// Run `op` (a `BEGIN` or a `RESOLVE`) on a circuit of the `isolation` group whose
    /// exit allows `port`: one it already uses, else a clean pre-built one, else a new one.
    /// A circuit that fails under it is closed, and one whose exit does not answer in time
    /// or is out of streams is retired; then `op` is retried on another after a short
    /// backoff (50–100 ms, doubling, with jitter; 3 attempts).
    async fn on_exit_circuit<T, F, Fut>(
        &self,
        port: u16,
        isolation: &IsolationKey,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Arc<Circuit>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StreamError>>,
    {
        let mut last = ClientError::Circuit(CircuitError::Closed);
        let mut pause = Backoff::new(STREAM_RETRY, STREAM_RETRY * 2u32.pow(STREAM_ATTEMPTS - 1));
        for _attempt in 0..STREAM_ATTEMPTS {
            let circuit = match self.pick(port, isolation) {
                Some(c) => c,
                None => {
                    self.counters
                        .circuits_built_on_demand
                        .fetch_add(1, Ordering::Relaxed);
                    self.build_circuit(port, Some(isolation)).await?
                }
            };
            match op(circuit.clone()).await {
                Ok(s) => return Ok(s),
                // The circuit is fine, only full: the next round picks or builds another.
                Err(StreamError::Circuit(e @ CircuitError::TooManyStreams)) => {
                    last = ClientError::Stream(StreamError::Circuit(e));
                }
                Err(StreamError::Circuit(e)) => {
                    anonnet_net::warn_limited!(
                        circuit = circuit.id(),
                        "stream failed on circuit: {e}; retrying"
                    );
                    circuit.close();
                    last = ClientError::Stream(StreamError::Circuit(e));
                    tokio::time::sleep(pause.next_delay()).await;
                }
                // The exit did not answer in time, or is out of resources: this circuit
                // takes no more streams, and the request tries another.
                Err(
                    e @ (StreamError::Timeout | StreamError::Refused(EndReason::ResourceLimit)),
                ) => {
                    anonnet_net::warn_limited!(
                        circuit = circuit.id(),
                        "BEGIN failed: {e}; retiring the circuit, retrying"
                    );
                    self.retire(&circuit);
                    last = ClientError::Stream(e);
                    tokio::time::sleep(pause.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }
}

/// The port a `RESOLVE` circuit's exit must allow (§8.3): resolving is for web names
/// most of the time, and any exit answers it, so the client uses the circuits its web
/// streams use rather than building others.
pub const RESOLVE_PORT: u16 = 80;

/// Whether `target` is a hidden service: a `.anon` address or a `.dark` name.
fn is_hidden(target: &Target) -> bool {
    matches!(target, Target::Host(h) if is_suffix(h, ANON_SUFFIX) || is_suffix(h, DARK_SUFFIX))
}

fn is_suffix(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len()
        && host
            .get(host.len() - suffix.len()..)
            .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
}

impl Client {
    /// The HSDir rings of the consensus in use (§12.7); `None` without one.
    pub(crate) fn hs_placement(&self) -> Option<Arc<anonnet_dir::HsDirPlacement>> {
        self.directory.read().ok().and_then(|d| d.hs_placement())
    }

    /// Relays of the directory as hops to extend to (those it does not list are left out).
    pub(crate) fn hops_of(&self, ids: &[anonnet_crypto::NodeId]) -> Vec<HopSpec> {
        match self.directory.read() {
            Ok(d) => ids.iter().filter_map(|id| d.hop(id)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Count one descriptor fetch from an HSDir (`counters.hs_descriptor_fetches`).
    pub(crate) fn count_descriptor_fetch(&self) {
        self.counters
            .hs_descriptor_fetches
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Build a circuit for hidden-service work (§13): guard, middle, then `end` when given
    /// (a relay named by a descriptor or an introduction), else any relay as the last hop.
    /// Relays in `avoid` are not used. It does not join the exit pool.
    ///
    /// # Errors
    /// [`ClientError::Path`] when no path exists, else the last build failure.
    pub async fn build_internal(
        &self,
        end: Option<HopSpec>,
        avoid: &[anonnet_crypto::NodeId],
    ) -> Result<Arc<Circuit>, ClientError> {
        self.ready_to_build().await?;
        let mut last = ClientError::Circuit(CircuitError::Closed);
        let mut failed: Vec<anonnet_crypto::NodeId> = avoid.to_vec();
        failed.extend(end.map(|e| e.node_id));
        // The handshake types the end answers, from its consensus entry; a relay our
        // directory does not list is tried with the setting's own type (§9.2).
        let setting = self.config.circuit_handshake;
        let end_with_types = end.map(|spec| {
            let listed = self
                .directory
                .read()
                .ok()
                .and_then(|d| d.get(&spec.node_id).map(|r| r.descriptor.handshakes));
            let offered = listed
                .or_else(|| anonnet_wire::HandshakeSet::of(setting.type_number()))
                .unwrap_or_default();
            (spec, offered)
        });
        if let Some((spec, offered)) = end_with_types {
            if let Some(prefix) = self.take_prefix(&spec, avoid) {
                let finished = tokio::time::timeout(
                    self.config.circuit_build_timeout,
                    prefix.finish(Some((spec, offered)), self.stream_counters.clone(), setting),
                )
                .await
                .unwrap_or(Err(CircuitError::Timeout));
                match finished {
                    Ok(c) => {
                        self.counters
                            .hs_prefixes_used
                            .fetch_add(1, Ordering::Relaxed);
                        self.counters.circuits_built.fetch_add(1, Ordering::Relaxed);
                        return Ok(c);
                    }
                    // A prefix may have died while it waited (a relay restarted, a link
                    // closed), or the end may not answer: build afresh below, blaming no
                    // relay of the prefix for it.
                    Err(e) => debug!("extending a pre-built prefix failed: {e}"),
                }
            }
        }
        for _ in 0..BUILD_ATTEMPTS {
            // Guard → vanguard → end (§9.4).
            let vanguards = self.vanguard_ids();
            let req = PathRequest {
                any_last_hop: true,
                last_hop_addr: end.map(|e| e.addr),
                vanguards: &vanguards,
                ..PathRequest::port(0)
            };
            let prefix = end.is_some();
            let path = match self.select_path(req, &failed, prefix) {
                Ok(p) => p,
                // Relays avoided for their scores may be all there is: try them again.
                Err(_) => self.select_path_ignoring_scores(req, &failed, prefix)?,
            };
            let ids: Vec<_> = path.iter().map(|r| r.node_id).collect();
            let built = tokio::time::timeout(
                self.config.circuit_build_timeout,
                Circuit::build_to(
                    &self.links,
                    path,
                    end_with_types,
                    self.stream_counters.clone(),
                    setting,
                ),
            )
            .await
            .unwrap_or(Err(CircuitError::Timeout));
            match built {
                Ok(c) => {
                    self.counters.circuits_built.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => {
                    self.counters
                        .circuit_build_failures
                        .fetch_add(1, Ordering::Relaxed);
                    debug!("internal circuit build failed: {e}");
                    let blamed = blamed_relay(&e, &ids);
                    // The named end cannot be replaced: only blame relays we chose.
                    if let Some(id) = blamed {
                        failed.push(id);
                        if !self.excused() {
                            self.scores().failure(id, Instant::now());
                        }
                    } else if end.is_some() {
                        return Err(e.into());
                    }
                    last = e.into();
                }
            }
        }
        Err(last)
    }

    /// A pre-built prefix (§9.4) that may serve as the guard and second hop of a circuit to
    /// `end`, removed from the store: one at most [`PREFIX_MAX_AGE`] old whose guard is
    /// still a usable member of the guard set and whose second hop is still a vanguard,
    /// with no relay in `avoid` or avoided for its score, not containing `end`, and (unless
    /// `allow_same_subnet`) sharing no /16 (/32) with it: the conditions a fresh
    /// [`Client::build_internal`] path meets, so taking a fitting prefix and building
    /// afresh otherwise gives the same distribution of paths. Prefixes that no longer fit
    /// any circuit (too old, guard or vanguard gone) are dropped on the way.
    fn take_prefix(
        &self,
        end: &HopSpec,
        avoid: &[anonnet_crypto::NodeId],
    ) -> Option<CircuitPrefix> {
        let scored = self.scores().avoided(Instant::now());
        let guards = self.guard_ids(&scored);
        let vanguards = self.vanguard_ids();
        let end_net = crate::directory::subnet_of(end.addr);
        let mut prefixes = self.prefixes.lock().ok()?;
        prefixes.retain(|p| {
            let hops: Vec<&HopSpec> = p.relays().collect();
            p.age() < PREFIX_MAX_AGE
                && hops.first().is_some_and(|g| guards.contains(&g.node_id))
                && hops.get(1).is_some_and(|v| vanguards.contains(&v.node_id))
                && hops.iter().all(|h| !scored.contains(&h.node_id))
        });
        let fits = prefixes.iter().position(|p| {
            p.relays().all(|h| {
                h.node_id != end.node_id
                    && !avoid.contains(&h.node_id)
                    && (self.config.allow_same_subnet
                        || end_net.is_none()
                        || crate::directory::subnet_of(h.addr) != end_net)
            })
        })?;
        let prefix = prefixes.swap_remove(fits);
        drop(prefixes);
        self.prefix_refill.notify_one();
        Some(prefix)
    }

    /// Drop every pre-built prefix (new identity; shutdown).
    fn take_prefixes(&self) {
        if let Ok(mut p) = self.prefixes.lock() {
            p.clear();
        }
        self.prefix_refill.notify_one();
    }

    /// Build one guard → vanguard prefix (§9.4) and store it.
    ///
    /// # Errors
    /// As [`Client::build_internal`].
    async fn build_prefix(&self) -> Result<(), ClientError> {
        self.ready_to_build().await?;
        let vanguards = self.vanguard_ids();
        let req = PathRequest {
            any_last_hop: true,
            vanguards: &vanguards,
            ..PathRequest::port(0)
        };
        let path = match self.select_path(req, &[], true) {
            Ok(p) => p,
            Err(_) => self.select_path_ignoring_scores(req, &[], true)?,
        };
        let ids: Vec<_> = path.iter().map(|r| r.node_id).collect();
        let built = tokio::time::timeout(
            self.config.circuit_build_timeout,
            Circuit::build_prefix(&self.links, path, self.config.circuit_handshake),
        )
        .await
        .unwrap_or(Err(CircuitError::Timeout));
        match built {
            Ok(prefix) => {
                self.counters
                    .hs_prefixes_built
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(mut p) = self.prefixes.lock() {
                    p.push(prefix);
                }
                Ok(())
            }
            Err(e) => {
                self.counters
                    .circuit_build_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(id) = blamed_relay(&e, &ids) {
                    if !self.excused() {
                        self.scores().failure(id, Instant::now());
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Pre-built prefixes held now.
    fn prefix_count(&self) -> usize {
        self.prefixes.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Choose a path for `req` (its `avoid`, `guards` and `allow_same_subnet` are set
    /// here): relays in `avoid` and those avoided for their scores are left out; the
    /// primary guard is tried first, then any usable guard of the set. With `prefix`, only
    /// a guard and a middle ([`Directory::choose_prefix`]). With `req.vanguards`, the
    /// second hop must be a vanguard: no fresh middle here (only
    /// [`Client::select_path_ignoring_scores`] falls back to one), so vanguards avoided for
    /// their scores are retried before the set is left.
    ///
    /// # Errors
    /// [`ClientError::Path`] when no path fits.
    fn select_path(
        &self,
        req: PathRequest<'_>,
        avoid: &[anonnet_crypto::NodeId],
        prefix: bool,
    ) -> Result<Vec<anonnet_crypto::VerifiedDescriptor>, ClientError> {
        let scored = self.scores().avoided(Instant::now());
        let mut all_avoid = avoid.to_vec();
        all_avoid.extend(scored.iter().copied());
        let req = PathRequest {
            vanguard_fallback: false,
            ..req
        };
        self.choose_with_guards(req, &all_avoid, &scored, prefix)
    }

    /// As [`Client::select_path`], avoiding only `avoid` (not relays avoided for their
    /// scores), for when the avoided relays are all there is. When no vanguard fits the
    /// path here, its second hop is a fresh middle (logged at debug).
    fn select_path_ignoring_scores(
        &self,
        req: PathRequest<'_>,
        avoid: &[anonnet_crypto::NodeId],
        prefix: bool,
    ) -> Result<Vec<anonnet_crypto::VerifiedDescriptor>, ClientError> {
        let scored = self.scores().avoided(Instant::now());
        let req = PathRequest {
            vanguard_fallback: true,
            ..req
        };
        self.choose_with_guards(req, avoid, &scored, prefix)
    }

    fn choose_with_guards(
        &self,
        req: PathRequest<'_>,
        avoid: &[anonnet_crypto::NodeId],
        scored: &[anonnet_crypto::NodeId],
        prefix: bool,
    ) -> Result<Vec<anonnet_crypto::VerifiedDescriptor>, ClientError> {
        // The first usable guard of the set is the primary one; the others are only used
        // when no path can start at it. When every guard is avoided (a full set, §9.1),
        // they are used anyway: an empty list would let any GUARD relay be the first hop.
        let mut usable_guards = self.guard_ids(scored);
        if usable_guards.is_empty() {
            usable_guards = self.guard_ids(&[]);
        }
        let primary: Vec<_> = usable_guards.iter().take(1).copied().collect();
        let dir = self
            .directory
            .read()
            .map_err(|_| ClientError::NotEnoughRelays { usable: 0 })?;
        let choose = |guards: &[anonnet_crypto::NodeId]| {
            let req = PathRequest {
                avoid,
                guards,
                allow_same_subnet: self.config.allow_same_subnet,
                ..req
            };
            if prefix {
                dir.choose_prefix(&req, &mut rand::rng())
            } else {
                dir.choose_path(&req, &mut rand::rng())
            }
        };
        Ok(choose(&primary).or_else(|_| choose(&usable_guards))?)
    }

    /// The vanguard set (§9.4), after replacing expired vanguards and
    /// those the directory no longer lists (saved when it changed).
    fn vanguard_ids(&self) -> Vec<anonnet_crypto::NodeId> {
        let mut set = match self.vanguards.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Ok(dir) = self.directory.read() {
            if !self.is_stopping() && set.ensure(&dir, now_unix(), &mut rand::rng()) {
                if let Err(e) = set.save() {
                    anonnet_net::warn_limited!(
                        "cannot save the vanguard set ({} in the state directory): {e}",
                        crate::vanguards::VANGUARD_FILE
                    );
                }
                debug!(
                    vanguards = %anonnet_net::logging::sensitive(
                        set.ids().iter().map(|v| v.short()).collect::<Vec<_>>().join(",")
                    ),
                    "vanguard set"
                );
            }
        }
        set.ids()
    }

    /// Publish `config` as a hidden service hosted by this client (§13): introduction
    /// points, descriptor and `.dark` name follow in the background.
    ///
    /// # Errors
    /// [`ServiceError`] for an unusable key file or name.
    pub fn publish(
        self: &Arc<Self>,
        config: ServiceConfig,
    ) -> Result<Arc<HostedService>, ServiceError> {
        let service = host::start(self, config)?;
        lock_services(&self.services).push(service.clone());
        Ok(service)
    }

    /// Stop hosting the service with `address`. True when it was hosted.
    pub fn unpublish(&self, address: &HsAddress) -> bool {
        let mut services = lock_services(&self.services);
        let before = services.len();
        services.retain(|s| {
            let keep = s.address() != *address;
            if !keep {
                s.stop();
            }
            keep
        });
        services.len() != before
    }

    /// Stop for good, telling the network at once: stop the hosted services, close the
    /// QUIC endpoint (relays see every link close and destroy this client's circuits, so
    /// introduction points drop the services' registrations) and wait, at most `within`,
    /// for the goodbyes to leave. From the start of the call no relay is blamed for a lost
    /// link, the guard set stays as it is and no circuit is built.
    pub async fn shutdown(&self, within: Duration) {
        self.stopping.store(true, Ordering::Release);
        for s in lock_services(&self.services).drain(..) {
            s.stop();
        }
        let endpoint = self.links.endpoint();
        endpoint.close();
        let _ = tokio::time::timeout(within, endpoint.wait_idle()).await;
    }

    /// The hidden services this client hosts.
    pub fn services(&self) -> Vec<Arc<HostedService>> {
        lock_services(&self.services).clone()
    }

    /// Resolve a `.dark` name: the address book, a fresh cache entry, else the DHT through
    /// a circuit (pinning the owner key the first time).
    ///
    /// # Errors
    /// [`ClientError::HiddenService`] for a malformed or unknown name, or a changed owner.
    pub async fn resolve_name(&self, host: &str) -> Result<HsAddress, ClientError> {
        let name = DarkName::parse(host).map_err(|e| HsFailure::BadName(format!("{host}: {e}")))?;
        let clock = &self.config.clock;
        if let Some(a) = self
            .hs
            .known_name(&name, clock.unix_now(), clock.mono_now())
        {
            return Ok(a);
        }
        let authorities = self.config.network.as_ref().map(|n| n.name_authorities());
        // A lying last relay can answer with nothing or with records that do not verify
        // (no receipts, §12.5): ask again through another circuit, a few times, each
        // ending at a relay not asked yet (§13.7). In a small network the path rules can
        // leave one possible last hop (the vanguards are kept for the second hop): the
        // relays already asked are avoided, and only when no path avoids them all is
        // any last hop taken again.
        let mut last = HsFailure::UnknownName(name.to_string());
        let mut asked: Vec<anonnet_crypto::NodeId> = Vec::new();
        for attempt in 0..NAME_LOOKUP_ATTEMPTS {
            let circuit = match self.build_internal(None, &asked).await {
                Ok(c) => c,
                Err(ClientError::Path(_)) if !asked.is_empty() => {
                    self.build_internal(None, &[]).await?
                }
                Err(e) => return Err(e),
            };
            let records = dht_fetch(&circuit, hs::name_key(&name), RecordKind::DarkName).await;
            let last_hop = circuit.last_hop().map(|h| h.node_id);
            circuit.close();
            asked.extend(last_hop);
            let records = match records {
                Ok(r) => r,
                Err(e) => {
                    debug!(attempt, last_hop = ?last_hop, "name lookup failed: {e}");
                    last = HsFailure::UnknownName(format!("{name}: {e}"));
                    continue;
                }
            };
            debug!(attempt, last_hop = ?last_hop, records = records.len(), "name lookup answered");
            match self.hs.choose_name(
                &name,
                &records,
                clock.unix_now(),
                clock.mono_now(),
                authorities.as_ref(),
            ) {
                Ok(address) => return Ok(address),
                Err(e @ HsFailure::OwnerChanged { .. }) => return Err(e.into()),
                Err(e) => last = e,
            }
        }
        Err(last.into())
    }

    /// Fetch `address`'s descriptor from its HSDirs (§12.7, §13.7), the cache when fresh:
    /// for each period to try, the responsible HSDirs in random order,
    /// [`HSDIR_SPREAD_FETCH`] at a time in parallel, each through its own circuit; the
    /// highest revision that opens among a batch's answers wins. The next batch is asked
    /// only when a whole batch had nothing that opens (withheld, stale-only, unreachable)
    /// or, with `failed` (the revision whose introduction points just failed; the cache
    /// is skipped then), nothing newer than it; when no HSDir has anything newer, the
    /// newest seen is returned all the same (the failure may have been passing).
    ///
    /// # Errors
    /// [`HsFailure::NoDescriptor`] when no HSDir had one (or the client has no consensus
    /// to place descriptors with).
    async fn hs_descriptor(
        &self,
        address: &HsAddress,
        failed: Option<u64>,
    ) -> Result<hs::Revised, ClientError> {
        let clock = &self.config.clock;
        if failed.is_none() {
            if let Some(d) = self
                .hs
                .descriptor(address, clock.unix_now(), clock.mono_now())
            {
                return Ok(d);
            }
        }
        let now = clock.unix_now();
        let no_descriptor = || HsFailure::NoDescriptor(address.to_host());
        let Some(placement) = self.hs_placement() else {
            debug!("no consensus: hidden-service descriptors cannot be placed");
            return Err(no_descriptor().into());
        };
        let mut found: Option<(hs::Revised, u64)> = None;
        'periods: for period in hs::periods_to_fetch(now) {
            let Some(key) = hs::descriptor_key(address, period) else {
                continue;
            };
            let mut hsdirs = placement.responsible(period, &key);
            hsdirs.shuffle(&mut rand::rng());
            for batch in hsdirs.chunks(HSDIR_SPREAD_FETCH) {
                let records = crate::hsdir::fetch(self, batch, key).await;
                let Some(best) = hs::best_descriptor(address, &records, now) else {
                    continue;
                };
                let newer = failed.is_none_or(|f| best.0 .0 > f);
                if found.as_ref().is_none_or(|((r, _), _)| best.0 .0 > *r) {
                    found = Some(best);
                }
                if newer {
                    break 'periods;
                }
            }
        }
        let (desc, expires) = found.ok_or_else(no_descriptor)?;
        self.hs
            .put_descriptor(*address, desc.clone(), expires, clock.mono_now());
        Ok(desc)
    }

    /// A stream to the hidden service `host` (`.anon` address or `.dark` name): on the
    /// group's cached rendezvous circuit to it, else through a fresh descriptor,
    /// introduction and rendezvous (two attempts). `early` travels behind `BEGIN` (§6.5);
    /// when a cached circuit fails under it, it is sent again on the fresh one, as Tor
    /// replays optimistic data on a retried stream.
    async fn connect_hidden(
        &self,
        host: &str,
        port: u16,
        isolation: &IsolationKey,
        early: &[u8],
    ) -> Result<DataStream, ClientError> {
        let started = Instant::now();
        let address = self.hidden_address(host).await?;
        self.counters.hs_connects.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self
            .hs
            .rendezvous_circuit(&address, &isolation.0, Instant::now())
        {
            match self.hs_begin(&c, &address, port, early).await {
                Ok(s) => {
                    hs::log_connected(&address, started, true);
                    return Ok(s);
                }
                Err(StreamError::Refused(r)) => return Err(StreamError::Refused(r).into()),
                Err(e) => {
                    debug!("cached rendezvous circuit failed: {e}");
                    c.close();
                }
            }
        }
        let mut last =
            ClientError::HiddenService(HsFailure::Introduction(HsStep::NoIntroductionPoint));
        let mut failed = None;
        // After an unanswered attempt at a service with proof of work, the next one
        // solves at least twice the effort it used (prop 327's retry, §13.9).
        let mut min_effort = 0u32;
        for _attempt in 0..2 {
            let (revision, desc) = self.hs_descriptor(&address, failed).await?;
            match self.rendezvous_with(&address, &desc, min_effort).await {
                Ok(circuit) => {
                    let stream = self.hs_begin(&circuit, &address, port, early).await?;
                    self.hs
                        .put_rendezvous_circuit(address, &isolation.0, &circuit, Instant::now());
                    hs::log_connected(&address, started, false);
                    return Ok(stream);
                }
                Err(e) => {
                    anonnet_net::warn_limited!(
                        service = %anonnet_net::logging::sensitive(&address),
                        "connecting to the service: {e}"
                    );
                    self.hs.forget_descriptor(&address);
                    failed = Some(revision);
                    if let Some(p) = desc.pow {
                        min_effort = p.suggested_effort.max(min_effort).saturating_mul(2).max(1);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Park a rendezvous circuit, introduce through the descriptor's introduction points
    /// (in random order) and wait for the service: the joined circuit with its end-to-end
    /// hop.
    async fn rendezvous_with(
        &self,
        address: &HsAddress,
        desc: &HsDescriptorBody,
        min_effort: u32,
    ) -> Result<Arc<Circuit>, ClientError> {
        let cookie: [u8; COOKIE_LEN] = rand::random();
        let mut points = desc.intro_points.clone();
        points.shuffle(&mut rand::rng());
        let first = points.first().cloned();
        let rp = async {
            let c = self.build_internal(None, &[]).await?;
            let mut rx = c.control_messages();
            c.send_to_last_relay(RelayMsg::EstablishRendezvous { cookie })
                .await?;
            hs::wait_for(&mut rx, "RENDEZVOUS_ESTABLISHED", |m| {
                matches!(m, RelayMsg::RendezvousEstablished).then_some(())
            })
            .await
            .map_err(HsFailure::Rendezvous)?;
            Ok::<_, ClientError>((c, rx))
        };
        // The first introduction circuit is built while the rendezvous point is set up.
        let intro = async {
            match &first {
                Some(p) => Some(self.build_internal(Some(hs::hop_of(&p.relay)), &[]).await),
                None => None,
            }
        };
        // The proof of work (§13.9) is solved in a blocking task meanwhile: the
        // descriptor's suggested effort (at least `min_effort` on a retry), capped by
        // `hs_pow_max_effort`.
        let pow = async {
            let params = desc.pow?;
            let effort = params
                .suggested_effort
                .max(min_effort)
                .min(self.config.hs_pow_max_effort);
            // Effort 0 earns nothing over no proof: solve only when asked for more.
            if effort == 0 {
                return None;
            }
            let id = *address.public();
            let nonce: [u8; 16] = rand::random();
            tokio::task::spawn_blocking(move || {
                anonnet_crypto::hs_pow::solve(&id, &params.seed, effort, nonce)
            })
            .await
            .ok()
        };
        let (rp, first_circuit, pow) = tokio::join!(rp, intro, pow);
        let (rp_circuit, mut rp_rx) = rp?;
        let rp_hop = rp_circuit
            .last_hop()
            .ok_or(ClientError::Circuit(CircuitError::Closed))?;
        let mut first_circuit = first_circuit;
        let mut why = HsStep::NoIntroductionPoint;
        for point in &points {
            let intro = Introduction::new(address, point, cookie, hs::link_of(&rp_hop))?;
            let sealed = intro.sealed(point, pow)?;
            let circuit = match first_circuit.take() {
                Some(c) => c,
                None => {
                    self.build_internal(Some(hs::hop_of(&point.relay)), &[])
                        .await
                }
            };
            let circuit = match circuit {
                Ok(c) => c,
                Err(e) => {
                    why = HsStep::Unreachable(Box::new(e));
                    continue;
                }
            };
            let introduced = hs::introduce(&circuit, point.auth_key, sealed).await;
            circuit.close();
            if let Err(e) = introduced {
                why = e;
                continue;
            }
            let reply = hs::wait_for(&mut rp_rx, "RENDEZVOUS2", |m| match m {
                RelayMsg::Rendezvous2 { server_pk, auth } => Some((server_pk, auth)),
                _ => None,
            })
            .await
            .map_err(HsFailure::Rendezvous)?;
            let keys = intro
                .handshake
                .finish(&anonnet_crypto::ServerReply {
                    server_pk: reply.0,
                    auth: reply.1,
                })
                .map_err(|e| HsFailure::Rendezvous(e.into()))?;
            rp_circuit.add_end_to_end_hop(&keys, false);
            return Ok(rp_circuit);
        }
        rp_circuit.close();
        Err(HsFailure::Introduction(why).into())
    }
}

/// The relay a failed build blames: the one a hop could not extend to, the hop whose
/// handshake failed, or the guard whose link failed (`ids`: the path, guard first).
fn blamed_relay(
    e: &CircuitError,
    ids: &[anonnet_crypto::NodeId],
) -> Option<anonnet_crypto::NodeId> {
    match e {
        CircuitError::Extend { hop, .. } => ids.get(hop + 1).copied(),
        CircuitError::Handshake { hop, .. } => ids.get(*hop).copied(),
        CircuitError::Link { .. } | CircuitError::LinkTimeout(_) => ids.first().copied(),
        _ => None,
    }
}

fn lock_services(
    m: &Mutex<Vec<Arc<HostedService>>>,
) -> std::sync::MutexGuard<'_, Vec<Arc<HostedService>>> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Longest wait for the directory (the first consensus) before circuits are tried anyway.
const DISCOVERY_WAIT: Duration = Duration::from_secs(20);
/// First pause after a failed consensus fetch; doubles up to [`MAX_CONSENSUS_RETRY`], with
/// jitter ([`Backoff`]).
const CONSENSUS_RETRY: Duration = Duration::from_millis(500);
/// Longest pause between consensus fetch rounds while none succeeds.
const MAX_CONSENSUS_RETRY: Duration = Duration::from_secs(4);
/// Longest single sleep of the consensus task: it wakes at least this often to re-check
/// wall-clock deadlines (a suspend or a clock step moves them).
const CONSENSUS_TICK: Duration = Duration::from_secs(30);
/// When the sources asked so far have not answered within this long, the next one is asked
/// too (at most [`CONSENSUS_PARALLEL`] at once), as Tor's clients do when they bootstrap
/// (prop 210): a fallback that moved, or a source that is down, then costs this and not
/// its whole connect timeout. While the client still holds a valid consensus and a link to
/// one of the sources asked is up, the request is given [`CONSENSUS_STAGGER_HELD`]
/// instead, so that a slow download (780 KB for 10,000 relays, seconds on a slow link) is
/// not asked for twice when nothing is urgent.
const CONSENSUS_STAGGER: Duration = Duration::from_secs(2);
/// See [`CONSENSUS_STAGGER`]: a whole request timeout ([`dir::FETCH_TIMEOUT`]), but at most
/// until [`CONSENSUS_STAGGER`] after the held consensus expires.
const CONSENSUS_STAGGER_HELD: Duration = dir::FETCH_TIMEOUT;
/// Consensus sources asked at once at most.
const CONSENSUS_PARALLEL: usize = 3;

/// Keep a fresh consensus (§14.6): once `fresh_until` has passed (plus a random delay of
/// up to half a period, so clients do not all ask at once), fetch one from the guards,
/// else the authorities or fallbacks, one after another, the next one also asked when
/// none answered within [`CONSENSUS_STAGGER`] ([`CONSENSUS_STAGGER_HELD`] while the one
/// held is valid); keep the old one until its `valid_until`, then stop building circuits
/// until a newer one arrives.
async fn maintain_consensus(client: std::sync::Weak<Client>) {
    let mut retry = Backoff::new(CONSENSUS_RETRY, MAX_CONSENSUS_RETRY);
    let mut due_at: Option<u64> = None;
    loop {
        let Some(c) = client.upgrade() else { return };
        let Some(network) = c.config.network.clone() else {
            return;
        };
        if c.is_stopping() {
            return;
        }
        let now = now_unix();
        c.expire_consensus(now);
        if let Some(st) = c.consensus_status() {
            let due = *due_at.get_or_insert_with(|| {
                let half = (st.fresh_until.saturating_sub(st.valid_after) / 2).max(1);
                st.fresh_until + rand::random_range(0..=half)
            });
            if now < due {
                drop(c);
                let wait = Duration::from_secs(due - now).min(CONSENSUS_TICK);
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        let sources = c.consensus_sources(&network);
        let links = c.links.clone();
        let current_after = c.consensus_status().map_or(0, |s| s.valid_after);
        drop(c);
        let mut got = None;
        let mut why = Vec::new();
        let mut sources = sources.into_iter();
        let mut more = true;
        // Dropping the set when one answered aborts the other requests.
        let mut asking = tokio::task::JoinSet::new();
        // Requests in flight whose link is up (counted by the tasks once connected).
        let linked = Arc::new(AtomicU64::new(0));
        // Whether to ask the next source now: at the start, after a failed answer, and when
        // the stagger ran out.
        let mut launch = true;
        loop {
            if launch && more && asking.len() < CONSENSUS_PARALLEL {
                // A guard found down while an earlier source was being asked (every
                // guard's link dies at once when all relays restart) is not asked.
                let next = sources.by_ref().find(|(_, id)| {
                    let avoided = client
                        .upgrade()
                        .is_some_and(|c| c.scores().avoided(Instant::now()).contains(id));
                    if avoided {
                        why.push(format!("{}: avoided", id.short()));
                    }
                    !avoided
                });
                match next {
                    Some((addr, id)) => {
                        let (links, linked) = (links.clone(), linked.clone());
                        asking.spawn(async move {
                            let link = match links.get(addr, id).await {
                                Ok(l) => l,
                                Err(e) => return (id, false, Err(e.to_string())),
                            };
                            linked.fetch_add(1, Ordering::Relaxed);
                            (id, true, dir::fetch_on(&link).await)
                        });
                    }
                    None => more = false,
                }
            }
            if asking.is_empty() {
                break;
            }
            // While the held consensus is valid and a request is on its way over an open
            // link, no hurry, but only until the consensus expires.
            let valid_for = client
                .upgrade()
                .and_then(|c| c.consensus_status())
                .map_or(0, |s| s.valid_until.saturating_sub(now_unix()));
            let held = valid_for > 0 && linked.load(Ordering::Relaxed) > 0;
            let after = if held {
                CONSENSUS_STAGGER_HELD
                    .min(Duration::from_secs(valid_for).saturating_add(CONSENSUS_STAGGER))
            } else {
                CONSENSUS_STAGGER
            };
            let room = more && asking.len() < CONSENSUS_PARALLEL;
            tokio::select! {
                Some(done) = asking.join_next() => {
                    launch = true;
                    let Ok((id, was_linked, fetched)) = done else { continue };
                    if was_linked {
                        linked.fetch_sub(1, Ordering::Relaxed);
                    }
                    match fetched.and_then(|signed| {
                        dir::check(signed, &network, now_unix()).map_err(|e| e.to_string())
                    }) {
                        Ok(checked) if checked.status.valid_after > current_after => {
                            got = Some(checked);
                            break;
                        }
                        Ok(_) => why.push(format!("{}: no newer consensus", id.short())),
                        Err(e) => why.push(format!("{}: {e}", id.short())),
                    }
                }
                () = tokio::time::sleep(after), if room => {
                    // A link that came up meanwhile gets the longer wait, unless this was it.
                    launch = held || valid_for == 0 || linked.load(Ordering::Relaxed) == 0;
                }
            }
        }
        drop(asking);
        let Some(c) = client.upgrade() else { return };
        match got {
            Some(checked) => {
                c.install_consensus(checked);
                retry.reset();
                due_at = None;
            }
            None => {
                debug!("no newer consensus: {}", why.join("; "));
                drop(c);
                tokio::time::sleep(retry.next_delay()).await;
            }
        }
    }
}

/// Tick the absence detector every [`crate::presence::TICK`], so a resume is noticed even
/// before anything fails, and let idle rendezvous circuits go
/// ([`crate::hs::RENDEZVOUS_IDLE`]).
async fn watch_presence(client: std::sync::Weak<Client>) {
    loop {
        tokio::time::sleep(crate::presence::TICK).await;
        let Some(c) = client.upgrade() else { return };
        if c.is_stopping() {
            return;
        }
        let _ = c.excused();
        c.tick_jump_detector();
        c.hs.expire_rendezvous(Instant::now());
    }
}

/// The oldest a pre-built hidden-service prefix may be when it is taken (§9.4): as long as
/// a circuit may take new streams (Tor's MaxCircuitDirtiness), so a prefix says no more
/// about when the user started than a dirty circuit does.
pub const PREFIX_MAX_AGE: Duration = Duration::from_secs(600);

/// Keep `config.hs_prefixes` guard → vanguard prefixes built (§9.4) once the client has
/// bootstrapped, dropping those older than [`PREFIX_MAX_AGE`]; a failed build is retried
/// with the pool's backoff.
async fn maintain_prefixes(client: std::sync::Weak<Client>) {
    let mut delay = Backoff::new(POOL_RETRY, MAX_POOL_RETRY);
    if let Some(c) = client.upgrade() {
        let mut ready = c.ready.subscribe();
        drop(c);
        if ready.wait_for(|r| r.is_some()).await.is_err() {
            return;
        }
    }
    loop {
        let Some(c) = client.upgrade() else { return };
        if c.is_stopping() {
            c.take_prefixes();
            return;
        }
        if let Ok(mut p) = c.prefixes.lock() {
            p.retain(|p| p.age() < PREFIX_MAX_AGE);
        }
        if c.prefix_count() < c.config.hs_prefixes {
            match c.build_prefix().await {
                Ok(()) => delay.reset(),
                Err(e) => {
                    let wait = delay.next_delay();
                    debug!("hidden-service prefix failed: {e}; retrying in {wait:?}");
                    drop(c);
                    tokio::time::sleep(wait).await;
                }
            }
            continue;
        }
        let refill = c.prefix_refill.clone();
        drop(c);
        let notified = refill.notified();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(POOL_TICK) => {}
        }
    }
}

/// Pool circuits that must fail in a row, after the client was ready, before the status
/// says it is not ready any more (§9.2).
pub const NOT_READY_AFTER_FAILURES: u32 = 3;
/// Bootstrap percentage while ready before and no circuit can be built now: 40, the
/// "building first circuit" step.
pub const NOT_READY_PERCENT: u8 = 40;

/// Keep `pool_size` clean circuits ready; report bootstrap progress until the first one.
async fn maintain_pool(client: std::sync::Weak<Client>) {
    let mut delay = Backoff::new(POOL_RETRY, MAX_POOL_RETRY);
    let mut ready = false;
    let mut failures_in_a_row: u32 = 0;
    if let Some(c) = client.upgrade() {
        let mut discovered = c.discovered.subscribe();
        drop(c);
        let _ = tokio::time::timeout(DISCOVERY_WAIT, discovered.wait_for(|d| *d)).await;
    }
    loop {
        let Some(c) = client.upgrade() else { return };
        if c.is_stopping() {
            return;
        }
        let wanted = c.config.pool_size;
        if c.clean_count() < wanted {
            let percent = c.bootstrap.borrow().percent;
            if !ready && (20..40).contains(&percent) {
                c.set_bootstrap(40, "building first circuit");
            }
            let port = c.config.pool_port;
            let port = match c.directory.read() {
                Ok(d) if d.has_exit_for(port) => port,
                Ok(d) => (1..=u16::MAX).find(|p| d.has_exit_for(*p)).unwrap_or(port),
                Err(_) => port,
            };
            match c.build_circuit(port, None).await {
                Ok(circuit) => {
                    delay.reset();
                    failures_in_a_row = 0;
                    if !ready {
                        ready = true;
                        info!(
                            circuit = circuit.id(),
                            build_ms = circuit.build_time().as_secs_f64() * 1000.0,
                            "bootstrapped: first circuit built"
                        );
                        c.set_bootstrap(100, "ready");
                        c.ready.send_replace(Some(Ok(())));
                    } else if c.bootstrap.borrow().percent < 100 {
                        // Back after the consensus had expired.
                        info!("circuits are built again");
                        c.set_bootstrap(100, "ready");
                    }
                    continue;
                }

                Err(e) => {
                    let wait = delay.next_delay();
                    anonnet_net::warn_limited!("pool circuit failed: {e}; retrying in {wait:?}");
                    failures_in_a_row += 1;
                    if ready && failures_in_a_row >= NOT_READY_AFTER_FAILURES {
                        // Not "ready" while no circuit can be built (relays moved, the
                        // network is gone): say how much of the directory is failing.
                        let avoided = c.scores().avoided(Instant::now()).len();
                        let phase = format!(
                            "not ready: {avoided} of {} relays unreachable",
                            c.relay_count()
                        );
                        let now = c.bootstrap.borrow().clone();
                        // Only from "ready" (or to update the counts): an expired consensus
                        // says "fetching consensus" instead.
                        let was_ready = now.percent == 100 || now.phase.starts_with("not ready");
                        if was_ready && now.phase != phase {
                            c.set_bootstrap(NOT_READY_PERCENT, &phase);
                        }
                    }
                    let refill = c.refill.clone();
                    drop(c);
                    // A new consensus (new relay addresses) ends the wait early.
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = refill.notified() => {}
                    }
                    continue;
                }
            }
        }
        let refill = c.refill.clone();
        drop(c);
        let notified = refill.notified();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(POOL_TICK) => {}
        }
    }
}
