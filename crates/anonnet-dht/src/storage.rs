//! What a storage node (a relay) keeps for others: verified, expiring records, bounded per
//! key, per peer and in total, with a per-peer request rate limit. Spec:
//! `docs/protocol.md` §11.7.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anonnet_crypto::dark::{
    dark_key, verify_name_record, DarkError, NameAuthorities, DARK_POW_BITS,
};
use anonnet_crypto::hs::{self, HsError};
use anonnet_crypto::{verify_descriptor, DescriptorError, NodeId};
use anonnet_wire::dht::MAX_RECORD_LEN;
use anonnet_wire::dht::{
    Record, RecordKind, StoreStatus, MAX_RECORDS, REJECT_INVALID, REJECT_STALE, REJECT_TAKEN,
};
use anonnet_wire::hs::{DarkRecord, HsDescriptor};
use anonnet_wire::{Reader, SignedDescriptor, WireError, Writer};
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use lru::LruCache;

use crate::descriptor_key;

/// Longest a record may still be valid when it is stored or read: 3 days (seconds).
/// Relays sign descriptors valid for one day (§3.2); a record claiming more is refused, so
/// that a replayed record cannot outlive its owner's next key or address change for long.
pub const MAX_RECORD_TTL: u64 = 3 * 86_400;
/// Most peers whose request rate [`Storage::allow_request`] tracks at once.
pub const MAX_RATE_PEERS: usize = 4096;

/// First 16 bytes of [`Storage::to_persisted`] (§11.7.1).
pub const PERSISTED_MAGIC: &[u8; 16] = b"anonnet-records1";
/// Most entries [`decode_persisted`] reads: the default [`StorageLimits::total`].
pub const MAX_PERSISTED_RECORDS: usize = 10_000;

/// One record of a persisted store (§11.7.1), not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedRecord {
    /// The DHT key it is stored under.
    pub key: [u8; 32],
    /// The peer it was attributed to (per-peer bound), as when it was stored.
    pub from: NodeId,
    /// The record.
    pub record: Record,
}

/// Parse [`Storage::to_persisted`] output: `magic [16] ‖ count u32 ‖ count × (key [32] ‖
/// from [32] ‖ kind u8 ‖ len u16 ‖ body [len])`, §11.7.1. Nothing is verified here: load
/// each entry with [`Storage::store`] (or [`Storage::load_persisted`]), which checks it as a
/// `STORE`.
///
/// # Errors
/// [`WireError`] when the magic is wrong, `count` exceeds [`MAX_PERSISTED_RECORDS`], an
/// entry is truncated or has an unknown kind or a body over 4096 bytes, or bytes trail.
pub fn decode_persisted(bytes: &[u8]) -> Result<Vec<PersistedRecord>, WireError> {
    let mut r = Reader::new(bytes);
    if r.take(PERSISTED_MAGIC.len())? != PERSISTED_MAGIC {
        return Err(WireError::Invalid {
            field: "persisted records",
            why: "not an anonnet record store (wrong magic)",
        });
    }
    let count = usize::try_from(r.take_u32()?).unwrap_or(usize::MAX);
    if count > MAX_PERSISTED_RECORDS {
        return Err(WireError::Invalid {
            field: "persisted records",
            why: "more than 10 000 records",
        });
    }
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let key = r.take_array::<32>()?;
        let from = NodeId(r.take_array::<32>()?);
        let kind = RecordKind::from_byte(r.take_u8()?)?;
        let len = usize::from(r.take_u16()?);
        if len > MAX_RECORD_LEN {
            return Err(WireError::Invalid {
                field: "persisted record",
                why: "body longer than 4096 bytes",
            });
        }
        let body = r.take(len)?.to_vec();
        out.push(PersistedRecord {
            key,
            from,
            record: Record { kind, body },
        });
    }
    r.finish()?;
    Ok(out)
}

/// What [`Storage::load_persisted`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Entries the file held.
    pub read: usize,
    /// Entries stored again (they passed every check of a `STORE`).
    pub loaded: usize,
}

/// Why a record is not acceptable (for logs and for readers of `VALUE` answers).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The body does not parse as the record kind says.
    #[error("malformed record: {0}")]
    Malformed(#[from] WireError),
    /// The embedded descriptor is forged, expired or from the future.
    #[error("record descriptor: {0}")]
    Descriptor(#[from] DescriptorError),
    /// The hidden-service descriptor is forged or expired (§12.3).
    #[error("hidden-service descriptor: {0}")]
    HsDescriptor(#[from] HsError),
    /// The `.dark` name record is forged, expired, from the future, or has too little work
    /// (§12.5).
    #[error(".dark record: {0}")]
    DarkName(#[from] DarkError),
    /// The record is stored under a key that is not the one its contents give (relay
    /// descriptor: its NodeId's descriptor key; hidden-service descriptor: its index;
    /// `.dark` record: its name's key).
    #[error("record key does not match its owner")]
    WrongKey,
    /// The record claims to stay valid longer than [`MAX_RECORD_TTL`].
    #[error("record valid until {expires}, more than 3 days after {now}")]
    TooLongLived {
        /// Its `expires` (Unix seconds).
        expires: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
}

/// What [`verify_record`] learned about a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// Who the record belongs to: `NodeId::from_identity` of the relay's identity key, of
    /// a hidden-service descriptor's blinded key, or of a `.dark` record's owner key.
    pub owner: NodeId,
    /// Version; larger replaces smaller for one owner: `published` (Unix seconds) of a
    /// relay descriptor or `.dark` record, `revision` of a hidden-service descriptor.
    pub published: u64,
    /// End of validity (Unix seconds).
    pub expires: u64,
}

/// Check `record` as stored under `key` at `now_unix` (Unix seconds), §11.3 and §12.6.
/// Every kind must have `expires ≤ now + MAX_RECORD_TTL`. Further, for
/// - [`RecordKind::RelayDescriptor`]: the body decodes as a signed descriptor, it verifies
///   (signature, `expires > now`, `published ≤ now + 3600`), and `key ==
///   descriptor_key(its NodeId)`;
/// - [`RecordKind::HsDescriptor`]: the body decodes as an [`HsDescriptor`], it verifies
///   under its blinded key ([`hs::verify_descriptor`]: signature, `expires > now`), and
///   `key` is its index;
/// - [`RecordKind::DarkName`]: the body decodes as a [`DarkRecord`], it verifies
///   ([`anonnet_crypto::dark::verify_dark_record`] with [`DARK_POW_BITS`]: signature, work, `expires > now`,
///   `published ≤ now + 3600`), and `key == dark_key(name)`.
///
/// Storage nodes call it before storing; readers call it on every record of a `VALUE`
/// answer before using it.
///
/// # Errors
/// [`RecordError`] saying which check failed.
pub fn verify_record(
    key: &[u8; 32],
    record: &Record,
    now_unix: u64,
) -> Result<VerifiedRecord, RecordError> {
    verify_record_for(key, record, now_unix, None)
}

/// [`verify_record`] in a network whose `.dark` records must carry receipts of a majority
/// of its authorities (`names`, §12.5): a kind-3 record without enough fails with
/// [`DarkError::NotRegistered`]. `None` checks as [`verify_record`] does.
///
/// # Errors
/// [`RecordError`] saying which check failed.
pub fn verify_record_for(
    key: &[u8; 32],
    record: &Record,
    now_unix: u64,
    names: Option<&NameAuthorities>,
) -> Result<VerifiedRecord, RecordError> {
    verify_record_with_work(key, record, now_unix, names, DARK_POW_BITS)
}

/// [`verify_record_for`] with `name_pow_bits` of work required of `.dark` records instead
/// of [`DARK_POW_BITS`] (what [`Storage::set_name_pow_bits`] sets).
///
/// # Errors
/// [`RecordError`] saying which check failed.
pub fn verify_record_with_work(
    key: &[u8; 32],
    record: &Record,
    now_unix: u64,
    names: Option<&NameAuthorities>,
    name_pow_bits: u32,
) -> Result<VerifiedRecord, RecordError> {
    let (right_key, v) = match record.kind {
        RecordKind::RelayDescriptor => {
            let signed = SignedDescriptor::decode(&record.body)?;
            let v = verify_descriptor(&signed, now_unix)?;
            let right_key = descriptor_key(&v.node_id);
            let v = VerifiedRecord {
                owner: v.node_id,
                published: v.descriptor.published,
                expires: v.descriptor.expires,
            };
            (right_key, v)
        }
        RecordKind::HsDescriptor => {
            let desc = HsDescriptor::decode(&record.body)?;
            let v = hs::verify_descriptor(&desc, now_unix)?;
            let right_key = v.index;
            let v = VerifiedRecord {
                owner: NodeId::from_identity(&v.blinded_key),
                published: v.revision,
                expires: v.expires,
            };
            (right_key, v)
        }
        RecordKind::DarkName => {
            let dark = DarkRecord::decode(&record.body)?;
            let v = verify_name_record(&dark, now_unix, name_pow_bits, names)?;
            let right_key = dark_key(&v.name);
            let v = VerifiedRecord {
                owner: NodeId::from_identity(&v.owner),
                published: v.published,
                expires: v.expires,
            };
            (right_key, v)
        }
    };
    if right_key != *key {
        return Err(RecordError::WrongKey);
    }
    if v.expires > now_unix.saturating_add(MAX_RECORD_TTL) {
        return Err(RecordError::TooLongLived {
            expires: v.expires,
            now: now_unix,
        });
    }
    Ok(v)
}

/// Why [`Storage::store`] refused a record.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The record failed [`verify_record`]: malformed, forged, expired, too long-lived, or
    /// stored under a key that does not match its owner.
    #[error("invalid record")]
    Invalid,
    /// A newer record of the same owner (or another one of the same version) is stored.
    #[error("stale record: a newer one is stored")]
    Stale,
    /// A bound is reached: records per key, per storing peer, or in total.
    #[error("storage full")]
    Full,
    /// The key holds a live `.dark` record of another owner: names are first come, first
    /// served (§12.6).
    #[error("name taken by another owner")]
    Taken,
}

impl StoreError {
    /// The `STORED` status to answer with (§11.2).
    pub fn status(self) -> StoreStatus {
        match self {
            StoreError::Invalid => StoreStatus::Rejected(REJECT_INVALID),
            StoreError::Stale => StoreStatus::Rejected(REJECT_STALE),
            StoreError::Full => StoreStatus::Full,
            StoreError::Taken => StoreStatus::Rejected(REJECT_TAKEN),
        }
    }
}

/// Bounds of a [`Storage`] (§11.7). `Default` gives the relay defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Records per key (distinct owners), default 4. At most [`MAX_RECORDS`] are returned.
    pub per_key: usize,
    /// Records attributed to one storing peer (the NodeId of the link that sent `STORE`),
    /// default 64.
    pub per_peer: usize,
    /// Records in total, default 10 000.
    pub total: usize,
    /// Sustained DHT requests per peer per second (all types), default 20.
    pub requests_per_peer_per_sec: u32,
    /// Requests a peer may send at once after being idle (token-bucket size), default 40.
    pub burst: u32,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            per_key: 4,
            per_peer: 64,
            total: 10_000,
            requests_per_peer_per_sec: 20,
            burst: 40,
        }
    }
}

/// Event counters of a [`Storage`], monotonic since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageCounters {
    /// Records stored (new, replacing an older version, or re-stored unchanged).
    pub stored: u64,
    /// `STORE`s refused by [`verify_record`].
    pub rejected_invalid: u64,
    /// `STORE`s refused because a newer version is held.
    pub rejected_stale: u64,
    /// `STORE`s refused by a bound.
    pub rejected_full: u64,
    /// `STORE`s of a `.dark` record refused because another owner holds the name.
    pub rejected_taken: u64,
    /// Requests refused by [`Storage::allow_request`].
    pub rate_limited: u64,
    /// Records dropped because they expired.
    pub expired: u64,
}

#[derive(Debug, Clone)]
struct Stored {
    record: Record,
    owner: NodeId,
    from: NodeId,
    published: u64,
    expires: u64,
}

/// governor's per-key state, kept in a bounded LRU map: each peer's GCRA "theoretical
/// arrival time" (nanoseconds since the limiter's start), at most [`MAX_RATE_PEERS`] peers;
/// a new peer at the bound makes the least recently active one be forgotten (O(1)), which
/// only gives that peer a full burst again.
struct PeerStates(Arc<Mutex<LruCache<NodeId, Nanos>>>);

impl StateStore for PeerStates {
    type Key = NodeId;

    fn measure_and_replace<T, F, E>(&self, key: &NodeId, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The lock makes the read and the write one step, so no compare-and-swap loop.
        let mut peers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (outcome, arrival) = f(peers.get(key).copied())?;
        peers.put(*key, arrival);
        Ok(outcome)
    }
}

/// The per-peer request limiter of [`Storage::allow_request`]: governor's GCRA (a token
/// bucket of [`StorageLimits::burst`] refilled at
/// [`StorageLimits::requests_per_peer_per_sec`]) over [`PeerStates`], on a clock that only
/// the `now` given to each call moves (the store stays sans-IO and tests drive time).
struct RequestLimiter {
    limiter: RateLimiter<NodeId, PeerStates, FakeRelativeClock, NoOpMiddleware<Nanos>>,
    /// The same map as the limiter's, for counting.
    peers: Arc<Mutex<LruCache<NodeId, Nanos>>>,
    clock: FakeRelativeClock,
    /// The first `now` seen, and how far the clock has been moved since.
    origin: Option<Instant>,
    moved: std::time::Duration,
}

impl RequestLimiter {
    fn new(limits: &StorageLimits) -> Self {
        let rate = NonZeroU32::new(limits.requests_per_peer_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let cap = NonZeroUsize::new(MAX_RATE_PEERS).unwrap_or(NonZeroUsize::MIN);
        let clock = FakeRelativeClock::default();
        let peers = Arc::new(Mutex::new(LruCache::new(cap)));
        RequestLimiter {
            limiter: RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                PeerStates(peers.clone()),
                clock.clone(),
            ),
            peers,
            clock,
            origin: None,
            moved: std::time::Duration::ZERO,
        }
    }

    fn check(&mut self, from: NodeId, now: Instant) -> bool {
        let origin = *self.origin.get_or_insert(now);
        // Time only moves forward: a `now` earlier than one already seen counts as that one.
        let since = now.saturating_duration_since(origin);
        if let Some(step) = since.checked_sub(self.moved).filter(|d| !d.is_zero()) {
            self.clock.advance(step);
            self.moved = since;
        }
        self.limiter.check_key(&from).is_ok()
    }

    fn tracked(&self) -> usize {
        self.peers.lock().map_or(0, |p| p.len())
    }
}

impl std::fmt::Debug for RequestLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimiter")
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

/// A storage node's records (§11.7). Only records that pass [`verify_record`] get in.
#[derive(Debug)]
pub struct Storage {
    limits: StorageLimits,
    by_key: HashMap<[u8; 32], Vec<Stored>>,
    per_peer: HashMap<NodeId, usize>,
    total: usize,
    rate: RequestLimiter,
    counters: StorageCounters,
    /// The network's authorities whose receipts `.dark` records need (§12.5); `None`
    /// outside a network.
    names: Option<NameAuthorities>,
    /// Proof-of-work bits a `.dark` record needs: [`DARK_POW_BITS`].
    name_pow_bits: u32,
}

impl Storage {
    /// An empty store with `limits`.
    pub fn new(limits: StorageLimits) -> Self {
        Storage {
            limits,
            by_key: HashMap::new(),
            per_peer: HashMap::new(),
            total: 0,
            rate: RequestLimiter::new(&limits),
            counters: StorageCounters::default(),
            names: None,
            name_pow_bits: DARK_POW_BITS,
        }
    }

    /// Require `bits` of proof of work of `.dark` records instead of [`DARK_POW_BITS`]:
    /// for simulations that mine hundreds of records (a relay never changes it).
    pub fn set_name_pow_bits(&mut self, bits: u32) {
        self.name_pow_bits = bits;
    }

    /// Require from now on that `.dark` records carry receipts of a majority of `names`
    /// (§12.5, §12.6); records already stored are not re-checked.
    pub fn set_name_authorities(&mut self, names: Option<NameAuthorities>) {
        self.names = names;
    }

    /// The authorities set by [`Storage::set_name_authorities`].
    pub fn name_authorities(&self) -> Option<&NameAuthorities> {
        self.names.as_ref()
    }

    /// The bounds in force.
    pub fn limits(&self) -> &StorageLimits {
        &self.limits
    }

    /// Store `record` under `key`, sent by peer `from` (the NodeId its link's certificate
    /// proves) at `now_unix` (Unix seconds).
    ///
    /// Of two records of one owner under one key, the one with the larger version
    /// ([`VerifiedRecord::published`]) stays; re-storing the identical record is accepted
    /// and changes nothing. A `.dark` record is refused while the key holds a live `.dark`
    /// record of another owner (first come, first served, §12.6).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when [`verify_record`] fails; [`StoreError::Taken`] when
    /// another owner holds the name; [`StoreError::Stale`] when the
    /// held record of that owner is newer, or as new but different;
    /// [`StoreError::Full`] when the key, the peer or the store is at its bound (expired
    /// records are dropped first).
    pub fn store(
        &mut self,
        from: NodeId,
        key: [u8; 32],
        record: Record,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        let v = match verify_record_with_work(
            &key,
            &record,
            now_unix,
            self.names.as_ref(),
            self.name_pow_bits,
        ) {
            Ok(v) => v,
            Err(_) => {
                self.counters.rejected_invalid += 1;
                return Err(StoreError::Invalid);
            }
        };
        let result = self.place(from, key, record, v, now_unix);
        match result {
            Ok(()) => self.counters.stored += 1,
            Err(StoreError::Stale) => self.counters.rejected_stale += 1,
            Err(StoreError::Full) => self.counters.rejected_full += 1,
            Err(StoreError::Invalid) => self.counters.rejected_invalid += 1,
            Err(StoreError::Taken) => self.counters.rejected_taken += 1,
        }
        result
    }

    fn peer_count(&self, peer: &NodeId) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }

    fn place(
        &mut self,
        from: NodeId,
        key: [u8; 32],
        record: Record,
        v: VerifiedRecord,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        if record.kind == RecordKind::DarkName {
            let taken = self.by_key.get(&key).is_some_and(|list| {
                list.iter().any(|s| {
                    s.record.kind == RecordKind::DarkName
                        && s.owner != v.owner
                        && s.expires > now_unix
                })
            });
            if taken {
                return Err(StoreError::Taken);
            }
        }
        let existing = self.by_key.get(&key).and_then(|list| {
            list.iter()
                .position(|s| s.owner == v.owner && s.record.kind == record.kind)
        });
        let new = Stored {
            record,
            owner: v.owner,
            from,
            published: v.published,
            expires: v.expires,
        };
        if let Some(pos) = existing {
            let Some(held) = self.by_key.get(&key).and_then(|l| l.get(pos)) else {
                return Err(StoreError::Full); // unreachable: `pos` was just found
            };
            let held_from = held.from;
            let held_live = held.expires > now_unix;
            if held_live && held.published == new.published && held.record == new.record {
                return Ok(());
            }
            if held_live && held.published >= new.published {
                return Err(StoreError::Stale);
            }
            if held_from != from && self.peer_count(&from) >= self.limits.per_peer {
                return Err(StoreError::Full);
            }
            if let Some(slot) = self.by_key.get_mut(&key).and_then(|l| l.get_mut(pos)) {
                *slot = new;
            }
            self.uncount_peer(held_from);
            *self.per_peer.entry(from).or_insert(0) += 1;
            return Ok(());
        }
        let key_full = |s: &Self| s.by_key.get(&key).map_or(0, Vec::len) >= s.limits.per_key;
        let bound_hit = |s: &Self| {
            key_full(s) || s.peer_count(&from) >= s.limits.per_peer || s.total >= s.limits.total
        };
        if bound_hit(self) {
            self.expire(now_unix);
            if bound_hit(self) {
                return Err(StoreError::Full);
            }
        }
        self.by_key.entry(key).or_default().push(new);
        *self.per_peer.entry(from).or_insert(0) += 1;
        self.total += 1;
        Ok(())
    }

    fn uncount_peer(&mut self, peer: NodeId) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// The records under `key` still valid at `now_unix` (Unix seconds), newest first, at
    /// most [`MAX_RECORDS`] (what fits a `VALUE` answer).
    pub fn get(&self, key: &[u8; 32], now_unix: u64) -> Vec<Record> {
        let Some(list) = self.by_key.get(key) else {
            return Vec::new();
        };
        let mut live: Vec<&Stored> = list.iter().filter(|s| s.expires > now_unix).collect();
        live.sort_by_key(|s| std::cmp::Reverse(s.published));
        live.into_iter()
            .take(MAX_RECORDS)
            .map(|s| s.record.clone())
            .collect()
    }

    /// Drop every record whose `expires ≤ now_unix` (Unix seconds); counted in
    /// [`StorageCounters::expired`].
    pub fn expire(&mut self, now_unix: u64) {
        let mut gone: Vec<NodeId> = Vec::new();
        self.by_key.retain(|_, list| {
            list.retain(|s| {
                let keep = s.expires > now_unix;
                if !keep {
                    gone.push(s.from);
                }
                keep
            });
            !list.is_empty()
        });
        self.total -= gone.len();
        self.counters.expired += gone.len() as u64;
        for peer in gone {
            self.uncount_peer(peer);
        }
    }

    /// The records valid at `now_unix` (Unix seconds) in the form [`decode_persisted`]
    /// reads (§11.7.1): at most [`StorageLimits::total`] (and [`MAX_PERSISTED_RECORDS`])
    /// entries, each at most 4096 body bytes, so at most about 41 MB at the default bound.
    pub fn to_persisted(&self, now_unix: u64) -> Vec<u8> {
        let live: Vec<(&[u8; 32], &Stored)> = self
            .by_key
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |s| (k, s)))
            .filter(|(_, s)| s.expires > now_unix && s.record.body.len() <= MAX_RECORD_LEN)
            .take(self.limits.total.min(MAX_PERSISTED_RECORDS))
            .collect();
        let mut w = Writer::new();
        w.put(PERSISTED_MAGIC);
        w.put_u32(u32::try_from(live.len()).unwrap_or(0));
        for (key, s) in live {
            w.put(key);
            w.put(s.from.as_bytes());
            w.put_u8(s.record.kind.to_byte());
            // Bounded by MAX_RECORD_LEN (4096) above.
            w.put_u16(s.record.body.len() as u16);
            w.put(&s.record.body);
        }
        w.into_vec()
    }

    /// Store every record of `bytes` ([`Storage::to_persisted`] output) again as though
    /// each arrived in a `STORE` from the peer it was attributed to, at `now_unix` (Unix
    /// seconds): verified again (signature, expiry, key, authority receipts of `.dark`
    /// records when [`Storage::set_name_authorities`] was called first), and subject to
    /// every bound. Records that fail are skipped (counted in the storage counters as a
    /// refused `STORE` would be).
    ///
    /// # Errors
    /// [`WireError`] when `bytes` does not parse ([`decode_persisted`]); nothing is stored
    /// then.
    pub fn load_persisted(&mut self, bytes: &[u8], now_unix: u64) -> Result<LoadReport, WireError> {
        let entries = decode_persisted(bytes)?;
        let mut report = LoadReport {
            read: entries.len(),
            loaded: 0,
        };
        for e in entries {
            if self.store(e.from, e.key, e.record, now_unix).is_ok() {
                report.loaded += 1;
            }
        }
        Ok(report)
    }

    /// Records held (expired ones included until [`Storage::expire`] runs).
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether peer `from` may make one more DHT request at `now` (any type; call it for
    /// every request before doing any work). A token bucket per peer:
    /// [`StorageLimits::burst`] tokens, refilled at
    /// [`StorageLimits::requests_per_peer_per_sec`]; each request takes one. A refusal is
    /// counted in [`StorageCounters::rate_limited`]; answer it with `STORED` `RateLimited`
    /// or by resetting the stream.
    ///
    /// The bucket is governor's GCRA; a rate or burst of 0 is taken as 1. At most
    /// [`MAX_RATE_PEERS`] peers are tracked: a new peer at the bound makes the least
    /// recently active one be forgotten (it starts again with a full bucket).
    pub fn allow_request(&mut self, from: NodeId, now: Instant) -> bool {
        let allowed = self.rate.check(from, now);
        if !allowed {
            self.counters.rate_limited += 1;
        }
        allowed
    }

    /// Peers whose request rate is being tracked, at most [`MAX_RATE_PEERS`].
    pub fn tracked_peers(&self) -> usize {
        self.rate.tracked()
    }

    /// The counters.
    pub fn counters(&self) -> StorageCounters {
        self.counters
    }
}

impl anonnet_error::HasKind for RecordError {
    /// A record that does not verify came from a peer:
    /// [`anonnet_error::ErrorKind::Protocol`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::Protocol
    }
}

impl anonnet_error::HasKind for StoreError {
    /// A refused `STORE`: invalid is [`anonnet_error::ErrorKind::Protocol`], full
    /// [`anonnet_error::ErrorKind::Busy`], stale or another owner's name
    /// [`anonnet_error::ErrorKind::NotAllowed`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            StoreError::Invalid => anonnet_error::ErrorKind::Protocol,
            StoreError::Full => anonnet_error::ErrorKind::Busy,
            StoreError::Stale | StoreError::Taken => anonnet_error::ErrorKind::NotAllowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anonnet_crypto::{sign_descriptor, IdentityKey};
    use anonnet_wire::RelayDescriptor;

    use super::*;
    use crate::test_support::*;

    fn rec(n: u32, published: u64) -> ([u8; 32], Record) {
        let key = descriptor_key(&identity(n).node_id());
        let r = Record::relay_descriptor(&descriptor_at(n, published)).unwrap();
        (key, r)
    }

    fn peer(n: u32) -> NodeId {
        identity(10_000 + n).node_id()
    }

    #[test]
    fn storage_accepts_valid_record_under_its_key() {
        let mut s = Storage::new(StorageLimits::default());
        let (key, r) = rec(1, NOW - 100);
        s.store(peer(1), key, r.clone(), NOW).unwrap();
        assert_eq!(s.get(&key, NOW), vec![r.clone()]);
        assert_eq!(s.len(), 1);
        // Re-storing the same record is fine and changes nothing.
        s.store(peer(2), key, r, NOW).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.counters().stored, 2);
        assert!(s.get(&[0; 32], NOW).is_empty());
    }

    #[test]
    fn forged_descriptor_record_is_never_stored() {
        let mut s = Storage::new(StorageLimits::default());
        let (key, mut r) = rec(1, NOW - 100);
        // Bad signature.
        let last = r.body.len() - 1;
        r.body[last] ^= 1;
        assert_eq!(s.store(peer(1), key, r, NOW), Err(StoreError::Invalid));
        // Right signature, wrong key: relay 2's descriptor under relay 1's key.
        let (_, r2) = rec(2, NOW - 100);
        assert_eq!(s.store(peer(1), key, r2, NOW), Err(StoreError::Invalid));
        assert!(matches!(
            verify_record(&key, &rec(2, NOW - 100).1, NOW),
            Err(RecordError::WrongKey)
        ));
        // A descriptor whose identity field names a key that did not sign it.
        let thief = IdentityKey::from_seed(&[0x77; 32]);
        let victim = identity(1);
        let mut d = RelayDescriptor::decode_body(&descriptor_at(1, NOW - 100).body).unwrap();
        d.onion_key = [0x66; 32];
        let mut signed = sign_descriptor(
            &thief,
            &RelayDescriptor {
                identity: thief.public(),
                ..d.clone()
            },
        )
        .unwrap();
        signed.body = d.encode_body().unwrap(); // victim's identity, thief's signature
        let forged = Record::relay_descriptor(&signed).unwrap();
        assert_eq!(
            s.store(peer(1), descriptor_key(&victim.node_id()), forged, NOW),
            Err(StoreError::Invalid)
        );
        // Garbage body.
        let junk = Record {
            kind: RecordKind::RelayDescriptor,
            body: vec![0; 10],
        };
        assert_eq!(s.store(peer(1), key, junk, NOW), Err(StoreError::Invalid));
        assert!(s.is_empty());
        assert_eq!(s.counters().rejected_invalid, 4);
        assert_eq!(
            StoreError::Invalid.status(),
            StoreStatus::Rejected(REJECT_INVALID)
        );
    }

    #[test]
    fn expired_future_and_too_long_lived_records_are_refused() {
        let mut s = Storage::new(StorageLimits::default());
        let (key, r) = rec(1, NOW - 86_400);
        assert_eq!(s.store(peer(1), key, r, NOW), Err(StoreError::Invalid));
        let (key, r) = rec(1, NOW + 7200);
        assert_eq!(s.store(peer(1), key, r, NOW), Err(StoreError::Invalid));
        // Valid for a year: refused.
        let id = identity(1);
        let mut d = RelayDescriptor::decode_body(&descriptor_at(1, NOW).body).unwrap();
        d.expires = NOW + 365 * 86_400;
        let long = Record::relay_descriptor(&sign_descriptor(&id, &d).unwrap()).unwrap();
        assert!(matches!(
            verify_record(&key, &long, NOW),
            Err(RecordError::TooLongLived { .. })
        ));
        assert_eq!(s.store(peer(1), key, long, NOW), Err(StoreError::Invalid));
        assert!(s.is_empty());
    }

    #[test]
    fn newer_descriptor_replaces_older_and_older_is_stale() {
        let mut s = Storage::new(StorageLimits::default());
        let (key, old) = rec(1, NOW - 3600);
        let (_, new) = rec(1, NOW - 60);
        s.store(peer(1), key, old.clone(), NOW).unwrap();
        s.store(peer(2), key, new.clone(), NOW).unwrap();
        assert_eq!(s.get(&key, NOW), vec![new]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.store(peer(3), key, old, NOW), Err(StoreError::Stale));
        assert_eq!(s.counters().rejected_stale, 1);
        assert_eq!(
            StoreError::Stale.status(),
            StoreStatus::Rejected(REJECT_STALE)
        );
    }

    #[test]
    fn storage_is_bounded_per_peer_and_in_total() {
        let limits = StorageLimits {
            per_peer: 3,
            total: 5,
            ..StorageLimits::default()
        };
        let mut s = Storage::new(limits);
        for n in 0..3 {
            let (k, r) = rec(n, NOW - 10);
            s.store(peer(1), k, r, NOW).unwrap();
        }
        let (k, r) = rec(3, NOW - 10);
        assert_eq!(s.store(peer(1), k, r.clone(), NOW), Err(StoreError::Full));
        s.store(peer(2), k, r, NOW).unwrap();
        let (k, r) = rec(4, NOW - 10);
        s.store(peer(2), k, r, NOW).unwrap();
        let (k, r) = rec(5, NOW - 10);
        assert_eq!(s.store(peer(3), k, r, NOW), Err(StoreError::Full), "total");
        assert_eq!(s.len(), 5);
        assert_eq!(s.counters().rejected_full, 2);
        // Once they expire, room comes back.
        let later = NOW - 10 + 86_400;
        let (k, r) = rec(5, later - 10);
        s.store(peer(3), k, r, later).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.counters().expired, 5);
    }

    #[test]
    fn storage_is_bounded_per_key() {
        // Relay descriptors have one owner per key; bound the key to 1 and check that a
        // second owner cannot join it even with a valid record (it fails the key check
        // first, so exercise the bound with per_key = 0).
        let mut s = Storage::new(StorageLimits {
            per_key: 0,
            ..StorageLimits::default()
        });
        let (k, r) = rec(1, NOW - 10);
        assert_eq!(s.store(peer(1), k, r, NOW), Err(StoreError::Full));
        let mut s = Storage::new(StorageLimits {
            per_key: 1,
            ..StorageLimits::default()
        });
        let (k, r) = rec(1, NOW - 10);
        s.store(peer(1), k, r, NOW).unwrap();
        let (_, newer) = rec(1, NOW - 5);
        s.store(peer(1), k, newer, NOW).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn expire_drops_records_and_frees_peer_quota() {
        let mut s = Storage::new(StorageLimits {
            per_peer: 1,
            ..StorageLimits::default()
        });
        let (k, r) = rec(1, NOW - 10);
        s.store(peer(1), k, r.clone(), NOW).unwrap();
        let end = NOW - 10 + 86_400;
        assert!(s.get(&k, end).is_empty(), "expired records are not served");
        s.expire(end);
        assert!(s.is_empty());
        assert_eq!(s.counters().expired, 1);
        let (k2, r2) = rec(2, end - 10);
        s.store(peer(1), k2, r2, end).unwrap();
    }

    fn hs_record(revision: u64) -> ([u8; 32], Record) {
        use anonnet_crypto::hs::{seal_descriptor, time_period, ServiceKey};
        use anonnet_wire::hs::HsDescriptorBody;
        let key = ServiceKey::from_seed(&[0x61; 32]);
        let period = time_period(NOW);
        let body = HsDescriptorBody {
            pow: None,
            intro_points: vec![],
        };
        let d = seal_descriptor(&key, period, revision, NOW + 3 * 3600, &body).unwrap();
        let index = hs::descriptor_index(&d.blinded_key, period);
        (index, Record::hs_descriptor(&d).unwrap())
    }

    fn dark_record(owner: u32, name: &str, published: u64) -> ([u8; 32], Record) {
        use anonnet_crypto::dark::{make_dark_record, DarkName};
        use anonnet_crypto::hs::ServiceKey;
        let name = DarkName::parse(name).unwrap();
        let address = ServiceKey::from_seed(&[0x61; 32]).address();
        let r = make_dark_record(
            &identity(owner),
            &name,
            &address,
            published,
            published + 86_400,
            DARK_POW_BITS,
        );
        (dark_key(&name), Record::dark_name(&r).unwrap())
    }

    #[test]
    fn hs_descriptor_is_stored_under_its_index_and_newer_revision_replaces() {
        let mut s = Storage::new(StorageLimits::default());
        let (index, r1) = hs_record(1);
        let (_, r2) = hs_record(2);
        let v = verify_record(&index, &r1, NOW).unwrap();
        assert_eq!(
            v.published, 1,
            "the version of a descriptor is its revision"
        );
        s.store(peer(1), index, r1.clone(), NOW).unwrap();
        s.store(peer(2), index, r2.clone(), NOW).unwrap();
        assert_eq!(s.get(&index, NOW), vec![r2]);
        assert_eq!(s.store(peer(1), index, r1, NOW), Err(StoreError::Stale));
        // Expired descriptors are refused.
        let (index, r) = hs_record(3);
        assert!(matches!(
            verify_record(&index, &r, NOW + 3 * 3600),
            Err(RecordError::HsDescriptor(HsError::Expired { .. }))
        ));
    }

    #[test]
    fn hs_descriptor_under_the_wrong_key_is_refused() {
        let mut s = Storage::new(StorageLimits::default());
        let (index, r) = hs_record(1);
        let mut wrong = index;
        wrong[0] ^= 1;
        assert!(matches!(
            verify_record(&wrong, &r, NOW),
            Err(RecordError::WrongKey)
        ));
        assert_eq!(
            s.store(peer(1), wrong, r.clone(), NOW),
            Err(StoreError::Invalid)
        );
        // A flipped byte of the signed part: refused.
        let mut forged = r;
        forged.body[100] ^= 1;
        assert_eq!(
            s.store(peer(1), index, forged, NOW),
            Err(StoreError::Invalid)
        );
        assert!(s.is_empty());
    }

    #[test]
    fn dark_name_is_first_come_and_its_owner_may_refresh_it() {
        let mut s = Storage::new(StorageLimits::default());
        let (key, first) = dark_record(1, "example", NOW - 100);
        let (_, squatter) = dark_record(2, "example", NOW - 50);
        let (_, refresh) = dark_record(1, "example", NOW - 10);
        s.store(peer(1), key, first.clone(), NOW).unwrap();
        assert_eq!(
            s.store(peer(2), key, squatter.clone(), NOW),
            Err(StoreError::Taken)
        );
        assert_eq!(s.counters().rejected_taken, 1);
        assert_eq!(
            StoreError::Taken.status(),
            StoreStatus::Rejected(REJECT_TAKEN)
        );
        s.store(peer(3), key, refresh.clone(), NOW).unwrap();
        assert_eq!(s.get(&key, NOW), vec![refresh]);
        assert_eq!(s.store(peer(1), key, first, NOW), Err(StoreError::Stale));
        // Under another name's key, a valid record is refused.
        let (other_key, _) = dark_record(1, "other", NOW - 100);
        assert_eq!(
            s.store(peer(1), other_key, squatter.clone(), NOW),
            Err(StoreError::Invalid)
        );
        // Once the owner's record has expired, the name is free again.
        let later = NOW - 10 + 86_400;
        assert!(s.get(&key, later).is_empty());
        let (_, newcomer) = dark_record(2, "example", later - 5);
        s.store(peer(2), key, newcomer.clone(), later).unwrap();
        assert_eq!(s.get(&key, later), vec![newcomer]);
    }

    #[test]
    fn with_name_authorities_only_registered_names_are_stored() {
        use anonnet_crypto::dark::{sign_receipt, NameAuthorities};
        let authorities: Vec<IdentityKey> = (0..3).map(|i| identity(500 + i)).collect();
        let names = NameAuthorities {
            network_id: [7; 32],
            identities: authorities.iter().map(IdentityKey::public).collect(),
            needed: 2,
        };
        let mut s = Storage::new(StorageLimits::default());
        s.set_name_authorities(Some(names.clone()));
        assert_eq!(s.name_authorities(), Some(&names));
        let with_receipts = |owner: u32, published: u64, by: &[usize]| {
            let (key, r) = dark_record(owner, "example", published);
            let mut d = DarkRecord::decode(&r.body).unwrap();
            for &a in by {
                d.receipts.push(sign_receipt(
                    &authorities[a],
                    &names.network_id,
                    "example",
                    &d.owner,
                    NOW + 86_400,
                ));
            }
            (key, Record::dark_name(&d).unwrap())
        };
        // A back-dated record with valid work but no receipts: refused, however early.
        let (key, squatter) = with_receipts(2, NOW - 80_000, &[]);
        assert_eq!(
            s.store(peer(2), key, squatter, NOW),
            Err(StoreError::Invalid)
        );
        // One receipt of three authorities is not a majority; one authority twice neither.
        let (_, one) = with_receipts(2, NOW - 80_000, &[0]);
        assert_eq!(s.store(peer(2), key, one, NOW), Err(StoreError::Invalid));
        let (_, twice) = with_receipts(2, NOW - 80_000, &[1, 1]);
        assert_eq!(s.store(peer(2), key, twice, NOW), Err(StoreError::Invalid));
        assert_eq!(s.counters().rejected_invalid, 3);
        // The registered owner's record, with receipts of two authorities, is stored.
        let (_, owner) = with_receipts(1, NOW - 100, &[0, 2]);
        s.store(peer(1), key, owner.clone(), NOW).unwrap();
        assert_eq!(s.get(&key, NOW), vec![owner]);
        // Receipts bound to another network do not count.
        let mut other = s.name_authorities().cloned().unwrap();
        other.network_id = [8; 32];
        let (_, owner2) = with_receipts(1, NOW - 50, &[0, 2]);
        assert!(verify_record_for(&key, &owner2, NOW, Some(&other)).is_err());
        assert!(verify_record_for(&key, &owner2, NOW, Some(&names)).is_ok());
    }

    #[test]
    fn persisted_records_load_again_and_are_verified_again() {
        use anonnet_crypto::dark::NameAuthorities;
        let mut s = Storage::new(StorageLimits::default());
        let (k1, r1) = rec(1, NOW - 100);
        let (k2, r2) = hs_record(5);
        let (k3, r3) = dark_record(1, "example", NOW - 100);
        s.store(peer(1), k1, r1.clone(), NOW).unwrap();
        s.store(peer(2), k2, r2.clone(), NOW).unwrap();
        s.store(peer(2), k3, r3.clone(), NOW).unwrap();
        let bytes = s.to_persisted(NOW);
        assert!(bytes.starts_with(PERSISTED_MAGIC));
        assert_eq!(decode_persisted(&bytes).unwrap().len(), 3);

        let mut back = Storage::new(StorageLimits::default());
        let report = back.load_persisted(&bytes, NOW + 10).unwrap();
        assert_eq!(report, LoadReport { read: 3, loaded: 3 });
        assert_eq!(back.get(&k1, NOW + 10), vec![r1]);
        assert_eq!(back.get(&k2, NOW + 10), vec![r2]);
        assert_eq!(back.get(&k3, NOW + 10), vec![r3]);
        // The per-peer attribution survives: peer 2 holds two of its 64.
        assert_eq!(back.peer_count(&peer(2)), 2);

        // Loaded after the hidden-service descriptor (3 h) expired: skipped.
        let mut later = Storage::new(StorageLimits::default());
        let report = later.load_persisted(&bytes, NOW + 4 * 3600).unwrap();
        assert_eq!(report, LoadReport { read: 3, loaded: 2 });
        assert!(later.get(&k2, NOW + 4 * 3600).is_empty());

        // A network that needs authority receipts: the receipt-less name is dropped.
        let mut strict = Storage::new(StorageLimits::default());
        strict.set_name_authorities(Some(NameAuthorities {
            network_id: [7; 32],
            identities: vec![identity(500).public()],
            needed: 1,
        }));
        let report = strict.load_persisted(&bytes, NOW + 10).unwrap();
        assert_eq!(report, LoadReport { read: 3, loaded: 2 });
        assert!(strict.get(&k3, NOW + 10).is_empty());

        // A record whose body was altered on disk fails its signature and is skipped.
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let mut t = Storage::new(StorageLimits::default());
        assert_eq!(t.load_persisted(&tampered, NOW + 10).unwrap().loaded, 2);
        assert_eq!(t.counters().rejected_invalid, 1);

        // A small bound: only that many get back in.
        let mut small = Storage::new(StorageLimits {
            total: 1,
            ..StorageLimits::default()
        });
        assert_eq!(small.load_persisted(&bytes, NOW + 10).unwrap().loaded, 1);
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn a_corrupt_persisted_store_is_an_error_and_stores_nothing() {
        let mut s = Storage::new(StorageLimits::default());
        let (k1, r1) = rec(1, NOW - 100);
        s.store(peer(1), k1, r1, NOW).unwrap();
        let bytes = s.to_persisted(NOW);
        let mut empty = Storage::new(StorageLimits::default());
        for bad in [
            &b""[..],
            &b"not a record store at all"[..],
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), &[0]].concat()[..],
        ] {
            assert!(empty.load_persisted(bad, NOW).is_err());
        }
        // A count over the bound is refused before anything is read.
        let mut huge = PERSISTED_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_persisted(&huge).is_err());
        assert!(empty.is_empty());
        // Expired records are not written.
        let (k2, r2) = rec(2, NOW - 100);
        s.store(peer(1), k2, r2, NOW).unwrap();
        assert_eq!(
            decode_persisted(&s.to_persisted(NOW + 86_400))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn requests_are_rate_limited_per_peer_with_burst() {
        let mut s = Storage::new(StorageLimits {
            requests_per_peer_per_sec: 10,
            burst: 5,
            ..StorageLimits::default()
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(s.allow_request(peer(1), t0));
        }
        assert!(!s.allow_request(peer(1), t0));
        assert!(s.allow_request(peer(2), t0), "other peers are not affected");
        // 100 ms later one token is back (10 per second).
        assert!(s.allow_request(peer(1), t0 + Duration::from_millis(100)));
        assert!(!s.allow_request(peer(1), t0 + Duration::from_millis(100)));
        // Long idle: the bucket is full again, not more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(s.allow_request(peer(1), later));
        }
        assert!(!s.allow_request(peer(1), later));
        assert_eq!(s.counters().rate_limited, 3);
    }

    #[test]
    fn rate_limiter_tracks_a_bounded_number_of_peers() {
        let mut s = Storage::new(StorageLimits::default());
        let t0 = Instant::now();
        for n in 0..(MAX_RATE_PEERS as u32 + 100) {
            let id = NodeId(*blake3::hash(&n.to_be_bytes()).as_bytes());
            assert!(s.allow_request(id, t0));
            assert!(s.tracked_peers() <= MAX_RATE_PEERS);
        }
        assert_eq!(s.tracked_peers(), MAX_RATE_PEERS);
        // A peer that used up its burst is forgotten once MAX_RATE_PEERS others were active
        // after it (it starts again with a full bucket); while it is among them it is not.
        let burst = StorageLimits::default().burst;
        for _ in 0..burst {
            assert!(s.allow_request(peer(1), t0));
        }
        assert!(!s.allow_request(peer(1), t0));
        for n in 0..(MAX_RATE_PEERS as u32 - 1) {
            s.allow_request(
                NodeId(*blake3::hash(&(n + 1_000_000).to_be_bytes()).as_bytes()),
                t0,
            );
        }
        assert!(!s.allow_request(peer(1), t0), "still tracked, still empty");
        for n in 0..(MAX_RATE_PEERS as u32) {
            s.allow_request(
                NodeId(*blake3::hash(&(n + 2_000_000).to_be_bytes()).as_bytes()),
                t0,
            );
        }
        assert!(
            s.allow_request(peer(1), t0),
            "forgotten: a full bucket again"
        );
        assert_eq!(s.tracked_peers(), MAX_RATE_PEERS);
    }
}
