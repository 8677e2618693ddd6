//! Hidden services, host side (§12, §13): keep introduction points, publish the
//! descriptor (and a `.dark` name) through circuits, answer introductions by meeting the
//! client at its rendezvous point, and connect accepted streams to the local server.
//!
//! The service key lives in one 32-byte file (mode 0600); the `.dark` owner key is derived
//! from it, so the address, the name and its owner stay the same across restarts. Each
//! introduction point has its own fresh keys (`auth_key`, `enc_key`) and its own replay
//! cache, which live exactly as long as the point (§13.1, §13.4): an introduction recorded
//! by a former introduction point opens under no key the service still holds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngExt;

use anonnet_clock::{Backoff, Clock, Published, Refresh, Schedule, CHECK_INTERVAL};
use anonnet_crypto::dark::{make_dark_record, DarkName, DARK_POW_BITS};
use anonnet_crypto::hs::{
    descriptor_index, open_introduce, periods_to_publish, seal_descriptor, HsAddress, HsError,
    IntroKey, ServiceKey,
};
use anonnet_crypto::{IdentityKey, OnionKey};
use anonnet_wire::dht::RecordKind;
use anonnet_wire::hs::{HsDescriptorBody, IntroPoint, IntroducePlaintext, PowParams};
use anonnet_wire::relay::ESTABLISH_INTRO_CONTEXT;
use anonnet_wire::{EndReason, RelayMsg};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::circuit::{Circuit, DataStream, IncomingStream};
use crate::hs::{dht_store, hop_of, link_of, wait_for};
use crate::hs_pow::{effort_bucket, EffortController, IntroQueue, EFFORT_BUCKETS};
use crate::Client;

/// Introduction points a service keeps.
pub const INTRO_POINTS: usize = 3;
/// Lifetime of a published descriptor (seconds): 3 hours.
pub const DESCRIPTOR_LIFETIME: u64 = 3 * 3600;
/// When an unchanged descriptor is published again (§15): when 2 of its 3 hours of
/// validity are left, by the wall clock or by the monotonic time since publication (an
/// hour after publication while the clocks agree). Besides this: on change, on a new
/// placement, and when the self-check misses it.
pub const DESCRIPTOR_REFRESH: Refresh = Refresh::new(
    Duration::from_secs(DESCRIPTOR_LIFETIME),
    Duration::from_secs(2 * 3600),
);
/// Lifetime of a `.dark` record (seconds): 2 days.
pub const NAME_LIFETIME: u64 = 2 * 86_400;
/// When the `.dark` record is registered and stored again (§15): when 36 of its 48 hours
/// of validity are left (12 hours after registration while the clocks agree), or sooner
/// when the authorities' receipts run out first.
pub const NAME_REFRESH: Refresh = Refresh::new(
    Duration::from_secs(NAME_LIFETIME),
    Duration::from_secs(36 * 3600),
);
/// Rendezvous circuits a service serves at once.
pub const MAX_RENDEZVOUS: usize = 64;
/// How often a service checks whether a new consensus moved its descriptors to other
/// HSDirs (§12.7); it republishes when it did.
const PLACEMENT_CHECK: Duration = Duration::from_secs(5);
/// First pause after a failed introduction point; doubles up to [`MAX_INTRO_RETRY`], with
/// jitter ([`Backoff`]).
const INTRO_RETRY: Duration = Duration::from_millis(500);
/// Longest pause between introduction-point attempts while they fail.
const MAX_INTRO_RETRY: Duration = Duration::from_secs(30);
/// Introductions one introduction point accepts before it is replaced (rend-spec-v3's
/// `INTRO_POINT_MIN_LIFETIME_INTRODUCTIONS`, §13.2). Its replay cache holds every one of
/// them: the `E` of an accepted introduction is never forgotten while the point's key lives.
pub const INTRO_POINT_MAX_INTRODUCTIONS: usize = 16_384;
/// Shortest lifetime of an introduction point: 18 hours (§13.2).
pub const INTRO_POINT_MIN_LIFETIME: Duration = Duration::from_secs(18 * 3600);
/// Longest lifetime of an introduction point: 24 hours. Each point's lifetime is drawn
/// uniformly between [`INTRO_POINT_MIN_LIFETIME`] and this (§13.2).
pub const INTRO_POINT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for the local server to accept a connection.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One hidden service to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The local server streams are connected to (loopback, e.g. `127.0.0.1:8080`).
    pub target: SocketAddr,
    /// Port on the `.anon` address (default 80).
    pub port: u16,
    /// File holding the service key (32 bytes, created 0600 when missing).
    pub key_file: PathBuf,
    /// A `.dark` name to register for the address.
    pub dark_name: Option<String>,
    /// Proof of work on introductions (§13.9), or `None` for none.
    pub pow: Option<PowConfig>,
}

/// A service's proof-of-work settings (§13.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowConfig {
    /// Most introductions waiting for a rendezvous (entries, at least 1).
    pub queue_bound: usize,
    /// Highest effort the service ever suggests.
    pub max_effort: u32,
    /// Lowest effort the service suggests, even when idle (0 by default): for an operator
    /// who expects floods, and for measuring what a given effort costs a client.
    pub min_effort: u32,
    /// How often the suggested effort is updated.
    pub update_period: Duration,
}

impl Default for PowConfig {
    fn default() -> Self {
        PowConfig {
            queue_bound: crate::hs_pow::DEFAULT_QUEUE_BOUND,
            max_effort: crate::hs_pow::DEFAULT_MAX_EFFORT,
            min_effort: 0,
            update_period: Duration::from_millis(crate::hs_pow::DEFAULT_UPDATE_PERIOD_MS),
        }
    }
}

/// Lifetime of a proof-of-work seed (§13.9): a new one every 2 hours; solutions for the
/// previous one are accepted until it expires too.
pub const POW_SEED_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// Proof-of-work solutions remembered per seed (§13.9): a solution seen before is served
/// as effort 0; beyond this many, every further solution for the seed counts as effort 0.
pub const POW_REPLAY_MAX: usize = 65_536;

/// Proof-of-work counters of one service (§13.9), for `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PowStatus {
    /// The effort the descriptor suggests now.
    pub suggested_effort: u32,
    /// Introductions waiting in the queue now.
    pub queued: u64,
    /// Introductions taken from the queue to a rendezvous.
    pub served: u64,
    /// Dropped: the queue was full and theirs was the lowest effort.
    pub dropped_queue_full: u64,
    /// Dropped: waited longer than the queue timeout.
    pub dropped_timeout: u64,
    /// Dropped: the proof of work did not verify (or named an unknown seed).
    pub dropped_invalid: u64,
    /// Solutions seen before (served as effort 0).
    pub replayed_solutions: u64,
    /// Served, by effort bucket (`"0"`, `"1-9"`, `"10-99"`, `"100-999"`, `"1000+"`).
    pub served_by_effort: std::collections::BTreeMap<String, u64>,
}

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The key file could not be read or written.
    #[error("service key {}: {source}", path.display())]
    KeyIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file, or a directory above it, is not private enough (fs-mistrust).
    #[error("service key {}: {source}", path.display())]
    KeyUntrusted {
        /// The file or directory.
        path: PathBuf,
        /// Why it is refused.
        source: anonnet_state::PrivateError,
    },
    /// The key file does not hold the 32-byte seed.
    #[error("service key {}: {len} bytes, expected 32", path.display())]
    KeySize {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// No randomness for a new key.
    #[error("service key {}: {source}", path.display())]
    KeyGenerate {
        /// The file it was for.
        path: PathBuf,
        /// The error.
        source: anonnet_crypto::CryptoError,
    },
    /// The `.dark` name is not allowed (§12.5).
    #[error("service name {name}: {source}")]
    Name {
        /// The name asked for.
        name: String,
        /// Why it is not allowed.
        source: anonnet_crypto::dark::DarkError,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix time in milliseconds on `clock`: the floor of a descriptor's `revision` (§13.2),
/// so that a service restarted within the same second still publishes a higher revision
/// than the one its previous run left on the HSDirs.
fn now_unix_millis(clock: &Clock) -> u64 {
    clock
        .wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Load the 32-byte service key seed from `path`, creating it (mode 0600, parent
/// directories 0700) when it does not exist. The file and the directories above it are
/// checked first ([`anonnet_state::check_private_file`], fs-mistrust).
///
/// # Errors
/// [`ServiceError::KeyIo`] when the file cannot be read or written,
/// [`ServiceError::KeySize`] when it does not hold 32 bytes,
/// [`ServiceError::KeyUntrusted`] when someone else could read it or replace it,
/// [`ServiceError::KeyGenerate`] when no randomness is available for a new one.
pub fn load_or_create_key(path: &Path) -> Result<ServiceKey, ServiceError> {
    let io = |source| ServiceError::KeyIo {
        path: path.to_path_buf(),
        source,
    };
    let untrusted = |at: &Path| {
        let at = at.to_path_buf();
        move |source| ServiceError::KeyUntrusted { path: at, source }
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            anonnet_state::check_private_file(path).map_err(untrusted(path))?;
            let seed: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| ServiceError::KeySize {
                        path: path.to_path_buf(),
                        len: bytes.len(),
                    })?;
            let seed = Zeroizing::new(seed);
            Ok(ServiceKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ServiceKey::generate().map_err(|source| ServiceError::KeyGenerate {
                path: path.to_path_buf(),
                source,
            })?;
            if let Some(dir) = path.parent() {
                anonnet_state::prepare_private_dir(dir).map_err(untrusted(dir))?;
            }
            // Whole or absent after a crash or a full disk; never replaces a key.
            anonnet_state::create_atomically(path, key.seed().as_slice()).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// A key derived from the service seed for `context` (BLAKE3 key derivation, §13.1): only
/// the `.dark` owner key is.
fn derived(key: &ServiceKey, context: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(context, key.seed().as_slice()))
}

/// A published hidden service. Dropping it does not stop it: call [`HostedService::stop`].
#[derive(Debug)]
pub struct HostedService {
    address: HsAddress,
    config: ServiceConfig,
    published: AtomicBool,
    name_registered: AtomicBool,
    introductions: AtomicU64,
    refused_replays: AtomicU64,
    refused_wrong_auth_key: AtomicU64,
    points: Mutex<Vec<IntroPoint>>,
    pow_status: Mutex<Option<PowStatus>>,
    /// The proof-of-work parameters the next descriptor lists.
    pow_params: Mutex<Option<PowParams>>,
    /// Free rendezvous permits, mirrored from the semaphore for status and tests.
    rendezvous_free: AtomicU64,
    stop: CancellationToken,
}

impl HostedService {
    /// The service's address.
    pub fn address(&self) -> HsAddress {
        self.address
    }

    /// Its configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// True once a descriptor was stored on at least one DHT node.
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::Relaxed)
    }

    /// True once its `.dark` name was stored on at least one DHT node.
    pub fn is_name_registered(&self) -> bool {
        self.name_registered.load(Ordering::Relaxed)
    }

    /// Introductions answered.
    pub fn introductions(&self) -> u64 {
        self.introductions.load(Ordering::Relaxed)
    }

    /// `INTRODUCE2`s refused as replays: their `E` was already accepted through the same
    /// introduction point (§13.4).
    pub fn introductions_refused_replayed(&self) -> u64 {
        self.refused_replays.load(Ordering::Relaxed)
    }

    /// `INTRODUCE2`s refused because their `auth_key` is not the one of the introduction
    /// circuit they arrived on (§13.4): an introduction point passing on what was not
    /// addressed to it.
    pub fn introductions_refused_wrong_auth_key(&self) -> u64 {
        self.refused_wrong_auth_key.load(Ordering::Relaxed)
    }

    /// Proof-of-work counters (§13.9), `None` when the service has proof of work off.
    pub fn pow_status(&self) -> Option<PowStatus> {
        lock(&self.pow_status).clone()
    }

    /// The proof-of-work parameters (§12.3, §13.9) its next descriptor lists: seed,
    /// suggested effort, seed expiry; `None` with proof of work off.
    pub fn pow_params(&self) -> Option<PowParams> {
        *lock(&self.pow_params)
    }

    /// Rendezvous circuits being built or served now (at most [`MAX_RENDEZVOUS`]).
    pub fn rendezvous_in_flight(&self) -> usize {
        MAX_RENDEZVOUS.saturating_sub(self.rendezvous_free.load(Ordering::Relaxed) as usize)
    }

    /// The introduction points the service holds now (0..=[`INTRO_POINTS`]), as its next
    /// descriptor lists them (§12.3): relay, `auth_key`, `enc_key`.
    pub fn intro_points(&self) -> Vec<IntroPoint> {
        lock(&self.points).clone()
    }

    /// Stop: close the introduction and rendezvous circuits. The descriptor expires on
    /// its own (it names introduction points that no longer answer).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// One introduction point the service holds.
struct IntroSlot {
    circuit: Arc<Circuit>,
    point: IntroPoint,
}

/// Why an `INTRODUCE2` was dropped (§13.4).
#[derive(Debug)]
enum Refusal {
    /// Its `auth_key` is not the one of the circuit it arrived on.
    WrongAuthKey,
    /// It does not open under the point's key.
    Open(HsError),
    /// Its `E` was accepted through this point before.
    Replay,
    /// The point accepted [`INTRO_POINT_MAX_INTRODUCTIONS`] already and is being replaced.
    Exhausted,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WrongAuthKey => f.write_str("auth_key of another introduction point"),
            Refusal::Open(e) => write!(f, "does not open: {e}"),
            Refusal::Replay => f.write_str("replayed introduction"),
            Refusal::Exhausted => f.write_str("introduction point used up"),
        }
    }
}

/// The keys and the replay cache of one introduction point (§13.1, §13.4): its `auth_key`,
/// its X25519 introduction secret (as [`IntroKey`] to open introductions and as
/// [`OnionKey`] for the end-to-end handshake; both zeroized on drop) and the `E` of every
/// introduction it accepted. Dropped with the point's last task, so a retired point's
/// secret leaves memory.
struct IntroKeys {
    auth_key: [u8; 32],
    enc: IntroKey,
    onion: OnionKey,
    /// `E` values accepted, at most [`INTRO_POINT_MAX_INTRODUCTIONS`]; never evicted.
    seen: Mutex<HashSet<[u8; 32]>>,
}

impl IntroKeys {
    /// Fresh keys for a point registered under `auth_key`.
    fn generate(auth_key: [u8; 32]) -> Result<Self, String> {
        let enc = IntroKey::generate().map_err(|e| e.to_string())?;
        Ok(Self::with_secret(auth_key, enc))
    }

    fn with_secret(auth_key: [u8; 32], enc: IntroKey) -> Self {
        let onion = OnionKey::from_secret(&enc.secret_bytes());
        IntroKeys {
            auth_key,
            enc,
            onion,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Check an `INTRODUCE2 { auth_key, sealed }` that arrived on this point's circuit and
    /// open it: the plaintext (zeroized on drop) and whether the point has now accepted
    /// [`INTRO_POINT_MAX_INTRODUCTIONS`] and must be replaced.
    fn accept(
        &self,
        auth_key: &[u8; 32],
        sealed: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, bool), Refusal> {
        if *auth_key != self.auth_key {
            return Err(Refusal::WrongAuthKey);
        }
        let (plain, ephemeral) =
            open_introduce(&self.enc, auth_key, sealed).map_err(Refusal::Open)?;
        let mut seen = lock(&self.seen);
        if seen.contains(&ephemeral) {
            return Err(Refusal::Replay);
        }
        if seen.len() >= INTRO_POINT_MAX_INTRODUCTIONS {
            return Err(Refusal::Exhausted);
        }
        seen.insert(ephemeral);
        Ok((plain, seen.len() >= INTRO_POINT_MAX_INTRODUCTIONS))
    }
}

/// An introduction answered: where to meet the client, and the end-to-end handshake's
/// reply and hop keys (zeroized on drop).
struct Answer {
    intro: IntroducePlaintext,
    reply: anonnet_crypto::ServerReply,
    keys: anonnet_crypto::HopKeys,
}

/// A lifetime for a new introduction point, uniform in [`INTRO_POINT_MIN_LIFETIME`]..=
/// [`INTRO_POINT_MAX_LIFETIME`] (whole seconds).
fn intro_point_lifetime() -> Duration {
    Duration::from_secs(
        rand::rng()
            .random_range(INTRO_POINT_MIN_LIFETIME.as_secs()..=INTRO_POINT_MAX_LIFETIME.as_secs()),
    )
}

/// Everything the service's tasks share.
struct Service {
    client: std::sync::Weak<Client>,
    key: ServiceKey,
    hosted: Arc<HostedService>,
    intros: Mutex<Vec<IntroSlot>>,
    changed: Notify,
    /// Woken when a lookup of the service's own `.dark` record found none (§12.5).
    name_lost: Notify,
    /// Woken when an introduction circuit closes.
    intro_lost: Notify,
    rendezvous: Arc<Semaphore>,
    /// Proof-of-work state when it is on (§13.9).
    pow: Option<Mutex<PowState>>,
    /// Woken when an introduction is queued.
    queued: Notify,
    /// Clock origin of the queue's milliseconds.
    epoch: tokio::time::Instant,
}

/// A proof-of-work seed and the solutions seen for it.
struct PowSeed {
    seed: [u8; 32],
    expires: u64,
    used: HashSet<[u8; 16]>,
}

impl PowSeed {
    /// A random seed made at `now` (Unix seconds), valid [`POW_SEED_LIFETIME`].
    fn fresh(now: u64) -> Self {
        PowSeed {
            seed: rand::random(),
            expires: now + POW_SEED_LIFETIME.as_secs(),
            used: HashSet::new(),
        }
    }
}

/// The service's proof-of-work state (§13.9): seeds, queue, controller, counters.
struct PowState {
    current: PowSeed,
    previous: Option<PowSeed>,
    queue: IntroQueue<Answer>,
    controller: EffortController,
    status: PowStatus,
}

impl PowState {
    fn params(&self) -> PowParams {
        PowParams {
            seed: self.current.seed,
            suggested_effort: self.controller.suggested(),
            seed_expires: self.current.expires,
        }
    }

    /// The effort an introduction's proof earns (§13.9): 0 without one or for a replayed
    /// one; `Err` when it does not verify.
    fn effort_of(
        &mut self,
        service_id: &[u8; 32],
        proof: Option<&anonnet_wire::hs::PowSolution>,
        now: u64,
    ) -> Result<u32, anonnet_crypto::hs_pow::PowError> {
        let Some(proof) = proof else { return Ok(0) };
        let seed = std::iter::once(&mut self.current)
            .chain(self.previous.as_mut())
            .find(|s| s.seed[..4] == proof.seed_head && s.expires > now)
            .ok_or(anonnet_crypto::hs_pow::PowError::WrongSeed)?;
        anonnet_crypto::hs_pow::verify(service_id, &seed.seed, proof)?;
        if seed.used.len() >= POW_REPLAY_MAX || !seed.used.insert(proof.nonce) {
            self.status.replayed_solutions += 1;
            return Ok(0);
        }
        Ok(proof.effort)
    }

    fn dropped(&mut self, effort: u32, why: crate::hs_pow::DropReason) {
        self.controller.dropped(effort);
        match why {
            crate::hs_pow::DropReason::Full => self.status.dropped_queue_full += 1,
            crate::hs_pow::DropReason::Timeout => self.status.dropped_timeout += 1,
        }
    }
}

/// Start hosting `config` through `client`: returns at once; introduction points and the
/// descriptor follow in the background.
///
/// # Errors
/// [`ServiceError`] for an unusable key file or name.
pub fn start(
    client: &Arc<Client>,
    config: ServiceConfig,
) -> Result<Arc<HostedService>, ServiceError> {
    let key = load_or_create_key(&config.key_file)?;
    if let Some(name) = &config.dark_name {
        DarkName::parse(name).map_err(|source| ServiceError::Name {
            name: name.clone(),
            source,
        })?;
    }
    let hosted = Arc::new(HostedService {
        address: key.address(),
        config,
        published: AtomicBool::new(false),
        name_registered: AtomicBool::new(false),
        introductions: AtomicU64::new(0),
        refused_replays: AtomicU64::new(0),
        refused_wrong_auth_key: AtomicU64::new(0),
        points: Mutex::new(Vec::new()),
        pow_status: Mutex::new(None),
        pow_params: Mutex::new(None),
        rendezvous_free: AtomicU64::new(MAX_RENDEZVOUS as u64),
        stop: CancellationToken::new(),
    });
    let pow = match hosted.config.pow {
        Some(cfg) => {
            let current = PowSeed::fresh(now_unix());
            let mut status = PowStatus::default();
            for b in EFFORT_BUCKETS {
                status.served_by_effort.insert(b.to_string(), 0);
            }
            *lock(&hosted.pow_status) = Some(status.clone());
            *lock(&hosted.pow_params) = Some(PowParams {
                seed: current.seed,
                suggested_effort: cfg.min_effort.min(cfg.max_effort),
                seed_expires: current.expires,
            });
            Some(Mutex::new(PowState {
                current,
                previous: None,
                queue: IntroQueue::new(cfg.queue_bound, crate::hs_pow::DEFAULT_QUEUE_TIMEOUT_MS),
                controller: EffortController::new(cfg.max_effort).with_floor(cfg.min_effort),
                status,
            }))
        }
        None => None,
    };
    let service = Arc::new(Service {
        client: Arc::downgrade(client),
        key,
        hosted: hosted.clone(),
        intros: Mutex::new(Vec::new()),
        changed: Notify::new(),
        name_lost: Notify::new(),
        intro_lost: Notify::new(),
        rendezvous: Arc::new(Semaphore::new(MAX_RENDEZVOUS)),
        pow,
        queued: Notify::new(),
        epoch: tokio::time::Instant::now(),
    });
    info!(
        address = %anonnet_net::logging::sensitive(hosted.address),
        target = %anonnet_net::logging::sensitive(hosted.config.target),
        "hosting hidden service"
    );
    tokio::spawn(service.clone().keep_intro_points());
    tokio::spawn(service.clone().publish_descriptors());
    if service.pow.is_some() {
        tokio::spawn(service.clone().serve_queue());
        tokio::spawn(service.clone().update_effort());
    }
    tokio::spawn(service.clone().check_own_records());
    if hosted.config.dark_name.is_some() {
        tokio::spawn(service.publish_name());
    }
    Ok(hosted)
}

impl Service {
    fn stopped(&self) -> bool {
        self.hosted.stop.is_cancelled()
    }

    /// Record a change of the introduction points: the public list and the descriptor.
    fn intros_changed(&self, intros: &[IntroSlot]) {
        *lock(&self.hosted.points) = intros.iter().map(|s| s.point).collect();
        self.changed.notify_one();
    }

    /// Keep [`INTRO_POINTS`] introduction circuits open; replace those that close (their
    /// relay failed, or they were retired after their lifetime or
    /// [`INTRO_POINT_MAX_INTRODUCTIONS`], §13.2) by fresh points with fresh keys.
    async fn keep_intro_points(self: Arc<Self>) {
        let mut backoff = Backoff::new(INTRO_RETRY, MAX_INTRO_RETRY);
        let Some(mut bootstrap) = self.client.upgrade().map(|c| c.bootstrap_changes()) else {
            return;
        };
        loop {
            if self.stopped() {
                break;
            }
            let (missing, avoid) = {
                let mut intros = lock(&self.intros);
                let before = intros.len();
                intros.retain(|s| !s.circuit.is_closed());
                if intros.len() != before {
                    self.intros_changed(&intros);
                }
                let avoid: Vec<_> = intros
                    .iter()
                    .map(|s| anonnet_crypto::NodeId(s.point.relay.node_id))
                    .collect();
                (INTRO_POINTS.saturating_sub(intros.len()), avoid)
            };
            if missing > 0 {
                match self.clone().establish_intro(&avoid).await {
                    Ok(slot) => {
                        let mut intros = lock(&self.intros);
                        intros.push(slot);
                        self.intros_changed(&intros);
                        drop(intros);
                        backoff.reset();
                        continue;
                    }
                    Err(e) => {
                        warn!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction point failed: {e}");
                    }
                }
            }
            // Retry a failed build after its backoff; with all introduction points up,
            // wait until one of their circuits closes.
            // A client that becomes ready again (a consensus after all relays restarted)
            // ends the backoff: the failures were the client's, not the relays'.
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()), if missing > 0 => {}
                () = self.intro_lost.notified(), if missing == 0 => {}
                r = bootstrap.changed(), if missing > 0 => {
                    if r.is_err() {
                        break;
                    }
                    // Any change is worth one more attempt (it fails fast while there is
                    // no consensus); becoming ready also starts the backoff afresh.
                    if bootstrap.borrow_and_update().percent == 100 {
                        backoff.reset();
                    }
                }
                () = self.hosted.stop.cancelled() => break,
            }
        }
        for s in lock(&self.intros).drain(..) {
            s.circuit.close();
        }
        lock(&self.hosted.points).clear();
    }

    /// Build a circuit to a new introduction point and register there with a fresh
    /// `auth_key`; make the point's fresh X25519 introduction key (§13.1, §13.2).
    async fn establish_intro(
        self: Arc<Self>,
        avoid: &[anonnet_crypto::NodeId],
    ) -> Result<IntroSlot, String> {
        let client = self.client.upgrade().ok_or("client stopped")?;
        let circuit = client
            .build_internal(None, avoid)
            .await
            .map_err(|e| e.to_string())?;
        let last = circuit.relay_hops().saturating_sub(1);
        let relay = circuit.last_hop().ok_or("circuit without relays")?;
        let binding = circuit.binding(last).ok_or("no handshake key")?;
        let auth = IdentityKey::generate().map_err(|e| e.to_string())?;
        let auth_key = auth.public();
        let keys = Arc::new(IntroKeys::generate(auth_key)?);
        let enc_key = keys.enc.public();
        let mut signed = ESTABLISH_INTRO_CONTEXT.to_vec();
        signed.extend_from_slice(&auth_key);
        signed.extend_from_slice(&binding);
        let mut rx = circuit.control_messages();
        circuit
            .send_to_last_relay(RelayMsg::EstablishIntro {
                auth_key,
                signature: auth.sign(&signed),
            })
            .await
            .map_err(|e| e.to_string())?;
        wait_for(&mut rx, "INTRO_ESTABLISHED", |m| {
            matches!(m, RelayMsg::IntroEstablished).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        info!(
            service = %anonnet_net::logging::sensitive(self.hosted.address),
            intro = %relay.node_id.short(),
            "introduction point established"
        );
        tokio::spawn(self.clone().serve_introductions(
            circuit.clone(),
            rx,
            keys,
            intro_point_lifetime(),
        ));
        Ok(IntroSlot {
            circuit,
            point: IntroPoint {
                relay: link_of(&relay),
                auth_key,
                enc_key,
            },
        })
    }

    /// Answer the `INTRODUCE2`s arriving on one introduction circuit with that point's
    /// `keys` (§13.4), until the circuit closes, the service stops, `lifetime` has passed
    /// or the point accepted [`INTRO_POINT_MAX_INTRODUCTIONS`]; then close the circuit so
    /// that a fresh point replaces it (§13.2).
    async fn serve_introductions(
        self: Arc<Self>,
        circuit: Arc<Circuit>,
        mut rx: mpsc::Receiver<RelayMsg>,
        keys: Arc<IntroKeys>,
        lifetime: Duration,
    ) {
        let retire = tokio::time::sleep(lifetime);
        tokio::pin!(retire);
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                () = self.hosted.stop.cancelled() => break,
                () = circuit.closed() => break,
                () = &mut retire => {
                    info!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction point retired after {lifetime:?}");
                    break;
                }
            };
            let Some(RelayMsg::Introduce2 { auth_key, sealed }) = msg else {
                if msg.is_none() {
                    break;
                }
                continue;
            };
            if auth_key != keys.auth_key {
                // A (misbehaving) introduction point passing on what was addressed to
                // another: an old recording, or a probe. Nothing is opened.
                self.refused(&Refusal::WrongAuthKey);
                continue;
            }
            // Without proof of work, an introduction beyond the rendezvous limit is
            // dropped at once; with it, the queue decides (§13.9).
            let permit = if self.pow.is_none() {
                let Ok(permit) = self.rendezvous.clone().try_acquire_owned() else {
                    debug!("rendezvous limit reached; dropping an introduction");
                    continue;
                };
                Some(permit)
            } else {
                None
            };
            let (plain, used_up) = match keys.accept(&auth_key, &sealed) {
                Ok(opened) => opened,
                Err(why) => {
                    self.refused(&why);
                    if matches!(why, Refusal::Exhausted) {
                        break;
                    }
                    continue;
                }
            };
            // Answer the handshake here, so that the point's secret never outlives the
            // point in a rendezvous task.
            let answer = self.answer(&keys, &plain);
            drop(plain);
            match answer {
                Ok(answer) => match permit {
                    Some(permit) => self.clone().spawn_rendezvous(answer, permit),
                    None => self.enqueue(answer),
                },
                Err(e) => {
                    debug!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction not answered: {e}");
                }
            }
            if used_up {
                info!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction point retired after {INTRO_POINT_MAX_INTRODUCTIONS} introductions");
                break;
            }
        }
        // The introduction point is gone, retired, or the service stops: let it be
        // replaced. Its keys go with the last task holding them.
        circuit.close();
        self.intro_lost.notify_one();
    }

    /// Count and log a dropped `INTRODUCE2`.
    fn refused(&self, why: &Refusal) {
        match why {
            Refusal::WrongAuthKey => {
                self.hosted
                    .refused_wrong_auth_key
                    .fetch_add(1, Ordering::Relaxed);
            }
            Refusal::Replay => {
                self.hosted.refused_replays.fetch_add(1, Ordering::Relaxed);
            }
            Refusal::Open(_) | Refusal::Exhausted => {}
        }
        debug!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction refused: {why}");
    }

    /// Meet the client of `answer` with a rendezvous permit held until it is done.
    fn spawn_rendezvous(
        self: Arc<Self>,
        answer: Answer,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        self.hosted.rendezvous_free.store(
            self.rendezvous.available_permits() as u64,
            Ordering::Relaxed,
        );
        tokio::spawn(async move {
            if let Err(e) = self.rendezvous(answer).await {
                debug!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction not served: {e}");
            }
            drop(permit);
            self.hosted.rendezvous_free.store(
                self.rendezvous.available_permits() as u64,
                Ordering::Relaxed,
            );
        });
    }

    /// Milliseconds since the service started: the queue's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Check an answered introduction's proof of work and queue it by effort (§13.9).
    fn enqueue(&self, answer: Answer) {
        let Some(pow) = &self.pow else { return };
        let mut st = lock(pow);
        let effort = match st.effort_of(
            self.hosted.address.public(),
            answer.intro.pow.as_ref(),
            now_unix(),
        ) {
            Ok(e) => e,
            Err(e) => {
                st.status.dropped_invalid += 1;
                anonnet_net::warn_limited!("introduction with an invalid proof of work: {e}");
                return;
            }
        };
        let now = self.now_ms();
        if let Some(dropped) = st.queue.push(effort, answer, now) {
            st.dropped(dropped, crate::hs_pow::DropReason::Full);
        }
        if self.rendezvous.available_permits() == 0 {
            let queued = st.queue.len();
            st.controller.backlog(queued);
        }
        st.status.queued = st.queue.len() as u64;
        *lock(&self.hosted.pow_status) = Some(st.status.clone());
        drop(st);
        self.queued.notify_one();
    }

    /// The workers of the queue (§13.9): with a rendezvous permit in hand (at most
    /// [`MAX_RENDEZVOUS`] at once), take the highest-effort introduction and serve it.
    async fn serve_queue(self: Arc<Self>) {
        let Some(pow) = &self.pow else { return };
        loop {
            let permit = tokio::select! {
                p = self.rendezvous.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = self.hosted.stop.cancelled() => return,
            };
            let answer = loop {
                let next = {
                    let mut st = lock(pow);
                    let mut expired = Vec::new();
                    let next = st.queue.pop(self.now_ms(), &mut expired);
                    for e in expired {
                        st.dropped(e, crate::hs_pow::DropReason::Timeout);
                    }
                    if let Some((effort, _)) = &next {
                        st.controller.served(*effort);
                        st.status.served += 1;
                        if let Some(n) = st
                            .status
                            .served_by_effort
                            .get_mut(EFFORT_BUCKETS[effort_bucket(*effort)])
                        {
                            *n += 1;
                        }
                    }
                    st.status.queued = st.queue.len() as u64;
                    *lock(&self.hosted.pow_status) = Some(st.status.clone());
                    next
                };
                if let Some((_, answer)) = next {
                    break answer;
                }
                tokio::select! {
                    () = self.queued.notified() => {}
                    () = self.hosted.stop.cancelled() => return,
                }
            };
            self.clone().spawn_rendezvous(answer, permit);
        }
    }

    /// Every update period: expire old entries, update the suggested effort (republishing
    /// the descriptor when it changed materially) and rotate the seed when it expires
    /// (§13.9).
    async fn update_effort(self: Arc<Self>) {
        let (Some(pow), Some(cfg)) = (&self.pow, self.hosted.config.pow) else {
            return;
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep(cfg.update_period) => {}
                () = self.hosted.stop.cancelled() => return,
            }
            let mut st = lock(pow);
            let mut expired = Vec::new();
            let now_ms = self.now_ms();
            st.queue.expire(now_ms, &mut expired);
            for e in expired {
                st.dropped(e, crate::hs_pow::DropReason::Timeout);
            }
            if !st.queue.is_empty() {
                let queued = st.queue.len();
                st.controller.backlog(queued);
            }
            let (effort, material) = st.controller.update();
            let mut republish = material;
            let now = now_unix();
            if now + POW_SEED_LIFETIME.as_secs() / 2 >= st.current.expires {
                // Half-way through its life a seed is replaced, so that a client's
                // descriptor (3 h) always names a seed still accepted for a while.
                let old = std::mem::replace(&mut st.current, PowSeed::fresh(now));
                st.previous = Some(old);
                republish = true;
            }
            st.status.suggested_effort = effort;
            st.status.queued = st.queue.len() as u64;
            *lock(&self.hosted.pow_status) = Some(st.status.clone());
            *lock(&self.hosted.pow_params) = Some(st.params());
            drop(st);
            if republish {
                debug!(service = %anonnet_net::logging::sensitive(self.hosted.address), effort, "suggested effort changed");
                self.changed.notify_one();
            }
        }
    }

    /// Answer an opened introduction (`plain`, through the point with `keys`): decode it
    /// and run the end-to-end handshake with that point's secret as `b` (§5.5, §13.4).
    fn answer(&self, keys: &IntroKeys, plain: &[u8]) -> Result<Answer, String> {
        let intro = IntroducePlaintext::decode(plain).map_err(|e| e.to_string())?;
        let hello = anonnet_crypto::ClientHello {
            node_id: self.hosted.address.node_id().0,
            onion_key: keys.onion.public(),
            client_pk: intro.client_pk,
        };
        let (reply, keys) = anonnet_crypto::handshake::server_handshake_hs(
            self.hosted.address.node_id(),
            &keys.onion,
            &hello,
        )
        .map_err(|e| e.to_string())?;
        Ok(Answer { intro, reply, keys })
    }

    /// Meet the client of an answered introduction at its rendezvous point and serve the
    /// streams it opens (§13.4, §13.5).
    async fn rendezvous(&self, answer: Answer) -> Result<(), String> {
        let Answer { intro, reply, keys } = answer;
        self.hosted.introductions.fetch_add(1, Ordering::Relaxed);
        let client = self.client.upgrade().ok_or("client stopped")?;
        let circuit = client
            .build_internal(Some(hop_of(&intro.rendezvous)), &[])
            .await
            .map_err(|e| e.to_string())?;
        let incoming = circuit.incoming_streams();
        circuit.add_end_to_end_hop(&keys, true);
        drop(keys);
        circuit
            .send_to_last_relay(RelayMsg::Rendezvous1 {
                cookie: intro.cookie,
                server_pk: reply.server_pk,
                auth: reply.auth,
            })
            .await
            .map_err(|e| e.to_string())?;
        debug!(service = %anonnet_net::logging::sensitive(self.hosted.address), circuit = circuit.id(), "met a client");
        serve_streams(
            circuit,
            incoming,
            self.hosted.config.clone(),
            self.hosted.stop.clone(),
        )
        .await;
        Ok(())
    }

    /// Publish the descriptor for every period in use, whenever the introduction points
    /// change, whenever a new consensus or a new time period makes other HSDirs
    /// responsible for it (checked every [`PLACEMENT_CHECK`]), and when
    /// [`DESCRIPTOR_REFRESH`] says the published one is running out (asked at least every
    /// [`CHECK_INTERVAL`] and at once after a wall-clock jump, §15).
    async fn publish_descriptors(self: Arc<Self>) {
        let Some((clock, mut jumps)) = self
            .client
            .upgrade()
            .map(|c| (c.clock().clone(), c.clock_jumps()))
        else {
            return;
        };
        let mut revision = now_unix_millis(&clock);
        let mut schedule = Schedule::new(DESCRIPTOR_REFRESH);
        let mut placed = self.placement(clock.unix_now());
        loop {
            let (now, mono) = (clock.unix_now(), clock.mono_now());
            let points: Vec<IntroPoint> = lock(&self.intros).iter().map(|s| s.point).collect();
            // With no introduction point yet there is nothing to publish: the first one
            // to come up wakes this loop through `changed`.
            let mut wait = CHECK_INTERVAL;
            if !points.is_empty() && schedule.due(now, mono) {
                placed = self.placement(now);
                revision = revision.max(now_unix_millis(&clock)) + 1;
                // A failed attempt is retried soon.
                wait = DESCRIPTOR_RETRY;
                match self.publish_once(points, revision, now).await {
                    Ok(stored) if stored > 0 => {
                        schedule.published(DESCRIPTOR_REFRESH.published_now(now, mono));
                        if !self.hosted.published.swap(true, Ordering::Relaxed) {
                            info!(service = %anonnet_net::logging::sensitive(self.hosted.address), stored, "descriptor published");
                        }
                    }
                    Ok(_) => {
                        warn!(service = %anonnet_net::logging::sensitive(self.hosted.address), "no HSDir stored the descriptor");
                        schedule.failed();
                    }
                    Err(e) => {
                        warn!(service = %anonnet_net::logging::sensitive(self.hosted.address), "publishing the descriptor: {e}");
                        schedule.failed();
                    }
                }
            }
            if !schedule.due(clock.unix_now(), clock.mono_now()) {
                wait = schedule.wait(clock.unix_now(), clock.mono_now());
            }
            let next = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = self.changed.notified() => {
                        // Let a burst of changes settle into one descriptor.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        schedule.want();
                        break;
                    }
                    () = tokio::time::sleep(PLACEMENT_CHECK) => {
                        if self.placement(clock.unix_now()) != placed {
                            schedule.want();
                            break;
                        }
                    }
                    r = jumps.changed() => {
                        if r.is_err() {
                            return;
                        }
                        break;
                    }
                    () = self.hosted.stop.cancelled() => return,
                }
            }
        }
    }

    /// The HSDirs responsible for this service's descriptors now (§12.7).
    fn placement(&self, now: u64) -> Vec<(u64, Vec<anonnet_crypto::NodeId>)> {
        match self.client.upgrade() {
            Some(client) => {
                crate::hsdir::placement_of(&client, &self.hosted.address, &periods_to_publish(now))
            }
            None => Vec::new(),
        }
    }

    /// Seal and store the descriptor for every period to publish at `now` (Unix
    /// seconds), valid until [`DESCRIPTOR_REFRESH`]`.expires_at(now)`; returns how many
    /// HSDirs stored one.
    async fn publish_once(
        &self,
        points: Vec<IntroPoint>,
        revision: u64,
        now: u64,
    ) -> Result<usize, String> {
        let client = self.client.upgrade().ok_or("client stopped")?;
        let body = HsDescriptorBody {
            pow: self.pow.as_ref().map(|p| lock(p).params()),
            intro_points: points,
        };
        let mut stored = 0;
        for period in periods_to_publish(now) {
            let d = seal_descriptor(
                &self.key,
                period,
                revision,
                DESCRIPTOR_REFRESH.expires_at(now),
                &body,
            )
            .map_err(|e| e.to_string())?;
            let key = descriptor_index(&d.blinded_key, period);
            let bytes = d.encode().map_err(|e| e.to_string())?;
            stored += crate::hsdir::publish(&client, period, key, bytes).await;
        }
        Ok(stored)
    }

    /// The service's `.dark` name, when it has a valid one (§12.5).
    fn dark_name(&self) -> Option<DarkName> {
        self.hosted
            .config
            .dark_name
            .as_deref()
            .and_then(|n| DarkName::parse(n).ok())
    }

    /// Register the `.dark` name (proof of work in a blocking task) and keep it fresh: again
    /// when [`NAME_REFRESH`] says the stored record is running out (asked at least every
    /// [`CHECK_INTERVAL`] and at once after a wall-clock jump, §15) and when the
    /// self-check misses it.
    async fn publish_name(self: Arc<Self>) {
        let Some(name) = self.dark_name() else {
            return;
        };
        let Some((clock, mut jumps)) = self
            .client
            .upgrade()
            .map(|c| (c.clock().clone(), c.clock_jumps()))
        else {
            return;
        };
        let owner = self.dark_owner();
        let mut schedule = Schedule::new(NAME_REFRESH);
        loop {
            let (now, mono) = (clock.unix_now(), clock.mono_now());
            let mut wait = CHECK_INTERVAL;
            if schedule.due(now, mono) {
                match self.register_name(&name, &owner, now).await {
                    Ok(Some((stored, expires))) => {
                        schedule.published(Published {
                            published: now,
                            expires,
                            at: mono,
                        });
                        self.hosted.name_registered.store(true, Ordering::Relaxed);
                        info!(name = %anonnet_net::logging::sensitive(&name), stored, "name registered");
                    }
                    Ok(None) => {
                        warn!(name = %anonnet_net::logging::sensitive(&name), "no DHT node stored the name (taken by another owner?)");
                        schedule.failed();
                        wait = NAME_STORE_RETRY;
                    }
                    Err(e) => {
                        warn!(name = %anonnet_net::logging::sensitive(&name), "registering the name: {e}");
                        schedule.failed();
                        wait = NAME_REGISTER_RETRY;
                    }
                }
            }
            if !schedule.due(clock.unix_now(), clock.mono_now()) {
                wait = schedule.wait(clock.unix_now(), clock.mono_now());
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.name_lost.notified() => {
                    info!(name = %anonnet_net::logging::sensitive(&name), "own name record not found: registering it again");
                    schedule.want();
                }
                r = jumps.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                () = self.hosted.stop.cancelled() => break,
            }
        }
    }

    /// Make a `.dark` record valid from `now` (Unix seconds) for [`NAME_LIFETIME`], have
    /// the network's authorities vouch for it, and store it in the DHT through a circuit.
    /// Returns how many DHT nodes stored it and until when it is valid (its own `expires`,
    /// or earlier when the authorities' receipts run out first), or `None` when no node
    /// stored it.
    ///
    /// # Errors
    /// Why the authorities did not vouch for it, or the circuit or the store failed.
    async fn register_name(
        &self,
        name: &DarkName,
        owner: &IdentityKey,
        now: u64,
    ) -> Result<Option<(usize, u64)>, String> {
        let (owner_c, name_c, address) = (
            IdentityKey::from_seed(&owner.seed()),
            name.clone(),
            self.hosted.address,
        );
        let expires = NAME_REFRESH.expires_at(now);
        let mut record = tokio::task::spawn_blocking(move || {
            make_dark_record(&owner_c, &name_c, &address, now, expires, DARK_POW_BITS)
        })
        .await
        .map_err(|e| e.to_string())?;
        let client = self.client.upgrade().ok_or("client stopped")?;
        let authorities = client.config.network.as_ref().map(|n| n.name_authorities());
        if let Some(network) = &client.config.network {
            register_with_authorities(&client, network, &mut record)
                .await
                .map_err(|e| format!("registering the name with the authorities: {e}"))?;
        }
        let valid_until = anonnet_crypto::dark::verify_name_record(
            &record,
            now,
            DARK_POW_BITS,
            authorities.as_ref(),
        )
        .map_err(|e| format!("the record made does not verify: {e}"))?
        .expires;
        let bytes = record.encode().map_err(|e| e.to_string())?;
        let circuit = client
            .build_internal(None, &[])
            .await
            .map_err(|e| e.to_string())?;
        let key = anonnet_crypto::dark::dark_key(name);
        let stored = dht_store(&circuit, key, RecordKind::DarkName, bytes).await;
        circuit.close();
        let stored = stored?;
        Ok((stored > 0).then_some((stored, valid_until)))
    }

    /// The `.dark` owner key of this service (derived from its key, §12.5).
    fn dark_owner(&self) -> IdentityKey {
        IdentityKey::from_seed(&derived(&self.key, "anonnet 2026 dark owner key"))
    }

    /// Look up the service's own records every [`self_check_every`] and publish again at
    /// once what is missing (§12.5, §12.7): the descriptor when none of its responsible
    /// HSDirs for the current period serves one that opens, the `.dark` record when the
    /// DHT returns none of its owner that is still valid. Only after the first successful
    /// publication (or registration); failures of the check itself count as missing.
    /// Without a consensus (none yet, or the last one expired) nothing is checked: the
    /// loop looks again every [`SELF_CHECK_MIN`], so a check follows within one period of
    /// the next consensus.
    async fn check_own_records(self: Arc<Self>) {
        loop {
            let wait = match self.client.upgrade() {
                Some(c) => self_check_every(c.consensus_status().as_ref()),
                None => return,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.hosted.stop.cancelled() => return,
            }
            let Some(client) = self.client.upgrade() else {
                return;
            };
            if client.consensus_status().is_none() {
                continue;
            }
            if self.hosted.published.load(Ordering::Relaxed)
                && !self.own_descriptor_found(&client).await
            {
                info!(service = %anonnet_net::logging::sensitive(self.hosted.address), "own descriptor not found on its HSDirs: publishing it again");
                self.changed.notify_one();
            }
            if self.hosted.name_registered.load(Ordering::Relaxed)
                && !self.own_name_found(&client).await
            {
                self.name_lost.notify_one();
            }
        }
    }

    /// Whether a responsible HSDir of the current period serves a descriptor of this
    /// service that opens (§12.7).
    async fn own_descriptor_found(&self, client: &Client) -> bool {
        let now = now_unix();
        let period = anonnet_crypto::hs::time_period(now);
        let Some(key) = crate::hs::descriptor_key(&self.hosted.address, period) else {
            return false;
        };
        let Some((_, hsdirs)) = crate::hsdir::placement_of(client, &self.hosted.address, &[period])
            .into_iter()
            .next()
        else {
            return false;
        };
        if hsdirs.is_empty() {
            // No consensus to place it with: nothing to check against.
            return true;
        }
        let records = crate::hsdir::fetch(client, &hsdirs, key).await;
        crate::hs::best_descriptor(&self.hosted.address, &records, now).is_some()
    }

    /// Whether the DHT returns a valid `.dark` record of this service's owner key for its
    /// name (§12.5), asked through a circuit (§13.6).
    async fn own_name_found(&self, client: &Client) -> bool {
        let Some(name) = self.dark_name() else {
            return true;
        };
        let Ok(circuit) = client.build_internal(None, &[]).await else {
            return false;
        };
        let key = crate::hs::name_key(&name);
        let records = crate::hs::dht_fetch(&circuit, key, RecordKind::DarkName).await;
        circuit.close();
        let owner = self.dark_owner().public();
        let now = now_unix();
        records.unwrap_or_default().iter().any(|b| {
            anonnet_wire::hs::DarkRecord::decode(b)
                .is_ok_and(|d| d.owner == owner && d.expires > now)
        })
    }
}

/// Shortest wait between two checks of a service's own records: 10 s.
pub const SELF_CHECK_MIN: Duration = Duration::from_secs(10);
/// Longest wait between two checks of a service's own records: 1 hour.
pub const SELF_CHECK_MAX: Duration = Duration::from_secs(3600);

/// How long a service waits between two checks of its own records: one consensus period
/// (`fresh_until − valid_after` of `consensus`), within [`SELF_CHECK_MIN`] and
/// [`SELF_CHECK_MAX`] (§13.2). A real network (hourly consensus) checks hourly; a testnet
/// (4 s) every 10 s. Without a consensus [`SELF_CHECK_MIN`]: the service looks again soon
/// for one to check with. (It waited [`SELF_CHECK_MAX`] until 2026-12-08: a service whose
/// consensus lapsed for a moment, as when every relay restarts, then did not notice its
/// lost `.dark` record for an hour.)
pub fn self_check_every(consensus: Option<&crate::consensus::ConsensusStatus>) -> Duration {
    consensus
        .map(|c| Duration::from_secs(c.fresh_until.saturating_sub(c.valid_after)))
        .unwrap_or(SELF_CHECK_MIN)
        .clamp(SELF_CHECK_MIN, SELF_CHECK_MAX)
}

/// Wait before trying a name registration again after it failed (§12.5).
pub const NAME_REGISTER_RETRY: Duration = Duration::from_secs(5);
/// Wait before storing the name again when no DHT node stored it.
pub const NAME_STORE_RETRY: Duration = Duration::from_secs(30);
/// Wait before publishing the descriptor again when no HSDir stored it.
pub const DESCRIPTOR_RETRY: Duration = Duration::from_secs(2);
/// Circuits (each to another random last relay) one registration round tries.
const NAME_REGISTER_ATTEMPTS: usize = 3;

/// Register `record`'s name with `network`'s authorities through a circuit (§12.5) and put
/// the valid receipts into it (at most `MAX_RECORD_RECEIPTS`).
///
/// # Errors
/// Why fewer than a majority of the authorities vouched: the name is another owner's at a
/// majority of them, the network has too many authorities for a record to carry a
/// majority's receipts, or no relay passed the request on and answered.
async fn register_with_authorities(
    client: &crate::pool::Client,
    network: &anonnet_dir::Network,
    record: &mut anonnet_wire::hs::DarkRecord,
) -> Result<(), String> {
    use anonnet_wire::hs::MAX_RECORD_RECEIPTS;
    let authorities = network.name_authorities();
    if authorities.needed > MAX_RECORD_RECEIPTS {
        return Err(format!(
            "the network has {} authorities; a record carries at most {MAX_RECORD_RECEIPTS} receipts, {} needed",
            authorities.identities.len(),
            authorities.needed
        ));
    }
    record.receipts.clear();
    let request = record.encode().map_err(|e| e.to_string())?;
    let mut why = String::from("no attempt");
    for _attempt in 0..NAME_REGISTER_ATTEMPTS {
        let circuit = match client.build_internal(None, &[]).await {
            Ok(c) => c,
            Err(e) => {
                why = e.to_string();
                continue;
            }
        };
        let answer = crate::hs::register_name(&circuit, request.clone()).await;
        circuit.close();
        let (asked, refused, receipts) = match answer {
            Ok(a) => a,
            Err(e) => {
                why = e;
                continue;
            }
        };
        let mut answered = record.clone();
        answered.receipts = receipts;
        let mut valid = anonnet_crypto::dark::valid_receipts(&answered, &authorities, now_unix());
        if valid.len() >= authorities.needed {
            valid.truncate(MAX_RECORD_RECEIPTS);
            record.receipts = valid;
            return Ok(());
        }
        if usize::from(refused) >= authorities.needed {
            return Err(format!(
                "{refused} of {asked} authorities refused it: the name is registered to another owner"
            ));
        }
        why = format!(
            "{} valid receipts of {asked} authorities asked ({refused} refused), {} needed",
            valid.len(),
            authorities.needed
        );
    }
    Err(why)
}

/// Copy bytes both ways between a client's stream and the local server until the server
/// has closed its side: then the stream ends (`END` DONE, as an exit answers its
/// destination's EOF, §6.3), even while the client's side is still open; a server that
/// marks the end of a response by closing (HTTP/1.0, `Connection: close`) would otherwise
/// leave the client waiting. The client's `END` closes the server's write side
/// (`shutdown`), and the server's answer still comes back.
async fn relay_local(tcp: TcpStream, stream: DataStream) {
    use tokio::io::AsyncWriteExt;
    let (mut from_client, mut to_client) = tokio::io::split(stream);
    let (mut from_server, mut to_server) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.flush().await;
    };
    tokio::pin!(down);
    tokio::select! {
        () = up => (&mut down).await,
        () = &mut down => {}
    }
    // Both halves of the stream drop here: END goes to the client.
}

/// Connect each stream the client opens on `circuit` to the local server.
async fn serve_streams(
    circuit: Arc<Circuit>,
    mut incoming: mpsc::Receiver<IncomingStream>,
    config: ServiceConfig,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            s = incoming.recv() => s,
            () = circuit.closed() => None,
            () = stop.cancelled() => None,
        };
        let Some(IncomingStream { port, stream, .. }) = next else {
            break;
        };
        if port != config.port {
            stream.refuse(EndReason::ExitPolicy);
            continue;
        }
        let target = config.target;
        tokio::spawn(async move {
            let tcp = tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(target)).await;
            let tcp = match tcp {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    debug!("local server {target}: {e}");
                    stream.refuse(EndReason::ConnectRefused);
                    return;
                }
                Err(_) => {
                    stream.refuse(EndReason::Timeout);
                    return;
                }
            };
            if stream.accept().await.is_err() {
                return;
            }
            relay_local(tcp, stream).await;
        });
    }
    circuit.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_created_private_and_keeps_the_address() {
        let dir = std::env::temp_dir().join(format!("anonnet-host-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("services").join("a").join("service.key");
        let first = load_or_create_key(&path).unwrap().address();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_key(&path).unwrap().address(), first);
        // A file of the wrong size is an error naming it, not a new key.
        std::fs::write(&path, b"short").unwrap();
        let err = load_or_create_key(&path).unwrap_err().to_string();
        assert!(
            err.contains("service.key") && err.contains("expected 32"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn sealed_to(keys: &IntroKeys, auth_key: &[u8; 32], tag: u8) -> Vec<u8> {
        let plain = IntroducePlaintext {
            pow: None,
            cookie: [tag; 20],
            rendezvous: anonnet_wire::hs::RelayLink {
                node_id: [1; 32],
                onion_key: [2; 32],
                addr: "127.0.0.1:7002".parse().unwrap(),
            },
            client_pk: [3; 32],
        }
        .encode()
        .unwrap();
        anonnet_crypto::hs::seal_introduce(&keys.enc.public(), auth_key, &plain).unwrap()
    }

    #[test]
    fn each_intro_point_opens_only_its_own_introductions_once() {
        let a = IntroKeys::generate([0xa1; 32]).unwrap();
        let b = IntroKeys::generate([0xb1; 32]).unwrap();
        assert_ne!(a.enc.public(), b.enc.public(), "fresh key per point");
        assert_eq!(a.onion.public(), a.enc.public(), "one secret, two uses");

        let to_a = sealed_to(&a, &a.auth_key, 1);
        let (plain, used_up) = a.accept(&a.auth_key, &to_a).unwrap();
        assert_eq!(IntroducePlaintext::decode(&plain).unwrap().cookie, [1; 20]);
        assert!(!used_up);
        // The same bytes again through the same point: a replay.
        assert!(matches!(a.accept(&a.auth_key, &to_a), Err(Refusal::Replay)));
        // B's introduction passed on by A's introduction point: refused before opening,
        // whichever auth_key it carries.
        let to_b = sealed_to(&b, &b.auth_key, 2);
        assert!(matches!(
            a.accept(&b.auth_key, &to_b),
            Err(Refusal::WrongAuthKey)
        ));
        assert!(matches!(
            a.accept(&a.auth_key, &to_b),
            Err(Refusal::Open(_))
        ));
        // A's introduction relabelled for B: B's key does not open it.
        assert!(matches!(
            b.accept(&b.auth_key, &to_a),
            Err(Refusal::Open(_))
        ));
        b.accept(&b.auth_key, &to_b).unwrap();
        // A point made again after a restart (fresh keys, empty cache) does not open what
        // the old one accepted.
        let a2 = IntroKeys::generate([0xa1; 32]).unwrap();
        assert!(matches!(
            a2.accept(&a2.auth_key, &to_a),
            Err(Refusal::Open(_))
        ));
    }

    #[test]
    fn an_intro_point_is_used_up_after_its_limit_and_never_forgets_within_it() {
        let a = IntroKeys::generate([0xa1; 32]).unwrap();
        let first = sealed_to(&a, &a.auth_key, 0);
        a.accept(&a.auth_key, &first).unwrap();
        // Fill the cache to one below the limit with E values nobody sent (the cache only
        // ever sees E values of introductions that opened).
        {
            let mut seen = lock(&a.seen);
            for i in 1..(INTRO_POINT_MAX_INTRODUCTIONS as u32 - 1) {
                let mut e = [0u8; 32];
                e[..4].copy_from_slice(&i.to_be_bytes());
                e[31] = 0xff;
                seen.insert(e);
            }
        }
        let last = sealed_to(&a, &a.auth_key, 1);
        let (_, used_up) = a.accept(&a.auth_key, &last).unwrap();
        assert!(
            used_up,
            "the {INTRO_POINT_MAX_INTRODUCTIONS}th introduction retires it"
        );
        assert_eq!(lock(&a.seen).len(), INTRO_POINT_MAX_INTRODUCTIONS);
        // The first one is still remembered: a replay, not evicted.
        assert!(matches!(
            a.accept(&a.auth_key, &first),
            Err(Refusal::Replay)
        ));
        let more = sealed_to(&a, &a.auth_key, 2);
        assert!(matches!(
            a.accept(&a.auth_key, &more),
            Err(Refusal::Exhausted)
        ));
    }

    #[test]
    fn a_proof_of_work_counts_once_for_the_current_or_previous_seed() {
        use anonnet_crypto::hs_pow::{solve, PowError};
        let id = [0x11; 32];
        let now = 1_800_000_000;
        let mut previous = PowSeed::fresh(now - 3600);
        previous.seed[..4].copy_from_slice(b"prev");
        let mut current = PowSeed::fresh(now);
        current.seed[..4].copy_from_slice(b"curr");
        let mut st = PowState {
            current,
            previous: Some(previous),
            queue: IntroQueue::new(4, 1000),
            controller: EffortController::new(100),
            status: PowStatus::default(),
        };
        assert_eq!(st.effort_of(&id, None, now), Ok(0), "no proof: effort 0");
        let proof = solve(&id, &st.current.seed, 5, [1; 16]);
        assert_eq!(st.effort_of(&id, Some(&proof), now), Ok(5));
        // The same solution again earns nothing.
        assert_eq!(st.effort_of(&id, Some(&proof), now), Ok(0));
        assert_eq!(st.status.replayed_solutions, 1);
        // The previous seed is still accepted until it expires.
        let old = solve(&id, &st.previous.as_ref().unwrap().seed, 3, [2; 16]);
        assert_eq!(st.effort_of(&id, Some(&old), now), Ok(3));
        let later = now + POW_SEED_LIFETIME.as_secs();
        let old2 = solve(&id, &st.previous.as_ref().unwrap().seed, 3, [3; 16]);
        assert_eq!(
            st.effort_of(&id, Some(&old2), later),
            Err(PowError::WrongSeed)
        );
        // Another service's solution does not verify.
        let other = solve(&[0x12; 32], &st.current.seed, 5, [4; 16]);
        assert!(st.effort_of(&id, Some(&other), now).is_err());
    }

    #[test]
    fn a_service_checks_its_own_records_once_per_consensus_period_within_bounds() {
        let period = |secs: u64| crate::consensus::ConsensusStatus {
            valid_after: 1_000,
            fresh_until: 1_000 + secs,
            valid_until: 1_000 + 3 * secs,
            relays: 5,
            signatures: 3,
            authorities: 3,
            digest: String::new(),
        };
        assert_eq!(self_check_every(None), SELF_CHECK_MIN);
        assert_eq!(self_check_every(Some(&period(4))), SELF_CHECK_MIN);
        assert_eq!(self_check_every(Some(&period(60))), Duration::from_secs(60));
        assert_eq!(
            self_check_every(Some(&period(3600))),
            Duration::from_secs(3600)
        );
        assert_eq!(self_check_every(Some(&period(86_400))), SELF_CHECK_MAX);
    }

    #[test]
    fn intro_point_lifetimes_are_drawn_between_18_and_24_hours() {
        let draws: Vec<Duration> = (0..2000).map(|_| intro_point_lifetime()).collect();
        assert!(draws
            .iter()
            .all(|d| (INTRO_POINT_MIN_LIFETIME..=INTRO_POINT_MAX_LIFETIME).contains(d)));
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert!(draws.iter().any(|d| *d < hours(19)));
        assert!(draws.iter().any(|d| *d > hours(23)));
    }
}
