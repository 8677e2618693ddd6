//! The backward direction of a circuit: wrap what the next hop (or a joined circuit) sends,
//! originate this relay's messages, write them to the previous hop (§7.3).

use super::*;

/// The backward direction of a circuit: cells from the next hop and messages this relay
/// originates, sealed with this hop's layer and written to the previous hop.
pub(super) struct BackwardTask {
    pub(super) shared: Arc<RelayShared>,
    pub(super) cell_len: usize,
    pub(super) core: BackwardCore,
    pub(super) prev_send: SendStream,
    /// The next-hop queue, once the forward task has opened it ([`Out::NextLeg`]).
    pub(super) next_rx: Option<mpsc::Receiver<CellBatch>>,
    pub(super) out_rx: mpsc::Receiver<OutCell>,
    pub(super) teardown: Arc<Teardown>,
}

impl BackwardTask {
    /// The backward task, until the circuit ends. A plain function returning the future
    /// (not an `async fn`), so that the task struct is stored once in it.
    pub(super) fn run(self) -> impl std::future::Future<Output = ()> {
        let mut this = self;
        async move {
            this.relay_cells().await;
            match this.teardown.plan(false).to_prev {
                Some(reason) => send_destroy(&mut this.prev_send, this.cell_len, reason).await,
                None => {
                    let _ = this.prev_send.finish();
                }
            }
        }
    }

    pub(super) async fn relay_cells(&mut self) {
        let mut batch = BytesMut::new();
        loop {
            let first = tokio::select! {
                biased;
                () = self.teardown.token.cancelled() => break,
                Some(cells) = recv_next(&mut self.next_rx), if self.next_rx.is_some() => {
                    Backward::Cells(cells)
                }
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
                    Err(DestroyReason::ChannelClosed) => {
                        // The next hop's DESTROY, passed on towards the client.
                        self.teardown
                            .destroy_from(Origin::Next, DestroyReason::ChannelClosed);
                        return;
                    }
                    Err(reason) => {
                        self.teardown.destroy(reason);
                        return;
                    }
                }
                if cells >= WRITE_BATCH {
                    break;
                }
                let next = self.next_rx.as_mut().and_then(|rx| rx.try_recv().ok());
                item = match next {
                    Some(cells) => Some(Backward::Cells(cells)),
                    None => self.out_rx.try_recv().ok().map(Backward::Message),
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
                // The previous hop's leg is gone.
                self.teardown
                    .destroy_from(Origin::Prev, DestroyReason::ChannelClosed);
                break;
            }
        }
    }

    /// Seal the cells from the next hop or one message of this relay (in the core) and
    /// append the sealed cells to `batch` (padding from the next hop appends nothing).
    /// Returns how many cells were sealed.
    ///
    /// # Errors
    /// The reason to destroy the circuit: the next hop's `DESTROY`, a bad cell, or a
    /// failure to seal.
    pub(super) fn seal_into(
        &mut self,
        item: Backward,
        batch: &mut BytesMut,
    ) -> Result<usize, DestroyReason> {
        let sealed = match item {
            Backward::Cells(cells) => self.core.wrap_from_next(&cells, batch)?,
            Backward::Message(msg) => match *msg {
                Out::Cell(cell) => {
                    self.core.originate(&cell, batch)?;
                    1
                }
                Out::NextLeg(rx) => {
                    self.next_rx = Some(rx);
                    0
                }
            },
        };
        self.shared
            .stats
            .cells_backward
            .fetch_add(sealed as u64, Ordering::Relaxed);
        Ok(sealed)
    }
}

/// What the backward task seals: cells from the next hop (a batch of whole next-leg cells)
/// or a message this relay originates.
pub(super) enum Backward {
    Cells(CellBatch),
    Message(OutCell),
}

/// The next batch from the next-hop queue; never ready while there is none (the caller's
/// `select!` disables the branch then).
async fn recv_next(next: &mut Option<mpsc::Receiver<CellBatch>>) -> Option<CellBatch> {
    match next {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
