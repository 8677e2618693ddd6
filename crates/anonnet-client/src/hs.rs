//! Hidden services, client side: reaching `<address>.anon` and `name.dark` (§12, §13).
//!
//! Every DHT request of a hidden-service connection (the descriptor, a `.dark` name)
//! travels through an anonymous circuit to its last relay, which runs the lookup
//! (`DHT_FETCH`, §13.6): DHT nodes never see the client's address. The connection itself:
//! a rendezvous circuit parks a random cookie at a relay; an introduction circuit sends the
//! service, through one of its introduction points, the cookie, the rendezvous relay and the
//! client's half of an end-to-end handshake, sealed to the service's key; the service meets
//! the client at the rendezvous relay, which joins the two circuits; the two ends add an
//! end-to-end onion layer and the stream opens inside it.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anonnet_clock::Expiring;

use anonnet_crypto::dark::{
    dark_key, verify_name_record, DarkName, NameAuthorities, DARK_POW_BITS,
};
use anonnet_crypto::hs::{
    blind_public, descriptor_index, open_descriptor, seal_introduce, time_period, HsAddress,
    PERIOD_OVERLAP_SECS, PERIOD_SECS,
};
use anonnet_crypto::ClientHandshake;
use anonnet_wire::dht::RecordKind;
use anonnet_wire::hs::{
    DarkRecord, HsDescriptor, HsDescriptorBody, IntroPoint, IntroducePlaintext, NameReceipt,
    PowSolution, RelayLink,
};
use anonnet_wire::relay::{COOKIE_LEN, DHT_OK, INTRODUCE_OK};
use anonnet_wire::{RelayMsg, Target};
use bytes::Bytes;
use lru::LruCache;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::circuit::{Circuit, CircuitError, HopSpec};

/// Longest wait for one answer from a relay on a hidden-service circuit (seconds).
pub const HS_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept in the cache (the least recently used is dropped first).
const DESCRIPTOR_CACHE: usize = 256;
/// A cached descriptor is fetched again after this long (and never served past its own
/// `expires`, §15).
const DESCRIPTOR_FRESH: Duration = Duration::from_secs(600);
/// Names kept in the cache (the least recently used is dropped first).
const NAME_CACHE: usize = 256;
/// A resolved name is looked up again after this long (and never served past its record's
/// validity, §15).
const NAME_FRESH: Duration = Duration::from_secs(600);
/// How long a rendezvous circuit is kept open with no stream opened on it (seconds), so
/// that the next page of the same service (same isolation group) costs one circuit round
/// trip rather than a new introduction and rendezvous (§13.5). A circuit with open streams
/// lives as long as they do.
pub const RENDEZVOUS_IDLE: Duration = Duration::from_secs(60);
/// How long after its first stream a rendezvous circuit still takes new ones (Tor's
/// `MaxCircuitDirtiness`, 10 minutes, as for the pool's pre-built prefixes).
pub const RENDEZVOUS_DIRTY: Duration = Duration::from_secs(600);
/// Idle rendezvous circuits kept open at most (the least recently used is let go first):
/// each holds one of its service's rendezvous slots (`MAX_RENDEZVOUS`, 64).
pub const RENDEZVOUS_KEPT: usize = 16;
/// Pinned names kept (file `dark-pins.json` in the state directory).
const MAX_PINS: usize = 4096;
/// File in the state directory with the first owner key seen for each `.dark` name.
pub const PINS_FILE: &str = "dark-pins.json";

/// Why a hidden-service connection failed.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum HsFailure {
    /// The `.anon` address is mistyped (checked before any network traffic).
    #[error("invalid .anon address: {}", anonnet_net::logging::sensitive(.0))]
    BadAddress(String),
    /// The `.dark` name is malformed.
    #[error("invalid .dark name: {}", anonnet_net::logging::sensitive(.0))]
    BadName(String),
    /// No valid descriptor was found for the address.
    #[error(
        "no descriptor found for {} (the service is not published, or not yet)",
        anonnet_net::logging::sensitive(.0)
    )]
    NoDescriptor(String),
    /// No record was found for the name.
    #[error("no record for {}", anonnet_net::logging::sensitive(.0))]
    UnknownName(String),
    /// The name's owner key differs from the one pinned earlier.
    #[error(
        "{} is now signed by a different owner key than the one first seen \
         ({pinned}); refusing. Remove its line from {file} only if you trust the change",
        anonnet_net::logging::sensitive(name)
    )]
    OwnerChanged {
        /// The name.
        name: String,
        /// The pinned key (hex).
        pinned: String,
        /// The pins file.
        file: String,
    },
    /// Every introduction point refused or failed; the last one's reason.
    #[error("introduction failed: {0}")]
    Introduction(#[source] HsStep),
    /// The service did not meet the client at the rendezvous point in time, or its answer
    /// did not complete the end-to-end handshake.
    #[error("rendezvous failed: {0}")]
    Rendezvous(#[source] HsStep),
}

/// Why one step of a hidden-service connection failed (§13.4): the cause kept for
/// [`HsFailure`]'s `source()` chain.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum HsStep {
    /// The relay message `what` (e.g. `INTRODUCE_ACK`) did not come within the step
    /// timeout ([`HS_STEP_TIMEOUT`]).
    #[error("no {what} within {timeout:?}")]
    Timeout {
        /// The relay message waited for.
        what: &'static str,
        /// The step timeout.
        timeout: Duration,
    },
    /// The circuit closed while waiting for the relay message `what`.
    #[error("circuit closed while waiting for {what}")]
    Closed {
        /// The relay message waited for.
        what: &'static str,
    },
    /// Sending on the circuit failed.
    #[error("circuit: {0}")]
    Circuit(#[from] CircuitError),
    /// No circuit to the introduction point could be built.
    #[error("introduction point unreachable: {0}")]
    Unreachable(#[source] Box<crate::ClientError>),
    /// The introduction point answered `INTRODUCE_ACK` with this status (§12.4: 1 = the
    /// service is unknown there, 2 = busy, …).
    #[error("introduction point answered status {0}")]
    Refused(u8),
    /// The descriptor lists no introduction point.
    #[error("the descriptor lists no introduction point")]
    NoIntroductionPoint,
    /// The end-to-end handshake could not start or finish (§13.4).
    #[error("end-to-end handshake: {0}")]
    Handshake(#[from] anonnet_crypto::HandshakeError),
    /// The `INTRODUCE1` plaintext could not be encoded (§12.4).
    #[error("INTRODUCE1 plaintext: {0}")]
    Encode(#[from] anonnet_wire::WireError),
    /// The `INTRODUCE1` payload could not be sealed to the point's key (§12.4).
    #[error("INTRODUCE1 sealing: {0}")]
    Seal(#[from] anonnet_crypto::hs::HsError),
}

/// `n` as a cache capacity (0 is taken as 1).
fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A relay's link specifiers as a hop to extend to.
pub fn hop_of(link: &RelayLink) -> HopSpec {
    HopSpec {
        node_id: anonnet_crypto::NodeId(link.node_id),
        onion_key: link.onion_key,
        addr: link.addr,
    }
}

/// The link specifiers of a circuit's last relay.
pub fn link_of(hop: &HopSpec) -> RelayLink {
    RelayLink {
        node_id: hop.node_id.0,
        onion_key: hop.onion_key,
        addr: hop.addr,
    }
}

/// Wait for the first message on `rx` that `want` accepts, at most
/// [`HS_STEP_TIMEOUT`]. Other messages are skipped.
pub(crate) async fn wait_for<T>(
    rx: &mut mpsc::Receiver<RelayMsg>,
    what: &'static str,
    mut want: impl FnMut(RelayMsg) -> Option<T>,
) -> Result<T, HsStep> {
    let deadline = tokio::time::Instant::now() + HS_STEP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => {
                return Err(HsStep::Timeout {
                    what,
                    timeout: HS_STEP_TIMEOUT,
                })
            }
            Ok(None) => return Err(HsStep::Closed { what }),
            Ok(Some(m)) => {
                if let Some(t) = want(m) {
                    return Ok(t);
                }
            }
        }
    }
}

/// Fetch the records of `kind` under `key` through `circuit`'s last relay (§13.6). The
/// records are returned as the relay sent them: the caller verifies them.
pub(crate) async fn dht_fetch(
    circuit: &Circuit,
    key: [u8; 32],
    kind: RecordKind,
) -> Result<Vec<Bytes>, String> {
    let mut rx = circuit.control_messages();
    circuit
        .send_to_last_relay(RelayMsg::DhtFetch {
            key,
            kind: kind.to_byte(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    loop {
        let (status, count, body) = wait_for(&mut rx, "DHT_RESULT", |m| match m {
            RelayMsg::DhtResult {
                status,
                count,
                body,
                ..
            } => Some((status, count, body)),
            _ => None,
        })
        .await
        .map_err(|e| e.to_string())?;
        if status != DHT_OK {
            return Ok(records);
        }
        records.push(body);
        if records.len() >= usize::from(count) {
            return Ok(records);
        }
    }
}

/// Store a record through `circuit`'s last relay (§13.6); the number of storage nodes
/// that accepted it.
pub(crate) async fn dht_store(
    circuit: &Circuit,
    key: [u8; 32],
    kind: RecordKind,
    body: Vec<u8>,
) -> Result<usize, String> {
    let mut rx = circuit.control_messages();
    circuit
        .send_to_last_relay(RelayMsg::DhtStore {
            key,
            kind: kind.to_byte(),
            body: Bytes::from(body),
        })
        .await
        .map_err(|e| e.to_string())?;
    let (status, count) = wait_for(&mut rx, "DHT_RESULT", |m| match m {
        RelayMsg::DhtResult { status, count, .. } => Some((status, count)),
        _ => None,
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(if status == DHT_OK {
        usize::from(count)
    } else {
        0
    })
}

/// Register the name of `record` (a kind-3 record, §12.5, encoded without receipts) with
/// the network's authorities through `circuit`'s last relay (`NAME_REGISTER`): `(asked,
/// refused, receipts)` as the relay reported them, receipts unchecked.
///
/// # Errors
/// The circuit failed or no `NAME_RECEIPTS` came within the step timeout.
pub(crate) async fn register_name(
    circuit: &Circuit,
    record: Vec<u8>,
) -> Result<(u8, u8, Vec<NameReceipt>), String> {
    let mut rx = circuit.control_messages();
    circuit
        .send_to_last_relay(RelayMsg::NameRegister {
            record: Bytes::from(record),
        })
        .await
        .map_err(|e| e.to_string())?;
    wait_for(&mut rx, "NAME_RECEIPTS", |m| match m {
        RelayMsg::NameReceipts {
            asked,
            refused,
            receipts,
        } => Some((asked, refused, receipts)),
        _ => None,
    })
    .await
    .map_err(|e| e.to_string())
}

/// The periods whose descriptor a client tries, in order: the current one, then the
/// neighbour a service with a clock up to an hour off may still be using.
pub fn periods_to_fetch(now_unix: u64) -> Vec<u64> {
    let p = time_period(now_unix);
    let into = now_unix % PERIOD_SECS;
    let mut out = vec![p];
    if into < PERIOD_OVERLAP_SECS && p > 0 {
        out.push(p - 1);
    } else if PERIOD_SECS - into <= PERIOD_OVERLAP_SECS {
        out.push(p + 1);
    }
    out
}

/// First-seen owner keys of `.dark` names, persisted as JSON `{ "name": "hex key" }`.
#[derive(Debug, Default)]
pub struct NamePins {
    file: Option<PathBuf>,
    pins: HashMap<String, [u8; 32]>,
}

impl NamePins {
    /// Load the pins from `state_dir/dark-pins.json` (missing: none). The pins are the
    /// trust-on-first-use defence, so they are never lost silently: a file that cannot be
    /// read or parsed, or that holds entries that are not pins, is moved aside to
    /// `dark-pins.json.bad` with a warning naming both files (the readable pins are kept
    /// and saved again), instead of being overwritten by the next pin.
    pub fn load(state_dir: Option<&std::path::Path>) -> Self {
        let file = state_dir.map(|d| d.join(PINS_FILE));
        let mut pins = HashMap::new();
        let Some(path) = file.clone() else {
            return NamePins { file, pins };
        };
        let map = anonnet_state::load(&path, |b| {
            serde_json::from_slice::<HashMap<String, String>>(b)
                .map_err(|e| format!("is not a pins file: {e}"))
        })
        .unwrap_or_default();
        let total = map.len();
        for (name, key) in map.into_iter().take(MAX_PINS) {
            let key = hex::decode(&key).ok().and_then(|k| k.try_into().ok());
            if let Some(key) = key {
                pins.insert(name, key);
            }
        }
        let loaded = NamePins { file, pins };
        if loaded.pins.len() < total {
            let why = format!(
                "holds {} entries that are not pins",
                total - loaded.pins.len()
            );
            let kept = format!("{} readable pins kept", loaded.pins.len());
            anonnet_state::set_aside(&path, &why, &kept);
            if !loaded.pins.is_empty() {
                loaded.save();
            }
        }
        loaded
    }

    /// Check `owner` for `name`: pin it when the name is new. `Err` with the pinned key
    /// when it differs.
    pub fn check(&mut self, name: &str, owner: [u8; 32]) -> Result<(), [u8; 32]> {
        match self.pins.get(name) {
            Some(pinned) if *pinned == owner => Ok(()),
            Some(pinned) => Err(*pinned),
            None => {
                if self.pins.len() < MAX_PINS {
                    self.pins.insert(name.to_owned(), owner);
                    self.save();
                }
                Ok(())
            }
        }
    }

    /// The pins file, for messages.
    pub fn file(&self) -> String {
        self.file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "(memory)".into())
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let map: HashMap<&String, String> =
            self.pins.iter().map(|(n, k)| (n, hex::encode(k))).collect();
        let Ok(text) = serde_json::to_string_pretty(&map) else {
            return;
        };
        // A crash or a full disk leaves the old pins, never a half-written file.
        if let Err(e) = anonnet_state::write_atomically(file, text.as_bytes()) {
            warn!("cannot save {}: {e}", file.display());
        }
    }
}

/// A service address and an isolation key.
type RendezvousKey = (HsAddress, Vec<u8>);

/// A rendezvous circuit in the cache: held open ([`RENDEZVOUS_IDLE`]) while recently used,
/// else only as long as its streams hold it. (`C` is [`Circuit`]; the tests use a stand-in.)
#[derive(Debug)]
struct KeptRendezvous<C> {
    circuit: Weak<C>,
    /// The cache's own reference, dropped once the circuit is idle, dirty or crowded out.
    held: Option<Arc<C>>,
    first_used: Instant,
    last_used: Instant,
}

/// What the rendezvous cache needs to know of a circuit.
trait Closable {
    fn is_closed(&self) -> bool;
}

impl Closable for Circuit {
    fn is_closed(&self) -> bool {
        Circuit::is_closed(self)
    }
}

/// The rendezvous cache's map.
type KeptMap<C> = HashMap<RendezvousKey, KeptRendezvous<C>>;

/// The client's hidden-service caches: descriptors, resolved names, name pins, the local
/// address book and rendezvous circuits open to services.
#[derive(Debug)]
pub(crate) struct HsCache {
    /// Bounded LRU caches (the `lru` crate): [`DESCRIPTOR_CACHE`] and [`NAME_CACHE`] entries.
    descriptors: Mutex<LruCache<HsAddress, Expiring<Revised>>>,
    names: Mutex<LruCache<String, Expiring<HsAddress>>>,
    pins: Mutex<NamePins>,
    address_book: HashMap<String, HsAddress>,
    /// Rendezvous circuits by service address and isolation key, reused by later streams
    /// for [`RENDEZVOUS_DIRTY`]; at most [`RENDEZVOUS_KEPT`] held open while idle.
    rendezvous: Mutex<KeptMap<Circuit>>,
    /// Proof-of-work bits a `.dark` record needs: [`DARK_POW_BITS`] (lower only in the
    /// simulation tests, which mine hundreds of records).
    name_pow_bits: u32,
}

impl HsCache {
    pub(crate) fn new(
        state_dir: Option<&std::path::Path>,
        book: HashMap<String, HsAddress>,
    ) -> Self {
        HsCache {
            descriptors: Mutex::new(LruCache::new(capacity(DESCRIPTOR_CACHE))),
            names: Mutex::new(LruCache::new(capacity(NAME_CACHE))),
            pins: Mutex::new(NamePins::load(state_dir)),
            address_book: book,
            rendezvous: Mutex::new(HashMap::new()),
            name_pow_bits: DARK_POW_BITS,
        }
    }

    /// The `expires` of the cached descriptor of `address`, served or not.
    #[cfg(test)]
    pub(crate) fn descriptor_expires(&self, address: &HsAddress) -> Option<u64> {
        lock(&self.descriptors).peek(address).map(Expiring::expires)
    }

    /// The end of validity of the cached resolution of `name`, served or not.
    #[cfg(test)]
    pub(crate) fn name_expires(&self, name: &DarkName) -> Option<u64> {
        lock(&self.names).peek(name.as_str()).map(Expiring::expires)
    }

    /// A cache whose `.dark` records need `bits` of work (simulations).
    #[cfg(test)]
    pub(crate) fn with_name_pow_bits(mut self, bits: u32) -> Self {
        self.name_pow_bits = bits;
        self
    }

    /// The cached descriptor of `address` when it was fetched less than
    /// [`DESCRIPTOR_FRESH`] before `now_mono` and has not expired at `now_unix`.
    pub(crate) fn descriptor(
        &self,
        address: &HsAddress,
        now_unix: u64,
        now_mono: Instant,
    ) -> Option<Revised> {
        lock(&self.descriptors)
            .get(address)
            .and_then(|e| e.fresh(now_unix, now_mono, DESCRIPTOR_FRESH))
            .cloned()
    }

    /// Cache `body`, valid until `expires` (Unix seconds), fetched at `fetched`; the entry
    /// used longest ago makes room when the cache is full.
    pub(crate) fn put_descriptor(
        &self,
        address: HsAddress,
        body: Revised,
        expires: u64,
        fetched: Instant,
    ) {
        lock(&self.descriptors).put(address, Expiring::new(body, expires, fetched));
    }

    pub(crate) fn forget_descriptor(&self, address: &HsAddress) {
        lock(&self.descriptors).pop(address);
    }

    /// The open rendezvous circuit to `address` for the isolation group `iso`, if one
    /// takes new streams (younger than [`RENDEZVOUS_DIRTY`] since its first); marked used
    /// at `now`.
    pub(crate) fn rendezvous_circuit(
        &self,
        address: &HsAddress,
        iso: &[u8],
        now: Instant,
    ) -> Option<Arc<Circuit>> {
        let mut map = lock(&self.rendezvous);
        expire_rendezvous(&mut map, now);
        let kept = map.get_mut(&(*address, iso.to_vec()))?;
        let circuit = kept.circuit.upgrade()?;
        kept.last_used = now;
        Some(circuit)
    }

    /// Cache `c`, the rendezvous circuit just built to `address` for `iso`, held open while
    /// it is used; when more than [`RENDEZVOUS_KEPT`] are held, the least recently used
    /// one is let go (it closes once its streams end).
    pub(crate) fn put_rendezvous_circuit(
        &self,
        address: HsAddress,
        iso: &[u8],
        c: &Arc<Circuit>,
        now: Instant,
    ) {
        keep_rendezvous(&mut lock(&self.rendezvous), (address, iso.to_vec()), c, now);
    }

    /// Let go of the rendezvous circuits idle for [`RENDEZVOUS_IDLE`] or dirty for
    /// [`RENDEZVOUS_DIRTY`] at `now`, and forget the closed ones (called every second).
    pub(crate) fn expire_rendezvous(&self, now: Instant) {
        expire_rendezvous(&mut lock(&self.rendezvous), now);
    }

    /// Forget every rendezvous circuit (new identity); those no stream uses close.
    pub(crate) fn clear_circuits(&self) {
        lock(&self.rendezvous).clear();
    }

    /// The address book's entry for `name`, else a cached resolution made less than
    /// [`NAME_FRESH`] before `now_mono` whose record is still valid at `now_unix`.
    pub(crate) fn known_name(
        &self,
        name: &DarkName,
        now_unix: u64,
        now_mono: Instant,
    ) -> Option<HsAddress> {
        if let Some(a) = self.address_book.get(name.as_str()) {
            return Some(*a);
        }
        lock(&self.names)
            .get(name.as_str())
            .and_then(|e| e.fresh(now_unix, now_mono, NAME_FRESH))
            .copied()
    }

    /// Choose among the verified records for `name` (with `authorities`, only those that
    /// carry receipts of a majority of them, §12.5): the pinned owner's if present, else
    /// the earliest published; pin it, and cache it (fetched at `fetched`) until the chosen
    /// record's validity ends. Errors when only other owners' records exist.
    pub(crate) fn choose_name(
        &self,
        name: &DarkName,
        records: &[Bytes],
        now: u64,
        fetched: Instant,
        authorities: Option<&NameAuthorities>,
    ) -> Result<HsAddress, HsFailure> {
        let mut valid = Vec::new();
        for body in records {
            let Ok(r) = DarkRecord::decode(body) else {
                continue;
            };
            match verify_name_record(&r, now, self.name_pow_bits, authorities) {
                Ok(v) if v.name == *name => valid.push(v),
                Ok(_) => debug!("a record for another name came back"),
                Err(e) => debug!("ignoring a .dark record: {e}"),
            }
        }
        if valid.is_empty() {
            return Err(HsFailure::UnknownName(name.to_string()));
        }
        let mut pins = lock(&self.pins);
        let pinned = pins.pins.get(name.as_str()).copied();
        let chosen = match pinned {
            Some(key) => valid.iter().find(|v| v.owner == key),
            None => valid.iter().min_by_key(|v| v.published),
        };
        let Some(chosen) = chosen else {
            let pinned = pinned.map(hex::encode).unwrap_or_default();
            warn!(
                name = %anonnet_net::logging::sensitive(name.as_str()),
                pinned = %pinned,
                "REFUSING a .dark name: its records are signed by a different owner key than the one pinned"
            );
            return Err(HsFailure::OwnerChanged {
                name: name.to_string(),
                pinned,
                file: pins.file(),
            });
        };
        if pins.check(name.as_str(), chosen.owner).is_err() {
            return Err(HsFailure::OwnerChanged {
                name: name.to_string(),
                pinned: pinned.map(hex::encode).unwrap_or_default(),
                file: pins.file(),
            });
        }
        let (address, expires) = (chosen.address, chosen.expires);
        drop(pins);
        lock(&self.names).put(
            name.as_str().to_owned(),
            Expiring::new(address, expires, fetched),
        );
        Ok(address)
    }
}

/// An opened descriptor body with the `revision` (§12.3) it was signed under.
pub(crate) type Revised = (u64, HsDescriptorBody);

/// [`HsCache::put_rendezvous_circuit`] on the locked map.
fn keep_rendezvous<C: Closable>(
    map: &mut KeptMap<C>,
    key: RendezvousKey,
    c: &Arc<C>,
    now: Instant,
) {
    expire_rendezvous(map, now);
    map.insert(
        key,
        KeptRendezvous {
            circuit: Arc::downgrade(c),
            held: Some(c.clone()),
            first_used: now,
            last_used: now,
        },
    );
    let held = map.values().filter(|k| k.held.is_some()).count();
    for _ in RENDEZVOUS_KEPT..held {
        let oldest = map
            .values_mut()
            .filter(|k| k.held.is_some())
            .min_by_key(|k| k.last_used);
        if let Some(k) = oldest {
            k.held = None;
        }
    }
    // What no stream held closed with it.
    map.retain(|_, k| k.circuit.strong_count() > 0);
}

/// [`HsCache::expire_rendezvous`] on the locked map: drop the cache's reference to a
/// circuit idle for [`RENDEZVOUS_IDLE`] or first used [`RENDEZVOUS_DIRTY`] ago, and the
/// entries of circuits that closed or are dirty.
fn expire_rendezvous<C: Closable>(map: &mut KeptMap<C>, now: Instant) {
    map.retain(|_, k| {
        let dirty = now.saturating_duration_since(k.first_used) >= RENDEZVOUS_DIRTY;
        if dirty || now.saturating_duration_since(k.last_used) >= RENDEZVOUS_IDLE {
            k.held = None;
        }
        !dirty && k.circuit.upgrade().is_some_and(|c| !c.is_closed())
    });
}

/// Open descriptors fetched for `address` and keep the newest that verifies at `now`
/// (Unix seconds), with its `expires`.
pub(crate) fn best_descriptor(
    address: &HsAddress,
    records: &[Bytes],
    now: u64,
) -> Option<(Revised, u64)> {
    records
        .iter()
        .filter_map(|b| HsDescriptor::decode(b).ok())
        .filter_map(|d| {
            let (revision, expires) = (d.revision, d.expires);
            open_descriptor(&d, address, now)
                .ok()
                .map(|b| ((revision, b), expires))
        })
        .max_by_key(|((r, _), _)| *r)
}

/// The DHT key of `address`'s descriptor for `period`.
pub(crate) fn descriptor_key(address: &HsAddress, period: u64) -> Option<[u8; 32]> {
    blind_public(address, period)
        .ok()
        .map(|b| descriptor_index(&b, period))
}

/// The DHT key of a name.
pub(crate) fn name_key(name: &DarkName) -> [u8; 32] {
    dark_key(name)
}

/// Highest proof-of-work effort a client spends on one introduction (§13.9): a service
/// suggesting more is met with this much (a few seconds of one core).
pub const CLIENT_MAX_EFFORT: u32 = 10_000;

/// The client's part of one connection attempt through one introduction point, once the
/// rendezvous circuit is parked: introduce through the point and wait for the service at
/// the rendezvous point.
pub(crate) struct Introduction {
    pub(crate) cookie: [u8; COOKIE_LEN],
    pub(crate) rendezvous: RelayLink,
    pub(crate) handshake: ClientHandshake,
}

impl Introduction {
    /// Start: a fresh end-to-end handshake with `B` = the `enc_key` of `point`, the
    /// introduction point this attempt goes through (§13.4): the service answers it with
    /// that point's secret.
    pub(crate) fn new(
        address: &HsAddress,
        point: &IntroPoint,
        cookie: [u8; COOKIE_LEN],
        rendezvous: RelayLink,
    ) -> Result<Self, HsFailure> {
        let handshake = ClientHandshake::start_hs(address.node_id(), point.enc_key)
            .map_err(|e| HsFailure::Introduction(e.into()))?;
        Ok(Introduction {
            cookie,
            rendezvous,
            handshake,
        })
    }

    /// The sealed `INTRODUCE1` payload for `point` (the one given to
    /// [`Introduction::new`]): sealed to its `enc_key`, bound to its `auth_key` (§12.4).
    pub(crate) fn sealed(
        &self,
        point: &IntroPoint,
        pow: Option<PowSolution>,
    ) -> Result<Bytes, HsFailure> {
        let plain = IntroducePlaintext {
            pow,
            cookie: self.cookie,
            rendezvous: self.rendezvous,
            client_pk: self.handshake.hello().client_pk,
        }
        .encode()
        .map_err(|e| HsFailure::Introduction(e.into()))?;
        seal_introduce(&point.enc_key, &point.auth_key, &plain)
            .map(Bytes::from)
            .map_err(|e| HsFailure::Introduction(e.into()))
    }
}

/// Send `INTRODUCE1` on `circuit` and wait for the introduction point's answer.
pub(crate) async fn introduce(
    circuit: &Circuit,
    auth_key: [u8; 32],
    sealed: Bytes,
) -> Result<(), HsStep> {
    let mut rx = circuit.control_messages();
    circuit
        .send_to_last_relay(RelayMsg::Introduce1 { auth_key, sealed })
        .await?;
    let status = wait_for(&mut rx, "INTRODUCE_ACK", |m| match m {
        RelayMsg::IntroduceAck(s) => Some(s),
        _ => None,
    })
    .await?;
    if status == INTRODUCE_OK {
        Ok(())
    } else {
        Err(HsStep::Refused(status))
    }
}

/// The host name as a `BEGIN` target for the end-to-end hop.
pub(crate) fn begin_target(address: &HsAddress) -> Target {
    Target::Host(address.to_host())
}

/// Log the cold-connect time of a `.anon` connection.
pub(crate) fn log_connected(address: &HsAddress, started: Instant, reused: bool) {
    debug!(
        service = %anonnet_net::logging::sensitive(address),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        reused,
        "hidden-service stream open"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_crypto::dark::make_dark_record;
    use anonnet_crypto::hs::ServiceKey;
    use anonnet_crypto::IdentityKey;

    fn record(owner: u8, name: &DarkName, address: &HsAddress, published: u64) -> Bytes {
        let owner = IdentityKey::from_seed(&[owner; 32]);
        let r = make_dark_record(
            &owner,
            name,
            address,
            published,
            published + 86_400,
            DARK_POW_BITS,
        );
        Bytes::from(r.encode().unwrap())
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anonnet-hs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_unreadable_pins_file_is_moved_aside_not_overwritten() {
        let dir = temp_dir("bad-pins");
        let path = dir.join(PINS_FILE);
        std::fs::write(&path, b"{\"shop\": \"not hex\", \"good\": \"").unwrap();
        let mut pins = NamePins::load(Some(&dir));
        assert!(pins.pins.is_empty());
        let bad = dir.join("dark-pins.json.bad");
        assert_eq!(
            std::fs::read(&bad).unwrap(),
            b"{\"shop\": \"not hex\", \"good\": \""
        );
        // A new pin is saved; the set-aside copy is left as it was.
        pins.check("new", [5; 32]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"new\""));
        assert!(std::fs::read(&bad).unwrap().starts_with(b"{\"shop\""));

        // A file with some good and some bad entries: the good pins are kept (and saved),
        // the whole original is set aside.
        let mixed = format!(r#"{{"a": "{}", "b": "zz"}}"#, hex::encode([7u8; 32]));
        std::fs::write(&path, &mixed).unwrap();
        let pins = NamePins::load(Some(&dir));
        assert_eq!(pins.pins.get("a"), Some(&[7u8; 32]));
        // …beside the first one set aside, which stays as it was.
        assert_eq!(
            std::fs::read_to_string(dir.join("dark-pins.json.bad.1")).unwrap(),
            mixed
        );
        assert!(std::fs::read(&bad).unwrap().starts_with(b"{\"shop\""));
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"a\""));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_pin_the_first_owner_and_refuse_a_changed_one() {
        let dir = temp_dir("pins");
        let now = now_secs();
        let name = DarkName::parse("shop.dark").unwrap();
        let site = ServiceKey::from_seed(&[1; 32]).address();
        let other_site = ServiceKey::from_seed(&[2; 32]).address();
        let cache = HsCache::new(Some(&dir), HashMap::new());
        // First sight: the earliest record wins and its owner is pinned (and saved).
        let first = record(7, &name, &site, now - 100);
        let later = record(8, &name, &other_site, now - 50);
        assert_eq!(
            cache
                .choose_name(
                    &name,
                    &[later.clone(), first.clone()],
                    now,
                    Instant::now(),
                    None
                )
                .unwrap(),
            site
        );
        let saved = std::fs::read_to_string(dir.join(PINS_FILE)).unwrap();
        assert!(saved.contains("\"shop\""), "{saved}");

        // A restarted client reads the pin: only another owner's record → refused.
        let cache = HsCache::new(Some(&dir), HashMap::new());
        let err = cache
            .choose_name(
                &name,
                std::slice::from_ref(&later),
                now,
                Instant::now(),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, HsFailure::OwnerChanged { .. }), "{err}");
        assert!(err.to_string().contains(PINS_FILE), "{err}");
        // The pinned owner's record is still taken when it is there.
        assert_eq!(
            cache
                .choose_name(&name, &[later, first], now, Instant::now(), None)
                .unwrap(),
            site
        );

        // Records that do not verify are ignored: a flipped byte, or nothing at all.
        let mut bad = record(9, &name, &site, now).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = cache
            .choose_name(&name, &[Bytes::from(bad)], now, Instant::now(), None)
            .unwrap_err();
        assert!(matches!(err, HsFailure::UnknownName(_)), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_address_book_overrides_the_dht() {
        let name = DarkName::parse("wiki").unwrap();
        let booked = ServiceKey::from_seed(&[3; 32]).address();
        let cache = HsCache::new(None, HashMap::from([("wiki".to_owned(), booked)]));
        let (now, mono) = (now_secs(), Instant::now());
        assert_eq!(cache.known_name(&name, now, mono), Some(booked));
        assert_eq!(
            cache.known_name(&DarkName::parse("other").unwrap(), now, mono),
            None
        );
    }

    /// A stand-in for a circuit: closed when dropped, as a [`Circuit`] is, or by hand.
    #[derive(Debug, Default)]
    struct Fake(std::sync::atomic::AtomicBool);

    impl Closable for Fake {
        fn is_closed(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn rendezvous_circuits_are_held_while_used_then_let_go() {
        let key = |i: u8| (ServiceKey::from_seed(&[i; 32]).address(), vec![i]);
        let t0 = Instant::now();
        let mut map: KeptMap<Fake> = HashMap::new();
        let used = |map: &mut KeptMap<Fake>, i: u8, now: Instant| {
            expire_rendezvous(map, now);
            let k = map.get_mut(&key(i))?;
            k.last_used = now;
            k.circuit.upgrade()
        };

        // Held with no stream on it, and found again while used within RENDEZVOUS_IDLE.
        let c = Arc::new(Fake::default());
        keep_rendezvous(&mut map, key(0), &c, t0);
        let weak = Arc::downgrade(&c);
        drop(c);
        let step = RENDEZVOUS_IDLE - Duration::from_secs(1);
        let mut now = t0;
        for _ in 0..3 {
            now += step;
            assert!(used(&mut map, 0, now).is_some(), "kept while used");
        }
        // Idle for RENDEZVOUS_IDLE: let go, and with no stream on it, gone.
        expire_rendezvous(&mut map, now + RENDEZVOUS_IDLE);
        assert!(weak.upgrade().is_none() && map.is_empty());

        // A stream (another reference) keeps it past the idle time, but once dirty it
        // takes no new stream.
        let c = Arc::new(Fake::default());
        keep_rendezvous(&mut map, key(1), &c, t0);
        expire_rendezvous(&mut map, t0 + RENDEZVOUS_IDLE);
        assert!(used(&mut map, 1, t0 + RENDEZVOUS_IDLE).is_some());
        assert!(used(&mut map, 1, t0 + RENDEZVOUS_DIRTY).is_none());
        assert!(map.is_empty() && !c.is_closed());

        // A closed circuit is not offered.
        let c = Arc::new(Fake::default());
        keep_rendezvous(&mut map, key(2), &c, t0);
        c.0.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(used(&mut map, 2, t0).is_none());

        // At most RENDEZVOUS_KEPT held: the least recently used is let go first.
        let n = u8::try_from(RENDEZVOUS_KEPT).unwrap() + 2;
        let circuits: Vec<std::sync::Weak<Fake>> = (0..n)
            .map(|i| {
                let c = Arc::new(Fake::default());
                keep_rendezvous(
                    &mut map,
                    key(10 + i),
                    &c,
                    t0 + Duration::from_millis(i.into()),
                );
                Arc::downgrade(&c)
            })
            .collect();
        let held = circuits.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(held, RENDEZVOUS_KEPT);
        assert!(circuits[..2].iter().all(|w| w.upgrade().is_none()));
        assert_eq!(map.len(), RENDEZVOUS_KEPT);
    }

    #[test]
    fn cached_descriptor_is_not_served_past_its_expires() {
        let cache = HsCache::new(None, HashMap::new());
        let a = ServiceKey::from_seed(&[4; 32]).address();
        let body = HsDescriptorBody {
            pow: None,
            intro_points: Vec::new(),
        };
        let (t0, m0) = (1_800_000_000u64, Instant::now());
        cache.put_descriptor(a, (1, body), t0 + 3600, m0);
        assert!(cache.descriptor(&a, t0, m0).is_some());
        // The wall clock jumped past `expires` (a suspend): a second later on the
        // monotonic clock, the entry is young but is not served.
        assert!(cache
            .descriptor(&a, t0 + 3600, m0 + Duration::from_secs(1))
            .is_none());
        // Old by the monotonic clock though valid: fetched again too.
        assert!(cache.descriptor(&a, t0, m0 + DESCRIPTOR_FRESH).is_none());
    }

    #[test]
    fn cached_name_is_not_served_past_its_record() {
        let dir = temp_dir("name-expiry");
        let now = now_secs();
        let name = DarkName::parse("shop").unwrap();
        let site = ServiceKey::from_seed(&[1; 32]).address();
        let cache = HsCache::new(Some(&dir), HashMap::new());
        // A record published 86 400 − 60 s ago: a minute of validity left.
        let r = record(7, &name, &site, now - 86_400 + 60);
        let m0 = Instant::now();
        assert_eq!(cache.choose_name(&name, &[r], now, m0, None).unwrap(), site);
        assert_eq!(cache.known_name(&name, now + 59, m0), Some(site));
        assert_eq!(cache.known_name(&name, now + 60, m0), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fetch_periods_include_the_neighbour_near_a_boundary() {
        let p = 20_000u64;
        let start = p * PERIOD_SECS;
        assert_eq!(periods_to_fetch(start + 10), vec![p, p - 1]);
        assert_eq!(periods_to_fetch(start + PERIOD_SECS / 2), vec![p]);
        assert_eq!(periods_to_fetch(start + PERIOD_SECS - 10), vec![p, p + 1]);
    }

    #[test]
    fn descriptor_cache_is_bounded_and_drops_the_least_recently_used() {
        let cache = HsCache::new(None, HashMap::new());
        let address = |i: u64| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            ServiceKey::from_seed(&seed).address()
        };
        let put = |i: u64| {
            cache.put_descriptor(
                address(i),
                (
                    1,
                    HsDescriptorBody {
                        pow: None,
                        intro_points: Vec::new(),
                    },
                ),
                u64::MAX,
                Instant::now(),
            )
        };
        let n = DESCRIPTOR_CACHE as u64;
        for i in 0..n {
            put(i);
        }
        // Reading the first entry makes it the most recently used one.
        let (now_unix, now_mono) = (now_secs(), Instant::now());
        assert!(cache.descriptor(&address(0), now_unix, now_mono).is_some());
        for i in n..n + 10 {
            put(i);
        }
        assert_eq!(lock(&cache.descriptors).len(), DESCRIPTOR_CACHE);
        assert!(cache.descriptor(&address(0), now_unix, now_mono).is_some());
        for i in 1..=10 {
            assert!(cache.descriptor(&address(i), now_unix, now_mono).is_none());
        }
        assert!(cache.descriptor(&address(11), now_unix, now_mono).is_some());
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}
