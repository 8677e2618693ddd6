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
        let started = Instant::now();
        let hs_err = |hop: usize, why: String| CircuitError::Handshake { hop, why };
        let choose = |hop: usize, offered: HandshakeSet| {
            kind.for_relay(offered).ok_or_else(|| {
                hs_err(
                    hop,
                    format!(
                        "relay answers handshake types {:?}, none usable with {}",
                        offered.types(),
                        kind.name()
                    ),
                )
            })
        };
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
            kinds.push(choose(hop, r.descriptor.handshakes)?);
        }
        let ends_at_exit = end.is_none();
        if let Some((spec, offered)) = end {
            kinds.push(choose(hops.len(), offered)?);
            hops.push(spec);
        }
        let (Some(guard), Some(&guard_kind)) = (hops.first(), kinds.first()) else {
            return Err(CircuitError::Protocol("empty path".into()));
        };
        // A dead guard's UDP port may swallow QUIC Initials silently: give up early.
        let link = tokio::time::timeout(LINK_TIMEOUT, links.get(guard.addr, guard.node_id))
            .await
            .map_err(|_| CircuitError::Link(guard.node_id.short(), "timed out".into()))?
            .map_err(|e| CircuitError::Link(guard.node_id.short(), e.to_string()))?;
        let (mut send, mut recv) = link
            .open_bi()
            .await
            .map_err(|e| CircuitError::Link(guard.node_id.short(), e.to_string()))?;

        let hs = HopHandshake::start(guard_kind, guard).map_err(|e| hs_err(0, e.to_string()))?;
        send.write_all(&hs.create().map_err(|e| hs_err(0, e.to_string()))?)
            .await
            .map_err(|_| CircuitError::Closed)?;
        let mut reply = read_cell(&mut recv, CELL_LEN).await?;
        if let Ok(d) = Destroy::decode(&reply) {
            return Err(hs_err(0, format!("guard refused CREATE: {:?}", d.reason)));
        }
        if guard_kind == HandshakeKind::Hybrid {
            reply.extend_from_slice(&read_cell(&mut recv, CELL_LEN).await?);
        }
        let (keys, y) = hs.finish_created(&reply).map_err(|e| hs_err(0, e))?;
        let mut onion = ClientOnion::new();
        onion.push_hop(&keys);
        let mut bindings = vec![y];

        for (hop, (relay, &hop_kind)) in hops.iter().zip(&kinds).enumerate().skip(1) {
            let hs =
                HopHandshake::start(hop_kind, relay).map_err(|e| hs_err(hop, e.to_string()))?;
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
                        if hop_kind == HandshakeKind::Classical =>
                    {
                        let mut bytes = server_pk.to_vec();
                        bytes.extend_from_slice(&auth);
                        break bytes;
                    }
                    (true, RelayMsg::Extended2(part), None)
                        if hop_kind == HandshakeKind::Hybrid =>
                    {
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
            handshakes: kinds,
            hops: hop_count,
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
}
