//! The forward direction of a circuit: open each cell from the previous hop, pass
//! `FORWARD` cells on, and handle the messages delivered to this relay (§6, §7.3, §8).

use super::*;

impl ForwardTask {
    pub(super) async fn run(mut self, mut prev_rx: mpsc::Receiver<CellBatch>) {
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
    pub(super) async fn flush_forward(&mut self) -> Result<(), Violation> {
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

    pub(super) async fn handle_cell(&mut self, mut cell: BytesMut) -> Result<(), Violation> {
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

    pub(super) async fn send_back(&self, stream_id: StreamId, msg: RelayMsg) {
        let _ = self.out.send(RelayCell::new(stream_id, msg)).await;
    }

    pub(super) async fn handle_message(
        &mut self,
        cell: RelayCell,
        tag: [u8; 16],
    ) -> Result<(), Violation> {
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
    pub(super) fn unexpected(&self, what: &str) -> Violation {
        self.shared
            .stats
            .cells_unexpected
            .fetch_add(1, Ordering::Relaxed);
        anonnet_net::warn_limited!("destroying circuit: unexpected {what}");
        Violation(DestroyReason::Protocol)
    }
}
