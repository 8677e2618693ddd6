//! The forward direction of a circuit: open each cell from the previous hop, pass
//! `FORWARD` cells on, and handle the messages delivered to this relay (§6, §7.3, §8).

use super::*;

impl ForwardTask {
    /// The forward task: cells from the previous hop until the circuit ends, then its
    /// teardown. A plain function returning the future (not an `async fn`), so that the
    /// task struct is stored once in it, not as argument and local both.
    pub(super) fn run(
        self,
        mut prev_rx: mpsc::Receiver<CellBatch>,
    ) -> impl std::future::Future<Output = ()> {
        let mut this = self;
        async move {
            loop {
                let cells = tokio::select! {
                    biased;
                    () = this.teardown.token.cancelled() => break,
                    c = prev_rx.recv() => c,
                };
                let Some(mut cells) = cells else { break };
                let mut handled = Ok(());
                while handled.is_ok() && cells.len() >= this.cell_len {
                    let cell = cells.split_to(this.cell_len);
                    handled = this.handle_cell(cell).await;
                }
                // Cells opened before a DESTROY or a bad cell still go to the next hop, as
                // they did when each was written on its own.
                let flushed = this.flush_forward().await;
                if let Err(Violation(reason)) = handled.and(flushed) {
                    this.teardown.destroy(reason);
                    break;
                }
            }
            this.teardown.destroy(DestroyReason::Finished);
            if let Some(key) = this.hs.intro_key.take() {
                let stats = &this.shared.stats;
                this.shared.hs.remove_intro(&key, this.hs.circuit, stats);
            }
            if let Some(cookie) = this.hs.cookie.take() {
                this.shared.hs.remove_rendezvous(&cookie, this.hs.circuit);
            }
            for slot in this.core.take_streams() {
                slot.token.cancel();
            }
            if let Some(mut next) = this.next_send.take() {
                match this.teardown.plan(true).to_next {
                    Some(reason) => send_destroy(&mut next, CELL_LEN, reason).await,
                    None => {
                        let _ = next.finish();
                    }
                }
            }
        }
    }

    /// Pass on the cells gathered for what follows this hop, if any, at once: in one QUIC
    /// write to the next relay, or as one batch to the backward task of the circuit joined
    /// at this rendezvous point (which wraps them as if they came from its next hop,
    /// §13.5).
    ///
    /// # Errors
    /// [`DestroyReason::ChannelClosed`] when the next leg or the joined circuit is gone,
    /// [`DestroyReason::Protocol`] when the circuit has neither.
    pub(super) async fn flush_forward(&mut self) -> Result<(), Violation> {
        if self.forward_out.is_empty() {
            return Ok(());
        }
        if let Some(next) = self.next_send.as_mut() {
            let chunk = self.forward_out.split().freeze();
            let written = tokio::select! {
                r = next.write_chunk(chunk) => r.is_ok(),
                () = self.teardown.token.cancelled() => false,
            };
            return if written {
                Ok(())
            } else {
                Err(Violation(DestroyReason::ChannelClosed))
            };
        }
        let splice = self
            .hs
            .splice
            .get()
            .ok_or(Violation(DestroyReason::Protocol))?;
        let cells = Box::new(self.forward_out.split());
        let sent = tokio::select! {
            r = splice.backward.send(cells) => r.is_ok(),
            () = self.teardown.token.cancelled() => true,
            () = splice.teardown.token.cancelled() => false,
        };
        if !sent {
            self.teardown
                .destroy_from(Origin::Next, DestroyReason::ChannelClosed);
            return Err(Violation(DestroyReason::ChannelClosed));
        }
        Ok(())
    }

    /// One cell from the previous hop: the core decides, the shell carries it out.
    ///
    /// # Errors
    /// The reason to destroy the circuit.
    pub(super) async fn handle_cell(&mut self, cell: BytesMut) -> Result<(), Violation> {
        let stats = &self.shared.stats;
        let step = match self.core.on_cell(cell) {
            Ok(step) => step,
            Err(refusal) => {
                match refusal {
                    Refusal::Rejected => {
                        stats.cells_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    Refusal::Unexpected(what) => {
                        stats.cells_unexpected.fetch_add(1, Ordering::Relaxed);
                        anonnet_net::warn_limited!("destroying circuit: unexpected {what}");
                    }
                    Refusal::Destroyed => {
                        self.teardown
                            .destroy_from(Origin::Prev, DestroyReason::Requested);
                    }
                    Refusal::Destroy(_) => {}
                }
                return Err(Violation(refusal.reason()));
            }
        };
        if !matches!(step, Step::Padding) {
            stats.cells_forward.fetch_add(1, Ordering::Relaxed);
        }
        let handled = self.carry_out(step).await;
        // Replies the core owes the client (SENDMEs, END, EXTENDED, TRUNCATED).
        while let Some(reply) = self.core.poll_reply() {
            let _ = self.out.send(out_cell(reply)).await;
        }
        handled
    }

    /// Do what the core decided.
    async fn carry_out(&mut self, step: Step) -> Result<(), Violation> {
        match step {
            Step::Padding | Step::Handled => Ok(()),
            // Re-padded to the same size by the core (for the next relay) or as the other
            // circuit's next hop would send it (for a circuit joined at this rendezvous
            // point): gathered and passed on once per batch (flush_forward).
            Step::ToNext(cell) | Step::ToJoined(cell) => {
                self.forward_out.extend_from_slice(&cell);
                Ok(())
            }
            Step::Extend(request) => {
                // Cells already opened for the next hop go first (none can be: the
                // circuit has no next hop yet), then the extension, bounded in time.
                self.flush_forward().await?;
                let kind = request.kind;
                // Boxed: the extension's state (dial, handshake) is large and needed
                // once; inline it would be part of every idle circuit's task.
                let result = tokio::time::timeout(EXTEND_TIMEOUT, Box::pin(self.extend(request)))
                    .await
                    .unwrap_or(Err(DestroyReason::Timeout));
                self.core.extended(kind, result);
                Ok(())
            }
            Step::Begin { id, target, port } => {
                self.flush_forward().await?;
                self.begin(id, target, port);
                Ok(())
            }
            Step::Resolve { id, target } => {
                self.flush_forward().await?;
                self.resolve(id, target);
                Ok(())
            }
            Step::Data { id, data } => {
                // Waiting for a full exit stream: cells already opened for the next hop go
                // first.
                self.flush_forward().await?;
                let Some(slot) = self.core.stream(id) else {
                    return Ok(());
                };
                let sent = tokio::select! {
                    r = slot.data.send(data) => r.is_ok(),
                    () = self.teardown.token.cancelled() => true,
                };
                if !sent {
                    // The exit side already ended; its END is on the way back.
                    self.core.stream_gone(id);
                }
                Ok(())
            }
            Step::EndStream(slot) => {
                // Dropping the slot closes the data channel: the writer sends what is
                // queued, then closes the connection. Cancelling stops the reader.
                slot.token.cancel();
                Ok(())
            }
            Step::Role(msg) => {
                self.flush_forward().await?;
                // Boxed for the same reason: hidden-service and DHT roles are rare.
                Box::pin(self.role(msg)).await
            }
        }
    }

    /// Start exit stream `id` (the core has checked the policy, the limit and the id).
    fn begin(&mut self, id: StreamId, target: Target, port: u16) {
        let Some(policy) = self.shared.exit_policy.clone() else {
            return;
        };
        let (tx, rx) = mpsc::channel(EXIT_WRITE_QUEUE);
        let token = self.teardown.token.child_token();
        let package = Arc::new(Semaphore::new(STREAM_WINDOW as usize));
        let deliver = Arc::new(Mutex::new(StreamDeliverWindow::default()));
        self.core.add_stream(
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
    }

    /// Answer `RESOLVE` on stream `id` (the core has checked the limit and the id): the
    /// stream holds a slot until `RESOLVED` or `END` is queued, or the client ends it.
    fn resolve(&mut self, id: StreamId, target: Target) {
        let Some(policy) = self.shared.exit_policy.clone() else {
            return;
        };
        // A resolve stream takes no DATA: its data channel has no reader, so DATA from the
        // client finds the stream gone (§6.6) instead of being queued.
        let (tx, _) = mpsc::channel(1);
        let token = self.teardown.token.child_token();
        self.core.add_stream(
            id,
            ExitSlot {
                data: tx,
                token: token.clone(),
                package: Arc::new(Semaphore::new(0)),
                deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
            },
        );
        tokio::spawn(
            resolve_stream(
                self.shared.clone(),
                policy,
                id,
                target,
                self.out.clone(),
                token,
            )
            .instrument(tracing::debug_span!("exit_resolve", stream = id.0)),
        );
    }

    pub(super) async fn send_back(&self, stream_id: StreamId, msg: RelayMsg) {
        let _ = self
            .out
            .send(out_cell(RelayCell::new(stream_id, msg)))
            .await;
    }

    /// A §13 message for this hop's hidden-service or DHT role.
    async fn role(&mut self, msg: RelayMsg) -> Result<(), Violation> {
        match msg {
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
            RelayMsg::NameRegister { record } => {
                self.dht_request(DhtRequest::RegisterName { record }).await;
                Ok(())
            }
            _ => Err(Violation(DestroyReason::Protocol)),
        }
    }
}
