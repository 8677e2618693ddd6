//! Client circuits: telescoping construction and the two tasks that carry a built
//! circuit, with streams multiplexed on it. Spec: `docs/protocol.md` §5–§7, §9.
//!
//! The onion arithmetic is [`anonnet_crypto::ClientOnion`]; this module only moves
//! whole cells between it and the guard's QUIC stream. Every channel is bounded: a stream
//! whose reader stalls pushes back through its channel, the circuit reader and QUIC flow
//! control, and the SENDME windows of §6.4 bound what each side may send.
//!
//! The protocol rules of a built circuit live in `core`, a sans-IO state machine in the
//! manner of quinn-proto: `ReaderCore` takes each cell from the guard and says what it
//! means (opening the backward layers, the circuit deliver window and its `SENDME`s,
//! SENDME tag checks, stream windows, no silent cells: §6.4, §6.6, §7.3), `WriterCore`
//! seals relay messages and records the tags the exit must echo (§6.4, §7.2). The two
//! tasks around them only move cells and events.
//!
//! Files, by concern: `build` (`CREATE`, `EXTEND`/`EXTEND2`), `handshake` (either
//! handshake type), `core` (the reader's and writer's protocol state), `writer` (the
//! writer task: queues in, sealed cells out), `reader` (the reader task: cells in, events
//! carried out), `stream` (a stream as `AsyncRead` and `AsyncWrite`); this file keeps the
//! circuit and its stream table.

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
    CWND_MAX, STREAM_INCREMENT, STREAM_WINDOW, STREAM_WINDOW_MAX,
};
use anonnet_wire::{
    Create, CreateHybrid, Created, CreatedHybrid, Destroy, DestroyReason, EndReason, RelayCell,
    RelayMsg, ResolvedAnswer, StreamId, Target, CELL_LEN, FORWARD_MESSAGE_MAX, HANDSHAKE_HYBRID_V2,
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
/// Circuit `SENDME`s waiting for the writer. The exit sends at most its congestion window
/// (at most `CWND_MAX` cells) beyond the last `SENDME` it received, so at most
/// `CWND_MAX / CIRCUIT_INCREMENT` (100) can be due at once; a full queue means the exit
/// overran the largest window.
const SENDME_QUEUE: usize = (CWND_MAX / CIRCUIT_INCREMENT) as usize + 2;
/// Events queued towards one stream: the largest stream window of `DATA` plus `CONNECTED`
/// and `END` (the queue allocates as it fills, not up front), so the circuit reader never waits on a stream whose exit respects flow
/// control (§6.4).
const STREAM_QUEUE: usize = STREAM_WINDOW_MAX as usize + 8;
/// Longest wait for the QUIC link to the guard.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);
/// Streams open at once on one circuit.
pub const MAX_STREAMS_PER_CIRCUIT: usize = 512;

/// Why a circuit could not be built or used.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum CircuitError {
    /// The QUIC link to the guard failed (dial, handshake, identity or stream).
    #[error("link to guard {guard}: {source}")]
    Link {
        /// The guard's short NodeId.
        guard: String,
        /// The link layer's error.
        #[source]
        source: std::sync::Arc<anonnet_net::NetError>,
    },
    /// The QUIC link to the guard was not up within [`LINK_TIMEOUT`].
    #[error("link to guard {0}: no answer within {LINK_TIMEOUT:?}")]
    LinkTimeout(String),
    /// A hop refused or broke the handshake.
    #[error("hop {hop} handshake: {why}")]
    Handshake {
        /// 0 = guard.
        hop: usize,
        /// What happened.
        #[source]
        why: HandshakeFailure,
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
    /// A cell came back that no hop's onion layer opens (§6.1: its digest matched at no
    /// hop), so some relay on the path altered or forged it.
    #[error("a cell no hop recognises: {0}")]
    Unrecognised(#[source] anonnet_crypto::OnionError),
    /// A hop's relay cell opened but does not decode (§6.2).
    #[error("malformed relay cell: {0}")]
    Malformed(#[source] anonnet_wire::WireError),
}

/// Why the handshake with one hop failed (§5, §6.2).
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The relay advertises handshake types (§9.2) of which none is usable with this
    /// client's setting.
    #[error("relay answers handshake types {offered:?}, none usable with {ours}")]
    NoUsableType {
        /// The type numbers the relay's descriptor lists.
        offered: Vec<u16>,
        /// This client's `circuit_handshake` setting.
        ours: &'static str,
    },
    /// The guard answered `CREATE` with `DESTROY` and this reason.
    #[error("guard refused CREATE: {0:?}")]
    Refused(DestroyReason),
    /// The guard's answer is not a `CREATED` cell of the handshake type asked for.
    #[error("no CREATED")]
    NoCreated,
    /// The hop's reply is shorter than its handshake type's (bytes).
    #[error("short handshake reply")]
    ShortReply,
    /// The handshake's cryptography failed (bad key, wrong AUTH, …).
    #[error(transparent)]
    Crypto(#[from] anonnet_crypto::HandshakeError),
    /// The `CREATE` or `EXTEND` message could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] anonnet_wire::WireError),
    /// The `EXTEND` cell could not be sealed in onion layers.
    #[error("onion layers: {0}")]
    Onion(#[from] anonnet_crypto::OnionError),
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error, Clone)]
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

#[derive(Debug)]
enum StreamEvent {
    Connected,
    Data(Bytes),
    End(EndReason),
    /// The exit's answer to `RESOLVE` (§6.2); only a resolve stream receives it.
    Resolved(Vec<ResolvedAnswer>),
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
    /// True for a stream opened by `RESOLVE`: it takes `RESOLVED` or `END` and nothing
    /// else (§6.2).
    resolve: bool,
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
#[derive(Debug)]
struct HalfClosed {
    /// Stream id → `DATA` cells still tolerated. An `lru::LruCache` of at most
    /// [`MAX_HALF_CLOSED`] read only with `peek_mut`, so its order is the order of closing
    /// and a full table forgets the stream closed first (O(1)). Unbounded for `lru` and
    /// bounded by [`HalfClosed::close`], so that its table grows with use instead of
    /// being allocated whole with every circuit.
    streams: lru::LruCache<StreamId, u32>,
}

impl Default for HalfClosed {
    fn default() -> Self {
        HalfClosed {
            streams: lru::LruCache::unbounded(),
        }
    }
}

impl HalfClosed {
    /// The client sent `END` on `id`.
    fn close(&mut self, id: StreamId) {
        if !self.streams.contains(&id) && self.streams.len() >= MAX_HALF_CLOSED {
            self.streams.pop_lru();
        }
        self.streams.put(id, STREAM_WINDOW_MAX);
    }

    /// A cell for stream `id`, which has no open stream: `Ok` when a half-closed stream may
    /// still receive it (`DATA` within the window, `CONNECTED`, a stream `SENDME`, or the
    /// `END` that completes the close), else `Err` naming it: the circuit must close.
    fn on_cell(&mut self, id: StreamId, msg: &RelayMsg) -> Result<(), String> {
        let Some(left) = self.streams.peek_mut(&id) else {
            return Err(format!("{} for unknown stream {}", msg_name(msg), id.0));
        };
        match msg {
            RelayMsg::Data(_) if *left > 0 => {
                *left -= 1;
                Ok(())
            }
            RelayMsg::Data(_) => Err(format!("DATA past the window of closed stream {}", id.0)),
            RelayMsg::Connected | RelayMsg::Sendme(None) => Ok(()),
            // RESOLVED ends a resolve stream as END ends any other (§6.2).
            RelayMsg::End(_) | RelayMsg::Resolved(_) => {
                self.streams.pop(&id);
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
    /// The QUIC address of every relay, in the order of `ids`.
    addrs: Vec<std::net::SocketAddr>,
    /// The relays chosen from the directory (all of `ids`, or all but an end named by
    /// link specifiers).
    path: Vec<VerifiedDescriptor>,
    /// The last relay.
    last: Option<HopSpec>,
    /// False for circuits built to a named end (introduction/rendezvous/DHT circuits).
    ends_at_exit: bool,
    /// Each relay's handshake key `Y`.
    bindings: Vec<[u8; 32]>,
    /// The handshake run with each relay, guard first (chosen per hop, §9.2).
    handshakes: Vec<HandshakeKind>,
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

mod build;
pub use build::CircuitPrefix;
mod core;
mod handshake;
mod reader;
mod stream;
mod writer;

use self::core::*;
pub use handshake::HandshakeKind;
use handshake::*;
use reader::*;
pub use stream::DataStream;
use writer::*;

impl Circuit {
    /// The handshake run with each relay of this circuit, guard first, one per relay hop
    /// (§5, §5.4; chosen per hop, §9.2).
    pub fn handshakes(&self) -> &[HandshakeKind] {
        &self.handshakes
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

    /// The QUIC address of each relay of the path, guard first (for the status display:
    /// anyone can check that no two share a /16).
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        self.addrs.clone()
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
        let (mut stream, mut rx) = self.send_begin(target, port).await?;
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
            Ok(Some(StreamEvent::Data(_) | StreamEvent::Resolved(_))) => {
                self.close();
                Err(CircuitError::Protocol("DATA before CONNECTED".into()).into())
            }
            Ok(None) => Err(CircuitError::Closed.into()),
            Err(_) => Err(StreamError::Timeout),
        }
    }

    /// Allocate a stream, send its `BEGIN`, and return its handle (no receiver yet) and
    /// the receiver of its events.
    async fn send_begin(
        self: &Arc<Self>,
        target: Target,
        port: u16,
    ) -> Result<(DataStream, mpsc::Receiver<StreamEvent>), StreamError> {
        if self.is_closed() {
            return Err(CircuitError::Closed.into());
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let entry = StreamEntry {
            tx,
            deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
            package: Arc::new(Semaphore::new(STREAM_WINDOW as usize)),
            resolve: false,
        };
        let id = self
            .streams
            .lock()
            .map_err(|_| CircuitError::Closed)?
            .allocate(entry.clone())
            .ok_or(CircuitError::TooManyStreams)?;
        let stream = self.stream_handle(id, &entry, None);
        self.forward
            .send(Forward {
                hop: self.exit_hop(),
                cell: RelayCell::new(id, RelayMsg::Begin { target, port }),
            })
            .await
            .map_err(|_| CircuitError::Closed)?;
        Ok((stream, rx))
    }

    /// Open a stream to `target:port` through the exit *optimistically* (§6.5 "Optimistic
    /// data"): `BEGIN` is sent and the stream returned at once, so what the caller writes
    /// next follows `BEGIN` on the circuit instead of waiting a round trip for
    /// `CONNECTED`. The first read waits for `CONNECTED`; when the exit refuses, reads
    /// fail with an [`std::io::Error`] of kind `ConnectionRefused` whose inner error is
    /// [`StreamError::Refused`] with the exit's reason. Only for requests that may be sent
    /// again safely: a refused stream's data was never delivered, but one whose exit
    /// stays silent may have been.
    ///
    /// # Errors
    /// [`StreamError::Circuit`] when the circuit is closed or full.
    pub async fn begin_optimistic(
        self: &Arc<Self>,
        target: Target,
        port: u16,
    ) -> Result<DataStream, StreamError> {
        let (mut stream, rx) = self.send_begin(target, port).await?;
        stream.rx = Some(rx);
        stream.awaiting_connected = true;
        Ok(stream)
    }

    /// Ask the exit to resolve `target` (§6.2): a host name's addresses or an address's
    /// name, waiting at most `timeout` for `RESOLVED`. The stream id is used for this one
    /// question; when the answer does not come in time the stream is ended (`END` DONE)
    /// and half-closed (§6.6).
    ///
    /// # Errors
    /// [`StreamError::Refused`] with the exit's END reason (EXITPOLICY: not an exit, or the
    /// policy allows none of the answers), [`StreamError::Timeout`],
    /// [`StreamError::Circuit`] when the circuit is closed or full. A lookup that failed at
    /// the exit is an answer ([`ResolvedAnswer::Error`], [`ResolvedAnswer::TransientError`]),
    /// not an error.
    pub async fn resolve(
        self: &Arc<Self>,
        target: Target,
        timeout: Duration,
    ) -> Result<Vec<ResolvedAnswer>, StreamError> {
        if self.is_closed() {
            return Err(CircuitError::Closed.into());
        }
        let (tx, mut rx) = mpsc::channel(1);
        let entry = StreamEntry {
            tx,
            deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
            package: Arc::new(Semaphore::new(0)),
            resolve: true,
        };
        let id = self
            .streams
            .lock()
            .map_err(|_| CircuitError::Closed)?
            .allocate(entry)
            .ok_or(CircuitError::TooManyStreams)?;
        let hop = self.exit_hop();
        if self
            .forward
            .send(Forward {
                hop,
                cell: RelayCell::new(id, RelayMsg::Resolve(target)),
            })
            .await
            .is_err()
        {
            self.forget_stream(id);
            return Err(CircuitError::Closed.into());
        }
        let answer = tokio::select! {
            a = tokio::time::timeout(timeout, rx.recv()) => a,
            () = self.closed.cancelled() => return Err(CircuitError::Closed.into()),
        };
        match answer {
            Ok(Some(StreamEvent::Resolved(answers))) => Ok(answers),
            Ok(Some(StreamEvent::End(reason))) => Err(StreamError::Refused(reason)),
            // The reader lets nothing else reach a resolve stream.
            Ok(Some(_) | None) => Err(CircuitError::Closed.into()),
            Err(_) => {
                let _ = self.forward.try_send(Forward {
                    hop,
                    cell: RelayCell::new(id, RelayMsg::End(EndReason::Done)),
                });
                self.half_close_stream(id);
                Err(StreamError::Timeout)
            }
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
            resolve: false,
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
            awaiting_connected: false,
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
}

impl Drop for Circuit {
    fn drop(&mut self) {
        self.closed.cancel();
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
        RelayMsg::Resolved(_) => "RESOLVED",
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
        for _ in 0..STREAM_WINDOW_MAX {
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
        for i in 1..=MAX_HALF_CLOSED as u16 {
            h.close(StreamId(i));
        }
        // A cell for a half-closed stream does not make it younger.
        h.on_cell(StreamId(1), &data()).unwrap();
        for i in MAX_HALF_CLOSED as u16 + 1..=MAX_HALF_CLOSED as u16 + 10 {
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
