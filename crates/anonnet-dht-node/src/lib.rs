//! The thin async shell around the sans-IO Kademlia core of `anonnet-dht` (as `quinn`
//! is to `quinn-proto`): the DHT RPC service over QUIC links (`anonnet-net`) and the
//! driver of iterative lookups. Spec: `docs/protocol.md` §11.
//!
//! One request per QUIC bidirectional stream: `0x10 ‖ len u32 ‖ message`, answered by
//! `len u32 ‖ message`. A relay runs a full node (answers, stores, announces itself); a
//! client runs in client mode: it only looks up, never stores or answers, and never
//! announces (it has no identity to announce).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anonnet_crypto::dark::NameAuthorities;
use anonnet_crypto::NodeId;
use anonnet_net::LinkManager;
use anonnet_wire::dht::{
    frame_len, frame_request, frame_response, DhtMessage, Record, RecordKind, StoreStatus,
    MAX_NODES, REJECT_NOT_STORING,
};
use anonnet_wire::SignedDescriptor;
use quinn::{RecvStream, SendStream};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tracing::debug;

use anonnet_dht::{
    descriptor_key, verify_record_for, Contact, Insert, LoadReport, Lookup, LookupKind,
    LookupResult, RoutingTable, Storage, StorageCounters, StorageLimits, K,
};

/// How long one DHT request may take (seconds) before it counts as failed.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes reserved for a request before its body arrives; the buffer grows with what is
/// actually received, up to the frame's length (`MAX_MESSAGE_LEN`).
const REQUEST_BUFFER: usize = 4096;
/// How often buckets not touched are refreshed by a lookup.
pub const BUCKET_REFRESH: Duration = Duration::from_secs(3600);

/// Why a DHT request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The QUIC link could not be opened (includes a NodeId mismatch).
    #[error("link: {0}")]
    Link(#[from] anonnet_net::NetError),
    /// Writing the request failed (the peer stopped the stream, or the link is gone).
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading the answer failed (the stream ended early, was reset, or the link is gone).
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Our own request could not be framed (longer than the frame allows, §12).
    #[error("request: {0}")]
    Request(#[source] anonnet_wire::WireError),
    /// The answer's frame or message did not parse.
    #[error("bad answer: {0}")]
    BadAnswer(#[from] anonnet_wire::WireError),
    /// The answer parsed but is not an answer to the request (another type or id).
    #[error("bad answer: does not answer the request")]
    NotAnAnswer,
    /// No answer in [`QUERY_TIMEOUT`].
    #[error("timed out")]
    Timeout,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A DHT participant: a relay's full node or a client's lookup-only node.
pub struct DhtNode {
    own: NodeId,
    /// `None` in client mode.
    announce: Mutex<Option<SignedDescriptor>>,
    table: Mutex<RoutingTable>,
    /// `None` in client mode.
    storage: Option<Mutex<Storage>>,
    links: Arc<LinkManager>,
    next_txid: AtomicU64,
    /// `FIND_VALUE` requests this node sent itself (not on anyone's behalf).
    find_value_sent: AtomicU64,
    /// `STORE` requests this node sent.
    store_sent: AtomicU64,
    /// The network's authorities whose receipts `.dark` records need (§12.5).
    names: Mutex<Option<NameAuthorities>>,
}

impl std::fmt::Debug for DhtNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtNode").field("own", &self.own).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl DhtNode {
    /// A relay's full node: answers and stores; `descriptor` is what it announces.
    pub fn relay(
        descriptor: SignedDescriptor,
        own: NodeId,
        table: RoutingTable,
        links: Arc<LinkManager>,
        limits: StorageLimits,
    ) -> Arc<DhtNode> {
        Arc::new(DhtNode {
            own,
            announce: Mutex::new(Some(descriptor)),
            table: Mutex::new(table),
            storage: Some(Mutex::new(Storage::new(limits))),
            links,
            next_txid: AtomicU64::new(rand::random()),
            find_value_sent: AtomicU64::new(0),
            store_sent: AtomicU64::new(0),
            names: Mutex::new(None),
        })
    }

    /// From now on, accept (store, and take from lookups) only `.dark` records that carry
    /// receipts of a majority of `names` (§12.5, §12.6).
    pub fn set_name_authorities(&self, names: NameAuthorities) {
        if let Some(storage) = &self.storage {
            lock(storage).set_name_authorities(Some(names.clone()));
        }
        *lock(&self.names) = Some(names);
    }

    /// The authorities set by [`DhtNode::set_name_authorities`].
    pub fn name_authorities(&self) -> Option<NameAuthorities> {
        lock(&self.names).clone()
    }

    /// `anonnet_dht::verify_record_for` with this node's name authorities.
    fn verify(&self, key: &[u8; 32], record: &Record, now: u64) -> bool {
        verify_record_for(key, record, now, lock(&self.names).as_ref()).is_ok()
    }

    /// A client's lookup-only node. `table` is keyed on a random id that is never sent.
    pub fn client(table: RoutingTable, links: Arc<LinkManager>) -> Arc<DhtNode> {
        Arc::new(DhtNode {
            own: table.own(),
            announce: Mutex::new(None),
            table: Mutex::new(table),
            storage: None,
            links,
            next_txid: AtomicU64::new(rand::random()),
            find_value_sent: AtomicU64::new(0),
            store_sent: AtomicU64::new(0),
            names: Mutex::new(None),
        })
    }

    /// The node's own id (a relay's NodeId; a client's random table key).
    pub fn own(&self) -> NodeId {
        self.own
    }

    /// Replace the descriptor this relay announces and publishes (after re-signing).
    pub fn set_descriptor(&self, d: SignedDescriptor) {
        *lock(&self.announce) = Some(d);
    }

    /// Every contact in the routing table (verified descriptors).
    pub fn contacts(&self) -> Vec<Contact> {
        lock(&self.table).contacts()
    }

    /// Contacts in the routing table.
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// True when the routing table is empty.
    pub fn is_empty(&self) -> bool {
        lock(&self.table).is_empty()
    }

    /// The routing table in its persisted form (`RoutingTable::to_persisted`).
    pub fn persisted(&self) -> Vec<u8> {
        lock(&self.table).to_persisted()
    }

    /// The records this node stores, valid at `now_unix` (Unix seconds), in the persisted
    /// form of §11.7.1 (`Storage::to_persisted`); `None` in client mode.
    pub fn persisted_records(&self, now_unix: u64) -> Option<Vec<u8>> {
        self.storage
            .as_ref()
            .map(|s| lock(s).to_persisted(now_unix))
    }

    /// Store the records of `bytes` (§11.7.1) again, each checked as a `STORE` is (with the
    /// name authorities set by [`DhtNode::set_name_authorities`], so set them first) and
    /// within the storage bounds. A client-mode node loads nothing.
    ///
    /// # Errors
    /// The [`anonnet_wire::WireError`] of a file that does not parse; nothing is stored.
    pub fn load_records(
        &self,
        bytes: &[u8],
        now_unix: u64,
    ) -> Result<LoadReport, anonnet_wire::WireError> {
        match &self.storage {
            Some(s) => lock(s).load_persisted(bytes, now_unix),
            None => Ok(LoadReport::default()),
        }
    }

    /// Storage counters (all zero in client mode).
    pub fn storage_counters(&self) -> StorageCounters {
        self.storage
            .as_ref()
            .map(|s| lock(s).counters())
            .unwrap_or_default()
    }

    /// Records stored here now.
    pub fn stored_records(&self) -> usize {
        self.storage.as_ref().map(|s| lock(s).len()).unwrap_or(0)
    }

    /// `FIND_VALUE` requests this node has sent over its own links. A client fetches
    /// hidden-service descriptors and names through circuits (§13.6), so for a client this
    /// stays 0.
    pub fn find_value_sent(&self) -> u64 {
        self.find_value_sent.load(Ordering::Relaxed)
    }

    /// `STORE` requests this node has sent over its own links.
    pub fn store_sent(&self) -> u64 {
        self.store_sent.load(Ordering::Relaxed)
    }

    fn txid(&self) -> u64 {
        self.next_txid.fetch_add(1, Ordering::Relaxed)
    }

    /// Add verified contacts to the routing table; a full bucket's oldest contact is pinged
    /// in the background and kept if it answers (LRU with liveness).
    pub fn learn(self: &Arc<Self>, contacts: &[Contact]) {
        let now = Instant::now();
        for c in contacts {
            if c.node_id == self.own {
                continue;
            }
            let outcome = lock(&self.table).insert(c.clone(), now);
            if let Insert::Pending { ping } = outcome {
                let node = self.clone();
                tokio::spawn(async move {
                    let txid = node.txid();
                    let alive = matches!(
                        node.request(&ping, DhtMessage::Ping { txid }).await,
                        Ok(DhtMessage::Pong { .. })
                    );
                    lock(&node.table).ping_result(ping.node_id, alive, Instant::now());
                });
            }
        }
    }

    /// Send one request to `contact` and wait (at most [`QUERY_TIMEOUT`]) for its answer.
    ///
    /// # Errors
    /// [`RpcError`] when the link, the stream or the answer fails, or time runs out.
    pub async fn request(
        &self,
        contact: &Contact,
        msg: DhtMessage,
    ) -> Result<DhtMessage, RpcError> {
        match &msg {
            DhtMessage::FindValue { .. } => {
                self.find_value_sent.fetch_add(1, Ordering::Relaxed);
            }
            DhtMessage::Store { .. } => {
                self.store_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let exchange = async {
            let link = self.links.get(contact.addr, contact.node_id).await?;
            let (mut send, mut recv) = link.open_bi().await?;
            let framed = frame_request(&msg).map_err(RpcError::Request)?;
            send.write_all(&framed).await?;
            let _ = send.finish();
            let answer = read_framed(&mut recv).await?;
            let answer = DhtMessage::decode(&answer)?;
            if !answer.answers(&msg) {
                return Err(RpcError::NotAnAnswer);
            }
            Ok(answer)
        };
        tokio::time::timeout(QUERY_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(RpcError::Timeout))
    }

    /// Run an iterative lookup for `target` (α = 3 in parallel, each query bounded by
    /// [`QUERY_TIMEOUT`], driven by answers and deadlines, never by sleeps). Contacts met on
    /// the way are learned. Value records are verified before they count.
    pub async fn lookup(self: &Arc<Self>, target: [u8; 32], kind: LookupKind) -> LookupResult {
        let seeds = lock(&self.table).closest(&target, K);
        let key = match &kind {
            LookupKind::Value { key } => Some(*key),
            LookupKind::Node => None,
        };
        let own = (!self.is_client()).then_some(self.own);
        let mut lookup = Lookup::new(target, kind, seeds, own, Instant::now(), QUERY_TIMEOUT);
        let mut inflight: JoinSet<(NodeId, Result<DhtMessage, RpcError>)> = JoinSet::new();
        loop {
            let now = Instant::now();
            lookup.handle_timeout(now);
            for contact in lookup.poll_queries(now) {
                let request = lookup.request(self.txid());
                let node = self.clone();
                inflight.spawn(async move {
                    let answer = node.request(&contact, request).await;
                    (contact.node_id, answer)
                });
            }
            if lookup.is_done() {
                break;
            }
            let deadline = lookup.poll_timeout();
            tokio::select! {
                joined = inflight.join_next(), if !inflight.is_empty() => {
                    let Some(Ok((from, answer))) = joined else { continue };
                    let now = Instant::now();
                    match answer {
                        Ok(DhtMessage::Nodes { nodes, .. }) => {
                            let contacts = Contact::from_answer(&nodes, now_unix());
                            self.learn(&contacts);
                            lookup.on_nodes(from, contacts, now);
                        }
                        Ok(DhtMessage::Value { records, nodes, .. }) => {
                            let contacts = Contact::from_answer(&nodes, now_unix());
                            self.learn(&contacts);
                            let records: Vec<Record> = records
                                .into_iter()
                                .filter(|r| key.is_some_and(|k| self.verify(&k, r, now_unix())))
                                .collect();
                            lookup.on_value(from, records, contacts, now);
                        }
                        Ok(_) | Err(_) => lookup.on_failure(from, now),
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => {}
                else => break,
            }
        }
        inflight.abort_all();
        lookup.result()
    }

    fn is_client(&self) -> bool {
        self.storage.is_none()
    }

    /// Join: learn `seeds`, announce this relay to them (relay mode), look up our own id
    /// and refresh every bucket once. Returns the number of contacts known afterwards.
    pub async fn join(self: &Arc<Self>, seeds: &[Contact]) -> usize {
        self.learn(seeds);
        self.announce_to(seeds).await;
        let own = *self.own.as_bytes();
        let _ = self.lookup(own, LookupKind::Node).await;
        let targets = lock(&self.table).join_targets();
        self.lookup_all(targets).await;
        self.len()
    }

    /// Look up random ids in buckets not refreshed for [`BUCKET_REFRESH`].
    pub async fn refresh(self: &Arc<Self>) {
        let targets = lock(&self.table).refresh_targets(Instant::now(), BUCKET_REFRESH);
        self.lookup_all(targets).await;
    }

    async fn lookup_all(self: &Arc<Self>, targets: Vec<[u8; 32]>) {
        // A few at a time: each is itself α-parallel.
        for chunk in targets.chunks(4) {
            let mut set = JoinSet::new();
            for t in chunk {
                let node = self.clone();
                let t = *t;
                set.spawn(async move {
                    node.lookup(t, LookupKind::Node).await;
                    lock(&node.table).mark_refreshed(&t, Instant::now());
                });
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// Tell `contacts` about this relay (ANNOUNCE with its descriptor); no-op in client
    /// mode.
    pub async fn announce_to(self: &Arc<Self>, contacts: &[Contact]) {
        let Some(descriptor) = lock(&self.announce).clone() else {
            return;
        };
        let mut set = JoinSet::new();
        for c in contacts.iter().take(K) {
            let c = c.clone();
            let node = self.clone();
            let descriptor = descriptor.clone();
            set.spawn(async move {
                let txid = node.txid();
                let _ = node
                    .request(&c, DhtMessage::Announce { txid, descriptor })
                    .await;
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Publish this relay's descriptor: STORE it on the K nodes closest to its key (and
    /// announce it to them). Returns how many stored it.
    pub async fn publish_descriptor(self: &Arc<Self>) -> usize {
        let Some(descriptor) = lock(&self.announce).clone() else {
            return 0;
        };
        let key = descriptor_key(&self.own);
        let Ok(record) = Record::relay_descriptor(&descriptor) else {
            return 0;
        };
        let closest = self.lookup(key, LookupKind::Node).await.closest;
        self.announce_to(&closest).await;
        self.store_on(closest, key, record).await
    }

    /// Store `record` under `key` on the (up to) `replicas` nodes closest to `key`, and in
    /// this relay's own storage when it is a full node and the record verifies. Returns how
    /// many nodes (this one included) accepted it. Used for records published through a
    /// circuit (§13.6).
    pub async fn store_record(
        self: &Arc<Self>,
        key: [u8; 32],
        record: Record,
        replicas: usize,
    ) -> usize {
        let mut stored = 0;
        if let Some(storage) = &self.storage {
            // The relay that stores on a client's behalf keeps a copy when it is itself
            // among the closest nodes it knows of; it counts as one replica.
            let own_distance = anonnet_dht::distance(self.own.as_bytes(), &key);
            let closest = lock(&self.table).closest(&key, replicas);
            let own_is_close = closest.len() < replicas
                || closest.last().is_some_and(|c| {
                    anonnet_dht::distance(c.node_id.as_bytes(), &key) > own_distance
                });
            if own_is_close
                && lock(storage)
                    .store(self.own, key, record.clone(), now_unix())
                    .is_ok()
            {
                stored += 1;
            }
        }
        let mut closest = self.lookup(key, LookupKind::Node).await.closest;
        closest.truncate(replicas);
        stored + self.store_on(closest, key, record).await
    }

    /// Find the records stored under `key`: this node's own storage first, then a value
    /// lookup. Every record returned verified under `key` (§11.3).
    pub async fn find_records(self: &Arc<Self>, key: [u8; 32]) -> Vec<Record> {
        if let Some(storage) = &self.storage {
            let local = lock(storage).get(&key, now_unix());
            if !local.is_empty() {
                return local;
            }
        }
        let result = self.lookup(key, LookupKind::Value { key }).await;
        let now = now_unix();
        let mut records: Vec<Record> = Vec::new();
        for r in result.records {
            if self.verify(&key, &r, now) && !records.contains(&r) {
                records.push(r);
            }
        }
        records
    }

    async fn store_on(
        self: &Arc<Self>,
        nodes: Vec<Contact>,
        key: [u8; 32],
        record: Record,
    ) -> usize {
        let mut set = JoinSet::new();
        for c in nodes {
            let node = self.clone();
            let record = record.clone();
            set.spawn(async move {
                let txid = node.txid();
                matches!(
                    node.request(&c, DhtMessage::Store { txid, key, record })
                        .await,
                    Ok(DhtMessage::Stored {
                        status: StoreStatus::Stored,
                        ..
                    })
                )
            });
        }
        let mut stored = 0;
        while let Some(r) = set.join_next().await {
            stored += usize::from(matches!(r, Ok(true)));
        }
        stored
    }

    /// Find a relay's descriptor by NodeId (a value lookup under its descriptor key).
    pub async fn find_descriptor(self: &Arc<Self>, id: &NodeId) -> Option<SignedDescriptor> {
        let key = descriptor_key(id);
        let result = self.lookup(key, LookupKind::Value { key }).await;
        result
            .records
            .iter()
            .filter_map(|r| SignedDescriptor::decode(&r.body).ok())
            .max_by_key(|d| {
                anonnet_wire::RelayDescriptor::decode_body(&d.body)
                    .map(|b| b.published)
                    .unwrap_or(0)
            })
    }

    /// Serve one DHT stream opened by a peer (its tag byte already read). `peer` is the
    /// NodeId its certificate proved (relays), `None` for clients; `remote` its address.
    /// A client in client mode never calls this.
    pub async fn serve_stream(
        self: &Arc<Self>,
        peer: Option<NodeId>,
        remote: SocketAddr,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let served = async {
            let mut len = [0u8; 4];
            recv.read_exact(&mut len).await.ok()?;
            let n = frame_len(len).ok()?;
            // Grown as bytes arrive: a bare length prefix commits no 64 KiB buffer.
            let mut body = Vec::with_capacity(n.min(REQUEST_BUFFER));
            let limit = u64::try_from(n).ok()?;
            (&mut recv).take(limit).read_to_end(&mut body).await.ok()?;
            if body.len() != n {
                return None;
            }
            let msg = DhtMessage::decode(&body).ok()?;
            let answer = self.handle(peer, remote, msg)?;
            let framed = frame_response(&answer).ok()?;
            send.write_all(&framed).await.ok()?;
            let _ = send.finish();
            Some(())
        };
        if tokio::time::timeout(QUERY_TIMEOUT, served)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            let _ = send.reset(quinn::VarInt::from_u32(0));
        }
    }

    /// Answer one request (sans-IO apart from spawning the learning pings). `None` drops
    /// the stream (malformed, rate-limited, or not a request).
    fn handle(
        self: &Arc<Self>,
        peer: Option<NodeId>,
        remote: SocketAddr,
        msg: DhtMessage,
    ) -> Option<DhtMessage> {
        let storage = self.storage.as_ref()?;
        // Relays are rate-limited by the NodeId their certificate proves, clients by IP.
        let key = peer.unwrap_or_else(|| {
            NodeId(*blake3::hash(remote.ip().to_string().as_bytes()).as_bytes())
        });
        let allowed = lock(storage).allow_request(key, Instant::now());
        let now = now_unix();
        let closest = |target: &[u8; 32]| -> Vec<SignedDescriptor> {
            lock(&self.table)
                .closest(target, MAX_NODES)
                .into_iter()
                .map(|c| c.descriptor)
                .collect()
        };
        match msg {
            DhtMessage::Store { txid, .. } if !allowed => Some(DhtMessage::Stored {
                txid,
                status: StoreStatus::RateLimited,
            }),
            _ if !allowed => None,
            DhtMessage::Ping { txid } => Some(DhtMessage::Pong { txid }),
            DhtMessage::FindNode { txid, target } => Some(DhtMessage::Nodes {
                txid,
                nodes: closest(&target),
            }),
            DhtMessage::FindValue { txid, key } => Some(DhtMessage::Value {
                txid,
                records: lock(storage).get(&key, now),
                nodes: closest(&key),
            }),
            DhtMessage::Store { txid, record, .. } if record.kind == RecordKind::HsDescriptor => {
                // Descriptors live on their HSDirs, stored through circuits (§12.7).
                Some(DhtMessage::Stored {
                    txid,
                    status: StoreStatus::Rejected(REJECT_NOT_STORING),
                })
            }
            DhtMessage::Store {
                txid,
                key: record_key,
                record,
            } => {
                let status = match lock(storage).store(key, record_key, record, now) {
                    Ok(()) => StoreStatus::Stored,
                    Err(e) => {
                        debug!("STORE refused: {e}");
                        e.status()
                    }
                };
                Some(DhtMessage::Stored { txid, status })
            }
            DhtMessage::Announce { txid, descriptor } => {
                match Contact::from_descriptor(&descriptor, now) {
                    // The announced NodeId must be the one the link's certificate proved.
                    Ok(c) if Some(c.node_id) == peer => self.learn(&[c]),
                    Ok(c) => anonnet_net::warn_limited!(
                        claimed = %c.node_id.short(),
                        "dropping an ANNOUNCE whose NodeId the link does not prove"
                    ),
                    Err(e) => debug!("dropping a bad ANNOUNCE: {e}"),
                }
                Some(DhtMessage::Pong { txid })
            }
            _ => None,
        }
    }
}

async fn read_framed(recv: &mut RecvStream) -> Result<Vec<u8>, RpcError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let n = frame_len(len)?;
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl anonnet_error::HasKind for RpcError {
    /// The link's kind, [`anonnet_error::ErrorKind::Timeout`] for no answer in time,
    /// [`anonnet_error::ErrorKind::Protocol`] for an answer that does not fit,
    /// [`anonnet_error::ErrorKind::Internal`] for a request we could not frame, and
    /// [`anonnet_error::ErrorKind::CircuitFailed`] for a stream that broke.
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            RpcError::Link(e) => anonnet_error::HasKind::kind(e),
            RpcError::Write(_) | RpcError::Read(_) => anonnet_error::ErrorKind::CircuitFailed,
            RpcError::Request(_) => anonnet_error::ErrorKind::Internal,
            RpcError::BadAnswer(_) | RpcError::NotAnAnswer => anonnet_error::ErrorKind::Protocol,
            RpcError::Timeout => anonnet_error::ErrorKind::Timeout,
        }
    }
}
