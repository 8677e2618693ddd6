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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonnet_crypto::onion::relay_cell_tag;
use anonnet_crypto::{RelayBackward, RelayForward};
use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind};
use anonnet_wire::flow::{
    CircuitDeliverWindow, SendmeTags, StreamDeliverWindow, CIRCUIT_INCREMENT, CIRCUIT_WINDOW,
    STREAM_INCREMENT, STREAM_WINDOW,
};
use anonnet_wire::{
    Create, Created, Destroy, DestroyReason, EndReason, RelayCell, RelayMsg, StreamId, Target,
    LAYER_OVERHEAD,
};
use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::RelayShared;

/// Cells buffered between a leg reader and the task that consumes them.
const CELL_QUEUE: usize = 64;
/// Messages buffered for the backward task (originated by this relay).
const BACKWARD_QUEUE: usize = 64;
/// `DATA` payloads buffered towards one exit TCP connection: a whole stream window, so a
/// client that respects flow control never makes the circuit wait on a slow destination.
const EXIT_WRITE_QUEUE: usize = STREAM_WINDOW as usize + 12;
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
struct Teardown {
    token: CancellationToken,
    reason: Mutex<Option<DestroyReason>>,
}

impl Teardown {
    fn destroy(&self, reason: DestroyReason) {
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

/// Read whole cells of `cell_len` bytes from `recv` into a channel, each placed at offset
/// `headroom` of a buffer of `headroom + cell_len` bytes (so the backward task can add its
/// layer without copying). Ends on EOF, error or cancellation.
fn spawn_leg_reader(
    mut recv: RecvStream,
    cell_len: usize,
    headroom: usize,
    tx: mpsc::Sender<Vec<u8>>,
    teardown: Arc<Teardown>,
) {
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; headroom + cell_len];
            let read = tokio::select! {
                r = recv.read_exact(buf.get_mut(headroom..).unwrap_or_default()) => r,
                () = teardown.token.cancelled() => break,
            };
            if read.is_err() {
                teardown.destroy(DestroyReason::ChannelClosed);
                break;
            }
            if tx.send(buf).await.is_err() {
                break;
            }
        }
    });
}

/// Serve one leg opened by the previous hop: `CREATE`, handshake, then the circuit.
pub(crate) async fn serve_leg(
    shared: Arc<RelayShared>,
    mut send: SendStream,
    mut recv: RecvStream,
    first: u8,
    from_relay: bool,
) {
    let mut prefix = [first, 0, 0];
    let created = tokio::time::timeout(EXTEND_TIMEOUT, async {
        recv.read_exact(prefix.get_mut(1..)?).await.ok()?;
        let cell_len = Create::peek_cell_len(&prefix).ok()?;
        let mut cell = vec![0u8; cell_len];
        cell.get_mut(..Create::PREFIX_LEN)?.copy_from_slice(&prefix);
        recv.read_exact(cell.get_mut(Create::PREFIX_LEN..)?)
            .await
            .ok()?;
        Some((cell_len, Create::decode(&cell).ok()?))
    })
    .await;
    let Ok(Some((cell_len, create))) = created else {
        debug!("leg closed before a valid CREATE");
        return;
    };
    let Some(_permit) = shared.circuit_permit() else {
        warn!("circuit limit reached; refusing CREATE");
        if let Ok(d) = (Destroy {
            reason: DestroyReason::ResourceLimit,
        })
        .encode(cell_len)
        {
            let _ = send.write_all(&d).await;
        }
        return;
    };
    let hello = anonnet_crypto::ClientHello {
        node_id: create.node_id,
        onion_key: create.onion_key,
        client_pk: create.client_pk,
    };
    let (reply, keys) = match anonnet_crypto::handshake::server_handshake(
        shared.node_id,
        &shared.onion_key,
        &hello,
    ) {
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
    let created = Created {
        server_pk: reply.server_pk,
        auth: reply.auth,
    };
    let Ok(bytes) = created.encode(cell_len) else {
        return;
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
    info!(cell_len, from_relay, "circuit created");
    let onion = anonnet_crypto::RelayOnion::new(&keys);
    drop(keys);
    run_circuit(shared, cell_len, onion, send, recv).await;
}

async fn run_circuit(
    shared: Arc<RelayShared>,
    cell_len: usize,
    onion: anonnet_crypto::RelayOnion,
    prev_send: SendStream,
    prev_recv: RecvStream,
) {
    let teardown = Arc::new(Teardown {
        token: shared.shutdown.child_token(),
        reason: Mutex::new(None),
    });
    let (prev_tx, prev_rx) = mpsc::channel(CELL_QUEUE);
    spawn_leg_reader(prev_recv, cell_len, 0, prev_tx, teardown.clone());
    let (next_tx, next_rx) = mpsc::channel(CELL_QUEUE);
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
        next_tx: Some(next_tx),
        out: out_tx,
        streams: HashMap::new(),
        flow,
        teardown: teardown.clone(),
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
    next_rx: mpsc::Receiver<Vec<u8>>,
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
        let BackwardTask {
            shared,
            cell_len,
            layer,
            prev_send,
            next_rx,
            out_rx,
            flow,
            teardown,
        } = self;
        let cell_len = *cell_len;
        loop {
            let mut cell = tokio::select! {
                biased;
                () = teardown.token.cancelled() => break,
                Some(mut cell) = next_rx.recv() => {
                    // A cell from the next hop sits at offset LAYER_OVERHEAD; its first byte is
                    // the command on the next leg.
                    match cell.get(LAYER_OVERHEAD).copied().map(CellCommand::from_byte) {
                        Some(Ok(CellCommand::Relay)) => {
                            if layer.seal_backward(&mut cell, LayerKind::Forward).is_err() {
                                teardown.destroy(DestroyReason::Internal);
                                break;
                            }
                            shared.stats.cells_backward.fetch_add(1, Ordering::Relaxed);
                            cell
                        }
                        Some(Ok(CellCommand::Padding)) => continue,
                        Some(Ok(CellCommand::Destroy)) => {
                            teardown.destroy(DestroyReason::ChannelClosed);
                            break;
                        }
                        _ => {
                            teardown.destroy(DestroyReason::Protocol);
                            break;
                        }
                    }
                }
                Some(msg) = out_rx.recv() => {
                    let mut cell = vec![0u8; cell_len];
                    let is_data = matches!(msg.msg, RelayMsg::Data(_));
                    let sealed = cell
                        .get_mut(relay_layout::INNER..)
                        .ok_or(())
                        .and_then(|inner| msg.encode_into(inner).map_err(|_| ()))
                        .and_then(|()| layer.seal_backward(&mut cell, LayerKind::Deliver).map_err(|_| ()));
                    if sealed.is_err() {
                        teardown.destroy(DestroyReason::Internal);
                        break;
                    }
                    if is_data {
                        if let (Some(tag), Ok(mut tags)) = (relay_cell_tag(&cell), flow.tags.lock()) {
                            tags.on_data_sent(tag);
                        }
                    }
                    shared.stats.cells_backward.fetch_add(1, Ordering::Relaxed);
                    cell
                }
                else => break,
            };
            let written = tokio::select! {
                r = prev_send.write_all(&cell) => r.is_ok(),
                () = teardown.token.cancelled() => false,
            };
            cell.clear();
            if !written {
                teardown.destroy(DestroyReason::ChannelClosed);
                break;
            }
        }
    }
}

struct ExitSlot {
    data: mpsc::Sender<Bytes>,
    token: CancellationToken,
    /// Stream package window towards the client (permits).
    package: Arc<Semaphore>,
    /// Stream deliver window for `DATA` from the client.
    deliver: Arc<Mutex<StreamDeliverWindow>>,
}

struct ForwardTask {
    shared: Arc<RelayShared>,
    cell_len: usize,
    layer: RelayForward,
    next_send: Option<SendStream>,
    /// Given to the next-hop reader once the circuit is extended.
    next_tx: Option<mpsc::Sender<Vec<u8>>>,
    out: mpsc::Sender<RelayCell>,
    streams: HashMap<StreamId, ExitSlot>,
    flow: Arc<CircuitFlow>,
    teardown: Arc<Teardown>,
}

/// Why the forward task must stop the circuit.
struct Violation(DestroyReason);

impl ForwardTask {
    async fn run(mut self, mut prev_rx: mpsc::Receiver<Vec<u8>>) {
        loop {
            let cell = tokio::select! {
                biased;
                () = self.teardown.token.cancelled() => break,
                c = prev_rx.recv() => c,
            };
            let Some(cell) = cell else { break };
            if let Err(Violation(reason)) = self.handle_cell(cell).await {
                self.teardown.destroy(reason);
                break;
            }
        }
        self.teardown.destroy(DestroyReason::Finished);
        for (_, slot) in self.streams.drain() {
            slot.token.cancel();
        }
        if let Some(mut next) = self.next_send.take() {
            send_destroy(
                &mut next,
                self.cell_len - LAYER_OVERHEAD,
                self.teardown.reason(),
            )
            .await;
        }
    }

    async fn handle_cell(&mut self, mut cell: Vec<u8>) -> Result<(), Violation> {
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
            warn!("destroying circuit: {e}");
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
            LayerKind::Forward => {
                let next = self
                    .next_send
                    .as_mut()
                    .ok_or(Violation(DestroyReason::Protocol))?;
                let out = cell
                    .get_mut(relay_layout::BODY..)
                    .ok_or(Violation(DestroyReason::Protocol))?;
                if let Some(first) = out.first_mut() {
                    *first = CellCommand::Relay as u8;
                }
                let written = tokio::select! {
                    r = next.write_all(out) => r.is_ok(),
                    () = self.teardown.token.cancelled() => false,
                };
                if !written {
                    return Err(Violation(DestroyReason::ChannelClosed));
                }
                Ok(())
            }
            LayerKind::Deliver => {
                let tag = relay_cell_tag(&cell).unwrap_or_default();
                let inner = Bytes::from(cell).slice(relay_layout::INNER..);
                let msg = RelayCell::decode(&inner).map_err(|e| {
                    warn!("destroying circuit: bad relay message: {e}");
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
                let reply =
                    match tokio::time::timeout(EXTEND_TIMEOUT, self.extend(addr, hello)).await {
                        Ok(Ok(created)) => RelayMsg::Extended {
                            server_pk: created.server_pk,
                            auth: created.auth,
                        },
                        Ok(Err(reason)) => RelayMsg::Truncated(reason),
                        Err(_) => RelayMsg::Truncated(DestroyReason::Timeout),
                    };
                self.send_back(StreamId::CIRCUIT, reply).await;
                Ok(())
            }
            RelayMsg::Begin { target, port } => {
                // Streams whose exit side ended are forgotten here (the client does not
                // answer an END), so their ids may be reused.
                self.streams.retain(|_, s| !s.token.is_cancelled());
                if self.streams.contains_key(&id) {
                    return Err(Violation(DestroyReason::Protocol));
                }
                let Some(policy) = self.shared.exit_policy.clone() else {
                    self.send_back(id, RelayMsg::End(EndReason::ExitPolicy))
                        .await;
                    return Ok(());
                };
                if self.streams.len() >= self.shared.limits.max_streams_per_circuit {
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
                tokio::spawn(exit_stream(
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
                    RelayCell::max_payload(self.cell_len - relay_layout::INNER),
                ));
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
                            warn!("destroying circuit: stream {}: {e}", id.0);
                            Violation(DestroyReason::Protocol)
                        })?;
                    let sent = tokio::select! {
                        r = slot.data.send(data) => r.is_ok(),
                        () = self.teardown.token.cancelled() => true,
                    };
                    if !sent {
                        // The exit side already ended; its END is on the way back.
                        self.streams.remove(&id);
                    }
                }
                // DATA for a stream we no longer know crossed our END: drop it.
                Ok(())
            }
            RelayMsg::End(_) => {
                // Dropping the slot closes the data channel: the writer sends what is
                // queued, then closes the connection. Cancelling stops the reader.
                if let Some(slot) = self.streams.remove(&id) {
                    slot.token.cancel();
                }
                Ok(())
            }
            RelayMsg::Drop => Ok(()),
            RelayMsg::Sendme(Some(echo)) => {
                self.flow
                    .tags
                    .lock()
                    .map_err(|_| Violation(DestroyReason::Internal))?
                    .on_sendme(&echo)
                    .map_err(|e| {
                        warn!("destroying circuit: {e}");
                        Violation(DestroyReason::Protocol)
                    })?;
                self.flow.package.add_permits(CIRCUIT_INCREMENT as usize);
                Ok(())
            }
            RelayMsg::Sendme(None) => {
                if let Some(slot) = self.streams.get(&id) {
                    let inc = STREAM_INCREMENT as usize;
                    if slot.package.available_permits() + inc > STREAM_WINDOW as usize {
                        warn!("destroying circuit: stream {}: unexpected SENDME", id.0);
                        return Err(Violation(DestroyReason::Protocol));
                    }
                    slot.package.add_permits(inc);
                }
                Ok(())
            }
            RelayMsg::Connected | RelayMsg::Extended { .. } | RelayMsg::Truncated(_) => {
                Err(Violation(DestroyReason::Protocol))
            }
        }
    }

    /// Open the next leg: dial the relay (pinning its NodeId), send `CREATE`, await
    /// `CREATED`.
    async fn extend(
        &mut self,
        addr: SocketAddr,
        hello: anonnet_crypto::ClientHello,
    ) -> Result<Created, DestroyReason> {
        let next_len = self.cell_len - LAYER_OVERHEAD;
        let node_id = anonnet_crypto::NodeId(hello.node_id);
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
        let create = Create {
            cell_len: u16::try_from(next_len).map_err(|_| DestroyReason::Internal)?,
            node_id: hello.node_id,
            onion_key: hello.onion_key,
            client_pk: hello.client_pk,
        };
        let bytes = create.encode().map_err(|_| DestroyReason::Protocol)?;
        send.write_all(&bytes)
            .await
            .map_err(|_| DestroyReason::ConnectFailed)?;
        let mut reply = vec![0u8; next_len];
        recv.read_exact(&mut reply)
            .await
            .map_err(|_| DestroyReason::ConnectFailed)?;
        let created = Created::decode(&reply).map_err(|_| {
            Destroy::decode(&reply)
                .map(|d| d.reason)
                .unwrap_or(DestroyReason::Protocol)
        })?;
        let tx = self.next_tx.take().ok_or(DestroyReason::Internal)?;
        spawn_leg_reader(recv, next_len, LAYER_OVERHEAD, tx, self.teardown.clone());
        self.next_send = Some(send);
        self.shared
            .stats
            .circuits_extended
            .fetch_add(1, Ordering::Relaxed);
        Ok(created)
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
            Target::Host(host) => match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(a) => a.collect(),
                Err(_) => return Err(EndReason::ResolveFailed),
            },
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
    let (mut rd, mut wr) = tcp.into_split();
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
    let mut buf = vec![0u8; max_payload];
    let reason = loop {
        // One DATA cell needs a permit from the circuit and the stream package windows;
        // without them the exit stops reading, and the destination's TCP window fills.
        let permits = tokio::select! {
            p = async {
                let c = windows.circuit.acquire().await.ok()?;
                let s = windows.stream.acquire().await.ok()?;
                Some((c, s))
            } => p,
            () = token.cancelled() => break None,
        };
        let Some((circuit_permit, stream_permit)) = permits else {
            break None;
        };
        circuit_permit.forget();
        stream_permit.forget();
        let n = tokio::select! {
            r = rd.read(&mut buf) => r,
            () = token.cancelled() => break None,
        };
        match n {
            Ok(0) => break Some(EndReason::Done),
            Ok(n) => {
                let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                shared
                    .stats
                    .exit_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                let sent = tokio::select! {
                    r = out.send(RelayCell::new(id, RelayMsg::Data(chunk))) => r.is_ok(),
                    () = token.cancelled() => false,
                };
                if !sent {
                    break None;
                }
            }
            Err(e) => break Some(end_reason_for(&e)),
        }
    };
    if let Some(reason) = reason {
        send(RelayMsg::End(reason)).await;
    }
    token.cancel();
    let _ = writer.await;
}
