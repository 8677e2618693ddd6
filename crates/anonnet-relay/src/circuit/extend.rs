//! Extending a circuit to the next relay, with either handshake type (§6.2, §8.2).

use super::*;

impl ForwardTask {
    /// Once an `EXTEND2` and its `HANDSHAKE_CONT`s have brought the whole 1280-byte hello
    /// (§6.2), extend with a type-2 `CREATE` and answer `EXTENDED2` (+ `HANDSHAKE_CONT`) or
    /// `TRUNCATED`.
    ///
    /// # Errors
    /// None today: a failed extension is answered, not a violation.
    pub(super) async fn extend_hybrid_if_complete(&mut self) -> Result<(), Violation> {
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
    pub(super) async fn extend(
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
