//! Client circuits: telescoping construction and the two tasks that carry a built
//! circuit, with streams multiplexed on it. Spec: `docs/protocol.md` §5–§7, §9.
//!
//! The onion arithmetic is [`anonnet_crypto::ClientOnion`]; this module only moves
//! whole cells between it and the guard's QUIC stream. Every channel is bounded: a stream
//! whose reader stalls pushes back through its channel, the circuit reader and QUIC flow
//! control (window-based SENDME flow control comes with the daemon issue).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use anonnet_crypto::onion::{forward_buffer_len, message_offset, EndToEndKeys};
use anonnet_crypto::{
    ClientBackward, ClientForward, ClientHandshake, ClientOnion, HopKeys, HybridClientHandshake,
    NodeId, VerifiedDescriptor,
};
use anonnet_net::LinkManager;
use anonnet_wire::cell::CellCommand;
use anonnet_wire::flow::{
    CircuitDeliverWindow, SendmeTags, StreamDeliverWindow, CIRCUIT_INCREMENT, CIRCUIT_WINDOW,
    STREAM_INCREMENT, STREAM_WINDOW,
};
use anonnet_wire::{
    Create, CreateHybrid, Created, CreatedHybrid, Destroy, DestroyReason, EndReason, RelayCell,
    RelayMsg, StreamId, Target, CELL_LEN, FORWARD_MESSAGE_MAX, HANDSHAKE_HYBRID_V2,
    HYBRID_REPLY_LEN,
};
use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, PollSemaphore, PollSender};
use tracing::{debug, Instrument};

/// Relay messages queued towards the guard, shared by all streams of a circuit.
const FORWARD_QUEUE: usize = 64;
/// Circuit `SENDME`s waiting for the writer. The exit sends at most `CIRCUIT_WINDOW` cells
/// beyond the last `SENDME` it received, so at most `CIRCUIT_WINDOW / CIRCUIT_INCREMENT`
/// (10) can be due at once; a full queue means the exit overran its window.
const SENDME_QUEUE: usize = (CIRCUIT_WINDOW / CIRCUIT_INCREMENT) as usize + 2;
/// Events queued towards one stream: a whole stream window of `DATA` plus `CONNECTED`
/// and `END`, so the circuit reader never waits on a stream whose exit respects flow
/// control (§6.4).
const STREAM_QUEUE: usize = STREAM_WINDOW as usize + 8;
/// Longest wait for the QUIC link to the guard.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);
/// Streams open at once on one circuit.
pub const MAX_STREAMS_PER_CIRCUIT: usize = 512;

/// Why a circuit could not be built or used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitError {
    /// The QUIC link to the guard failed.
    #[error("link to guard {0}: {1}")]
    Link(String, String),
    /// A hop refused or broke the handshake.
    #[error("hop {hop} handshake: {why}")]
    Handshake {
        /// 0 = guard.
        hop: usize,
        /// What happened.
        why: String,
    },
    /// A hop could not extend the circuit (`TRUNCATED` or `DESTROY` with this reason).
    #[error("hop {hop} could not extend: {reason:?}")]
    Extend {
        /// The hop that failed to extend.
        hop: usize,
        /// Its reason.
        reason: DestroyReason,
    },
    /// Building took longer than allowed.
    #[error("circuit build timed out")]
    Timeout,
    /// The circuit is closed (destroyed, or its link died).
    #[error("circuit closed")]
    Closed,
    /// Too many streams on this circuit.
    #[error("stream limit of this circuit reached")]
    TooManyStreams,
    /// A relay sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The exit answered `END` with this reason.
    #[error("exit refused the stream: {0:?}")]
    Refused(EndReason),
    /// The exit did not answer in time.
    #[error("exit did not answer BEGIN in time")]
    Timeout,
    /// The circuit failed.
    #[error(transparent)]
    Circuit(#[from] CircuitError),
}

enum StreamEvent {
    Connected,
    Data(Bytes),
    End(EndReason),
}

struct Forward {
    hop: usize,
    cell: RelayCell,
}

/// What the circuit reader needs to deliver to one stream.
#[derive(Clone)]
struct StreamEntry {
    tx: mpsc::Sender<StreamEvent>,
    /// Deliver window for `DATA` from the exit (consumption is counted by the stream).
    deliver: Arc<Mutex<StreamDeliverWindow>>,
    /// Package window for `DATA` to the exit (permits).
    package: Arc<Semaphore>,
}

#[derive(Default)]
struct StreamTable {
    next: u16,
    streams: HashMap<StreamId, StreamEntry>,
    /// Streams this client closed whose `END` from the far end has not come yet (§6.6).
    half_closed: HalfClosed,
}

/// Most half-closed streams remembered per circuit; the oldest is forgotten first (and a
/// late cell for it then closes the circuit).
const MAX_HALF_CLOSED: usize = 512;

/// The client's half-closed streams (§6.6): streams it closed by sending `END`, each with
/// the `DATA` cells still tolerated (one stream window: what may have been in flight).
/// Sans-IO: the circuit reader asks it about every stream cell that has no open stream.
#[derive(Debug, Default)]
struct HalfClosed {
    /// Stream id → `DATA` cells still tolerated, with the order of closing for eviction.
    streams: HashMap<StreamId, (u32, u64)>,
    closed: u64,
}

impl HalfClosed {
    /// The client sent `END` on `id`.
    fn close(&mut self, id: StreamId) {
        if self.streams.len() >= MAX_HALF_CLOSED && !self.streams.contains_key(&id) {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, (_, order))| *order)
                .map(|(k, _)| *k);
            if let Some(old) = oldest {
                self.streams.remove(&old);
            }
        }
        self.closed += 1;
        self.streams.insert(id, (STREAM_WINDOW, self.closed));
    }

    /// A cell for stream `id`, which has no open stream: `Ok` when a half-closed stream may
    /// still receive it (`DATA` within the window, `CONNECTED`, a stream `SENDME`, or the
    /// `END` that completes the close), else `Err` naming it: the circuit must close.
    fn on_cell(&mut self, id: StreamId, msg: &RelayMsg) -> Result<(), String> {
        let Some((left, _)) = self.streams.get_mut(&id) else {
            return Err(format!("{} for unknown stream {}", msg_name(msg), id.0));
        };
        match msg {
            RelayMsg::Data(_) if *left > 0 => {
                *left -= 1;
                Ok(())
            }
            RelayMsg::Data(_) => Err(format!("DATA past the window of closed stream {}", id.0)),
            RelayMsg::Connected | RelayMsg::Sendme(None) => Ok(()),
            RelayMsg::End(_) => {
                self.streams.remove(&id);
                Ok(())
            }
            other => Err(format!("{} for closed stream {}", msg_name(other), id.0)),
        }
    }
}

impl StreamTable {
    fn allocate(&mut self, tx: StreamEntry) -> Option<StreamId> {
        if self.streams.len() >= MAX_STREAMS_PER_CIRCUIT {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            let id = StreamId(self.next);
            if let std::collections::hash_map::Entry::Vacant(e) = self.streams.entry(id) {
                e.insert(tx);
                return Some(id);
            }
        }
    }
}

static NEXT_CIRCUIT: AtomicU64 = AtomicU64::new(1);

/// Messages from the last relay queued for [`Circuit::control_messages`].
const CONTROL_QUEUE: usize = 32;
/// Streams from the far end waiting for the service (§13.5).
const INCOMING_QUEUE: usize = 16;

/// A relay named by its link specifiers: enough to extend a circuit to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopSpec {
    /// The relay's NodeId (pinned when its link is opened).
    pub node_id: NodeId,
    /// Its onion key `B`.
    pub onion_key: [u8; 32],
    /// Its QUIC address.
    pub addr: std::net::SocketAddr,
}

/// The keys of an end-to-end hop until the writer and reader tasks take them.
#[derive(Default)]
struct PendingHop {
    waiting: [AtomicBool; 2],
    seal: Mutex<Option<Arc<EndToEndKeys>>>,
    open: Mutex<Option<Arc<EndToEndKeys>>>,
}

impl PendingHop {
    fn set(&self, keys: EndToEndKeys) {
        let keys = Arc::new(keys);
        if let (Ok(mut s), Ok(mut o)) = (self.seal.lock(), self.open.lock()) {
            *s = Some(keys.clone());
            *o = Some(keys);
        }
        for w in &self.waiting {
            w.store(true, Ordering::SeqCst);
        }
    }

    /// The keys, once for the writer side.
    fn take_seal(&self) -> Option<Arc<EndToEndKeys>> {
        if !self.waiting[0].swap(false, Ordering::SeqCst) {
            return None;
        }
        self.seal.lock().ok().and_then(|mut s| s.take())
    }

    /// The keys, once for the reader side.
    fn take_open(&self) -> Option<Arc<EndToEndKeys>> {
        if !self.waiting[1].swap(false, Ordering::SeqCst) {
            return None;
        }
        self.open.lock().ok().and_then(|mut s| s.take())
    }
}

/// A stream opened by the far end of a rendezvous circuit (service side, §13.5).
#[derive(Debug)]
pub struct IncomingStream {
    /// The `BEGIN` target as the client wrote it (the `.anon` host).
    pub target: Target,
    /// The port asked for.
    pub port: u16,
    /// The stream; answer with [`DataStream::accept`] or [`DataStream::refuse`].
    pub stream: DataStream,
}

/// Byte counters shared by every stream of a client (see `status::Counters`).
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Bytes written by applications into streams.
    pub bytes_sent: AtomicU64,
    /// Bytes read by applications from streams.
    pub bytes_received: AtomicU64,
    /// Bytes delivered by the circuit reader but not yet read by the application.
    pub buffered: AtomicU64,
    /// Circuits closed because a relay sent a cell this client did not expect (an
    /// unnegotiated DROP, a cell for an unknown stream, §6.6).
    pub unexpected_cells: AtomicU64,
}

/// A built circuit. Cheap to share; it closes when the last handle and every stream on it
/// are dropped, or when a relay or the link ends it.
pub struct Circuit {
    id: u64,
    /// NodeIds of every relay, guard first.
    ids: Vec<NodeId>,
    /// The relays chosen from the directory (all of `ids`, or all but an end named by
    /// link specifiers).
    path: Vec<VerifiedDescriptor>,
    /// The last relay.
    last: Option<HopSpec>,
    /// False for circuits built to a named end (introduction/rendezvous/DHT circuits).
    ends_at_exit: bool,
    /// Each relay's handshake key `Y`.
    bindings: Vec<[u8; 32]>,
    /// The handshake run with every relay of this circuit.
    handshake: HandshakeKind,
    /// Layers the client keeps: relays, plus one once an end-to-end hop is added.
    hops: Arc<AtomicUsize>,
    /// An end-to-end hop's keys on their way to the writer and reader tasks.
    pending: Arc<PendingHop>,
    /// Where §13 messages from the last relay go.
    control: Mutex<Option<mpsc::Sender<RelayMsg>>>,
    /// Where streams opened by the far end go (service side).
    incoming: Mutex<Option<mpsc::Sender<IncomingStream>>>,
    forward: mpsc::Sender<Forward>,
    /// Circuit `SENDME`s from the reader task: a queue of their own, which the writer serves
    /// first, so the reader never waits for the writer. (Waiting there closed a cycle:
    /// with ~1,000 streams opening at once the writer waited on the guard, the exit's
    /// forward task on its backward queue, the relays on the client's QUIC window, and
    /// that on the reader.)
    sendmes: mpsc::Sender<Forward>,
    streams: Mutex<StreamTable>,
    closed: CancellationToken,
    built_in: Duration,
    created: Instant,
    counters: Arc<StreamCounters>,
    /// Circuit package window for `DATA` to the exit (permits, §6.4).
    package: Arc<Semaphore>,
    /// Tags the exit's circuit SENDMEs must echo.
    sendme_tags: Arc<Mutex<SendmeTags>>,
    /// Set when the QUIC link to the guard died under the circuit (not a DESTROY).
    guard_lost: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("id", &self.id)
            .field("hops", &self.hops.load(Ordering::Relaxed))
            .finish()
    }
}

async fn read_cell(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, CircuitError> {
    let mut cell = vec![0u8; len];
    recv.read_exact(&mut cell)
        .await
        .map_err(|_| CircuitError::Closed)?;
    Ok(cell)
}

/// Which circuit handshake the client runs with each relay (§5, §5.4). Every
/// version-2 relay answers both; the client chooses (`client.circuit_handshake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandshakeKind {
    /// X25519 + ML-KEM-768 (type 2, §5.4): secret if either holds. The default.
    #[default]
    Hybrid,
    /// X25519 only (type 1, §5.1): for measurement and comparison.
    Classical,
}

impl HandshakeKind {
    /// The name `circuits --json` shows: `"x25519+mlkem768"` or `"x25519"`.
    pub fn name(self) -> &'static str {
        match self {
            HandshakeKind::Hybrid => "x25519+mlkem768",
            HandshakeKind::Classical => "x25519",
        }
    }
}

/// The client's half of one hop's handshake, of either type.
enum HopHandshake {
    Classical(ClientHandshake),
    Hybrid(HybridClientHandshake),
}

impl HopHandshake {
    fn start(kind: HandshakeKind, relay: &HopSpec) -> Result<Self, anonnet_crypto::HandshakeError> {
        Ok(match kind {
            HandshakeKind::Classical => {
                HopHandshake::Classical(ClientHandshake::start(relay.node_id, relay.onion_key)?)
            }
            HandshakeKind::Hybrid => HopHandshake::Hybrid(HybridClientHandshake::start(
                relay.node_id,
                relay.onion_key,
            )?),
        })
    }

    /// The `CREATE` cells for a guard: one cell (type 1) or two (type 2, §4.2).
    fn create(&self) -> Result<Vec<u8>, anonnet_wire::WireError> {
        match self {
            HopHandshake::Classical(hs) => {
                let hello = hs.hello();
                Create {
                    cell_len: CELL_LEN as u16,
                    node_id: hello.node_id,
                    onion_key: hello.onion_key,
                    client_pk: hello.client_pk,
                }
                .encode()
            }
            HopHandshake::Hybrid(hs) => CreateHybrid {
                hello: hs.hello_bytes(),
            }
            .encode(),
        }
    }

    /// The relay messages asking the previous hop to extend to `addr`: `EXTEND` (type 1),
    /// or `EXTEND2` and the `HANDSHAKE_CONT`s that carry the rest of the hello (type 2).
    fn extend_messages(&self, addr: std::net::SocketAddr) -> Vec<RelayCell> {
        match self {
            HopHandshake::Classical(hs) => {
                let hello = hs.hello();
                vec![RelayCell::new(
                    StreamId::CIRCUIT,
                    RelayMsg::Extend {
                        node_id: hello.node_id,
                        addr,
                        onion_key: hello.onion_key,
                        client_pk: hello.client_pk,
                    },
                )]
            }
            HopHandshake::Hybrid(hs) => {
                let hello = Bytes::from(hs.hello_bytes());
                let (first, rest) = hello.split_at(EXTEND2_FIRST_PART.min(hello.len()));
                let mut out = vec![RelayCell::new(
                    StreamId::CIRCUIT,
                    RelayMsg::Extend2 {
                        addr,
                        handshake_type: HANDSHAKE_HYBRID_V2,
                        part: hello.slice_ref(first),
                    },
                )];
                for chunk in rest.chunks(RelayCell::max_payload(FORWARD_MESSAGE_MAX)) {
                    out.push(RelayCell::new(
                        StreamId::CIRCUIT,
                        RelayMsg::HandshakeCont(hello.slice_ref(chunk)),
                    ));
                }
                out
            }
        }
    }

    /// Finish with the guard's `CREATED` cells; returns the keys and `Y`.
    fn finish_created(self, cells: &[u8]) -> Result<(HopKeys, [u8; 32]), String> {
        let reply = match &self {
            HopHandshake::Classical(_) => {
                let c = Created::decode(cells).map_err(|_| "no CREATED".to_string())?;
                let mut bytes = c.server_pk.to_vec();
                bytes.extend_from_slice(&c.auth);
                bytes
            }
            HopHandshake::Hybrid(_) => {
                CreatedHybrid::decode(cells)
                    .map_err(|_| "no CREATED".to_string())?
                    .reply
            }
        };
        self.finish(&reply)
    }

    /// Finish with the relay's reply bytes (`Y ‖ AUTH` for type 1, `Y ‖ CT ‖ AUTH` for
    /// type 2); returns the keys and `Y`.
    fn finish(self, reply: &[u8]) -> Result<(HopKeys, [u8; 32]), String> {
        let mut y = [0u8; 32];
        y.copy_from_slice(reply.get(..32).ok_or("short handshake reply")?);
        let keys = match self {
            HopHandshake::Classical(hs) => {
                let auth: [u8; 32] = reply
                    .get(32..64)
                    .and_then(|a| a.try_into().ok())
                    .ok_or("short handshake reply")?;
                hs.finish(&anonnet_crypto::ServerReply { server_pk: y, auth })
            }
            HopHandshake::Hybrid(hs) => hs.finish(reply),
        }
        .map_err(|e| e.to_string())?;
        Ok((keys, y))
    }
}

/// Hello bytes in an `EXTEND2` (the rest go in `HANDSHAKE_CONT`s): 700 leaves room for the
/// address (up to 19 bytes) and handshake type within the 802-byte payload (§6.2).
const EXTEND2_FIRST_PART: usize = 700;

impl Circuit {
    /// Build a circuit through `path` (guard first) with telescoping `CREATE`/`EXTEND`.
    ///
    /// # Errors
    /// [`CircuitError`] for a failed link, handshake or extension. The caller applies its
    /// own timeout.
    pub async fn build(
        links: &LinkManager,
        path: Vec<VerifiedDescriptor>,
        counters: Arc<StreamCounters>,
        kind: HandshakeKind,
    ) -> Result<Arc<Circuit>, CircuitError> {
        Self::build_to(links, path, None, counters, kind).await
    }

    /// As [`Circuit::build`], then extend to `end`, a relay known only by its link
    /// specifiers (an introduction or rendezvous point named in a hidden-service
    /// descriptor or introduction, §13). Such a circuit never carries exit streams.
    ///
    /// # Errors
    /// As [`Circuit::build`].
    pub async fn build_to(
        links: &LinkManager,
        path: Vec<VerifiedDescriptor>,
        end: Option<HopSpec>,
        counters: Arc<StreamCounters>,
        kind: HandshakeKind,
    ) -> Result<Arc<Circuit>, CircuitError> {
        let started = Instant::now();
        let mut hops: Vec<HopSpec> = Vec::with_capacity(path.len() + 1);
        for r in &path {
            let addr = *r
                .descriptor
                .addresses
                .first()
                .ok_or(CircuitError::Protocol("relay without address".into()))?;
            hops.push(HopSpec {
                node_id: r.node_id,
                onion_key: r.descriptor.onion_key,
                addr,
            });
        }
        let ends_at_exit = end.is_none();
        hops.extend(end);
        let guard = hops
            .first()
            .ok_or(CircuitError::Protocol("empty path".into()))?;
        // A dead guard's UDP port may swallow QUIC Initials silently: give up early.
        let link = tokio::time::timeout(LINK_TIMEOUT, links.get(guard.addr, guard.node_id))
            .await
            .map_err(|_| CircuitError::Link(guard.node_id.short(), "timed out".into()))?
            .map_err(|e| CircuitError::Link(guard.node_id.short(), e.to_string()))?;
        let (mut send, mut recv) = link
            .open_bi()
            .await
            .map_err(|e| CircuitError::Link(guard.node_id.short(), e.to_string()))?;
        let hs_err = |hop: usize, why: String| CircuitError::Handshake { hop, why };

        let hs = HopHandshake::start(kind, guard).map_err(|e| hs_err(0, e.to_string()))?;
        send.write_all(&hs.create().map_err(|e| hs_err(0, e.to_string()))?)
            .await
            .map_err(|_| CircuitError::Closed)?;
        let mut reply = read_cell(&mut recv, CELL_LEN).await?;
        if let Ok(d) = Destroy::decode(&reply) {
            return Err(hs_err(0, format!("guard refused CREATE: {:?}", d.reason)));
        }
        if kind == HandshakeKind::Hybrid {
            reply.extend_from_slice(&read_cell(&mut recv, CELL_LEN).await?);
        }
        let (keys, y) = hs.finish_created(&reply).map_err(|e| hs_err(0, e))?;
        let mut onion = ClientOnion::new();
        onion.push_hop(&keys);
        let mut bindings = vec![y];

        for (hop, relay) in hops.iter().enumerate().skip(1) {
            let hs = HopHandshake::start(kind, relay).map_err(|e| hs_err(hop, e.to_string()))?;
            let last = hop - 1;
            for msg in hs.extend_messages(relay.addr) {
                let mut cell = vec![0u8; forward_buffer_len(last)];
                let msg_len = msg
                    .encode_into(
                        cell.get_mut(
                            message_offset(last)..message_offset(last) + FORWARD_MESSAGE_MAX,
                        )
                        .unwrap_or_default(),
                    )
                    .map_err(|e| hs_err(hop, e.to_string()))?;
                onion
                    .seal_forward(&mut cell, last, msg_len)
                    .map_err(|e| hs_err(hop, e.to_string()))?;
                cell.truncate(CELL_LEN);
                send.write_all(&cell)
                    .await
                    .map_err(|_| CircuitError::Closed)?;
            }
            // EXTENDED (type 1), or EXTENDED2 and HANDSHAKE_CONT until the whole reply
            // arrived (type 2, §6.2); TRUNCATED ends the build.
            let mut answer: Option<Vec<u8>> = None;
            let finished = loop {
                let mut reply = read_cell(&mut recv, CELL_LEN).await?;
                if reply.first() == Some(&(CellCommand::Destroy as u8)) {
                    let reason = Destroy::decode(&reply)
                        .map(|d| d.reason)
                        .unwrap_or(DestroyReason::None);
                    return Err(CircuitError::Extend { hop: last, reason });
                }
                let (from, range, _) = onion
                    .open_backward(&mut reply)
                    .map_err(|e| CircuitError::Protocol(e.to_string()))?;
                let msg = RelayCell::decode(&Bytes::from(reply).slice(range))
                    .map_err(|e| CircuitError::Protocol(e.to_string()))?;
                match (from == last, msg.msg, answer.as_mut()) {
                    (true, RelayMsg::Extended { server_pk, auth }, None)
                        if kind == HandshakeKind::Classical =>
                    {
                        let mut bytes = server_pk.to_vec();
                        bytes.extend_from_slice(&auth);
                        break bytes;
                    }
                    (true, RelayMsg::Extended2(part), None) if kind == HandshakeKind::Hybrid => {
                        answer = Some(part.to_vec());
                    }
                    (true, RelayMsg::HandshakeCont(part), Some(so_far))
                        if so_far.len() + part.len() <= HYBRID_REPLY_LEN =>
                    {
                        so_far.extend_from_slice(&part);
                    }
                    (true, RelayMsg::Truncated(reason), _) => {
                        return Err(CircuitError::Extend { hop: last, reason })
                    }
                    (_, other, _) => {
                        return Err(CircuitError::Protocol(format!(
                            "expected EXTENDED from hop {last}, got {other:?} from hop {from}"
                        )))
                    }
                }
                if let Some(done) = answer.take_if(|a| a.len() == HYBRID_REPLY_LEN) {
                    break done;
                }
            };
            let (keys, y) = hs.finish(&finished).map_err(|e| hs_err(hop, e))?;
            onion.push_hop(&keys);
            bindings.push(y);
        }

        let (fwd_layers, bwd_layers) = onion.split();
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        let (sendme_tx, sendme_rx) = mpsc::channel(SENDME_QUEUE);
        let hop_count = Arc::new(AtomicUsize::new(hops.len()));
        let pending = Arc::new(PendingHop::default());
        let circuit = Arc::new(Circuit {
            id: NEXT_CIRCUIT.fetch_add(1, Ordering::Relaxed),
            ids: hops.iter().map(|h| h.node_id).collect(),
            last: hops.last().copied(),
            path,
            ends_at_exit,
            bindings,
            handshake: kind,
            hops: hop_count.clone(),
            pending: pending.clone(),
            control: Mutex::new(None),
            incoming: Mutex::new(None),
            forward: tx,
            sendmes: sendme_tx,
            streams: Mutex::new(StreamTable::default()),
            closed: CancellationToken::new(),
            built_in: started.elapsed(),
            created: Instant::now(),
            counters,
            package: Arc::new(Semaphore::new(CIRCUIT_WINDOW as usize)),
            sendme_tags: Arc::new(Mutex::new(SendmeTags::default())),
            guard_lost: std::sync::atomic::AtomicBool::new(false),
        });
        // A debug log can follow one circuit: its tasks' lines carry `circuit{id=…}`.
        let span = tracing::debug_span!("circuit", id = circuit.id);
        tokio::spawn(
            writer_task(
                fwd_layers,
                send,
                WriterQueues {
                    sendmes: sendme_rx,
                    cells: rx,
                },
                circuit.sendme_tags.clone(),
                hop_count,
                pending,
                circuit.closed.clone(),
            )
            .instrument(span.clone()),
        );
        tokio::spawn(
            reader_task(
                bwd_layers,
                recv,
                Arc::downgrade(&circuit),
                circuit.closed.clone(),
            )
            .instrument(span),
        );
        debug!(
            circuit = circuit.id,
            build_ms = circuit.built_in.as_secs_f64() * 1000.0,
            path = %anonnet_net::logging::sensitive(
                circuit.ids.iter().map(|r| r.short()).collect::<Vec<_>>().join(",")
            ),
            "circuit built"
        );
        Ok(circuit)
    }

    /// The handshake run with every relay of this circuit (§5, §5.4).
    pub fn handshake(&self) -> HandshakeKind {
        self.handshake
    }

    /// The relay handshake key `Y` of hop `hop` (0 = guard): what an `ESTABLISH_INTRO`
    /// signature binds to (§13.2).
    pub fn binding(&self, hop: usize) -> Option<[u8; 32]> {
        self.bindings.get(hop).copied()
    }

    /// The last relay's link specifiers (the rendezvous or introduction point of a
    /// hidden-service circuit).
    pub fn last_hop(&self) -> Option<HopSpec> {
        self.last
    }

    /// Wait until the circuit is closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Number of relays on the circuit (without an end-to-end hop).
    pub fn relay_hops(&self) -> usize {
        self.ids.len()
    }

    /// Receive the hidden-service and DHT messages (§13) the last relay sends on this
    /// circuit, from now on. A second call replaces the first receiver. Messages that
    /// arrive while nobody listens, or while the queue (32) is full, are dropped.
    pub fn control_messages(&self) -> mpsc::Receiver<RelayMsg> {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        if let Ok(mut c) = self.control.lock() {
            *c = Some(tx);
        }
        rx
    }

    /// Send a circuit-level message to the last relay (§13).
    ///
    /// # Errors
    /// [`CircuitError::Closed`] when the circuit is gone.
    pub async fn send_to_last_relay(&self, msg: RelayMsg) -> Result<(), CircuitError> {
        self.forward
            .send(Forward {
                hop: self.ids.len().saturating_sub(1),
                cell: RelayCell::new(StreamId::CIRCUIT, msg),
            })
            .await
            .map_err(|_| CircuitError::Closed)
    }

    /// Add the end-to-end hop of a rendezvous circuit (§13.5) with the keys of the
    /// end-to-end handshake: from now on streams go to the other end, not to the last
    /// relay. The client uses the keys as any hop's; the service (`service_side`) uses
    /// them the other way round, sealing with the backward key and opening with the
    /// forward one. Call it once, before any cell to or from the new hop.
    pub fn add_end_to_end_hop(&self, keys: &HopKeys, service_side: bool) {
        self.pending.set(EndToEndKeys::new(keys, !service_side));
        self.hops.fetch_add(1, Ordering::SeqCst);
    }

    /// On a service's rendezvous circuit: receive the streams the client opens (`BEGIN`
    /// from the end-to-end hop). Each is answered by [`DataStream::accept`] or
    /// [`DataStream::refuse`]. At most 16 wait; more are refused (RESOURCELIMIT).
    pub fn incoming_streams(&self) -> mpsc::Receiver<IncomingStream> {
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        if let Ok(mut c) = self.incoming.lock() {
            *c = Some(tx);
        }
        rx
    }

    /// Local number of this circuit (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The NodeIds of the path, guard first (relays only).
    pub fn path(&self) -> Vec<NodeId> {
        self.ids.clone()
    }

    /// How long the build took.
    pub fn build_time(&self) -> Duration {
        self.built_in
    }

    /// When the circuit was built.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// True when the circuit ended because the link to its guard died (the guard crashed
    /// or became unreachable), as opposed to a `DESTROY` or a local close.
    pub fn lost_its_guard(&self) -> bool {
        self.guard_lost.load(Ordering::Relaxed)
    }

    /// True once the circuit can carry nothing more.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Streams open on this circuit now.
    pub fn stream_count(&self) -> usize {
        self.streams.lock().map(|t| t.streams.len()).unwrap_or(0)
    }

    /// True when another stream fits on this circuit (fewer than
    /// [`MAX_STREAMS_PER_CIRCUIT`] open).
    pub fn has_stream_capacity(&self) -> bool {
        self.streams
            .lock()
            .map(|t| t.streams.len() < MAX_STREAMS_PER_CIRCUIT)
            .unwrap_or(false)
    }

    /// True when the exit's policy summary allows `port`.
    pub fn exit_allows_port(&self, port: u16) -> bool {
        self.ends_at_exit
            && self.hops.load(Ordering::SeqCst) == self.ids.len()
            && self
                .path
                .last()
                .is_some_and(|e| e.descriptor.exit_allows_port(port))
    }

    /// Close the circuit: both tasks stop and the guard gets `DESTROY`.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The hop streams go to: the exit, or the other end of a rendezvous circuit.
    fn exit_hop(&self) -> usize {
        self.hops.load(Ordering::SeqCst).saturating_sub(1)
    }

    /// Bytes of stream data one `DATA` cell to the exit carries: the same (802) at every
    /// path length (§7.2).
    pub fn max_data(&self) -> usize {
        RelayCell::max_payload(FORWARD_MESSAGE_MAX)
    }

    /// Open a stream to `target:port` through the exit, waiting at most `timeout` for
    /// `CONNECTED`.
    ///
    /// # Errors
    /// [`StreamError::Refused`] with the exit's END reason, [`StreamError::Timeout`],
    /// [`StreamError::Circuit`] when the circuit is closed or full.
    pub async fn begin(
        self: &Arc<Self>,
        target: Target,
        port: u16,
        timeout: Duration,
    ) -> Result<DataStream, StreamError> {
        if self.is_closed() {
            return Err(CircuitError::Closed.into());
        }
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
        let entry = StreamEntry {
            tx,
            deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
            package: Arc::new(Semaphore::new(STREAM_WINDOW as usize)),
        };
        let id = self
            .streams
            .lock()
            .map_err(|_| CircuitError::Closed)?
            .allocate(entry.clone())
            .ok_or(CircuitError::TooManyStreams)?;
        let mut stream = self.stream_handle(id, &entry, None);
        self.forward
            .send(Forward {
                hop: self.exit_hop(),
                cell: RelayCell::new(id, RelayMsg::Begin { target, port }),
            })
            .await
            .map_err(|_| CircuitError::Closed)?;
        let answer = tokio::select! {
            a = tokio::time::timeout(timeout, rx.recv()) => a,
            () = self.closed.cancelled() => return Err(CircuitError::Closed.into()),
        };
        match answer {
            Ok(Some(StreamEvent::Connected)) => {
                stream.rx = Some(rx);
                Ok(stream)
            }
            Ok(Some(StreamEvent::End(reason))) => {
                stream.ended = true;
                Err(StreamError::Refused(reason))
            }
            Ok(Some(StreamEvent::Data(_))) => {
                self.close();
                Err(CircuitError::Protocol("DATA before CONNECTED".into()).into())
            }
            Ok(None) => Err(CircuitError::Closed.into()),
            Err(_) => Err(StreamError::Timeout),
        }
    }

    /// A `BEGIN` from the far end of a rendezvous circuit: hand the new stream to
    /// [`Circuit::incoming_streams`]. `Err` (closing the circuit) for a stream id in use.
    fn accept_begin(
        self: &Arc<Self>,
        id: StreamId,
        target: Target,
        port: u16,
    ) -> Result<(), String> {
        let Some(tx) = self.incoming.lock().ok().and_then(|c| c.clone()) else {
            return Err("BEGIN on a circuit that accepts no streams".into());
        };
        let (etx, erx) = mpsc::channel(STREAM_QUEUE);
        let entry = StreamEntry {
            tx: etx,
            deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
            package: Arc::new(Semaphore::new(STREAM_WINDOW as usize)),
        };
        {
            let mut table = self
                .streams
                .lock()
                .map_err(|_| "stream table".to_string())?;
            if table.streams.contains_key(&id) {
                return Err(format!("BEGIN for stream {} already open", id.0));
            }
            if table.streams.len() >= MAX_STREAMS_PER_CIRCUIT {
                drop(table);
                let _ = self.forward.try_send(Forward {
                    hop: self.exit_hop(),
                    cell: RelayCell::new(id, RelayMsg::End(EndReason::ResourceLimit)),
                });
                return Ok(());
            }
            table.streams.insert(id, entry.clone());
        }
        let stream = self.stream_handle(id, &entry, Some(erx));
        if let Err(mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s)) = tx
            .try_send(IncomingStream {
                target,
                port,
                stream,
            })
        {
            s.stream.refuse(EndReason::ResourceLimit);
        }
        Ok(())
    }

    fn stream_handle(
        self: &Arc<Self>,
        id: StreamId,
        entry: &StreamEntry,
        rx: Option<mpsc::Receiver<StreamEvent>>,
    ) -> DataStream {
        DataStream {
            circuit: self.clone(),
            id,
            rx,
            pending: Bytes::new(),
            sender: PollSender::new(self.forward.clone()),
            ended: false,
            failure: None,
            deliver: entry.deliver.clone(),
            circuit_window: PollSemaphore::new(self.package.clone()),
            stream_window: PollSemaphore::new(entry.package.clone()),
            permits: (None, None),
        }
    }

    fn forget_stream(&self, id: StreamId) {
        if let Ok(mut t) = self.streams.lock() {
            t.streams.remove(&id);
        }
    }

    /// This client closes stream `id` (sends `END`): until the far end's `END`, up to a
    /// stream window of `DATA` already in flight is tolerated for it (§6.6).
    fn half_close_stream(&self, id: StreamId) {
        if let Ok(mut t) = self.streams.lock() {
            t.streams.remove(&id);
            t.half_closed.close(id);
        }
    }

    /// A cell for stream `id` that has no open stream ([`HalfClosed::on_cell`]).
    fn tolerate_closed_stream(&self, id: StreamId, msg: &RelayMsg) -> Result<(), String> {
        match self.streams.lock() {
            Ok(mut t) => t.half_closed.on_cell(id, msg),
            Err(_) => Err("stream table poisoned".into()),
        }
    }
}

impl Drop for Circuit {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// The writer task's queues: circuit `SENDME`s (served first) and every other cell.
struct WriterQueues {
    sendmes: mpsc::Receiver<Forward>,
    cells: mpsc::Receiver<Forward>,
}

async fn writer_task(
    mut layers: ClientForward,
    mut send: SendStream,
    mut queues: WriterQueues,
    sendme_tags: Arc<Mutex<SendmeTags>>,
    hops: Arc<AtomicUsize>,
    pending: Arc<PendingHop>,
    closed: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = closed.cancelled() => break,
            Some(sendme) = queues.sendmes.recv() => Some(sendme),
            n = queues.cells.recv() => n,
        };
        let Some(Forward { hop, cell }) = next else {
            break;
        };
        if let Some(keys) = pending.take_seal() {
            layers.push_end_to_end(&keys);
        }
        let exit = hops.load(Ordering::SeqCst).saturating_sub(1);
        let mut buf = vec![0u8; forward_buffer_len(hop)];
        let encoded = buf
            .get_mut(message_offset(hop)..message_offset(hop) + FORWARD_MESSAGE_MAX)
            .and_then(|area| cell.encode_into(area).ok());
        let tag = match encoded.map(|len| layers.seal_forward(&mut buf, hop, len)) {
            Some(Ok(tag)) => tag,
            _ => {
                debug!("dropping an unencodable relay message");
                continue;
            }
        };
        buf.truncate(CELL_LEN);
        if hop == exit && matches!(cell.msg, RelayMsg::Data(_)) {
            if let Ok(mut tags) = sendme_tags.lock() {
                tags.on_data_sent(tag);
            }
        }
        let ok = tokio::select! {
            r = send.write_all(&buf) => r.is_ok(),
            () = closed.cancelled() => false,
        };
        if !ok {
            break;
        }
    }
    closed.cancel();
    if let Ok(d) = (Destroy {
        reason: DestroyReason::Finished,
    })
    .encode(CELL_LEN)
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&d)).await;
    }
    let _ = send.finish();
}

/// Most cells the circuit reader takes from QUIC in one read.
const READ_BATCH: usize = 32;

/// Whole cells from the guard's QUIC stream, read up to [`READ_BATCH`] at a time: each
/// QUIC read locks the connection, and one read per cell (plus one allocation per cell) was
/// a large part of the reader's cost. The cells are slices of one buffer.
#[derive(Default)]
struct CellReader {
    staging: BytesMut,
}

impl CellReader {
    /// The next whole cell of [`CELL_LEN`] bytes.
    ///
    /// # Errors
    /// [`CircuitError::Closed`] when the stream ends or fails.
    async fn next(&mut self, recv: &mut RecvStream) -> Result<BytesMut, CircuitError> {
        while self.staging.len() < CELL_LEN {
            self.staging
                .reserve(READ_BATCH * CELL_LEN - self.staging.len());
            match recv.read_buf(&mut self.staging).await {
                Ok(0) | Err(_) => return Err(CircuitError::Closed),
                Ok(_) => {}
            }
        }
        Ok(self.staging.split_to(CELL_LEN))
    }
}

async fn reader_task(
    mut layers: ClientBackward,
    mut recv: RecvStream,
    circuit: std::sync::Weak<Circuit>,
    closed: CancellationToken,
) {
    let mut deliver = CircuitDeliverWindow::default();
    let mut cells = CellReader::default();
    let why = loop {
        let cell = tokio::select! {
            biased;
            () = closed.cancelled() => break "closed locally".to_string(),
            c = cells.next(&mut recv) => c,
        };
        let Ok(mut cell) = cell else {
            if let Some(c) = circuit.upgrade() {
                c.guard_lost.store(true, Ordering::Relaxed);
            }
            break "link closed".to_string();
        };
        match cell.first().copied().map(CellCommand::from_byte) {
            Some(Ok(CellCommand::Relay)) => {}
            Some(Ok(CellCommand::Padding)) => continue,
            Some(Ok(CellCommand::Destroy)) => {
                break format!(
                    "DESTROY from guard: {:?}",
                    Destroy::decode(&cell).map(|d| d.reason)
                );
            }
            _ => break "unexpected cell".to_string(),
        }
        if let Some(c) = circuit.upgrade() {
            if let Some(keys) = c.pending.take_open() {
                layers.push_end_to_end(&keys);
            }
        }
        let (hop, range, tag) = match layers.open_backward(&mut cell[..]) {
            Ok(r) => r,
            Err(e) => break format!("bad cell: {e}"),
        };
        let msg = match RelayCell::decode(&cell.freeze().slice(range)) {
            Ok(m) => m,
            Err(e) => break format!("bad relay message: {e}"),
        };
        let Some(circ) = circuit.upgrade() else {
            break "circuit dropped".to_string();
        };
        let exit = circ.exit_hop();
        let entry = circ
            .streams
            .lock()
            .ok()
            .and_then(|t| t.streams.get(&msg.stream_id).cloned());
        let last_relay = circ.ids.len().saturating_sub(1);
        // Every DATA from the exit counts for the circuit window, for an open stream or not
        // (the exit counted it too); every 100th earns it a circuit SENDME.
        if hop == exit && matches!(msg.msg, RelayMsg::Data(_)) {
            if let Some(echo) = deliver.on_data(tag) {
                let sendme = Forward {
                    hop: exit,
                    cell: RelayCell::new(StreamId::CIRCUIT, RelayMsg::Sendme(Some(echo))),
                };
                match circ.sendmes.try_send(sendme) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        break "exit overran the circuit window".to_string();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        break "circuit closed".to_string();
                    }
                }
            }
        }
        // No silent cells (§6.6, DropMark): a DROP this client never asked for, or a stream
        // cell for a stream it does not have (beyond what a half-closed stream may still
        // receive), closes the circuit, so no pair of relays can signal through it.
        let stream_cell = matches!(
            msg.msg,
            RelayMsg::Data(_) | RelayMsg::End(_) | RelayMsg::Connected | RelayMsg::Sendme(None)
        );
        if entry.is_none() && stream_cell && hop == exit {
            match circ.tolerate_closed_stream(msg.stream_id, &msg.msg) {
                Ok(()) => continue,
                Err(why) => {
                    circ.counters
                        .unexpected_cells
                        .fetch_add(1, Ordering::Relaxed);
                    break format!("unexpected cell from the exit: {why}");
                }
            }
        }
        let event = match msg.msg {
            RelayMsg::Drop => {
                circ.counters
                    .unexpected_cells
                    .fetch_add(1, Ordering::Relaxed);
                break format!("unexpected DROP from hop {hop}");
            }
            m if m.is_hs() && hop == last_relay => {
                let tx = circ.control.lock().ok().and_then(|c| c.clone());
                let delivered = tx.is_some_and(|tx| tx.try_send(m).is_ok());
                if !delivered {
                    debug!(circuit = circ.id, "dropping a §13 message nobody waits for");
                }
                continue;
            }
            RelayMsg::Begin { target, port } if hop == exit && exit >= circ.ids.len() => {
                match circ.accept_begin(msg.stream_id, target, port) {
                    Ok(()) => continue,
                    Err(why) => break why,
                }
            }
            RelayMsg::Sendme(Some(echo)) if hop == exit => {
                let ok = circ
                    .sendme_tags
                    .lock()
                    .map(|mut t| t.on_sendme(&echo).is_ok())
                    .unwrap_or(false);
                if !ok {
                    break "exit sent a circuit SENDME that proves nothing".to_string();
                }
                circ.package.add_permits(CIRCUIT_INCREMENT as usize);
                continue;
            }
            RelayMsg::Sendme(None) if hop == exit => {
                if let Some(e) = &entry {
                    let inc = STREAM_INCREMENT as usize;
                    if e.package.available_permits() + inc > STREAM_WINDOW as usize {
                        break "exit sent an unexpected stream SENDME".to_string();
                    }
                    e.package.add_permits(inc);
                }
                continue;
            }
            RelayMsg::Data(d) if hop == exit => {
                if let Some(e) = &entry {
                    let ok = e
                        .deliver
                        .lock()
                        .map(|mut w| w.on_data().is_ok())
                        .unwrap_or(false);
                    if !ok {
                        break format!("exit broke the window of stream {}", msg.stream_id.0);
                    }
                }
                StreamEvent::Data(d)
            }
            RelayMsg::Truncated(reason) => break format!("TRUNCATED by hop {hop}: {reason:?}"),
            RelayMsg::Connected if hop == exit => StreamEvent::Connected,
            RelayMsg::End(r) if hop == exit => StreamEvent::End(r),
            other => {
                circ.counters
                    .unexpected_cells
                    .fetch_add(1, Ordering::Relaxed);
                break format!("unexpected {} from hop {hop}", msg_name(&other));
            }
        };
        let is_end = matches!(event, StreamEvent::End(_));
        let data_len = match &event {
            StreamEvent::Data(d) => d.len() as u64,
            _ => 0,
        };
        drop(circ);
        if let Some(StreamEntry { tx, .. }) = entry {
            // Waiting here is the back-pressure of a slow stream reader.
            // Count the bytes as buffered before the stream can read them, so the count
            // never goes below zero.
            if let Some(c) = circuit.upgrade() {
                c.counters.buffered.fetch_add(data_len, Ordering::Relaxed);
            }
            let delivered = tokio::select! {
                r = tx.send(event) => r.is_ok(),
                () = closed.cancelled() => false,
            };
            if !delivered {
                if let Some(c) = circuit.upgrade() {
                    c.counters.buffered.fetch_sub(data_len, Ordering::Relaxed);
                }
                if closed.is_cancelled() {
                    break "closed locally".to_string();
                }
            }
            if is_end {
                if let Some(c) = circuit.upgrade() {
                    c.forget_stream(msg.stream_id);
                }
            }
        }
    };
    debug!("circuit reader stopped: {why}");
    closed.cancel();
    // Dropping the senders tells every open stream that the circuit is gone.
    if let Some(c) = circuit.upgrade() {
        if let Ok(mut t) = c.streams.lock() {
            t.streams.clear();
        }
    }
}

/// A stream through a circuit: bytes written go to the destination, bytes read come from
/// it. Reads end with `Ok(0)` when the exit closed the stream normally and with an error
/// when the stream or circuit failed. Dropping it sends `END`. There is no half-close:
/// `shutdown` only flushes.
pub struct DataStream {
    circuit: Arc<Circuit>,
    id: StreamId,
    rx: Option<mpsc::Receiver<StreamEvent>>,
    pending: Bytes,
    sender: PollSender<Forward>,
    ended: bool,
    /// Why the stream ended, when it failed after bytes the last read already returned:
    /// the next read reports it.
    failure: Option<io::Error>,
    /// Deliver window: counts consumed cells and says when a stream SENDME is due.
    deliver: Arc<Mutex<StreamDeliverWindow>>,
    /// Package windows for writing (§6.4).
    circuit_window: PollSemaphore,
    stream_window: PollSemaphore,
    /// Permits acquired for the next DATA cell (circuit, stream).
    permits: (
        Option<tokio::sync::OwnedSemaphorePermit>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
}

impl std::fmt::Debug for DataStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream")
            .field("circuit", &self.circuit.id)
            .field("stream", &self.id.0)
            .finish()
    }
}

impl DataStream {
    /// The circuit carrying this stream.
    pub fn circuit(&self) -> &Arc<Circuit> {
        &self.circuit
    }

    /// Service side: tell the client its stream is open (`CONNECTED`, §13.5).
    ///
    /// # Errors
    /// [`CircuitError::Closed`] when the circuit is gone.
    pub async fn accept(&self) -> Result<(), CircuitError> {
        self.circuit
            .forward
            .send(Forward {
                hop: self.circuit.exit_hop(),
                cell: RelayCell::new(self.id, RelayMsg::Connected),
            })
            .await
            .map_err(|_| CircuitError::Closed)
    }

    /// Service side: refuse the stream with `END` `reason` (e.g. CONNECTREFUSED when the
    /// local server is down).
    pub fn refuse(mut self, reason: EndReason) {
        self.ended = true;
        let end = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::End(reason)),
        };
        let _ = self.circuit.forward.try_send(end);
    }

    /// Tell the exit that 50 more cells were consumed. Never waits: when the circuit's
    /// queue is full the SENDME goes from a small task instead.
    fn send_stream_sendme(&self) {
        let sendme = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::Sendme(None)),
        };
        if let Err(mpsc::error::TrySendError::Full(sendme)) = self.circuit.forward.try_send(sendme)
        {
            let tx = self.circuit.forward.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(sendme).await;
                });
            }
        }
    }
}

impl AsyncRead for DataStream {
    /// Fills `buf` with as many queued `DATA` cells as fit, not one cell per call: the
    /// caller (a SOCKS or HTTP copy loop) then writes many cells to its TCP socket in one
    /// syscall, where one loopback `send` per 998-byte cell was a third of the client's
    /// CPU in bulk transfers.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                let c = &self.circuit.counters;
                c.buffered.fetch_sub(n as u64, Ordering::Relaxed);
                c.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let got_bytes = buf.filled().len() > start;
            if self.ended {
                // An error that came behind bytes already handed out is reported by the
                // next call.
                return match self.failure.take() {
                    Some(e) if !got_bytes => Poll::Ready(Err(e)),
                    Some(e) => {
                        self.failure = Some(e);
                        Poll::Ready(Ok(()))
                    }
                    None => Poll::Ready(Ok(())),
                };
            }
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let event = match rx.poll_recv(cx) {
                Poll::Ready(event) => event,
                Poll::Pending if got_bytes => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            };
            match event {
                Some(StreamEvent::Data(d)) => {
                    self.pending = d;
                    let due = self
                        .deliver
                        .lock()
                        .map(|mut w| w.on_consumed())
                        .unwrap_or(false);
                    if due {
                        self.send_stream_sendme();
                    }
                }
                Some(StreamEvent::Connected) => {}
                Some(StreamEvent::End(EndReason::Done)) => self.ended = true,
                Some(StreamEvent::End(reason)) => {
                    self.ended = true;
                    self.failure = Some(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("stream ended by the exit: {reason:?}"),
                    ));
                }
                None => {
                    self.ended = true;
                    self.failure = Some(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "circuit closed",
                    ));
                }
            }
        }
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "circuit closed");
        // One DATA cell needs a permit from the stream and the circuit package windows.
        // The stream's first: a stream waiting for its own window (its exit's destination
        // reads slowly) then holds no circuit permit the circuit's other streams need.
        if self.permits.1.is_none() {
            match ready!(self.stream_window.poll_acquire(cx)) {
                Some(p) => self.permits.1 = Some(p),
                None => return Poll::Ready(Err(closed())),
            }
        }
        if self.permits.0.is_none() {
            match ready!(self.circuit_window.poll_acquire(cx)) {
                Some(p) => self.permits.0 = Some(p),
                None => return Poll::Ready(Err(closed())),
            }
        }
        if ready!(self.sender.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(closed()));
        }
        let n = buf.len().min(self.circuit.max_data());
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        let item = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::Data(data)),
        };
        match self.sender.send_item(item) {
            Ok(()) => {
                if let Some(p) = self.permits.0.take() {
                    p.forget();
                }
                if let Some(p) = self.permits.1.take() {
                    p.forget();
                }
                self.circuit
                    .counters
                    .bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        if self.ended || self.circuit.is_closed() {
            self.circuit.forget_stream(self.id);
        } else {
            self.circuit.half_close_stream(self.id);
        }
        // Bytes delivered but never read leave the buffered count.
        let mut unread = self.pending.len() as u64;
        if let Some(rx) = self.rx.as_mut() {
            rx.close();
            while let Ok(ev) = rx.try_recv() {
                if let StreamEvent::Data(d) = ev {
                    unread += d.len() as u64;
                }
            }
        }
        self.circuit
            .counters
            .buffered
            .fetch_sub(unread, Ordering::Relaxed);
        if self.ended || self.circuit.is_closed() {
            return;
        }
        let end = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::End(EndReason::Done)),
        };
        if let Err(mpsc::error::TrySendError::Full(end)) = self.circuit.forward.try_send(end) {
            let tx = self.circuit.forward.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(end).await;
                });
            }
        }
    }
}

/// The name of a relay message for logs and errors (no payload).
fn msg_name(m: &RelayMsg) -> &'static str {
    match m {
        RelayMsg::Data(_) => "DATA",
        RelayMsg::End(_) => "END",
        RelayMsg::Connected => "CONNECTED",
        RelayMsg::Sendme(None) => "stream SENDME",
        RelayMsg::Sendme(Some(_)) => "circuit SENDME",
        RelayMsg::Drop => "DROP",
        RelayMsg::Begin { .. } => "BEGIN",
        _ => "relay message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> RelayMsg {
        RelayMsg::Data(bytes::Bytes::from_static(b"x"))
    }

    #[test]
    fn cells_for_a_stream_never_opened_are_refused() {
        let mut h = HalfClosed::default();
        for m in [
            data(),
            RelayMsg::End(EndReason::Done),
            RelayMsg::Connected,
            RelayMsg::Sendme(None),
        ] {
            assert!(h.on_cell(StreamId(7), &m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn a_half_closed_stream_takes_one_window_of_data_then_its_end() {
        let mut h = HalfClosed::default();
        h.close(StreamId(3));
        assert!(h.on_cell(StreamId(3), &RelayMsg::Connected).is_ok());
        for _ in 0..STREAM_WINDOW {
            h.on_cell(StreamId(3), &data()).unwrap();
        }
        assert!(h.on_cell(StreamId(3), &data()).is_err(), "past the window");
        let mut h = HalfClosed::default();
        h.close(StreamId(3));
        h.on_cell(StreamId(3), &data()).unwrap();
        h.on_cell(StreamId(3), &RelayMsg::End(EndReason::Done))
            .unwrap();
        // Closed for good: even one more DATA cell is a mark.
        assert!(h.on_cell(StreamId(3), &data()).is_err());
        assert!(h.on_cell(StreamId(3), &RelayMsg::Drop).is_err());
    }

    #[test]
    fn the_half_closed_set_is_bounded_and_forgets_the_oldest() {
        let mut h = HalfClosed::default();
        for i in 1..=(MAX_HALF_CLOSED as u16 + 10) {
            h.close(StreamId(i));
        }
        assert_eq!(h.streams.len(), MAX_HALF_CLOSED);
        assert!(
            h.on_cell(StreamId(1), &data()).is_err(),
            "the oldest was forgotten"
        );
        assert!(h
            .on_cell(StreamId(MAX_HALF_CLOSED as u16 + 10), &data())
            .is_ok());
    }
}
