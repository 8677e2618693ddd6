//! One circuit through this relay: the thin async shell around the sans-IO onion layer
//! ([`anonnet_crypto::RelayOnion`]) and the relay-message codec. Spec: `docs/protocol.md`
//! §4 (cells), §7 (layers), §8 (relay behaviour).
//!
//! Tasks per circuit, all stopped by one cancellation token:
//! - a reader per incoming QUIC stream (previous hop, and next hop once extended) that
//!   turns bytes into whole cells and pushes them into a bounded channel;
//! - the forward task: opens the layer of each cell from the previous hop, passes
//!   `FORWARD` cells on to the next hop and handles `DELIVER` messages (EXTEND, BEGIN,
//!   DATA, END);
//! - the backward task: wraps cells from the next hop and seals messages this relay
//!   originates (EXTENDED, CONNECTED, DATA, END), writing them to the previous hop;
//! - per exit stream, a connect-and-write task and a read task.
//!
//! The two directions never wait on each other, and every channel is bounded, so a slow
//! reader pushes back through QUIC flow control instead of filling memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anonnet_crypto::onion::relay_cell_tag;
use anonnet_crypto::{NodeId, RelayBackward, RelayForward};
use anonnet_dht::verify_record;
use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind};
use anonnet_wire::dht::{Record, RecordKind};
use anonnet_wire::flow::{
    CircuitDeliverWindow, SendmeTags, StreamDeliverWindow, CIRCUIT_INCREMENT, CIRCUIT_WINDOW,
    STREAM_INCREMENT, STREAM_WINDOW,
};
use anonnet_wire::relay::{
    COOKIE_LEN, DHT_NOT_FOUND, DHT_OK, DHT_REFUSED, DHT_UNAVAILABLE, ESTABLISH_INTRO_CONTEXT,
    INTRODUCE_BUSY, INTRODUCE_OK, INTRODUCE_UNKNOWN,
};
use anonnet_wire::{
    create_handshake_type, Create, CreateHybrid, Created, CreatedHybrid, Destroy, DestroyReason,
    EndReason, RelayCell, RelayMsg, StreamId, Target, BACKWARD_MESSAGE_MAX, CELL_LEN,
    HANDSHAKE_HYBRID_V2, HANDSHAKE_NTOR_V1, HYBRID_CELLS_LEN, HYBRID_HELLO_LEN, RELAY_HEADER_LEN,
};
use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::hs::{IntroEntry, Refused, RendezvousEntry, Splice};
use crate::RelayShared;

/// Batches of cells buffered between a leg reader and the task that consumes them: at
/// most `LEG_QUEUE` reads of up to [`READ_BATCH`] cells each.
const LEG_QUEUE: usize = 4;
/// Most cells a leg reader takes from QUIC in one read.
const READ_BATCH: usize = 32;
/// Most cells the backward task gathers into one QUIC write: the cells already queued when
/// it wakes up, so a lone cell is never delayed.
const WRITE_BATCH: usize = 32;
/// Messages buffered for the backward task (originated by this relay).
const BACKWARD_QUEUE: usize = 64;
/// `DATA` payloads buffered towards one exit TCP connection: a whole stream window, so a
/// client that respects flow control never makes the circuit wait on a slow destination.
const EXIT_WRITE_QUEUE: usize = STREAM_WINDOW as usize + 12;
/// Most `DATA` cells' worth of bytes an exit stream reads from its TCP connection at once
/// (about 16 KB with 1024-byte client cells): the bound on what one stream holds while it
/// waits for window.
const EXIT_READ_CELLS: usize = 16;
/// How long extending to the next relay may take (seconds).
const EXTEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `DESTROY` write may take when tearing down.
const DESTROY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Flow control of the `DATA` this relay exchanges as an exit (§6.4): the package window
/// towards the client (permits), the tags its circuit SENDMEs must echo, and the deliver
/// window for `DATA` from the client.
struct CircuitFlow {
    package: Arc<Semaphore>,
    tags: Mutex<SendmeTags>,
    deliver: Mutex<CircuitDeliverWindow>,
}

impl CircuitFlow {
    fn new() -> Self {
        CircuitFlow {
            package: Arc::new(Semaphore::new(CIRCUIT_WINDOW as usize)),
            tags: Mutex::new(SendmeTags::default()),
            deliver: Mutex::new(CircuitDeliverWindow::default()),
        }
    }
}

/// Shared between the tasks of one circuit: why it ended, and the token that ends it.
pub(crate) struct Teardown {
    pub(crate) token: CancellationToken,
    reason: Mutex<Option<DestroyReason>>,
}

impl Teardown {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Teardown {
            token,
            reason: Mutex::new(None),
        }
    }

    pub(crate) fn destroy(&self, reason: DestroyReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.token.cancel();
    }

    fn reason(&self) -> DestroyReason {
        self.reason
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or(DestroyReason::Finished)
    }
}

/// Whole cells of one leg, back to back: what a leg reader reads in one go (a cell of
/// `cell_len` bytes at every multiple of `cell_len`).
pub(crate) type CellBatch = BytesMut;

/// Read whole cells of `cell_len` bytes from `recv` into a channel, a batch of whole cells
/// per read. Ends on EOF, error or cancellation.
///
/// Reads take whatever QUIC has received, up to [`READ_BATCH`] cells at once, rather than
/// one `read_exact` per cell: each read locks the connection, and that per-cell cost was
/// the larger part of a relay's CPU per cell. A batch goes through the channel as one
/// item, with no allocation or copy per cell.
fn spawn_leg_reader(
    mut recv: RecvStream,
    cell_len: usize,
    tx: mpsc::Sender<CellBatch>,
    teardown: Arc<Teardown>,
) {
    tokio::spawn(async move {
        let mut staging = BytesMut::new();
        loop {
            staging.reserve((READ_BATCH * cell_len).saturating_sub(staging.len()));
            let read = tokio::select! {
                r = recv.read_buf(&mut staging) => r,
                () = teardown.token.cancelled() => break,
            };
            match read {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) => {
                    teardown.destroy(DestroyReason::ChannelClosed);
                    break;
                }
            }
            let whole = staging.len() - staging.len() % cell_len;
            if whole == 0 {
                continue;
            }
            if tx.send(staging.split_to(whole)).await.is_err() {
                break;
            }
        }
    });
}

pub(crate) async fn serve_leg(
    shared: Arc<RelayShared>,
    mut send: SendStream,
    mut recv: RecvStream,
    first: u8,
    peer: crate::PeerKey,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    let from_relay = peer.is_relay();
    let mut prefix = [first, 0, 0];
    let created = tokio::time::timeout(EXTEND_TIMEOUT, async {
        recv.read_exact(prefix.get_mut(1..)?).await.ok()?;
        let cell_len = Create::peek_cell_len(&prefix).ok()?;
        let mut cell = vec![0u8; cell_len];
        cell.get_mut(..Create::PREFIX_LEN)?.copy_from_slice(&prefix);
        recv.read_exact(cell.get_mut(Create::PREFIX_LEN..)?)
            .await
            .ok()?;
        match create_handshake_type(&cell)? {
            HANDSHAKE_NTOR_V1 => Some(CreateKind::Ntor(Create::decode(&cell).ok()?)),
            HANDSHAKE_HYBRID_V2 => {
                // A type-2 CREATE takes a second cell (§4.2).
                cell.resize(HYBRID_CELLS_LEN, 0);
                recv.read_exact(cell.get_mut(CELL_LEN..)?).await.ok()?;
                Some(CreateKind::Hybrid(CreateHybrid::decode(&cell).ok()?))
            }
            _ => None,
        }
    })
    .await;
    drop(pending);
    let cell_len = CELL_LEN;
    let Ok(Some(create)) = created else {
        debug!("leg closed before a valid CREATE");
        return;
    };
    let Some(_permit) = shared.circuit_permit(peer) else {
        debug!(from_relay, "circuit limit reached; refusing CREATE");
        if let Ok(d) = (Destroy {
            reason: DestroyReason::ResourceLimit,
        })
        .encode(cell_len)
        {
            let _ = send.write_all(&d).await;
        }
        return;
    };
    // The current onion key, or the previous one during its grace; any other is refused.
    let (bytes, keys, server_pk) = match answer_create(&shared, &create) {
        Ok(r) => r,
        Err(e) => {
            debug!("handshake refused: {e}");
            if let Ok(d) = (Destroy {
                reason: DestroyReason::Protocol,
            })
            .encode(cell_len)
            {
                let _ = send.write_all(&d).await;
            }
            return;
        }
    };
    if send.write_all(&bytes).await.is_err() {
        return;
    }
    shared
        .stats
        .circuits_created
        .fetch_add(1, Ordering::Relaxed);
    if !from_relay {
        shared
            .stats
            .circuits_from_clients
            .fetch_add(1, Ordering::Relaxed);
    }
    debug!(from_relay, handshake = create.name(), "circuit created");
    let onion = anonnet_crypto::RelayOnion::new(&keys);
    drop(keys);
    run_circuit(shared, cell_len, onion, server_pk, send, recv).await;
}

/// A leg's `CREATE`, of either handshake type (§4.2).
enum CreateKind {
    Ntor(Create),
    Hybrid(CreateHybrid),
}

impl CreateKind {
    fn name(&self) -> &'static str {
        match self {
            CreateKind::Ntor(_) => "x25519",
            CreateKind::Hybrid(_) => "x25519+mlkem768",
        }
    }
}

/// Answer a `CREATE` with the onion key it names (current, or previous during its grace,
/// §2.1): the `CREATED` cells to send, the hop keys and the handshake key `Y`.
///
/// # Errors
/// The handshake's error: an unknown onion key or NodeId, a malformed hello, a
/// non-contributory key.
fn answer_create(
    shared: &RelayShared,
    create: &CreateKind,
) -> Result<(Vec<u8>, anonnet_crypto::HopKeys, [u8; 32]), anonnet_crypto::HandshakeError> {
    use anonnet_crypto::HandshakeError;
    match create {
        CreateKind::Ntor(c) => {
            let hello = anonnet_crypto::ClientHello {
                node_id: c.node_id,
                onion_key: c.onion_key,
                client_pk: c.client_pk,
            };
            let key = shared
                .onion_key_for(&c.onion_key)
                .ok_or(HandshakeError::WrongRelay)?;
            let (reply, keys) =
                anonnet_crypto::handshake::server_handshake(shared.node_id, &key, &hello)?;
            let bytes = Created {
                server_pk: reply.server_pk,
                auth: reply.auth,
            }
            .encode(CELL_LEN)
            .map_err(|_| HandshakeError::Malformed)?;
            Ok((bytes, keys, reply.server_pk))
        }
        CreateKind::Hybrid(c) => {
            let (_, onion_key) =
                anonnet_crypto::hello_names(&c.hello).ok_or(HandshakeError::Malformed)?;
            let key = shared
                .onion_key_for(&onion_key)
                .ok_or(HandshakeError::WrongRelay)?;
            let (reply, keys) =
                anonnet_crypto::server_hybrid_handshake(shared.node_id, &key, &c.hello)?;
            let mut server_pk = [0u8; 32];
            server_pk.copy_from_slice(reply.get(..32).ok_or(HandshakeError::Malformed)?);
            let bytes = CreatedHybrid { reply }
                .encode()
                .map_err(|_| HandshakeError::Malformed)?;
            Ok((bytes, keys, server_pk))
        }
    }
}

async fn run_circuit(
    shared: Arc<RelayShared>,
    cell_len: usize,
    onion: anonnet_crypto::RelayOnion,
    binding: [u8; 32],
    prev_send: SendStream,
    prev_recv: RecvStream,
) {
    let teardown = Arc::new(Teardown::new(shared.shutdown.child_token()));
    let (prev_tx, prev_rx) = mpsc::channel(LEG_QUEUE);
    spawn_leg_reader(prev_recv, cell_len, prev_tx, teardown.clone());
    let (next_tx, next_rx) = mpsc::channel(LEG_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(BACKWARD_QUEUE);
    let flow = Arc::new(CircuitFlow::new());
    let backward = tokio::spawn(
        BackwardTask {
            shared: shared.clone(),
            cell_len,
            layer: onion.backward,
            prev_send,
            next_rx,
            out_rx,
            flow: flow.clone(),
            teardown: teardown.clone(),
        }
        .run(),
    );
    let forward = ForwardTask {
        shared,
        cell_len,
        layer: onion.forward,
        next_send: None,
        forward_out: BytesMut::new(),
        next_tx: Some(next_tx),
        out: out_tx,
        streams: HashMap::new(),
        flow,
        teardown: teardown.clone(),
        hs: HsState {
            circuit: NEXT_CIRCUIT.fetch_add(1, Ordering::Relaxed),
            binding,
            splice: Arc::new(OnceLock::new()),
            intro_key: None,
            cookie: None,
            introductions: 0,
            dht_requests: Arc::new(Semaphore::new(DHT_REQUESTS_PER_CIRCUIT)),
        },
        pending_extend: None,
        closed_streams: ClosedStreams::default(),
    };
    forward.run(prev_rx).await;
    let _ = backward.await;
    debug!(reason = ?teardown.reason(), "circuit closed");
}

/// Write a `DESTROY` on `send` (best effort, bounded in time) and finish the stream.
async fn send_destroy(send: &mut SendStream, cell_len: usize, reason: DestroyReason) {
    if let Ok(cell) = (Destroy { reason }).encode(cell_len) {
        let _ = tokio::time::timeout(DESTROY_WRITE_TIMEOUT, send.write_all(&cell)).await;
    }
    let _ = send.finish();
}

/// The backward direction of a circuit: cells from the next hop and messages this relay
/// originates, sealed with this hop's layer and written to the previous hop.
struct BackwardTask {
    shared: Arc<RelayShared>,
    cell_len: usize,
    layer: RelayBackward,
    prev_send: SendStream,
    next_rx: mpsc::Receiver<CellBatch>,
    out_rx: mpsc::Receiver<RelayCell>,
    flow: Arc<CircuitFlow>,
    teardown: Arc<Teardown>,
}

impl BackwardTask {
    async fn run(mut self) {
        self.relay_cells().await;
        let reason = self.teardown.reason();
        send_destroy(&mut self.prev_send, self.cell_len, reason).await;
    }

    async fn relay_cells(&mut self) {
        let mut batch = BytesMut::new();
        loop {
            let first = tokio::select! {
                biased;
                () = self.teardown.token.cancelled() => break,
                Some(cells) = self.next_rx.recv() => Backward::Cells(cells),
                Some(msg) = self.out_rx.recv() => Backward::Message(msg),
                else => break,
            };
            // Seal the first item and whatever else is queued already, until WRITE_BATCH
            // cells or more, into one buffer: one QUIC write for all of them.
            let mut item = Some(first);
            let mut cells = 0;
            while let Some(it) = item.take() {
                match self.seal_into(it, &mut batch) {
                    Ok(n) => cells += n,
                    Err(reason) => {
                        self.teardown.destroy(reason);
                        return;
                    }
                }
                if cells >= WRITE_BATCH {
                    break;
                }
                item = match self.next_rx.try_recv() {
                    Ok(cells) => Some(Backward::Cells(cells)),
                    Err(_) => self.out_rx.try_recv().ok().map(Backward::Message),
                };
            }
            if batch.is_empty() {
                continue;
            }
            let chunk = batch.split().freeze();
            let written = tokio::select! {
                r = self.prev_send.write_chunk(chunk) => r.is_ok(),
                () = self.teardown.token.cancelled() => false,
            };
            if !written {
                self.teardown.destroy(DestroyReason::ChannelClosed);
                break;
            }
        }
    }

    /// Seal the cells from the next hop or one message of this relay and append the sealed
    /// cells to `batch` (padding from the next hop appends nothing). Returns how many
    /// cells were sealed.
    ///
    /// # Errors
    /// The reason to destroy the circuit: the next hop's `DESTROY`, a bad cell, or a
    /// failure to seal.
    fn seal_into(&mut self, item: Backward, batch: &mut BytesMut) -> Result<usize, DestroyReason> {
        let mut sealed = 0;
        match item {
            Backward::Cells(cells) => {
                // Each cell from the next hop (or from the other circuit of a rendezvous
                // join) gets this hop's wrap layer; its size does not change (§7.3).
                for cell in cells.chunks_exact(CELL_LEN) {
                    match cell.first().copied().map(CellCommand::from_byte) {
                        Some(Ok(CellCommand::Relay)) => {
                            let start = batch.len();
                            batch.extend_from_slice(cell);
                            let out = batch.get_mut(start..).ok_or(DestroyReason::Internal)?;
                            self.layer.wrap(out).map_err(|_| DestroyReason::Internal)?;
                            sealed += 1;
                        }
                        Some(Ok(CellCommand::Padding)) => {}
                        Some(Ok(CellCommand::Destroy)) => return Err(DestroyReason::ChannelClosed),
                        _ => return Err(DestroyReason::Protocol),
                    }
                }
            }
            Backward::Message(msg) => {
                let start = batch.len();
                batch.resize(start + CELL_LEN, 0);
                let cell = batch.get_mut(start..).ok_or(DestroyReason::Internal)?;
                let is_data = matches!(msg.msg, RelayMsg::Data(_));
                let len = cell
                    .get_mut(relay_layout::INNER..relay_layout::INNER + BACKWARD_MESSAGE_MAX)
                    .ok_or(DestroyReason::Internal)
                    .and_then(|inner| {
                        msg.encode_into(inner).map_err(|_| DestroyReason::Internal)
                    })?;
                let tag = self
                    .layer
                    .originate(cell, len)
                    .map_err(|_| DestroyReason::Internal)?;
                if is_data {
                    if let Ok(mut tags) = self.flow.tags.lock() {
                        tags.on_data_sent(tag);
                    }
                }
                sealed += 1;
            }
        }
        self.shared
            .stats
            .cells_backward
            .fetch_add(sealed as u64, Ordering::Relaxed);
        Ok(sealed)
    }
}

/// What the backward task seals: cells from the next hop (a batch of whole next-leg cells)
/// or a message this relay originates.
enum Backward {
    Cells(CellBatch),
    Message(RelayCell),
}

struct ExitSlot {
    data: mpsc::Sender<Bytes>,
    token: CancellationToken,
    /// Stream package window towards the client (permits).
    package: Arc<Semaphore>,
    /// Stream deliver window for `DATA` from the client.
    deliver: Arc<Mutex<StreamDeliverWindow>>,
}

/// Local numbering of circuits (registrations remember which circuit made them).
static NEXT_CIRCUIT: AtomicU64 = AtomicU64::new(1);
/// DHT requests (§13.6) one circuit may have running at once.
const DHT_REQUESTS_PER_CIRCUIT: usize = 2;
/// Introductions one client circuit may send (§13.4).
const INTRODUCTIONS_PER_CIRCUIT: u32 = 8;
/// Records one `DHT_RESULT` answer carries at most.
const DHT_RESULT_RECORDS: usize = 8;
/// Storage nodes a record published through a circuit goes to.
const DHT_REPLICAS: usize = 8;

/// A circuit's hidden-service state at this relay (§13).
struct HsState {
    circuit: u64,
    /// This hop's handshake key `Y`: what `ESTABLISH_INTRO` signatures bind to.
    binding: [u8; 32],
    /// Set once this circuit is joined to another at a rendezvous point.
    splice: Arc<OnceLock<Splice>>,
    /// The introduction key this circuit registered.
    intro_key: Option<[u8; 32]>,
    /// The rendezvous cookie this circuit registered.
    cookie: Option<[u8; COOKIE_LEN]>,
    /// `INTRODUCE1`s sent on this circuit.
    introductions: u32,
    /// Slots for running DHT requests.
    dht_requests: Arc<Semaphore>,
}

struct ForwardTask {
    shared: Arc<RelayShared>,
    cell_len: usize,
    layer: RelayForward,
    next_send: Option<SendStream>,
    /// Cells opened for the next hop, written in one QUIC write per batch from the
    /// previous hop.
    forward_out: BytesMut,
    /// Given to the next-hop reader once the circuit is extended.
    next_tx: Option<mpsc::Sender<CellBatch>>,
    out: mpsc::Sender<RelayCell>,
    streams: HashMap<StreamId, ExitSlot>,
    flow: Arc<CircuitFlow>,
    teardown: Arc<Teardown>,
    hs: HsState,
    /// An `EXTEND2` whose hello is still arriving in `HANDSHAKE_CONT`s (§6.2): the next
    /// relay's address and the hello so far (at most 1280 bytes).
    pending_extend: Option<(SocketAddr, Vec<u8>)>,
    /// Exit streams closed here whose in-flight cells from the client are tolerated.
    closed_streams: ClosedStreams,
}

/// Most closed streams whose in-flight cells a circuit tolerates (§6.6); the oldest is
/// forgotten first.
const MAX_CLOSED_STREAMS: usize = 512;

/// Exit streams a circuit closed or refused, with the cells from the client still
/// tolerated for each (§6.6): at most a stream window of `DATA`, the `SENDME`s such a window
/// earns, and one `END`. Any other cell for a stream the exit does not have is unexpected.
#[derive(Default)]
struct ClosedStreams {
    order: std::collections::VecDeque<StreamId>,
    /// Per stream: `DATA` cells and `SENDME`s seen since it closed.
    seen: HashMap<StreamId, (u32, u32)>,
}

impl ClosedStreams {
    fn insert(&mut self, id: StreamId) {
        if self.seen.contains_key(&id) {
            return;
        }
        if self.order.len() >= MAX_CLOSED_STREAMS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(id);
        self.seen.insert(id, (0, 0));
    }

    /// Forget `id` (its `END` arrived, or a new `BEGIN` reuses it); true if it was known.
    fn remove(&mut self, id: StreamId) -> bool {
        if self.seen.remove(&id).is_some() {
            self.order.retain(|s| *s != id);
            true
        } else {
            false
        }
    }

    fn tolerate_data(&mut self, id: StreamId) -> bool {
        self.seen.get_mut(&id).is_some_and(|(data, _)| {
            *data += 1;
            *data <= STREAM_WINDOW
        })
    }

    fn tolerate_sendme(&mut self, id: StreamId) -> bool {
        self.seen.get_mut(&id).is_some_and(|(_, sendmes)| {
            *sendmes += 1;
            *sendmes <= STREAM_WINDOW / STREAM_INCREMENT
        })
    }
}

/// Why the forward task must stop the circuit.
struct Violation(DestroyReason);

impl ForwardTask {
    async fn run(mut self, mut prev_rx: mpsc::Receiver<CellBatch>) {
        loop {
            let cells = tokio::select! {
                biased;
                () = self.teardown.token.cancelled() => break,
                c = prev_rx.recv() => c,
            };
            let Some(mut cells) = cells else { break };
            let mut handled = Ok(());
            while handled.is_ok() && cells.len() >= self.cell_len {
                let cell = cells.split_to(self.cell_len);
                handled = self.handle_cell(cell).await;
            }
            // Cells opened before a DESTROY or a bad cell still go to the next hop, as
            // they did when each was written on its own.
            let flushed = self.flush_forward().await;
            if let Err(Violation(reason)) = handled.and(flushed) {
                self.teardown.destroy(reason);
                break;
            }
        }
        self.teardown.destroy(DestroyReason::Finished);
        if let Some(key) = self.hs.intro_key.take() {
            let stats = &self.shared.stats;
            self.shared.hs.remove_intro(&key, self.hs.circuit, stats);
        }
        if let Some(cookie) = self.hs.cookie.take() {
            self.shared.hs.remove_rendezvous(&cookie, self.hs.circuit);
        }
        for (_, slot) in self.streams.drain() {
            slot.token.cancel();
        }
        if let Some(mut next) = self.next_send.take() {
            send_destroy(&mut next, CELL_LEN, self.teardown.reason()).await;
        }
    }

    /// Write the cells gathered for the next hop, if any, in one QUIC write.
    ///
    /// # Errors
    /// [`DestroyReason::ChannelClosed`] when the next leg is gone.
    async fn flush_forward(&mut self) -> Result<(), Violation> {
        if self.forward_out.is_empty() {
            return Ok(());
        }
        let chunk = self.forward_out.split().freeze();
        let next = self
            .next_send
            .as_mut()
            .ok_or(Violation(DestroyReason::Protocol))?;
        let written = tokio::select! {
            r = next.write_chunk(chunk) => r.is_ok(),
            () = self.teardown.token.cancelled() => false,
        };
        if written {
            Ok(())
        } else {
            Err(Violation(DestroyReason::ChannelClosed))
        }
    }

    async fn handle_cell(&mut self, mut cell: BytesMut) -> Result<(), Violation> {
        let command = cell
            .first()
            .copied()
            .map(CellCommand::from_byte)
            .and_then(Result::ok);
        match command {
            Some(CellCommand::Relay) => {}
            Some(CellCommand::Padding) => return Ok(()),
            Some(CellCommand::Destroy) => return Err(Violation(DestroyReason::Requested)),
            _ => return Err(Violation(DestroyReason::Protocol)),
        }
        let kind = self.layer.open_forward(&mut cell).map_err(|e| {
            anonnet_net::warn_limited!("destroying circuit: {e}");
            self.shared
                .stats
                .cells_rejected
                .fetch_add(1, Ordering::Relaxed);
            Violation(DestroyReason::Protocol)
        })?;
        self.shared
            .stats
            .cells_forward
            .fetch_add(1, Ordering::Relaxed);
        match kind {
            LayerKind::Forward if self.next_send.is_none() => {
                // The end of a circuit joined at this rendezvous point: the other circuit's
                // backward task wraps the cell as if it came from its next hop (§13.5).
                // `open_forward` already made it the next leg's cell.
                let splice = self
                    .hs
                    .splice
                    .get()
                    .ok_or(Violation(DestroyReason::Protocol))?;
                let sent = tokio::select! {
                    r = splice.backward.send(cell) => r.is_ok(),
                    () = self.teardown.token.cancelled() => true,
                    () = splice.teardown.token.cancelled() => false,
                };
                if !sent {
                    return Err(Violation(DestroyReason::ChannelClosed));
                }
                Ok(())
            }
            LayerKind::Forward => {
                // Re-padded to the same size by `open_forward`; gathered and written once
                // per batch (flush_forward).
                self.forward_out.extend_from_slice(&cell);
                Ok(())
            }
            LayerKind::Deliver => {
                // What this hop does with a message may wait (EXTEND, a full exit
                // stream): cells already opened for the next hop go first.
                self.flush_forward().await?;
                let tag = relay_cell_tag(&cell).unwrap_or_default();
                let inner = cell.freeze().slice(relay_layout::INNER..);
                let msg = RelayCell::decode(&inner).map_err(|e| {
                    anonnet_net::warn_limited!("destroying circuit: bad relay message: {e}");
                    Violation(DestroyReason::Protocol)
                })?;
                self.handle_message(msg, tag).await
            }
        }
    }

    async fn send_back(&self, stream_id: StreamId, msg: RelayMsg) {
        let _ = self.out.send(RelayCell::new(stream_id, msg)).await;
    }

    async fn handle_message(&mut self, cell: RelayCell, tag: [u8; 16]) -> Result<(), Violation> {
        let id = cell.stream_id;
        match cell.msg {
            RelayMsg::Extend {
                node_id,
                addr,
                onion_key,
                client_pk,
            } => {
                if self.next_send.is_some() || self.next_tx.is_none() {
                    return Err(Violation(DestroyReason::Protocol));
                }
                let hello = anonnet_crypto::ClientHello {
                    node_id,
                    onion_key,
                    client_pk,
                };
                let create = Create {
                    cell_len: CELL_LEN as u16,
                    node_id: hello.node_id,
                    onion_key: hello.onion_key,
                    client_pk: hello.client_pk,
                }
                .encode()
                .map_err(|_| Violation(DestroyReason::Internal))?;
                let extended = self.extend(addr, NodeId(node_id), create, CELL_LEN, |c| {
                    Created::decode(c).is_ok()
                });
                let reply = match tokio::time::timeout(EXTEND_TIMEOUT, extended).await {
                    Ok(Ok(cells)) => match Created::decode(&cells) {
                        Ok(created) => RelayMsg::Extended {
                            server_pk: created.server_pk,
                            auth: created.auth,
                        },
                        Err(_) => RelayMsg::Truncated(DestroyReason::Protocol),
                    },
                    Ok(Err(reason)) => RelayMsg::Truncated(reason),
                    Err(_) => RelayMsg::Truncated(DestroyReason::Timeout),
                };
                self.send_back(StreamId::CIRCUIT, reply).await;
                Ok(())
            }
            RelayMsg::Extend2 {
                addr,
                handshake_type,
                part,
            } => {
                if self.next_send.is_some()
                    || self.next_tx.is_none()
                    || self.pending_extend.is_some()
                    || handshake_type != HANDSHAKE_HYBRID_V2
                    || part.len() > HYBRID_HELLO_LEN
                {
                    return Err(Violation(DestroyReason::Protocol));
                }
                self.pending_extend = Some((addr, part.to_vec()));
                self.extend_hybrid_if_complete().await
            }
            RelayMsg::HandshakeCont(part) => {
                let Some((_, hello)) = self.pending_extend.as_mut() else {
                    return Err(Violation(DestroyReason::Protocol));
                };
                if hello.len() + part.len() > HYBRID_HELLO_LEN {
                    return Err(Violation(DestroyReason::Protocol));
                }
                hello.extend_from_slice(&part);
                self.extend_hybrid_if_complete().await
            }
            RelayMsg::Begin { target, port } => {
                // Streams whose exit side ended are forgotten here (the client does not
                // answer an END), so their ids may be reused.
                let closed = &mut self.closed_streams;
                self.streams.retain(|sid, s| {
                    let open = !s.token.is_cancelled();
                    if !open {
                        closed.insert(*sid);
                    }
                    open
                });
                if self.streams.contains_key(&id) {
                    return Err(Violation(DestroyReason::Protocol));
                }
                self.closed_streams.remove(id);
                let Some(policy) = self.shared.exit_policy.clone() else {
                    self.closed_streams.insert(id);
                    self.send_back(id, RelayMsg::End(EndReason::ExitPolicy))
                        .await;
                    return Ok(());
                };
                if self.streams.len() >= self.shared.limits.max_streams_per_circuit {
                    self.closed_streams.insert(id);
                    self.send_back(id, RelayMsg::End(EndReason::ResourceLimit))
                        .await;
                    return Ok(());
                }
                let (tx, rx) = mpsc::channel(EXIT_WRITE_QUEUE);
                let token = self.teardown.token.child_token();
                let package = Arc::new(Semaphore::new(STREAM_WINDOW as usize));
                let deliver = Arc::new(Mutex::new(StreamDeliverWindow::default()));
                self.streams.insert(
                    id,
                    ExitSlot {
                        data: tx,
                        token: token.clone(),
                        package: package.clone(),
                        deliver: deliver.clone(),
                    },
                );
                tokio::spawn(
                    exit_stream(
                        self.shared.clone(),
                        policy,
                        id,
                        target,
                        port,
                        rx,
                        self.out.clone(),
                        ExitTokens {
                            stream: token,
                            circuit: self.teardown.token.clone(),
                        },
                        ExitWindows {
                            circuit: self.flow.package.clone(),
                            stream: package,
                            deliver,
                        },
                        RelayCell::max_payload(BACKWARD_MESSAGE_MAX),
                    )
                    .instrument(tracing::debug_span!("exit_stream", stream = id.0)),
                );
                Ok(())
            }
            RelayMsg::Data(data) => {
                // Every DATA counts for the circuit window, even for a stream we forgot.
                let due = self
                    .flow
                    .deliver
                    .lock()
                    .map_err(|_| Violation(DestroyReason::Internal))?
                    .on_data(tag);
                if let Some(t) = due {
                    self.send_back(StreamId::CIRCUIT, RelayMsg::Sendme(Some(t)))
                        .await;
                }
                if let Some(slot) = self.streams.get(&id) {
                    slot.deliver
                        .lock()
                        .map_err(|_| Violation(DestroyReason::Internal))?
                        .on_data()
                        .map_err(|e| {
                            anonnet_net::warn_limited!("destroying circuit: stream {}: {e}", id.0);
                            Violation(DestroyReason::Protocol)
                        })?;
                    let sent = tokio::select! {
                        r = slot.data.send(data) => r.is_ok(),
                        () = self.teardown.token.cancelled() => true,
                    };
                    if !sent {
                        // The exit side already ended; its END is on the way back.
                        self.streams.remove(&id);
                        self.closed_streams.insert(id);
                    }
                    return Ok(());
                }
                // DATA for a stream we closed crossed our END: tolerated up to a stream
                // window (§6.6); for a stream never opened it is a violation.
                if self.closed_streams.tolerate_data(id) {
                    Ok(())
                } else {
                    Err(self.unexpected("DATA for a stream it does not have"))
                }
            }
            RelayMsg::End(_) => {
                // Dropping the slot closes the data channel: the writer sends what is
                // queued, then closes the connection. Cancelling stops the reader.
                if let Some(slot) = self.streams.remove(&id) {
                    slot.token.cancel();
                    Ok(())
                } else if self.closed_streams.remove(id) {
                    Ok(())
                } else {
                    Err(self.unexpected("END for a stream it does not have"))
                }
            }
            // No padding is negotiated: a DROP is a cell nobody should send (§6.6).
            RelayMsg::Drop => Err(self.unexpected("DROP")),
            RelayMsg::Sendme(Some(echo)) => {
                self.flow
                    .tags
                    .lock()
                    .map_err(|_| Violation(DestroyReason::Internal))?
                    .on_sendme(&echo)
                    .map_err(|e| {
                        anonnet_net::warn_limited!("destroying circuit: {e}");
                        Violation(DestroyReason::Protocol)
                    })?;
                self.flow.package.add_permits(CIRCUIT_INCREMENT as usize);
                Ok(())
            }
            RelayMsg::Sendme(None) => {
                if let Some(slot) = self.streams.get(&id) {
                    let inc = STREAM_INCREMENT as usize;
                    if slot.package.available_permits() + inc > STREAM_WINDOW as usize {
                        anonnet_net::warn_limited!(
                            "destroying circuit: stream {}: unexpected SENDME",
                            id.0
                        );
                        return Err(Violation(DestroyReason::Protocol));
                    }
                    slot.package.add_permits(inc);
                    Ok(())
                } else if self.closed_streams.tolerate_sendme(id) {
                    Ok(())
                } else {
                    Err(self.unexpected("SENDME for a stream it does not have"))
                }
            }
            RelayMsg::EstablishIntro {
                auth_key,
                signature,
            } => self.establish_intro(auth_key, &signature).await,
            RelayMsg::Introduce1 { auth_key, sealed } => self.introduce(auth_key, sealed).await,
            RelayMsg::EstablishRendezvous { cookie } => self.establish_rendezvous(cookie).await,
            RelayMsg::Rendezvous1 {
                cookie,
                server_pk,
                auth,
            } => self.rendezvous(cookie, server_pk, auth).await,
            RelayMsg::DhtFetch { key, kind } => {
                self.dht_request(DhtRequest::Fetch { key, kind }).await;
                Ok(())
            }
            RelayMsg::DhtStore { key, kind, body } => {
                self.dht_request(DhtRequest::Store { key, kind, body })
                    .await;
                Ok(())
            }
            RelayMsg::Connected
            | RelayMsg::Extended { .. }
            | RelayMsg::Extended2(_)
            | RelayMsg::Truncated(_)
            | RelayMsg::Introduce2 { .. }
            | RelayMsg::Rendezvous2 { .. }
            | RelayMsg::IntroEstablished
            | RelayMsg::RendezvousEstablished
            | RelayMsg::IntroduceAck(_)
            | RelayMsg::DhtResult { .. } => Err(Violation(DestroyReason::Protocol)),
        }
    }

    /// A cell this relay did not expect (§6.6): counted, logged (rate-limited), and the
    /// circuit is destroyed.
    fn unexpected(&self, what: &str) -> Violation {
        self.shared
            .stats
            .cells_unexpected
            .fetch_add(1, Ordering::Relaxed);
        anonnet_net::warn_limited!("destroying circuit: unexpected {what}");
        Violation(DestroyReason::Protocol)
    }

    /// True when this relay is the last hop and the circuit has no other role yet: the
    /// only state in which it may become an introduction or rendezvous circuit.
    fn is_bare_end(&self) -> bool {
        self.next_send.is_none()
            && self.next_tx.is_some()
            && self.streams.is_empty()
            && self.hs.intro_key.is_none()
            && self.hs.cookie.is_none()
            && self.hs.splice.get().is_none()
    }

    /// `ESTABLISH_INTRO` (§13.2): check the signature over this circuit's binding, then
    /// register the key.
    async fn establish_intro(
        &mut self,
        auth_key: [u8; 32],
        signature: &[u8; 64],
    ) -> Result<(), Violation> {
        if !self.is_bare_end() {
            return Err(Violation(DestroyReason::Protocol));
        }
        let mut signed = Vec::with_capacity(ESTABLISH_INTRO_CONTEXT.len() + 64);
        signed.extend_from_slice(ESTABLISH_INTRO_CONTEXT);
        signed.extend_from_slice(&auth_key);
        signed.extend_from_slice(&self.hs.binding);
        if anonnet_crypto::verify_signature(&auth_key, &signed, signature).is_err() {
            anonnet_net::warn_limited!(
                "destroying circuit: ESTABLISH_INTRO signature does not verify"
            );
            return Err(Violation(DestroyReason::Protocol));
        }
        let entry = IntroEntry {
            circuit: self.hs.circuit,
            out: self.out.clone(),
            area: BACKWARD_MESSAGE_MAX,
        };
        if self
            .shared
            .hs
            .add_intro(auth_key, entry, &self.shared.stats)
            .is_err()
        {
            anonnet_net::warn_limited!(
                "introduction-point limit reached; refusing ESTABLISH_INTRO"
            );
            return Err(Violation(DestroyReason::ResourceLimit));
        }
        self.hs.intro_key = Some(auth_key);
        debug!(circuit = self.hs.circuit, "introduction point established");
        self.send_back(StreamId::CIRCUIT, RelayMsg::IntroEstablished)
            .await;
        Ok(())
    }

    /// `INTRODUCE1` (§13.4): pass it to the service as `INTRODUCE2`, answer the client.
    async fn introduce(&mut self, auth_key: [u8; 32], sealed: Bytes) -> Result<(), Violation> {
        if self.next_send.is_some() || self.hs.intro_key.is_some() {
            return Err(Violation(DestroyReason::Protocol));
        }
        self.hs.introductions += 1;
        let status = if self.hs.introductions > INTRODUCTIONS_PER_CIRCUIT {
            INTRODUCE_BUSY
        } else {
            match self.shared.hs.intro(&auth_key) {
                None => INTRODUCE_UNKNOWN,
                Some((_, area)) if RELAY_HEADER_LEN + 32 + sealed.len() > area => {
                    // It would not fit the service's circuit: refuse, never break it.
                    return Err(Violation(DestroyReason::Protocol));
                }
                Some((service, _)) => {
                    let msg = RelayCell::new(
                        StreamId::CIRCUIT,
                        RelayMsg::Introduce2 { auth_key, sealed },
                    );
                    match service.try_send(msg) {
                        Ok(()) => {
                            self.shared
                                .stats
                                .introductions
                                .fetch_add(1, Ordering::Relaxed);
                            INTRODUCE_OK
                        }
                        Err(_) => INTRODUCE_BUSY,
                    }
                }
            }
        };
        self.send_back(StreamId::CIRCUIT, RelayMsg::IntroduceAck(status))
            .await;
        Ok(())
    }

    /// `ESTABLISH_RENDEZVOUS` (§13.3): park this circuit under the cookie.
    async fn establish_rendezvous(&mut self, cookie: [u8; COOKIE_LEN]) -> Result<(), Violation> {
        if !self.is_bare_end() {
            return Err(Violation(DestroyReason::Protocol));
        }
        let backward = self
            .next_tx
            .take()
            .ok_or(Violation(DestroyReason::Internal))?;
        let entry = RendezvousEntry {
            circuit: self.hs.circuit,
            cell_len: self.cell_len,
            out: self.out.clone(),
            backward,
            splice: self.hs.splice.clone(),
            teardown: self.teardown.clone(),
        };
        match self.shared.hs.add_rendezvous(cookie, entry) {
            Ok(()) => {}
            Err(Refused::Full) => return Err(Violation(DestroyReason::ResourceLimit)),
            Err(Refused::Duplicate) => return Err(Violation(DestroyReason::Protocol)),
        }
        self.hs.cookie = Some(cookie);
        self.send_back(StreamId::CIRCUIT, RelayMsg::RendezvousEstablished)
            .await;
        Ok(())
    }

    /// `RENDEZVOUS1` (§13.5): join this (service) circuit to the client circuit waiting
    /// under the cookie and send the client `RENDEZVOUS2`.
    async fn rendezvous(
        &mut self,
        cookie: [u8; COOKIE_LEN],
        server_pk: [u8; 32],
        auth: [u8; 32],
    ) -> Result<(), Violation> {
        if !self.is_bare_end() {
            return Err(Violation(DestroyReason::Protocol));
        }
        let Some(client) = self.shared.hs.take_rendezvous(&cookie) else {
            debug!("RENDEZVOUS1 for an unknown cookie");
            return Err(Violation(DestroyReason::Protocol));
        };
        if client.cell_len != self.cell_len {
            // The circuits arrive at different depths: their cells cannot be spliced.
            client.teardown.destroy(DestroyReason::Protocol);
            return Err(Violation(DestroyReason::Protocol));
        }
        let own_backward = self
            .next_tx
            .take()
            .ok_or(Violation(DestroyReason::Internal))?;
        let _ = client.splice.set(Splice {
            backward: own_backward,
            teardown: self.teardown.clone(),
        });
        let _ = self.hs.splice.set(Splice {
            backward: client.backward.clone(),
            teardown: client.teardown.clone(),
        });
        // Either circuit ending ends the other.
        let (a, b) = (self.teardown.clone(), client.teardown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = a.token.cancelled() => b.destroy(DestroyReason::ChannelClosed),
                () = b.token.cancelled() => a.destroy(DestroyReason::ChannelClosed),
            }
        });
        self.shared
            .stats
            .rendezvous_joined
            .fetch_add(1, Ordering::Relaxed);
        debug!(
            service = self.hs.circuit,
            client = client.circuit,
            "rendezvous: circuits joined"
        );
        let _ = client
            .out
            .send(RelayCell::new(
                StreamId::CIRCUIT,
                RelayMsg::Rendezvous2 { server_pk, auth },
            ))
            .await;
        Ok(())
    }

    /// `DHT_FETCH` / `DHT_STORE` (§13.6): run the request in its own task (bounded per
    /// circuit and per relay) and answer with `DHT_RESULT`.
    async fn dht_request(&mut self, request: DhtRequest) {
        let unavailable = RelayMsg::DhtResult {
            status: DHT_UNAVAILABLE,
            index: 0,
            count: 0,
            kind: 0,
            body: Bytes::new(),
        };
        let permits = (
            self.hs.dht_requests.clone().try_acquire_owned(),
            self.shared.dht_requests.clone().try_acquire_owned(),
        );
        let (Ok(circuit_slot), Ok(relay_slot)) = permits else {
            self.send_back(StreamId::CIRCUIT, unavailable).await;
            return;
        };
        let shared = self.shared.clone();
        let out = self.out.clone();
        let token = self.teardown.token.clone();
        let area = BACKWARD_MESSAGE_MAX;
        tokio::spawn(async move {
            let _slots = (circuit_slot, relay_slot);
            let answers = tokio::select! {
                a = serve_dht_request(&shared, request, area) => a,
                () = token.cancelled() => return,
            };
            for msg in answers {
                if out
                    .send(RelayCell::new(StreamId::CIRCUIT, msg))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }

    /// Once an `EXTEND2` and its `HANDSHAKE_CONT`s have brought the whole 1280-byte hello
    /// (§6.2), extend with a type-2 `CREATE` and answer `EXTENDED2` (+ `HANDSHAKE_CONT`) or
    /// `TRUNCATED`.
    ///
    /// # Errors
    /// None today: a failed extension is answered, not a violation.
    async fn extend_hybrid_if_complete(&mut self) -> Result<(), Violation> {
        if self
            .pending_extend
            .as_ref()
            .is_none_or(|(_, hello)| hello.len() < HYBRID_HELLO_LEN)
        {
            return Ok(());
        }
        let Some((addr, hello)) = self.pending_extend.take() else {
            return Ok(());
        };
        let Some((node_id, _)) = anonnet_crypto::hello_names(&hello) else {
            return Err(Violation(DestroyReason::Protocol));
        };
        let create = CreateHybrid { hello }
            .encode()
            .map_err(|_| Violation(DestroyReason::Internal))?;
        let extended = self.extend(addr, NodeId(node_id), create, HYBRID_CELLS_LEN, |c| {
            CreatedHybrid::decode(c).is_ok()
        });
        let reply = match tokio::time::timeout(EXTEND_TIMEOUT, extended).await {
            Ok(Ok(cells)) => match CreatedHybrid::decode(&cells) {
                Ok(created) => Ok(created.reply),
                Err(_) => Err(DestroyReason::Protocol),
            },
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(DestroyReason::Timeout),
        };
        match reply {
            Ok(reply) => {
                // First part in EXTENDED2, the rest in HANDSHAKE_CONT (§6.2).
                let first = RelayCell::max_payload(BACKWARD_MESSAGE_MAX).min(reply.len());
                let (a, b) = reply.split_at(first);
                self.send_back(
                    StreamId::CIRCUIT,
                    RelayMsg::Extended2(Bytes::copy_from_slice(a)),
                )
                .await;
                for chunk in b.chunks(RelayCell::max_payload(BACKWARD_MESSAGE_MAX)) {
                    self.send_back(
                        StreamId::CIRCUIT,
                        RelayMsg::HandshakeCont(Bytes::copy_from_slice(chunk)),
                    )
                    .await;
                }
            }
            Err(reason) => {
                self.send_back(StreamId::CIRCUIT, RelayMsg::Truncated(reason))
                    .await;
            }
        }
        Ok(())
    }

    /// Open the next leg: dial the relay (pinning its NodeId), send the `CREATE` cells
    /// `create`, and read `reply_len` bytes of `CREATED` cells (1024 for type 1, 2048 for
    /// type 2), which `valid` must accept before the leg is kept. A `DESTROY` as the first
    /// cell ends it early with its reason.
    async fn extend(
        &mut self,
        addr: SocketAddr,
        node_id: NodeId,
        create: Vec<u8>,
        reply_len: usize,
        valid: fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, DestroyReason> {
        if node_id == self.shared.node_id {
            return Err(DestroyReason::Protocol);
        }
        let link = self.shared.links.get(addr, node_id).await.map_err(|e| {
            debug!("extend to {addr} failed: {e}");
            DestroyReason::ConnectFailed
        })?;
        let (mut send, mut recv) = link
            .open_bi()
            .await
            .map_err(|_| DestroyReason::ConnectFailed)?;
        send.write_all(&create)
            .await
            .map_err(|_| DestroyReason::ConnectFailed)?;
        let mut reply = vec![0u8; reply_len];
        let (first, rest) = reply.split_at_mut(CELL_LEN.min(reply_len));
        recv.read_exact(first)
            .await
            .map_err(|_| DestroyReason::ConnectFailed)?;
        if first.first() == Some(&(CellCommand::Destroy as u8)) {
            return Err(Destroy::decode(first)
                .map(|d| d.reason)
                .unwrap_or(DestroyReason::Protocol));
        }
        recv.read_exact(rest)
            .await
            .map_err(|_| DestroyReason::ConnectFailed)?;
        if !valid(&reply) {
            return Err(DestroyReason::Protocol);
        }
        let tx = self.next_tx.take().ok_or(DestroyReason::Internal)?;
        spawn_leg_reader(recv, CELL_LEN, tx, self.teardown.clone());
        self.next_send = Some(send);
        self.shared
            .stats
            .circuits_extended
            .fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }
}

/// A DHT request made through a circuit (§13.6).
enum DhtRequest {
    Fetch {
        key: [u8; 32],
        kind: u8,
    },
    Store {
        key: [u8; 32],
        kind: u8,
        body: Bytes,
    },
}

/// Run `request` on the relay's DHT node; the `DHT_RESULT` messages to send back, each
/// fitting an inner area of `area` bytes.
async fn serve_dht_request(
    shared: &RelayShared,
    request: DhtRequest,
    area: usize,
) -> Vec<RelayMsg> {
    let result = |status, count, kind, body| RelayMsg::DhtResult {
        status,
        index: 0,
        count,
        kind,
        body,
    };
    let now = crate::now_unix();
    match request {
        DhtRequest::Fetch { key, kind } => {
            shared.stats.dht_fetches.fetch_add(1, Ordering::Relaxed);
            let Ok(kind) = RecordKind::from_byte(kind) else {
                return vec![result(DHT_NOT_FOUND, 0, 0, Bytes::new())];
            };
            // Room for the record body behind the 4-byte result header.
            let room = RelayCell::max_payload(area).saturating_sub(4);
            let records: Vec<Record> = shared
                .dht
                .find_records(key)
                .await
                .into_iter()
                .filter(|r| r.kind == kind && r.body.len() <= room)
                .filter(|r| verify_record(&key, r, now).is_ok())
                .take(DHT_RESULT_RECORDS)
                .collect();
            if records.is_empty() {
                return vec![result(DHT_NOT_FOUND, 0, 0, Bytes::new())];
            }
            let count = records.len() as u8;
            records
                .into_iter()
                .enumerate()
                .map(|(i, r)| RelayMsg::DhtResult {
                    status: DHT_OK,
                    index: i as u8,
                    count,
                    kind: r.kind.to_byte(),
                    body: Bytes::from(r.body),
                })
                .collect()
        }
        DhtRequest::Store { key, kind, body } => {
            shared.stats.dht_stores.fetch_add(1, Ordering::Relaxed);
            let record = RecordKind::from_byte(kind).map(|kind| Record {
                kind,
                body: body.to_vec(),
            });
            let Ok(record) = record else {
                return vec![result(DHT_REFUSED, 0, kind, Bytes::new())];
            };
            if verify_record(&key, &record, now).is_err() {
                return vec![result(DHT_REFUSED, 0, kind, Bytes::new())];
            }
            let stored = shared.dht.store_record(key, record, DHT_REPLICAS).await;
            let status = if stored > 0 { DHT_OK } else { DHT_REFUSED };
            vec![result(
                status,
                u8::try_from(stored).unwrap_or(u8::MAX),
                kind,
                Bytes::new(),
            )]
        }
    }
}

/// Map a connect error to the END reason the client turns into a SOCKS reply.
fn end_reason_for(e: &std::io::Error) -> EndReason {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => EndReason::ConnectRefused,
        ErrorKind::TimedOut => EndReason::Timeout,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => EndReason::NoRoute,
        ErrorKind::ConnectionReset => EndReason::ConnReset,
        _ => EndReason::Misc,
    }
}

/// The two ways an exit stream is stopped.
struct ExitTokens {
    /// Cancelled when the stream is over for reading: `END` from the client, the
    /// destination's EOF, a failed connect. The forward task forgets cancelled streams.
    stream: CancellationToken,
    /// Cancelled when the whole circuit goes: also stops the writer at once.
    circuit: CancellationToken,
}

/// The flow-control windows an exit stream works with (§6.4).
struct ExitWindows {
    /// The circuit's package window towards the client.
    circuit: Arc<Semaphore>,
    /// This stream's package window towards the client.
    stream: Arc<Semaphore>,
    /// This stream's deliver window for `DATA` from the client.
    deliver: Arc<Mutex<StreamDeliverWindow>>,
}

/// Resolve `host` with the system resolver on tokio's blocking pool, at most
/// [`Limits::max_exit_dns_lookups`](crate::Limits::max_exit_dns_lookups) at once: the slot
/// moves into the blocking task, so a lookup the stream stopped waiting for still holds
/// it until `getaddrinfo` returns.
///
/// # Errors
/// [`EndReason::ResolveFailed`] when the name does not resolve or the relay shuts down.
async fn resolve(
    slots: &Arc<tokio::sync::Semaphore>,
    host: String,
    port: u16,
) -> Result<Vec<SocketAddr>, EndReason> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| EndReason::ResolveFailed)?;
    let lookup = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map(Iterator::collect::<Vec<_>>)
    });
    match lookup.await {
        Ok(Ok(addrs)) => Ok(addrs),
        _ => Err(EndReason::ResolveFailed),
    }
}

/// Resolve (at the exit), apply the exit policy to the resolved address, connect, then
/// pump bytes both ways until either side ends.
#[allow(clippy::too_many_arguments)]
async fn exit_stream(
    shared: Arc<RelayShared>,
    policy: Arc<crate::ExitPolicy>,
    id: StreamId,
    target: Target,
    port: u16,
    mut data_rx: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<RelayCell>,
    tokens: ExitTokens,
    windows: ExitWindows,
    max_payload: usize,
) {
    // However this function ends, the stream slot is released.
    let token = tokens.stream.clone();
    let _release = tokens.stream.drop_guard();
    let send = |msg: RelayMsg| {
        let out = out.clone();
        async move {
            let _ = out.send(RelayCell::new(id, msg)).await;
        }
    };
    let connect = async {
        let addrs: Vec<SocketAddr> = match &target {
            Target::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Target::Host(host) => resolve(&shared.dns_lookups, host.clone(), port).await?,
        };
        if addrs.is_empty() {
            return Err(EndReason::ResolveFailed);
        }
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| policy.allows(a.ip(), a.port()))
            .collect();
        if allowed.is_empty() {
            return Err(EndReason::ExitPolicy);
        }
        let mut last = EndReason::Misc;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = end_reason_for(&e),
            }
        }
        Err(last)
    };
    let result = tokio::select! {
        r = tokio::time::timeout(shared.limits.connect_timeout, connect) => r.unwrap_or(Err(EndReason::Timeout)),
        () = token.cancelled() => return,
    };
    let tcp = match result {
        Ok(tcp) => tcp,
        Err(reason) => {
            debug!(stream = id.0, ?reason, "exit connect failed");
            send(RelayMsg::End(reason)).await;
            return;
        }
    };
    shared.stats.exit_streams.fetch_add(1, Ordering::Relaxed);
    let _ = tcp.set_nodelay(true);
    send(RelayMsg::Connected).await;
    let (rd, mut wr) = tcp.into_split();
    // The writer sends DATA in order. When the stream ends for reading (the client's END,
    // or the destination's EOF answered with our END) it sends what is already queued and
    // closes; when the circuit goes it stops at once.
    let circuit_token = tokens.circuit;
    let stream_token = token.clone();
    let deliver = windows.deliver.clone();
    let sendme_out = out.clone();
    let writer = tokio::spawn(async move {
        let mut draining = false;
        loop {
            let data = if draining {
                data_rx.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    () = circuit_token.cancelled() => None,
                    d = data_rx.recv() => d,
                    () = stream_token.cancelled() => {
                        draining = true;
                        continue;
                    }
                }
            };
            let Some(data) = data else { break };
            if wr.write_all(&data).await.is_err() {
                break;
            }
            // Written to the destination: consumed. Every 50 cells earn the client a
            // stream SENDME.
            let due = deliver.lock().map(|mut d| d.on_consumed()).unwrap_or(false);
            if due {
                let sendme = RelayCell::new(id, RelayMsg::Sendme(None));
                let _ = sendme_out.send(sendme).await;
            }
        }
        let _ = wr.shutdown().await;
    });
    let reason = 'read: loop {
        // Read first, then take the window permits for each DATA cell the bytes become. A
        // permit is spent only on a cell actually queued: taking them before the read
        // lost one cell of circuit window at every stream's EOF (and on a read error or
        // an END from the client), so after ~1,000 short streams a circuit could carry no
        // more DATA and every later stream on it hung after CONNECTED.
        //
        // One read takes up to EXIT_READ_CELLS cells' worth (one syscall per 998-byte
        // cell was a large part of the exit's CPU), into a buffer allocated only once the
        // socket is readable, so an idle stream holds none; the cells are slices of it.
        let ready = tokio::select! {
            r = rd.readable() => r,
            () = token.cancelled() => break None,
        };
        if let Err(e) = ready {
            break Some(end_reason_for(&e));
        }
        let mut buf = BytesMut::with_capacity(EXIT_READ_CELLS * max_payload);
        match rd.try_read_buf(&mut buf) {
            Ok(0) => break Some(EndReason::Done),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => break Some(end_reason_for(&e)),
        }
        while !buf.is_empty() {
            // While a window is empty the exit holds these cells and reads no more, so
            // the destination's TCP window fills. The stream window first: waiting on it
            // holds nothing the circuit's other streams need.
            let permits = tokio::select! {
                p = async {
                    let s = windows.stream.acquire().await.ok()?;
                    let c = windows.circuit.acquire().await.ok()?;
                    Some((s, c))
                } => p,
                () = token.cancelled() => break 'read None,
            };
            let Some((stream_permit, circuit_permit)) = permits else {
                break 'read None;
            };
            let chunk = buf.split_to(buf.len().min(max_payload)).freeze();
            let n = chunk.len();
            let sent = tokio::select! {
                r = out.send(RelayCell::new(id, RelayMsg::Data(chunk))) => r.is_ok(),
                () = token.cancelled() => false,
            };
            if !sent {
                // Not sent: the permits go back to the windows as they drop.
                break 'read None;
            }
            stream_permit.forget();
            circuit_permit.forget();
            shared
                .stats
                .exit_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    if let Some(reason) = reason {
        send(RelayMsg::End(reason)).await;
    }
    token.cancel();
    let _ = writer.await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn closed_streams_tolerate_one_window_then_nothing_and_forget_the_oldest() {
        let mut c = ClosedStreams::default();
        let (a, never) = (StreamId(1), StreamId(2));
        c.insert(a);
        for _ in 0..STREAM_WINDOW {
            assert!(c.tolerate_data(a));
        }
        assert!(!c.tolerate_data(a), "beyond a stream window");
        for _ in 0..STREAM_WINDOW / STREAM_INCREMENT {
            assert!(c.tolerate_sendme(a));
        }
        assert!(!c.tolerate_sendme(a));
        assert!(!c.tolerate_data(never) && !c.tolerate_sendme(never));
        assert!(c.remove(a), "its END completes the close");
        assert!(
            !c.remove(a) && !c.tolerate_data(a),
            "after END nothing more"
        );
        for i in 0..MAX_CLOSED_STREAMS as u16 + 10 {
            c.insert(StreamId(100 + i));
        }
        assert_eq!(c.seen.len(), MAX_CLOSED_STREAMS);
        assert!(!c.tolerate_data(StreamId(100)), "the oldest was forgotten");
        assert!(c.tolerate_data(StreamId(100 + MAX_CLOSED_STREAMS as u16 + 9)));
    }

    #[tokio::test]
    async fn exit_lookups_wait_for_a_slot_and_give_it_back() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        // A lookup needs a slot: with the only one taken, it waits.
        let taken = slots.clone().acquire_owned().await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(200),
            resolve(&slots, "localhost".into(), 80),
        )
        .await;
        assert!(waiting.is_err(), "resolved without a slot");
        drop(taken);
        // With the slot free it resolves, and the slot comes back each time.
        for _ in 0..3 {
            let addrs = resolve(&slots, "localhost".into(), 80).await.unwrap();
            assert!(addrs.iter().all(|a| a.port() == 80 && a.ip().is_loopback()));
            assert_eq!(slots.available_permits(), 1);
        }
        // A name that cannot resolve is RESOLVEFAILED, and gives its slot back too.
        let e = resolve(&slots, "no-such-host.invalid".into(), 80).await;
        assert!(matches!(e, Err(EndReason::ResolveFailed)), "{e:?}");
        assert_eq!(slots.available_permits(), 1);
        // A closed semaphore (relay shutting down) is RESOLVEFAILED, not a panic.
        slots.close();
        let e = resolve(&slots, "localhost".into(), 80).await;
        assert!(matches!(e, Err(EndReason::ResolveFailed)), "{e:?}");
    }
}
