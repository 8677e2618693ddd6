//! Extending a circuit to the next relay, with either handshake type (§6.2, §8.2).

use super::*;

impl ForwardTask {
    /// Open the next leg: dial the relay (pinning its NodeId), send the `CREATE` cells,
    /// and read the `CREATED` cells (1024 bytes for type 1, 2048 for type 2), which must
    /// decode before the leg is kept. A `DESTROY` as the first cell ends it early with its
    /// reason.
    ///
    /// # Errors
    /// The reason for the `TRUNCATED` the client gets.
    pub(super) async fn extend(
        &mut self,
        request: ExtendRequest,
    ) -> Result<Vec<u8>, DestroyReason> {
        let ExtendRequest {
            addr,
            node_id,
            kind,
            create,
        } = request;
        let reply_len = kind.reply_len();
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
        if !kind.valid(&reply) {
            return Err(DestroyReason::Protocol);
        }
        let tx = self
            .open_next_queue()
            .await
            .map_err(|Violation(reason)| reason)?;
        spawn_leg_reader(recv, CELL_LEN, tx, self.teardown.clone(), Origin::Next);
        self.next_send = Some(send);
        self.shared
            .stats
            .circuits_extended
            .fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    /// Create the next-hop queue (cells from the next leg, or from the circuit joined at
    /// this rendezvous point) and hand its receiving end to the backward task through the
    /// backward queue; the sender is returned. Until this, a circuit has no such queue.
    ///
    /// # Errors
    /// [`DestroyReason::Internal`] when the queue was opened before or the backward task
    /// has ended.
    pub(super) async fn open_next_queue(&mut self) -> Result<mpsc::Sender<CellBatch>, Violation> {
        if self.next_opened {
            return Err(Violation(DestroyReason::Internal));
        }
        self.next_opened = true;
        let (tx, rx) = mpsc::channel(LEG_QUEUE);
        self.out
            .send(Box::new(Out::NextLeg(rx)))
            .await
            .map_err(|_| Violation(DestroyReason::Internal))?;
        Ok(tx)
    }
}
