//! The sans-IO core of one circuit at a relay: cells in, steps and cells out, no tokio and
//! no awaits (quinn-proto is the model). Spec: `docs/protocol.md` §4.3 (`DESTROY`), §6
//! (relay messages, windows, §6.6 no silent cells), §7.3 (layers), §8 (relay behaviour).
//!
//! - [`ForwardCore`] opens every cell from the previous hop and decides what it means: pass
//!   it on, deliver a message here (and which rule it breaks, if any), with the deliver
//!   windows, the `SENDME` checks, the closed-stream tolerance and the fragmented `EXTEND2`
//!   hello. Replies it owes the client (circuit `SENDME`s, `END` for a refused `BEGIN`,
//!   `EXTENDED`/`TRUNCATED`) queue in it until [`ForwardCore::poll_reply`] takes them.
//! - [`BackwardCore`] wraps cells from the next hop and originates this relay's messages,
//!   recording the tags that circuit `SENDME`s must echo.
//! - [`destroy_plan`] says which neighbours get a `DESTROY` when the circuit ends.
//!
//! The tasks in `forward.rs` and `backward.rs` are the shells: they read legs, wait for
//! extensions, exit connections and queues, and write what the cores return.

use std::collections::VecDeque;

use super::*;

/// What [`ForwardCore::on_cell`] decided about one cell from the previous hop.
pub(super) enum Step {
    /// A `PADDING` cell: nothing to do, nothing counted.
    Padding,
    /// Handled inside the core: a circuit or stream `SENDME`, a refused `BEGIN` (its `END`
    /// is queued), a tolerated cell for a closed stream, part of a hello. Replies, if any,
    /// wait in [`ForwardCore::poll_reply`].
    Handled,
    /// Opened and re-padded to 1024 bytes (§7.3): write it to the next hop.
    ToNext(BytesMut),
    /// Opened, and this relay has no next hop: the end of a circuit joined at this
    /// rendezvous point (§13.5). The shell hands it to the joined circuit, or destroys this
    /// one when there is none.
    ToJoined(BytesMut),
    /// Extend to the next relay (§6.2, §8.2); the shell dials, then reports with
    /// [`ForwardCore::extended`].
    Extend(ExtendRequest),
    /// Open exit stream `id` to `target:port` (§8.3); the shell registers its slot with
    /// [`ForwardCore::add_stream`].
    Begin {
        /// The stream id the client chose.
        id: StreamId,
        /// Host name or address.
        target: Target,
        /// TCP port.
        port: u16,
    },
    /// Answer `RESOLVE` on stream `id` (§6.2, §8.3): look `target` up and send `RESOLVED`;
    /// the shell registers the stream's slot with [`ForwardCore::add_stream`] so that it
    /// counts against the stream limit until the answer is sent.
    Resolve {
        /// The stream id the client chose.
        id: StreamId,
        /// A host name (its addresses wanted) or an address (its name wanted).
        target: Target,
    },
    /// `DATA` from the client (at most 802 bytes) for the open exit stream `id`; both
    /// deliver windows have counted it. If the stream cannot take it any more, the shell
    /// calls [`ForwardCore::stream_gone`].
    Data {
        /// The stream.
        id: StreamId,
        /// The payload.
        data: Bytes,
    },
    /// The client ended an open exit stream: the slot, removed from the table; the shell
    /// cancels it.
    EndStream(ExitSlot),
    /// A §13 message for this hop's hidden-service or DHT role (`ESTABLISH_INTRO`,
    /// `INTRODUCE1`, `ESTABLISH_RENDEZVOUS`, `RENDEZVOUS1`, `DHT_FETCH`, `DHT_STORE`).
    Role(RelayMsg),
}

/// An extension the client asked for: the `CREATE` cells to send to the next relay.
pub(super) struct ExtendRequest {
    /// The next relay's QUIC address.
    pub(super) addr: SocketAddr,
    /// Its NodeId, pinned when the link is opened.
    pub(super) node_id: NodeId,
    /// Which handshake the `CREATE` carries.
    pub(super) kind: ExtendKind,
    /// The `CREATE` cells: 1024 bytes (type 1) or 2048 (type 2, §4.2).
    pub(super) create: Vec<u8>,
}

/// The handshake type of an extension (§5.1, §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExtendKind {
    /// Type 1, X25519 ntor: one `CREATE` cell, one `CREATED` cell.
    Ntor,
    /// Type 2, X25519 + ML-KEM-768: two cells each way.
    Hybrid,
}

impl ExtendKind {
    /// Bytes of `CREATED` cells the next relay answers with: 1024 or 2048.
    pub(super) fn reply_len(self) -> usize {
        match self {
            ExtendKind::Ntor => CELL_LEN,
            ExtendKind::Hybrid => HYBRID_CELLS_LEN,
        }
    }

    /// True when `reply` decodes as this kind's `CREATED`.
    pub(super) fn valid(self, reply: &[u8]) -> bool {
        match self {
            ExtendKind::Ntor => Created::decode(reply).is_ok(),
            ExtendKind::Hybrid => CreatedHybrid::decode(reply).is_ok(),
        }
    }
}

/// Why a cell ends the circuit. [`Refusal::reason`] is what goes into the `DESTROY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// This hop's layer did not open: a modified, replayed, reordered or skipped cell
    /// (§7.3). Counted as `cells_rejected`.
    Rejected,
    /// A cell this relay did not expect (§6.6): an unnegotiated `DROP`, a stream cell for a
    /// stream it does not have. Counted as `cells_unexpected`.
    Unexpected(&'static str),
    /// A `DESTROY` from the previous hop: passed on with [`DestroyReason::Requested`].
    Destroyed,
    /// Any other violation, with its reason.
    Destroy(DestroyReason),
}

impl Refusal {
    /// The reason the `DESTROY` cells carry.
    pub(super) fn reason(self) -> DestroyReason {
        match self {
            Refusal::Rejected | Refusal::Unexpected(_) => DestroyReason::Protocol,
            Refusal::Destroyed => DestroyReason::Requested,
            Refusal::Destroy(r) => r,
        }
    }
}

/// Where the circuit's next leg stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextLeg {
    /// Never extended, or the last extension failed.
    None,
    /// An `EXTEND`/`EXTEND2` is being carried out.
    Extending,
    /// Extended: `FORWARD` cells go to the next hop.
    Extended,
}

/// The forward direction of a circuit at a relay, sans-IO (see the module doc).
pub(super) struct ForwardCore {
    layer: RelayForward,
    next: NextLeg,
    /// An `EXTEND2` whose hello is still arriving in `HANDSHAKE_CONT`s (§6.2): the next
    /// relay's address and the hello so far (at most 1280 bytes).
    pending_extend: Option<(SocketAddr, Vec<u8>)>,
    /// Circuit deliver window for `DATA` from the client (§6.4).
    deliver: CircuitDeliverWindow,
    /// The package window and `SENDME` tags, shared with the backward core and the exit
    /// streams.
    flow: Arc<CircuitFlow>,
    streams: HashMap<StreamId, ExitSlot>,
    /// Exit streams closed here whose in-flight cells from the client are tolerated.
    closed: ClosedStreams,
    /// True when this relay has an exit policy (it opens streams).
    exit: bool,
    /// Most exit streams open at once on this circuit.
    max_streams: usize,
    /// Messages owed to the client, oldest first. At most a few per cell from the previous
    /// hop, and the shell drains them after every cell.
    replies: VecDeque<RelayCell>,
}

impl ForwardCore {
    /// The forward core of a new circuit: `layer` from the `CREATE` handshake, `flow`
    /// shared with the backward core, `exit` when the relay has an exit policy.
    pub(super) fn new(
        layer: RelayForward,
        flow: Arc<CircuitFlow>,
        exit: bool,
        max_streams: usize,
    ) -> Self {
        ForwardCore {
            layer,
            next: NextLeg::None,
            pending_extend: None,
            deliver: CircuitDeliverWindow::default(),
            flow,
            streams: HashMap::new(),
            closed: ClosedStreams::default(),
            exit,
            max_streams,
            replies: VecDeque::new(),
        }
    }

    /// One whole 1024-byte cell from the previous hop.
    ///
    /// # Errors
    /// A [`Refusal`]: the circuit must be destroyed (§4.3, §6.6, §7.3).
    pub(super) fn on_cell(&mut self, mut cell: BytesMut) -> Result<Step, Refusal> {
        let command = cell
            .first()
            .copied()
            .map(CellCommand::from_byte)
            .and_then(Result::ok);
        match command {
            Some(CellCommand::Relay) => {}
            Some(CellCommand::Padding) => return Ok(Step::Padding),
            Some(CellCommand::Destroy) => return Err(Refusal::Destroyed),
            _ => return Err(Refusal::Destroy(DestroyReason::Protocol)),
        }
        let kind = self.layer.open_forward(&mut cell).map_err(|e| {
            anonnet_net::warn_limited!("destroying circuit: {e}");
            Refusal::Rejected
        })?;
        match kind {
            LayerKind::Forward => match self.next {
                NextLeg::Extended => Ok(Step::ToNext(cell)),
                NextLeg::None => Ok(Step::ToJoined(cell)),
                NextLeg::Extending => Err(Refusal::Destroy(DestroyReason::Protocol)),
            },
            LayerKind::Deliver => {
                let tag = relay_cell_tag(&cell).unwrap_or_default();
                let inner = cell.freeze().slice(relay_layout::INNER..);
                let msg = RelayCell::decode(&inner).map_err(|e| {
                    anonnet_net::warn_limited!("destroying circuit: bad relay message: {e}");
                    Refusal::Destroy(DestroyReason::Protocol)
                })?;
                self.on_message(msg, tag)
            }
        }
    }

    /// A relay message delivered to this hop, with its layer's tag (what a circuit
    /// `SENDME` for it echoes, §6.4).
    fn on_message(&mut self, cell: RelayCell, tag: [u8; 16]) -> Result<Step, Refusal> {
        let id = cell.stream_id;
        let violation = Err(Refusal::Destroy(DestroyReason::Protocol));
        match cell.msg {
            RelayMsg::Extend {
                node_id,
                addr,
                onion_key,
                client_pk,
            } => {
                if self.next != NextLeg::None || self.pending_extend.is_some() {
                    return violation;
                }
                let create = Create {
                    cell_len: CELL_LEN as u16,
                    node_id,
                    onion_key,
                    client_pk,
                }
                .encode();
                self.start_extend(addr, node_id, ExtendKind::Ntor, create)
            }
            RelayMsg::Extend2 {
                addr,
                handshake_type,
                part,
            } => {
                if self.next != NextLeg::None
                    || self.pending_extend.is_some()
                    || handshake_type != HANDSHAKE_HYBRID_V2
                    || part.len() > HYBRID_HELLO_LEN
                {
                    return violation;
                }
                self.pending_extend = Some((addr, part.to_vec()));
                self.extend_if_complete()
            }
            RelayMsg::HandshakeCont(part) => {
                let Some((_, hello)) = self.pending_extend.as_mut() else {
                    return violation;
                };
                if hello.len() + part.len() > HYBRID_HELLO_LEN {
                    return violation;
                }
                hello.extend_from_slice(&part);
                self.extend_if_complete()
            }
            RelayMsg::Begin { target, port } => match self.open_exit_stream(id) {
                Some(true) => Ok(Step::Begin { id, target, port }),
                Some(false) => Ok(Step::Handled),
                None => violation,
            },
            RelayMsg::Resolve(target) => match self.open_exit_stream(id) {
                Some(true) => Ok(Step::Resolve { id, target }),
                Some(false) => Ok(Step::Handled),
                None => violation,
            },
            RelayMsg::Data(data) => {
                // Every DATA counts for the circuit window, even for a stream we forgot.
                if let Some(echo) = self.deliver.on_data(tag) {
                    self.replies.push_back(RelayCell::new(
                        StreamId::CIRCUIT,
                        RelayMsg::Sendme(Some(echo)),
                    ));
                }
                if let Some(slot) = self.streams.get(&id) {
                    slot.deliver
                        .lock()
                        .map_err(|_| Refusal::Destroy(DestroyReason::Internal))?
                        .on_data()
                        .map_err(|e| {
                            anonnet_net::warn_limited!("destroying circuit: stream {}: {e}", id.0);
                            Refusal::Destroy(DestroyReason::Protocol)
                        })?;
                    return Ok(Step::Data { id, data });
                }
                // DATA for a stream we closed crossed our END: tolerated up to a stream
                // window (§6.6); for a stream never opened it is a violation.
                if self.closed.tolerate_data(id) {
                    Ok(Step::Handled)
                } else {
                    Err(Refusal::Unexpected("DATA for a stream it does not have"))
                }
            }
            RelayMsg::End(_) => {
                if let Some(slot) = self.streams.remove(&id) {
                    Ok(Step::EndStream(slot))
                } else if self.closed.remove(id) {
                    Ok(Step::Handled)
                } else {
                    Err(Refusal::Unexpected("END for a stream it does not have"))
                }
            }
            // No padding is negotiated: a DROP is a cell nobody should send (§6.6).
            RelayMsg::Drop => Err(Refusal::Unexpected("DROP")),
            RelayMsg::Sendme(Some(echo)) => {
                let open = self
                    .flow
                    .tags
                    .lock()
                    .map_err(|_| Refusal::Destroy(DestroyReason::Internal))?
                    .on_sendme(&echo, std::time::Instant::now())
                    .map_err(|e| {
                        anonnet_net::warn_limited!("destroying circuit: {e}");
                        Refusal::Destroy(DestroyReason::Protocol)
                    })?;
                anonnet_net::open_window(&self.flow.package, open);
                Ok(Step::Handled)
            }
            RelayMsg::Sendme(None) => {
                if let Some(slot) = self.streams.get(&id) {
                    let inc = STREAM_INCREMENT as usize;
                    if slot.package.available_permits() + inc > STREAM_WINDOW_MAX as usize {
                        anonnet_net::warn_limited!(
                            "destroying circuit: stream {}: unexpected SENDME",
                            id.0
                        );
                        return violation;
                    }
                    slot.package.add_permits(inc);
                    Ok(Step::Handled)
                } else if self.closed.tolerate_sendme(id) {
                    Ok(Step::Handled)
                } else {
                    Err(Refusal::Unexpected("SENDME for a stream it does not have"))
                }
            }
            msg @ (RelayMsg::EstablishIntro { .. }
            | RelayMsg::Introduce1 { .. }
            | RelayMsg::EstablishRendezvous { .. }
            | RelayMsg::Rendezvous1 { .. }
            | RelayMsg::DhtFetch { .. }
            | RelayMsg::DhtStore { .. }
            | RelayMsg::NameRegister { .. }) => Ok(Step::Role(msg)),
            RelayMsg::Connected
            | RelayMsg::Resolved(_)
            | RelayMsg::Extended { .. }
            | RelayMsg::Extended2(_)
            | RelayMsg::Truncated(_)
            | RelayMsg::Introduce2 { .. }
            | RelayMsg::Rendezvous2 { .. }
            | RelayMsg::IntroEstablished
            | RelayMsg::RendezvousEstablished
            | RelayMsg::IntroduceAck(_)
            | RelayMsg::DhtResult { .. }
            | RelayMsg::NameReceipts { .. } => violation,
        }
    }

    /// Once an `EXTEND2` and its `HANDSHAKE_CONT`s have brought the whole 1280-byte hello
    /// (§6.2), the type-2 `CREATE` to send.
    fn extend_if_complete(&mut self) -> Result<Step, Refusal> {
        if self
            .pending_extend
            .as_ref()
            .is_none_or(|(_, hello)| hello.len() < HYBRID_HELLO_LEN)
        {
            return Ok(Step::Handled);
        }
        let Some((addr, hello)) = self.pending_extend.take() else {
            return Ok(Step::Handled);
        };
        let Some((node_id, _)) = anonnet_crypto::hello_names(&hello) else {
            return Err(Refusal::Destroy(DestroyReason::Protocol));
        };
        let create = CreateHybrid { hello }.encode();
        self.start_extend(addr, node_id, ExtendKind::Hybrid, create)
    }

    /// Hand the shell the `CREATE` cell(s) to send to the next relay at `addr`
    /// ([`Step::Extend`]); the circuit is extending until [`ForwardCore::extended`].
    fn start_extend(
        &mut self,
        addr: SocketAddr,
        node_id: [u8; 32],
        kind: ExtendKind,
        create: Result<Vec<u8>, anonnet_wire::WireError>,
    ) -> Result<Step, Refusal> {
        let create = create.map_err(|_| Refusal::Destroy(DestroyReason::Internal))?;
        self.next = NextLeg::Extending;
        Ok(Step::Extend(ExtendRequest {
            addr,
            node_id: NodeId(node_id),
            kind,
            create,
        }))
    }

    /// How the extension asked for by [`Step::Extend`] ended: the next relay's `CREATED`
    /// cells (which [`ExtendKind::valid`] accepted), or why it failed. Queues the answer:
    /// `EXTENDED`, or `EXTENDED2` and a `HANDSHAKE_CONT` with the rest of the 1152-byte
    /// reply (§6.2), or `TRUNCATED` with the reason; after a failure the client may try
    /// again.
    pub(super) fn extended(&mut self, kind: ExtendKind, result: Result<Vec<u8>, DestroyReason>) {
        let reply = result.and_then(|cells| match kind {
            ExtendKind::Ntor => Created::decode(&cells)
                .map(|c| {
                    vec![RelayMsg::Extended {
                        server_pk: c.server_pk,
                        auth: c.auth,
                    }]
                })
                .map_err(|_| DestroyReason::Protocol),
            ExtendKind::Hybrid => CreatedHybrid::decode(&cells)
                .map(|c| {
                    let room = RelayCell::max_payload(BACKWARD_MESSAGE_MAX);
                    let (first, rest) = c.reply.split_at(room.min(c.reply.len()));
                    std::iter::once(RelayMsg::Extended2(Bytes::copy_from_slice(first)))
                        .chain(
                            rest.chunks(room)
                                .map(|p| RelayMsg::HandshakeCont(Bytes::copy_from_slice(p))),
                        )
                        .collect()
                })
                .map_err(|_| DestroyReason::Protocol),
        });
        match reply {
            Ok(msgs) => {
                self.next = NextLeg::Extended;
                self.replies.extend(
                    msgs.into_iter()
                        .map(|m| RelayCell::new(StreamId::CIRCUIT, m)),
                );
            }
            Err(reason) => {
                self.next = NextLeg::None;
                self.replies.push_back(RelayCell::new(
                    StreamId::CIRCUIT,
                    RelayMsg::Truncated(reason),
                ));
            }
        }
    }

    /// The checks a `BEGIN` or a `RESOLVE` on stream `id` passes before the shell acts
    /// on it (§8.3): `None` when `id` is open already (a protocol violation); `Some(false)`
    /// when it is refused, its `END` (EXITPOLICY on a relay that is not an exit,
    /// RESOURCELIMIT past [`Limits::max_streams_per_circuit`](crate::Limits)) queued;
    /// `Some(true)` when the shell may open it.
    fn open_exit_stream(&mut self, id: StreamId) -> Option<bool> {
        // Streams whose exit side ended are forgotten here (the client does not
        // answer an END), so their ids may be reused.
        let closed = &mut self.closed;
        self.streams.retain(|sid, s| {
            let open = !s.token.is_cancelled();
            if !open {
                closed.insert(*sid);
            }
            open
        });
        if self.streams.contains_key(&id) {
            return None;
        }
        self.closed.remove(id);
        let refused = if !self.exit {
            Some(EndReason::ExitPolicy)
        } else if self.streams.len() >= self.max_streams {
            Some(EndReason::ResourceLimit)
        } else {
            None
        };
        if let Some(reason) = refused {
            self.closed.insert(id);
            self.replies
                .push_back(RelayCell::new(id, RelayMsg::End(reason)));
            return Some(false);
        }
        Some(true)
    }

    /// The next message owed to the client, if any.
    pub(super) fn poll_reply(&mut self) -> Option<RelayCell> {
        self.replies.pop_front()
    }

    /// Register the exit stream a [`Step::Begin`] asked for.
    pub(super) fn add_stream(&mut self, id: StreamId, slot: ExitSlot) {
        self.streams.insert(id, slot);
    }

    /// The open exit stream `id`.
    pub(super) fn stream(&self, id: StreamId) -> Option<&ExitSlot> {
        self.streams.get(&id)
    }

    /// Exit stream `id` can take no more `DATA` (its exit side ended; its `END` is on the
    /// way): forget it, tolerating what the client still has in flight (§6.6).
    pub(super) fn stream_gone(&mut self, id: StreamId) {
        if self.streams.remove(&id).is_some() {
            self.closed.insert(id);
        }
    }

    /// Every open exit stream, removed (the circuit is going).
    pub(super) fn take_streams(&mut self) -> Vec<ExitSlot> {
        self.streams.drain().map(|(_, s)| s).collect()
    }

    /// True when this relay is the last hop, with no extension under way and no exit
    /// streams: the only state in which it may take an introduction or rendezvous role
    /// (§13.2, §13.3); the shell also checks that no role is taken yet.
    pub(super) fn is_bare_end(&self) -> bool {
        self.next == NextLeg::None && self.pending_extend.is_none() && self.streams.is_empty()
    }

    /// True once the circuit has a next hop.
    pub(super) fn is_extended(&self) -> bool {
        self.next == NextLeg::Extended
    }
}

/// The backward direction of a circuit at a relay, sans-IO: wraps cells from the next hop
/// (or from the circuit joined here) and originates this relay's messages (§7.3).
pub(super) struct BackwardCore {
    layer: RelayBackward,
    flow: Arc<CircuitFlow>,
}

impl BackwardCore {
    /// The backward core of a new circuit; `flow` is shared with the forward core.
    pub(super) fn new(layer: RelayBackward, flow: Arc<CircuitFlow>) -> Self {
        BackwardCore { layer, flow }
    }

    /// Wrap whole 1024-byte cells from the next hop (or the joined circuit) and append them
    /// to `batch`; `PADDING` appends nothing. Returns how many cells were appended.
    ///
    /// # Errors
    /// [`DestroyReason::ChannelClosed`] for a `DESTROY` from the next hop (it is passed on
    /// towards the client, §4.3), [`DestroyReason::Protocol`] for any other command,
    /// [`DestroyReason::Internal`] when the wrap counter is exhausted.
    pub(super) fn wrap_from_next(
        &mut self,
        cells: &[u8],
        batch: &mut BytesMut,
    ) -> Result<usize, DestroyReason> {
        let mut wrapped = 0;
        for cell in cells.chunks_exact(CELL_LEN) {
            match cell.first().copied().map(CellCommand::from_byte) {
                Some(Ok(CellCommand::Relay)) => {
                    let start = batch.len();
                    batch.extend_from_slice(cell);
                    let out = batch.get_mut(start..).ok_or(DestroyReason::Internal)?;
                    self.layer.wrap(out).map_err(|_| DestroyReason::Internal)?;
                    wrapped += 1;
                }
                Some(Ok(CellCommand::Padding)) => {}
                Some(Ok(CellCommand::Destroy)) => return Err(DestroyReason::ChannelClosed),
                _ => return Err(DestroyReason::Protocol),
            }
        }
        Ok(wrapped)
    }

    /// Seal one message of this relay (at most [`BACKWARD_MESSAGE_MAX`] bytes encoded) into
    /// a 1024-byte cell appended to `batch`; a `DATA` cell's tag is recorded for the
    /// circuit `SENDME` that must echo it (§6.4).
    ///
    /// # Errors
    /// [`DestroyReason::Internal`] when the message does not fit or the layer is exhausted.
    pub(super) fn originate(
        &mut self,
        msg: &RelayCell,
        batch: &mut BytesMut,
    ) -> Result<(), DestroyReason> {
        let start = batch.len();
        batch.resize(start + CELL_LEN, 0);
        let cell = batch.get_mut(start..).ok_or(DestroyReason::Internal)?;
        let len = cell
            .get_mut(relay_layout::INNER..relay_layout::INNER + BACKWARD_MESSAGE_MAX)
            .ok_or(DestroyReason::Internal)
            .and_then(|inner| msg.encode_into(inner).map_err(|_| DestroyReason::Internal))?;
        let tag = self
            .layer
            .originate(cell, len)
            .map_err(|_| DestroyReason::Internal)?;
        if matches!(msg.msg, RelayMsg::Data(_)) {
            if let Ok(mut tags) = self.flow.tags.lock() {
                tags.on_data_sent(tag, std::time::Instant::now());
            }
        }
        Ok(())
    }
}

/// Which side ended a circuit (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The previous hop: its `DESTROY`, or its leg closed.
    Prev,
    /// The next hop: its `DESTROY`, or its leg closed.
    Next,
    /// This relay: a violation, a limit, a failed write, shutdown.
    Here,
}

/// The `DESTROY` cells a relay sends when a circuit ends (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DestroyPlan {
    /// The reason sent to the previous hop, if it gets a `DESTROY`.
    pub(super) to_prev: Option<DestroyReason>,
    /// The reason sent to the next hop, if it gets a `DESTROY`.
    pub(super) to_next: Option<DestroyReason>,
}

/// Where the `DESTROY`s of a circuit that ended from `origin` for `reason` go: to every
/// neighbour except the one that ended it (it already knows), the next hop only if the
/// circuit was extended. A `DESTROY` from the previous hop thus travels away from the
/// client hop by hop, and one from the next hop travels towards it.
pub(super) fn destroy_plan(origin: Origin, reason: DestroyReason, extended: bool) -> DestroyPlan {
    DestroyPlan {
        to_prev: (origin != Origin::Prev).then_some(reason),
        to_next: (extended && origin != Origin::Next).then_some(reason),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests;
