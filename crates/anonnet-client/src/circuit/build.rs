//! Building a circuit: `CREATE` to the guard, then `EXTEND`/`EXTEND2` through the circuit
//! for every further hop (§8.2, §9.2).

use super::*;
use anonnet_wire::HandshakeSet;

impl Circuit {
    /// Build a circuit through `path` (guard first) with telescoping `CREATE`/`EXTEND`.
    /// `kind` is the client's setting; each hop runs the handshake
    /// [`HandshakeKind::for_relay`] picks from the types its descriptor advertises (§9.2).
    ///
    /// # Errors
    /// [`CircuitError`] for a failed link, handshake or extension, and
    /// [`CircuitError::Handshake`] for a relay that advertises no type usable with `kind`.
    /// The caller applies its own timeout.
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
    /// descriptor or introduction, §13), with the handshake types it answers (from its
    /// consensus entry, or the caller's guess). Such a circuit never carries exit streams.
    ///
    /// # Errors
    /// As [`Circuit::build`].
    pub async fn build_to(
        links: &LinkManager,
        path: Vec<VerifiedDescriptor>,
        end: Option<(HopSpec, HandshakeSet)>,
        counters: Arc<StreamCounters>,
        kind: HandshakeKind,
    ) -> Result<Arc<Circuit>, CircuitError> {
        Self::build_prefix(links, path, kind)
            .await?
            .finish(end, counters, kind)
            .await
    }

    /// Build the first hops of a circuit through `path` (guard first) and stop there: a
    /// [`CircuitPrefix`], which [`CircuitPrefix::finish`] later extends to a named relay
    /// and starts (Tor's pre-built internal circuits, §9.4). Each hop runs the handshake
    /// [`HandshakeKind::for_relay`] picks from the types its descriptor advertises.
    ///
    /// # Errors
    /// As [`Circuit::build`]. The caller applies its own timeout.
    pub async fn build_prefix(
        links: &LinkManager,
        path: Vec<VerifiedDescriptor>,
        kind: HandshakeKind,
    ) -> Result<CircuitPrefix, CircuitError> {
        let started = Instant::now();
        let mut hops: Vec<HopSpec> = Vec::with_capacity(path.len() + 1);
        let mut kinds: Vec<HandshakeKind> = Vec::with_capacity(path.len() + 1);
        for (hop, r) in path.iter().enumerate() {
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
            kinds.push(choose_handshake(kind, hop, r.descriptor.handshakes)?);
        }
        let (Some(guard), Some(&guard_kind)) = (hops.first().copied(), kinds.first()) else {
            return Err(CircuitError::Protocol("empty path".into()));
        };
        // A dead guard's UDP port may swallow QUIC Initials silently: give up early.
        let link = tokio::time::timeout(LINK_TIMEOUT, links.get(guard.addr, guard.node_id))
            .await
            .map_err(|_| CircuitError::LinkTimeout(guard.node_id.short()))?
            .map_err(|e| link_error(&guard, e))?;
        let (mut send, mut recv) = link.open_bi().await.map_err(|e| link_error(&guard, e))?;

        let hs = HopHandshake::start(guard_kind, &guard).map_err(|e| hs_err(0, e.into()))?;
        send.write_all(&hs.create().map_err(|e| hs_err(0, e.into()))?)
            .await
            .map_err(|_| CircuitError::Closed)?;
        let mut reply = read_cell(&mut recv, CELL_LEN).await?;
        if let Ok(d) = Destroy::decode(&reply) {
            return Err(hs_err(0, HandshakeFailure::Refused(d.reason)));
        }
        if guard_kind == HandshakeKind::Hybrid {
            reply.extend_from_slice(&read_cell(&mut recv, CELL_LEN).await?);
        }
        let (keys, y) = hs.finish_created(&reply).map_err(|e| hs_err(0, e))?;
        let mut onion = ClientOnion::new();
        onion.push_hop(&keys);
        let mut prefix = CircuitPrefix {
            send,
            recv,
            onion,
            hops: vec![guard],
            kinds: vec![guard_kind],
            bindings: vec![y],
            path,
            build_time: Duration::ZERO,
            made: Instant::now(),
        };
        for (relay, hop_kind) in hops.into_iter().zip(kinds).skip(1) {
            prefix.extend(relay, hop_kind).await?;
        }
        prefix.build_time = started.elapsed();
        prefix.made = Instant::now();
        Ok(prefix)
    }
}

/// The handshake `kind` runs with a relay that advertises `offered` (§9.2).
///
/// # Errors
/// [`CircuitError::Handshake`] naming hop `hop` when none is usable.
fn choose_handshake(
    kind: HandshakeKind,
    hop: usize,
    offered: HandshakeSet,
) -> Result<HandshakeKind, CircuitError> {
    kind.for_relay(offered).ok_or_else(|| {
        hs_err(
            hop,
            HandshakeFailure::NoUsableType {
                offered: offered.types(),
                ours: kind.name(),
            },
        )
    })
}

fn hs_err(hop: usize, why: HandshakeFailure) -> CircuitError {
    CircuitError::Handshake { hop, why }
}

/// The first hops of a circuit, built and keyed but not started: no reader or writer task
/// runs, no stream can be opened, and the relays have seen nothing after the last
/// `EXTENDED`. [`CircuitPrefix::finish`] extends it to its last hop (or takes it as it is)
/// and starts it. The client keeps a few guard → vanguard prefixes for hidden-service
/// circuits, whose last hop is only known when they are needed (§9.4).
pub struct CircuitPrefix {
    send: SendStream,
    recv: RecvStream,
    onion: ClientOnion,
    hops: Vec<HopSpec>,
    kinds: Vec<HandshakeKind>,
    bindings: Vec<[u8; 32]>,
    path: Vec<VerifiedDescriptor>,
    /// Time spent building the hops so far.
    build_time: Duration,
    /// When the last hop so far was added.
    made: Instant,
}

impl std::fmt::Debug for CircuitPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitPrefix")
            .field("hops", &self.hops.len())
            .finish_non_exhaustive()
    }
}

impl CircuitPrefix {
    /// The relays of the prefix, guard first.
    pub fn relays(&self) -> impl Iterator<Item = &HopSpec> {
        self.hops.iter()
    }

    /// How long ago the prefix was built.
    pub fn age(&self) -> Duration {
        self.made.elapsed()
    }

    /// Extend to `end` when given (its handshake chosen from `offered`, as in
    /// [`Circuit::build_to`]), then start the circuit's reader and writer tasks.
    ///
    /// # Errors
    /// As [`Circuit::build`]; a prefix whose link or circuit died while it waited fails
    /// here ([`CircuitError::Closed`], a `DESTROY` as [`CircuitError::Extend`]). The caller
    /// applies its own timeout.
    pub async fn finish(
        mut self,
        end: Option<(HopSpec, HandshakeSet)>,
        counters: Arc<StreamCounters>,
        kind: HandshakeKind,
    ) -> Result<Arc<Circuit>, CircuitError> {
        let started = Instant::now();
        let ends_at_exit = end.is_none();
        if let Some((spec, offered)) = end {
            let hop_kind = choose_handshake(kind, self.hops.len(), offered)?;
            self.extend(spec, hop_kind).await?;
        }
        let CircuitPrefix {
            send,
            recv,
            onion,
            hops,
            kinds,
            bindings,
            path,
            build_time,
            made: _,
        } = self;
        let (fwd_layers, bwd_layers) = onion.split();
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        let (sendme_tx, sendme_rx) = mpsc::channel(SENDME_QUEUE);
        let hop_count = Arc::new(AtomicUsize::new(hops.len()));
        let pending = Arc::new(PendingHop::default());
        let circuit = Arc::new(Circuit {
            id: NEXT_CIRCUIT.fetch_add(1, Ordering::Relaxed),
            ids: hops.iter().map(|h| h.node_id).collect(),
            addrs: hops.iter().map(|h| h.addr).collect(),
            last: hops.last().copied(),
            path,
            ends_at_exit,
            bindings,
            handshakes: kinds,
            hops: hop_count,
            pending: pending.clone(),
            control: Mutex::new(None),
            incoming: Mutex::new(None),
            forward: tx,
            sendmes: sendme_tx,
            streams: Mutex::new(StreamTable::default()),
            closed: CancellationToken::new(),
            built_in: build_time + started.elapsed(),
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

    /// Extend by one hop to `relay` with handshake `hop_kind`: `EXTEND` (type 1) or
    /// `EXTEND2` + `HANDSHAKE_CONT` (type 2) to the current last hop, then its answer
    /// (§6.2, §8.2).
    ///
    /// # Errors
    /// [`CircuitError::Extend`] for `TRUNCATED` or a `DESTROY`, [`CircuitError::Protocol`]
    /// for another answer, [`CircuitError::Unrecognised`] / [`CircuitError::Malformed`]
    /// for a cell that does not open or decode, [`CircuitError::Handshake`] when the reply does not verify,
    /// [`CircuitError::Closed`] when the link is gone.
    async fn extend(
        &mut self,
        relay: HopSpec,
        hop_kind: HandshakeKind,
    ) -> Result<(), CircuitError> {
        let hop = self.hops.len();
        let last = hop - 1;
        let hs = HopHandshake::start(hop_kind, &relay).map_err(|e| hs_err(hop, e.into()))?;
        for msg in hs.extend_messages(relay.addr) {
            let mut cell = vec![0u8; forward_buffer_len(last)];
            let msg_len = msg
                .encode_into(
                    cell.get_mut(message_offset(last)..message_offset(last) + FORWARD_MESSAGE_MAX)
                        .unwrap_or_default(),
                )
                .map_err(|e| hs_err(hop, e.into()))?;
            self.onion
                .seal_forward(&mut cell, last, msg_len)
                .map_err(|e| hs_err(hop, e.into()))?;
            cell.truncate(CELL_LEN);
            self.send
                .write_all(&cell)
                .await
                .map_err(|_| CircuitError::Closed)?;
        }
        // EXTENDED (type 1), or EXTENDED2 and HANDSHAKE_CONT until the whole reply
        // arrived (type 2, §6.2); TRUNCATED ends the build.
        let mut answer: Option<Vec<u8>> = None;
        let finished = loop {
            let mut reply = read_cell(&mut self.recv, CELL_LEN).await?;
            if reply.first() == Some(&(CellCommand::Destroy as u8)) {
                let reason = Destroy::decode(&reply)
                    .map(|d| d.reason)
                    .unwrap_or(DestroyReason::None);
                return Err(CircuitError::Extend { hop: last, reason });
            }
            let (from, range, _) = self
                .onion
                .open_backward(&mut reply)
                .map_err(CircuitError::Unrecognised)?;
            let msg = RelayCell::decode(&Bytes::from(reply).slice(range))
                .map_err(CircuitError::Malformed)?;
            match (from == last, msg.msg, answer.as_mut()) {
                (true, RelayMsg::Extended { server_pk, auth }, None)
                    if hop_kind == HandshakeKind::Classical =>
                {
                    let mut bytes = server_pk.to_vec();
                    bytes.extend_from_slice(&auth);
                    break bytes;
                }
                (true, RelayMsg::Extended2(part), None) if hop_kind == HandshakeKind::Hybrid => {
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
        self.onion.push_hop(&keys);
        self.bindings.push(y);
        self.hops.push(relay);
        self.kinds.push(hop_kind);
        Ok(())
    }
}

fn link_error(guard: &HopSpec, e: anonnet_net::NetError) -> CircuitError {
    CircuitError::Link {
        guard: guard.node_id.short(),
        source: std::sync::Arc::new(e),
    }
}
