//! Introduction and rendezvous points on this relay (§13.2–§13.5).

use super::*;

impl ForwardTask {
    /// True when this relay is the last hop and the circuit has no other role yet: the
    /// only state in which it may become an introduction or rendezvous circuit.
    pub(super) fn is_bare_end(&self) -> bool {
        self.core.is_bare_end()
            && !self.next_opened
            && self.hs.intro_key.is_none()
            && self.hs.cookie.is_none()
            && self.hs.splice.get().is_none()
    }

    /// `ESTABLISH_INTRO` (§13.2): check the signature over this circuit's binding, then
    /// register the key.
    pub(super) async fn establish_intro(
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
    pub(super) async fn introduce(
        &mut self,
        auth_key: [u8; 32],
        sealed: Bytes,
    ) -> Result<(), Violation> {
        if self.core.is_extended() || self.hs.intro_key.is_some() {
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
                    match service.try_send(out_cell(msg)) {
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
    pub(super) async fn establish_rendezvous(
        &mut self,
        cookie: [u8; COOKIE_LEN],
    ) -> Result<(), Violation> {
        if !self.is_bare_end() {
            return Err(Violation(DestroyReason::Protocol));
        }
        let backward = self.open_next_queue().await?;
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
    pub(super) async fn rendezvous(
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
        let own_backward = self.open_next_queue().await?;
        let _ = client.splice.set(Splice {
            backward: own_backward,
            teardown: self.teardown.clone(),
        });
        let _ = self.hs.splice.set(Splice {
            backward: client.backward.clone(),
            teardown: client.teardown.clone(),
        });
        // Either circuit ending ends the other (each is the other's next hop, §13.5).
        let (a, b) = (self.teardown.clone(), client.teardown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = a.token.cancelled() => b.destroy_from(Origin::Next, DestroyReason::ChannelClosed),
                () = b.token.cancelled() => a.destroy_from(Origin::Next, DestroyReason::ChannelClosed),
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
            .send(out_cell(RelayCell::new(
                StreamId::CIRCUIT,
                RelayMsg::Rendezvous2 { server_pk, auth },
            )))
            .await;
        Ok(())
    }
}
